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
//!   [`Inbound::Disconnected`] and then [`Inbound::Connected`] so the cluster layer re-syncs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use tokio::sync::mpsc;

/// A node's identity within its cluster: random per process start, so a restarted node is a new
/// node and its predecessor simply ages out.
pub type NodeId = u64;

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Every node of the cluster.
    All,
    /// One node.
    Node(NodeId),
}

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
    use super::redact_url;

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
