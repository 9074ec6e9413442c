//! How cluster messages look on the bus: a JSON header line, then the raw payload of the event's
//! WebSocket frame when there is one (so an event's text crosses the bus without being escaped
//! or parsed again).
//!
//! Broadcasts carry the sender's sequence number (1, 2, 3, …) so a receiver notices a gap and
//! asks for a snapshot; direct replies carry 0. Bad bytes decode to an error, never a panic.

use bytes::{BufMut, Bytes, BytesMut};
use plexus_protocol::wsframe::{self, Opcode};
use serde::{Deserialize, Serialize};

use super::{NodeId, Update};

/// One message between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub from: NodeId,
    /// Position in the sender's broadcast sequence; 0 for a direct message.
    pub seq: u64,
    pub body: Body,
    /// The event frame's payload, for bodies that carry an event.
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    from: NodeId,
    seq: u64,
    #[serde(flatten)]
    body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Body {
    /// A node joined the bus (started, or came back after losing it): peers send it snapshots.
    Hello,
    Heartbeat,
    /// A node is shutting down; peers forget it now instead of waiting for its lease to run out.
    Bye,
    /// Direct: "send me your snapshot".
    SyncRequest,
    /// Direct: one part of the sender's state as of broadcast `of`.
    Snapshot {
        of: u64,
        part: u32,
        parts: u32,
        apps: Vec<AppSnapshot>,
    },
    Publish {
        app: String,
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        except: Option<String>,
        /// `[epoch, offset]` on a history channel, as numbered by the channel's sequencer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<(u32, u64)>,
        /// On a cache channel: what every node keeps (the payload is the frame).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep: Option<KeepBody>,
    },
    /// An event of a history channel for node `by` to number and publish.
    Sequence {
        app: String,
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        except: Option<String>,
        by: NodeId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep: Option<KeepBody>,
    },
    /// A cache channel's last event, as nodes before one-message publishes sent it beside the
    /// event (still read, never sent).
    Remember {
        app: String,
        channel: String,
        data: String,
        ttl_ms: u64,
    },
    ToUser {
        app: String,
        user_id: String,
    },
    Terminate {
        app: String,
        user_id: String,
    },
    Share {
        app: String,
        channel: String,
        subscriptions: usize,
    },
    Member {
        app: String,
        channel: String,
        user_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        info: Option<String>,
        present: bool,
    },
    User {
        app: String,
        user_id: String,
        online: bool,
    },
    /// The sender's figures per app (see [`super::load`]); sent unnumbered, like a direct
    /// message, because nothing depends on its order.
    Load {
        apps: Vec<AppLoad>,
    },
    /// A kind of message this node does not know: a newer node's. It is skipped, but a numbered
    /// one still takes its place in the sender's sequence, so a cluster in the middle of a
    /// rolling upgrade does not take every new kind of message for a lost one and re-sync.
    #[serde(other)]
    Unknown,
}

/// One app's figures on the sending node, as totals since it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppLoad {
    pub app: String,
    pub connections: u64,
    /// Events published on the sender.
    pub published: u64,
    /// Messages queued to the sender's subscribers.
    pub delivered: u64,
}

/// What a cache channel keeps (see [`crate::cluster::Keep`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepBody {
    pub data: String,
    pub ttl_ms: u64,
}

impl KeepBody {
    fn of(keep: Option<crate::cluster::Keep<'_>>) -> Option<KeepBody> {
        keep.map(|keep| KeepBody { data: keep.data.to_owned(), ttl_ms: keep.ttl.as_millis() as u64 })
    }
}

impl Body {
    /// Bodies that describe the sender's state (held back while a snapshot is awaited).
    pub fn is_state(&self) -> bool {
        matches!(self, Body::Share { .. } | Body::Member { .. } | Body::User { .. })
    }
}

/// One app's part of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSnapshot {
    pub app: String,
    #[serde(default)]
    pub shares: Vec<ShareState>,
    #[serde(default)]
    pub cache: Vec<CacheState>,
    /// Users signed in on the sender.
    #[serde(default)]
    pub users: Vec<String>,
    /// The sender's copy of each history channel (every node holds the same events at the same
    /// positions), so a node that joins can resume clients from before it joined.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub histories: Vec<HistoryState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryState {
    pub channel: String,
    pub epoch: u32,
    /// Oldest first, offsets consecutive.
    pub events: Vec<HistoryEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub offset: u64,
    /// How long ago the sender recorded it (its TTL runs on from there).
    pub age_ms: u64,
    /// The event frame's payload (Pusher JSON text, with its `position`).
    pub payload: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareState {
    pub channel: String,
    pub subscriptions: usize,
    /// `[user_id, user_info JSON or null]`.
    #[serde(default)]
    pub members: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheState {
    pub channel: String,
    pub data: String,
    pub ttl_ms: u64,
    /// The event frame's payload (Pusher JSON text).
    pub payload: String,
}

/// Why bytes from the bus are not a cluster message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("no header line")]
    NoHeader,
    #[error("bad header: {0}")]
    Header(#[from] serde_json::Error),
}

/// Encodes a message; `payload` follows the header line as it is.
pub fn encode(from: NodeId, seq: u64, body: Body, payload: &[u8]) -> Bytes {
    let header = Header { from, seq, body };
    let mut out = BytesMut::with_capacity(128 + payload.len());
    // Serialising plain data into memory cannot fail.
    serde_json::to_writer((&mut out).writer(), &header).expect("cluster header serialises");
    out.put_u8(b'\n');
    out.extend_from_slice(payload);
    out.freeze()
}

/// Decodes a message from the bus.
pub fn decode(message: &Bytes) -> Result<Envelope, WireError> {
    let newline = message.iter().position(|b| *b == b'\n').ok_or(WireError::NoHeader)?;
    let header: Header = serde_json::from_slice(&message[..newline])?;
    Ok(Envelope {
        from: header.from,
        seq: header.seq,
        body: header.body,
        payload: message.slice(newline + 1..),
    })
}

/// The body and payload that carry `update` of `app`.
pub fn update_body(app: &str, update: &Update<'_>) -> (Body, Bytes) {
    let app = app.to_owned();
    match *update {
        Update::Publish { channel, frame, except, position, keep } => (
            Body::Publish {
                app,
                channel: channel.to_owned(),
                except: except.map(|id| id.to_string()),
                position: position.map(|p| (p.epoch, p.offset)),
                keep: KeepBody::of(keep),
            },
            wsframe::server_frame_payload(frame),
        ),
        Update::Sequence { channel, frame, except, by, keep } => (
            Body::Sequence {
                app,
                channel: channel.to_owned(),
                except: except.map(|id| id.to_string()),
                by,
                keep: KeepBody::of(keep),
            },
            wsframe::server_frame_payload(frame),
        ),
        Update::ToUser { user_id, frame } => {
            (Body::ToUser { app, user_id: user_id.to_owned() }, wsframe::server_frame_payload(frame))
        }
        Update::Terminate { user_id } => (Body::Terminate { app, user_id: user_id.to_owned() }, Bytes::new()),
        Update::Share { channel, subscriptions } => {
            (Body::Share { app, channel: channel.to_owned(), subscriptions }, Bytes::new())
        }
        Update::Member { channel, user_id, info, present } => (
            Body::Member {
                app,
                channel: channel.to_owned(),
                user_id: user_id.to_owned(),
                info: info.map(str::to_owned),
                present,
            },
            Bytes::new(),
        ),
        Update::User { user_id, online } => {
            (Body::User { app, user_id: user_id.to_owned(), online }, Bytes::new())
        }
    }
}

/// The WebSocket frame to deliver locally for an event payload that came over the bus.
pub fn frame_of(payload: &[u8]) -> Bytes {
    wsframe::frame(Opcode::Text, payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_protocol::codec::{Data, ServerEvent};

    #[test]
    fn a_published_event_crosses_the_bus_byte_for_byte_with_what_a_cache_channel_keeps() {
        let frame = ServerEvent::new("greet").channel("room").data(Data::Str("{\"a\":\"\\n\"}")).to_frame();
        let except = "123.456".parse().unwrap();
        let position = Some(crate::hub::Position { epoch: 9, offset: 3 });
        let (body, payload) = update_body(
            "app",
            &Update::Publish {
                channel: "cache-room",
                frame: &frame,
                except: Some(except),
                position,
                keep: Some(crate::cluster::Keep { data: "{}", ttl: std::time::Duration::from_secs(30) }),
            },
        );
        let bytes = encode(7, 42, body, &payload);
        let envelope = decode(&bytes).unwrap();
        assert_eq!((envelope.from, envelope.seq), (7, 42));
        assert_eq!(
            envelope.body,
            Body::Publish {
                app: "app".into(),
                channel: "cache-room".into(),
                except: Some("123.456".into()),
                position: Some((9, 3)),
                keep: Some(KeepBody { data: "{}".into(), ttl_ms: 30_000 }),
            }
        );
        assert_eq!(frame_of(&envelope.payload), frame, "the frame rebuilt on the other node is identical");
    }

    #[test]
    fn a_publish_from_a_node_that_knows_no_keep_still_decodes() {
        let old = b"{\"from\":1,\"seq\":2,\"t\":\"publish\",\"app\":\"a\",\"channel\":\"c\"}\n{}";
        let envelope = decode(&Bytes::from_static(old)).unwrap();
        assert!(matches!(envelope.body, Body::Publish { keep: None, .. }));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"no newline",
            b"{\"from\":1}\n",
            b"\xff\xfe\n",
            b"{\"from\":1,\"seq\":1}\n",
            b"{\"from\":1,\"seq\":1,\"t\":\"publish\"}\n",
        ] {
            assert!(decode(&Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_kind_of_message_from_a_newer_node_decodes_as_unknown_with_its_sequence_number() {
        let newer = b"{\"from\":1,\"seq\":7,\"t\":\"some_future_kind\",\"field\":[1,2]}\npayload";
        let envelope = decode(&Bytes::from_static(newer)).unwrap();
        assert_eq!((envelope.from, envelope.seq, envelope.body), (1, 7, Body::Unknown));
    }

    #[test]
    fn snapshots_round_trip() {
        let body = Body::Snapshot {
            of: 9,
            part: 0,
            parts: 1,
            apps: vec![AppSnapshot {
                app: "1".into(),
                shares: vec![ShareState {
                    channel: "presence-x".into(),
                    subscriptions: 3,
                    members: vec![("u1".into(), Some("{\"n\":1}".into())), ("u2".into(), None)],
                }],
                cache: vec![],
                users: vec!["u1".into()],
                histories: vec![HistoryState {
                    channel: "feed-1".into(),
                    epoch: 4,
                    events: vec![HistoryEvent { offset: 2, age_ms: 50, payload: "{\"event\":\"x\"}".into() }],
                }],
            }],
        };
        let envelope = decode(&encode(1, 0, body.clone(), b"")).unwrap();
        assert_eq!(envelope.body, body);
    }
}
