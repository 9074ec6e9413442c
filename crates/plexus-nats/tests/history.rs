//! The history store contract (`plexus-transport-tests`) against JetStream on the NATS server
//! at 127.0.0.1:4222 that the project's test script starts, and, on a private nats-server with
//! its own storage directory, what an outage and a restart of NATS do to history.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use plexus_core::app::HistoryRule;
use plexus_core::history_store::{
    Attempt, ChannelKey, EventId, HistoryStore, Position, ReadAfter, StoreError,
};
use plexus_nats::{HistoryOptions, JetStreamHistory};
use plexus_protocol::ChannelName;
use plexus_transport_tests::history::run_history_outage;
use plexus_transport_tests::{self as contract, free_port, unique_prefix, ServerProcess};

const ADDR: &str = "127.0.0.1:4222";
const URL: &str = "nats://127.0.0.1:4222";
const HOW_TO_START: &str = "./scripts/services.sh (from the workspace root), or \
                            start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server \
                            -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log";
const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// One stream for every run: the contract's steps keep apart by app, and the stream's limits
/// only grow to what the steps' rules ask.
const PREFIX: &str = "plexus-history-test";

/// A new client each time, as another node would open.
async fn shared_jetstream() -> Arc<dyn HistoryStore> {
    match JetStreamHistory::connect(URL, None, PREFIX, HistoryOptions::default()).await {
        Ok(store) => Arc::new(store),
        Err(err) => panic!("{err}; start NATS with: {HOW_TO_START}"),
    }
}

async fn require_nats() {
    contract::require_server("NATS", ADDR, HOW_TO_START).await;
}

contract::history_store_contract!(shared_jetstream, require_nats);

/// A nats-server of the test's own with JetStream storing in a fresh directory, removed with
/// it.
struct PrivateNats {
    server: ServerProcess,
    url: String,
    dir: PathBuf,
}

impl PrivateNats {
    async fn start() -> PrivateNats {
        let dir = std::env::temp_dir().join(unique_prefix("nats-js"));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let port = free_port();
        let args =
            ["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd", dir.to_str().expect("UTF-8 path")]
                .map(String::from)
                .to_vec();
        let server = ServerProcess::start(NATS_SERVER, args, port).await;
        PrivateNats { server, url: format!("nats://127.0.0.1:{port}"), dir }
    }

    async fn store(&self, prefix: &str) -> JetStreamHistory {
        JetStreamHistory::connect(&self.url, None, prefix, HistoryOptions::default())
            .await
            .unwrap_or_else(|err| panic!("private NATS: {err}"))
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.server.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rule() -> HistoryRule {
    HistoryRule { prefix: "history-".to_owned(), size: 10, ttl_secs: 300 }
}

fn key(app: &str) -> ChannelKey {
    ChannelKey::new(app, ChannelName::parse("history-room").expect("a valid channel name"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_fail_while_nats_is_down_and_work_again_once_it_is_back() {
    let mut nats = PrivateNats::start().await;
    let store = nats.store("outage").await;
    run_history_outage(&mut nats.server, &store).await;
}

/// JetStream keeps the stream on disk: after NATS itself restarts, a new store (a restarted
/// plexus) finds every channel's epoch and offset and continues them, and clients resume
/// across the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_survive_a_restart_of_nats() {
    let mut nats = PrivateNats::start().await;
    let (rule, key) = (rule(), key("app"));
    let first = nats.store("restart").await;
    let mut positions = Vec::new();
    for n in 1..=3 {
        let payload = format!("{{\"n\":{n}}}");
        positions.push(
            first
                .append(&key, EventId::random(), payload.as_bytes(), &rule, Attempt::First)
                .await
                .expect("append"),
        );
    }
    drop(first);

    nats.server.restart().await;
    let reopened = nats.store("restart").await;
    let last = positions[2];
    assert_eq!(reopened.head(&key, &rule).await.expect("head"), Some(last));
    let next =
        reopened.append(&key, EventId::random(), b"{\"n\":4}", &rule, Attempt::First).await.expect("append");
    assert_eq!(next, Position { epoch: last.epoch, offset: last.offset + 1 });
    let ReadAfter::Events { events, head } =
        reopened.read_after(&key, positions[0], &rule).await.expect("read")
    else {
        panic!("a client from before the restart is caught up");
    };
    assert_eq!(head, next);
    let payloads: Vec<Bytes> = events.into_iter().map(|(_, payload)| payload).collect();
    assert_eq!(payloads, [&b"{\"n\":2}"[..], b"{\"n\":3}", b"{\"n\":4}"].map(Bytes::from_static));
}

/// Something other than plexus publishing on a channel's subject is reported as an error, not
/// taken for an event (nor a panic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_message_is_an_error() {
    require_nats().await;
    let store = shared_jetstream().await;
    let app = unique_prefix("foreign");
    let client = async_nats::connect(URL).await.expect("NATS");
    let subject = format!("{PREFIX}.history.{app}.history-room");
    let jetstream = async_nats::jetstream::new(client);
    jetstream.publish(subject, Bytes::from_static(b"{}")).await.expect("publish").await.expect("stored");
    let rule = rule();
    let head = store.head(&key(&app), &rule).await;
    assert!(matches!(head, Err(StoreError::Refused(_))), "{head:?}");
    let appended = store.append(&key(&app), EventId::random(), b"{}", &rule, Attempt::First).await;
    assert!(matches!(appended, Err(StoreError::Refused(_))), "{appended:?}");
}

/// A client further behind than a walk back from the newest event covers is read through a
/// consumer over the channel: exactly the events it missed, and Gone one event further back
/// than the rule keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_gap_is_read_exactly() {
    require_nats().await;
    let store = shared_jetstream().await;
    let rule = HistoryRule { prefix: "history-".to_owned(), size: 50, ttl_secs: 300 };
    let key = key(&unique_prefix("long-gap"));
    let mut positions = Vec::new();
    for n in 1..=60 {
        let payload = format!("{{\"n\":{n}}}");
        positions.push(
            store
                .append(&key, EventId::random(), payload.as_bytes(), &rule, Attempt::First)
                .await
                .expect("append"),
        );
    }
    let newest = positions[59];
    let ReadAfter::Events { events, head } = store.read_after(&key, positions[9], &rule).await.expect("read")
    else {
        panic!("50 missed, size 50: caught up");
    };
    assert_eq!(head, newest);
    let expected: Vec<(Position, Bytes)> =
        (11..=60).map(|n| (positions[n - 1], Bytes::from(format!("{{\"n\":{n}}}")))).collect();
    assert_eq!(events, expected);
    let gone = store.read_after(&key, positions[8], &rule).await.expect("read");
    assert_eq!(gone, ReadAfter::Gone { head: Some(newest) }, "51 missed, size 50");
}

/// Costs for BENCHMARKS.md: `cargo test --release -p plexus-nats --test history measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, printed for BENCHMARKS.md"]
async fn measure_jetstream() {
    require_nats().await;
    contract::history::measure(&shared_jetstream, "JetStream").await;
}
