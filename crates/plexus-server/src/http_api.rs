//! The Pusher HTTP API under `/apps/{app_id}` and the health endpoints.
//!
//! Each handler authenticates the request ([`authenticate`]: app by id, then the signed query),
//! validates everything before publishing anything, calls the hub, and answers `200` with JSON.
//! Every failure is an [`ApiError`], mapped to a status and a `{"error": "..."}` body in one place.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use plexus_core::hub::ChannelSummary;
use plexus_core::App;
use plexus_protocol::codec::{Data, ServerEvent};
use plexus_protocol::limits::{MAX_BATCH_EVENTS, MAX_CHANNELS_PER_TRIGGER, MAX_EVENT_NAME_LEN};
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A signed API request that passed authentication: its app, decoded query and raw body.
/// Extracting it checks, in order: the app (by the `/apps/{app_id}` path segment, or by
/// `auth_key` on the unprefixed routes) → 404, then key, timestamp, body MD5 and signature →
/// 401, then enabled → 403.
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

impl FromRequest<Arc<ServerState>> for Signed {
    type Rejection = Response;

    async fn from_request(request: Request, state: &Arc<ServerState>) -> Result<Self, Response> {
        let (parts, body) = request.into_parts();
        let limit = state.config.max_request_body_kb * 1024;
        let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
            ApiError::PayloadTooLarge(format!("request body larger than {limit} bytes")).into_response()
        })?;
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
        let request = ApiRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            params: &params,
            body: &body,
        };
        request.verify(&app.key, &app.secret, now_secs()).map_err(|error| {
            let message = match error {
                ApiAuthError::InvalidSignature { string_to_sign } if state.config.debug_signature_errors => {
                    format!("Invalid signature: expected HMAC SHA256 hex digest of {string_to_sign:?}")
                }
                other => other.to_string(),
            };
            ApiError::Unauthorized(message).into_response()
        })?;
        if !app.enabled {
            return Err(ApiError::Forbidden("app is disabled".into()).into_response());
        }
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

/// An event that passed validation and is ready to publish.
struct ValidEvent {
    name: String,
    data: String,
    channels: Vec<ChannelName>,
    except: Option<SocketId>,
    info: InfoRequest,
}

fn validate_event(app: &App, request: EventRequest) -> Result<ValidEvent, ApiError> {
    let name = request.name.ok_or_else(|| ApiError::BadRequest("missing event name".into()))?;
    if name.is_empty() || name.chars().count() > MAX_EVENT_NAME_LEN {
        return Err(ApiError::BadRequest(format!("event name must be 1 to {MAX_EVENT_NAME_LEN} characters")));
    }
    if name.starts_with("pusher:") || name.starts_with("pusher_internal:") {
        return Err(ApiError::BadRequest("event names starting with pusher: are reserved".into()));
    }
    // SDKs send a string; anything else is serialised so clients still get string data.
    let data = match request.data.ok_or_else(|| ApiError::BadRequest("missing data".into()))? {
        Value::String(s) => s,
        other => other.to_string(),
    };
    if data.len() > app.max_payload_bytes() {
        return Err(ApiError::PayloadTooLarge(format!(
            "event data is {} bytes; the limit is {} bytes",
            data.len(),
            app.max_payload_bytes()
        )));
    }
    let names = match (request.channels, request.channel) {
        (Some(channels), _) => channels,
        (None, Some(channel)) => vec![channel],
        (None, None) => return Err(ApiError::BadRequest("missing channels".into())),
    };
    if names.is_empty() || names.len() > MAX_CHANNELS_PER_TRIGGER {
        return Err(ApiError::BadRequest(format!(
            "an event must name 1 to {MAX_CHANNELS_PER_TRIGGER} channels"
        )));
    }
    let channels = names.iter().map(|n| parse_channel(app, n)).collect::<Result<Vec<_>, _>>()?;
    if channels.len() > 1 && channels.iter().any(|c| c.kind() == ChannelKind::Encrypted) {
        return Err(ApiError::BadRequest(
            "an event for an encrypted channel must name only that channel".into(),
        ));
    }
    let except = request
        .socket_id
        .map(|s| s.parse::<SocketId>().map_err(|e| ApiError::BadRequest(e.to_string())))
        .transpose()?;
    let info = parse_info(request.info.as_deref())?;
    if info.cache {
        return Err(ApiError::BadRequest("info=cache is only available on GET /channels/{channel}".into()));
    }
    if info.user_count && channels.iter().any(|c| c.kind() != ChannelKind::Presence) {
        return Err(ApiError::BadRequest("info=user_count is only available for presence channels".into()));
    }
    Ok(ValidEvent { name, data, channels, except, info })
}

/// Publishes one event that arrived by another route than the HTTP API (the NATS bridge) with
/// the same rules as a trigger: names, sizes and channels are checked the same way.
pub fn publish_event(
    state: &ServerState,
    app: &App,
    channel: &str,
    name: &str,
    data: String,
) -> Result<(), String> {
    let request = EventRequest {
        name: Some(name.to_owned()),
        data: Some(Value::String(data)),
        channels: None,
        channel: Some(channel.to_owned()),
        socket_id: None,
        info: None,
    };
    let event = validate_event(app, request).map_err(|e| e.to_string())?;
    publish(state, app, &event);
    Ok(())
}

/// Publishes a validated event; returns the per-channel `info` object if one was asked for.
fn publish(state: &ServerState, app: &App, event: &ValidEvent) -> Option<Map<String, Value>> {
    let hub = state.hubs.hub(&app.id);
    for channel in &event.channels {
        let frame =
            ServerEvent::new(&event.name).channel(channel.as_str()).data(Data::Str(&event.data)).to_frame();
        match channel.server_to_user_id() {
            Some(user_id) => hub.send_to_user(user_id, &frame),
            None => hub.publish(app, channel.as_str(), &frame, event.except),
        };
        if channel.is_cache() {
            hub.remember(channel, &event.data, &frame, Duration::from_secs(app.cache_ttl_secs));
        }
    }
    if !event.info.user_count && !event.info.subscription_count {
        return None;
    }
    let channels = event
        .channels
        .iter()
        .map(|c| (c.to_string(), Value::Object(counts(event.info, hub.channel(c.as_str())))))
        .collect();
    Some(channels)
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
pub fn trigger_trusted(state: &ServerState, app: &App, body: &[u8]) -> Result<Value, ApiError> {
    let event = validate_event(app, parse_body(body)?)?;
    Ok(match publish(state, app, &event) {
        Some(channels) => json!({ "channels": channels }),
        None => json!({}),
    })
}

/// `POST /apps/{app_id}/events`.
pub async fn trigger(State(state): State<Arc<ServerState>>, auth: Signed) -> Result<Json<Value>, ApiError> {
    let event = validate_event(&auth.app, parse_body(&auth.body)?)?;
    Ok(Json(match publish(&state, &auth.app, &event) {
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
        let event = validate_event(&auth.app, item).map_err(|e| match e {
            ApiError::BadRequest(m) => ApiError::BadRequest(format!("batch[{index}]: {m}")),
            ApiError::PayloadTooLarge(m) => ApiError::PayloadTooLarge(format!("batch[{index}]: {m}")),
            other => other,
        })?;
        events.push(event);
    }
    let infos: Vec<Option<Map<String, Value>>> =
        events.iter().map(|e| publish(&state, &auth.app, e)).collect();
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

/// `GET /apps/{app_id}/channels`: occupied channels, optionally by prefix, with counts.
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
