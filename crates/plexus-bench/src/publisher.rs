//! The event publisher: signed `POST /apps/{id}/events` requests pipelined over a few keep-alive
//! connections, either back to back or open-loop on a fixed timetable.
//!
//! Event `i` goes to channel `i % C` with per-channel sequence `i / C`. Sends never wait for
//! responses (only for a per-connection window of requests in flight); one reader task per
//! connection matches responses to requests in order. With `affinity`, a channel always uses the
//! same connection, so the server sees each channel's events in send order and any reordering a
//! subscriber observes is the server's. How far sends fell behind the timetable is recorded.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::http::{parse_response, push_json_str, Signer};
use crate::pusher::write_payload;
use crate::rbuf::ReadBuf;
use crate::stats::{Errors, Latencies};
use crate::target::Target;
use crate::ws::io_kind;

/// What to publish and how.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// Name of the published events (receivers count only events of this name).
    pub event: &'static str,
    pub events: u64,
    pub channels: Vec<String>,
    /// Events per second in total; `None` = as fast as the windows allow.
    pub rate: Option<f64>,
    pub connections: usize,
    /// Requests in flight per connection.
    pub window: usize,
    /// Channel `c` always uses connection `c % connections` (keeps per-channel order).
    pub affinity: bool,
    pub padding: String,
    pub deadline: Instant,
}

/// What happened to the published events.
#[derive(Debug, Default)]
pub struct PublishReport {
    pub sent: u64,
    pub sent_per_channel: Vec<u64>,
    /// Sent but answered with a non-200 status (or never answered).
    pub failed_per_channel: Vec<u64>,
    pub ok: u64,
    pub errors: Errors,
    pub first_send: Option<Instant>,
    pub last_send: Option<Instant>,
    /// How late each send was against the timetable (open loop only).
    pub lag: Latencies,
    /// Request → response time.
    pub http: Latencies,
}

impl PublishReport {
    /// Events the server accepted on channel `c`.
    pub fn accepted_on(&self, c: usize) -> u64 {
        self.sent_per_channel[c] - self.failed_per_channel[c]
    }

    /// Sends per second between the first and the last send.
    pub fn achieved_rate(&self) -> Option<f64> {
        let span = self.last_send?.duration_since(self.first_send?).as_secs_f64();
        (self.sent > 1 && span > 0.0).then(|| (self.sent - 1) as f64 / span)
    }
}

struct Meta {
    sent: Instant,
    channel: usize,
}

#[derive(Default)]
struct LaneResult {
    ok: u64,
    failed_per_channel: Vec<u64>,
    errors: Errors,
    http: Latencies,
}

struct Lane {
    write: OwnedWriteHalf,
    meta: mpsc::UnboundedSender<Meta>,
    window: Arc<Semaphore>,
    reader: JoinHandle<LaneResult>,
    dead: bool,
}

/// Publishes according to `plan` and waits for every response (or the deadline).
pub async fn publish(target: &Target, plan: &PublishPlan) -> PublishReport {
    let channels = plan.channels.len();
    let mut report = PublishReport {
        sent_per_channel: vec![0; channels],
        failed_per_channel: vec![0; channels],
        lag: Latencies::with_capacity(if plan.rate.is_some() { plan.events as usize } else { 0 }),
        ..Default::default()
    };
    let mut lanes = Vec::new();
    for _ in 0..plan.connections.max(1) {
        match TcpStream::connect(target.addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let (read, write) = stream.into_split();
                let (tx, rx) = mpsc::unbounded_channel();
                let window = Arc::new(Semaphore::new(plan.window.max(1)));
                let reader = tokio::spawn(read_lane(read, rx, window.clone(), channels, plan.deadline));
                lanes.push(Lane { write, meta: tx, window, reader, dead: false });
            }
            Err(e) => report.errors.add(format!("publish_connect_{}", io_kind(&e))),
        }
    }
    if lanes.is_empty() {
        return report;
    }

    let signer = Signer::new(target);
    let mut payload = Vec::with_capacity(plan.padding.len() + 64);
    let mut body = Vec::with_capacity(plan.padding.len() + 128);
    let mut request = Vec::with_capacity(plan.padding.len() + 512);
    let t0 = Instant::now();
    for i in 0..plan.events {
        if let Some(rate) = plan.rate {
            let scheduled = t0 + Duration::from_secs_f64(i as f64 / rate);
            if scheduled > plan.deadline {
                report.errors.add("publish_deadline");
                break;
            }
            tokio::time::sleep_until(scheduled.into()).await;
            report.lag.record(Instant::now().saturating_duration_since(scheduled));
        } else if Instant::now() >= plan.deadline {
            report.errors.add("publish_deadline");
            break;
        }
        let channel = (i % channels as u64) as usize;
        let seq = i / channels as u64;
        let lane_index = if plan.affinity { channel } else { i as usize } % lanes.len();
        let lane = &mut lanes[lane_index];
        if lane.dead {
            report.errors.add("publish_connection_lost");
            continue;
        }
        match tokio::time::timeout_at(plan.deadline.into(), lane.window.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            Ok(Err(_)) => {
                lane.dead = true;
                report.errors.add("publish_connection_lost");
                continue;
            }
            Err(_) => {
                report.errors.add("publish_deadline");
                break;
            }
        }
        payload.clear();
        write_payload(&mut payload, seq, &plan.padding);
        body.clear();
        body.extend_from_slice(br#"{"name":""#);
        body.extend_from_slice(plan.event.as_bytes());
        body.extend_from_slice(br#"","channels":["#);
        push_json_str(&mut body, &plan.channels[channel]);
        body.extend_from_slice(br#"],"data":"#);
        push_json_str(&mut body, std::str::from_utf8(&payload).expect("payload is ASCII"));
        body.push(b'}');
        request.clear();
        signer.post("events", &body, &mut request);
        let now = Instant::now();
        if lane.meta.send(Meta { sent: now, channel }).is_err() {
            lane.dead = true;
            report.errors.add("publish_connection_lost");
            continue;
        }
        match tokio::time::timeout_at(plan.deadline.into(), lane.write.write_all(&request)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                lane.dead = true;
                report.errors.add(format!("publish_write_{}", io_kind(&e)));
            }
            Err(_) => {
                report.errors.add("publish_deadline");
                break;
            }
        }
        report.sent += 1;
        report.sent_per_channel[channel] += 1;
        report.first_send.get_or_insert(now);
        report.last_send = Some(now);
    }

    let mut writers = Vec::new();
    for lane in lanes {
        drop(lane.meta);
        writers.push(lane.write);
        match lane.reader.await {
            Ok(r) => {
                report.ok += r.ok;
                for (c, n) in r.failed_per_channel.iter().enumerate() {
                    report.failed_per_channel[c] += n;
                }
                report.errors.merge(r.errors);
                report.http.merge(r.http);
            }
            Err(_) => report.errors.add("publish_reader_panicked"),
        }
    }
    drop(writers);
    report
}

/// Matches responses to requests, in order, for one connection.
async fn read_lane(
    mut read: OwnedReadHalf,
    mut meta: mpsc::UnboundedReceiver<Meta>,
    window: Arc<Semaphore>,
    channels: usize,
    deadline: Instant,
) -> LaneResult {
    let mut result = LaneResult {
        failed_per_channel: vec![0; channels],
        http: Latencies::with_capacity(1024),
        ..Default::default()
    };
    let mut rx = ReadBuf::new(16 * 1024);
    let mut pending: VecDeque<Meta> = VecDeque::new();
    let failure = 'lane: loop {
        if pending.is_empty() {
            match meta.recv().await {
                Some(m) => pending.push_back(m),
                None => break 'lane None,
            }
        }
        while let Ok(m) = meta.try_recv() {
            pending.push_back(m);
        }
        loop {
            match parse_response(rx.data()) {
                Ok(Some(r)) => {
                    rx.consume(r.total_len);
                    let Some(m) = pending.pop_front() else {
                        break 'lane Some("http_unsolicited_response".to_string());
                    };
                    result.http.record(m.sent.elapsed());
                    if r.status == 200 {
                        result.ok += 1;
                    } else {
                        result.failed_per_channel[m.channel] += 1;
                        result.errors.add(format!("http_{}", r.status));
                    }
                    window.add_permits(1);
                    if r.close {
                        break 'lane Some("http_server_closed".to_string());
                    }
                }
                Ok(None) => break,
                Err(e) => break 'lane Some(e.reason()),
            }
        }
        if pending.is_empty() {
            continue;
        }
        match tokio::time::timeout_at(deadline.into(), rx.fill(&mut read)).await {
            Ok(Ok(0)) => break 'lane Some("http_eof".to_string()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => break 'lane Some(format!("http_io_{}", io_kind(&e))),
            Err(_) => break 'lane Some("http_response_deadline".to_string()),
        }
    };
    if let Some(reason) = failure {
        // Everything still unanswered (now or later) counts as failed.
        window.close();
        meta.close();
        while let Ok(m) = meta.try_recv() {
            pending.push_back(m);
        }
        result.errors.add_n(reason, pending.len().max(1) as u64);
        for m in pending {
            result.failed_per_channel[m.channel] += 1;
        }
    }
    result
}
