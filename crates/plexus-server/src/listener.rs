//! The accept loop's bounds: how many sockets plexus holds, and how long each phase of an HTTP
//! connection may take before a byte of it is trusted.
//!
//! Every accepted socket takes a [`ConnectionSlot`] from [`OpenConnections`] (a global cap, by
//! default just under the process's open-file limit, and an optional cap per client address).
//! The slot rides in each request's extensions and moves into a WebSocket's task after the
//! upgrade, so a socket counts until it is really closed. A socket over a cap is still answered,
//! briefly and cheaply: `503` with `Retry-After` on the HTTP API, and an in-band Pusher `4100` on
//! the WebSocket endpoint (pusher-js backs off and retries; a failed upgrade would look like a
//! network fault to it). Health endpoints are always served, so a full node is not restarted by
//! its liveness probe. When even the room for refusals is used up, the socket is closed at once.
//!
//! Timeouts, all from `[server]`: a new connection must complete its TLS handshake and its first
//! request head within `request_header_timeout_secs`; an idle keep-alive connection (and the head
//! of each later request) gets `keep_alive_timeout_secs`; a write that makes no progress for
//! `write_timeout_secs` ends the connection ([`StallGuard`]), which also ends SSE streams whose
//! reader stopped reading. The WebSocket transport keeps its own write timeout and drops the
//! guard at the upgrade.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Sleep;

use crate::config::ServerConfig;
use crate::tls;

/// Why a socket over a cap is being refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverCap {
    /// `[server] max_connections` sockets are open.
    Total,
    /// `[server] max_connections_per_ip` sockets are open from this address.
    PerIp,
}

impl OverCap {
    fn label(self) -> &'static str {
        match self {
            OverCap::Total => "max_connections",
            OverCap::PerIp => "max_connections_per_ip",
        }
    }

    /// The reason a refused client is told.
    pub fn message(self) -> &'static str {
        match self {
            OverCap::Total => "server is at its connection limit; retry later",
            OverCap::PerIp => "too many connections from your address; retry later",
        }
    }
}

/// Open sockets, against the caps.
#[derive(Debug)]
pub struct OpenConnections {
    max_total: usize,
    max_per_ip: u32,
    open: AtomicUsize,
    /// Sockets being refused right now; bounded so refusing cannot use the room it protects.
    refusing: AtomicUsize,
    max_refusing: usize,
    /// Only kept when a per-address cap is set.
    per_ip: Option<Mutex<HashMap<IpAddr, u32>>>,
}

/// What the accept loop does with a new socket.
#[derive(Debug)]
pub enum Admit {
    Serve(Arc<ConnectionSlot>),
    /// Answer with a refusal, then close; the slot counts the refusal itself.
    Refuse(OverCap, Arc<ConnectionSlot>),
    /// No room even to refuse: close at once.
    Close,
}

/// One counted socket; dropping the last reference releases it.
#[derive(Debug)]
pub struct ConnectionSlot {
    open: Arc<OpenConnections>,
    ip: IpAddr,
    refusing: bool,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if self.refusing {
            self.open.refusing.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.open.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(per_ip) = &self.open.per_ip {
            let mut map = per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = map.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&self.ip);
                }
            }
        }
        metrics::gauge!("plexus_open_sockets").decrement(1.0);
    }
}

/// The process's soft limit on open files, where the platform tells it.
fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        limit.current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Raises the soft open-file limit to the hard one (as Go's runtime does at start): a server
/// that holds one file per client should not stop at a shell's default of 1,024.
pub fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
            if let Err(error) = setrlimit(Resource::Nofile, raised) {
                tracing::debug!(%error, "could not raise the open-file limit");
            }
        }
    }
}

/// The default socket cap: the open-file limit less room for everything else the process opens
/// (listeners, the webhook store, bus and database connections, webhook requests).
pub fn default_max_connections() -> usize {
    match open_file_limit() {
        Some(limit) => {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(1 << 24);
            let reserve = (limit / 32).clamp(64, 1024);
            limit.saturating_sub(reserve).max(1)
        }
        None => 10_000,
    }
}

impl OpenConnections {
    pub fn new(config: &ServerConfig) -> Arc<OpenConnections> {
        let max_total = config.max_connections.unwrap_or_else(default_max_connections);
        Arc::new(OpenConnections {
            max_total,
            max_per_ip: config.max_connections_per_ip,
            open: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            max_refusing: (max_total / 32).clamp(16, 512),
            per_ip: (config.max_connections_per_ip > 0).then(|| Mutex::new(HashMap::new())),
        })
    }

    /// The global cap in force.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Sockets open now (refusals not counted).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts a new socket from `ip`, or says how to refuse it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Admit {
        let over = if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_total {
            self.open.fetch_sub(1, Ordering::Relaxed);
            Some(OverCap::Total)
        } else if let Some(per_ip) = &self.per_ip {
            let mut map = per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let count = map.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                self.open.fetch_sub(1, Ordering::Relaxed);
                Some(OverCap::PerIp)
            } else {
                *count += 1;
                None
            }
        } else {
            None
        };
        let Some(over) = over else {
            metrics::gauge!("plexus_open_sockets").increment(1.0);
            return Admit::Serve(Arc::new(ConnectionSlot { open: self.clone(), ip, refusing: false }));
        };
        metrics::counter!("plexus_sockets_refused_total", "limit" => over.label()).increment(1);
        if self.refusing.fetch_add(1, Ordering::Relaxed) >= self.max_refusing {
            self.refusing.fetch_sub(1, Ordering::Relaxed);
            return Admit::Close;
        }
        Admit::Refuse(over, Arc::new(ConnectionSlot { open: self.clone(), ip, refusing: true }))
    }
}

/// Marks every request of a socket that is over a cap.
#[derive(Debug, Clone, Copy)]
pub struct Refused(pub OverCap);

/// Answers requests on a socket over a cap with `503` and `Retry-After`, except the WebSocket
/// endpoint (refused in-band by `ws::upgrade`) and the health endpoints (always served).
pub async fn refuse_over_cap(request: Request, next: Next) -> Response {
    let Some(Refused(over)) = request.extensions().get::<Refused>().copied() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if path.starts_with("/app/") || matches!(path, "/" | "/up" | "/health" | "/ready") {
        return next.run(request).await;
    }
    let mut response =
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": over.message() }))).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    // Hands the socket back: a refused client must not keep it alive for more refusals.
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// RFC 9112 §3.2: an HTTP/1.1 request must carry exactly one `Host` header; without one, or
/// with two, it is answered 400 (two disagreeing hosts are how requests get smuggled past
/// proxies that route by one and log the other).
pub async fn require_one_host(request: Request, next: Next) -> Response {
    let hosts = request.headers().get_all(header::HOST).iter().count();
    let needs_host = request.version() == axum::http::Version::HTTP_11;
    if hosts > 1 || (needs_host && hosts == 0) {
        let message = if hosts > 1 { "more than one Host header" } else { "missing Host header" };
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response();
    }
    next.run(request).await
}

/// The phases' time limits of one HTTP connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TLS handshake and the first request head.
    pub first_request: Duration,
    /// Idle between requests, and each later request head.
    pub keep_alive: Duration,
    /// A write that makes no progress this long ends the connection.
    pub write: Duration,
}

impl Timeouts {
    pub fn of(config: &ServerConfig) -> Timeouts {
        Timeouts {
            first_request: Duration::from_secs(config.request_header_timeout_secs),
            keep_alive: Duration::from_secs(config.keep_alive_timeout_secs),
            write: Duration::from_secs(config.write_timeout_secs),
        }
    }
}

/// A socket whose writes fail with `TimedOut` once one has made no progress for `timeout`, so a
/// peer that stops reading cannot pin a connection (and the kernel buffers behind it) forever.
/// The timer exists only while a write is waiting.
#[derive(Debug)]
pub struct StallGuard<IO> {
    io: IO,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<IO> StallGuard<IO> {
    pub fn new(io: IO, timeout: Duration) -> Self {
        StallGuard { io, timeout, stalled: None }
    }

    pub fn into_inner(self) -> IO {
        self.io
    }

    fn waited<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalled = None;
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "peer stopped reading: write stalled past write_timeout_secs",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for StallGuard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StallGuard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.waited(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.waited(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.waited(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_shutdown(cx);
        this.waited(cx, poll)
    }
}

/// A plain socket as the HTTP layer sees it; the WebSocket transport unwraps it at the upgrade.
pub type PlainIo = StallGuard<TcpStream>;

/// Serves one HTTP/1.1 connection (API requests, or the handshake of a WebSocket). hyper's http1
/// connection is used directly, not an auto-detecting one, so an upgraded plain socket is still
/// the `TcpStream` and the WebSocket transport can split it into lock-free owned halves.
/// The peer's address and the socket's slot ride in each request's extensions.
fn serve_http<IO>(
    io: IO,
    peer: SocketAddr,
    app: Router,
    mut stop: watch::Receiver<bool>,
    slot: Arc<ConnectionSlot>,
    refused: Option<OverCap>,
    timeouts: Timeouts,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let first_request_seen = Arc::new(AtomicBool::new(false));
        let seen = first_request_seen.clone();
        let service =
            hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                seen.store(true, Ordering::Relaxed);
                let extensions = request.extensions_mut();
                extensions.insert(axum::extract::ConnectInfo(peer));
                extensions.insert(slot.clone());
                if let Some(over) = refused {
                    extensions.insert(Refused(over));
                }
                let mut app = app.clone();
                async move { tower_service::Service::call(&mut app, request).await }
            });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            // hyper starts this clock whenever it waits for a request head, so it bounds both an
            // idle keep-alive connection and a head trickled in on it.
            .header_read_timeout(timeouts.keep_alive)
            .serve_connection(hyper_util::rt::TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(connection);
        let first_request_deadline = tokio::time::sleep(timeouts.first_request);
        tokio::pin!(first_request_deadline);
        let mut waiting_for_first_request = true;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "HTTP connection ended with an error");
                    }
                    return;
                }
                () = &mut first_request_deadline, if waiting_for_first_request => {
                    waiting_for_first_request = false;
                    if !first_request_seen.load(Ordering::Relaxed) {
                        tracing::debug!(%peer, "no complete request head within request_header_timeout_secs; closing");
                        metrics::counter!("plexus_http_timeouts_total", "phase" => "request_header").increment(1);
                        return;
                    }
                }
                _ = stop.wait_for(|stopping| *stopping) => break,
            }
        }
        connection.as_mut().graceful_shutdown();
        let _ = connection.await;
    });
}

/// Serves one accepted TCP connection, in TLS when the listener has it.
fn serve_accepted(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<&Arc<tls::Tls>>,
    app: Router,
    stop: watch::Receiver<bool>,
    open: &Arc<OpenConnections>,
    timeouts: Timeouts,
) {
    let (slot, refused) = match open.admit(peer.ip()) {
        Admit::Serve(slot) => (slot, None),
        Admit::Refuse(over, slot) => (slot, Some(over)),
        Admit::Close => return,
    };
    // Events are small and latency matters more than packet count.
    let _ = tcp.set_nodelay(true);
    match tls {
        None => serve_http(StallGuard::new(tcp, timeouts.write), peer, app, stop, slot, refused, timeouts),
        Some(tls) => {
            let tls = tls.clone();
            // The handshake runs in its own task so a slow client never holds up the accept loop.
            tokio::spawn(async move {
                match tokio::time::timeout(timeouts.first_request, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_http(
                        StallGuard::new(stream, timeouts.write),
                        peer,
                        app,
                        stop,
                        slot,
                        refused,
                        timeouts,
                    ),
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => {
                        metrics::counter!("plexus_http_timeouts_total", "phase" => "tls_handshake")
                            .increment(1);
                        tracing::debug!(%peer, "TLS handshake not done within request_header_timeout_secs");
                    }
                }
            });
        }
    }
}

/// Binds `host:port` with a listen backlog sized for connect storms.
pub fn bind(config: &ServerConfig) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = format!("{}:{}", config.host, config.port).parse().or_else(|_| {
        std::net::ToSocketAddrs::to_socket_addrs(&(config.host.as_str(), config.port))?.next().ok_or_else(
            || {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("cannot resolve host {:?}", config.host),
                )
            },
        )
    })?;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(config.listen_backlog)
}

/// Accepts until `shutdown` resolves; each socket is counted, bounded and served in its own task.
pub(crate) async fn accept_loop(
    listener: &TcpListener,
    app: Router,
    tls: Option<Arc<tls::Tls>>,
    open: Arc<OpenConnections>,
    timeouts: Timeouts,
    stop: watch::Receiver<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    serve_accepted(tcp, peer, tls.as_ref(), app.clone(), stop.clone(), &open, timeouts)
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves `app` on `listener` with this module's caps and timeouts (and no realtime state),
/// until `shutdown` resolves: for routers that stand alone, such as the conformance echo.
pub async fn serve_router(
    listener: TcpListener,
    app: Router,
    config: &ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (_stop_tx, stop_rx) = watch::channel(false);
    accept_loop(&listener, app, None, OpenConnections::new(config), Timeouts::of(config), stop_rx, shutdown)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max: usize, per_ip: u32) -> ServerConfig {
        ServerConfig { max_connections: Some(max), max_connections_per_ip: per_ip, ..ServerConfig::default() }
    }

    #[test]
    fn slots_count_until_dropped_and_caps_refuse_then_close() {
        let open = OpenConnections::new(&config(2, 0));
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = open.admit(ip);
        let b = open.admit(ip);
        assert!(matches!((&a, &b), (Admit::Serve(_), Admit::Serve(_))));
        assert_eq!(open.open(), 2);
        let refusals: Vec<Admit> = (0..16).map(|_| open.admit(ip)).collect();
        assert!(refusals.iter().all(|r| matches!(r, Admit::Refuse(OverCap::Total, _))));
        assert!(matches!(open.admit(ip), Admit::Close), "no room left even to refuse");
        drop(refusals);
        drop(a);
        assert_eq!(open.open(), 1);
        assert!(matches!(open.admit(ip), Admit::Serve(_)));
    }

    #[test]
    fn the_per_address_cap_counts_each_address_apart() {
        let open = OpenConnections::new(&config(100, 1));
        let (one, two): (IpAddr, IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
        let first = open.admit(one);
        assert!(matches!(first, Admit::Serve(_)));
        assert!(matches!(open.admit(one), Admit::Refuse(OverCap::PerIp, _)));
        assert!(matches!(open.admit(two), Admit::Serve(_)));
        drop(first);
        assert!(matches!(open.admit(one), Admit::Serve(_)), "the address's slot came back");
    }

    #[test]
    fn the_default_cap_leaves_room_below_the_open_file_limit() {
        let cap = default_max_connections();
        if let Some(limit) = open_file_limit() {
            assert!((cap as u64) < limit, "cap {cap} must stay below the limit {limit}");
        }
        assert!(cap >= 1);
    }
}
