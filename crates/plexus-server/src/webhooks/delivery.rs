//! Sending webhook jobs: one ordered worker per app endpoint, retries with exponential backoff.
//!
//! A job is removed from the durable store when it is delivered (any 2xx) or given up (its retry
//! window passed, or its app no longer exists). A worker sends one job at a time, so an
//! endpoint sees its events in the order they happened. Each worker reports what it does to its
//! endpoint's [`EndpointHealth`] (the admin API's and Prometheus' view), whose "retry now" cuts
//! the worker's backoff short.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use plexus_core::observe::Observation;
use plexus_core::{AppStore, Hubs};
use plexus_protocol::signature;
use plexus_tls::http::HttpsConnector;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::health::EndpointHealth;
use super::store::{Job, JobStore};
use super::{now_ms, WebhooksConfig};

type HttpClient = Client<HttpsConnector, Full<Bytes>>;

/// HTTP clients by what they trust: one for `http://` endpoints, and one per CA file (or the
/// system's roots) for `https://` endpoints, each with its own connection pool.
#[derive(Default)]
struct Clients {
    plain: OnceLock<HttpClient>,
    tls: Mutex<HashMap<Option<PathBuf>, HttpClient>>,
}

impl Clients {
    /// The client for `url`; an `https://` URL gets one that verifies the endpoint against
    /// `ca_file` or the system's roots (read once per process; a file that cannot be read is
    /// reported on every attempt until it can).
    fn for_url(&self, url: &str, ca_file: Option<&Path>) -> Result<HttpClient, String> {
        let build = |connector| Client::builder(TokioExecutor::new()).build(connector);
        if !plexus_tls::http::is_https(url) {
            return Ok(self.plain.get_or_init(|| build(plexus_tls::http::http_connector())).clone());
        }
        let mut tls = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = tls.get(&ca_file.map(Path::to_owned)) {
            return Ok(client.clone());
        }
        let client = build(plexus_tls::http::connector(ca_file).map_err(|err| err.to_string())?);
        tls.insert(ca_file.map(Path::to_owned), client.clone());
        Ok(client)
    }
}

/// What one attempt came to.
#[derive(Debug)]
enum Attempt {
    /// A 2xx, with its status.
    Delivered(u16),
    /// With the HTTP status when the endpoint answered at all.
    Failed(Option<u16>, String),
    /// The app is gone: nothing to sign with, nowhere to send.
    Orphaned,
}

struct Endpoint {
    tx: mpsc::UnboundedSender<Job>,
    queued: Arc<AtomicUsize>,
    health: Arc<EndpointHealth>,
}

/// Every endpoint's worker, created on first use.
pub struct Deliveries {
    config: WebhooksConfig,
    apps: Arc<dyn AppStore>,
    store: Arc<JobStore>,
    clients: Arc<Clients>,
    endpoints: Mutex<HashMap<(String, String), Endpoint>>,
    /// Jobs queued or in flight, across endpoints.
    outstanding: Arc<AtomicUsize>,
    idle: Arc<Notify>,
    stopping: Arc<AtomicBool>,
    /// The hubs whose debug console sees each attempt's outcome (set once the server is
    /// assembled; weak, as the hubs reach this service through their webhook sink).
    pub(super) observed: Arc<OnceLock<Weak<Hubs>>>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries").field("outstanding", &self.outstanding.load(Ordering::Relaxed)).finish()
    }
}

impl Deliveries {
    pub fn new(config: WebhooksConfig, apps: Arc<dyn AppStore>, store: Arc<JobStore>) -> Self {
        Deliveries {
            config,
            apps,
            store,
            clients: Arc::default(),
            endpoints: Mutex::default(),
            outstanding: Arc::default(),
            idle: Arc::default(),
            stopping: Arc::default(),
            observed: Arc::default(),
        }
    }

    /// Queues a job behind the earlier jobs of its endpoint.
    pub fn enqueue(&self, job: Job) {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let key = (job.app_id.clone(), job.url.clone());
        let endpoint = endpoints.entry(key).or_insert_with(|| self.spawn_worker(&job.app_id, &job.url));
        if endpoint.queued.load(Ordering::Relaxed) >= self.config.max_pending_per_endpoint {
            metrics::counter!("plexus_webhook_jobs_dropped_total").increment(1);
            tracing::error!(url = %job.url, app_id = %job.app_id, "webhook endpoint backlog full: job dropped");
            self.forget(job.id);
            return;
        }
        endpoint.queued.fetch_add(1, Ordering::Relaxed);
        endpoint.health.queued(job.created_ms);
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("plexus_webhook_jobs_pending").increment(1);
        let _ = endpoint.tx.send(job);
    }

    fn spawn_worker(&self, app_id: &str, url: &str) -> Endpoint {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let queued = Arc::new(AtomicUsize::new(0));
        let label = self
            .apps
            .by_id(app_id)
            .and_then(|app| app.webhooks.iter().position(|w| w.url == url))
            .map_or_else(|| "unlisted".to_owned(), |index| index.to_string());
        let health = Arc::new(EndpointHealth::new(app_id, url, label));
        let worker = Worker {
            health: health.clone(),
            config: self.config.clone(),
            apps: self.apps.clone(),
            store: self.store.clone(),
            clients: self.clients.clone(),
            stopping: self.stopping.clone(),
            observed: self.observed.clone(),
        };
        let (outstanding, idle, depth) = (self.outstanding.clone(), self.idle.clone(), queued.clone());
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                worker.deliver(job).await;
                worker.health.dequeued();
                depth.fetch_sub(1, Ordering::Relaxed);
                metrics::gauge!("plexus_webhook_jobs_pending").decrement(1);
                if outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
                    idle.notify_waiters();
                }
            }
        });
        Endpoint { tx, queued, health }
    }

    /// The health of every endpoint of `app_id` that has had a job since start.
    pub fn health(&self, app_id: &str) -> Vec<Arc<EndpointHealth>> {
        let endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        endpoints.iter().filter(|((app, _), _)| app == app_id).map(|(_, e)| e.health.clone()).collect()
    }

    /// Refreshes every endpoint's age gauge.
    pub fn tick_health(&self) {
        let endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        for endpoint in endpoints.values() {
            endpoint.health.tick();
        }
    }

    fn forget(&self, id: u64) {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = store.remove(id) {
                tracing::error!(%error, "cannot remove a webhook job from the store");
            }
        });
    }

    /// Jobs queued or in flight, across endpoints.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Waits until every queued job is done or `deadline` passes; returns how many are left.
    pub async fn wait_idle(&self, deadline: Instant) -> usize {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let left = self.outstanding.load(Ordering::Acquire);
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.outstanding.load(Ordering::Acquire);
            }
        }
    }

    /// Workers stop retrying; their jobs stay on disk for the next start.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }
}

struct Worker {
    health: Arc<EndpointHealth>,
    config: WebhooksConfig,
    apps: Arc<dyn AppStore>,
    store: Arc<JobStore>,
    clients: Arc<Clients>,
    stopping: Arc<AtomicBool>,
    observed: Arc<OnceLock<Weak<Hubs>>>,
}

impl Worker {
    async fn deliver(&self, job: Job) {
        let mut backoff = Duration::from_millis(self.config.initial_backoff_ms.max(1));
        let max_backoff = Duration::from_secs(self.config.max_backoff_secs.max(1));
        let mut attempt = 1u32;
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            self.health.sending(attempt);
            let outcome = self.attempt(&job).await;
            self.observe(&job, attempt, &outcome);
            let give_up = match &outcome {
                Attempt::Delivered(status) => {
                    metrics::counter!("plexus_webhook_requests_total", "outcome" => "delivered").increment(1);
                    self.health.delivered(*status);
                    true
                }
                Attempt::Orphaned => {
                    tracing::warn!(app_id = %job.app_id, "webhook job dropped: its app no longer exists");
                    true
                }
                Attempt::Failed(status, reason) => {
                    metrics::counter!("plexus_webhook_requests_total", "outcome" => "failed").increment(1);
                    self.health.failed(attempt, *status, reason);
                    let expired = now_ms() >= job.created_ms + self.config.retry_for_secs * 1000;
                    if expired {
                        metrics::counter!("plexus_webhook_jobs_abandoned_total").increment(1);
                        self.health.abandoned();
                        tracing::error!(url = %job.url, attempt, %reason, "webhook abandoned after the retry window");
                    } else {
                        tracing::warn!(url = %job.url, attempt, %reason, retry_in_ms = backoff.as_millis() as u64, "webhook delivery failed");
                    }
                    expired
                }
            };
            if give_up {
                let store = self.store.clone();
                let id = job.id;
                match tokio::task::spawn_blocking(move || store.remove(id)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::error!(%error, "cannot remove a delivered webhook job"),
                    Err(error) => tracing::error!(%error, "webhook store task failed"),
                }
                return;
            }
            // "Retry now" (admin) cuts the wait short; the backoff still grows, as the endpoint
            // has not shown it is back.
            self.health.back_off(backoff).await;
            backoff = (backoff * 2).min(max_backoff);
            attempt += 1;
        }
    }

    /// Shows the attempt in the debug console of the job's app, once per event in the batch (the
    /// console filters by channel), when someone watches.
    fn observe(&self, job: &Job, attempt: u32, outcome: &Attempt) {
        let Some(hubs) = self.observed.get().and_then(Weak::upgrade) else { return };
        let hub = hubs.hub(&job.app_id);
        if !hub.observer().is_watched() {
            return;
        }
        let outcome = match outcome {
            Attempt::Delivered(_) => "delivered".to_owned(),
            Attempt::Failed(_, reason) => format!("failed: {reason}"),
            Attempt::Orphaned => "dropped: app removed".to_owned(),
        };
        let body: serde_json::Value = serde_json::from_str(&job.body).unwrap_or_default();
        for event in body["events"].as_array().into_iter().flatten() {
            let channel = event["channel"].as_str().unwrap_or("");
            hub.observer().emit(|| {
                Observation::new(
                    channel,
                    "webhook",
                    serde_json::json!({"url": job.url, "attempt": attempt, "outcome": outcome, "event": event}),
                )
            });
        }
    }

    async fn attempt(&self, job: &Job) -> Attempt {
        let Some(app) = self.apps.by_id(&job.app_id) else { return Attempt::Orphaned };
        // The endpoint's settings as the app has them now (a job outlives config changes).
        let ca_file = app.webhooks.iter().find(|w| w.url == job.url).and_then(|w| w.ca_file.as_deref());
        let client = match self.clients.for_url(&job.url, ca_file) {
            Ok(client) => client,
            Err(reason) => return Attempt::Failed(None, reason),
        };
        let signature = signature::webhook_signature(&app.secret, job.body.as_bytes());
        let request = Request::post(&job.url)
            .header(CONTENT_TYPE, "application/json")
            .header("X-Pusher-Key", &app.key)
            .header("X-Pusher-Signature", signature)
            .body(Full::new(Bytes::from(job.body.clone())));
        let request = match request {
            Ok(request) => request,
            Err(error) => return Attempt::Failed(None, format!("invalid webhook URL: {error}")),
        };
        let timeout = Duration::from_secs(self.config.request_timeout_secs.max(1));
        match tokio::time::timeout(timeout, client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => {
                Attempt::Delivered(response.status().as_u16())
            }
            Ok(Ok(response)) => {
                Attempt::Failed(Some(response.status().as_u16()), format!("HTTP {}", response.status()))
            }
            // The whole chain: hyper's own text is only "client error (Connect)"; the TLS reason
            // (a refused certificate, with what to do about it) sits in its sources.
            Ok(Err(error)) => Attempt::Failed(None, plexus_tls::describe(&error)),
            Err(_) => Attempt::Failed(None, format!("no response within {}s", timeout.as_secs())),
        }
    }
}
