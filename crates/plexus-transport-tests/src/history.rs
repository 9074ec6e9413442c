//! The contract every [`HistoryStore`] keeps, written once and run against the in-memory store
//! (this crate's tests), JetStream (`plexus-nats`) and Redis Streams (`plexus-redis`): positions
//! consecutive per channel and stable across reopening, reads that catch a client up exactly or
//! say it cannot be, the size and age limits, retries that store nothing twice, concurrent
//! appenders that never share an offset, and (over a real server) an outage that fails appends
//! clearly and heals by itself.
//!
//! Every step works in an app of its own ([`unique_prefix`]), so steps share one store and one
//! server without seeing each other's channels.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use plexus_core::app::HistoryRule;
use plexus_core::history_store::{
    Attempt, ChannelKey, EventId, HistoryStore, Position, ReadAfter, StoreError,
};
use plexus_protocol::ChannelName;

use crate::{tricky_payloads, unique_prefix, Outage, RECONNECT_WAIT, WAIT};

/// Opens a store on the backend under test. Every call opens a new client of the same backend
/// (the in-memory store: the same store), as another node or a restarted process would.
pub trait StoreOpener {
    fn open(&self) -> impl Future<Output = Arc<dyn HistoryStore>>;
}

impl<F, Fut> StoreOpener for F
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn HistoryStore>>,
{
    fn open(&self) -> impl Future<Output = Arc<dyn HistoryStore>> {
        self()
    }
}

fn rule(size: usize, ttl_secs: u64) -> HistoryRule {
    HistoryRule { prefix: "history-".to_owned(), size, ttl_secs }
}

fn key(app: &str, channel: &str) -> ChannelKey {
    ChannelKey::new(app, ChannelName::parse(channel).expect("a valid channel name"))
}

async fn bounded<T>(what: &str, operation: impl Future<Output = Result<T, StoreError>>) -> T {
    match tokio::time::timeout(WAIT, operation).await {
        Ok(Ok(value)) => value,
        Ok(Err(error)) => panic!("{what}: {error}"),
        Err(_) => panic!("{what}: no answer within {WAIT:?}"),
    }
}

async fn append(store: &dyn HistoryStore, key: &ChannelKey, payload: &[u8], rule: &HistoryRule) -> Position {
    bounded("append", store.append(key, EventId::random(), payload, rule, Attempt::First)).await
}

async fn read(store: &dyn HistoryStore, key: &ChannelKey, after: Position, rule: &HistoryRule) -> ReadAfter {
    bounded("read_after", store.read_after(key, after, rule)).await
}

fn caught_up(answer: ReadAfter) -> (Vec<(Position, Bytes)>, Position) {
    match answer {
        ReadAfter::Events { events, head } => (events, head),
        gone => panic!("expected the missed events, got {gone:?}"),
    }
}

fn assert_gone(answer: ReadAfter, head: Option<Position>, why: &str) {
    assert_eq!(answer, ReadAfter::Gone { head }, "{why}");
}

/// Appends get consecutive offsets in one epoch, and a client at any of them gets exactly the
/// later payloads, byte for byte, with the newest position.
pub async fn numbered_and_read_back(opener: &impl StoreOpener) {
    let store = opener.open().await;
    let (app, rule) = (unique_prefix("numbered"), rule(100, 300));
    let key = key(&app, "history-room");
    let payloads: Vec<Bytes> = tricky_payloads().into_iter().map(|(_, payload)| payload).collect();
    let mut positions = Vec::new();
    for payload in &payloads {
        positions.push(append(&*store, &key, payload, &rule).await);
    }
    let epoch = positions[0].epoch;
    let expected: Vec<Position> =
        (1..=payloads.len() as u64).map(|offset| Position { epoch, offset }).collect();
    assert_eq!(positions, expected, "offsets consecutive from 1 in one epoch");
    let newest = *positions.last().unwrap();
    assert_eq!(bounded("head", store.head(&key, &rule)).await, Some(newest));

    let (events, head) = caught_up(read(&*store, &key, positions[0], &rule).await);
    assert_eq!(head, newest);
    let read_back: Vec<(Position, Bytes)> =
        positions[1..].iter().copied().zip(payloads[1..].iter().cloned()).collect();
    assert_eq!(events, read_back, "every payload after the first, byte-exact, at its position");
    assert_eq!(caught_up(read(&*store, &key, newest, &rule).await), (vec![], newest), "up to date");
}

/// A position of another epoch, past the newest, or of a channel that holds nothing cannot be
/// caught up from, and the answer says so.
pub async fn unknown_positions_are_gone(opener: &impl StoreOpener) {
    let store = opener.open().await;
    let (app, rule) = (unique_prefix("gone"), rule(100, 300));
    let key = key(&app, "history-room");
    let nowhere = Position { epoch: 1, offset: 1 };
    assert_gone(read(&*store, &key, nowhere, &rule).await, None, "never written");
    assert_eq!(bounded("head", store.head(&key, &rule)).await, None);

    let first = append(&*store, &key, b"{}", &rule).await;
    let newest = append(&*store, &key, b"{}", &rule).await;
    let other_epoch = Position { epoch: first.epoch.wrapping_add(1), offset: 1 };
    assert_gone(read(&*store, &key, other_epoch, &rule).await, Some(newest), "another epoch");
    let ahead = Position { epoch: first.epoch, offset: 3 };
    assert_gone(read(&*store, &key, ahead, &rule).await, Some(newest), "past the newest");
}

/// Only the rule's last `size` events are retained: a client further behind is gone, one just
/// within is caught up.
pub async fn size_limit(opener: &impl StoreOpener) {
    let store = opener.open().await;
    let (app, rule) = (unique_prefix("size"), rule(3, 300));
    let key = key(&app, "history-room");
    let mut positions = Vec::new();
    for n in 1..=6 {
        positions.push(append(&*store, &key, format!("{{\"n\":{n}}}").as_bytes(), &rule).await);
    }
    assert_gone(read(&*store, &key, positions[1], &rule).await, Some(positions[5]), "4 missed, size 3");
    let (events, _) = caught_up(read(&*store, &key, positions[2], &rule).await);
    let offsets: Vec<u64> = events.iter().map(|(position, _)| position.offset).collect();
    assert_eq!(offsets, vec![4, 5, 6]);
    assert_eq!(events[0].1, Bytes::from_static(b"{\"n\":4}"));
}

/// Events older than the rule's `ttl_secs` are not replayed; once all have expired the channel
/// holds nothing and its next event starts a new epoch.
pub async fn age_limit(opener: &impl StoreOpener) {
    let store = opener.open().await;
    let (app, rule) = (unique_prefix("ttl"), rule(100, 1));
    let key = key(&app, "history-room");
    let first = append(&*store, &key, b"{}", &rule).await;
    append(&*store, &key, b"{}", &rule).await;
    let (events, _) = caught_up(read(&*store, &key, first, &rule).await);
    assert_eq!(events.len(), 1);

    // What is under test is the passing of the rule's second itself.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let answer = read(&*store, &key, first, &rule).await;
    assert!(matches!(answer, ReadAfter::Gone { .. }), "an expired event is not replayed: {answer:?}");
    assert_eq!(bounded("head", store.head(&key, &rule)).await, None, "everything expired");
    let restarted = append(&*store, &key, b"{}", &rule).await;
    assert_eq!(restarted.offset, 1, "a channel whose events all expired starts again");
    assert_ne!(restarted.epoch, first.epoch, "in a new epoch, so old positions never match");
}

/// An append tried again with the same id (its appender died, or its answer was lost) answers
/// the first append's position and stores nothing twice.
pub async fn retries_store_once(opener: &impl StoreOpener) {
    let store = opener.open().await;
    let (app, rule) = (unique_prefix("retry"), rule(100, 300));
    let key = key(&app, "history-room");
    let id = EventId::random();
    let stored = bounded("append", store.append(&key, id, b"{\"once\":1}", &rule, Attempt::First)).await;
    let next = append(&*store, &key, b"{}", &rule).await;
    let again = bounded("retry", store.append(&key, id, b"{\"once\":1}", &rule, Attempt::Retry)).await;
    assert_eq!(again, stored, "the retry answers where the event already is");
    assert_eq!(bounded("head", store.head(&key, &rule)).await, Some(next), "nothing stored twice");
    let fresh = bounded("retry", store.append(&key, EventId::random(), b"{}", &rule, Attempt::Retry)).await;
    assert_eq!(fresh.offset, next.offset + 1, "a retry of an event never stored stores it");
}

/// Two clients of the store (two nodes) appending to one channel at once never share an
/// offset, and together fill the offsets without a hole.
pub async fn concurrent_appenders(opener: &impl StoreOpener) {
    const EACH: usize = 50;
    let (one, two) = (opener.open().await, opener.open().await);
    let (app, rule) = (unique_prefix("concurrent"), rule(1_000, 300));
    let key = key(&app, "history-room");
    let appender = |store: Arc<dyn HistoryStore>, key: ChannelKey, rule: HistoryRule| async move {
        let mut positions = Vec::with_capacity(EACH);
        for _ in 0..EACH {
            positions.push(append(&*store, &key, b"{}", &rule).await);
        }
        positions
    };
    let (a, b) = tokio::join!(
        tokio::spawn(appender(one, key.clone(), rule.clone())),
        tokio::spawn(appender(two, key.clone(), rule.clone()))
    );
    let mut positions: Vec<Position> = a.expect("appender").into_iter().chain(b.expect("appender")).collect();
    let epoch = positions[0].epoch;
    assert!(positions.iter().all(|p| p.epoch == epoch), "one epoch: {positions:?}");
    positions.sort_by_key(|position| position.offset);
    let offsets: Vec<u64> = positions.iter().map(|position| position.offset).collect();
    assert_eq!(offsets, (1..=2 * EACH as u64).collect::<Vec<_>>(), "distinct offsets without a hole");
}

/// A store opened afresh (another node, or this one restarted) sees the same positions and
/// continues the same epoch.
pub async fn positions_outlive_the_client(opener: &impl StoreOpener) {
    let (app, rule) = (unique_prefix("reopen"), rule(100, 300));
    let key = key(&app, "history-room");
    let first = {
        let store = opener.open().await;
        append(&*store, &key, b"{\"n\":1}", &rule).await;
        append(&*store, &key, b"{\"n\":2}", &rule).await
    };
    let reopened = opener.open().await;
    assert_eq!(bounded("head", reopened.head(&key, &rule)).await, Some(first));
    let next = append(&*reopened, &key, b"{\"n\":3}", &rule).await;
    assert_eq!(next, Position { epoch: first.epoch, offset: 3 });
    let (events, _) =
        caught_up(read(&*reopened, &key, Position { epoch: first.epoch, offset: 1 }, &rule).await);
    assert_eq!(
        events.iter().map(|(_, payload)| payload.clone()).collect::<Vec<_>>(),
        vec![Bytes::from_static(b"{\"n\":2}"), Bytes::from_static(b"{\"n\":3}")]
    );
}

/// Channels and apps whose names look alike (dots, separators a store might use) are kept
/// apart.
pub async fn channels_kept_apart(opener: &impl StoreOpener) {
    let store = opener.open().await;
    let rule = rule(100, 300);
    let app = unique_prefix("apart");
    let keys = [
        key(&app, "history-a.b"),
        key(&app, "history-a_b"),
        key(&app, "history-a"),
        key(&app, "history-a.b.c"),
        key(&format!("{app}.x"), "history-a"),
        key(&format!("{app}:x"), "history-a"),
    ];
    for (n, key) in keys.iter().enumerate() {
        for _ in 0..=n {
            append(&*store, key, key.to_string().as_bytes(), &rule).await;
        }
    }
    for (n, key) in keys.iter().enumerate() {
        let head = bounded("head", store.head(key, &rule)).await.expect("written");
        assert_eq!(head.offset, n as u64 + 1, "{key} holds only its own events");
        let (events, _) =
            caught_up(read(&*store, key, Position { epoch: head.epoch, offset: 0 }, &rule).await);
        assert!(events.iter().all(|(_, payload)| payload == key.to_string().as_bytes()), "{key}");
    }
}

/// Every step in turn.
pub async fn run_history_contract(opener: &impl StoreOpener) {
    numbered_and_read_back(opener).await;
    unknown_positions_are_gone(opener).await;
    size_limit(opener).await;
    age_limit(opener).await;
    retries_store_once(opener).await;
    concurrent_appenders(opener).await;
    positions_outlive_the_client(opener).await;
    channels_kept_apart(opener).await;
}

/// Defines one `#[tokio::test]` per history store contract step. `$opener` is a
/// [`StoreOpener`] and `$require` an `async fn()` that fails with a hint when the server is not
/// running.
#[macro_export]
macro_rules! history_store_contract {
    ($opener:path, $require:path) => {
        $crate::history_store_contract!(@step appends_are_numbered_and_read_back, numbered_and_read_back, $opener, $require);
        $crate::history_store_contract!(@step unknown_positions_are_gone, unknown_positions_are_gone, $opener, $require);
        $crate::history_store_contract!(@step only_the_last_size_events_are_replayed, size_limit, $opener, $require);
        $crate::history_store_contract!(@step expired_events_are_not_replayed, age_limit, $opener, $require);
        $crate::history_store_contract!(@step a_retried_append_stores_once, retries_store_once, $opener, $require);
        $crate::history_store_contract!(@step concurrent_appenders_never_share_an_offset, concurrent_appenders, $opener, $require);
        $crate::history_store_contract!(@step positions_outlive_the_client, positions_outlive_the_client, $opener, $require);
        $crate::history_store_contract!(@step look_alike_channels_are_kept_apart, channels_kept_apart, $opener, $require);
    };
    (@step $test:ident, $step:ident, $opener:path, $require:path) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            $require().await;
            $crate::history::$step(&$opener).await;
        }
    };
}

/// A store whose server goes away: appends fail with [`StoreError::Unavailable`] in bounded
/// time rather than hanging or pretending, and succeed again once the server is back, without
/// reopening the store.
pub async fn run_history_outage(server: &mut impl Outage, store: &dyn HistoryStore) {
    let (app, rule) = (unique_prefix("outage"), rule(100, 300));
    let key = key(&app, "history-room");
    append(store, &key, b"{}", &rule).await;

    server.go_down();
    let failed = tokio::time::timeout(
        RECONNECT_WAIT,
        store.append(&key, EventId::random(), b"{}", &rule, Attempt::First),
    )
    .await
    .expect("an append while the store is down fails in bounded time");
    assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");

    server.come_back().await;
    let deadline = tokio::time::Instant::now() + RECONNECT_WAIT;
    loop {
        match tokio::time::timeout(WAIT, store.append(&key, EventId::random(), b"{}", &rule, Attempt::First))
            .await
        {
            Ok(Ok(_)) => break,
            Ok(Err(StoreError::Unavailable(_))) | Err(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "appends did not recover within {RECONNECT_WAIT:?}"
                );
                // The client reconnects on its own schedule; there is no event to await.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(error)) => panic!("after the outage: {error}"),
        }
    }
}

/// What a store costs, printed for BENCHMARKS.md ("History in the store"), never asserted: one
/// channel's append latency one at a time (median and p99 of 2,000), appends per second with 64
/// channels appending at once, and the time to read 10,000 missed events (median of 5). Run by
/// each store crate's ignored `measure_*` test.
pub async fn measure(opener: &impl StoreOpener, label: &str) {
    const SEQUENTIAL: usize = 2_000;
    const CHANNELS: usize = 64;
    const PER_CHANNEL: usize = 200;
    const MISSED: u64 = 10_000;
    let store = opener.open().await;
    let app = unique_prefix("measure");
    let payload = br#"{"event":"item","channel":"history-room","data":"{\"n\":12345,\"text\":\"a typical small event\"}"}"#;
    let rule = rule(MISSED as usize, 600);

    let latency_key = key(&app, "history-latency");
    let mut latencies = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let started = std::time::Instant::now();
        append(&*store, &latency_key, payload, &rule).await;
        latencies.push(started.elapsed());
    }
    latencies.sort();

    let started = std::time::Instant::now();
    let writers: Vec<_> = (0..CHANNELS)
        .map(|c| {
            let (store, key, rule) = (store.clone(), key(&app, &format!("history-wide-{c}")), rule.clone());
            tokio::spawn(async move {
                for _ in 0..PER_CHANNEL {
                    append(&*store, &key, payload, &rule).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let per_second = (CHANNELS * PER_CHANNEL) as f64 / started.elapsed().as_secs_f64();

    let resume_key = key(&app, "history-resume");
    let first = append(&*store, &resume_key, payload, &rule).await;
    for _ in 0..MISSED {
        append(&*store, &resume_key, payload, &rule).await;
    }
    let mut reads = Vec::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let (events, _) = caught_up(read(&*store, &resume_key, first, &rule).await);
        reads.push(started.elapsed());
        assert_eq!(events.len() as u64, MISSED);
    }
    reads.sort();
    println!(
        "{label}: append one at a time median {:?} p99 {:?}; {per_second:.0} appends/s over {CHANNELS} channels; \
         read of {MISSED} missed events median {:?}",
        latencies[SEQUENTIAL / 2],
        latencies[SEQUENTIAL * 99 / 100],
        reads[2]
    );
}
