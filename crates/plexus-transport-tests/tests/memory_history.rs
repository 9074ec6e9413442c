//! The history store contract against `plexus_core::history_store::MemoryHistoryStore`, the
//! single node's default: it must answer exactly as JetStream and Redis Streams do.

use std::sync::{Arc, LazyLock};

use plexus_core::history_store::{HistoryStore, MemoryHistoryStore};
use plexus_transport_tests as contract;

/// One store for every step (opening it again is reaching the same memory), as one server
/// serves them all: the steps' own apps keep them apart.
static STORE: LazyLock<Arc<MemoryHistoryStore>> = LazyLock::new(|| Arc::new(MemoryHistoryStore::new()));

async fn memory() -> Arc<dyn HistoryStore> {
    STORE.clone()
}

/// Nothing to start.
async fn no_server() {}

contract::history_store_contract!(memory, no_server);

/// Costs for BENCHMARKS.md: `cargo test --release -p plexus-transport-tests --test memory_history measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, printed for BENCHMARKS.md"]
async fn measure_the_memory_store() {
    contract::history::measure(&memory, "memory").await;
}
