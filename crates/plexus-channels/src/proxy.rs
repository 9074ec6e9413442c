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
//! | `x-plexus-session` | the connection's session as JSON, ASCII only: other characters (and DEL) are `\u`-escaped, so any session fits a header (absent until the backend sets one) |
//! | `x-plexus-timestamp` | Unix seconds |
//! | `x-plexus-signature` | hex HMAC-SHA256, keyed with the app secret, of `timestamp \n app id \n socket id \n channel id \n session \n body` |
//!
//! The backend answers 2xx with `{"output": …}` (the reply's output) and optionally
//! `"session": {…}` (set the connection's session; `null` clears it), or an error status with
//! `{"error": {"code", "message"}}` (the error reply). Anything else is `backend_error`; no answer
//! within 10 s is `backend_unavailable`. A session longer than [`MAX_SESSION_BYTES`] as a header
//! is refused: the reply is `backend_error`, the connection keeps the session it had, and the
//! server log names the session's largest keys.
//!
//! An `https://` backend is verified against the system's root certificates, or against the
//! route's `ca_file` (a PEM file of a private CA) instead; a certificate it refuses makes the
//! action `backend_unavailable` (the reason, logged with the URL, is rustls's) and nothing is
//! sent in the clear. A `ca_file` on an `http://` route, or one that cannot be read, is refused
//! by [`channels`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use plexus_protocol::signature;
use plexus_tls::http::HttpsConnector;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::context::Ctx;
use crate::describe::ProxyTarget;
use crate::error::ActionError;
use crate::runtime::Channels;
use crate::wire::{Action, Channel, Message, OpeningData};

const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest backend answer read.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Longest session a backend may set, as `x-plexus-session` carries it: common HTTP servers
/// refuse a request whose header lines pass 8 KiB, which would fail every later action.
pub const MAX_SESSION_BYTES: usize = 4096;

/// One proxied channel of one app.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyRoute {
    pub app_id: String,
    pub channel: String,
    /// `http://…` or `https://…`
    pub url: String,
    /// Labels for introspection and selection (`plexus serve --tags`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// For an `https://` URL: a PEM file of the CA certificates to trust instead of the system's
    /// roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Why the routes cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("action_proxy: {url:?} is not an http:// or https:// URL")]
    BadUrl { url: String },
    #[error(
        "action_proxy: ca_file {ca_file} is set for {url:?}, which is not an https:// URL (it would be \
         sent in the clear)"
    )]
    CaFileWithoutTls { url: String, ca_file: String },
    #[error("action_proxy: {url:?}: {reason}")]
    Tls { url: String, reason: String },
    #[error("action_proxy: channel name {0:?}: use letters, digits, '_' and '-'")]
    BadChannel(String),
    #[error("action_proxy: app {app_id:?} routes channel {channel:?} twice")]
    Duplicate { app_id: String, channel: String },
}

type HttpClient = Client<HttpsConnector, Full<Bytes>>;

/// The proxy's services: routes, each with the HTTP client that trusts what its URL needs
/// (routes with the same trust share one client and its connection pool).
#[derive(Debug)]
pub struct Proxy {
    routes: HashMap<(String, String), (Uri, HttpClient)>,
}

/// The client for `route`: plain HTTP, or TLS trusting its `ca_file` or the system's roots.
fn client_for(
    route: &ProxyRoute,
    https: bool,
    clients: &mut HashMap<Option<Option<PathBuf>>, HttpClient>,
) -> Result<HttpClient, ProxyError> {
    let key = https.then(|| route.ca_file.clone());
    if let Some(client) = clients.get(&key) {
        return Ok(client.clone());
    }
    let connector = match &key {
        None => plexus_tls::http::http_connector(),
        Some(ca_file) => plexus_tls::http::connector(ca_file.as_deref())
            .map_err(|err| ProxyError::Tls { url: route.url.clone(), reason: err.to_string() })?,
    };
    let client = Client::builder(TokioExecutor::new()).build(connector);
    clients.insert(key, client.clone());
    Ok(client)
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
    let mut clients = HashMap::new();
    for route in routes {
        let uri: Uri = route.url.parse().map_err(|_| ProxyError::BadUrl { url: route.url.clone() })?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(ProxyError::BadUrl { url: route.url.clone() }),
        };
        if uri.host().is_none() {
            return Err(ProxyError::BadUrl { url: route.url.clone() });
        }
        if let (Some(ca_file), false) = (&route.ca_file, https) {
            return Err(ProxyError::CaFileWithoutTls {
                url: route.url.clone(),
                ca_file: ca_file.display().to_string(),
            });
        }
        if !valid_channel(&route.channel) {
            return Err(ProxyError::BadChannel(route.channel.clone()));
        }
        let key = (route.app_id.clone(), route.channel.clone());
        let client = client_for(route, https, &mut clients)?;
        if table.insert(key, (uri, client)).is_some() {
            return Err(ProxyError::Duplicate {
                app_id: route.app_id.clone(),
                channel: route.channel.clone(),
            });
        }
    }
    let mut names: Vec<&str> = routes.iter().map(|r| r.channel.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let proxy = Proxy { routes: table };
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

fn route(ctx: &ProxyCtx) -> Result<&(Uri, HttpClient), ActionError> {
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

/// `session` as `x-plexus-session` carries it: its JSON with every character outside printable
/// ASCII escaped as `\u` (DEL and non-ASCII; serde_json already escapes the other control
/// characters), so it is always a valid header value and a backend reads it back unchanged
/// (a header's non-ASCII bytes are read as Latin-1 by many HTTP stacks, or refused).
pub fn session_header(session: &Value) -> String {
    let json = session.to_string();
    // Outside strings JSON text is ASCII, so every such character is inside a string, where
    // its escape means the same.
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && c != '\u{7f}' {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// The session the backend answered with, if the connection can send it back.
fn acceptable_session(ctx: &ProxyCtx, session: &Value) -> Result<(), ActionError> {
    let length = session_header(session).len();
    if length <= MAX_SESSION_BYTES {
        return Ok(());
    }
    let mut keys: Vec<(usize, &str)> = match session {
        Value::Object(map) => map.iter().map(|(k, v)| (session_header(v).len(), k.as_str())).collect(),
        _ => Vec::new(),
    };
    keys.sort_unstable_by(|a, b| b.cmp(a));
    let largest: Vec<String> = keys.iter().take(3).map(|(n, k)| format!("{k:?} ({n} bytes)")).collect();
    let largest = if largest.is_empty() { "not an object".to_owned() } else { largest.join(", ") };
    tracing::warn!(
        app_id = ctx.app_id(),
        channel = ctx.channel(),
        bytes = length,
        largest = %largest,
        "action_proxy: the backend set a session of {length} bytes as a header, over \
         {MAX_SESSION_BYTES}; refused, the connection keeps its session (largest keys: {largest})"
    );
    Err(ActionError::new(
        "backend_error",
        format!(
            "the backend's session is {length} bytes as a header, over {MAX_SESSION_BYTES} \
             (largest keys: {largest}); the session is unchanged"
        ),
    ))
}

async fn forward(ctx: ProxyCtx, message: Message) -> Result<Value, ActionError> {
    let (uri, client) = route(&ctx)?.clone();
    let shown = uri.to_string();
    let body = json!({
        "channel": ctx.channel(),
        "action": message.action,
        "input": message.input,
        "opening": ctx.opening(),
    })
    .to_string();
    let session = ctx.session().map(|s| session_header(&s)).unwrap_or_default();
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
    let request = request.body(Full::new(Bytes::from(body))).map_err(|e| {
        tracing::error!(app_id = ctx.app_id(), channel = ctx.channel(), error = %e, "action_proxy: cannot build the request");
        ActionError::internal(format!("proxy request: {e}"))
    })?;
    let unavailable = |why: String| ActionError::new("backend_unavailable", why);
    let response = match tokio::time::timeout(TIMEOUT, client.request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            // The whole chain: hyper's own text is only "client error (Connect)"; a TLS refusal
            // (and what to do about it) is in its sources.
            let reason = plexus_tls::describe(&e);
            tracing::warn!(url = %shown, %reason, "action proxy backend request failed");
            return Err(unavailable(format!("backend request failed: {reason}")));
        }
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
        Some(session) => {
            acceptable_session(&ctx, &session)?;
            ctx.set_session(session);
        }
        None => {}
    }
    Ok(answer.remove("output").unwrap_or(Value::Null))
}
