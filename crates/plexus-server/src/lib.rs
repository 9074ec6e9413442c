//! The `plexus` server: configuration, the axum router (WebSocket endpoint, Pusher HTTP API,
//! health), and graceful shutdown. Wiring only: realtime rules live in `plexus-core`, wire rules
//! in `plexus-protocol`.
//!
//! [`serve`] runs a server on a bound listener until a shutdown future resolves; `main.rs` adds
//! the CLI and signals, tests call it directly on `127.0.0.1:0`. An application embedding plexus
//! merges [`router`] into its own routes and runs them with [`serve_router`]; a protocol extension
//! (typed channels) is installed with [`ServerState::install_channels`].
//!
//! ```
//! use std::sync::Arc;
//!
//! use plexus_server::config::ServerConfig;
//! use plexus_server::plexus_core::{App, MemoryAppStore};
//! use plexus_server::ServerState;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let apps = MemoryAppStore::new([App::new("app-id", "app-key", "a-secret-of-your-own")])?;
//! let state = ServerState::new(ServerConfig::default(), Arc::new(apps));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let address = listener.local_addr()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(plexus_server::serve(listener, state, async move {
//!     stopped.await.ok();
//! }));
//! // pusher-js connects to ws://{address}/app/app-key; the Pusher HTTP API is under /apps/app-id/.
//! println!("serving on {address}");
//! stop.send(()).ok();
//! server.await??;
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod bridge;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod docs;
pub mod http_api;
pub mod introspect;
pub mod layers;
pub mod listener;
pub mod logging;
pub mod logstream;
pub mod metrics;
pub mod mirror;
pub mod rate_limit;
pub mod request_body;
pub mod sse;
pub mod tls;
pub mod tokens;
pub mod webhooks;
pub mod ws;

/// The crates a server is built from, for an embedder that does not depend on them directly
/// (`plexus-core` is published as `plexus-realtime-core`).
pub use {plexus_core, plexus_protocol};

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use plexus_core::cluster::ClusterNode;
use plexus_core::webhook::{WebhookEvent, WebhookSink};
use plexus_core::{AppStore, ExtensionHandler, Hubs};
use plexus_protocol::CloseCode;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ServerConfig;
use crate::webhooks::WebhookService;

/// Everything a request handler needs.
#[derive(Debug)]
pub struct ServerState {
    pub config: ServerConfig,
    pub apps: Arc<dyn AppStore>,
    pub hubs: Arc<Hubs>,
    /// Webhook delivery, when any app has endpoints.
    pub webhooks: Option<WebhookService>,
    /// This node of a cluster (`[adapter]` other than local).
    pub cluster: Option<Arc<ClusterNode>>,
    /// Live connections admitted with an API key or token: limits, expiry, revocation.
    pub credentials: Arc<credentials::Credentials>,
    /// `[server.rate_limits]`.
    pub rate_limits: rate_limit::RateLimits,
    /// HTTP API request bodies being read, against their byte budget.
    pub request_bodies: request_body::BodyBudget,
    /// Sockets open now, against `[server] max_connections` and `max_connections_per_ip`.
    pub open_sockets: Arc<listener::OpenConnections>,
    /// The protocol extension that gets `plexus:*` frames (typed channels), set once.
    extension: OnceLock<Arc<dyn ExtensionHandler>>,
    /// What [`ServerState::install_channels`] installed, for introspection.
    typed_channels: OnceLock<Vec<plexus_channels::ChannelDescription>>,
    shutting_down: AtomicBool,
}

/// The sink when no app has webhook endpoints: the hub only asks for events an endpoint wants,
/// so nothing reaches it; anything that does is a bug worth seeing in the log.
#[derive(Debug)]
struct NoWebhooks;

impl WebhookSink for NoWebhooks {
    fn submit(&self, app_id: &str, event: WebhookEvent) {
        tracing::debug!(app_id, ?event, "webhook event with no delivery configured");
    }
}

/// Where the hub's webhook events go: the delivery service, or nowhere.
pub fn webhook_sink(webhooks: Option<&WebhookService>) -> Arc<dyn WebhookSink> {
    match webhooks {
        Some(service) => service.dispatcher.clone(),
        None => Arc::new(NoWebhooks),
    }
}

impl ServerState {
    /// A server without webhook delivery.
    pub fn new(config: ServerConfig, apps: Arc<dyn AppStore>) -> Arc<Self> {
        Self::assemble(config, apps, None, None)
    }

    /// A server whose hub reports webhook events to `webhooks`.
    pub fn with_webhooks(
        config: ServerConfig,
        apps: Arc<dyn AppStore>,
        webhooks: WebhookService,
    ) -> Arc<Self> {
        Self::assemble(config, apps, Some(webhooks), None)
    }

    /// A server with optional webhook delivery and cluster membership. A cluster node must have
    /// been made with [`webhook_sink`] of the same `webhooks`; its receive loop is the caller's
    /// to spawn (see [`cluster::start`]).
    pub fn assemble(
        config: ServerConfig,
        apps: Arc<dyn AppStore>,
        webhooks: Option<WebhookService>,
        cluster: Option<Arc<ClusterNode>>,
    ) -> Arc<Self> {
        Self::assemble_with_history(config, apps, webhooks, cluster, None)
    }

    /// [`ServerState::assemble`], keeping history channels' events in `history` (the bus's
    /// durable store: [`cluster::Connected::history`]) rather than in memory.
    pub fn assemble_with_history(
        config: ServerConfig,
        apps: Arc<dyn AppStore>,
        webhooks: Option<WebhookService>,
        cluster: Option<Arc<ClusterNode>>,
        history: Option<Arc<dyn plexus_core::history_store::HistoryStore>>,
    ) -> Arc<Self> {
        let mut hubs = match &cluster {
            Some(node) => Hubs::clustered(node.webhooks(), node.clone()),
            None => Hubs::new(webhook_sink(webhooks.as_ref())),
        }
        .with_cache_limits(config.cache_limits());
        if let Some(store) = history {
            hubs = hubs.with_history_store(store);
        }
        let hubs = Arc::new(hubs);
        if let Some(webhooks) = &webhooks {
            webhooks.observe(&hubs);
        }
        Arc::new(ServerState {
            rate_limits: rate_limit::RateLimits::new(&config.rate_limits),
            open_sockets: listener::OpenConnections::new(&config),
            request_bodies: request_body::BodyBudget::new(&config),
            config,
            apps,
            hubs,
            webhooks,
            cluster,
            credentials: Arc::default(),
            extension: OnceLock::new(),
            typed_channels: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// Installs the handler of `plexus:*` frames for connections opened from now on (typed
    /// channels: [`ServerState::install_channels`]). There is one per server: a second call
    /// returns the handler back as the error.
    pub fn set_extension(&self, handler: Arc<dyn ExtensionHandler>) -> Result<(), Arc<dyn ExtensionHandler>> {
        self.extension.set(handler)
    }

    /// Installs typed channels as this server's extension; the returned handle reaches their
    /// event hub from outside handlers. Panics if the server already has an extension.
    pub fn install_channels<S, U>(
        &self,
        channels: plexus_channels::Channels<S, U>,
    ) -> plexus_channels::Installed
    where
        S: Send + Sync + 'static,
        U: Send + Sync + 'static,
    {
        let (handler, installed) = channels.into_extension(self.hubs.clone());
        if self.set_extension(handler).is_err() {
            panic!("this server already has a plexus extension installed");
        }
        let _ = self.typed_channels.set(installed.describe().to_vec());
        installed
    }

    /// The typed channels [`install_channels`](Self::install_channels) installed (none before).
    pub fn typed_channels(&self) -> &[plexus_channels::ChannelDescription] {
        self.typed_channels.get().map_or(&[], Vec::as_slice)
    }

    pub fn extension(&self) -> Option<&Arc<dyn ExtensionHandler>> {
        self.extension.get()
    }

    /// Acts on a change to app `app_id` in the app store: a disabled or removed app's
    /// connections close with 4003; otherwise connections whose credential the change revoked
    /// close (see [`credentials`]).
    pub fn app_changed(&self, app_id: &str) {
        match self.apps.by_id(app_id) {
            Some(app) if app.enabled => {
                self.credentials.recheck(&app);
            }
            _ => {
                for hub in self.hubs.all().into_iter().filter(|hub| hub.app_id() == app_id) {
                    hub.close_all(CloseCode::AppDisabled, "Application disabled");
                }
            }
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Refuses new connections and tells every client to reconnect elsewhere (4200).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        for hub in self.hubs.all() {
            hub.close_all(CloseCode::ReconnectImmediately, "Server is shutting down; reconnect");
        }
    }
}

/// The HTTP surface: WebSocket endpoint, Pusher HTTP API, health.
pub fn router(state: Arc<ServerState>) -> Router {
    let body_limit = state.config.max_request_body_kb * 1024;
    Router::new()
        .route("/app/{key}", get(ws::upgrade))
        .route("/apps/{app_id}/events", post(http_api::trigger))
        .route("/apps/{app_id}/batch_events", post(http_api::trigger_batch))
        .route("/apps/{app_id}/events/stream", get(sse::stream))
        .route("/apps/{app_id}/channels", get(http_api::channels))
        .route("/apps/{app_id}/channels/{channel}", get(http_api::channel))
        .route("/apps/{app_id}/channels/{channel}/users", get(http_api::channel_users))
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            post(http_api::terminate_user_connections),
        )
        .route("/users/{user_id}/terminate_connections", post(http_api::terminate_user_connections))
        .route("/", get(http_api::up))
        .route("/up", get(http_api::up))
        .route("/health", get(http_api::up))
        .route("/ready", get(http_api::ready))
        .merge(docs::router())
        .fallback(http_api::not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), rate_limit::limit_api))
        .layer(axum::middleware::from_fn(listener::refuse_over_cap))
        .layer(axum::middleware::from_fn(listener::require_one_host))
        .layer(axum::middleware::from_fn(metrics::record_http))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

pub use listener::bind;

/// Once a second: throttled subscription counts go out and expired cache entries are dropped.
async fn upkeep(state: Arc<ServerState>) {
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every_second.tick().await;
        state.hubs.tick(|app_id| state.apps.by_id(app_id));
    }
}

/// Serves until `shutdown` resolves, then closes every client with 4200 and waits (bounded by
/// `shutdown_grace_secs`) for them to go.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tls(listener, state, None, shutdown).await
}

/// [`serve`], speaking TLS on every connection when `tls` is given (`[server.tls]`).
pub async fn serve_tls(
    listener: TcpListener,
    state: Arc<ServerState>,
    tls: Option<Arc<tls::Tls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    serve_with(listener, state, app, tls, shutdown).await
}

/// [`serve`] with the caller's router: plexus embedded in an application's own axum service,
/// e.g. `router(state.clone()).merge(my_routes)`. `app` must contain [`router`] of `state`.
pub async fn serve_router(
    listener: TcpListener,
    state: Arc<ServerState>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, app, None, shutdown).await
}

async fn serve_with(
    listener: TcpListener,
    state: Arc<ServerState>,
    app: Router,
    tls: Option<Arc<tls::Tls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let upkeep = tokio::spawn(upkeep(state.clone()));
    // Every HTTP connection task holds a receiver: it learns of the shutdown through it, and
    // `closed()` on the sender tells us when the last one has finished.
    let (stop_tx, stop_rx) = watch::channel(false);
    let timeouts = listener::Timeouts::of(&state.config);
    listener::accept_loop(
        &listener,
        app,
        tls,
        state.open_sockets.clone(),
        timeouts,
        stop_rx.clone(),
        shutdown,
    )
    .await;
    drop(listener);
    tracing::info!("shutting down: closing clients with 4200");
    state.begin_shutdown();
    let _ = stop_tx.send(true);
    drop(stop_rx);
    // One grace period for everything: HTTP exchanges (SSE streams among them) and sockets.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(state.config.shutdown_grace_secs);
    let _ = tokio::time::timeout_at(deadline, stop_tx.closed()).await;
    let left = state.hubs.wait_until_empty(deadline).await;
    upkeep.abort();
    if let Some(node) = &state.cluster {
        // Peers drop this node's state now rather than when its lease runs out.
        node.leave();
        let _ = tokio::time::timeout(Duration::from_secs(2), node.flush()).await;
    }
    if let Some(webhooks) = &state.webhooks {
        // Clients are gone: their last vacate and member events are queued now.
        webhooks.shutdown(tokio::time::Instant::now() + Duration::from_secs(5)).await;
    }
    if left > 0 {
        tracing::warn!(left, "grace period over; exiting with clients still connected");
    }
    Ok(())
}
