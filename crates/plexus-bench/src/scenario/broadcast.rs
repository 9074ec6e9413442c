//! `broadcast`: N subscribers on one public channel, M events published back to back through
//! the HTTP API. Measures the time from the first publish until every subscriber has every
//! event, deliveries per second, delivery latency, loss and duplicates.

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
    pub events: u64,
    pub http_connections: usize,
    pub window: usize,
}

pub const CHANNEL: &str = "bench-broadcast";

pub async fn run(ctx: Arc<Ctx>, p: Params) -> Value {
    let mut errors = Errors::default();
    let rss_before = ctx.server_rss();
    let wire_before = crate::ws::wire_bytes_received();
    let subs =
        Subscribers::spawn(&ctx, p.subscribers, |_| CHANNEL.to_string(), false, API_EVENT, p.events as usize);
    let plan = PublishPlan {
        event: API_EVENT,
        events: p.events,
        channels: vec![CHANNEL.to_string()],
        rate: None,
        connections: p.http_connections,
        window: p.window,
        affinity: false,
        padding: ctx.padding.clone(),
        deadline: ctx.deadline,
    };
    let PublishPhase { ready, setup_secs, rss_subscribed, cpu, server_cpu, report } =
        subscribe_then_publish(&ctx, &subs, plan, &mut errors).await;
    let accepted = report.sent_per_channel.first().map_or(0, |_| report.accepted_on(0));
    let expected = ready as u64 * accepted;
    let drain_until = ctx.cap(report.last_send.unwrap_or_else(Instant::now) + ctx.drain);
    if !super::wait_until(drain_until, || subs.received() >= expected).await {
        errors.add(if Instant::now() >= ctx.deadline { "deadline_exceeded" } else { "drain_timeout" });
    }
    let bench_cpu_measure = cpu.fraction();
    let server_cpu_measure = server_cpu.and_then(|m| m.fraction());
    let results = subs.stop().await;
    let wire_bytes = crate::ws::wire_bytes_received() - wire_before;
    let d = Deliveries::collect(results, |_| accepted);
    errors.merge(report.errors);
    errors.merge(d.errors);
    let rss_after = ctx.server_rss();

    let delivery_secs = match (report.first_send, d.last_new) {
        (Some(first), Some(last)) => Some(last.duration_since(first).as_secs_f64()),
        _ => None,
    };
    let publish_secs = match (report.first_send, report.last_send) {
        (Some(a), Some(b)) => Some(b.duration_since(a).as_secs_f64()),
        _ => None,
    };
    json!({
        "subscribers_ready": ready,
        "setup_secs": round3(setup_secs),
        "events_published": report.sent,
        "events_accepted": accepted,
        "deliveries_expected": d.expected,
        "deliveries_received": d.received,
        "complete": d.lost == 0 && d.expected > 0,
        "loss": d.lost,
        "duplicates": d.duplicates,
        "delivery_secs": delivery_secs.map(round3),
        "deliveries_per_sec": delivery_secs.filter(|s| *s > 0.0).map(|s| (d.received as f64 / s).round()),
        "latency_ms": d.latencies.summary(),
        // Everything the subscribers read after their handshakes (their setup frames too), over
        // the deliveries: the bytes on the wire one delivered event costs.
        "wire_bytes_per_delivery": (d.received > 0).then(|| (wire_bytes as f64 / d.received as f64).round()),
        "publish": {
            "secs": publish_secs.map(round3),
            "http_latency_ms": report.http.summary(),
        },
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
