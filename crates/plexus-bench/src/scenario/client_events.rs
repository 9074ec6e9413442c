//! `client-events`: P pairs of connections on `private-bench-{i}` (subscriptions signed with the
//! app secret); one side of each pair sends `client-bench` events, the other receives them. The
//! total rate is spread over the pairs on one shared timetable (event `j` is sent by pair
//! `j % P` at `j / R` seconds). Reports delivery latency, loss, duplicates and rejections.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

use super::{wait_until, Ctx, Deliveries, Subscribers};
use crate::pusher::{answer_ping, error_reason, event_name, write_payload, ws_reason, Session};
use crate::pusher::{CLIENT_EVENT, CLOSE_WAIT};
use crate::stats::{round3, CpuMeter, Errors};
use crate::ws::Flow;

/// The server's default per-connection client event limit (the digest §8).
pub const DEFAULT_SERVER_LIMIT: f64 = 10.0;

/// Scenario settings.
#[derive(Debug, Clone)]
pub struct Params {
    pub pairs: usize,
    pub rate: f64,
    pub duration_secs: f64,
}

pub fn channel_name(i: usize) -> String {
    format!("private-bench-{i}")
}

/// Counters shared by the senders and the driver.
#[derive(Debug, Default)]
struct Shared {
    ready: AtomicUsize,
    failed: AtomicUsize,
    /// Senders that sent their last event (or gave up).
    finished: AtomicUsize,
    sent: AtomicU64,
    rejected: AtomicU64,
}

struct SenderResult {
    index: usize,
    sent: u64,
    rejected: u64,
    errors: Errors,
}

pub async fn run(ctx: Arc<Ctx>, p: Params) -> Value {
    let mut errors = Errors::default();
    let mut warnings = Vec::new();
    let pairs = p.pairs.max(1);
    let total = (p.rate * p.duration_secs).round() as u64;
    let per_sender_rate = p.rate / pairs as f64;
    if per_sender_rate > DEFAULT_SERVER_LIMIT {
        let w = format!(
            "{per_sender_rate:.1} client events/s per connection exceeds the server's default \
             limit of {DEFAULT_SERVER_LIMIT}/s: raise max_client_events_per_second for the app \
             or use more --pairs"
        );
        eprintln!("plexus-bench: warning: {w}");
        warnings.push(w);
    }
    let receivers = Subscribers::spawn(
        &ctx,
        pairs,
        channel_name,
        true,
        CLIENT_EVENT,
        total.div_ceil(pairs as u64) as usize,
    );
    let shared = Arc::new(Shared::default());
    let (start, _) = watch::channel(None::<Instant>);
    let (stop, _) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(ctx.setup_concurrency.max(1)));
    let senders: Vec<_> = (0..pairs)
        .map(|i| {
            tokio::spawn(sender(
                ctx.clone(),
                i,
                Schedule { pairs: pairs as u64, rate: p.rate, total },
                gate.clone(),
                shared.clone(),
                start.subscribe(),
                stop.subscribe(),
            ))
        })
        .collect();

    let setup_start = Instant::now();
    let receivers_ready = receivers.wait_ready(ctx.deadline).await;
    wait_until(ctx.deadline, || {
        shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) >= pairs
    })
    .await;
    let senders_ready = shared.ready.load(Ordering::Relaxed);
    let setup_secs = setup_start.elapsed().as_secs_f64();

    let cpu = CpuMeter::start();
    let server_cpu = ctx.server_cpu();
    let start_at = Instant::now() + Duration::from_millis(20);
    let _ = start.send(Some(start_at));
    let send_end = ctx.cap(start_at + Duration::from_secs_f64(p.duration_secs) + ctx.drain);
    if !wait_until(send_end, || shared.finished.load(Ordering::Relaxed) >= pairs).await {
        errors.add("senders_behind_schedule");
    }
    let send_secs = start_at.elapsed().as_secs_f64();
    let drain_until = ctx.cap(Instant::now() + ctx.drain);
    let expected_now = || {
        shared.sent.load(Ordering::Relaxed)
            - shared.rejected.load(Ordering::Relaxed).min(shared.sent.load(Ordering::Relaxed))
    };
    if !wait_until(drain_until, || receivers.received() >= expected_now()).await && receivers_ready == pairs {
        errors.add(if Instant::now() >= ctx.deadline { "deadline_exceeded" } else { "drain_timeout" });
    }
    let bench_cpu_measure = cpu.fraction();
    let server_cpu_measure = server_cpu.and_then(|m| m.fraction());
    let _ = stop.send(true);
    let mut expected = vec![0u64; pairs];
    let (mut sent, mut rejected) = (0, 0);
    for s in senders {
        match s.await {
            Ok(r) => {
                expected[r.index] = r.sent.saturating_sub(r.rejected);
                sent += r.sent;
                rejected += r.rejected;
                errors.merge(r.errors);
            }
            Err(_) => errors.add("task_panicked"),
        }
    }
    let results = receivers.stop().await;
    let d = Deliveries::collect(results, |i| expected[i]);
    errors.merge(d.errors);
    json!({
        "receivers_ready": receivers_ready,
        "senders_ready": senders_ready,
        "setup_secs": round3(setup_secs),
        "events_planned": total,
        "events_sent": sent,
        "events_rejected": rejected,
        "send_rate_achieved": (send_secs > 0.0).then(|| (sent as f64 / send_secs).round()),
        "per_connection_rate": round3(per_sender_rate),
        "deliveries_expected": d.expected,
        "deliveries_received": d.received,
        "loss": d.lost,
        "duplicates": d.duplicates,
        "reordered": d.reordered,
        "latency_ms": d.latencies.summary(),
        "bench_cpu_measure": bench_cpu_measure,
        "server_cpu_measure": server_cpu_measure,
        "warnings": warnings,
        "errors": errors.to_json(),
    })
}

/// The shared timetable: event `j < total` is sent by pair `j % pairs` at `j / rate` seconds.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    pairs: u64,
    rate: f64,
    total: u64,
}

async fn sender(
    ctx: Arc<Ctx>,
    i: usize,
    schedule: Schedule,
    gate: Arc<Semaphore>,
    shared: Arc<Shared>,
    mut start: watch::Receiver<Option<Instant>>,
    mut stop: watch::Receiver<bool>,
) -> SenderResult {
    let mut result = SenderResult { index: i, sent: 0, rejected: 0, errors: Errors::default() };
    let channel = channel_name(i);
    let permit = gate.acquire().await;
    let setup = async {
        // Seeds differ from the receivers' so masks differ; sources alternate the other way.
        let mut s = Session::open(
            &ctx.target,
            ctx.source(i + 1),
            (i as u32).wrapping_mul(2_654_435_761),
            ctx.read_buffer,
            ctx.deadline,
        )
        .await?;
        s.subscribe(&ctx.target, &channel, true, ctx.deadline).await?;
        Ok::<_, String>(s)
    };
    let setup = tokio::select! {
        biased;
        _ = stop.changed() => Err("setup_cancelled".to_string()),
        s = setup => s,
    };
    drop(permit);
    let mut session = match setup {
        Ok(s) => s,
        Err(reason) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            shared.finished.fetch_add(1, Ordering::Relaxed);
            result.errors.add(format!("sender_{reason}"));
            return result;
        }
    };
    shared.ready.fetch_add(1, Ordering::Relaxed);
    let start_at = loop {
        if let Some(at) = *start.borrow_and_update() {
            break at;
        }
        tokio::select! {
            _ = stop.changed() => {
                shared.finished.fetch_add(1, Ordering::Relaxed);
                return result;
            }
            r = start.changed() => if r.is_err() {
                shared.finished.fetch_add(1, Ordering::Relaxed);
                return result;
            }
        }
    };

    let mut k = 0u64;
    let mut finished = false;
    let mut frame = Vec::with_capacity(ctx.padding.len() + 128);
    let mut rejected_here = 0u64;
    let lost = loop {
        let j = i as u64 + k * schedule.pairs;
        let next = (j < schedule.total).then(|| start_at + Duration::from_secs_f64(j as f64 / schedule.rate));
        if next.is_none() && !finished {
            finished = true;
            shared.finished.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break None,
            r = session.ws.fill() => {
                if let Err(e) = r {
                    break Some(ws_reason("sender", &e));
                }
                let errors = &mut result.errors;
                let drained = session.ws.drain(|text, out| {
                    if !answer_ping(text, out) && event_name(text) == Some(b"pusher:error") {
                        rejected_here += 1;
                        errors.add(format!("sender_{}", error_reason(text)));
                    }
                    Flow::Continue
                });
                if let Err(e) = drained {
                    break Some(ws_reason("sender", &e));
                }
            }
            _ = tokio::time::sleep_until(next.unwrap_or(start_at).into()), if next.is_some() => {
                frame.clear();
                let _ = write!(frame, r#"{{"event":"{CLIENT_EVENT}","channel":"{channel}","data":"#);
                write_payload(&mut frame, k, &ctx.padding);
                frame.push(b'}');
                session.ws.send_text(&frame);
                k += 1;
                result.sent += 1;
                shared.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        if rejected_here > 0 {
            result.rejected += rejected_here;
            shared.rejected.fetch_add(rejected_here, Ordering::Relaxed);
            rejected_here = 0;
        }
        if let Err(e) = session.ws.flush().await {
            break Some(ws_reason("sender", &e));
        }
    };
    if !finished {
        shared.finished.fetch_add(1, Ordering::Relaxed);
    }
    match lost {
        None => session.ws.close(1000, CLOSE_WAIT).await,
        Some(reason) => result.errors.add(reason),
    }
    result
}
