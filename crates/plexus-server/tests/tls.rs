//! `[server.tls]` against the real binary: wss and https on one port with a certificate made by
//! a throwaway CA in the test, reload on SIGHUP while an old connection stays open, and start-up
//! errors that name the file at fault.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use plexus_protocol::signature;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// A CA trusted by the test's clients; it issues the server's certificates.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// One issued certificate: PEM for the server's files, DER to recognise it on the wire.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        TestCa { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    fn issue(&self) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }

    fn connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plexus-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a file whole (write then rename), as a certificate renewal tool would.
fn write_atomically(path: &Path, text: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(staged, path).unwrap();
}

fn config(dir: &Path) -> PathBuf {
    let path = dir.join("plexus.toml");
    let text = format!(
        "[server]\nhost = \"127.0.0.1\"\nport = 0\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [metrics]\nenabled = false\n[[apps]]\nid = \"tls-app\"\nkey = \"tls-key\"\nsecret = \"tls-secret\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The server process; killed if the test fails before it stops it.
struct Server {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("plexus listening on ") {
                let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
            }
        }
    });
    let addr = rx.recv_timeout(WAIT).expect("plexus prints its address within 10 s");
    Server { child, addr }
}

async fn handshake(connector: &TlsConnector, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await.unwrap().unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, connector.connect(name, tcp)).await.expect("handshake in time").unwrap()
}

fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().expect("server sent a certificate")[0].clone().into_owned()
}

/// A signed `POST /apps/tls-app/events` over https; returns the status line's code and body.
async fn https_trigger(
    connector: &TlsConnector,
    addr: SocketAddr,
    channel: &str,
    data: &str,
) -> (u16, String) {
    let mut stream = handshake(connector, addr).await;
    let path = "/apps/tls-app/events";
    let body = json!({"name": "greeting", "channels": [channel], "data": data}).to_string();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let query = signature::sign_api_query("tls-key", "tls-secret", "POST", path, body.as_bytes(), now, &[]);
    let request = format!(
        "POST {path}?{query} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await.expect("response in time").ok();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

type Wss = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

async fn next_json(ws: &mut Wss) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message within 10 s")
            .expect("socket open")
            .expect("no socket error");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_https_share_the_port_and_sighup_swaps_the_certificate_for_new_handshakes_only() {
    let dir = temp_dir("reload");
    let ca = TestCa::new();
    let first = ca.issue();
    write_atomically(&dir.join("cert.pem"), &first.cert_pem);
    write_atomically(&dir.join("key.pem"), &first.key_pem);
    let server = start(&config(&dir));
    let connector = ca.connector();

    // A wss client (verifying the chain against the test CA) subscribes.
    let tls = handshake(&connector, server.addr).await;
    assert_eq!(presented(&tls), first.der, "the configured certificate is served");
    let url = format!("wss://localhost:{}/app/tls-key?protocol=7", server.addr.port());
    let (mut old, _) = tokio_tungstenite::client_async(url, tls).await.expect("wss handshake");
    assert_eq!(next_json(&mut old).await["event"], "pusher:connection_established");
    let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": "news"}}).to_string();
    old.send(Message::text(subscribe)).await.unwrap();
    assert_eq!(next_json(&mut old).await["event"], "pusher_internal:subscription_succeeded");

    // The HTTP API over https reaches it.
    let (status, body) = https_trigger(&connector, server.addr, "news", "one").await;
    assert_eq!(status, 200, "{body}");
    let event = next_json(&mut old).await;
    assert_eq!((event["event"].as_str(), event["data"].as_str()), (Some("greeting"), Some("one")));

    // Renew the files and send SIGHUP; new handshakes must present the new certificate.
    let second = ca.issue();
    write_atomically(&dir.join("key.pem"), &second.key_pem);
    write_atomically(&dir.join("cert.pem"), &second.cert_pem);
    let killed = Command::new("kill").arg("-HUP").arg(server.child.id().to_string()).status().unwrap();
    assert!(killed.success());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = presented(&handshake(&connector, server.addr).await);
        if seen == second.der {
            break;
        }
        assert_eq!(seen, first.der, "only the old or the new certificate may be served");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served within 10 s of SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The connection made before the reload is still open and still receives events.
    let (status, body) = https_trigger(&connector, server.addr, "news", "two").await;
    assert_eq!(status, 200, "{body}");
    let event = next_json(&mut old).await;
    assert_eq!(event["data"], "two", "the old wss connection survived the reload: {event}");
}

fn start_error(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(["serve", "--config"])
        .arg(config(dir))
        .output()
        .unwrap();
    assert!(!out.status.success(), "plexus must refuse to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unreadable_or_mismatched_files_stop_the_start_naming_the_file() {
    let ca = TestCa::new();
    let (a, b) = (ca.issue(), ca.issue());

    let dir = temp_dir("missing");
    let _ = std::fs::remove_file(dir.join("cert.pem"));
    write_atomically(&dir.join("key.pem"), &a.key_pem);
    let stderr = start_error(&dir);
    let cert = dir.join("cert.pem").display().to_string();
    assert!(stderr.contains(&cert) && stderr.contains("server.tls.cert"), "{stderr}");
    // Once: the reason used to be repeated ("…: No such file or directory (os error 2): No such
    // file or directory (os error 2)").
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
    assert_eq!(stderr.matches(&cert).count(), 1, "{stderr}");

    let dir = temp_dir("mismatch");
    write_atomically(&dir.join("cert.pem"), &a.cert_pem);
    write_atomically(&dir.join("key.pem"), &b.key_pem);
    let stderr = start_error(&dir);
    assert!(stderr.contains("does not match"), "{stderr}");
    assert!(stderr.contains(&dir.join("key.pem").display().to_string()), "{stderr}");

    let dir = temp_dir("garbage");
    write_atomically(&dir.join("cert.pem"), &a.cert_pem);
    write_atomically(&dir.join("key.pem"), "not a key\n");
    let stderr = start_error(&dir);
    assert!(stderr.contains("no PEM private key") && stderr.contains("key.pem"), "{stderr}");
}
