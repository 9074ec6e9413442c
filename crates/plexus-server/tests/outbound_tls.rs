//! Outbound TLS of the real binary: https webhooks to a receiver whose certificate comes from a
//! CA made in the test. With the CA as the endpoint's `ca_file` the signed webhook arrives; with
//! no CA configured the receiver sees the handshake refused, nothing is delivered, and the log
//! and the metrics say why. A `ca_file` that cannot be used stops the start.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use plexus_protocol::signature;
use plexus_tls::test_ca::{HttpsServer, TestCa};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plexus-outbound-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `plexus serve` child with its stderr kept for the test to read; killed when dropped.
struct Plexus {
    child: Child,
    addr: String,
    metrics_addr: String,
    log: Arc<Mutex<String>>,
}

impl Plexus {
    fn spawn(config: &Path) -> Plexus {
        let mut child = Command::new(env!("CARGO_BIN_EXE_plexus"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (mut addr, mut metrics_addr) = (String::new(), String::new());
        let mut line = String::new();
        while addr.is_empty() {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!("plexus exited before listening: {}", log.lock().unwrap());
            }
            let value = line.trim().rsplit(' ').next().unwrap().to_owned();
            if line.starts_with("plexus metrics on") {
                metrics_addr = value;
            } else if line.starts_with("plexus listening on") {
                addr = value;
            }
        }
        Plexus { child, addr, metrics_addr, log }
    }

    /// Subscribes a client of app `key-1` to `channel`, which makes a `channel_occupied` webhook.
    async fn occupy(&self, channel: &str) -> impl Send {
        let url = format!("ws://{}/app/key-1?protocol=7", self.addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": channel}}).to_string();
        ws.send(Message::text(subscribe)).await.unwrap();
        ws
    }

    /// Polls the log until it holds a line containing every one of `parts`; returns that line.
    async fn log_line(&self, parts: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found = {
                let log = self.log.lock().unwrap();
                log.lines().find(|line| parts.iter().all(|p| line.contains(p))).map(str::to_owned)
            };
            if let Some(line) = found {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {parts:?} within {WAIT:?}; the log:\n{}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.metrics_addr).await.unwrap();
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.metrics_addr);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    }

    /// Polls `/metrics` until the counter `series` reads at least `at_least`.
    async fn counter_reaches(&self, series: &str, at_least: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.metrics().await;
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
                .and_then(|v| v.trim().parse::<f64>().ok());
            if value.is_some_and(|v| v >= at_least as f64) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{series} is {value:?}, not {at_least}+");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Plexus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config with one app whose one webhook (`channel_occupied`) goes to `url`; `ca_file` is
/// written next to it when given.
fn webhook_config(dir: &Path, url: &str, ca_file: Option<&Path>) -> PathBuf {
    let ca_line = ca_file.map(|p| format!("ca_file = \"{}\"\n", p.display())).unwrap_or_default();
    let config = dir.join("plexus.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
host = "127.0.0.1"
port = 0

[metrics]
port = 0

[webhooks]
data_dir = "{data}"
batch_window_ms = 10
vacate_delay_ms = 0
initial_backoff_ms = 100
max_backoff_secs = 1

[[apps]]
id = "app-1"
key = "key-1"
secret = "secret-1"

[[apps.webhooks]]
url = "{url}"
events = ["channel_occupied"]
{ca_line}"#,
            data = dir.join("data").display()
        ),
    )
    .unwrap();
    config
}

#[tokio::test]
async fn an_https_webhook_is_delivered_to_a_receiver_signed_by_the_configured_ca() {
    let dir = temp_dir("trusted");
    let ca = TestCa::new();
    let mut receiver = HttpsServer::start(&ca.loopback(), |_| (200, "{}".into())).await;
    let ca_file = ca.write_ca(&dir);
    let plexus = Plexus::spawn(&webhook_config(&dir, &receiver.url("/webhook"), Some(&ca_file)));

    let _client = plexus.occupy("over-tls").await;
    let request = receiver.request(WAIT).await;
    assert_eq!(request.uri().path(), "/webhook");
    assert_eq!(request.headers()["x-pusher-key"], "key-1");
    let expected = signature::webhook_signature("secret-1", request.body());
    assert_eq!(request.headers()["x-pusher-signature"], expected.as_str(), "signed with the app secret");
    let body: Value = serde_json::from_slice(request.body()).unwrap();
    assert_eq!(body["events"][0]["name"], "channel_occupied");
    assert_eq!(body["events"][0]["channel"], "over-tls");
    plexus.counter_reaches("plexus_webhook_requests_total{outcome=\"delivered\"}", 1).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_the_ca_the_receiver_is_refused_and_nothing_is_delivered() {
    let dir = temp_dir("untrusted");
    let ca = TestCa::new();
    let mut receiver = HttpsServer::start(&ca.loopback(), |_| (200, "{}".into())).await;
    let url = receiver.url("/webhook");
    let plexus = Plexus::spawn(&webhook_config(&dir, &url, None));

    let _client = plexus.occupy("refused").await;
    // The receiver sees plexus abort the handshake: it does not know the certificate's CA.
    let reason = receiver.refused(WAIT).await;
    assert!(reason.contains("UnknownCA"), "the receiver's side of the refusal: {reason}");
    // The log names the endpoint and the TLS reason, with what to do about it.
    let line = plexus.log_line(&["webhook delivery failed", &url, "UnknownIssuer"]).await;
    assert!(line.contains("ca_file"), "the log line says how to trust the CA: {line}");
    plexus.counter_reaches("plexus_webhook_requests_total{outcome=\"failed\"}", 2).await;
    // Retried (and refused) again, never sent without TLS and never delivered.
    let again = receiver.refused(WAIT).await;
    assert!(again.contains("UnknownCA"), "{again}");
    assert!(!plexus.metrics().await.contains("plexus_webhook_requests_total{outcome=\"delivered\"}"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_ca_file_that_cannot_be_used_stops_the_start_and_is_named() {
    let dir = temp_dir("bad-ca");
    let not_a_ca = dir.join("not-a-ca.pem");
    std::fs::write(&not_a_ca, "hello\n").unwrap();
    for (ca_file, reason) in
        [(dir.join("missing.pem"), "cannot read CA file"), (not_a_ca, "no certificate in it")]
    {
        let config = webhook_config(&dir, "https://127.0.0.1:9/webhook", Some(&ca_file));
        let output = Command::new(env!("CARGO_BIN_EXE_plexus"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "plexus must not start");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("apps.webhooks.ca_file")
                && stderr.contains(&ca_file.display().to_string())
                && stderr.contains(reason),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bus server of the test's own on a free loopback port, killed (by its PID) when dropped.
struct Bus {
    child: Child,
    port: u16,
}

impl Bus {
    /// Starts `program args` (where `{port}` stands for the port) and polls until it accepts TCP.
    async fn start(program: &str, args: &[String]) -> Bus {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let args: Vec<String> = args.iter().map(|a| a.replace("{port}", &port.to_string())).collect();
        let child = Command::new(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {program}: {err}"));
        let mut bus = Bus { child, port };
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Ok(Some(status)) = bus.child.try_wait() {
                panic!("{program} exited ({status}) before listening");
            }
            assert!(tokio::time::Instant::now() < deadline, "{program} did not listen within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bus
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS-only redis-server and a nats-server requiring TLS, with certificates of `ca`.
async fn tls_buses(ca: &TestCa, dir: &Path) -> (Bus, Bus) {
    let (cert, key) = ca.loopback().write(dir, "bus");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let redis_args: Vec<String> = [
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-auth-clients",
        "no",
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(String::from)
    .to_vec();
    let redis = Bus::start("redis-server", &redis_args).await;
    let nats_config = dir.join("nats.conf");
    std::fs::write(&nats_config, format!("tls {{\n  cert_file: \"{cert}\"\n  key_file: \"{key}\"\n}}\n"))
        .unwrap();
    let nats_args = ["-a", "127.0.0.1", "-p", "{port}", "-c", &nats_config.display().to_string()]
        .map(String::from)
        .to_vec();
    let nats = Bus::start("/usr/sbin/nats-server", &nats_args).await;
    (redis, nats)
}

/// A config joining the cluster over `url` with `driver`, and `ca_file` when given.
fn adapter_config(dir: &Path, driver: &str, url: &str, ca_file: Option<&Path>) -> PathBuf {
    let ca_line = ca_file.map(|p| format!("ca_file = \"{}\"\n", p.display())).unwrap_or_default();
    let config = dir.join(format!("{driver}.toml"));
    std::fs::write(
        &config,
        format!(
            "[server]\nhost = \"127.0.0.1\"\nport = 0\n\n[metrics]\nport = 0\n\n[webhooks]\ndata_dir = \"{}\"\n\n\
             [adapter]\ndriver = \"{driver}\"\nurl = \"{url}\"\n{ca_line}",
            dir.join(format!("data-{driver}")).display()
        ),
    )
    .unwrap();
    config
}

#[tokio::test]
async fn the_cluster_bus_is_joined_over_tls_with_the_ca_and_refused_at_start_without_it() {
    let dir = temp_dir("adapter");
    let ca = TestCa::new();
    let ca_file = ca.write_ca(&dir);
    let (redis, nats) = tls_buses(&ca, &dir).await;
    for (driver, url) in [
        ("redis", format!("rediss://127.0.0.1:{}", redis.port)),
        ("nats", format!("tls://127.0.0.1:{}", nats.port)),
    ] {
        let trusted = Plexus::spawn(&adapter_config(&dir, driver, &url, Some(&ca_file)));
        trusted.log_line(&["joined the cluster bus", &url]).await;
        drop(trusted);

        let output = Command::new(env!("CARGO_BIN_EXE_plexus"))
            .args(["serve", "--config"])
            .arg(adapter_config(&dir, driver, &url, None))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{driver}: plexus must not start without trusting the bus");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&url) && stderr.contains("UnknownIssuer") && stderr.contains("ca_file"),
            "{driver}: the start-up error names the URL, the TLS reason and the fix: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bridges_and_mirrors_reach_nats_over_tls_with_the_ca_and_stop_the_start_without_it() {
    let dir = temp_dir("nats-wirings");
    let ca = TestCa::new();
    let ca_file = ca.write_ca(&dir);
    let (_redis, nats) = tls_buses(&ca, &dir).await;
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let wiring = |kind: &str, ca_file: Option<&Path>| {
        let ca_line = ca_file.map(|p| format!("ca_file = \"{}\"\n", p.display())).unwrap_or_default();
        let entry = match kind {
            "bridges" => "subject = \"tls.{a}\"\nchannel = \"c-{a}\"\nevent = \"e\"\n",
            _ => "subject = \"plexus.{channel}.{event}\"\n",
        };
        let config = dir.join(format!("{kind}-{}.toml", ca_file.is_some()));
        std::fs::write(
            &config,
            format!(
                "[server]\nhost = \"127.0.0.1\"\nport = 0\n\n[metrics]\nport = 0\n\n[webhooks]\ndata_dir = \"{}\"\n\n\
                 [[{kind}]]\napp = \"app-id\"\nurl = \"{url}\"\n{entry}{ca_line}",
                dir.join(format!("data-{kind}")).display()
            ),
        )
        .unwrap();
        config
    };
    for (kind, started) in
        [("bridges", "bridge: reading core NATS subjects"), ("mirrors", "mirroring channel events to NATS")]
    {
        let trusted = Plexus::spawn(&wiring(kind, Some(&ca_file)));
        trusted.log_line(&[started]).await;
        drop(trusted);

        let output = Command::new(env!("CARGO_BIN_EXE_plexus"))
            .args(["serve", "--config"])
            .arg(wiring(kind, None))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{kind}: plexus must not start without trusting NATS");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&url) && stderr.contains("UnknownIssuer") && stderr.contains("ca_file"),
            "{kind}: the start-up error names the URL, the TLS reason and the fix: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
