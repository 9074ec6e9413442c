//! A WebSocket echo server on plexus's own codec and connection loop — the read path, limits and
//! close handling of `/app/{key}` — for conformance testing with Autobahn|Testsuite:
//!
//! ```sh
//! cargo build --release -p plexus-server --example ws-echo
//! target/release/examples/ws-echo --port 9001 &
//! ../shared/tools/autobahn/run.sh ws://127.0.0.1:9001
//! ```
//!
//! Every text and binary message is sent back; messages up to `--max-message-bytes` (16 MiB by
//! default, what the suite's largest cases send) are accepted. Built with `--features
//! tungstenite`, the same endpoint runs on the comparison transport.

use clap::Parser;
use plexus_server::config::ServerConfig;
use plexus_server::ws::echo::{self, EchoLimits};

/// WebSocket echo on plexus's own WebSocket transport (every path).
#[derive(Debug, Parser)]
#[command(name = "ws-echo")]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 9001)]
    port: u16,
    /// Largest message echoed; larger ones close the connection with 1009.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_message_bytes: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = ServerConfig { host: "127.0.0.1".into(), port: args.port, ..ServerConfig::default() };
    let limits = EchoLimits {
        max_message_bytes: args.max_message_bytes,
        // Room for a few of the largest messages waiting to be echoed.
        max_queued_bytes: args.max_message_bytes.saturating_mul(4),
        write_timeout: std::time::Duration::from_secs(config.write_timeout_secs),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = plexus_server::bind(&config)?;
        println!("ws-echo listening on {}", listener.local_addr()?);
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        plexus_server::listener::serve_router(listener, echo::router(limits), &config, shutdown).await;
        Ok(())
    })
}
