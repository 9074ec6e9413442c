//! `cargo run --release -p chat-example [-- --port PORT]`: the chat application with plexus
//! embedded, on 127.0.0.1:PORT (default 6002; 0 picks a free port), app key `app-key`. Prints
//! `chat listening on ADDR` once it accepts connections. A bare `PORT` works too, as before.
//!
//! `cargo run --release -p chat-example -- codegen typescript [RUNTIME]` prints the typed
//! TypeScript client instead (importing the runtime from RUNTIME, default `@plexus/channels`).

use std::sync::Arc;

use chat_example::{channels, ChatServices};
use clap::{Parser, Subcommand};
use plexus_core::{App, MemoryAppStore};
use plexus_server::config::ServerConfig;
use plexus_server::ServerState;

/// The chat example: typed channels on plexus embedded as a library (app key `app-key`).
#[derive(Debug, Parser)]
#[command(name = "chat-example")]
struct Cli {
    /// Port on 127.0.0.1 to listen on (0 picks a free one).
    #[arg(long, short, value_name = "PORT", default_value_t = 6002)]
    port: u16,
    /// The same as --port (for scripts that pass the port alone).
    #[arg(value_name = "PORT", conflicts_with = "port")]
    bare_port: Option<u16>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print generated client code for the chat channel instead of serving.
    Codegen {
        #[command(subcommand)]
        language: Language,
    },
}

#[derive(Debug, Subcommand)]
enum Language {
    /// The typed TypeScript client, on stdout.
    Typescript {
        /// Where the client imports its runtime from.
        #[arg(default_value = "@plexus/channels")]
        runtime: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    if let Some(Command::Codegen { language: Language::Typescript { runtime } }) = &cli.command {
        print!("{}", channels(ChatServices::demo()).typescript(runtime)?);
        return Ok(());
    }
    let port = cli.bare_port.unwrap_or(cli.port);
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
