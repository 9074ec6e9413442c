//! Where the registry's transitions become side effects — in one place, in one documented order.
//!
//! Registry operations (a local subscribe or unsubscribe, another node's share or member changing)
//! change a [`Channel`] and return what changed as [`Transition`]s. [`AppHub::apply`] turns them,
//! still under the channel's shard lock so every node and every receiver sees one order per
//! channel, into:
//!
//! 1. **frames to this node's subscribers** (`pusher_internal:member_added` / `member_removed`);
//! 2. **metrics** (subscriptions, occupied channels);
//! 3. **cluster announcements**, in transition order: a join tells peers the new share before the
//!    new member (so every node sees occupancy before membership), a leave the member before the
//!    share;
//! 4. **webhooks and subscription counts**, in transition order: `channel_occupied` before
//!    `member_added` before the new count, the count of zero and `member_removed` before
//!    `channel_vacated` (`pusher_internal:subscription_count` goes to the subscribers then too,
//!    throttled on large channels);
//! 5. **the debug console**.
//!
//! Nothing else in the hub emits these effects, so a change to subscribe or unsubscribe only has
//! to get the transitions right.

use plexus_protocol::codec;
use plexus_protocol::{ChannelName, SocketId};
use serde_json::json;
use tokio::time::Instant;

use super::fanout::EventFrames;
use super::registry::Channel;
use super::*;

/// One change to a channel, as a registry operation reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transition<'a> {
    /// A socket of this node joined the channel (as `user_id` on presence channels).
    Joined {
        socket_id: SocketId,
        user_id: Option<&'a str>,
    },
    /// A socket of this node left the channel.
    Left {
        socket_id: SocketId,
    },
    /// This node's subscriber count in the channel is now this (peers are told).
    LocalShare(usize),
    /// A user's first socket in the channel on this node came (`present`), or its last went.
    MemberHere {
        user_id: &'a str,
        info: Option<&'a str>,
        present: bool,
    },
    /// The channel's first subscriber on this node came / its last went.
    FirstHere,
    LastHere,
    /// Nobody anywhere → someone: `channel_occupied`. Someone → nobody: `channel_vacated`.
    Occupied,
    Vacated,
    /// A user joined the channel's membership, cluster-wide (`node`: where, when not here).
    /// `joiner` already has the member list, so it is not told again.
    MemberAdded {
        user_id: &'a str,
        info: Option<&'a str>,
        node: Option<NodeId>,
        joiner: Option<SocketId>,
    },
    /// A user's last socket anywhere left.
    MemberRemoved {
        user_id: &'a str,
        node: Option<NodeId>,
    },
    /// The cluster-wide subscription count changed.
    CountChanged,
}

/// The transitions of one registry operation (a handful at most).
pub(super) type Transitions<'a> = Vec<Transition<'a>>;

impl AppHub {
    /// Applies `transitions` of `channel` (see the module docs for the order).
    pub(super) fn apply(
        &self,
        app: &App,
        channel: &ChannelName,
        entry: &mut Channel,
        transitions: &[Transition<'_>],
    ) {
        if transitions.is_empty() {
            return;
        }
        for transition in transitions {
            match *transition {
                Transition::MemberAdded { user_id, info, joiner, .. } => {
                    let added = codec::member_added(channel.as_str(), user_id, info);
                    let mut added = EventFrames::new(&added);
                    for (id, subscriber) in &entry.subscribers {
                        if Some(*id) != joiner {
                            added.push_to(subscriber);
                        }
                    }
                }
                Transition::MemberRemoved { user_id, .. } => {
                    let removed = codec::member_removed(channel.as_str(), user_id);
                    let mut removed = EventFrames::new(&removed);
                    for subscriber in entry.subscribers.values() {
                        removed.push_to(subscriber);
                    }
                }
                _ => {}
            }
        }
        for transition in transitions {
            match transition {
                Transition::Joined { .. } => self.metrics.subscriptions.increment(1),
                Transition::Left { .. } => self.metrics.subscriptions.decrement(1),
                Transition::FirstHere => self.metrics.channels.increment(1),
                Transition::LastHere => self.metrics.channels.decrement(1),
                _ => {}
            }
        }
        for transition in transitions {
            match *transition {
                Transition::LocalShare(subscriptions) => {
                    self.announce(Update::Share { channel: channel.as_str(), subscriptions })
                }
                Transition::MemberHere { user_id, info, present } => {
                    self.announce(Update::Member { channel: channel.as_str(), user_id, info, present })
                }
                _ => {}
            }
        }
        for transition in transitions {
            match *transition {
                Transition::Occupied => self.webhook(app, WebhookKind::ChannelOccupied, || {
                    WebhookEvent::ChannelOccupied { channel: channel.to_string() }
                }),
                Transition::Vacated => self.webhook(app, WebhookKind::ChannelVacated, || {
                    WebhookEvent::ChannelVacated { channel: channel.to_string() }
                }),
                Transition::MemberAdded { user_id, .. } => {
                    self.webhook(app, WebhookKind::MemberAdded, || WebhookEvent::MemberAdded {
                        channel: channel.to_string(),
                        user_id: user_id.to_owned(),
                    })
                }
                Transition::MemberRemoved { user_id, .. } => {
                    self.webhook(app, WebhookKind::MemberRemoved, || WebhookEvent::MemberRemoved {
                        channel: channel.to_string(),
                        user_id: user_id.to_owned(),
                    })
                }
                Transition::CountChanged => {
                    self.subscription_count_changed(app, channel, entry, Instant::now())
                }
                _ => {}
            }
        }
        for transition in transitions {
            match *transition {
                Transition::Joined { socket_id, user_id } => self.observer.emit(|| {
                    let mut detail = json!({"socket_id": socket_id.to_string()});
                    if let Some(user_id) = user_id {
                        detail["user_id"] = json!(user_id);
                    }
                    Observation::new(channel.as_str(), "subscribed", detail)
                }),
                Transition::Left { socket_id } => self.observer.emit(|| {
                    Observation::new(
                        channel.as_str(),
                        "unsubscribed",
                        json!({"socket_id": socket_id.to_string()}),
                    )
                }),
                Transition::MemberAdded { user_id, info, node, .. } => {
                    self.observer.emit(|| member_added_observation(channel, Member { user_id, info }, node))
                }
                Transition::MemberRemoved { user_id, node } => {
                    self.observer.emit(|| member_removed_observation(channel, user_id, node))
                }
                _ => {}
            }
        }
    }
}
