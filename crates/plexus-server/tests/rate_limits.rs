//! `[server.rate_limits]` over real sockets: 429 with Retry-After and a JSON body once a bucket
//! is empty, recovery once it refills (awaited by polling with a deadline), per-app isolation,
//! and in-band 4100 refusals for connection floods.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{app, Ended, TestServer};
use plexus_core::App;
use plexus_protocol::signature;
use plexus_server::config::ServerConfig;
use plexus_server::rate_limit::RateLimitConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REFILL_DEADLINE: Duration = Duration::from_secs(10);

struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

/// A signed trigger, answered with its status, `Retry-After` and JSON body.
async fn trigger(server: &TestServer, app: &App) -> Answer {
    let path = format!("/apps/{}/events", app.id);
    let body = json!({"name": "e", "channels": ["c"], "data": "x"}).to_string();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let query = signature::sign_api_query(&app.key, &app.secret, "POST", &path, body.as_bytes(), now, &[]);
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST {path}?{query} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(common::WAIT, stream.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let retry_after = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("retry-after:").map(|v| v.trim().to_owned()))
        .map(|v| v.parse().expect("Retry-After is whole seconds"));
    Answer { status, retry_after, body: serde_json::from_str(body).unwrap_or(Value::Null) }
}

/// Polls until a request is accepted again; fails with a message when the deadline passes.
async fn until_accepted(server: &TestServer, app: &App) {
    let deadline = tokio::time::Instant::now() + REFILL_DEADLINE;
    loop {
        let answer = trigger(server, app).await;
        if answer.status == 200 {
            return;
        }
        assert_eq!(answer.status, 429, "{}", answer.body);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bucket did not refill within {REFILL_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn limited(limits: RateLimitConfig) -> ServerConfig {
    ServerConfig { rate_limits: limits, ..ServerConfig::default() }
}

#[tokio::test]
async fn an_app_over_its_api_rate_gets_429_with_retry_after_then_recovers_and_other_apps_are_untouched() {
    let (busy, quiet) = (app(1), app(2));
    let limits = RateLimitConfig { api_per_app_per_sec: 1, api_per_app_burst: 2, ..Default::default() };
    let server = TestServer::start_with(limited(limits), vec![busy.clone(), quiet.clone()]).await;

    assert_eq!(trigger(&server, &busy).await.status, 200);
    assert_eq!(trigger(&server, &busy).await.status, 200);
    let refused = trigger(&server, &busy).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.retry_after, Some(1));
    let message = refused.body["error"].as_str().expect("a JSON error body");
    assert!(message.contains("app-1"), "{message}");

    assert_eq!(trigger(&server, &quiet).await.status, 200, "another app has its own bucket");
    until_accepted(&server, &busy).await;
}

#[tokio::test]
async fn one_client_ip_over_its_api_rate_is_refused_before_authentication_then_recovers() {
    let apps = [app(1), app(2)];
    let limits = RateLimitConfig { api_per_ip_per_sec: 2, ..Default::default() };
    let server = TestServer::start_with(limited(limits), apps.to_vec()).await;
    assert_eq!(trigger(&server, &apps[0]).await.status, 200);
    assert_eq!(trigger(&server, &apps[1]).await.status, 200);
    let refused = trigger(&server, &apps[1]).await;
    assert_eq!(refused.status, 429, "the IP's bucket spans apps: {}", refused.body);
    assert!(refused.body["error"].as_str().unwrap().contains("127.0.0.1"), "{}", refused.body);
    // Health checks are never limited.
    assert_eq!(server.http("GET", "/health", "").await.0, 200);
    until_accepted(&server, &apps[0]).await;
}

#[tokio::test]
async fn a_connection_flood_from_one_ip_is_refused_in_band_with_4100_then_allowed_again() {
    let limits = RateLimitConfig {
        ws_connections_per_ip_per_sec: 1,
        ws_connections_per_ip_burst: 1,
        ..Default::default()
    };
    let server = TestServer::start_with(limited(limits), vec![app(1)]).await;
    let _first = server.connect("key-1").await;
    let mut second = server.connect_raw("/app/key-1?protocol=7").await;
    let (events, ended) = second.until_closed().await;
    assert_eq!(events.first().map(|e| e["event"].clone()), Some(json!("pusher:error")), "{events:?}");
    assert_eq!(events[0]["data"]["code"], 4100);
    assert_eq!(ended, Ended::Closed(4100));

    let deadline = tokio::time::Instant::now() + REFILL_DEADLINE;
    loop {
        let mut client = server.connect_raw("/app/key-1?protocol=7").await;
        let first = client.recv().await;
        if first["event"] == "pusher:connection_established" {
            break;
        }
        assert_eq!(first["data"]["code"], 4100, "{first}");
        assert!(tokio::time::Instant::now() < deadline, "no connection allowed within {REFILL_DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_address_over_its_limit_loses_its_connection_so_a_pipelined_flood_is_not_parsed_to_the_end() {
    let limits = RateLimitConfig { api_per_ip_per_sec: 1, api_per_ip_burst: 2, ..Default::default() };
    let server = TestServer::start_with(limited(limits), vec![app(1)]).await;
    // Ten unsigned requests in one write on one keep-alive connection.
    let one = "GET /apps/app-1/channels HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(one.repeat(10).as_bytes()).await.unwrap();
    // Until the server ends the connection (EOF, or a reset for the requests it never read).
    let received = common::read_until_peer_closes(&mut stream, common::WAIT).await;
    let text = String::from_utf8_lossy(&received);
    let statuses: Vec<&str> = text.match_indices("HTTP/1.1 ").map(|(at, _)| &text[at + 9..at + 12]).collect();
    assert_eq!(statuses, ["401", "401", "429"], "two answered within the burst, then one refusal: {text}");
    let refusal = &text[text.rfind("HTTP/1.1 429").unwrap()..];
    assert!(refusal.to_ascii_lowercase().contains("connection: close"), "{refusal}");
}

#[tokio::test]
async fn an_app_over_its_own_limit_keeps_its_connection() {
    let limits = RateLimitConfig { api_per_app_per_sec: 1, api_per_app_burst: 1, ..Default::default() };
    let busy = app(1);
    let server = TestServer::start_with(limited(limits), vec![busy.clone()]).await;
    let path = format!("/apps/{}/channels", busy.id);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let query = signature::sign_api_query(&busy.key, &busy.secret, "GET", &path, b"", now, &[]);
    let one = format!("GET {path}?{query} HTTP/1.1\r\nHost: x\r\n\r\n");
    // Three signed requests on one keep-alive connection: the app's backend is who it says it
    // is, so its refusals do not cost it the connection.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(one.repeat(3).as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let answered = tokio::time::timeout(common::WAIT, async {
        while String::from_utf8_lossy(&received).matches("HTTP/1.1 ").count() < 3 {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the connection ended: {}", String::from_utf8_lossy(&received));
            received.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(answered.is_ok(), "not every request was answered: {}", String::from_utf8_lossy(&received));
    let text = String::from_utf8_lossy(&received);
    let statuses: Vec<&str> = text.match_indices("HTTP/1.1 ").map(|(at, _)| &text[at + 9..at + 12]).collect();
    assert_eq!(statuses, ["200", "429", "429"], "{text}");
    assert!(!text.to_ascii_lowercase().contains("connection: close"), "{text}");
}
