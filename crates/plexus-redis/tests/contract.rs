//! The shared transport contract (`plexus-transport-tests`) against the Redis server on
//! 127.0.0.1:6379 that the project's test script starts; every step uses its own random prefix.

use std::sync::Arc;

use plexus_core::cluster::{InboundSender, NodeId, Transport};
use plexus_transport_tests as contract;

const ADDR: &str = "127.0.0.1:6379";
const URL: &str = "redis://127.0.0.1:6379";
const HOW_TO_START: &str = "./scripts/services.sh (from the workspace root), or \
                            redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" \
                            --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";

async fn shared_redis(prefix: String, node: NodeId, inbound: InboundSender) -> Arc<dyn Transport> {
    match plexus_redis::connect(URL, &prefix, node, inbound).await {
        Ok(transport) => transport,
        Err(err) => panic!("{err}; start Redis with: {HOW_TO_START}"),
    }
}

async fn require_redis() {
    contract::require_server("Redis", ADDR, HOW_TO_START).await;
}

contract::contract_tests!(shared_redis, require_redis);
