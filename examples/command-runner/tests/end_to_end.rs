//! The example end to end over real sockets: start a session over HTTP, authorize and subscribe
//! to its private channel over a real WebSocket, write stdin, and see status, output of both
//! streams and the exit code; a command that cannot start reports `error`.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

async fn start() -> (SocketAddr, SocketAddr) {
    let (plexus, http) = command_runner::bind("127.0.0.1", 0, 0).await.unwrap();
    let addrs = (plexus.local_addr().unwrap(), http.local_addr().unwrap());
    let app = plexus_core::App::new("runner", "runner-key", "runner-secret");
    tokio::spawn(command_runner::run_on(plexus, http, app));
    addrs
}

async fn post(addr: SocketAddr, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await.expect("answer in time").unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    (status, serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap_or(Value::Null))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn next_event(ws: &mut Ws) -> (String, Value) {
    loop {
        let message =
            tokio::time::timeout(WAIT, ws.next()).await.expect("an event within 10 s").unwrap().unwrap();
        if let Message::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).unwrap();
            let data = match &frame["data"] {
                Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
                other => other.clone(),
            };
            return (frame["event"].as_str().unwrap().to_owned(), data);
        }
    }
}

/// Starts a session for `command` and subscribes to its channel; returns the socket and session.
async fn watch(plexus: SocketAddr, http: SocketAddr, command: Value) -> (Ws, String) {
    let (status, started) = post(http, "/sessions", "application/json", &command.to_string()).await;
    assert_eq!(status, 200, "{started}");
    let channel = started["channel"].as_str().unwrap().to_owned();
    assert!(channel.starts_with("private-"), "{channel}");
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{plexus}/app/runner-key?protocol=7")).await.unwrap();
    let (event, data) = next_event(&mut ws).await;
    assert_eq!(event, "pusher:connection_established");
    let form = format!("socket_id={}&channel_name={channel}", data["socket_id"].as_str().unwrap());
    let (status, auth) = post(http, "/pusher/auth", "application/x-www-form-urlencoded", &form).await;
    assert_eq!(status, 200, "{auth}");
    let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth["auth"]}});
    ws.send(Message::text(subscribe.to_string())).await.unwrap();
    assert_eq!(next_event(&mut ws).await.0, "pusher_internal:subscription_succeeded");
    (ws, started["session"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn output_of_both_streams_stdin_and_the_exit_code_reach_the_private_channel() {
    let (plexus, http) = start().await;
    let script = "echo started; read name; echo \"hello $name\"; echo warning >&2; exit 3";
    let (mut ws, session) = watch(plexus, http, json!({"command": "sh", "args": ["-c", script]})).await;
    let (event, status) = next_event(&mut ws).await;
    assert_eq!((event.as_str(), status["state"].as_str()), ("status", Some("running")), "{status}");
    assert_eq!(next_event(&mut ws).await.1, json!({"stream": "stdout", "line": "started"}));

    let (code, answer) =
        post(http, &format!("/sessions/{session}/stdin"), "application/json", "{\"data\":\"plexus\\n\"}")
            .await;
    assert_eq!(code, 200, "{answer}");
    let mut seen = Vec::new();
    let exit = loop {
        match next_event(&mut ws).await {
            (event, data) if event == "output" => seen.push(data),
            (event, data) if event == "complete" => break data,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(seen.contains(&json!({"stream": "stdout", "line": "hello plexus"})), "{seen:?}");
    assert!(seen.contains(&json!({"stream": "stderr", "line": "warning"})), "{seen:?}");
    assert_eq!(exit, json!({"exit_code": 3}));

    let (code, _) =
        post(http, &format!("/sessions/{session}/stdin"), "application/json", "{\"data\":\"x\"}").await;
    assert_eq!(code, 409, "stdin of a finished process is refused");
    assert_eq!(post(http, "/sessions/nope/stdin", "application/json", "{\"data\":\"x\"}").await.0, 404);
    assert_eq!(post(http, "/sessions", "application/json", "{\"nope\":1}").await.0, 400);
}

#[tokio::test]
async fn a_command_that_cannot_start_reports_an_error_event() {
    let (plexus, http) = start().await;
    let (mut ws, _) = watch(plexus, http, json!({"command": "/nonexistent/program"})).await;
    let (event, data) = next_event(&mut ws).await;
    assert_eq!(event, "error");
    assert!(data["message"].as_str().unwrap().contains("/nonexistent/program"), "{data}");
}
