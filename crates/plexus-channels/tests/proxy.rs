//! The HTTP action proxy against a real HTTP backend (axum on 127.0.0.1:0): signed identity
//! headers, the backend's JSON as the reply, sessions set by the backend, its errors as typed
//! errors, and an unreachable backend.

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use common::{TestServer, APP_ID};
use plexus_channels::proxy::{self, ProxyRoute};
use plexus_protocol::signature;
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
        _ => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!("not the expected shape"))),
    }
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
        ProxyRoute { app_id: APP_ID.into(), channel: "todos".into(), url, tags: vec![] },
        ProxyRoute { app_id: APP_ID.into(), channel: "down".into(), url: dead, tags: vec![] },
        ProxyRoute {
            app_id: "other-app".into(),
            channel: "elsewhere".into(),
            url: "http://127.0.0.1:9/x".into(),
            tags: vec![],
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
    };
    assert!(proxy::channels(&[route("t", "https://x/")]).is_err());
    assert!(proxy::channels(&[route("t:x", "http://x/")]).is_err());
    assert!(proxy::channels(&[route("t", "http://x/"), route("t", "http://y/")]).is_err());
    assert!(proxy::channels(&[route("t", "http://x/"), route("u", "http://y/")]).is_ok());
}
