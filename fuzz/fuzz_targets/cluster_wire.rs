//! The cluster bus decoder (`plexus_core::cluster::wire`): bytes another node, or anything that
//! can publish on the NATS subject or Redis channel, puts on the bus.
//!
//! Invariants:
//! - `decode` never panics;
//! - whatever decodes re-encodes to bytes that decode to the same envelope;
//! - every message built field by field (every body, any payload bytes, newlines included)
//!   decodes to exactly what was encoded.

#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use plexus_core::cluster::wire::{
    decode, encode, AppLoad, AppSnapshot, Body, CacheState, Envelope, HistoryEvent, HistoryState, KeepBody,
    ShareState,
};

#[derive(Arbitrary, Debug)]
enum Input {
    Bytes(Vec<u8>),
    /// A header line of chosen JSON text, then a payload.
    Header {
        json: String,
        payload: Vec<u8>,
    },
    Message {
        from: u64,
        seq: u64,
        body: BodySpec,
        payload: Vec<u8>,
    },
}

/// Mirrors `Body` (which lives in plexus-core and derives no `Arbitrary`).
#[derive(Arbitrary, Debug)]
enum BodySpec {
    Hello,
    Heartbeat,
    Bye,
    SyncRequest,
    Snapshot { of: u64, part: u32, parts: u32, apps: Vec<AppSpec> },
    Publish {
        app: String,
        channel: String,
        except: Option<String>,
        position: Option<(u32, u64)>,
        keep: Option<(String, u64)>,
    },
    Sequence { app: String, channel: String, except: Option<String>, by: u64, keep: Option<(String, u64)> },
    Remember { app: String, channel: String, data: String, ttl_ms: u64 },
    ToUser { app: String, user_id: String },
    Terminate { app: String, user_id: String },
    Share { app: String, channel: String, subscriptions: usize },
    Member { app: String, channel: String, user_id: String, info: Option<String>, present: bool },
    User { app: String, user_id: String, online: bool },
    Load { apps: Vec<(String, u64, u64, u64)> },
}

#[derive(Arbitrary, Debug)]
struct AppSpec {
    app: String,
    shares: Vec<(String, usize, Vec<(String, Option<String>)>)>,
    cache: Vec<(String, String, u64, String)>,
    users: Vec<String>,
    histories: Vec<(String, u32, Vec<(u64, u64, String)>)>,
}

fn keep_body(keep: Option<(String, u64)>) -> Option<KeepBody> {
    keep.map(|(data, ttl_ms)| KeepBody { data, ttl_ms })
}

impl BodySpec {
    fn body(self) -> Body {
        match self {
            BodySpec::Hello => Body::Hello,
            BodySpec::Heartbeat => Body::Heartbeat,
            BodySpec::Bye => Body::Bye,
            BodySpec::SyncRequest => Body::SyncRequest,
            BodySpec::Snapshot { of, part, parts, apps } => {
                Body::Snapshot { of, part, parts, apps: apps.into_iter().map(AppSpec::snapshot).collect() }
            }
            BodySpec::Publish { app, channel, except, position, keep } => {
                Body::Publish { app, channel, except, position, keep: keep_body(keep) }
            }
            BodySpec::Sequence { app, channel, except, by, keep } => {
                Body::Sequence { app, channel, except, by, keep: keep_body(keep) }
            }
            BodySpec::Remember { app, channel, data, ttl_ms } => {
                Body::Remember { app, channel, data, ttl_ms }
            }
            BodySpec::ToUser { app, user_id } => Body::ToUser { app, user_id },
            BodySpec::Terminate { app, user_id } => Body::Terminate { app, user_id },
            BodySpec::Share { app, channel, subscriptions } => Body::Share { app, channel, subscriptions },
            BodySpec::Member { app, channel, user_id, info, present } => {
                Body::Member { app, channel, user_id, info, present }
            }
            BodySpec::User { app, user_id, online } => Body::User { app, user_id, online },
            BodySpec::Load { apps } => {
                let apps = apps
                    .into_iter()
                    .map(|(app, connections, published, delivered)| AppLoad { app, connections, published, delivered })
                    .collect();
                Body::Load { apps }
            }
        }
    }
}

impl AppSpec {
    fn snapshot(self) -> AppSnapshot {
        AppSnapshot {
            app: self.app,
            shares: self
                .shares
                .into_iter()
                .map(|(channel, subscriptions, members)| ShareState { channel, subscriptions, members })
                .collect(),
            cache: self
                .cache
                .into_iter()
                .map(|(channel, data, ttl_ms, payload)| CacheState { channel, data, ttl_ms, payload })
                .collect(),
            users: self.users,
            histories: self
                .histories
                .into_iter()
                .map(|(channel, epoch, events)| HistoryState {
                    channel,
                    epoch,
                    events: events
                        .into_iter()
                        .map(|(offset, age_ms, payload)| HistoryEvent { offset, age_ms, payload })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Decoding what was decoded and encoded again gives the same envelope.
fn check_stable(envelope: &Envelope) {
    let bytes = encode(envelope.from, envelope.seq, envelope.body.clone(), &envelope.payload);
    let again = decode(&bytes).unwrap_or_else(|e| panic!("re-encoded {envelope:?} does not decode: {e}"));
    assert_eq!(&again, envelope);
    // One message, one header line: the encoder never writes a raw newline into the JSON.
    let header_end = bytes.iter().position(|b| *b == b'\n').expect("a header line");
    assert_eq!(bytes.len() - header_end - 1, envelope.payload.len());
}

fn check_bytes(bytes: Bytes) {
    if let Ok(envelope) = decode(&bytes) {
        assert!(bytes.ends_with(&envelope.payload));
        let _ = envelope.body.is_state();
        check_stable(&envelope);
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Bytes(bytes) => check_bytes(Bytes::from(bytes)),
        Input::Header { json, payload } => {
            let mut bytes = json.into_bytes();
            bytes.push(b'\n');
            bytes.extend_from_slice(&payload);
            check_bytes(Bytes::from(bytes));
        }
        Input::Message { from, seq, body, payload } => {
            let body = body.body();
            let bytes = encode(from, seq, body.clone(), &payload);
            let envelope = decode(&bytes).unwrap_or_else(|e| panic!("encoded {body:?} does not decode: {e}"));
            assert_eq!(envelope, Envelope { from, seq, body, payload: Bytes::from(payload) });
        }
    }
});
