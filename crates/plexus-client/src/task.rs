//! The task behind an [`EventStream`](crate::EventStream): one Pusher-protocol WebSocket that
//! keeps itself connected, and the stream's channels on it. It owns
//! - connection attempts (a fresh token from a token function before each one);
//! - reconnecting by the close code's class: 4000–4099 final (but 4009 with a token function),
//!   4200–4299 at once, anything else (1006, network errors, a dead connection) after a
//!   backoff that starts over once a connection is established;
//! - Pusher pings both ways: `pusher:ping` is answered, and after the server's
//!   `activity_timeout` of silence we ping it and give up on the socket when no frame follows
//!   within the pong timeout;
//! - subscribing every channel with the filter, from the last position seen on it after a
//!   reconnect, and reporting what the server says back (replays, `plexus:resume`, refusals).
//!
//! It sends what the application sees through a bounded channel, in order; when the application
//! falls behind, the task waits (and reads nothing from the socket meanwhile).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use plexus_protocol::codec::Subscribe;
use plexus_protocol::ClientFrame;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::options::random_unit;
use crate::{Backoff, ClientOptions, Credentials, Error, Event, Filter, Resume, Status, StreamItem};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a closing handshake may take before the socket is dropped anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The reason of the final status after [`EventStream::close`](crate::EventStream::close).
pub(crate) const CLOSED_BY_CLIENT: &str = "closed by the client";

/// What the task tells the [`EventStream`](crate::EventStream), in order.
#[derive(Debug)]
pub(crate) enum Msg {
    Item(StreamItem),
    /// Every channel is subscribed (once).
    Ready,
    /// A subscription was refused before every channel was subscribed (instead of `Ready`).
    Refused(Error),
    /// The last message: `None` when the stream was closed by the application, else why the
    /// server ended it for good.
    End(Option<Error>),
}

/// The reconnect class of a close code the client did not ask for.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    Final,
    Now,
    Backoff,
}

fn class(code: u16) -> Class {
    match code {
        4000..=4099 => Class::Final,
        4200..=4299 => Class::Now,
        _ => Class::Backoff,
    }
}

/// How one connection attempt ended.
enum Ended {
    /// The application closed the stream (or dropped it).
    Stopped,
    /// The connection closed with `code` (1006 when it failed or was given up on); `refusal`
    /// when the server refused the upgrade over HTTP.
    Closed { code: u16, reason: String, refusal: Option<Error> },
    /// No connection was tried: the token function failed.
    NoToken(String),
}

struct Channel {
    name: String,
    /// The last position seen on the channel.
    position: Option<String>,
    subscribed: bool,
    /// The position sent with the current subscription (replay until `plexus:resume`).
    resuming_from: Option<String>,
    /// Refused on the current connection.
    refused: bool,
}

pub(crate) struct Task {
    pub(crate) options: Arc<ClientOptions>,
    pub(crate) backoff: Backoff,
    pub(crate) filter: Option<Filter>,
    channels: Vec<Channel>,
    index: HashMap<String, usize>,
    tx: mpsc::Sender<Msg>,
    status: Arc<Mutex<Status>>,
    stop: watch::Receiver<bool>,
    /// The application closed or dropped the stream.
    stopping: bool,
    /// Connections established so far; every one after the first is a reconnect.
    opens: u64,
    /// `Ready` or `Refused` was sent.
    ready_settled: bool,
    /// Failed attempts since the last established connection: the backoff exponent.
    failures: u32,
    /// Reconnect attempts since the last established connection.
    attempts: u32,
}

impl Task {
    pub(crate) fn new(
        options: Arc<ClientOptions>,
        backoff: Backoff,
        filter: Option<Filter>,
        channels: Vec<String>,
        tx: mpsc::Sender<Msg>,
        status: Arc<Mutex<Status>>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let index = channels.iter().enumerate().map(|(i, c)| (c.clone(), i)).collect();
        let channels = channels
            .into_iter()
            .map(|name| Channel {
                name,
                position: None,
                subscribed: false,
                resuming_from: None,
                refused: false,
            })
            .collect();
        Task {
            options,
            backoff,
            filter,
            channels,
            index,
            tx,
            status,
            stop,
            stopping: false,
            opens: 0,
            ready_settled: false,
            failures: 0,
            attempts: 0,
        }
    }

    /// Connects, and reconnects, until the stream is closed or the server ends it for good.
    pub(crate) async fn run(mut self) {
        let end = loop {
            let ended = self.attempt().await;
            self.dropped();
            if self.stopping {
                break None;
            }
            let (code, reason) = match ended {
                Ended::Stopped => break None,
                Ended::NoToken(reason) => (0, reason),
                Ended::Closed { code, reason, refusal } => match class(code) {
                    // 4009 is "unauthorized": final for a fixed credential, but a token
                    // function may have a fresh one.
                    Class::Final if !(self.has_token_fn() && code == 4009) => {
                        tracing::debug!(code, reason, "plexus stream closed for good");
                        self.set_status(Status::Closed { code, reason: reason.clone() }).await;
                        break Some(refusal.unwrap_or(Error::Closed { code, reason }));
                    }
                    Class::Now => {
                        self.attempts += 1;
                        let attempt = self.attempts;
                        self.set_status(Status::Reconnecting {
                            attempt,
                            delay: Duration::ZERO,
                            code,
                            reason,
                        })
                        .await;
                        continue;
                    }
                    _ => (code, reason),
                },
            };
            let delay = self.backoff.delay(self.failures, random_unit());
            self.failures = self.failures.saturating_add(1);
            self.attempts += 1;
            let attempt = self.attempts;
            tracing::debug!(code, reason, attempt, ?delay, "plexus stream reconnecting");
            self.set_status(Status::Reconnecting { attempt, delay, code, reason }).await;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop_requested(&mut self.stop) => break None,
            }
            if self.stopping {
                break None;
            }
        };
        if end.is_none() {
            self.set_status(Status::Closed { code: 1000, reason: CLOSED_BY_CLIENT.to_owned() }).await;
        }
        let _ = self.tx.send(Msg::End(end)).await;
    }

    fn has_token_fn(&self) -> bool {
        matches!(self.options.credentials, Credentials::TokenFn(_))
    }

    /// One connection attempt and, when it succeeds, the connection's life.
    async fn attempt(&mut self) -> Ended {
        self.set_status(Status::Connecting).await;
        if self.stopping {
            return Ended::Stopped;
        }
        let token = match &self.options.credentials {
            Credentials::TokenFn(fetch) => {
                let fetch = fetch.clone();
                let fetched = tokio::select! {
                    fetched = fetch.fetch() => fetched,
                    _ = stop_requested(&mut self.stop) => return Ended::Stopped,
                };
                match fetched {
                    Ok(token) => Some(token),
                    Err(message) => {
                        self.emit(StreamItem::Error(Error::Token(message.clone()))).await;
                        return Ended::NoToken(format!("could not get a token: {message}"));
                    }
                }
            }
            Credentials::Token(token) => Some(token.clone()),
            Credentials::ApiKey(_) | Credentials::None => None,
        };
        let url = crate::connection_url(&self.options, token.as_deref());
        let limit = self.options.pong_timeout;
        let connecting = tokio::time::timeout(limit, tokio_tungstenite::connect_async(url));
        let connected = tokio::select! {
            connected = connecting => connected,
            _ = stop_requested(&mut self.stop) => return Ended::Stopped,
        };
        match connected {
            Err(_) => Ended::Closed {
                code: 1006,
                reason: format!("no connection within {} ms", limit.as_millis()),
                refusal: None,
            },
            Ok(Err(tungstenite::Error::Http(response))) => {
                let status = response.status().as_u16();
                let body = response.body().as_deref().unwrap_or_default();
                let message = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
                let error = Error::ConnectionRefused { status, message: message.clone() };
                self.emit(StreamItem::Error(error.clone())).await;
                // The credential's refusal (401 unknown, 403 no read scope) is as final as a
                // 4009 close; anything else (429 at the key's limit, 5xx) may pass.
                let code = if matches!(status, 401 | 403) { 4009 } else { 1006 };
                Ended::Closed { code, reason: format!("HTTP {status}: {message}"), refusal: Some(error) }
            }
            Ok(Err(error)) => Ended::Closed { code: 1006, reason: error.to_string(), refusal: None },
            Ok(Ok((socket, _))) => self.session(socket).await,
        }
    }

    /// An upgraded connection, until it ends.
    async fn session(&mut self, mut socket: Socket) -> Ended {
        let closed = |code: u16, reason: String| Ended::Closed { code, reason, refusal: None };
        // The silence after which we ping: known once the server has said its activity_timeout.
        let mut activity: Option<Duration> = None;
        // When to ping, or (awaiting a reply) when to give up.
        let mut deadline: Option<Instant> = None;
        let mut awaiting_pong = false;
        loop {
            let timer = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                biased;
                _ = stop_requested(&mut self.stop) => Wake::Stop,
                _ = timer => Wake::Timer,
                message = socket.next() => Wake::Message(message),
            };
            match wake {
                Wake::Stop => {
                    self.stopping = true;
                }
                Wake::Timer if awaiting_pong => {
                    // The connection is dead: a closing handshake would wait on it too.
                    let ms = self.options.pong_timeout.as_millis();
                    return closed(1006, format!("no reply to our ping within {ms} ms"));
                }
                Wake::Timer => {
                    if let Err(error) = send(&mut socket, &ClientFrame::Ping).await {
                        return closed(1006, error.to_string());
                    }
                    awaiting_pong = true;
                    deadline = Some(Instant::now() + self.options.pong_timeout);
                }
                Wake::Message(None) => return closed(1006, "the connection was lost".to_owned()),
                Wake::Message(Some(Err(error))) => return closed(1006, error.to_string()),
                Wake::Message(Some(Ok(Message::Close(frame)))) => {
                    let (code, reason) =
                        frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                    // Completes the closing handshake (the reply is queued already), briefly.
                    let _ = tokio::time::timeout(CLOSE_WAIT, socket.close(None)).await;
                    return closed(code, reason);
                }
                Wake::Message(Some(Ok(message))) => {
                    // Any frame proves the connection alive: the pong wait ends and the silence
                    // clock restarts.
                    awaiting_pong = false;
                    deadline = activity.map(|a| Instant::now() + a);
                    let Message::Text(text) = message else { continue };
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                    let event = frame.get("event").and_then(Value::as_str).unwrap_or_default();
                    match event {
                        "pusher:connection_established" => {
                            let data = parse_data(frame.get("data"));
                            let server = data
                                .get("activity_timeout")
                                .and_then(Value::as_f64)
                                .filter(|s| s.is_finite() && *s > 0.0)
                                .map(Duration::from_secs_f64);
                            activity = match (self.options.activity_timeout, server) {
                                (Some(ours), Some(theirs)) => Some(ours.min(theirs)),
                                (ours, theirs) => ours.or(theirs),
                            };
                            deadline = activity.map(|a| Instant::now() + a);
                            self.failures = 0;
                            self.attempts = 0;
                            let socket_id = data.get("socket_id").and_then(Value::as_str).unwrap_or_default();
                            self.set_status(Status::Open { socket_id: socket_id.to_owned() }).await;
                            if let Err(error) = self.subscribe_all(&mut socket).await {
                                return closed(1006, error.to_string());
                            }
                        }
                        "pusher:ping" => {
                            if let Err(error) = send(&mut socket, &ClientFrame::Pong).await {
                                return closed(1006, error.to_string());
                            }
                        }
                        "pusher:pong" => {}
                        _ => self.receive(&frame, event).await,
                    }
                }
            }
            if self.stopping {
                close_gracefully(socket).await;
                return Ended::Stopped;
            }
        }
    }

    /// Subscribes every channel, from its last position after a reconnect.
    async fn subscribe_all(&mut self, socket: &mut Socket) -> Result<(), tungstenite::Error> {
        self.opens += 1;
        let reconnect = self.opens > 1;
        for channel in &mut self.channels {
            channel.refused = false;
            channel.resuming_from = if reconnect { channel.position.clone() } else { None };
            let frame = ClientFrame::Subscribe(Subscribe {
                channel: channel.name.clone(),
                auth: None,
                channel_data: None,
                filter: self.filter.clone(),
                position: channel.resuming_from.clone(),
            });
            socket.feed(Message::text(frame.to_json())).await?;
        }
        socket.flush().await
    }

    /// A frame about a channel (or a `pusher:error`).
    async fn receive(&mut self, frame: &Value, event: &str) {
        let index = frame.get("channel").and_then(Value::as_str).and_then(|c| self.index.get(c).copied());
        if event == "pusher:error" {
            // A refused subscription is also announced as a pusher:error; it was reported already.
            if index.is_some_and(|i| self.channels[i].refused) {
                return;
            }
            let data = parse_data(frame.get("data"));
            let message = data.get("message").and_then(Value::as_str).unwrap_or("unknown error").to_owned();
            let code = data.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok());
            self.emit(StreamItem::Error(Error::Server { code, message })).await;
            return;
        }
        let Some(i) = index else { return };
        let channel = self.channels[i].name.clone();
        match event {
            "pusher_internal:subscription_succeeded" => {
                self.channels[i].subscribed = true;
                if self.opens > 1 && self.channels[i].resuming_from.is_none() {
                    // Nothing to resume from: the server cannot say what was missed.
                    let gap = Resume { channel, recovered: false, position: None, from: None };
                    self.emit(StreamItem::Gap(gap)).await;
                }
                if !self.ready_settled && self.channels.iter().all(|c| c.subscribed) {
                    self.ready_settled = true;
                    self.send(Msg::Ready).await;
                }
            }
            "pusher:subscription_error" => {
                let data = parse_data(frame.get("data"));
                self.channels[i].refused = true;
                let error = Error::SubscriptionRefused {
                    channel,
                    status: data
                        .get("status")
                        .and_then(Value::as_u64)
                        .and_then(|s| u16::try_from(s).ok())
                        .unwrap_or(0),
                    kind: data.get("type").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    message: data
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("subscription refused")
                        .to_owned(),
                };
                if !self.ready_settled {
                    self.ready_settled = true;
                    self.send(Msg::Refused(error.clone())).await;
                }
                self.emit(StreamItem::Error(error)).await;
            }
            "plexus:resume" => {
                let data = parse_data(frame.get("data"));
                let from = self.channels[i].resuming_from.take();
                let position = data.get("position").and_then(Value::as_str).map(str::to_owned);
                // Not recovered: the app reloads, so the next resume starts from the channel's head.
                if let Some(position) = &position {
                    self.channels[i].position = Some(position.clone());
                }
                let recovered = data.get("recovered") == Some(&Value::Bool(true));
                let resume = Resume { channel, recovered, position, from };
                self.emit(if recovered { StreamItem::Resumed(resume) } else { StreamItem::Gap(resume) })
                    .await;
            }
            _ if event.starts_with("pusher:")
                || event.starts_with("pusher_internal:")
                || event.starts_with("plexus:") => {}
            _ => self.deliver(i, event, frame).await,
        }
    }

    /// An event on channel `i`: once each (by position), and only when it passes the filter.
    async fn deliver(&mut self, i: usize, event: &str, frame: &Value) {
        let state = &mut self.channels[i];
        let position = frame.get("position").and_then(Value::as_str).map(str::to_owned);
        if let Some(position) = &position {
            if state.position.as_deref().is_some_and(|seen| !is_after(position, seen)) {
                return; // seen already
            }
            state.position = Some(position.clone());
        }
        let data = match frame.get("data") {
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
            None => "null".to_owned(),
        };
        // Replayed history may not be filtered by the server, so the filter is checked here too.
        if let Some(filter) = &self.filter {
            let parsed = serde_json::from_str::<Value>(&data).ok();
            if !filter.matches(event, parsed.as_ref()) {
                return;
            }
        }
        let event = Event {
            channel: state.name.clone(),
            name: event.to_owned(),
            data,
            position,
            replayed: state.resuming_from.is_some(),
        };
        self.emit(StreamItem::Event(event)).await;
    }

    /// The socket went away: every channel must be subscribed again.
    fn dropped(&mut self) {
        for channel in &mut self.channels {
            channel.subscribed = false;
            channel.resuming_from = None;
        }
    }

    async fn send(&mut self, message: Msg) {
        if self.tx.send(message).await.is_err() {
            // The stream was dropped: nobody is listening.
            self.stopping = true;
        }
    }

    async fn emit(&mut self, item: StreamItem) {
        self.send(Msg::Item(item)).await;
    }

    async fn set_status(&mut self, status: Status) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status.clone();
        self.emit(StreamItem::Status(status)).await;
    }
}

enum Wake {
    Stop,
    Timer,
    Message(Option<Result<Message, tungstenite::Error>>),
}

/// Resolves once the stream asks to stop (or is dropped).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

async fn send(socket: &mut Socket, frame: &ClientFrame) -> Result<(), tungstenite::Error> {
    socket.send(Message::text(frame.to_json())).await
}

/// Closes with 1000 and waits (briefly) for the server's reply.
async fn close_gracefully(mut socket: Socket) {
    let frame = CloseFrame { code: CloseCode::Normal, reason: "client closed".into() };
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if socket.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = socket.next().await {}
        }
    })
    .await;
}

/// Pusher sends `data` as a JSON string; anything else (or text that is not JSON) is kept.
fn parse_data(data: Option<&Value>) -> Value {
    match data {
        Some(Value::String(text)) => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
        }
        Some(other) => other.clone(),
        None => Value::Null,
    }
}

/// Whether `position` comes after `seen`. Positions of another epoch (a restarted server) are
/// new by definition.
fn is_after(position: &str, seen: &str) -> bool {
    let (Some((epoch, offset)), Some((seen_epoch, seen_offset))) =
        (position.split_once(':'), seen.split_once(':'))
    else {
        return true;
    };
    if epoch != seen_epoch {
        return true;
    }
    match (offset.parse::<u64>(), seen_offset.parse::<u64>()) {
        (Ok(offset), Ok(seen)) => offset > seen,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn close_codes_have_classes() {
        assert_eq!(class(4001), Class::Final);
        assert_eq!(class(4009), Class::Final);
        assert_eq!(class(4100), Class::Backoff);
        assert_eq!(class(4200), Class::Now);
        assert_eq!(class(4201), Class::Now);
        assert_eq!(class(1006), Class::Backoff);
        assert_eq!(class(1000), Class::Backoff);
    }

    #[test]
    fn positions_compare_within_an_epoch() {
        assert!(is_after("7:3", "7:2"));
        assert!(!is_after("7:2", "7:2"));
        assert!(!is_after("7:10", "7:11"));
        assert!(is_after("8:1", "7:11"), "another epoch is new");
    }

    #[test]
    fn data_is_parsed_when_it_is_json() {
        assert_eq!(parse_data(Some(&json!("{\"a\":1}"))), json!({"a": 1}));
        assert_eq!(parse_data(Some(&json!("hello"))), json!("hello"));
        assert_eq!(parse_data(Some(&json!({"status": 403}))), json!({"status": 403}));
        assert_eq!(parse_data(None), Value::Null);
    }
}
