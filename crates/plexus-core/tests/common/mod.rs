//! What a client would read from its connection, for tests that drive the hub and sessions
//! without sockets. The one place that knows what the outbound queue carries: when its frame
//! type changes, only [`drain`] changes.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use plexus_realtime_core::outbound::{CloseReason, Drained};
use plexus_realtime_core::Outbound;
use serde_json::Value;

/// Everything queued for one connection so far.
#[derive(Debug, Default)]
pub struct Received {
    /// Each frame's JSON, with a `data` string that holds JSON replaced by that JSON, so tests
    /// compare values rather than escaped text.
    pub frames: Vec<Value>,
    /// The close that follows them, when the connection is closing.
    pub close: Option<CloseReason>,
}

impl Received {
    /// The `event` names, in order.
    pub fn events(&self) -> Vec<&str> {
        self.frames.iter().map(|f| f["event"].as_str().unwrap_or("?")).collect()
    }

    /// The frames of event `name`.
    pub fn named(&self, name: &str) -> Vec<&Value> {
        self.frames.iter().filter(|f| f["event"] == name).collect()
    }
}

/// Takes everything queued for the connection, without waiting: the queue is drained as the
/// connection's writer would, but polled once instead of awaited.
pub fn drain(outbound: &Outbound) -> Received {
    let (frames, drained) = drain_raw(outbound);
    let close = match drained {
        Some(Drained::Close(reason)) => Some(reason),
        _ => None,
    };
    Received { frames: frames.iter().map(parse).collect(), close }
}

/// The bytes queued for the connection, as its writer would take them (WebSocket frames, or
/// an SSE stream's events), and how the drain ended (`None`: nothing queued).
pub fn drain_raw(outbound: &Outbound) -> (Vec<Bytes>, Option<Drained>) {
    let mut frames: Vec<Bytes> = Vec::new();
    let drained = {
        let mut drain = pin!(outbound.drain_into(&mut frames));
        match drain.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(drained) => Some(drained),
            Poll::Pending => None,
        }
    };
    (frames, drained)
}

fn parse(frame: &Bytes) -> Value {
    let payload = plexus_protocol::wsframe::server_frame_payload(frame);
    let mut value: Value = serde_json::from_slice(&payload).unwrap_or_else(|e| {
        panic!("a frame that is not JSON ({e}): {:?}", String::from_utf8_lossy(&payload))
    });
    if let Some(inner) = value["data"].as_str().and_then(|d| serde_json::from_str::<Value>(d).ok()) {
        value["data"] = inner;
    }
    value
}
