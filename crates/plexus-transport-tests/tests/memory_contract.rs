//! The shared transport contract against `plexus_core::cluster::MemoryBus`, the in-memory bus
//! the deterministic cluster tests run on: it must behave like NATS and Redis, or those tests
//! prove nothing about a real cluster.

use std::sync::{Arc, LazyLock};

use plexus_core::cluster::{InboundSender, MemoryBus, NodeId, Transport};
use plexus_transport_tests as contract;

/// One bus for every step, as one NATS server serves them all: the steps' random prefixes must
/// keep them apart.
static BUS: LazyLock<MemoryBus> = LazyLock::new(MemoryBus::new);

async fn memory(prefix: String, node: NodeId, inbound: InboundSender) -> Arc<dyn Transport> {
    BUS.connect(&prefix, node, inbound)
}

/// Nothing to start.
async fn no_server() {}

contract::contract_tests!(memory, no_server);
