//! The Pusher protocol as a load generator speaks it: opening a connection up to
//! `pusher:connection_established`, subscribing (with a signed `auth` for private channels),
//! answering `pusher:ping`, the payload every bench event carries, and the receive-side
//! bookkeeping (latency, loss, duplicates, reordering).
//!
//! Received events are classified with targeted byte scans rather than a JSON parser: the event
//! name is read from the `"event":"…"` field and the `seq`/`t` numbers are found in `data`
//! whether it is an object (client events) or a JSON string holding one (API events). Full
//! `serde_json` parsing is kept for the rare frames (handshake, errors).

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus_protocol::codec::{ClientFrame, Subscribe};
use plexus_protocol::signature::{auth_token, channel_string_to_sign};

use crate::stats::{clock_us, since_us, Errors, Latencies};
use crate::target::Target;
use crate::ws::{find, Flow, Outbox, WsConn, WsError};

/// Name of the events the bench publishes through the API.
pub const API_EVENT: &str = "bench";
/// Name of the client events the bench sends.
pub const CLIENT_EVENT: &str = "client-bench";

const PONG: &[u8] = br#"{"event":"pusher:pong","data":{}}"#;

/// The value of the top-level `"event"` field (the server writes it first; a scan finds it anywhere).
pub fn event_name(text: &[u8]) -> Option<&[u8]> {
    let at = find(text, b"\"event\":")? + 8;
    let rest = &text[at..];
    let open = rest.iter().position(|&b| b == b'"')?;
    let name = &rest[open + 1..];
    let close = name.iter().position(|&b| b == b'"')?;
    Some(&name[..close])
}

/// Finds the unsigned integer field `key` in `text`, either as `"key":N` or, inside a JSON string,
/// as `\"key\":N`.
pub fn scan_u64(text: &[u8], key: &[u8]) -> Option<u64> {
    let mut from = 0;
    while let Some(i) = find(&text[from..], key) {
        let at = from + i;
        from = at + 1;
        if at == 0 || text[at - 1] != b'"' {
            continue;
        }
        let after = &text[at + key.len()..];
        let digits = if let Some(r) = after.strip_prefix(b"\":") {
            r
        } else if let Some(r) = after.strip_prefix(b"\\\":") {
            r
        } else {
            continue;
        };
        let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 || n > 19 {
            return None;
        }
        return std::str::from_utf8(&digits[..n]).ok()?.parse().ok();
    }
    None
}

/// The JSON of a bench payload: `{"seq":N,"t":MICROS,"p":"xxx…"}` — sequence first so scans stop early.
pub fn write_payload(out: &mut Vec<u8>, seq: u64, padding: &str) {
    let _ = write!(out, r#"{{"seq":{seq},"t":{},"p":"{padding}"}}"#, clock_us());
}

/// `code` of a `pusher:error` frame (`pusher_error_4301`, or `pusher_error` without one).
pub fn error_reason(text: &[u8]) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(text).ok().and_then(|v| {
        let data = &v["data"];
        match data {
            serde_json::Value::String(s) => {
                serde_json::from_str::<serde_json::Value>(s).ok().and_then(|d| d["code"].as_u64())
            }
            _ => data["code"].as_u64(),
        }
    });
    match code {
        Some(c) => format!("pusher_error_{c}"),
        None => "pusher_error".into(),
    }
}

/// Why a connection could not be set up or was lost.
pub fn ws_reason(phase: &str, e: &WsError) -> String {
    format!("{phase}_{}", e.reason())
}

/// An open connection that received `connection_established`.
#[derive(Debug)]
pub struct Session {
    pub ws: WsConn,
    pub socket_id: String,
}

impl Session {
    /// Connects and waits for `pusher:connection_established` until `deadline`. The error is a
    /// reason for the tallies.
    pub async fn open(
        target: &Target,
        source: Option<IpAddr>,
        seed: u32,
        read_buffer: usize,
        deadline: Instant,
    ) -> Result<Session, String> {
        let path = target.ws_path();
        let connect = WsConn::connect(
            target.addr,
            source,
            &target.host_header,
            &path,
            seed,
            read_buffer,
            target.deflate,
        );
        let mut ws = match tokio::time::timeout_at(deadline.into(), connect).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => return Err(ws_reason("connect", &e)),
            Err(_) => return Err("connect_timeout".into()),
        };
        let mut established = None;
        wait_for(&mut ws, deadline, "established", |text| {
            match event_name(text) {
                Some(b"pusher:connection_established") => {
                    established = Some(socket_id(text));
                }
                Some(b"pusher:error") => established = Some(Err(error_reason(text))),
                _ => established = Some(Err("established_unexpected_first_frame".into())),
            }
            true
        })
        .await?;
        let socket_id = established.expect("set when wait_for returns Ok")?;
        Ok(Session { ws, socket_id })
    }

    /// Subscribes to `channel` (signing it when `secret_auth` is set, i.e. for private channels)
    /// and waits for `pusher_internal:subscription_succeeded`.
    pub async fn subscribe(
        &mut self,
        target: &Target,
        channel: &str,
        private: bool,
        deadline: Instant,
    ) -> Result<(), String> {
        let auth = private.then(|| {
            auth_token(&target.key, &target.secret, &channel_string_to_sign(&self.socket_id, channel, None))
        });
        self.subscribe_with(channel, auth, None, deadline).await.map(drop)
    }

    /// Joins presence channel `channel` as the member described by `channel_data` (JSON with
    /// `user_id`), signed with the target's secret; returns the `subscription_succeeded` frame.
    pub async fn join_presence(
        &mut self,
        target: &Target,
        channel: &str,
        channel_data: &str,
        deadline: Instant,
    ) -> Result<String, String> {
        let to_sign = channel_string_to_sign(&self.socket_id, channel, Some(channel_data));
        let auth = auth_token(&target.key, &target.secret, &to_sign);
        self.subscribe_with(channel, Some(auth), Some(channel_data.to_owned()), deadline).await
    }

    /// Sends `pusher:subscribe` with the given `auth` and `channel_data` and waits for the
    /// answer; returns the `subscription_succeeded` frame as text.
    pub async fn subscribe_with(
        &mut self,
        channel: &str,
        auth: Option<String>,
        channel_data: Option<String>,
        deadline: Instant,
    ) -> Result<String, String> {
        let frame = ClientFrame::Subscribe(Subscribe {
            channel: channel.to_owned(),
            auth,
            channel_data,
            filter: None,
            position: None,
        });
        self.ws.send_text(frame.to_json().as_bytes());
        self.ws.flush().await.map_err(|e| ws_reason("subscribe", &e))?;
        let mut outcome = None;
        wait_for(&mut self.ws, deadline, "subscribe", |text| match event_name(text) {
            Some(b"pusher_internal:subscription_succeeded") => {
                outcome = Some(Ok(String::from_utf8_lossy(text).into_owned()));
                true
            }
            Some(b"pusher:subscription_error") => {
                outcome = Some(Err("subscription_error".into()));
                true
            }
            Some(b"pusher:error") => {
                outcome = Some(Err(error_reason(text)));
                true
            }
            _ => false,
        })
        .await?;
        outcome.expect("set when wait_for returns Ok")
    }
}

fn socket_id(text: &[u8]) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_slice(text).map_err(|_| "established_bad_json".to_string())?;
    let data: serde_json::Value = match &v["data"] {
        serde_json::Value::String(s) => {
            serde_json::from_str(s).map_err(|_| "established_bad_data".to_string())?
        }
        other => other.clone(),
    };
    data["socket_id"].as_str().map(str::to_owned).ok_or_else(|| "established_no_socket_id".into())
}

/// Reads until `pick` returns true for a message (answering pings meanwhile); later messages
/// stay buffered.
async fn wait_for(
    ws: &mut WsConn,
    deadline: Instant,
    phase: &str,
    mut pick: impl FnMut(&[u8]) -> bool,
) -> Result<(), String> {
    let mut done = false;
    loop {
        ws.drain(|text, out| {
            if answer_ping(text, out) {
                return Flow::Continue;
            }
            if pick(text) {
                done = true;
                Flow::Stop
            } else {
                Flow::Continue
            }
        })
        .map_err(|e| ws_reason(phase, &e))?;
        ws.flush().await.map_err(|e| ws_reason(phase, &e))?;
        if done {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline.into(), ws.fill()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ws_reason(phase, &e)),
            Err(_) => return Err(format!("{phase}_timeout")),
        }
    }
}

/// Queues a `pusher:pong` when `text` is a `pusher:ping`; returns whether it was one.
pub fn answer_ping(text: &[u8], out: &mut Outbox) -> bool {
    if event_name(text) == Some(b"pusher:ping") {
        out.text(PONG);
        true
    } else {
        false
    }
}

/// Which sequence numbers a receiver has seen.
#[derive(Debug, Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    highest: Option<u64>,
    pub unique: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

/// Sequence numbers above this are treated as garbage rather than grown into a bitmap.
const MAX_SEQ: u64 = 1 << 26;

impl SeqTracker {
    /// Records `seq`; returns whether it is new. A sequence lower than the highest seen so far
    /// counts as reordered (new or not); one seen before counts as a duplicate.
    pub fn observe(&mut self, seq: u64) -> Option<bool> {
        if seq > MAX_SEQ {
            return None;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.highest.is_some_and(|h| seq < h) {
            self.reordered += 1;
        }
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            Some(false)
        } else {
            self.seen[word] |= 1 << bit;
            self.unique += 1;
            Some(true)
        }
    }
}

/// Everything one receiving connection measured.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    pub latencies: Latencies,
    pub seq: SeqTracker,
    pub errors: Errors,
    /// When the latest new event arrived.
    pub last_new: Option<Instant>,
}

/// The receive path of a subscriber: classifies each message, answers pings and records bench
/// events. `received` counts new events across all receivers so the driver can tell when
/// everything arrived.
#[derive(Debug)]
pub struct Receiver {
    pub stats: ReceiverStats,
    event: &'static [u8],
    received: Arc<AtomicU64>,
}

impl Receiver {
    pub fn new(event: &'static str, received: Arc<AtomicU64>, capacity: usize) -> Self {
        Receiver {
            stats: ReceiverStats { latencies: Latencies::with_capacity(capacity), ..Default::default() },
            event: event.as_bytes(),
            received,
        }
    }

    /// Handles one message.
    pub fn on_text(&mut self, text: &[u8], out: &mut Outbox) -> Flow {
        match event_name(text) {
            Some(name) if name == self.event => self.on_event(text),
            Some(b"pusher:ping") => out.text(PONG),
            Some(b"pusher:error") => self.stats.errors.add(error_reason(text)),
            Some(_) => {}
            None => self.stats.errors.add("unparsed_message"),
        }
        Flow::Continue
    }

    fn on_event(&mut self, text: &[u8]) {
        let (Some(seq), Some(t)) = (scan_u64(text, b"seq"), scan_u64(text, b"t")) else {
            self.stats.errors.add("event_without_seq_or_t");
            return;
        };
        match self.stats.seq.observe(seq) {
            Some(true) => {
                self.stats.latencies.record_us(since_us(t));
                self.stats.last_new = Some(Instant::now());
                self.received.fetch_add(1, Ordering::Relaxed);
            }
            Some(false) => {}
            None => self.stats.errors.add("event_bad_seq"),
        }
    }
}

/// How long a best-effort close may take.
pub const CLOSE_WAIT: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_are_scanned() {
        let t = br#"{"event":"pusher:ping","data":"{}"}"#;
        assert_eq!(event_name(t), Some(&b"pusher:ping"[..]));
        let t = br#"{"channel":"c","event": "bench","data":"x"}"#;
        assert_eq!(event_name(t), Some(&b"bench"[..]));
        assert_eq!(event_name(b"{}"), None);
    }

    #[test]
    fn numbers_are_found_in_string_and_object_data() {
        let api = br#"{"event":"bench","channel":"c","data":"{\"seq\":42,\"t\":123456,\"p\":\"xt\\\":9\"}"}"#;
        assert_eq!(scan_u64(api, b"seq"), Some(42));
        assert_eq!(scan_u64(api, b"t"), Some(123456));
        let client = br#"{"event":"client-bench","channel":"private-x","data":{"seq":7,"t":99,"p":"xx"}}"#;
        assert_eq!(scan_u64(client, b"seq"), Some(7));
        assert_eq!(scan_u64(client, b"t"), Some(99));
        assert_eq!(scan_u64(br#"{"seq":"x"}"#, b"seq"), None);
        assert_eq!(scan_u64(br#"{"subseq":3}"#, b"seq"), None);
        assert_eq!(scan_u64(br#"{"tt":3,"t":4}"#, b"t"), Some(4));
    }

    #[test]
    fn payload_round_trips_through_the_scanner() {
        let mut out = Vec::new();
        write_payload(&mut out, 17, "xxxx");
        assert_eq!(scan_u64(&out, b"seq"), Some(17));
        assert!(scan_u64(&out, b"t").is_some());
        let as_string = serde_json::to_string(std::str::from_utf8(&out).unwrap()).unwrap();
        assert_eq!(scan_u64(as_string.as_bytes(), b"seq"), Some(17));
    }

    #[test]
    fn sequence_tracking() {
        let mut s = SeqTracker::default();
        for seq in [0, 1, 3, 2, 3, 4] {
            s.observe(seq);
        }
        // 2 after 3 is reordered; the second 3 is a duplicate (not lower than the highest).
        assert_eq!((s.unique, s.duplicates, s.reordered), (5, 1, 1));
        assert_eq!(s.observe(MAX_SEQ + 1), None);
        assert_eq!(s.observe(200), Some(true));
    }

    #[test]
    fn error_codes_are_named() {
        let e = br#"{"event":"pusher:error","data":{"code":4301,"message":"rate"}}"#;
        assert_eq!(error_reason(e), "pusher_error_4301");
        let e = br#"{"event":"pusher:error","data":{"code":null,"message":"x"}}"#;
        assert_eq!(error_reason(e), "pusher_error");
    }

    #[test]
    fn receiver_counts_and_answers_pings() {
        let received = Arc::new(AtomicU64::new(0));
        let mut r = Receiver::new(API_EVENT, received.clone(), 4);
        let mut out = Outbox::new(1);
        let ev = format!(
            r#"{{"event":"bench","channel":"c","data":"{{\"seq\":0,\"t\":{},\"p\":\"\"}}"}}"#,
            clock_us()
        );
        r.on_text(ev.as_bytes(), &mut out);
        r.on_text(ev.as_bytes(), &mut out);
        assert!(out.is_empty());
        r.on_text(br#"{"event":"pusher:ping","data":"{}"}"#, &mut out);
        assert!(!out.is_empty());
        assert_eq!(received.load(Ordering::Relaxed), 1);
        assert_eq!(r.stats.seq.duplicates, 1);
        assert_eq!(r.stats.latencies.len(), 1);
    }
}
