//! Each app's channels: one [`AppHub`] per app, one room (file) per concern. Find the room for
//! a behaviour here:
//!
//! | room | owns |
//! |---|---|
//! | `registry.rs` | who is subscribed where, presence membership on join and leave, the numbers the HTTP API reports |
//! | `effects.rs` | the one place transitions (occupied, vacated, member added/removed, counts) become frames, metrics, cluster announcements, webhooks and observations, in a documented order |
//! | `fanout.rs` | the hot path: an encoded frame pushed into every subscriber's queue, through filters |
//! | `publish.rs` | the publish verb: an [`Event`] checked ([`PublishError`]), encoded once per channel, routed |
//! | `cache.rs` | cache channels' last events, bounded per app |
//! | `history.rs` | history channels: positions, numbering in a cluster, resume |
//! | `stored.rs` | history in a durable store: store-then-fan-out, resume from the store |
//! | `replica.rs` | the cluster replica: other nodes' shares and members |
//! | `users.rs`, `user_registry.rs` | signed-in users: server-to-user events, termination, watchlists |
//! | [`presence`] | who is in a presence channel, counted per user, not per socket (a pure structure) |
//!
//! Channels live in shards, each behind its own `RwLock`, chosen by the channel name's hash, so
//! publishes to different channels never contend and a publish only takes a read lock: it walks
//! the subscriber set and pushes one shared, already-encoded frame into each connection's bounded
//! queue (a refcount increment per subscriber, nothing encoded or allocated per subscriber).
//! Subscribe and unsubscribe take the shard's write lock; their effects are applied under it, so
//! every node and every receiver sees one order per channel.
//!
//! In a cluster the hub also announces what it does through a [`ClusterLink`] and keeps, beside
//! each channel's local subscribers, every other node's share of it; occupancy, counts, presence
//! and the webhooks they cause are computed over the whole cluster. Without a link (one process)
//! the remote shares stay empty and cost nothing.

mod cache;
mod effects;
mod fanout;
mod history;
pub mod presence;
mod publish;
mod registry;
mod replica;
mod stored;
mod user_registry;
mod users;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use metrics::{Counter, Gauge};
use plexus_protocol::channel::is_topic_channel;
use plexus_protocol::{ChannelName, CloseCode, SocketId};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

use crate::app::{App, WebhookKind};
use crate::cluster::{ClusterLink, NodeId, Update};
use crate::history_store::HistoryStore;
use crate::observe::{Observation, Observer};
use crate::outbound::Outbound;
use crate::webhook::{wanted, WebhookEvent, WebhookSink};
use user_registry::UserRegistry;

pub use cache::{CacheFull, CacheInfo, CacheLimits, CachedEvent};
pub use fanout::EventMirror;
pub use history::{HistorySnapshot, Position};
pub use publish::{Event, Prepared, PublishError, Published};
pub use registry::{ChannelSummary, JoinError, Member};
pub use replica::{LocalShare, NodeSubscriptions};
pub use stored::{
    HISTORY_APPENDS_IN_FLIGHT, HISTORY_APPEND_QUEUE, HISTORY_CONCURRENT_READS, REORDER_WAIT, REORDER_WAITING,
    RESUME_HOLD_EVENTS,
};

use cache::{CacheSlot, CacheUsage};
use fanout::MirrorSlot;
use history::{History, Numbering};
use registry::Channel;

/// Enough shards that two busy channels rarely share a lock, few enough to stay cheap per app.
const SHARDS: usize = 16;
/// Channels above this many subscribers get at most one subscription count per
/// [`COUNT_INTERVAL`] (Pusher's throttle), so a join storm is not a broadcast storm.
const COUNT_THROTTLE_ABOVE: usize = 100;
const COUNT_INTERVAL: Duration = Duration::from_secs(5);
/// At most one `cache_miss` webhook per channel this often (Pusher de-duplicates them).
const CACHE_MISS_WEBHOOK_INTERVAL: Duration = Duration::from_secs(5);

/// The hub's handle on a live connection: its id, its outbound queue, and whether it takes
/// compressed events.
#[derive(Debug)]
pub struct Connection {
    pub socket_id: SocketId,
    pub outbound: Outbound,
    /// permessage-deflate: event frames of at least this many bytes go out compressed;
    /// `u32::MAX` (never) until the transport says the client negotiated it.
    compress_from: AtomicU32,
}

impl Connection {
    pub fn new(socket_id: SocketId, outbound: Outbound) -> Connection {
        Connection { socket_id, outbound, compress_from: AtomicU32::new(u32::MAX) }
    }

    /// The client negotiated permessage-deflate: events whose frame is at least `min_bytes`
    /// long reach it compressed (the fan-out compresses each event once for all such clients).
    pub fn compress_events_from(&self, min_bytes: u32) {
        self.compress_from.store(min_bytes, Ordering::Relaxed);
    }

    /// Whether a frame of `len` bytes goes to this connection compressed.
    pub fn takes_compressed(&self, len: usize) -> bool {
        let from = self.compress_from.load(Ordering::Relaxed);
        from != u32::MAX && len >= from as usize
    }
}

#[derive(Debug, Default)]
struct Shard {
    channels: HashMap<ChannelName, Channel>,
    cache: HashMap<ChannelName, CacheSlot>,
    /// Channels with a history rule; like the cache, a history outlives occupancy.
    histories: HashMap<ChannelName, History>,
}

/// Why the hub refused a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("app is over its connection quota of {0}")]
    OverQuota(u64),
}

/// The numbers an operator watches, labelled with the app id. Handles are resolved once per app so
/// the hot path pays one atomic add, not a registry lookup.
struct HubMetrics {
    connections: Gauge,
    connections_opened: Counter,
    connections_closed: Counter,
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
            connections_opened: metrics::counter!("plexus_connections_opened_total", "app_id" => app.clone()),
            connections_closed: metrics::counter!("plexus_connections_closed_total", "app_id" => app.clone()),
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
    cache_limits: CacheLimits,
    cache_usage: CacheUsage,
    /// The durable history store and its appender, when history lives outside this process.
    stored: Option<stored::StoredHistory>,
}

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
            cache_limits: CacheLimits::default(),
            cache_usage: CacheUsage::default(),
            stored: None,
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

    /// Hands a webhook event to the sink (callers check that the app wants it). Events about
    /// typed channels' topic channels (`private-plexus.…`) are plexus's own plumbing, which a
    /// Pusher application's receiver does not expect: they are not sent.
    pub fn submit_webhook(&self, event: WebhookEvent) {
        if !is_topic_channel(event.channel()) {
            self.webhooks.submit(&self.app_id, event);
        }
    }

    fn webhook(&self, app: &App, kind: WebhookKind, event: impl FnOnce() -> WebhookEvent) {
        if wanted(app, kind) {
            self.submit_webhook(event());
        }
    }

    /// Registers a new WebSocket connection with a fresh, unique socket id, unless the app is at
    /// its quota.
    pub fn connect(&self, app: &App, queue_max_bytes: usize) -> Result<Arc<Connection>, ConnectError> {
        self.connect_with(app, Outbound::new(queue_max_bytes))
    }

    /// [`AppHub::connect`] with the queue its transport writes from (an SSE stream's holds SSE
    /// events: [`Outbound::for_sse`]).
    pub fn connect_with(&self, app: &App, outbound: Outbound) -> Result<Arc<Connection>, ConnectError> {
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
        let connection = Arc::new(Connection::new(socket_id, outbound));
        connections.insert(socket_id, connection.clone());
        self.connection_count.store(connections.len(), Ordering::Relaxed);
        self.metrics.connections.increment(1);
        self.metrics.connections_opened.increment(1);
        Ok(connection)
    }

    /// Forgets a connection (its subscriptions and sign-in must already be gone).
    pub fn disconnect(&self, socket_id: SocketId) {
        let mut connections = lock(&self.connections);
        if connections.remove(&socket_id).is_some() {
            self.metrics.connections.decrement(1);
            self.metrics.connections_closed.increment(1);
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
            shard.cache.retain(|_, slot| {
                let keep = match slot {
                    CacheSlot::Event { expires, .. } => *expires > now,
                    CacheSlot::Missed { webhook_at } => {
                        now.duration_since(*webhook_at) < CACHE_MISS_WEBHOOK_INTERVAL
                    }
                };
                if !keep {
                    self.cache_usage.removed(slot);
                }
                keep
            });
            shrink_if_sparse(&mut shard.cache);
            for (name, entry) in shard.channels.iter_mut() {
                let due = entry.count_pending
                    && entry.count_sent_at.is_none_or(|at| now.duration_since(at) >= COUNT_INTERVAL);
                if due {
                    self.send_subscription_count(app, name, entry, now);
                }
            }
        }
    }
}

/// The hubs of every app served by this process, created on first use.
#[derive(Debug)]
pub struct Hubs {
    apps: RwLock<HashMap<String, Arc<AppHub>>>,
    cache_limits: CacheLimits,
    webhooks: Arc<dyn WebhookSink>,
    cluster: Option<Arc<dyn ClusterLink>>,
    mirror: MirrorSlot,
    departures: Arc<Notify>,
    history_store: Option<Arc<dyn HistoryStore>>,
}

impl Hubs {
    pub fn new(webhooks: Arc<dyn WebhookSink>) -> Self {
        Hubs {
            apps: RwLock::default(),
            cache_limits: CacheLimits::default(),
            webhooks,
            cluster: None,
            mirror: MirrorSlot::default(),
            departures: Arc::default(),
            history_store: None,
        }
    }

    /// Hubs that announce what they do to the rest of a cluster through `cluster`.
    pub fn clustered(webhooks: Arc<dyn WebhookSink>, cluster: Arc<dyn ClusterLink>) -> Self {
        Hubs {
            apps: RwLock::default(),
            cache_limits: CacheLimits::default(),
            webhooks,
            cluster: Some(cluster),
            mirror: MirrorSlot::default(),
            departures: Arc::default(),
            history_store: None,
        }
    }

    /// Bounds each app's cache channels (for hubs created from now on).
    pub fn with_cache_limits(mut self, limits: CacheLimits) -> Self {
        self.cache_limits = limits;
        self
    }

    /// Keeps history channels' events in `store` (JetStream, Redis Streams) instead of this
    /// process's memory, for hubs created from now on. They must be created inside a Tokio
    /// runtime: each starts its appender task.
    pub fn with_history_store(mut self, store: Arc<dyn HistoryStore>) -> Self {
        self.history_store = Some(store);
        self
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
                Arc::new_cyclic(|this| {
                    let mut hub = AppHub::new(app_id, self.webhooks.clone());
                    hub.cache_limits = self.cache_limits;
                    hub.departures = self.departures.clone();
                    hub.cluster = self.cluster.clone();
                    hub.mirror = self.mirror.clone();
                    hub.stored = self
                        .history_store
                        .clone()
                        .map(|store| stored::StoredHistory::start(store, hub.app_id.clone(), this.clone()));
                    hub
                })
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
