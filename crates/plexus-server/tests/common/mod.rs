//! Test kit: a real plexus server on 127.0.0.1:0 and real clients (tokio-tungstenite for the
//! WebSocket, a plain HTTP/1.1 request for the API). Every wait has a timeout; nothing sleeps.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use plexus_core::{App, MemoryAppStore};
use plexus_protocol::signature;
use plexus_server::config::ServerConfig;
use plexus_server::webhooks::{WebhookService, WebhooksConfig};
use plexus_server::ServerState;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(5);

/// Reads a raw socket until the peer ends it (EOF, or a reset for bytes it never read); returns
/// everything it sent. Fails if the peer keeps it open past `within`.
pub async fn read_until_peer_closes(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let ended = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server kept the socket open");
    all
}

pub fn app(n: u32) -> App {
    let mut app = App::new(format!("app-{n}"), format!("key-{n}"), format!("secret-{n}"));
    app.enable_client_messages = true;
    app
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(apps: Vec<App>) -> TestServer {
        Self::start_with(ServerConfig::default(), apps).await
    }

    pub async fn start_with(config: ServerConfig, apps: Vec<App>) -> TestServer {
        Self::start_full(config, apps, None).await
    }

    /// A server with webhook delivery configured by `webhooks`.
    pub async fn start_with_webhooks(apps: Vec<App>, webhooks: WebhooksConfig) -> TestServer {
        Self::start_full(ServerConfig::default(), apps, Some(webhooks)).await
    }

    /// A server with `config` and webhook delivery configured by `webhooks`.
    pub async fn start_with_config_and_webhooks(
        config: ServerConfig,
        apps: Vec<App>,
        webhooks: WebhooksConfig,
    ) -> TestServer {
        Self::start_full(config, apps, Some(webhooks)).await
    }

    async fn start_full(
        config: ServerConfig,
        apps: Vec<App>,
        webhooks: Option<WebhooksConfig>,
    ) -> TestServer {
        Self::start_store(config, Arc::new(MemoryAppStore::new(apps).unwrap()), webhooks).await
    }

    /// A server over an app store the test keeps, e.g. to replace the apps while it runs.
    pub async fn start_store(
        mut config: ServerConfig,
        apps: Arc<dyn plexus_core::AppStore>,
        webhooks: Option<WebhooksConfig>,
    ) -> TestServer {
        config.host = "127.0.0.1".into();
        config.port = 0;
        let listener = plexus_server::bind(&config).expect("bind loopback");
        let state = match webhooks {
            Some(webhooks) => {
                let service = WebhookService::start(webhooks, apps.clone()).expect("webhook store opens");
                ServerState::with_webhooks(config, apps, service)
            }
            None => ServerState::new(config, apps),
        };
        Self::serving(listener, state)
    }

    /// A node of the cluster `adapter` names (a real NATS or Redis), serving once it has synced
    /// with its peers.
    pub async fn start_clustered(
        adapter: &plexus_server::config::AdapterConfig,
        apps: Vec<App>,
    ) -> TestServer {
        let config = ServerConfig { host: "127.0.0.1".into(), port: 0, ..ServerConfig::default() };
        let listener = plexus_server::bind(&config).expect("bind loopback");
        let connected = plexus_server::cluster::connect(adapter, plexus_server::webhook_sink(None))
            .await
            .expect("the bus is up")
            .expect("a cluster adapter");
        let apps: Arc<dyn plexus_core::AppStore> = Arc::new(MemoryAppStore::new(apps).unwrap());
        let history = connected.history.clone();
        let state =
            ServerState::assemble_with_history(config, apps, None, Some(connected.node.clone()), history);
        plexus_server::cluster::start(connected, &state).await;
        Self::serving(listener, state)
    }

    /// Serves `state` on `listener` until [`TestServer::stop`].
    fn serving(listener: tokio::net::TcpListener, state: Arc<ServerState>) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(plexus_server::serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        TestServer { addr, state, shutdown: Some(tx), task: Some(task) }
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => {
                tokio::time::timeout(Duration::from_secs(15), task).await.expect("server stops").unwrap()
            }
            None => Ok(()),
        }
    }

    pub async fn connect(&self, key: &str) -> TestClient {
        let mut client = self.connect_raw(&format!("/app/{key}?protocol=7&client=test&version=1.0")).await;
        let established = client.recv().await;
        assert_eq!(established["event"], "pusher:connection_established", "{established}");
        let data: Value = serde_json::from_str(established["data"].as_str().expect("string data")).unwrap();
        client.socket_id = data["socket_id"].as_str().unwrap().to_owned();
        client
    }

    pub async fn connect_raw(&self, path: &str) -> TestClient {
        let url = format!("ws://{}{}", self.addr, path);
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        TestClient { ws, socket_id: String::new() }
    }

    /// A signed API request; returns status and JSON body.
    pub async fn api(
        &self,
        app: &App,
        method: &str,
        path: &str,
        body: &str,
        extra: &[(&str, &str)],
    ) -> (u16, Value) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        self.api_at(app, method, path, body, extra, now).await
    }

    pub async fn api_at(
        &self,
        app: &App,
        method: &str,
        path: &str,
        body: &str,
        extra: &[(&str, &str)],
        timestamp: u64,
    ) -> (u16, Value) {
        let query =
            signature::sign_api_query(&app.key, &app.secret, method, path, body.as_bytes(), timestamp, extra);
        let (status, text) = self.http(method, &format!("{path}?{query}"), body).await;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn trigger(&self, app: &App, channel: &str, event: &str, data: &str) -> (u16, Value) {
        let body = json!({"name": event, "channels": [channel], "data": data}).to_string();
        self.api(app, "POST", &format!("/apps/{}/events", app.id), &body, &[]).await
    }

    /// One HTTP/1.1 request with `Connection: close`; returns status and body text.
    pub async fn http(&self, method: &str, path_and_query: &str, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let request = format!(
            "{method} {path_and_query} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
            .await
            .expect("response in time")
            .unwrap();
        let text = String::from_utf8_lossy(&response);
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub struct TestClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub socket_id: String,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed(u16),
    ClosedWithoutCode,
    Dropped,
}

impl TestClient {
    pub async fn send(&mut self, value: Value) {
        self.ws.send(Message::text(value.to_string())).await.unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// The next event (JSON), skipping WebSocket control frames.
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("an event within the timeout")
                .expect("the connection is open")
                .expect("a valid frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).expect("server sends JSON"),
                Message::Close(frame) => {
                    panic!("connection closed while waiting for an event: {frame:?}")
                }
                _ => continue,
            }
        }
    }

    /// The next event, which must be named `event`.
    pub async fn expect(&mut self, event: &str) -> Value {
        let value = self.recv().await;
        assert_eq!(value["event"], event, "unexpected frame {value}");
        value
    }

    /// Reads until the connection ends; returns the events seen and how it ended.
    pub async fn until_closed(&mut self) -> (Vec<Value>, Ended) {
        let mut events = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("connection ends in time");
            match next {
                Some(Ok(Message::Text(text))) => events.push(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (events, Ended::Closed(u16::from(frame.code)))
                }
                Some(Ok(Message::Close(None))) => return (events, Ended::ClosedWithoutCode),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return (events, Ended::Dropped),
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.send(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": ""}})).await;
        self.recv().await
    }

    pub async fn subscribe_private(&mut self, app: &App, channel: &str) -> Value {
        let sts = signature::channel_string_to_sign(&self.socket_id, channel, None);
        let auth = signature::auth_token(&app.key, &app.secret, &sts);
        self.send(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}})).await;
        self.recv().await
    }

    pub async fn subscribe_presence(&mut self, app: &App, channel: &str, channel_data: &str) -> Value {
        let sts = signature::channel_string_to_sign(&self.socket_id, channel, Some(channel_data));
        let auth = signature::auth_token(&app.key, &app.secret, &sts);
        self.send(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": channel_data}})).await;
        self.recv().await
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: WsCloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        // Wait for the server's close echo so the server has processed the disconnect.
        let _ = tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = self.ws.next().await {} }).await;
    }
}

/// Parses a string `data` field.
pub fn data_of(event: &Value) -> Value {
    serde_json::from_str(event["data"].as_str().expect("string data")).expect("JSON inside data")
}

/// The Prometheus text the metrics listener at `addr` serves.
pub async fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await.expect("metrics in time").unwrap();
    String::from_utf8_lossy(&response).into_owned()
}
