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
    /// Pad with text shaped like real events (words, ids, prices) instead of one repeated
    /// character, so compression ratios mean something.
    #[arg(long, global = true)]
    realistic_payload: bool,
    /// Offer permessage-deflate on every WebSocket, as browsers do, and inflate what arrives
    /// compressed. Reports count the bytes read from the sockets either way.
    #[arg(long, global = true)]
    deflate: bool,
    /// Hard deadline for the whole run; the scenario stops itself when it passes. Default: 60,
    /// or for `hostile` the time its phases and waits can take.
    #[arg(long, global = true)]
    timeout_secs: Option<u64>,
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
    /// Honest load (A's subscribers, B's presence users and webhooks) measured without, then with
    /// attackers; the server's descriptors and RSS before, during and after.
    Hostile(Box<HostileArgs>),
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

/// Settings of the `hostile` scenario.
#[derive(Debug, Args)]
struct HostileArgs {
    /// Honest subscribers of app A (`--app-id`, `--key`, `--secret`), connected for the whole run.
    #[arg(long, default_value_t = 5000)]
    subscribers: usize,
    /// Public channels the honest subscribers are spread over.
    #[arg(long, default_value_t = 50)]
    channels: usize,
    /// Honest events per second published through the signed API, all channels together.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Keep-alive HTTP connections of the honest publisher.
    #[arg(long, default_value_t = 8)]
    http_connections: usize,
    /// Seconds of honest load before the attack.
    #[arg(long, default_value_t = 20.0)]
    baseline_secs: f64,
    /// Seconds of attack (honest load continues throughout).
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Hostile clients; attacker i repeats attack i mod (number of attacks) until the end.
    #[arg(long, default_value_t = 100)]
    attackers: usize,
    /// Attacks to run (comma-separated names, or `all`).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    attacks: Vec<String>,
    /// How long holding attacks (idle, trickled headers, withheld bodies) keep a connection
    /// open when the server does not close it (longer than the 30 s header timeout many
    /// servers use, so such a timeout shows as a reaction).
    #[arg(long, default_value_t = 40.0)]
    hold_secs: f64,
    /// Seconds between two trickled header lines.
    #[arg(long, default_value_t = 3.0)]
    trickle_secs: f64,
    /// Connections each holding attack opens at once.
    #[arg(long, default_value_t = 20)]
    slow_sockets: usize,
    /// Pause between two runs of an attack by one attacker, in milliseconds.
    #[arg(long, default_value_t = 20)]
    attack_pause_ms: u64,
    /// Pipelined requests per API flood run.
    #[arg(long, default_value_t = 100)]
    api_burst: usize,
    /// Most channels the hoarding connection asks for.
    #[arg(long, default_value_t = 10_000)]
    hoard_cap: usize,
    /// Subscribe/unsubscribe pairs per churn run.
    #[arg(long, default_value_t = 500)]
    churn_ops: usize,
    /// Attackers connect from 127.0.0.2 ..= 127.0.0.(1+N) (honest clients from 127.0.0.1).
    #[arg(long, default_value_t = 8)]
    attack_sources: u8,
    /// Longest wait, after the attack, for the server's descriptors and RSS to come back.
    #[arg(long, default_value_t = 30.0)]
    settle_secs: f64,
    /// Longest wait, after each phase, for app B's webhooks.
    #[arg(long, default_value_t = 20.0)]
    webhook_wait_secs: f64,
    /// App B's presence users (each joins and leaves over and over under fresh user ids).
    #[arg(long, default_value_t = 50)]
    presence_users: usize,
    #[arg(long, default_value_t = 5)]
    presence_channels: usize,
    /// Port of the webhook endpoint this bench serves on 127.0.0.1 (A's at /a, B's at /b).
    #[arg(long, default_value_t = 7091)]
    webhook_port: u16,
    /// App B, as ID:KEY:SECRET.
    #[arg(long, default_value = "hostile-b:hostile-b-key:hostile-b-secret")]
    app_b: scenario::hostile::Creds,
    /// A tenant's own app (ID:KEY:SECRET; client events enabled): runs the attacks that need a
    /// secret (cache flood, CR/LF event names, big presence ids) as that tenant against the
    /// others. Without it those attacks are skipped.
    #[arg(long)]
    tenant: Option<scenario::hostile::Creds>,
    /// A tenant's app that accepts HS256 tokens (ID:KEY:SECRET), for the `exp = 2^64-1` token.
    #[arg(long)]
    token_tenant: Option<scenario::hostile::Creds>,
}

impl HostileArgs {
    fn attack_list(&self) -> Result<Vec<scenario::hostile::attacks::Attack>, String> {
        use scenario::hostile::attacks::Attack;
        if self.attacks.iter().any(|a| a == "all") {
            return Ok(Attack::ALL.to_vec());
        }
        self.attacks
            .iter()
            .map(|name| {
                Attack::ALL.iter().copied().find(|a| a.name() == name).ok_or_else(|| {
                    let known: Vec<&str> = Attack::ALL.iter().map(|a| a.name()).collect();
                    format!("unknown attack {name:?}; known: {}", known.join(", "))
                })
            })
            .collect()
    }

    fn params(&self) -> scenario::hostile::Params {
        scenario::hostile::Params {
            subscribers: self.subscribers,
            channels: self.channels,
            rate: self.rate,
            http_connections: self.http_connections,
            baseline_secs: self.baseline_secs,
            duration_secs: self.duration,
            attackers: self.attackers,
            attacks: self.attack_list().unwrap_or_default(),
            hold_secs: self.hold_secs,
            trickle_secs: self.trickle_secs,
            slow_sockets: self.slow_sockets,
            attack_pause_ms: self.attack_pause_ms,
            api_burst: self.api_burst,
            hoard_cap: self.hoard_cap,
            churn_ops: self.churn_ops,
            attack_sources: self.attack_sources,
            settle_secs: self.settle_secs,
            webhook_wait_secs: self.webhook_wait_secs,
            presence_users: self.presence_users,
            presence_channels: self.presence_channels,
            webhook_port: self.webhook_port,
            app_b: self.app_b.clone(),
            tenant: self.tenant.clone(),
            token_tenant: self.token_tenant.clone(),
        }
    }
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Broadcast { .. } => "broadcast",
            Scenario::Fanout { .. } => "fanout",
            Scenario::Connections { .. } => "connections",
            Scenario::Publish { .. } => "publish",
            Scenario::ClientEvents { .. } => "client-events",
            Scenario::Hostile(_) => "hostile",
        }
    }

    /// `--timeout-secs` when none is given.
    fn default_timeout_secs(&self, drain_secs: f64) -> u64 {
        match self {
            Scenario::Hostile(h) => h.params().budget_secs(drain_secs),
            _ => 60,
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
            Scenario::Hostile(h) => {
                positive("subscribers", h.subscribers as f64)?;
                positive("channels", h.channels as f64)?;
                positive("rate", h.rate)?;
                positive("baseline-secs", h.baseline_secs)?;
                positive("duration", h.duration)?;
                positive("hold-secs", h.hold_secs)?;
                positive("trickle-secs", h.trickle_secs)?;
                positive("attack-sources", h.attack_sources as f64)?;
                if h.attack_sources > 250 {
                    return Err("--attack-sources must be at most 250".into());
                }
                if h.settle_secs < 0.0 || h.webhook_wait_secs < 0.0 {
                    return Err("--settle-secs and --webhook-wait-secs must not be negative".into());
                }
                h.attack_list().map(drop)
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
            Scenario::Hostile(h) => {
                let names: Vec<&str> = h.attack_list().unwrap_or_default().iter().map(|a| a.name()).collect();
                let app = |c: &Option<scenario::hostile::Creds>| c.as_ref().map(|c| c.id.clone());
                json!({
                    "subscribers": h.subscribers, "channels": h.channels, "rate": h.rate,
                    "http_connections": h.http_connections, "baseline_secs": h.baseline_secs,
                    "duration_secs": h.duration, "attackers": h.attackers, "attacks": names,
                    "hold_secs": h.hold_secs, "trickle_secs": h.trickle_secs,
                    "slow_sockets": h.slow_sockets, "attack_pause_ms": h.attack_pause_ms,
                    "api_burst": h.api_burst, "hoard_cap": h.hoard_cap, "churn_ops": h.churn_ops,
                    "attack_sources": h.attack_sources, "settle_secs": h.settle_secs,
                    "webhook_wait_secs": h.webhook_wait_secs, "presence_users": h.presence_users,
                    "presence_channels": h.presence_channels, "webhook_port": h.webhook_port,
                    "app_b": h.app_b.id, "tenant": app(&h.tenant), "token_tenant": app(&h.token_tenant),
                })
            }
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
            Scenario::Hostile(h) => scenario::hostile::run(ctx, h.params()).await,
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
    if c.timeout_secs == Some(0) {
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
            deflate: c.deflate,
        }
    };
    Ok(Ctx {
        target: target_at(c.port),
        subscriber_targets: c.subscriber_ports.iter().map(|port| target_at(*port)).collect(),
        padding: if c.realistic_payload {
            realistic_text(c.payload_bytes)
        } else {
            "x".repeat(c.payload_bytes)
        },
        deadline: Instant::now() + Duration::from_secs(timeout_secs(cli)),
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

/// `len` bytes shaped like a real event's JSON — a list of order records whose keys repeat and
/// whose values (ids, users, symbols, prices, quantities) vary, from a fixed seed so every run
/// pads alike. Its quotes are escaped, as JSON inside Pusher's string `data` is on the wire, so
/// it sits inside a JSON string as it is.
fn realistic_text(len: usize) -> String {
    const SYMBOLS: &[&str] = &["ACME", "GLOBEX", "INITECH", "UMBRELLA", "HOOLI", "VANDELAY"];
    const STATUSES: &[&str] = &["open", "filled", "partially_filled", "cancelled"];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |bound: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) % bound
    };
    let mut text = String::with_capacity(len + 160);
    while text.len() < len {
        let record = format!(
            r#"{{\"id\":{},\"user\":\"user-{}\",\"symbol\":\"{}\",\"side\":\"{}\",\"price\":{}.{:02},\"qty\":{},\"status\":\"{}\"}},"#,
            4_800_000 + next(100_000),
            next(10_000),
            SYMBOLS[next(SYMBOLS.len() as u64) as usize],
            if next(2) == 0 { "buy" } else { "sell" },
            next(1000),
            next(100),
            1 + next(500),
            STATUSES[next(STATUSES.len() as u64) as usize],
        );
        text.push_str(&record);
    }
    // Whole records only, so no escape is cut in half.
    while text.len() > len {
        match text[..text.len() - 1].rfind("},") {
            Some(end) if end > 0 => text.truncate(end + 2),
            _ => break,
        }
    }
    text
}

/// `--timeout-secs`, or the scenario's default.
fn timeout_secs(cli: &Cli) -> u64 {
    let drain = cli.common.drain_secs.max(0.0);
    cli.common.timeout_secs.unwrap_or_else(|| cli.scenario.default_timeout_secs(drain))
}

fn run(cli: Cli, ctx: Ctx) -> ExitCode {
    stats::clock_us();
    let name = cli.scenario.name();
    let mut parameters = cli.scenario.parameters();
    parameters["payload_bytes"] = json!(cli.common.payload_bytes);
    let timeout = timeout_secs(&cli);
    parameters["timeout_secs"] = json!(timeout);
    parameters["threads"] = json!(cli.common.threads);
    parameters["sources"] = json!(cli.common.sources);
    parameters["port"] = json!(cli.common.port);
    if !cli.common.subscriber_ports.is_empty() {
        parameters["subscriber_ports"] = json!(cli.common.subscriber_ports);
    }
    parameters["server_pid"] = json!(cli.common.server_pid);
    start_watchdog(name, Duration::from_secs(timeout + 30));

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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("plexus-bench").chain(args.iter().copied()))
    }

    #[test]
    fn hostile_defaults_and_attack_selection() {
        let cli = parse(&["hostile"]).unwrap();
        let Scenario::Hostile(h) = &cli.scenario else { panic!("not hostile") };
        assert_eq!((h.subscribers, h.channels, h.attackers), (5000, 50, 100));
        assert_eq!(h.attack_list().unwrap().len(), scenario::hostile::attacks::Attack::ALL.len());
        assert!(cli.scenario.validate().is_ok());
        // No --timeout-secs: long enough for both phases and every wait.
        assert!(timeout_secs(&cli) > 20 + 60 + 30);

        let cli = parse(&["hostile", "--attacks", "tcp_idle,api_unsigned", "--timeout-secs", "500"]).unwrap();
        let Scenario::Hostile(h) = &cli.scenario else { panic!("not hostile") };
        let names: Vec<&str> = h.attack_list().unwrap().iter().map(|a| a.name()).collect();
        assert_eq!(names, ["tcp_idle", "api_unsigned"]);
        assert_eq!(timeout_secs(&cli), 500);

        let cli = parse(&["hostile", "--attacks", "tcp_idle,nope"]).unwrap();
        assert!(cli.scenario.validate().unwrap_err().contains("unknown attack \"nope\""));
        assert!(parse(&["hostile", "--tenant", "only-two:parts"]).is_err());
        assert_eq!(timeout_secs(&parse(&["fanout"]).unwrap()), 60);
    }
}
