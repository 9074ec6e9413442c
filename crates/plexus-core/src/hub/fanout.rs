//! Fan-out: an event, encoded once into a WebSocket frame, pushed as a shared handle into every
//! subscriber's bounded queue (through their filters, where a subscriber set one), and told to
//! the cluster and the mirror when it entered here.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use plexus_protocol::filter::SubscriptionFilter;
use plexus_protocol::SocketId;

use crate::app::{App, HistoryRule};
use crate::cluster::{Keep, Update};
use crate::observe::event_observation;
use crate::outbound::Push;

use super::stored::{AppendWait, PendingAppend};
use super::*;

/// The name and data of an event frame, as filters read them.
#[derive(serde::Deserialize)]
pub(super) struct Event<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<std::borrow::Cow<'a, str>>,
}

/// Whether one event frame passes `filter` (for replays; fan-out reads each event once for all
/// its subscribers' filters instead).
pub(super) fn frame_passes(filter: &SubscriptionFilter, frame: &Bytes) -> bool {
    let payload = plexus_protocol::wsframe::server_frame_payload(frame);
    let parsed: Option<Event<'_>> = serde_json::from_slice(&payload).ok();
    let name = parsed.as_ref().map_or("", |e| &*e.event);
    let data = filter
        .needs_data()
        .then(|| parsed.as_ref().and_then(|e| e.data.as_deref()).and_then(|d| serde_json::from_str(d).ok()))
        .flatten();
    filter.matches(name, data.as_ref())
}

/// Where the events published on this node also go, outside plexus (`[[mirrors]]`: NATS
/// subjects). Called once per publish, never per subscriber, and only for events that entered
/// the cluster here, so a cluster mirrors each event once. It must not block: implementations
/// queue and return.
pub trait EventMirror: Send + Sync + std::fmt::Debug {
    /// `frame` is the event's WebSocket frame, as every subscriber gets it.
    fn published(&self, app_id: &str, channel: &str, frame: &Bytes);
}

/// The server's mirror, set at most once and shared by every app's hub.
pub(super) type MirrorSlot = Arc<std::sync::OnceLock<Arc<dyn EventMirror>>>;

impl AppHub {
    /// Fans one encoded frame out to every subscriber of `channel` except `except`; returns how
    /// many queues on this node received it. The frame's bytes are shared, never copied. In a
    /// cluster, an event of a history channel that another node numbers goes to that node, which
    /// publishes it to everyone (this node too); it reaches nobody here before then. With a
    /// durable history store this node appends it itself.
    ///
    /// This is the encoded path for frames whose rules were checked elsewhere (client events,
    /// typed channels' topics); events from publishers go through [`AppHub::publish`].
    pub fn publish_frame(&self, app: &App, channel: &str, frame: &Bytes, except: Option<SocketId>) -> usize {
        self.publish_keeping(app, channel, frame, except, None, None)
    }

    /// [`AppHub::publish_frame`], keeping the event as a cache channel's last one (`keep`) here
    /// and, in the same cluster message, on every other node. When this node has a durable
    /// history store number the event, `waiting` learns whether the store took it.
    pub(super) fn publish_keeping(
        &self,
        app: &App,
        channel: &str,
        frame: &Bytes,
        except: Option<SocketId>,
        keep: Option<Keep<'_>>,
        waiting: Option<&mut Vec<AppendWait>>,
    ) -> usize {
        self.metrics.events_published.increment(1);
        self.published_total.fetch_add(1, Ordering::Relaxed);
        self.keep_here(channel, frame, keep);
        let Some(rule) = app.history_rule(channel) else {
            return self.publish_plain(channel, frame, except, keep);
        };
        // With a durable store the store numbers every node's appends, so no node hands its
        // events to another: there is nothing to sequence.
        let sequencer = self.cluster.as_ref().filter(|_| self.stored.is_none());
        match sequencer.and_then(|c| c.sequencer(&self.app_id, channel)) {
            Some(by) => {
                self.announce(Update::Sequence { channel, frame, except, by, keep });
                0
            }
            None => self.number(rule, channel, frame, except, keep, waiting),
        }
    }

    /// Publishes an event another node handed over for this node to number (it chose this node
    /// as the channel's sequencer). Counted where it was published, not again here.
    pub fn publish_numbered(
        &self,
        app: &App,
        channel: &str,
        frame: &Bytes,
        except: Option<SocketId>,
        keep: Option<Keep<'_>>,
    ) -> usize {
        self.keep_here(channel, frame, keep);
        match app.history_rule(channel) {
            Some(rule) => self.number(rule, channel, frame, except, keep, None),
            None => self.publish_plain(channel, frame, except, keep),
        }
    }

    /// Numbers a history channel's event here: in memory at once, or by the durable store
    /// (delivered once stored; see `stored.rs`).
    fn number(
        &self,
        rule: &HistoryRule,
        channel: &str,
        frame: &Bytes,
        except: Option<SocketId>,
        keep: Option<Keep<'_>>,
        waiting: Option<&mut Vec<AppendWait>>,
    ) -> usize {
        let Some(stored) = &self.stored else {
            return self.deliver_recorded(rule, channel, frame, except, Numbering::Here, keep);
        };
        // Names reaching here were checked by their publisher; one that is not a channel name
        // could not be kept in any history.
        let Ok(name) = ChannelName::parse(channel) else { return 0 };
        let reply = waiting.map(|waiting| {
            let (reply, stored) = tokio::sync::oneshot::channel();
            waiting.push(AppendWait { channel: name.clone(), stored });
            reply
        });
        let keep = keep.map(|keep| (keep.data.to_owned(), keep.ttl));
        let pending =
            PendingAppend { rule: rule.clone(), channel: name, frame: frame.clone(), except, keep, reply };
        self.append_to_store(stored, pending);
        0
    }

    /// An event of a channel without history: told to the cluster and the mirror, then fanned out.
    pub(super) fn publish_plain(
        &self,
        channel: &str,
        frame: &Bytes,
        except: Option<SocketId>,
        keep: Option<Keep<'_>>,
    ) -> usize {
        self.announce(Update::Publish { channel, frame, except, position: None, keep });
        self.mirror(channel, frame);
        self.deliver_plain(channel, frame, except)
    }

    /// Keeps `frame` as `channel`'s last event on this node, when it is a cache channel's.
    fn keep_here(&self, channel: &str, frame: &Bytes, keep: Option<Keep<'_>>) {
        if let (Some(keep), Ok(name)) = (keep, ChannelName::parse(channel)) {
            self.remember_here(&name, frame, keep.ttl);
        }
    }

    pub(super) fn mirror(&self, channel: &str, frame: &Bytes) {
        if let Some(mirror) = self.mirror.get() {
            mirror.published(&self.app_id, channel, frame);
        }
    }

    /// Fans a frame out to this node's subscribers only (an event another node published, at
    /// `position` when that node numbered it for a history channel; kept as a cache channel's
    /// last event when `keep` says so).
    pub fn deliver(
        &self,
        app: &App,
        channel: &str,
        frame: &Bytes,
        except: Option<SocketId>,
        position: Option<Position>,
        keep: Option<Keep<'_>>,
    ) -> usize {
        self.keep_here(channel, frame, keep);
        match app.history_rule(channel) {
            Some(rule) => {
                let numbering = position.map_or(Numbering::Unnumbered, Numbering::At);
                self.deliver_recorded(rule, channel, frame, except, numbering, None)
            }
            None => self.deliver_plain(channel, frame, except),
        }
    }

    pub(super) fn deliver_plain(&self, channel: &str, frame: &Bytes, except: Option<SocketId>) -> usize {
        self.observer.emit(|| event_observation(channel, frame, except.map(|id| id.to_string())));
        let shard = read(self.shard(channel));
        match shard.channels.get(channel) {
            Some(entry) => self.fan_out(entry, frame, except),
            None => 0,
        }
    }

    /// Pushes `frame` into every subscriber's queue but `except`'s (through the filters, where a
    /// subscriber set one); returns how many got it.
    pub(super) fn fan_out(&self, entry: &Channel, frame: &Bytes, except: Option<SocketId>) -> usize {
        if !entry.filters.is_empty() || !entry.held.is_empty() {
            return self.deliver_filtered(entry, frame, except);
        }
        let mut delivered = 0;
        let mut frames = EventFrames::new(frame);
        for (id, connection) in &entry.subscribers {
            if Some(*id) != except {
                if frames.push_to(connection) == Push::Overflowed {
                    self.metrics.slow_consumer_closes.increment(1);
                }
                delivered += 1;
            }
        }
        self.metrics.frames_delivered.increment(delivered as u64);
        self.delivered_total.fetch_add(delivered as u64, Ordering::Relaxed);
        delivered
    }

    /// Fan-out to a channel where some subscribers filter, or wait for a resume from the store:
    /// the event's name and data are read once, and each filter is checked against them; a
    /// waiting subscriber's [`Hold`](super::stored::Hold) takes what passes.
    pub(super) fn deliver_filtered(&self, entry: &Channel, frame: &Bytes, except: Option<SocketId>) -> usize {
        let payload = plexus_protocol::wsframe::server_frame_payload(frame);
        // Only filters read the event; a channel here only for its holds skips the parse.
        let parsed: Option<Event<'_>> =
            if entry.filters.is_empty() { None } else { serde_json::from_slice(&payload).ok() };
        let name = parsed.as_ref().map_or("", |e| &*e.event);
        let mut data: Option<Option<serde_json::Value>> = None;
        let mut delivered = 0;
        let mut frames = EventFrames::new(frame);
        for (id, connection) in &entry.subscribers {
            if Some(*id) == except {
                continue;
            }
            if let Some(filter) = entry.filters.get(id) {
                let data = if filter.needs_data() {
                    data.get_or_insert_with(|| {
                        parsed
                            .as_ref()
                            .and_then(|e| e.data.as_deref())
                            .and_then(|d| serde_json::from_str(d).ok())
                    })
                    .as_ref()
                } else {
                    None
                };
                if !filter.matches(name, data) {
                    continue;
                }
            }
            if entry.held.get(id).is_some_and(|hold| hold.intercept(frame)) {
                continue;
            }
            if frames.push_to(connection) == Push::Overflowed {
                self.metrics.slow_consumer_closes.increment(1);
            }
            delivered += 1;
        }
        self.metrics.frames_delivered.increment(delivered as u64);
        self.delivered_total.fetch_add(delivered as u64, Ordering::Relaxed);
        delivered
    }

    /// Events published on this node and frames queued to its subscribers, since start.
    pub fn totals(&self) -> (u64, u64) {
        (self.published_total.load(Ordering::Relaxed), self.delivered_total.load(Ordering::Relaxed))
    }
}

/// One event's frame for a fan-out, in every form its subscribers take: the plain WebSocket
/// frame, its permessage-deflate twin and its server-sent event. Each form is made at most once
/// per event, and only if some subscriber takes it: every compressed subscriber gets the same
/// bytes, every SSE reader the same event, every other subscriber the plain frame.
pub(super) struct EventFrames<'a> {
    plain: &'a Bytes,
    /// `None` until a subscriber asks; then `Some(None)` if the frame did not shrink.
    compressed: Option<Option<Bytes>>,
    sse: Option<Bytes>,
}

impl<'a> EventFrames<'a> {
    pub(super) fn new(plain: &'a Bytes) -> Self {
        EventFrames { plain, compressed: None, sse: None }
    }

    /// Queues the event for `connection`, in the form it takes.
    pub(super) fn push_to(&mut self, connection: &Connection) -> Push {
        let plain = self.plain;
        if connection.outbound.is_sse() {
            let event = self.sse.get_or_insert_with(|| plexus_protocol::sse::event_from_frame(plain));
            return connection.outbound.push_encoded(event.clone());
        }
        if connection.takes_compressed(plain.len()) {
            if let Some(compressed) =
                self.compressed.get_or_insert_with(|| plexus_protocol::deflate::compress_frame(plain))
            {
                return connection.outbound.push_encoded(compressed.clone());
            }
        }
        connection.outbound.push_encoded(plain.clone())
    }
}
