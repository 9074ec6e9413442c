//! What a Pusher application sees of typed channels. Following a topic subscribes the connection
//! to an internal channel (`private-plexus.chat.room=3Arust`): plexus's own plumbing, which a
//! Pusher application's code does not expect. It stays out of `GET /apps/{id}/channels` and out
//! of webhooks; `GET /apps/{id}/channels/{name}` still answers for it, and the admin API lists it.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use common::{TestServer, APP_ID, KEY, WAIT};
use plexus_channels::{Channel, Channels, Ctx};
use plexus_core::app::{WebhookKind, WebhookTarget};
use plexus_core::App;
use plexus_protocol::signature;
use plexus_server::admin::{Admin, AdminConfig};
use plexus_server::logstream::LogStream;
use plexus_server::webhooks::WebhooksConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const SECRET: &str = "secret-1";
const TOPIC_CHANNEL: &str = "private-plexus.chat.room=3Arust";
const ADMIN_TOKEN: &str = "admin-token";

fn chat() -> Channels<(), ()> {
    let chat = Channel::<(), ()>::new("chat").auth(false).topic::<Value>("room:*").on_connect(
        |ctx: Ctx<(), ()>| async move {
            ctx.subscribe("room:rust")?;
            Ok(())
        },
    );
    Channels::new(()).wire(chat)
}

/// A webhook endpoint handing each request's events to the test.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Vec<Value>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let router = Router::new().route(
        "/webhook",
        post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let body: Value = serde_json::from_slice(&body).unwrap();
                let _ = tx.send(body["events"].as_array().unwrap().clone());
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/webhook"), rx)
}

/// Webhook events, as `name:channel`, until one equals `last`.
async fn webhooks_until(rx: &mut mpsc::UnboundedReceiver<Vec<Value>>, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    while !seen.iter().any(|s| s == last) {
        let events = tokio::time::timeout(WAIT, rx.recv()).await.expect("a webhook in time").unwrap();
        seen.extend(events.iter().map(|e| format!("{}:{}", e["name"], e["channel"]).replace('"', "")));
    }
    seen
}

/// One HTTP/1.1 request; returns status and JSON body.
async fn http(addr: std::net::SocketAddr, path: &str, auth: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await.expect("answer in time").unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())))
}

/// A signed `GET` of the Pusher HTTP API.
async fn api(server: &TestServer, path: &str) -> (u16, Value) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let query = signature::sign_api_query(KEY, SECRET, "GET", path, b"", now, &[]);
    http(server.addr, &format!("{path}?{query}"), "").await
}

#[tokio::test]
async fn topic_channels_stay_out_of_the_pusher_listing_and_webhooks_but_not_the_admin_api() {
    let (url, mut webhooks) = receiver().await;
    let mut app = App::new(APP_ID, KEY, SECRET);
    app.webhooks = vec![WebhookTarget {
        url,
        events: vec![WebhookKind::ChannelOccupied, WebhookKind::ChannelVacated],
        ca_file: None,
    }];
    let dir = std::env::temp_dir().join(format!("plexus-pusher-view-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = WebhooksConfig { data_dir: dir.clone(), vacate_delay_ms: 0, ..WebhooksConfig::default() };
    let server = TestServer::start_with_webhooks(chat(), app, config).await;

    // A typed client follows room:rust first, then a Pusher client joins `news`.
    let mut typed = server.connect().await;
    assert_eq!(typed.open("chat", json!({})).await["ok"], true);
    let mut pusher = server.connect().await;
    pusher.send(json!({"event": "pusher:subscribe", "data": {"channel": "news"}})).await;
    pusher.recv_event("pusher_internal:subscription_succeeded").await;

    let occupied = webhooks_until(&mut webhooks, "channel_occupied:news").await;
    assert_eq!(occupied, ["channel_occupied:news"], "no webhook for the topic channel");

    let (status, listing) = api(&server, &format!("/apps/{APP_ID}/channels")).await;
    assert_eq!((status, listing), (200, json!({"channels": {"news": {}}})));
    let (status, one) = api(&server, &format!("/apps/{APP_ID}/channels/{TOPIC_CHANNEL}")).await;
    assert_eq!((status, &one["occupied"]), (200, &json!(true)), "a direct query still answers: {one}");

    let admin = Arc::new(Admin {
        server: server.state.clone(),
        logs: LogStream::new(),
        token: ADMIN_TOKEN.into(),
        bridges: Vec::new(),
    });
    let admin_config = AdminConfig { enabled: true, port: 0, ..AdminConfig::default() };
    let admin_addr = plexus_server::admin::start(&admin_config, admin).await.unwrap();
    let bearer = format!("Authorization: Bearer {ADMIN_TOKEN}\r\n");
    let (status, listing) = http(admin_addr, &format!("/api/apps/{APP_ID}/channels"), &bearer).await;
    assert_eq!(status, 200, "{listing}");
    let names: Vec<&str> =
        listing["channels"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["news", TOPIC_CHANNEL], "the operator sees both");

    typed.close().await;
    // The typed connection is gone once its topic channel is no longer listed to the operator.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.state.hubs.hub(APP_ID).channel(TOPIC_CHANNEL).is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the topic channel was not vacated");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pusher.close().await;
    let vacated = webhooks_until(&mut webhooks, "channel_vacated:news").await;
    assert_eq!(vacated, ["channel_vacated:news"], "no webhook for the topic channel");
    let _ = std::fs::remove_dir_all(&dir);
}
