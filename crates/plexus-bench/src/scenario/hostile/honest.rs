//! The honest side of the hostile scenario:
//!
//! - app A's subscribers, each on one of C public channels for the whole run, counting the
//!   events of each phase apart (the phases publish under different event names);
//! - app B's presence users, joining and leaving for a phase, each join under a user id never
//!   used before (so no `member_removed`/`member_added` pair can cancel out and every join and
//!   leave owes exactly one webhook);
//! - a health probe: a fresh TCP connection with `GET /health` twice a second.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use super::super::{wait_until, Ctx};
use crate::http::parse_response;
use crate::pusher::{answer_ping, event_name, ws_reason, Receiver, ReceiverStats, Session, CLOSE_WAIT};
use crate::rbuf::ReadBuf;
use crate::stats::{Errors, Latencies};
use crate::target::Target;
use crate::ws::{io_kind, Flow, Outbox};

/// Event names of the two phases: baseline, then attacked.
pub const PHASE_EVENTS: [&str; 2] = ["hostile-baseline", "hostile-attacked"];

/// Name of honest channel `c`.
pub fn channel_name(c: usize) -> String {
    format!("honest-{c}")
}

/// Splits a subscriber's messages between the receivers of the two phases.
#[derive(Debug)]
struct PhasedReceiver {
    phases: [Receiver; 2],
}

impl PhasedReceiver {
    fn on_text(&mut self, text: &[u8], out: &mut Outbox) -> Flow {
        if event_name(text) == Some(PHASE_EVENTS[1].as_bytes()) {
            self.phases[1].on_text(text, out)
        } else {
            self.phases[0].on_text(text, out)
        }
    }
}

/// One honest subscriber's outcome.
#[derive(Debug)]
pub struct HonestResult {
    pub index: usize,
    pub ready: bool,
    pub phases: [ReceiverStats; 2],
    /// Why and when the connection ended before it was told to stop, if it did.
    pub lost: Option<(String, Instant)>,
}

/// App A's honest subscribers.
#[derive(Debug)]
pub struct HonestSubscribers {
    handles: Vec<JoinHandle<HonestResult>>,
    ready: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    received: [Arc<AtomicU64>; 2],
    stop: watch::Sender<bool>,
}

impl HonestSubscribers {
    /// Starts `n` subscribers on `channels` channels (subscriber `i` on channel `i % channels`);
    /// `per_phase` sizes each phase's latency buffer.
    pub fn spawn(ctx: &Arc<Ctx>, n: usize, channels: usize, per_phase: [usize; 2]) -> HonestSubscribers {
        let ready = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let received = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        let (stop, _) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(ctx.setup_concurrency.max(1)));
        let handles = (0..n)
            .map(|i| {
                let receiver = PhasedReceiver {
                    phases: [
                        Receiver::new(PHASE_EVENTS[0], received[0].clone(), per_phase[0]),
                        Receiver::new(PHASE_EVENTS[1], received[1].clone(), per_phase[1]),
                    ],
                };
                tokio::spawn(subscriber(
                    ctx.clone(),
                    i,
                    channel_name(i % channels.max(1)),
                    gate.clone(),
                    ready.clone(),
                    failed.clone(),
                    receiver,
                    stop.subscribe(),
                ))
            })
            .collect();
        HonestSubscribers { handles, ready, failed, received, stop }
    }

    /// Waits until every subscriber is subscribed or failed (or `until`); returns how many are ready.
    pub async fn wait_ready(&self, until: Instant) -> usize {
        let n = self.handles.len();
        wait_until(until, || self.ready.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed) >= n)
            .await;
        self.ready.load(Ordering::Relaxed)
    }

    /// New events of phase `p` received, all subscribers together.
    pub fn received(&self, p: usize) -> u64 {
        self.received[p].load(Ordering::Relaxed)
    }

    /// Tells every subscriber to close and collects their results.
    pub async fn stop(self) -> Vec<HonestResult> {
        let _ = self.stop.send(true);
        let mut results = Vec::with_capacity(self.handles.len());
        for h in self.handles {
            if let Ok(r) = h.await {
                results.push(r);
            }
        }
        results
    }
}

#[allow(clippy::too_many_arguments)]
async fn subscriber(
    ctx: Arc<Ctx>,
    index: usize,
    channel: String,
    gate: Arc<Semaphore>,
    ready: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    mut receiver: PhasedReceiver,
    mut stop: watch::Receiver<bool>,
) -> HonestResult {
    let mut result = HonestResult { index, ready: false, phases: Default::default(), lost: None };
    let permit = gate.acquire().await;
    let setup = async {
        let mut s =
            Session::open(&ctx.target, None, index as u32 ^ 0x5bd1_e995, ctx.read_buffer, ctx.deadline)
                .await?;
        s.subscribe(&ctx.target, &channel, false, ctx.deadline).await?;
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
            failed.fetch_add(1, Ordering::Relaxed);
            receiver.phases[0].stats.errors.add(reason);
            result.phases[0] = std::mem::take(&mut receiver.phases[0].stats);
            return result;
        }
    };
    ready.fetch_add(1, Ordering::Relaxed);
    result.ready = true;
    let lost = loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break None,
            r = session.ws.fill() => {
                if let Err(e) = r {
                    break Some(ws_reason("recv", &e));
                }
            }
        }
        if let Err(e) = session.ws.drain(|text, out| receiver.on_text(text, out)) {
            break Some(ws_reason("recv", &e));
        }
        if let Err(e) = session.ws.flush().await {
            break Some(ws_reason("recv", &e));
        }
    };
    match &lost {
        None => session.ws.close(1000, CLOSE_WAIT).await,
        Some(reason) => receiver.phases[0].stats.errors.add(format!("honest_{reason}")),
    }
    result.lost = lost.map(|reason| (reason, Instant::now()));
    let [a, b] = &mut receiver.phases;
    result.phases = [std::mem::take(&mut a.stats), std::mem::take(&mut b.stats)];
    result
}

/// What app B's presence users did in one phase.
#[derive(Debug, Default)]
pub struct ChurnReport {
    pub joins: u64,
    pub leaves: u64,
    pub failures: Errors,
    /// TCP connect → `subscription_succeeded`.
    pub join_latency: Latencies,
    /// Every user id that joined, with when.
    pub joined: Vec<(String, Instant)>,
}

impl ChurnReport {
    fn merge(&mut self, other: ChurnReport) {
        self.joins += other.joins;
        self.leaves += other.leaves;
        self.failures.merge(other.failures);
        self.join_latency.merge(other.join_latency);
        self.joined.extend(other.joined);
    }
}

/// Runs `users` presence users on app `b` over `channels` channels until `until`. User ids are
/// `p{phase}-{user}-{n}`, so the webhook endpoint can tell the phases apart.
pub async fn presence_churn(
    ctx: Arc<Ctx>,
    b: Target,
    users: usize,
    channels: usize,
    phase: usize,
    until: Instant,
) -> ChurnReport {
    let b = Arc::new(b);
    let tasks: Vec<_> = (0..users)
        .map(|u| tokio::spawn(presence_user(ctx.clone(), b.clone(), u, channels.max(1), phase, until)))
        .collect();
    let mut report = ChurnReport::default();
    for t in tasks {
        match t.await {
            Ok(r) => report.merge(r),
            Err(_) => report.failures.add("task_panicked"),
        }
    }
    report
}

async fn presence_user(
    ctx: Arc<Ctx>,
    b: Arc<Target>,
    u: usize,
    channels: usize,
    phase: usize,
    until: Instant,
) -> ChurnReport {
    let mut report = ChurnReport::default();
    let channel = format!("presence-room-{}", u % channels);
    // Spread the first joins over the first second.
    tokio::time::sleep(Duration::from_millis((u as u64 * 37) % 1000)).await;
    let mut n = 0u64;
    while Instant::now() < until {
        let user_id = format!("p{phase}-{u}-{n}");
        n += 1;
        let step_deadline = ctx.cap(Instant::now() + Duration::from_secs(10));
        let started = Instant::now();
        let joined = async {
            let mut s = Session::open(&b, None, (u as u32) << 8 ^ n as u32, 4096, step_deadline).await?;
            let data = json!({"user_id": user_id, "user_info": {"name": "honest"}}).to_string();
            s.join_presence(&b, &channel, &data, step_deadline).await?;
            Ok::<_, String>(s)
        }
        .await;
        let mut session = match joined {
            Ok(s) => s,
            Err(reason) => {
                report.failures.add(reason);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        report.joins += 1;
        report.join_latency.record(started.elapsed());
        report.joined.push((user_id, Instant::now()));
        // Stay 1 to 3 s, answering pings, then leave; cut short at the phase's end, but never
        // below 1 s: a join and leave inside the server's webhook batch window cancel out by
        // design (no webhook for either), and this user is counted as owing both.
        let stay = Duration::from_millis(1000 + (u as u64 * 7919 + n * 104_729) % 2000);
        let now = Instant::now();
        let leave_at = (now + stay).min(until.max(now + Duration::from_secs(1)));
        let mut dropped = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(leave_at.into()) => break,
                r = session.ws.fill() => if let Err(e) = r {
                    dropped = Some(ws_reason("presence", &e));
                    break;
                }
            }
            let _ = session.ws.drain(|text, out| {
                answer_ping(text, out);
                Flow::Continue
            });
            let _ = session.ws.flush().await;
        }
        report.leaves += 1;
        match dropped {
            Some(reason) => report.failures.add(reason),
            None => {
                let unsubscribe = json!({"event": "pusher:unsubscribe", "data": {"channel": channel}});
                session.ws.send_text(unsubscribe.to_string().as_bytes());
                let _ = session.ws.flush().await;
                session.ws.close(1000, CLOSE_WAIT).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report
}

/// `GET /health` on a fresh connection every 500 ms until `until`.
pub async fn probe(addr: std::net::SocketAddr, host: String, until: Instant) -> Value {
    let mut latency = Latencies::default();
    let mut errors = Errors::default();
    let mut ok = 0u64;
    let request = format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut next = Instant::now();
    while next < until {
        tokio::time::sleep_until(next.into()).await;
        next += Duration::from_millis(500);
        let started = Instant::now();
        let attempt = tokio::time::timeout(Duration::from_secs(5), async {
            let mut stream =
                TcpStream::connect(addr).await.map_err(|e| format!("connect_{}", io_kind(&e)))?;
            stream.write_all(request.as_bytes()).await.map_err(|e| format!("io_{}", io_kind(&e)))?;
            let mut rx = ReadBuf::new(1024);
            loop {
                if let Some(r) = parse_response(rx.data()).map_err(|e| e.reason())? {
                    return Ok(r.status);
                }
                match rx.fill(&mut stream).await {
                    Ok(0) => return Err("eof".to_string()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("io_{}", io_kind(&e))),
                }
            }
        })
        .await;
        match attempt {
            Ok(Ok(200)) => {
                ok += 1;
                latency.record(started.elapsed());
            }
            Ok(Ok(status)) => errors.add(format!("http_{status}")),
            Ok(Err(reason)) => errors.add(reason),
            Err(_) => errors.add("timeout_5s"),
        }
    }
    json!({"ok": ok, "failed": errors.to_json(), "latency_ms": latency.summary()})
}
