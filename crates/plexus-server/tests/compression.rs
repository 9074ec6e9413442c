//! permessage-deflate (RFC 7692) on `/app/{key}`, checked on the wire with a raw socket: what the
//! handshake answers, which frames carry RSV1 and what they inflate to, what a client may send
//! compressed, and the limit on what it inflates to.
//!
//! Not for the tungstenite comparison build, whose transport does its own framing and negotiates
//! no extension.
#![cfg(not(feature = "tungstenite"))]

mod common;

use std::time::Duration;

use common::{app, TestServer};
use plexus_protocol::deflate;
use plexus_protocol::wsframe::{client_frame, Opcode, RSV1};
use plexus_server::config::ServerConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);
const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
/// What Chromium offers on every WebSocket.
const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

struct RawClient {
    stream: TcpStream,
    /// Bytes read past the last frame taken.
    buf: Vec<u8>,
    /// The handshake response's head, lower-cased.
    head: String,
}

/// A server frame: its first byte (FIN, RSV bits, opcode) and its payload.
struct Frame {
    first: u8,
    payload: Vec<u8>,
}

impl RawClient {
    async fn connect(server: &TestServer, key: &str, extensions: Option<&str>) -> RawClient {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let offer = extensions.map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n")).unwrap_or_default();
        let request = format!(
            "GET /app/{key}?protocol=7 HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n",
            server.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        let buf = buf.split_off(end);
        RawClient { stream, buf, head }
    }

    fn extension_answer(&self) -> Option<&str> {
        self.head.lines().find_map(|line| line.strip_prefix("sec-websocket-extensions:")).map(str::trim)
    }

    async fn fill(&mut self, want: usize) {
        while self.buf.len() < want {
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("a frame in time")
                .unwrap();
            assert!(n > 0, "the server closed the socket");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn frame(&mut self) -> Frame {
        self.fill(2).await;
        let (first, short) = (self.buf[0], self.buf[1] & 0x7f);
        assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
        let (len, header) = match short {
            126 => {
                self.fill(4).await;
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                self.fill(10).await;
                (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
            }
            len => (len as usize, 2),
        };
        self.fill(header + len).await;
        let payload = self.buf[header..header + len].to_vec();
        self.buf.drain(..header + len);
        Frame { first, payload }
    }

    /// The next event, inflated when it came compressed, and whether it did.
    async fn event(&mut self) -> (bool, Value) {
        loop {
            let frame = self.frame().await;
            assert_eq!(frame.first & 0x80, 0x80, "plexus sends whole messages in one frame");
            match frame.first & 0x0f {
                0x1 => {
                    let compressed = frame.first & RSV1 != 0;
                    let text = if compressed {
                        deflate::inflate_message(&frame.payload, 1 << 20).expect("a valid compressed message")
                    } else {
                        frame.payload
                    };
                    return (compressed, serde_json::from_slice(&text).expect("JSON"));
                }
                0x9 | 0xA => continue,
                other => panic!("unexpected frame opcode {other:#x}"),
            }
        }
    }

    async fn expect(&mut self, name: &str) -> (bool, Value) {
        let (compressed, event) = self.event().await;
        assert_eq!(event["event"], name, "{event}");
        (compressed, event)
    }

    async fn send(&mut self, text: &str, compress: bool) {
        let bytes = if compress {
            let compressed = deflate::compress_frame_payload(text.as_bytes(), Opcode::Text).unwrap();
            let payload = plexus_protocol::wsframe::server_frame_payload(&compressed);
            let mut bytes = client_frame(Opcode::Text, true, &payload, MASK);
            bytes[0] |= RSV1;
            bytes
        } else {
            client_frame(Opcode::Text, true, text.as_bytes(), MASK)
        };
        self.stream.write_all(&bytes).await.unwrap();
    }

    /// The close code of the close frame that ends the connection.
    async fn close_code(&mut self) -> u16 {
        loop {
            let frame = self.frame().await;
            if frame.first & 0x0f == 0x8 {
                return u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
            }
        }
    }
}

fn subscribe(channel: &str) -> String {
    json!({"event": "pusher:subscribe", "data": {"channel": channel}}).to_string()
}

#[tokio::test]
async fn big_events_reach_compressing_clients_compressed_and_everyone_else_plain() {
    let app = app(1);
    let server = TestServer::start(vec![app.clone()]).await;
    let mut browser = RawClient::connect(&server, &app.key, Some(BROWSER_OFFER)).await;
    let mut plain = RawClient::connect(&server, &app.key, None).await;
    assert_eq!(
        browser.extension_answer(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    assert_eq!(plain.extension_answer(), None);
    browser.expect("pusher:connection_established").await;
    plain.expect("pusher:connection_established").await;

    // A compressed message from the client is inflated like any other.
    browser.send(&subscribe("prices"), true).await;
    plain.send(&subscribe("prices"), false).await;
    browser.expect("pusher_internal:subscription_succeeded").await;
    plain.expect("pusher_internal:subscription_succeeded").await;

    let rows: Vec<Value> =
        (0..20).map(|i| json!({"symbol": format!("SYM{i}"), "bid": 100 + i, "ask": 101 + i})).collect();
    let data = json!({"rows": rows}).to_string();
    let (status, _) = server.trigger(&app, "prices", "quote", &data).await;
    assert_eq!(status, 200);
    let (browser_compressed, browser_event) = browser.expect("quote").await;
    let (plain_compressed, plain_event) = plain.expect("quote").await;
    assert!(browser_compressed, "a {}-byte event goes compressed to a client that asked", data.len());
    assert!(!plain_compressed, "and plain to one that did not");
    assert_eq!(browser_event, plain_event, "the same event either way");
    assert_eq!(browser_event["data"], data);

    // Under compression_min_bytes (128): plain even to the compressing client.
    server.trigger(&app, "prices", "tick", "{}").await;
    let (compressed, _) = browser.expect("tick").await;
    assert!(!compressed);
}

#[tokio::test]
async fn a_compressed_message_that_inflates_past_the_limit_is_closed_with_1009() {
    let app = app(1);
    let config = ServerConfig { max_frame_bytes: 4096, ..ServerConfig::default() };
    let server = TestServer::start_with(config, vec![app.clone()]).await;
    let mut client = RawClient::connect(&server, &app.key, Some(BROWSER_OFFER)).await;
    client.expect("pusher:connection_established").await;
    // A megabyte of spaces: about a kilobyte on the wire, far over 4096 bytes once inflated.
    let bomb = format!("{{\"event\":\"x\",\"data\":\"{}\"}}", " ".repeat(1 << 20));
    client.send(&bomb, true).await;
    assert_eq!(client.close_code().await, 1009);
}

#[tokio::test]
async fn with_compression_off_no_offer_is_answered_and_rsv1_is_a_protocol_error() {
    let app = app(1);
    let config = ServerConfig { compression: false, ..ServerConfig::default() };
    let server = TestServer::start_with(config, vec![app.clone()]).await;
    let mut client = RawClient::connect(&server, &app.key, Some(BROWSER_OFFER)).await;
    assert_eq!(client.extension_answer(), None);
    client.expect("pusher:connection_established").await;
    client.send(&subscribe("prices"), true).await;
    assert_eq!(client.close_code().await, 1002);
}

#[tokio::test]
async fn an_offer_that_caps_the_server_window_is_agreed_and_then_sent_plain() {
    let app = app(1);
    let server = TestServer::start(vec![app.clone()]).await;
    let mut client =
        RawClient::connect(&server, &app.key, Some("permessage-deflate; server_max_window_bits=10")).await;
    assert_eq!(
        client.extension_answer(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10")
    );
    client.expect("pusher:connection_established").await;
    client.send(&subscribe("prices"), true).await;
    client.expect("pusher_internal:subscription_succeeded").await;
    let data = json!({"text": "a".repeat(2000)}).to_string();
    server.trigger(&app, "prices", "long", &data).await;
    let (compressed, event) = client.expect("long").await;
    assert!(
        !compressed,
        "our compressor cannot promise a smaller window, so it sends this client plain frames"
    );
    assert_eq!(event["data"], data);
}
