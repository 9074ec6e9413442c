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
