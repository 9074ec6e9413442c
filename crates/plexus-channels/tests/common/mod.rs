//! Test kit: a real plexus server on 127.0.0.1:0 with typed channels installed, and a raw
//! WebSocket client that speaks the `plexus:*` envelope. Every wait has a deadline.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use plexus_channels::{Channels, Installed};
use plexus_core::{App, MemoryAppStore};
use plexus_server::config::ServerConfig;
use plexus_server::webhooks::{WebhookService, WebhooksConfig};
use plexus_server::ServerState;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(5);
pub const APP_ID: &str = "app-1";
pub const KEY: &str = "key-1";

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    pub installed: Installed,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start<S: Send + Sync + 'static, U: Send + Sync + 'static>(channels: Channels<S, U>) -> Self {
        Self::start_with(Some(channels)).await
    }

    /// A server with no typed channels installed.
    pub async fn start_plain() -> Self {
        Self::start_with(None::<Channels<(), ()>>).await
    }

    async fn start_with<S: Send + Sync + 'static, U: Send + Sync + 'static>(
        channels: Option<Channels<S, U>>,
    ) -> Self {
        Self::start_full(channels, App::new(APP_ID, KEY, "secret-1"), None).await
    }

    /// A server for `app` (id [`APP_ID`], key [`KEY`]) delivering its webhooks as configured.
    pub async fn start_with_webhooks<S: Send + Sync + 'static, U: Send + Sync + 'static>(
        channels: Channels<S, U>,
        app: App,
        webhooks: WebhooksConfig,
    ) -> Self {
        Self::start_full(Some(channels), app, Some(webhooks)).await
    }

    async fn start_full<S: Send + Sync + 'static, U: Send + Sync + 'static>(
        channels: Option<Channels<S, U>>,
        app: App,
        webhooks: Option<WebhooksConfig>,
    ) -> Self {
        let config = ServerConfig {
            host: "127.0.0.1".into(),
            port: 0,
            shutdown_grace_secs: 1,
            ..ServerConfig::default()
        };
        let listener = plexus_server::bind(&config).expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let apps: Arc<dyn plexus_core::AppStore> = Arc::new(MemoryAppStore::new([app]).unwrap());
        let state = match webhooks {
            Some(webhooks) => {
                let service = WebhookService::start(webhooks, apps.clone()).expect("webhook store opens");
                ServerState::with_webhooks(config, apps, service)
            }
            None => ServerState::new(config, apps),
        };
        let installed = match channels {
            Some(channels) => state.install_channels(channels),
            None => Channels::<(), ()>::new(()).into_extension(state.hubs.clone()).1,
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(plexus_server::serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        TestServer { addr, state, installed, shutdown: Some(tx), task: Some(task) }
    }

    pub async fn connect(&self) -> Client {
        self.connect_with("").await
    }

    /// Connects with extra query parameters (`&room=a`).
    pub async fn connect_with(&self, query: &str) -> Client {
        let url = format!("ws://{}/app/{KEY}?protocol=7&client=js&version=8.4.0{query}", self.addr);
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut client = Client { ws, pending: VecDeque::new(), next_ref: 0 };
        let established = client.recv().await;
        assert_eq!(established["event"], "pusher:connection_established", "{established}");
        client
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames received while waiting for a reply, in order.
    pending: VecDeque<Value>,
    next_ref: u64,
}

impl Client {
    pub async fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).await.expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.expect("send");
    }

    async fn recv_socket(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next()).await.expect("a frame within 5 s");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).expect("server sends JSON"))
                }
                Some(Ok(Message::Close(_))) | None => return None,
                Some(Ok(_)) => continue,
                Some(Err(error)) => panic!("socket error: {error}"),
            }
        }
    }

    /// The next frame (buffered ones first).
    pub async fn recv(&mut self) -> Value {
        match self.pending.pop_front() {
            Some(frame) => frame,
            None => self.recv_socket().await.expect("socket open"),
        }
    }

    /// The next frame named `event`, skipping (and dropping) others.
    pub async fn recv_event(&mut self, event: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.recv())
                .await
                .unwrap_or_else(|_| panic!("no {event} within 5 s"));
            if frame["event"] == event {
                return frame;
            }
        }
    }

    /// Sends a request and returns the `data` of its `plexus:reply`; other frames stay buffered.
    pub async fn request(&mut self, event: &str, mut data: Value) -> Value {
        self.next_ref += 1;
        let reference = format!("r{}", self.next_ref);
        data["ref"] = json!(reference);
        self.send(json!({"event": event, "data": data})).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut other = VecDeque::new();
        let reply = loop {
            let frame = tokio::time::timeout_at(deadline, self.recv_socket())
                .await
                .unwrap_or_else(|_| panic!("no reply to {event} {reference} within 5 s"))
                .expect("socket open while waiting for a reply");
            if frame["event"] == "plexus:reply" && frame["data"]["ref"] == json!(reference) {
                break frame["data"].clone();
            }
            other.push_back(frame);
        };
        self.pending.extend(other);
        reply
    }

    pub async fn open(&mut self, channel: &str, params: Value) -> Value {
        self.request("plexus:open", json!({"channel": channel, "params": params})).await
    }

    pub async fn action(&mut self, channel: &str, action: &str, input: Value) -> Value {
        self.request("plexus:action", json!({"channel": channel, "action": action, "input": input})).await
    }

    /// Output of a call that must succeed.
    pub async fn ok(&mut self, channel: &str, action: &str, input: Value) -> Value {
        let reply = self.action(channel, action, input).await;
        assert_eq!(reply["ok"], true, "{channel}.{action} failed: {reply}");
        reply.get("output").cloned().unwrap_or(Value::Null)
    }

    /// Error code of a call that must fail.
    pub async fn err(&mut self, channel: &str, action: &str, input: Value) -> (String, String) {
        let reply = self.action(channel, action, input).await;
        assert_eq!(reply["ok"], false, "{channel}.{action} should fail: {reply}");
        (
            reply["error"]["code"].as_str().unwrap().to_owned(),
            reply["error"]["message"].as_str().unwrap().to_owned(),
        )
    }

    /// Asserts nothing arrives (buffered or on the socket) until a `pusher:pong` answers a ping:
    /// the server handles a connection's frames in order, so the pong bounds the wait.
    pub async fn expect_nothing_before_pong(&mut self) {
        self.send(json!({"event": "pusher:ping", "data": {}})).await;
        let frame = self.recv().await;
        assert_eq!(frame["event"], "pusher:pong", "expected nothing, got {frame}");
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// What is logged while the guard lives, on this thread (the test runtime is
/// single-threaded, so that includes the server's tasks).
#[derive(Clone, Default)]
pub struct Logs(Arc<(Mutex<Vec<u8>>, Notify)>);

impl Logs {
    pub fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber =
            tracing_subscriber::fmt().with_ansi(false).with_writer(move || logs.clone()).finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Waits for a line holding both `level` and `needle`.
    pub async fn wait_for(&self, level: &str, needle: &str) {
        let found = || {
            String::from_utf8_lossy(&self.0 .0.lock().unwrap())
                .lines()
                .any(|line| line.contains(level) && line.contains(needle))
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let written = self.0 .1.notified();
            if found() {
                return;
            }
            if tokio::time::timeout_at(deadline, written).await.is_err() {
                panic!("no {level} line with {needle:?} in the log");
            }
        }
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 .0.lock().unwrap().extend_from_slice(buf);
        self.0 .1.notify_waiters();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
