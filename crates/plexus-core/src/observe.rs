//! The debug console's seam: what happens in one app (events fanned out, client events,
//! subscriptions, presence changes, webhook deliveries), offered to whoever is watching.
//!
//! Each [`AppHub`](crate::AppHub) owns an [`Observer`]. Nobody watching is the normal case and
//! costs one relaxed atomic load per hook ([`Observer::emit`] never builds the observation then);
//! the fan-out allocation guard (`tests/fanout_allocations.rs`) keeps that honest. A watcher gets
//! a [`Watch`]: a receiver on a bounded broadcast buffer. A watcher that falls behind loses the
//! oldest observations (it is told how many) and never slows the hub: sending never waits.
//! Filtering by channel is the watcher's job, so one buffer serves every viewer of an app.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::broadcast;

/// Observations buffered per app for its watchers.
pub const BUFFER: usize = 1024;

/// One thing that happened in an app.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub channel: String,
    /// `event`, `client_event`, `subscribed`, `unsubscribed`, `member_added`, `member_removed`
    /// or `webhook`.
    pub kind: &'static str,
    /// Kind-specific fields (event name and data, socket id, user id, webhook outcome).
    pub detail: Value,
}

impl Observation {
    pub fn new(channel: impl Into<String>, kind: &'static str, detail: Value) -> Observation {
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Observation { at_ms, channel: channel.into(), kind, detail }
    }

    /// The observation as the admin API sends it.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"at_ms": self.at_ms, "channel": self.channel, "kind": self.kind, "detail": self.detail})
    }
}

/// An app's observers: a watcher count and a bounded broadcast.
#[derive(Debug)]
pub struct Observer {
    watchers: AtomicUsize,
    tx: broadcast::Sender<Arc<Observation>>,
}

impl Default for Observer {
    fn default() -> Self {
        Observer { watchers: AtomicUsize::new(0), tx: broadcast::channel(BUFFER).0 }
    }
}

impl Observer {
    /// Whether anyone watches; the only cost of the seam when nobody does.
    #[inline]
    pub fn is_watched(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    /// Offers an observation to the watchers, building it only if there are any.
    #[inline]
    pub fn emit(&self, make: impl FnOnce() -> Observation) {
        if self.is_watched() {
            // An error means the last watcher left meanwhile: nothing to do.
            let _ = self.tx.send(Arc::new(make()));
        }
    }

    /// Starts watching; observations flow until the [`Watch`] is dropped.
    pub fn watch(self: &Arc<Self>) -> Watch {
        let rx = self.tx.subscribe();
        self.watchers.fetch_add(1, Ordering::Relaxed);
        Watch { rx, observer: self.clone() }
    }
}

/// What a watcher receives next.
#[derive(Debug)]
pub enum Seen {
    Observed(Arc<Observation>),
    /// The watcher fell behind and this many observations were dropped for it.
    Missed(u64),
}

/// One watcher. Dropping it stops the flow (when it was the last).
#[derive(Debug)]
pub struct Watch {
    rx: broadcast::Receiver<Arc<Observation>>,
    observer: Arc<Observer>,
}

impl Watch {
    pub async fn next(&mut self) -> Seen {
        match self.rx.recv().await {
            Ok(observation) => Seen::Observed(observation),
            Err(broadcast::error::RecvError::Lagged(missed)) => Seen::Missed(missed),
            // The sender lives in `observer`, which we hold: it cannot close.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.observer.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An event frame as an observation: `event` or, for `client-` events, `client_event`.
pub fn event_observation(channel: &str, frame: &[u8], except: Option<String>) -> Observation {
    let payload = plexus_protocol::wsframe::server_frame_payload_slice(frame);
    let parsed: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
    let name = parsed.get("event").and_then(Value::as_str).unwrap_or("").to_owned();
    let kind = if name.starts_with("client-") { "client_event" } else { "event" };
    let mut detail =
        serde_json::json!({"event": name, "data": parsed.get("data").cloned().unwrap_or(Value::Null)});
    if let Some(user_id) = parsed.get("user_id") {
        detail["user_id"] = user_id.clone();
    }
    if let Some(socket_id) = except {
        detail["except_socket_id"] = Value::String(socket_id);
    }
    Observation::new(channel, kind, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_protocol::codec::{Data, ServerEvent};

    #[tokio::test]
    async fn nothing_is_built_unless_watched_and_a_slow_watcher_is_told_what_it_missed() {
        let observer = Arc::new(Observer::default());
        observer.emit(|| unreachable!("no watcher: the observation must not be built"));
        let mut watch = observer.watch();
        assert!(observer.is_watched());
        for n in 0..BUFFER + 5 {
            observer.emit(|| Observation::new("c", "event", serde_json::json!(n)));
        }
        assert!(matches!(watch.next().await, Seen::Missed(5)));
        match watch.next().await {
            Seen::Observed(o) => assert_eq!(o.detail, serde_json::json!(5)),
            other => panic!("{other:?}"),
        }
        drop(watch);
        assert!(!observer.is_watched());
    }

    #[test]
    fn event_frames_of_every_length_are_read_back() {
        for size in [10, 200, 70_000] {
            let data = "x".repeat(size);
            let frame =
                ServerEvent::new("client-typing").channel("private-a").data(Data::Str(&data)).to_frame();
            let observed = event_observation("private-a", &frame, Some("1.2".into()));
            assert_eq!(observed.kind, "client_event");
            assert_eq!(observed.detail["event"], "client-typing");
            assert_eq!(observed.detail["data"].as_str().map(str::len), Some(size));
            assert_eq!(observed.detail["except_socket_id"], "1.2");
        }
    }
}
