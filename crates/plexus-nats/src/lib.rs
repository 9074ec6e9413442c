//! The NATS message bus for cluster mode: a [`Transport`] over core NATS (no JetStream), and
//! channel history in JetStream ([`history`], a store of its own).
//!
//! This crate owns the subject layout, the connection and its events, and the publishing pump.
//! What the messages mean belongs to the cluster layer in `plexus_core::cluster`.
//!
//! - Subjects: `{prefix}.all` for [`Route::All`] and `{prefix}.node.{id}` for [`Route::Node`];
//!   the prefix separates clusters sharing one NATS server. `{prefix}.probe.{id}`, which
//!   nobody subscribes to, serves to confirm subscriptions (see `round_trip`).
//! - Topics: `{prefix}.t.{topic}.e` for events and `.s` for state. A node listening to a topic
//!   at all subscribes to `{prefix}.t.{topic}.*`, one subscription, so one sender's events and
//!   state arrive in the order sent; listening for state only drops the events on arrival, so
//!   that raising or lowering the level never re-subscribes (and never loses state). The price:
//!   a state-only listener still receives the topic's events over the wire.
//! - The connection is made with `no_echo`, so a node does not receive its own broadcasts.
//! - [`Transport::send`] hands the message to one pump task through a bounded backlog (see
//!   `backlog`), so order is kept and `send` never blocks.
//! - async-nats reconnects by itself (backoff 100 ms doubling to 5 s, forever) and restores the
//!   subscriptions; its connection events become [`Inbound::Disconnected`] and
//!   [`Inbound::Connected`], the latter only once the restored subscriptions are confirmed by
//!   the server.
//! - Once [`connect`] returns (and after each `Connected`) the server has confirmed the
//!   subscriptions: anything another node publishes from then on reaches this one. (With a NATS
//!   cluster of several servers, interest still takes a moment to reach the other servers.)
//! - TLS ([`tls_options`]): a `tls://` URL, or a CA file given to [`connect_with`], requires TLS
//!   (rustls on ring), verified against the system's root certificates or that CA file instead;
//!   a server that does not offer TLS is then an error, not a connection in the clear.
//!
//! Node 1 of the cluster `plexus` says something to every node and reads what the others say
//! (the server crate wires this into a node; this is the bare transport):
//!
//! ```no_run
//! use bytes::Bytes;
//! use plexus_nats::{Inbound, Route, Transport};
//!
//! # async fn run() -> Result<(), plexus_nats::TransportError> {
//! let (inbound_tx, mut inbound) = tokio::sync::mpsc::unbounded_channel();
//! let bus = plexus_nats::connect("nats://127.0.0.1:4222", "plexus", 1, inbound_tx).await?;
//! bus.send(Route::All, Bytes::from_static(b"hello, peers"));
//! while let Some(Inbound::Message(message)) = inbound.recv().await {
//!     println!("{} bytes from a peer", message.len());
//! }
//! # Ok(())
//! # }
//! ```

pub mod bridge;
pub mod history;
pub mod mirror;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, RequestErrorKind, Subject, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
// The transport contract this crate implements, re-exported so a user needs no other import.
use plexus_core::cluster::redact_url;
pub use plexus_core::cluster::{
    Inbound, InboundSender, Kind, Listen, ListenFuture, NodeId, Route, Topic, Transport, TransportError,
    Unconfirmed,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use plexus_core::cluster::backlog::{backlog, Backlog, BacklogReceiver};

// The history store, at the crate's root like the transport.
pub use history::{HistoryOptions, JetStreamHistory};

/// How long the first connection (TCP, handshake and subscriptions) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// First reconnect delay after an immediate retry; doubled per failed attempt up to
/// [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Server PINGs often enough that a half-open connection is noticed in well under a minute.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// A node's connection to the cluster's NATS subjects. Dropping it ends its tasks; messages
/// still queued are published first while the connection is up.
pub struct NatsTransport {
    prefix: String,
    node: NodeId,
    backlog: Backlog,
    /// For `flush` and `listen` (the pump owns its own handle).
    client: Client,
    probe: Subject,
    inbound: InboundSender,
    tasks: Vec<JoinHandle<()>>,
    /// The topics listened to; one `listen` at a time changes them.
    topics: tokio::sync::Mutex<HashMap<Topic, TopicSubscription>>,
}

/// One listened topic: the task forwarding its subscription, and whether events pass.
#[derive(Debug)]
struct TopicSubscription {
    events: Arc<AtomicBool>,
    forwarding: JoinHandle<()>,
}

impl fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsTransport")
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .field("dropped", &self.backlog.dropped())
            .finish_non_exhaustive()
    }
}

impl NatsTransport {
    /// Outgoing messages dropped so far because the backlog was full while NATS was away.
    pub fn dropped(&self) -> u64 {
        self.backlog.dropped()
    }
}

impl Transport for NatsTransport {
    fn send(&self, route: Route, message: Bytes) {
        self.backlog.push(route, message);
    }

    fn listen<'a>(&'a self, topic: &'a Topic, listen: Listen) -> ListenFuture<'a> {
        Box::pin(async move {
            let mut topics = self.topics.lock().await;
            let events = listen == Listen::Everything;
            if listen == Listen::Nothing {
                if let Some(listened) = topics.remove(topic) {
                    // Once the forwarding task has stopped nothing more of the topic arrives;
                    // dropping its subscription unsubscribes.
                    listened.forwarding.abort();
                    let _ = listened.forwarding.await;
                }
                return Ok(());
            }
            if let Some(listened) = topics.get(topic) {
                listened.events.store(events, Ordering::Relaxed);
                return Ok(());
            }
            let unconfirmed = |reason: String| Unconfirmed { topic: topic.clone(), reason };
            let subject = Subject::from(format!("{}.t.{topic}.*", self.prefix));
            let subscription = self
                .client
                .subscribe(subject)
                .await
                .map_err(|err| unconfirmed(format!("subscribe: {err}")))?;
            let events = Arc::new(AtomicBool::new(events));
            let forwarding = tokio::spawn(forward_topic(subscription, events.clone(), self.inbound.clone()));
            topics.insert(topic.clone(), TopicSubscription { events, forwarding });
            // async-nats keeps the subscription (and restores it after a reconnect) even when
            // this round trip fails: the listen stands, unconfirmed.
            round_trip(&self.client, self.probe.clone()).await.map_err(unconfirmed)
        })
    }

    fn flush(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.backlog.taken().await;
            let _ = self.client.flush().await;
        })
    }
}

impl Drop for NatsTransport {
    fn drop(&mut self) {
        // The pump is not aborted: it ends by itself once the backlog is drained.
        for task in &self.tasks {
            task.abort();
        }
        for listened in self.topics.get_mut().values() {
            listened.forwarding.abort();
        }
    }
}

/// Connects node `node` of the cluster named `prefix` to the NATS server(s) at `url` (e.g.
/// `nats://10.0.0.5:4222`, or several separated by commas) and reports what arrives, and
/// connection changes, into `inbound`.
///
/// Fails if the prefix is not usable in a subject or the server cannot be reached and
/// subscribed to within a few seconds; once connected, outages are survived by reconnecting.
pub async fn connect(
    url: &str,
    prefix: &str,
    node: NodeId,
    inbound: InboundSender,
) -> Result<Arc<NatsTransport>, TransportError> {
    connect_with(url, None, prefix, node, inbound).await
}

/// [`connect`] over TLS verified against the CA certificates of the PEM file `ca_file` instead of
/// the system's roots (TLS is then required whatever the URL's scheme).
pub async fn connect_with(
    url: &str,
    ca_file: Option<&Path>,
    prefix: &str,
    node: NodeId,
    inbound: InboundSender,
) -> Result<Arc<NatsTransport>, TransportError> {
    validate_prefix(prefix)?;
    let connect_error =
        |reason: String| TransportError::Connect { bus: "NATS", url: redact_url(url, true), reason };

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let options = connect_options(url, ca_file, format!("plexus {prefix} node {node}"))
        .map_err(connect_error)?
        .no_echo()
        .event_callback(move |event| {
            let events_tx = events_tx.clone();
            async move {
                // The supervisor is gone only when the transport is; nothing to tell then.
                let _ = events_tx.send(event);
            }
        });

    let all = Subject::from(format!("{prefix}.all"));
    let mine = Subject::from(format!("{prefix}.node.{node}"));
    // Nobody subscribes here: requests to it only measure a round trip.
    let probe = Subject::from(format!("{prefix}.probe.{node}"));
    let connected = async {
        let client = options.connect(url).await.map_err(|err| connect_error(plexus_tls::describe(&err)))?;
        let subscribe = |subject: Subject| {
            let client = client.clone();
            async move {
                client.subscribe(subject).await.map_err(|err| connect_error(format!("subscribe: {err}")))
            }
        };
        let all_sub = subscribe(all.clone()).await?;
        let mine_sub = subscribe(mine).await?;
        round_trip(&client, probe.clone()).await.map_err(connect_error)?;
        Ok::<_, TransportError>((client, all_sub, mine_sub))
    };
    // async-nats bounds each step; this bounds them all together.
    let limit = CONNECT_TIMEOUT + Duration::from_secs(1);
    let (client, all_sub, mine_sub) = tokio::time::timeout(limit, connected)
        .await
        .map_err(|_| connect_error(format!("not connected and subscribed within {limit:?}")))??;

    let (backlog, backlog_rx) = backlog("nats");
    let tasks = vec![
        tokio::spawn(forward(all_sub, inbound.clone())),
        tokio::spawn(forward(mine_sub, inbound.clone())),
        tokio::spawn(supervise(events_rx, client.clone(), probe.clone(), inbound.clone())),
    ];
    tokio::spawn(pump(client.clone(), backlog_rx, all, prefix.to_owned()));
    Ok(Arc::new(NatsTransport {
        prefix: prefix.to_owned(),
        node,
        backlog,
        client,
        probe,
        inbound,
        tasks,
        topics: Default::default(),
    }))
}

/// What every connection of this crate is opened with, the transport's and the history
/// store's: the connect timeout, keepalive PINGs, reconnecting forever with [`reconnect_delay`],
/// and TLS as [`tls_options`] decides. `name` shows in the server's connection list.
fn connect_options(url: &str, ca_file: Option<&Path>, name: String) -> Result<ConnectOptions, String> {
    let options = ConnectOptions::new()
        .name(name)
        .connection_timeout(CONNECT_TIMEOUT)
        .ping_interval(PING_INTERVAL)
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay);
    tls_options(options, url, ca_file)
}

/// The TLS part of `options` for `url`: with a `tls://` URL or a `ca_file`, TLS is required and
/// verified against `ca_file` or the system's roots (the same trust as plexus's other outbound
/// connections, on ring). Otherwise nothing changes: a server that asks for TLS in its INFO still
/// gets it, verified against the system's roots by async-nats.
pub fn tls_options(
    options: ConnectOptions,
    url: &str,
    ca_file: Option<&Path>,
) -> Result<ConnectOptions, String> {
    let tls_url = url.split(',').any(|u| u.trim().get(..6).is_some_and(|s| s.eq_ignore_ascii_case("tls://")));
    // async-nats builds its own rustls configuration with the process's default provider when
    // a server asks for TLS; make that ring too.
    plexus_tls::install_default_provider();
    if !tls_url && ca_file.is_none() {
        return Ok(options);
    }
    let config = plexus_tls::client_config(ca_file).map_err(|err| err.to_string())?;
    Ok(options.require_tls(true).tls_client_config((*config).clone()))
}

/// Checks that `prefix` is one or more valid subject tokens separated by dots: no wildcards, no
/// whitespace or control characters, no empty token.
fn validate_prefix(prefix: &str) -> Result<(), TransportError> {
    let invalid =
        |reason| Err(TransportError::InvalidPrefix { bus: "NATS", prefix: prefix.to_owned(), reason });
    if prefix.is_empty() {
        return invalid("it is empty");
    }
    if prefix.split('.').any(str::is_empty) {
        return invalid("it has an empty token (leading, trailing or doubled `.`)");
    }
    if prefix.contains(['*', '>']) {
        return invalid("it contains a wildcard (`*` or `>`)");
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid("it contains whitespace or a control character");
    }
    Ok(())
}

/// Immediate first retry, then 100 ms doubling to 5 s. `attempts` counts from 1 per outage.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    FIRST_RECONNECT_DELAY.saturating_mul(1 << doublings).min(MAX_RECONNECT_DELAY)
}

/// Waits until the server has processed everything this connection sent so far (in particular
/// its SUBs). NATS answers a request nobody listens to with "no responders", and handles one
/// connection's operations in order, so that answer is the proof. (`Client::flush` only writes
/// the socket.)
async fn round_trip(client: &Client, probe: Subject) -> Result<(), String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, client.request(probe, Bytes::new())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) if err.kind() == RequestErrorKind::NoResponders => Ok(()),
        Ok(Err(err)) => Err(format!("round trip: {err}")),
        Err(_) => Err(format!("round trip: no answer within {CONNECT_TIMEOUT:?}")),
    }
}

/// Publishes the backlog in order until the transport is dropped and the backlog is drained.
async fn pump(client: Client, mut backlog: BacklogReceiver, all: Subject, prefix: String) {
    let mut failures: u64 = 0;
    while let Some((route, message)) = backlog.recv().await {
        let subject = match route {
            Route::All => all.clone(),
            Route::Node(id) => Subject::from(format!("{prefix}.node.{id}")),
            Route::Topic(topic, Kind::Event) => Subject::from(format!("{prefix}.t.{topic}.e")),
            Route::Topic(topic, Kind::State) => Subject::from(format!("{prefix}.t.{topic}.s")),
        };
        let len = message.len();
        // While disconnected this waits for room in async-nats's own queue; meanwhile our
        // backlog absorbs (and past its bounds drops) what the cluster sends.
        if let Err(err) = client.publish(subject, message).await {
            failures += 1;
            if failures.is_power_of_two() {
                tracing::warn!(%err, bytes = len, failures, "NATS publish failed; message dropped");
            }
        }
    }
    // Hand what is still in async-nats's queue to the server before the client goes.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
}

/// Moves one subscription's messages into the inbound channel.
async fn forward(mut subscriber: Subscriber, inbound: InboundSender) {
    while let Some(message) = subscriber.next().await {
        if inbound.send(Inbound::Message(message.payload)).is_err() {
            return;
        }
    }
}

/// Moves a topic's messages into the inbound channel; events only while `events` says so.
async fn forward_topic(mut subscriber: Subscriber, events: Arc<AtomicBool>, inbound: InboundSender) {
    while let Some(message) = subscriber.next().await {
        if message.subject.ends_with(".e") && !events.load(Ordering::Relaxed) {
            continue;
        }
        if inbound.send(Inbound::Message(message.payload)).is_err() {
            return;
        }
    }
}

/// Turns async-nats connection events into `Disconnected` / `Connected` reports, once per outage.
async fn supervise(
    mut events: mpsc::UnboundedReceiver<Event>,
    client: Client,
    probe: Subject,
    inbound: InboundSender,
) {
    let mut down = false;
    let mut slow_consumer_events: u64 = 0;
    while let Some(event) = events.recv().await {
        match event {
            Event::Disconnected => {
                if !down {
                    down = true;
                    tracing::warn!("lost the NATS connection; reconnecting");
                    if inbound.send(Inbound::Disconnected).is_err() {
                        return;
                    }
                }
            }
            // Also sent for the first connection, which is not news.
            Event::Connected => {
                if down {
                    // async-nats announces the connection before it has re-sent our SUBs; after
                    // a round trip the server has them, so `Connected` means reachable. Should
                    // it fail, the connection is down again and its events follow.
                    if let Err(err) = round_trip(&client, probe.clone()).await {
                        tracing::debug!(%err, "round trip after NATS reconnect failed");
                    }
                    down = false;
                    tracing::info!("NATS connection restored");
                    if inbound.send(Inbound::Connected).is_err() {
                        return;
                    }
                }
            }
            Event::SlowConsumer(sid) => {
                slow_consumer_events += 1;
                if slow_consumer_events.is_power_of_two() {
                    tracing::warn!(
                        sid,
                        total = slow_consumer_events,
                        "NATS dropped incoming cluster messages (slow consumer)"
                    );
                }
            }
            Event::LameDuckMode => tracing::info!("NATS server is entering lame duck mode"),
            Event::ServerError(err) => tracing::warn!(%err, "NATS server error"),
            // Every failed reconnect attempt lands here; the outage itself was logged already.
            Event::ClientError(err) => tracing::debug!(%err, "NATS client error"),
            Event::Draining | Event::Closed => tracing::debug!(%event, "NATS connection event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_follow_subject_token_rules() {
        for ok in ["plexus", "prod-eu.plexus", "a_b-c.D9"] {
            assert!(validate_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "a.", ".a", "a..b", "a b", "a*", "a.>", "a\tb", "a\nb", "a\u{7f}"] {
            let err = validate_prefix(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid cluster prefix"), "{err}");
        }
    }

    #[test]
    fn backoff_doubles_from_100ms_to_5s() {
        let delays: Vec<u128> = (1..=10).map(|n| reconnect_delay(n).as_millis()).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(reconnect_delay(usize::MAX), MAX_RECONNECT_DELAY);
    }

    #[tokio::test]
    async fn unreachable_server_is_a_readable_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let url = format!("nats://127.0.0.1:{port}");
        let (tx, _rx) = mpsc::unbounded_channel();
        let err = connect(&url, "plexus", 1, tx).await.expect_err("nothing listens there");
        let text = err.to_string();
        assert!(text.contains(&url), "{text}");
        let (tx, _rx) = mpsc::unbounded_channel();
        let err = connect("nats://[not a host", "plexus", 1, tx).await.expect_err("malformed");
        assert!(err.to_string().contains("nats://[not a host"), "{err}");
    }

    #[tokio::test]
    async fn invalid_prefix_is_refused_before_connecting() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let err = connect("nats://127.0.0.1:1", "bad prefix", 1, tx).await.expect_err("space");
        assert!(matches!(err, TransportError::InvalidPrefix { .. }), "{err}");
    }
}
