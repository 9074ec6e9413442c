//! The WebSocket endpoint `/app/{key}`: upgrade, refusals in-band, and each connection's reader
//! and writer around a core [`Session`].
//!
//! The upgrade always completes, even for a request that will be refused, so the refusal reaches
//! pusher-js as a `pusher:error` and a close code it understands (a failed HTTP upgrade looks like
//! a network fault, and pusher-js would retry forever).
//!
//! Per connection there are two tasks. The reader feeds client messages to the session and keeps
//! the activity timer ([`run_connection`]); the writer drains the connection's outbound queue into
//! the socket ([`write_loop`]). Both talk to the socket through two small traits,
//! [`MessageReader`] and [`FrameWriter`], so the loops are written once:
//!
//! - [`shared_frames`] (the default): plexus's own framing (`plexus_protocol::wsframe`). The
//!   reader keeps no buffer between messages; the writer hands the already framed, shared event
//!   bytes to the kernel in one vectored write per batch and never frames or copies a broadcast.
//! - `tungstenite` (cargo feature `tungstenite`, for the comparison in BENCHMARKS.md):
//!   tokio-tungstenite for both directions, framing each message per recipient.

pub mod echo;
// Compiled in both builds so the comparison build keeps it checked.
#[cfg_attr(feature = "tungstenite", allow(dead_code))]
mod shared_frames;
#[cfg(feature = "tungstenite")]
mod tungstenite;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Request, Response, StatusCode};
use base64::Engine;
use bytes::Bytes;
use plexus_core::outbound::Drained;
use plexus_core::{Connection, ExtensionConnect, Heartbeat, Session};
use plexus_protocol::{codec, deflate, CloseCode};
use sha1::{Digest, Sha1};
use tokio::time::Instant;

use crate::credentials::Admission;
use crate::listener::{ConnectionSlot, Refused};
use crate::ServerState;

const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// How long a closing connection waits for the client's close reply before dropping the socket.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

fn plain(status: StatusCode, message: &'static str) -> Response<Body> {
    Response::builder().status(status).body(Body::from(message)).expect("static response is valid")
}

/// Whether a `Sec-WebSocket-Key` is what RFC 6455 §4.1 asks of a client: 16 random bytes in
/// base64, which is always 24 characters.
fn is_websocket_key(key: &[u8]) -> bool {
    key.len() == 24
        && base64::engine::general_purpose::STANDARD.decode(key).is_ok_and(|bytes| bytes.len() == 16)
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `GET /app/{key}`: completes the WebSocket handshake and hands the socket to a connection task.
pub async fn upgrade(
    State(state): State<Arc<ServerState>>,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
    mut request: Request<Body>,
) -> Response<Body> {
    let headers = request.headers();
    let accept = match handshake(headers) {
        Ok(accept) => accept,
        Err(refusal) => return refusal.into_response(),
    };
    let deflate = state.config.compression.then(|| offered_deflate(headers)).flatten();
    // Apps with API keys or tokens refuse over HTTP, before the upgrade: event-stream clients
    // expect 401/403/429, and such apps do not serve pusher-js's retry-forever clients anyway.
    // Boxed: the admission rides along every nested future of the connection's task, and most
    // connections (pusher-js) have none.
    let admission = match state.apps.by_key(&key) {
        Some(app) => match crate::credentials::admit(&state.credentials, &app, query.as_deref(), headers) {
            Ok(admission) => admission.map(Box::new),
            Err(refusal) => return refusal.into_response(),
        },
        None => None,
    };

    // Counted before the upgrade, refused after it (in-band, like every refusal).
    let over_cap = request.extensions().get::<Refused>().map(|refused| refused.0);
    let throttled = match over_cap {
        Some(over) => Some(over.message()),
        None => (!state.rate_limits.allow_connection(crate::rate_limit::peer_ip(&request)))
            .then_some("Too many new connections from your address; retry later"),
    };
    // The socket stays counted against the caps for as long as the WebSocket lives.
    let slot = request.extensions().get::<Arc<ConnectionSlot>>().cloned();
    let on_upgrade = hyper::upgrade::on(&mut request);
    let agreed = Agreed { admission, throttled, deflate };
    tokio::spawn(async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => run_socket(state, upgraded, key, query, agreed).await,
            Err(error) => tracing::debug!(%error, "WebSocket upgrade did not complete"),
        }
    });
    switching_protocols(accept, deflate)
}

/// What the upgrade request settled for the connection it starts.
struct Agreed {
    /// The credential's hold, for apps with API keys or tokens.
    admission: Option<Box<Admission>>,
    /// Over a socket cap or rate limit: refused in-band once upgraded.
    throttled: Option<&'static str>,
    /// permessage-deflate, when the client offered it and the server allows it.
    deflate: Option<deflate::Agreement>,
}

/// The permessage-deflate offer this transport accepts, if the client made one. The tungstenite
/// comparison transport does its own framing and speaks no extension.
fn offered_deflate(headers: &HeaderMap) -> Option<deflate::Agreement> {
    if cfg!(feature = "tungstenite") {
        return None;
    }
    let offers = headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS).iter().filter_map(|v| v.to_str().ok());
    deflate::negotiate(offers)
}

/// Why an upgrade request is not a WebSocket handshake plexus accepts (RFC 6455 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandshakeRefusal {
    NotWebSocket,
    WrongVersion,
    BadKey,
}

impl HandshakeRefusal {
    fn into_response(self) -> Response<Body> {
        match self {
            HandshakeRefusal::NotWebSocket => {
                plain(StatusCode::UPGRADE_REQUIRED, "this endpoint speaks WebSocket (Pusher protocol 7)")
            }
            // RFC 6455 §4.4: say which version we speak, so a client can retry with it.
            HandshakeRefusal::WrongVersion => Response::builder()
                .status(StatusCode::UPGRADE_REQUIRED)
                .header(header::SEC_WEBSOCKET_VERSION, "13")
                .body(Body::from("Sec-WebSocket-Version must be 13"))
                .expect("static response is valid"),
            HandshakeRefusal::BadKey => {
                plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455 §4.1)")
            }
        }
    }
}

/// Checks an upgrade request's headers; returns the `Sec-WebSocket-Accept` value.
fn handshake(headers: &HeaderMap) -> Result<String, HandshakeRefusal> {
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(HandshakeRefusal::NotWebSocket);
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(HandshakeRefusal::WrongVersion);
    }
    let Some(client_key) =
        headers.get(header::SEC_WEBSOCKET_KEY).filter(|key| is_websocket_key(key.as_bytes()))
    else {
        return Err(HandshakeRefusal::BadKey);
    };
    let mut sha = Sha1::new();
    sha.update(client_key.as_bytes());
    sha.update(WEBSOCKET_GUID.as_bytes());
    Ok(base64::engine::general_purpose::STANDARD.encode(sha.finalize()))
}

fn switching_protocols(accept: String, deflate: Option<deflate::Agreement>) -> Response<Body> {
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(agreement) = deflate {
        response = response.header(header::SEC_WEBSOCKET_EXTENSIONS, agreement.response_header());
    }
    response.body(Body::empty()).expect("upgrade response is valid")
}

/// Hands the upgraded socket to the configured transport.
async fn run_socket(
    state: Arc<ServerState>,
    upgraded: hyper::upgrade::Upgraded,
    key: String,
    query: Option<String>,
    agreed: Agreed,
) {
    #[cfg(feature = "tungstenite")]
    let (reader, writer) = tungstenite::split(upgraded, state.config.max_frame_bytes).await;
    #[cfg(not(feature = "tungstenite"))]
    let (reader, writer) =
        shared_frames::split(upgraded, state.config.max_frame_bytes, agreed.deflate.is_some());
    // The connection is set up synchronously and only its loop is awaited here, so the session
    // and the reader are stored once in the task (async fn arguments and awaited values would
    // each keep a copy: see BENCHMARKS.md, memory per connection).
    match start_connection(&state, reader, writer, &key, query.as_deref(), agreed) {
        Ok(serve) => serve.await,
        Err(refused) => {
            let (writer, code, message) = *refused;
            // Boxed: refusals are rare, and inline they would enlarge every connection's task.
            Box::pin(refuse(writer, code, &message)).await
        }
    }
}

/// Why a connection is refused before it starts, in the digest's order.
fn refusal(
    state: &ServerState,
    key: &str,
    query: Option<&str>,
) -> Result<Arc<plexus_core::App>, (CloseCode, String)> {
    if state.is_shutting_down() {
        return Err((CloseCode::ReconnectImmediately, "Server is shutting down; reconnect".into()));
    }
    let Some(app) = state.apps.by_key(key) else {
        return Err((
            CloseCode::AppNotFound,
            format!("App key {key} does not exist on this server. Check the key your client uses."),
        ));
    };
    if !app.enabled {
        return Err((CloseCode::AppDisabled, "App is disabled".into()));
    }
    let protocol = query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == "protocol")
        .map(|(_, v)| v.into_owned());
    match protocol.as_deref().map(str::parse::<u32>) {
        None if state.config.require_protocol_version => {
            return Err((
                CloseCode::NoProtocolVersion,
                "No protocol version supplied; use protocol=7".into(),
            ));
        }
        None | Some(Ok(5..=7)) => {}
        Some(Ok(v)) => {
            return Err((
                CloseCode::UnsupportedProtocolVersion,
                format!("Unsupported protocol version {v}; this server speaks 7"),
            ))
        }
        Some(Err(_)) => {
            return Err((CloseCode::InvalidVersionFormat, "Invalid protocol version format".into()))
        }
    }
    Ok(app)
}

/// One message from the client, as the transport delivers it.
#[derive(Debug)]
pub enum Incoming<P> {
    Text(P),
    Binary(P),
    /// The client closed (the transport has queued or sent its close reply).
    Close,
    /// A control frame or continuation the transport handled itself.
    Ignored,
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadFault {
    /// A message over `max_frame_bytes`: close 1009.
    TooLarge,
    /// Text that is not UTF-8: close 1007.
    InvalidUtf8,
    /// Any other violation of RFC 6455: close 1002.
    Protocol(String),
    /// The peer went away or the socket failed.
    Gone,
}

/// The receiving half of a client socket.
pub trait MessageReader: Send + 'static {
    type Payload: std::ops::Deref<Target = [u8]> + Send;

    /// The next message. `connection` receives what the WebSocket layer owes the peer (pongs,
    /// the close echo) so it stays ordered with everything else queued.
    fn next(
        &mut self,
        connection: &Connection,
    ) -> impl std::future::Future<Output = Result<Incoming<Self::Payload>, ReadFault>> + Send;
}

/// The sending half of a client socket. Frames arrive complete (header included), encoded once
/// and shared by every recipient.
pub trait FrameWriter: Send + 'static {
    /// Writes every frame of a batch and flushes once.
    fn write_batch(
        &mut self,
        frames: &[Bytes],
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    /// Sends a close frame with `code` (when given), then shuts the socket's write side.
    fn finish(
        &mut self,
        close: Option<(u16, &str)>,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
}

async fn refuse<W: FrameWriter>(mut write: W, code: CloseCode, message: &str) {
    let error = [codec::error(Some(code.code()), message, None)];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        write.write_batch(&error).await?;
        write.finish(Some((code.code(), message))).await
    })
    .await;
}

fn count_refusal(code: CloseCode) {
    metrics::counter!("plexus_connections_refused_total", "code" => code.code().to_string()).increment(1);
}

/// A connection refused before it started: the writer to send the refusal on, and why.
type Refusal<W> = Box<(W, CloseCode, String)>;

/// Starts one connection: refusal checks, the session and its admission, then the socket loop
/// to await (the reader there, the writer in its own task), or the refusal to send.
fn start_connection<R: MessageReader, W: FrameWriter>(
    state: &ServerState,
    reader: R,
    write: W,
    key: &str,
    query: Option<&str>,
    agreed: Agreed,
) -> Result<impl std::future::Future<Output = ()> + Send, Refusal<W>> {
    let Agreed { admission, throttled, deflate } = agreed;
    let config = &state.config;
    let checked = match throttled {
        Some(reason) => Err((CloseCode::OverCapacity, reason.to_owned())),
        None => refusal(state, key, query),
    };
    let app = match checked {
        Ok(app) => app,
        Err((code, message)) => {
            tracing::debug!(code = code.code(), %message, "connection refused");
            count_refusal(code);
            return Err(Box::new((write, code, message)));
        }
    };
    let hub = state.hubs.hub(&app.id);
    let heartbeat = heartbeat_of(config, &app, admission.is_some());
    let started = Session::start(app, hub.clone(), config.session_limits(), heartbeat, Instant::now());
    let mut session = match started {
        Ok(session) => session,
        Err(error) => {
            count_refusal(CloseCode::OverConnectionQuota);
            return Err(Box::new((write, CloseCode::OverConnectionQuota, error.to_string())));
        }
    };
    // Held (the key's connection counted, the token's expiry armed) as long as the session.
    let admission = admission.map(|mut admission| {
        session.restrict_to(admission.grant.clone(), admission.user_id.clone());
        admission.attach(session.connection());
        admission
    });
    if let Some(extension) = state.extension() {
        let connect =
            ExtensionConnect { app: session.app(), hub: &hub, connection: session.connection(), query };
        let extension = extension.connect(connect);
        session.set_extension(extension);
    }
    let connection = session.connection().clone();
    if deflate.is_some_and(|agreement| agreement.compresses_to_client()) {
        connection.compress_events_from(config.compression_min_bytes);
    }
    let endpoint = PusherEndpoint {
        session,
        _admission: admission,
        frames_received: metrics::counter!("plexus_ws_frames_received_total"),
        bytes_received: metrics::counter!("plexus_ws_bytes_received_total"),
    };
    Ok(socket_loop(reader, write, connection, Duration::from_secs(config.write_timeout_secs), endpoint))
}

/// What a socket serves, as [`socket_loop`] drives it: the Pusher protocol ([`PusherEndpoint`])
/// or the conformance echo ([`echo`]). Nothing here sees the socket or reads the clock itself.
trait Endpoint: Send {
    /// Any frame arrived (the client is alive).
    fn heard(&mut self, now: Instant);
    /// A complete data message.
    fn on_message(&mut self, text: bool, payload: &[u8], now: Instant);
    /// When the endpoint next wants [`Endpoint::on_wake`].
    fn wake_at(&self) -> Instant;
    fn on_wake(&mut self, now: Instant);
}

/// The Pusher protocol on a socket: a [`Session`], which also keeps the connection's clocks.
struct PusherEndpoint {
    session: Session,
    /// The credential's hold (its key's connection count, its token's expiry), released with
    /// the session.
    _admission: Option<Box<Admission>>,
    frames_received: metrics::Counter,
    bytes_received: metrics::Counter,
}

impl Endpoint for PusherEndpoint {
    fn heard(&mut self, now: Instant) {
        self.session.heard(now);
        self.frames_received.increment(1);
    }

    fn on_message(&mut self, _text: bool, payload: &[u8], now: Instant) {
        self.bytes_received.increment(payload.len() as u64);
        match std::str::from_utf8(payload) {
            Ok(text) => self.session.handle_text(text, now),
            Err(_) => {
                let error = codec::error(None, "binary frames must hold UTF-8 JSON text", None);
                self.session.connection().outbound.push(error);
            }
        }
    }

    fn wake_at(&self) -> Instant {
        self.session.next_deadline().unwrap_or_else(far_future)
    }

    fn on_wake(&mut self, now: Instant) {
        self.session.on_deadline(now);
    }
}

/// Drives one socket: the reader here, the writer in its own task, the endpoint's deadlines on
/// one timer, and the close handshake at the end, however the endpoint or the client ends it.
///
/// A function returning an `async move` block rather than an `async fn`: an async fn keeps its
/// arguments twice in its future (once as passed, once as locals), and the endpoint and reader
/// are the largest part of every connection's task (measured: 5,579 → 4,583 bytes per idle
/// connection together with `start_connection`).
#[allow(clippy::manual_async_fn)]
fn socket_loop<R: MessageReader, W: FrameWriter, E: Endpoint>(
    mut reader: R,
    write: W,
    connection: Arc<Connection>,
    write_timeout: Duration,
    mut endpoint: E,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let mut writer = tokio::spawn(write_loop(connection.clone(), write, write_timeout));
        // However this function ends — a return, a read error or a panic unwinding through it — the
        // writer stops and releases its half of the socket.
        let _writer_guard = WriterGuard { connection: connection.clone(), writer: writer.abort_handle() };
        // One timer for every deadline, re-armed lazily: hearing from the client only moves the
        // deadline later, which the timer discovers when it fires (no timer work per frame).
        let timer = tokio::time::sleep_until(endpoint.wake_at());
        tokio::pin!(timer);
        let mut writer_done = false;
        loop {
            tokio::select! {
                biased;
                _ = &mut writer => {
                    writer_done = true;
                    break;
                }
                () = &mut timer => {
                    endpoint.on_wake(Instant::now());
                    timer.as_mut().reset(endpoint.wake_at());
                }
                read = reader.next(&connection) => match read {
                    Ok(incoming) => {
                        endpoint.heard(Instant::now());
                        match incoming {
                            Incoming::Text(payload) => endpoint.on_message(true, &payload, Instant::now()),
                            Incoming::Binary(payload) => endpoint.on_message(false, &payload, Instant::now()),
                            Incoming::Close => break,
                            Incoming::Ignored => {}
                        }
                    }
                    Err(fault) => {
                        close_for_read_fault(&connection, fault);
                        break;
                    }
                },
            }
        }
        // Leave the channels before the socket goes, so no one fans out to a dead queue.
        drop(endpoint);
        if writer_done {
            // We closed: give the client a moment to answer with its close frame, so the socket ends
            // with FIN rather than a reset that could discard our last frames on its side.
            timer.as_mut().reset(Instant::now() + CLOSE_LINGER);
            loop {
                tokio::select! {
                    () = &mut timer => break,
                    read = reader.next(&connection) => {
                        if matches!(read, Ok(Incoming::Close) | Err(_)) {
                            break;
                        }
                    }
                }
            }
        } else {
            connection.outbound.end();
            timer.as_mut().reset(Instant::now() + CLOSE_LINGER);
            tokio::select! {
                () = &mut timer => {}
                _ = &mut writer => {}
            }
        }
    }
}

/// Stops a connection's writer task when its reader stops, whatever stopped it. Without it a
/// reader that panicked left the writer waiting on the queue forever, holding the socket open
/// (CLOSE-WAIT) after the client had gone.
struct WriterGuard {
    connection: Arc<Connection>,
    writer: tokio::task::AbortHandle,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.connection.outbound.abort();
        self.writer.abort();
    }
}

/// How long a connection may be silent before we ping it, and how long after that ping before
/// we give up on it (close 4201). Connections with an API key or token default to 30 s / 90 s
/// of silence in all (event-stream consumers behind proxies); Pusher connections to the server's
/// `activity_timeout_secs` and `pong_timeout_secs`; an app's `heartbeat_*` settings override both.
fn heartbeat_of(config: &crate::config::ServerConfig, app: &plexus_core::App, keyed: bool) -> Heartbeat {
    let (interval, timeout) = if keyed {
        (30, 90)
    } else {
        (config.activity_timeout_secs, config.activity_timeout_secs + config.pong_timeout_secs)
    };
    let interval = app.heartbeat_interval_secs.unwrap_or(interval).max(1);
    let timeout = app.heartbeat_timeout_secs.unwrap_or(timeout);
    Heartbeat {
        interval: Duration::from_secs(interval),
        // App::validate keeps a configured timeout above the interval; a default timeout
        // under a configured interval still leaves the client a second to answer.
        pong_grace: Duration::from_secs(timeout.saturating_sub(interval).max(1)),
    }
}

/// A deadline that never comes: endpoints with nothing to do on a timer.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// Malformed input ends the connection with the standard WebSocket code for the fault.
fn close_for_read_fault(connection: &Connection, fault: ReadFault) {
    let (code, message) = match fault {
        ReadFault::TooLarge => (1009, "message too large".to_owned()),
        ReadFault::InvalidUtf8 => (1007, "text frame is not valid UTF-8".to_owned()),
        ReadFault::Protocol(reason) => (1002, format!("WebSocket protocol error: {reason}")),
        ReadFault::Gone => {
            connection.outbound.abort();
            return;
        }
    };
    tracing::debug!(socket_id = %connection.socket_id, %message, "closing connection after a malformed frame");
    connection.outbound.fail(code, &message);
}

async fn write_loop<W: FrameWriter>(connection: Arc<Connection>, mut write: W, write_timeout: Duration) {
    let mut batch: Vec<Bytes> = Vec::new();
    let bytes_sent = metrics::counter!("plexus_ws_bytes_sent_total");
    loop {
        let drained = connection.outbound.drain_into(&mut batch).await;
        bytes_sent.increment(batch.iter().map(|f| f.len() as u64).sum());
        let written = tokio::time::timeout(write_timeout, write.write_batch(&batch)).await;
        batch.clear();
        if batch.capacity() > 256 {
            // Keep idle connections small after a burst.
            batch = Vec::new();
        }
        if !matches!(written, Ok(Ok(()))) {
            connection.outbound.abort();
            return;
        }
        let close = match &drained {
            Drained::Frames => continue,
            Drained::Close(reason) => Some((reason.code, reason.message.as_str())),
            Drained::End => None,
        };
        let _ = tokio::time::timeout(write_timeout, write.finish(close)).await;
        return;
    }
}
