//! Channel history in JetStream: a [`HistoryStore`] whose positions mean the same on every node
//! and across restarts of plexus and of NATS (`docs/cluster.md`, §4.2).
//!
//! This module owns the stream, the subject layout, the message headers and the append
//! protocol; whether a client can be caught up is decided by
//! [`plexus_core::history_store::read_after`], as for every store.
//!
//! - One stream per cluster prefix, `PLEXUS_HISTORY_<prefix>` (the prefix reduced to
//!   `[A-Za-z0-9_-]`, plus a hash of it when that changed anything, so two prefixes never share
//!   a stream), on the subjects `<prefix>.history.>`: file storage, direct gets, a 2 minute
//!   duplicate window, discard old. Its per-subject count and age limits are the largest any
//!   rule has asked of this store (raised on append when a rule needs more, never lowered);
//!   each rule's own size and ttl are applied on read.
//! - One subject per channel, `<prefix>.history.<app>.<channel>`, both escaped into single
//!   tokens (`token`).
//! - One message per event: the payload as given, and the headers `Nats-Msg-Id` (the event id:
//!   JetStream drops a second copy within the duplicate window and names the first),
//!   `Plexus-Epoch`, `Plexus-Offset`, and `Nats-Expected-Last-Subject-Sequence`, the stream
//!   sequence of the channel's previous message (0: none). The server stores the message only
//!   if that is still the channel's last one, so concurrent appenders (any node, any process)
//!   never share an offset; the loser reads the new last message and tries again. Kept with
//!   the message, the same header links each event to the one before it.
//! - A read finds the newest event, then the events the client missed: a few by walking back
//!   through those links (a direct get each), more through one short-lived consumer over the
//!   channel's subject (see `WALK_BACK_LIMIT`).
//! - A channel whose last message is gone or older than its rule's ttl holds nothing: its next
//!   event starts a new random epoch at offset 1. Otherwise epoch and offset continue from the
//!   last message's headers, which is what keeps positions across restarts.
//! - Every operation is bounded (`OPERATION_TIMEOUT`) and fails at once while the client is
//!   disconnected; async-nats reconnects by itself, so the store heals without reopening.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::connection::State;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind, GetStreamErrorKind};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{
    Config, DirectGetError, DirectGetErrorKind, DiscardPolicy, LastRawMessageError, LastRawMessageErrorKind,
    StorageType, Stream,
};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, Event, HeaderMap};
use bytes::Bytes;
use futures_util::StreamExt;
use plexus_core::app::HistoryRule;
use plexus_core::cluster::redact_url;
use plexus_core::history_store::{
    random_epoch, read_after, Attempt, ChannelKey, EventId, HistoryStore, Position, ReadAfter, Retained,
    StoreError, StoreFuture,
};
use tokio::sync::Mutex as AsyncMutex;

use crate::TransportError;

/// How long one JetStream request (a publish's ack, a get, a stream update) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one store operation may take in all, retries included: callers answer HTTP
/// requests meanwhile (`docs/cluster.md` §4.6).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long JetStream remembers an event id: a retried append within it stores nothing twice.
/// Plexus retries within seconds (`append_timeout`); the margin covers slow nodes. The server
/// refuses a stream whose `max_age` is below this window, so it is also the least `max_age`.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long an append keeps retrying after losing races to other appenders of the same channel
/// (other nodes: every node appends what is published on it). Each loss means another append
/// succeeded; an appender that knows its tail needs one round trip where a loser needs two (it
/// reads the new tail first), so a loser waits out the other's burst rather than counting
/// attempts, which a steady stream of the other's appends would exhaust.
const CONTENDED_FOR: Duration = Duration::from_secs(2);

/// The longest pause, before jitter, between lost races: pauses double from 100 µs up to this.
const MAX_BACKOFF: Duration = Duration::from_millis(10);

/// Channels whose last message is remembered. Past this, channels nobody is appending to are
/// forgotten: the next append to one of them first reads its last message again.
const MAX_CACHED_CHANNELS: usize = 4096;

/// Reads missing up to this many events walk back from the newest one, a direct get per event
/// (about 0.15 ms each on loopback); longer ones read the channel's retained events through one
/// consumer (on loopback about 2.5 ms for a channel of 100 events, 10 ms for 1,000, whatever
/// the gap). The two cost about the same here.
const WALK_BACK_LIMIT: u64 = 16;

/// How many of a channel's events a consumer read takes when the stream was set (by an
/// operator) to keep any number per channel.
const UNLIMITED_READ: usize = 10_000;

/// How long the server keeps a read's consumer that was not deleted (its reader died).
const CONSUMER_INACTIVE_THRESHOLD: Duration = Duration::from_secs(10);

const EPOCH_HEADER: &str = "Plexus-Epoch";
const OFFSET_HEADER: &str = "Plexus-Offset";
/// Set on publish as the condition; kept with the message, it names the previous one.
const PREVIOUS_HEADER: &str = "Nats-Expected-Last-Subject-Sequence";

/// How the history stream is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOptions {
    /// JetStream replicas of the stream: 1 on a single server, 3 on a NATS cluster to survive
    /// the loss of a server.
    pub replicas: usize,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        HistoryOptions { replicas: 1 }
    }
}

/// History channels' events in one JetStream stream, shared by every node of the cluster
/// `prefix` on the same NATS (or NATS cluster).
pub struct JetStreamHistory {
    client: Client,
    context: jetstream::Context,
    stream: Stream<()>,
    shape: Shape,
    /// `<prefix>.history`, the subjects' first tokens.
    subjects: String,
    /// The stream's limits as last set or seen; held while raising them, so one update runs
    /// at a time.
    limits: AsyncMutex<Limits>,
    /// Per channel subject, its last message as far as this store knows. Each one's lock
    /// serialises this process's appends to that channel.
    tails: Mutex<HashMap<String, Arc<AsyncMutex<Tail>>>>,
}

impl fmt::Debug for JetStreamHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamHistory")
            .field("stream", &self.shape.name)
            .field("subjects", &self.subjects)
            .finish_non_exhaustive()
    }
}

/// What a channel's last message tells the next append.
#[derive(Debug, Clone, Copy)]
enum Tail {
    /// Not known here (never read, or an append's outcome is in doubt): read it first.
    Unknown,
    /// The subject holds no message.
    Empty,
    Last(Last),
}

#[derive(Debug, Clone, Copy)]
struct Last {
    epoch: u32,
    offset: u64,
    /// Its stream sequence, which the next append expects.
    seq: u64,
    /// When it was stored, in nanoseconds since the Unix epoch.
    stored_at: i128,
}

/// One of our messages, read back.
#[derive(Debug)]
struct Stored {
    subject: String,
    epoch: u32,
    offset: u64,
    seq: u64,
    /// The stream sequence of the channel's message before it (0: none).
    previous: u64,
    stored_at: i128,
    payload: Bytes,
}

impl Stored {
    fn last(&self) -> Last {
        Last { epoch: self.epoch, offset: self.offset, seq: self.seq, stored_at: self.stored_at }
    }

    fn position(&self) -> Position {
        Position { epoch: self.epoch, offset: self.offset }
    }
}

/// The fixed part of the stream's configuration.
#[derive(Debug)]
struct Shape {
    name: String,
    subjects: String,
    replicas: usize,
}

/// The stream's per-subject count and age limits; zero or less means unlimited (an operator
/// may have set that; it is never lowered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    per_subject: i64,
    max_age: Duration,
}

impl Limits {
    /// What a stream just created starts with; the first append raises it to its rule.
    const INITIAL: Limits = Limits { per_subject: 1, max_age: DUPLICATE_WINDOW };

    fn of(config: &Config) -> Limits {
        Limits { per_subject: config.max_messages_per_subject, max_age: config.max_age }
    }

    fn for_rule(rule: &HistoryRule) -> Limits {
        Limits {
            per_subject: i64::try_from(rule.size.max(1)).unwrap_or(i64::MAX),
            max_age: Duration::from_secs(rule.ttl_secs).max(DUPLICATE_WINDOW),
        }
    }

    fn covers(&self, wanted: Limits) -> bool {
        (self.per_subject <= 0 || self.per_subject >= wanted.per_subject)
            && (self.max_age.is_zero() || self.max_age >= wanted.max_age)
    }

    /// The larger of both, unlimited winning.
    fn raise(self, wanted: Limits) -> Limits {
        Limits {
            per_subject: if self.per_subject <= 0 {
                self.per_subject
            } else {
                self.per_subject.max(wanted.per_subject)
            },
            max_age: if self.max_age.is_zero() { self.max_age } else { self.max_age.max(wanted.max_age) },
        }
    }
}

impl Shape {
    /// `config` with our settings and at least `limits`.
    fn apply(&self, mut config: Config, limits: Limits) -> Config {
        let limits = Limits::of(&config).raise(limits);
        config.name.clone_from(&self.name);
        config.subjects = vec![self.subjects.clone()];
        config.storage = StorageType::File;
        config.allow_direct = true;
        config.duplicate_window = DUPLICATE_WINDOW;
        config.num_replicas = self.replicas;
        config.discard = DiscardPolicy::Old;
        config.max_messages_per_subject = limits.per_subject;
        config.max_age = limits.max_age;
        config
    }
}

/// Why an operation failed, beyond what async-nats reports.
#[derive(Debug, thiserror::Error)]
enum HistoryError {
    #[error("not connected to NATS")]
    Disconnected,
    #[error("no answer from JetStream within {0:?}")]
    TimedOut(Duration),
    #[error("message {seq} on {subject} was not written by plexus: {why}")]
    Foreign { subject: String, seq: u64, why: &'static str },
    #[error("{attempts} appends in a row to {subject} lost to other appenders within {CONTENDED_FOR:?}")]
    Contended { subject: String, attempts: u32 },
    #[error("event {id} was already stored on another channel ({subject})")]
    IdOnOtherChannel { id: EventId, subject: String },
    #[error("event {id} was stored at stream sequence {seq}, which is no longer retained")]
    NoLongerRetained { id: EventId, seq: u64 },
}

impl JetStreamHistory {
    /// The history of the cluster named `prefix` over `client`: creates its stream, or brings
    /// an existing one to this configuration (keeping larger limits).
    pub async fn new(
        client: Client,
        prefix: &str,
        options: HistoryOptions,
    ) -> Result<JetStreamHistory, StoreError> {
        crate::validate_prefix(prefix).map_err(StoreError::refused)?;
        let mut context = jetstream::new(client.clone());
        context.set_timeout(REQUEST_TIMEOUT);
        let shape = Shape {
            name: stream_name(prefix),
            subjects: format!("{prefix}.history.>"),
            replicas: options.replicas.max(1),
        };
        let limits = bounded(ensure_stream(&context, &shape, Limits::INITIAL)).await?;
        let stream = context.get_stream_no_info(&shape.name).await.map_err(StoreError::refused)?;
        Ok(JetStreamHistory {
            client,
            context,
            stream,
            shape,
            subjects: format!("{prefix}.history"),
            limits: AsyncMutex::new(limits),
            tails: Mutex::new(HashMap::new()),
        })
    }

    /// [`JetStreamHistory::new`] over a client of its own for the NATS server(s) at `url`,
    /// opened as [`crate::connect_with`] opens the transport's (TLS, timeouts, reconnecting).
    pub async fn connect(
        url: &str,
        ca_file: Option<&Path>,
        prefix: &str,
        options: HistoryOptions,
    ) -> Result<JetStreamHistory, TransportError> {
        crate::validate_prefix(prefix)?;
        let connect_error =
            |reason: String| TransportError::Connect { bus: "NATS", url: redact_url(url, true), reason };
        let client_options = crate::connect_options(url, ca_file, format!("plexus {prefix} history"))
            .map_err(connect_error)?
            .event_callback(|event| async move { log_event(event) });
        let limit = crate::CONNECT_TIMEOUT + Duration::from_secs(1);
        let client = tokio::time::timeout(limit, client_options.connect(url))
            .await
            .map_err(|_| connect_error(format!("not connected within {limit:?}")))?
            .map_err(|err| connect_error(plexus_tls::describe(&err)))?;
        JetStreamHistory::new(client, prefix, options)
            .await
            .map_err(|err| connect_error(plexus_tls::describe(&err)))
    }

    /// The name of the stream holding the events.
    pub fn stream_name(&self) -> &str {
        &self.shape.name
    }

    fn subject(&self, key: &ChannelKey) -> String {
        format!("{}.{}.{}", self.subjects, token(&key.app), token(key.channel.as_str()))
    }

    /// Fails at once while the client is known to be disconnected, rather than after a timeout.
    fn check_connected(&self) -> Result<(), StoreError> {
        match self.client.connection_state() {
            State::Disconnected => Err(StoreError::unavailable(HistoryError::Disconnected)),
            State::Connected | State::Pending => Ok(()),
        }
    }

    /// The channel's tail slot, shared by this store's appends to it.
    fn tail(&self, subject: &str) -> Arc<AsyncMutex<Tail>> {
        let mut tails = self.tails.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if tails.len() >= MAX_CACHED_CHANNELS && !tails.contains_key(subject) {
            // A slot only the map holds has no append running or waiting.
            tails.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        tails.entry(subject.to_owned()).or_insert_with(|| Arc::new(AsyncMutex::new(Tail::Unknown))).clone()
    }

    /// Raises the stream's limits when `rule` needs more than they give.
    async fn ensure_limits(&self, rule: &HistoryRule) -> Result<(), StoreError> {
        let wanted = Limits::for_rule(rule);
        let mut limits = self.limits.lock().await;
        if !limits.covers(wanted) {
            *limits = ensure_stream(&self.context, &self.shape, limits.raise(wanted)).await?;
        }
        Ok(())
    }

    async fn append(
        &self,
        key: &ChannelKey,
        id: EventId,
        payload: &[u8],
        rule: &HistoryRule,
    ) -> Result<Position, StoreError> {
        self.check_connected()?;
        self.ensure_limits(rule).await?;
        let subject = self.subject(key);
        let slot = self.tail(&subject);
        let mut tail = slot.lock().await;
        let mut recreated = false;
        let contended_until = tokio::time::Instant::now() + CONTENDED_FOR;
        let mut attempts = 0u32;
        while attempts == 0 || tokio::time::Instant::now() < contended_until {
            if attempts > 0 {
                // Jittered, so two losers do not collide again in step.
                let ceiling = Duration::from_micros(100 << attempts.min(7)).min(MAX_BACKOFF);
                let jitter = u64::from(random_epoch()) % (ceiling.as_micros() as u64 + 1);
                tokio::time::sleep(Duration::from_micros(jitter)).await;
            }
            attempts += 1;
            // Unknown until the outcome is: should this future be dropped mid-publish, the
            // next append reads the last message instead of trusting a stale one.
            let known = match std::mem::replace(&mut *tail, Tail::Unknown) {
                Tail::Unknown => self.last_on_leader(&subject).await?,
                known => known,
            };
            let (epoch, offset, expected) = match known {
                Tail::Last(last) if !expired(last.stored_at, now(), rule) => {
                    (last.epoch, last.offset + 1, last.seq)
                }
                // Everything expired (the message may still be kept for a longer rule): a new
                // epoch, still chained to the subject's real last message.
                Tail::Last(last) => (random_epoch(), 1, last.seq),
                Tail::Empty | Tail::Unknown => (random_epoch(), 1, 0),
            };
            match self.publish(&subject, id, epoch, offset, expected, payload).await {
                // JetStream checks the id before the expected sequence (nats-server 2.9.10),
                // so a repeat is recognised even when this store's tail is stale.
                Ok(ack) if ack.duplicate => return self.original(&subject, id, ack.sequence).await,
                Ok(ack) => {
                    *tail = Tail::Last(Last { epoch, offset, seq: ack.sequence, stored_at: now() });
                    return Ok(Position { epoch, offset });
                }
                Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {}
                // Nobody listens on the subjects: the stream was deleted. Create it again once.
                Err(err) if err.kind() == PublishErrorKind::StreamNotFound && !recreated => {
                    recreated = true;
                    let mut limits = self.limits.lock().await;
                    *limits = ensure_stream(&self.context, &self.shape, *limits).await?;
                }
                Err(err) => return Err(publish_error(err)),
            }
        }
        Err(StoreError::unavailable(HistoryError::Contended { subject, attempts }))
    }

    async fn publish(
        &self,
        subject: &str,
        id: EventId,
        epoch: u32,
        offset: u64,
        expected: u64,
        payload: &[u8],
    ) -> Result<PublishAck, PublishError> {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, id.to_string());
        headers.insert(PREVIOUS_HEADER, expected.to_string());
        headers.insert(EPOCH_HEADER, epoch.to_string());
        headers.insert(OFFSET_HEADER, offset.to_string());
        let ack = self
            .context
            .publish_with_headers(subject.to_owned(), headers, Bytes::copy_from_slice(payload))
            .await?;
        ack.await
    }

    /// The position of event `id`, which JetStream says it already holds at `seq`.
    async fn original(&self, subject: &str, id: EventId, seq: u64) -> Result<Position, StoreError> {
        let message = match self.stream.get_raw_message(seq).await {
            Ok(message) => message,
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Err(StoreError::unavailable(HistoryError::NoLongerRetained { id, seq }));
            }
            Err(err) => return Err(raw_get_error(err)),
        };
        let stored = parse(message)?;
        if stored.subject != subject {
            return Err(StoreError::refused(HistoryError::IdOnOtherChannel { id, subject: stored.subject }));
        }
        Ok(stored.position())
    }

    /// The subject's last message, from the stream's leader (an append must not build on a
    /// replica's older view).
    async fn last_on_leader(&self, subject: &str) -> Result<Tail, StoreError> {
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Tail::Last(parse(message)?.last())),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(Tail::Empty),
            Err(err) => Err(raw_get_error(err)),
        }
    }

    /// The subject's last message, from any replica.
    async fn last_direct(&self, subject: &str) -> Result<Option<Stored>, StoreError> {
        found(self.stream.direct_get_last_for_subject(subject).await)
    }

    async fn read(
        &self,
        key: &ChannelKey,
        after: Position,
        rule: &HistoryRule,
    ) -> Result<ReadAfter, StoreError> {
        self.check_connected()?;
        let subject = self.subject(key);
        let (now, ttl) = (now(), Duration::from_secs(rule.ttl_secs));
        let Some(head) = self.last_direct(&subject).await? else { return Ok(ReadAfter::Gone { head: None }) };
        if age(head.stored_at, now) >= ttl {
            return Ok(ReadAfter::Gone { head: None });
        }
        let (epoch, newest) = (head.epoch, head.offset);
        let missed = newest.checked_sub(after.offset).filter(|_| after.epoch == epoch);
        let retained = match missed {
            // Up to date, or not to be caught up whatever is retained (another epoch, ahead,
            // too far behind): `read_after` needs no events to say so.
            None | Some(0) => Vec::new(),
            Some(missed) if missed > rule.size as u64 => Vec::new(),
            Some(missed) if missed <= WALK_BACK_LIMIT => self.walk_back(head, after, now, ttl).await?,
            Some(_) => self.read_forward(&head, after, rule).await?,
        };
        Ok(read_after(epoch, newest, after, retained, rule))
    }

    /// The events after `after` up to `head`, oldest first, read by walking back from `head`
    /// through each event's predecessor (one direct get each), only while the chain holds and
    /// the events are young enough: anything else makes the read Gone anyway.
    async fn walk_back(
        &self,
        head: Stored,
        after: Position,
        now: i128,
        ttl: Duration,
    ) -> Result<Vec<Retained>, StoreError> {
        let mut retained = Vec::new();
        let mut current = head;
        loop {
            let (offset, previous) = (current.offset, current.previous);
            retained.push((offset, age(current.stored_at, now), current.payload));
            if offset <= after.offset + 1 || previous == 0 {
                break;
            }
            let Some(before) = found(self.stream.direct_get(previous).await)? else { break };
            let chained = before.subject == current.subject
                && before.epoch == current.epoch
                && before.offset + 1 == offset;
            if !chained || age(before.stored_at, now) >= ttl {
                break;
            }
            current = before;
        }
        retained.reverse();
        Ok(retained)
    }

    /// The channel's retained events after `after` up to `head`, oldest first, read by one
    /// short-lived consumer over the channel's subject: a few round trips whatever the gap.
    async fn read_forward(
        &self,
        head: &Stored,
        after: Position,
        rule: &HistoryRule,
    ) -> Result<Vec<Retained>, StoreError> {
        let consumer = self
            .stream
            .create_consumer(pull::Config {
                filter_subject: head.subject.clone(),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                memory_storage: true,
                // The server drops it by itself should the delete below not happen.
                inactive_threshold: CONSUMER_INACTIVE_THRESHOLD,
                ..pull::Config::default()
            })
            .await
            .map_err(StoreError::unavailable)?;
        // Older events of the channel come first: at most the stream's per-subject limit.
        let limit = self.limits.lock().await.per_subject;
        let limit = usize::try_from(limit).ok().filter(|limit| *limit > 0).unwrap_or(UNLIMITED_READ);
        let count = limit.max(rule.size.saturating_add(1));
        let read = async {
            let (now, mut retained, mut fetched) = (now(), Vec::new(), 0);
            // A fetch answers with what the server has ready, which under load can be part of
            // the batch: fetch again until the head is reached or nothing more comes.
            'fetches: while fetched < count {
                let mut messages = consumer
                    .fetch()
                    .max_messages(count - fetched)
                    .messages()
                    .await
                    .map_err(StoreError::unavailable)?;
                let before = fetched;
                while let Some(message) = messages.next().await {
                    fetched += 1;
                    let stored = parse_delivered(message.map_err(StoreError::unavailable)?)?;
                    if stored.seq > head.seq {
                        break 'fetches;
                    }
                    if stored.epoch == head.epoch && stored.offset > after.offset {
                        retained.push((stored.offset, age(stored.stored_at, now), stored.payload));
                    }
                    if stored.seq == head.seq {
                        break 'fetches;
                    }
                }
                if fetched == before {
                    break;
                }
            }
            Ok(retained)
        }
        .await;
        let name = consumer.cached_info().name.clone();
        if let Err(err) = self.stream.delete_consumer(&name).await {
            tracing::debug!(%err, consumer = name, "deleting a history read's consumer failed; it expires");
        }
        read
    }

    async fn newest(&self, key: &ChannelKey, rule: &HistoryRule) -> Result<Option<Position>, StoreError> {
        self.check_connected()?;
        let head = self.last_direct(&self.subject(key)).await?;
        Ok(head.filter(|head| !expired(head.stored_at, now(), rule)).map(|head| head.position()))
    }
}

impl HistoryStore for JetStreamHistory {
    fn append<'a>(
        &'a self,
        key: &'a ChannelKey,
        id: EventId,
        payload: &'a [u8],
        rule: &'a HistoryRule,
        // A first append and a retry are the same request here: JetStream recognises the id
        // either way, at no extra cost.
        _attempt: Attempt,
    ) -> StoreFuture<'a, Position> {
        Box::pin(bounded(self.append(key, id, payload, rule)))
    }

    fn read_after<'a>(
        &'a self,
        key: &'a ChannelKey,
        after: Position,
        rule: &'a HistoryRule,
    ) -> StoreFuture<'a, ReadAfter> {
        Box::pin(bounded(self.read(key, after, rule)))
    }

    fn head<'a>(&'a self, key: &'a ChannelKey, rule: &'a HistoryRule) -> StoreFuture<'a, Option<Position>> {
        Box::pin(bounded(self.newest(key, rule)))
    }
}

/// Creates the stream, or brings an existing one to `shape` with at least `limits`, and answers
/// the limits it then has.
async fn ensure_stream(
    context: &jetstream::Context,
    shape: &Shape,
    limits: Limits,
) -> Result<Limits, StoreError> {
    // Two nodes starting at once may both find no stream; the one whose create fails looks
    // again and updates instead.
    for _ in 0..3 {
        match context.get_stream(&shape.name).await {
            Ok(stream) => {
                let current = stream.cached_info().config.clone();
                let wanted = shape.apply(current.clone(), limits);
                if wanted == current {
                    return Ok(Limits::of(&current));
                }
                let info = context.update_stream(wanted).await.map_err(stream_error)?;
                return Ok(Limits::of(&info.config));
            }
            Err(err) => match err.kind() {
                GetStreamErrorKind::JetStream(error) if error.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                }
                GetStreamErrorKind::JetStream(error) => return Err(api_error(&error)),
                GetStreamErrorKind::Request => return Err(StoreError::unavailable(err)),
                GetStreamErrorKind::EmptyName | GetStreamErrorKind::InvalidStreamName => {
                    return Err(StoreError::refused(err));
                }
            },
        }
        let config = Config {
            max_messages_per_subject: limits.per_subject,
            max_age: limits.max_age,
            ..Config::default()
        };
        match context.create_stream(shape.apply(config, limits)).await {
            Ok(stream) => return Ok(Limits::of(&stream.cached_info().config)),
            Err(err)
                if matches!(err.kind(), CreateStreamErrorKind::JetStream(error)
                if error.error_code() == ErrorCode::STREAM_NAME_EXIST) => {}
            Err(err) => return Err(stream_error(err)),
        }
    }
    Err(StoreError::unavailable(format!("stream {} kept changing while being set up", shape.name)))
}

/// Bounds a store operation: no answer within [`OPERATION_TIMEOUT`] means unavailable.
async fn bounded<T>(
    operation: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(OPERATION_TIMEOUT, operation)
        .await
        .unwrap_or_else(|_| Err(StoreError::unavailable(HistoryError::TimedOut(OPERATION_TIMEOUT))))
}

/// The stream's name for `prefix`: stream names allow fewer characters than subjects, so the
/// others become `_`, and then a hash of the prefix keeps `a.b` and `a_b` apart.
fn stream_name(prefix: &str) -> String {
    let sanitised: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    if sanitised == prefix {
        format!("PLEXUS_HISTORY_{sanitised}")
    } else {
        format!("PLEXUS_HISTORY_{sanitised}_{:08x}", fnv1a(prefix.as_bytes()) as u32)
    }
}

/// FNV-1a, 64 bits: stable across Rust releases, unlike `std`'s hasher, since stream names
/// must not change with the toolchain.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// `raw` as one subject token: `%`, `.`, `*`, `>`, whitespace and control characters become
/// `%XX` per UTF-8 byte, so distinct names stay distinct tokens (`a.b` is not `a` then `b`,
/// nor `a%2Eb`). The empty name, which no escaping produces, is `%`.
fn token(raw: &str) -> String {
    if raw.is_empty() {
        return "%".to_owned();
    }
    let mut token = String::with_capacity(raw.len());
    for c in raw.chars() {
        if matches!(c, '%' | '.' | '*' | '>') || c.is_whitespace() || c.is_control() {
            let mut utf8 = [0; 4];
            for byte in c.encode_utf8(&mut utf8).bytes() {
                token.push_str(&format!("%{byte:02X}"));
            }
        } else {
            token.push(c);
        }
    }
    token
}

/// Reads our headers back; a message without them is someone else's, and an error.
fn parse(message: StreamMessage) -> Result<Stored, StoreError> {
    let time = message.time.unix_timestamp_nanos();
    parse_parts(message.subject.to_string(), message.sequence, Some(&message.headers), time, message.payload)
}

/// [`parse`] for a message a consumer delivered.
fn parse_delivered(message: jetstream::Message) -> Result<Stored, StoreError> {
    let info = message.info().map_err(StoreError::refused)?;
    let (seq, time) = (info.stream_sequence, info.published.unix_timestamp_nanos());
    let message = message.message;
    parse_parts(message.subject.to_string(), seq, message.headers.as_ref(), time, message.payload)
}

fn parse_parts(
    subject: String,
    seq: u64,
    headers: Option<&HeaderMap>,
    stored_at: i128,
    payload: Bytes,
) -> Result<Stored, StoreError> {
    let foreign = |why| StoreError::refused(HistoryError::Foreign { subject: subject.clone(), seq, why });
    let header = |name: &str| headers?.get(name).map(|value| value.as_str().trim());
    let epoch =
        header(EPOCH_HEADER).and_then(|v| v.parse().ok()).ok_or_else(|| foreign("no Plexus-Epoch"))?;
    let offset = header(OFFSET_HEADER)
        .and_then(|v| v.parse().ok())
        .filter(|offset| *offset > 0)
        .ok_or_else(|| foreign("no Plexus-Offset"))?;
    let previous = header(PREVIOUS_HEADER)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| foreign("no Nats-Expected-Last-Subject-Sequence"))?;
    Ok(Stored { subject, epoch, offset, seq, previous, stored_at, payload })
}

/// A direct get's message, `None` when there is none.
fn found(result: Result<StreamMessage, DirectGetError>) -> Result<Option<Stored>, StoreError> {
    match result {
        Ok(message) => parse(message).map(Some),
        Err(err) => match err.kind() {
            DirectGetErrorKind::NotFound => Ok(None),
            DirectGetErrorKind::TimedOut
            | DirectGetErrorKind::Request
            | DirectGetErrorKind::ErrorResponse(..) => Err(StoreError::unavailable(err)),
            DirectGetErrorKind::InvalidSubject | DirectGetErrorKind::Other => Err(StoreError::refused(err)),
        },
    }
}

fn raw_get_error(err: LastRawMessageError) -> StoreError {
    match err.kind() {
        LastRawMessageErrorKind::JetStream(error) => api_error(&error),
        // Request failures (timeouts, no responders) arrive as `Other`.
        LastRawMessageErrorKind::Other | LastRawMessageErrorKind::NoMessageFound => {
            StoreError::unavailable(err)
        }
        LastRawMessageErrorKind::InvalidSubject => StoreError::refused(err),
    }
}

fn publish_error(err: PublishError) -> StoreError {
    match err.kind() {
        PublishErrorKind::MaxPayloadExceeded | PublishErrorKind::WrongLastMessageId => {
            StoreError::refused(err)
        }
        PublishErrorKind::Other => {
            let api =
                std::error::Error::source(&err).and_then(|source| source.downcast_ref::<jetstream::Error>());
            match api {
                Some(error) => api_error(error),
                None => StoreError::unavailable(err),
            }
        }
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::WrongLastSequence
        | PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => StoreError::unavailable(err),
    }
}

fn stream_error(err: CreateStreamError) -> StoreError {
    match err.kind() {
        CreateStreamErrorKind::JetStream(error) => api_error(&error),
        CreateStreamErrorKind::TimedOut
        | CreateStreamErrorKind::JetStreamUnavailable
        | CreateStreamErrorKind::Response
        | CreateStreamErrorKind::NotFound => StoreError::unavailable(err),
        CreateStreamErrorKind::EmptyStreamName
        | CreateStreamErrorKind::InvalidStreamName
        | CreateStreamErrorKind::DomainAndExternalSet
        | CreateStreamErrorKind::ResponseParse => StoreError::refused(err),
    }
}

/// A JetStream API error: a cluster between leaders is unavailable for now; anything else is
/// the server refusing (too large, storage full, a configuration it will not take).
fn api_error(error: &jetstream::Error) -> StoreError {
    let transient = [
        ErrorCode::CLUSTER_NOT_AVAILABLE,
        ErrorCode::CLUSTER_NOT_LEADER,
        ErrorCode::CLUSTER_NOT_ACTIVE,
        ErrorCode::CLUSTER_INCOMPLETE,
        ErrorCode::CLUSTER_NO_PEERS,
        ErrorCode::RAFT_GENERAL,
    ];
    if transient.contains(&error.error_code()) {
        StoreError::unavailable(error.clone())
    } else {
        StoreError::refused(error.clone())
    }
}

fn log_event(event: Event) {
    match event {
        Event::Disconnected => tracing::warn!("the history store lost its NATS connection; reconnecting"),
        Event::Connected => tracing::debug!("the history store is connected to NATS"),
        other => tracing::debug!(%other, "history store NATS connection event"),
    }
}

/// Now, in nanoseconds since the Unix epoch (the unit of JetStream's timestamps).
fn now() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| i128::try_from(since.as_nanos()).unwrap_or(i128::MAX))
}

/// How long ago `stored_at` was; a message stamped ahead of this clock is brand new.
fn age(stored_at: i128, now: i128) -> Duration {
    Duration::from_nanos(u64::try_from(now.saturating_sub(stored_at)).unwrap_or(0))
}

fn expired(stored_at: i128, now: i128, rule: &HistoryRule) -> bool {
    age(stored_at, now) >= Duration::from_secs(rule.ttl_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_and_distinct() {
        let names =
            ["history-a.b", "history-a_b", "history-a%2Eb", "a*", "a>", "a b", "a\tb", "x.y", "", "%"];
        let tokens: Vec<String> = names.iter().map(|name| token(name)).collect();
        for token in &tokens {
            assert!(!token.is_empty() && !token.contains(['.', ' ', '\t', '*', '>']), "{token}");
        }
        let distinct: std::collections::HashSet<&String> = tokens.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{tokens:?}");
        assert_eq!(token("history-a.b"), "history-a%2Eb");
        assert_eq!(token("presence-ünïcode"), "presence-ünïcode");
    }

    #[test]
    fn stream_names_are_valid_and_keep_prefixes_apart() {
        assert_eq!(stream_name("plexus"), "PLEXUS_HISTORY_plexus");
        assert_eq!(stream_name("prod-eu_1"), "PLEXUS_HISTORY_prod-eu_1");
        let dotted = stream_name("prod.eu");
        assert!(
            dotted.starts_with("PLEXUS_HISTORY_prod_eu_")
                && dotted.len() == "PLEXUS_HISTORY_prod_eu_".len() + 8
        );
        assert_ne!(dotted, stream_name("prod_eu"));
        assert_ne!(dotted, stream_name("prod:eu"));
        assert_eq!(dotted, stream_name("prod.eu"), "stable");
    }

    #[test]
    fn limits_only_grow_and_unlimited_stays() {
        let rule = |size, ttl_secs| HistoryRule { prefix: String::new(), size, ttl_secs };
        let small = Limits::for_rule(&rule(10, 1));
        assert_eq!(
            small,
            Limits { per_subject: 10, max_age: DUPLICATE_WINDOW },
            "max_age ≥ the duplicate window"
        );
        let large = Limits::for_rule(&rule(100, 600));
        assert!(!small.covers(large) && large.covers(small));
        assert_eq!(small.raise(large), large);
        assert_eq!(large.raise(small), large);
        let unlimited = Limits { per_subject: -1, max_age: Duration::ZERO };
        assert!(unlimited.covers(large));
        assert_eq!(unlimited.raise(large), unlimited);
    }
}
