//! Request parsing plexus owns in `plexus-server`, reached through public functions only: the
//! axum router (`plexus_server::router`) driven in-process, and `credentials::admit`.
//!
//! - the WebSocket upgrade's header checks (`GET /app/{key}`);
//! - the SSE stream's `?channels=` (`GET /apps/{id}/events/stream`);
//! - credentials: `?token=`, `?api_key=`, `Authorization: Bearer …` → key, token or refusal;
//! - the HTTP API's query → parameters → signature path, with requests signed as the SDKs sign.
//!
//! Invariants:
//! - no panic, no 500;
//! - `101` only for a request with `Upgrade: websocket`, `Connection: upgrade`, version 13 and a
//!   key, answered with the RFC 6455 accept value;
//! - a stream (`200`) only for 1–100 valid channel names, public ones unless a credential
//!   granted them;
//! - `admit` lets in only a configured key with a read scope or a token that verifies, and a
//!   good key is never refused (its connection count is released when the admission drops);
//! - a correctly signed API request is never refused as unauthenticated, and a request whose
//!   query was changed after signing is never served.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use plexus_core::access::ApiKey;
use plexus_core::{App, MemoryAppStore};
use plexus_protocol::signature::sign_api_query;
use plexus_protocol::ChannelName;
use plexus_server::config::ServerConfig;
use plexus_server::credentials::{self, Credentials};
use plexus_server::{router, tokens, ServerState};
use sha1::{Digest, Sha1};
use tower::ServiceExt;

const SECRET: &str = "app-secret";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    apps: Vec<App>,
    valid_token: String,
    expired_token: String,
}

fn api_key(key: &str, scopes: &[&str], channels: &[&str]) -> ApiKey {
    ApiKey {
        key: key.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        channels: channels.iter().map(|s| s.to_string()).collect(),
        max_connections: 1,
    }
}

fn hs256(claims: serde_json::Value) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let open = App::new("open", "open-key", SECRET);
        let mut keyed = App::new("keyed", "keyed-key", SECRET);
        keyed.api_keys = vec![
            api_key("reader", &["events:read"], &["*"]),
            api_key("writer", &["events:write"], &["*"]),
            api_key("narrow", &["events:read"], &["feed-*"]),
        ];
        let mut tokened = App::new("tokened", "tokened-key", SECRET);
        tokened.enable_tokens = true;
        let mut disabled = App::new("disabled", "disabled-key", SECRET);
        disabled.enabled = false;
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            apps: vec![open, keyed, tokened, disabled],
            valid_token: hs256(serde_json::json!({"exp": 4_102_444_800u64, "sub": "u1", "channels": ["*"], "scopes": ["events:read"]})),
            expired_token: hs256(serde_json::json!({"exp": 1_000})),
        }
    })
}

#[derive(Arbitrary, Debug)]
enum Input {
    Upgrade {
        app: u8,
        headers: Vec<(HeaderSpec, ValueSpec)>,
        query: QuerySpec,
    },
    Stream {
        app: u8,
        headers: Vec<(HeaderSpec, ValueSpec)>,
        query: QuerySpec,
    },
    Admit {
        app: u8,
        headers: Vec<(HeaderSpec, ValueSpec)>,
        query: QuerySpec,
    },
    Api {
        app: u8,
        route: Route,
        query: Vec<(String, String)>,
        body: Vec<u8>,
        signing: Signing,
    },
    /// Any method, path and query on the router.
    Raw {
        method: u8,
        target: String,
        headers: Vec<(HeaderSpec, ValueSpec)>,
        body: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
enum HeaderSpec {
    Upgrade,
    Connection,
    Version,
    Key,
    Authorization,
    LastEventId,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum ValueSpec {
    Websocket,
    UpgradeToken,
    Thirteen,
    ClientKey,
    Bearer(Credential),
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Credential {
    Reader,
    Writer,
    Narrow,
    ValidToken,
    ExpiredToken,
}

impl Credential {
    fn text(self) -> String {
        let fixture = fixture();
        match self {
            Credential::Reader => "reader".into(),
            Credential::Writer => "writer".into(),
            Credential::Narrow => "narrow".into(),
            Credential::ValidToken => fixture.valid_token.clone(),
            Credential::ExpiredToken => fixture.expired_token.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum QuerySpec {
    Raw(String),
    Params(Vec<(ParamName, ParamValue)>),
}

#[derive(Arbitrary, Debug)]
enum ParamName {
    Token,
    ApiKey,
    Channels,
    Protocol,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum ParamValue {
    Credential(Credential),
    /// A comma-separated channel list.
    Channels(Vec<String>),
    Text(String),
}

impl QuerySpec {
    fn text(&self) -> Option<String> {
        match self {
            QuerySpec::Raw(raw) => Some(raw.clone()),
            QuerySpec::Params(params) if params.is_empty() => None,
            QuerySpec::Params(params) => {
                let mut query = form_urlencoded::Serializer::new(String::new());
                for (name, value) in params {
                    let name = match name {
                        ParamName::Token => "token",
                        ParamName::ApiKey => "api_key",
                        ParamName::Channels => "channels",
                        ParamName::Protocol => "protocol",
                        ParamName::Other(s) => s,
                    };
                    let value = match value {
                        ParamValue::Credential(c) => c.text(),
                        ParamValue::Channels(names) => names.join(","),
                        ParamValue::Text(s) => s.clone(),
                    };
                    query.append_pair(name, &value);
                }
                Some(query.finish())
            }
        }
    }
}

fn headers_of(specs: &[(HeaderSpec, ValueSpec)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in specs {
        let name = match name {
            HeaderSpec::Upgrade => HeaderName::from_static("upgrade"),
            HeaderSpec::Connection => HeaderName::from_static("connection"),
            HeaderSpec::Version => HeaderName::from_static("sec-websocket-version"),
            HeaderSpec::Key => HeaderName::from_static("sec-websocket-key"),
            HeaderSpec::Authorization => HeaderName::from_static("authorization"),
            HeaderSpec::LastEventId => HeaderName::from_static("last-event-id"),
            HeaderSpec::Other(s) => match HeaderName::from_bytes(s.as_bytes()) {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        let value = match value {
            ValueSpec::Websocket => HeaderValue::from_static("websocket"),
            ValueSpec::UpgradeToken => HeaderValue::from_static("keep-alive, Upgrade"),
            ValueSpec::Thirteen => HeaderValue::from_static("13"),
            ValueSpec::ClientKey => HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
            ValueSpec::Bearer(c) => match HeaderValue::from_str(&format!("Bearer {}", c.text())) {
                Ok(v) => v,
                Err(_) => continue,
            },
            ValueSpec::Text(s) => match HeaderValue::from_str(s) {
                Ok(v) => v,
                Err(_) => continue,
            },
            ValueSpec::Bytes(b) => match HeaderValue::from_bytes(b) {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        headers.append(name, value);
    }
    headers
}

/// Percent-encodes text for a URI path segment or query (every byte outside unreserved).
fn encode_component(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One server for every input: building the state and the router costs far more than a
/// request. What a request leaves behind (hub channels, cached events) does not change how the
/// next request is parsed, which is all this target checks.
fn server() -> &'static (Arc<ServerState>, axum::Router) {
    static SERVER: OnceLock<(Arc<ServerState>, axum::Router)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let store = MemoryAppStore::new(fixture().apps.iter().cloned()).expect("distinct apps");
        let state = ServerState::new(ServerConfig::default(), Arc::new(store));
        (state.clone(), router(state))
    })
}

fn call(request: Request<Body>) -> axum::http::Response<Body> {
    let fixture = fixture();
    let response = fixture.runtime.block_on(server().1.clone().oneshot(request)).expect("infallible");
    // Let tasks the handler spawned (the upgrade's) run to their end before the next input.
    fixture.runtime.block_on(async {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    });
    assert!(response.status() != StatusCode::INTERNAL_SERVER_ERROR, "500 for this request");
    response
}

/// Token-list header check as RFC 7230 defines it, written here independently.
fn has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// What the request presents, as `credentials` documents it: `?token=` first, then
/// `?api_key=` (the last one), then `Authorization: Bearer …`.
fn presented(query: Option<&str>, headers: &HeaderMap) -> Option<(bool, String)> {
    let params: Vec<(String, String)> =
        query.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    if let Some((_, token)) = params.iter().find(|(k, _)| k == "token") {
        return Some((true, token.clone()));
    }
    if let Some((_, key)) = params.iter().rev().find(|(k, _)| k == "api_key") {
        return Some((false, key.clone()));
    }
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| (false, rest.trim().to_owned()))
}

/// Whether `app` admits what the request presents, and with which grant (as a check on the
/// granted channels).
fn admissible(app: &App, query: Option<&str>, headers: &HeaderMap) -> Option<plexus_core::access::Grant> {
    let (is_token, text) = presented(query, headers)?;
    if !is_token {
        if let Some(key) = app.api_keys.iter().find(|k| k.key == text) {
            return key.can_read().then(|| key.grant());
        }
    }
    tokens::verify(app, &text, SystemTime::now()).ok().map(|v| v.grant)
}

fn check_upgrade(app: &App, headers: HeaderMap, query: Option<String>) {
    let uri = match &query {
        Some(q) => format!("/app/{}?{q}", app.key),
        None => format!("/app/{}", app.key),
    };
    let Ok(mut request) = Request::get(uri).body(Body::empty()) else { return };
    *request.headers_mut() = headers.clone();
    let response = call(request);
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        assert!(has_token(&headers, "upgrade", "websocket") && has_token(&headers, "connection", "upgrade"));
        assert_eq!(headers.get("sec-websocket-version").map(|v| v.as_bytes()), Some(&b"13"[..]));
        let key = headers.get("sec-websocket-key").expect("101 without a key");
        let mut sha = Sha1::new();
        sha.update(key.as_bytes());
        sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
        assert_eq!(
            response.headers().get("sec-websocket-accept").map(|v| v.as_bytes()),
            Some(accept.as_bytes())
        );
        if app.requires_credentials() {
            assert!(
                admissible(app, query.as_deref(), &headers).is_some(),
                "upgraded without a good credential"
            );
        }
    }
}

fn check_stream(app: &App, headers: HeaderMap, query: Option<String>) {
    let uri = match &query {
        Some(q) => format!("/apps/{}/events/stream?{q}", app.id),
        None => format!("/apps/{}/events/stream", app.id),
    };
    let Ok(mut request) = Request::get(uri).body(Body::empty()) else { return };
    *request.headers_mut() = headers.clone();
    let response = call(request);
    if response.status() != StatusCode::OK {
        return;
    }
    assert!(app.enabled);
    let channels: Vec<String> = query
        .iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()).into_owned())
        .filter(|(k, _)| k == "channels")
        .flat_map(|(_, v)| v.split(',').map(str::to_owned).collect::<Vec<_>>())
        .filter(|c| !c.is_empty())
        .collect();
    assert!((1..=100).contains(&channels.len()), "a stream of {} channels", channels.len());
    let grant = if app.requires_credentials() {
        Some(admissible(app, query.as_deref(), &headers).expect("a stream without a good credential"))
    } else {
        None
    };
    for name in &channels {
        let channel = ChannelName::parse_with_limit(name, app.max_channel_name_length)
            .unwrap_or_else(|e| panic!("a stream of the invalid channel {name:?}: {e}"));
        match &grant {
            Some(grant) => assert!(grant.permits(app, name).is_ok(), "{name:?} is not granted"),
            None => assert_eq!(
                channel.kind(),
                plexus_protocol::ChannelKind::Public,
                "{name:?} streamed unauthorized"
            ),
        }
    }
}

fn check_admit(app: &App, headers: HeaderMap, query: Option<String>) {
    let registry = Arc::new(Credentials::default());
    let expected = admissible(app, query.as_deref(), &headers);
    for _ in 0..2 {
        // Twice: the first admission is dropped before the second, so a key allowed one
        // connection is admitted both times.
        match credentials::admit(&registry, app, query.as_deref(), &headers) {
            Ok(None) => assert!(!app.requires_credentials()),
            Ok(Some(admission)) => {
                let grant = expected.as_ref().expect("admitted without a good credential");
                assert_eq!(&admission.grant, grant);
            }
            Err(refusal) => {
                assert!([401, 403, 429].contains(&refusal.status.as_u16()), "{}", refusal.status);
                assert!(
                    expected.is_none(),
                    "refused a good credential: {} {}",
                    refusal.status,
                    refusal.reason
                );
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Route {
    Channels,
    Channel(String),
    Users(String),
    Events,
    Batch,
    Terminate(String),
    TerminateUnprefixed(String),
}

#[derive(Arbitrary, Debug)]
enum Signing {
    /// Signed as the SDKs sign, by the app's own key and secret.
    Signed,
    /// Signed, then one decoded parameter value changed.
    Changed { index: u8, value: String },
    /// The query as given, unsigned.
    Unsigned,
}

fn check_api(app: &App, route: Route, extra: Vec<(String, String)>, body: Vec<u8>, signing: Signing) {
    let id = &app.id;
    let (method, path) = match &route {
        Route::Channels => (Method::GET, format!("/apps/{id}/channels")),
        Route::Channel(c) => (Method::GET, format!("/apps/{id}/channels/{}", encode_component(c))),
        Route::Users(c) => (Method::GET, format!("/apps/{id}/channels/{}/users", encode_component(c))),
        Route::Events => (Method::POST, format!("/apps/{id}/events")),
        Route::Batch => (Method::POST, format!("/apps/{id}/batch_events")),
        Route::Terminate(u) => {
            (Method::POST, format!("/apps/{id}/users/{}/terminate_connections", encode_component(u)))
        }
        Route::TerminateUnprefixed(u) => {
            (Method::POST, format!("/users/{}/terminate_connections", encode_component(u)))
        }
    };
    let body = if method == Method::GET { Vec::new() } else { body };
    // Parameter names as the SDKs send them: fixed lowercase words (the signer writes them
    // unencoded), never the ones it writes itself.
    let extra: Vec<(String, String)> = extra
        .into_iter()
        .map(|(k, v)| (k.chars().filter(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>(), v))
        .filter(|(k, _)| !k.is_empty() && !k.starts_with("auth_") && k != "body_md5")
        .collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let pairs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let signed = sign_api_query(&app.key, &app.secret, method.as_str(), &path, &body, now, &pairs);
    let (query, authentic) = match &signing {
        Signing::Signed => (signed, true),
        Signing::Changed { index, value } => {
            let mut params: Vec<(String, String)> =
                form_urlencoded::parse(signed.as_bytes()).into_owned().collect();
            let i = *index as usize % params.len();
            if params[i].1 == *value
                || params[i].0 == "auth_signature" && params[i].1.eq_ignore_ascii_case(value)
            {
                return;
            }
            params[i].1 = value.clone();
            (form_urlencoded::Serializer::new(String::new()).extend_pairs(&params).finish(), false)
        }
        Signing::Unsigned => {
            (form_urlencoded::Serializer::new(String::new()).extend_pairs(&extra).finish(), false)
        }
    };
    let Ok(request) = Request::builder().method(method).uri(format!("{path}?{query}")).body(Body::from(body))
    else {
        return;
    };
    let status = call(request).status();
    if authentic {
        // 404 for the unprefixed route is fine (it finds the app by key); 401 never.
        assert_ne!(
            status,
            StatusCode::UNAUTHORIZED,
            "a correctly signed request was refused: {path}?{query}"
        );
    } else {
        assert!(
            !status.is_success(),
            "a request changed after signing was served ({status}): {path}?{query}"
        );
    }
}

fuzz_target!(|input: Input| {
    let fixture = fixture();
    let app_of = |i: u8| &fixture.apps[i as usize % fixture.apps.len()];
    match input {
        Input::Upgrade { app, headers, query } => {
            check_upgrade(app_of(app), headers_of(&headers), query.text())
        }
        Input::Stream { app, headers, query } => {
            check_stream(app_of(app), headers_of(&headers), query.text())
        }
        Input::Admit { app, headers, query } => check_admit(app_of(app), headers_of(&headers), query.text()),
        Input::Api { app, route, query, body, signing } => {
            check_api(app_of(app), route, query, body, signing)
        }
        Input::Raw { method, target, headers, body } => {
            let methods =
                [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS, Method::HEAD];
            let method = methods[method as usize % methods.len()].clone();
            let Ok(mut request) = Request::builder().method(method).uri(target).body(Body::from(body)) else {
                return;
            };
            *request.headers_mut() = headers_of(&headers);
            let status = call(request).status();
            assert!(status != StatusCode::INTERNAL_SERVER_ERROR);
        }
    }
});
