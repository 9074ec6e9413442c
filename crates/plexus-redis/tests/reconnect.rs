//! Reconnecting, against a private redis-server on a free loopback port: the server is killed and
//! restarted under two connected nodes (see `plexus_transport_tests::run_reconnect`), or it drops
//! just their subscriber connections.

use std::sync::Arc;

use plexus_core::cluster::{Inbound, InboundSender, NodeId, Route, Transport};
use plexus_transport_tests::{free_port, run_reconnect, unique_prefix, Node, ServerProcess, RECONNECT_WAIT};

const REDIS_SERVER: &str = "redis-server";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_the_outage_and_recovers_after_a_server_restart() {
    let port = free_port();
    let args = ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        .map(String::from)
        .to_vec();
    let mut server = ServerProcess::start(REDIS_SERVER, args, port).await;
    let url = format!("redis://127.0.0.1:{port}");
    let connector = |prefix: String, node: NodeId, inbound: InboundSender| {
        let url = url.clone();
        async move {
            let transport: Arc<dyn Transport> = plexus_redis::connect(&url, &prefix, node, inbound)
                .await
                .unwrap_or_else(|err| panic!("private server: {err}"));
            transport
        }
    };
    run_reconnect(&mut server, &connector).await;
}

/// Redis itself stays up but drops the subscriber connections (`CLIENT KILL TYPE pubsub`, as an
/// operator or a `client-output-buffer-limit` would): the transport reports the gap and
/// resubscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribes_when_redis_drops_the_subscriber_connection() {
    let port = free_port();
    let args = ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        .map(String::from)
        .to_vec();
    let _server = ServerProcess::start(REDIS_SERVER, args, port).await;
    let url = format!("redis://127.0.0.1:{port}");
    let prefix = unique_prefix("kill");
    let connector = |prefix: String, node: NodeId, inbound: InboundSender| {
        let url = url.clone();
        async move {
            let transport: Arc<dyn Transport> = plexus_redis::connect(&url, &prefix, node, inbound)
                .await
                .unwrap_or_else(|err| panic!("private server: {err}"));
            transport
        }
    };
    let mut a = Node::join(&connector, &prefix, "A").await;
    let mut b = Node::join(&connector, &prefix, "B").await;

    let mut admin = redis::Client::open(url.as_str())
        .expect("valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .expect("CLIENT KILL");
    assert_eq!(killed, 2, "A's and B's subscriber connections");
    for node in [&mut a, &mut b] {
        node.inbox.event(Inbound::Disconnected, RECONNECT_WAIT).await;
        node.inbox.event(Inbound::Connected, RECONNECT_WAIT).await;
    }
    // The publisher connections were not touched: this goes out at once.
    a.send(Route::Node(b.id), "after the kill");
    assert_eq!(b.inbox.message("A's message after the kill").await, "after the kill");
}
