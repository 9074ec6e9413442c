//! `plexus-bench`: a load generator for plexus, or any server speaking the Pusher Channels
//! protocol v7 and HTTP API. This file owns the command line, the loopback-only check, the
//! runtime (single-threaded unless `--threads` says otherwise), the hard deadline and watchdog,
//! and the one JSON line of results each run prints on stdout.
//!
//! Scenarios live in [`scenario`]; the wire in [`ws`], [`http`] and [`pusher`]; measuring in
//! [`stats`].

mod http;
mod publisher;
mod pusher;
mod rbuf;
mod scenario;
mod stats;
mod target;
mod ws;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

use scenario::Ctx;
use stats::{own_peak_rss_kib, round3, CpuMeter};
use target::{loopback_ip, source_ips, Target};

/// Load generator for plexus (Pusher Channels protocol v7 over WebSocket + signed HTTP API).
/// Loopback only. Prints one JSON line of results per run.
#[derive(Debug, Parser)]
#[command(name = "plexus-bench", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Flags every scenario accepts (before or after the scenario name).
#[derive(Debug, Args)]
struct Common {
    /// Server host: 127.x.x.x, localhost or ::1 only.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, global = true, default_value_t = 6001)]
    port: u16,
    /// Spread subscribers round-robin over these ports of the same host (cluster nodes) instead
    /// of `--port`; publishing still goes to `--port`. Comma-separated.
    #[arg(long, global = true, value_delimiter = ',')]
    subscriber_ports: Vec<u16>,
    #[arg(long, global = true, default_value = "app-id")]
    app_id: String,
    #[arg(long, global = true, default_value = "app-key")]
    key: String,
    #[arg(long, global = true, default_value = "app-secret")]
    secret: String,
    /// Padding bytes in every event's data (besides the sequence number and timestamp).
    #[arg(long, global = true, default_value_t = 100)]
    payload_bytes: usize,
    /// Hard deadline for the whole run; the scenario stops itself when it passes.
    #[arg(long, global = true, default_value_t = 60)]
    timeout_secs: u64,
    /// Server process id, to report its resident memory (VmRSS) before and after.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Runtime threads; 1 (default) uses tokio's current-thread runtime.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Spread connections over local addresses 127.0.0.1 ..= 127.0.0.K.
    #[arg(long, global = true, default_value_t = 1)]
    sources: u16,
    /// Connections being set up at the same time (broadcast, fanout, client-events).
    #[arg(long, global = true, default_value_t = 256)]
    setup_concurrency: usize,
    /// Seconds to wait for late deliveries after the last send.
    #[arg(long, global = true, default_value_t = 5.0)]
    drain_secs: f64,
    /// Initial receive buffer per connection, in bytes (grows for bigger messages).
    #[arg(long, global = true, default_value_t = 8192)]
    read_buffer: usize,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N subscribers on one channel; M events published back to back; time until all delivered.
    Broadcast {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 100)]
        events: u64,
        /// Keep-alive HTTP connections publishing (requests pipelined on each).
        #[arg(long, default_value_t = 4)]
        http_connections: usize,
        /// Requests in flight per HTTP connection.
        #[arg(long, default_value_t = 32)]
        window: usize,
    },
    /// N subscribers over C channels; open-loop publishing at R events/s for S seconds.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 1)]
        channels: usize,
        /// Events per second, all channels together.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Keep-alive HTTP connections publishing; channel c always uses connection c % K.
        #[arg(long, default_value_t = 8)]
        http_connections: usize,
        /// Requests in flight per HTTP connection before a send waits (and falls behind).
        #[arg(long, default_value_t = 1024)]
        window: usize,
    },
    /// Opens N connections at R/s, each on its own channel, holds them, closes them.
    Connections {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Connections opened per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        hold_secs: f64,
        /// Longest wait for the server's RSS to settle after closing.
        #[arg(long, default_value_t = 5.0)]
        release_wait_secs: f64,
    },
    /// N signed publish requests from C connections in closed loop.
    Publish {
        #[arg(long, default_value_t = 10_000)]
        requests: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Events per request via batch_events (default: single events via /events).
        #[arg(long)]
        batch: Option<usize>,
    },
    /// P sender/receiver pairs on private channels exchanging client events at R/s in total.
    ClientEvents {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Client events per second, all pairs together.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Broadcast { .. } => "broadcast",
            Scenario::Fanout { .. } => "fanout",
            Scenario::Connections { .. } => "connections",
            Scenario::Publish { .. } => "publish",
            Scenario::ClientEvents { .. } => "client-events",
        }
    }

    /// Refuses settings that would make a run meaningless or unbounded.
    fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("--{name} must be a positive number"))
            }
        };
        match self {
            Scenario::Broadcast { subscribers, events, .. } => {
                positive("subscribers", *subscribers as f64)?;
                positive("events", *events as f64)
            }
            Scenario::Fanout { subscribers, channels, rate, duration, .. } => {
                positive("subscribers", *subscribers as f64)?;
                positive("channels", *channels as f64)?;
                positive("rate", *rate)?;
                positive("duration", *duration)
            }
            Scenario::Connections { connections, rate, hold_secs, .. } => {
                positive("connections", *connections as f64)?;
                positive("rate", *rate)?;
                if *hold_secs < 0.0 {
                    return Err("--hold-secs must not be negative".into());
                }
                Ok(())
            }
            Scenario::Publish { requests, concurrency, batch } => {
                positive("requests", *requests as f64)?;
                positive("concurrency", *concurrency as f64)?;
                if let Some(b) = batch {
                    positive("batch", *b as f64)?;
                }
                Ok(())
            }
            Scenario::ClientEvents { pairs, rate, duration } => {
                positive("pairs", *pairs as f64)?;
                positive("rate", *rate)?;
                positive("duration", *duration)
            }
        }
    }

    /// The scenario's own parameters, echoed in the output.
    fn parameters(&self) -> Value {
        match self {
            Scenario::Broadcast { subscribers, events, http_connections, window } => json!({
                "subscribers": subscribers, "events": events,
                "http_connections": http_connections, "window": window,
            }),
            Scenario::Fanout { subscribers, channels, rate, duration, http_connections, window } => json!({
                "subscribers": subscribers, "channels": channels, "rate": rate,
                "duration_secs": duration, "http_connections": http_connections, "window": window,
            }),
            Scenario::Connections { connections, rate, hold_secs, release_wait_secs } => json!({
                "connections": connections, "rate": rate, "hold_secs": hold_secs,
                "release_wait_secs": release_wait_secs,
            }),
            Scenario::Publish { requests, concurrency, batch } => json!({
                "requests": requests, "concurrency": concurrency, "batch": batch,
            }),
            Scenario::ClientEvents { pairs, rate, duration } => json!({
                "pairs": pairs, "rate": rate, "duration_secs": duration,
            }),
        }
    }

    async fn run(self, ctx: Arc<Ctx>) -> Value {
        match self {
            Scenario::Broadcast { subscribers, events, http_connections, window } => {
                scenario::broadcast::run(
                    ctx,
                    scenario::broadcast::Params { subscribers, events, http_connections, window },
                )
                .await
            }
            Scenario::Fanout { subscribers, channels, rate, duration, http_connections, window } => {
                scenario::fanout::run(
                    ctx,
                    scenario::fanout::Params {
                        subscribers,
                        channels,
                        rate,
                        duration_secs: duration,
                        http_connections,
                        window,
                    },
                )
                .await
            }
            Scenario::Connections { connections, rate, hold_secs, release_wait_secs } => {
                scenario::connections::run(
                    ctx,
                    scenario::connections::Params { connections, rate, hold_secs, release_wait_secs },
                )
                .await
            }
            Scenario::Publish { requests, concurrency, batch } => {
                scenario::publish::run(ctx, scenario::publish::Params { requests, concurrency, batch }).await
            }
            Scenario::ClientEvents { pairs, rate, duration } => {
                scenario::client_events::run(
                    ctx,
                    scenario::client_events::Params { pairs, rate, duration_secs: duration },
                )
                .await
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match setup(&cli) {
        Ok(ctx) => run(cli, ctx),
        Err(message) => {
            eprintln!("plexus-bench: {message}");
            ExitCode::from(2)
        }
    }
}

/// Checks the flags and builds the run context.
fn setup(cli: &Cli) -> Result<Ctx, String> {
    let c = &cli.common;
    let ip = loopback_ip(&c.host)?;
    cli.scenario.validate()?;
    if c.timeout_secs == 0 {
        return Err("--timeout-secs must be at least 1".into());
    }
    if c.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let target_at = |port: u16| {
        let addr = SocketAddr::new(ip, port);
        Target {
            addr,
            host_header: addr.to_string(),
            app_id: c.app_id.clone(),
            key: c.key.clone(),
            secret: c.secret.clone(),
        }
    };
    Ok(Ctx {
        target: target_at(c.port),
        subscriber_targets: c.subscriber_ports.iter().map(|port| target_at(*port)).collect(),
        padding: "x".repeat(c.payload_bytes),
        deadline: Instant::now() + Duration::from_secs(c.timeout_secs),
        server_pid: c.server_pid,
        read_buffer: match cli.scenario {
            // Tens of thousands of mostly idle connections: keep their buffers small.
            Scenario::Connections { .. } => c.read_buffer.min(2048),
            _ => c.read_buffer,
        },
        sources: source_ips(ip, c.sources)?,
        setup_concurrency: c.setup_concurrency,
        drain: Duration::from_secs_f64(c.drain_secs.max(0.0)),
    })
}

fn run(cli: Cli, ctx: Ctx) -> ExitCode {
    stats::clock_us();
    let name = cli.scenario.name();
    let mut parameters = cli.scenario.parameters();
    parameters["payload_bytes"] = json!(cli.common.payload_bytes);
    parameters["timeout_secs"] = json!(cli.common.timeout_secs);
    parameters["threads"] = json!(cli.common.threads);
    parameters["sources"] = json!(cli.common.sources);
    parameters["port"] = json!(cli.common.port);
    if !cli.common.subscriber_ports.is_empty() {
        parameters["subscriber_ports"] = json!(cli.common.subscriber_ports);
    }
    parameters["server_pid"] = json!(cli.common.server_pid);
    start_watchdog(name, Duration::from_secs(cli.common.timeout_secs + 30));

    let runtime = if cli.common.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cli.common.threads).enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plexus-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cpu = CpuMeter::start();
    let figures = runtime.block_on(cli.scenario.run(Arc::new(ctx)));

    let mut out = Map::new();
    out.insert("scenario".into(), json!(name));
    out.insert("parameters".into(), parameters);
    out.insert("wall_secs".into(), json!(round3(cpu.wall_secs())));
    out.insert("bench_cpu".into(), json!(cpu.fraction()));
    out.insert("bench_peak_rss_kib".into(), json!(own_peak_rss_kib()));
    if let Value::Object(figures) = figures {
        out.extend(figures);
    }
    println!("{}", Value::Object(out));
    // Do not wait for tasks still closing sockets.
    runtime.shutdown_background();
    ExitCode::SUCCESS
}

/// Last resort behind the scenarios' own deadlines: if the run is still going long after its
/// deadline, print an error line and exit.
fn start_watchdog(scenario: &'static str, after: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        println!(
            "{}",
            json!({"scenario": scenario, "errors": {"watchdog_abort": 1}, "wall_secs": after.as_secs()})
        );
        std::process::exit(3);
    });
}
