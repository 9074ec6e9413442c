//! Webhook delivery against a real HTTP receiver on loopback: signatures, batching, shapes,
//! retries, an endpoint that is down for a minute, held-back vacate events, overflow, and a crash
//! (SIGKILL) with deliveries pending.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::{app, TestServer};
use plexus_core::app::{WebhookKind, WebhookTarget};
use plexus_core::App;
use plexus_protocol::signature;
use plexus_server::webhooks::WebhooksConfig;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// One request as the receiver saw it.
#[derive(Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn events(&self) -> Vec<Value> {
        let body: Value = serde_json::from_slice(&self.body).unwrap();
        assert!(body["time_ms"].as_u64().unwrap() > 1_600_000_000_000);
        body["events"].as_array().unwrap().clone()
    }
}

/// A webhook endpoint that answers 500 to its first `failures` requests, then 200.
struct Receiver {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Received>,
    attempts: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start(failures: usize) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, failures)
    }

    fn serve(listener: tokio::net::TcpListener, failures: usize) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let attempts = Arc::new(AtomicUsize::new(0));
        let counter = attempts.clone();
        let router = Router::new().route(
            "/webhook",
            post(move |headers: HeaderMap, body: Bytes| {
                let tx = tx.clone();
                let counter = counter.clone();
                async move {
                    if counter.fetch_add(1, Ordering::SeqCst) < failures {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let _ = tx.send(Received { headers, body });
                    StatusCode::OK
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Receiver { addr, rx, attempts }
    }

    fn url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }

    async fn next(&mut self, within: Duration) -> Received {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .expect("a webhook in time")
            .expect("receiver alive")
    }

    /// Collects events until `done` says enough; checks every request's signature on the way.
    async fn events_until(
        &mut self,
        app: &App,
        within: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let mut events = Vec::new();
        while !done(&events) {
            let request = self.next(within).await;
            assert_signed(app, &request);
            events.extend(request.events());
        }
        events
    }
}

fn assert_signed(app: &App, request: &Received) {
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(request.headers["x-pusher-key"], app.key.as_str());
    let expected = signature::webhook_signature(&app.secret, &request.body);
    assert_eq!(request.headers["x-pusher-signature"], expected.as_str());
}

fn all_kinds() -> Vec<WebhookKind> {
    use WebhookKind::*;
    vec![
        ChannelOccupied,
        ChannelVacated,
        MemberAdded,
        MemberRemoved,
        ClientEvent,
        CacheMiss,
        SubscriptionCount,
    ]
}

fn app_with_webhook(url: String) -> App {
    let mut a = app(1);
    a.webhooks = vec![WebhookTarget { url, events: all_kinds() }];
    a
}

fn fast_config(name: &str) -> WebhooksConfig {
    let dir = std::env::temp_dir().join(format!("plexus-webhooks-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    WebhooksConfig {
        data_dir: dir,
        vacate_delay_ms: 0,
        initial_backoff_ms: 100,
        max_backoff_secs: 1,
        ..Default::default()
    }
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{}:{}", e["name"].as_str().unwrap(), e["channel"].as_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn webhooks_are_signed_batched_and_shaped_for_the_sdks() {
    let mut receiver = Receiver::start(0).await;
    let a = app_with_webhook(receiver.url());
    let server = TestServer::start_with_webhooks(vec![a.clone()], fast_config("shapes")).await;

    let mut ann = server.connect("key-1").await;
    let mut bob = server.connect("key-1").await;
    ann.subscribe_presence(&a, "presence-room", r#"{"user_id":"ann"}"#).await;
    bob.subscribe_presence(&a, "presence-room", r#"{"user_id":"bob"}"#).await;
    ann.expect("pusher_internal:member_added").await;
    ann.send(json!({"event": "client-hi", "channel": "presence-room", "data": {"x": 1}})).await;
    bob.recv().await;
    bob.subscribe("cache-empty").await;
    bob.close().await;
    ann.close().await;

    let wait = Duration::from_secs(5);
    let events = receiver
        .events_until(&a, wait, |e| {
            e.iter().any(|e| e["name"] == "channel_vacated" && e["channel"] == "presence-room")
        })
        .await;
    let seen = names(&events);
    let position = |name: &str| {
        seen.iter().position(|n| n == name).unwrap_or_else(|| panic!("{name} missing in {seen:?}"))
    };
    assert!(position("channel_occupied:presence-room") < position("member_added:presence-room"));
    assert!(position("member_removed:presence-room") < position("channel_vacated:presence-room"));
    position("cache_miss:cache-empty");
    let members: Vec<&Value> = events.iter().filter(|e| e["name"] == "member_added").collect();
    assert_eq!(members.len(), 2, "one member_added per user: {seen:?}");
    let client = events.iter().find(|e| e["name"] == "client_event").expect("client_event webhook");
    assert_eq!(client["event"], "client-hi");
    assert_eq!(client["data"], r#"{"x":1}"#, "client_event data is a string");
    assert_eq!(client["user_id"], "ann");
    assert_eq!(client["socket_id"], ann_socket_id_shape(client));
}

/// Socket ids are `digits.digits`; returns the value if it has that shape.
fn ann_socket_id_shape(event: &Value) -> Value {
    let id = event["socket_id"].as_str().unwrap();
    let (a, b) = id.split_once('.').unwrap();
    assert!(a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()), "{id}");
    event["socket_id"].clone()
}

#[tokio::test]
async fn failed_deliveries_are_retried_until_accepted() {
    let mut receiver = Receiver::start(2).await;
    let a = app_with_webhook(receiver.url());
    let server = TestServer::start_with_webhooks(vec![a.clone()], fast_config("retry")).await;
    let mut client = server.connect("key-1").await;
    client.subscribe("retried").await;
    let request = receiver.next(Duration::from_secs(10)).await;
    assert_signed(&a, &request);
    assert_eq!(names(&request.events()), ["channel_occupied:retried"]);
    assert_eq!(receiver.attempts.load(Ordering::SeqCst), 3, "two 500s, then delivered");
}

#[tokio::test]
async fn an_endpoint_down_for_a_minute_gets_every_webhook_once_in_order_when_back() {
    // Reserve a port, then leave it closed: deliveries are refused until the receiver starts.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let a = app_with_webhook(format!("http://{addr}/webhook"));
    let config = WebhooksConfig { max_backoff_secs: 4, ..fast_config("down") };
    let server = TestServer::start_with_webhooks(vec![a.clone()], config).await;

    let mut client = server.connect("key-1").await;
    for round in 0..3 {
        for channel in ["c1", "c2", "c3"] {
            client.subscribe(channel).await;
            client.send(json!({"event": "pusher:unsubscribe", "data": {"channel": channel}})).await;
        }
        // Separate batches, so order across requests is exercised too.
        client.send(json!({"event": "pusher:ping"})).await;
        client.expect("pusher:pong").await;
        tokio::time::sleep(Duration::from_millis(100 * (round + 1))).await;
    }

    tokio::time::sleep(Duration::from_secs(60)).await;
    let listener = tokio::net::TcpListener::bind(addr).await.expect("the reserved port is free again");
    let mut receiver = Receiver::serve(listener, 0);
    let events = receiver.events_until(&a, Duration::from_secs(15), |e| e.len() >= 18).await;
    assert_eq!(events.len(), 18, "each event exactly once");
    for channel in ["c1", "c2", "c3"] {
        let per_channel: Vec<&str> =
            events.iter().filter(|e| e["channel"] == channel).map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(per_channel, ["channel_occupied", "channel_vacated"].repeat(3), "{channel}");
    }
}

#[tokio::test]
async fn a_quick_return_within_the_vacate_delay_reports_neither_vacated_nor_occupied() {
    let mut receiver = Receiver::start(0).await;
    let a = app_with_webhook(receiver.url());
    let config = WebhooksConfig { vacate_delay_ms: 1000, ..fast_config("delay") };
    let server = TestServer::start_with_webhooks(vec![a.clone()], config).await;
    let mut client = server.connect("key-1").await;
    client.subscribe("flappy").await;
    client.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "flappy"}})).await;
    client.subscribe("flappy").await;
    client.subscribe("marker").await;
    let events = receiver
        .events_until(&a, Duration::from_secs(5), |e| e.iter().any(|e| e["channel"] == "marker"))
        .await;
    assert_eq!(names(&events), ["channel_occupied:flappy", "channel_occupied:marker"]);
    // The channel really empties later: vacated arrives after the delay.
    client.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "flappy"}})).await;
    let later = receiver.events_until(&a, Duration::from_secs(5), |e| !e.is_empty()).await;
    assert_eq!(names(&later), ["channel_vacated:flappy"]);
}

#[tokio::test]
async fn a_full_queue_drops_events_and_counts_them() {
    let receiver = Receiver::start(0).await;
    let a = app_with_webhook(receiver.url());
    let config = WebhooksConfig { queue_capacity: 1, ..fast_config("overflow") };
    let server = TestServer::start_with_webhooks(vec![a.clone()], config).await;
    let mut client = server.connect("key-1").await;
    let burst: Vec<String> = (0..300)
        .map(|i| json!({"event": "pusher:subscribe", "data": {"channel": format!("burst-{i}")}}).to_string())
        .collect();
    for frame in &burst {
        client.send_text(frame).await;
    }
    for _ in 0..300 {
        client.expect("pusher_internal:subscription_succeeded").await;
    }
    let dropped = server.state.webhooks.as_ref().unwrap().dispatcher.dropped_total();
    assert!(dropped > 0, "a one-slot queue must overflow under a burst of 300 events");
}

/// A `plexus serve` child process, killed when dropped.
struct Plexus {
    child: std::process::Child,
    addr: String,
    metrics_addr: String,
}

impl Plexus {
    fn spawn(config: &std::path::Path) -> Plexus {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_plexus"))
            .args(["serve", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (mut addr, mut metrics_addr) = (String::new(), String::new());
        let mut line = String::new();
        while addr.is_empty() {
            line.clear();
            assert!(stdout.read_line(&mut line).unwrap() > 0, "plexus exited before listening");
            let value = line.trim().rsplit(' ').next().unwrap().to_owned();
            if line.starts_with("plexus metrics on") {
                metrics_addr = value;
            } else if line.starts_with("plexus listening on") {
                addr = value;
            }
        }
        Plexus { child, addr, metrics_addr }
    }

    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.metrics_addr).await.unwrap();
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.metrics_addr);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    }
}

impl Drop for Plexus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn webhooks_pending_when_the_process_is_killed_are_delivered_after_restart() {
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_addr = reserved.local_addr().unwrap();
    drop(reserved);
    let dir = std::env::temp_dir().join(format!("plexus-webhooks-{}-crash", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("plexus.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
host = "127.0.0.1"
port = 0

[metrics]
port = 0

[webhooks]
data_dir = "{}"
vacate_delay_ms = 0
initial_backoff_ms = 100
max_backoff_secs = 1

[[apps]]
id = "app-1"
key = "key-1"
secret = "secret-1"

[[apps.webhooks]]
url = "http://{hook_addr}/webhook"
events = ["channel_occupied"]
"#,
            dir.join("data").display()
        ),
    )
    .unwrap();

    let first = Plexus::spawn(&config);
    let url = format!("ws://{}/app/key-1?protocol=7", first.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use futures_util::SinkExt;
    let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": "survives-a-crash"}}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::text(subscribe)).await.unwrap();
    // The job is on disk once it is queued for delivery (the endpoint refuses meanwhile).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !first.metrics().await.contains("plexus_webhook_jobs_pending 1") {
        assert!(tokio::time::Instant::now() < deadline, "the webhook job was never queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(ws);
    drop(first); // SIGKILL: no graceful flush.

    let listener = tokio::net::TcpListener::bind(hook_addr).await.unwrap();
    let mut receiver = Receiver::serve(listener, 0);
    let _second = Plexus::spawn(&config);
    let request = receiver.next(Duration::from_secs(10)).await;
    assert_signed(&App::new("app-1", "key-1", "secret-1"), &request);
    assert_eq!(names(&request.events()), ["channel_occupied:survives-a-crash"]);
}
