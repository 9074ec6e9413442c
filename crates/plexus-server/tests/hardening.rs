//! Attacks that once worked, each over a real socket against a real server, holding at most the
//! public app key: every test here failed before its fix. Waits are bounded; nothing asserts how
//! long anything took.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{app, TestServer, WAIT};
use futures_util::SinkExt;
use plexus_core::access::ApiKey;
use plexus_protocol::signature;
use plexus_protocol::wsframe::{client_frame, Opcode};
use plexus_server::config::ServerConfig;
use plexus_server::rate_limit::RateLimitConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const MASK: [u8; 4] = [1, 2, 3, 4];
/// Long enough for any refusal this file waits for; a hung socket fails the test instead.
const ENDS_WITHIN: Duration = Duration::from_secs(20);

/// Sends `request` on a new socket and returns it with the response head it got.
async fn exchange(server: &TestServer, request: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// Reads up to the end of a response head (bounded in size and time).
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read =
            tokio::time::timeout(WAIT, stream.read(&mut byte)).await.expect("a response in time").unwrap();
        assert!(read == 1 && head.len() < 64 * 1024, "connection ended inside the head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads the body of a response with `Content-Length` (after `read_head`).
async fn read_body(stream: &mut TcpStream, head: &str) -> Value {
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0u8; length];
    tokio::time::timeout(WAIT, stream.read_exact(&mut body)).await.unwrap().unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn status(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line")
}

/// Waits until the peer closes; returns everything it sent. Fails if it never does.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    common::read_until_peer_closes(stream, ENDS_WITHIN).await
}

/// A WebSocket handshake on a raw socket; returns the socket after the 101.
async fn raw_websocket(server: &TestServer, key: &str) -> TcpStream {
    let request = format!(
        "GET /app/{key}?protocol=7 HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    let (stream, head) = exchange(server, &request).await;
    assert_eq!(status(&head), 101, "{head}");
    stream
}

/// The server frames in `bytes`: (opcode, payload).
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let (len, header) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
            short => (short as usize, 2),
        };
        if bytes.len() < header + len {
            break;
        }
        frames.push((bytes[0] & 0x0f, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    frames
}

fn close_code(bytes: &[u8]) -> Option<u16> {
    server_frames(bytes)
        .into_iter()
        .find(|(opcode, _)| *opcode == 0x8)
        .and_then(|(_, payload)| (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])))
}

/// Waits (bounded) until `condition` holds, checking as things change rather than sleeping once.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let reached = tokio::time::timeout(ENDS_WITHIN, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "never reached: {what}");
}

fn signed_path(app: &plexus_core::App, method: &str, path: &str, body: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let query = signature::sign_api_query(&app.key, &app.secret, method, path, body.as_bytes(), now, &[]);
    format!("{path}?{query}")
}

#[tokio::test]
async fn a_continuation_claiming_2_pow_64_bytes_closes_with_1002_and_releases_the_socket() {
    let server = TestServer::start(vec![app(1)]).await;
    let mut socket = raw_websocket(&server, "key-1").await;
    let mut attack = client_frame(Opcode::Text, false, b"a", MASK);
    attack.extend_from_slice(&[0x80, 0xff]);
    attack.extend_from_slice(&u64::MAX.to_be_bytes());
    attack.extend_from_slice(&MASK);
    attack.extend_from_slice(b"xyz");
    socket.write_all(&attack).await.unwrap();
    let sent = until_closed(&mut socket).await;
    // A 64-bit length with its top bit set is malformed (RFC 6455 §5.2), not merely too large;
    // tungstenite (the comparison transport) does not check that bit and refuses the size.
    let expected = if cfg!(feature = "tungstenite") { 1009 } else { 1002 };
    assert_eq!(close_code(&sent), Some(expected));
    let hub = server.state.hubs.hub("app-1");
    eventually("the connection left the hub", || hub.connection_count() == 0).await;
    eventually("the socket is no longer counted", || server.state.open_sockets.open() == 0).await;
}

#[tokio::test]
async fn close_codes_that_must_not_be_sent_are_answered_with_1002() {
    let server = TestServer::start(vec![app(1)]).await;
    for code in [999u16, 1005, 1006, 5000] {
        let mut socket = raw_websocket(&server, "key-1").await;
        socket.write_all(&client_frame(Opcode::Close, true, &code.to_be_bytes(), MASK)).await.unwrap();
        let sent = until_closed(&mut socket).await;
        assert_eq!(close_code(&sent), Some(1002), "close code {code} was not refused");
    }
}

#[tokio::test]
async fn handshakes_with_a_wrong_version_or_key_are_refused_by_the_rfc() {
    let server = TestServer::start(vec![app(1)]).await;
    let upgrade = |version: &str, key: &str| {
        format!(
            "GET /app/key-1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\nConnection: close\r\n\r\n"
        )
    };
    let (_, head) = exchange(&server, &upgrade("8", "dGhlIHNhbXBsZSBub25jZQ==")).await;
    assert_eq!(status(&head), 426, "{head}");
    assert!(head.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{head}");
    for key in ["short", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZSE=", "!!!!!!!!!!!!!!!!!!!!!!=="] {
        let (_, head) = exchange(&server, &upgrade("13", key)).await;
        assert_eq!(status(&head), 400, "key {key:?}: {head}");
    }
}

fn quick_timeouts() -> ServerConfig {
    ServerConfig { request_header_timeout_secs: 1, keep_alive_timeout_secs: 1, ..ServerConfig::default() }
}

#[tokio::test]
async fn a_socket_that_never_sends_a_request_is_closed() {
    let server = TestServer::start_with(quick_timeouts(), vec![app(1)]).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    assert!(until_closed(&mut idle).await.is_empty());
    eventually("the socket is no longer counted", || server.state.open_sockets.open() == 0).await;
}

#[tokio::test]
async fn a_request_head_trickled_in_is_closed() {
    let server = TestServer::start_with(quick_timeouts(), vec![app(1)]).await;
    for path in ["/apps/app-1/channels", "/app/key-1"] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(format!("GET {path} HTTP/1.1\r\n").as_bytes()).await.unwrap();
        let trickle = async {
            for n in 0.. {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if stream.write_all(format!("X-Trickle-{n}: 1\r\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut probe = [0u8; 1];
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
                {
                    return;
                }
            }
        };
        assert!(
            tokio::time::timeout(ENDS_WITHIN, trickle).await.is_ok(),
            "{path}: the trickle was never cut off"
        );
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = TestServer::start_with(quick_timeouts(), vec![app(1)]).await;
    let (mut stream, head) = exchange(&server, "GET /up HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&head), 200);
    let rest = until_closed(&mut stream).await;
    assert_eq!(rest, b"OK");
}

#[tokio::test]
async fn sockets_over_the_cap_are_refused_clearly_while_health_still_answers() {
    let config = ServerConfig { max_connections: Some(2), ..ServerConfig::default() };
    let server = TestServer::start_with(config, vec![app(1)]).await;
    let first = server.connect("key-1").await;
    let _second = server.connect("key-1").await;

    let (mut stream, head) =
        exchange(&server, "GET /apps/app-1/channels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&head), 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    assert!(read_body(&mut stream, &head).await["error"].as_str().unwrap().contains("connection limit"));

    let (_, head) = exchange(&server, "GET /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&head), 200, "a full node still answers its liveness probe");

    let mut refused = server.connect_raw("/app/key-1?protocol=7").await;
    let (events, ended) = refused.until_closed().await;
    assert_eq!(events[0]["event"], "pusher:error");
    assert_eq!(events[0]["data"]["code"], 4100);
    assert_eq!(ended, common::Ended::Closed(4100));

    first.close().await;
    eventually("the closed socket's slot came back", || server.state.open_sockets.open() < 2).await;
    server.connect("key-1").await;
}

#[tokio::test]
async fn the_per_address_cap_counts_each_client_address() {
    let config = ServerConfig { max_connections_per_ip: 1, ..ServerConfig::default() };
    let server = TestServer::start_with(config, vec![app(1)]).await;
    let _held = server.connect("key-1").await;
    let from = |ip: [u8; 4]| async move {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind((ip, 0).into()).unwrap();
        let mut stream = socket.connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /apps/app-1/channels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        status(&read_head(&mut stream).await)
    };
    assert_eq!(from([127, 0, 0, 1]).await, 503, "a second socket from the same address");
    assert_eq!(from([127, 0, 0, 2]).await, 401, "another address is served (and asked to sign)");
}

#[tokio::test]
async fn unsigned_requests_do_not_spend_the_apps_rate_limit() {
    let limits = RateLimitConfig { api_per_app_per_sec: 1, api_per_app_burst: 2, ..Default::default() };
    let config = ServerConfig { rate_limits: limits, ..ServerConfig::default() };
    let server = TestServer::start_with(config, vec![app(1)]).await;
    for _ in 0..5 {
        let (code, _) = server.http("GET", "/apps/app-1/channels?auth_key=key-1", "").await;
        assert_eq!(code, 401);
    }
    let a = app(1);
    for _ in 0..2 {
        let (code, body) = server.api(&a, "GET", "/apps/app-1/channels", "", &[]).await;
        assert_eq!(code, 200, "the app's own backend keeps its allowance: {body}");
    }
    let (code, _) = server.api(&a, "GET", "/apps/app-1/channels", "", &[]).await;
    assert_eq!(code, 429, "signed requests still spend it");
}

#[tokio::test]
async fn no_body_is_read_or_continued_before_the_request_is_authenticated() {
    let server = TestServer::start(vec![app(1)]).await;
    let post = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\
             Expect: 100-continue\r\n\r\n"
        )
    };
    let (_, head) = exchange(&server, &post("/apps/nope/events")).await;
    assert_eq!(status(&head), 404, "an unknown app is answered at once, not continued: {head}");
    let (_, head) = exchange(&server, &post("/apps/app-1/events?auth_key=key-1&auth_signature=x")).await;
    assert_eq!(status(&head), 401, "a bad signature is answered at once: {head}");

    let a = app(1);
    let body = json!({"name": "e", "channel": "c", "data": "x"}).to_string();
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n",
        signed_path(&a, "POST", "/apps/app-1/events", &body),
        body.len()
    );
    let (mut stream, head) = exchange(&server, &request).await;
    assert_eq!(status(&head), 100, "a signed request is continued: {head}");
    stream.write_all(body.as_bytes()).await.unwrap();
    assert_eq!(status(&read_head(&mut stream).await), 200);
}

#[tokio::test]
async fn a_body_that_never_arrives_is_answered_408() {
    let config = ServerConfig { request_body_timeout_secs: 1, ..ServerConfig::default() };
    let server = TestServer::start_with(config, vec![app(1)]).await;
    let a = app(1);
    let body = json!({"name": "e", "channel": "c", "data": "x"}).to_string();
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        signed_path(&a, "POST", "/apps/app-1/events", &body),
        body.len(),
        &body[..5]
    );
    let (mut stream, head) =
        tokio::time::timeout(ENDS_WITHIN, exchange(&server, &request)).await.expect("answered in time");
    assert_eq!(status(&head), 408, "{head}");
    assert!(read_body(&mut stream, &head).await["error"].as_str().unwrap().contains("not received"));
}

#[tokio::test]
async fn bodies_in_flight_share_a_bounded_budget() {
    let config = ServerConfig { request_bodies_in_flight_kb: 1024, ..ServerConfig::default() };
    let server = TestServer::start_with(config, vec![app(1)]).await;
    let a = app(1);
    let big = json!({"name": "e", "channel": "c", "data": "x".repeat(1000 * 1024)}).to_string();
    let held = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        signed_path(&a, "POST", "/apps/app-1/events", &big),
        big.len()
    );
    let mut holder = TcpStream::connect(server.addr).await.unwrap();
    holder.write_all(held.as_bytes()).await.unwrap();
    holder.write_all(&big.as_bytes()[..1000]).await.unwrap();

    // 1001 KiB of the 1024 are held; a 30 KiB body does not fit beside it.
    let probe = json!({"name": "e", "channel": "c", "data": "x".repeat(30 * 1024)}).to_string();
    let refused = async {
        loop {
            let (code, body) = server.api(&a, "POST", "/apps/app-1/events", &probe, &[]).await;
            if code == 503 {
                return body;
            }
            // The holder's request may not have been read up to its body yet.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let body = tokio::time::timeout(ENDS_WITHIN, refused).await.expect("the budget runs out");
    assert!(body["error"].as_str().unwrap().contains("in flight"), "{body}");

    holder.write_all(&big.as_bytes()[1000..]).await.unwrap();
    let head = read_head(&mut holder).await;
    assert_eq!(status(&head), 413, "the event data itself is over the app's payload limit: {head}");
    let (code, body) = server.api(&a, "POST", "/apps/app-1/events", &probe, &[]).await;
    assert_eq!(code, 413, "the budget came back: the body was read and judged on its size: {body}");
}

#[tokio::test]
async fn http_1_1_requests_need_exactly_one_host() {
    let server = TestServer::start(vec![app(1)]).await;
    let (_, head) = exchange(&server, "GET /up HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&head), 400, "{head}");
    let (_, head) =
        exchange(&server, "GET /up HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&head), 400, "{head}");
    let (_, head) = exchange(&server, "GET /up HTTP/1.0\r\n\r\n").await;
    assert_eq!(status(&head), 200, "HTTP/1.0 needs no Host: {head}");
}

#[tokio::test]
async fn event_names_with_control_characters_are_refused_where_they_enter() {
    let server = TestServer::start(vec![app(1)]).await;
    let a = app(1);
    for name in ["evil\nid: 999:0", "a\rb", "tab\tname"] {
        let body = json!({"name": name, "channel": "news", "data": "{}"}).to_string();
        let (code, reply) = server.api(&a, "POST", "/apps/app-1/events", &body, &[]).await;
        assert_eq!(code, 400, "{name:?}: {reply}");
        assert!(reply["error"].as_str().unwrap().contains("control characters"), "{reply}");
    }
    let mut client = server.connect("key-1").await;
    client.subscribe_private(&a, "private-room").await;
    client
        .send(json!({"event": "client-evil\nevent: plexus:closed", "channel": "private-room", "data": {}}))
        .await;
    let error = client.expect("pusher:error").await;
    assert_eq!(error["data"]["code"], 4301, "{error}");
}

fn keyed_app(channels: &[&str]) -> plexus_core::App {
    let mut app = app(1);
    let key: ApiKey =
        serde_json::from_value(json!({"key": "sk_test", "scopes": ["*"], "channels": channels})).unwrap();
    app.api_keys = vec![key];
    app
}

#[tokio::test]
async fn sse_needs_a_grant_that_names_a_private_or_presence_channel() {
    let server = TestServer::start(vec![keyed_app(&["*"])]).await;
    let stream = |channel: &str| {
        format!(
        "GET /apps/app-1/events/stream?channels={channel}&api_key=sk_test HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    };
    for channel in ["private-orders", "presence-room", "private-encrypted-x"] {
        let (mut socket, head) = exchange(&server, &stream(channel)).await;
        assert_eq!(status(&head), 403, "{channel} with a blanket grant: {head}");
        assert!(read_body(&mut socket, &head).await["error"]
            .as_str()
            .unwrap()
            .contains("needs authorization"));
    }
    assert_eq!(server.state.hubs.hub("app-1").connection_count(), 0, "refused streams leave nothing behind");

    let server = TestServer::start(vec![keyed_app(&["private-orders-*", "presence-*"])]).await;
    let (_, head) = exchange(&server, &stream("private-orders-1")).await;
    assert_eq!(status(&head), 200, "a grant that names the channel admits it: {head}");
    let (mut socket, head) = exchange(&server, &stream("presence-room")).await;
    assert_eq!(status(&head), 403, "an API key names no user to join as: {head}");
    let _ = socket.read(&mut [0u8; 1]).await;
}

#[tokio::test]
async fn the_same_grant_admits_a_websocket_subscription_without_a_signature() {
    let server = TestServer::start(vec![keyed_app(&["private-orders-*"])]).await;
    let mut client = server.connect_raw("/app/key-1?protocol=7&api_key=sk_test").await;
    client.expect("pusher:connection_established").await;
    client.send(json!({"event": "pusher:subscribe", "data": {"channel": "private-orders-1"}})).await;
    client.expect("pusher_internal:subscription_succeeded").await;
    client.send(json!({"event": "pusher:subscribe", "data": {"channel": "private-other"}})).await;
    let refused = client.expect("pusher:subscription_error").await;
    assert_eq!(refused["data"]["status"], 403, "{refused}");
}

#[tokio::test]
async fn an_sse_reader_that_stops_reading_is_dropped() {
    let config =
        ServerConfig { write_timeout_secs: 1, max_queued_bytes: 64 * 1024, ..ServerConfig::default() };
    let server = TestServer::start_with(config, vec![app(1)]).await;
    let (_stalled, head) = exchange(
        &server,
        "GET /apps/app-1/events/stream?channels=news HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&head), 200);
    let hub = server.state.hubs.hub("app-1");
    let a = std::sync::Arc::new(app(1));
    let frame = plexus_protocol::codec::ServerEvent::new("tick")
        .channel("news")
        .data(plexus_protocol::codec::Data::Str(&"x".repeat(16 * 1024)))
        .to_frame();
    // The reader never reads: publish until the server gives up on it, bounded.
    let dropped = async {
        for _ in 0..100_000 {
            if hub.connection_count() == 0 {
                return;
            }
            hub.publish_frame(&a, "news", &frame, None);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("published 1.6 GB to a reader that does not read, and it is still subscribed");
    };
    tokio::time::timeout(Duration::from_secs(60), dropped).await.expect("dropped in time");
    eventually("the socket is released", || server.state.open_sockets.open() == 0).await;
}

#[tokio::test]
async fn cache_channels_are_bounded_per_app() {
    // Each kept event costs its frame (the data is kept only inside it): two 9 KiB events fit
    // in 24 KiB, a third does not.
    let config =
        ServerConfig { max_cached_channels_per_app: 3, max_cache_kb_per_app: 24, ..ServerConfig::default() };
    let server = TestServer::start_with(config, vec![app(1)]).await;
    let a = app(1);
    for n in 0..3 {
        assert_eq!(server.trigger(&a, &format!("cache-{n}"), "e", "x").await.0, 200);
    }
    let (code, body) = server.trigger(&a, "cache-3", "e", "x").await;
    assert_eq!(code, 429, "{body}");
    assert!(body["error"].as_str().unwrap().contains("cache channels"), "{body}");
    assert_eq!(server.trigger(&a, "cache-1", "e", "replaced").await.0, 200, "a kept channel may be replaced");
    let (code, body) = server.trigger(&a, "cache-2", "e", &"x".repeat(9 * 1024)).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = server.trigger(&a, "cache-1", "e", &"y".repeat(9 * 1024)).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = server.trigger(&a, "cache-0", "e", &"z".repeat(9 * 1024)).await;
    assert_eq!(code, 429, "over the byte budget: {body}");
}

#[tokio::test]
async fn presence_user_ids_keep_every_digit() {
    let server = TestServer::start(vec![app(1)]).await;
    let a = app(1);
    let mut clients = Vec::new();
    for id in ["18446744073709551616", "18446744073709551617"] {
        let mut client = server.connect("key-1").await;
        let joined = client.subscribe_presence(&a, "presence-big", &format!("{{\"user_id\":{id}}}")).await;
        assert_eq!(joined["event"], "pusher_internal:subscription_succeeded", "{joined}");
        clients.push(client);
    }
    let (code, body) = server.api(&a, "GET", "/apps/app-1/channels/presence-big/users", "", &[]).await;
    assert_eq!(code, 200);
    let mut ids: Vec<&str> =
        body["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["18446744073709551616", "18446744073709551617"]);
}

#[tokio::test]
async fn subscriptions_per_connection_are_bounded_and_the_socket_stays() {
    let config = ServerConfig { max_subscriptions_per_connection: 3, ..ServerConfig::default() };
    let server = TestServer::start_with(config, vec![app(1)]).await;
    let mut client = server.connect("key-1").await;
    for n in 0..3 {
        let ok = client.subscribe(&format!("room-{n}")).await;
        assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    }
    let refused = client.subscribe("room-3").await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    assert_eq!(refused["data"]["status"], 4303, "{refused}");
    assert_eq!(client.expect("pusher:error").await["data"]["code"], 4303);
    assert_eq!(client.subscribe("room-1").await["event"], "pusher_internal:subscription_succeeded");
    client.send(json!({"event": "pusher:ping", "data": {}})).await;
    client.expect("pusher:pong").await;
}

#[tokio::test]
async fn subscription_churn_is_rate_limited_per_connection() {
    let config = ServerConfig { max_subscribes_per_sec: 1, ..ServerConfig::default() };
    let server = TestServer::start_with(config, vec![app(1)]).await;
    let mut client = server.connect("key-1").await;
    let mut refused = None;
    for n in 0..20 {
        client.send(json!({"event": "pusher:subscribe", "data": {"channel": format!("c-{n}")}})).await;
        let reply = client.recv().await;
        if reply["event"] == "pusher:subscription_error" {
            refused = Some((n, reply));
            break;
        }
        client.send(json!({"event": "pusher:unsubscribe", "data": {"channel": format!("c-{n}")}})).await;
    }
    let (n, reply) = refused.expect("churn is refused before 20 pairs");
    assert_eq!(reply["data"]["status"], 4303, "{reply}");
    assert!(n <= 10, "a burst of ten seconds' worth at most, counting unsubscribes too: refused at {n}");
}

#[tokio::test]
async fn a_connection_that_floods_frames_is_closed_with_4100() {
    let config = ServerConfig { max_frames_per_sec: 1, ..ServerConfig::default() };
    let server = TestServer::start_with(config, vec![app(1)]).await;
    let mut client = server.connect("key-1").await;
    for _ in 0..30 {
        if client
            .ws
            .send(tokio_tungstenite::tungstenite::Message::text("{\"event\":\"pusher:ping\"}"))
            .await
            .is_err()
        {
            break;
        }
    }
    let (_, ended) = client.until_closed().await;
    assert_eq!(ended, common::Ended::Closed(4100));
}
