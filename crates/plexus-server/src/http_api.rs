//! The Pusher HTTP API under `/apps/{app_id}` and the health endpoints.
//!
//! Each handler authenticates the request ([`authenticate`]: app by id, then the signed query),
//! validates everything before publishing anything, calls the hub, and answers `200` with JSON.
//! Every failure is an [`ApiError`], mapped to a status and a `{"error": "..."}` body in one place.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use plexus_core::hub::{ChannelSummary, Event, Prepared, PublishError};
use plexus_core::{App, AppHub};
use plexus_protocol::channel::is_topic_channel;
use plexus_protocol::limits::MAX_BATCH_EVENTS;
use plexus_protocol::signature::{ApiAuthError, ApiRequest};
use plexus_protocol::{ChannelKind, ChannelName, SocketId};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::ServerState;

/// Everything the HTTP API can refuse, with the status the Pusher SDKs expect.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    TooManyRequests(String),
    /// A part plexus depends on (the durable history store) is away; retrying is safe.
    #[error("{0}")]
    Unavailable(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        error_response(status, &self.to_string())
    }
}

/// `{"error": message}` with `status`; a 503 also says when to try again (`Retry-After: 1`).
fn error_response(status: StatusCode, message: &str) -> Response {
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
    }
    response
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A signed API request that passed authentication: its app, decoded query and raw body.
/// Extracting it checks, in order, before a byte of the body is read: the app (by the
/// `/apps/{app_id}` path segment, or by `auth_key` on the unprefixed routes) → 404, then key,
/// timestamp and signature → 401, enabled → 403, the app's rate limit → 429. Only then is the body
/// read (bounded in size, time and bytes in flight: [`crate::request_body`]) and checked against
/// the signed `body_md5` → 401. So nobody without the app's secret can make plexus read, hold or
/// acknowledge (`100 Continue`) a body, nor spend the app's rate limit.
#[derive(Debug)]
pub struct Signed {
    app: Arc<App>,
    params: Vec<(String, String)>,
    body: Bytes,
}

impl Signed {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn auth_error(state: &ServerState, error: ApiAuthError) -> Response {
    let message = match error {
        ApiAuthError::InvalidSignature { string_to_sign } if state.config.debug_signature_errors => {
            format!("Invalid signature: expected HMAC SHA256 hex digest of {string_to_sign:?}")
        }
        other => other.to_string(),
    };
    ApiError::Unauthorized(message).into_response()
}

impl FromRequest<Arc<ServerState>> for Signed {
    type Rejection = Response;

    async fn from_request(request: Request, state: &Arc<ServerState>) -> Result<Self, Response> {
        let peer = crate::rate_limit::peer_ip(&request);
        let (parts, body) = request.into_parts();
        let params: Vec<(String, String)> = parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let app = match parts.uri.path().strip_prefix("/apps/").and_then(|rest| rest.split('/').next()) {
            Some(app_id) => state
                .apps
                .by_id(app_id)
                .ok_or_else(|| ApiError::NotFound(format!("unknown app id {app_id:?}"))),
            // pusher-http-python's unprefixed paths: the app is the one whose key signed.
            None => params
                .iter()
                .find(|(k, _)| k == "auth_key")
                .and_then(|(_, key)| state.apps.by_key(key))
                .ok_or_else(|| ApiError::Unauthorized("auth_key does not match an app".into())),
        }
        .map_err(IntoResponse::into_response)?;
        let unread =
            ApiRequest { method: parts.method.as_str(), path: parts.uri.path(), params: &params, body: &[] };
        unread.verify_query(&app.key, &app.secret, now_secs()).map_err(|error| auth_error(state, error))?;
        if !app.enabled {
            return Err(ApiError::Forbidden("app is disabled".into()).into_response());
        }
        state.rate_limits.check_app(&app.id).map_err(|refusal| refusal.into_response())?;
        let body = state.request_bodies.read(&parts.headers, peer, body).await.map_err(|error| {
            use crate::request_body::BodyError;
            let status = match error {
                BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::Busy | BodyError::BusyFromAddress => StatusCode::SERVICE_UNAVAILABLE,
                BodyError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
                BodyError::Broken(_) => StatusCode::BAD_REQUEST,
            };
            error_response(status, &error.to_string())
        })?;
        let read = ApiRequest { body: &body, ..unread };
        read.verify_body().map_err(|error| auth_error(state, error))?;
        Ok(Signed { app, params, body })
    }
}

/// Which counts a caller asked for with `info=`.
#[derive(Debug, Default, Clone, Copy)]
struct InfoRequest {
    user_count: bool,
    subscription_count: bool,
    /// Only on `GET /channels/{channel}` for cache channels.
    cache: bool,
}

fn parse_info(info: Option<&str>) -> Result<InfoRequest, ApiError> {
    let mut request = InfoRequest::default();
    for attribute in info.unwrap_or("").split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match attribute {
            "user_count" => request.user_count = true,
            "subscription_count" => request.subscription_count = true,
            "cache" => request.cache = true,
            other => return Err(ApiError::BadRequest(format!("unsupported info attribute {other:?}"))),
        }
    }
    Ok(request)
}

fn parse_channel(app: &App, name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse_with_limit(name, app.max_channel_name_length)
        .map_err(|e| ApiError::BadRequest(format!("invalid channel {name:?}: {e}")))
}

/// One event as the trigger endpoints receive it.
#[derive(Debug, Deserialize)]
struct EventRequest {
    name: Option<String>,
    data: Option<Value>,
    channels: Option<Vec<String>>,
    channel: Option<String>,
    socket_id: Option<String>,
    info: Option<String>,
}

/// A trigger's event, prepared by the hub (every rule checked, encoded per channel), with the
/// counts its caller asked for.
struct ValidEvent {
    prepared: Prepared,
    info: InfoRequest,
}

impl From<PublishError> for ApiError {
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::TooLarge { .. } => ApiError::PayloadTooLarge(error.to_string()),
            PublishError::CacheFull { .. } => ApiError::TooManyRequests(error.to_string()),
            PublishError::HistoryUnavailable { .. } => ApiError::Unavailable(error.to_string()),
            PublishError::Name(_)
            | PublishError::ReservedName
            | PublishError::ChannelCount
            | PublishError::Channel { .. }
            | PublishError::EncryptedWithOthers => ApiError::BadRequest(error.to_string()),
        }
    }
}

/// Reads a trigger's event (the HTTP shape: which fields, `socket_id`, `info`), then has the hub
/// check and encode it.
fn validate_event(app: &App, hub: &AppHub, request: EventRequest) -> Result<ValidEvent, ApiError> {
    let name = request.name.ok_or_else(|| ApiError::BadRequest("missing event name".into()))?;
    // SDKs send a string; anything else is serialised so clients still get string data.
    let data = match request.data.ok_or_else(|| ApiError::BadRequest("missing data".into()))? {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let channels = match (request.channels, request.channel) {
        (Some(channels), _) => channels,
        (None, Some(channel)) => vec![channel],
        (None, None) => return Err(ApiError::BadRequest("missing channels".into())),
    };
    let except = request
        .socket_id
        .map(|s| s.parse::<SocketId>().map_err(|e| ApiError::BadRequest(e.to_string())))
        .transpose()?;
    let info = parse_info(request.info.as_deref())?;
    if info.cache {
        return Err(ApiError::BadRequest("info=cache is only available on GET /channels/{channel}".into()));
    }
    let prepared = hub.prepare(app, &Event { name: &name, data: &data, channels: &channels, except })?;
    if info.user_count && prepared.channels().any(|c| c.kind() != ChannelKind::Presence) {
        return Err(ApiError::BadRequest("info=user_count is only available for presence channels".into()));
    }
    Ok(ValidEvent { prepared, info })
}

/// Publishes a validated event; returns the per-channel `info` object if one was asked for.
/// With a durable history store it answers once the store took its history channels' events
/// (503 when it did not: then they reached no one).
async fn publish(
    state: &ServerState,
    app: &App,
    event: &ValidEvent,
) -> Result<Option<Map<String, Value>>, ApiError> {
    let hub = state.hubs.hub(&app.id);
    hub.publish(app, &event.prepared).stored().await?;
    if !event.info.user_count && !event.info.subscription_count {
        return Ok(None);
    }
    let channels = event
        .prepared
        .channels()
        .map(|c| (c.to_string(), Value::Object(counts(event.info, hub.channel(c.as_str())))))
        .collect();
    Ok(Some(channels))
}

/// The counts an `info=` asked for, from a channel summary (zeros for an empty channel).
fn counts(info: InfoRequest, summary: Option<ChannelSummary>) -> Map<String, Value> {
    let mut entry = Map::new();
    if info.user_count {
        entry.insert("user_count".into(), json!(summary.as_ref().and_then(|s| s.user_count).unwrap_or(0)));
    }
    if info.subscription_count {
        entry.insert("subscription_count".into(), json!(summary.map_or(0, |s| s.subscription_count)));
    }
    entry
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Publishes a trigger body for `app` with exactly the checks of `POST /apps/{app_id}/events`,
/// for callers that authenticated otherwise (the admin listener's test-event form).
pub async fn trigger_trusted(state: &ServerState, app: &App, body: &[u8]) -> Result<Value, ApiError> {
    let event = validate_event(app, &state.hubs.hub(&app.id), parse_body(body)?)?;
    Ok(match publish(state, app, &event).await? {
        Some(channels) => json!({ "channels": channels }),
        None => json!({}),
    })
}

/// `POST /apps/{app_id}/events`.
pub async fn trigger(State(state): State<Arc<ServerState>>, auth: Signed) -> Result<Json<Value>, ApiError> {
    let event = validate_event(&auth.app, &state.hubs.hub(&auth.app.id), parse_body(&auth.body)?)?;
    Ok(Json(match publish(&state, &auth.app, &event).await? {
        Some(channels) => json!({ "channels": channels }),
        None => json!({}),
    }))
}

#[derive(Deserialize)]
struct BatchRequest {
    batch: Vec<EventRequest>,
}

/// `POST /apps/{app_id}/batch_events`: everything is validated before anything is published.
pub async fn trigger_batch(
    State(state): State<Arc<ServerState>>,
    auth: Signed,
) -> Result<Json<Value>, ApiError> {
    let request: BatchRequest = parse_body(&auth.body)?;
    if request.batch.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::BadRequest(format!("a batch may hold at most {MAX_BATCH_EVENTS} events")));
    }
    let mut events = Vec::with_capacity(request.batch.len());
    for (index, item) in request.batch.into_iter().enumerate() {
        if item.channels.is_some() {
            return Err(ApiError::BadRequest(format!("batch[{index}]: use \"channel\", not \"channels\"")));
        }
        let event = validate_event(&auth.app, &state.hubs.hub(&auth.app.id), item).map_err(|e| match e {
            ApiError::BadRequest(m) => ApiError::BadRequest(format!("batch[{index}]: {m}")),
            ApiError::PayloadTooLarge(m) => ApiError::PayloadTooLarge(format!("batch[{index}]: {m}")),
            other => other,
        })?;
        events.push(event);
    }
    let mut infos: Vec<Option<Map<String, Value>>> = Vec::with_capacity(events.len());
    for event in &events {
        infos.push(publish(&state, &auth.app, event).await?);
    }
    if infos.iter().all(Option::is_none) {
        return Ok(Json(json!({})));
    }
    let batch: Vec<Value> = infos
        .into_iter()
        .map(|info| {
            info.and_then(|channels| channels.into_iter().next().map(|(_, v)| v)).unwrap_or_else(|| json!({}))
        })
        .collect();
    Ok(Json(json!({ "batch": batch })))
}

/// `GET /apps/{app_id}/channels`: occupied channels, optionally by prefix, with counts. Typed
/// channels' topic channels (`private-plexus.…`) are left out: a Pusher application does not
/// expect them (the admin API lists them; `GET /channels/{name}` still answers for one).
pub async fn channels(State(state): State<Arc<ServerState>>, auth: Signed) -> Result<Json<Value>, ApiError> {
    let prefix = auth.param("filter_by_prefix").unwrap_or("");
    let info = parse_info(auth.param("info"))?;
    if info.cache {
        return Err(ApiError::BadRequest("info=cache is only available on GET /channels/{channel}".into()));
    }
    if info.user_count && !prefix.starts_with("presence-") {
        return Err(ApiError::BadRequest("info=user_count requires filter_by_prefix=presence-".into()));
    }
    let mut channels = BTreeMap::new();
    for summary in state.hubs.hub(&auth.app.id).channels(prefix) {
        if is_topic_channel(summary.name.as_str()) {
            continue;
        }
        channels.insert(summary.name.to_string(), Value::Object(counts(info, Some(summary))));
    }
    Ok(Json(json!({ "channels": channels })))
}

/// `GET /apps/{app_id}/channels/{channel}`: `occupied` always, counts on request.
pub async fn channel(
    State(state): State<Arc<ServerState>>,
    Path((_, channel)): Path<(String, String)>,
    auth: Signed,
) -> Result<Json<Value>, ApiError> {
    let name = parse_channel(&auth.app, &channel)?;
    let info = parse_info(auth.param("info"))?;
    if info.user_count && name.kind() != ChannelKind::Presence {
        return Err(ApiError::BadRequest("info=user_count is only available for presence channels".into()));
    }
    if info.cache && !name.is_cache() {
        return Err(ApiError::BadRequest("info=cache is only available for cache channels".into()));
    }
    let hub = state.hubs.hub(&auth.app.id);
    let summary = hub.channel(name.as_str());
    let mut body = Map::new();
    body.insert("occupied".into(), json!(summary.is_some()));
    body.extend(counts(info, summary));
    if info.cache {
        let cache = hub.cached(name.as_str()).map(|c| json!({"data": c.data, "ttl": c.ttl_secs}));
        body.insert("cache".into(), cache.unwrap_or(Value::Null));
    }
    Ok(Json(Value::Object(body)))
}

/// `GET /apps/{app_id}/channels/{channel}/users`: distinct users of a presence channel.
pub async fn channel_users(
    State(state): State<Arc<ServerState>>,
    Path((_, channel)): Path<(String, String)>,
    auth: Signed,
) -> Result<Json<Value>, ApiError> {
    let name = parse_channel(&auth.app, &channel)?;
    if name.kind() != ChannelKind::Presence {
        return Err(ApiError::BadRequest("users are only available for presence channels".into()));
    }
    let users: Vec<Value> = state
        .hubs
        .hub(&auth.app.id)
        .presence_user_ids(name.as_str())
        .into_iter()
        .map(|id| json!({ "id": id }))
        .collect();
    Ok(Json(json!({ "users": users })))
}

/// `POST /apps/{app_id}/users/{user_id}/terminate_connections` (and the unprefixed
/// `/users/{user_id}/terminate_connections` pusher-http-python sends): closes every connection
/// signed in as the user with 4009 (pusher-js does not reconnect on its own).
pub async fn terminate_user_connections(
    State(state): State<Arc<ServerState>>,
    Path(params): Path<HashMap<String, String>>,
    auth: Signed,
) -> Result<Json<Value>, ApiError> {
    let user_id = params.get("user_id").map(String::as_str).unwrap_or_default();
    let closed = state.hubs.hub(&auth.app.id).terminate_user(user_id);
    tracing::info!(app_id = %auth.app.id, user_id, closed, "terminated user connections");
    Ok(Json(json!({})))
}

/// `GET /up`, `/health`, `/`: the process is alive.
pub async fn up() -> &'static str {
    "OK"
}

/// `GET /ready`: 200 while accepting connections, 503 once shutting down.
pub async fn ready(State(state): State<Arc<ServerState>>) -> (StatusCode, &'static str) {
    if state.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "SHUTTING DOWN")
    } else {
        (StatusCode::OK, "OK")
    }
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}
