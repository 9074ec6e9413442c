//! `connections`: opens N connections at a fixed rate from K loopback source addresses, each
//! subscribing to its own channel, holds them while answering pings, then closes them. Reports
//! connect latency (TCP connect → `connection_established`), failures by reason, and the
//! server's RSS before, with everything open and after everything closed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::{wait_until, Ctx};
use crate::pusher::{answer_ping, ws_reason, Session, CLOSE_WAIT};
use crate::stats::{round3, CpuMeter, Errors, Latencies};
use crate::ws::Flow;

/// Scenario settings.
#[derive(Debug, Clone)]
pub struct Params {
    pub connections: usize,
    pub rate: f64,
    pub hold_secs: f64,
    /// Longest wait for the server's RSS to settle after the close.
    pub release_wait_secs: f64,
}

struct ConnResult {
    connect: Option<Duration>,
    subscribed: bool,
    errors: Errors,
}

pub async fn run(ctx: Arc<Ctx>, p: Params) -> Value {
    let mut errors = Errors::default();
    let rss_before = ctx.server_rss();
    let open = Arc::new(AtomicUsize::new(0));
    let settled_count = Arc::new(AtomicUsize::new(0));
    let (stop, _) = watch::channel(false);
    let cpu = CpuMeter::start();
    let server_cpu = ctx.server_cpu();
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(p.connections);
    for i in 0..p.connections {
        let at = t0 + Duration::from_secs_f64(i as f64 / p.rate);
        if at >= ctx.deadline {
            errors.add_n("deadline_exceeded", (p.connections - i) as u64);
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        handles.push(tokio::spawn(hold(
            ctx.clone(),
            i,
            open.clone(),
            settled_count.clone(),
            stop.subscribe(),
        )));
    }
    let ramp_secs = t0.elapsed().as_secs_f64();
    let started = handles.len();
    let settled = wait_until(ctx.deadline, || settled_count.load(Ordering::Relaxed) >= started).await;
    if !settled {
        errors.add("deadline_exceeded");
    }
    let all_open_secs = t0.elapsed().as_secs_f64();
    let cpu_ramp = cpu.fraction();
    let server_cpu_ramp = server_cpu.and_then(|m| m.fraction());
    let hold_until = ctx.cap(Instant::now() + Duration::from_secs_f64(p.hold_secs));
    tokio::time::sleep_until(hold_until.into()).await;
    let open_at_end = open.load(Ordering::Relaxed);
    let rss_with = ctx.server_rss();

    let _ = stop.send(true);
    let mut latencies = Latencies::with_capacity(started);
    let mut subscribed = 0u64;
    for h in handles {
        match h.await {
            Ok(r) => {
                if let Some(d) = r.connect {
                    latencies.record(d);
                }
                subscribed += r.subscribed as u64;
                errors.merge(r.errors);
            }
            Err(_) => errors.add("task_panicked"),
        }
    }
    let closed_at = Instant::now();
    let rss_after = match ctx.server_pid {
        Some(_) => settle_rss(&ctx, Duration::from_secs_f64(p.release_wait_secs)).await,
        None => None,
    };
    let per_conn = match (rss_before, rss_with) {
        (Some(b), Some(w)) if subscribed > 0 => Some(w.saturating_sub(b) as f64 * 1024.0 / subscribed as f64),
        _ => None,
    };
    json!({
        "connections_attempted": started,
        "connections_subscribed": subscribed,
        "connections_open_at_end_of_hold": open_at_end,
        "ramp_secs": round3(ramp_secs),
        "all_open_secs": round3(all_open_secs),
        "connect_rate_achieved": (ramp_secs > 0.0).then(|| (started as f64 / ramp_secs).round()),
        "connect_latency_ms": latencies.summary(),
        "bench_cpu_ramp": cpu_ramp,
        "server_cpu_ramp": server_cpu_ramp,
        "close_secs": round3(closed_at.elapsed().as_secs_f64()),
        "server_rss": {
            "before_kib": rss_before,
            "with_all_open_kib": rss_with,
            "after_close_kib": rss_after,
            "per_connection_bytes": per_conn.map(|b| b.round()),
            "per_connection_kib": per_conn.map(|b| round3(b / 1024.0)),
        },
        "errors": errors.to_json(),
    })
}

/// Samples the server's RSS every 250 ms until two readings agree or `wait` passes.
async fn settle_rss(ctx: &Ctx, wait: Duration) -> Option<u64> {
    let until = Instant::now() + wait;
    let mut last = ctx.server_rss();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = ctx.server_rss();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// One connection: open, subscribe to `idle-{i}`, answer pings until told to stop.
async fn hold(
    ctx: Arc<Ctx>,
    i: usize,
    open: Arc<AtomicUsize>,
    settled: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> ConnResult {
    let mut result = ConnResult { connect: None, subscribed: false, errors: Errors::default() };
    let start = Instant::now();
    let setup = async {
        let mut s =
            Session::open(&ctx.target, ctx.source(i), i as u32 ^ 0x85eb_ca6b, ctx.read_buffer, ctx.deadline)
                .await?;
        let connect = start.elapsed();
        s.subscribe(&ctx.target, &format!("idle-{i}"), false, ctx.deadline).await?;
        Ok::<_, String>((s, connect))
    };
    let setup = tokio::select! {
        biased;
        _ = stop.changed() => Err("setup_cancelled".to_string()),
        s = setup => s,
    };
    let mut session = match setup {
        Ok((s, connect)) => {
            result.connect = Some(connect);
            result.subscribed = true;
            s
        }
        Err(reason) => {
            settled.fetch_add(1, Ordering::Relaxed);
            result.errors.add(reason);
            return result;
        }
    };
    open.fetch_add(1, Ordering::Relaxed);
    settled.fetch_add(1, Ordering::Relaxed);
    let lost = loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break None,
            r = session.ws.fill() => {
                if let Err(e) = r {
                    break Some(ws_reason("dropped", &e));
                }
            }
        }
        if let Err(e) = session.ws.drain(|text, out| {
            answer_ping(text, out);
            Flow::Continue
        }) {
            break Some(ws_reason("dropped", &e));
        }
        if let Err(e) = session.ws.flush().await {
            break Some(ws_reason("dropped", &e));
        }
    };
    match lost {
        None => session.ws.close(1000, CLOSE_WAIT).await,
        Some(reason) => {
            open.fetch_sub(1, Ordering::Relaxed);
            result.errors.add(reason);
        }
    }
    result
}
