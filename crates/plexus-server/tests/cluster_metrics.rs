//! What a node hears of the bus, as Prometheus shows it: two nodes over the real NATS server,
//! an event published on one, and the other's `plexus_cluster_messages_received_total` and
//! `plexus_cluster_bytes_received_total` grow by at least that event. (Its own binary: the
//! metrics recorder is one per process.)

mod common;

use common::{app, scrape, TestServer};
use plexus_server::config::{AdapterConfig, AdapterDriver, MetricsConfig};
use plexus_transport_tests::unique_prefix;

/// The value of an unlabelled series in Prometheus text (0 before it is first counted).
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_counts_the_cluster_messages_and_bytes_it_receives() {
    plexus_transport_tests::require_server("NATS", "127.0.0.1:4222", "scripts/services.sh").await;
    let metrics_config = MetricsConfig { enabled: true, host: "127.0.0.1".into(), port: 0 };
    let metrics = plexus_server::metrics::start(&metrics_config).await.expect("metrics listener binds");
    let adapter = AdapterConfig {
        driver: AdapterDriver::Nats,
        url: Some("nats://127.0.0.1:4222".into()),
        prefix: unique_prefix("metrics"),
        ..AdapterConfig::default()
    };
    let app = app(1);
    let publisher = TestServer::start_clustered(&adapter, vec![app.clone()]).await;
    let receiver = TestServer::start_clustered(&adapter, vec![app.clone()]).await;
    let mut client = receiver.connect(&app.key).await;
    client.subscribe("room").await;

    let before = scrape(metrics).await;
    let data = format!("{{\"text\":\"{}\"}}", "x".repeat(10_000));
    assert_eq!(publisher.trigger(&app, "room", "big", &data).await.0, 200);
    let event = client.expect("big").await;
    assert_eq!(event["data"].as_str(), Some(data.as_str()), "it crossed the bus");
    let after = scrape(metrics).await;

    let grew = |name: &str| counter(&after, name) - counter(&before, name);
    assert!(grew("plexus_cluster_messages_received_total") >= 1.0, "{after}");
    assert!(grew("plexus_cluster_bytes_received_total") >= 10_000.0, "the event's bytes: {after}");
}
