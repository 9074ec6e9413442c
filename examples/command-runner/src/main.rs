//! `cargo run --release -p command-runner`: the example on 127.0.0.1:6101 (plexus) and
//! http://127.0.0.1:8101/ (the page). PORT and WS_PORT change them.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let port =
        |name: &str, default: u16| std::env::var(name).ok().and_then(|p| p.parse().ok()).unwrap_or(default);
    let (plexus, http) = command_runner::bind("127.0.0.1", port("WS_PORT", 6101), port("PORT", 8101)).await?;
    let app = plexus_core::App::new("runner", "runner-key", "runner-secret");
    command_runner::run_on(plexus, http, app).await
}
