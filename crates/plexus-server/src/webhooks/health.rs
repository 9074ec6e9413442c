//! Webhook health, per endpoint: what its delivery worker is doing and has done (requests
//! queued, the oldest one's age, the last answer, counts of deliveries, failures and retries, the
//! last few failure reasons), for the admin API, the dashboard and Prometheus; and the "retry
//! now" signal that cuts a backed-off worker's wait short.
//!
//! Prometheus series are labelled `app_id` and `endpoint` (the endpoint's position in the app's
//! `webhooks` list when its first job was made, `unlisted` for a URL no longer configured): both
//! come from the operator's configuration, never from clients, so their number is bounded, and a
//! URL (which may carry a token) never becomes a label.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::{json, Value};
use tokio::sync::Notify;

use super::now_ms;

/// Failure reasons kept per endpoint.
pub const RECENT_FAILURES: usize = 5;

/// What the worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    /// Nothing queued.
    Idle,
    /// An attempt is in flight.
    Sending,
    /// The last attempt failed; the next is due at this Unix time (ms).
    BackingOff { retry_at_ms: u64 },
}

#[derive(Debug, Clone)]
struct Failure {
    at_ms: u64,
    attempt: u32,
    reason: String,
}

#[derive(Debug)]
struct State {
    /// `created_ms` of every job queued or in flight, oldest first (the worker sends in order).
    queued: VecDeque<u64>,
    activity: Activity,
    last_attempt_ms: Option<u64>,
    /// The HTTP status of the last answer; `None` when the last attempt got none (refused,
    /// timed out) or there was none yet.
    last_status: Option<u16>,
    last_outcome: Option<String>,
    delivered: u64,
    failures: u64,
    retries: u64,
    abandoned: u64,
    recent_failures: VecDeque<Failure>,
}

/// Prometheus handles, registered once per endpoint so updating them is an atomic operation.
#[derive(Debug)]
struct Series {
    queued: metrics::Gauge,
    oldest_age: metrics::Gauge,
    last_status: metrics::Gauge,
    delivered: metrics::Counter,
    failures: metrics::Counter,
    retries: metrics::Counter,
    abandoned: metrics::Counter,
}

/// One endpoint's health.
#[derive(Debug)]
pub struct EndpointHealth {
    pub app_id: String,
    pub url: String,
    /// The `endpoint` label (see the module docs).
    pub label: String,
    state: Mutex<State>,
    series: Series,
    /// Wakes the worker out of its backoff ("retry now").
    retry: Notify,
}

impl EndpointHealth {
    pub fn new(app_id: &str, url: &str, label: String) -> EndpointHealth {
        let labels = [("app_id", app_id.to_owned()), ("endpoint", label.clone())];
        EndpointHealth {
            app_id: app_id.to_owned(),
            url: url.to_owned(),
            state: Mutex::new(State {
                queued: VecDeque::new(),
                activity: Activity::Idle,
                last_attempt_ms: None,
                last_status: None,
                last_outcome: None,
                delivered: 0,
                failures: 0,
                retries: 0,
                abandoned: 0,
                recent_failures: VecDeque::with_capacity(RECENT_FAILURES),
            }),
            series: Series {
                queued: metrics::gauge!("plexus_webhook_endpoint_queued_requests", &labels),
                oldest_age: metrics::gauge!("plexus_webhook_endpoint_oldest_pending_age_seconds", &labels),
                last_status: metrics::gauge!("plexus_webhook_endpoint_last_status", &labels),
                delivered: metrics::counter!("plexus_webhook_endpoint_delivered_total", &labels),
                failures: metrics::counter!("plexus_webhook_endpoint_failures_total", &labels),
                retries: metrics::counter!("plexus_webhook_endpoint_retries_total", &labels),
                abandoned: metrics::counter!("plexus_webhook_endpoint_abandoned_total", &labels),
            },
            label,
            retry: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A job made at `created_ms` joined the endpoint's queue.
    pub fn queued(&self, created_ms: u64) {
        let mut state = self.state();
        state.queued.push_back(created_ms);
        self.series.queued.set(state.queued.len() as f64);
        self.set_age(&state, now_ms());
    }

    /// The job at the head of the queue is done with (delivered, given up or left for the next
    /// start).
    pub fn dequeued(&self) {
        let mut state = self.state();
        state.queued.pop_front();
        if state.queued.is_empty() {
            state.activity = Activity::Idle;
        }
        self.series.queued.set(state.queued.len() as f64);
        self.set_age(&state, now_ms());
    }

    /// An attempt starts; `attempt` counts from 1 per job, so any later one is a retry.
    pub fn sending(&self, attempt: u32) {
        let mut state = self.state();
        state.activity = Activity::Sending;
        if attempt > 1 {
            state.retries += 1;
            self.series.retries.increment(1);
        }
    }

    /// The endpoint answered 2xx.
    pub fn delivered(&self, status: u16) {
        let mut state = self.state();
        state.last_attempt_ms = Some(now_ms());
        state.last_status = Some(status);
        state.last_outcome = Some("delivered".into());
        state.delivered += 1;
        self.series.delivered.increment(1);
        self.series.last_status.set(f64::from(status));
    }

    /// An attempt failed (`status` when the endpoint answered at all).
    pub fn failed(&self, attempt: u32, status: Option<u16>, reason: &str) {
        let mut state = self.state();
        let at_ms = now_ms();
        state.last_attempt_ms = Some(at_ms);
        state.last_status = status;
        state.last_outcome = Some(format!("failed: {reason}"));
        state.failures += 1;
        if state.recent_failures.len() == RECENT_FAILURES {
            state.recent_failures.pop_front();
        }
        state.recent_failures.push_back(Failure { at_ms, attempt, reason: reason.to_owned() });
        self.series.failures.increment(1);
        self.series.last_status.set(status.map_or(0.0, f64::from));
    }

    /// The job's retry window passed: it is given up.
    pub fn abandoned(&self) {
        self.state().abandoned += 1;
        self.series.abandoned.increment(1);
    }

    /// Waits out a backoff of `wait`, or less if [`EndpointHealth::retry_now`] is called meanwhile.
    /// Returns true when cut short.
    pub async fn back_off(&self, wait: std::time::Duration) -> bool {
        let notified = self.retry.notified();
        tokio::pin!(notified);
        // Registered before the state says "backing off", so a retry_now that sees that state
        // always wakes this wait (notify_waiters keeps no permit for a later one).
        notified.as_mut().enable();
        {
            let retry_at_ms = now_ms() + wait.as_millis() as u64;
            self.state().activity = Activity::BackingOff { retry_at_ms };
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => false,
            () = notified => true,
        }
    }

    /// Cuts a backoff short: the worker tries again at once. False when the endpoint was not
    /// backing off (idle, or an attempt in flight), which then changes nothing.
    pub fn retry_now(&self) -> bool {
        let state = self.state();
        if !matches!(state.activity, Activity::BackingOff { .. }) {
            return false;
        }
        self.retry.notify_waiters();
        true
    }

    /// Refreshes the age gauge (called every second: an age grows without any event).
    pub fn tick(&self) {
        let state = self.state();
        self.set_age(&state, now_ms());
    }

    fn set_age(&self, state: &State, now: u64) {
        let age = state.queued.front().map_or(0, |created| now.saturating_sub(*created));
        self.series.oldest_age.set(age as f64 / 1000.0);
    }

    /// The admin API's view of a configured endpoint that has had no request since start.
    pub fn unused_json() -> Value {
        json!({
            "state": "idle", "retry_at_ms": null, "queued_requests": 0, "oldest_pending_age_ms": null,
            "last_attempt_ms": null, "last_status": null, "last_outcome": null,
            "delivered": 0, "failures": 0, "retries": 0, "abandoned": 0, "recent_failures": [],
        })
    }

    /// The admin API's view (`GET /api/apps/{id}/webhooks`).
    pub fn to_json(&self) -> Value {
        let state = self.state();
        let now = now_ms();
        let (activity, retry_at_ms) = match state.activity {
            Activity::Idle => ("idle", None),
            Activity::Sending => ("sending", None),
            Activity::BackingOff { retry_at_ms } => ("backing_off", Some(retry_at_ms)),
        };
        json!({
            "state": activity,
            "retry_at_ms": retry_at_ms,
            "queued_requests": state.queued.len(),
            "oldest_pending_age_ms": state.queued.front().map(|created| now.saturating_sub(*created)),
            "last_attempt_ms": state.last_attempt_ms,
            "last_status": state.last_status,
            "last_outcome": state.last_outcome,
            "delivered": state.delivered,
            "failures": state.failures,
            "retries": state.retries,
            "abandoned": state.abandoned,
            "recent_failures": state.recent_failures.iter().rev().map(|f| json!({
                "at_ms": f.at_ms, "attempt": f.attempt, "reason": f.reason,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Describes the per-endpoint series for Prometheus (called where the recorder is installed).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        "plexus_webhook_endpoint_queued_requests",
        "Webhook requests queued or in flight for the endpoint (each one batch of events)"
    );
    describe_gauge!(
        "plexus_webhook_endpoint_oldest_pending_age_seconds",
        Unit::Seconds,
        "Age of the endpoint's oldest undelivered request (0 when none), refreshed every second"
    );
    describe_gauge!(
        "plexus_webhook_endpoint_last_status",
        "HTTP status of the endpoint's last answer (0: no answer, e.g. refused or timed out)"
    );
    describe_counter!(
        "plexus_webhook_endpoint_delivered_total",
        "Webhook requests the endpoint accepted (2xx)"
    );
    describe_counter!("plexus_webhook_endpoint_failures_total", "Failed webhook attempts to the endpoint");
    describe_counter!(
        "plexus_webhook_endpoint_retries_total",
        "Webhook attempts to the endpoint after a job's first (backoff or retry now)"
    );
    describe_counter!(
        "plexus_webhook_endpoint_abandoned_total",
        "Webhook requests to the endpoint given up after retry_for_secs"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_head_is_the_oldest_and_only_five_failures_are_kept_newest_first() {
        let health = EndpointHealth::new("a", "http://127.0.0.1:1/", "0".into());
        health.queued(now_ms() - 10_000);
        health.queued(now_ms());
        for attempt in 1..=7 {
            health.sending(attempt);
            health.failed(attempt, Some(500), &format!("HTTP 500 #{attempt}"));
        }
        let view = health.to_json();
        assert_eq!(view["queued_requests"], 2);
        assert!(view["oldest_pending_age_ms"].as_u64().unwrap() >= 10_000, "{view}");
        assert_eq!((view["failures"].as_u64(), view["retries"].as_u64()), (Some(7), Some(6)));
        let reasons: Vec<&str> = view["recent_failures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["reason"].as_str().unwrap())
            .collect();
        assert_eq!(reasons, ["HTTP 500 #7", "HTTP 500 #6", "HTTP 500 #5", "HTTP 500 #4", "HTTP 500 #3"]);
        health.dequeued();
        health.dequeued();
        let view = health.to_json();
        assert_eq!((view["queued_requests"].as_u64(), view["state"].as_str()), (Some(0), Some("idle")));
        assert!(view["oldest_pending_age_ms"].is_null());
    }

    #[test]
    fn an_unused_endpoint_is_described_with_the_same_fields() {
        let used = EndpointHealth::new("a", "http://127.0.0.1:1/", "0".into()).to_json();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&EndpointHealth::unused_json()), keys(&used));
        assert_eq!(EndpointHealth::unused_json(), used);
    }

    #[tokio::test]
    async fn retry_now_wakes_a_backoff_and_nothing_else() {
        let health = std::sync::Arc::new(EndpointHealth::new("a", "http://127.0.0.1:1/", "0".into()));
        assert!(!health.retry_now(), "idle: nothing to wake");
        let waiting = health.clone();
        let backoff =
            tokio::spawn(async move { waiting.back_off(std::time::Duration::from_secs(3600)).await });
        // Poll (bounded) until the worker says it is backing off, then cut it short.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !health.retry_now() {
            assert!(tokio::time::Instant::now() < deadline, "never backing off");
            tokio::task::yield_now().await;
        }
        let cut = tokio::time::timeout(std::time::Duration::from_secs(5), backoff).await;
        assert!(cut.expect("woken long before the hour").unwrap());
    }
}
