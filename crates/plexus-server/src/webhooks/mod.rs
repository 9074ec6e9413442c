//! Webhook delivery: per-app queues, batching, coalescing, held-back vacate events, a durable
//! queue, retries.
//!
//! The hub reports events through [`WebhookDispatcher`] (a [`plexus_core::webhook::WebhookSink`]):
//! a non-blocking push into the app's own bounded queue ([`intake`]), so delivery never runs on
//! the hot path and one app's flood cannot crowd out another's events; a full queue drops the
//! event, counted per app (`plexus_webhook_events_dropped_total{app_id}`) and logged.
//!
//! One batcher task ([`batcher`]) takes a fair share of every app's queue per wake-up, coalesces
//! pairs that cancel out, holds `channel_vacated` and `member_removed` back for `vacate_delay_ms`,
//! keeps per-channel order, and writes what it accepted to the [`store::JobStore`] in one commit
//! per wake-up, so a crash loses no accepted event. Every `batch_window_ms` it turns each app
//! endpoint's share into a job (the exact body to send), in the same commit that deletes the
//! events. [`delivery`] sends each endpoint's jobs in order, retrying failures with exponential
//! backoff for `retry_for_secs`, and removes them once delivered. [`health`] keeps what each
//! endpoint's worker does (queue, last answer, failures) for the admin API and Prometheus, and
//! carries the admin's "retry now" to a worker that is backing off.

mod batcher;
pub mod delivery;
pub mod health;
mod intake;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use plexus_core::AppStore;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use self::batcher::Batcher;
use self::delivery::Deliveries;
use self::store::{JobStore, StoreError};

pub use self::intake::WebhookDispatcher;

/// `[webhooks]`: delivery settings shared by every app's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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
    /// Events of one app waiting for the batcher; beyond it that app's events are dropped,
    /// counted and logged (other apps have their own queues).
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

/// The running delivery machinery.
#[derive(Debug)]
pub struct WebhookService {
    pub dispatcher: Arc<WebhookDispatcher>,
    deliveries: Arc<Deliveries>,
}

impl WebhookService {
    /// Opens the durable queue, resumes its pending jobs, takes back the events accepted but not
    /// yet made into jobs, and starts the batcher.
    pub fn start(config: WebhooksConfig, apps: Arc<dyn AppStore>) -> Result<WebhookService, StoreError> {
        let store = Arc::new(JobStore::open(&config.data_dir)?);
        let pending = store.pending()?;
        let events = store.events()?;
        let next_id = pending.iter().map(|j| j.id + 1).max().unwrap_or(1);
        if !pending.is_empty() || !events.is_empty() {
            tracing::info!(
                jobs = pending.len(),
                events = events.len(),
                "resuming webhook deliveries and events left from the last run"
            );
        }
        let deliveries = Arc::new(Deliveries::new(config.clone(), apps.clone(), store.clone()));
        tokio::spawn(refresh_health(Arc::downgrade(&deliveries)));
        for job in pending {
            deliveries.enqueue(job);
        }
        let (signals, signals_rx) = mpsc::unbounded_channel();
        let dispatcher = Arc::new(WebhookDispatcher::new(config.queue_capacity, signals));
        let mut batcher = Batcher::new(config, apps, store, deliveries.clone(), next_id);
        batcher.reload(&dispatcher, events);
        tokio::spawn(batcher.run(signals_rx));
        Ok(WebhookService { dispatcher, deliveries })
    }

    /// Requests made and not yet delivered or given up (queued, in flight or waiting to retry).
    pub fn jobs_outstanding(&self) -> usize {
        self.deliveries.outstanding()
    }

    /// The health of each endpoint of `app_id` that has had a request since start.
    pub fn health(&self, app_id: &str) -> Vec<Arc<health::EndpointHealth>> {
        self.deliveries.health(app_id)
    }

    /// Cuts the backoff of `app_id`'s endpoints short (only the one at `url` when given): each
    /// tries its oldest request again at once. Returns how many were backing off.
    pub fn retry_now(&self, app_id: &str, url: Option<&str>) -> usize {
        let woken = self
            .deliveries
            .health(app_id)
            .iter()
            .filter(|health| url.is_none_or(|url| health.url == url))
            .filter(|health| health.retry_now())
            .count();
        if woken > 0 {
            tracing::info!(app_id, endpoints = woken, "webhook retry asked for from the admin listener");
        }
        woken
    }

    /// Shows delivery attempts in the debug console of `hubs` (see `crate::admin`).
    pub fn observe(&self, hubs: &Arc<plexus_core::Hubs>) {
        let _ = self.deliveries.observed.set(Arc::downgrade(hubs));
    }

    /// On shutdown: turns queued and held events into (durable) jobs and tries to deliver what is
    /// queued until `deadline`; whatever is left is delivered after the next start.
    pub async fn shutdown(&self, deadline: Instant) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.dispatcher.flush(done_tx) {
            let _ = tokio::time::timeout_at(deadline, done_rx).await;
        }
        let left = self.deliveries.wait_idle(deadline).await;
        self.deliveries.stop();
        if left > 0 {
            tracing::info!(jobs = left, "webhook jobs kept on disk for the next start");
        }
    }
}

/// Keeps the endpoints' age gauges current: an age grows while nothing happens (an endpoint
/// backing off for a minute), so it is refreshed every second rather than on events alone.
/// Ends with the delivery service.
async fn refresh_health(deliveries: std::sync::Weak<Deliveries>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(deliveries) = deliveries.upgrade() else { return };
        deliveries.tick_health();
    }
}
