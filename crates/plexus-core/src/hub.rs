//! The per-app channel registry and local fan-out: the hot path.
//!
//! Channels live in shards, each behind its own `RwLock`, chosen by the channel name's hash, so
//! publishes to different channels never contend and a publish only takes a read lock: it walks
//! the subscriber set and pushes one shared, already-encoded frame into each connection's bounded
//! queue (a refcount increment per subscriber, nothing encoded or allocated per subscriber).
//! Subscribe and unsubscribe take the shard's write lock, which also orders presence events: a
//! joiner's `subscription_succeeded` is queued before any later member event of that channel.
//!
//! Every publish goes through [`AppHub::publish`]. In a cluster the hub also announces what it
//! does through a [`ClusterLink`] and keeps, beside each channel's local subscribers, every other
//! node's share of it ([`RemoteShare`]); occupancy, counts, presence and the webhooks they cause
//! are computed over the whole cluster. Without a link (one process) the remote shares stay empty
//! and cost nothing.
//!
//! Beside its channels each shard keeps the last event of its cache channels, which outlives
//! occupancy (an event published to an empty cache channel waits for the first subscriber). The
//! hub also keeps the signed-in users ([`UserRegistry`]) for server-to-user events, termination
//! and watchlists.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use metrics::{Counter, Gauge};
use plexus_protocol::codec::{self, Data, ServerEvent};
use plexus_protocol::filter::SubscriptionFilter;
use plexus_protocol::{ChannelKind, ChannelName, CloseCode, SocketId};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

use crate::app::{App, HistoryRule, WebhookKind};
use crate::cluster::{ClusterLink, NodeId, Update};
use crate::observe::{event_observation, Observation, Observer};
use crate::outbound::{Outbound, Push};
use crate::presence::{Joined, Left, Presence};
use crate::users::UserRegistry;
use crate::webhook::{wanted, WebhookEvent, WebhookSink};

/// Enough shards that two busy channels rarely share a lock, few enough to stay cheap per app.
const SHARDS: usize = 16;
/// Channels above this many subscribers get at most one subscription count per
/// [`COUNT_INTERVAL`] (Pusher's throttle), so a join storm is not a broadcast storm.
const COUNT_THROTTLE_ABOVE: usize = 100;
const COUNT_INTERVAL: Duration = Duration::from_secs(5);
/// At most one `cache_miss` webhook per channel this often (Pusher de-duplicates them).
const CACHE_MISS_WEBHOOK_INTERVAL: Duration = Duration::from_secs(5);

/// The hub's handle on a live connection: its id and its outbound queue.
#[derive(Debug)]
pub struct Connection {
    pub socket_id: SocketId,
    pub outbound: Outbound,
}

#[derive(Debug, Default)]
struct Channel {
    /// This node's sockets.
    subscribers: HashMap<SocketId, Arc<Connection>>,
    /// Cluster-wide members, for presence channels.
    presence: Option<Presence>,
    /// Other nodes' shares (empty on a single node).
    remote: HashMap<NodeId, RemoteShare>,
    /// Server-side filters of the subscribers that set one (empty unless someone did).
    filters: HashMap<SocketId, Arc<SubscriptionFilter>>,
    /// When a subscription count was last broadcast, and whether a newer one is owed.
    count_sent_at: Option<Instant>,
    count_pending: bool,
}

/// One other node's part of a channel, as that node last reported it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct RemoteShare {
    subscriptions: usize,
    users: std::collections::HashSet<Box<str>>,
}

impl Channel {
    /// Subscriptions across the cluster.
    fn total(&self) -> usize {
        self.subscribers.len() + self.remote.values().map(|r| r.subscriptions).sum::<usize>()
    }

    /// Nothing left here or anywhere else: the entry can go.
    fn is_unused(&self) -> bool {
        self.subscribers.is_empty() && self.remote.is_empty()
    }
}

/// A channel's part held by this node, as told to other nodes when they sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalShare {
    pub channel: ChannelName,
    pub subscriptions: usize,
    /// Presence members with sockets here: user id and `user_info` JSON.
    pub members: Vec<(String, Option<String>)>,
}

/// A cache channel's live event, as told to other nodes when they sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedEvent {
    pub channel: ChannelName,
    pub data: String,
    pub frame: Bytes,
    pub ttl: Duration,
}

/// A history channel's events as this node holds them, for a peer that joins or re-syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistorySnapshot {
    pub channel: ChannelName,
    pub epoch: u32,
    /// `(offset, age, frame)`, oldest first, offsets consecutive.
    pub events: Vec<(u64, Duration, Bytes)>,
}

/// What a shard knows about a cache channel.
#[derive(Debug)]
enum CacheSlot {
    /// The last event published, as a ready frame, until it expires.
    Event { data: Arc<str>, frame: Bytes, expires: Instant },
    /// No event; when the last `cache_miss` webhook went out.
    Missed { webhook_at: Instant },
}

#[derive(Debug, Default)]
struct Shard {
    channels: HashMap<ChannelName, Channel>,
    cache: HashMap<ChannelName, CacheSlot>,
    /// Channels with a history rule; like the cache, a history outlives occupancy.
    histories: HashMap<ChannelName, History>,
}

/// Where an event stands in a history channel: `"{epoch}:{offset}"` on the wire. Offsets count
/// from 1 within an epoch; the epoch is random, so a position from another numbering (a restart,
/// a new sequencer in a cluster) never matches and a resume says `recovered: false` instead of
/// guessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub epoch: u32,
    pub offset: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl std::str::FromStr for Position {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let (epoch, offset) = text.split_once(':').ok_or(())?;
        Ok(Position { epoch: epoch.parse().map_err(|_| ())?, offset: offset.parse().map_err(|_| ())? })
    }
}

/// A channel's last events as delivered here, each stamped with its position. This node either
/// numbers them itself (`numbered_here`: one node, or the channel's sequencer in a cluster) or
/// records them at the positions the sequencer gave.
#[derive(Debug)]
struct History {
    epoch: u32,
    next: u64,
    numbered_here: bool,
    events: std::collections::VecDeque<(u64, Instant, Bytes)>,
}

impl History {
    fn new() -> Self {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        History { epoch: u32::from_le_bytes(bytes), next: 1, numbered_here: true, events: Default::default() }
    }

    fn position(&self, offset: u64) -> Position {
        Position { epoch: self.epoch, offset }
    }

    /// The position for the next event numbered here. Numbering cannot continue another node's
    /// epoch (this node may lack its last events), so taking over starts a new one.
    fn number_next(&mut self) -> Position {
        if !self.numbered_here {
            *self = History::new();
        }
        self.next += 1;
        self.position(self.next - 1)
    }

    /// Records an event another node numbered. Another epoch, or a gap in this one, starts the
    /// history afresh from this event: what came before cannot be resumed across the gap, and a
    /// resume from there must say `recovered: false`. An event already past is ignored.
    fn record_numbered(&mut self, position: Position, now: Instant, frame: Bytes) -> bool {
        if position.epoch == self.epoch && position.offset < self.next {
            return false;
        }
        if position.epoch != self.epoch || position.offset != self.next {
            self.events.clear();
            self.epoch = position.epoch;
            self.numbered_here = false;
        }
        self.next = position.offset + 1;
        self.events.push_back((position.offset, now, frame));
        true
    }

    /// Takes a peer's copy of this channel's history (a node that joined, or re-synced after a
    /// gap): in full when this node holds no events and is not numbering the channel itself, or
    /// the older events it lacks when the copy is of the same epoch and reaches up to its own.
    /// `events` are `(offset, recorded at, frame)`, oldest first, offsets consecutive.
    fn adopt(&mut self, epoch: u32, events: Vec<(u64, Instant, Bytes)>) {
        let Some(last) = events.last().map(|(offset, _, _)| *offset) else { return };
        if self.events.is_empty() {
            if self.numbered_here && self.next > 1 {
                return;
            }
            self.epoch = epoch;
            self.numbered_here = false;
            self.next = last + 1;
            self.events = events.into();
            return;
        }
        let first_held = self.events.front().map_or(self.next, |(offset, _, _)| *offset);
        if epoch != self.epoch || last + 1 < first_held {
            return;
        }
        for event in events.into_iter().rev().filter(|(offset, _, _)| *offset < first_held) {
            self.events.push_front(event);
        }
    }

    /// Drops what is past the rule's size or age.
    fn trim(&mut self, rule: &HistoryRule, now: Instant) {
        while self.events.len() > rule.size
            || self
                .events
                .front()
                .is_some_and(|(_, at, _)| now.duration_since(*at).as_secs() >= rule.ttl_secs)
        {
            self.events.pop_front();
        }
    }
}

/// Who gives a history event its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Numbering {
    /// This node (alone, or as the channel's sequencer): the stamped event is then announced to
    /// the cluster and mirrored.
    Here,
    /// A peer that numbered it, at this position.
    At(Position),
    /// A peer that did not (it keeps no history for the channel): numbered for this node's
    /// history only.
    Unnumbered,
}

/// The frame with `"position":"…"` added to its JSON object (one copy per event, not per
/// subscriber).
fn stamp(frame: &Bytes, position: &str) -> Bytes {
    let payload = plexus_protocol::wsframe::server_frame_payload(frame);
    let Some(body) = payload.strip_suffix(b"}") else { return frame.clone() };
    let mut stamped = Vec::with_capacity(payload.len() + position.len() + 16);
    stamped.extend_from_slice(body);
    stamped.extend_from_slice(b",\"position\":");
    stamped.extend_from_slice(codec::json_str(position).as_bytes());
    stamped.push(b'}');
    plexus_protocol::wsframe::frame(plexus_protocol::wsframe::Opcode::Text, &stamped)
}

/// A presence member joining with a subscription.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub user_id: &'a str,
    /// `user_info` as raw JSON text.
    pub info: Option<&'a str>,
}

/// Why the hub refused a subscription.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("presence channel is full: at most {0} members")]
    PresenceFull(u32),
}

/// Why the hub refused a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("app is over its connection quota of {0}")]
    OverQuota(u64),
}

/// One channel's numbers, as the HTTP API reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSummary {
    pub name: ChannelName,
    pub subscription_count: usize,
    /// Distinct users, for presence channels.
    pub user_count: Option<usize>,
}

/// A cache channel's current event, as the HTTP API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    pub data: String,
    /// Whole seconds until it expires.
    pub ttl_secs: u64,
}

/// The numbers an operator watches, labelled with the app id. Handles are resolved once per app so
/// the hot path pays one atomic add, not a registry lookup.
struct HubMetrics {
    connections: Gauge,
    subscriptions: Gauge,
    channels: Gauge,
    events_published: Counter,
    frames_delivered: Counter,
    slow_consumer_closes: Counter,
}

impl HubMetrics {
    fn new(app_id: &str) -> Self {
        let app = app_id.to_owned();
        HubMetrics {
            connections: metrics::gauge!("plexus_connections", "app_id" => app.clone()),
            subscriptions: metrics::gauge!("plexus_subscriptions", "app_id" => app.clone()),
            channels: metrics::gauge!("plexus_channels_occupied", "app_id" => app.clone()),
            events_published: metrics::counter!("plexus_events_published_total", "app_id" => app.clone()),
            frames_delivered: metrics::counter!("plexus_messages_delivered_total", "app_id" => app.clone()),
            slow_consumer_closes: metrics::counter!("plexus_slow_consumer_closes_total", "app_id" => app),
        }
    }
}

impl std::fmt::Debug for HubMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubMetrics")
    }
}

/// Channels and connections of one app.
#[derive(Debug)]
pub struct AppHub {
    app_id: Arc<str>,
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    connections: Mutex<HashMap<SocketId, Arc<Connection>>>,
    connection_count: AtomicUsize,
    users: Mutex<UserRegistry>,
    /// Woken whenever a connection leaves, for whoever waits for the server to empty.
    departures: Arc<Notify>,
    webhooks: Arc<dyn WebhookSink>,
    cluster: Option<Arc<dyn ClusterLink>>,
    mirror: MirrorSlot,
    metrics: HubMetrics,
    /// The debug console's view of this app (one atomic load per hook while nobody watches).
    observer: Arc<Observer>,
    /// Totals the dashboard turns into rates (the metrics facade cannot be read back).
    published_total: AtomicU64,
    delivered_total: AtomicU64,
}

/// The name and data of an event frame, as filters read them.
#[derive(serde::Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<std::borrow::Cow<'a, str>>,
}

/// Whether one event frame passes `filter` (for replays; fan-out reads each event once for all
/// its subscribers' filters instead).
fn frame_passes(filter: &SubscriptionFilter, frame: &Bytes) -> bool {
    let payload = plexus_protocol::wsframe::server_frame_payload(frame);
    let parsed: Option<Event<'_>> = serde_json::from_slice(&payload).ok();
    let name = parsed.as_ref().map_or("", |e| &*e.event);
    let data = filter
        .needs_data()
        .then(|| parsed.as_ref().and_then(|e| e.data.as_deref()).and_then(|d| serde_json::from_str(d).ok()))
        .flatten();
    filter.matches(name, data.as_ref())
}

/// Where the events published on this node also go, outside plexus (`[[mirrors]]`: NATS
/// subjects). Called once per publish, never per subscriber, and only for events that entered
/// the cluster here, so a cluster mirrors each event once. It must not block: implementations
/// queue and return.
pub trait EventMirror: Send + Sync + std::fmt::Debug {
    /// `frame` is the event's WebSocket frame, as every subscriber gets it.
    fn published(&self, app_id: &str, channel: &str, frame: &Bytes);
}

/// The server's mirror, set at most once and shared by every app's hub.
type MirrorSlot = Arc<OnceLock<Arc<dyn EventMirror>>>;

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Hub sections do not panic midway through a change; if one did, the map is still a valid map.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Gives memory back after a crowd leaves: maps keep their peak capacity otherwise, and the
/// registry's maps are what grows with connections and channels.
pub(crate) fn shrink_if_sparse<K: std::hash::Hash + Eq, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

fn random_socket_id() -> SocketId {
    let mut bytes = [0u8; 16];
    // The OS generator; failing to read it is an unrecoverable platform fault.
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    let (a, b) = bytes.split_at(8);
    SocketId::from_random(
        u64::from_le_bytes(a.try_into().unwrap()),
        u64::from_le_bytes(b.try_into().unwrap()),
    )
}

/// A presence member joining, for the debug console; `node` when it joined on another node.
fn member_added_observation(channel: &ChannelName, member: Member<'_>, node: Option<NodeId>) -> Observation {
    let info: Value = member.info.and_then(|i| serde_json::from_str(i).ok()).unwrap_or(Value::Null);
    let mut detail = json!({"user_id": member.user_id, "user_info": info});
    if let Some(node) = node {
        detail["node"] = json!(node.to_string());
    }
    Observation::new(channel.as_str(), "member_added", detail)
}

/// A presence member leaving, for the debug console; `node` when it left on another node.
fn member_removed_observation(channel: &ChannelName, user_id: &str, node: Option<NodeId>) -> Observation {
    let mut detail = json!({"user_id": user_id});
    if let Some(node) = node {
        detail["node"] = json!(node.to_string());
    }
    Observation::new(channel.as_str(), "member_removed", detail)
}

/// `pusher_internal:watchlist_events` with one online or offline entry.
fn watchlist_frame(online: &[&str], offline: &[&str]) -> Bytes {
    let list = |ids: &[&str]| ids.iter().map(|id| codec::json_str(id)).collect::<Vec<_>>().join(",");
    let mut events = Vec::new();
    if !online.is_empty() {
        events.push(format!("{{\"name\":\"online\",\"user_ids\":[{}]}}", list(online)));
    }
    if !offline.is_empty() {
        events.push(format!("{{\"name\":\"offline\",\"user_ids\":[{}]}}", list(offline)));
    }
    let data = format!("{{\"events\":[{}]}}", events.join(","));
    ServerEvent::new("pusher_internal:watchlist_events").data(Data::Str(&data)).to_frame()
}

impl AppHub {
    pub fn new(app_id: &str, webhooks: Arc<dyn WebhookSink>) -> Self {
        AppHub {
            app_id: app_id.into(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            connections: Mutex::default(),
            connection_count: AtomicUsize::new(0),
            users: Mutex::default(),
            departures: Arc::default(),
            webhooks,
            cluster: None,
            mirror: MirrorSlot::default(),
            metrics: HubMetrics::new(app_id),
            observer: Arc::default(),
            published_total: AtomicU64::new(0),
            delivered_total: AtomicU64::new(0),
        }
    }

    fn announce(&self, update: Update<'_>) {
        if let Some(cluster) = &self.cluster {
            cluster.announce(&self.app_id, update);
        }
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// What happens in this app, for the debug console.
    pub fn observer(&self) -> &Arc<Observer> {
        &self.observer
    }

    fn shard(&self, channel: &str) -> &RwLock<Shard> {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    /// Hands a webhook event to the sink (callers check that the app wants it).
    pub fn submit_webhook(&self, event: WebhookEvent) {
        self.webhooks.submit(&self.app_id, event);
    }

    fn webhook(&self, app: &App, kind: WebhookKind, event: impl FnOnce() -> WebhookEvent) {
        if wanted(app, kind) {
            self.webhooks.submit(&self.app_id, event());
        }
    }

    /// Registers a new connection with a fresh, unique socket id, unless the app is at its quota.
    pub fn connect(&self, app: &App, queue_max_bytes: usize) -> Result<Arc<Connection>, ConnectError> {
        let mut connections = lock(&self.connections);
        if app.max_connections > 0 && connections.len() as u64 >= app.max_connections {
            return Err(ConnectError::OverQuota(app.max_connections));
        }
        let socket_id = loop {
            let candidate = random_socket_id();
            if !connections.contains_key(&candidate) {
                break candidate;
            }
        };
        let connection = Arc::new(Connection { socket_id, outbound: Outbound::new(queue_max_bytes) });
        connections.insert(socket_id, connection.clone());
        self.connection_count.store(connections.len(), Ordering::Relaxed);
        self.metrics.connections.increment(1);
        Ok(connection)
    }

    /// Forgets a connection (its subscriptions and sign-in must already be gone).
    pub fn disconnect(&self, socket_id: SocketId) {
        let mut connections = lock(&self.connections);
        if connections.remove(&socket_id).is_some() {
            self.metrics.connections.decrement(1);
            shrink_if_sparse(&mut connections);
        }
        self.connection_count.store(connections.len(), Ordering::Relaxed);
        drop(connections);
        self.departures.notify_waiters();
    }

    pub fn connection_count(&self) -> usize {
        self.connection_count.load(Ordering::Relaxed)
    }

    /// Closes every connection of the app with `code` (after what is already queued to each).
    pub fn close_all(&self, code: CloseCode, message: &str) {
        let connections: Vec<_> = lock(&self.connections).values().cloned().collect();
        for connection in connections {
            connection.outbound.close(code, message);
        }
    }

    /// Adds `connection` to `channel` and queues its `subscription_succeeded`, then the cached
    /// event or `pusher:cache_miss` on cache channels; for presence, adds the member and tells the
    /// others if this is the user's first socket. Subscribing again to a channel the connection
    /// holds re-sends the success event and changes nothing else; callers make sure a connection
    /// joins a presence channel under one user id.
    pub fn subscribe(
        &self,
        app: &App,
        connection: &Arc<Connection>,
        channel: &ChannelName,
        member: Option<Member<'_>>,
    ) -> Result<(), JoinError> {
        self.subscribe_from(app, connection, channel, member, None, None)
    }

    /// [`AppHub::subscribe`] with the subscription's server-side `filter` (replacing any earlier
    /// one), then (under the same lock, so nothing slips in between) the events since `position`
    /// from the channel's history, through the same filter.
    pub fn subscribe_from(
        &self,
        app: &App,
        connection: &Arc<Connection>,
        channel: &ChannelName,
        member: Option<Member<'_>>,
        position: Option<&str>,
        filter: Option<SubscriptionFilter>,
    ) -> Result<(), JoinError> {
        let mut guard = write(self.shard(channel.as_str()));
        let shard = &mut *guard;
        let entry = shard.channels.entry(channel.clone()).or_default();
        let total_before = entry.total();
        let first_local = entry.subscribers.is_empty();
        let already = entry.subscribers.contains_key(&connection.socket_id);

        let mut joined = Joined { new_member: false, first_local: false };
        if let Some(member) = member {
            let presence = entry.presence.get_or_insert_with(Presence::default);
            if !already
                && !presence.contains(member.user_id)
                && presence.count() >= app.max_presence_members as usize
            {
                if entry.is_unused() {
                    shard.channels.remove(channel);
                }
                return Err(JoinError::PresenceFull(app.max_presence_members));
            }
            if !already {
                joined = presence.join(member.user_id, member.info);
            }
            entry.subscribers.insert(connection.socket_id, connection.clone());
            let snapshot = presence.snapshot_json();
            connection.outbound.push(codec::presence_subscription_succeeded(channel.as_str(), &snapshot));
            if joined.new_member {
                let added = codec::member_added(channel.as_str(), member.user_id, member.info);
                for (id, other) in &entry.subscribers {
                    if *id != connection.socket_id {
                        other.outbound.push(added.clone());
                    }
                }
            }
        } else {
            entry.subscribers.insert(connection.socket_id, connection.clone());
            connection.outbound.push(codec::subscription_succeeded(channel.as_str()));
        }

        let filter = filter.map(Arc::new);
        match &filter {
            Some(filter) => {
                entry.filters.insert(connection.socket_id, filter.clone());
            }
            None => {
                entry.filters.remove(&connection.socket_id);
            }
        }
        if !already {
            self.metrics.subscriptions.increment(1);
            // The share before the member, so every node sees occupancy before membership.
            self.announce(Update::Share {
                channel: channel.as_str(),
                subscriptions: entry.subscribers.len(),
            });
        }
        if let (true, Some(member)) = (joined.first_local, member) {
            self.announce(Update::Member {
                channel: channel.as_str(),
                user_id: member.user_id,
                info: member.info,
                present: true,
            });
        }
        if first_local {
            self.metrics.channels.increment(1);
        }
        if total_before == 0 {
            self.webhook(app, WebhookKind::ChannelOccupied, || WebhookEvent::ChannelOccupied {
                channel: channel.to_string(),
            });
        }
        if let (true, Some(member)) = (joined.new_member, member) {
            self.webhook(app, WebhookKind::MemberAdded, || WebhookEvent::MemberAdded {
                channel: channel.to_string(),
                user_id: member.user_id.to_owned(),
            });
        }
        if !already {
            self.observer.emit(|| {
                let mut detail = json!({"socket_id": connection.socket_id.to_string()});
                if let Some(member) = member {
                    detail["user_id"] = json!(member.user_id);
                }
                Observation::new(channel.as_str(), "subscribed", detail)
            });
        }
        if let (true, Some(member)) = (joined.new_member, member) {
            self.observer.emit(|| member_added_observation(channel, member, None));
        }
        if channel.is_cache() {
            self.replay_cache(app, &mut shard.cache, channel, connection);
        }
        if let Some(position) = position {
            self.resume(app, &mut shard.histories, channel, connection, position, filter.as_deref());
        }
        if !already {
            if let Some(entry) = shard.channels.get_mut(channel) {
                self.subscription_count_changed(app, channel, entry, Instant::now());
            }
        }
        Ok(())
    }

    /// Sends a new cache-channel subscriber the cached event, or `pusher:cache_miss` (and a
    /// rate-limited `cache_miss` webhook).
    fn replay_cache(
        &self,
        app: &App,
        cache: &mut HashMap<ChannelName, CacheSlot>,
        channel: &ChannelName,
        connection: &Connection,
    ) {
        let now = Instant::now();
        match cache.get_mut(channel) {
            Some(CacheSlot::Event { frame, expires, .. }) if *expires > now => {
                connection.outbound.push(frame.clone());
                return;
            }
            Some(CacheSlot::Missed { webhook_at })
                if now.duration_since(*webhook_at) < CACHE_MISS_WEBHOOK_INTERVAL =>
            {
                connection.outbound.push(codec::cache_miss(channel.as_str()));
                return;
            }
            _ => {}
        }
        connection.outbound.push(codec::cache_miss(channel.as_str()));
        cache.insert(channel.clone(), CacheSlot::Missed { webhook_at: now });
        self.webhook(app, WebhookKind::CacheMiss, || WebhookEvent::CacheMiss {
            channel: channel.to_string(),
        });
    }

    /// Broadcasts `pusher_internal:subscription_count` (and the webhook) after a change, when the
    /// app asks for it; large channels are throttled and caught up by [`AppHub::tick`].
    fn subscription_count_changed(
        &self,
        app: &App,
        channel: &ChannelName,
        entry: &mut Channel,
        now: Instant,
    ) {
        if !app.enable_subscription_count || channel.kind() == ChannelKind::Presence {
            return;
        }
        let throttled = entry.total() > COUNT_THROTTLE_ABOVE
            && entry.count_sent_at.is_some_and(|at| now.duration_since(at) < COUNT_INTERVAL);
        if throttled {
            entry.count_pending = true;
            return;
        }
        self.send_subscription_count(app, channel, entry, now);
    }

    fn send_subscription_count(&self, app: &App, channel: &ChannelName, entry: &mut Channel, now: Instant) {
        let count = entry.total();
        entry.count_sent_at = Some(now);
        entry.count_pending = false;
        if count > 0 && !entry.subscribers.is_empty() {
            let frame = codec::subscription_count(channel.as_str(), count);
            for subscriber in entry.subscribers.values() {
                subscriber.outbound.push(frame.clone());
            }
        }
        self.webhook(app, WebhookKind::SubscriptionCount, || WebhookEvent::SubscriptionCount {
            channel: channel.to_string(),
            subscription_count: count,
        });
    }

    /// Removes `socket_id` from `channel`; for presence (`user_id` given), tells the others when
    /// this was the user's last socket in the cluster. Returns false if the socket was not subscribed.
    pub fn unsubscribe(
        &self,
        app: &App,
        socket_id: SocketId,
        channel: &ChannelName,
        user_id: Option<&str>,
    ) -> bool {
        let mut shard = write(self.shard(channel.as_str()));
        let Some(entry) = shard.channels.get_mut(channel.as_str()) else {
            return false;
        };
        if entry.subscribers.remove(&socket_id).is_none() {
            return false;
        }
        entry.filters.remove(&socket_id);
        shrink_if_sparse(&mut entry.subscribers);
        self.metrics.subscriptions.decrement(1);
        self.observer.emit(|| {
            Observation::new(channel.as_str(), "unsubscribed", json!({"socket_id": socket_id.to_string()}))
        });
        let mut left = Left { removed: false, last_local: false };
        if let (Some(user_id), Some(presence)) = (user_id, entry.presence.as_mut()) {
            left = presence.leave(user_id);
            if left.removed {
                let removed = codec::member_removed(channel.as_str(), user_id);
                for other in entry.subscribers.values() {
                    other.outbound.push(removed.clone());
                }
                self.webhook(app, WebhookKind::MemberRemoved, || WebhookEvent::MemberRemoved {
                    channel: channel.to_string(),
                    user_id: user_id.to_owned(),
                });
                self.observer.emit(|| member_removed_observation(channel, user_id, None));
            }
        }
        if let (true, Some(user_id)) = (left.last_local, user_id) {
            self.announce(Update::Member { channel: channel.as_str(), user_id, info: None, present: false });
        }
        self.announce(Update::Share { channel: channel.as_str(), subscriptions: entry.subscribers.len() });
        self.subscription_count_changed(app, channel, entry, Instant::now());
        if entry.subscribers.is_empty() {
            self.metrics.channels.decrement(1);
        }
        let vacated = entry.total() == 0;
        if entry.is_unused() {
            shard.channels.remove(channel.as_str());
            shrink_if_sparse(&mut shard.channels);
        }
        if vacated {
            self.webhook(app, WebhookKind::ChannelVacated, || WebhookEvent::ChannelVacated {
                channel: channel.to_string(),
            });
        }
        true
    }

    /// Fans one encoded frame out to every subscriber of `channel` except `except`; returns how
    /// many queues on this node received it. The frame's bytes are shared, never copied. In a
    /// cluster, an event of a history channel that another node numbers goes to that node, which
    /// publishes it to everyone (this node too); it reaches nobody here before then.
    pub fn publish(&self, app: &App, channel: &str, frame: &Bytes, except: Option<SocketId>) -> usize {
        self.metrics.events_published.increment(1);
        self.published_total.fetch_add(1, Ordering::Relaxed);
        let Some(rule) = app.history_rule(channel) else {
            return self.publish_plain(channel, frame, except);
        };
        match self.cluster.as_ref().and_then(|c| c.sequencer(&self.app_id, channel)) {
            Some(by) => {
                self.announce(Update::Sequence { channel, frame, except, by });
                0
            }
            None => self.deliver_recorded(rule, channel, frame, except, Numbering::Here),
        }
    }

    /// Publishes an event another node handed over for this node to number (it chose this node
    /// as the channel's sequencer). Counted where it was published, not again here.
    pub fn publish_numbered(
        &self,
        app: &App,
        channel: &str,
        frame: &Bytes,
        except: Option<SocketId>,
    ) -> usize {
        match app.history_rule(channel) {
            Some(rule) => self.deliver_recorded(rule, channel, frame, except, Numbering::Here),
            None => self.publish_plain(channel, frame, except),
        }
    }

    /// An event of a channel without history: told to the cluster and the mirror, then fanned out.
    fn publish_plain(&self, channel: &str, frame: &Bytes, except: Option<SocketId>) -> usize {
        self.announce(Update::Publish { channel, frame, except, position: None });
        self.mirror(channel, frame);
        self.deliver_plain(channel, frame, except)
    }

    fn mirror(&self, channel: &str, frame: &Bytes) {
        if let Some(mirror) = self.mirror.get() {
            mirror.published(&self.app_id, channel, frame);
        }
    }

    /// Fans a frame out to this node's subscribers only (an event another node published, at
    /// `position` when that node numbered it for a history channel).
    pub fn deliver(
        &self,
        app: &App,
        channel: &str,
        frame: &Bytes,
        except: Option<SocketId>,
        position: Option<Position>,
    ) -> usize {
        match app.history_rule(channel) {
            Some(rule) => {
                let numbering = position.map_or(Numbering::Unnumbered, Numbering::At);
                self.deliver_recorded(rule, channel, frame, except, numbering)
            }
            None => self.deliver_plain(channel, frame, except),
        }
    }

    fn deliver_plain(&self, channel: &str, frame: &Bytes, except: Option<SocketId>) -> usize {
        self.observer.emit(|| event_observation(channel, frame, except.map(|id| id.to_string())));
        let shard = read(self.shard(channel));
        match shard.channels.get(channel) {
            Some(entry) => self.fan_out(entry, frame, except),
            None => 0,
        }
    }

    /// Pushes `frame` into every subscriber's queue but `except`'s (through the filters, where a
    /// subscriber set one); returns how many got it.
    fn fan_out(&self, entry: &Channel, frame: &Bytes, except: Option<SocketId>) -> usize {
        if !entry.filters.is_empty() {
            return self.deliver_filtered(entry, frame, except);
        }
        let mut delivered = 0;
        for (id, connection) in &entry.subscribers {
            if Some(*id) != except {
                if connection.outbound.push(frame.clone()) == Push::Overflowed {
                    self.metrics.slow_consumer_closes.increment(1);
                }
                delivered += 1;
            }
        }
        self.metrics.frames_delivered.increment(delivered as u64);
        self.delivered_total.fetch_add(delivered as u64, Ordering::Relaxed);
        delivered
    }

    /// Records an event of a history channel and fans it out, under the shard's write lock so
    /// positions and deliveries keep one order.
    fn deliver_recorded(
        &self,
        rule: &HistoryRule,
        channel: &str,
        frame: &Bytes,
        except: Option<SocketId>,
        numbering: Numbering,
    ) -> usize {
        let Ok(name) = ChannelName::parse(channel) else { return 0 };
        let mut guard = write(self.shard(channel));
        let shard = &mut *guard;
        let now = Instant::now();
        let history = shard.histories.entry(name).or_insert_with(History::new);
        let frame = match numbering {
            Numbering::At(position) => {
                if !history.record_numbered(position, now, frame.clone()) {
                    return 0;
                }
                frame.clone()
            }
            Numbering::Here | Numbering::Unnumbered => {
                let position = history.number_next();
                let stamped = stamp(frame, &position.to_string());
                history.events.push_back((position.offset, now, stamped.clone()));
                if numbering == Numbering::Here {
                    self.announce(Update::Publish {
                        channel,
                        frame: &stamped,
                        except,
                        position: Some(position),
                    });
                    self.mirror(channel, &stamped);
                }
                stamped
            }
        };
        history.trim(rule, now);
        self.observer.emit(|| event_observation(channel, &frame, except.map(|id| id.to_string())));
        match shard.channels.get(channel) {
            Some(entry) => self.fan_out(entry, &frame, except),
            None => 0,
        }
    }

    /// After a subscription with a `position`: queues the events since then, in order, and a
    /// `plexus:resume` saying whether the gap was covered (`recovered: false` when the history
    /// no longer reaches back that far, belongs to another epoch, or the channel keeps none).
    fn resume(
        &self,
        app: &App,
        histories: &mut HashMap<ChannelName, History>,
        channel: &ChannelName,
        connection: &Connection,
        from: &str,
        filter: Option<&SubscriptionFilter>,
    ) {
        let rule = app.history_rule(channel.as_str());
        let history = rule.map(|rule| {
            let history = histories.entry(channel.clone()).or_insert_with(History::new);
            history.trim(rule, Instant::now());
            &*history
        });
        let last = |h: &History| h.position(h.next - 1).to_string();
        let parsed = from.parse::<Position>().ok();
        let (recovered, position) = match (history, parsed) {
            (Some(history), Some(Position { epoch, offset }))
                if epoch == history.epoch && offset < history.next =>
            {
                let oldest = history.events.front().map_or(history.next, |(o, _, _)| *o);
                if offset + 1 >= oldest {
                    for (_, _, frame) in history.events.iter().filter(|(o, _, _)| *o > offset) {
                        if filter.is_none_or(|filter| frame_passes(filter, frame)) {
                            connection.outbound.push(frame.clone());
                        }
                    }
                    (true, last(history))
                } else {
                    (false, last(history))
                }
            }
            (Some(history), _) => (false, last(history)),
            (None, _) => (false, String::new()),
        };
        let data = format!(
            "{{\"recovered\":{recovered},\"position\":{}}}",
            if position.is_empty() { "null".to_owned() } else { codec::json_str(&position) }
        );
        connection.outbound.push(
            ServerEvent::new("plexus:resume").channel(channel.as_str()).data(Data::Str(&data)).to_frame(),
        );
    }

    /// Fan-out to a channel where some subscribers filter: the event's name and data are read
    /// once, and each filter is checked against them.
    fn deliver_filtered(&self, entry: &Channel, frame: &Bytes, except: Option<SocketId>) -> usize {
        let payload = plexus_protocol::wsframe::server_frame_payload(frame);
        let parsed: Option<Event<'_>> = serde_json::from_slice(&payload).ok();
        let name = parsed.as_ref().map_or("", |e| &*e.event);
        let mut data: Option<Option<serde_json::Value>> = None;
        let mut delivered = 0;
        for (id, connection) in &entry.subscribers {
            if Some(*id) == except {
                continue;
            }
            if let Some(filter) = entry.filters.get(id) {
                let data = if filter.needs_data() {
                    data.get_or_insert_with(|| {
                        parsed
                            .as_ref()
                            .and_then(|e| e.data.as_deref())
                            .and_then(|d| serde_json::from_str(d).ok())
                    })
                    .as_ref()
                } else {
                    None
                };
                if !filter.matches(name, data) {
                    continue;
                }
            }
            if connection.outbound.push(frame.clone()) == Push::Overflowed {
                self.metrics.slow_consumer_closes.increment(1);
            }
            delivered += 1;
        }
        self.metrics.frames_delivered.increment(delivered as u64);
        self.delivered_total.fetch_add(delivered as u64, Ordering::Relaxed);
        delivered
    }

    /// Sets (or with `None` clears) the server-side filter of `socket_id` in `channel`.
    pub fn set_filter(&self, channel: &str, socket_id: SocketId, filter: Option<SubscriptionFilter>) {
        let mut shard = write(self.shard(channel));
        let Some(entry) = shard.channels.get_mut(channel) else { return };
        match filter {
            Some(filter) if entry.subscribers.contains_key(&socket_id) => {
                entry.filters.insert(socket_id, Arc::new(filter));
            }
            _ => {
                entry.filters.remove(&socket_id);
            }
        }
    }

    /// Events published on this node and frames queued to its subscribers, since start.
    pub fn totals(&self) -> (u64, u64) {
        (self.published_total.load(Ordering::Relaxed), self.delivered_total.load(Ordering::Relaxed))
    }

    /// Keeps `frame` (an event with `data`) as the cache channel's last event for `ttl`.
    pub fn remember(&self, channel: &ChannelName, data: &str, frame: &Bytes, ttl: Duration) {
        self.announce(Update::Remember { channel: channel.as_str(), data, frame, ttl });
        self.remember_here(channel, data, frame, ttl);
    }

    /// Keeps a cache channel's last event on this node only (another node published it).
    pub fn remember_here(&self, channel: &ChannelName, data: &str, frame: &Bytes, ttl: Duration) {
        let slot =
            CacheSlot::Event { data: data.into(), frame: frame.clone(), expires: Instant::now() + ttl };
        write(self.shard(channel.as_str())).cache.insert(channel.clone(), slot);
    }

    /// The cache channel's current event, if any.
    pub fn cached(&self, channel: &str) -> Option<CacheInfo> {
        let now = Instant::now();
        match read(self.shard(channel)).cache.get(channel) {
            Some(CacheSlot::Event { data, expires, .. }) if *expires > now => {
                let left = expires.duration_since(now);
                Some(CacheInfo {
                    data: data.to_string(),
                    ttl_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
                })
            }
            _ => None,
        }
    }

    /// Periodic upkeep: sends subscription counts held back by the throttle and drops expired
    /// cache entries. The server calls it about once a second.
    pub fn tick(&self, app: &App) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut guard = write(shard);
            let shard = &mut *guard;
            shard.histories.retain(|name, history| match app.history_rule(name.as_str()) {
                Some(rule) => {
                    history.trim(rule, now);
                    !history.events.is_empty()
                }
                None => false,
            });
            shard.cache.retain(|_, slot| match slot {
                CacheSlot::Event { expires, .. } => *expires > now,
                CacheSlot::Missed { webhook_at } => {
                    now.duration_since(*webhook_at) < CACHE_MISS_WEBHOOK_INTERVAL
                }
            });
            for (name, entry) in shard.channels.iter_mut() {
                let due = entry.count_pending
                    && entry.count_sent_at.is_none_or(|at| now.duration_since(at) >= COUNT_INTERVAL);
                if due {
                    self.send_subscription_count(app, name, entry, now);
                }
            }
        }
    }

    /// Sets another node's subscription count in `channel`, with the occupancy webhooks and
    /// subscription counts that causes.
    pub fn set_remote_share(&self, app: &App, node: NodeId, channel: &ChannelName, subscriptions: usize) {
        let mut guard = write(self.shard(channel.as_str()));
        let shard = &mut *guard;
        let entry = shard.channels.entry(channel.clone()).or_default();
        self.apply_remote_share(app, node, channel, entry, subscriptions);
        if entry.is_unused() {
            shard.channels.remove(channel.as_str());
        }
    }

    /// Records that another node holds (`present`) or no longer holds `user_id` in presence
    /// `channel`; member events go out when that changes the cluster's membership.
    pub fn set_remote_member(
        &self,
        app: &App,
        node: NodeId,
        channel: &ChannelName,
        member: Member<'_>,
        present: bool,
    ) {
        let mut guard = write(self.shard(channel.as_str()));
        let shard = &mut *guard;
        if !present && !shard.channels.contains_key(channel.as_str()) {
            return;
        }
        let entry = shard.channels.entry(channel.clone()).or_default();
        if present {
            self.remote_member_joined(app, node, channel, entry, member);
        } else {
            self.remote_member_left(app, node, channel, entry, member.user_id);
        }
        if entry.is_unused() {
            shard.channels.remove(channel.as_str());
        }
    }

    /// Drops everything `node` held (it left or stopped answering), as if its sockets had left.
    pub fn forget_node(&self, app: &App, node: NodeId) {
        self.replace_node(app, node, Vec::new());
        self.replace_remote_users(node, &[]);
    }

    /// Replaces `node`'s whole part of this app with `shares` (a snapshot it sent), emitting the
    /// events of every difference: departures first, then counts, then arrivals.
    pub fn replace_node(&self, app: &App, node: NodeId, shares: Vec<LocalShare>) {
        let mut wanted: HashMap<ChannelName, LocalShare> =
            shares.into_iter().map(|share| (share.channel.clone(), share)).collect();
        for shard in self.shards.iter() {
            let mut guard = write(shard);
            let shard = &mut *guard;
            let held: Vec<ChannelName> = shard
                .channels
                .iter()
                .filter(|(_, c)| c.remote.contains_key(&node))
                .map(|(name, _)| name.clone())
                .collect();
            for name in held {
                let share = wanted.remove(&name);
                self.apply_remote_channel(app, node, &mut shard.channels, &name, share);
            }
        }
        for (name, share) in wanted {
            let mut guard = write(self.shard(name.as_str()));
            self.apply_remote_channel(app, node, &mut guard.channels, &name, Some(share));
        }
    }

    fn apply_remote_channel(
        &self,
        app: &App,
        node: NodeId,
        channels: &mut HashMap<ChannelName, Channel>,
        name: &ChannelName,
        share: Option<LocalShare>,
    ) {
        let entry = channels.entry(name.clone()).or_default();
        let old_users: Vec<Box<str>> =
            entry.remote.get(&node).map(|r| r.users.iter().cloned().collect()).unwrap_or_default();
        let (subscriptions, members) = share.map(|s| (s.subscriptions, s.members)).unwrap_or_default();
        for user in old_users {
            if !members.iter().any(|(id, _)| **id == *user) {
                self.remote_member_left(app, node, name, entry, &user);
            }
        }
        self.apply_remote_share(app, node, name, entry, subscriptions);
        for (user_id, info) in &members {
            self.remote_member_joined(app, node, name, entry, Member { user_id, info: info.as_deref() });
        }
        if entry.is_unused() {
            channels.remove(name.as_str());
        }
    }

    fn apply_remote_share(
        &self,
        app: &App,
        node: NodeId,
        channel: &ChannelName,
        entry: &mut Channel,
        subscriptions: usize,
    ) {
        let current = entry.remote.get(&node).map_or(0, |r| r.subscriptions);
        if current == subscriptions {
            return;
        }
        let before = entry.total();
        let share = entry.remote.entry(node).or_default();
        share.subscriptions = subscriptions;
        if share.subscriptions == 0 && share.users.is_empty() {
            entry.remote.remove(&node);
        }
        let after = entry.total();
        if before == 0 {
            self.webhook(app, WebhookKind::ChannelOccupied, || WebhookEvent::ChannelOccupied {
                channel: channel.to_string(),
            });
        }
        self.subscription_count_changed(app, channel, entry, Instant::now());
        if after == 0 {
            self.webhook(app, WebhookKind::ChannelVacated, || WebhookEvent::ChannelVacated {
                channel: channel.to_string(),
            });
        }
    }

    fn remote_member_joined(
        &self,
        app: &App,
        node: NodeId,
        channel: &ChannelName,
        entry: &mut Channel,
        member: Member<'_>,
    ) {
        if !entry.remote.entry(node).or_default().users.insert(member.user_id.into()) {
            return;
        }
        let presence = entry.presence.get_or_insert_with(Presence::default);
        if presence.remote_join(member.user_id, member.info) {
            let added = codec::member_added(channel.as_str(), member.user_id, member.info);
            for subscriber in entry.subscribers.values() {
                subscriber.outbound.push(added.clone());
            }
            self.webhook(app, WebhookKind::MemberAdded, || WebhookEvent::MemberAdded {
                channel: channel.to_string(),
                user_id: member.user_id.to_owned(),
            });
            self.observer.emit(|| member_added_observation(channel, member, Some(node)));
        }
    }

    fn remote_member_left(
        &self,
        app: &App,
        node: NodeId,
        channel: &ChannelName,
        entry: &mut Channel,
        user_id: &str,
    ) {
        let Some(share) = entry.remote.get_mut(&node) else {
            return;
        };
        if !share.users.remove(user_id) {
            return;
        }
        if share.subscriptions == 0 && share.users.is_empty() {
            entry.remote.remove(&node);
        }
        let removed = entry.presence.as_mut().is_some_and(|p| p.remote_leave(user_id));
        if removed {
            let frame = codec::member_removed(channel.as_str(), user_id);
            for subscriber in entry.subscribers.values() {
                subscriber.outbound.push(frame.clone());
            }
            self.webhook(app, WebhookKind::MemberRemoved, || WebhookEvent::MemberRemoved {
                channel: channel.to_string(),
                user_id: user_id.to_owned(),
            });
            self.observer.emit(|| member_removed_observation(channel, user_id, Some(node)));
        }
    }

    /// This node's part of every channel it has sockets in, for a peer that syncs.
    pub fn local_shares(&self) -> Vec<LocalShare> {
        let mut shares = Vec::new();
        for shard in self.shards.iter() {
            for (name, channel) in read(shard).channels.iter().filter(|(_, c)| !c.subscribers.is_empty()) {
                let members = channel
                    .presence
                    .iter()
                    .flat_map(|p| p.local_members())
                    .map(|(id, info)| (id.to_owned(), info.map(str::to_owned)))
                    .collect();
                shares.push(LocalShare {
                    channel: name.clone(),
                    subscriptions: channel.subscribers.len(),
                    members,
                });
            }
        }
        shares
    }

    /// Every history this node holds events of, for a peer that syncs.
    pub fn histories(&self) -> Vec<HistorySnapshot> {
        let now = Instant::now();
        let mut histories = Vec::new();
        for shard in self.shards.iter() {
            for (name, history) in read(shard).histories.iter().filter(|(_, h)| !h.events.is_empty()) {
                histories.push(HistorySnapshot {
                    channel: name.clone(),
                    epoch: history.epoch,
                    events: history
                        .events
                        .iter()
                        .map(|(offset, at, frame)| (*offset, now.duration_since(*at), frame.clone()))
                        .collect(),
                });
            }
        }
        histories
    }

    /// Takes a peer's copy of a history channel's events (see [`AppHub::histories`]), so a
    /// client can resume here from a position published before this node joined.
    pub fn adopt_history(&self, app: &App, snapshot: HistorySnapshot) {
        let Some(rule) = app.history_rule(snapshot.channel.as_str()) else { return };
        let now = Instant::now();
        let events = snapshot
            .events
            .into_iter()
            .map(|(offset, age, frame)| (offset, now.checked_sub(age).unwrap_or(now), frame));
        let mut shard = write(self.shard(snapshot.channel.as_str()));
        let history = shard.histories.entry(snapshot.channel).or_insert_with(History::new);
        history.adopt(snapshot.epoch, events.collect());
        history.trim(rule, now);
    }

    /// Every cache channel's live event, for a peer that syncs.
    pub fn cached_events(&self) -> Vec<CachedEvent> {
        let now = Instant::now();
        let mut events = Vec::new();
        for shard in self.shards.iter() {
            for (name, slot) in read(shard).cache.iter() {
                if let CacheSlot::Event { data, frame, expires } = slot {
                    if *expires > now {
                        events.push(CachedEvent {
                            channel: name.clone(),
                            data: data.to_string(),
                            frame: frame.clone(),
                            ttl: expires.duration_since(now),
                        });
                    }
                }
            }
        }
        events
    }

    fn summary(name: &ChannelName, channel: &Channel) -> ChannelSummary {
        ChannelSummary {
            name: name.clone(),
            subscription_count: channel.total(),
            user_count: channel.presence.as_ref().map(Presence::count),
        }
    }

    /// Numbers for one channel; `None` when no one is subscribed.
    pub fn channel(&self, channel: &str) -> Option<ChannelSummary> {
        let shard = read(self.shard(channel));
        shard
            .channels
            .get_key_value(channel)
            .filter(|(_, c)| c.total() > 0)
            .map(|(name, c)| Self::summary(name, c))
    }

    /// Every occupied channel whose name starts with `prefix`, sorted by name.
    pub fn channels(&self, prefix: &str) -> Vec<ChannelSummary> {
        let mut all: Vec<_> = self
            .shards
            .iter()
            .flat_map(|shard| {
                read(shard)
                    .channels
                    .iter()
                    .filter(|(name, c)| name.as_str().starts_with(prefix) && c.total() > 0)
                    .map(|(name, c)| Self::summary(name, c))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Distinct user ids in a presence channel (empty when unoccupied).
    pub fn presence_user_ids(&self, channel: &str) -> Vec<String> {
        let shard = read(self.shard(channel));
        let mut ids: Vec<String> = shard
            .channels
            .get(channel)
            .and_then(|c| c.presence.as_ref())
            .map(|p| p.user_ids().map(str::to_owned).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Records a sign-in. Tells watchers when the user comes online, and tells this connection
    /// which of its watched users are online and offline now.
    pub fn sign_in(&self, connection: &Arc<Connection>, user_id: &str, watchlist: &[String]) {
        let mut users = lock(&self.users);
        let came = users.sign_in(user_id, connection, watchlist);
        if came.here {
            self.announce(Update::User { user_id, online: true });
        }
        if came.cluster {
            let frame = watchlist_frame(&[user_id], &[]);
            for watcher in users.watchers_of(user_id) {
                watcher.outbound.push(frame.clone());
            }
        }
        if !watchlist.is_empty() {
            let (online, offline): (Vec<&str>, Vec<&str>) =
                watchlist.iter().map(String::as_str).partition(|id| users.is_online(id));
            connection.outbound.push(watchlist_frame(&online, &offline));
        }
    }

    /// Forgets a signed-in connection; tells watchers when its user goes offline.
    pub fn sign_out(&self, socket_id: SocketId, user_id: &str, watchlist: &[String]) {
        let mut users = lock(&self.users);
        let went = users.sign_out(user_id, socket_id, watchlist);
        if went.here {
            self.announce(Update::User { user_id, online: false });
        }
        if went.cluster {
            let frame = watchlist_frame(&[], &[user_id]);
            for watcher in users.watchers_of(user_id) {
                watcher.outbound.push(frame.clone());
            }
        }
    }

    /// Records that another node has `user_id` signed in (`online`) or no longer; watchers here
    /// hear of it when that changes the user's status in the cluster.
    pub fn set_remote_user(&self, node: NodeId, user_id: &str, online: bool) {
        let mut users = lock(&self.users);
        if users.set_remote(node, user_id, online) {
            let frame =
                if online { watchlist_frame(&[user_id], &[]) } else { watchlist_frame(&[], &[user_id]) };
            for watcher in users.watchers_of(user_id) {
                watcher.outbound.push(frame.clone());
            }
        }
    }

    /// Users signed in on this node, for a peer that syncs.
    pub fn local_users(&self) -> Vec<String> {
        lock(&self.users).local_users()
    }

    /// Replaces the users `node` reports signed in (a snapshot it sent, or none when it is gone).
    pub fn replace_remote_users(&self, node: NodeId, online: &[String]) {
        let held = lock(&self.users).remote_users_of(node);
        for user in held.iter().filter(|user| !online.contains(user)) {
            self.set_remote_user(node, user, false);
        }
        for user in online {
            self.set_remote_user(node, user, true);
        }
    }

    /// Delivers a frame to every connection signed in as `user_id`; returns how many.
    pub fn send_to_user(&self, user_id: &str, frame: &Bytes) -> usize {
        self.metrics.events_published.increment(1);
        self.announce(Update::ToUser { user_id, frame });
        self.deliver_to_user(user_id, frame)
    }

    /// Delivers a frame to this node's connections of `user_id` only.
    pub fn deliver_to_user(&self, user_id: &str, frame: &Bytes) -> usize {
        let users = lock(&self.users);
        let connections = users.connections_of(user_id);
        for connection in connections {
            connection.outbound.push(frame.clone());
        }
        self.metrics.frames_delivered.increment(connections.len() as u64);
        connections.len()
    }

    /// Closes every connection signed in as `user_id` with 4009; returns how many.
    pub fn terminate_user(&self, user_id: &str) -> usize {
        self.announce(Update::Terminate { user_id });
        self.terminate_user_here(user_id)
    }

    /// Closes this node's connections of `user_id` only.
    pub fn terminate_user_here(&self, user_id: &str) -> usize {
        let users = lock(&self.users);
        let connections = users.connections_of(user_id);
        for connection in connections {
            connection.outbound.close(CloseCode::Unauthorized, "Connection terminated by the app");
        }
        connections.len()
    }
}

/// The hubs of every app served by this process, created on first use.
#[derive(Debug)]
pub struct Hubs {
    apps: RwLock<HashMap<String, Arc<AppHub>>>,
    webhooks: Arc<dyn WebhookSink>,
    cluster: Option<Arc<dyn ClusterLink>>,
    mirror: MirrorSlot,
    departures: Arc<Notify>,
}

impl Hubs {
    pub fn new(webhooks: Arc<dyn WebhookSink>) -> Self {
        Hubs {
            apps: RwLock::default(),
            webhooks,
            cluster: None,
            mirror: MirrorSlot::default(),
            departures: Arc::default(),
        }
    }

    /// Hubs that announce what they do to the rest of a cluster through `cluster`.
    pub fn clustered(webhooks: Arc<dyn WebhookSink>, cluster: Arc<dyn ClusterLink>) -> Self {
        Hubs {
            apps: RwLock::default(),
            webhooks,
            cluster: Some(cluster),
            mirror: MirrorSlot::default(),
            departures: Arc::default(),
        }
    }

    /// Sends every event published on this node, in every app, to `mirror` as well. There is
    /// one mirror per server: a second call returns it back as the error.
    pub fn set_mirror(&self, mirror: Arc<dyn EventMirror>) -> Result<(), Arc<dyn EventMirror>> {
        self.mirror.set(mirror)
    }

    /// The hub of `app_id`, created if this is its first use.
    pub fn hub(&self, app_id: &str) -> Arc<AppHub> {
        if let Some(hub) = read(&self.apps).get(app_id) {
            return hub.clone();
        }
        write(&self.apps)
            .entry(app_id.to_owned())
            .or_insert_with(|| {
                let mut hub = AppHub::new(app_id, self.webhooks.clone());
                hub.departures = self.departures.clone();
                hub.cluster = self.cluster.clone();
                hub.mirror = self.mirror.clone();
                Arc::new(hub)
            })
            .clone()
    }

    /// Periodic upkeep of every hub (see [`AppHub::tick`]); `app_of` finds each hub's app.
    pub fn tick(&self, app_of: impl Fn(&str) -> Option<Arc<App>>) {
        for hub in self.all() {
            if let Some(app) = app_of(hub.app_id()) {
                hub.tick(&app);
            }
        }
    }

    /// Every hub created so far.
    pub fn all(&self) -> Vec<Arc<AppHub>> {
        read(&self.apps).values().cloned().collect()
    }

    /// Live connections across all apps.
    pub fn connection_count(&self) -> usize {
        read(&self.apps).values().map(|h| h.connection_count()).sum()
    }

    /// Waits until no connection is left or `deadline` passes; returns how many remain.
    pub async fn wait_until_empty(&self, deadline: tokio::time::Instant) -> usize {
        loop {
            let departed = self.departures.notified();
            tokio::pin!(departed);
            // Register interest before checking, so a departure in between is not missed.
            departed.as_mut().enable();
            let left = self.connection_count();
            if left == 0 {
                return 0;
            }
            tokio::select! {
                _ = departed => {}
                _ = tokio::time::sleep_until(deadline) => return self.connection_count(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Bytes {
        Bytes::from(n.to_string())
    }

    fn offsets(history: &History) -> Vec<u64> {
        history.events.iter().map(|(offset, _, _)| *offset).collect()
    }

    #[derive(Debug)]
    struct NoWebhooks;

    impl WebhookSink for NoWebhooks {
        fn submit(&self, _app_id: &str, _event: WebhookEvent) {}
    }

    #[tokio::test]
    async fn the_debug_console_sees_members_join_and_leave_on_other_nodes() {
        let hub = AppHub::new("app", Arc::new(NoWebhooks));
        let app = App::new("app", "key", "secret");
        let channel = ChannelName::parse("presence-room").unwrap();
        let mut watch = hub.observer().watch();
        let member = Member { user_id: "ann", info: Some("{\"name\":\"Ann\"}") };
        hub.set_remote_member(&app, 7, &channel, member, true);
        hub.set_remote_member(&app, 7, &channel, member, false);
        let mut seen = Vec::new();
        for _ in 0..2 {
            match watch.next().await {
                crate::observe::Seen::Observed(o) => seen.push((o.kind, o.detail.clone())),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            seen,
            vec![
                ("member_added", json!({"user_id": "ann", "user_info": {"name": "Ann"}, "node": "7"})),
                ("member_removed", json!({"user_id": "ann", "node": "7"})),
            ]
        );
    }

    #[test]
    fn positions_read_back_as_written() {
        let position = Position { epoch: 7, offset: 42 };
        assert_eq!(position.to_string(), "7:42");
        assert_eq!("7:42".parse::<Position>(), Ok(position));
        for bad in ["", "7", "7:", ":1", "x:1", "1:-1", "4294967296:1"] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn events_numbered_elsewhere_are_kept_at_their_positions_and_a_gap_restarts_the_history() {
        let now = Instant::now();
        let mut history = History::new();
        let epoch = history.epoch.wrapping_add(1);
        for offset in 5..8 {
            assert!(history.record_numbered(Position { epoch, offset }, now, frame(offset)));
        }
        assert_eq!((history.epoch, history.next, offsets(&history)), (epoch, 8, vec![5, 6, 7]));
        assert!(!history.record_numbered(Position { epoch, offset: 6 }, now, frame(6)), "already held");
        assert_eq!(offsets(&history), vec![5, 6, 7]);

        // Offset 8 never arrived: nothing before 9 may be replayed past the hole.
        assert!(history.record_numbered(Position { epoch, offset: 9 }, now, frame(9)));
        assert_eq!((history.next, offsets(&history)), (10, vec![9]));

        // The numbering moved to a node with another epoch.
        let other = epoch.wrapping_add(1);
        assert!(history.record_numbered(Position { epoch: other, offset: 1 }, now, frame(1)));
        assert_eq!((history.epoch, history.next, offsets(&history)), (other, 2, vec![1]));
    }

    #[test]
    fn a_peers_copy_fills_an_empty_history_or_the_older_events_of_the_same_epoch() {
        let now = Instant::now();
        let copy = |epoch, offsets: std::ops::Range<u64>| {
            (epoch, offsets.map(|o| (o, now, frame(o))).collect::<Vec<_>>())
        };

        let mut joined = History::new();
        let (epoch, events) = copy(9, 3..7);
        joined.adopt(epoch, events);
        assert_eq!((joined.epoch, joined.next, offsets(&joined)), (9, 7, vec![3, 4, 5, 6]));
        assert!(!joined.numbered_here);

        // Live events arrived before the copy: it supplies the older ones, once.
        let mut resynced = History::new();
        resynced.record_numbered(Position { epoch: 9, offset: 6 }, now, frame(6));
        resynced.record_numbered(Position { epoch: 9, offset: 7 }, now, frame(7));
        let (epoch, events) = copy(9, 3..7);
        resynced.adopt(epoch, events);
        assert_eq!(offsets(&resynced), vec![3, 4, 5, 6, 7]);

        // A copy that ends before what is held would leave a hole; another epoch is not ours.
        let (epoch, events) = copy(9, 1..4);
        let mut holed = History::new();
        holed.record_numbered(Position { epoch: 9, offset: 6 }, now, frame(6));
        holed.adopt(epoch, events);
        assert_eq!(offsets(&holed), vec![6]);
        let (epoch, events) = copy(8, 1..6);
        holed.adopt(epoch, events);
        assert_eq!((holed.epoch, offsets(&holed)), (9, vec![6]));

        // The node that numbers the channel keeps its own numbering.
        let mut numbering = History::new();
        numbering.number_next();
        let own = numbering.epoch;
        let (epoch, events) = copy(own.wrapping_add(1), 1..3);
        numbering.adopt(epoch, events);
        assert_eq!((numbering.epoch, numbering.next, offsets(&numbering)), (own, 2, vec![]));
    }

    #[test]
    fn numbering_continues_its_own_epoch_but_never_another_nodes() {
        let mut history = History::new();
        let own = history.epoch;
        assert_eq!(history.number_next(), Position { epoch: own, offset: 1 });
        assert_eq!(history.number_next(), Position { epoch: own, offset: 2 });

        let theirs = own.wrapping_add(1);
        history.record_numbered(Position { epoch: theirs, offset: 30 }, Instant::now(), frame(30));
        let taken_over = history.number_next();
        assert_ne!(taken_over.epoch, theirs, "this node may lack the other's last events");
        assert_eq!(taken_over.offset, 1);
        assert!(history.events.is_empty());
    }
}
