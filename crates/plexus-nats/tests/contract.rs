//! The shared transport contract (`plexus-transport-tests`) against the NATS server on
//! 127.0.0.1:4222 that the project's test script starts; every step uses its own random prefix.

use std::sync::Arc;

use plexus_core::cluster::{InboundSender, NodeId, Route, Transport};
use plexus_transport_tests as contract;

const ADDR: &str = "127.0.0.1:4222";
const URL: &str = "nats://127.0.0.1:4222";
const HOW_TO_START: &str = "./scripts/services.sh (from the workspace root), or \
                            start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server \
                            -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log";

async fn shared_nats(prefix: String, node: NodeId, inbound: InboundSender) -> Arc<dyn Transport> {
    match plexus_nats::connect(URL, &prefix, node, inbound).await {
        Ok(transport) => transport,
        Err(err) => panic!("{err}; start NATS with: {HOW_TO_START}"),
    }
}

async fn require_nats() {
    contract::require_server("NATS", ADDR, HOW_TO_START).await;
}

contract::contract_tests!(shared_nats, require_nats);

/// NATS-specific: `no_echo` keeps a node's broadcasts from coming back to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_broadcasts_do_not_come_back() {
    require_nats().await;
    let prefix = contract::unique_prefix("echo");
    let mut a = contract::Node::join(&shared_nats, &prefix, "A").await;
    let mut b = contract::Node::join(&shared_nats, &prefix, "B").await;
    a.send(Route::All, "from A");
    // B replies once A's broadcast was routed, so an echo to A would arrive before the reply.
    assert_eq!(b.inbox.message("A's broadcast").await, "from A");
    b.send(Route::Node(a.id), "reply from B");
    assert_eq!(a.inbox.message("B's reply").await, "reply from B", "A received its own broadcast");
}
