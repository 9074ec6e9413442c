//! Credentials of event-stream consumers over real sockets: signed tokens (HS256 with the app
//! secret, RS256 and ES256 with configured public keys) at the upgrade, a token's connection
//! closed when it expires, API keys and tokens revoked while connected, and the heartbeat
//! settings of keyed connections.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Ended, TestServer};
use futures_util::StreamExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use plexus_core::access::{ApiKey, ChannelScope};
use plexus_core::app::TokenKey;
use plexus_core::{App, MemoryAppStore};
use plexus_server::config::ServerConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const QUERY: &str = "protocol=7&client=test&version=1.0";

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn key(secret: &str, channels: &[&str]) -> ApiKey {
    ApiKey {
        key: secret.into(),
        scopes: vec!["events:read".into()],
        channels: channels.iter().map(|c| c.to_string()).collect(),
        max_connections: 10,
    }
}

fn stream_app() -> App {
    let mut app = App::new("streams", "streams-key", "streams-secret");
    app.enable_tokens = true;
    app.api_keys = vec![key("sk_one", &["instance-inst_1*"]), key("sk_two", &["instance-*"])];
    app.channel_scopes = vec![ChannelScope { prefix: "chats-".into(), scope: "chats:read".into() }];
    app
}

fn hs256(app: &App, claims: Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(app.secret.as_bytes())).unwrap()
}

/// The upgrade's answer: the status line's code and the body (JSON for refusals).
async fn upgrade_status(server: &TestServer, app: &App, query: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /app/{}?{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n",
        app.key, server.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    tokio::time::timeout(common::WAIT, reader.read_line(&mut status)).await.unwrap().unwrap();
    let code: u16 = status.split(' ').nth(1).unwrap().parse().unwrap();
    if code == 101 {
        return (code, String::new());
    }
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(common::WAIT, tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut rest))
        .await;
    let text = String::from_utf8_lossy(&rest).to_string();
    (code, text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
}

async fn connect_with(server: &TestServer, app: &App, credential: &str) -> common::TestClient {
    let mut client = server.connect_raw(&format!("/app/{}?{QUERY}&{credential}", app.key)).await;
    let established = client.expect("pusher:connection_established").await;
    client.socket_id = common::data_of(&established)["socket_id"].as_str().unwrap().to_owned();
    client
}

/// Reads frames until the close frame; returns its code and the last `pusher:error` message.
async fn closed_with(client: &mut common::TestClient) -> (u16, String) {
    let (events, ended) = client.until_closed().await;
    let Ended::Closed(code) = ended else { panic!("expected a close frame, got {ended:?} after {events:?}") };
    let message = events
        .iter()
        .rev()
        .find(|e| e["event"] == "pusher:error")
        .map(|e| e["data"]["message"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (code, message)
}

#[tokio::test]
async fn hs256_tokens_are_checked_at_the_upgrade_and_grant_their_channels() {
    let app = stream_app();
    let server = TestServer::start(vec![app.clone()]).await;

    let (status, body) = upgrade_status(&server, &app, QUERY, "").await;
    assert_eq!(status, 401, "{body}");
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": now_secs() + 60}),
        &EncodingKey::from_secret(b"not-the-secret"),
    )
    .unwrap();
    let (status, body) = upgrade_status(&server, &app, &format!("{QUERY}&token={forged}"), "").await;
    assert_eq!(status, 401);
    assert!(body.contains("invalid token"), "{body}");
    let expired = hs256(&app, json!({"exp": now_secs() - 1, "channels": ["*"]}));
    let (status, body) = upgrade_status(&server, &app, &format!("{QUERY}&token={expired}"), "").await;
    assert_eq!((status, body.contains("token expired")), (401, true), "{body}");

    // A good token, as a query parameter and as a bearer header.
    let token = hs256(&app, json!({"exp": now_secs() + 600, "sub": "user-7", "channels": ["feed-7*"]}));
    let (status, _) =
        upgrade_status(&server, &app, QUERY, &format!("Authorization: Bearer {token}\r\n")).await;
    assert_eq!(status, 101);
    let mut client = connect_with(&server, &app, &format!("token={token}")).await;
    let ok = client.subscribe("feed-7").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded", "{ok}");
    let refused = client.subscribe("feed-8").await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    assert_eq!(refused["data"]["status"], 403);
    assert!(refused["data"]["error"].as_str().unwrap().contains("the token grants no access"), "{refused}");
    // Pusher also sends a bare pusher:error for an authorization failure.
    client.expect("pusher:error").await;

    // Events reach the token's connection like any other.
    server.trigger(&app, "feed-7", "news", "{\"n\":1}").await;
    let event = client.expect("news").await;
    assert_eq!(event["channel"], "feed-7");
}

#[tokio::test]
async fn a_token_connection_is_closed_with_4009_when_the_token_expires() {
    let app = stream_app();
    let server = TestServer::start(vec![app.clone()]).await;
    let token = hs256(&app, json!({"exp": now_secs() + 2, "channels": ["feed-*"]}));
    let mut short = connect_with(&server, &app, &format!("token={token}")).await;
    let lasting = hs256(&app, json!({"exp": now_secs() + 600, "channels": ["feed-*"]}));
    let mut long = connect_with(&server, &app, &format!("token={lasting}")).await;
    assert_eq!(long.subscribe("feed-1").await["event"], "pusher_internal:subscription_succeeded");

    let (code, message) = closed_with(&mut short).await;
    assert_eq!((code, message.as_str()), (4009, "token expired"));
    // The other token's connection is untouched.
    server.trigger(&app, "feed-1", "still", "{}").await;
    long.expect("still").await;
}

#[tokio::test]
async fn a_token_whose_exp_is_far_beyond_any_clock_is_admitted_and_the_server_keeps_serving() {
    // 2^64−1 and i64::MAX are how some issuers write "never"; the first used to panic the
    // upgrade handler (`UNIX_EPOCH + exp` overflowed), dropping the connection unanswered.
    let app = stream_app();
    let server = TestServer::start(vec![app.clone()]).await;
    let mut clients = Vec::new();
    for exp in [u64::MAX, i64::MAX as u64] {
        let token = hs256(&app, json!({"exp": exp, "channels": ["feed-*"]}));
        let (status, body) = upgrade_status(&server, &app, &format!("{QUERY}&token={token}"), "").await;
        assert_eq!(status, 101, "exp {exp}: {body}");
        let mut client = connect_with(&server, &app, &format!("token={token}")).await;
        assert_eq!(client.subscribe("feed-1").await["event"], "pusher_internal:subscription_succeeded");
        clients.push(client);
    }
    // The server goes on serving them and everyone else; their expiry timers did not fire.
    let mut keyed = connect_with(&server, &app, "api_key=sk_two").await;
    assert_eq!(keyed.subscribe("instance-1").await["event"], "pusher_internal:subscription_succeeded");
    server.trigger(&app, "feed-1", "news", "{}").await;
    server.trigger(&app, "instance-1", "news", "{}").await;
    for client in clients.iter_mut().chain([&mut keyed]) {
        client.expect("news").await;
    }
}

#[tokio::test]
async fn tokens_for_another_audience_or_issuer_are_refused_naming_the_claim() {
    let iss = "https://idp.example";
    let mut app = stream_app();
    app.token_audience = Some("plexus".into());
    app.token_issuer = Some(iss.into());
    let store = Arc::new(MemoryAppStore::new([app.clone()]).unwrap());
    let server = TestServer::start_store(ServerConfig::default(), store.clone(), None).await;
    let exp = now_secs() + 600;
    for (claims, claim) in [
        // Same identity provider, same key, another service: accepted before the settings existed.
        (json!({"exp": exp, "aud": "billing", "iss": iss}), "aud"),
        (json!({"exp": exp, "iss": iss}), "aud"),
        (json!({"exp": exp, "aud": "plexus", "iss": "https://other.example"}), "iss"),
        (json!({"exp": exp, "aud": "plexus"}), "iss"),
    ] {
        let token = hs256(&app, claims.clone());
        let (status, body) = upgrade_status(&server, &app, &format!("{QUERY}&token={token}"), "").await;
        assert_eq!(status, 401, "{claims}: {body}");
        assert!(body.contains(&format!("invalid token: {claim}")), "{claims}: {body}");
    }
    let good =
        hs256(&app, json!({"exp": exp, "aud": ["billing", "plexus"], "iss": iss, "channels": ["feed-*"]}));
    let mut client = connect_with(&server, &app, &format!("token={good}")).await;
    assert_eq!(client.subscribe("feed-1").await["event"], "pusher_internal:subscription_succeeded");

    // Moving the app to another audience closes the connection whose token names the old one.
    let mut moved = app.clone();
    moved.token_audience = Some("plexus-v2".into());
    store.replace([moved]).unwrap();
    server.state.app_changed(&app.id);
    let (code, message) = closed_with(&mut client).await;
    assert_eq!(code, 4009);
    assert!(message.contains("token no longer accepted: invalid token: aud"), "{message}");
}

/// A key pair made by `openssl` for this test run: (private PKCS#8 PEM, public SPKI PEM).
fn openssl_key_pair(algorithm: &[&str]) -> (String, String) {
    let dir = std::env::temp_dir().join(format!("plexus-jwt-{}-{}", std::process::id(), algorithm.join("-")));
    std::fs::create_dir_all(&dir).unwrap();
    let private = dir.join("private.pem");
    let status = std::process::Command::new("openssl")
        .args(["genpkey", "-out"])
        .arg(&private)
        .args(algorithm)
        .status()
        .expect("openssl runs");
    assert!(status.success());
    let public = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .output()
        .expect("openssl runs");
    assert!(public.status.success());
    (std::fs::read_to_string(&private).unwrap(), String::from_utf8(public.stdout).unwrap())
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_the_configured_public_keys() {
    let (rsa_private, rsa_public) =
        openssl_key_pair(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let (ec_private, ec_public) =
        openssl_key_pair(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let mut app = App::new("idp", "idp-key", "idp-secret");
    app.token_keys = vec![
        TokenKey { algorithm: "RS256".into(), public_key: rsa_public, kid: None },
        TokenKey { algorithm: "ES256".into(), public_key: ec_public, kid: Some("ec-1".into()) },
    ];
    let server = TestServer::start(vec![app.clone()]).await;
    let claims = json!({"exp": now_secs() + 600, "sub": "u", "channels": ["orders-*"]});

    let rs = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap(),
    )
    .unwrap();
    let mut client = connect_with(&server, &app, &format!("token={rs}")).await;
    assert_eq!(client.subscribe("orders-1").await["event"], "pusher_internal:subscription_succeeded");

    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec-1".into());
    let ec_key = EncodingKey::from_ec_pem(ec_private.as_bytes()).unwrap();
    let es = encode(&header, &claims, &ec_key).unwrap();
    let mut client = connect_with(&server, &app, &format!("token={es}")).await;
    assert_eq!(client.subscribe("orders-2").await["event"], "pusher_internal:subscription_succeeded");

    // Another kid, or HS256 (not enabled on this app), is refused with the reason.
    header.kid = Some("ec-2".into());
    let other_kid = encode(&header, &claims, &ec_key).unwrap();
    let (status, body) = upgrade_status(&server, &app, &format!("{QUERY}&token={other_kid}"), "").await;
    assert_eq!(status, 401);
    assert!(body.contains("no ES256 key"), "{body}");
    let hs = hs256(&app, claims.clone());
    let (status, body) = upgrade_status(&server, &app, &format!("{QUERY}&token={hs}"), "").await;
    assert_eq!(status, 401);
    assert!(body.contains("HS256"), "{body}");
}

#[tokio::test]
async fn revoking_keys_and_rotating_the_secret_close_exactly_the_affected_connections() {
    let app = stream_app();
    let store = Arc::new(MemoryAppStore::new([app.clone()]).unwrap());
    let server = TestServer::start_store(ServerConfig::default(), store.clone(), None).await;
    let mut one = connect_with(&server, &app, "api_key=sk_one").await;
    let mut two = connect_with(&server, &app, "api_key=sk_two").await;
    let token = hs256(&app, json!({"exp": now_secs() + 600, "channels": ["instance-*"]}));
    let mut by_token = connect_with(&server, &app, &format!("token={token}")).await;
    for client in [&mut one, &mut two, &mut by_token] {
        assert_eq!(
            client.subscribe("instance-inst_1").await["event"],
            "pusher_internal:subscription_succeeded"
        );
    }

    // sk_one removed; sk_two's grants narrowed; the secret (and so the HS256 key) unchanged.
    let mut next = app.clone();
    next.api_keys = vec![key("sk_two", &["instance-inst_2*"])];
    let changes = store.replace([next.clone()]).unwrap();
    assert_eq!(changes.changed, vec![app.id.clone()]);
    server.state.app_changed(&app.id);
    assert_eq!(closed_with(&mut one).await, (4009, "API key revoked".to_owned()));
    let (code, message) = closed_with(&mut two).await;
    assert_eq!(code, 4200, "changed grants ask the client to reconnect under them: {message}");
    server.trigger(&app, "instance-inst_1", "after", "{}").await;
    by_token.expect("after").await;

    // The revoked key is refused from now on; the narrowed one connects with its new grants.
    let (status, body) = upgrade_status(&server, &next, &format!("{QUERY}&api_key=sk_one"), "").await;
    assert_eq!((status, body.contains("invalid API key")), (401, true), "{body}");
    let mut two = connect_with(&server, &next, "api_key=sk_two").await;
    assert_eq!(two.subscribe("instance-inst_1").await["event"], "pusher:subscription_error");

    // A rotated secret invalidates the HS256 token.
    let mut rotated = next.clone();
    rotated.secret = "rotated-secret".into();
    store.replace([rotated]).unwrap();
    server.state.app_changed(&app.id);
    let (code, message) = closed_with(&mut by_token).await;
    assert_eq!(code, 4009);
    assert!(message.starts_with("token no longer accepted"), "{message}");
}

#[tokio::test]
async fn keyed_connections_get_their_own_heartbeat_and_silent_ones_are_closed() {
    let mut app = stream_app();
    app.heartbeat_interval_secs = Some(1);
    app.heartbeat_timeout_secs = Some(2);
    let mut plain = App::new("plain", "plain-key", "plain-secret");
    plain.api_keys = vec![key("sk_plain", &["*"])];
    let public = App::new("public", "public-key", "public-secret");
    let server = TestServer::start(vec![app.clone(), plain.clone(), public.clone()]).await;

    // Keyed connections default to 30 s; Pusher ones keep the server's activity timeout.
    let advertised = |established: &Value| common::data_of(established)["activity_timeout"].as_u64();
    let mut keyed = server.connect_raw(&format!("/app/{}?{QUERY}&api_key=sk_plain", plain.key)).await;
    assert_eq!(advertised(&keyed.expect("pusher:connection_established").await), Some(30));
    let mut pusher = server.connect_raw(&format!("/app/{}?{QUERY}", public.key)).await;
    let expected = ServerConfig::default().activity_timeout_secs;
    assert_eq!(advertised(&pusher.expect("pusher:connection_established").await), Some(expected));

    // The app's own settings: ping after 1 s of silence, close 4201 when nothing comes back.
    let mut silent = server.connect_raw(&format!("/app/{}?{QUERY}&api_key=sk_one", app.key)).await;
    assert_eq!(advertised(&silent.expect("pusher:connection_established").await), Some(1));
    // tokio-tungstenite answers WebSocket pings on its own, but not pusher:ping.
    let ping = silent.recv().await;
    assert_eq!(ping["event"], "pusher:ping");
    let (code, _) = closed_with(&mut silent).await;
    assert_eq!(code, 4201);

    // One that answers stays.
    let mut alive = server.connect_raw(&format!("/app/{}?{QUERY}&api_key=sk_one", app.key)).await;
    alive.expect("pusher:connection_established").await;
    for _ in 0..3 {
        assert_eq!(alive.recv().await["event"], "pusher:ping");
        alive.send(json!({"event": "pusher:pong", "data": {}})).await;
    }
    assert_eq!(alive.subscribe("instance-inst_1").await["event"], "pusher_internal:subscription_succeeded");
    drop(keyed);
    drop(pusher);
}

#[tokio::test]
async fn an_sse_stream_opened_with_a_token_ends_with_4009_when_it_expires() {
    let app = stream_app();
    let server = TestServer::start(vec![app.clone()]).await;
    let token = hs256(&app, json!({"exp": now_secs() + 2, "channels": ["feed-*"]}));
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /apps/{}/events/stream?channels=feed-1&token={token} HTTP/1.1\r\nHost: {}\r\n\r\n",
        app.id, server.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("plexus:closed") {
                return lines.next_line().await.unwrap().unwrap_or_default();
            }
            seen.push(line);
        }
        String::new()
    })
    .await
    .expect("the stream ends when the token expires");
    assert!(seen[0].starts_with("HTTP/1.1 200"), "{seen:?}");
    // The chunked body's data line, e.g. `data: {"code":4009,"message":"token expired"}`.
    assert!(closed.contains("\"code\":4009") && closed.contains("token expired"), "{closed}");
}

#[tokio::test]
async fn websocket_pings_do_not_count_as_answers_to_pusher_pings_only_frames_do() {
    // Guards the heartbeat test's premise: the test client answers WebSocket-level pings by
    // itself, and the server counts those as life (any frame does), so a client that is merely
    // connected but never speaks Pusher is still closed only by the pusher:ping deadline.
    let mut app = stream_app();
    app.heartbeat_interval_secs = Some(1);
    app.heartbeat_timeout_secs = Some(2);
    let server = TestServer::start(vec![app.clone()]).await;
    let mut client = server.connect_raw(&format!("/app/{}?{QUERY}&api_key=sk_one", app.key)).await;
    client.expect("pusher:connection_established").await;
    let mut pings = 0;
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(message) = client.ws.next().await {
            match message {
                Ok(Message::Text(text)) if text.contains("pusher:ping") => pings += 1,
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!((pings, ended), (1, Some(4201)));
}

/// Kills the child if the test fails before it exits, so no server outlives its test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn keyed_config(keys: &[&str]) -> String {
    let mut text = String::from(
        "[server]\nhost = \"127.0.0.1\"\nport = 0\n[metrics]\nenabled = false\n\
         [[apps]]\nid = \"streams\"\nkey = \"streams-key\"\nsecret = \"streams-secret\"\n",
    );
    for key in keys {
        text.push_str(&format!("[[apps.api_keys]]\nkey = \"{key}\"\nscopes = [\"events:read\"]\n"));
    }
    text
}

#[tokio::test]
async fn sighup_rereads_the_config_files_apps_and_closes_revoked_keys_connections() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("plexus-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plexus.toml");
    std::fs::write(&path, keyed_config(&["sk_kept", "sk_revoked"])).unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_plexus"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    // The log, line by line, so the test can wait for the server to have acted on a signal.
    let (log_tx, mut log) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = log_tx.send(line);
        }
    });
    let addr = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        loop {
            let line = lines.next().expect("plexus prints its address").unwrap();
            if let Some(addr) = line.strip_prefix("plexus listening on ") {
                return addr.to_owned();
            }
        }
    })
    .await
    .unwrap();
    let open = |key: &str| {
        let url = format!("ws://{addr}/app/streams-key?{QUERY}&api_key={key}");
        async move {
            let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("connects");
            let mut client = common::TestClient { ws, socket_id: String::new() };
            client.expect("pusher:connection_established").await;
            client
        }
    };
    let mut kept = open("sk_kept").await;
    let mut revoked = open("sk_revoked").await;

    std::fs::write(&path, keyed_config(&["sk_kept"])).unwrap();
    let status =
        std::process::Command::new("kill").args(["-HUP", &child.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert_eq!(closed_with(&mut revoked).await, (4009, "API key revoked".to_owned()));
    assert_eq!(kept.subscribe("news").await["event"], "pusher_internal:subscription_succeeded");

    // A broken file is refused whole: the server keeps serving the apps it had.
    std::fs::write(&path, "[[apps]]\nid = \"streams\"\n").unwrap();
    std::process::Command::new("kill").args(["-HUP", &child.0.id().to_string()]).status().unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = log.recv().await {
            if line.contains("reloading apps failed") {
                assert!(line.contains("plexus.toml"), "the error names the file: {line}");
                return;
            }
        }
        panic!("the server's log ended");
    })
    .await
    .expect("the refused reload is logged");
    let _still = open("sk_kept").await;
    assert_eq!(kept.subscribe("news-2").await["event"], "pusher_internal:subscription_succeeded");
}
