//! The scenarios and what they share: the run context (target, deadline, payload), the pool of
//! subscriber connections used by `broadcast`, `fanout` and `client-events`, and small helpers
//! for waiting on shared counters.
//!
//! Every scenario returns a JSON object of its own figures and errors; `main` adds the common
//! fields (scenario, parameters, wall time, CPU).

pub mod broadcast;
pub mod client_events;
pub mod connections;
pub mod fanout;
pub mod hostile;
pub mod publish;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::publisher::{publish, PublishPlan, PublishReport};
use crate::pusher::{ws_reason, Receiver, ReceiverStats, Session, CLOSE_WAIT};
use crate::stats::{rss_kib, CpuMeter, Errors, Latencies};
use crate::target::Target;

/// Settings every scenario uses.
#[derive(Debug)]
pub struct Ctx {
    pub target: Target,
    /// Where subscribers connect, round-robin (nodes of a cluster); empty = `target`.
    pub subscriber_targets: Vec<Target>,
    /// The `p` field of every event: `--payload-bytes` of `x`.
    pub padding: String,
    /// Hard deadline of the whole run.
    pub deadline: Instant,
    pub server_pid: Option<u32>,
    pub read_buffer: usize,
    /// Local addresses to spread connections over (`None` = kernel's choice).
    pub sources: Option<Vec<IpAddr>>,
    /// Connections being set up at once.
    pub setup_concurrency: usize,
    /// How long to wait for late deliveries after the last send.
    pub drain: Duration,
}

impl Ctx {
    /// The server subscriber `i` connects to.
    pub fn subscriber_target(&self, i: usize) -> &Target {
        match self.subscriber_targets.len() {
            0 => &self.target,
            n => &self.subscriber_targets[i % n],
        }
    }

    pub fn source(&self, i: usize) -> Option<IpAddr> {
        self.sources.as_ref().map(|s| s[i % s.len()])
    }

    /// Starts measuring the server's CPU use, when its pid is known.
    pub fn server_cpu(&self) -> Option<CpuMeter> {
        self.server_pid.map(|pid| CpuMeter::start_for(Some(pid)))
    }

    pub fn server_rss(&self) -> Option<u64> {
        self.server_pid.and_then(rss_kib)
    }

    /// The earlier of `at` and the run deadline.
    pub fn cap(&self, at: Instant) -> Instant {
        at.min(self.deadline)
    }
}

/// Polls `done` every few milliseconds until it returns true or `until` passes; returns whether
/// it became true.
pub async fn wait_until(until: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One subscriber's outcome.
#[derive(Debug)]
pub struct SubResult {
    /// Index of the subscriber (its channel is derived from it).
    pub index: usize,
    /// Subscribed successfully.
    pub ready: bool,
    pub stats: ReceiverStats,
}

/// A set of connections, each subscribed to one channel and recording the bench events it gets.
#[derive(Debug)]
pub struct Subscribers {
    handles: Vec<JoinHandle<SubResult>>,
    pub ready: Arc<AtomicUsize>,
    pub failed: Arc<AtomicUsize>,
    /// New bench events received, all subscribers together.
    pub received: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
}

impl Subscribers {
    /// Starts `n` subscribers; subscriber `i` joins `channel(i)` (signed when `private`) and
    /// records events named `event`. `expected` sizes each latency buffer.
    pub fn spawn(
        ctx: &Arc<Ctx>,
        n: usize,
        channel: impl Fn(usize) -> String,
        private: bool,
        event: &'static str,
        expected: usize,
    ) -> Subscribers {
        let ready = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let (stop, _) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(ctx.setup_concurrency.max(1)));
        let handles = (0..n)
            .map(|i| {
                let sub = Subscriber {
                    ctx: ctx.clone(),
                    index: i,
                    channel: channel(i),
                    private,
                    gate: gate.clone(),
                    ready: ready.clone(),
                    failed: failed.clone(),
                    receiver: Receiver::new(event, received.clone(), expected),
                    stop: stop.subscribe(),
                };
                tokio::spawn(sub.run())
            })
            .collect();
        Subscribers { handles, ready, failed, received, stop }
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Waits until every subscriber is subscribed or failed (or `until`); returns how many are ready.
    pub async fn wait_ready(&self, until: Instant) -> usize {
        let n = self.len();
        wait_until(until, || self.ready.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed) >= n)
            .await;
        self.ready.load(Ordering::Relaxed)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Tells every subscriber to close and collects their results.
    pub async fn stop(self) -> Vec<SubResult> {
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

struct Subscriber {
    ctx: Arc<Ctx>,
    index: usize,
    channel: String,
    private: bool,
    gate: Arc<Semaphore>,
    ready: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    receiver: Receiver,
    stop: watch::Receiver<bool>,
}

impl Subscriber {
    async fn run(mut self) -> SubResult {
        let ctx = &self.ctx;
        let mut result = SubResult { index: self.index, ready: false, stats: ReceiverStats::default() };
        let permit = self.gate.acquire().await;
        let setup = async {
            let target = ctx.subscriber_target(self.index);
            let mut s = Session::open(
                target,
                ctx.source(self.index),
                self.index as u32 ^ 0x9e37_79b9,
                ctx.read_buffer,
                ctx.deadline,
            )
            .await?;
            s.subscribe(target, &self.channel, self.private, ctx.deadline).await?;
            Ok::<_, String>(s)
        };
        let setup = tokio::select! {
            biased;
            _ = self.stop.changed() => Err("setup_cancelled".to_string()),
            s = setup => s,
        };
        drop(permit);
        let mut session = match setup {
            Ok(s) => s,
            Err(reason) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                result.stats.errors.add(reason);
                return result;
            }
        };
        self.ready.fetch_add(1, Ordering::Relaxed);
        result.ready = true;
        let receiver = &mut self.receiver;
        let lost = loop {
            tokio::select! {
                biased;
                _ = self.stop.changed() => break None,
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
        match lost {
            None => session.ws.close(1000, CLOSE_WAIT).await,
            Some(reason) => receiver.stats.errors.add(reason),
        }
        result.stats = std::mem::take(&mut self.receiver.stats);
        result
    }
}

/// Delivery figures summed over subscribers.
#[derive(Debug, Default)]
pub struct Deliveries {
    pub latencies: Latencies,
    pub errors: Errors,
    /// Events the subscribed connections should have received.
    pub expected: u64,
    pub received: u64,
    /// Expected but never received (per subscriber, so extra copies cannot hide a gap).
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub last_new: Option<Instant>,
}

impl Deliveries {
    /// Sums the results; `expected(i)` is how many events subscriber `i` should have got.
    pub fn collect(results: Vec<SubResult>, expected: impl Fn(usize) -> u64) -> Deliveries {
        let mut d = Deliveries::default();
        for r in results {
            let s = r.stats;
            if r.ready {
                let e = expected(r.index);
                d.expected += e;
                d.lost += e.saturating_sub(s.seq.unique);
            }
            d.received += s.seq.unique;
            d.duplicates += s.seq.duplicates;
            d.reordered += s.seq.reordered;
            d.last_new = d.last_new.max(s.last_new);
            d.errors.merge(s.errors);
            d.latencies.merge(s.latencies);
        }
        d
    }
}

/// What broadcast and fanout measure before they count deliveries: subscribers set up, then the
/// publish plan carried out while both sides' CPU is metered.
pub struct PublishPhase {
    pub ready: usize,
    pub setup_secs: f64,
    pub rss_subscribed: Option<u64>,
    pub cpu: CpuMeter,
    pub server_cpu: Option<CpuMeter>,
    pub report: PublishReport,
}

/// Waits for `subs` to be subscribed, then publishes `plan` (nothing if no subscriber is ready).
pub async fn subscribe_then_publish(
    ctx: &Ctx,
    subs: &Subscribers,
    plan: PublishPlan,
    errors: &mut Errors,
) -> PublishPhase {
    let setup_start = Instant::now();
    let ready = subs.wait_ready(ctx.deadline).await;
    let setup_secs = setup_start.elapsed().as_secs_f64();
    let rss_subscribed = ctx.server_rss();
    let cpu = CpuMeter::start();
    let server_cpu = ctx.server_cpu();
    let report = if ready > 0 {
        publish(&ctx.target, &plan).await
    } else {
        errors.add("no_subscriber_ready");
        PublishReport::default()
    };
    PublishPhase { ready, setup_secs, rss_subscribed, cpu, server_cpu, report }
}
