//! The chat example end to end over loopback: history without a session, `send` refused until
//! `authenticate`, messages stored and pushed to everyone in the room and no one outside it.

use std::sync::Arc;
use std::time::Duration;

use chat_example::{channels, ChatServices};
use futures_util::{SinkExt, StreamExt};
use plexus_core::{App, MemoryAppStore};
use plexus_server::config::ServerConfig;
use plexus_server::ServerState;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(5);

struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ref: u64,
    /// Frames that arrived while waiting for a reply.
    events: Vec<Value>,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        let url = format!("ws://{addr}/app/app-key?protocol=7");
        let (ws, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await.unwrap().unwrap();
        let mut client = Client { ws, next_ref: 0, events: Vec::new() };
        assert_eq!(client.next().await["event"], "pusher:connection_established");
        client
    }

    async fn next(&mut self) -> Value {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("a frame within 5 s") {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    }

    async fn request(&mut self, event: &str, mut data: Value) -> Value {
        self.next_ref += 1;
        data["ref"] = json!(self.next_ref);
        self.ws.send(Message::text(json!({"event": event, "data": data}).to_string())).await.unwrap();
        loop {
            let frame = self.next().await;
            if frame["event"] == "plexus:reply" && frame["data"]["ref"] == json!(self.next_ref) {
                return frame["data"].clone();
            }
            self.events.push(frame);
        }
    }

    async fn call(&mut self, action: &str, input: Value) -> Value {
        self.request("plexus:action", json!({"channel": "chat", "action": action, "input": input})).await
    }

    /// The next topic event, buffered first.
    async fn pushed(&mut self) -> Value {
        if let Some(at) = self.events.iter().position(|e| e["event"] == "plexus:event") {
            return self.events.remove(at)["data"].clone();
        }
        loop {
            let frame = self.next().await;
            if frame["event"] == "plexus:event" {
                return frame["data"].clone();
            }
        }
    }
}

#[tokio::test]
async fn messages_are_stored_and_pushed_to_the_room() {
    let config = ServerConfig { host: "127.0.0.1".into(), port: 0, ..ServerConfig::default() };
    let listener = plexus_server::bind(&config).unwrap();
    let addr = listener.local_addr().unwrap();
    let apps = MemoryAppStore::new([App::new("app-id", "app-key", "app-secret")]).unwrap();
    let state = ServerState::new(config, Arc::new(apps));
    state.install_channels(channels(ChatServices::demo()));
    let server = tokio::spawn(plexus_server::serve(listener, state, std::future::pending()));

    let mut alice = Client::connect(addr).await;
    let mut bob = Client::connect(addr).await;
    let mut elsewhere = Client::connect(addr).await;
    let welcome = alice.request("plexus:open", json!({"channel": "chat", "params": {"room": "rust"}})).await;
    assert_eq!(welcome["output"], json!({"room": "rust", "messages": 0}), "{welcome}");
    bob.request("plexus:open", json!({"channel": "chat", "params": {"room": "rust"}})).await;
    elsewhere.request("plexus:open", json!({"channel": "chat", "params": {"room": "go"}})).await;

    let refused = alice.call("send", json!({"text": "hi"})).await;
    assert_eq!(refused["error"]["code"], "unauthenticated");
    assert_eq!(alice.call("authenticate", json!({"token": "wrong"})).await["error"]["code"], "bad_token");
    assert_eq!(
        alice.call("authenticate", json!({"token": "token-alice"})).await["output"],
        json!({"user": "alice"})
    );
    let sent = alice.call("send", json!({"text": "hello rust"})).await;
    let message = json!({"id": 1, "room": "rust", "user": "alice", "text": "hello rust"});
    assert_eq!(sent["output"], message);

    let pushed = json!({"channel": "chat", "topic": "room:rust", "data": message});
    assert_eq!(bob.pushed().await, pushed);
    assert_eq!(alice.pushed().await, pushed);
    // History needs no session; the other room saw nothing.
    assert_eq!(bob.call("history", json!(null)).await["output"], json!([message]));
    assert_eq!(
        elsewhere.call("history", json!(null)).await.get("output").cloned().unwrap_or(json!([])),
        json!([])
    );
    // (Following a topic also sends pusher_internal:subscription_succeeded for its plexus channel.)
    assert!(!elsewhere.events.iter().any(|e| e["event"] == "plexus:event"), "{:?}", elsewhere.events);
    server.abort();
}
