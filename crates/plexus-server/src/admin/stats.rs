//! The dashboard's charts: a bounded history of each app's figures, sampled by the server every
//! [`SAMPLE_EVERY`] whether anyone watches or not, so a dashboard opened now shows the last
//! [`SAMPLES`] samples (15 minutes) at once.
//!
//! Memory is bounded: [`SAMPLES`] samples per configured app (apps that leave the store leave
//! the history at the next sample). A sample costs one walk over the app's channels, the same
//! walk `GET /api/overview` makes on every dashboard refresh.
//!
//! What a cluster node knows about its peers: the subscriptions each holds (their shares of
//! every channel, exchanged for the cluster-wide counts), so those are per node and in total.
//! Connections and event and message counts are not exchanged, so they are this node's own,
//! labelled with its id.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::ServerState;

/// How often the figures are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept per app: 15 minutes at one every 5 s.
pub const SAMPLES: usize = 180;

/// One app's figures at one moment.
#[derive(Debug, Clone)]
struct Sample {
    at_ms: u64,
    connections: usize,
    /// This node's sockets' subscriptions.
    subscriptions: usize,
    /// Every other node's reported share, by node id (empty on a single node).
    peer_subscriptions: Vec<(u64, usize)>,
    /// Rates since the previous sample; `None` for an app's first sample.
    events_per_sec: Option<f64>,
    messages_per_sec: Option<f64>,
}

#[derive(Debug)]
struct AppHistory {
    samples: VecDeque<Sample>,
    /// Published and delivered totals at the previous sample, and when it was taken.
    last: Option<((u64, u64), Instant)>,
}

/// Every app's history.
#[derive(Debug)]
pub struct Stats {
    server: Arc<ServerState>,
    apps: Mutex<HashMap<String, AppHistory>>,
}

impl Stats {
    /// A history for `server`'s apps, sampled from now on by a task that ends when the history
    /// is dropped. Without a Tokio runtime (a router built outside one) nothing is sampled.
    pub fn start(server: Arc<ServerState>) -> Arc<Stats> {
        let stats = Arc::new(Stats { server, apps: Mutex::default() });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sample_every(Arc::downgrade(&stats)));
        }
        stats
    }

    fn apps(&self) -> std::sync::MutexGuard<'_, HashMap<String, AppHistory>> {
        self.apps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one sample of every app.
    fn sample(&self) {
        let (now, at_ms) = (Instant::now(), now_ms());
        let apps = self.server.apps.list();
        let mut history = self.apps();
        history.retain(|id, _| apps.iter().any(|app| app.id == *id));
        for app in apps {
            let hub = self.server.hubs.hub(&app.id);
            let by_node = hub.subscriptions_by_node();
            let totals = hub.totals();
            let entry = history
                .entry(app.id.clone())
                .or_insert_with(|| AppHistory { samples: VecDeque::with_capacity(SAMPLES), last: None });
            let rate = |now_total: u64, before: u64, since: Instant| {
                let seconds = now.duration_since(since).as_secs_f64();
                (seconds > 0.0).then(|| now_total.saturating_sub(before) as f64 / seconds)
            };
            let (events_per_sec, messages_per_sec) = match entry.last {
                Some(((published, delivered), since)) => {
                    (rate(totals.0, published, since), rate(totals.1, delivered, since))
                }
                None => (None, None),
            };
            entry.last = Some((totals, now));
            if entry.samples.len() == SAMPLES {
                entry.samples.pop_front();
            }
            entry.samples.push_back(Sample {
                at_ms,
                connections: hub.connection_count(),
                subscriptions: by_node.local,
                peer_subscriptions: by_node.remote.into_iter().collect(),
                events_per_sec,
                messages_per_sec,
            });
        }
    }

    /// `GET /api/apps/{id}/stats`: the app's history, oldest first.
    pub fn to_json(&self, app_id: &str) -> Value {
        let node = self.server.cluster.as_ref().map(|node| node.id().to_string());
        let history = self.apps();
        let samples: Vec<Value> = history
            .get(app_id)
            .into_iter()
            .flat_map(|h| h.samples.iter())
            .map(|s| {
                let peers: serde_json::Map<String, Value> =
                    s.peer_subscriptions.iter().map(|(id, n)| (id.to_string(), json!(n))).collect();
                let round = |rate: Option<f64>| rate.map(|r| (r * 100.0).round() / 100.0);
                json!({
                    "at_ms": s.at_ms,
                    "connections": s.connections,
                    "subscriptions": s.subscriptions,
                    "peer_subscriptions": peers,
                    "cluster_subscriptions": s.subscriptions + s.peer_subscriptions.iter().map(|(_, n)| n).sum::<usize>(),
                    "events_per_sec": round(s.events_per_sec),
                    "messages_per_sec": round(s.messages_per_sec),
                })
            })
            .collect();
        json!({
            "app_id": app_id,
            "node": node,
            "interval_ms": SAMPLE_EVERY.as_millis() as u64,
            "capacity": SAMPLES,
            "samples": samples,
        })
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The sampler: one sample at once (so a fresh dashboard has a point), then every
/// [`SAMPLE_EVERY`].
async fn sample_every(stats: Weak<Stats>) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(stats) = stats.upgrade() else { return };
        stats.sample();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_core::{App, MemoryAppStore};

    #[test]
    fn each_app_keeps_at_most_fifteen_minutes_of_samples_and_its_first_has_no_rate() {
        let apps = Arc::new(MemoryAppStore::new(vec![App::new("a", "k", "s")]).unwrap());
        // Built outside a runtime: no sampler runs, the test takes every sample itself.
        let stats = Stats::start(crate::ServerState::new(crate::config::ServerConfig::default(), apps));
        stats.sample();
        let first = stats.to_json("a");
        assert_eq!(first["samples"][0]["events_per_sec"], Value::Null);
        for _ in 0..SAMPLES + 20 {
            stats.sample();
        }
        let view = stats.to_json("a");
        assert_eq!(view["samples"].as_array().unwrap().len(), SAMPLES);
        let rated = view["samples"].as_array().unwrap().iter().filter(|s| s["events_per_sec"].is_number());
        assert!(rated.count() > 0, "later samples have a rate (0 here: nothing published)");
        assert_eq!(stats.to_json("unknown")["samples"], serde_json::json!([]));
    }
}
