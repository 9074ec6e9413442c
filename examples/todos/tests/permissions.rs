//! Permission groups end to end, as the README's walkthrough runs them: the real `todos-example`
//! binary on a free port and three people over real WebSockets. `toggle` allows the `owner`
//! group only; `delete` allows `owner` or `admin`. Anyone else gets `forbidden`, and the todo is
//! untouched.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A debug build on a busy machine can be slow to start.
const WAIT: Duration = Duration::from_secs(30);

/// The example binary, killed when the test ends.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_todos-example"))
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn todos-example");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = Server { child, addr: String::new() };
        let line = rx.recv_timeout(WAIT).expect("the listening line in time");
        server.addr = line.trim().strip_prefix("todos listening on ").expect("the listening line").to_owned();
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Person {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ref: u64,
}

impl Person {
    /// Connects, opens `todos` and, given a name, authenticates.
    async fn join(server: &Server, name: Option<&str>) -> Person {
        let url = format!("ws://{}/app/app-key?protocol=7", server.addr);
        let (ws, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await.unwrap().unwrap();
        let mut person = Person { ws, next_ref: 0 };
        let opened = person.request("plexus:open", json!({"channel": "todos"})).await;
        assert_eq!(opened["ok"], true, "{opened}");
        if let Some(name) = name {
            assert_eq!(person.call("authenticate", json!({"name": name})).await, Ok(json!({"user": name})));
        }
        person
    }

    async fn request(&mut self, event: &str, mut data: Value) -> Value {
        self.next_ref += 1;
        data["ref"] = json!(self.next_ref);
        self.ws.send(Message::text(json!({"event": event, "data": data}).to_string())).await.unwrap();
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next()).await.expect("a reply in time");
            let Some(Ok(Message::Text(text))) = message else { continue };
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["event"] == "plexus:reply" && frame["data"]["ref"] == json!(self.next_ref) {
                return frame["data"].clone();
            }
        }
    }

    /// The output, or the error's `(code, message)`.
    async fn call(&mut self, action: &str, input: Value) -> Result<Value, (String, String)> {
        let reply = self
            .request("plexus:action", json!({"channel": "todos", "action": action, "input": input}))
            .await;
        if reply["ok"] == true {
            return Ok(reply.get("output").cloned().unwrap_or(Value::Null));
        }
        let error = |field: &str| reply["error"][field].as_str().unwrap().to_owned();
        Err((error("code"), error("message")))
    }
}

fn forbidden() -> Result<Value, (String, String)> {
    Err(("forbidden".into(), "no permission group allows this call".into()))
}

#[tokio::test]
async fn only_the_owner_toggles_and_only_the_owner_or_an_admin_deletes() {
    let server = Server::start();
    let mut alice = Person::join(&server, Some("alice")).await;
    let mut bob = Person::join(&server, Some("bob")).await;
    let mut admin = Person::join(&server, Some("admin")).await;
    let mut nobody = Person::join(&server, None).await;

    let todo = alice.call("create", json!({"text": "write the walkthrough"})).await.unwrap();
    assert_eq!(todo, json!({"id": 1, "text": "write the walkthrough", "done": false, "owner": "alice"}));

    // Not the owner: no group passes.
    assert_eq!(bob.call("toggle", json!({"id": 1})).await, forbidden());
    assert_eq!(bob.call("delete", json!({"id": 1})).await, forbidden());
    // An admin may delete (the `admin` group) but not toggle (`owner` only).
    assert_eq!(admin.call("toggle", json!({"id": 1})).await, forbidden());
    // No session at all: the action needs one before any group is asked.
    assert_eq!(nobody.call("toggle", json!({"id": 1})).await.unwrap_err().0, "unauthenticated");
    let list = nobody.call("list", json!(null)).await.unwrap();
    assert_eq!(list[0]["done"], false, "nobody changed it: {list}");

    let toggled = alice.call("toggle", json!({"id": 1})).await.unwrap();
    assert_eq!(toggled["done"], true);
    assert_eq!(admin.call("delete", json!({"id": 1})).await, Ok(Value::Null));
    assert_eq!(bob.call("list", json!(null)).await, Ok(json!([])));
}
