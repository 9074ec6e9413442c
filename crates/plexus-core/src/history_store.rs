//! The history store seam: where a history channel's events are kept, and who gives each event
//! its position (`docs/cluster.md`, §4). Three stores implement it: [`MemoryHistoryStore`] here
//! (one process; nothing else to run), JetStream in `plexus-nats` and Redis Streams in
//! `plexus-redis`, whose positions mean the same on every node and across restarts. One contract
//! suite (`plexus-transport-tests`, `history_store_contract!`) holds all three to the same
//! answers.
//!
//! A store keeps an event's JSON payload without its `position`; whoever reads it back stamps
//! the position in. Positions are `"{epoch}:{offset}"` as clients already know them: offsets
//! consecutive from 1, the epoch random and chosen by the store when a channel's events start
//! (never written before, or everything expired), so a position from an older run of the
//! channel never matches.
//!
//! Whether a client at some position can be caught up is decided once, by [`read_after`],
//! from what a store has retained: every store applies its channel's [`HistoryRule`] (the last
//! `size` events, none older than `ttl_secs`) the same way there.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use plexus_protocol::ChannelName;
use tokio::time::{Duration, Instant};

use crate::app::HistoryRule;
pub use crate::hub::Position;

/// What a store operation resolves to.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A boxed error from a store's client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One history channel of one app.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    pub app: Arc<str>,
    pub channel: ChannelName,
}

impl ChannelKey {
    pub fn new(app: &str, channel: ChannelName) -> Self {
        ChannelKey { app: app.into(), channel }
    }
}

impl fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.channel)
    }
}

/// An event's identity across attempts to store it: drawn once per event per channel, so an
/// append that is tried again (its first appender died, or its answer was lost) is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId(pub u128);

impl EventId {
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        EventId(u128::from_le_bytes(bytes))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A random epoch for a channel whose events start afresh.
pub fn random_epoch() -> u32 {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    u32::from_le_bytes(bytes)
}

/// Whether an append may repeat one that already reached the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The event's first append: nothing to look for.
    First,
    /// A retry: if the store already holds an event with this id, its position is the answer
    /// and nothing is stored twice.
    Retry,
}

/// What a client at some position missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadAfter {
    /// Every event after it, oldest first (none when it is up to date), with the newest
    /// position.
    Events { events: Vec<(Position, Bytes)>, head: Position },
    /// It cannot be caught up: its position is of another epoch, past the newest, or the events
    /// after it are no longer all retained. `head` is the newest retained position, if any.
    Gone { head: Option<Position> },
}

/// Why a store could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot be reached, or did not answer in time. Publishing on history channels
    /// fails meanwhile (HTTP 503) and works again once it is back.
    #[error("the history store is unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The store answered but will not take this event (its size, its configuration).
    #[error("the history store refused the event: {0}")]
    Refused(#[source] BoxError),
}

impl StoreError {
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        StoreError::Unavailable(error.into())
    }

    pub fn refused(error: impl Into<BoxError>) -> Self {
        StoreError::Refused(error.into())
    }
}

/// Where history channels' events live. The store gives each event its position; one channel's
/// positions are consecutive whichever node or process appends.
pub trait HistoryStore: Send + Sync + fmt::Debug {
    /// Appends an event's payload (JSON, without `position`) to `key`, keeping `rule`'s size and
    /// age, and answers the event's position.
    fn append<'a>(
        &'a self,
        key: &'a ChannelKey,
        id: EventId,
        payload: &'a [u8],
        rule: &'a HistoryRule,
        attempt: Attempt,
    ) -> StoreFuture<'a, Position>;

    /// What a client at `after` missed, within `rule` (see [`read_after`]).
    fn read_after<'a>(
        &'a self,
        key: &'a ChannelKey,
        after: Position,
        rule: &'a HistoryRule,
    ) -> StoreFuture<'a, ReadAfter>;

    /// The newest retained position, or `None` when the channel holds nothing (never written,
    /// or everything expired: the next append starts a new epoch).
    fn head<'a>(&'a self, key: &'a ChannelKey, rule: &'a HistoryRule) -> StoreFuture<'a, Option<Position>>;
}

/// An event a store retained: its offset, how long ago it was stored, its payload.
pub type Retained = (u64, Duration, Bytes);

/// The one rule for catching a client up, shared by every store: a client at `after` is caught
/// up when its epoch is the channel's, it is not past the newest offset `head`, at most
/// `rule.size` events came since, and every one of them is retained and younger than
/// `rule.ttl_secs`. `retained` holds (at least) the events after `after` the store still has,
/// oldest first. A client already at `head` is up to date even when the events before it have
/// expired.
pub fn read_after(
    epoch: u32,
    head: u64,
    after: Position,
    retained: impl IntoIterator<Item = Retained>,
    rule: &HistoryRule,
) -> ReadAfter {
    let newest = Position { epoch, offset: head };
    let gone = ReadAfter::Gone { head: Some(newest) };
    if after.epoch != epoch || after.offset > head || head - after.offset > rule.size as u64 {
        return gone;
    }
    let ttl = Duration::from_secs(rule.ttl_secs);
    let mut events = Vec::with_capacity((head - after.offset) as usize);
    let mut expected = after.offset + 1;
    for (offset, age, payload) in retained.into_iter().filter(|(offset, _, _)| *offset > after.offset) {
        if offset != expected || age >= ttl {
            return gone;
        }
        events.push((Position { epoch, offset }, payload));
        expected += 1;
    }
    if expected != head + 1 {
        return gone;
    }
    ReadAfter::Events { events, head: newest }
}

/// One process's history store: each channel's last events in memory, lost with the process.
/// The default for a single node, which needs nothing else running.
#[derive(Debug, Default)]
pub struct MemoryHistoryStore {
    channels: Mutex<HashMap<ChannelKey, MemoryChannel>>,
}

#[derive(Debug)]
struct MemoryChannel {
    epoch: u32,
    head: u64,
    /// `(offset, stored at, id, payload)`, oldest first.
    events: VecDeque<(u64, Instant, EventId, Bytes)>,
}

impl MemoryChannel {
    /// Drops what is past the rule; `false` when nothing is left, and the channel starts a new
    /// epoch at its next event.
    fn trim(&mut self, rule: &HistoryRule, now: Instant) -> bool {
        let ttl = Duration::from_secs(rule.ttl_secs);
        while self.events.len() > rule.size
            || self.events.front().is_some_and(|(_, at, _, _)| now.duration_since(*at) >= ttl)
        {
            self.events.pop_front();
        }
        !self.events.is_empty()
    }
}

impl MemoryHistoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The channel's events after trimming, or `None` when it holds nothing.
    fn with_channel<T>(
        &self,
        key: &ChannelKey,
        rule: &HistoryRule,
        read: impl FnOnce(&MemoryChannel, Instant) -> T,
    ) -> Option<T> {
        let now = Instant::now();
        let mut channels = self.channels.lock().expect("history store lock is never poisoned");
        let channel = channels.get_mut(key)?;
        if !channel.trim(rule, now) {
            channels.remove(key);
            return None;
        }
        Some(read(channel, now))
    }
}

impl HistoryStore for MemoryHistoryStore {
    fn append<'a>(
        &'a self,
        key: &'a ChannelKey,
        id: EventId,
        payload: &'a [u8],
        rule: &'a HistoryRule,
        attempt: Attempt,
    ) -> StoreFuture<'a, Position> {
        let now = Instant::now();
        let mut channels = self.channels.lock().expect("history store lock is never poisoned");
        let channel = channels.entry(key.clone()).or_insert_with(|| MemoryChannel {
            epoch: random_epoch(),
            head: 0,
            events: VecDeque::new(),
        });
        if !channel.trim(rule, now) && channel.head > 0 {
            *channel = MemoryChannel { epoch: random_epoch(), head: 0, events: VecDeque::new() };
        }
        let epoch = channel.epoch;
        let stored = (attempt == Attempt::Retry)
            .then(|| {
                channel.events.iter().find(|(_, _, stored, _)| *stored == id).map(|(offset, ..)| *offset)
            })
            .flatten();
        let offset = stored.unwrap_or_else(|| {
            channel.head += 1;
            channel.events.push_back((channel.head, now, id, Bytes::copy_from_slice(payload)));
            channel.trim(rule, now);
            channel.head
        });
        Box::pin(std::future::ready(Ok(Position { epoch, offset })))
    }

    fn read_after<'a>(
        &'a self,
        key: &'a ChannelKey,
        after: Position,
        rule: &'a HistoryRule,
    ) -> StoreFuture<'a, ReadAfter> {
        let answer = self
            .with_channel(key, rule, |channel, now| {
                let retained = channel
                    .events
                    .iter()
                    .map(|(offset, at, _, payload)| (*offset, now.duration_since(*at), payload.clone()));
                read_after(channel.epoch, channel.head, after, retained, rule)
            })
            .unwrap_or(ReadAfter::Gone { head: None });
        Box::pin(std::future::ready(Ok(answer)))
    }

    fn head<'a>(&'a self, key: &'a ChannelKey, rule: &'a HistoryRule) -> StoreFuture<'a, Option<Position>> {
        let head = self
            .with_channel(key, rule, |channel, _| Position { epoch: channel.epoch, offset: channel.head });
        Box::pin(std::future::ready(Ok(head)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(size: usize, ttl_secs: u64) -> HistoryRule {
        HistoryRule { prefix: String::new(), size, ttl_secs }
    }

    fn retained(offsets: std::ops::RangeInclusive<u64>, age: Duration) -> Vec<Retained> {
        offsets.map(|offset| (offset, age, Bytes::from(offset.to_string()))).collect()
    }

    fn offsets(answer: &ReadAfter) -> Option<Vec<u64>> {
        match answer {
            ReadAfter::Events { events, .. } => Some(events.iter().map(|(p, _)| p.offset).collect()),
            ReadAfter::Gone { .. } => None,
        }
    }

    #[test]
    fn a_client_is_caught_up_only_when_every_missed_event_is_retained_and_young_enough() {
        let young = Duration::from_secs(1);
        let at = |offset| Position { epoch: 7, offset };
        let rule = rule(5, 60);
        assert_eq!(
            offsets(&read_after(7, 10, at(6), retained(6..=10, young), &rule)),
            Some(vec![7, 8, 9, 10])
        );
        assert_eq!(offsets(&read_after(7, 10, at(10), vec![], &rule)), Some(vec![]), "up to date");
        assert_eq!(
            offsets(&read_after(7, 10, at(4), retained(4..=10, young), &rule)),
            None,
            "6 missed > size 5"
        );
        assert_eq!(offsets(&read_after(7, 10, at(6), retained(8..=10, young), &rule)), None, "7 was trimmed");
        assert_eq!(offsets(&read_after(7, 10, at(6), retained(7..=9, young), &rule)), None, "10 is missing");
        assert_eq!(offsets(&read_after(7, 10, at(11), vec![], &rule)), None, "past the newest");
        let other_epoch = Position { epoch: 8, offset: 9 };
        assert_eq!(
            read_after(7, 10, other_epoch, retained(7..=10, young), &rule),
            ReadAfter::Gone { head: Some(at(10)) }
        );
        let old = Duration::from_secs(60);
        assert_eq!(offsets(&read_after(7, 10, at(8), retained(9..=10, old), &rule)), None, "expired");
    }
}
