//! The seam between the cluster protocol and a message bus (NATS, Redis).
//!
//! A transport moves opaque byte messages between the nodes of one cluster and nothing more: it
//! knows no channels, members or apps. Everything a cluster promises (sequencing, heartbeats and
//! leases, state sync, once-per-cluster webhooks) is built above it, once, in
//! [`super`](crate::cluster), so every bus gives the same behaviour.
//!
//! What a transport must guarantee:
//! - messages handed to [`Transport::send`] leave in the order they were handed over (per route),
//!   so a peer sees one node's broadcasts in that node's order;
//! - [`Route::All`] reaches every node of the cluster (the sender may or may not get its own copy;
//!   the cluster layer ignores it), [`Route::Node`] only the named node;
//! - two clusters with different prefixes on one bus never see each other's messages;
//! - `send` never blocks and never fails: while the bus is unreachable the transport keeps a
//!   bounded backlog or drops (the cluster layer heals lost messages by re-syncing);
//! - after losing the bus it reconnects by itself, with backoff, and reports
//!   [`Inbound::Disconnected`] and then [`Inbound::Connected`] so the cluster layer re-syncs;
//! - [`Route::Topic`] reaches only the nodes that [`Transport::listen`] to the topic, at a
//!   level that takes the message's [`Kind`] (the sender may or may not get its own copy). Once
//!   `listen` resolves, whatever another node sends on the topic from then on arrives, each
//!   sender's messages in the order sent, events and state interleaved as sent; once
//!   `listen(.., Listen::Nothing)` resolves, nothing more of the topic arrives. Changing from
//!   one level to another loses nothing of the kind both levels take. Topics listened to are
//!   listened to again after a reconnect, before [`Inbound::Connected`].
//!
//! Topics are the groundwork of interest routing (`docs/cluster.md`, §3): a node hears a
//! channel's traffic only while it has a part in that channel. Nothing routes by topic yet.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

/// A node's identity within its cluster: random per process start, so a restarted node is a new
/// node and its predecessor simply ages out.
pub type NodeId = u64;

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// Every node of the cluster.
    All,
    /// One node.
    Node(NodeId),
    /// The nodes listening to a topic at a level that takes this kind of message.
    Topic(Topic, Kind),
}

/// Longest topic, in bytes: a topic is one token of a NATS subject or part of a Redis channel
/// name, and is built by the cluster layer (a hash of a channel, say), never by a client.
pub const MAX_TOPIC_LEN: usize = 128;

/// A topic: one token of ASCII letters, digits, `-` and `_`, valid on every bus as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic {topic:?}: 1 to {MAX_TOPIC_LEN} ASCII letters, digits, `-` or `_`")]
pub struct InvalidTopic {
    pub topic: String,
}

impl Topic {
    pub fn new(topic: &str) -> Result<Topic, InvalidTopic> {
        let valid = (1..=MAX_TOPIC_LEN).contains(&topic.len())
            && topic.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if !valid {
            return Err(InvalidTopic { topic: topic.chars().take(MAX_TOPIC_LEN + 1).collect() });
        }
        Ok(Topic(topic.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// A topic hashes as its text, so a map of topics can be looked up by a `&str`.
impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a message on a topic carries: events go only to nodes that deliver them; state (shares,
/// members, claims) also to nodes that only keep the topic's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Event,
    State,
}

/// How much of a topic a node receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Listen {
    Nothing,
    /// [`Kind::State`] messages only.
    State,
    /// Events and state.
    Everything,
}

impl Listen {
    /// Whether a node listening at this level receives a message of `kind`.
    pub fn takes(self, kind: Kind) -> bool {
        match self {
            Listen::Nothing => false,
            Listen::State => kind == Kind::State,
            Listen::Everything => true,
        }
    }
}

/// The bus did not confirm a change of listening in time (it is unreachable, or slow): the
/// change may or may not be in effect. The transport keeps it and applies it again once it is
/// connected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("listening to topic {topic} was not confirmed: {reason}")]
pub struct Unconfirmed {
    pub topic: Topic,
    pub reason: String,
}

/// What [`Transport::listen`] resolves to.
pub type ListenFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Unconfirmed>> + Send + 'a>>;

/// What a transport reports to the cluster layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A message from some node (possibly this one, for [`Route::All`]).
    Message(Bytes),
    /// The bus is reachable again after [`Inbound::Disconnected`] (not sent for the first connect).
    Connected,
    /// The bus became unreachable; messages may have been lost in either direction.
    Disconnected,
}

/// A connected bus. Implementations push what they receive into the `mpsc::UnboundedSender<Inbound>`
/// they were given when connecting.
pub trait Transport: Send + Sync + fmt::Debug {
    /// Queues `message` for `route`. Never blocks.
    fn send(&self, route: Route, message: Bytes);

    /// From now on receive `topic` as `listen` says; see the module docs for what resolving
    /// promises.
    fn listen<'a>(&'a self, topic: &'a Topic, listen: Listen) -> ListenFuture<'a>;

    /// Resolves once everything sent so far has been handed to the bus (used on shutdown, so a
    /// node's last words reach its peers). Callers bound the wait.
    fn flush(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
}

/// The receiving half handed to a transport at connect time.
pub type InboundSender = mpsc::UnboundedSender<Inbound>;

/// Why a transport could not connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The cluster prefix cannot be used in the bus's subject or channel names.
    #[error("invalid cluster prefix {prefix:?} for {bus}: {reason}")]
    InvalidPrefix { bus: &'static str, prefix: String, reason: &'static str },
    /// The URL is malformed, the server could not be reached or refused us, or did not confirm
    /// the subscriptions in time.
    #[error("cannot connect to {bus} at {url}: {reason}")]
    Connect { bus: &'static str, url: String, reason: String },
}

/// `url` with its secret replaced, fit for errors and logs: the password, or a lone token in the
/// user part when `lone_user_is_secret` (NATS tokens; a Redis user name is not secret).
pub fn redact_url(url: &str, lone_user_is_secret: bool) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((userinfo, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None if lone_user_is_secret => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_single_tokens_valid_on_every_bus() {
        for ok in ["a", "feed-1", "c_0a9f", &"x".repeat(MAX_TOPIC_LEN)] {
            assert_eq!(Topic::new(ok).map(|t| t.to_string()).as_deref(), Ok(ok));
        }
        for bad in ["", "a.b", "a*", ">", "a b", "a:b", "é", &"x".repeat(MAX_TOPIC_LEN + 1)] {
            assert!(Topic::new(bad).is_err(), "{bad:?}");
        }
        assert!(Listen::State.takes(Kind::State) && !Listen::State.takes(Kind::Event));
        assert!(Listen::Everything.takes(Kind::Event) && !Listen::Nothing.takes(Kind::State));
    }

    #[test]
    fn urls_lose_their_secrets() {
        assert_eq!(redact_url("nats://127.0.0.1:4222", true), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("nats://u:p@h:4222", true), "nats://u:***@h:4222");
        assert_eq!(redact_url("nats://token@h", true), "nats://***@h");
        assert_eq!(redact_url("h:4222", true), "h:4222");
        assert_eq!(redact_url("redis://:pw@h:6379", false), "redis://:***@h:6379");
        assert_eq!(redact_url("redis://user:pw@h", false), "redis://user:***@h");
        assert_eq!(redact_url("redis://user@h", false), "redis://user@h");
    }
}
