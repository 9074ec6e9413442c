//! `cargo run --release -p chat-example [-- PORT]`: the chat application with plexus embedded,
//! on 127.0.0.1:PORT (default 6002; 0 picks a free port), app key `app-key`. Prints
//! `chat listening on ADDR` once it accepts connections.
//!
//! `cargo run --release -p chat-example -- codegen typescript [RUNTIME]` prints the typed
//! TypeScript client instead (importing the runtime from RUNTIME, default `@plexus/channels`).

use std::sync::Arc;

use chat_example::{channels, ChatServices};
use plexus_core::{App, MemoryAppStore};
use plexus_server::config::ServerConfig;
use plexus_server::ServerState;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("codegen") {
        anyhow::ensure!(
            args.get(1).map(String::as_str) == Some("typescript"),
            "usage: codegen typescript [RUNTIME]"
        );
        let runtime = args.get(2).map_or("@plexus/channels", String::as_str);
        print!("{}", channels(ChatServices::demo()).typescript(runtime)?);
        return Ok(());
    }
    let port = match args.first() {
        Some(port) => port.parse()?,
        None => 6002,
    };
    let config = ServerConfig { host: "127.0.0.1".into(), port, ..ServerConfig::default() };
    let listener = plexus_server::bind(&config)?;
    let addr = listener.local_addr()?;
    let apps = MemoryAppStore::new([App::new("app-id", "app-key", "app-secret")])?;
    let state = ServerState::new(config, Arc::new(apps));
    state.install_channels(channels(ChatServices::demo()));
    println!("chat listening on {addr}");
    plexus_server::serve(listener, state, stopped()).await?;
    Ok(())
}

/// SIGINT or SIGTERM.
async fn stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
