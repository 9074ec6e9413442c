//! How busy every other node is, per app: its connections, and the rates at which it publishes
//! events and delivers messages, for the operator's per-node view (the dashboard's charts).
//!
//! Each node sends its figures every [`ClusterOptions::load_every`](super::ClusterOptions) as
//! cumulative totals, outside the broadcast sequence: figures need no order and no healing (the
//! next report replaces a lost one), so a lost or unreadable report never makes a peer re-sync.
//! The receiver turns two consecutive totals into rates over the time between their arrivals,
//! so the rates do not depend on when anyone samples them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::wire::AppLoad;
use super::NodeId;
use crate::Hubs;

/// A report carries at most this many apps; a node with more sends several.
pub(super) const APPS_PER_REPORT: usize = 256;

/// One other node's figures for one app, as this node last heard them.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerLoad {
    pub node: NodeId,
    pub connections: u64,
    /// Events published on that node per second, between its last two reports (`None` until
    /// two have arrived).
    pub events_per_sec: Option<f64>,
    /// Messages queued to that node's subscribers per second, likewise.
    pub messages_per_sec: Option<f64>,
}

/// One report of one app, and the rates it gave against the report before it.
#[derive(Debug, Clone, Copy)]
struct Heard {
    connections: u64,
    published: u64,
    delivered: u64,
    at: Instant,
    /// Events and messages per second.
    rates: Option<(f64, f64)>,
}

/// Every peer's last report, per app. What a peer stopped reporting for longer than `fresh` is
/// dropped at its next report, so a peer's entries are bounded by the apps it reported lately.
#[derive(Debug)]
pub(super) struct PeerLoads {
    fresh: Duration,
    heard: Mutex<HashMap<NodeId, HashMap<String, Heard>>>,
}

impl PeerLoads {
    /// Figures older than `fresh` are left out of answers and dropped.
    pub(super) fn new(fresh: Duration) -> Self {
        PeerLoads { fresh, heard: Mutex::default() }
    }

    fn heard(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, HashMap<String, Heard>>> {
        self.heard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `from`'s report of `apps`, received `at`.
    pub(super) fn record(&self, from: NodeId, apps: Vec<AppLoad>, at: Instant) {
        let mut heard = self.heard();
        let node = heard.entry(from).or_default();
        node.retain(|_, before| at.duration_since(before.at) <= self.fresh);
        for load in apps {
            let rates = node.get(&load.app).and_then(|before| {
                let seconds = at.duration_since(before.at).as_secs_f64();
                // Totals only grow; a smaller one is a restarted counter, not a negative rate.
                let per_sec = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
                (seconds > 0.0).then(|| {
                    (per_sec(load.published, before.published), per_sec(load.delivered, before.delivered))
                })
            });
            let heard = Heard {
                connections: load.connections,
                published: load.published,
                delivered: load.delivered,
                at,
                rates,
            };
            node.insert(load.app, heard);
        }
    }

    /// Drops everything heard from `peer` (it left or was taken for dead).
    pub(super) fn forget(&self, peer: NodeId) {
        self.heard().remove(&peer);
    }

    /// Every peer's figures for `app_id` heard within the freshness window before `now`, by node
    /// id. A peer that stopped reporting an app (its figures all fell to zero) drops out then.
    pub(super) fn of_app(&self, app_id: &str, now: Instant) -> Vec<PeerLoad> {
        let heard = self.heard();
        let mut loads: Vec<PeerLoad> = heard
            .iter()
            .filter_map(|(node, apps)| {
                let heard = apps.get(app_id).filter(|h| now.duration_since(h.at) <= self.fresh)?;
                Some(PeerLoad {
                    node: *node,
                    connections: heard.connections,
                    events_per_sec: heard.rates.map(|r| r.0),
                    messages_per_sec: heard.rates.map(|r| r.1),
                })
            })
            .collect();
        loads.sort_by_key(|load| load.node);
        loads
    }
}

/// This node's figures for every app with any, in reports of at most [`APPS_PER_REPORT`] apps.
pub(super) fn own_reports(hubs: &Hubs) -> Vec<Vec<AppLoad>> {
    let loads: Vec<AppLoad> = hubs
        .all()
        .iter()
        .map(|hub| {
            let (published, delivered) = hub.totals();
            AppLoad {
                app: hub.app_id().to_owned(),
                connections: hub.connection_count() as u64,
                published,
                delivered,
            }
        })
        .filter(|load| load.connections > 0 || load.published > 0 || load.delivered > 0)
        .collect();
    loads.chunks(APPS_PER_REPORT).map(<[AppLoad]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(app: &str, connections: u64, published: u64, delivered: u64) -> AppLoad {
        AppLoad { app: app.into(), connections, published, delivered }
    }

    #[tokio::test(start_paused = true)]
    async fn rates_come_from_two_reports_and_a_silent_app_or_forgotten_peer_drops_out() {
        let fresh = Duration::from_secs(15);
        let loads = PeerLoads::new(fresh);
        let start = Instant::now();
        loads.record(7, vec![load("a", 3, 100, 1_000)], start);
        let first = loads.of_app("a", start);
        assert_eq!(
            first,
            vec![PeerLoad { node: 7, connections: 3, events_per_sec: None, messages_per_sec: None }]
        );

        let later = start + Duration::from_secs(5);
        loads.record(7, vec![load("a", 4, 150, 2_000)], later);
        loads.record(9, vec![load("a", 1, 0, 0), load("b", 2, 0, 0)], later);
        let rated = loads.of_app("a", later);
        assert_eq!(rated.len(), 2);
        assert_eq!((rated[0].node, rated[0].connections), (7, 4));
        assert_eq!((rated[0].events_per_sec, rated[0].messages_per_sec), (Some(10.0), Some(200.0)));
        assert_eq!(rated[1].node, 9);

        let stale = later + fresh + Duration::from_secs(1);
        assert!(loads.of_app("a", stale).is_empty(), "stale");
        // A later report that no longer names "b" drops it: entries stay bounded.
        loads.record(9, vec![load("a", 1, 0, 0)], stale);
        assert_eq!(loads.heard()[&9].keys().collect::<Vec<_>>(), ["a"]);
        loads.forget(7);
        assert_eq!(loads.of_app("a", stale).iter().map(|l| l.node).collect::<Vec<_>>(), vec![9]);
        assert_eq!(loads.of_app("c", stale), vec![]);
    }
}
