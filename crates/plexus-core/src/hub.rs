//! The per-app channel registry and local fan-out: the hot path.
//!
//! Channels live in shards, each behind its own `RwLock`, chosen by the channel name's hash, so
//! publishes to different channels never contend and a publish only takes a read lock: it walks
//! the subscriber set and pushes one shared, already-encoded frame into each connection's bounded
//! queue (a refcount increment per subscriber, nothing encoded or allocated per subscriber).
//! Subscribe and unsubscribe take the shard's write lock, which also orders presence events: a
//! joiner's `subscription_succeeded` is queued before any later member event of that channel.
//!
//! Every publish goes through [`AppHub::publish`]; that is where a cluster adapter hooks in.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use metrics::{Counter, Gauge};
use plexus_protocol::{codec, ChannelName, CloseCode, SocketId};
use tokio::sync::Notify;

use crate::app::{App, WebhookKind};
use crate::outbound::{Outbound, Push};
use crate::presence::Presence;
use crate::webhook::{wanted, WebhookEvent, WebhookSink};

/// Enough shards that two busy channels rarely share a lock, few enough to stay cheap per app.
const SHARDS: usize = 16;

/// The hub's handle on a live connection: its id and its outbound queue.
#[derive(Debug)]
pub struct Connection {
    pub socket_id: SocketId,
    pub outbound: Outbound,
}

#[derive(Debug, Default)]
struct Channel {
    subscribers: HashMap<SocketId, Arc<Connection>>,
    presence: Option<Presence>,
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
    shards: Box<[RwLock<HashMap<ChannelName, Channel>>]>,
    hasher: RandomState,
    connections: Mutex<HashMap<SocketId, Arc<Connection>>>,
    connection_count: AtomicUsize,
    /// Woken whenever a connection leaves, for whoever waits for the server to empty.
    departures: Arc<Notify>,
    webhooks: Arc<dyn WebhookSink>,
    metrics: HubMetrics,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Hub sections do not panic midway through a change; if one did, the map is still a valid map.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
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

impl AppHub {
    pub fn new(app_id: &str, webhooks: Arc<dyn WebhookSink>) -> Self {
        AppHub {
            app_id: app_id.into(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            connections: Mutex::default(),
            connection_count: AtomicUsize::new(0),
            departures: Arc::default(),
            webhooks,
            metrics: HubMetrics::new(app_id),
        }
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    fn shard(&self, channel: &str) -> &RwLock<HashMap<ChannelName, Channel>> {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    /// Hands a webhook event to the sink (callers check that the app wants it).
    pub fn submit_webhook(&self, event: WebhookEvent) {
        self.webhooks.submit(&self.app_id, event);
    }

    fn webhook(&self, app: &App, event: impl FnOnce() -> WebhookEvent, kind: WebhookKind) {
        if wanted(app, kind) {
            self.webhooks.submit(&self.app_id, event());
        }
    }

    /// Registers a new connection with a fresh, unique socket id, unless the app is at its quota.
    pub fn connect(&self, app: &App, queue_max_bytes: usize) -> Result<Arc<Connection>, ConnectError> {
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
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

    /// Forgets a connection (its subscriptions must already be gone).
    pub fn disconnect(&self, socket_id: SocketId) {
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if connections.remove(&socket_id).is_some() {
            self.metrics.connections.decrement(1);
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
        let connections: Vec<_> =
            self.connections.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for connection in connections {
            connection.outbound.close(code, message);
        }
    }

    /// Adds `connection` to `channel` and queues its `subscription_succeeded`; for presence, adds
    /// the member and tells the others if this is the user's first socket. Subscribing again to a
    /// channel the connection holds re-sends the success event and changes nothing else; callers
    /// make sure a connection joins a presence channel under one user id.
    pub fn subscribe(
        &self,
        app: &App,
        connection: &Arc<Connection>,
        channel: &ChannelName,
        member: Option<Member<'_>>,
    ) -> Result<(), JoinError> {
        let mut shard = write(self.shard(channel.as_str()));
        let entry = shard.entry(channel.clone()).or_default();
        let first_subscriber = entry.subscribers.is_empty();
        let already = entry.subscribers.contains_key(&connection.socket_id);
        if !already {
            self.metrics.subscriptions.increment(1);
        }
        if first_subscriber {
            self.metrics.channels.increment(1);
        }
        let Some(member) = member else {
            entry.subscribers.insert(connection.socket_id, connection.clone());
            connection.outbound.push(codec::subscription_succeeded(channel.as_str()));
            if first_subscriber {
                self.webhook(
                    app,
                    || WebhookEvent::ChannelOccupied { channel: channel.to_string() },
                    WebhookKind::ChannelOccupied,
                );
            }
            return Ok(());
        };

        let presence = entry.presence.get_or_insert_with(Presence::default);
        if !already
            && !presence.contains(member.user_id)
            && presence.count() >= app.max_presence_members as usize
        {
            if first_subscriber {
                shard.remove(channel);
            }
            self.metrics.subscriptions.decrement(1);
            if first_subscriber {
                self.metrics.channels.decrement(1);
            }
            return Err(JoinError::PresenceFull(app.max_presence_members));
        }
        let new_member = !already && presence.join(member.user_id, member.info);
        let snapshot = presence.snapshot_json();
        entry.subscribers.insert(connection.socket_id, connection.clone());
        connection.outbound.push(codec::presence_subscription_succeeded(channel.as_str(), &snapshot));
        if new_member {
            let added = codec::member_added(channel.as_str(), member.user_id, member.info);
            for (id, other) in &entry.subscribers {
                if *id != connection.socket_id {
                    other.outbound.push(added.clone());
                }
            }
        }
        if first_subscriber {
            self.webhook(
                app,
                || WebhookEvent::ChannelOccupied { channel: channel.to_string() },
                WebhookKind::ChannelOccupied,
            );
        }
        if new_member {
            let event = || WebhookEvent::MemberAdded {
                channel: channel.to_string(),
                user_id: member.user_id.to_owned(),
            };
            self.webhook(app, event, WebhookKind::MemberAdded);
        }
        Ok(())
    }

    /// Removes `socket_id` from `channel`; for presence (`user_id` given), tells the others when
    /// this was the user's last socket. Returns false if the socket was not subscribed.
    pub fn unsubscribe(
        &self,
        app: &App,
        socket_id: SocketId,
        channel: &ChannelName,
        user_id: Option<&str>,
    ) -> bool {
        let mut shard = write(self.shard(channel.as_str()));
        let Some(entry) = shard.get_mut(channel.as_str()) else {
            return false;
        };
        if entry.subscribers.remove(&socket_id).is_none() {
            return false;
        }
        self.metrics.subscriptions.decrement(1);
        if let (Some(user_id), Some(presence)) = (user_id, entry.presence.as_mut()) {
            if presence.leave(user_id) {
                let removed = codec::member_removed(channel.as_str(), user_id);
                for other in entry.subscribers.values() {
                    other.outbound.push(removed.clone());
                }
                let event = || WebhookEvent::MemberRemoved {
                    channel: channel.to_string(),
                    user_id: user_id.to_owned(),
                };
                self.webhook(app, event, WebhookKind::MemberRemoved);
            }
        }
        if entry.subscribers.is_empty() {
            shard.remove(channel.as_str());
            self.metrics.channels.decrement(1);
            self.webhook(
                app,
                || WebhookEvent::ChannelVacated { channel: channel.to_string() },
                WebhookKind::ChannelVacated,
            );
        }
        true
    }

    /// Fans one encoded frame out to every subscriber of `channel` except `except`; returns how
    /// many queues received it. The frame's bytes are shared, never copied.
    pub fn publish(&self, channel: &str, frame: &Bytes, except: Option<SocketId>) -> usize {
        self.metrics.events_published.increment(1);
        let shard = read(self.shard(channel));
        let Some(entry) = shard.get(channel) else {
            return 0;
        };
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
        delivered
    }

    fn summary(name: &ChannelName, channel: &Channel) -> ChannelSummary {
        ChannelSummary {
            name: name.clone(),
            subscription_count: channel.subscribers.len(),
            user_count: channel.presence.as_ref().map(Presence::count),
        }
    }

    /// Numbers for one channel; `None` when no one is subscribed.
    pub fn channel(&self, channel: &str) -> Option<ChannelSummary> {
        let shard = read(self.shard(channel));
        shard.get_key_value(channel).map(|(name, c)| Self::summary(name, c))
    }

    /// Every occupied channel whose name starts with `prefix`, sorted by name.
    pub fn channels(&self, prefix: &str) -> Vec<ChannelSummary> {
        let mut all: Vec<_> = self
            .shards
            .iter()
            .flat_map(|shard| {
                read(shard)
                    .iter()
                    .filter(|(name, _)| name.as_str().starts_with(prefix))
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
            .get(channel)
            .and_then(|c| c.presence.as_ref())
            .map(|p| p.user_ids().map(str::to_owned).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }
}

/// The hubs of every app served by this process, created on first use.
#[derive(Debug)]
pub struct Hubs {
    apps: RwLock<HashMap<String, Arc<AppHub>>>,
    webhooks: Arc<dyn WebhookSink>,
    departures: Arc<Notify>,
}

impl Hubs {
    pub fn new(webhooks: Arc<dyn WebhookSink>) -> Self {
        Hubs { apps: RwLock::default(), webhooks, departures: Arc::default() }
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
                Arc::new(hub)
            })
            .clone()
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
