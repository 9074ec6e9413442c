//! The dashboard's charts: a bounded history of each app's figures, sampled by the server every
//! [`SAMPLE_EVERY`] whether anyone watches or not, so a dashboard opened now shows the last
//! [`SAMPLES`] samples (15 minutes) at once.
//!
//! Memory is bounded: [`SAMPLES`] samples per configured app (apps that leave the store leave
//! the history at the next sample). A sample costs one walk over the app's channels, the same
//! walk `GET /api/overview` makes on every dashboard refresh.
//!
//! In a cluster every figure is also given per peer and for the whole cluster: subscriptions
//! from the shares nodes exchange for the cluster-wide counts, connections and rates from the
//! figures each node reports on a timer (`plexus_core::cluster::load`). A peer's figures are as
//! fresh as its last report (one every five heartbeats).

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
    /// Rates since the previous sample; `None` for an app's first sample.
    events_per_sec: Option<f64>,
    messages_per_sec: Option<f64>,
    /// Every other node's figures, by node id (empty on a single node).
    peers: Vec<(u64, PeerSample)>,
}

/// One other node's figures at one moment, as it last reported them.
#[derive(Debug, Clone, Default)]
struct PeerSample {
    connections: Option<u64>,
    subscriptions: usize,
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
            let mut peers: std::collections::BTreeMap<u64, PeerSample> = by_node
                .remote
                .into_iter()
                .map(|(node, subscriptions)| (node, PeerSample { subscriptions, ..PeerSample::default() }))
                .collect();
            for load in self.server.cluster.iter().flat_map(|node| node.peer_loads(&app.id)) {
                let peer = peers.entry(load.node).or_default();
                peer.connections = Some(load.connections);
                peer.events_per_sec = load.events_per_sec;
                peer.messages_per_sec = load.messages_per_sec;
            }
            entry.samples.push_back(Sample {
                at_ms,
                connections: hub.connection_count(),
                subscriptions: by_node.local,
                events_per_sec,
                messages_per_sec,
                peers: peers.into_iter().collect(),
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
                let peer_subscriptions: serde_json::Map<String, Value> = s
                    .peers
                    .iter()
                    .filter(|(_, p)| p.subscriptions > 0)
                    .map(|(id, p)| (id.to_string(), json!(p.subscriptions)))
                    .collect();
                let peers: serde_json::Map<String, Value> = s
                    .peers
                    .iter()
                    .map(|(id, p)| {
                        let figures = json!({
                            "connections": p.connections,
                            "subscriptions": p.subscriptions,
                            "events_per_sec": round(p.events_per_sec),
                            "messages_per_sec": round(p.messages_per_sec),
                        });
                        (id.to_string(), figures)
                    })
                    .collect();
                // The cluster's figure adds every node's that is known; a peer that has not
                // reported yet adds nothing rather than hiding the rest.
                let cluster_rate = |own: Option<f64>, peer: fn(&PeerSample) -> Option<f64>| {
                    own.map(|own| own + s.peers.iter().filter_map(|(_, p)| peer(p)).sum::<f64>())
                };
                let peers_total = |peer: fn(&PeerSample) -> usize| s.peers.iter().map(|(_, p)| peer(p)).sum::<usize>();
                json!({
                    "at_ms": s.at_ms,
                    "connections": s.connections,
                    "subscriptions": s.subscriptions,
                    "events_per_sec": round(s.events_per_sec),
                    "messages_per_sec": round(s.messages_per_sec),
                    "peers": peers,
                    "peer_subscriptions": peer_subscriptions,
                    "cluster_connections": s.connections + peers_total(|p| p.connections.unwrap_or(0) as usize),
                    "cluster_subscriptions": s.subscriptions + peers_total(|p| p.subscriptions),
                    "cluster_events_per_sec": round(cluster_rate(s.events_per_sec, |p| p.events_per_sec)),
                    "cluster_messages_per_sec": round(cluster_rate(s.messages_per_sec, |p| p.messages_per_sec)),
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

/// A rate to two decimals, as the dashboard shows it.
fn round(rate: Option<f64>) -> Option<f64> {
    rate.map(|r| (r * 100.0).round() / 100.0)
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
