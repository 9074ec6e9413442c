//! Each connection's bounded queue of encoded frames, and the slow-consumer policy.
//!
//! Producers (fan-out, replies) push shared [`Bytes`] frames and never wait: a push is a short
//! uncontended lock and a refcount increment, with no allocation once the queue has grown to its
//! working size. One consumer, the connection's writer, drains everything queued at once and
//! writes it in one vectored call.
//!
//! A client that cannot keep up is not allowed to grow memory or delay anyone: once more than
//! `max_bytes` are waiting, the queue drops what it holds and closes the connection with 4100
//! (pusher-js backs off and reconnects). Closing is a state of the queue, so a close requested by
//! any task (slow consumer, shutdown, app decision) reaches the writer in order after the frames
//! already queued.
//!
//! A queue holds what its reader's transport writes: WebSocket frames, or, for a server-sent
//! events stream ([`Outbound::for_sse`]), SSE events. Producers always push WebSocket frames; an
//! SSE queue turns each into its SSE event as it is pushed ([`plexus_protocol::sse`]), and a
//! producer that has the SSE event already (the fan-out renders one per event for all SSE
//! readers) hands it over with [`Outbound::push_encoded`].

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use plexus_protocol::{codec, CloseCode};
use tokio::sync::Notify;

/// Why and how a connection is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub message: String,
}

/// The outcome of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// This push overflowed the queue: the connection is now closing as a slow consumer.
    Overflowed,
    /// The connection is already closing; the frame was dropped.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// `Some(None)`: ending without a close frame of our own (the peer is gone or closed first).
    closing: Option<Option<CloseReason>>,
}

/// A bounded queue of frames for one connection.
#[derive(Debug)]
pub struct Outbound {
    state: Mutex<State>,
    wake_writer: Notify,
    max_bytes: usize,
    /// Holds SSE events rather than WebSocket frames.
    sse: bool,
}

/// What the writer got from one [`Outbound::drain_into`].
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Frames were appended; keep going.
    Frames,
    /// Frames (possibly none) were appended, and after them the connection must close with this.
    Close(CloseReason),
    /// Frames (possibly none) were appended; then stop without a close frame of our own.
    End,
}

impl Outbound {
    /// A queue of WebSocket frames.
    pub fn new(max_bytes: usize) -> Self {
        Outbound { state: Mutex::new(State::default()), wake_writer: Notify::new(), max_bytes, sse: false }
    }

    /// A queue of server-sent events: every frame pushed is stored as its SSE event.
    pub fn for_sse(max_bytes: usize) -> Self {
        Outbound { sse: true, ..Outbound::new(max_bytes) }
    }

    /// Whether this queue holds SSE events.
    pub fn is_sse(&self) -> bool {
        self.sse
    }

    /// `frame` as this queue stores it.
    fn encode(&self, frame: Bytes) -> Bytes {
        if self.sse {
            plexus_protocol::sse::event_from_frame(&frame)
        } else {
            frame
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (each operation is a
        // single push, drain or flag), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a WebSocket frame for the writer (as its SSE event on an SSE queue).
    pub fn push(&self, frame: Bytes) -> Push {
        self.push_encoded(self.encode(frame))
    }

    /// Queues bytes already in this queue's form: a WebSocket frame, or on an SSE queue an SSE
    /// event.
    pub fn push_encoded(&self, frame: Bytes) -> Push {
        let mut state = self.lock();
        if state.closing.is_some() {
            return Push::Closed;
        }
        if state.bytes + frame.len() > self.max_bytes && !state.frames.is_empty() {
            state.frames.clear();
            state.bytes = 0;
            let message = format!("too slow: more than {} bytes waiting to be sent", self.max_bytes);
            let error = self.encode(codec::error(Some(CloseCode::OverCapacity.code()), &message, None));
            state.frames.push_back(error);
            state.closing = Some(Some(CloseReason { code: CloseCode::OverCapacity.code(), message }));
            drop(state);
            self.wake_writer.notify_one();
            return Push::Overflowed;
        }
        state.bytes += frame.len();
        state.frames.push_back(frame);
        drop(state);
        self.wake_writer.notify_one();
        Push::Queued
    }

    /// Sends `pusher:error {code, message}` after what is already queued, then closes with `code`.
    /// Later pushes are dropped. A second close keeps the first reason.
    pub fn close(&self, code: CloseCode, message: &str) {
        // 43xx codes are for pusher:error only; a close with one makes pusher-js give up for good.
        debug_assert!(code.closes_socket(), "{code:?} must not close a socket");
        self.close_with_code(code.code(), message);
    }

    /// [`Outbound::close`] with any close code, e.g. a WebSocket-level 1009 for an oversized frame.
    pub fn close_with_code(&self, code: u16, message: &str) {
        let mut state = self.lock();
        if state.closing.is_some() {
            return;
        }
        state.frames.push_back(self.encode(codec::error(Some(code), message, None)));
        state.closing = Some(Some(CloseReason { code, message: message.to_owned() }));
        drop(state);
        self.wake_writer.notify_one();
    }

    /// Closes with a WebSocket-level `code` (1002, 1007, 1009) after what is already queued, with
    /// no `pusher:error` first: the client broke the WebSocket protocol itself, so the connection
    /// is failed with a close frame alone (RFC 6455 §7.1.7). Later pushes are dropped.
    pub fn fail(&self, code: u16, message: &str) {
        let mut state = self.lock();
        if state.closing.is_some() {
            return;
        }
        state.closing = Some(Some(CloseReason { code, message: message.to_owned() }));
        drop(state);
        self.wake_writer.notify_one();
    }

    /// Stops the queue without a goodbye (the peer is gone or the socket failed): drops what is
    /// queued and every later push, and lets the writer finish.
    pub fn abort(&self) {
        self.finish(true);
    }

    /// Lets the writer send what is queued (e.g. the echo of the client's close frame), then
    /// finish without a close frame of its own.
    pub fn end(&self) {
        self.finish(false);
    }

    fn finish(&self, discard_queued: bool) {
        let mut state = self.lock();
        if discard_queued {
            state.frames.clear();
            state.bytes = 0;
        }
        if state.closing.is_none() {
            state.closing = Some(None);
        }
        drop(state);
        self.wake_writer.notify_one();
    }

    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.lock().frames.is_empty()
    }

    /// Waits until there is something to write, then moves every queued frame into `out`.
    pub async fn drain_into(&self, out: &mut Vec<Bytes>) -> Drained {
        loop {
            {
                let mut state = self.lock();
                if !state.frames.is_empty() || state.closing.is_some() {
                    out.extend(state.frames.drain(..));
                    state.bytes = 0;
                    // An idle connection should not keep a queue sized for a past burst.
                    if state.frames.capacity() > 64 {
                        state.frames.shrink_to(8);
                    }
                    return match &state.closing {
                        Some(Some(reason)) => Drained::Close(reason.clone()),
                        Some(None) => Drained::End,
                        None => Drained::Frames,
                    };
                }
            }
            // notify_one stores a permit when no one waits, so a push between the check above and
            // this await is not missed.
            self.wake_writer.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[tokio::test]
    async fn writer_gets_frames_in_order_in_one_drain() {
        let q = Outbound::new(1000);
        assert_eq!(q.push(frame(1)), Push::Queued);
        assert_eq!(q.push(frame(2)), Push::Queued);
        let mut out = Vec::new();
        assert_eq!(q.drain_into(&mut out).await, Drained::Frames);
        assert_eq!(out.iter().map(Bytes::len).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[tokio::test]
    async fn overflow_drops_the_backlog_and_closes_with_4100() {
        let q = Outbound::new(10);
        assert_eq!(q.push(frame(6)), Push::Queued);
        assert_eq!(q.push(frame(6)), Push::Overflowed);
        assert_eq!(q.push(frame(1)), Push::Closed);
        let mut out = Vec::new();
        match q.drain_into(&mut out).await {
            Drained::Close(reason) => assert_eq!(reason.code, 4100),
            other => panic!("expected close, got {other:?}"),
        }
        assert_eq!(out.len(), 1, "only the pusher:error frame remains");
        assert!(std::str::from_utf8(&out[0][2..]).unwrap().contains("4100"));
    }

    #[tokio::test]
    async fn a_single_frame_larger_than_the_bound_still_goes_out() {
        let q = Outbound::new(10);
        assert_eq!(q.push(frame(50)), Push::Queued);
    }

    #[tokio::test]
    async fn close_comes_after_frames_already_queued() {
        let q = Outbound::new(1000);
        q.push(frame(3));
        q.close(CloseCode::ReconnectImmediately, "bye");
        q.close(CloseCode::AppDisabled, "ignored");
        let mut out = Vec::new();
        let reason = q.drain_into(&mut out).await;
        assert_eq!(reason, Drained::Close(CloseReason { code: 4200, message: "bye".into() }));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), 3);
    }

    #[tokio::test]
    async fn writer_wakes_for_a_push_that_happens_while_it_waits() {
        let q = std::sync::Arc::new(Outbound::new(1000));
        let writer = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                q.drain_into(&mut out).await;
                out.len()
            })
        };
        tokio::task::yield_now().await;
        q.push(frame(1));
        assert_eq!(writer.await.unwrap(), 1);
    }
}

#[cfg(test)]
mod ending_tests {
    use super::*;

    #[tokio::test]
    async fn end_sends_what_is_queued_and_abort_drops_it() {
        let q = Outbound::new(100);
        q.push(Bytes::from_static(b"echo"));
        q.end();
        let mut out = Vec::new();
        assert_eq!(q.drain_into(&mut out).await, Drained::End);
        assert_eq!(out.len(), 1);

        let q = Outbound::new(100);
        q.push(Bytes::from_static(b"lost"));
        q.abort();
        let mut out = Vec::new();
        assert_eq!(q.drain_into(&mut out).await, Drained::End);
        assert!(out.is_empty());
        assert_eq!(q.push(Bytes::from_static(b"x")), Push::Closed);
    }
}
