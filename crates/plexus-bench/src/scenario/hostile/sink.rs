//! The webhook endpoint the server under test calls: a small keep-alive HTTP/1.1 server on
//! 127.0.0.1 that answers every request with 200, checks `X-Pusher-Signature` (HMAC-SHA256 hex of
//! the exact body with the app's secret) and records each event once, by (name, channel,
//! user id), with the time it first arrived. Apps are told apart by path (`/a`, `/b`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_protocol::signature::webhook_signature;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::rbuf::ReadBuf;
use crate::ws::find;

/// What one app's endpoint received.
#[derive(Debug, Default)]
pub struct Received {
    pub requests: u64,
    pub bad_signature: u64,
    pub malformed: u64,
    /// Events by name, every copy counted.
    pub events: BTreeMap<String, u64>,
    /// Copies of an event already received (at-least-once redelivery).
    pub duplicates: u64,
    /// (name, channel, user id) → when it first arrived.
    pub first_seen: HashMap<(String, String, String), Instant>,
}

impl Received {
    /// Distinct events named `name` whose user id starts with `prefix`.
    pub fn distinct(&self, name: &str, prefix: &str) -> u64 {
        self.first_seen.keys().filter(|(n, _, u)| n == name && u.starts_with(prefix)).count() as u64
    }

    pub fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "bad_signature": self.bad_signature,
            "malformed": self.malformed,
            "events": self.events,
            "duplicates": self.duplicates,
        })
    }
}

/// An endpoint: its path and the secret its app signs with.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub path: &'static str,
    pub secret: String,
}

type Shared = Arc<Mutex<BTreeMap<&'static str, Received>>>;

/// The running endpoint server.
#[derive(Debug)]
pub struct Sink {
    received: Shared,
    stop: watch::Sender<bool>,
}

impl Sink {
    /// Listens on `127.0.0.1:port` (0 = any free port).
    pub async fn start(port: u16, endpoints: Vec<Endpoint>) -> std::io::Result<Sink> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let received: Shared =
            Arc::new(Mutex::new(endpoints.iter().map(|e| (e.path, Received::default())).collect()));
        let (stop, stopped) = watch::channel(false);
        let endpoints = Arc::new(endpoints);
        let shared = received.clone();
        tokio::spawn(async move {
            let mut stopped_accept = stopped.clone();
            loop {
                tokio::select! {
                    _ = stopped_accept.changed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            tokio::spawn(serve(stream, endpoints.clone(), shared.clone(), stopped.clone()));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    },
                }
            }
        });
        Ok(Sink { received, stop })
    }

    /// Runs `f` on what endpoint `path` received so far.
    pub fn with<T>(&self, path: &str, f: impl FnOnce(&Received) -> T) -> T {
        let all = self.received.lock().unwrap_or_else(|p| p.into_inner());
        let empty = Received::default();
        f(all.get(path).unwrap_or(&empty))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
const BAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Serves one keep-alive connection until the peer closes, a request is malformed, or the sink
/// stops.
async fn serve(
    mut stream: TcpStream,
    endpoints: Arc<Vec<Endpoint>>,
    received: Shared,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = ReadBuf::new(16 * 1024);
    loop {
        // Answer every complete request buffered.
        loop {
            match parse_request(rx.data()) {
                Ok(Some(request)) => {
                    let total = request.total;
                    record(&endpoints, &received, &request, &rx.data()[request.body_start..total]);
                    rx.consume(total);
                    if stream.write_all(OK).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(()) => {
                    let _ = stream.write_all(BAD).await;
                    return;
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            read = rx.fill(&mut stream) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

struct Request {
    path: String,
    signature: Option<String>,
    body_start: usize,
    total: usize,
}

/// One complete request at the front of `buf`; `Ok(None)` until all of it arrived.
fn parse_request(buf: &[u8]) -> Result<Option<Request>, ()> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 64 * 1024 { Err(()) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| ())?;
    let mut lines = head.split("\r\n");
    let path = lines.next().and_then(|l| l.split(' ').nth(1)).ok_or(())?.to_owned();
    let (mut length, mut signature) = (0usize, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| ())?;
        } else if name.eq_ignore_ascii_case("x-pusher-signature") {
            signature = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(());
        }
    }
    if length > MAX_BODY {
        return Err(());
    }
    let body_start = head_end + 4;
    let total = body_start + length;
    Ok((buf.len() >= total).then_some(Request { path, signature, body_start, total }))
}

fn record(endpoints: &[Endpoint], received: &Shared, request: &Request, body: &[u8]) {
    let now = Instant::now();
    let path = request.path.split('?').next().unwrap_or("");
    let mut all = received.lock().unwrap_or_else(|p| p.into_inner());
    let Some(endpoint) = endpoints.iter().find(|e| e.path == path) else {
        return;
    };
    let Some(got) = all.get_mut(endpoint.path) else { return };
    got.requests += 1;
    if request.signature.as_deref() != Some(webhook_signature(&endpoint.secret, body).as_str()) {
        got.bad_signature += 1;
        return;
    }
    let Ok(parsed) = serde_json::from_slice::<Value>(body) else {
        got.malformed += 1;
        return;
    };
    for event in parsed["events"].as_array().into_iter().flatten() {
        let field = |k: &str| event[k].as_str().unwrap_or("").to_owned();
        let name = field("name");
        *got.events.entry(name.clone()).or_default() += 1;
        let key = (name, field("channel"), field("user_id"));
        match got.first_seen.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => got.duplicates += 1,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_and_without_bodies() {
        let wire = b"POST /b HTTP/1.1\r\nX-Pusher-Signature: ab\r\ncontent-length: 2\r\n\r\n{}GET";
        let r = parse_request(wire).unwrap().unwrap();
        assert_eq!((r.path.as_str(), r.signature.as_deref()), ("/b", Some("ab")));
        assert_eq!(&wire[r.body_start..r.total], b"{}");
        assert!(parse_request(&wire[..40]).unwrap().is_none());
        assert!(parse_request(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn signed_events_are_recorded_once() {
        let endpoints = vec![Endpoint { path: "/b", secret: "s".into() }];
        let received: Shared = Arc::new(Mutex::new([("/b", Received::default())].into_iter().collect()));
        let body =
            br#"{"time_ms":1,"events":[{"name":"member_added","channel":"presence-x","user_id":"p0-1"}]}"#;
        let good = Request {
            path: "/b".into(),
            signature: Some(webhook_signature("s", body)),
            body_start: 0,
            total: body.len(),
        };
        record(&endpoints, &received, &good, body);
        record(&endpoints, &received, &good, body);
        let bad = Request { signature: Some("00".into()), ..good };
        record(&endpoints, &received, &bad, body);
        let all = received.lock().unwrap();
        let b = &all["/b"];
        assert_eq!((b.requests, b.bad_signature, b.duplicates), (3, 1, 1));
        assert_eq!(b.distinct("member_added", "p0-"), 1);
        assert_eq!(b.distinct("member_added", "p1-"), 0);
    }
}
