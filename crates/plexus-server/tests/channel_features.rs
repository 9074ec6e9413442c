//! Cache channels and subscription counts over real loopback sockets.

mod common;

use common::{app, data_of, TestServer};
use serde_json::json;

#[tokio::test]
async fn cache_channel_replays_the_last_event_or_reports_a_miss() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut first = server.connect("key-1").await;
    first.subscribe("cache-prices").await;
    assert_eq!(
        first.recv().await,
        json!({"event": "pusher:cache_miss", "channel": "cache-prices", "data": "{}"})
    );

    // Published while no one listens: still cached.
    server.trigger(&a, "cache-empty-room", "price", "1").await;
    server.trigger(&a, "cache-prices", "price", "41").await;
    server.trigger(&a, "cache-prices", "price", "42").await;
    assert_eq!(first.recv().await["data"], "41");
    assert_eq!(first.recv().await["data"], "42");

    let mut late = server.connect("key-1").await;
    late.subscribe("cache-prices").await;
    assert_eq!(late.recv().await, json!({"event": "price", "channel": "cache-prices", "data": "42"}));
    late.subscribe("cache-empty-room").await;
    assert_eq!(late.recv().await["data"], "1");

    let (status, info) =
        server.api(&a, "GET", "/apps/app-1/channels/cache-prices", "", &[("info", "cache")]).await;
    assert_eq!(status, 200);
    assert_eq!(info["cache"]["data"], "42");
    assert!(info["cache"]["ttl"].as_u64().unwrap() > 1700);
    let (_, none) =
        server.api(&a, "GET", "/apps/app-1/channels/cache-nothing", "", &[("info", "cache")]).await;
    assert!(none["cache"].is_null());
    let (status, _) = server.api(&a, "GET", "/apps/app-1/channels/plain", "", &[("info", "cache")]).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn client_events_are_never_cached() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut sender = server.connect("key-1").await;
    sender.subscribe_private(&a, "private-cache-chat").await;
    assert_eq!(sender.recv().await["event"], "pusher:cache_miss");
    sender.send(json!({"event": "client-x", "channel": "private-cache-chat", "data": {}})).await;
    sender.send(json!({"event": "pusher:ping"})).await;
    sender.expect("pusher:pong").await;
    let mut late = server.connect("key-1").await;
    late.subscribe_private(&a, "private-cache-chat").await;
    assert_eq!(late.recv().await["event"], "pusher:cache_miss");
}

#[tokio::test]
async fn subscription_counts_reach_subscribers_when_enabled() {
    let mut counted = app(1);
    counted.enable_subscription_count = true;
    let plain = app(2);
    let server = TestServer::start(vec![counted.clone(), plain.clone()]).await;

    let mut first = server.connect("key-1").await;
    first.subscribe("room").await;
    let count = first.expect("pusher_internal:subscription_count").await;
    assert_eq!(data_of(&count), json!({"subscription_count": 1}));
    let mut second = server.connect("key-1").await;
    second.subscribe("room").await;
    assert_eq!(data_of(&first.expect("pusher_internal:subscription_count").await)["subscription_count"], 2);
    assert_eq!(data_of(&second.expect("pusher_internal:subscription_count").await)["subscription_count"], 2);
    second.close().await;
    assert_eq!(data_of(&first.expect("pusher_internal:subscription_count").await)["subscription_count"], 1);

    // Presence channels and apps without the flag get none.
    first.subscribe_presence(&counted, "presence-x", r#"{"user_id":"1"}"#).await;
    let mut other = server.connect("key-2").await;
    other.subscribe("room").await;
    server.trigger(&plain, "room", "marker", "x").await;
    assert_eq!(other.recv().await["event"], "marker");
    server.trigger(&counted, "presence-x", "marker", "x").await;
    assert_eq!(first.recv().await["event"], "marker");
}

#[tokio::test]
async fn a_resumed_subscription_replays_only_the_events_its_filter_passes() {
    let mut app = app(1);
    app.history = vec![plexus_core::app::HistoryRule { prefix: "feed-".into(), size: 100, ttl_secs: 300 }];
    let server = TestServer::start(vec![app.clone()]).await;
    let mut watcher = server.connect(&app.key).await;
    watcher.subscribe("feed-1").await;
    for (name, data) in [("a", r#"{"n":1}"#), ("b", r#"{"n":2}"#), ("a", r#"{"n":3}"#), ("b", r#"{"n":4}"#)] {
        assert_eq!(server.trigger(&app, "feed-1", name, data).await.0, 200);
    }
    let first = watcher.expect("a").await;
    let position = first["position"].as_str().expect("history events carry a position").to_owned();

    let mut resumed = server.connect(&app.key).await;
    resumed
        .send(json!({"event": "pusher:subscribe", "data": {"channel": "feed-1", "position": position,
            "filter": {"events": ["b"], "where": {"n": 4}}}}))
        .await;
    resumed.expect("pusher_internal:subscription_succeeded").await;
    let replayed = resumed.expect("b").await;
    assert_eq!(data_of(&replayed)["n"], 4, "only the event passing both terms is replayed");
    let resume = resumed.expect("plexus:resume").await;
    assert_eq!(data_of(&resume)["recovered"], true);
}
