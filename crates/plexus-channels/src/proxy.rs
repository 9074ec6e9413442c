//! The HTTP action proxy: typed channels served by a backend in any language. `plexus serve`
//! installs it from `[[action_proxy]]` routes (app id, channel, URL, tags); with `--tags` only
//! the routes carrying a selected tag are given to [`channels`].
//!
//! Opening a proxied channel succeeds when the connection's app has a route for it. Every
//! action on it (any name, through `on_message`) becomes `POST url` with the JSON body
//! `{"channel", "action", "input", "opening"}` and these headers:
//!
//! | header | value |
//! | --- | --- |
//! | `x-plexus-app-id`, `x-plexus-socket-id`, `x-plexus-channel-id` | who is calling |
//! | `x-plexus-session` | the connection's session as JSON (absent until the backend sets one) |
//! | `x-plexus-timestamp` | Unix seconds |
//! | `x-plexus-signature` | hex HMAC-SHA256, keyed with the app secret, of `timestamp \n app id \n socket id \n channel id \n session \n body` |
//!
//! The backend answers 2xx with `{"output": …}` (the reply's output) and optionally
//! `"session": {…}` (set the connection's session; `null` clears it), or an error status with
//! `{"error": {"code", "message"}}` (the error reply). Anything else is `backend_error`; no answer
//! within 10 s is `backend_unavailable`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use plexus_protocol::signature;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::Ctx;
use crate::describe::ProxyTarget;
use crate::error::ActionError;
use crate::runtime::Channels;
use crate::wire::{Action, Channel, Message, OpeningData};

const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest backend answer read.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// One proxied channel of one app.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyRoute {
    pub app_id: String,
    pub channel: String,
    /// `http://…`
    pub url: String,
    /// Labels for introspection and selection (`plexus serve --tags`).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Why the routes cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("action_proxy: {url:?} is not an http:// URL")]
    BadUrl { url: String },
    #[error("action_proxy: channel name {0:?}: use letters, digits, '_' and '-'")]
    BadChannel(String),
    #[error("action_proxy: app {app_id:?} routes channel {channel:?} twice")]
    Duplicate { app_id: String, channel: String },
}

/// The proxy's services: routes and an HTTP client.
#[derive(Debug)]
pub struct Proxy {
    routes: HashMap<(String, String), Uri>,
    client: Client<HttpConnector, Full<Bytes>>,
}

type ProxyCtx = Ctx<Proxy, Value, OpeningData>;

#[derive(Deserialize)]
struct BackendError {
    error: ActionError,
}

fn valid_channel(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Typed channels that forward every action to the routes' backends.
pub fn channels(routes: &[ProxyRoute]) -> Result<Channels<Proxy, Value>, ProxyError> {
    let mut table = HashMap::new();
    for route in routes {
        let uri: Uri = route.url.parse().map_err(|_| ProxyError::BadUrl { url: route.url.clone() })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ProxyError::BadUrl { url: route.url.clone() });
        }
        if !valid_channel(&route.channel) {
            return Err(ProxyError::BadChannel(route.channel.clone()));
        }
        let key = (route.app_id.clone(), route.channel.clone());
        if table.insert(key, uri).is_some() {
            return Err(ProxyError::Duplicate {
                app_id: route.app_id.clone(),
                channel: route.channel.clone(),
            });
        }
    }
    let mut names: Vec<&str> = routes.iter().map(|r| r.channel.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let proxy = Proxy { routes: table, client: Client::builder(TokioExecutor::new()).build_http() };
    let mut channels = Channels::new(proxy);
    for name in names {
        let mine: Vec<&ProxyRoute> = routes.iter().filter(|r| r.channel == name).collect();
        // The channel carries every tag of its routes; selecting routes by tag happens before
        // this (a route left out is not in `routes`), so the union decides nothing on its own.
        let mut tags: Vec<&str> = mine.iter().flat_map(|r| r.tags.iter().map(String::as_str)).collect();
        tags.sort_unstable();
        tags.dedup();
        let targets = mine
            .iter()
            .map(|r| ProxyTarget { app_id: r.app_id.clone(), url: r.url.clone(), tags: r.tags.clone() })
            .collect();
        let channel = Channel::<Proxy, Value, OpeningData>::new(name)
            .auth(false)
            .tags(tags)
            .proxied(targets)
            .on_connect(|ctx: ProxyCtx| async move {
                route(&ctx)?;
                Ok(())
            })
            .on_message(Action::new(forward));
        channels = channels.wire(channel);
    }
    Ok(channels)
}

fn route(ctx: &ProxyCtx) -> Result<&Uri, ActionError> {
    ctx.services().routes.get(&(ctx.app_id().to_owned(), ctx.channel().to_owned())).ok_or_else(|| {
        ActionError::new(
            crate::codes::UNKNOWN_CHANNEL,
            format!("app {:?} has no channel {:?}", ctx.app_id(), ctx.channel()),
        )
    })
}

/// The string the backend verifies `x-plexus-signature` against.
pub fn string_to_sign(
    timestamp: &str,
    app_id: &str,
    socket_id: &str,
    channel_id: &str,
    session: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{timestamp}\n{app_id}\n{socket_id}\n{channel_id}\n{session}\n").into_bytes();
    out.extend_from_slice(body);
    out
}

async fn forward(ctx: ProxyCtx, message: Message) -> Result<Value, ActionError> {
    let uri = route(&ctx)?.clone();
    let body = json!({
        "channel": ctx.channel(),
        "action": message.action,
        "input": message.input,
        "opening": ctx.opening(),
    })
    .to_string();
    let session = ctx.session().map(|s| s.to_string()).unwrap_or_default();
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string();
    let signed =
        string_to_sign(&timestamp, ctx.app_id(), ctx.socket_id(), ctx.id(), &session, body.as_bytes());
    let mut request = Request::post(uri)
        .header(CONTENT_TYPE, "application/json")
        .header("x-plexus-app-id", ctx.app_id())
        .header("x-plexus-socket-id", ctx.socket_id())
        .header("x-plexus-channel-id", ctx.id())
        .header("x-plexus-timestamp", &timestamp)
        .header("x-plexus-signature", signature::sign_hex(&ctx.app().secret, &signed));
    if !session.is_empty() {
        request = request.header("x-plexus-session", &session);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ActionError::internal(format!("proxy request: {e}")))?;
    let unavailable = |why: String| ActionError::new("backend_unavailable", why);
    let response = match tokio::time::timeout(TIMEOUT, ctx.services().client.request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(unavailable(format!("backend request failed: {e}"))),
        Err(_) => return Err(unavailable(format!("no answer within {} s", TIMEOUT.as_secs()))),
    };
    let status = response.status();
    let limited = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES);
    let bytes = match tokio::time::timeout(TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => return Err(unavailable(format!("reading the backend's answer: {e}"))),
        Err(_) => return Err(unavailable(format!("answer not complete within {} s", TIMEOUT.as_secs()))),
    };
    let bad =
        || ActionError::new("backend_error", format!("backend answered {status} without the expected JSON"));
    if !status.is_success() {
        return Err(serde_json::from_slice::<BackendError>(&bytes).map_err(|_| bad())?.error);
    }
    let mut answer: serde_json::Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    match answer.remove("session") {
        Some(Value::Null) => ctx.clear_session(),
        Some(session) => ctx.set_session(session),
        None => {}
    }
    Ok(answer.remove("output").unwrap_or(Value::Null))
}
