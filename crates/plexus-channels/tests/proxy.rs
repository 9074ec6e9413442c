//! The HTTP action proxy against a real HTTP backend (axum on 127.0.0.1:0): signed identity
//! headers, the backend's JSON as the reply, sessions set by the backend, its errors as typed
//! errors, and an unreachable backend.

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use common::{Logs, TestServer, APP_ID};
use plexus_channels::proxy::{self, ProxyRoute};
use plexus_protocol::signature;
use plexus_tls::test_ca::{HttpsServer, TestCa};
use serde_json::{json, Value};

const SECRET: &str = "secret-1";

/// What the backend saw, for the test to check.
#[derive(Default)]
struct Seen {
    calls: Mutex<Vec<(String, Option<Value>)>>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn backend(seen: Arc<Seen>, headers: HeaderMap, body: Bytes) -> (StatusCode, Json<Value>) {
    let session = header(&headers, "x-plexus-session");
    let signed = proxy::string_to_sign(
        header(&headers, "x-plexus-timestamp"),
        header(&headers, "x-plexus-app-id"),
        header(&headers, "x-plexus-socket-id"),
        header(&headers, "x-plexus-channel-id"),
        session,
        &body,
    );
    if !signature::verify_hex(SECRET, &signed, header(&headers, "x-plexus-signature")) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"code": "bad_signature", "message": "no"}})),
        );
    }
    let request: Value = serde_json::from_slice(&body).unwrap();
    let session: Option<Value> = (!session.is_empty()).then(|| serde_json::from_str(session).unwrap());
    let action = request["action"].as_str().unwrap_or("").to_owned();
    seen.calls.lock().unwrap().push((action.clone(), session.clone()));
    match action.as_str() {
        "authenticate" if request["input"]["token"] == "ann-token" => {
            (StatusCode::OK, Json(json!({"output": {"user": "ann"}, "session": {"user_id": "ann"}})))
        }
        "authenticate" => {
            (StatusCode::FORBIDDEN, Json(json!({"error": {"code": "bad_token", "message": "who?"}})))
        }
        "whoami" => match session {
            Some(session) => {
                (StatusCode::OK, Json(json!({"output": {"session": session, "opening": request["opening"]}})))
            }
            None => (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": {"code": "unauthenticated", "message": "log in"}})),
            ),
        },
        "logout" => (StatusCode::OK, Json(json!({"session": null}))),
        // Characters a raw header value cannot carry (DEL) or that HTTP stacks misread.
        "odd_session" => (StatusCode::OK, Json(json!({"output": "ok", "session": odd_session()}))),
        "huge_session" => (
            StatusCode::OK,
            Json(json!({"output": "ok", "session": {"user_id": "ann", "avatar": "x".repeat(5000)}})),
        ),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!("not the expected shape"))),
    }
}

fn odd_session() -> Value {
    json!({"user_id": "ann", "nick": "del\u{7f} ctl\u{1} é 😀"})
}

async fn start_backend(seen: Arc<Seen>) -> String {
    let app = Router::new()
        .route("/todos", post(move |headers: HeaderMap, body: Bytes| backend(seen.clone(), headers, body)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/todos")
}

#[tokio::test]
async fn actions_are_proxied_with_signed_identity_and_the_backend_answers() {
    let seen = Arc::new(Seen::default());
    let url = start_backend(seen.clone()).await;
    let dead = {
        // A port nobody listens on: bind, note it, release it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/gone", listener.local_addr().unwrap())
    };
    let routes = vec![
        ProxyRoute { app_id: APP_ID.into(), channel: "todos".into(), url, tags: vec![], ca_file: None },
        ProxyRoute { app_id: APP_ID.into(), channel: "down".into(), url: dead, tags: vec![], ca_file: None },
        ProxyRoute {
            app_id: "other-app".into(),
            channel: "elsewhere".into(),
            url: "http://127.0.0.1:9/x".into(),
            tags: vec![],
            ca_file: None,
        },
    ];
    let server = TestServer::start(proxy::channels(&routes).unwrap()).await;
    let mut client = server.connect_with("&list=work").await;
    assert_eq!(client.open("todos", json!({})).await["ok"], true);
    // Wired for another app only: this app cannot open it.
    assert_eq!(client.open("elsewhere", json!({})).await["error"]["code"], "unknown_channel");

    assert_eq!(client.err("todos", "whoami", json!(null)).await.0, "unauthenticated");
    assert_eq!(
        client.err("todos", "authenticate", json!({"token": "x"})).await,
        ("bad_token".into(), "who?".into())
    );
    assert_eq!(
        client.ok("todos", "authenticate", json!({"token": "ann-token"})).await,
        json!({"user": "ann"})
    );
    let me = client.ok("todos", "whoami", json!(null)).await;
    assert_eq!(me, json!({"session": {"user_id": "ann"}, "opening": {"list": "work"}}));
    assert_eq!(client.err("todos", "explode", json!(null)).await.0, "backend_error");
    let reply = client.action("todos", "logout", json!(null)).await;
    assert!(reply["ok"] == true && reply.get("output").is_none(), "{reply}");
    assert_eq!(
        client.err("todos", "whoami", json!(null)).await.0,
        "unauthenticated",
        "the backend cleared the session"
    );

    let calls = seen.calls.lock().unwrap().clone();
    let sessions: Vec<(&str, bool)> = calls.iter().map(|(a, s)| (a.as_str(), s.is_some())).collect();
    assert_eq!(
        sessions,
        [
            ("whoami", false),
            ("authenticate", false),
            ("authenticate", false),
            ("whoami", true),
            ("explode", true),
            ("logout", true),
            ("whoami", false)
        ]
    );

    client.open("down", json!({})).await;
    assert_eq!(client.err("down", "anything", json!(null)).await.0, "backend_unavailable");
}

#[test]
fn bad_routes_are_refused() {
    let route = |channel: &str, url: &str| ProxyRoute {
        app_id: "a".into(),
        channel: channel.into(),
        url: url.into(),
        tags: vec![],
        ca_file: None,
    };
    assert!(proxy::channels(&[route("t", "ftp://x/")]).is_err());
    assert!(proxy::channels(&[route("t", "https://x/")]).is_ok());
    let with_ca = |url: &str, ca_file: &str| ProxyRoute { ca_file: Some(ca_file.into()), ..route("t", url) };
    let e = proxy::channels(&[with_ca("http://x/", "/etc/ca.pem")]).unwrap_err().to_string();
    assert!(e.contains("ca_file /etc/ca.pem") && e.contains("not an https:// URL"), "{e}");
    let e = proxy::channels(&[with_ca("https://x/", "/nonexistent/ca.pem")]).unwrap_err().to_string();
    assert!(e.contains("https://x/") && e.contains("cannot read CA file /nonexistent/ca.pem"), "{e}");
    assert!(proxy::channels(&[route("t:x", "http://x/")]).is_err());
    assert!(proxy::channels(&[route("t", "http://x/"), route("t", "http://y/")]).is_err());
    assert!(proxy::channels(&[route("t", "http://x/"), route("u", "http://y/")]).is_ok());
}

/// An https backend whose certificate comes from a CA made here: the route with that CA as its
/// `ca_file` gets signed calls through; the route without it is refused by plexus (the backend
/// sees its handshake aborted) and its actions fail as `backend_unavailable` with rustls's reason.
#[tokio::test]
async fn an_https_backend_is_trusted_through_the_routes_ca_file_and_refused_without_it() {
    let ca = TestCa::new();
    let mut backend = HttpsServer::start(&ca.loopback(), |request| {
        let body: Value = serde_json::from_slice(request.body()).unwrap_or_default();
        (200, json!({"output": {"echo": body["action"]}}).to_string())
    })
    .await;
    let dir = std::env::temp_dir().join(format!("plexus-proxy-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = ca.write_ca(&dir);
    let route = |channel: &str, ca_file: Option<std::path::PathBuf>| ProxyRoute {
        app_id: APP_ID.into(),
        channel: channel.into(),
        url: backend.url("/todos"),
        tags: vec![],
        ca_file,
    };
    let routes = vec![route("trusted", Some(ca_file)), route("untrusted", None)];
    let server = TestServer::start(proxy::channels(&routes).unwrap()).await;
    let mut client = server.connect().await;

    assert_eq!(client.open("trusted", json!({})).await["ok"], true);
    assert_eq!(client.ok("trusted", "ping", json!(null)).await, json!({"echo": "ping"}));
    let request = backend.request(common::WAIT).await;
    let headers = request.headers();
    let signed = proxy::string_to_sign(
        header(headers, "x-plexus-timestamp"),
        header(headers, "x-plexus-app-id"),
        header(headers, "x-plexus-socket-id"),
        header(headers, "x-plexus-channel-id"),
        header(headers, "x-plexus-session"),
        request.body(),
    );
    assert!(signature::verify_hex(SECRET, &signed, header(headers, "x-plexus-signature")));

    assert_eq!(client.open("untrusted", json!({})).await["ok"], true);
    let (code, message) = client.err("untrusted", "ping", json!(null)).await;
    assert_eq!(code, "backend_unavailable");
    assert!(message.contains("invalid peer certificate: UnknownIssuer"), "{message}");
    let refused = backend.refused(common::WAIT).await;
    assert!(refused.contains("UnknownCA"), "the backend's side of the refusal: {refused}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A backend that sets a session a raw header cannot carry used to wedge the connection: every
/// later action answered `internal` (the request could not be built), never reached the backend,
/// and nothing was logged. Now the session travels \u-escaped and arrives unchanged; one too
/// long for a header is refused with a logged warning naming its keys, and the connection keeps
/// the session it had.
#[tokio::test]
async fn a_session_that_is_no_valid_header_does_not_wedge_the_connection() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let seen = Arc::new(Seen::default());
    let url = start_backend(seen.clone()).await;
    let routes =
        vec![ProxyRoute { app_id: APP_ID.into(), channel: "todos".into(), url, tags: vec![], ca_file: None }];
    let server = TestServer::start(proxy::channels(&routes).unwrap()).await;
    let mut client = server.connect().await;
    assert_eq!(client.open("todos", json!({})).await["ok"], true);

    assert_eq!(client.ok("todos", "odd_session", json!(null)).await, "ok");
    // The backend verified the signature over the header as received and parsed it back.
    let me = client.ok("todos", "whoami", json!(null)).await;
    assert_eq!(me["session"], odd_session());
    assert_eq!(client.ok("todos", "whoami", json!(null)).await["session"], odd_session());

    let (code, message) = client.err("todos", "huge_session", json!(null)).await;
    assert_eq!(code, "backend_error");
    assert!(message.contains("\"avatar\"") && message.contains("unchanged"), "{message}");
    logs.wait_for("WARN", "\"avatar\"").await;
    assert_eq!(client.ok("todos", "whoami", json!(null)).await["session"], odd_session(), "kept");

    let calls: Vec<String> = seen.calls.lock().unwrap().iter().map(|(a, _)| a.clone()).collect();
    assert_eq!(
        calls,
        ["odd_session", "whoami", "whoami", "huge_session", "whoami"],
        "every action reached it"
    );
    assert_eq!(
        proxy::session_header(&odd_session()),
        r#"{"nick":"del\u007f ctl\u0001 \u00e9 \ud83d\ude00","user_id":"ann"}"#
    );
}
