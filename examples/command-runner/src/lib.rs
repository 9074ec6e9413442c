//! Example: run a long command and watch it live over a private plexus channel.
//!
//! One process serves two ports: an embedded plexus server (the WebSocket endpoint pusher-js or
//! any Pusher client connects to) and this app's HTTP API with a small web page:
//!
//! - `POST /sessions` `{"command": "sh", "args": ["-c", "…"]}` → `{"session", "channel"}`: a
//!   private channel for this run. The process starts once someone has subscribed (so no output
//!   is published to nobody), or fails with an `error` event after [`SUBSCRIBE_WITHIN`].
//! - events on the channel: `status` (`{"state": "running", "pid"}`), `output`
//!   (`{"stream": "stdout"|"stderr", "line"}`), `complete` (`{"exit_code"}`) and `error`
//!   (`{"message"}`).
//! - `POST /sessions/{id}/stdin` `{"data": "…"}` writes to the process's stdin.
//! - `POST /pusher/auth` signs private-channel subscriptions (pusher-js's `channelAuthorization`).
//!
//! Sessions are forgotten [`KEEP_FINISHED`] after their process ends; a process still running
//! after [`MAX_RUN`] is killed. Events are published in-process through the same checks as the
//! HTTP API (`plexus_server::http_api::trigger_trusted`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use plexus_core::App;
use plexus_protocol::signature;
use plexus_server::ServerState;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::Mutex as AsyncMutex;

/// How long a session waits for its first subscriber before giving up.
pub const SUBSCRIBE_WITHIN: Duration = Duration::from_secs(30);
/// How long a finished session stays addressable.
pub const KEEP_FINISHED: Duration = Duration::from_secs(60);
/// Longest a process may run.
pub const MAX_RUN: Duration = Duration::from_secs(600);

const PAGE: &str = include_str!("page.html");

#[derive(Debug)]
struct Session {
    stdin: Arc<AsyncMutex<Option<ChildStdin>>>,
}

/// The app's state: the embedded server and the sessions.
#[derive(Debug)]
pub struct Runner {
    server: Arc<ServerState>,
    app: Arc<App>,
    ws_port: u16,
    sessions: Mutex<HashMap<String, Session>>,
}

fn random_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

impl Runner {
    async fn publish(&self, channel: &str, event: &str, data: Value) {
        let body = json!({"name": event, "channel": channel, "data": data.to_string()}).to_string();
        if let Err(e) =
            plexus_server::http_api::trigger_trusted(&self.server, &self.app, body.as_bytes()).await
        {
            tracing::warn!(%e, channel, event, "cannot publish");
        }
    }

    fn subscribed(&self, channel: &str) -> bool {
        self.server.hubs.hub(&self.app.id).channel(channel).is_some_and(|c| c.subscription_count > 0)
    }
}

#[derive(Debug, Deserialize)]
struct StartRequest {
    command: String,
    #[serde(default)]
    args: Vec<String>,
}

async fn start_session(State(runner): State<Arc<Runner>>, body: axum::body::Bytes) -> Response {
    let request: StartRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("expected {{\"command\", \"args\"}}: {e}")),
    };
    if request.command.is_empty() {
        return error(StatusCode::BAD_REQUEST, "command must not be empty");
    }
    let session = random_id();
    let channel = format!("private-run-{session}");
    let stdin = Arc::new(AsyncMutex::new(None));
    runner.sessions.lock().unwrap().insert(session.clone(), Session { stdin: stdin.clone() });
    tokio::spawn(run(runner.clone(), session.clone(), channel.clone(), request, stdin));
    Json(json!({ "session": session, "channel": channel })).into_response()
}

/// Waits for a subscriber, runs the process, streams it, then forgets the session later.
async fn run(
    runner: Arc<Runner>,
    session: String,
    channel: String,
    request: StartRequest,
    stdin_slot: Arc<AsyncMutex<Option<ChildStdin>>>,
) {
    let waited = tokio::time::timeout(SUBSCRIBE_WITHIN, async {
        while !runner.subscribed(&channel) {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    if waited.is_ok() {
        execute(&runner, &channel, request, &stdin_slot).await;
    } else {
        runner.publish(&channel, "error", json!({"message": "nobody subscribed in time; not started"})).await;
    }
    tokio::time::sleep(KEEP_FINISHED).await;
    runner.sessions.lock().unwrap().remove(&session);
}

async fn execute(
    runner: &Runner,
    channel: &str,
    request: StartRequest,
    stdin_slot: &AsyncMutex<Option<ChildStdin>>,
) {
    let spawned = Command::new(&request.command)
        .args(&request.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            runner
                .publish(
                    channel,
                    "error",
                    json!({"message": format!("cannot start {:?}: {e}", request.command)}),
                )
                .await;
            return;
        }
    };
    *stdin_slot.lock().await = child.stdin.take();
    runner.publish(channel, "status", json!({"state": "running", "pid": child.id()})).await;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let out = stream_lines(runner, channel, "stdout", stdout);
    let err = stream_lines(runner, channel, "stderr", stderr);
    let waited = tokio::time::timeout(MAX_RUN, async {
        tokio::join!(out, err);
        child.wait().await
    })
    .await;
    *stdin_slot.lock().await = None;
    match waited {
        Ok(Ok(status)) => runner.publish(channel, "complete", json!({"exit_code": status.code()})).await,
        Ok(Err(e)) => {
            runner
                .publish(channel, "error", json!({"message": format!("waiting for the process: {e}")}))
                .await
        }
        Err(_) => {
            let _ = child.kill().await;
            runner
                .publish(channel, "error", json!({"message": format!("killed after {}s", MAX_RUN.as_secs())}))
                .await;
        }
    }
}

async fn stream_lines(
    runner: &Runner,
    channel: &str,
    stream: &str,
    reader: impl tokio::io::AsyncRead + Unpin,
) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        runner.publish(channel, "output", json!({"stream": stream, "line": line})).await;
    }
}

#[derive(Debug, Deserialize)]
struct StdinRequest {
    data: String,
}

async fn write_stdin(
    State(runner): State<Arc<Runner>>,
    Path(session): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let request: StdinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("expected {{\"data\"}}: {e}")),
    };
    let Some(stdin) = runner.sessions.lock().unwrap().get(&session).map(|s| s.stdin.clone()) else {
        return error(StatusCode::NOT_FOUND, format!("no session {session:?}"));
    };
    let mut slot = stdin.lock().await;
    let Some(pipe) = slot.as_mut() else {
        return error(StatusCode::CONFLICT, "the process is not running");
    };
    match pipe.write_all(request.data.as_bytes()).await {
        Ok(()) => Json(json!({})).into_response(),
        Err(e) => error(StatusCode::CONFLICT, format!("stdin is closed: {e}")),
    }
}

/// pusher-js posts `socket_id` and `channel_name` form-encoded.
async fn auth(State(runner): State<Arc<Runner>>, body: axum::body::Bytes) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let (Some(socket_id), Some(channel)) = (form.get("socket_id"), form.get("channel_name")) else {
        return error(StatusCode::BAD_REQUEST, "socket_id and channel_name are required");
    };
    if !channel.starts_with("private-run-") {
        return error(StatusCode::FORBIDDEN, "only run channels");
    }
    let to_sign = signature::channel_string_to_sign(socket_id, channel, None);
    Json(json!({ "auth": signature::auth_token(&runner.app.key, &runner.app.secret, &to_sign) }))
        .into_response()
}

async fn client_config(State(runner): State<Arc<Runner>>) -> Json<Value> {
    Json(json!({"key": runner.app.key, "ws_port": runner.ws_port}))
}

/// Runs the example on two bound listeners (plexus, then the app); returns when the app stops.
pub async fn run_on(
    plexus: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    app: App,
) -> anyhow::Result<()> {
    let ws_port = plexus.local_addr()?.port();
    let apps: Arc<dyn plexus_core::AppStore> = Arc::new(plexus_core::MemoryAppStore::new(vec![app.clone()])?);
    let config = plexus_server::config::ServerConfig { port: ws_port, ..Default::default() };
    let server = ServerState::new(config, apps);
    tokio::spawn(plexus_server::serve(plexus, server.clone(), std::future::pending()));
    let runner = Arc::new(Runner { server, app: Arc::new(app), ws_port, sessions: Mutex::default() });
    let router = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/config", get(client_config))
        .route("/sessions", post(start_session))
        .route("/sessions/{session}/stdin", post(write_stdin))
        .route("/pusher/auth", post(auth))
        .with_state(runner);
    axum::serve(http, router).await?;
    Ok(())
}

/// Binds both ports on `host` (0 = any free port) and prints them.
pub async fn bind(
    host: &str,
    ws_port: u16,
    http_port: u16,
) -> anyhow::Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    let plexus = tokio::net::TcpListener::bind((host, ws_port)).await?;
    let http = tokio::net::TcpListener::bind((host, http_port)).await?;
    let (ws, page): (SocketAddr, SocketAddr) = (plexus.local_addr()?, http.local_addr()?);
    println!("command-runner: plexus on {ws}, open http://{page}/");
    Ok((plexus, http))
}
