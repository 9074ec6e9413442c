//! Many nodes serving one set of apps: the cluster protocol above a message bus.
//!
//! Each node is the authority for its own connections. It tells the others, over a
//! [`Transport`], what its hubs do ([`Update`]: events to fan out, and the absolute size of its
//! share of each channel and presence membership), and keeps a view of every other node's share
//! inside its own hubs. Cluster-wide answers (occupancy, counts, presence lists) therefore come
//! from local memory, in bounded time, and membership events fire once per user per cluster.
//!
//! - [`transport`]: the seam a bus implements (`plexus-nats`, `plexus-redis`), and
//!   [`backlog`], the bounded outgoing queue both use; [`memory`], a bus inside one process for
//!   tests (and embedders), with controls to cut nodes off and drop or hold messages.
//! - [`wire`]: how updates and control messages are encoded on the bus.
//! - [`load`]: every other node's connections and event and message rates per app, reported
//!   by each node on a timer, for the operator's per-node view.
//! - [`node`]: sequencing, heartbeats and leases, state sync after a gap, the leader that
//!   alone sends state webhooks so each fires once per cluster, and the node that numbers each
//!   history channel's events so positions mean the same on every node.

pub mod backlog;
pub mod load;
pub mod memory;
pub mod node;
pub mod transport;
pub mod wire;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use plexus_protocol::SocketId;

pub use crate::hub::Position;
pub use load::PeerLoad;
pub use memory::{MemoryBus, MemoryTransport};
pub use node::{ClusterNode, ClusterOptions};
pub use transport::{
    redact_url, Inbound, InboundSender, InvalidTopic, Kind, Listen, ListenFuture, NodeId, Route, Topic,
    Transport, TransportError, Unconfirmed,
};

/// What happened on this node that other nodes must hear about. Shares are absolute (this
/// node's whole count), so hearing one twice or after a newer one is harmless.
#[derive(Debug, Clone, Copy)]
pub enum Update<'a> {
    /// An event to deliver to the channel's subscribers on every other node. `frame` is the
    /// complete WebSocket frame as delivered here; on a history channel it carries the `position`
    /// this node gave it as the channel's numbering node, and peers record it at that position.
    /// On a cache channel `keep` says what every node keeps as the channel's last event, so one
    /// message carries both.
    Publish {
        channel: &'a str,
        frame: &'a Bytes,
        except: Option<SocketId>,
        position: Option<Position>,
        keep: Option<Keep<'a>>,
    },
    /// An event for a history channel that node `by` numbers: `by` gives it the channel's next
    /// position and publishes it to everyone, this node included; the other nodes ignore this.
    Sequence {
        channel: &'a str,
        frame: &'a Bytes,
        except: Option<SocketId>,
        by: NodeId,
        keep: Option<Keep<'a>>,
    },
    /// An event for every connection signed in as `user_id`.
    ToUser { user_id: &'a str, frame: &'a Bytes },
    /// Close every connection signed in as `user_id`.
    Terminate { user_id: &'a str },
    /// This node now has `subscriptions` sockets in `channel`.
    Share { channel: &'a str, subscriptions: usize },
    /// This node now holds (`present`) or no longer holds `user_id` in presence `channel`.
    Member { channel: &'a str, user_id: &'a str, info: Option<&'a str>, present: bool },
    /// `user_id` is now signed in on this node (`online`), or no longer.
    User { user_id: &'a str, online: bool },
}

/// What a cache channel keeps of an event published to it: its `data` (for `info=cache`) and the
/// frame, for `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep<'a> {
    pub data: &'a str,
    pub ttl: Duration,
}

/// Where a hub announces its [`Update`]s. Announcements of state are made while the change is
/// still locked, so a node's updates leave in the order its state changed.
pub trait ClusterLink: Send + Sync + fmt::Debug {
    fn announce(&self, app_id: &str, update: Update<'_>);

    /// The node that numbers the events of history channel `channel`, when that is another node
    /// (`None`: this one). One node per channel gives out positions, so a position read on any
    /// node resumes on any other; the choice is a rendezvous hash over the live nodes, so a node
    /// joining or leaving moves only the channels it wins or held.
    fn sequencer(&self, app_id: &str, channel: &str) -> Option<NodeId> {
        let _ = (app_id, channel);
        None
    }
}
