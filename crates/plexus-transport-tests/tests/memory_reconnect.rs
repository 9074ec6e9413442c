//! Reconnecting: the in-memory bus has an outage and is restored under two connected nodes (see
//! `plexus_transport_tests::run_reconnect`, which NATS and Redis pass by a server restart).

use std::future::Future;
use std::sync::Arc;

use plexus_core::cluster::{InboundSender, MemoryBus, NodeId, Transport};
use plexus_transport_tests::{run_reconnect, Outage};

/// A private bus: an outage on the contract's shared one would break the steps running beside.
struct PrivateBus(MemoryBus);

impl Outage for PrivateBus {
    fn go_down(&mut self) {
        self.0.outage();
    }

    fn come_back(&mut self) -> impl Future<Output = ()> {
        self.0.restore();
        std::future::ready(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_the_outage_and_recovers_after_the_bus_comes_back() {
    let mut bus = PrivateBus(MemoryBus::new());
    let shared = bus.0.clone();
    let connector = |prefix: String, node: NodeId, inbound: InboundSender| {
        let transport: Arc<dyn Transport> = shared.connect(&prefix, node, inbound);
        std::future::ready(transport)
    };
    run_reconnect(&mut bus, &connector).await;
}
