//! History in the bus's durable store (`[adapter] history = "bus"`), against a private
//! redis-server and a private nats-server with JetStream that the test kills: while the store is
//! away, publishing on a history channel is refused with 503 and reaches no live subscriber
//! (never silently without history), other channels publish as usual, and once the store is back history
//! publishes work again without restarting plexus. (Restarts of plexus nodes themselves are the
//! Node suite's `28-history-durable`.)

mod common;

use std::time::Duration;

use common::{app, data_of, TestServer};
use plexus_core::app::HistoryRule;
use plexus_core::hub::{Event, PublishError, HISTORY_APPENDS_IN_FLIGHT, HISTORY_APPEND_QUEUE};
use plexus_server::config::{AdapterConfig, AdapterDriver, HistoryPlace};
use plexus_transport_tests::{free_port, unique_prefix, ServerProcess, RECONNECT_WAIT};

/// A private bus server of the test's own: (server, adapter driver, URL). NATS stores its
/// JetStream data in a fresh directory.
async fn private_bus(driver: AdapterDriver) -> (ServerProcess, String, Option<std::path::PathBuf>) {
    let port = free_port();
    let (program, mut args, scheme, dir) = match driver {
        AdapterDriver::Redis => (
            "redis-server",
            vec![
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--save".into(),
                String::new(),
            ],
            "redis",
            None,
        ),
        _ => {
            let dir = std::env::temp_dir().join(unique_prefix("durable-js"));
            let args = vec!["-a".into(), "127.0.0.1".into(), "-p".into(), port.to_string(), "-js".into()];
            ("/usr/sbin/nats-server", args, "nats", Some(dir))
        }
    };
    if let Some(dir) = &dir {
        args.extend(["-sd".to_owned(), dir.display().to_string()]);
    }
    (ServerProcess::start(program, args, port).await, format!("{scheme}://127.0.0.1:{port}"), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_redis_history_publishes_answer_503_while_the_store_is_down_and_recover_by_themselves() {
    store_outage(AdapterDriver::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_nats_history_publishes_answer_503_while_jetstream_is_down_and_recover_by_themselves() {
    store_outage(AdapterDriver::Nats).await;
}

async fn store_outage(driver: AdapterDriver) {
    let (mut bus, url, dir) = private_bus(driver).await;
    let adapter = AdapterConfig {
        driver,
        url: Some(url),
        prefix: unique_prefix("durable"),
        heartbeat_ms: 200,
        lease_ms: 1_000,
        history: HistoryPlace::Bus,
        ..AdapterConfig::default()
    };
    let mut app = app(1);
    app.history = vec![HistoryRule { prefix: "feed-".into(), size: 100, ttl_secs: 300 }];
    let server = TestServer::start_clustered(&adapter, vec![app.clone()]).await;
    let mut client = server.connect(&app.key).await;
    client.subscribe("feed-1").await;
    client.subscribe("room").await;

    assert_eq!(server.trigger(&app, "feed-1", "item", r#"{"n":1}"#).await.0, 200);
    let first = client.expect("item").await;
    assert!(first["position"].as_str().is_some_and(|p| p.ends_with(":1")), "{first}");

    bus.kill();
    let (status, body) = server.trigger(&app, "feed-1", "item", r#"{"n":2}"#).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("feed-1")),
        "the error names the channel: {body}"
    );
    assert_eq!(
        server.trigger(&app, "room", "plain", "{}").await.0,
        200,
        "channels without history still publish"
    );
    let plain = client.expect("plain").await;
    assert_eq!(plain["channel"], "room", "the refused history event reached no one before it");

    bus.restart().await;
    let deadline = tokio::time::Instant::now() + RECONNECT_WAIT;
    loop {
        let (status, body) = server.trigger(&app, "feed-1", "item", r#"{"n":3}"#).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "history publishes did not recover: {body}");
        // The store reconnects on its next use; nothing to await but another try.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = client.expect("item").await;
    assert_eq!(data_of(&recovered)["n"], 3, "the refused event was never delivered live");
    let position = |event: &serde_json::Value| {
        let (epoch, offset) = event["position"].as_str().and_then(|p| p.split_once(':')).expect("a position");
        (epoch.to_owned(), offset.parse::<u64>().expect("an offset"))
    };
    let ((first_epoch, _), (epoch, offset)) = (position(&first), position(&recovered));
    if driver == AdapterDriver::Redis {
        // This Redis kept nothing across its restart: the channel's events start a new epoch.
        assert_eq!(offset, 1, "{recovered}");
    } else {
        // JetStream kept its file store: the channel continues. The refused event may have been
        // stored after all (the client sent it before it noticed NATS was gone, and again on
        // reconnecting; a timeout cannot tell), so it is 503 "not confirmed", never "lost".
        assert_eq!(epoch, first_epoch, "{recovered}");
        assert!(offset == 2 || offset == 3, "{recovered}");
    }
    drop(bus);
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// While the store is slow (frozen), history events queue up to the app's bound and no further:
/// the one past it is refused at once rather than held, and once the store answers again
/// everything that was queued is stored and confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_publishes_past_the_append_queue_are_refused_while_the_store_is_slow() {
    let (bus, url, _) = private_bus(AdapterDriver::Redis).await;
    let adapter = AdapterConfig {
        driver: AdapterDriver::Redis,
        url: Some(url),
        prefix: unique_prefix("queue"),
        history: HistoryPlace::Bus,
        ..AdapterConfig::default()
    };
    let mut app = app(1);
    app.history = vec![HistoryRule { prefix: "feed-".into(), size: 100, ttl_secs: 300 }];
    let server = TestServer::start_clustered(&adapter, vec![app.clone()]).await;
    let hub = server.state.hubs.hub(&app.id);
    let channels = ["feed-1".to_owned()];
    let publish = |n: usize| {
        let data = format!("{{\"n\":{n}}}");
        let event = Event { name: "item", data: &data, channels: &channels, except: None };
        hub.publish_event(&app, &event).expect("a valid event")
    };

    bus.pause();
    // What the queue holds, plus what the appender may have taken out and sent already.
    let fits = HISTORY_APPEND_QUEUE + HISTORY_APPENDS_IN_FLIGHT;
    let mut accepted: Vec<_> = (0..fits).map(publish).collect();
    let first = accepted.remove(0).stored();
    tokio::pin!(first);
    // The refusal comes first: the earliest accepted event is still waiting for the frozen
    // store (without a bound the refusal would only come after the store's own timeout had
    // failed the events ahead of it).
    let refused = tokio::select! {
        biased;
        refused = publish(fits).stored() => refused,
        early = &mut first => panic!("an accepted event was answered before the refusal: {early:?}"),
    };
    assert!(
        matches!(refused, Err(PublishError::HistoryUnavailable { ref channel }) if channel == "feed-1"),
        "{refused:?}"
    );

    bus.resume();
    let mut confirmed = usize::from(first.await.is_ok());
    for published in accepted {
        if published.stored().await.is_ok() {
            confirmed += 1;
        }
    }
    assert!(
        confirmed >= HISTORY_APPEND_QUEUE,
        "everything queued is stored once the store answers: {confirmed} of {fits}"
    );
}
