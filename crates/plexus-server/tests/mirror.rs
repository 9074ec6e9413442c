//! `[[mirrors]]` against the real NATS server on 127.0.0.1:4222: channel events copied out to
//! subjects built from the channel and event names, only for matching channels, with the Pusher
//! message as the body; and a mirror whose subjects overlap a bridge's does not loop.

mod common;

use std::time::Duration;

use common::{TestServer, WAIT};
use futures_util::StreamExt;
use plexus_server::bridge::BridgeConfig;
use plexus_server::mirror::MirrorConfig;
use serde_json::Value;

const NATS: &str = "nats://127.0.0.1:4222";

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
}

/// Subscribes to `{root}.>` and returns once the server demonstrably routes to the
/// subscription: a probe published from the same connection has come back.
async fn live_subscription(nats: &async_nats::Client, root: &str) -> async_nats::Subscriber {
    let mut subscriber = nats.subscribe(format!("{root}.>")).await.unwrap();
    for _ in 0..50 {
        nats.publish(format!("{root}.probe"), "".into()).await.unwrap();
        nats.flush().await.unwrap();
        if let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(200), subscriber.next()).await {
            if message.subject.as_str().ends_with(".probe") {
                // Probes sent before the first came back may still follow it: drain them.
                while let Ok(Some(_)) =
                    tokio::time::timeout(Duration::from_millis(50), subscriber.next()).await
                {}
                return subscriber;
            }
        }
    }
    panic!("the NATS subscription never became live");
}

async fn next_message(subscriber: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, subscriber.next())
        .await
        .expect("a mirrored message in time")
        .expect("subscription open")
}

#[tokio::test]
async fn events_on_matching_channels_are_mirrored_to_their_subjects() {
    let app = common::app(1);
    let server = TestServer::start(vec![app.clone()]).await;
    let root = unique("mirror");
    let mirror = MirrorConfig {
        app: app.id.clone(),
        url: NATS.into(),
        ca_file: None,
        channels: vec!["orders-*".into()],
        subject: format!("{root}.{{channel}}.{{event}}"),
    };
    plexus_server::mirror::start(&[mirror], &server.state).await.unwrap();
    let nats = async_nats::connect(NATS).await.unwrap();
    let mut subscriber = live_subscription(&nats, &root).await;

    // Not matching first, then matching: the first message on the bus must be the second event.
    assert_eq!(server.trigger(&app, "news", "ignored", "{}").await.0, 200);
    assert_eq!(server.trigger(&app, "orders-42", "created", "{\"id\":42}").await.0, 200);
    let message = next_message(&mut subscriber).await;
    assert_eq!(message.subject.as_str(), format!("{root}.orders-42.created"));
    let body: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!((body["event"].as_str(), body["channel"].as_str()), (Some("created"), Some("orders-42")));
    assert_eq!(body["data"], "{\"id\":42}");
    let origin = message
        .headers
        .as_ref()
        .and_then(|h| h.get(plexus_nats::mirror::MIRROR_HEADER))
        .map(|v| v.to_string());
    assert_eq!(origin.as_deref(), Some(app.id.as_str()));

    // Client events are channel events too.
    let mut a = server.connect(&app.key).await;
    let mut b = server.connect(&app.key).await;
    a.subscribe_private(&app, "private-orders-1").await;
    b.subscribe_private(&app, "private-orders-1").await;
    let mirror_private = MirrorConfig {
        app: app.id.clone(),
        url: NATS.into(),
        ca_file: None,
        channels: vec!["*".into()],
        subject: "unused".into(),
    };
    // One mirror set per server: installing a second is refused.
    assert!(plexus_server::mirror::start(&[mirror_private], &server.state).await.is_err());
    a.send(
        serde_json::json!({"event": "client-typing", "channel": "private-orders-1", "data": {"on": true}}),
    )
    .await;
    b.expect("client-typing").await;
    assert_eq!(server.trigger(&app, "orders-43", "created", "{}").await.0, 200);
    let message = next_message(&mut subscriber).await;
    assert_eq!(
        message.subject.as_str(),
        format!("{root}.orders-43.created"),
        "private-orders-1 does not match orders-*"
    );
}

#[tokio::test]
async fn a_mirror_and_a_bridge_over_the_same_subjects_do_not_feed_each_other() {
    let app = common::app(2);
    let server = TestServer::start(vec![app.clone()]).await;
    let root = unique("loop");
    let subject = format!("{root}.{{channel}}.{{event}}");
    let bridge: BridgeConfig = toml::from_str(&format!(
        "app = \"{}\"\nsubject = \"{subject}\"\nchannel = \"{{channel}}\"\nevent = \"{{event}}\"\ngroup = \"{root}\"\n",
        app.id
    ))
    .unwrap();
    plexus_server::bridge::start(&[bridge], &server.state).await.unwrap();
    let mirror = MirrorConfig {
        app: app.id.clone(),
        url: NATS.into(),
        ca_file: None,
        channels: vec!["*".into()],
        subject,
    };
    plexus_server::mirror::start(&[mirror], &server.state).await.unwrap();
    let nats = async_nats::connect(NATS).await.unwrap();
    let mut watch = live_subscription(&nats, &root).await;
    let mut client = server.connect(&app.key).await;
    assert_eq!(client.subscribe("room").await["event"], "pusher_internal:subscription_succeeded");

    assert_eq!(server.trigger(&app, "room", "news", "{}").await.0, 200);
    client.expect("news").await;
    // The mirrored copy is on the bus; the bridge reads its subscription in order, so once it
    // delivers a message published after that copy, it has already refused the copy.
    assert_eq!(next_message(&mut watch).await.subject.as_str(), format!("{root}.room.news"));
    for event in ["direct", "direct2"] {
        nats.publish(format!("{root}.room.{event}"), "{}".into()).await.unwrap();
        nats.flush().await.unwrap();
        assert_eq!(client.recv().await["event"], event, "no event came back around the loop before it");
    }
    // Nothing else arrives: publish a last event over HTTP and it must be next.
    assert_eq!(server.trigger(&app, "room", "last", "{}").await.0, 200);
    assert_eq!(client.recv().await["event"], "last");
}
