//! The history store contract (`plexus-transport-tests`) against Redis Streams on the Redis
//! server at 127.0.0.1:6379 that the project's test script starts, and, on a private
//! redis-server, what an outage and a restart of Redis do to history.

use std::sync::Arc;

use plexus_core::app::HistoryRule;
use plexus_core::history_store::{Attempt, ChannelKey, EventId, HistoryStore};
use plexus_protocol::ChannelName;
use plexus_redis::RedisHistory;
use plexus_transport_tests::history::run_history_outage;
use plexus_transport_tests::{self as contract, free_port, unique_prefix, ServerProcess};

const ADDR: &str = "127.0.0.1:6379";
const URL: &str = "redis://127.0.0.1:6379";
const HOW_TO_START: &str = "./scripts/services.sh (from the workspace root), or \
                            redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" \
                            --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";

/// A new client each time, as another node would open; the contract's apps keep steps apart.
async fn shared_redis() -> Arc<dyn HistoryStore> {
    match RedisHistory::connect(URL, None, "plexus-history-test").await {
        Ok(store) => Arc::new(store),
        Err(err) => panic!("{err}; start Redis with: {HOW_TO_START}"),
    }
}

async fn require_redis() {
    contract::require_server("Redis", ADDR, HOW_TO_START).await;
}

contract::history_store_contract!(shared_redis, require_redis);

async fn private_redis(extra: &[&str]) -> (ServerProcess, String) {
    let port = free_port();
    let mut args: Vec<String> =
        ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""].map(String::from).to_vec();
    args.extend(extra.iter().map(|arg| arg.to_string()));
    (ServerProcess::start("redis-server", args, port).await, format!("redis://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_fail_while_redis_is_down_and_work_again_once_it_is_back() {
    let (mut server, url) = private_redis(&["--appendonly", "no"]).await;
    let store = RedisHistory::connect(&url, None, "outage").await.expect("private Redis");
    run_history_outage(&mut server, &store).await;
}

/// With Redis persisting (AOF, as the README recommends for history), a restart of Redis
/// itself keeps every channel's epoch and offsets: clients resume across it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_survive_a_restart_of_a_persisting_redis() {
    let dir = std::env::temp_dir().join(unique_prefix("redis-aof"));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let (mut server, url) =
        private_redis(&["--appendonly", "yes", "--appendfsync", "always", "--dir", dir.to_str().unwrap()])
            .await;
    let rule = HistoryRule { prefix: "history-".to_owned(), size: 10, ttl_secs: 300 };
    let key = ChannelKey::new("app", ChannelName::parse("history-room").unwrap());
    let first = RedisHistory::connect(&url, None, "restart").await.expect("private Redis");
    let mut last = None;
    for _ in 0..3 {
        last =
            Some(first.append(&key, EventId::random(), b"{}", &rule, Attempt::First).await.expect("append"));
    }
    let last = last.unwrap();

    server.restart().await;
    let reopened = RedisHistory::connect(&url, None, "restart").await.expect("Redis is back");
    assert_eq!(reopened.head(&key, &rule).await.expect("head"), Some(last));
    let next = reopened.append(&key, EventId::random(), b"{}", &rule, Attempt::First).await.expect("append");
    assert_eq!((next.epoch, next.offset), (last.epoch, last.offset + 1));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Costs for BENCHMARKS.md: `cargo test --release -p plexus-redis --test history measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, printed for BENCHMARKS.md"]
async fn measure_redis_streams() {
    require_redis().await;
    contract::history::measure(&shared_redis, "Redis Streams").await;
}
