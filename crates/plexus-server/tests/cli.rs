//! The `plexus` binary as operators run it: help, config errors, env overrides, SIGTERM, the
//! layered configuration (file < environment < flags), `config check` / `config print`, JSON
//! logs, the data directory's lock.

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
        "--metrics-host",
        "--admin-host",
        "--data-dir",
        "PLEXUS_DATA_DIR",
        "--log-format",
        "PLEXUS_LOG_FORMAT",
        "--app-store-url",
        "PLEXUS_APP_STORE_URL",
        "--set",
        "PLEXUS_SERVER__PORT",
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

    // A ping (masked with a zero key, so the payload is sent as is), answered before we look at
    // the received bytes: the server has read it by then.
    let ping = br#"{"event":"pusher:ping","data":{}}"#;
    let mut frame = vec![0x81, 0x80 | ping.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(ping);
    stream.write_all(&frame).unwrap();
    while !String::from_utf8_lossy(&received).contains("pusher:pong") {
        let n = stream.read(&mut buf).expect("the pong arrives");
        assert!(n > 0, "connection closed early: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }

    // The metrics listener reports the open connection, what it sent us, the process, and times
    // API requests by route.
    let unsigned = http_get(&addr, "/apps/app-id/channels");
    assert!(unsigned.starts_with("HTTP/1.1 401"), "{unsigned}");
    let metrics = http_get(&metrics_addr, "/metrics");
    assert!(metrics.contains("plexus_connections{app_id=\"app-id\"} 1"), "{metrics}");
    assert!(metrics.contains("plexus_connections_opened_total{app_id=\"app-id\"} 1\n"), "{metrics}");
    assert!(metrics.contains(&format!("plexus_ws_bytes_received_total {}\n", ping.len())), "{metrics}");
    assert!(metrics.contains("route=\"/apps/{app_id}/channels\""), "{metrics}");
    assert!(metric_value(&metrics, "plexus_http_sent_bytes_total") > 0.0, "{metrics}");
    for process_metric in ["process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"]
    {
        assert!(metric_value(&metrics, process_metric) > 0.0, "{process_metric}: {metrics}");
    }
    drop(stream);
    // The departure is counted once the server has seen the socket close.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics = http_get(&metrics_addr, "/metrics");
        if metrics.contains("plexus_connections_closed_total{app_id=\"app-id\"} 1\n") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no disconnection counted: {metrics}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("development credentials") || stderr.contains("development app"), "{stderr}");
}

/// The value of an unlabelled series in Prometheus text, or a panic naming the missing series.
fn metric_value(metrics: &str, name: &str) -> f64 {
    let prefix = format!("{name} ");
    let line = metrics.lines().find(|line| line.starts_with(&prefix)).unwrap_or_else(|| panic!("no {name}"));
    line[prefix.len()..].trim().parse().unwrap()
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Reads the `plexus listening on ADDR` line a started server prints (after the metrics line).
fn listening_address(child: &mut std::process::Child) -> String {
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        if let Some(addr) = line.trim().strip_prefix("plexus listening on ") {
            return addr.to_owned();
        }
        line.clear();
    }
    panic!("the server exited without listening");
}

#[test]
fn the_public_development_secret_is_served_on_loopback_only() {
    // No host given and no apps: the default 0.0.0.0 becomes 127.0.0.1.
    let mut guard = KillOnDrop(
        plexus()
            .args(["serve", "--port", "0", "--metrics-port", "0"])
            .env_remove("PLEXUS_HOST")
            .env_remove("PLEXUS_APP_SECRET")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = listening_address(&mut guard.0);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    drop(guard);

    // Asked for another address on the command line: refused, with the way out.
    let out = plexus()
        .args(["serve", "--host", "0.0.0.0", "--port", "0", "--metrics-port", "0"])
        .env_remove("PLEXUS_APP_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("development secret") && stderr.contains("--app-secret"), "{stderr}");

    // With a real secret the same command listens where it was told.
    let mut guard = KillOnDrop(
        plexus()
            .args(["serve", "--host", "0.0.0.0", "--port", "0", "--metrics-port", "0"])
            .env("PLEXUS_APP_SECRET", "a-real-secret-of-this-deployment")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = listening_address(&mut guard.0);
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
}

/// A `plexus` command with none of the caller's PLEXUS_ variables (a developer's shell may have
/// some), so each test sets exactly the ones it means.
fn clean_plexus() -> Command {
    let mut command = plexus();
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PLEXUS_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `command`, expecting success; returns stdout.
fn succeed(command: &mut Command) -> String {
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{command:?} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `command`, expecting failure; returns stderr.
fn fail(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        !out.status.success(),
        "{command:?} should fail; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// `plexus config print --json`, for the caller's flags and variables.
fn print_json() -> Command {
    let mut command = clean_plexus();
    command.args(["config", "print", "--json"]);
    command
}

/// What `command` (from [`print_json`]) prints: the configuration and its sources.
fn printed(command: &mut Command) -> serde_json::Value {
    serde_json::from_str(&succeed(command)).unwrap()
}

#[test]
fn environment_overrides_the_file_and_flags_override_the_environment() {
    let path = temp_config(
        "layers",
        "[server]\nport = 7001\nmax_frame_bytes = 1000\n[metrics]\nhost = \"127.0.0.3\"\n",
    );
    // File alone.
    let out = printed(print_json().arg("--config").arg(&path));
    assert_eq!(out["config"]["server"]["port"], 7001);
    assert_eq!(out["sources"]["server.port"], format!("file {}", path.display()));
    assert!(out["sources"].get("server.host").is_none(), "a default has no source: {out}");
    // The regular variable beats the file, for any setting.
    let out = printed(
        print_json()
            .env("PLEXUS_SERVER__PORT", "7002")
            .env("PLEXUS_SERVER__MAX_FRAME_BYTES", "2000")
            .env("PLEXUS_ADAPTER__DRIVER", "nats")
            .env("PLEXUS_ADAPTER__URL", "nats://127.0.0.1:4333")
            .arg("--config")
            .arg(&path),
    );
    assert_eq!(out["config"]["server"]["port"], 7002);
    assert_eq!(out["config"]["server"]["max_frame_bytes"], 2000);
    assert_eq!(out["config"]["adapter"]["driver"], "nats");
    assert_eq!(out["config"]["adapter"]["url"], "nats://127.0.0.1:4333");
    assert_eq!(out["sources"]["server.port"], "env PLEXUS_SERVER__PORT");
    assert_eq!(out["sources"]["adapter.url"], "env PLEXUS_ADAPTER__URL");
    // A flag's own variable (the older short names) beats the regular one; the flag beats both.
    let out = printed(
        print_json().env("PLEXUS_SERVER__PORT", "7002").env("PLEXUS_PORT", "7003").arg("--config").arg(&path),
    );
    assert_eq!(out["config"]["server"]["port"], 7003);
    assert_eq!(out["sources"]["server.port"], "env PLEXUS_PORT");
    let out = printed(
        print_json()
            .env("PLEXUS_SERVER__PORT", "7002")
            .env("PLEXUS_PORT", "7003")
            .env("PLEXUS_SERVER__MAX_FRAME_BYTES", "2000")
            .args(["--port", "7004", "--set", "server.max_frame_bytes=3000"])
            .arg("--config")
            .arg(&path),
    );
    assert_eq!(out["config"]["server"]["port"], 7004);
    assert_eq!(out["sources"]["server.port"], "flag --port");
    assert_eq!(out["config"]["server"]["max_frame_bytes"], 3000);
    assert_eq!(out["sources"]["server.max_frame_bytes"], "flag --set server.max_frame_bytes");

    // The same order in a running server: file 127.0.0.3 < env 127.0.0.2 < flag 127.0.0.1.
    let start = |flag: bool| {
        let mut command = clean_plexus();
        command
            .args(["serve", "--port", "0", "--metrics-port", "0"])
            .arg("--config")
            .arg(&path)
            .env("PLEXUS_SERVER__HOST", "127.0.0.1")
            .env("PLEXUS_METRICS__HOST", "127.0.0.2")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if flag {
            command.args(["--metrics-host", "127.0.0.1"]);
        }
        KillOnDrop(command.spawn().unwrap())
    };
    for (flag, expected) in [(false, "127.0.0.2:"), (true, "127.0.0.1:")] {
        let mut guard = start(flag);
        let mut stdout = BufReader::new(guard.0.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let metrics = line.trim().strip_prefix("plexus metrics on ").unwrap_or_else(|| panic!("{line}"));
        assert!(metrics.starts_with(expected), "flag {flag}: {metrics}");
    }
}

#[test]
fn an_indexed_variable_overrides_one_apps_secret_and_the_server_signs_with_it() {
    let path = temp_config(
        "indexed",
        "[[apps]]\nid = \"1\"\nkey = \"key-one\"\nsecret = \"file-secret-one\"\n\
         [[apps]]\nid = \"2\"\nkey = \"key-two\"\nsecret = \"file-secret-two\"\n",
    );
    let mut guard = KillOnDrop(
        clean_plexus()
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"])
            .arg("--config")
            .arg(&path)
            .env("PLEXUS_APPS__0__SECRET", "env-secret-one")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = listening_address(&mut guard.0);
    let status = |key: &str, secret: &str, id: &str| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let path = format!("/apps/{id}/channels");
        let query = plexus_protocol::signature::sign_api_query(key, secret, "GET", &path, b"", now, &[]);
        let response = http_get(&addr, &format!("{path}?{query}"));
        response.split(' ').nth(1).unwrap().to_owned()
    };
    assert_eq!(status("key-one", "env-secret-one", "1"), "200", "the variable's secret signs");
    assert_eq!(status("key-one", "file-secret-one", "1"), "401", "the file's secret no longer does");
    assert_eq!(status("key-two", "file-secret-two", "2"), "200", "the other app keeps its own");

    let out =
        printed(print_json().arg("--config").arg(&path).env("PLEXUS_APPS__0__SECRET", "env-secret-one"));
    assert_eq!(out["sources"]["apps.0.secret"], "env PLEXUS_APPS__0__SECRET");
    assert_eq!(out["sources"]["apps.1.secret"], format!("file {}", path.display()));
    // An index past the end of the list would leave a gap: refused, naming the variable.
    let stderr = fail(
        clean_plexus().args(["config", "check", "--config"]).arg(&path).env("PLEXUS_APPS__5__SECRET", "x"),
    );
    assert!(stderr.contains("PLEXUS_APPS__5__SECRET"), "{stderr}");
}

#[test]
fn variables_in_the_file_are_replaced_and_a_missing_one_is_named() {
    let path = temp_config(
        "interpolation",
        "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"${PLEXUS_CLI_TEST_SECRET}\"\n\
         [server]\nport = \"${PLEXUS_CLI_TEST_PORT}\"\n[webhooks]\ndata_dir = \"/var/lib/$${literal}\"\n",
    );
    let out = printed(
        print_json()
            .arg("--config")
            .arg(&path)
            .env("PLEXUS_CLI_TEST_SECRET", "interpolated-secret")
            .env("PLEXUS_CLI_TEST_PORT", "7010"),
    );
    assert_eq!(out["config"]["server"]["port"], 7010, "a string from a variable fills a number");
    assert_eq!(out["config"]["webhooks"]["data_dir"], "/var/lib/${literal}", "$${{ is a literal ${{");
    assert_eq!(
        out["sources"]["apps.0.secret"],
        format!("file {} via ${{PLEXUS_CLI_TEST_SECRET}}", path.display())
    );
    // The secret arrives: the server signs with it.
    let mut guard = KillOnDrop(
        clean_plexus()
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"])
            .arg("--config")
            .arg(&path)
            .env("PLEXUS_CLI_TEST_SECRET", "interpolated-secret")
            .env("PLEXUS_CLI_TEST_PORT", "7010")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = listening_address(&mut guard.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let query = plexus_protocol::signature::sign_api_query(
        "k",
        "interpolated-secret",
        "GET",
        "/apps/1/channels",
        b"",
        now,
        &[],
    );
    let response = http_get(&addr, &format!("/apps/1/channels?{query}"));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    drop(guard);

    let stderr = fail(
        clean_plexus()
            .args(["config", "check", "--config"])
            .arg(&path)
            .env("PLEXUS_CLI_TEST_PORT", "7010")
            .env_remove("PLEXUS_CLI_TEST_SECRET"),
    );
    assert!(stderr.contains("PLEXUS_CLI_TEST_SECRET") && stderr.contains("apps.0.secret"), "{stderr}");
    let stderr = fail(
        clean_plexus()
            .args(["serve", "--port", "0", "--config"])
            .arg(&path)
            .env("PLEXUS_CLI_TEST_SECRET", "s")
            .env_remove("PLEXUS_CLI_TEST_PORT"),
    );
    assert!(stderr.contains("PLEXUS_CLI_TEST_PORT") && stderr.contains("server.port"), "{stderr}");
}

#[test]
fn config_check_passes_a_good_configuration_and_names_a_bad_field() {
    let good = temp_config("check-good", "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n");
    let stdout = succeed(clean_plexus().args(["config", "check", "--config"]).arg(&good));
    assert!(stdout.starts_with("ok: ") && stdout.contains("1 app(s)"), "{stdout}");

    let bad = temp_config("check-bad", "[server]\nmax_frame_byts = 10\n");
    let stderr = fail(clean_plexus().args(["config", "check", "--config"]).arg(&bad));
    assert!(stderr.contains("max_frame_byts") && stderr.contains(&bad.display().to_string()), "{stderr}");

    for (var, value, needles) in [
        ("PLEXUS_SERVER__PORT", "six", &["server.port", "PLEXUS_SERVER__PORT"][..]),
        ("PLEXUS_SERVER__PROT", "1", &["prot", "PLEXUS_SERVER__PROT"][..]),
        ("PLEXUS_SERVR__PORT", "1", &["servr", "PLEXUS_SERVR__PORT"][..]),
        ("PLEXUS_ADAPTER__DRIVER", "kafka", &["kafka", "PLEXUS_ADAPTER__DRIVER"][..]),
    ] {
        let stderr = fail(clean_plexus().args(["config", "check", "--config"]).arg(&good).env(var, value));
        for needle in needles {
            assert!(stderr.contains(needle), "{var}={value}: stderr lacks {needle:?}:\n{stderr}");
        }
    }
    // Variables with the prefix but without `__` belong to other tools and are left alone.
    succeed(clean_plexus().args(["config", "check", "--config"]).arg(&good).env("PLEXUS_BIN", "/x"));
    // A check that passes for the file still fails on a flag.
    let stderr = fail(clean_plexus().args(["config", "check", "--set", "server.pong_timeout_secs=0"]));
    assert!(stderr.contains("server.pong_timeout_secs"), "{stderr}");
}

#[test]
fn config_print_redacts_secrets_and_is_toml() {
    let path = temp_config(
        "redact",
        "[admin]\ntoken = \"admin-token-sekrit\"\n\
         [adapter]\ndriver = \"redis\"\nurl = \"redis://:redis-pw-sekrit@127.0.0.1:6379\"\n\
         [app_store]\nurl = \"postgres://plexus:pg-pw-sekrit@db:5432/plexus?password=query-pw-sekrit\"\n\
         [[bridges]]\napp = \"1\"\nurl = \"nats://nats-token-sekrit@127.0.0.1:4222\"\nsubject = \"a.{x}\"\nchannel = \"c-{x}\"\nevent = \"e\"\n\
         [[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"app-secret-sekrit\"\n\
         [[apps.api_keys]]\nkey = \"api-key-sekrit\"\n",
    );
    let text = succeed(
        clean_plexus()
            .args(["config", "print", "--config"])
            .arg(&path)
            .env("PLEXUS_APPS__0__SECRET", "env-secret-sekrit"),
    );
    let json = succeed(clean_plexus().args(["config", "print", "--json", "--config"]).arg(&path));
    for out in [&text, &json] {
        assert!(!out.contains("sekrit"), "a secret is printed:\n{out}");
        assert!(out.contains("<redacted>"), "{out}");
    }
    assert!(text.contains("redis://:<redacted>@127.0.0.1:6379"), "{text}");
    assert!(text.contains("postgres://plexus:<redacted>@db:5432/plexus?password=<redacted>"), "{text}");
    assert!(text.contains("# env PLEXUS_APPS__0__SECRET"), "{text}");
    // What it prints is a configuration file again (secrets aside).
    let parsed: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(parsed["adapter"]["driver"].as_str(), Some("redis"));
    assert_eq!(parsed["apps"][0]["key"].as_str(), Some("k"));
    assert_eq!(parsed["server"]["port"].as_integer(), Some(6001));
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let mut guard = KillOnDrop(
        clean_plexus()
            .args(["serve", "--port", "0", "--metrics-port", "0", "--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    listening_address(&mut guard.0);
    let child = &mut guard.0;
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines.len() >= 2, "{stderr}");
    for line in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line.get(field).is_some(), "{field} missing: {line}");
        }
    }
    let serving = lines.iter().find(|l| l["message"] == "serving app").unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["id"], "app-id", "fields sit beside the message: {serving}");
    assert!(lines.iter().any(|l| l["level"] == "WARN"), "the development app warning: {stderr}");
}

#[test]
fn a_data_directory_in_use_is_named_with_the_way_out() {
    let dir = std::env::temp_dir().join(format!("plexus-cli-{}-shared-data", std::process::id()));
    let path = temp_config(
        "data-dir",
        "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n\
         [[apps.webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\nevents = [\"channel_occupied\"]\n",
    );
    let start = || {
        clean_plexus()
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--config"])
            .arg(&path)
            .env("PLEXUS_DATA_DIR", &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = KillOnDrop(start());
    listening_address(&mut first.0);
    let second = start().wait_with_output().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains(&dir.display().to_string()), "the directory is named:\n{stderr}");
    assert!(stderr.contains("--data-dir") && stderr.contains("already open"), "{stderr}");
    drop(first);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_reads_the_app_store_url_data_dir_and_hosts_like_the_other_settings() {
    let out = printed(
        print_json()
            .env("PLEXUS_APP_STORE_URL", "postgres://plexus:pw-sekrit@db/plexus")
            .env("PLEXUS_DATA_DIR", "/var/lib/plexus-a")
            .env("PLEXUS_ADMIN__HOST", "127.0.0.5")
            .args(["--metrics-host", "127.0.0.6"]),
    );
    assert_eq!(out["config"]["app_store"]["url"], "postgres://plexus:<redacted>@db/plexus");
    assert_eq!(out["sources"]["app_store.url"], "env PLEXUS_APP_STORE_URL");
    assert_eq!(out["config"]["webhooks"]["data_dir"], "/var/lib/plexus-a");
    assert_eq!(out["sources"]["webhooks.data_dir"], "env PLEXUS_DATA_DIR");
    assert_eq!(out["config"]["admin"]["host"], "127.0.0.5");
    assert_eq!(out["sources"]["admin.host"], "env PLEXUS_ADMIN__HOST");
    assert_eq!(out["sources"]["metrics.host"], "flag --metrics-host");
    let out = printed(print_json().args([
        "--app-store-url",
        "postgres://db/plexus",
        "--data-dir",
        "/var/lib/plexus-b",
        "--admin-host",
        "127.0.0.7",
        "--log-format",
        "json",
    ]));
    assert_eq!(out["sources"]["app_store.url"], "flag --app-store-url");
    assert_eq!(out["sources"]["webhooks.data_dir"], "flag --data-dir");
    assert_eq!(out["config"]["admin"]["host"], "127.0.0.7");
    assert_eq!(out["config"]["server"]["log_format"], "json");
    // The URL alone does not switch where apps come from; the check says so.
    let stdout = succeed(clean_plexus().args(["config", "check", "--app-store-url", "postgres://db/plexus"]));
    assert!(stdout.contains("app_store.driver"), "{stdout}");
}
