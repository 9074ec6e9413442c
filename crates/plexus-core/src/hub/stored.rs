//! History in a durable store (`[adapter] history = "bus"`: JetStream or Redis Streams): the
//! node that numbers a channel's events has the store number them instead, so positions are the
//! same on every node and outlive every node, and a client the in-memory tail cannot catch up
//! (this node restarted, or it never saw those events) is caught up from the store.
//!
//! - **Store, then fan out.** An event to number goes into the app's bounded append queue; one
//!   task keeps up to 64 appends going at once, one channel's one after another (so its offsets
//!   follow its publish order), and stamps and delivers each event as soon as it is stored,
//!   exactly as an event numbered in memory. A publisher that waits (the HTTP API) learns
//!   whether the store took the event: if not, nothing was delivered and it answers 503.
//! - **Every node appends what is published on it.** The store serialises appenders (every
//!   store passes the contract's concurrent-appenders step), so no event is handed to another
//!   node to number, and none is lost with a node that dies holding someone else's event. A node
//!   that dies after the store took an event and before delivering it leaves it in the store:
//!   live subscribers never get it, a resume replays it (`29-history-crash.test.js`). Two
//!   nodes' events can cross on the bus; each node puts them back in store order
//!   (`History::reorder`: an event ahead of a missing one waits at most [`REORDER_WAIT`]).
//! - **When the store fails** for an event nobody waits for (a client event, a bridged
//!   message), it is still delivered live, without a position, and counted in
//!   `plexus_history_store_errors_total`: live subscribers lose nothing, and a later resume
//!   from a position around it says `recovered: false`.
//! - **Resuming from the store** happens on a task after the subscription. Meanwhile the
//!   channel's live events for that subscriber wait in a [`Hold`]; once the store answers, the
//!   client gets the replay, `plexus:resume`, then the held events the replay did not already
//!   contain: each event once, in store order. An event the store had but this node had not
//!   delivered yet is dropped for that subscriber when it arrives (the hold keeps the replay's
//!   last position until then).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use plexus_protocol::filter::SubscriptionFilter;
use plexus_protocol::wsframe::{self, Opcode};
use plexus_protocol::{ChannelName, SocketId};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Duration;

use super::fanout::frame_passes;
use super::history::{resume_frame, stamp, stamped_position, Numbering};
use super::{lock, write, AppHub, Connection};
use crate::app::HistoryRule;
use crate::cluster::Keep;
use crate::crash_point::{self, CrashPoint};
use crate::history_store::{Attempt, ChannelKey, EventId, HistoryStore, Position, ReadAfter};

/// Events waiting for the store, per app. A full queue refuses more (503 to a waiting
/// publisher) rather than growing while the store is slow.
pub const HISTORY_APPEND_QUEUE: usize = 4096;

/// Most appends an app has going to the store at once (one channel's go one after another).
pub const HISTORY_APPENDS_IN_FLIGHT: usize = 64;

/// Resumes read from the store at once, per app; more wait their turn. A crowd reconnecting
/// after a deploy (or someone subscribing with made-up positions) queues here rather than
/// sending the store thousands of reads at a time.
pub const HISTORY_CONCURRENT_READS: usize = 16;

/// How long an event that reached this node ahead of a missing one waits for it (events of
/// two nodes crossing on the bus), before it is delivered past the gap.
pub const REORDER_WAIT: Duration = Duration::from_millis(100);

/// Most events of one channel waiting for a missing one; past that they go out at once.
pub const REORDER_WAITING: usize = 1024;

/// Most live events held for one subscriber while its resume is read from the store. Past
/// that the hold gives up: live events flow to it again at once and its `plexus:resume` says
/// `recovered: false`, so the client reloads instead of this node buffering without end.
pub const RESUME_HOLD_EVENTS: usize = 1024;

/// What a waiting publisher learns of one event's append: whether the store took it.
pub(super) type AppendReply = oneshot::Sender<bool>;

/// A publisher's side of one append: the channel, and the answer to await.
#[derive(Debug)]
pub(crate) struct AppendWait {
    pub(super) channel: ChannelName,
    pub(super) stored: oneshot::Receiver<bool>,
}

/// An app's durable history: the store and the queue its appender task takes from.
#[derive(Debug)]
pub(super) struct StoredHistory {
    pub(super) store: Arc<dyn HistoryStore>,
    queue: mpsc::Sender<PendingAppend>,
    reads: Arc<Semaphore>,
    pub(super) hub: Weak<AppHub>,
}

/// An event on its way to the store.
#[derive(Debug)]
pub(super) struct PendingAppend {
    pub(super) rule: HistoryRule,
    pub(super) channel: ChannelName,
    /// The event's frame, without a position yet.
    pub(super) frame: Bytes,
    pub(super) except: Option<SocketId>,
    pub(super) keep: Option<(String, Duration)>,
    pub(super) reply: Option<AppendReply>,
}

/// One subscriber of a channel whose resume is being read from the store (see the module docs).
#[derive(Debug)]
pub(super) struct Hold {
    /// Which resume this is: a subscriber that left and subscribed again meanwhile has a new
    /// hold, which the older read must not release.
    ticket: u64,
    state: Mutex<HoldState>,
}

/// Tickets of holds, unique in the process.
static NEXT_TICKET: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[derive(Debug)]
enum HoldState {
    /// Live events, in arrival order, waiting for the replay.
    Holding(Vec<Bytes>),
    /// More arrived than [`RESUME_HOLD_EVENTS`]: live events go straight through.
    Overflowed,
    /// Replayed up to this position; live events at or before it were in the replay.
    ReplayedUpTo(Position),
    /// Nothing left to do; removed at the channel's next numbered event.
    Done,
}

impl Hold {
    pub(super) fn new() -> Hold {
        let ticket = NEXT_TICKET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Hold { ticket, state: Mutex::new(HoldState::Holding(Vec::new())) }
    }

    pub(super) fn ticket(&self) -> u64 {
        self.ticket
    }

    /// Takes a live event meant for this subscriber: `true` when it is held or was already
    /// replayed, `false` when it should be delivered now.
    pub(super) fn intercept(&self, frame: &Bytes) -> bool {
        let mut state = lock(&self.state);
        match &mut *state {
            HoldState::Holding(held) if held.len() < RESUME_HOLD_EVENTS => {
                held.push(frame.clone());
                true
            }
            HoldState::Holding(_) => {
                *state = HoldState::Overflowed;
                false
            }
            HoldState::ReplayedUpTo(last) => match stamped_position(frame) {
                Some(position) if position.epoch == last.epoch && position.offset <= last.offset => true,
                Some(_) => {
                    *state = HoldState::Done;
                    false
                }
                None => false,
            },
            HoldState::Overflowed | HoldState::Done => false,
        }
    }

    pub(super) fn is_done(&self) -> bool {
        matches!(*lock(&self.state), HoldState::Done)
    }
}

impl StoredHistory {
    /// Starts the appender of the hub `hub` will point to (it holds the hub weakly, so the task
    /// ends with the hub).
    pub(super) fn start(store: Arc<dyn HistoryStore>, app_id: Arc<str>, hub: Weak<AppHub>) -> StoredHistory {
        let (queue, pending) = mpsc::channel(HISTORY_APPEND_QUEUE);
        tokio::spawn(append_in_order(store.clone(), app_id, hub.clone(), pending));
        StoredHistory { store, queue, reads: Arc::new(Semaphore::new(HISTORY_CONCURRENT_READS)), hub }
    }
}

impl AppHub {
    /// Has the store number an event this node numbers; see the module docs.
    pub(super) fn append_to_store(&self, stored: &StoredHistory, pending: PendingAppend) {
        if let Err(refused) = stored.queue.try_send(pending) {
            let pending = refused.into_inner();
            tracing::warn!(app = %self.app_id, channel = %pending.channel, "history store append queue is full");
            self.store_failed(pending);
        }
    }

    /// An event the store did not take: refused to a waiting publisher, delivered live without a
    /// position when nobody waits (any more).
    fn store_failed(&self, pending: PendingAppend) {
        metrics::counter!("plexus_history_store_errors_total", "app_id" => self.app_id.to_string())
            .increment(1);
        if pending.reply.is_some_and(|reply| reply.send(false).is_ok()) {
            return;
        }
        let keep = pending.keep.as_ref().map(|(data, ttl)| Keep { data, ttl: *ttl });
        self.publish_plain(pending.channel.as_str(), &pending.frame, pending.except, keep);
    }

    /// Catches `connection` up on `channel` from the durable store, on a task; then tells it
    /// with `plexus:resume` whether that worked. The caller has put the [`Hold`] of
    /// `resuming.ticket` on the subscriber.
    pub(super) fn resume_from_store(
        &self,
        rule: &HistoryRule,
        channel: &ChannelName,
        connection: &Arc<Connection>,
        resuming: Resuming,
    ) {
        let Some(stored) = &self.stored else { return };
        let (store, rule, connection) = (stored.store.clone(), rule.clone(), connection.clone());
        let key = ChannelKey::new(&self.app_id, channel.clone());
        let (reads, hub) = (stored.reads.clone(), stored.hub.clone());
        tokio::spawn(async move {
            // The semaphore is never closed.
            let _turn = reads.acquire_owned().await;
            let answer = store.read_after(&key, resuming.after, &rule).await;
            let Some(hub) = hub.upgrade() else { return };
            let answer = match answer {
                Ok(ReadAfter::Events { events, head }) => {
                    StoreAnswer { replay: events, covered: Some(head), head: Some(head) }
                }
                Ok(ReadAfter::Gone { head }) => StoreAnswer { replay: Vec::new(), covered: None, head },
                Err(error) => {
                    tracing::warn!(channel = %key, %error, "cannot resume from the history store");
                    StoreAnswer { replay: Vec::new(), covered: None, head: None }
                }
            };
            hub.release_hold(&key.channel, &connection, &resuming, answer);
        });
    }

    /// Ends a subscriber's [`Hold`] with the store's answer: the replay, `plexus:resume`, then
    /// the held live events the replay did not contain. Nothing is sent when the subscriber left
    /// meanwhile; a hold that overflowed turns the answer into `recovered: false`.
    fn release_hold(
        &self,
        channel: &ChannelName,
        connection: &Connection,
        resuming: &Resuming,
        answer: StoreAnswer,
    ) {
        let mut guard = write(self.shard(channel.as_str()));
        let shard = &mut *guard;
        let delivered_here = shard.histories.get(channel).map(|history| history.position(history.next - 1));
        let Some(entry) = shard.channels.get_mut(channel) else { return };
        let socket_id = connection.socket_id;
        let Some(hold) = entry.held.get(&socket_id).filter(|hold| hold.ticket == resuming.ticket) else {
            return;
        };
        let head = answer.head.map_or_else(|| resuming.memory_head.clone(), |head| head.to_string());
        let HoldState::Holding(held) = std::mem::replace(&mut *lock(&hold.state), HoldState::Done) else {
            entry.held.remove(&socket_id);
            connection.outbound.push(resume_frame(channel.as_str(), false, &head));
            return;
        };
        for (position, payload) in answer.replay {
            let frame = stamp(&wsframe::frame(Opcode::Text, &payload), &position.to_string());
            if resuming.filter.as_deref().is_none_or(|filter| frame_passes(filter, &frame)) {
                connection.outbound.push(frame);
            }
        }
        connection.outbound.push(resume_frame(channel.as_str(), answer.covered.is_some(), &head));
        // Held events the replay covered are already sent; the rest (all of them, when nothing
        // was replayed) are newer than anything the client has.
        let replayed = |frame: &Bytes| match (answer.covered, stamped_position(frame)) {
            (Some(covered), Some(position)) => {
                position.epoch == covered.epoch && position.offset <= covered.offset
            }
            _ => false,
        };
        for frame in held.into_iter().filter(|frame| !replayed(frame)) {
            connection.outbound.push(frame);
        }
        // The store may hold events this node has yet to deliver: they were in the replay, so
        // this subscriber must not get them again when they arrive.
        match answer.covered {
            Some(covered)
                if delivered_here
                    .is_none_or(|here| here.epoch != covered.epoch || here.offset < covered.offset) =>
            {
                *lock(&hold.state) = HoldState::ReplayedUpTo(covered);
            }
            _ => {
                entry.held.remove(&socket_id);
            }
        }
    }
}

/// A resume waiting for the store: from where, through which filter, what to answer when the
/// store cannot, and which [`Hold`] is its.
#[derive(Debug)]
pub(super) struct Resuming {
    pub(super) after: Position,
    pub(super) filter: Option<Arc<SubscriptionFilter>>,
    /// The newest position this node's memory holds, for the answer when the store has none.
    pub(super) memory_head: String,
    pub(super) ticket: u64,
}

/// What the store answered a resume: the events to replay, the newest position they reach up
/// to when the client is caught up (`covered`), and the channel's newest position.
struct StoreAnswer {
    replay: Vec<(Position, Bytes)>,
    covered: Option<Position>,
    head: Option<Position>,
}

/// The appender: keeps up to [`HISTORY_APPENDS_IN_FLIGHT`] appends going at once. Each event
/// waits for the one before it on its channel to be appended and delivered, so a channel's
/// offsets and deliveries follow its publish order, while other channels' appends overlap (and a
/// store with one connection pipelines them).
async fn append_in_order(
    store: Arc<dyn HistoryStore>,
    app_id: Arc<str>,
    hub: Weak<AppHub>,
    mut queue: mpsc::Receiver<PendingAppend>,
) {
    let mut in_flight = FuturesUnordered::new();
    // Per channel: the newest event on its way (a number, and what the next event waits for).
    let mut newest: HashMap<ChannelName, (u64, oneshot::Receiver<()>)> = HashMap::new();
    let mut numbered = 0u64;
    loop {
        tokio::select! {
            Some((channel, number)) = in_flight.next(), if !in_flight.is_empty() => {
                if newest.get(&channel).is_some_and(|(newest, _)| *newest == number) {
                    newest.remove(&channel);
                }
            }
            pending = queue.recv(), if in_flight.len() < HISTORY_APPENDS_IN_FLIGHT => {
                let Some(pending) = pending else { break };
                numbered += 1;
                let (appended, next_may_go) = oneshot::channel();
                let before = newest.insert(pending.channel.clone(), (numbered, next_may_go)).map(|(_, before)| before);
                let turn = Turn { number: numbered, before, appended };
                in_flight.push(append_one(store.clone(), app_id.clone(), hub.clone(), pending, turn));
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

/// One event's place in its channel's line.
struct Turn {
    number: u64,
    /// Resolves once the event before it on its channel is appended and delivered.
    before: Option<oneshot::Receiver<()>>,
    /// Tells the next event on the channel that this one is done.
    appended: oneshot::Sender<()>,
}

/// Appends one event in its turn, then delivers it, or fails it; answers its channel and number.
async fn append_one(
    store: Arc<dyn HistoryStore>,
    app_id: Arc<str>,
    hub: Weak<AppHub>,
    pending: PendingAppend,
    turn: Turn,
) -> (ChannelName, u64) {
    if let Some(before) = turn.before {
        // An error only means the event before was dropped with its hub: its turn is over too.
        let _ = before.await;
    }
    crash_point::reached(CrashPoint::BeforeHistoryAppend).await;
    let key = ChannelKey::new(&app_id, pending.channel.clone());
    let payload = wsframe::server_frame_payload(&pending.frame);
    let appended = store.append(&key, EventId::random(), &payload, &pending.rule, Attempt::First).await;
    if appended.is_ok() {
        crash_point::reached(CrashPoint::AfterHistoryAppend).await;
    }
    let channel = pending.channel.clone();
    if let Some(hub) = hub.upgrade() {
        match appended {
            Ok(position) => {
                let keep = pending.keep.as_ref().map(|(data, ttl)| Keep { data, ttl: *ttl });
                let numbering = Numbering::Stored(position);
                hub.deliver_recorded(
                    &pending.rule,
                    channel.as_str(),
                    &pending.frame,
                    pending.except,
                    numbering,
                    keep,
                );
                if let Some(reply) = pending.reply {
                    let _ = reply.send(true);
                }
            }
            Err(error) => {
                tracing::warn!(app = %app_id, channel = %channel, %error, "history store append failed");
                hub.store_failed(pending);
            }
        }
    }
    let _ = turn.appended.send(());
    (channel, turn.number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::App;
    use crate::history_store::MemoryHistoryStore;
    use crate::hub::{Event, Hubs};
    use crate::webhook::{WebhookEvent, WebhookSink};
    use serde_json::Value;

    #[derive(Debug)]
    struct NoWebhooks;

    impl WebhookSink for NoWebhooks {
        fn submit(&self, _app_id: &str, _event: WebhookEvent) {}
    }

    fn app() -> App {
        let mut app = App::new("app", "key", "secret");
        app.history = vec![HistoryRule { prefix: "feed-".into(), size: 10, ttl_secs: 300 }];
        app
    }

    /// The events (name, data, position) a connection has been sent so far.
    async fn received(connection: &Connection) -> Vec<(String, String, Option<String>)> {
        let mut frames = Vec::new();
        connection.outbound.drain_into(&mut frames).await;
        frames
            .iter()
            .map(|frame| {
                let json: Value = serde_json::from_slice(&wsframe::server_frame_payload(frame)).unwrap();
                let text = |field: &str| json[field].as_str().map(str::to_owned);
                (text("event").unwrap(), text("data").unwrap_or_default(), text("position"))
            })
            .collect()
    }

    async fn publish(hubs: &Hubs, app: &App, data: &str) {
        let channels = ["feed-1".to_owned()];
        let event = Event { name: "item", data, channels: &channels, except: None };
        let published = hubs.hub(&app.id).publish_event(app, &event).unwrap();
        published.stored().await.expect("the store takes it");
    }

    #[tokio::test]
    async fn events_are_delivered_once_stored_and_a_restarted_node_resumes_clients_from_the_store() {
        let (app, store) = (app(), Arc::new(MemoryHistoryStore::new()));
        let channel = ChannelName::parse("feed-1").unwrap();
        let first_run = Hubs::new(Arc::new(NoWebhooks)).with_history_store(store.clone());
        let hub = first_run.hub(&app.id);
        let watcher = hub.connect(&app, 1 << 20).unwrap();
        hub.subscribe_from(&app, &watcher, &channel, None, None, None).unwrap();
        for n in 1..=3 {
            publish(&first_run, &app, &format!("{{\"n\":{n}}}")).await;
        }
        let seen = received(&watcher).await;
        let positions: Vec<String> =
            seen[1..].iter().map(|(_, _, p)| p.clone().expect("a position")).collect();
        assert_eq!(seen.len(), 4, "subscription_succeeded and three events: {seen:?}");
        drop((hub, first_run));

        // Another process over the same store: its memory holds nothing of the channel.
        let second_run = Hubs::new(Arc::new(NoWebhooks)).with_history_store(store);
        let hub = second_run.hub(&app.id);
        let resumed = hub.connect(&app, 1 << 20).unwrap();
        hub.subscribe_from(&app, &resumed, &channel, None, Some(&positions[0]), None).unwrap();
        let mut replay = received(&resumed).await;
        while !replay.iter().any(|(event, _, _)| event == "plexus:resume") {
            replay.extend(received(&resumed).await);
        }
        let expected = vec![
            ("pusher_internal:subscription_succeeded".to_owned(), "{}".to_owned(), None),
            ("item".to_owned(), "{\"n\":2}".to_owned(), Some(positions[1].clone())),
            ("item".to_owned(), "{\"n\":3}".to_owned(), Some(positions[2].clone())),
            (
                "plexus:resume".to_owned(),
                format!("{{\"recovered\":true,\"position\":\"{}\"}}", positions[2]),
                None,
            ),
        ];
        assert_eq!(replay, expected);

        // Numbering continues where the store is, not from this process's empty memory.
        publish(&second_run, &app, "{\"n\":4}").await;
        let next = received(&resumed).await;
        let epoch = positions[2].split(':').next().unwrap();
        assert_eq!(next[0].2.as_deref(), Some(format!("{epoch}:4").as_str()), "{next:?}");
    }

    /// A hub over `store` whose channel `feed-1` holds one event, a subscriber, and an event
    /// frame at a position of the channel's epoch, as another node would publish it.
    async fn one_event_and_a_watcher(
        store: &Arc<MemoryHistoryStore>,
        app: &App,
    ) -> (Hubs, Arc<Connection>, impl Fn(u64) -> (Position, Bytes)) {
        let channel = ChannelName::parse("feed-1").unwrap();
        let hubs = Hubs::new(Arc::new(NoWebhooks)).with_history_store(store.clone());
        publish(&hubs, app, "{\"n\":1}").await;
        let hub = hubs.hub(&app.id);
        let watcher = hub.connect(app, 1 << 20).unwrap();
        hub.subscribe_from(app, &watcher, &channel, None, None, None).unwrap();
        let key = ChannelKey::new(&app.id, channel);
        let epoch = store.head(&key, &app.history[0]).await.unwrap().expect("one event stored").epoch;
        let theirs = move |offset: u64| {
            let position = Position { epoch, offset };
            let json =
                format!("{{\"event\":\"item\",\"channel\":\"feed-1\",\"data\":\"{{\\\"n\\\":{offset}}}\"}}");
            (position, stamp(&wsframe::frame(Opcode::Text, json.as_bytes()), &position.to_string()))
        };
        (hubs, watcher, theirs)
    }

    #[tokio::test]
    async fn events_of_two_nodes_that_cross_on_the_bus_are_delivered_in_store_order() {
        let (app, store) = (app(), Arc::new(MemoryHistoryStore::new()));
        let (hubs, watcher, theirs) = one_event_and_a_watcher(&store, &app).await;
        // Another node's event at offset 3 arrives before this node's own append gets offset 2.
        let (position, frame) = theirs(3);
        hubs.hub(&app.id).deliver(&app, "feed-1", &frame, None, Some(position), None);
        publish(&hubs, &app, "{\"n\":2}").await;

        let seen = received(&watcher).await;
        let epoch = position.epoch;
        let positions: Vec<Option<String>> = seen.iter().map(|(_, _, position)| position.clone()).collect();
        assert_eq!(positions, vec![None, Some(format!("{epoch}:2")), Some(format!("{epoch}:3"))], "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_ahead_of_one_that_never_comes_waits_briefly_then_is_delivered() {
        let (app, store) = (app(), Arc::new(MemoryHistoryStore::new()));
        let (hubs, watcher, theirs) = one_event_and_a_watcher(&store, &app).await;
        assert_eq!(received(&watcher).await.len(), 1, "subscription_succeeded");
        // Offset 2 was stored by a node that died before publishing it.
        let (position, frame) = theirs(3);
        let arrived = tokio::time::Instant::now();
        hubs.hub(&app.id).deliver(&app, "feed-1", &frame, None, Some(position), None);

        let seen = received(&watcher).await;
        assert_eq!(seen, vec![item(3, &position.to_string())]);
        assert!(arrived.elapsed() >= REORDER_WAIT, "it waited for offset 2 first");
        let (position, frame) = theirs(4);
        hubs.hub(&app.id).deliver(&app, "feed-1", &frame, None, Some(position), None);
        assert_eq!(received(&watcher).await, vec![item(4, &position.to_string())], "in order again: no wait");
        assert!(arrived.elapsed() < REORDER_WAIT * 2);
    }

    /// The in-memory store, with reads that wait until the test lets them through: the moment a
    /// resume is being read is the one under test.
    #[derive(Debug)]
    struct SlowReads {
        store: MemoryHistoryStore,
        gate: Semaphore,
        /// A permit per read answered.
        answered: Semaphore,
    }

    impl SlowReads {
        fn new() -> Arc<Self> {
            Arc::new(SlowReads {
                store: MemoryHistoryStore::new(),
                gate: Semaphore::new(0),
                answered: Semaphore::new(0),
            })
        }
    }

    impl HistoryStore for SlowReads {
        fn append<'a>(
            &'a self,
            key: &'a ChannelKey,
            id: EventId,
            payload: &'a [u8],
            rule: &'a HistoryRule,
            attempt: Attempt,
        ) -> crate::history_store::StoreFuture<'a, Position> {
            self.store.append(key, id, payload, rule, attempt)
        }

        fn read_after<'a>(
            &'a self,
            key: &'a ChannelKey,
            after: Position,
            rule: &'a HistoryRule,
        ) -> crate::history_store::StoreFuture<'a, ReadAfter> {
            Box::pin(async move {
                self.gate.acquire().await.expect("never closed").forget();
                let answer = self.store.read_after(key, after, rule).await;
                self.answered.add_permits(1);
                answer
            })
        }

        fn head<'a>(
            &'a self,
            key: &'a ChannelKey,
            rule: &'a HistoryRule,
        ) -> crate::history_store::StoreFuture<'a, Option<Position>> {
            self.store.head(key, rule)
        }
    }

    /// Frames until (and with) `plexus:resume`.
    async fn received_until_resume(connection: &Connection) -> Vec<(String, String, Option<String>)> {
        let mut seen = received(connection).await;
        while !seen.iter().any(|(event, _, _)| event == "plexus:resume") {
            seen.extend(received(connection).await);
        }
        seen
    }

    fn item(n: u64, position: &str) -> (String, String, Option<String>) {
        ("item".to_owned(), format!("{{\"n\":{n}}}"), Some(position.to_owned()))
    }

    fn resumed(recovered: bool, position: &str) -> (String, String, Option<String>) {
        let data = format!("{{\"recovered\":{recovered},\"position\":\"{position}\"}}");
        ("plexus:resume".to_owned(), data, None)
    }

    /// A node that restarted over `store` (nothing of the channel in memory), a live subscriber
    /// and one resuming after the first of `published` events, whose read waits at the gate.
    async fn resuming_after_a_restart(
        store: &Arc<SlowReads>,
        app: &App,
        published: u64,
    ) -> (Hubs, Arc<Connection>, Arc<Connection>, u32) {
        let channel = ChannelName::parse("feed-1").unwrap();
        let before = Hubs::new(Arc::new(NoWebhooks)).with_history_store(store.clone());
        for n in 1..=published {
            publish(&before, app, &format!("{{\"n\":{n}}}")).await;
        }
        let key = ChannelKey::new(&app.id, channel.clone());
        let epoch = store.head(&key, &app.history[0]).await.unwrap().expect("stored").epoch;
        let hubs = Hubs::new(Arc::new(NoWebhooks)).with_history_store(store.clone());
        let hub = hubs.hub(&app.id);
        let live = hub.connect(app, 1 << 20).unwrap();
        hub.subscribe_from(app, &live, &channel, None, None, None).unwrap();
        let resumer = hub.connect(app, 1 << 20).unwrap();
        hub.subscribe_from(app, &resumer, &channel, None, Some(&format!("{epoch}:1")), None).unwrap();
        (hubs, live, resumer, epoch)
    }

    #[tokio::test]
    async fn events_published_while_a_resume_is_read_from_the_store_arrive_once_and_after_the_replay() {
        let (app, store) = (app(), SlowReads::new());
        let (hubs, live, resumer, epoch) = resuming_after_a_restart(&store, &app, 3).await;
        for n in 4..=5 {
            publish(&hubs, &app, &format!("{{\"n\":{n}}}")).await;
        }
        assert_eq!(received(&live).await.len(), 3, "subscription_succeeded, then 4 and 5 live");

        store.gate.add_permits(1);
        let seen = received_until_resume(&resumer).await;
        let at = |offset: u64| format!("{epoch}:{offset}");
        let expected = vec![
            ("pusher_internal:subscription_succeeded".to_owned(), "{}".to_owned(), None),
            item(2, &at(2)),
            item(3, &at(3)),
            item(4, &at(4)),
            item(5, &at(5)),
            resumed(true, &at(5)),
        ];
        assert_eq!(seen, expected, "4 and 5 were live while the store was read, and in its answer");

        publish(&hubs, &app, "{\"n\":6}").await;
        assert_eq!(received(&resumer).await, vec![item(6, &at(6))]);
    }

    #[tokio::test]
    async fn an_event_in_the_replay_that_reaches_this_node_later_is_not_delivered_twice() {
        let (app, store) = (app(), SlowReads::new());
        let (hubs, live, resumer, epoch) = resuming_after_a_restart(&store, &app, 2).await;
        let hub = hubs.hub(&app.id);
        // Another node stores offset 3; its fan-out has not reached this node yet.
        let key = ChannelKey::new(&app.id, ChannelName::parse("feed-1").unwrap());
        let payload = br#"{"event":"item","channel":"feed-1","data":"{\"n\":3}"}"#;
        let third =
            store.append(&key, EventId::random(), payload, &app.history[0], Attempt::First).await.unwrap();
        store.gate.add_permits(1);
        let at = |offset: u64| format!("{epoch}:{offset}");
        let seen = received_until_resume(&resumer).await;
        assert_eq!(seen[1..], [item(2, &at(2)), item(3, &at(3)), resumed(true, &at(3))]);

        let frame = stamp(&wsframe::frame(Opcode::Text, payload), &third.to_string());
        hub.deliver(&app, "feed-1", &frame, None, Some(third), None);
        publish(&hubs, &app, "{\"n\":4}").await;
        assert_eq!(received(&resumer).await, vec![item(4, &at(4))], "3 came in the replay");
        assert_eq!(received(&live).await[1..], [item(3, &at(3)), item(4, &at(4))]);
    }

    #[tokio::test]
    async fn a_resume_that_waits_too_long_gives_up_holding_and_says_it_did_not_recover() {
        let (app, store) = (app(), SlowReads::new());
        let (hubs, _live, resumer, _) = resuming_after_a_restart(&store, &app, 2).await;
        let published = RESUME_HOLD_EVENTS as u64 + 3;
        for n in 0..published {
            publish(&hubs, &app, &format!("{{\"n\":{n}}}")).await;
        }
        store.gate.add_permits(1);
        let seen = received_until_resume(&resumer).await;
        let live: Vec<&str> =
            seen.iter().filter(|(event, _, _)| event == "item").map(|(_, data, _)| data.as_str()).collect();
        let after_the_hold: Vec<String> =
            (RESUME_HOLD_EVENTS as u64..published).map(|n| format!("{{\"n\":{n}}}")).collect();
        assert_eq!(live, after_the_hold, "the events from the one that overflowed the hold on came live");
        let (event, data, _) = seen.last().unwrap();
        assert_eq!(event, "plexus:resume");
        assert!(data.starts_with("{\"recovered\":false,"), "{data}");
    }

    #[tokio::test]
    async fn events_held_while_the_store_says_the_position_is_gone_are_still_delivered() {
        let (app, store) = (app(), SlowReads::new());
        // The rule keeps 10: offset 1 is gone once 12 are stored.
        let (hubs, _live, resumer, epoch) = resuming_after_a_restart(&store, &app, 12).await;
        for n in 13..=14 {
            publish(&hubs, &app, &format!("{{\"n\":{n}}}")).await;
        }
        store.gate.add_permits(1);
        let seen = received_until_resume(&resumer).await;
        let at = |offset: u64| format!("{epoch}:{offset}");
        let expected = [resumed(false, &at(14)), item(13, &at(13)), item(14, &at(14))];
        assert_eq!(seen[1..], expected, "nothing was replayed, so no held event is dropped");
    }

    #[tokio::test]
    async fn a_read_for_an_earlier_subscription_does_not_answer_a_later_one() {
        let (app, store) = (app(), SlowReads::new());
        let (hubs, _live, resumer, epoch) = resuming_after_a_restart(&store, &app, 3).await;
        let hub = hubs.hub(&app.id);
        let channel = ChannelName::parse("feed-1").unwrap();
        assert!(hub.unsubscribe(&app, resumer.socket_id, &channel, None));
        let at = |offset: u64| format!("{epoch}:{offset}");
        hub.subscribe_from(&app, &resumer, &channel, None, Some(&at(2)), None).unwrap();

        store.gate.add_permits(1);
        store.answered.acquire().await.expect("never closed").forget();
        store.gate.add_permits(1);
        let seen = received_until_resume(&resumer).await;
        let succeeded = ("pusher_internal:subscription_succeeded".to_owned(), "{}".to_owned(), None);
        assert_eq!(seen, [succeeded.clone(), succeeded, item(3, &at(3)), resumed(true, &at(3))]);
    }
}
