//! Tags and introspection as operators meet them: `plexus info --config` lists action-proxy
//! channels and bridges with their tags; `plexus info --url` asks a running admin listener (of
//! `plexus serve --dashboard`, or of an application that installed its own typed channels);
//! `plexus serve --tags` starts only the tagged wirings, which clients see over the socket.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use plexus_channels::{check_sync, Action, ActionError, Channel, Channels, Ctx, Permissions};
use plexus_server::admin::{Admin, AdminConfig};
use plexus_server::logstream::LogStream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

fn plexus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_plexus"))
}

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("plexus-tags-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plexus.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Two proxy routes (one tagged `events`, one untagged) and two bridges (tagged `events` and
/// `ops`), for app `app-1`.
const WIRED: &str = r#"
[server]
host = "127.0.0.1"
port = 0

[metrics]
enabled = false

[admin]
port = 0
token = "admin-token"

[[apps]]
id = "app-1"
key = "key-1"
secret = "secret-1"

[[action_proxy]]
app_id = "app-1"
channel = "orders"
url = "http://127.0.0.1:9/orders"
tags = ["events", "shop"]

[[action_proxy]]
app_id = "app-1"
channel = "legacy"
url = "http://127.0.0.1:9/legacy"

[[bridges]]
app = "app-1"
subject = "tagstest.{instance}.{type}"
channel = "instance-{instance}"
event = "{type}"
tags = ["events"]

[[bridges]]
app = "app-1"
subject = "opstest.{kind}"
channel = "ops-{kind}"
event = "alert"
stream = "OPS"
tags = ["ops"]
"#;

fn info(args: &[&str]) -> String {
    let out = plexus().arg("info").args(args).output().unwrap();
    assert!(out.status.success(), "plexus info {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn info_from_the_config_lists_proxy_channels_and_bridges_with_their_tags() {
    let path = temp_config("info", WIRED);
    let path = path.to_str().unwrap();
    let text = info(&["--config", path]);
    assert!(text.contains("typed channels: 2\n"), "{text}");
    assert!(text.contains("  orders tags=events,shop auth=public"), "{text}");
    assert!(text.contains("  legacy tags=- auth=public"), "{text}");
    assert!(text.contains("    *(Message) -> Value auth=public (on_message: any other action)"), "{text}");
    assert!(
        text.contains("    forwarded for app app-1 to http://127.0.0.1:9/orders tags=events,shop"),
        "{text}"
    );
    assert!(text.contains("bridges: 2\n"), "{text}");
    assert!(
        text.contains(
            "  tagstest.{instance}.{type} -> app app-1 channel instance-{instance} event {type} tags=events"
        ),
        "{text}"
    );
    assert!(text.contains("jetstream OPS durable plexus-bridge from nats://127.0.0.1:4222"), "{text}");

    let json: Value = serde_json::from_str(&info(&["--json", "--config", path])).unwrap();
    let typed = json["typed_channels"].as_array().unwrap();
    let names: Vec<&str> = typed.iter().map(|c| c["channel"].as_str().unwrap()).collect();
    assert_eq!(names, ["legacy", "orders"]);
    let orders = &typed[1];
    assert_eq!(orders["tags"], json!(["events", "shop"]));
    assert_eq!(
        orders["actions"],
        json!([{"name": "*", "input": "Message", "output": "Value", "auth": "public",
                "permissions": [], "fallback": true}])
    );
    assert_eq!(
        orders["proxied"],
        json!([{"app_id": "app-1", "url": "http://127.0.0.1:9/orders", "tags": ["events", "shop"]}])
    );
    assert_eq!(json["bridges"][0]["tags"], json!(["events"]));
    assert_eq!(json["bridges"][1]["source"], "jetstream OPS durable plexus-bridge");

    // What `plexus serve --tags ops` would start: no proxy channel, the ops bridge.
    let json: Value = serde_json::from_str(&info(&["--json", "--tags", "ops", "--config", path])).unwrap();
    assert_eq!(json["typed_channels"], json!([]));
    let subjects: Vec<&str> =
        json["bridges"].as_array().unwrap().iter().map(|b| b["subject"].as_str().unwrap()).collect();
    assert_eq!(subjects, ["opstest.{kind}"]);
}

/// `plexus info --tags` used to print INFO lines about what it left out next to its report. The
/// report (stdout) is all it prints now; with RUST_LOG=info those lines go to stderr only, and
/// without colour codes since stderr is a pipe here.
#[test]
fn info_with_tags_prints_the_report_alone_and_logs_on_stderr_only_when_asked() {
    let path = temp_config("info-quiet", WIRED);
    let out = plexus()
        .args(["info", "--tags", "ops", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert!(stdout.contains("bridges: 1\n") && !stdout.contains("INFO"), "{stdout}");
    assert_eq!(stderr, "", "no log lines by default");

    let out = plexus()
        .args(["info", "--json", "--tags", "ops", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).expect("stdout is the JSON report alone");
    assert_eq!(report["typed_channels"], json!([]));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("INFO") && stderr.contains("action_proxy route left out"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no ANSI colour on a pipe: {stderr:?}");
}

/// A `plexus serve` process: stdout lines arrive through a channel (so waits have a deadline),
/// stderr is collected; the process is killed if the test ends first.
struct Served {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_done: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start(configure: impl FnOnce(&mut Command)) -> Served {
        let mut command = plexus();
        // NO_COLOR: plain log lines, so the test can look for `channel=legacy`.
        command.env("RUST_LOG", "info").env("NO_COLOR", "1").stdout(Stdio::piped()).stderr(Stdio::piped());
        configure(&mut command);
        let mut child = command.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut pipe = child.stderr.take().unwrap();
        let stderr_done = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Served { child, lines, stderr, stderr_done: Some(stderr_done) }
    }

    /// The last word of the next stdout line starting with `prefix`.
    fn address(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no {prefix:?} line within {WAIT:?}; stderr:\n{}", self.stderr.lock().unwrap())
            });
            if line.starts_with(prefix) {
                return line.rsplit(' ').next().unwrap().to_owned();
            }
        }
    }

    /// Stops with SIGTERM and returns the whole stderr once the process has exited.
    fn stop(mut self) -> String {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "exit status {exit:?}");
        // The pipe closes when the process exits: the reader has everything once it ends.
        if let Some(reader) = self.stderr_done.take() {
            reader.join().unwrap();
        }
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame as JSON.
async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// Opens each of `channels` on one connection; returns each `plexus:reply`'s data.
async fn open_each(addr: &str, channels: &[&str]) -> Vec<Value> {
    let url = format!("ws://{addr}/app/key-1?protocol=7&client=test&version=1.0");
    let (mut ws, _) =
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await.unwrap().unwrap();
    assert_eq!(next_frame(&mut ws).await["event"], "pusher:connection_established");
    let mut replies = Vec::new();
    for (n, channel) in channels.iter().enumerate() {
        let reference = format!("r{n}");
        let open = json!({"event": "plexus:open", "data": {"ref": reference, "channel": channel}});
        ws.send(Message::text(open.to_string())).await.unwrap();
        let reply = loop {
            let frame = next_frame(&mut ws).await;
            if frame["event"] == "plexus:reply" && frame["data"]["ref"] == json!(reference) {
                break frame["data"].clone();
            }
        };
        replies.push(reply);
    }
    replies
}

#[test]
fn serve_with_tags_starts_only_the_tagged_proxy_route_and_logs_what_it_left_out() {
    let path = temp_config("serve", WIRED);
    // PLEXUS_TAGS is the flag's environment form; `shop` selects the orders route and no bridge.
    let served = Served::start(|c| {
        c.arg("serve").arg("--config").arg(&path).env("PLEXUS_TAGS", "shop");
    });
    let addr = served.address("plexus listening on");
    let replies = tokio::runtime::Runtime::new().unwrap().block_on(open_each(&addr, &["orders", "legacy"]));
    assert_eq!(replies[0]["ok"], true, "the tagged route opens: {}", replies[0]);
    assert_eq!(replies[1]["ok"], false, "{}", replies[1]);
    assert_eq!(replies[1]["error"]["code"], "unknown_channel", "{}", replies[1]);
    let stderr = served.stop();
    assert!(stderr.contains("action_proxy route left out") && stderr.contains("channel=legacy"), "{stderr}");
    assert!(stderr.contains("bridge left out") && stderr.contains("opstest.{kind}"), "{stderr}");
    assert!(stderr.contains("tagstest.{instance}.{type}"), "{stderr}");
}

#[test]
fn info_url_lists_what_a_running_dashboard_server_wired_for_its_tags() {
    let path = temp_config("url", WIRED);
    // `events`: the orders route and the core-subject bridge (on the real NATS at 4222).
    let served = Served::start(|c| {
        c.args(["serve", "--dashboard", "--tags", "events", "--config"]).arg(&path);
    });
    let dashboard = served.address("plexus dashboard on");
    let admin = dashboard.split("/?token=").next().unwrap().to_owned();
    served.address("plexus listening on");

    let text = info(&["--url", &admin, "--token", "admin-token"]);
    assert!(text.contains("typed channels: 1\n  orders tags=events,shop"), "{text}");
    assert!(!text.contains("legacy"), "{text}");
    assert!(text.contains("bridges: 1\n  tagstest.{instance}.{type}"), "{text}");
    let json: Value =
        serde_json::from_str(&info(&["--json", "--url", &admin, "--token", "admin-token"])).unwrap();
    assert_eq!(json["source"], "server");
    assert_eq!(json["typed_channels"][0]["channel"], "orders");
    assert_eq!(json["typed_channels"][0]["proxied"][0]["url"], "http://127.0.0.1:9/orders");
    assert_eq!(json["bridges"][0]["tags"], json!(["events"]));
    assert_eq!(json["bridges"].as_array().unwrap().len(), 1);
    served.stop();
}

struct Shop;
struct Customer;

#[derive(Deserialize)]
struct PlaceOrder {
    #[allow(dead_code)]
    item: String,
}

#[derive(Serialize)]
struct Receipt {
    number: u64,
}

#[derive(Deserialize)]
struct Cancel {
    #[allow(dead_code)]
    number: u64,
}

type ShopCtx = Ctx<Shop, Customer>;

async fn place(_: ShopCtx, _: PlaceOrder) -> Result<Receipt, ActionError> {
    Ok(Receipt { number: 1 })
}

async fn cancel(_: ShopCtx, _: Cancel) -> Result<(), ActionError> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_url_lists_the_typed_channels_an_embedding_application_installed() {
    let server = common::TestServer::start(vec![common::app(1)]).await;
    let staff = check_sync(|_: &Shop, _: &Cancel, _: Option<&Customer>| false);
    let channels = Channels::new(Shop)
        .wire(
            Channel::<Shop, Customer>::new("shop")
                .tags(["shop"])
                .topic::<Receipt>("orders:*")
                .action("place", Action::new(place))
                .action(
                    "cancel",
                    Action::new(cancel).permissions(Permissions::new().group("staff", [staff])),
                ),
        )
        .wire(Channel::<Shop, Customer>::new("internal").tags(["ops"]))
        .only_tags(["shop"]);
    server.state.install_channels(channels);
    let admin = Arc::new(Admin {
        server: server.state.clone(),
        logs: LogStream::new(),
        token: "embedded-token".into(),
        bridges: Vec::new(),
    });
    let config = AdminConfig { enabled: true, port: 0, ..AdminConfig::default() };
    let addr = plexus_server::admin::start(&config, admin).await.unwrap();
    let url = format!("http://{addr}");

    let text = tokio::task::spawn_blocking(move || info(&["--url", &url, "--token", "embedded-token"]))
        .await
        .unwrap();
    assert!(
        text.contains("typed channels: 1\n  shop tags=shop auth=session opening=Map<String, Value>\n"),
        "{text}"
    );
    assert!(text.contains("    cancel(Cancel) -> () auth=session permissions=staff\n"), "{text}");
    assert!(text.contains("    place(PlaceOrder) -> Receipt auth=session\n"), "{text}");
    assert!(text.contains("    topic orders:*: Receipt\n"), "{text}");
    assert!(!text.contains("internal"), "left out by only_tags: {text}");
}
