//! One node's side of the cluster protocol.
//!
//! - **Out:** every [`Update`] a hub announces becomes one broadcast with the next sequence
//!   number; a heartbeat goes out every [`ClusterOptions::heartbeat`].
//! - **In:** events from peers are delivered to local subscribers at once; a peer's state updates
//!   are applied to the hubs' view of that peer. A peer first heard of, or one whose sequence
//!   skipped (a message lost in a bus blip), is asked for a snapshot; its state updates are held
//!   until the snapshot arrives and those newer than it are applied after it. Shares are absolute,
//!   so the result is the peer's current state whatever was lost.
//! - **Leases:** a peer silent for [`ClusterOptions::lease`] (killed, or cut off) is forgotten:
//!   its members leave and its counts drop, with the events and webhooks that causes. If it comes
//!   back it is simply a peer first heard of again.
//! - **Webhooks once per cluster:** every node computes the same transitions over its view, but
//!   only the leader (the lowest live node id, once this node has listened long enough to know
//!   its peers) sends state webhooks; the others hold theirs for one lease, and a node that takes
//!   over from a dead leader sends what it held, so a transition the dead leader never reported
//!   is not lost (a few may be reported twice around a failover).
//! - **History numbering:** each history channel's events are numbered by one node, chosen by
//!   a rendezvous hash of the channel over the live nodes ([`ClusterNode::sequencer`]). Another
//!   node sends such an event to that node ([`Update::Sequence`]) instead of delivering it; the
//!   sequencer gives it the next position and publishes it to everyone, so every node records
//!   the same event at the same position and a client can resume on any of them. A new
//!   sequencer (a node joined or died) starts a new epoch: positions from before resume with
//!   `recovered: false`, never with a hole. With a durable history store there is no
//!   sequencer: the store numbers every node's appends (`hub/stored.rs`).
//! - **Figures:** every [`ClusterOptions::load_every`] a node reports its connections and
//!   event and message totals per app, unnumbered ([`super::load`]); [`ClusterNode::peer_loads`]
//!   gives each peer's, for the dashboard's per-node charts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::Bytes;
use plexus_protocol::{ChannelName, SocketId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::load::{self, PeerLoad, PeerLoads};
use super::wire::{self, AppSnapshot, Body, CacheState, Envelope, HistoryEvent, HistoryState, ShareState};
use super::{ClusterLink, Inbound, Keep, NodeId, Position, Route, Transport, Update};
use crate::app::{App, AppStore};
use crate::hub::{HistorySnapshot, LocalShare, Member};
use crate::webhook::{WebhookEvent, WebhookSink};
use crate::Hubs;

/// Timing of the protocol.
#[derive(Debug, Clone, Copy)]
pub struct ClusterOptions {
    /// How often a node says it is alive.
    pub heartbeat: Duration,
    /// Silence after which a peer is taken for dead.
    pub lease: Duration,
    /// How long a starting node listens before it may lead.
    pub settle: Duration,
    /// How often a node reports its figures per app to its peers ([`super::load`]).
    pub load_every: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            heartbeat: Duration::from_secs(1),
            lease: Duration::from_secs(5),
            settle: Duration::from_millis(2500),
            load_every: Duration::from_secs(5),
        }
    }
}

/// Snapshot parts stay well below the buses' message limits (NATS: 1 MiB by default).
const SNAPSHOT_PART_BYTES: usize = 256 * 1024;
/// A snapshot asked for but not complete after this long is asked for again.
const SYNC_RETRY: Duration = Duration::from_secs(2);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A random node id (never 0).
pub fn random_node_id() -> NodeId {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    u64::from_le_bytes(bytes).max(1)
}

/// This node: its id, its outgoing sequence, and the webhook gate.
#[derive(Debug)]
pub struct ClusterNode {
    id: NodeId,
    transport: Arc<dyn Transport>,
    /// The last broadcast sequence number used; taken under `sending` so numbers leave in order.
    seq: AtomicU64,
    sending: Mutex<()>,
    gate: Arc<LeaderGate>,
    options: ClusterOptions,
    /// True once this node has listened for a heartbeat period and synced every peer it heard.
    ready: tokio::sync::watch::Sender<bool>,
    /// The live peers, as the receive loop last saw them (for choosing history sequencers).
    peers: RwLock<Vec<NodeId>>,
    /// What every peer last reported of its figures.
    loads: PeerLoads,
}

impl ClusterLink for ClusterNode {
    fn announce(&self, app_id: &str, update: Update<'_>) {
        let (body, payload) = wire::update_body(app_id, &update);
        self.broadcast(body, &payload);
    }

    fn sequencer(&self, app_id: &str, channel: &str) -> Option<NodeId> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let best = peers
            .iter()
            .copied()
            .chain([self.id])
            .max_by_key(|node| (rendezvous_score(*node, app_id, channel), *node))?;
        (best != self.id).then_some(best)
    }
}

/// A node's weight for a channel: every node computes the same number for the same inputs
/// (FNV-1a, then a 64-bit finaliser to spread it), so all agree on the highest.
fn rendezvous_score(node: NodeId, app_id: &str, channel: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = node.to_le_bytes().into_iter().chain(app_id.bytes()).chain([0]).chain(channel.bytes());
    for byte in bytes {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

impl ClusterNode {
    /// A node that talks over `transport` and hands state webhooks to `webhooks` while it leads.
    pub fn new(
        id: NodeId,
        transport: Arc<dyn Transport>,
        webhooks: Arc<dyn WebhookSink>,
        options: ClusterOptions,
    ) -> Arc<Self> {
        let gate = Arc::new(LeaderGate::new(webhooks, options.lease + options.heartbeat));
        let ready = tokio::sync::watch::Sender::new(false);
        Arc::new(ClusterNode {
            id,
            transport,
            seq: AtomicU64::new(0),
            sending: Mutex::new(()),
            gate,
            options,
            ready,
            peers: RwLock::default(),
            // A report is fresh for three periods: one lost report leaves no gap in the charts.
            loads: PeerLoads::new(options.load_every * 3),
        })
    }

    /// Becomes true once the node has heard its peers and holds their state.
    pub fn ready(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The sink to give the hubs: it passes state webhooks on only while this node leads.
    pub fn webhooks(&self) -> Arc<dyn WebhookSink> {
        self.gate.clone()
    }

    /// Whether this node currently sends the cluster's state webhooks.
    pub fn is_leader(&self) -> bool {
        lock(&self.gate.state).role == Role::Leader
    }

    fn broadcast(&self, body: Body, payload: &[u8]) {
        let _order = lock(&self.sending);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.transport.send(Route::All, wire::encode(self.id, seq, body, payload));
    }

    fn direct(&self, to: NodeId, body: Body) {
        self.transport.send(Route::Node(to), wire::encode(self.id, 0, body, b""));
    }

    /// Every live peer's connections and event and message rates for `app_id`, by node id, as
    /// each last reported them (a peer that has not reported the app lately is left out).
    pub fn peer_loads(&self, app_id: &str) -> Vec<PeerLoad> {
        self.loads.of_app(app_id, Instant::now())
    }

    /// Sends this node's figures to every peer, unnumbered (see [`super::load`]).
    fn report_load(&self, hubs: &Hubs) {
        for apps in load::own_reports(hubs) {
            self.transport.send(Route::All, wire::encode(self.id, 0, Body::Load { apps }, b""));
        }
    }

    /// Tells peers this node is leaving, so they drop its state now.
    pub fn leave(&self) {
        self.broadcast(Body::Bye, b"");
    }

    /// Resolves once everything announced so far has been handed to the bus.
    pub async fn flush(&self) {
        self.transport.flush().await;
    }

    /// Processes what the bus delivers until it closes: the node's receive loop, to be spawned
    /// once. `apps` supplies each app's settings when applying peers' changes.
    pub async fn run(
        self: Arc<Self>,
        hubs: Arc<Hubs>,
        apps: Arc<dyn AppStore>,
        mut inbound: mpsc::UnboundedReceiver<Inbound>,
    ) {
        let started = Instant::now();
        let mut state = Receiver { node: self.clone(), hubs, apps, peers: HashMap::new() };
        self.broadcast(Body::Hello, b"");
        let mut ticker = tokio::time::interval(self.options.heartbeat / 4);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_heartbeat = Instant::now() + self.options.heartbeat;
        let mut next_load = Instant::now() + self.options.load_every;
        loop {
            tokio::select! {
                message = inbound.recv() => match message {
                    Some(Inbound::Message(bytes)) => state.receive(&bytes),
                    Some(Inbound::Connected) => {
                        tracing::info!(node = self.id, "cluster bus reachable again; re-syncing");
                        self.broadcast(Body::Hello, b"");
                    }
                    Some(Inbound::Disconnected) => {
                        tracing::warn!(node = self.id, "cluster bus unreachable; peers expire if it stays down");
                    }
                    None => return,
                },
                _ = ticker.tick() => {
                    let now = Instant::now();
                    if now >= next_heartbeat {
                        self.broadcast(Body::Heartbeat, b"");
                        next_heartbeat = now + self.options.heartbeat;
                    }
                    if now >= next_load {
                        self.report_load(&state.hubs);
                        next_load = now + self.options.load_every;
                    }
                    state.expire(now);
                    state.retry_syncs(now);
                    let listened = now.duration_since(started) > self.options.heartbeat + self.options.heartbeat / 2;
                    if listened && !*self.ready.borrow() && state.peers.values().all(|p| p.sync.is_none()) {
                        tracing::info!(node = self.id, peers = state.peers.len(), "cluster state synced");
                        self.ready.send_replace(true);
                    }
                    let settled = now.duration_since(started) >= self.options.settle;
                    let lowest = state.peers.keys().all(|peer| *peer > self.id);
                    self.gate.set_role(if !settled { Role::Settling } else if lowest { Role::Leader } else { Role::Follower });
                }
            }
        }
    }

    /// This node's state as snapshot parts, as of broadcast number `of`.
    fn snapshot(&self, hubs: &Hubs) -> Vec<Body> {
        // Read the sequence first: every update numbered up to it is already in the hubs, and any
        // later one the peer applies after the snapshot (shares are absolute, so that is safe).
        let of = self.seq.load(Ordering::Relaxed);
        let mut parts: Vec<Vec<AppSnapshot>> = vec![Vec::new()];
        let mut size = 0;
        for hub in hubs.all() {
            let users = hub.local_users();
            size += users.iter().map(|u| u.len() + 4).sum::<usize>();
            let mut current = AppSnapshot {
                app: hub.app_id().to_owned(),
                shares: Vec::new(),
                cache: Vec::new(),
                users,
                histories: Vec::new(),
            };
            let flush = |current: &mut AppSnapshot, parts: &mut Vec<Vec<AppSnapshot>>, size: &mut usize| {
                let full = AppSnapshot {
                    app: current.app.clone(),
                    shares: Vec::new(),
                    cache: Vec::new(),
                    users: Vec::new(),
                    histories: Vec::new(),
                };
                parts.last_mut().expect("one part").push(std::mem::replace(current, full));
                parts.push(Vec::new());
                *size = 0;
            };
            for share in hub.local_shares() {
                size += share.channel.as_str().len()
                    + 16
                    + share
                        .members
                        .iter()
                        .map(|(id, info)| id.len() + info.as_ref().map_or(4, String::len) + 8)
                        .sum::<usize>();
                current.shares.push(ShareState {
                    channel: share.channel.to_string(),
                    subscriptions: share.subscriptions,
                    members: share.members,
                });
                if size > SNAPSHOT_PART_BYTES {
                    flush(&mut current, &mut parts, &mut size);
                }
            }
            for event in hub.cached_events() {
                let payload = plexus_protocol::wsframe::server_frame_payload(&event.frame);
                size += event.channel.as_str().len() + event.data.len() + payload.len() + 32;
                current.cache.push(CacheState {
                    channel: event.channel.to_string(),
                    data: event.data,
                    ttl_ms: event.ttl.as_millis() as u64,
                    payload: String::from_utf8_lossy(&payload).into_owned(),
                });
                if size > SNAPSHOT_PART_BYTES {
                    flush(&mut current, &mut parts, &mut size);
                }
            }
            for history in hub.histories() {
                let events: Vec<HistoryEvent> = history
                    .events
                    .iter()
                    .map(|(offset, age, frame)| HistoryEvent {
                        offset: *offset,
                        age_ms: age.as_millis() as u64,
                        payload: String::from_utf8_lossy(&plexus_protocol::wsframe::server_frame_payload(
                            frame,
                        ))
                        .into_owned(),
                    })
                    .collect();
                size += history.channel.as_str().len()
                    + events.iter().map(|e| e.payload.len() + 32).sum::<usize>();
                current.histories.push(HistoryState {
                    channel: history.channel.to_string(),
                    epoch: history.epoch,
                    events,
                });
                if size > SNAPSHOT_PART_BYTES {
                    flush(&mut current, &mut parts, &mut size);
                }
            }
            parts.last_mut().expect("one part").push(current);
        }
        let count = parts.len() as u32;
        parts
            .into_iter()
            .enumerate()
            .map(|(part, apps)| Body::Snapshot { of, part: part as u32, parts: count, apps })
            .collect()
    }
}

/// What this node knows of one peer.
#[derive(Debug)]
struct Peer {
    last_seen: Instant,
    /// The broadcast number expected next.
    expected: u64,
    /// Set while a snapshot is awaited.
    sync: Option<PendingSync>,
}

#[derive(Debug)]
struct PendingSync {
    asked_at: Instant,
    /// State updates received meanwhile, by sequence number.
    held: Vec<(u64, Body)>,
    /// Parts of the snapshot being received: `of` → part number → apps.
    parts: BTreeMap<u64, BTreeMap<u32, Vec<AppSnapshot>>>,
}

impl PendingSync {
    fn new(now: Instant) -> Self {
        PendingSync { asked_at: now, held: Vec::new(), parts: BTreeMap::new() }
    }
}

/// The receive loop's state.
struct Receiver {
    node: Arc<ClusterNode>,
    hubs: Arc<Hubs>,
    apps: Arc<dyn AppStore>,
    peers: HashMap<NodeId, Peer>,
}

impl Receiver {
    fn app(&self, app_id: &str) -> Arc<App> {
        // A peer may serve an app this node has not loaded (yet): track it with default settings
        // and no webhooks rather than lose its state.
        self.apps.by_id(app_id).unwrap_or_else(|| Arc::new(App::new(app_id, "", "")))
    }

    fn receive(&mut self, bytes: &Bytes) {
        let envelope = match wire::decode(bytes) {
            Ok(envelope) => envelope,
            Err(error) => {
                metrics::counter!("plexus_cluster_bad_messages_total").increment(1);
                tracing::warn!(%error, "ignoring a malformed cluster message");
                return;
            }
        };
        if envelope.from == self.node.id {
            return;
        }
        metrics::counter!("plexus_cluster_messages_received_total").increment(1);
        metrics::counter!("plexus_cluster_bytes_received_total").increment(bytes.len() as u64);
        if envelope.seq == 0 {
            self.direct(envelope);
        } else {
            self.broadcast(envelope);
        }
        self.share_peers();
    }

    /// Tells the node which peers are live when that changed (cheap to check: clusters are small).
    fn share_peers(&self) {
        let same = {
            let known = self.node.peers.read().unwrap_or_else(|p| p.into_inner());
            known.len() == self.peers.len() && known.iter().all(|id| self.peers.contains_key(id))
        };
        if !same {
            *self.node.peers.write().unwrap_or_else(|p| p.into_inner()) =
                self.peers.keys().copied().collect();
        }
    }

    fn ask_for_snapshot(&self, peer: NodeId) {
        self.node.direct(peer, Body::SyncRequest);
    }

    fn broadcast(&mut self, envelope: Envelope) {
        let Envelope { from, seq, body, payload } = envelope;
        let now = Instant::now();
        let mut ask = false;
        let peer = self.peers.entry(from).or_insert_with(|| {
            tracing::info!(node = self.node.id, peer = from, "cluster peer joined");
            ask = true;
            Peer { last_seen: now, expected: seq, sync: Some(PendingSync::new(now)) }
        });
        peer.last_seen = now;
        if seq < peer.expected {
            return;
        }
        if seq > peer.expected && peer.sync.is_none() {
            tracing::warn!(
                peer = from,
                missed = seq - peer.expected,
                "cluster messages lost; re-syncing with peer"
            );
            metrics::counter!("plexus_cluster_resyncs_total").increment(1);
            peer.sync = Some(PendingSync::new(now));
            ask = true;
        }
        peer.expected = seq + 1;
        if ask {
            self.ask_for_snapshot(from);
        }
        let peer = self.peers.get_mut(&from).expect("just inserted");
        match body {
            Body::Hello => self.send_snapshot(from),
            Body::Heartbeat => {}
            Body::Bye => {
                tracing::info!(peer = from, "cluster peer left");
                self.peers.remove(&from);
                self.forget(from);
            }
            body if body.is_state() => match &mut peer.sync {
                Some(sync) => sync.held.push((seq, body)),
                None => self.apply_state(from, body),
            },
            body => self.apply_event(body, &payload),
        }
    }

    fn direct(&mut self, envelope: Envelope) {
        let from = envelope.from;
        match envelope.body {
            Body::SyncRequest => self.send_snapshot(from),
            Body::Snapshot { of, part, parts, apps } => self.snapshot_part(from, of, part, parts, apps),
            // Only from a peer this node knows: a report racing a departure must not bring its
            // sender's figures back.
            Body::Load { apps } if self.peers.contains_key(&from) => {
                self.node.loads.record(from, apps, Instant::now())
            }
            Body::Load { .. } => {}
            Body::Unknown => {
                tracing::debug!(peer = from, "skipping a kind of cluster message from a newer node")
            }
            other => tracing::warn!(peer = from, ?other, "unexpected direct cluster message"),
        }
    }

    fn send_snapshot(&self, to: NodeId) {
        for part in self.node.snapshot(&self.hubs) {
            self.node.direct(to, part);
        }
    }

    fn snapshot_part(&mut self, from: NodeId, of: u64, part: u32, parts: u32, apps: Vec<AppSnapshot>) {
        let now = Instant::now();
        let peer = self.peers.entry(from).or_insert_with(|| {
            tracing::info!(node = self.node.id, peer = from, "cluster peer joined");
            Peer { last_seen: now, expected: of + 1, sync: Some(PendingSync::new(now)) }
        });
        peer.last_seen = now;
        // A snapshot nobody asked for (an answer to our Hello for a peer we already track) is
        // older than the updates we applied since; ignore it.
        let Some(sync) = &mut peer.sync else {
            return;
        };
        let received = sync.parts.entry(of).or_default();
        received.insert(part, apps);
        if received.len() < parts as usize {
            return;
        }
        let complete = sync.parts.remove(&of).expect("just filled");
        let sync = peer.sync.take().expect("checked above");
        if peer.expected <= of {
            peer.expected = of + 1;
        }
        self.apply_snapshot(from, complete.into_values().flatten().collect());
        let mut held = sync.held;
        held.sort_by_key(|(seq, _)| *seq);
        for (seq, body) in held {
            if seq > of {
                self.apply_state(from, body);
            }
        }
    }

    fn apply_snapshot(&self, from: NodeId, parts: Vec<AppSnapshot>) {
        // A large app may span several parts: put each app back together first.
        let mut by_app: HashMap<String, AppSnapshot> = HashMap::new();
        for part in parts {
            match by_app.entry(part.app.clone()) {
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(part);
                }
                std::collections::hash_map::Entry::Occupied(mut slot) => {
                    let whole = slot.get_mut();
                    whole.shares.extend(part.shares);
                    whole.cache.extend(part.cache);
                    whole.users.extend(part.users);
                    whole.histories.extend(part.histories);
                }
            }
        }
        for hub in self.hubs.all() {
            if !by_app.contains_key(hub.app_id()) {
                hub.forget_node(&self.app(hub.app_id()), from);
            }
        }
        for (app_id, snapshot) in by_app {
            let app = self.app(&app_id);
            let hub = self.hubs.hub(&app_id);
            let shares = snapshot
                .shares
                .into_iter()
                .filter_map(|share| {
                    Some(LocalShare {
                        channel: ChannelName::parse(&share.channel).ok()?,
                        subscriptions: share.subscriptions,
                        members: share.members,
                    })
                })
                .collect();
            hub.replace_node(&app, from, shares);
            hub.replace_remote_users(from, &snapshot.users);
            for event in snapshot.cache {
                let Ok(channel) = ChannelName::parse(&event.channel) else { continue };
                if hub.cached(channel.as_str()).is_none() {
                    let frame = wire::frame_of(event.payload.as_bytes());
                    hub.remember_here(&channel, &frame, Duration::from_millis(event.ttl_ms));
                }
            }
            for history in snapshot.histories {
                let Ok(channel) = ChannelName::parse(&history.channel) else { continue };
                let events = history
                    .events
                    .into_iter()
                    .map(|e| {
                        (e.offset, Duration::from_millis(e.age_ms), wire::frame_of(e.payload.as_bytes()))
                    })
                    .collect();
                hub.adopt_history(&app, HistorySnapshot { channel, epoch: history.epoch, events });
            }
        }
    }

    fn apply_state(&self, from: NodeId, body: Body) {
        match body {
            Body::Share { app, channel, subscriptions } => {
                let Ok(channel) = ChannelName::parse(&channel) else { return };
                self.hubs.hub(&app).set_remote_share(&self.app(&app), from, &channel, subscriptions);
            }
            Body::Member { app, channel, user_id, info, present } => {
                let Ok(channel) = ChannelName::parse(&channel) else { return };
                let member = Member { user_id: &user_id, info: info.as_deref() };
                self.hubs.hub(&app).set_remote_member(&self.app(&app), from, &channel, member, present);
            }
            Body::User { app, user_id, online } => {
                self.hubs.hub(&app).set_remote_user(from, &user_id, online)
            }
            _ => {}
        }
    }

    fn apply_event(&self, body: Body, payload: &Bytes) {
        match body {
            Body::Publish { app, channel, except, position, keep } => {
                let except = except.and_then(|id| id.parse::<SocketId>().ok());
                let position = position.map(|(epoch, offset)| Position { epoch, offset });
                let frame = wire::frame_of(payload);
                let keep =
                    keep.as_ref().map(|k| Keep { data: &k.data, ttl: Duration::from_millis(k.ttl_ms) });
                self.hubs.hub(&app).deliver(&self.app(&app), &channel, &frame, except, position, keep);
            }
            Body::Sequence { app, channel, except, by, keep } if by == self.node.id => {
                let except = except.and_then(|id| id.parse::<SocketId>().ok());
                let frame = wire::frame_of(payload);
                let keep =
                    keep.as_ref().map(|k| Keep { data: &k.data, ttl: Duration::from_millis(k.ttl_ms) });
                self.hubs.hub(&app).publish_numbered(&self.app(&app), &channel, &frame, except, keep);
            }
            Body::Remember { app, channel, ttl_ms, .. } => {
                let Ok(channel) = ChannelName::parse(&channel) else { return };
                let ttl = Duration::from_millis(ttl_ms);
                self.hubs.hub(&app).remember_here(&channel, &wire::frame_of(payload), ttl);
            }
            Body::ToUser { app, user_id } => {
                self.hubs.hub(&app).deliver_to_user(&user_id, &wire::frame_of(payload));
            }
            Body::Terminate { app, user_id } => {
                self.hubs.hub(&app).terminate_user_here(&user_id);
            }
            _ => {}
        }
    }

    fn forget(&self, peer: NodeId) {
        self.node.loads.forget(peer);
        for hub in self.hubs.all() {
            hub.forget_node(&self.app(hub.app_id()), peer);
        }
    }

    /// Forgets peers whose lease ran out.
    fn expire(&mut self, now: Instant) {
        let lease = self.node.options.lease;
        let dead: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_seen) > lease)
            .map(|(id, _)| *id)
            .collect();
        for peer in dead {
            tracing::warn!(
                peer,
                lease_ms = lease.as_millis() as u64,
                "cluster peer silent past its lease; dropping its connections' state"
            );
            metrics::counter!("plexus_cluster_peers_expired_total").increment(1);
            self.peers.remove(&peer);
            self.forget(peer);
        }
        self.share_peers();
        metrics::gauge!("plexus_cluster_peers").set(self.peers.len() as f64);
    }

    fn retry_syncs(&mut self, now: Instant) {
        let mut again = Vec::new();
        for (id, peer) in &mut self.peers {
            if let Some(sync) = &mut peer.sync {
                if now.duration_since(sync.asked_at) >= SYNC_RETRY {
                    sync.asked_at = now;
                    sync.parts.clear();
                    again.push(*id);
                }
            }
        }
        for id in again {
            self.ask_for_snapshot(id);
        }
    }
}

/// Who sends the cluster's state webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Still learning who the peers are: hold everything.
    Settling,
    Leader,
    Follower,
}

#[derive(Debug)]
struct GateState {
    role: Role,
    held: VecDeque<(Instant, String, WebhookEvent)>,
}

/// Lets state webhooks through only while this node leads (client events and cache misses are
/// reported by the node where they happen, so they always pass).
#[derive(Debug)]
pub struct LeaderGate {
    inner: Arc<dyn WebhookSink>,
    window: Duration,
    state: Mutex<GateState>,
}

impl LeaderGate {
    fn new(inner: Arc<dyn WebhookSink>, window: Duration) -> Self {
        LeaderGate {
            inner,
            window,
            state: Mutex::new(GateState { role: Role::Settling, held: VecDeque::new() }),
        }
    }

    fn set_role(&self, role: Role) {
        let mut state = lock(&self.state);
        if state.role == role {
            return;
        }
        if role == Role::Leader {
            tracing::info!("this node now sends the cluster's webhooks");
            let since = Instant::now().checked_sub(self.window);
            for (at, app_id, event) in std::mem::take(&mut state.held) {
                // Coming out of settling everything held is new; after a failover only what the
                // old leader may not have reported.
                if state.role == Role::Settling || since.is_none_or(|since| at >= since) {
                    self.inner.submit_late(&app_id, event);
                }
            }
        }
        state.role = role;
    }
}

impl WebhookSink for LeaderGate {
    fn submit(&self, app_id: &str, event: WebhookEvent) {
        if matches!(event, WebhookEvent::ClientEvent { .. } | WebhookEvent::CacheMiss { .. }) {
            return self.inner.submit(app_id, event);
        }
        let mut state = lock(&self.state);
        if state.role == Role::Leader {
            return self.inner.submit(app_id, event);
        }
        let now = Instant::now();
        if state.role == Role::Follower {
            while state.held.front().is_some_and(|(at, _, _)| now.duration_since(*at) > self.window) {
                state.held.pop_front();
            }
        }
        state.held.push_back((now, app_id.to_owned(), event));
    }
}

#[cfg(test)]
mod tests {
    use super::rendezvous_score;

    fn winner(nodes: &[u64], channel: &str) -> u64 {
        *nodes.iter().max_by_key(|n| (rendezvous_score(**n, "app", channel), **n)).unwrap()
    }

    #[test]
    fn every_node_picks_the_same_sequencer_and_a_departure_moves_only_its_channels() {
        let nodes = [11, 22, 33];
        let channels: Vec<String> = (0..600).map(|i| format!("feed-{i}")).collect();
        let mut won = [0usize; 3];
        for channel in &channels {
            let pick = winner(&nodes, channel);
            assert_eq!(pick, winner(&[33, 11, 22], channel), "order of the peer list does not matter");
            won[nodes.iter().position(|n| *n == pick).unwrap()] += 1;
            let survivors = [11, 22];
            if pick != 33 {
                assert_eq!(winner(&survivors, channel), pick, "{channel} moved although its node stayed");
            }
        }
        assert!(won.iter().all(|w| *w > 100), "channels spread over the nodes: {won:?}");
        assert_eq!(rendezvous_score(5, "app", "feed-1"), rendezvous_score(5, "app", "feed-1"));
        assert_ne!(rendezvous_score(5, "app", "feed-1"), rendezvous_score(5, "app2", "feed-1"));
    }
}
