//! The hub's side of webhooks: one bounded queue per app, so a flood of one app's events can
//! fill only that app's queue.
//!
//! [`WebhookDispatcher::submit`] runs inside the hub's critical sections, so it never waits: a
//! read lock on the app map (written only the first time an app submits), a `try_send` into the
//! app's queue and, when the queue was idle, one message telling the batcher the app has work.
//! A full queue drops the event and counts it for that app.

use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use plexus_core::webhook::{WebhookEvent, WebhookSink};
use tokio::sync::{mpsc, oneshot};

/// What the batcher is woken for.
pub(super) enum Signal {
    /// This app's queue has events and is not yet in the batcher's round.
    Ready(Arc<AppQueue>),
    /// Turn everything held into jobs now (shutdown).
    Flush(oneshot::Sender<()>),
}

/// Per-app counters, also exported as `plexus_webhook_events_{dropped,coalesced,accepted}_total`
/// with an `app_id` label (app ids are operator-defined, so the label is bounded).
#[derive(Debug)]
pub(super) struct AppCounters {
    dropped: AtomicU64,
    coalesced: AtomicU64,
    accepted: AtomicU64,
    // Handles registered once per app, so counting on the hot path is one atomic add and no
    // registry lookup.
    dropped_metric: metrics::Counter,
    coalesced_metric: metrics::Counter,
    accepted_metric: metrics::Counter,
}

impl AppCounters {
    fn new(app_id: &str) -> AppCounters {
        let id = || app_id.to_owned();
        AppCounters {
            dropped: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            dropped_metric: metrics::counter!("plexus_webhook_events_dropped_total", "app_id" => id()),
            coalesced_metric: metrics::counter!("plexus_webhook_events_coalesced_total", "app_id" => id()),
            accepted_metric: metrics::counter!("plexus_webhook_events_accepted_total", "app_id" => id()),
        }
    }

    /// Events cancelled with their pair (each event of a pair counts).
    pub(super) fn coalesced(&self, n: u64) {
        self.coalesced.fetch_add(n, Ordering::Relaxed);
        self.coalesced_metric.increment(n);
    }

    /// Events taken in by the batcher whose acceptance is on disk.
    pub(super) fn accepted(&self, n: u64) {
        self.accepted.fetch_add(n, Ordering::Relaxed);
        self.accepted_metric.increment(n);
    }
}

/// An event on its way to the batcher; `late` when it was held elsewhere before being submitted
/// (see [`WebhookSink::submit_late`]), so it never cancels with a neighbour.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) event: WebhookEvent,
    pub(super) late: bool,
}

/// One app's events on their way to the batcher.
pub(super) struct AppQueue {
    pub(super) app_id: Arc<str>,
    tx: mpsc::Sender<Queued>,
    /// Only the batcher takes from it; the lock is never contended.
    rx: Mutex<mpsc::Receiver<Queued>>,
    /// Set while a `Signal::Ready` for this queue is on its way or the batcher has it in its
    /// round, so a flooding app costs one signal per batcher round, not one per event.
    scheduled: AtomicBool,
    pub(super) counters: AppCounters,
}

impl std::fmt::Debug for AppQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppQueue").field("app_id", &self.app_id).field("counters", &self.counters).finish()
    }
}

impl AppQueue {
    fn new(app_id: &str, capacity: usize) -> AppQueue {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        AppQueue {
            app_id: app_id.into(),
            tx,
            rx: Mutex::new(rx),
            scheduled: AtomicBool::new(false),
            counters: AppCounters::new(app_id),
        }
    }

    /// Batcher side: takes up to `limit` events into `out`; returns how many. Call
    /// [`AppQueue::unschedule`] first, so an event sent meanwhile schedules the queue again.
    pub(super) fn take(&self, limit: usize, out: &mut Vec<Queued>) -> usize {
        let mut rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        let mut taken = 0;
        while taken < limit {
            match rx.try_recv() {
                Ok(event) => {
                    out.push(event);
                    taken += 1;
                }
                Err(_) => break,
            }
        }
        taken
    }

    /// The most events the queue holds.
    pub(super) fn capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Batcher side: the queue leaves the round; a later `submit` puts it back.
    pub(super) fn unschedule(&self) {
        self.scheduled.store(false, Ordering::Relaxed);
        // Pairs with the fence in `submit`: either the batcher's `take` sees the event, or the
        // submitter sees `false` and signals (never neither).
        fence(Ordering::SeqCst);
    }

    /// Batcher side: keeps the queue in the round (it had more than one round's share); false if
    /// a submitter already signalled it.
    pub(super) fn reschedule(&self) -> bool {
        !self.scheduled.swap(true, Ordering::AcqRel)
    }
}

/// The hub's side: hands events to the per-app queues without ever waiting.
#[derive(Debug)]
pub struct WebhookDispatcher {
    capacity: usize,
    queues: RwLock<HashMap<Arc<str>, Arc<AppQueue>>>,
    signals: mpsc::UnboundedSender<Signal>,
}

impl WebhookDispatcher {
    pub(super) fn new(capacity: usize, signals: mpsc::UnboundedSender<Signal>) -> WebhookDispatcher {
        WebhookDispatcher { capacity, queues: RwLock::default(), signals }
    }

    /// The queue of `app_id`, made on first use.
    pub(super) fn queue(&self, app_id: &str) -> Arc<AppQueue> {
        if let Some(queue) = self.queues.read().unwrap_or_else(|p| p.into_inner()).get(app_id) {
            return queue.clone();
        }
        let mut queues = self.queues.write().unwrap_or_else(|p| p.into_inner());
        queues.entry(app_id.into()).or_insert_with(|| Arc::new(AppQueue::new(app_id, self.capacity))).clone()
    }

    fn counter(&self, app_id: &str, read: impl Fn(&AppCounters) -> &AtomicU64) -> u64 {
        let queues = self.queues.read().unwrap_or_else(|p| p.into_inner());
        queues.get(app_id).map_or(0, |q| read(&q.counters).load(Ordering::Relaxed))
    }

    /// Events dropped because their app's queue was full, since start, across apps.
    pub fn dropped_total(&self) -> u64 {
        let queues = self.queues.read().unwrap_or_else(|p| p.into_inner());
        queues.values().map(|q| q.counters.dropped.load(Ordering::Relaxed)).sum()
    }

    /// Events of `app_id` dropped because its queue was full, since start.
    pub fn dropped(&self, app_id: &str) -> u64 {
        self.counter(app_id, |c| &c.dropped)
    }

    /// Events of `app_id` cancelled with their pair (occupied/vacated, added/removed), since start.
    pub fn coalesced(&self, app_id: &str) -> u64 {
        self.counter(app_id, |c| &c.coalesced)
    }

    /// Events of `app_id` accepted (their acceptance durable), since start.
    pub fn accepted(&self, app_id: &str) -> u64 {
        self.counter(app_id, |c| &c.accepted)
    }

    /// Asks the batcher to release and flush everything; `done` fires when it has.
    pub(super) fn flush(&self, done: oneshot::Sender<()>) -> bool {
        self.signals.send(Signal::Flush(done)).is_ok()
    }

    fn offer(&self, queue: &Arc<AppQueue>, event: WebhookEvent, late: bool) {
        if queue.tx.try_send(Queued { event, late }).is_err() {
            Self::drop_one(queue);
            return;
        }
        // Pairs with the fence in `AppQueue::unschedule`.
        fence(Ordering::SeqCst);
        if !queue.scheduled.load(Ordering::Relaxed) && !queue.scheduled.swap(true, Ordering::AcqRel) {
            let _ = self.signals.send(Signal::Ready(queue.clone()));
        }
    }

    fn drop_one(queue: &AppQueue) {
        let dropped = queue.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        queue.counters.dropped_metric.increment(1);
        // Loud at first, then at growing intervals, so a flood cannot flood the log too.
        if dropped.is_power_of_two() || dropped.is_multiple_of(10_000) {
            tracing::warn!(app_id = %queue.app_id, dropped_total = dropped, "webhook queue of the app full: event dropped");
        }
    }
}

impl WebhookDispatcher {
    fn submit_queued(&self, app_id: &str, event: WebhookEvent, late: bool) {
        {
            let queues = self.queues.read().unwrap_or_else(|p| p.into_inner());
            if let Some(queue) = queues.get(app_id) {
                return self.offer(queue, event, late);
            }
        }
        self.offer(&self.queue(app_id), event, late);
    }
}

impl WebhookSink for WebhookDispatcher {
    fn submit(&self, app_id: &str, event: WebhookEvent) {
        self.submit_queued(app_id, event, false);
    }

    fn submit_late(&self, app_id: &str, event: WebhookEvent) {
        self.submit_queued(app_id, event, true);
    }
}
