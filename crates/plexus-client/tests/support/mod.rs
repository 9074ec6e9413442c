//! What the realtime tests run against: a real `plexus serve` process with an app that takes API
//! keys, scopes a channel prefix and keeps history; publishing through the signed HTTP API; a
//! TCP proxy between client and server that can cut, refuse or freeze connections; and a
//! recorder that reads a stream with a deadline. Every wait has a deadline.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plexus_realtime_client::{
    Backoff, ClientOptions, Credentials, Event, EventStream, Resume, Status, StreamItem,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// The deadline of every wait.
pub const WAIT: Duration = Duration::from_secs(10);

pub const APP_ID: &str = "stream-app";
pub const APP_KEY: &str = "stream-key";
pub const APP_SECRET: &str = "stream-secret";
pub const READER: &str = "sk_test_reader_0123456789";

/// The server both SDKs' realtime tests use (the TypeScript one reads the same file).
const CONFIG: &str = include_str!("../../../../tests/fixtures/realtime-server.toml");

/// `PLEXUS_BIN`, else the workspace's release build (`cargo test --workspace --release` builds
/// it before the tests run).
fn plexus_bin() -> PathBuf {
    let path = match std::env::var_os("PLEXUS_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/plexus"),
    };
    assert!(
        path.is_file(),
        "the plexus binary is missing at {}: build it with `cargo build --release -p plexus-server` \
         (or set PLEXUS_BIN)",
        path.display()
    );
    path
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A `plexus serve` process, killed when dropped.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Server {
    /// Starts on a free port.
    pub async fn start() -> Server {
        Server::start_on(0).await
    }

    /// Starts on `port` (0: a free one) and waits until it listens.
    pub async fn start_on(port: u16) -> Server {
        let bin = plexus_bin();
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("plexus-client-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("plexus.toml");
        std::fs::write(&config, CONFIG).unwrap();
        let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--port", &port.to_string()])
            .current_dir(&dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn plexus");
        // Reads stdout to its end (so the server never blocks on it) and reports the port.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("plexus listening on ") {
                    let port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                    let _ = tx.send(port);
                }
            }
        });
        let mut server = Server { child: Some(child), port: 0, dir };
        let listening = tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT)).await.unwrap();
        match listening {
            Ok(Some(port)) => server.port = port,
            _ => {
                let log = std::fs::read_to_string(server.dir.join("stderr.log")).unwrap_or_default();
                panic!("plexus did not report listening within {WAIT:?}; its stderr:\n{log}");
            }
        }
        server
    }

    /// Stops it with SIGTERM (a graceful shutdown: connections are closed with 4200) and waits
    /// until it has exited.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "plexus did not exit within {WAIT:?} of SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Client options for `port` with the reader key and a quick backoff without jitter.
pub fn options(port: u16) -> ClientOptions {
    ClientOptions::new(format!("ws://127.0.0.1:{port}"), APP_KEY)
        .credentials(Credentials::api_key(READER))
        .backoff(quick_backoff())
}

/// 20, 40, 80, 80 … ms.
pub fn quick_backoff() -> Backoff {
    Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(80), jitter: false }
}

/// Publishes `data` (as its JSON text, as the Pusher SDKs send it) through the signed HTTP API.
pub async fn publish(port: u16, channel: &str, name: &str, data: Value) {
    let body = serde_json::json!({"name": name, "channels": [channel], "data": data.to_string()}).to_string();
    let path = format!("/apps/{APP_ID}/events");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let query = plexus_protocol::signature::sign_api_query(
        APP_KEY,
        APP_SECRET,
        "POST",
        &path,
        body.as_bytes(),
        now,
        &[],
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!(
        "POST {path}?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await.expect("a response in time").unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "publish answered: {text}");
}

/// A TCP proxy to a port that can drop every connection, refuse new ones, or freeze the live
/// ones (they stay open but nothing passes any more, as on a dead link).
pub struct Proxy {
    pub port: u16,
    state: Arc<ProxyState>,
    accept: AbortHandle,
}

#[derive(Default)]
struct ProxyState {
    refusing: AtomicBool,
    /// Each live connection's dead flag and task.
    pairs: Mutex<Vec<(Arc<AtomicBool>, AbortHandle)>>,
    live: AtomicUsize,
    /// Server-to-client bytes (server frames are unmasked, so the text is readable).
    downstream: Mutex<String>,
    changed: Notify,
}

struct Live(Arc<ProxyState>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

impl Proxy {
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState::default());
        let accepting = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                if accepting.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)).await else { continue };
                let dead = Arc::new(AtomicBool::new(false));
                accepting.live.fetch_add(1, Ordering::SeqCst);
                let live = Live(accepting.clone());
                let task = tokio::spawn(pipe(client, upstream, dead.clone(), live));
                let mut pairs = accepting.pairs.lock().unwrap();
                pairs.retain(|(_, task)| !task.is_finished());
                pairs.push((dead, task.abort_handle()));
            }
        })
        .abort_handle();
        Proxy { port, state, accept }
    }

    /// Drops every live connection.
    pub fn cut(&self) {
        for (_, task) in self.state.pairs.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Refuses (accepts and drops at once) new connections, or stops refusing.
    pub fn refuse(&self, on: bool) {
        self.state.refusing.store(on, Ordering::SeqCst);
    }

    /// Lets nothing through on the live connections any more; new ones are not affected.
    pub fn freeze(&self) {
        for (dead, _) in self.state.pairs.lock().unwrap().iter() {
            dead.store(true, Ordering::SeqCst);
        }
    }

    /// Connections open through the proxy.
    pub fn live(&self) -> usize {
        self.state.live.load(Ordering::SeqCst)
    }

    /// How often `needle` went from the server to clients.
    pub fn downstream_count(&self, needle: &str) -> usize {
        self.state.downstream.lock().unwrap().matches(needle).count()
    }

    /// Waits until `check` holds, re-checking whenever bytes pass or a connection ends.
    pub async fn wait(&self, what: &str, check: impl Fn(&Proxy) -> bool) {
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.state.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if check(self) {
                    return;
                }
                notified.await;
            }
        })
        .await;
        assert!(waited.is_ok(), "timed out after {WAIT:?} waiting for {what}");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn pipe(client: TcpStream, upstream: TcpStream, dead: Arc<AtomicBool>, live: Live) {
    let state = live.0.clone();
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) if !dead.load(Ordering::SeqCst) => {
                    if upstream_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match upstream_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) if !dead.load(Ordering::SeqCst) => {
                    state.downstream.lock().unwrap().extend(buf[..n].iter().map(|&b| b as char));
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    state.changed.notify_waiters();
                }
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    drop(live);
}

/// Everything read from a stream, in order.
#[derive(Default)]
pub struct Recorder {
    pub items: Vec<StreamItem>,
}

impl Recorder {
    /// Reads the stream until `check` holds; fails after `WAIT` or when the stream ends first.
    pub async fn wait(&mut self, stream: &mut EventStream, what: &str, check: impl Fn(&Recorder) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check(self) {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => panic!("timed out after {WAIT:?} waiting for {what}; read: {:#?}", self.items),
                Ok(None) => panic!("the stream ended while waiting for {what}; read: {:#?}", self.items),
                Ok(Some(item)) => self.items.push(item),
            }
        }
    }

    /// Reads the stream to its end; fails after `WAIT`.
    pub async fn until_end(&mut self, stream: &mut EventStream, what: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => panic!("timed out after {WAIT:?} waiting for {what}; read: {:#?}", self.items),
                Ok(None) => return,
                Ok(Some(item)) => self.items.push(item),
            }
        }
    }

    /// Reads what the stream has ready now, without waiting.
    pub fn drain_ready(&mut self, stream: &mut EventStream) {
        use futures_util::FutureExt;
        while let Some(Some(item)) = stream.next().now_or_never() {
            self.items.push(item);
        }
    }

    pub fn events(&self) -> Vec<&Event> {
        self.items
            .iter()
            .filter_map(|item| match item {
                StreamItem::Event(event) => Some(event),
                _ => None,
            })
            .collect()
    }

    pub fn statuses(&self) -> Vec<&Status> {
        self.items
            .iter()
            .filter_map(|item| match item {
                StreamItem::Status(status) => Some(status),
                _ => None,
            })
            .collect()
    }

    /// Every resume, recovered (`Resumed`) or not (`Gap`).
    pub fn resumes(&self) -> Vec<&Resume> {
        self.items
            .iter()
            .filter_map(|item| match item {
                StreamItem::Resumed(resume) | StreamItem::Gap(resume) => Some(resume),
                _ => None,
            })
            .collect()
    }

    pub fn gaps(&self) -> Vec<&Resume> {
        self.items
            .iter()
            .filter_map(|item| match item {
                StreamItem::Gap(resume) => Some(resume),
                _ => None,
            })
            .collect()
    }

    pub fn errors(&self) -> Vec<&plexus_realtime_client::Error> {
        self.items
            .iter()
            .filter_map(|item| match item {
                StreamItem::Error(error) => Some(error),
                _ => None,
            })
            .collect()
    }

    /// The `Reconnecting` statuses as (attempt, delay, code, reason).
    pub fn reconnects(&self) -> Vec<(u32, Duration, u16, String)> {
        self.statuses()
            .into_iter()
            .filter_map(|status| match status {
                Status::Reconnecting { attempt, delay, code, reason } => {
                    Some((*attempt, *delay, *code, reason.clone()))
                }
                _ => None,
            })
            .collect()
    }

    pub fn opens(&self) -> usize {
        self.statuses().iter().filter(|s| matches!(s, Status::Open { .. })).count()
    }

    /// The statuses as short text: `connecting`, `open`, `reconnecting 1006`, `closed 4001`.
    pub fn status_names(&self) -> Vec<String> {
        self.statuses()
            .into_iter()
            .map(|status| match status {
                Status::Connecting => "connecting".to_owned(),
                Status::Open { .. } => "open".to_owned(),
                Status::Reconnecting { code, .. } => format!("reconnecting {code}"),
                Status::Closed { code, .. } => format!("closed {code}"),
            })
            .collect()
    }
}

/// Whether `position` looks like `<epoch>:<offset>`.
pub fn is_position(position: Option<&str>) -> bool {
    position.and_then(|p| p.split_once(':')).is_some_and(|(epoch, offset)| {
        !epoch.is_empty()
            && !offset.is_empty()
            && epoch.bytes().all(|b| b.is_ascii_digit())
            && offset.bytes().all(|b| b.is_ascii_digit())
    })
}
