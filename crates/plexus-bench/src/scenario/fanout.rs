//! `fanout`: N subscribers spread round-robin over C public channels, events published open-loop
//! at a fixed total rate for a fixed time. Reports delivery latency, loss, duplicates,
//! reordering and the publish rate actually achieved (and how far sends fell behind).

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::{subscribe_then_publish, Ctx, Deliveries, PublishPhase, Subscribers};
use crate::publisher::PublishPlan;
use crate::pusher::API_EVENT;
use crate::stats::{round3, Errors};

/// Scenario settings.
#[derive(Debug, Clone)]
pub struct Params {
    pub subscribers: usize,
    pub channels: usize,
    pub rate: f64,
    pub duration_secs: f64,
    pub http_connections: usize,
    pub window: usize,
}

pub fn channel_name(c: usize) -> String {
    format!("bench-fanout-{c}")
}

pub async fn run(ctx: Arc<Ctx>, p: Params) -> Value {
    let mut errors = Errors::default();
    let channels = p.channels.max(1);
    let events = (p.rate * p.duration_secs).round() as u64;
    let per_channel = events.div_ceil(channels as u64) as usize;
    let rss_before = ctx.server_rss();
    let subs = Subscribers::spawn(
        &ctx,
        p.subscribers,
        |i| channel_name(i % channels),
        false,
        API_EVENT,
        per_channel,
    );
    let plan = PublishPlan {
        event: API_EVENT,
        events,
        channels: (0..channels).map(channel_name).collect(),
        rate: Some(p.rate),
        connections: p.http_connections,
        window: p.window,
        affinity: true,
        padding: ctx.padding.clone(),
        deadline: ctx.deadline,
    };
    let PublishPhase { ready, setup_secs, rss_subscribed, cpu, server_cpu, report } =
        subscribe_then_publish(&ctx, &subs, plan, &mut errors).await;
    let accepted: Vec<u64> = (0..report.sent_per_channel.len()).map(|c| report.accepted_on(c)).collect();
    let accepted_on = |i: usize| accepted.get(i % channels).copied().unwrap_or(0);
    // Only subscribed connections count; which ones they are is known after the stop, so wait
    // for the upper bound and let the drain timeout cover failed subscribers.
    let expected_all: u64 = (0..p.subscribers).map(accepted_on).sum();
    let drain_until = ctx.cap(report.last_send.unwrap_or_else(Instant::now) + ctx.drain);
    let all_ready = ready == p.subscribers;
    if !super::wait_until(drain_until, || subs.received() >= expected_all).await && all_ready {
        errors.add(if Instant::now() >= ctx.deadline { "deadline_exceeded" } else { "drain_timeout" });
    }
    let bench_cpu_measure = cpu.fraction();
    let server_cpu_measure = server_cpu.and_then(|m| m.fraction());
    let results = subs.stop().await;
    let d = Deliveries::collect(results, accepted_on);
    let achieved = report.achieved_rate();
    let lag = report.lag.summary();
    let lag_p99 = lag["p99"].as_f64();
    errors.merge(report.errors);
    errors.merge(d.errors);
    let rss_after = ctx.server_rss();

    json!({
        "subscribers_ready": ready,
        "setup_secs": round3(setup_secs),
        "events_planned": events,
        "events_published": report.sent,
        "events_accepted": accepted.iter().sum::<u64>(),
        "publish_rate_achieved": achieved.map(|r| (r * 10.0).round() / 10.0),
        // Late by more than 20 ms at p99, or more than 2% under the asked rate.
        "publisher_behind": lag_p99.is_some_and(|l| l > 20.0)
            || achieved.is_some_and(|r| r < 0.98 * p.rate),
        "publish_lag_ms": lag,
        "publish_http_latency_ms": report.http.summary(),
        "deliveries_expected": d.expected,
        "deliveries_received": d.received,
        "loss": d.lost,
        "duplicates": d.duplicates,
        "reordered": d.reordered,
        "latency_ms": d.latencies.summary(),
        "bench_cpu_measure": bench_cpu_measure,
        "server_cpu_measure": server_cpu_measure,
        "server_rss": {
            "before_kib": rss_before,
            "subscribed_kib": rss_subscribed,
            "after_kib": rss_after,
        },
        "errors": errors.to_json(),
    })
}
