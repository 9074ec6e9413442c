//! The admin listener (`[admin]`, or `plexus serve --dashboard`): the dashboard's static assets
//! (built into the binary, no build step) and the JSON and SSE API behind them.
//!
//! Off by default; when enabled it binds 127.0.0.1 unless told otherwise, on its own port, so it
//! can never be reached through the public listener. Every `/api/` route needs the admin token
//! (`Authorization: Bearer …` or `?token=…`, the latter because `EventSource` cannot set
//! headers); the static page holds no data and is served without it.
//!
//! Routes: `GET /api/overview` (apps and live counts), `GET /api/apps/{id}/channels` (occupancy
//! and presence members), `GET /api/apps/{id}/observe?channel=` (SSE: the debug console, from
//! `plexus_core::observe`), `POST /api/apps/{id}/events` (a test event, checked like the HTTP
//! API's trigger), `GET /api/logs?level=&target=` (SSE: [`crate::logstream`]) and
//! `GET /api/info` (what `plexus info --url` prints, also shown on the dashboard: typed channels
//! and bridges; see [`crate::introspect`]), `GET /api/apps/{id}/stats` (the charts' last 15
//! minutes, kept by [`stats`]), `GET /api/apps/{id}/webhooks` (each endpoint's health, from
//! [`crate::webhooks::health`]) and `POST /api/apps/{id}/webhooks/retry` (a backed-off endpoint
//! tries again at once).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::stream::{self, Stream};
use plexus_core::observe::Seen;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::http_api::ApiError;
use crate::logstream::{LogFilter, LogStream, Next as LogNext};
use crate::webhooks::health::EndpointHealth;
use crate::ServerState;

pub mod stats;

const INDEX_HTML: &str = include_str!("index.html");
const DASHBOARD_JS: &str = include_str!("dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard.css");
/// The tab's icon (browsers ask for one; a 404 there is a failed request in every page load).
const FAVICON_SVG: &str = include_str!("favicon.svg");

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    pub host: String,
    /// 0 picks a free port (printed at start).
    pub port: u16,
    /// The admin token; empty means a random one is made at each start (and printed).
    pub token: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { enabled: false, host: "127.0.0.1".into(), port: 9602, token: String::new() }
    }
}

/// What the admin routes share.
#[derive(Debug)]
pub struct Admin {
    pub server: Arc<ServerState>,
    pub logs: Arc<LogStream>,
    pub token: String,
    /// The NATS bridges this server runs, for `GET /api/info` (its typed channels come from
    /// `server`, where `install_channels` keeps them).
    pub bridges: Vec<crate::introspect::Bridge>,
}

/// A random token: 128 bits from the OS generator, as hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Binds the admin listener and serves it in the background; returns the bound address.
pub async fn start(config: &AdminConfig, admin: Arc<Admin>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await?;
    let addr = listener.local_addr()?;
    let app = router(admin);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "admin listener stopped");
        }
    });
    Ok(addr)
}

pub fn router(admin: Arc<Admin>) -> Router {
    let api = Router::new()
        .route("/api/overview", get(overview))
        .route("/api/info", get(info))
        .route("/api/logs", get(logs))
        .route("/api/apps/{app_id}/channels", get(channels))
        .route("/api/apps/{app_id}/observe", get(observe))
        .route("/api/apps/{app_id}/events", post(publish))
        .route("/api/apps/{app_id}/stats", get(app_stats))
        .route("/api/apps/{app_id}/webhooks", get(webhooks))
        .route("/api/apps/{app_id}/webhooks/retry", post(retry_webhooks))
        .layer(Extension(stats::Stats::start(admin.server.clone())))
        .layer(axum::middleware::from_fn_with_state(admin.clone(), require_token));
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/dashboard.js", get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }))
        .route("/dashboard.css", get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }))
        // The page links favicon.svg; /favicon.ico is where a browser looks without a page.
        .route("/favicon.svg", get(|| async { asset("image/svg+xml", FAVICON_SVG) }))
        .route("/favicon.ico", get(|| async { asset("image/svg+xml", FAVICON_SVG) }))
        .merge(api)
        .fallback(|| async { ApiError::NotFound("no such admin route".into()) })
        .with_state(admin)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let from_query = request.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
    });
    match from_header.or(from_query) {
        Some(token) if same(&token, &admin.token) => next.run(request).await,
        Some(_) => ApiError::Unauthorized("wrong admin token".into()).into_response(),
        None => {
            ApiError::Unauthorized("admin token required (Authorization: Bearer …)".into()).into_response()
        }
    }
}

fn known_app(admin: &Admin, app_id: &str) -> Result<Arc<plexus_core::App>, ApiError> {
    admin.server.apps.by_id(app_id).ok_or_else(|| ApiError::NotFound(format!("unknown app id {app_id:?}")))
}

/// `GET /api/overview`: every app with live counts; rates are the client's (it diffs totals).
async fn overview(State(admin): State<Arc<Admin>>) -> Json<Value> {
    let apps: Vec<Value> = admin
        .server
        .apps
        .list()
        .iter()
        .map(|app| {
            let hub = admin.server.hubs.hub(&app.id);
            let channels = hub.channels("");
            let (published, delivered) = hub.totals();
            json!({
                "id": app.id, "key": app.key, "enabled": app.enabled,
                "connections": hub.connection_count(),
                "channels": channels.len(),
                "subscriptions": channels.iter().map(|c| c.subscription_count).sum::<usize>(),
                "events_published_total": published,
                "messages_delivered_total": delivered,
            })
        })
        .collect();
    Json(json!({ "apps": apps, "shutting_down": admin.server.is_shutting_down() }))
}

async fn info(State(admin): State<Arc<Admin>>) -> Json<Value> {
    Json(crate::introspect::describe(&admin.server, &admin.bridges))
}

/// `GET /api/apps/{id}/channels`: occupied channels, with members of presence channels.
async fn channels(
    State(admin): State<Arc<Admin>>,
    Path(app_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = known_app(&admin, &app_id)?;
    let hub = admin.server.hubs.hub(&app.id);
    let mut list: Vec<Value> = hub
        .channels("")
        .into_iter()
        .map(|c| {
            let mut entry = json!({"name": c.name.as_str(), "subscription_count": c.subscription_count});
            if let Some(users) = c.user_count {
                entry["user_count"] = json!(users);
                entry["members"] = json!(hub.presence_user_ids(c.name.as_str()));
            }
            entry
        })
        .collect();
    list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Json(json!({ "channels": list })))
}

#[derive(Debug, Deserialize)]
struct ObserveQuery {
    /// Only this channel; all of the app's when absent or empty.
    channel: Option<String>,
}

fn sse(stream: impl Stream<Item = Event> + Send + 'static) -> Response {
    let stream = futures_util::StreamExt::map(stream, Ok::<_, std::convert::Infallible>);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

/// `GET /api/apps/{id}/observe`: the debug console's SSE stream (`observation` events, and
/// `missed` when this viewer fell behind and lost some).
async fn observe(
    State(admin): State<Arc<Admin>>,
    Path(app_id): Path<String>,
    Query(query): Query<ObserveQuery>,
) -> Result<Response, ApiError> {
    let app = known_app(&admin, &app_id)?;
    let watch = admin.server.hubs.hub(&app.id).observer().watch();
    let channel = query.channel.filter(|c| !c.is_empty());
    // A first comment so the browser's EventSource reports "open" at once.
    let hello = stream::once(async { Event::default().comment("watching") });
    let events = stream::unfold((watch, channel), |(mut watch, channel)| async move {
        loop {
            let event = match watch.next().await {
                Seen::Observed(o) if channel.as_ref().is_none_or(|c| *c == o.channel) => {
                    Event::default().event("observation").data(o.to_json().to_string())
                }
                Seen::Observed(_) => continue,
                Seen::Missed(n) => Event::default().event("missed").data(json!({ "missed": n }).to_string()),
            };
            return Some((event, (watch, channel)));
        }
    });
    Ok(sse(futures_util::StreamExt::chain(hello, events)))
}

/// `POST /api/apps/{id}/events`: a test event, body as the HTTP API's trigger
/// (`{"name", "channel" or "channels", "data"}`), checked the same way.
async fn publish(
    State(admin): State<Arc<Admin>>,
    Path(app_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let app = known_app(&admin, &app_id)?;
    let answer = crate::http_api::trigger_trusted(&admin.server, &app, &body).await?;
    tracing::info!(app_id = %app.id, "test event published from the admin listener");
    Ok(Json(answer))
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    level: Option<String>,
    target: Option<String>,
}

/// `GET /api/logs?level=&target=`: log lines as SSE `log` events; a viewer that falls behind
/// gets one `dropped` event and the stream ends (the page may reconnect).
async fn logs(State(admin): State<Arc<Admin>>, Query(query): Query<LogQuery>) -> Response {
    let filter = match LogFilter::parse(query.level.as_deref(), query.target.as_deref()) {
        Ok(filter) => filter,
        Err(message) => return ApiError::BadRequest(message).into_response(),
    };
    let viewer = admin.logs.view(filter);
    let hello = stream::once(async { Event::default().comment("logging") });
    let lines = stream::unfold(Some(viewer), |viewer| async move {
        let mut viewer = viewer?;
        match viewer.next().await {
            LogNext::Line(line) => {
                Some((Event::default().event("log").data(line.to_json().to_string()), Some(viewer)))
            }
            LogNext::Dropped { missed } => {
                let data = json!({ "missed": missed, "reason": "this viewer fell behind and was dropped" });
                Some((Event::default().event("dropped").data(data.to_string()), None))
            }
        }
    });
    sse(futures_util::StreamExt::chain(hello, lines))
}

/// `GET /api/apps/{id}/stats`: the app's samples of the last 15 minutes, for the charts.
async fn app_stats(
    State(admin): State<Arc<Admin>>,
    Extension(stats): Extension<Arc<stats::Stats>>,
    Path(app_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = known_app(&admin, &app_id)?;
    Ok(Json(stats.to_json(&app.id)))
}

/// `GET /api/apps/{id}/webhooks`: every configured endpoint of the app with its health, then
/// any endpoint no longer configured that still has requests from before.
async fn webhooks(
    State(admin): State<Arc<Admin>>,
    Path(app_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = known_app(&admin, &app_id)?;
    let service = admin.server.webhooks.as_ref();
    let mut health = service.map(|s| s.health(&app.id)).unwrap_or_default();
    let mut endpoints: Vec<Value> = app
        .webhooks
        .iter()
        .enumerate()
        .map(|(index, target)| {
            let seen = health.iter().position(|h| h.url == target.url).map(|i| health.swap_remove(i));
            let mut entry = seen.map_or_else(EndpointHealth::unused_json, |h| h.to_json());
            entry["endpoint"] = json!(index);
            entry["url"] = json!(target.url);
            entry["events"] = json!(target.events);
            entry
        })
        .collect();
    endpoints.extend(health.iter().map(|h| {
        let mut entry = h.to_json();
        entry["endpoint"] = Value::Null;
        entry["url"] = json!(h.url);
        entry["events"] = json!([]);
        entry
    }));
    Ok(Json(json!({ "delivery": service.is_some(), "endpoints": endpoints })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    /// The endpoint's position in the app's `webhooks` list; every endpoint when absent.
    endpoint: Option<usize>,
}

/// `POST /api/apps/{id}/webhooks/retry`: endpoints backing off after a failure try their oldest
/// request again now (`{"endpoint": n}`: only that one). Answers how many were backing off.
async fn retry_webhooks(
    State(admin): State<Arc<Admin>>,
    Path(app_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let app = known_app(&admin, &app_id)?;
    let body: RetryBody = if body.iter().all(u8::is_ascii_whitespace) {
        RetryBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("retry body: {e}")))?
    };
    let url = match body.endpoint {
        Some(index) => Some(app.webhooks.get(index).map(|t| t.url.as_str()).ok_or_else(|| {
            ApiError::NotFound(format!("app {:?} has no webhook endpoint {index}", app.id))
        })?),
        None => None,
    };
    let woken = admin.server.webhooks.as_ref().map_or(0, |s| s.retry_now(&app.id, url));
    Ok(Json(json!({ "woken": woken })))
}
