//! The Redis message bus for cluster mode: a [`Transport`] over Redis pub/sub.
//!
//! Channel history in Redis Streams, the cluster's [`HistoryStore`](plexus_core::history_store::HistoryStore)
//! when the adapter is Redis, lives in [`history`].
//!
//! This crate owns the channel layout, the two connections and their reconnecting, and the
//! publishing pump. What the messages mean belongs to the cluster layer in
//! `plexus_core::cluster`.
//!
//! - Channels: `{prefix}:all` for [`Route::All`] and `{prefix}:node:{id}` for [`Route::Node`];
//!   the prefix separates clusters sharing one Redis. Payloads are binary-safe.
//! - Topics: `{prefix}:t:{topic}:e` for events and `:s` for state, subscribed on the same
//!   pub/sub connection (so one sender's events and state keep their order): `:s` while a node
//!   listens for state, both while it listens to everything. A message of a topic (or kind)
//!   the node no longer listens to is dropped on arrival, so once a `listen` resolves nothing
//!   the node left arrives, even what Redis had already sent. After a reconnect every topic is
//!   subscribed again before [`Inbound::Connected`].
//! - Redis delivers a node's broadcasts back to itself; the cluster layer ignores them.
//! - Publishing: [`Transport::send`] hands the message to one pump task through a bounded
//!   backlog (see `backlog`), which sends what has queued up as one pipeline over one
//!   connection, so order is kept and `send` never blocks. A pipeline cut off by a lost
//!   connection is sent again after reconnecting, so a peer may see a message twice (the cluster
//!   layer's sequence numbers discard the repeat); messages are lost only when the backlog
//!   overflows.
//! - Subscribing: a separate pub/sub connection, pinged every few seconds. When it drops the
//!   transport reports [`Inbound::Disconnected`], reconnects with backoff (100 ms doubling to
//!   5 s), subscribes again and, once Redis has confirmed the subscriptions, reports
//!   [`Inbound::Connected`].
//! - Once [`connect`] returns, the subscriptions are live: anything another node publishes from
//!   then on reaches this one.
//! - TLS: a `rediss://` URL connects over TLS (rustls on ring), verifying the server against the
//!   system's root certificates, or against a private CA's PEM file given to [`connect_with`]
//!   instead. Verification cannot be turned off (`#insecure` is refused), and a CA file with a
//!   plain `redis://` URL is an error rather than a connection in the clear.
//!
//! Node 1 of the cluster `plexus` says something to every node and reads what the others say
//! (the server crate wires this into a node; this is the bare transport):
//!
//! ```no_run
//! use bytes::Bytes;
//! use plexus_redis::{Inbound, Route, Transport};
//!
//! # async fn run() -> Result<(), plexus_redis::TransportError> {
//! let (inbound_tx, mut inbound) = tokio::sync::mpsc::unbounded_channel();
//! let bus = plexus_redis::connect("redis://127.0.0.1:6379", "plexus", 1, inbound_tx).await?;
//! bus.send(Route::All, Bytes::from_static(b"hello, peers"));
//! while let Some(Inbound::Message(message)) = inbound.recv().await {
//!     println!("{} bytes from a peer", message.len());
//! }
//! # Ok(())
//! # }
//! ```

pub mod history;

pub use history::RedisHistory;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
// The transport contract this crate implements, re-exported so a user needs no other import.
use plexus_core::cluster::redact_url;
pub use plexus_core::cluster::{
    Inbound, InboundSender, Kind, Listen, ListenFuture, NodeId, Route, Topic, Transport, TransportError,
    Unconfirmed,
};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client, RedisError, TlsCertificates};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use plexus_core::cluster::backlog::{backlog, Backlog, BacklogReceiver};

/// How long one connection attempt (TCP, handshake, subscriptions) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long Redis may take to answer a pipeline or a PING before the connection counts as lost.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the subscriber connection is checked with a PING, and how long the answer may take.
const LIVENESS: Liveness = Liveness { every: Duration::from_secs(5), timeout: RESPONSE_TIMEOUT };

const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Most messages, and roughly most bytes, sent in one pipeline.
const MAX_BATCH_MESSAGES: usize = 1024;
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A node's connection to the cluster's Redis channels. Dropping it ends the subscriber; the
/// publisher ends once it has published what is still queued (or at once while Redis is away).
pub struct RedisTransport {
    prefix: String,
    node: NodeId,
    backlog: Backlog,
    subscriber: JoinHandle<()>,
    /// Changes of listening, carried out by the subscriber task (it owns the connection).
    listens: mpsc::UnboundedSender<ListenRequest>,
}

/// A change of listening, and who waits for Redis to confirm it.
#[derive(Debug)]
struct ListenRequest {
    topic: Topic,
    listen: Listen,
    confirmed: oneshot::Sender<Result<(), String>>,
}

impl fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTransport")
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .field("dropped", &self.backlog.dropped())
            .finish_non_exhaustive()
    }
}

impl RedisTransport {
    /// Outgoing messages dropped so far because the backlog was full while Redis was away.
    pub fn dropped(&self) -> u64 {
        self.backlog.dropped()
    }
}

impl Transport for RedisTransport {
    fn send(&self, route: Route, message: Bytes) {
        self.backlog.push(route, message);
    }

    fn listen<'a>(&'a self, topic: &'a Topic, listen: Listen) -> ListenFuture<'a> {
        Box::pin(async move {
            let unconfirmed = |reason: String| Unconfirmed { topic: topic.clone(), reason };
            let (confirmed, answer) = oneshot::channel();
            let request = ListenRequest { topic: topic.clone(), listen, confirmed };
            self.listens.send(request).map_err(|_| unconfirmed("the transport is closed".to_owned()))?;
            // While Redis is away the request waits for the reconnect, which applies it.
            answer.await.map_err(|_| unconfirmed("the transport is closed".to_owned()))?.map_err(unconfirmed)
        })
    }

    fn flush(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        // The publisher pipelines what it takes and awaits the reply before taking more.
        Box::pin(self.backlog.taken())
    }
}

impl Drop for RedisTransport {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

/// The channels of one node.
#[derive(Debug, Clone)]
struct Channels {
    all: String,
    mine: String,
    /// `{prefix}:node:`, completed by a node id.
    node_prefix: String,
    /// `{prefix}:t:`, completed by a topic and its kind.
    topic_prefix: String,
}

impl Channels {
    fn new(prefix: &str, node: NodeId) -> Channels {
        Channels {
            all: format!("{prefix}:all"),
            mine: format!("{prefix}:node:{node}"),
            node_prefix: format!("{prefix}:node:"),
            topic_prefix: format!("{prefix}:t:"),
        }
    }

    fn topic(&self, topic: &Topic, kind: Kind) -> String {
        let kind = match kind {
            Kind::Event => 'e',
            Kind::State => 's',
        };
        format!("{}{topic}:{kind}", self.topic_prefix)
    }

    /// The channels a node listening to `topic` at `level` is subscribed to.
    fn listened(&self, topic: &Topic, level: Listen) -> Vec<String> {
        [Kind::State, Kind::Event]
            .into_iter()
            .filter(|kind| level.takes(*kind))
            .map(|kind| self.topic(topic, kind))
            .collect()
    }

    /// Whether a message on `channel` is one this node listens to: every message of its own
    /// channels, and a topic's message while the topic is listened to at a level taking its kind.
    fn wanted(&self, channel: &str, topics: &HashMap<Topic, Listen>) -> bool {
        let Some(topic_and_kind) = channel.strip_prefix(&self.topic_prefix) else { return true };
        let Some((topic, kind)) = topic_and_kind.rsplit_once(':') else { return false };
        let kind = if kind == "e" { Kind::Event } else { Kind::State };
        topics.get(topic).is_some_and(|level| level.takes(kind))
    }
}

/// The topics a node listens to, and how much of each.
type Topics = HashMap<Topic, Listen>;

/// Connects node `node` of the cluster named `prefix` to the Redis at `url` (e.g.
/// `redis://10.0.0.5:6379`, `redis://:password@host/`) and reports what arrives, and
/// connection changes, into `inbound`.
///
/// Fails if the prefix is unusable, the URL malformed, or Redis cannot be reached and
/// subscribed to within a few seconds; once connected, outages are survived by reconnecting.
pub async fn connect(
    url: &str,
    prefix: &str,
    node: NodeId,
    inbound: InboundSender,
) -> Result<Arc<RedisTransport>, TransportError> {
    connect_with(url, None, prefix, node, inbound).await
}

/// [`connect`], trusting for a `rediss://` URL the CA certificates of the PEM file `ca_file`
/// instead of the system's roots. A `ca_file` with any other URL is refused.
pub async fn connect_with(
    url: &str,
    ca_file: Option<&Path>,
    prefix: &str,
    node: NodeId,
    inbound: InboundSender,
) -> Result<Arc<RedisTransport>, TransportError> {
    validate_prefix(prefix)?;
    let connect_error =
        |reason: String| TransportError::Connect { bus: "Redis", url: redact_url(url, false), reason };
    let client = open_client(url, ca_file).map_err(connect_error)?;
    let channels = Channels::new(prefix, node);

    let publisher = open_publisher(&client).await.map_err(connect_error)?;
    let (sink, stream) = open_subscriber(&client, &channels, &Topics::new()).await.map_err(connect_error)?;

    let (backlog, backlog_rx) = backlog("redis");
    let (listens, listen_requests) = mpsc::unbounded_channel();
    let connection =
        Subscriber { client: client.clone(), channels: channels.clone(), inbound, liveness: LIVENESS };
    let subscriber = tokio::spawn(subscribe(connection, sink, stream, listen_requests));
    tokio::spawn(pump(client, publisher, backlog_rx, channels));
    Ok(Arc::new(RedisTransport { prefix: prefix.to_owned(), node, backlog, subscriber, listens }))
}

/// Refuses prefixes that would make channel names hard to read or type: empty, or with
/// whitespace or control characters. (Any other byte is fine: channels are matched exactly.)
fn validate_prefix(prefix: &str) -> Result<(), TransportError> {
    let invalid =
        |reason| Err(TransportError::InvalidPrefix { bus: "Redis", prefix: prefix.to_owned(), reason });
    if prefix.is_empty() {
        return invalid("it is empty");
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid("it contains whitespace or a control character");
    }
    Ok(())
}

/// When to PING the subscriber connection and how long to wait for the answer.
#[derive(Debug, Clone, Copy)]
struct Liveness {
    every: Duration,
    timeout: Duration,
}

/// 100 ms doubling per failed attempt up to 5 s.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: FIRST_RECONNECT_DELAY }
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = self.next.saturating_mul(2).min(MAX_RECONNECT_DELAY);
    }
}

/// A client for `url`; over TLS (`rediss://`) it verifies the server against `ca_file` or the
/// system's roots.
fn open_client(url: &str, ca_file: Option<&Path>) -> Result<Client, String> {
    let tls = url.get(..9).is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss://"));
    if tls {
        // redis builds its rustls configuration with the process's default provider.
        plexus_tls::install_default_provider();
    }
    let Some(ca_file) = ca_file else { return Client::open(url).map_err(|err| describe(&err)) };
    if !tls {
        return Err(format!(
            "ca_file {} is set but the URL is not rediss:// (it would connect in the clear)",
            ca_file.display()
        ));
    }
    let ca = plexus_tls::CaFile::read(ca_file).map_err(|err| err.to_string())?;
    Client::build_with_tls(url, TlsCertificates { client_tls: None, root_cert: Some(ca.pem) })
        .map_err(|err| describe(&err))
}

/// A redis error with its sources and, for a refused certificate, what to do about it.
fn describe(err: &RedisError) -> String {
    plexus_tls::describe(err)
}

async fn open_publisher(client: &Client) -> Result<MultiplexedConnection, String> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client.get_multiplexed_async_connection_with_config(&config).await.map_err(|err| describe(&err))
}

/// A pub/sub connection subscribed to this node's channels and `topics`, confirmed by Redis.
async fn open_subscriber(
    client: &Client,
    channels: &Channels,
    topics: &Topics,
) -> Result<(PubSubSink, PubSubStream), String> {
    let open = async {
        let (mut sink, stream) = client.get_async_pubsub().await.map_err(|err| describe(&err))?.split();
        let mut names = vec![channels.all.clone(), channels.mine.clone()];
        names.extend(topics.iter().flat_map(|(topic, level)| channels.listened(topic, *level)));
        sink.subscribe(&names).await.map_err(|err| format!("subscribe: {err}"))?;
        Ok((sink, stream))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))?
}

/// What the subscriber task needs to (re)connect and report.
#[derive(Debug)]
struct Subscriber {
    client: Client,
    channels: Channels,
    inbound: InboundSender,
    liveness: Liveness,
}

/// Keeps the subscriber connection alive: forwards messages and carries out listen requests
/// while it is up, and reconnects (reporting `Disconnected`, then `Connected`) when it is lost.
/// Ends when `inbound` closes.
async fn subscribe(
    connection: Subscriber,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    mut listen_requests: mpsc::UnboundedReceiver<ListenRequest>,
) {
    let mut topics = Topics::new();
    let Subscriber { client, channels, inbound, .. } = &connection;
    loop {
        let lost = forward(&mut sink, &mut stream, &mut listen_requests, &mut topics, &connection).await;
        let Err(reason) = lost else { return };
        tracing::warn!(%reason, "lost the Redis subscriber connection; reconnecting");
        if inbound.send(Inbound::Disconnected).is_err() {
            return;
        }
        let mut backoff = Backoff::new();
        (sink, stream) = loop {
            backoff.wait().await;
            if inbound.is_closed() {
                return;
            }
            match open_subscriber(client, channels, &topics).await {
                Ok(connection) => break connection,
                Err(err) => tracing::debug!(%err, "Redis subscriber reconnect failed"),
            }
        };
        tracing::info!("Redis subscriber connection restored");
        if inbound.send(Inbound::Connected).is_err() {
            return;
        }
    }
}

/// Forwards messages and carries out listen requests until the connection is lost (`Err` with
/// why) or `inbound` closes (`Ok`).
async fn forward(
    sink: &mut PubSubSink,
    stream: &mut PubSubStream,
    listen_requests: &mut mpsc::UnboundedReceiver<ListenRequest>,
    topics: &mut Topics,
    connection: &Subscriber,
) -> Result<(), String> {
    let Subscriber { channels, inbound, liveness, .. } = connection;
    let mut ping = tokio::time::interval(liveness.every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return Err("connection closed".to_owned());
                };
                if !channels.wanted(message.get_channel_name(), topics) {
                    continue;
                }
                let payload = Bytes::copy_from_slice(message.get_payload_bytes());
                if inbound.send(Inbound::Message(payload)).is_err() {
                    return Ok(());
                }
            }
            Some(request) = listen_requests.recv() => {
                let outcome = change_listening(sink, topics, channels, &request).await;
                let lost = outcome.as_ref().err().cloned();
                let _ = request.confirmed.send(outcome);
                if let Some(reason) = lost {
                    return Err(reason);
                }
            }
            _ = ping.tick() => {
                // A dead peer that sent no FIN (power loss, partition) shows only as silence.
                match tokio::time::timeout(liveness.timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => return Err(format!("PING failed: {err}")),
                    Err(_) => return Err(format!("no PING reply within {:?}", liveness.timeout)),
                }
            }
        }
    }
}

/// Subscribes and unsubscribes what `request` changes, and records it in `topics` whatever
/// Redis answers (a reconnect subscribes what `topics` holds). An error means the connection
/// is in doubt.
async fn change_listening(
    sink: &mut PubSubSink,
    topics: &mut Topics,
    channels: &Channels,
    request: &ListenRequest,
) -> Result<(), String> {
    let before = topics.get(&request.topic).copied().unwrap_or(Listen::Nothing);
    match request.listen {
        Listen::Nothing => topics.remove(&request.topic),
        level => topics.insert(request.topic.clone(), level),
    };
    let (was, will) =
        (channels.listened(&request.topic, before), channels.listened(&request.topic, request.listen));
    let added: Vec<&String> = will.iter().filter(|name| !was.contains(name)).collect();
    let removed: Vec<&String> = was.iter().filter(|name| !will.contains(name)).collect();
    let answer = async {
        if !added.is_empty() {
            sink.subscribe(&added).await?;
        }
        if !removed.is_empty() {
            sink.unsubscribe(&removed).await?;
        }
        Ok::<_, RedisError>(())
    };
    match tokio::time::timeout(RESPONSE_TIMEOUT, answer).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("subscribe: {err}")),
        Err(_) => Err(format!("no answer to a subscribe within {RESPONSE_TIMEOUT:?}")),
    }
}

/// Whether `err` means the connection is gone, so the pipeline should be sent again over a new
/// one (rather than being refused by Redis itself, which resending would not change).
fn connection_lost(err: &RedisError) -> bool {
    err.is_io_error() || err.is_connection_dropped() || err.is_timeout() || err.is_unrecoverable_error()
}

/// Publishes the backlog in order, batching what has queued up into one pipeline, until the
/// transport is dropped and the backlog drained (or dropped while Redis is away).
async fn pump(
    client: Client,
    connection: MultiplexedConnection,
    mut backlog: BacklogReceiver,
    channels: Channels,
) {
    let mut connection = Some(connection);
    let mut batch: Vec<(Route, Bytes)> = Vec::new();
    let mut refused: u64 = 0;
    loop {
        if batch.is_empty() {
            let Some(first) = backlog.recv().await else { return };
            let mut bytes = first.1.len();
            batch.push(first);
            while batch.len() < MAX_BATCH_MESSAGES && bytes < MAX_BATCH_BYTES {
                let Some(next) = backlog.try_recv() else { break };
                bytes += next.1.len();
                batch.push(next);
            }
        }

        let conn = match connection.as_mut() {
            Some(conn) => conn,
            None => match reconnect_publisher(&client, &backlog).await {
                Some(conn) => connection.insert(conn),
                None => return,
            },
        };

        let mut pipe = redis::pipe();
        for (route, message) in &batch {
            let channel = match route {
                Route::All => channels.all.clone(),
                Route::Node(id) => format!("{}{id}", channels.node_prefix),
                Route::Topic(topic, kind) => channels.topic(topic, *kind),
            };
            pipe.cmd("PUBLISH").arg(channel).arg(message.as_ref()).ignore();
        }
        match pipe.query_async::<()>(conn).await {
            Ok(()) => batch.clear(),
            Err(err) if connection_lost(&err) => {
                tracing::warn!(%err, "lost the Redis publisher connection; reconnecting");
                connection = None;
            }
            Err(err) => {
                refused += batch.len() as u64;
                tracing::warn!(%err, messages = batch.len(), refused, "Redis refused published messages");
                batch.clear();
            }
        }
    }
}

/// A new publisher connection, retried with backoff; `None` if the transport was dropped
/// meanwhile (there is nobody left to publish for).
async fn reconnect_publisher(client: &Client, backlog: &BacklogReceiver) -> Option<MultiplexedConnection> {
    let mut backoff = Backoff::new();
    loop {
        backoff.wait().await;
        if backlog.is_closed() {
            return None;
        }
        match open_publisher(client).await {
            Ok(conn) => {
                tracing::info!("Redis publisher connection restored");
                return Some(conn);
            }
            Err(err) => tracing::debug!(%err, "Redis publisher reconnect failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_transport_tests::{free_port, ServerProcess, WAIT};
    use tokio::sync::mpsc;

    #[test]
    fn prefixes_without_whitespace_are_accepted() {
        for ok in ["plexus", "prod:eu", "a.b-c_d*"] {
            assert!(validate_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a\tb", "a\nb", "a\u{0}b"] {
            assert!(matches!(validate_prefix(bad), Err(TransportError::InvalidPrefix { .. })), "{bad:?}");
        }
    }

    #[test]
    fn channel_names() {
        let channels = Channels::new("p", 42);
        assert_eq!(channels.all, "p:all");
        assert_eq!(channels.mine, "p:node:42");
        assert_eq!(format!("{}{}", channels.node_prefix, 42), channels.mine);
        let room = Topic::new("room").unwrap();
        assert_eq!(channels.listened(&room, Listen::Everything), ["p:t:room:s", "p:t:room:e"]);
        assert_eq!(channels.listened(&room, Listen::State), ["p:t:room:s"]);
        let topics = Topics::from([(room, Listen::State)]);
        let wanted: Vec<bool> = ["p:all", "p:node:42", "p:t:room:s", "p:t:room:e", "p:t:hall:s", "p:t:odd"]
            .iter()
            .map(|channel| channels.wanted(channel, &topics))
            .collect();
        assert_eq!(wanted, [true, true, true, false, false, false]);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_from_100ms_to_5s() {
        let mut backoff = Backoff::new();
        let mut delays = Vec::new();
        for _ in 0..9 {
            let start = tokio::time::Instant::now();
            backoff.wait().await;
            delays.push(start.elapsed().as_millis());
        }
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    /// Subscribes like `connect` does, on a private server, with a fast liveness check.
    async fn private_subscriber(
        server_port: u16,
        liveness: Liveness,
    ) -> (Client, Channels, mpsc::UnboundedReceiver<Inbound>) {
        let client = Client::open(format!("redis://127.0.0.1:{server_port}")).expect("valid URL");
        let channels = Channels::new("liveness", 1);
        let (sink, stream) = open_subscriber(&client, &channels, &Topics::new()).await.expect("subscribe");
        let (tx, rx) = mpsc::unbounded_channel();
        let connection =
            Subscriber { client: client.clone(), channels: channels.clone(), inbound: tx, liveness };
        // No listen requests here: a closed request channel only disables that branch.
        let (_, listen_requests) = mpsc::unbounded_channel::<ListenRequest>();
        tokio::spawn(subscribe(connection, sink, stream, listen_requests));
        (client, channels, rx)
    }

    async fn redis_server() -> ServerProcess {
        let port = free_port();
        let args = ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        ServerProcess::start("redis-server", args.map(String::from).to_vec(), port).await
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Inbound>, what: &str) -> Inbound {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(inbound)) => inbound,
            _ => panic!("nothing arrived within {WAIT:?} while awaiting {what}"),
        }
    }

    /// PING on a connection in subscribed mode gets its special reply, and the connection keeps
    /// delivering: the check never mistakes a healthy connection for a dead one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn liveness_pings_keep_a_healthy_subscriber() {
        let server = redis_server().await;
        let liveness = Liveness { every: Duration::from_millis(10), timeout: Duration::from_secs(5) };
        let (client, channels, mut rx) = private_subscriber(server.port(), liveness).await;
        let mut admin = client.get_multiplexed_async_connection().await.expect("admin connection");

        // Redis records each connection's last command: wait until the subscriber has pinged.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .arg("TYPE")
                .arg("pubsub")
                .query_async(&mut admin)
                .await
                .expect("CLIENT LIST");
            if clients.contains("cmd=ping") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the subscriber never pinged: {clients}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channels.all)
            .arg(&b"\x00after pings"[..])
            .query_async(&mut admin)
            .await
            .expect("PUBLISH");
        assert_eq!(
            next(&mut rx, "the message").await,
            Inbound::Message(Bytes::from_static(b"\x00after pings"))
        );
    }

    /// A server that stops answering without closing the connection (here: SIGSTOP) is noticed
    /// by the PING timeout, and the subscriber comes back once the server answers again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_server_counts_as_lost() {
        let server = redis_server().await;
        let liveness = Liveness { every: Duration::from_millis(50), timeout: Duration::from_millis(300) };
        let (client, channels, mut rx) = private_subscriber(server.port(), liveness).await;
        server.pause();
        assert_eq!(next(&mut rx, "Disconnected").await, Inbound::Disconnected);
        server.resume();
        assert_eq!(next(&mut rx, "Connected").await, Inbound::Connected);
        let mut admin = client.get_multiplexed_async_connection().await.expect("admin connection");
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channels.mine)
            .arg("back")
            .query_async(&mut admin)
            .await
            .expect("PUBLISH");
        assert_eq!(next(&mut rx, "the message").await, Inbound::Message(Bytes::from_static(b"back")));
    }

    #[tokio::test]
    async fn unreachable_server_is_a_readable_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let url = format!("redis://127.0.0.1:{port}");
        let (tx, _rx) = mpsc::unbounded_channel();
        let err = connect(&url, "plexus", 1, tx).await.expect_err("nothing listens there");
        assert!(err.to_string().contains(&url), "{err}");
        let (tx, _rx) = mpsc::unbounded_channel();
        let err = connect("not a url", "plexus", 1, tx).await.expect_err("malformed");
        assert!(err.to_string().contains("not a url"), "{err}");
    }
}
