//! The Pusher HTTP API over real loopback sockets: authentication, validation, publishing,
//! channel queries, health.

mod common;

use common::{app, TestServer};
use serde_json::{json, Value};

fn error_text(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_else(|| panic!("JSON error body expected, got {body}"))
}

#[tokio::test]
async fn requests_with_bad_credentials_are_refused_with_reasons() {
    let a = app(1);
    let mut disabled = app(2);
    disabled.enabled = false;
    let server = TestServer::start(vec![a.clone(), disabled.clone()]).await;
    let body = r#"{"name":"e","channels":["c"],"data":"{}"}"#;

    let mut wrong_secret = a.clone();
    wrong_secret.secret = "not-the-secret".into();
    let (status, reply) = server.api(&wrong_secret, "POST", "/apps/app-1/events", body, &[]).await;
    assert_eq!(status, 401);
    assert!(error_text(&reply).contains("signature"), "{reply}");

    let mut wrong_key = a.clone();
    wrong_key.key = "key-2".into();
    let (status, _) = server.api(&wrong_key, "POST", "/apps/app-1/events", body, &[]).await;
    assert_eq!(status, 401);

    let old = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 601;
    let (status, reply) = server.api_at(&a, "POST", "/apps/app-1/events", body, &[], old).await;
    assert_eq!(status, 401);
    assert!(error_text(&reply).contains("Timestamp expired"), "{reply}");

    let (status, reply) = server.api(&a, "POST", "/apps/nope/events", body, &[]).await;
    assert_eq!(status, 404);
    assert!(error_text(&reply).contains("nope"));

    let (status, _) = server.api(&disabled, "POST", "/apps/app-2/events", body, &[]).await;
    assert_eq!(status, 403);

    let (status, reply) = server.http("POST", "/apps/app-1/events", body).await;
    assert_eq!(status, 401);
    assert!(serde_json::from_str::<Value>(&reply).unwrap()["error"].is_string());
}

#[tokio::test]
async fn invalid_events_are_refused_with_400_or_413_and_nothing_is_published() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut client = server.connect("key-1").await;
    client.subscribe("c").await;

    let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let cases = [
        (json!({"name": "e", "channels": many, "data": "{}"}).to_string(), 400),
        (json!({"name": "e", "channels": ["bad name"], "data": "{}"}).to_string(), 400),
        (json!({"name": "e", "channels": []}).to_string(), 400),
        (json!({"channels": ["c"], "data": "{}"}).to_string(), 400),
        (json!({"name": "pusher:x", "channels": ["c"], "data": "{}"}).to_string(), 400),
        (json!({"name": "e", "channels": ["c"], "data": "{}", "socket_id": "abc"}).to_string(), 400),
        (json!({"name": "e", "channels": ["c"], "data": "{}", "info": "user_count"}).to_string(), 400),
        (json!({"name": "e", "channels": ["c"], "data": "x".repeat(10 * 1024 + 1)}).to_string(), 413),
        (json!({"name": "e", "channels": ["private-encrypted-a", "c"], "data": "{}"}).to_string(), 400),
        ("{not json".to_owned(), 400),
    ];
    for (body, expected) in cases {
        let (status, reply) = server.api(&a, "POST", "/apps/app-1/events", &body, &[]).await;
        assert_eq!(status, expected, "{body:.80} → {reply}");
        error_text(&reply);
    }
    // Exactly at the limit is fine.
    let (status, _) = server.trigger(&a, "c", "fits", &"x".repeat(10 * 1024)).await;
    assert_eq!(status, 200);
    assert_eq!(client.recv().await["event"], "fits", "no refused event was delivered before it");
}

#[tokio::test]
async fn trigger_reaches_every_channel_and_excludes_the_given_socket() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut me = server.connect("key-1").await;
    let mut other = server.connect("key-1").await;
    for client in [&mut me, &mut other] {
        client.subscribe("a").await;
        client.subscribe("b").await;
    }
    let body =
        json!({"name": "e", "channels": ["a", "b"], "data": "d", "socket_id": me.socket_id}).to_string();
    let (status, _) = server.api(&a, "POST", "/apps/app-1/events", &body, &[]).await;
    assert_eq!(status, 200);
    let mut channels = vec![other.recv().await["channel"].clone(), other.recv().await["channel"].clone()];
    channels.sort_by_key(|c| c.to_string());
    assert_eq!(channels, vec![json!("a"), json!("b")]);
    server.trigger(&a, "a", "marker", "x").await;
    assert_eq!(me.recv().await["event"], "marker", "the excluded socket got nothing");
    assert_eq!(other.recv().await["event"], "marker");

    // Non-string data is serialised so clients still see a string.
    let body = json!({"name": "obj", "channel": "a", "data": {"k": 1}}).to_string();
    server.api(&a, "POST", "/apps/app-1/events", &body, &[]).await;
    assert_eq!(other.recv().await["data"], r#"{"k":1}"#);
}

#[tokio::test]
async fn trigger_info_reports_counts_per_channel() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut tab1 = server.connect("key-1").await;
    let mut tab2 = server.connect("key-1").await;
    tab1.subscribe_presence(&a, "presence-a", r#"{"user_id":"u"}"#).await;
    tab2.subscribe_presence(&a, "presence-a", r#"{"user_id":"u"}"#).await;
    let body = json!({"name": "e", "channels": ["presence-a"], "data": "{}", "info": "user_count,subscription_count"}).to_string();
    let (status, reply) = server.api(&a, "POST", "/apps/app-1/events", &body, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(reply, json!({"channels": {"presence-a": {"user_count": 1, "subscription_count": 2}}}));
}

#[tokio::test]
async fn batch_publishes_everything_or_nothing() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut client = server.connect("key-1").await;
    client.subscribe("a").await;
    client.subscribe("b").await;

    let eleven: Vec<Value> =
        (0..11).map(|i| json!({"channel": "a", "name": format!("e{i}"), "data": "{}"})).collect();
    let (status, _) =
        server.api(&a, "POST", "/apps/app-1/batch_events", &json!({"batch": eleven}).to_string(), &[]).await;
    assert_eq!(status, 400);
    let one_bad = json!({"batch": [{"channel": "a", "name": "ok", "data": "{}"}, {"channel": "bad name", "name": "x", "data": "{}"}]});
    let (status, reply) = server.api(&a, "POST", "/apps/app-1/batch_events", &one_bad.to_string(), &[]).await;
    assert_eq!(status, 400);
    assert!(error_text(&reply).contains("batch[1]"), "{reply}");

    let good = json!({"batch": [
        {"channel": "a", "name": "e1", "data": "{}"},
        {"channel": "b", "name": "e2", "data": "{}", "info": "subscription_count"}
    ]});
    let (status, reply) = server.api(&a, "POST", "/apps/app-1/batch_events", &good.to_string(), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(reply, json!({"batch": [{}, {"subscription_count": 1}]}));
    assert_eq!(client.recv().await["event"], "e1", "nothing from the refused batches came first");
    assert_eq!(client.recv().await["event"], "e2");
}

#[tokio::test]
async fn channel_queries_report_occupancy_and_presence_users() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut c1 = server.connect("key-1").await;
    let mut c2 = server.connect("key-1").await;
    c1.subscribe("public-1").await;
    c2.subscribe("public-1").await;
    c1.subscribe_presence(&a, "presence-room", r#"{"user_id":"1"}"#).await;
    c2.subscribe_presence(&a, "presence-room", r#"{"user_id":"2"}"#).await;

    let (status, all) = server.api(&a, "GET", "/apps/app-1/channels", "", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(all, json!({"channels": {"presence-room": {}, "public-1": {}}}));

    let (_, presence) = server
        .api(
            &a,
            "GET",
            "/apps/app-1/channels",
            "",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        )
        .await;
    assert_eq!(presence, json!({"channels": {"presence-room": {"user_count": 2}}}));

    let (status, _) = server.api(&a, "GET", "/apps/app-1/channels", "", &[("info", "user_count")]).await;
    assert_eq!(status, 400, "user_count needs a presence- prefix");

    let (_, one) = server
        .api(
            &a,
            "GET",
            "/apps/app-1/channels/presence-room",
            "",
            &[("info", "user_count,subscription_count")],
        )
        .await;
    assert_eq!(one, json!({"occupied": true, "user_count": 2, "subscription_count": 2}));
    let (_, public) =
        server.api(&a, "GET", "/apps/app-1/channels/public-1", "", &[("info", "subscription_count")]).await;
    assert_eq!(public, json!({"occupied": true, "subscription_count": 2}));
    let (status, empty) = server.api(&a, "GET", "/apps/app-1/channels/nobody-here", "", &[]).await;
    assert_eq!((status, empty), (200, json!({"occupied": false})));
    let (status, _) =
        server.api(&a, "GET", "/apps/app-1/channels/public-1", "", &[("info", "user_count")]).await;
    assert_eq!(status, 400);

    let (_, users) = server.api(&a, "GET", "/apps/app-1/channels/presence-room/users", "", &[]).await;
    assert_eq!(users, json!({"users": [{"id": "1"}, {"id": "2"}]}));
    let (status, _) = server.api(&a, "GET", "/apps/app-1/channels/public-1/users", "", &[]).await;
    assert_eq!(status, 400);

    c2.close().await;
    let (_, after) = server.api(&a, "GET", "/apps/app-1/channels/presence-room/users", "", &[]).await;
    assert_eq!(after, json!({"users": [{"id": "1"}]}));
}

#[tokio::test]
async fn apps_are_isolated_from_each_other() {
    let (a, b) = (app(1), app(2));
    let server = TestServer::start(vec![a.clone(), b.clone()]).await;
    let mut on_a = server.connect("key-1").await;
    let mut on_b = server.connect("key-2").await;
    on_a.subscribe("shared-name").await;
    on_b.subscribe("shared-name").await;
    server.trigger(&a, "shared-name", "for-a", "x").await;
    server.trigger(&b, "shared-name", "for-b", "x").await;
    assert_eq!(on_a.recv().await["event"], "for-a");
    assert_eq!(on_b.recv().await["event"], "for-b");
    let (_, channels) =
        server.api(&b, "GET", "/apps/app-2/channels", "", &[("info", "subscription_count")]).await;
    assert_eq!(channels, json!({"channels": {"shared-name": {"subscription_count": 1}}}));
}

#[tokio::test]
async fn health_endpoints_answer_and_unknown_routes_are_json_404() {
    let server = TestServer::start(vec![app(1)]).await;
    assert_eq!(server.http("GET", "/up", "").await, (200, "OK".to_owned()));
    assert_eq!(server.http("GET", "/health", "").await.0, 200);
    assert_eq!(server.http("GET", "/ready", "").await, (200, "OK".to_owned()));
    let (status, body) = server.http("GET", "/nowhere", "").await;
    assert_eq!(status, 404);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    let (status, _) = server.http("GET", "/app/key-1", "").await;
    assert_eq!(status, 426, "a plain GET on the socket path asks for an upgrade");
}
