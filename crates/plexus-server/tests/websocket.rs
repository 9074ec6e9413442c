//! The WebSocket endpoint over real loopback sockets: handshake, refusals, liveness, channels,
//! presence, client events and malformed input.

mod common;

use common::{app, data_of, Ended, TestServer};
use plexus_server::config::ServerConfig;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use futures_util::SinkExt;

#[tokio::test]
async fn first_frame_is_connection_established_with_sdk_shaped_socket_id() {
    let server = TestServer::start(vec![app(1)]).await;
    let mut client = server.connect_raw("/app/key-1?protocol=7").await;
    let first = client.recv().await;
    assert_eq!(first["event"], "pusher:connection_established");
    let data = data_of(&first);
    let socket_id = data["socket_id"].as_str().unwrap();
    let (a, b) = socket_id.split_once('.').unwrap();
    assert!(a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()), "{socket_id}");
    assert_eq!(data["activity_timeout"], 120);
}

#[tokio::test]
async fn unknown_key_gets_error_4001_then_close_4001() {
    let server = TestServer::start(vec![app(1)]).await;
    let mut client = server.connect_raw("/app/unknown-key?protocol=7").await;
    let (events, ended) = client.until_closed().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"], "pusher:error");
    assert_eq!(events[0]["data"]["code"], 4001);
    assert!(events[0]["data"]["message"].as_str().unwrap().contains("unknown-key"));
    assert_eq!(ended, Ended::Closed(4001));
}

#[tokio::test]
async fn disabled_app_quota_and_protocol_versions_are_refused_with_their_codes() {
    let mut disabled = app(2);
    disabled.enabled = false;
    let mut limited = app(3);
    limited.max_connections = 1;
    let server = TestServer::start(vec![app(1), disabled, limited]).await;

    let cases = [
        ("/app/key-2?protocol=7", 4003),
        ("/app/key-1?protocol=4", 4007),
        ("/app/key-1?protocol=8", 4007),
        ("/app/key-1?protocol=seven", 4006),
    ];
    for (path, code) in cases {
        let mut client = server.connect_raw(path).await;
        let (events, ended) = client.until_closed().await;
        assert_eq!(events[0]["data"]["code"], code, "{path}");
        assert_eq!(ended, Ended::Closed(code), "{path}");
    }

    let _first = server.connect("key-3").await;
    let mut second = server.connect_raw("/app/key-3?protocol=7").await;
    let (events, ended) = second.until_closed().await;
    assert_eq!(events[0]["data"]["code"], 4004);
    assert_eq!(ended, Ended::Closed(4004));

    // A missing protocol parameter is accepted unless strict mode is on.
    let mut lenient = server.connect_raw("/app/key-1").await;
    assert_eq!(lenient.recv().await["event"], "pusher:connection_established");
}

#[tokio::test]
async fn strict_mode_refuses_a_missing_protocol_with_4008() {
    let config = ServerConfig { require_protocol_version: true, ..Default::default() };
    let server = TestServer::start_with(config, vec![app(1)]).await;
    let mut client = server.connect_raw("/app/key-1").await;
    let (_, ended) = client.until_closed().await;
    assert_eq!(ended, Ended::Closed(4008));
}

#[tokio::test]
async fn pusher_ping_is_answered_with_pong() {
    let server = TestServer::start(vec![app(1)]).await;
    let mut client = server.connect("key-1").await;
    client.send(json!({"event": "pusher:ping", "data": {}})).await;
    client.expect("pusher:pong").await;
}

#[tokio::test]
async fn silent_client_is_pinged_then_closed_with_4201() {
    let config = ServerConfig { activity_timeout_secs: 1, pong_timeout_secs: 1, ..Default::default() };
    let server = TestServer::start_with(config, vec![app(1)]).await;
    let mut client = server.connect("key-1").await;
    client.expect("pusher:ping").await;
    let (events, ended) = client.until_closed().await;
    assert_eq!(events.last().unwrap()["data"]["code"], 4201);
    assert_eq!(ended, Ended::Closed(4201));
}

#[tokio::test]
async fn client_that_answers_pings_stays_connected() {
    let config = ServerConfig { activity_timeout_secs: 1, pong_timeout_secs: 1, ..Default::default() };
    let server = TestServer::start_with(config, vec![app(1)]).await;
    let mut client = server.connect("key-1").await;
    for _ in 0..3 {
        client.expect("pusher:ping").await;
        client.send(json!({"event": "pusher:pong", "data": {}})).await;
    }
    client.send(json!({"event": "pusher:ping", "data": {}})).await;
    // The next frames are our pong (and possibly another ping): the socket is still open.
    let next = client.recv().await;
    assert!(next["event"] == "pusher:pong" || next["event"] == "pusher:ping", "{next}");
}

#[tokio::test]
async fn public_subscription_receives_published_events_with_string_data() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut client = server.connect("key-1").await;
    let ok = client.subscribe("my-channel").await;
    assert_eq!(
        ok,
        json!({"event": "pusher_internal:subscription_succeeded", "channel": "my-channel", "data": "{}"})
    );
    let (status, body) = server.trigger(&a, "my-channel", "greet", r#"{"hello":"world"}"#).await;
    assert_eq!((status, body), (200, json!({})));
    let event = client.recv().await;
    assert_eq!(event, json!({"event": "greet", "channel": "my-channel", "data": r#"{"hello":"world"}"#}));
}

#[tokio::test]
async fn resubscribing_resends_success_without_duplicate_delivery() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut client = server.connect("key-1").await;
    client.subscribe("dup").await;
    client.expect_resubscribe("dup").await;
    server.trigger(&a, "dup", "once", "1").await;
    assert_eq!(client.recv().await["event"], "once");
    server.trigger(&a, "dup", "twice", "2").await;
    assert_eq!(client.recv().await["event"], "twice", "the first event arrived only once");
}

trait Resubscribe {
    async fn expect_resubscribe(&mut self, channel: &str);
}

impl Resubscribe for common::TestClient {
    async fn expect_resubscribe(&mut self, channel: &str) {
        let again = self.subscribe(channel).await;
        assert_eq!(again["event"], "pusher_internal:subscription_succeeded");
    }
}

#[tokio::test]
async fn unsubscribed_socket_receives_nothing_more() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut client = server.connect("key-1").await;
    client.subscribe("news").await;
    client.subscribe("marker").await;
    client.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "news"}})).await;
    // The unsubscribe is processed before this ping, so the trigger below cannot race it.
    client.send(json!({"event": "pusher:ping"})).await;
    client.expect("pusher:pong").await;
    server.trigger(&a, "news", "missed", "x").await;
    server.trigger(&a, "marker", "marker", "x").await;
    assert_eq!(client.recv().await["event"], "marker");
}

#[tokio::test]
async fn private_channel_needs_a_valid_signature_and_bad_ones_leave_the_socket_open() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut client = server.connect("key-1").await;
    let ok = client.subscribe_private(&a, "private-ok").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");

    client
        .send(json!({"event": "pusher:subscribe", "data": {"channel": "private-bad", "auth": format!("key-1:{}", "0".repeat(64))}}))
        .await;
    let error = client.expect("pusher:subscription_error").await;
    assert_eq!(error["channel"], "private-bad");
    assert_eq!(error["data"]["type"], "AuthError");
    assert_eq!(error["data"]["status"], 401);
    let parity = client.expect("pusher:error").await;
    assert!(parity["data"]["code"].is_null());

    // A signature for another socket or channel is no better.
    let stolen = plexus_protocol::signature::auth_token(&a.key, &a.secret, "1.1:private-bad");
    client
        .send(json!({"event": "pusher:subscribe", "data": {"channel": "private-bad", "auth": stolen}}))
        .await;
    client.expect("pusher:subscription_error").await;
    client.expect("pusher:error").await;

    server.trigger(&a, "private-bad", "secret", "x").await;
    server.trigger(&a, "private-ok", "marker", "x").await;
    assert_eq!(client.recv().await["event"], "marker", "nothing from the refused channel");
}

#[tokio::test]
async fn invalid_channel_names_are_refused_on_the_channel() {
    let server = TestServer::start(vec![app(1)]).await;
    let mut client = server.connect("key-1").await;
    for name in ["bad name", &"a".repeat(201), "#server-to-user-7"] {
        let error = client.subscribe(name).await;
        assert_eq!(error["event"], "pusher:subscription_error", "{name}");
        client.expect("pusher:error").await;
    }
}

#[tokio::test]
async fn presence_counts_users_not_sockets() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let ann = r#"{"user_id":"42","user_info":{"name":"Ann"}}"#;
    let bob = r#"{"user_id":7,"user_info":{"name":"Bob"}}"#;

    let mut watcher = server.connect("key-1").await;
    let joined = watcher.subscribe_presence(&a, "presence-room", bob).await;
    let presence = &data_of(&joined)["presence"];
    assert_eq!(presence["count"], 1);
    assert_eq!(presence["ids"], json!(["7"]), "numeric ids become strings");

    let mut tab1 = server.connect("key-1").await;
    let first = tab1.subscribe_presence(&a, "presence-room", ann).await;
    assert_eq!(data_of(&first)["presence"]["count"], 2);
    assert_eq!(data_of(&first)["presence"]["hash"]["42"]["name"], "Ann");
    let added = watcher.expect("pusher_internal:member_added").await;
    assert_eq!(data_of(&added), json!({"user_id": "42", "user_info": {"name": "Ann"}}));

    let mut tab2 = server.connect("key-1").await;
    let second = tab2.subscribe_presence(&a, "presence-room", ann).await;
    assert_eq!(data_of(&second)["presence"]["count"], 2, "a second tab is not a new member");

    let (status, users) = server.api(&a, "GET", "/apps/app-1/channels/presence-room/users", "", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(users, json!({"users": [{"id": "42"}, {"id": "7"}]}));

    tab1.close().await;
    server.trigger(&a, "presence-room", "marker", "1").await;
    assert_eq!(watcher.recv().await["event"], "marker", "no member_removed while a tab remains");
    assert_eq!(tab2.recv().await["event"], "marker");

    tab2.close().await;
    let removed = watcher.expect("pusher_internal:member_removed").await;
    assert_eq!(data_of(&removed), json!({"user_id": "42"}));
}

#[tokio::test]
async fn presence_limits_members_info_size_and_requires_channel_data() {
    let mut a = app(1);
    a.max_presence_members = 1;
    a.max_presence_member_size_kb = 1;
    let server = TestServer::start(vec![a.clone()]).await;
    let mut first = server.connect("key-1").await;
    first.subscribe_presence(&a, "presence-full", r#"{"user_id":"1"}"#).await;

    let mut second = server.connect("key-1").await;
    let refused = second.subscribe_presence(&a, "presence-full", r#"{"user_id":"2"}"#).await;
    assert_eq!(refused["event"], "pusher:subscription_error");
    assert_eq!(refused["data"]["type"], "LimitReached");
    second.expect("pusher:error").await;
    // The same user on another tab still fits.
    let again = second.subscribe_presence(&a, "presence-full", r#"{"user_id":"1"}"#).await;
    assert_eq!(again["event"], "pusher_internal:subscription_succeeded");

    let big = format!(r#"{{"user_id":"3","user_info":{{"x":"{}"}}}}"#, "a".repeat(1100));
    let refused = second.subscribe_presence(&a, "presence-other", &big).await;
    assert_eq!(refused["data"]["type"], "LimitReached");
    second.expect("pusher:error").await;

    second
        .send(json!({"event": "pusher:subscribe", "data": {"channel": "presence-x", "auth": "key-1:00"}}))
        .await;
    assert_eq!(second.recv().await["event"], "pusher:subscription_error");
}

#[tokio::test]
async fn client_events_reach_others_but_not_the_sender_and_carry_user_id_on_presence() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut alice = server.connect("key-1").await;
    let mut bob = server.connect("key-1").await;
    alice.subscribe_private(&a, "private-chat").await;
    bob.subscribe_private(&a, "private-chat").await;
    alice.send(json!({"event": "client-typing", "channel": "private-chat", "data": {"on": true}})).await;
    assert_eq!(
        bob.recv().await,
        json!({"event": "client-typing", "channel": "private-chat", "data": {"on": true}})
    );
    server.trigger(&a, "private-chat", "marker", "x").await;
    assert_eq!(alice.recv().await["event"], "marker", "the sender does not get its own event");
    assert_eq!(bob.recv().await["event"], "marker");

    alice.subscribe_presence(&a, "presence-chat", r#"{"user_id":"alice"}"#).await;
    bob.subscribe_presence(&a, "presence-chat", r#"{"user_id":"bob"}"#).await;
    alice.expect("pusher_internal:member_added").await;
    alice.send(json!({"event": "client-wave", "channel": "presence-chat", "data": "hi"})).await;
    let wave = bob.recv().await;
    assert_eq!(
        wave,
        json!({"event": "client-wave", "channel": "presence-chat", "data": "hi", "user_id": "alice"})
    );
}

#[tokio::test]
async fn client_events_are_refused_where_the_rules_say_with_4301_and_the_socket_stays_open() {
    let mut a = app(1);
    a.max_event_payload_kb = 1;
    let mut off = app(2);
    off.enable_client_messages = false;
    let server = TestServer::start(vec![a.clone(), off.clone()]).await;
    let mut client = server.connect("key-1").await;
    client.subscribe("public").await;
    client.subscribe_private(&a, "private-a").await;
    client.subscribe_private(&a, "private-encrypted-a").await;

    let cases = [
        json!({"event": "client-x", "channel": "public", "data": {}}),
        json!({"event": "client-x", "channel": "private-encrypted-a", "data": {}}),
        json!({"event": "client-x", "channel": "private-not-joined", "data": {}}),
        json!({"event": "client-x", "channel": "private-a", "data": "a".repeat(2000)}),
    ];
    for case in cases {
        client.send(case.clone()).await;
        let error = client.expect("pusher:error").await;
        assert_eq!(error["data"]["code"], 4301, "{case}");
        assert_eq!(error["channel"], case["channel"]);
    }

    let mut disabled = server.connect("key-2").await;
    disabled.subscribe_private(&off, "private-a").await;
    disabled.send(json!({"event": "client-x", "channel": "private-a", "data": {}})).await;
    let error = disabled.expect("pusher:error").await;
    assert!(error["data"]["message"].as_str().unwrap().contains("enable"), "{error}");

    client.send(json!({"event": "pusher:ping"})).await;
    client.expect("pusher:pong").await;
}

#[tokio::test]
async fn eleventh_client_event_within_a_second_is_rejected_but_the_socket_stays() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut sender = server.connect("key-1").await;
    let mut receiver = server.connect("key-1").await;
    sender.subscribe_private(&a, "private-rate").await;
    receiver.subscribe_private(&a, "private-rate").await;
    for i in 0..11 {
        sender.send(json!({"event": "client-n", "channel": "private-rate", "data": {"i": i}})).await;
    }
    let error = sender.expect("pusher:error").await;
    assert_eq!(error["data"]["code"], 4301);
    assert!(error["data"]["message"].as_str().unwrap().contains("rate limit"));
    for i in 0..10 {
        assert_eq!(receiver.recv().await["data"]["i"], i);
    }
    server.trigger(&a, "private-rate", "marker", "x").await;
    assert_eq!(receiver.recv().await["event"], "marker", "exactly ten were relayed");
    sender.send(json!({"event": "pusher:ping"})).await;
    assert_eq!(sender.recv().await["event"], "marker");
    sender.expect("pusher:pong").await;
}

#[tokio::test]
async fn malformed_frames_get_errors_and_never_disturb_others() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut bystander = server.connect("key-1").await;
    bystander.subscribe("calm").await;

    let mut client = server.connect("key-1").await;
    for garbage in [
        "not json",
        "[1,2]",
        r#"{"data":{}}"#,
        r#"{"event":"pusher:subscribe","data":42}"#,
        r#"{"event":"client-x"}"#,
    ] {
        client.send_text(garbage).await;
        let error = client.expect("pusher:error").await;
        assert!(error["data"]["message"].as_str().is_some(), "{garbage}");
    }
    // Unknown events are ignored silently.
    client.send(json!({"event": "whatever", "data": {}})).await;
    // Binary frames holding JSON are accepted like text.
    client.ws.send(Message::binary(br#"{"event":"pusher:ping","data":{}}"#.to_vec())).await.unwrap();
    client.expect("pusher:pong").await;
    client.ws.send(Message::binary(vec![0xff, 0xfe])).await.unwrap();
    client.expect("pusher:error").await;

    // A message over the frame limit closes only that connection, with 1009.
    client.send_text(&format!(r#"{{"event":"x","data":"{}"}}"#, "a".repeat(70 * 1024))).await;
    let (_, ended) = client.until_closed().await;
    assert_eq!(ended, Ended::Closed(1009));

    server.trigger(&a, "calm", "still-here", "x").await;
    assert_eq!(bystander.recv().await["event"], "still-here");
}

#[tokio::test]
async fn shutdown_closes_clients_with_4200_and_serve_returns() {
    let mut server = TestServer::start(vec![app(1)]).await;
    let mut client = server.connect("key-1").await;
    client.subscribe("x").await;
    let stopping = tokio::spawn(async move {
        let (events, ended) = client.until_closed().await;
        (events, ended)
    });
    server.stop().await.unwrap();
    let (events, ended) = stopping.await.unwrap();
    assert_eq!(events.last().unwrap()["data"]["code"], 4200);
    assert_eq!(ended, Ended::Closed(4200));
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4100_while_others_get_everything() {
    let a = app(1);
    let config = ServerConfig { max_queued_bytes: 256 * 1024, ..Default::default() };
    let server = TestServer::start_with(config, vec![a.clone()]).await;

    // A client whose receive window is tiny and who does not read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let url = format!("ws://{}/app/key-1?protocol=7", server.addr);
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap();
    let mut slow = common::TestClient { ws, socket_id: String::new() };
    slow.expect("pusher:connection_established").await;
    slow.subscribe("firehose").await;

    let mut fast = server.connect("key-1").await;
    fast.subscribe("firehose").await;
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while seen < 800 {
            let event = fast.recv().await;
            if event["event"] == "big" {
                seen += 1;
            }
        }
        seen
    });

    let data = "x".repeat(9 * 1024);
    // 7 MiB in all: more than the kernel's socket buffers (4 MiB send side) can hide.
    for _ in 0..80 {
        // Each request queues 90 KiB: well inside the bound for a reader that keeps up.
        let batch: Vec<_> =
            (0..10).map(|_| json!({"channel": "firehose", "name": "big", "data": data})).collect();
        let body = json!({"batch": batch}).to_string();
        let (status, _) = server.api(&a, "POST", "/apps/app-1/batch_events", &body, &[]).await;
        assert_eq!(status, 200);
    }
    assert_eq!(reader.await.unwrap(), 800, "the fast client got every event");
    let (events, ended) = slow.until_closed().await;
    assert!(events.len() < 800, "the slow client was cut off");
    assert_eq!(events.last().unwrap()["data"]["code"], 4100);
    assert_eq!(ended, Ended::Closed(4100));
}
