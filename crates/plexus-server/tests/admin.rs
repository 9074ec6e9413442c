//! The admin listener over real sockets: the token, live counts, the debug console's SSE stream,
//! the test-event form, introspection, and `plexus info` against the config.

mod common;

use std::sync::Arc;

use common::{app, TestServer, WAIT};
use plexus_server::admin::{Admin, AdminConfig};
use plexus_server::logstream::LogStream;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const TOKEN: &str = "test-admin-token";

async fn start_admin(server: &TestServer) -> std::net::SocketAddr {
    let admin = Arc::new(Admin {
        server: server.state.clone(),
        logs: LogStream::new(),
        token: TOKEN.into(),
        bridges: Vec::new(),
    });
    let config = AdminConfig { enabled: true, port: 0, ..AdminConfig::default() };
    plexus_server::admin::start(&config, admin).await.expect("admin listener binds")
}

async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let text = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await.expect("answer in time").unwrap();
    let response = String::from_utf8_lossy(&response);
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())))
}

/// An open SSE stream; `next_data` returns the data of the next event named `name`.
struct Sse(BufReader<TcpStream>);

impl Sse {
    async fn open(addr: std::net::SocketAddr, path: &str) -> Sse {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let text = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n\r\n");
        stream.write_all(text.as_bytes()).await.unwrap();
        let mut sse = Sse(BufReader::new(stream));
        // Headers, then the stream's opening comment: from here on the watcher is registered.
        let first = sse.line().await;
        assert!(first.contains(" 200 "), "{first}");
        while !sse.line().await.starts_with(':') {}
        sse
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        let read = tokio::time::timeout(WAIT, self.0.read_line(&mut line)).await.expect("SSE line in time");
        assert!(read.unwrap() > 0, "SSE stream ended");
        line.trim_end().to_owned()
    }

    async fn next_data(&mut self, name: &str) -> Value {
        let mut event = String::new();
        loop {
            let line = self.line().await;
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_owned();
            } else if let Some(data) = line.strip_prefix("data: ") {
                if event == name {
                    return serde_json::from_str(data).unwrap();
                }
            }
        }
    }
}

#[tokio::test]
async fn the_admin_api_needs_the_token_and_shows_live_counts_channels_and_info() {
    let server = TestServer::start(vec![app(1)]).await;
    let admin = start_admin(&server).await;
    assert_eq!(request(admin, "GET", "/api/overview", None, "").await.0, 401);
    assert_eq!(request(admin, "GET", "/api/overview", Some("wrong"), "").await.0, 401);
    let (status, page) = request(admin, "GET", "/", None, "").await;
    assert_eq!(status, 200);
    assert!(page.as_str().unwrap().contains("Debug console"));

    let mut client = server.connect("key-1").await;
    client.subscribe("news").await;
    let (status, overview) = request(admin, "GET", "/api/overview", Some(TOKEN), "").await;
    assert_eq!(status, 200);
    let app = &overview["apps"][0];
    assert_eq!(
        (app["id"].as_str(), app["connections"].as_u64(), app["subscriptions"].as_u64()),
        (Some("app-1"), Some(1), Some(1))
    );
    let (_, channels) = request(admin, "GET", "/api/apps/app-1/channels", Some(TOKEN), "").await;
    assert_eq!(channels["channels"][0]["name"], "news");
    assert_eq!(request(admin, "GET", "/api/apps/nope/channels", Some(TOKEN), "").await.0, 404);
    let (_, info) = request(admin, "GET", "/api/info", Some(TOKEN), "").await;
    assert_eq!(info["apps"][0]["channels"][0]["name"], "news");
    assert_eq!(info["typed_channels"], json!([]));
}

/// `GET path` without a token: the status line and headers, lower-cased.
async fn head_of(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let text = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await.expect("answer in time").unwrap();
    let response = String::from_utf8_lossy(&response).to_lowercase();
    response.split_once("\r\n\r\n").map_or(response.clone(), |(head, _)| head.to_owned())
}

/// Every file the page links is served (the browser asked for a favicon that was a 404, a
/// failed request on every load), and the empty tables say so rather than show a bare header.
#[tokio::test]
async fn every_asset_the_dashboard_links_is_served_and_empty_tables_say_so() {
    let server = TestServer::start(vec![app(1)]).await;
    let admin = start_admin(&server).await;
    let (_, page) = request(admin, "GET", "/", None, "").await;
    let page = page.as_str().unwrap().to_owned();
    assert!(page.contains(r#"<link rel="icon" href="favicon.svg" type="image/svg+xml">"#), "{page}");
    let linked: Vec<&str> = page
        .split('"')
        .filter(|part| part.ends_with(".css") || part.ends_with(".js") || part.ends_with(".svg"))
        .filter(|part| !part.contains('/') && !part.contains(' '))
        .collect();
    assert_eq!(linked.len(), 3, "{linked:?}");
    for path in linked.iter().map(|p| format!("/{p}")).chain(["/favicon.ico".to_owned()]) {
        let head = head_of(admin, &path).await;
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        if path.starts_with("/favicon") {
            assert!(head.contains("content-type: image/svg+xml"), "{path}: {head}");
        }
    }
    let (_, script) = request(admin, "GET", "/dashboard.js", None, "").await;
    let script = script.as_str().unwrap();
    for empty in
        ["no occupied channels yet", "no typed channels wired", "no NATS bridges", "no apps configured"]
    {
        assert!(script.contains(empty), "{empty:?}");
    }
}

#[tokio::test]
async fn the_debug_console_streams_events_subscriptions_and_test_events_of_one_channel() {
    let server = TestServer::start(vec![app(1)]).await;
    let admin = start_admin(&server).await;
    let mut console = Sse::open(admin, "/api/apps/app-1/observe?channel=news").await;

    let mut client = server.connect("key-1").await;
    client.subscribe("other").await;
    client.subscribe("news").await;
    let seen = console.next_data("observation").await;
    assert_eq!(
        (seen["kind"].as_str(), seen["channel"].as_str()),
        (Some("subscribed"), Some("news")),
        "{seen}"
    );
    assert_eq!(seen["detail"]["socket_id"], client.socket_id.as_str());

    let (status, _) = server.trigger(&common::app(1), "news", "headline", "{\"n\":1}").await;
    assert_eq!(status, 200);
    let seen = console.next_data("observation").await;
    assert_eq!(seen["kind"], "event");
    assert_eq!(seen["detail"]["event"], "headline");
    assert_eq!(seen["detail"]["data"], "{\"n\":1}");
    client.expect("headline").await;

    // The form's endpoint publishes with the HTTP API's checks; the subscriber receives it.
    let body = json!({"name": "from-dashboard", "channel": "news", "data": "hi"}).to_string();
    assert_eq!(request(admin, "POST", "/api/apps/app-1/events", Some(TOKEN), &body).await.0, 200);
    assert_eq!(client.expect("from-dashboard").await["data"], "hi");
    assert_eq!(console.next_data("observation").await["detail"]["event"], "from-dashboard");
    let (status, error) =
        request(admin, "POST", "/api/apps/app-1/events", Some(TOKEN), "{\"channel\":\"news\"}").await;
    assert_eq!(status, 400);
    assert!(error["error"].as_str().unwrap().contains("name"), "{error}");
}

#[test]
fn plexus_info_lists_the_configured_apps() {
    let dir = std::env::temp_dir().join(format!("plexus-info-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plexus.toml");
    std::fs::write(
        &path,
        "[[apps]]\nid = \"shop\"\nkey = \"shop-key\"\nsecret = \"s\"\nenable_client_messages = true\n\
         [[apps.webhooks]]\nurl = \"http://127.0.0.1:7001/hook\"\nevents = [\"channel_occupied\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(["info", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("app shop (key shop-key)"), "{text}");
    assert!(
        text.contains("enable_client_messages") && text.contains("webhook http://127.0.0.1:7001/hook"),
        "{text}"
    );
    assert!(text.contains("typed channels: 0"), "{text}");
    assert!(!text.contains("\"s\""), "never the secret: {text}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(["info", "--json", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["apps"][0]["id"], "shop");
    assert!(json["apps"][0].get("secret").is_none());
}
