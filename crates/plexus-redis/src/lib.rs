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

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
// The transport contract this crate implements, re-exported so a user needs no other import.
use plexus_core::cluster::redact_url;
pub use plexus_core::cluster::{Inbound, InboundSender, NodeId, Route, Transport, TransportError};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client, RedisError, TlsCertificates};
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
}

impl Channels {
    fn new(prefix: &str, node: NodeId) -> Channels {
        Channels {
            all: format!("{prefix}:all"),
            mine: format!("{prefix}:node:{node}"),
            node_prefix: format!("{prefix}:node:"),
        }
    }
}

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
    let (sink, stream) = open_subscriber(&client, &channels).await.map_err(connect_error)?;

    let (backlog, backlog_rx) = backlog("redis");
    let subscriber =
        tokio::spawn(subscribe(client.clone(), channels.clone(), sink, stream, inbound, LIVENESS));
    tokio::spawn(pump(client, publisher, backlog_rx, channels));
    Ok(Arc::new(RedisTransport { prefix: prefix.to_owned(), node, backlog, subscriber }))
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

/// A pub/sub connection subscribed to this node's channels, confirmed by Redis.
async fn open_subscriber(client: &Client, channels: &Channels) -> Result<(PubSubSink, PubSubStream), String> {
    let open = async {
        let (mut sink, stream) = client.get_async_pubsub().await.map_err(|err| describe(&err))?.split();
        sink.subscribe(&[&channels.all, &channels.mine]).await.map_err(|err| format!("subscribe: {err}"))?;
        Ok((sink, stream))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))?
}

/// Keeps the subscriber connection alive: forwards messages while it is up, and reconnects
/// (reporting `Disconnected`, then `Connected`) when it is lost. Ends when `inbound` closes.
async fn subscribe(
    client: Client,
    channels: Channels,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    inbound: InboundSender,
    liveness: Liveness,
) {
    loop {
        let Err(reason) = forward(&mut sink, &mut stream, &inbound, liveness).await else {
            return;
        };
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
            match open_subscriber(&client, &channels).await {
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

/// Forwards messages until the connection is lost (`Err` with why) or `inbound` closes (`Ok`).
async fn forward(
    sink: &mut PubSubSink,
    stream: &mut PubSubStream,
    inbound: &InboundSender,
    liveness: Liveness,
) -> Result<(), String> {
    let mut ping = tokio::time::interval(liveness.every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return Err("connection closed".to_owned());
                };
                let payload = Bytes::copy_from_slice(message.get_payload_bytes());
                if inbound.send(Inbound::Message(payload)).is_err() {
                    return Ok(());
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
        let (sink, stream) = open_subscriber(&client, &channels).await.expect("subscribe");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(subscribe(client.clone(), channels.clone(), sink, stream, tx, liveness));
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
