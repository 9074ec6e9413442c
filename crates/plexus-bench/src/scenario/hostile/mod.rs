//! `hostile`: honest load while the server is attacked, and whether the honest side noticed.
//!
//! One run, one server, two phases of the same honest load:
//!
//! 1. **baseline**: app A's subscribers (`--subscribers` over `--channels` public channels,
//!    connected for the whole run) get a steady fan-out published through the signed HTTP API,
//!    while app B's presence users join and leave and B's webhooks arrive at the endpoint this
//!    bench serves ([`sink`]);
//! 2. **attacked**: the same, while `--attackers` clients run every attack of [`attacks`].
//!
//! Then the attackers are gone and the server gets up to `--settle-secs` for its descriptors and
//! memory to come back ([`health`]). The JSON line has both phases' honest figures (latency,
//! lost, duplicated and reordered events, refused publishes, B's webhooks expected and
//! received), the server's descriptors and RSS before, during (max) and after, each attack's
//! tally, and the targets (met or not; nothing here fails a run).

pub mod attacks;
pub mod health;
pub mod honest;
pub mod raw;
pub mod sink;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use self::attacks::{attacker, Attack, AttackEnv, Tally, QUICK};
use self::health::{load_average, sample_json, Sample, Sampler, WaitMeter};
use self::honest::{
    channel_name, presence_churn, probe, ChurnReport, HonestResult, HonestSubscribers, PHASE_EVENTS,
};
use self::sink::{Endpoint, Sink};
use super::{wait_until, Ctx};
use crate::publisher::{publish, PublishPlan, PublishReport};
use crate::stats::{round3, CpuMeter, Errors, Latencies};
use crate::target::Target;

/// An app's credentials as given on the command line: `id:key:secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub id: String,
    pub key: String,
    pub secret: String,
}

impl std::str::FromStr for Creds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(key), Some(secret))
                if !id.is_empty() && !key.is_empty() && !secret.is_empty() =>
            {
                Ok(Creds { id: id.into(), key: key.into(), secret: secret.into() })
            }
            _ => Err(format!("expected ID:KEY:SECRET, got {s:?}")),
        }
    }
}

/// Scenario settings.
#[derive(Debug, Clone)]
pub struct Params {
    pub subscribers: usize,
    pub channels: usize,
    /// Honest events per second, all channels together.
    pub rate: f64,
    pub http_connections: usize,
    pub baseline_secs: f64,
    /// How long the attackers attack (and the attacked phase publishes).
    pub duration_secs: f64,
    pub attackers: usize,
    pub attacks: Vec<Attack>,
    pub hold_secs: f64,
    pub trickle_secs: f64,
    pub slow_sockets: usize,
    pub attack_pause_ms: u64,
    pub api_burst: usize,
    pub hoard_cap: usize,
    pub churn_ops: usize,
    /// Attackers connect from 127.0.0.2 ..= 127.0.0.(1 + N).
    pub attack_sources: u8,
    pub settle_secs: f64,
    pub webhook_wait_secs: f64,
    pub presence_users: usize,
    pub presence_channels: usize,
    pub webhook_port: u16,
    pub app_b: Creds,
    pub tenant: Option<Creds>,
    pub token_tenant: Option<Creds>,
}

impl Params {
    /// The longest a run can take with these settings, setup and waits included (for the
    /// default `--timeout-secs`).
    pub fn budget_secs(&self, drain_secs: f64) -> u64 {
        let phases = self.baseline_secs + self.duration_secs;
        let waits = 2.0 * (drain_secs + self.webhook_wait_secs + QUICK.as_secs_f64()) + self.settle_secs;
        (60.0 + phases + waits).ceil() as u64
    }
}

/// Descriptors above the baseline still counted as "back": the server's own pooled webhook
/// connections and the like.
const FD_SLACK: u64 = 20;
/// RSS up to this factor of the baseline counts as "back".
const RSS_FACTOR: f64 = 1.10;

/// What one phase produced (honest deliveries are counted after the run).
struct Phase {
    secs: f64,
    started: Instant,
    publish: PublishReport,
    churn: ChurnReport,
    probe: Value,
    attacks: Vec<(Attack, Tally)>,
    bench_cpu: Option<f64>,
    server_cpu: Option<f64>,
    /// Time spent runnable but without a CPU, per second (see [`health::runqueue_wait_secs`]).
    bench_cpu_wait: Option<f64>,
    server_cpu_wait: Option<f64>,
    errors: Errors,
}

pub async fn run(ctx: Arc<Ctx>, p: Params) -> Value {
    let mut errors = Errors::default();
    let sampler = Sampler::start(ctx.server_pid, Duration::from_millis(250));
    let initial = sampler.now();
    let load_start = load_average();
    let endpoints = vec![
        Endpoint { path: "/a", secret: ctx.target.secret.clone() },
        Endpoint { path: "/b", secret: p.app_b.secret.clone() },
    ];
    let sink = match Sink::start(p.webhook_port, endpoints).await {
        Ok(sink) => sink,
        Err(e) => {
            errors.add(format!("webhook_endpoint_{}", crate::ws::io_kind(&e)));
            return json!({"errors": errors.to_json()});
        }
    };
    let app_target = |c: &Creds| Target {
        addr: ctx.target.addr,
        host_header: ctx.target.host_header.clone(),
        app_id: c.id.clone(),
        key: c.key.clone(),
        secret: c.secret.clone(),
        deflate: ctx.target.deflate,
    };
    let b = app_target(&p.app_b);
    let channels = p.channels.max(1);
    let events = [(p.rate * p.baseline_secs).round() as u64, (p.rate * p.duration_secs).round() as u64];
    let per_channel = events.map(|e| e.div_ceil(channels as u64) as usize);

    let setup_start = Instant::now();
    let subs = HonestSubscribers::spawn(&ctx, p.subscribers, channels, per_channel);
    let ready = subs.wait_ready(ctx.deadline).await;
    let setup_secs = setup_start.elapsed().as_secs_f64();
    if ready == 0 {
        errors.add("no_subscriber_ready");
    }

    let baseline = run_phase(&ctx, &p, &subs, &sink, &b, 0, None).await;
    let before = sampler.now();
    sampler.take_max();

    let env = AttackEnv {
        addr: ctx.target.addr,
        host: ctx.target.host_header.clone(),
        // The attackers know A's id and key, never its secret.
        a: Target { secret: String::new(), ..ctx.target.clone() },
        tenant: p.tenant.as_ref().map(app_target),
        token_tenant: p.token_tenant.as_ref().map(app_target),
        honest_channels: (0..channels).map(channel_name).collect(),
        sources: (0..p.attack_sources.max(1)).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i))).collect(),
        hold: Duration::from_secs_f64(p.hold_secs),
        trickle: Duration::from_secs_f64(p.trickle_secs),
        slow_sockets: p.slow_sockets.max(1),
        pause: Duration::from_millis(p.attack_pause_ms),
        api_burst: p.api_burst.max(1),
        hoard_cap: p.hoard_cap.max(1),
        churn_ops: p.churn_ops.max(1),
        // Set by run_phase.
        phase_end: Instant::now(),
    };
    let skipped: Vec<&str> = p.attacks.iter().filter(|a| !env.can_run(**a)).map(|a| a.name()).collect();
    let mut attacked = run_phase(&ctx, &p, &subs, &sink, &b, 1, Some(env)).await;
    let attack_tallies = std::mem::take(&mut attacked.attacks);
    let during = sampler.take_max();
    let settle_until = ctx.cap(Instant::now() + Duration::from_secs_f64(p.settle_secs));
    let settled = sampler.settle(before, FD_SLACK, RSS_FACTOR, settle_until).await;
    let after = settled.last;
    let secs = |d: Option<Duration>| d.map(|d| round3(d.as_secs_f64()));

    let results = subs.stop().await;
    let phases = [&baseline, &attacked];
    let honest: Vec<Value> = (0..2)
        .map(|k| honest_json(&results, k, phases[k], phases.get(k + 1).map(|n| n.started), channels))
        .collect();
    let presence: Vec<Value> = (0..2).map(|k| presence_json(&sink, k, phases[k])).collect();
    let webhooks_a = sink.with("/a", |r| r.to_json());
    let webhooks_b = sink.with("/b", |r| r.to_json());
    drop(sink);

    let mut tallies: Vec<(Attack, usize, Tally)> = Vec::new();
    for (attack, tally) in attack_tallies {
        match tallies.iter_mut().find(|(a, _, _)| *a == attack) {
            Some((_, n, total)) => {
                *n += 1;
                total.merge(tally);
            }
            None => tallies.push((attack, 1, tally)),
        }
    }
    let attacks: serde_json::Map<String, Value> =
        tallies.into_iter().map(|(a, n, t)| (a.name().to_owned(), t.into_json(a, n))).collect();

    let phase_json = |k: usize, ph: &Phase| {
        json!({
            "secs": ph.secs,
            "honest": honest[k],
            "presence_b": presence[k],
            "health_probe": ph.probe,
            "bench_cpu": ph.bench_cpu,
            "server_cpu": ph.server_cpu,
            "bench_cpu_wait": ph.bench_cpu_wait,
            "server_cpu_wait": ph.server_cpu_wait,
        })
    };
    let targets = targets(&honest, &presence, before, after);
    errors.merge(baseline.errors.clone());
    errors.merge(attacked.errors.clone());
    json!({
        "subscribers_ready": ready,
        "setup_secs": round3(setup_secs),
        "baseline": phase_json(0, &baseline),
        "attacked": phase_json(1, &attacked),
        "server": {
            "initial": sample_json(initial),
            "before": sample_json(before),
            "during_max": sample_json(during),
            "after": sample_json(after),
            "fds_back_after_secs": secs(settled.fds_back_after),
            "rss_back_after_secs": secs(settled.rss_back_after),
            "settle_limit_secs": p.settle_secs,
        },
        "attacks": attacks,
        "attacks_skipped": skipped,
        "load_average": {"start": load_start, "end": load_average()},
        "webhooks_a": webhooks_a,
        "webhooks_b": webhooks_b,
        "targets": targets,
        "errors": errors.to_json(),
    })
}

/// Publishes phase `k`'s events while B's presence users churn, the probe probes and (in the
/// attacked phase) the attackers attack; then waits for late deliveries and B's webhooks.
async fn run_phase(
    ctx: &Arc<Ctx>,
    p: &Params,
    subs: &HonestSubscribers,
    sink: &Sink,
    b: &Target,
    k: usize,
    env: Option<AttackEnv>,
) -> Phase {
    let mut errors = Errors::default();
    let secs = if k == 0 { p.baseline_secs } else { p.duration_secs };
    let started = Instant::now();
    let end = ctx.cap(started + Duration::from_secs_f64(secs));
    let cpu = CpuMeter::start();
    let server_cpu = ctx.server_cpu();
    let bench_wait = WaitMeter::start(None);
    let server_wait = ctx.server_pid.map(|pid| WaitMeter::start(Some(pid)));
    let churn =
        tokio::spawn(presence_churn(ctx.clone(), b.clone(), p.presence_users, p.presence_channels, k, end));
    let probe = tokio::spawn(probe(ctx.target.addr, ctx.target.host_header.clone(), end));
    let mut attackers = Vec::new();
    if let Some(mut env) = env {
        env.phase_end = end;
        let runnable: Vec<Attack> = p.attacks.iter().copied().filter(|a| env.can_run(*a)).collect();
        let env = Arc::new(env);
        if !runnable.is_empty() {
            for i in 0..p.attackers {
                let attack = runnable[i % runnable.len()];
                attackers.push((attack, tokio::spawn(attacker(env.clone(), i, attack))));
            }
        }
    }
    let channels = p.channels.max(1);
    let plan = PublishPlan {
        event: PHASE_EVENTS[k],
        events: (p.rate * secs).round() as u64,
        channels: (0..channels).map(channel_name).collect(),
        rate: Some(p.rate),
        connections: p.http_connections,
        window: 1024,
        affinity: true,
        padding: ctx.padding.clone(),
        deadline: ctx.deadline,
    };
    let publish = publish(&ctx.target, &plan).await;
    let accepted: Vec<u64> = (0..channels).map(|c| publish.accepted_on(c)).collect();
    let expected_all: u64 = (0..p.subscribers).map(|i| accepted[i % channels]).sum();
    let drain_until = ctx.cap(publish.last_send.unwrap_or_else(Instant::now) + ctx.drain);
    if !wait_until(drain_until, || subs.received(k) >= expected_all).await {
        errors.add(format!("{}_drain_timeout", phase_name(k)));
    }

    // Attackers stop at the phase's end; each wait of theirs is bounded, so this is a backstop.
    let mut tallies = Vec::new();
    let overrun = ctx.cap(end + QUICK + Duration::from_secs(10));
    for (attack, handle) in attackers {
        let abort = handle.abort_handle();
        match tokio::time::timeout_at(overrun.into(), handle).await {
            Ok(Ok(tally)) => tallies.push((attack, tally)),
            Ok(Err(_)) => errors.add("attacker_panicked"),
            Err(_) => {
                abort.abort();
                errors.add("attacker_overran");
            }
        }
    }
    let churn = churn.await.unwrap_or_else(|_| {
        errors.add("presence_task_panicked");
        ChurnReport::default()
    });
    let probe = probe.await.unwrap_or(Value::Null);
    let bench_cpu = cpu.fraction();
    let server_cpu = server_cpu.and_then(|m| m.fraction());
    let bench_cpu_wait = bench_wait.fraction();
    let server_cpu_wait = server_wait.and_then(|m| m.fraction());
    // B's webhooks: member_removed waits out the server's vacate delay, then batching and
    // retries; wait for all of them, within bounds.
    let prefix = format!("p{k}-");
    let webhooks_until = ctx.cap(Instant::now() + Duration::from_secs_f64(p.webhook_wait_secs));
    let all_in = || {
        sink.with("/b", |r| {
            r.distinct("member_added", &prefix) >= churn.joins
                && r.distinct("member_removed", &prefix) >= churn.leaves
        })
    };
    if !wait_until(webhooks_until, all_in).await {
        errors.add(format!("{}_webhooks_b_missing_after_wait", phase_name(k)));
    }
    Phase {
        secs,
        started,
        publish,
        churn,
        probe,
        attacks: tallies,
        bench_cpu,
        server_cpu,
        bench_cpu_wait,
        server_cpu_wait,
        errors,
    }
}

fn phase_name(k: usize) -> &'static str {
    ["baseline", "attacked"][k]
}

/// Honest deliveries of phase `k`; a subscriber lost during the phase (before `next_start`)
/// counts there.
fn honest_json(
    results: &[HonestResult],
    k: usize,
    phase: &Phase,
    next_start: Option<Instant>,
    channels: usize,
) -> Value {
    let report = &phase.publish;
    let accepted: Vec<u64> = (0..channels).map(|c| report.accepted_on(c)).collect();
    let (mut expected, mut received, mut lost, mut duplicates, mut reordered, mut disconnected) =
        (0, 0, 0, 0, 0, 0);
    let mut latencies = Latencies::default();
    let mut errors = Errors::default();
    for r in results {
        let s = &r.phases[k];
        if r.ready {
            let e = accepted[r.index % channels];
            expected += e;
            lost += e.saturating_sub(s.seq.unique);
        }
        received += s.seq.unique;
        duplicates += s.seq.duplicates;
        reordered += s.seq.reordered;
        latencies.merge(s.latencies.clone());
        errors.merge(s.errors.clone());
        if let Some((_, at)) = &r.lost {
            if *at >= phase.started && next_start.is_none_or(|n| *at < n) {
                disconnected += 1;
            }
        }
    }
    errors.merge(report.errors.clone());
    let accepted_total: u64 = accepted.iter().sum();
    json!({
        "events_published": report.sent,
        "events_accepted": accepted_total,
        "publish_refused": report.sent - accepted_total,
        "deliveries_expected": expected,
        "deliveries_received": received,
        "lost": lost,
        "duplicates": duplicates,
        "reordered": reordered,
        "disconnected": disconnected,
        "latency_ms": latencies.summary(),
        "publish_http_latency_ms": report.http.clone().summary(),
        "errors": errors.to_json(),
    })
}

/// App B's joins and leaves in phase `k` against the webhooks that arrived for them.
fn presence_json(sink: &Sink, k: usize, phase: &Phase) -> Value {
    let prefix = format!("p{k}-");
    let churn = &phase.churn;
    let (added, removed, first_added) = sink.with("/b", |r| {
        let first: HashMap<String, Instant> = r
            .first_seen
            .iter()
            .filter(|((name, _, user), _)| name == "member_added" && user.starts_with(&prefix))
            .map(|((_, _, user), at)| (user.clone(), *at))
            .collect();
        (r.distinct("member_added", &prefix), r.distinct("member_removed", &prefix), first)
    });
    let mut delay = Latencies::default();
    for (user, joined) in &churn.joined {
        if let Some(at) = first_added.get(user) {
            delay.record(at.saturating_duration_since(*joined));
        }
    }
    json!({
        "joins": churn.joins,
        "leaves": churn.leaves,
        "join_failures": churn.failures.to_json(),
        "join_latency_ms": churn.join_latency.clone().summary(),
        "webhooks": {
            "member_added": {"expected": churn.joins, "received": added},
            "member_removed": {"expected": churn.leaves, "received": removed},
        },
        "member_added_webhook_delay_ms": delay.summary(),
    })
}

/// The targets, met or not: honest p99 within 20 % of the baseline, no honest event lost or
/// refused, every webhook of B received, descriptors and RSS back to where they were.
fn targets(honest: &[Value], presence: &[Value], before: Sample, after: Sample) -> Value {
    let p99 = |k: usize| honest[k]["latency_ms"]["p99"].as_f64();
    let within = match (p99(0), p99(1)) {
        (Some(b), Some(a)) => Some(a <= b * 1.2),
        _ => None,
    };
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let webhooks_all = presence.iter().all(|p| {
        ["member_added", "member_removed"]
            .iter()
            .all(|kind| u(&p["webhooks"][kind]["received"]) >= u(&p["webhooks"][kind]["expected"]))
    });
    let fds_back = match (after.fds, before.fds) {
        (Some(a), Some(b)) => Some(a <= b + FD_SLACK),
        _ => None,
    };
    let rss_back = match (after.rss_kib, before.rss_kib) {
        (Some(a), Some(b)) => Some(a as f64 <= b as f64 * RSS_FACTOR),
        _ => None,
    };
    json!({
        "honest_p99_within_20pct_of_baseline": within,
        "attacked_p99_over_baseline": match (p99(0), p99(1)) {
            (Some(b), Some(a)) if b > 0.0 => Some(round3(a / b)),
            _ => None,
        },
        "no_honest_event_lost": u(&honest[1]["lost"]) == 0 && u(&honest[0]["lost"]) == 0,
        "no_honest_publish_refused": u(&honest[1]["publish_refused"]) == 0 && u(&honest[0]["publish_refused"]) == 0,
        "all_b_webhooks_received": webhooks_all,
        "fds_back_to_baseline": fds_back,
        "rss_back_to_baseline": rss_back,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse() {
        let c: Creds = "b:key:sec:ret".parse().unwrap();
        assert_eq!((c.id.as_str(), c.key.as_str(), c.secret.as_str()), ("b", "key", "sec:ret"));
        assert!("b:key".parse::<Creds>().is_err());
        assert!("b::s".parse::<Creds>().is_err());
    }
}
