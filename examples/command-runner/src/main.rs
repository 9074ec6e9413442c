//! `cargo run --release -p command-runner`: the example on 127.0.0.1:6101 (plexus) and
//! http://127.0.0.1:8101/ (the page). `--ws-port` and `--port` (or WS_PORT and PORT) change them;
//! 0 picks a free port. Prints `command-runner: plexus on ADDR, open http://ADDR/` once both
//! listen.

use clap::Parser;

/// The command-runner example: run a command and watch its output live on a private plexus
/// channel, from a small web page.
#[derive(Debug, Parser)]
#[command(name = "command-runner")]
struct Cli {
    /// Port on 127.0.0.1 of the web page and its HTTP API (0 picks a free one).
    #[arg(long, short, env = "PORT", value_name = "PORT", default_value_t = 8101)]
    port: u16,
    /// Port on 127.0.0.1 of the embedded plexus server, the WebSocket endpoint (0 picks a free one).
    #[arg(long, env = "WS_PORT", value_name = "PORT", default_value_t = 6101)]
    ws_port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let (plexus, http) = command_runner::bind("127.0.0.1", cli.ws_port, cli.port).await?;
    let app = plexus_core::App::new("runner", "runner-key", "runner-secret");
    command_runner::run_on(plexus, http, app).await
}
