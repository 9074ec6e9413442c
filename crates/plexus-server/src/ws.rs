//! The WebSocket endpoint `/app/{key}`: upgrade, refusals in-band, and each connection's reader
//! and writer around a core [`Session`].
//!
//! The upgrade always completes, even for a request that will be refused, so the refusal reaches
//! pusher-js as a `pusher:error` and a close code it understands (a failed HTTP upgrade looks like
//! a network fault, and pusher-js would retry forever).
//!
//! Per connection there are two tasks. The reader decodes client frames (with `fastwebsockets`,
//! which unmasks, reassembles fragments and validates UTF-8), feeds them to the session and keeps
//! the activity timer. The writer drains the connection's outbound queue and hands the already
//! framed, shared bytes to the kernel in one vectored write per batch; it never frames or copies a
//! broadcast itself.

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Request, Response, StatusCode};
use base64::Engine;
use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Role, WebSocketError};
use hyper_util::rt::TokioIo;
use plexus_core::outbound::Drained;
use plexus_core::{Connection, Session};
use plexus_protocol::wsframe::{self, Opcode};
use plexus_protocol::{codec, CloseCode};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::ServerState;

const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// How long a closing connection waits for the client's close reply before dropping the socket.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

fn plain(status: StatusCode, message: &'static str) -> Response<Body> {
    Response::builder().status(status).body(Body::from(message)).expect("static response is valid")
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
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return plain(StatusCode::UPGRADE_REQUIRED, "this endpoint speaks WebSocket (Pusher protocol 7)");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13");
    }
    let Some(client_key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key header is missing");
    };
    let mut sha = Sha1::new();
    sha.update(client_key.as_bytes());
    sha.update(WEBSOCKET_GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());

    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => run_socket(state, upgraded, key, query).await,
            Err(error) => tracing::debug!(%error, "WebSocket upgrade did not complete"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .expect("upgrade response is valid")
}

/// Splits the upgraded connection. Plain TCP splits into owned halves without a lock; other
/// transports fall back to a locked split.
async fn run_socket(
    state: Arc<ServerState>,
    upgraded: hyper::upgrade::Upgraded,
    key: String,
    query: Option<String>,
) {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (read, write) = parts.io.into_inner().into_split();
            // Bytes the HTTP layer read past the handshake belong to the first frames.
            let read = tokio::io::AsyncReadExt::chain(std::io::Cursor::new(parts.read_buf), read);
            run_connection(state, read, write, &key, query.as_deref()).await;
        }
        Err(upgraded) => {
            let (read, write) = tokio::io::split(TokioIo::new(upgraded));
            run_connection(state, read, write, &key, query.as_deref()).await;
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

async fn refuse<W: AsyncWrite + Unpin>(mut write: W, code: CloseCode, message: &str) {
    let frames = [codec::error(Some(code.code()), message, None), wsframe::close_frame(code.code(), message)];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        write_frames(&mut write, &frames).await?;
        write.shutdown().await
    })
    .await;
}

async fn run_connection<R, W>(state: Arc<ServerState>, read: R, write: W, key: &str, query: Option<&str>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let config = &state.config;
    let app = match refusal(&state, key, query) {
        Ok(app) => app,
        Err((code, message)) => {
            tracing::debug!(code = code.code(), %message, "connection refused");
            metrics::counter!("plexus_connections_refused_total", "code" => code.code().to_string())
                .increment(1);
            return refuse(write, code, &message).await;
        }
    };
    let hub = state.hubs.hub(&app.id);
    let mut session =
        match Session::start(app, hub, config.max_queued_bytes, config.activity_timeout_secs, Instant::now())
        {
            Ok(session) => session,
            Err(error) => return refuse(write, CloseCode::OverConnectionQuota, &error.to_string()).await,
        };
    let connection = session.connection().clone();
    let write_timeout = Duration::from_secs(config.write_timeout_secs);
    let mut writer = tokio::spawn(write_loop(connection.clone(), write, write_timeout));
    let frames_received = metrics::counter!("plexus_ws_frames_received_total");

    let (mut ws_read, _) = fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    ws_read.set_max_message_size(config.max_frame_bytes);
    let mut ws_read = FragmentCollectorRead::new(ws_read);
    let idle = Duration::from_secs(config.activity_timeout_secs);
    let pong_grace = Duration::from_secs(config.pong_timeout_secs);
    let mut awaiting_pong = false;
    // Control replies the WebSocket layer owes the client (pong, close echo) go through the queue
    // so they stay ordered with everything else.
    let mut obligated = |frame: Frame<'_>| {
        match frame.opcode {
            OpCode::Pong => {
                connection.outbound.push(wsframe::frame(Opcode::Pong, &frame.payload));
            }
            OpCode::Close => {
                connection.outbound.push(wsframe::frame(Opcode::Close, &frame.payload));
                connection.outbound.end();
            }
            _ => {}
        }
        std::future::ready(Ok::<(), std::io::Error>(()))
    };

    let mut writer_done = false;
    loop {
        let wait = if awaiting_pong { pong_grace } else { idle };
        let read = tokio::select! {
            biased;
            _ = &mut writer => {
                writer_done = true;
                break;
            }
            read = tokio::time::timeout(wait, ws_read.read_frame(&mut obligated)) => read,
        };
        match read {
            Err(_elapsed) if !awaiting_pong => {
                connection.outbound.push(codec::ping());
                awaiting_pong = true;
            }
            Err(_elapsed) => {
                connection.outbound.close(CloseCode::PongNotReceived, "Pong reply not received in time");
                awaiting_pong = false;
            }
            Ok(Ok(frame)) => {
                awaiting_pong = false;
                frames_received.increment(1);
                match frame.opcode {
                    OpCode::Text | OpCode::Binary => match std::str::from_utf8(&frame.payload) {
                        Ok(text) => session.handle_text(text, Instant::now()),
                        Err(_) => {
                            connection.outbound.push(codec::error(
                                None,
                                "binary frames must hold UTF-8 JSON text",
                                None,
                            ));
                        }
                    },
                    OpCode::Close => break,
                    _ => {}
                }
            }
            Ok(Err(error)) => {
                close_for_read_error(&connection, &error);
                break;
            }
        }
    }
    // Leave the channels before the socket goes, so no one fans out to a dead queue.
    drop(session);
    if writer_done {
        // We closed: give the client a moment to answer with its close frame, so the socket ends
        // with FIN rather than a reset that could discard our last frames on its side.
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Ok(frame) = ws_read.read_frame(&mut obligated).await {
                if frame.opcode == OpCode::Close {
                    break;
                }
            }
        })
        .await;
    } else {
        connection.outbound.abort();
        let _ = tokio::time::timeout(CLOSE_LINGER, writer).await;
    }
}

/// Malformed input ends the connection with the standard WebSocket code for the fault.
fn close_for_read_error(connection: &Connection, error: &WebSocketError) {
    let (code, message) = match error {
        WebSocketError::FrameTooLarge => (1009, "message too large"),
        WebSocketError::InvalidUTF8 => (1007, "text frame is not valid UTF-8"),
        WebSocketError::UnexpectedEOF | WebSocketError::IoError(_) | WebSocketError::ConnectionClosed => {
            connection.outbound.abort();
            return;
        }
        _ => (1002, "WebSocket protocol error"),
    };
    tracing::debug!(socket_id = %connection.socket_id, %error, "closing connection after a malformed frame");
    connection.outbound.close_with_code(code, message);
}

async fn write_loop<W: AsyncWrite + Unpin>(
    connection: Arc<Connection>,
    mut write: W,
    write_timeout: Duration,
) {
    let mut batch: Vec<Bytes> = Vec::new();
    let bytes_sent = metrics::counter!("plexus_ws_bytes_sent_total");
    loop {
        let drained = connection.outbound.drain_into(&mut batch).await;
        bytes_sent.increment(batch.iter().map(|f| f.len() as u64).sum());
        let written = tokio::time::timeout(write_timeout, write_frames(&mut write, &batch)).await;
        batch.clear();
        if batch.capacity() > 256 {
            // Keep idle connections small after a burst.
            batch = Vec::new();
        }
        if !matches!(written, Ok(Ok(()))) {
            connection.outbound.abort();
            return;
        }
        match drained {
            Drained::Frames => {}
            Drained::Close(reason) => {
                let close = wsframe::close_frame(reason.code, &reason.message);
                let _ = tokio::time::timeout(write_timeout, write_frames(&mut write, &[close])).await;
                let _ = tokio::time::timeout(write_timeout, write.shutdown()).await;
                return;
            }
            Drained::End => {
                let _ = tokio::time::timeout(write_timeout, write.shutdown()).await;
                return;
            }
        }
    }
}

/// Writes every frame with as few syscalls as the kernel allows (up to 64 frames per call).
async fn write_frames<W: AsyncWrite + Unpin>(write: &mut W, frames: &[Bytes]) -> std::io::Result<()> {
    const MAX_SLICES: usize = 64;
    let (mut index, mut offset) = (0, 0);
    while index < frames.len() {
        let count = (frames.len() - index).min(MAX_SLICES);
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        slices[0] = IoSlice::new(&frames[index][offset..]);
        for (slot, frame) in slices[1..count].iter_mut().zip(&frames[index + 1..]) {
            *slot = IoSlice::new(frame);
        }
        let mut written = write.write_vectored(&slices[..count]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let left = frames[index].len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
    write.flush().await
}
