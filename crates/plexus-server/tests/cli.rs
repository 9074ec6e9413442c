//! The `plexus` binary as operators run it: help, config errors, env overrides, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn plexus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_plexus"))
}

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("plexus-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plexus.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn help_documents_serve_and_its_flags() {
    let out = plexus().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--config",
        "--host",
        "--port",
        "PLEXUS_HOST",
        "PLEXUS_PORT",
        "PLEXUS_APP_ID",
        "PLEXUS_APP_KEY",
        "PLEXUS_APP_SECRET",
        "--tags",
        "PLEXUS_TAGS",
    ] {
        assert!(help.contains(flag), "help lacks {flag}:\n{help}");
    }
    let top = String::from_utf8(plexus().arg("--help").output().unwrap().stdout).unwrap();
    assert!(top.contains("serve"), "{top}");
}

#[test]
fn invalid_config_stops_with_nonzero_exit_naming_the_field() {
    let cases = [
        ("unknown", "[server]\nprot = 1\n", "prot"),
        ("type", "[server]\nport = \"x\"\n", "port"),
        ("secret", "[[apps]]\nid = \"1\"\nkey = \"k\"\n", "secret"),
        (
            "dup",
            "[[apps]]\nid=\"1\"\nkey=\"k\"\nsecret=\"s\"\n[[apps]]\nid=\"1\"\nkey=\"k2\"\nsecret=\"s\"\n",
            "duplicate app id",
        ),
    ];
    for (name, text, needle) in cases {
        let path = temp_config(name, text);
        let out = plexus().arg("serve").arg("--config").arg(&path).output().unwrap();
        assert!(!out.status.success(), "{name} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{name}: stderr lacks {needle:?}:\n{stderr}");
    }
    let out = plexus().args(["serve", "--config", "/nonexistent/plexus.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/plexus.toml"));
}

/// Kills the child if the test fails before it exits, so no server outlives its test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn env_overrides_and_sigterm_exits_zero() {
    let mut guard = KillOnDrop(
        plexus()
            .arg("serve")
            .env("PLEXUS_HOST", "127.0.0.1")
            .env("PLEXUS_PORT", "0")
            .env("PLEXUS_APP_KEY", "env-key")
            .env("PLEXUS_METRICS_PORT", "0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut guard.0;
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("plexus metrics on 127.0.0.1:"), "{line}");
    let metrics_addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("plexus listening on 127.0.0.1:"), "{line}");
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();

    // The overridden key is served: an upgrade request on it is answered with 101.
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET /app/env-key?protocol=7 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    // Read until the first frame: the session exists once connection_established is sent.
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&received).contains("pusher:connection_established") {
        let n = stream.read(&mut buf).expect("the handshake and first frame arrive");
        assert!(n > 0, "connection closed early: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&received);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "RFC 6455 sample accept key: {head}");

    // The metrics listener reports the open connection and times API requests by route.
    let unsigned = http_get(&addr, "/apps/app-id/channels");
    assert!(unsigned.starts_with("HTTP/1.1 401"), "{unsigned}");
    let metrics = http_get(&metrics_addr, "/metrics");
    assert!(metrics.contains("plexus_connections{app_id=\"app-id\"} 1"), "{metrics}");
    assert!(metrics.contains("route=\"/apps/{app_id}/channels\""), "{metrics}");
    drop(stream);

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("development credentials") || stderr.contains("development app"), "{stderr}");
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
