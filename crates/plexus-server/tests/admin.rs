//! The admin listener over real sockets: the token, live counts, the debug console's SSE stream,
//! the test-event form, introspection, `plexus info` against the config, the charts' history,
//! and webhook health (API and Prometheus) with "retry now" against a real local receiver.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use common::{app, scrape, TestServer, WAIT};
use plexus_core::app::{WebhookKind, WebhookTarget};
use plexus_server::admin::{Admin, AdminConfig};
use plexus_server::config::{AdapterConfig, AdapterDriver, MetricsConfig};
use plexus_server::logstream::LogStream;
use plexus_server::webhooks::WebhooksConfig;
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

/// Asks `GET path` until `done` holds for its JSON answer, within `within`; returns that answer.
/// (The charts' samples come every 5 s and webhook attempts when they come: polled, never slept.)
async fn poll_until(
    addr: std::net::SocketAddr,
    path: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, body) = request(addr, "GET", path, Some(TOKEN), "").await;
        assert_eq!(status, 200, "{path}: {body}");
        if done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: not as expected in time; last answer {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn last_sample(stats: &Value) -> Value {
    stats["samples"].as_array().and_then(|s| s.last()).cloned().unwrap_or(Value::Null)
}

/// The server keeps each app's figures (so an opened dashboard draws the last 15 minutes at
/// once): this node's connections and subscriptions, and rates of events published and
/// messages delivered between samples; nothing per node without a cluster.
#[tokio::test]
async fn the_charts_history_holds_connections_subscriptions_and_rates_from_the_server() {
    let server = TestServer::start(vec![app(1)]).await;
    let admin = start_admin(&server).await;
    assert_eq!(request(admin, "GET", "/api/apps/app-1/stats", None, "").await.0, 401);
    assert_eq!(request(admin, "GET", "/api/apps/nope/stats", Some(TOKEN), "").await.0, 404);
    // A sample is taken when the listener starts: the first point is there without waiting a
    // sampling interval.
    let stats = poll_until(admin, "/api/apps/app-1/stats", WAIT, |s| !last_sample(s).is_null()).await;
    assert_eq!((stats["interval_ms"].as_u64(), stats["capacity"].as_u64()), (Some(5000), Some(180)));
    assert_eq!(stats["node"], Value::Null, "not in a cluster");
    assert_eq!(last_sample(&stats)["connections"], 0, "{stats}");

    let mut client = server.connect("key-1").await;
    client.subscribe("news").await;
    client.subscribe("sport").await;
    let within = SAMPLE_WAIT;
    let stats =
        poll_until(admin, "/api/apps/app-1/stats", within, |s| last_sample(s)["connections"] == 1).await;
    let sample = last_sample(&stats);
    assert_eq!(sample["subscriptions"], 2, "{sample}");
    assert_eq!(sample["cluster_subscriptions"], 2, "{sample}");
    assert_eq!(sample["peer_subscriptions"], json!({}), "{sample}");
    assert!(
        stats["samples"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["events_per_sec"].as_f64().unwrap_or(0.0) == 0.0),
        "nothing published yet: {stats}"
    );

    for n in 0..5 {
        assert_eq!(server.trigger(&app(1), "news", "tick", &format!("{{\"n\":{n}}}")).await.0, 200);
        client.expect("tick").await;
    }
    // A later sample counts them: events per second, and messages delivered to the subscriber.
    let busy = |s: &Value| s["events_per_sec"].as_f64().is_some_and(|rate| rate > 0.0);
    let stats = poll_until(admin, "/api/apps/app-1/stats", within, |s| {
        s["samples"].as_array().unwrap().iter().any(busy)
    })
    .await;
    let sample = stats["samples"].as_array().unwrap().iter().find(|s| busy(s)).unwrap();
    assert!(sample["messages_per_sec"].as_f64().unwrap() > 0.0, "{sample}");
    let times: Vec<u64> =
        stats["samples"].as_array().unwrap().iter().map(|s| s["at_ms"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first: {times:?}");
}

/// Two nodes over the real NATS: the charts of one show the other's connections, subscriptions
/// and rates as it reported them, and the cluster's totals.
#[tokio::test]
async fn in_a_cluster_the_charts_show_each_nodes_figures_and_the_clusters_totals() {
    let adapter = AdapterConfig {
        driver: AdapterDriver::Nats,
        url: Some("nats://127.0.0.1:4222".into()),
        prefix: format!("stats-{}", std::process::id()),
        heartbeat_ms: 200,
        lease_ms: 1_000,
        ..AdapterConfig::default()
    };
    let here = TestServer::start_clustered(&adapter, vec![app(1)]).await;
    let there = TestServer::start_clustered(&adapter, vec![app(1)]).await;
    let there_id = there.state.cluster.as_ref().unwrap().id().to_string();
    let admin = start_admin(&here).await;
    let mut local = here.connect("key-1").await;
    local.subscribe("news").await;
    let mut remote = Vec::new();
    for _ in 0..2 {
        let mut client = there.connect("key-1").await;
        client.subscribe("news").await;
        remote.push(client);
    }
    // Events published on the other node for as long as it takes a sample to show its rates
    // (its reports come every second, the samples every 5 s).
    let publishing = tokio::spawn(async move {
        for n in 0u64.. {
            assert_eq!(there.trigger(&app(1), "news", "tick", &format!("{{\"n\":{n}}}")).await.0, 200);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let shows_everything = |s: &Value| {
        s["samples"].as_array().unwrap().iter().any(|sample| {
            let peer = &sample["peers"][&there_id];
            peer["connections"] == 2
                && peer["subscriptions"] == 2
                && peer["events_per_sec"].as_f64().is_some_and(|rate| rate > 0.0)
                && peer["messages_per_sec"].as_f64().is_some_and(|rate| rate > 0.0)
                && sample["events_per_sec"].is_number()
        })
    };
    let stats = poll_until(admin, "/api/apps/app-1/stats", SAMPLE_WAIT * 2, shows_everything).await;
    publishing.abort();
    assert_eq!(stats["node"], here.state.cluster.as_ref().unwrap().id().to_string());
    let sample = stats["samples"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|s| shows_everything(&json!({"samples": [s]})))
        .unwrap();
    assert_eq!(
        (sample["connections"].as_u64(), sample["cluster_connections"].as_u64()),
        (Some(1), Some(3)),
        "{sample}"
    );
    assert_eq!(sample["cluster_subscriptions"], 3, "{sample}");
    assert_eq!(sample["peer_subscriptions"], json!({ there_id.clone(): 2 }), "{sample}");
    let own = sample["events_per_sec"].as_f64().unwrap();
    let peer = sample["peers"][&there_id]["events_per_sec"].as_f64().unwrap();
    let total = sample["cluster_events_per_sec"].as_f64().unwrap();
    assert!((total - (own + peer)).abs() < 0.011, "the cluster's rate adds every node's: {sample}");
    for client in remote.iter_mut().chain([&mut local]) {
        client.expect("tick").await;
    }
}

/// A sample is due every 5 s; this bounds the wait for the next one.
const SAMPLE_WAIT: Duration = Duration::from_secs(20);

/// A webhook receiver on loopback that answers 500 while `failing`, then 200; hands on the body
/// of each request it accepted.
async fn receiver(failing: Arc<AtomicBool>) -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let router = axum::Router::new().route(
        "/hook",
        post(move |body: Bytes| {
            let (tx, failing) = (tx.clone(), failing.clone());
            async move {
                if failing.load(Ordering::SeqCst) {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let _ = tx.send(serde_json::from_slice::<Value>(&body).unwrap());
                StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/hook"), rx)
}

/// The value of the series `name{app_id="app-7",endpoint="0"}` in Prometheus text.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| line.contains("app_id=\"app-7\"") && line.contains("endpoint=\"0\""))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// An endpoint that fails shows it everywhere an operator looks (the admin API with the reason,
/// Prometheus by app and endpoint index), and "retry now" sends at once what would otherwise
/// wait out an hour's backoff.
#[tokio::test]
async fn webhook_health_shows_a_failing_endpoint_and_retry_now_delivers_at_once() {
    // The only test in this binary that installs the process's metrics recorder.
    let metrics_config = MetricsConfig { enabled: true, host: "127.0.0.1".into(), port: 0 };
    let metrics = plexus_server::metrics::start(&metrics_config).await.expect("metrics listener binds");
    let failing = Arc::new(AtomicBool::new(true));
    let (url, mut received) = receiver(failing.clone()).await;
    let mut hooked = app(7);
    hooked.webhooks =
        vec![WebhookTarget { url: url.clone(), events: vec![WebhookKind::ChannelOccupied], ca_file: None }];
    let data_dir = std::env::temp_dir().join(format!("plexus-admin-webhooks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let webhooks = WebhooksConfig {
        data_dir: data_dir.clone(),
        batch_window_ms: 10,
        // So long that only "retry now" can explain a second attempt within the test.
        initial_backoff_ms: 3_600_000,
        max_backoff_secs: 3_600,
        retry_for_secs: 7_200,
        ..WebhooksConfig::default()
    };
    let server = TestServer::start_with_webhooks(vec![hooked], webhooks).await;
    let admin = start_admin(&server).await;
    let path = "/api/apps/app-7/webhooks";
    assert_eq!(request(admin, "GET", path, None, "").await.0, 401);
    let (status, health) = request(admin, "GET", path, Some(TOKEN), "").await;
    assert_eq!(status, 200);
    assert_eq!(health["delivery"], true);
    let endpoint = &health["endpoints"][0];
    assert_eq!(
        (endpoint["endpoint"].as_u64(), endpoint["url"].as_str(), endpoint["state"].as_str()),
        (Some(0), Some(url.as_str()), Some("idle"))
    );
    assert_eq!(endpoint["events"], json!(["channel_occupied"]));
    // Nothing is backing off yet: retry has nothing to wake.
    assert_eq!(request(admin, "POST", "/api/apps/app-7/webhooks/retry", Some(TOKEN), "").await.1["woken"], 0);

    let mut client = server.connect("key-7").await;
    client.subscribe("news").await;
    let health = poll_until(admin, path, WAIT, |h| h["endpoints"][0]["state"] == "backing_off").await;
    let endpoint = &health["endpoints"][0];
    assert_eq!(endpoint["queued_requests"], 1, "{endpoint}");
    assert!(endpoint["oldest_pending_age_ms"].is_u64(), "{endpoint}");
    assert_eq!((endpoint["last_status"].as_u64(), endpoint["failures"].as_u64()), (Some(500), Some(1)));
    assert_eq!((endpoint["retries"].as_u64(), endpoint["delivered"].as_u64()), (Some(0), Some(0)));
    let failure = &endpoint["recent_failures"][0];
    assert_eq!(failure["attempt"], 1);
    assert!(failure["reason"].as_str().unwrap().contains("500"), "{failure}");
    assert!(endpoint["retry_at_ms"].as_u64().unwrap() > failure["at_ms"].as_u64().unwrap());

    let text = scrape(metrics).await;
    assert_eq!(series(&text, "plexus_webhook_endpoint_queued_requests"), Some(1.0), "{text}");
    assert_eq!(series(&text, "plexus_webhook_endpoint_last_status"), Some(500.0), "{text}");
    assert_eq!(series(&text, "plexus_webhook_endpoint_failures_total"), Some(1.0), "{text}");
    assert!(series(&text, "plexus_webhook_endpoint_oldest_pending_age_seconds").is_some(), "{text}");
    assert!(!text.contains(&url), "a URL is never a label");

    // Bad asks are refused and wake nothing.
    let retry = "/api/apps/app-7/webhooks/retry";
    assert_eq!(request(admin, "POST", retry, Some(TOKEN), "{\"endpoint\":3}").await.0, 404);
    assert_eq!(request(admin, "POST", retry, Some(TOKEN), "{\"endpoint\":\"x\"}").await.0, 400);
    assert_eq!(request(admin, "POST", retry, None, "{}").await.0, 401);
    assert!(received.try_recv().is_err(), "nothing accepted while failing");

    failing.store(false, Ordering::SeqCst);
    let (status, answer) = request(admin, "POST", retry, Some(TOKEN), "{\"endpoint\":0}").await;
    assert_eq!((status, answer["woken"].as_u64()), (200, Some(1)), "{answer}");
    let body = tokio::time::timeout(WAIT, received.recv()).await.expect("delivered at once").unwrap();
    assert_eq!(body["events"][0]["name"], "channel_occupied");
    assert_eq!(body["events"][0]["channel"], "news");
    let health = poll_until(admin, path, WAIT, |h| h["endpoints"][0]["state"] == "idle").await;
    let endpoint = &health["endpoints"][0];
    assert_eq!(
        (endpoint["queued_requests"].as_u64(), endpoint["last_status"].as_u64()),
        (Some(0), Some(200))
    );
    assert_eq!(
        (endpoint["delivered"].as_u64(), endpoint["failures"].as_u64(), endpoint["retries"].as_u64()),
        (Some(1), Some(1), Some(1))
    );
    assert!(endpoint["oldest_pending_age_ms"].is_null(), "{endpoint}");
    assert_eq!(endpoint["recent_failures"].as_array().unwrap().len(), 1, "failures stay listed");
    let text = scrape(metrics).await;
    assert_eq!(series(&text, "plexus_webhook_endpoint_queued_requests"), Some(0.0), "{text}");
    assert_eq!(series(&text, "plexus_webhook_endpoint_delivered_total"), Some(1.0), "{text}");
    assert_eq!(series(&text, "plexus_webhook_endpoint_retries_total"), Some(1.0), "{text}");
    assert_eq!(series(&text, "plexus_webhook_endpoint_last_status"), Some(200.0), "{text}");
    assert_eq!(request(admin, "POST", retry, Some(TOKEN), "{}").await.1["woken"], 0);
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// An app without endpoints, on a server without webhook delivery, answers plainly.
#[tokio::test]
async fn webhook_health_of_an_app_without_endpoints_is_empty() {
    let server = TestServer::start(vec![app(1)]).await;
    let admin = start_admin(&server).await;
    let (status, health) = request(admin, "GET", "/api/apps/app-1/webhooks", Some(TOKEN), "").await;
    assert_eq!((status, health), (200, json!({"delivery": false, "endpoints": []})));
    assert_eq!(request(admin, "GET", "/api/apps/nope/webhooks", Some(TOKEN), "").await.0, 404);
    let (status, answer) = request(admin, "POST", "/api/apps/app-1/webhooks/retry", Some(TOKEN), "").await;
    assert_eq!((status, answer), (200, json!({"woken": 0})));
}
