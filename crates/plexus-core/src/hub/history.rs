//! Channel history: each history channel's last events, numbered `"{epoch}:{offset}"`, so a
//! client that comes back resumes from its last position (or learns that it cannot). In a
//! cluster one node numbers a channel's events and its peers record them at those positions.

use bytes::Bytes;
use plexus_protocol::codec::{self, Data, ServerEvent};
use plexus_protocol::filter::SubscriptionFilter;
use plexus_protocol::{ChannelName, SocketId};
use tokio::time::{Duration, Instant};

use crate::app::{App, HistoryRule};
use crate::cluster::Update;
use crate::observe::event_observation;

use super::fanout::frame_passes;
use super::stored::{Hold, Resuming, REORDER_WAIT, REORDER_WAITING};
use super::*;

/// Where an event stands in a history channel: `"{epoch}:{offset}"` on the wire. Offsets count
/// from 1 within an epoch; the epoch is random, so a position from another numbering (a restart,
/// a new sequencer in a cluster) never matches and a resume says `recovered: false` instead of
/// guessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub epoch: u32,
    pub offset: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl std::str::FromStr for Position {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let (epoch, offset) = text.split_once(':').ok_or(())?;
        Ok(Position { epoch: epoch.parse().map_err(|_| ())?, offset: offset.parse().map_err(|_| ())? })
    }
}

/// A channel's last events as delivered here, each stamped with its position. This node either
/// numbers them itself (`numbered_here`: one node, or the channel's sequencer in a cluster) or
/// records them at the positions the sequencer gave.
#[derive(Debug)]
pub(super) struct History {
    pub(super) epoch: u32,
    pub(super) next: u64,
    pub(super) numbered_here: bool,
    pub(super) events: std::collections::VecDeque<(u64, Instant, Bytes)>,
    /// With a durable store: events that arrived ahead of a missing one, by offset, waiting for
    /// it (see [`History::reorder`]).
    waiting: std::collections::BTreeMap<u64, (Bytes, Option<SocketId>)>,
    /// Counts the times events started waiting, so a timer set for an earlier wait leaves a
    /// later one alone.
    waiting_since: u64,
}

/// Events to deliver now, in order, and whether a wait began (with its number) that needs a
/// timer.
pub(super) struct Reordered {
    pub(super) ready: Vec<(Position, Bytes, Option<SocketId>)>,
    pub(super) wait_began: Option<u64>,
}

impl History {
    pub(super) fn new() -> Self {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        History {
            epoch: u32::from_le_bytes(bytes),
            next: 1,
            numbered_here: true,
            events: Default::default(),
            waiting: Default::default(),
            waiting_since: 0,
        }
    }

    /// Puts an event the store numbered back in store order. With a durable store every node
    /// appends, so two nodes' events on one channel can reach a node in the other order: an
    /// event ahead of the next expected offset waits (at most [`REORDER_WAIT`], at most
    /// [`REORDER_WAITING`] of them) for the missing one to arrive, and is then delivered after
    /// it. An event from before the next expected offset, or of another epoch, is delivered at
    /// once (after what was waiting, for another epoch).
    pub(super) fn reorder(
        &mut self,
        position: Position,
        frame: Bytes,
        except: Option<SocketId>,
    ) -> Reordered {
        let now_ready = |ready| Reordered { ready, wait_began: None };
        if position.epoch != self.epoch {
            let mut ready = self.take_waiting();
            ready.push((position, frame, except));
            return now_ready(ready);
        }
        if position.offset < self.next {
            return now_ready(vec![(position, frame, except)]);
        }
        if position.offset > self.next {
            let began = self.waiting.is_empty();
            self.waiting.insert(position.offset, (frame, except));
            if self.waiting.len() > REORDER_WAITING {
                return now_ready(self.take_waiting());
            }
            if !began {
                return now_ready(Vec::new());
            }
            self.waiting_since += 1;
            return Reordered { ready: Vec::new(), wait_began: Some(self.waiting_since) };
        }
        let mut ready = vec![(position, frame, except)];
        let mut expected = position.offset + 1;
        while let Some((frame, except)) = self.waiting.remove(&expected) {
            ready.push((self.position(expected), frame, except));
            expected += 1;
        }
        now_ready(ready)
    }

    /// Everything waiting, in offset order (the wait is over).
    pub(super) fn take_waiting(&mut self) -> Vec<(Position, Bytes, Option<SocketId>)> {
        let epoch = self.epoch;
        std::mem::take(&mut self.waiting)
            .into_iter()
            .map(|(offset, (frame, except))| (Position { epoch, offset }, frame, except))
            .collect()
    }

    /// Whether the wait numbered `since` is still on.
    pub(super) fn waiting_since(&self, since: u64) -> bool {
        self.waiting_since == since && !self.waiting.is_empty()
    }

    pub(super) fn position(&self, offset: u64) -> Position {
        Position { epoch: self.epoch, offset }
    }

    /// The position for the next event numbered here. Numbering cannot continue another node's
    /// epoch (this node may lack its last events), so taking over starts a new one.
    pub(super) fn number_next(&mut self) -> Position {
        if !self.numbered_here {
            *self = History::new();
        }
        self.next += 1;
        self.position(self.next - 1)
    }

    /// Records an event another node numbered. Another epoch, or a gap in this one, starts the
    /// history afresh from this event: what came before cannot be resumed across the gap, and a
    /// resume from there must say `recovered: false`. An event already past is ignored.
    pub(super) fn record_numbered(&mut self, position: Position, now: Instant, frame: Bytes) -> bool {
        if position.epoch == self.epoch && position.offset < self.next {
            return false;
        }
        if position.epoch != self.epoch || position.offset != self.next {
            self.events.clear();
            self.epoch = position.epoch;
            self.numbered_here = false;
        }
        self.next = position.offset + 1;
        self.events.push_back((position.offset, now, frame));
        true
    }

    /// Takes a peer's copy of this channel's history (a node that joined, or re-synced after a
    /// gap): in full when this node holds no events and is not numbering the channel itself, or
    /// the older events it lacks when the copy is of the same epoch and reaches up to its own.
    /// `events` are `(offset, recorded at, frame)`, oldest first, offsets consecutive.
    pub(super) fn adopt(&mut self, epoch: u32, events: Vec<(u64, Instant, Bytes)>) {
        let Some(last) = events.last().map(|(offset, _, _)| *offset) else { return };
        if self.events.is_empty() {
            if self.numbered_here && self.next > 1 {
                return;
            }
            self.epoch = epoch;
            self.numbered_here = false;
            self.next = last + 1;
            self.events = events.into();
            return;
        }
        let first_held = self.events.front().map_or(self.next, |(offset, _, _)| *offset);
        if epoch != self.epoch || last + 1 < first_held {
            return;
        }
        for event in events.into_iter().rev().filter(|(offset, _, _)| *offset < first_held) {
            self.events.push_front(event);
        }
    }

    /// Drops what is past the rule's size or age.
    pub(super) fn trim(&mut self, rule: &HistoryRule, now: Instant) {
        while self.events.len() > rule.size
            || self
                .events
                .front()
                .is_some_and(|(_, at, _)| now.duration_since(*at).as_secs() >= rule.ttl_secs)
        {
            self.events.pop_front();
        }
    }
}

/// Who gives a history event its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Numbering {
    /// This node (alone, or as the channel's sequencer): the stamped event is then announced to
    /// the cluster and mirrored.
    Here,
    /// A peer that numbered it, at this position.
    At(Position),
    /// A peer that did not (it keeps no history for the channel): numbered for this node's
    /// history only.
    Unnumbered,
    /// The durable store, for this node (see `stored.rs`): announced and mirrored like `Here`.
    Stored(Position),
}

/// The frame with `"position":"…"` added to its JSON object (one copy per event, not per
/// subscriber).
pub(super) fn stamp(frame: &Bytes, position: &str) -> Bytes {
    let payload = plexus_protocol::wsframe::server_frame_payload(frame);
    let Some(body) = payload.strip_suffix(b"}") else { return frame.clone() };
    let mut stamped = Vec::with_capacity(payload.len() + position.len() + 16);
    stamped.extend_from_slice(body);
    stamped.extend_from_slice(b",\"position\":");
    stamped.extend_from_slice(codec::json_str(position).as_bytes());
    stamped.push(b'}');
    plexus_protocol::wsframe::frame(plexus_protocol::wsframe::Opcode::Text, &stamped)
}

/// The position [`stamp`] put into `frame`, if it carries one.
pub(super) fn stamped_position(frame: &Bytes) -> Option<Position> {
    let payload = plexus_protocol::wsframe::server_frame_payload(frame);
    let body = payload.strip_suffix(b"\"}")?;
    let start = body.iter().rposition(|&byte| byte == b'"')? + 1;
    if !body[..start].ends_with(b",\"position\":\"") {
        return None;
    }
    std::str::from_utf8(&body[start..]).ok()?.parse().ok()
}

/// The `plexus:resume` event telling a client whether it was caught up, and the newest
/// position (`""` when there is none).
pub(super) fn resume_frame(channel: &str, recovered: bool, position: &str) -> Bytes {
    let data = format!(
        "{{\"recovered\":{recovered},\"position\":{}}}",
        if position.is_empty() { "null".to_owned() } else { codec::json_str(position) }
    );
    ServerEvent::new("plexus:resume").channel(channel).data(Data::Str(&data)).to_frame()
}

/// A history channel's events as this node holds them, for a peer that joins or re-syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistorySnapshot {
    pub channel: ChannelName,
    pub epoch: u32,
    /// `(offset, age, frame)`, oldest first, offsets consecutive.
    pub events: Vec<(u64, Duration, Bytes)>,
}

impl AppHub {
    /// Records an event of a history channel and fans it out, under the shard's write lock so
    /// positions and deliveries keep one order.
    pub(super) fn deliver_recorded(
        &self,
        rule: &HistoryRule,
        channel: &str,
        frame: &Bytes,
        except: Option<SocketId>,
        numbering: Numbering,
        keep: Option<crate::cluster::Keep<'_>>,
    ) -> usize {
        let Ok(name) = ChannelName::parse(channel) else { return 0 };
        let mut guard = write(self.shard(channel));
        let shard = &mut *guard;
        let now = Instant::now();
        let history = shard.histories.entry(name.clone()).or_insert_with(History::new);
        if let (Some(stored), Numbering::At(position) | Numbering::Stored(position)) =
            (&self.stored, numbering)
        {
            let frame = match numbering {
                Numbering::Stored(_) => {
                    // Numbered here through the store: the cluster and the mirror hear of it
                    // at once, whatever waits here.
                    let stamped = stamp(frame, &position.to_string());
                    self.announce(Update::Publish {
                        channel,
                        frame: &stamped,
                        except,
                        position: Some(position),
                        keep,
                    });
                    self.mirror(channel, &stamped);
                    stamped
                }
                _ => frame.clone(),
            };
            let Reordered { ready, wait_began } = history.reorder(position, frame, except);
            if let Some(since) = wait_began {
                let (hub, rule) = (stored.hub.clone(), rule.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(REORDER_WAIT).await;
                    if let Some(hub) = hub.upgrade() {
                        hub.end_wait(&name, &rule, since);
                    }
                });
            }
            return self.deliver_in_order(shard, channel, rule, ready);
        }
        // The stamped frame, and the position it is announced and mirrored at when this node
        // numbered it.
        let (frame, announced) = match numbering {
            Numbering::At(position) | Numbering::Stored(position) => {
                if !history.record_numbered(position, now, frame.clone()) {
                    return 0;
                }
                (frame.clone(), None)
            }
            Numbering::Here | Numbering::Unnumbered => {
                let position = history.number_next();
                let stamped = stamp(frame, &position.to_string());
                history.events.push_back((position.offset, now, stamped.clone()));
                (stamped, (numbering == Numbering::Here).then_some(position))
            }
        };
        if let Some(position) = announced {
            self.announce(Update::Publish { channel, frame: &frame, except, position: Some(position), keep });
            self.mirror(channel, &frame);
        }
        history.trim(rule, now);
        self.observer.emit(|| event_observation(channel, &frame, except.map(|id| id.to_string())));
        // Without a durable store no subscriber is ever held, so there is no hold to tidy.
        shard.channels.get(channel).map_or(0, |entry| self.fan_out(entry, &frame, except))
    }

    /// Records and fans out events the store numbered, in the order given (see
    /// [`History::reorder`]).
    fn deliver_in_order(
        &self,
        shard: &mut Shard,
        channel: &str,
        rule: &HistoryRule,
        ready: Vec<(Position, Bytes, Option<SocketId>)>,
    ) -> usize {
        let now = Instant::now();
        let mut delivered = 0;
        for (position, frame, except) in ready {
            if let Some(history) = shard.histories.get_mut(channel) {
                // One behind a later position held here is delivered all the same (it reaches
                // this node once); this node's memory just does not keep it.
                history.record_numbered(position, now, frame.clone());
                history.trim(rule, now);
            }
            self.observer.emit(|| event_observation(channel, &frame, except.map(|id| id.to_string())));
            if let Some(entry) = shard.channels.get_mut(channel) {
                delivered += self.fan_out(entry, &frame, except);
                if !entry.held.is_empty() {
                    entry.held.retain(|_, hold| !hold.is_done());
                }
            }
        }
        delivered
    }

    /// The wait numbered `since` is over: what still waits on `channel` is delivered in order,
    /// past the offsets that never came (lost on the bus, or stored by a node that died before
    /// it published them; a resume finds them in the store).
    pub(super) fn end_wait(&self, channel: &ChannelName, rule: &HistoryRule, since: u64) {
        let mut guard = write(self.shard(channel.as_str()));
        let shard = &mut *guard;
        let Some(history) = shard.histories.get_mut(channel) else { return };
        if !history.waiting_since(since) {
            return;
        }
        let ready = history.take_waiting();
        self.deliver_in_order(shard, channel.as_str(), rule, ready);
    }

    /// After a subscription with a `position`: queues the events since then, in order, and a
    /// `plexus:resume` saying whether the gap was covered (`recovered: false` when the history
    /// no longer reaches back that far, belongs to another epoch, or the channel keeps none).
    /// With a durable store, what this node's memory cannot cover is asked of the store.
    pub(super) fn resume(
        &self,
        app: &App,
        shard: &mut Shard,
        channel: &ChannelName,
        connection: &Arc<Connection>,
        from: &str,
        filter: Option<&Arc<SubscriptionFilter>>,
    ) {
        let rule = app.history_rule(channel.as_str());
        let history = rule.map(|rule| {
            let history = shard.histories.entry(channel.clone()).or_insert_with(History::new);
            history.trim(rule, Instant::now());
            &*history
        });
        let last = |h: &History| h.position(h.next - 1).to_string();
        let parsed = from.parse::<Position>().ok();
        let (recovered, position) = match (history, parsed) {
            (Some(history), Some(Position { epoch, offset }))
                if epoch == history.epoch && offset < history.next =>
            {
                let oldest = history.events.front().map_or(history.next, |(o, _, _)| *o);
                if offset + 1 >= oldest {
                    for (_, _, frame) in history.events.iter().filter(|(o, _, _)| *o > offset) {
                        if filter.is_none_or(|filter| frame_passes(filter, frame)) {
                            connection.outbound.push(frame.clone());
                        }
                    }
                    (true, last(history))
                } else {
                    (false, last(history))
                }
            }
            (Some(history), _) => (false, last(history)),
            (None, _) => (false, String::new()),
        };
        // With a durable store this node's memory holds the store's positions, so a position of
        // another epoch than the events held here is gone there too: no read is spent on it.
        let store_may_know =
            |after: &Position| history.is_none_or(|h| h.events.is_empty() || h.epoch == after.epoch);
        if let (false, true, Some(rule), Some(after)) =
            (recovered, self.stored.is_some(), rule, parsed.filter(store_may_know))
        {
            let Some(entry) = shard.channels.get_mut(channel) else { return };
            let hold = Hold::new();
            let resuming =
                Resuming { after, filter: filter.cloned(), memory_head: position, ticket: hold.ticket() };
            // A hold from an earlier subscription of this socket is replaced; its read finds
            // another ticket and answers nothing.
            entry.held.insert(connection.socket_id, hold);
            self.resume_from_store(rule, channel, connection, resuming);
            return;
        }
        connection.outbound.push(resume_frame(channel.as_str(), recovered, &position));
    }

    /// Every history this node holds events of, for a peer that syncs.
    pub fn histories(&self) -> Vec<HistorySnapshot> {
        let now = Instant::now();
        let mut histories = Vec::new();
        for shard in self.shards.iter() {
            for (name, history) in read(shard).histories.iter().filter(|(_, h)| !h.events.is_empty()) {
                histories.push(HistorySnapshot {
                    channel: name.clone(),
                    epoch: history.epoch,
                    events: history
                        .events
                        .iter()
                        .map(|(offset, at, frame)| (*offset, now.duration_since(*at), frame.clone()))
                        .collect(),
                });
            }
        }
        histories
    }

    /// Takes a peer's copy of a history channel's events (see [`AppHub::histories`]), so a
    /// client can resume here from a position published before this node joined.
    pub fn adopt_history(&self, app: &App, snapshot: HistorySnapshot) {
        let Some(rule) = app.history_rule(snapshot.channel.as_str()) else { return };
        let now = Instant::now();
        let events = snapshot
            .events
            .into_iter()
            .map(|(offset, age, frame)| (offset, now.checked_sub(age).unwrap_or(now), frame));
        let mut shard = write(self.shard(snapshot.channel.as_str()));
        let history = shard.histories.entry(snapshot.channel).or_insert_with(History::new);
        history.adopt(snapshot.epoch, events.collect());
        history.trim(rule, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Bytes {
        Bytes::from(n.to_string())
    }

    fn offsets(history: &History) -> Vec<u64> {
        history.events.iter().map(|(offset, _, _)| *offset).collect()
    }

    #[derive(Debug)]
    struct NoWebhooks;

    impl WebhookSink for NoWebhooks {
        fn submit(&self, _app_id: &str, _event: WebhookEvent) {}
    }

    #[tokio::test]
    async fn the_debug_console_sees_members_join_and_leave_on_other_nodes() {
        let hub = AppHub::new("app", Arc::new(NoWebhooks));
        let app = App::new("app", "key", "secret");
        let channel = ChannelName::parse("presence-room").unwrap();
        let mut watch = hub.observer().watch();
        let member = Member { user_id: "ann", info: Some("{\"name\":\"Ann\"}") };
        hub.set_remote_member(&app, 7, &channel, member, true);
        hub.set_remote_member(&app, 7, &channel, member, false);
        let mut seen = Vec::new();
        for _ in 0..2 {
            match watch.next().await {
                crate::observe::Seen::Observed(o) => seen.push((o.kind, o.detail.clone())),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            seen,
            vec![
                ("member_added", json!({"user_id": "ann", "user_info": {"name": "Ann"}, "node": "7"})),
                ("member_removed", json!({"user_id": "ann", "node": "7"})),
            ]
        );
    }

    #[test]
    fn positions_read_back_as_written() {
        let position = Position { epoch: 7, offset: 42 };
        assert_eq!(position.to_string(), "7:42");
        assert_eq!("7:42".parse::<Position>(), Ok(position));
        for bad in ["", "7", "7:", ":1", "x:1", "1:-1", "4294967296:1"] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_position_stamped_into_a_frame_reads_back_and_nothing_else_passes_for_one() {
        let event = |json: &str| {
            plexus_protocol::wsframe::frame(plexus_protocol::wsframe::Opcode::Text, json.as_bytes())
        };
        let plain = event(r#"{"event":"item","channel":"feed","data":"{}"}"#);
        assert_eq!(stamped_position(&stamp(&plain, "7:42")), Some(Position { epoch: 7, offset: 42 }));
        assert_eq!(stamped_position(&plain), None);
        let look_alike = event(r#"{"event":"item","channel":"feed","data":"x\",\"position\":\"7:42"}"#);
        assert_eq!(stamped_position(&look_alike), None, "a position inside the data is data");
    }

    #[test]
    fn events_numbered_elsewhere_are_kept_at_their_positions_and_a_gap_restarts_the_history() {
        let now = Instant::now();
        let mut history = History::new();
        let epoch = history.epoch.wrapping_add(1);
        for offset in 5..8 {
            assert!(history.record_numbered(Position { epoch, offset }, now, frame(offset)));
        }
        assert_eq!((history.epoch, history.next, offsets(&history)), (epoch, 8, vec![5, 6, 7]));
        assert!(!history.record_numbered(Position { epoch, offset: 6 }, now, frame(6)), "already held");
        assert_eq!(offsets(&history), vec![5, 6, 7]);

        // Offset 8 never arrived: nothing before 9 may be replayed past the hole.
        assert!(history.record_numbered(Position { epoch, offset: 9 }, now, frame(9)));
        assert_eq!((history.next, offsets(&history)), (10, vec![9]));

        // The numbering moved to a node with another epoch.
        let other = epoch.wrapping_add(1);
        assert!(history.record_numbered(Position { epoch: other, offset: 1 }, now, frame(1)));
        assert_eq!((history.epoch, history.next, offsets(&history)), (other, 2, vec![1]));
    }

    #[test]
    fn a_peers_copy_fills_an_empty_history_or_the_older_events_of_the_same_epoch() {
        let now = Instant::now();
        let copy = |epoch, offsets: std::ops::Range<u64>| {
            (epoch, offsets.map(|o| (o, now, frame(o))).collect::<Vec<_>>())
        };

        let mut joined = History::new();
        let (epoch, events) = copy(9, 3..7);
        joined.adopt(epoch, events);
        assert_eq!((joined.epoch, joined.next, offsets(&joined)), (9, 7, vec![3, 4, 5, 6]));
        assert!(!joined.numbered_here);

        // Live events arrived before the copy: it supplies the older ones, once.
        let mut resynced = History::new();
        resynced.record_numbered(Position { epoch: 9, offset: 6 }, now, frame(6));
        resynced.record_numbered(Position { epoch: 9, offset: 7 }, now, frame(7));
        let (epoch, events) = copy(9, 3..7);
        resynced.adopt(epoch, events);
        assert_eq!(offsets(&resynced), vec![3, 4, 5, 6, 7]);

        // A copy that ends before what is held would leave a hole; another epoch is not ours.
        let (epoch, events) = copy(9, 1..4);
        let mut holed = History::new();
        holed.record_numbered(Position { epoch: 9, offset: 6 }, now, frame(6));
        holed.adopt(epoch, events);
        assert_eq!(offsets(&holed), vec![6]);
        let (epoch, events) = copy(8, 1..6);
        holed.adopt(epoch, events);
        assert_eq!((holed.epoch, offsets(&holed)), (9, vec![6]));

        // The node that numbers the channel keeps its own numbering.
        let mut numbering = History::new();
        numbering.number_next();
        let own = numbering.epoch;
        let (epoch, events) = copy(own.wrapping_add(1), 1..3);
        numbering.adopt(epoch, events);
        assert_eq!((numbering.epoch, numbering.next, offsets(&numbering)), (own, 2, vec![]));
    }

    #[test]
    fn numbering_continues_its_own_epoch_but_never_another_nodes() {
        let mut history = History::new();
        let own = history.epoch;
        assert_eq!(history.number_next(), Position { epoch: own, offset: 1 });
        assert_eq!(history.number_next(), Position { epoch: own, offset: 2 });

        let theirs = own.wrapping_add(1);
        history.record_numbered(Position { epoch: theirs, offset: 30 }, Instant::now(), frame(30));
        let taken_over = history.number_next();
        assert_ne!(taken_over.epoch, theirs, "this node may lack the other's last events");
        assert_eq!(taken_over.offset, 1);
        assert!(history.events.is_empty());
    }
}
