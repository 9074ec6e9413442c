//! A cluster bus inside one process: many [`ClusterNode`](super::ClusterNode)s, one
//! [`MemoryBus`], no sockets and no server.
//!
//! It keeps the whole [`Transport`] contract (it passes the same suite as NATS and Redis,
//! `plexus-transport-tests`), and adds the controls a test needs and a real bus gives only with
//! effort:
//!
//! - [`MemoryTransport::cut`] takes one node off the bus: it reports [`Inbound::Disconnected`]
//!   and loses what is sent to it and by it until [`MemoryTransport::reconnect`], which reports
//!   [`Inbound::Connected`]; [`MemoryBus::outage`] and [`MemoryBus::restore`] do that to every
//!   node at once, like a bus server dying and coming back;
//! - [`MemoryTransport::kill`] makes a node vanish without a word, like a process killed with
//!   SIGKILL: its messages stop and its receive loop ends;
//! - [`MemoryBus::set_filter`] decides the [`Fate`] of every single delivery (one message to one
//!   node): deliver it, drop it, or hold it until [`MemoryBus::release_held`].
//!
//! Delivery is synchronous: [`Transport::send`] pushes into the receivers' inbound queues before
//! it returns, under one lock, so every receiver sees one order of everything sent, and what a
//! test sent has arrived (though not yet been processed) when `send` returns. That, and tokio's
//! paused clock, is what makes multi-node tests deterministic.
//!
//! It ships with the crate, behind no feature: it has no dependencies, nothing in a server's
//! configuration reaches it, and an application embedding plexus can test its own cluster
//! behaviour with it the way plexus does.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::{Inbound, InboundSender, Listen, ListenFuture, NodeId, Route, Topic, Transport};

/// One message on its way to one node, as a [`MemoryBus::set_filter`] filter sees it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The cluster (both ends share it).
    pub prefix: &'a str,
    pub from: NodeId,
    pub to: NodeId,
    /// How the sender addressed it.
    pub route: &'a Route,
    pub message: &'a Bytes,
}

/// What becomes of one [`Delivery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Deliver,
    /// Lost, as on a bus that dropped it.
    Drop,
    /// Kept back until [`MemoryBus::release_held`]: later messages overtake it.
    Hold,
}

type Filter = Arc<dyn Fn(&Delivery<'_>) -> Fate + Send + Sync>;

/// One node's connection to the bus.
#[derive(Debug)]
struct Endpoint {
    key: u64,
    prefix: Arc<str>,
    node: NodeId,
    inbound: InboundSender,
    /// Taken off the bus by [`MemoryTransport::cut`].
    cut: bool,
    /// The topics it listens to, and how much of each.
    topics: HashMap<Topic, Listen>,
}

#[derive(Debug)]
struct Held {
    to: u64,
    message: Bytes,
}

#[derive(Default)]
struct State {
    endpoints: Vec<Endpoint>,
    next_key: u64,
    /// The whole bus is down ([`MemoryBus::outage`]).
    down: bool,
    filter: Option<Filter>,
    held: Vec<Held>,
}

impl State {
    fn endpoint(&self, key: u64) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.key == key)
    }

    fn endpoint_mut(&mut self, key: u64) -> Option<&mut Endpoint> {
        self.endpoints.iter_mut().find(|e| e.key == key)
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("endpoints", &self.endpoints)
            .field("down", &self.down)
            .field("filter", &self.filter.as_ref().map(|_| "…"))
            .field("held", &self.held.len())
            .finish()
    }
}

/// A bus shared by any number of nodes in one process; clusters on it are told apart by prefix.
/// Cloning gives another handle on the same bus.
#[derive(Debug, Clone, Default)]
pub struct MemoryBus {
    state: Arc<Mutex<State>>,
}

impl MemoryBus {
    pub fn new() -> Self {
        MemoryBus::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under this lock is a single push or flag; a panic (in a test's filter)
        // cannot leave the state half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connects node `node` of cluster `prefix`; it reports what it receives into `inbound`.
    /// Connecting never fails (any prefix is valid); while the bus is down ([`MemoryBus::outage`])
    /// the node is connected but hears nothing until [`MemoryBus::restore`].
    pub fn connect(&self, prefix: &str, node: NodeId, inbound: InboundSender) -> Arc<MemoryTransport> {
        let mut state = self.lock();
        state.next_key += 1;
        let key = state.next_key;
        state.endpoints.push(Endpoint {
            key,
            prefix: prefix.into(),
            node,
            inbound,
            cut: false,
            topics: HashMap::new(),
        });
        Arc::new(MemoryTransport { bus: self.clone(), key, node })
    }

    /// Decides from now on what becomes of every delivery (one message to one node). The filter
    /// runs inside `send`, under the bus's lock: it must return at once and not use the bus.
    pub fn set_filter(&self, filter: impl Fn(&Delivery<'_>) -> Fate + Send + Sync + 'static) {
        self.lock().filter = Some(Arc::new(filter));
    }

    /// Delivers everything from now on (held messages stay held).
    pub fn clear_filter(&self) {
        self.lock().filter = None;
    }

    /// How many deliveries are held.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Delivers the held messages, in the order they were held; those whose node is no longer
    /// on the bus are lost. Returns how many were delivered.
    pub fn release_held(&self) -> usize {
        let mut state = self.lock();
        let held = std::mem::take(&mut state.held);
        let mut delivered = 0;
        for Held { to, message } in held {
            if let Some(endpoint) = state.endpoint(to).filter(|e| !e.cut && !state.down) {
                delivered += usize::from(endpoint.inbound.send(Inbound::Message(message)).is_ok());
            }
        }
        delivered
    }

    /// The bus goes down, as a bus server that died: every node on it reports
    /// [`Inbound::Disconnected`], and everything sent until [`MemoryBus::restore`] is lost.
    pub fn outage(&self) {
        let mut state = self.lock();
        if std::mem::replace(&mut state.down, true) {
            return;
        }
        for endpoint in state.endpoints.iter().filter(|e| !e.cut) {
            let _ = endpoint.inbound.send(Inbound::Disconnected);
        }
    }

    /// The bus is back after [`MemoryBus::outage`]: every node on it (but those cut on their own)
    /// reports [`Inbound::Connected`].
    pub fn restore(&self) {
        let mut state = self.lock();
        if !std::mem::replace(&mut state.down, false) {
            return;
        }
        for endpoint in state.endpoints.iter().filter(|e| !e.cut) {
            let _ = endpoint.inbound.send(Inbound::Connected);
        }
    }

    fn send(&self, from_key: u64, route: Route, message: Bytes) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(from) = state.endpoint(from_key) else { return };
        if from.cut || state.down {
            return;
        }
        let (prefix, from) = (from.prefix.clone(), from.node);
        let mut held = Vec::new();
        for endpoint in &state.endpoints {
            // No echo of a node's own broadcasts (the contract allows either; NATS does the same).
            let addressed = match &route {
                Route::All => endpoint.key != from_key,
                Route::Node(node) => endpoint.node == *node,
                Route::Topic(topic, kind) => {
                    endpoint.key != from_key && endpoint.topics.get(topic).is_some_and(|l| l.takes(*kind))
                }
            };
            if !addressed || endpoint.cut || *endpoint.prefix != *prefix {
                continue;
            }
            let delivery =
                Delivery { prefix: &prefix, from, to: endpoint.node, route: &route, message: &message };
            match state.filter.as_ref().map_or(Fate::Deliver, |filter| filter(&delivery)) {
                Fate::Deliver => {
                    // A receiver that is gone (its node stopped) simply misses it.
                    let _ = endpoint.inbound.send(Inbound::Message(message.clone()));
                }
                Fate::Drop => {}
                Fate::Hold => held.push(Held { to: endpoint.key, message: message.clone() }),
            }
        }
        state.held.extend(held);
    }
}

/// One node's connection to a [`MemoryBus`], with the controls tests use on it.
#[derive(Debug)]
pub struct MemoryTransport {
    bus: MemoryBus,
    key: u64,
    node: NodeId,
}

impl MemoryTransport {
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Takes this node off the bus: it reports [`Inbound::Disconnected`], and what it sends and
    /// what is sent to it are lost until [`MemoryTransport::reconnect`].
    pub fn cut(&self) {
        let mut state = self.bus.lock();
        let down = state.down;
        let Some(endpoint) = state.endpoint_mut(self.key) else { return };
        if std::mem::replace(&mut endpoint.cut, true) || down {
            return;
        }
        let _ = endpoint.inbound.send(Inbound::Disconnected);
    }

    /// Puts this node back on the bus after [`MemoryTransport::cut`]: it reports
    /// [`Inbound::Connected`] (once the bus itself is up, if it is in an outage).
    pub fn reconnect(&self) {
        let mut state = self.bus.lock();
        let down = state.down;
        let Some(endpoint) = state.endpoint_mut(self.key) else { return };
        if !std::mem::replace(&mut endpoint.cut, false) || down {
            return;
        }
        let _ = endpoint.inbound.send(Inbound::Connected);
    }

    /// Whether this node currently hears the bus.
    pub fn is_connected(&self) -> bool {
        let state = self.bus.lock();
        state.endpoint(self.key).is_some_and(|e| !e.cut) && !state.down
    }

    /// The node vanishes without a word, like a process killed with SIGKILL: nothing it sends
    /// arrives anywhere, and its inbound queue closes, which ends its receive loop. Final.
    pub fn kill(&self) {
        let mut state = self.bus.lock();
        state.endpoints.retain(|e| e.key != self.key);
        state.held.retain(|h| h.to != self.key);
    }
}

impl Transport for MemoryTransport {
    fn send(&self, route: Route, message: Bytes) {
        self.bus.send(self.key, route, message);
    }

    /// Takes effect at once (delivery is synchronous), and survives a cut: a node listens to
    /// the same topics when it is back.
    fn listen<'a>(&'a self, topic: &'a Topic, listen: Listen) -> ListenFuture<'a> {
        let mut state = self.bus.lock();
        if let Some(endpoint) = state.endpoint_mut(self.key) {
            match listen {
                Listen::Nothing => endpoint.topics.remove(topic),
                level => endpoint.topics.insert(topic.clone(), level),
            };
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::{self, UnboundedReceiver};

    fn node(bus: &MemoryBus, prefix: &str, id: NodeId) -> (Arc<MemoryTransport>, UnboundedReceiver<Inbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (bus.connect(prefix, id, tx), rx)
    }

    /// Everything queued, without waiting (delivery is synchronous).
    fn queued(rx: &mut UnboundedReceiver<Inbound>) -> Vec<Inbound> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    fn message(text: &'static str) -> Inbound {
        Inbound::Message(Bytes::from_static(text.as_bytes()))
    }

    #[test]
    fn broadcasts_reach_the_others_of_the_cluster_and_direct_messages_their_node() {
        let bus = MemoryBus::new();
        let (a, mut rx_a) = node(&bus, "p", 1);
        let (_b, mut rx_b) = node(&bus, "p", 2);
        let (_c, mut rx_c) = node(&bus, "p", 3);
        let (_other, mut rx_other) = node(&bus, "q", 2);
        a.send(Route::All, Bytes::from_static(b"all"));
        a.send(Route::Node(2), Bytes::from_static(b"to 2"));
        a.send(Route::Node(9), Bytes::from_static(b"to nobody"));
        assert_eq!(queued(&mut rx_a), vec![], "no echo");
        assert_eq!(queued(&mut rx_b), vec![message("all"), message("to 2")]);
        assert_eq!(queued(&mut rx_c), vec![message("all")]);
        assert_eq!(queued(&mut rx_other), vec![], "another prefix is another cluster");
    }

    #[test]
    fn a_cut_node_reports_it_and_loses_messages_both_ways_until_it_reconnects() {
        let bus = MemoryBus::new();
        let (a, mut rx_a) = node(&bus, "p", 1);
        let (b, mut rx_b) = node(&bus, "p", 2);
        b.cut();
        b.cut();
        assert!(!b.is_connected());
        a.send(Route::All, Bytes::from_static(b"lost to b"));
        b.send(Route::All, Bytes::from_static(b"lost from b"));
        assert_eq!(queued(&mut rx_a), vec![]);
        assert_eq!(queued(&mut rx_b), vec![Inbound::Disconnected], "reported once");
        b.reconnect();
        a.send(Route::All, Bytes::from_static(b"after"));
        assert_eq!(queued(&mut rx_b), vec![Inbound::Connected, message("after")]);
        assert!(b.is_connected());
    }

    #[test]
    fn an_outage_disconnects_everyone_and_a_restore_reconnects_them() {
        let bus = MemoryBus::new();
        let (a, mut rx_a) = node(&bus, "p", 1);
        let (b, mut rx_b) = node(&bus, "p", 2);
        b.cut();
        bus.outage();
        a.send(Route::All, Bytes::from_static(b"lost"));
        b.reconnect();
        assert_eq!(queued(&mut rx_a), vec![Inbound::Disconnected]);
        assert_eq!(queued(&mut rx_b), vec![Inbound::Disconnected], "no second report during the outage");
        bus.restore();
        a.send(Route::All, Bytes::from_static(b"back"));
        assert_eq!(queued(&mut rx_a), vec![Inbound::Connected]);
        assert_eq!(queued(&mut rx_b), vec![Inbound::Connected, message("back")]);
    }

    #[test]
    fn a_filter_drops_or_holds_single_deliveries() {
        let bus = MemoryBus::new();
        let (a, _rx_a) = node(&bus, "p", 1);
        let (_b, mut rx_b) = node(&bus, "p", 2);
        let (_c, mut rx_c) = node(&bus, "p", 3);
        bus.set_filter(|d| match (d.to, &d.message[..]) {
            (2, b"one") => Fate::Drop,
            (3, b"one") => Fate::Hold,
            _ => Fate::Deliver,
        });
        a.send(Route::All, Bytes::from_static(b"one"));
        a.send(Route::All, Bytes::from_static(b"two"));
        assert_eq!(queued(&mut rx_b), vec![message("two")]);
        assert_eq!(queued(&mut rx_c), vec![message("two")], "the held one is overtaken");
        assert_eq!(bus.held(), 1);
        assert_eq!(bus.release_held(), 1);
        assert_eq!(queued(&mut rx_c), vec![message("one")]);
        bus.clear_filter();
        a.send(Route::All, Bytes::from_static(b"one"));
        assert_eq!(queued(&mut rx_b), vec![message("one")]);
    }

    #[test]
    fn a_killed_node_goes_silent_and_its_receive_loop_ends() {
        let bus = MemoryBus::new();
        let (a, mut rx_a) = node(&bus, "p", 1);
        let (b, mut rx_b) = node(&bus, "p", 2);
        b.kill();
        b.send(Route::All, Bytes::from_static(b"from the dead"));
        a.send(Route::All, Bytes::from_static(b"to the dead"));
        assert_eq!(queued(&mut rx_a), vec![]);
        assert_eq!(rx_b.try_recv(), Err(mpsc::error::TryRecvError::Disconnected));
    }
}
