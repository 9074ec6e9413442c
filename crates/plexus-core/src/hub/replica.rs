//! The cluster replica: every other node's share of each channel (subscriber counts, presence
//! members), kept beside this node's own so occupancy, counts, presence and their webhooks are
//! the cluster's, answered from memory. Only the cluster node (`crate::cluster::node`) calls in.

use std::collections::HashMap;

use plexus_protocol::ChannelName;

use super::presence::Presence;
use crate::app::App;
use crate::cluster::NodeId;

use super::effects::{Transition, Transitions};
use super::registry::Channel;
use super::*;

/// A channel's part held by this node, as told to other nodes when they sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalShare {
    pub channel: ChannelName,
    pub subscriptions: usize,
    /// Presence members with sockets here: user id and `user_info` JSON.
    pub members: Vec<(String, Option<String>)>,
}

/// Subscriptions per node (see [`AppHub::subscriptions_by_node`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSubscriptions {
    /// This node's sockets' subscriptions.
    pub local: usize,
    /// Every other node with subscriptions, by id.
    pub remote: std::collections::BTreeMap<NodeId, usize>,
}

impl Channel {
    /// Sets `node`'s subscriber count here and says what changed.
    fn set_remote_count(&mut self, node: NodeId, subscriptions: usize) -> Transitions<'static> {
        let current = self.remote.get(&node).map_or(0, |r| r.subscriptions);
        if current == subscriptions {
            return Vec::new();
        }
        let before = self.total();
        let share = self.remote.entry(node).or_default();
        share.subscriptions = subscriptions;
        if share.subscriptions == 0 && share.users.is_empty() {
            self.remote.remove(&node);
        }
        let after = self.total();
        let mut transitions = Vec::with_capacity(3);
        if before == 0 {
            transitions.push(Transition::Occupied);
        }
        transitions.push(Transition::CountChanged);
        if after == 0 {
            transitions.push(Transition::Vacated);
        }
        transitions
    }

    /// Records that `node` holds `member` here; a member new to the cluster is a transition.
    fn remote_member_joined<'a>(&mut self, node: NodeId, member: Member<'a>) -> Transitions<'a> {
        if !self.remote.entry(node).or_default().users.insert(member.user_id.into()) {
            return Vec::new();
        }
        let presence = self.presence.get_or_insert_with(Presence::default);
        if !presence.remote_join(member.user_id, member.info) {
            return Vec::new();
        }
        vec![Transition::MemberAdded {
            user_id: member.user_id,
            info: member.info,
            node: Some(node),
            joiner: None,
        }]
    }

    /// Records that `node` no longer holds `user_id` here; the user leaving the cluster's
    /// membership is a transition.
    fn remote_member_left<'a>(&mut self, node: NodeId, user_id: &'a str) -> Transitions<'a> {
        let Some(share) = self.remote.get_mut(&node) else { return Vec::new() };
        if !share.users.remove(user_id) {
            return Vec::new();
        }
        if share.subscriptions == 0 && share.users.is_empty() {
            self.remote.remove(&node);
        }
        if !self.presence.as_mut().is_some_and(|p| p.remote_leave(user_id)) {
            return Vec::new();
        }
        vec![Transition::MemberRemoved { user_id, node: Some(node) }]
    }
}

impl AppHub {
    /// Sets another node's subscription count in `channel`, with the occupancy webhooks and
    /// subscription counts that causes.
    pub fn set_remote_share(&self, app: &App, node: NodeId, channel: &ChannelName, subscriptions: usize) {
        let mut guard = write(self.shard(channel.as_str()));
        let shard = &mut *guard;
        let entry = shard.channels.entry(channel.clone()).or_default();
        let transitions = entry.set_remote_count(node, subscriptions);
        self.apply(app, channel, entry, &transitions);
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
        let transitions = if present {
            entry.remote_member_joined(node, member)
        } else {
            entry.remote_member_left(node, member.user_id)
        };
        self.apply(app, channel, entry, &transitions);
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

    /// One channel of [`AppHub::replace_node`]: the members `node` no longer holds leave, its
    /// count is set, its members join.
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
        for user in &old_users {
            if !members.iter().any(|(id, _)| **id == **user) {
                let transitions = entry.remote_member_left(node, user);
                self.apply(app, name, entry, &transitions);
            }
        }
        let transitions = entry.set_remote_count(node, subscriptions);
        self.apply(app, name, entry, &transitions);
        for (user_id, info) in &members {
            let transitions = entry.remote_member_joined(node, Member { user_id, info: info.as_deref() });
            self.apply(app, name, entry, &transitions);
        }
        if entry.is_unused() {
            channels.remove(name.as_str());
        }
    }

    /// Subscriptions held by each node, as this node knows them: its own sockets, and every
    /// other node's share as that node last reported it (the same figures the cluster-wide
    /// counts add up). Walks every channel; meant for occasional sampling, not the hot path.
    pub fn subscriptions_by_node(&self) -> NodeSubscriptions {
        let mut counts = NodeSubscriptions::default();
        for shard in self.shards.iter() {
            for channel in read(shard).channels.values() {
                counts.local += channel.subscribers.len();
                for (node, share) in &channel.remote {
                    if share.subscriptions > 0 {
                        *counts.remote.entry(*node).or_default() += share.subscriptions;
                    }
                }
            }
        }
        counts
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
}
