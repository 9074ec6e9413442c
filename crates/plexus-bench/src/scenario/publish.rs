//! `publish`: N signed HTTP publish requests (one event each, or `batch_events` with B events)
//! from C keep-alive connections in closed loop. Reports request latency and requests/events
//! per second. The channels have no subscribers, so this measures the API path itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::Ctx;
use crate::http::{push_json_str, HttpConn, Signer};
use crate::pusher::{write_payload, API_EVENT};
use crate::stats::{round3, CpuMeter, Errors, Latencies};

/// Scenario settings.
#[derive(Debug, Clone)]
pub struct Params {
    pub requests: u64,
    pub concurrency: usize,
    /// Events per request through `batch_events`; `None` = single-event `events`.
    pub batch: Option<usize>,
}

struct Worker {
    ok: u64,
    latencies: Latencies,
    errors: Errors,
}

pub async fn run(ctx: Arc<Ctx>, p: Params) -> Value {
    let next = Arc::new(AtomicU64::new(0));
    let cpu = CpuMeter::start();
    let server_cpu = ctx.server_cpu();
    let start = Instant::now();
    let workers: Vec<_> = (0..p.concurrency.max(1))
        .map(|w| tokio::spawn(worker(ctx.clone(), p.clone(), w, next.clone())))
        .collect();
    let mut ok = 0;
    let mut latencies = Latencies::with_capacity(p.requests as usize);
    let mut errors = Errors::default();
    for w in workers {
        match w.await {
            Ok(r) => {
                ok += r.ok;
                latencies.merge(r.latencies);
                errors.merge(r.errors);
            }
            Err(_) => errors.add("task_panicked"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let bench_cpu_measure = cpu.fraction();
    let server_cpu_measure = server_cpu.and_then(|m| m.fraction());
    let done = latencies.len() as u64;
    let per_request = p.batch.unwrap_or(1) as u64;
    json!({
        "requests_completed": done,
        "requests_ok": ok,
        "events_ok": ok * per_request,
        "secs": round3(secs),
        "requests_per_sec": (secs > 0.0).then(|| (done as f64 / secs).round()),
        "events_per_sec": (secs > 0.0).then(|| (ok as f64 * per_request as f64 / secs).round()),
        "latency_ms": latencies.summary(),
        "bench_cpu_measure": bench_cpu_measure,
        "server_cpu_measure": server_cpu_measure,
        "errors": errors.to_json(),
    })
}

async fn worker(ctx: Arc<Ctx>, p: Params, w: usize, next: Arc<AtomicU64>) -> Worker {
    let mut out = Worker { ok: 0, latencies: Latencies::default(), errors: Errors::default() };
    let signer = Signer::new(&ctx.target);
    let mut conn = HttpConn::new(ctx.target.addr);
    let (mut payload, mut body, mut request) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= p.requests {
            break;
        }
        if Instant::now() >= ctx.deadline {
            out.errors.add("deadline_exceeded");
            break;
        }
        body.clear();
        let endpoint = match p.batch {
            None => {
                payload.clear();
                write_payload(&mut payload, i, &ctx.padding);
                body.extend_from_slice(br#"{"name":""#);
                body.extend_from_slice(API_EVENT.as_bytes());
                body.extend_from_slice(br#"","channels":["#);
                push_json_str(&mut body, &format!("bench-publish-{w}"));
                body.extend_from_slice(br#"],"data":"#);
                push_json_str(&mut body, std::str::from_utf8(&payload).expect("ASCII"));
                body.push(b'}');
                "events"
            }
            Some(b) => {
                body.extend_from_slice(br#"{"batch":["#);
                for j in 0..b {
                    if j > 0 {
                        body.push(b',');
                    }
                    payload.clear();
                    write_payload(&mut payload, i * b as u64 + j as u64, &ctx.padding);
                    body.extend_from_slice(br#"{"channel":"#);
                    push_json_str(&mut body, &format!("bench-publish-{j}"));
                    body.extend_from_slice(br#","name":""#);
                    body.extend_from_slice(API_EVENT.as_bytes());
                    body.extend_from_slice(br#"","data":"#);
                    push_json_str(&mut body, std::str::from_utf8(&payload).expect("ASCII"));
                    body.push(b'}');
                }
                body.extend_from_slice(b"]}");
                "batch_events"
            }
        };
        request.clear();
        signer.post(endpoint, &body, &mut request);
        let sent = Instant::now();
        let result = tokio::time::timeout_at(ctx.deadline.into(), conn.round_trip(&request)).await;
        match result {
            Ok(Ok(status)) => {
                out.latencies.record(sent.elapsed());
                if status == 200 {
                    out.ok += 1;
                } else {
                    out.errors.add(format!("http_{status}"));
                }
            }
            Ok(Err(reason)) => out.errors.add(reason),
            Err(_) => {
                out.errors.add("deadline_exceeded");
                break;
            }
        }
    }
    out
}
