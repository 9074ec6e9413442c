//! Webhook delivery: batching, held-back vacate events, durable queue, retries.
//!
//! The hub reports events through [`WebhookDispatcher`] (a [`WebhookSink`]): a non-blocking push
//! into a bounded channel, so delivery never runs on the hot path; when the channel is full the
//! event is dropped, counted (`plexus_webhook_events_dropped_total`) and logged.
//!
//! One batcher task collects events for `batch_window_ms`, holds `channel_vacated` and
//! `member_removed` back for `vacate_delay_ms` (a quick return cancels the pair, as Pusher does),
//! keeps per-channel order, and turns each app endpoint's share into a job: the exact body to
//! send. Jobs are written to the [`store::JobStore`] before the first attempt and removed once
//! delivered, so neither a restart nor a crash loses them. [`delivery`] sends each endpoint's
//! jobs in order, retrying failures with exponential backoff for `retry_for_secs`.

pub mod delivery;
pub mod store;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plexus_core::webhook::{WebhookEvent, WebhookSink};
use plexus_core::AppStore;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use self::delivery::Deliveries;
use self::store::{Job, JobStore, StoreError};

/// `[webhooks]`: delivery settings shared by every app's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Where the durable queue lives (created if missing).
    pub data_dir: PathBuf,
    /// Events within this window share one request per endpoint.
    pub batch_window_ms: u64,
    /// Most events in one request.
    pub max_batch_events: usize,
    /// `channel_vacated` and `member_removed` wait this long and are dropped, with the matching
    /// `channel_occupied` / `member_added`, if the channel or member comes back meanwhile.
    pub vacate_delay_ms: u64,
    /// Events waiting for the batcher; beyond it events are dropped, counted and logged.
    pub queue_capacity: usize,
    /// Jobs waiting per endpoint; beyond it new jobs are dropped, counted and logged.
    pub max_pending_per_endpoint: usize,
    pub request_timeout_secs: u64,
    /// How long a failing job is retried, counted from when it was made (survives restarts).
    pub retry_for_secs: u64,
    pub initial_backoff_ms: u64,
    pub max_backoff_secs: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            data_dir: PathBuf::from("plexus-data"),
            batch_window_ms: 50,
            max_batch_events: 100,
            vacate_delay_ms: 3000,
            queue_capacity: 10_000,
            max_pending_per_endpoint: 10_000,
            request_timeout_secs: 10,
            retry_for_secs: 600,
            initial_backoff_ms: 1000,
            max_backoff_secs: 60,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

enum Message {
    Event(Arc<str>, WebhookEvent),
    /// Turn everything held into jobs now (shutdown).
    Flush(oneshot::Sender<()>),
}

/// The hub's side: hands events to the batcher without ever waiting.
#[derive(Debug)]
pub struct WebhookDispatcher {
    tx: mpsc::Sender<Message>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Event(app, event) => write!(f, "Event({app}, {event:?})"),
            Message::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl WebhookDispatcher {
    /// Events dropped because the queue was full, since start.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl WebhookSink for WebhookDispatcher {
    fn submit(&self, app_id: &str, event: WebhookEvent) {
        if self.tx.try_send(Message::Event(app_id.into(), event)).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::counter!("plexus_webhook_events_dropped_total").increment(1);
            // Loud at first, then at growing intervals, so a flood cannot flood the log too.
            if dropped.is_power_of_two() || dropped.is_multiple_of(10_000) {
                tracing::warn!(dropped_total = dropped, "webhook queue full: event dropped");
            }
        }
    }
}

/// The running delivery machinery.
#[derive(Debug)]
pub struct WebhookService {
    pub dispatcher: Arc<WebhookDispatcher>,
    flush_tx: mpsc::Sender<Message>,
    deliveries: Arc<Deliveries>,
}

impl WebhookService {
    /// Opens the durable queue, resumes its pending jobs and starts the batcher.
    pub fn start(config: WebhooksConfig, apps: Arc<dyn AppStore>) -> Result<WebhookService, StoreError> {
        let store = Arc::new(JobStore::open(&config.data_dir)?);
        let pending = store.pending()?;
        let next_id = pending.iter().map(|j| j.id + 1).max().unwrap_or(1);
        if !pending.is_empty() {
            tracing::info!(jobs = pending.len(), "resuming webhook deliveries left from the last run");
        }
        let deliveries = Arc::new(Deliveries::new(config.clone(), apps.clone(), store.clone()));
        for job in pending {
            deliveries.enqueue(job);
        }
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let batcher = Batcher {
            config,
            apps,
            store,
            deliveries: deliveries.clone(),
            pending: Vec::new(),
            batch_due: None,
            held: VecDeque::new(),
            next_id,
        };
        tokio::spawn(batcher.run(rx));
        let dispatcher = Arc::new(WebhookDispatcher { tx: tx.clone(), dropped: AtomicU64::new(0) });
        Ok(WebhookService { dispatcher, flush_tx: tx, deliveries })
    }

    /// Shows delivery attempts in the debug console of `hubs` (see `crate::admin`).
    pub fn observe(&self, hubs: &Arc<plexus_core::Hubs>) {
        let _ = self.deliveries.observed.set(Arc::downgrade(hubs));
    }

    /// On shutdown: turns held events into (durable) jobs and tries to deliver what is queued
    /// until `deadline`; whatever is left is delivered after the next start.
    pub async fn shutdown(&self, deadline: Instant) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.flush_tx.send(Message::Flush(done_tx)).await.is_ok() {
            let _ = tokio::time::timeout_at(deadline, done_rx).await;
        }
        let left = self.deliveries.wait_idle(deadline).await;
        self.deliveries.stop();
        if left > 0 {
            tracing::info!(jobs = left, "webhook jobs kept on disk for the next start");
        }
    }
}

/// An event held back (vacated, member removed) until `due`.
struct Held {
    app: Arc<str>,
    event: WebhookEvent,
    due: Instant,
}

struct Batcher {
    config: WebhooksConfig,
    apps: Arc<dyn AppStore>,
    store: Arc<JobStore>,
    deliveries: Arc<Deliveries>,
    pending: Vec<(Arc<str>, WebhookEvent)>,
    batch_due: Option<Instant>,
    held: VecDeque<Held>,
    next_id: u64,
}

impl Batcher {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        loop {
            let wake = match (self.batch_due, self.held.front().map(|h| h.due)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                message = rx.recv() => match message {
                    Some(Message::Event(app, event)) => self.accept(app, event),
                    Some(Message::Flush(done)) => {
                        self.release_all();
                        self.flush().await;
                        let _ = done.send(());
                    }
                    None => {
                        self.release_all();
                        self.flush().await;
                        return;
                    }
                },
                () = sleep_until_some(wake) => {}
            }
            let now = Instant::now();
            while self.held.front().is_some_and(|h| h.due <= now) {
                let held = self.held.pop_front().expect("checked");
                self.push(held.app, held.event);
            }
            if self.batch_due.is_some_and(|due| due <= now)
                || self.pending.len() >= self.config.max_batch_events
            {
                self.flush().await;
            }
        }
    }

    fn accept(&mut self, app: Arc<str>, event: WebhookEvent) {
        let delay = Duration::from_millis(self.config.vacate_delay_ms);
        match &event {
            WebhookEvent::ChannelVacated { .. } | WebhookEvent::MemberRemoved { .. } if !delay.is_zero() => {
                self.held.push_back(Held { app, event, due: Instant::now() + delay });
                return;
            }
            WebhookEvent::ChannelOccupied { channel } => {
                let back = |h: &Held| {
                    h.app == app
                        && matches!(&h.event, WebhookEvent::ChannelVacated { channel: c } if c == channel)
                };
                if let Some(index) = self.held.iter().position(back) {
                    // Vacated and re-occupied within the delay: neither is reported.
                    self.held.remove(index);
                    return;
                }
            }
            WebhookEvent::MemberAdded { channel, user_id } => {
                let back = |h: &Held| {
                    h.app == app
                        && matches!(&h.event, WebhookEvent::MemberRemoved { channel: c, user_id: u } if c == channel && u == user_id)
                };
                if let Some(index) = self.held.iter().position(back) {
                    self.held.remove(index);
                    return;
                }
            }
            _ => {}
        }
        // Per-channel order: anything still held for this channel goes out first.
        let mut index = 0;
        while index < self.held.len() {
            if self.held[index].app == app && self.held[index].event.channel() == event.channel() {
                let held = self.held.remove(index).expect("index in range");
                self.push(held.app, held.event);
            } else {
                index += 1;
            }
        }
        self.push(app, event);
    }

    fn release_all(&mut self) {
        while let Some(held) = self.held.pop_front() {
            self.push(held.app, held.event);
        }
    }

    fn push(&mut self, app: Arc<str>, event: WebhookEvent) {
        if self.batch_due.is_none() {
            self.batch_due = Some(Instant::now() + Duration::from_millis(self.config.batch_window_ms));
        }
        self.pending.push((app, event));
    }

    /// Turns pending events into one job per app endpoint (and per `max_batch_events`), stores
    /// them durably, then hands them to delivery.
    async fn flush(&mut self) {
        self.batch_due = None;
        if self.pending.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.pending);
        let created_ms = now_ms();
        let mut jobs = Vec::new();
        let mut apps_seen: Vec<Arc<str>> = Vec::new();
        for (app_id, _) in &events {
            if !apps_seen.contains(app_id) {
                apps_seen.push(app_id.clone());
            }
        }
        for app_id in apps_seen {
            let Some(app) = self.apps.by_id(&app_id) else { continue };
            for target in &app.webhooks {
                let selected: Vec<serde_json::Value> = events
                    .iter()
                    .filter(|(a, e)| *a == app_id && target.events.contains(&e.kind()))
                    .map(|(_, e)| e.to_json())
                    .collect();
                for chunk in selected.chunks(self.config.max_batch_events.max(1)) {
                    let body = json!({"time_ms": created_ms, "events": chunk}).to_string();
                    jobs.push(Job {
                        id: self.next_id,
                        app_id: app.id.clone(),
                        url: target.url.clone(),
                        body,
                        created_ms,
                    });
                    self.next_id += 1;
                }
            }
        }
        if jobs.is_empty() {
            return;
        }
        let store = self.store.clone();
        let to_store = jobs.clone();
        match tokio::task::spawn_blocking(move || store.insert(&to_store)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "webhook jobs not persisted; delivering from memory only")
            }
            Err(error) => tracing::error!(%error, "webhook persistence task failed"),
        }
        for job in jobs {
            self.deliveries.enqueue(job);
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
