//! History in a durable store (`[adapter] history = "bus"`: JetStream or Redis Streams): the
//! node that numbers a channel's events has the store number them instead, so positions are the
//! same on every node and outlive every node, and a client the in-memory tail cannot catch up
//! (this node restarted, or it never saw those events) is caught up from the store.
//!
//! - **Store, then fan out.** An event to number goes into the app's bounded append queue; one
//!   task appends what has queued up (one round trip for a batch, in queue order, so one
//!   channel's offsets follow its publish order), then stamps and delivers each event in that
//!   order exactly as an event numbered in memory. A publisher that waits (the HTTP API) learns
//!   whether the store took the event: if not, nothing was delivered and it answers 503.
//! - **When the store fails** for an event nobody waits for (a client event, or one another
//!   node handed over for numbering), it is still delivered live, without a position, and
//!   counted in `plexus_history_store_errors_total`: live subscribers lose nothing, and a later
//!   resume from a position around it says `recovered: false`.
//! - **Resuming from the store** happens on a task after the subscription, so an event
//!   published while the store answers may reach the client twice or before the replayed ones
//!   (`docs/cluster.md`, §4.5, describes the merge that closes this).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use plexus_protocol::filter::SubscriptionFilter;
use plexus_protocol::wsframe::{self, Opcode};
use plexus_protocol::{ChannelName, SocketId};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Duration;

use super::fanout::frame_passes;
use super::history::{resume_frame, stamp, Numbering};
use super::{AppHub, Connection};
use crate::app::HistoryRule;
use crate::cluster::Keep;
use crate::history_store::{Attempt, ChannelKey, EventId, HistoryStore, Position, ReadAfter, StoreError};

/// Events waiting for the store, per app. A full queue refuses more (503 to a waiting
/// publisher) rather than growing while the store is slow.
pub const HISTORY_APPEND_QUEUE: usize = 4096;

/// Most appends sent to the store in one round.
pub const HISTORY_APPEND_BATCH: usize = 64;

/// Resumes read from the store at once, per app; more wait their turn. A crowd reconnecting
/// after a deploy (or someone subscribing with made-up positions) queues here rather than
/// sending the store thousands of reads at a time.
pub const HISTORY_CONCURRENT_READS: usize = 16;

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

impl StoredHistory {
    /// Starts the appender of the hub `hub` will point to (it holds the hub weakly, so the task
    /// ends with the hub).
    pub(super) fn start(store: Arc<dyn HistoryStore>, app_id: Arc<str>, hub: Weak<AppHub>) -> StoredHistory {
        let (queue, pending) = mpsc::channel(HISTORY_APPEND_QUEUE);
        tokio::spawn(append_in_order(store.clone(), app_id, hub, pending));
        StoredHistory { store, queue, reads: Arc::new(Semaphore::new(HISTORY_CONCURRENT_READS)) }
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

    /// Catches `connection` up on `channel` from the durable store, from `after`, on a task; then
    /// tells it with `plexus:resume` whether that worked. `memory_head` answers when the store
    /// cannot. (Callers check that this hub has a store.)
    pub(super) fn resume_from_store(
        &self,
        rule: &HistoryRule,
        channel: &ChannelName,
        connection: &Arc<Connection>,
        after: Position,
        filter: Option<Arc<SubscriptionFilter>>,
        memory_head: String,
    ) {
        let Some(stored) = &self.stored else { return };
        let (store, rule, connection) = (stored.store.clone(), rule.clone(), connection.clone());
        let key = ChannelKey::new(&self.app_id, channel.clone());
        let reads = stored.reads.clone();
        tokio::spawn(async move {
            // The semaphore is never closed.
            let _turn = reads.acquire_owned().await;
            let (recovered, head) = match store.read_after(&key, after, &rule).await {
                Ok(ReadAfter::Events { events, head }) => {
                    for (position, payload) in events {
                        let frame = stamp(&wsframe::frame(Opcode::Text, &payload), &position.to_string());
                        if filter.as_deref().is_none_or(|filter| frame_passes(filter, &frame)) {
                            connection.outbound.push(frame);
                        }
                    }
                    (true, head.to_string())
                }
                Ok(ReadAfter::Gone { head }) => (false, head.map_or(memory_head, |head| head.to_string())),
                Err(error) => {
                    tracing::warn!(channel = %key, %error, "cannot resume from the history store");
                    (false, memory_head)
                }
            };
            connection.outbound.push(resume_frame(key.channel.as_str(), recovered, &head));
        });
    }
}

/// The appender: takes what has queued up, appends it in one round, then delivers each event in
/// queue order.
async fn append_in_order(
    store: Arc<dyn HistoryStore>,
    app_id: Arc<str>,
    hub: Weak<AppHub>,
    mut queue: mpsc::Receiver<PendingAppend>,
) {
    let mut batch = Vec::with_capacity(HISTORY_APPEND_BATCH);
    while queue.recv_many(&mut batch, HISTORY_APPEND_BATCH).await > 0 {
        let keys: Vec<ChannelKey> =
            batch.iter().map(|pending| ChannelKey::new(&app_id, pending.channel.clone())).collect();
        let payloads: Vec<Bytes> =
            batch.iter().map(|pending| wsframe::server_frame_payload(&pending.frame)).collect();
        // One lane per channel: a channel's events are appended one after another, so their
        // offsets follow publish order; different channels' lanes run at once.
        let mut lanes: Vec<Vec<usize>> = Vec::new();
        let mut lane_of: HashMap<&ChannelName, usize> = HashMap::new();
        for (index, pending) in batch.iter().enumerate() {
            let lane = *lane_of.entry(&pending.channel).or_insert_with(|| {
                lanes.push(Vec::new());
                lanes.len() - 1
            });
            lanes[lane].push(index);
        }
        let (store, keys, payloads, batch_ref) = (&store, &keys, &payloads, &batch);
        let appended = futures_util::future::join_all(lanes.iter().map(|lane| async move {
            let mut positions = Vec::with_capacity(lane.len());
            for &index in lane {
                let rule = &batch_ref[index].rule;
                let appended =
                    store.append(&keys[index], EventId::random(), &payloads[index], rule, Attempt::First);
                positions.push((index, appended.await));
            }
            positions
        }))
        .await;
        let mut positions: Vec<Option<Result<Position, StoreError>>> =
            (0..batch.len()).map(|_| None).collect();
        for (index, position) in appended.into_iter().flatten() {
            positions[index] = Some(position);
        }
        let Some(hub) = hub.upgrade() else { return };
        for (pending, position) in batch.drain(..).zip(positions) {
            match position.expect("every queued event is in one lane") {
                Ok(position) => {
                    let keep = pending.keep.as_ref().map(|(data, ttl)| Keep { data, ttl: *ttl });
                    let channel = pending.channel.as_str();
                    let numbering = Numbering::Stored(position);
                    hub.deliver_recorded(
                        &pending.rule,
                        channel,
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
                    tracing::warn!(app = %app_id, channel = %pending.channel, %error, "history store append failed");
                    hub.store_failed(pending);
                }
            }
        }
    }
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

    #[tokio::test]
    async fn an_event_the_store_took_is_delivered_even_behind_a_later_position_held_here() {
        let (app, store) = (app(), Arc::new(MemoryHistoryStore::new()));
        let channel = ChannelName::parse("feed-1").unwrap();
        let hubs = Hubs::new(Arc::new(NoWebhooks)).with_history_store(store.clone());
        publish(&hubs, &app, "{\"n\":1}").await;
        let hub = hubs.hub(&app.id);
        let watcher = hub.connect(&app, 1 << 20).unwrap();
        hub.subscribe_from(&app, &watcher, &channel, None, None, None).unwrap();
        let epoch = store
            .head(&ChannelKey::new(&app.id, channel.clone()), &app.history[0])
            .await
            .unwrap()
            .expect("one event stored")
            .epoch;

        // Another node, briefly numbering this channel too, stored offset 2 and its event
        // arrived here first, at offset 3 (its own offset 2 is about to be this node's).
        let theirs = Position { epoch, offset: 3 };
        let frame = stamp(
            &wsframe::frame(Opcode::Text, br#"{"event":"item","channel":"feed-1","data":"{}"}"#),
            &theirs.to_string(),
        );
        hub.deliver(&app, "feed-1", &frame, None, Some(theirs), None);
        publish(&hubs, &app, "{\"n\":2}").await;

        let seen = received(&watcher).await;
        let positions: Vec<Option<String>> = seen.iter().map(|(_, _, position)| position.clone()).collect();
        assert_eq!(positions, vec![None, Some(format!("{epoch}:3")), Some(format!("{epoch}:2"))], "{seen:?}");
    }
}
