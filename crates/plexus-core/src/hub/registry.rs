//! The channel registry: who is subscribed to which channel on this node, presence membership,
//! subscription counts, and the numbers the HTTP API reports. Subscribing and unsubscribing take
//! the channel's shard write lock, which also orders presence events: a joiner's
//! `subscription_succeeded` is queued before any later member event of that channel.

use std::collections::HashMap;
use std::sync::Arc;

use plexus_protocol::codec::{self};
use plexus_protocol::filter::SubscriptionFilter;
use plexus_protocol::{ChannelKind, ChannelName, SocketId};
use tokio::time::Instant;

use super::presence::{Joined, Left, Presence};
use crate::app::{App, WebhookKind};
use crate::cluster::NodeId;
use crate::webhook::WebhookEvent;

use super::effects::{Transition, Transitions};
use super::fanout::EventFrames;
use super::stored::Hold;
use super::*;

#[derive(Debug, Default)]
pub(super) struct Channel {
    /// This node's sockets.
    pub(super) subscribers: HashMap<SocketId, Arc<Connection>>,
    /// Cluster-wide members, for presence channels.
    pub(super) presence: Option<Presence>,
    /// Other nodes' shares (empty on a single node).
    pub(super) remote: HashMap<NodeId, RemoteShare>,
    /// Server-side filters of the subscribers that set one (empty unless someone did).
    pub(super) filters: HashMap<SocketId, Arc<SubscriptionFilter>>,
    /// Subscribers being caught up from the durable history store (empty but for the moments a
    /// resume waits for the store).
    pub(super) held: HashMap<SocketId, Hold>,
    /// When a subscription count was last broadcast, and whether a newer one is owed.
    pub(super) count_sent_at: Option<Instant>,
    pub(super) count_pending: bool,
}

/// One other node's part of a channel, as that node last reported it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct RemoteShare {
    pub(super) subscriptions: usize,
    pub(super) users: std::collections::HashSet<Box<str>>,
}

impl Channel {
    /// Adds a socket (as `member` on a presence channel, refused when that would add a user to a
    /// channel of `max_members`) and says what changed. Joining again changes nothing.
    pub(super) fn join<'a>(
        &mut self,
        connection: &Arc<Connection>,
        member: Option<Member<'a>>,
        max_members: u32,
    ) -> Result<Transitions<'a>, JoinError> {
        let socket_id = connection.socket_id;
        if self.subscribers.contains_key(&socket_id) {
            return Ok(Vec::new());
        }
        let total_before = self.total();
        let first_here = self.subscribers.is_empty();
        let mut joined = Joined { new_member: false, first_local: false };
        if let Some(member) = member {
            let presence = self.presence.get_or_insert_with(Presence::default);
            if !presence.contains(member.user_id) && presence.count() >= max_members as usize {
                return Err(JoinError::PresenceFull(max_members));
            }
            joined = presence.join(member.user_id, member.info);
        }
        self.subscribers.insert(socket_id, connection.clone());
        let mut transitions = vec![
            Transition::Joined { socket_id, user_id: member.map(|m| m.user_id) },
            Transition::LocalShare(self.subscribers.len()),
        ];
        if let (true, Some(member)) = (joined.first_local, member) {
            transitions.push(Transition::MemberHere {
                user_id: member.user_id,
                info: member.info,
                present: true,
            });
        }
        if first_here {
            transitions.push(Transition::FirstHere);
        }
        if total_before == 0 {
            transitions.push(Transition::Occupied);
        }
        if let (true, Some(member)) = (joined.new_member, member) {
            transitions.push(Transition::MemberAdded {
                user_id: member.user_id,
                info: member.info,
                node: None,
                joiner: Some(socket_id),
            });
        }
        transitions.push(Transition::CountChanged);
        Ok(transitions)
    }

    /// Removes a socket (which joined as `user_id` on a presence channel) and says what changed;
    /// `None` when it was not subscribed.
    pub(super) fn leave<'a>(
        &mut self,
        socket_id: SocketId,
        user_id: Option<&'a str>,
    ) -> Option<Transitions<'a>> {
        self.subscribers.remove(&socket_id)?;
        self.filters.remove(&socket_id);
        self.held.remove(&socket_id);
        shrink_if_sparse(&mut self.subscribers);
        let mut transitions = vec![Transition::Left { socket_id }];
        let mut left = Left { removed: false, last_local: false };
        if let (Some(user_id), Some(presence)) = (user_id, self.presence.as_mut()) {
            left = presence.leave(user_id);
            if left.removed {
                transitions.push(Transition::MemberRemoved { user_id, node: None });
            }
        }
        if let (true, Some(user_id)) = (left.last_local, user_id) {
            transitions.push(Transition::MemberHere { user_id, info: None, present: false });
        }
        transitions.push(Transition::LocalShare(self.subscribers.len()));
        transitions.push(Transition::CountChanged);
        if self.subscribers.is_empty() {
            transitions.push(Transition::LastHere);
        }
        if self.total() == 0 {
            transitions.push(Transition::Vacated);
        }
        Some(transitions)
    }

    /// Sets (or with `None` clears) one subscriber's server-side filter.
    fn set_filter(&mut self, socket_id: SocketId, filter: Option<Arc<SubscriptionFilter>>) {
        match filter {
            Some(filter) if self.subscribers.contains_key(&socket_id) => {
                self.filters.insert(socket_id, filter);
            }
            _ => {
                self.filters.remove(&socket_id);
            }
        }
    }

    /// Subscriptions across the cluster.
    pub(super) fn total(&self) -> usize {
        self.subscribers.len() + self.remote.values().map(|r| r.subscriptions).sum::<usize>()
    }

    /// Nothing left here or anywhere else: the entry can go.
    pub(super) fn is_unused(&self) -> bool {
        self.subscribers.is_empty() && self.remote.is_empty()
    }
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

/// One channel's numbers, as the HTTP API reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSummary {
    pub name: ChannelName,
    pub subscription_count: usize,
    /// Distinct users, for presence channels.
    pub user_count: Option<usize>,
}

impl AppHub {
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
        let transitions = match entry.join(connection, member, app.max_presence_members) {
            Ok(transitions) => transitions,
            Err(error) => {
                if entry.is_unused() {
                    shard.channels.remove(channel);
                }
                return Err(error);
            }
        };
        let reply = match (&entry.presence, member) {
            (Some(presence), Some(_)) => {
                codec::presence_subscription_succeeded(channel.as_str(), &presence.snapshot_json())
            }
            _ => codec::subscription_succeeded(channel.as_str()),
        };
        connection.outbound.push(reply);
        let filter = filter.map(Arc::new);
        entry.set_filter(connection.socket_id, filter.clone());
        if channel.is_cache() {
            self.replay_cache(app, &mut shard.cache, channel, connection);
        }
        if let Some(position) = position {
            self.resume(app, shard, channel, connection, position, filter.as_ref());
        }
        if let Some(entry) = shard.channels.get_mut(channel) {
            self.apply(app, channel, entry, &transitions);
        }
        Ok(())
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
        let Some(transitions) = entry.leave(socket_id, user_id) else {
            return false;
        };
        self.apply(app, channel, entry, &transitions);
        if entry.is_unused() {
            shard.channels.remove(channel.as_str());
            shrink_if_sparse(&mut shard.channels);
        }
        true
    }

    /// Broadcasts `pusher_internal:subscription_count` (and the webhook) after a change, when the
    /// app asks for it; large channels are throttled and caught up by [`AppHub::tick`].
    pub(super) fn subscription_count_changed(
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

    pub(super) fn send_subscription_count(
        &self,
        app: &App,
        channel: &ChannelName,
        entry: &mut Channel,
        now: Instant,
    ) {
        let count = entry.total();
        entry.count_sent_at = Some(now);
        entry.count_pending = false;
        if count > 0 && !entry.subscribers.is_empty() {
            let frame = codec::subscription_count(channel.as_str(), count);
            let mut frames = EventFrames::new(&frame);
            for subscriber in entry.subscribers.values() {
                frames.push_to(subscriber);
            }
        }
        self.webhook(app, WebhookKind::SubscriptionCount, || WebhookEvent::SubscriptionCount {
            channel: channel.to_string(),
            subscription_count: count,
        });
    }

    /// Sets (or with `None` clears) the server-side filter of `socket_id` in `channel`.
    pub fn set_filter(&self, channel: &str, socket_id: SocketId, filter: Option<SubscriptionFilter>) {
        let mut shard = write(self.shard(channel));
        if let Some(entry) = shard.channels.get_mut(channel) {
            entry.set_filter(socket_id, filter.map(Arc::new));
        }
    }

    pub(super) fn summary(name: &ChannelName, channel: &Channel) -> ChannelSummary {
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
}
