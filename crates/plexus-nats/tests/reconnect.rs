//! Reconnecting: a private nats-server on a free loopback port is killed and restarted under two
//! connected nodes (see `plexus_transport_tests::run_reconnect`).

use std::sync::Arc;

use plexus_core::cluster::{InboundSender, NodeId, Transport};
use plexus_transport_tests::{free_port, run_reconnect, ServerProcess};

const NATS_SERVER: &str = "/usr/sbin/nats-server";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_the_outage_and_recovers_after_a_server_restart() {
    let port = free_port();
    let args = ["-a", "127.0.0.1", "-p", &port.to_string()].map(String::from).to_vec();
    let mut server = ServerProcess::start(NATS_SERVER, args, port).await;
    let url = format!("nats://127.0.0.1:{port}");
    let connector = |prefix: String, node: NodeId, inbound: InboundSender| {
        let url = url.clone();
        async move {
            let transport: Arc<dyn Transport> = plexus_nats::connect(&url, &prefix, node, inbound)
                .await
                .unwrap_or_else(|err| panic!("private server: {err}"));
            transport
        }
    };
    run_reconnect(&mut server, &connector).await;
}
