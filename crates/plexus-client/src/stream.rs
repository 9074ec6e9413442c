//! [`EventStream`] and what it yields.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::task::{Msg, Task, CLOSED_BY_CLIENT};
use crate::Error;

/// How many items a stream holds for the application before its connection waits.
const BUFFER: usize = 1024;

/// One event of a stream's channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The channel it was published on.
    pub channel: String,
    /// The event's name, e.g. `message.received`.
    pub name: String,
    /// The event's data as published: normally JSON text (`{"id":42}`); see [`Event::decode`].
    pub data: String,
    /// `"<epoch>:<offset>"` on channels with a history, else `None`.
    pub position: Option<String>,
    /// Replayed after a reconnect: it was published while the stream was away.
    pub replayed: bool,
}

impl Event {
    /// The data decoded into `T`. Data that is not JSON (a plain string, as the Pusher SDKs may
    /// publish) is decoded as that string.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match serde_json::from_str(&self.data) {
            Ok(value) => Ok(value),
            Err(error) if serde_json::from_str::<serde::de::IgnoredAny>(&self.data).is_err() => {
                T::deserialize(serde_json::Value::String(self.data.clone())).map_err(|_| error)
            }
            Err(error) => Err(error),
        }
    }
}

/// How a channel came back after a reconnect.
///
/// `recovered: false` (a [`StreamItem::Gap`]) means events may have been missed: the history no
/// longer reached back, the server restarted, the channel keeps none, or no event had arrived to
/// resume from. Reload what the application shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The channel.
    pub channel: String,
    /// Whether every missed event was replayed.
    pub recovered: bool,
    /// The channel's latest position (the stream resumes from it next time), when it has one.
    pub position: Option<String>,
    /// The position the stream asked to resume from.
    pub from: Option<String>,
}

/// Where a stream's connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// A connection attempt is under way.
    Connecting,
    /// The server accepted the connection (channels are being subscribed).
    Open {
        /// The server's socket id for this connection.
        socket_id: String,
    },
    /// The connection ended, or an attempt failed; another follows after `delay`.
    Reconnecting {
        /// 1-based since the last established connection.
        attempt: u32,
        /// Zero after a 4200–4299 close, else the backoff's.
        delay: Duration,
        /// The close code that caused it (1006: the connection failed or was given up on; 4009
        /// with a token function; 0: no attempt was made, the token function failed).
        code: u16,
        /// The close's reason, or what failed.
        reason: String,
    },
    /// Final: the server ended the stream (4000–4099; an upgrade refused with 401 or 403 counts
    /// as 4009), or it was closed (1000, `closed by the client`).
    Closed {
        /// The close code.
        code: u16,
        /// Its reason.
        reason: String,
    },
}

/// What an [`EventStream`] yields, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// An event on one of the channels (that passed the filter).
    Event(Event),
    /// After a reconnect, a channel's missed events were all replayed (they came before this).
    Resumed(Resume),
    /// After a reconnect, events may have been missed on a channel: reload.
    Gap(Resume),
    /// The connection's status changed.
    Status(Status),
    /// A refused subscription, a `pusher:error`, a refused connection or a failed token
    /// function. The stream carries on unless a [`Status::Closed`] follows.
    Error(Error),
}

type EventHandler = Box<dyn FnMut(&Event) -> Result<(), Error> + Send>;
type Handler<T> = Box<dyn FnMut(&T) + Send>;

#[derive(Default)]
struct Handlers {
    events: HashMap<String, Vec<EventHandler>>,
    status: Vec<Handler<Status>>,
    resume: Vec<Handler<Resume>>,
    gap: Vec<Handler<Resume>>,
    error: Vec<Handler<Error>>,
}

/// A stream of events from some channels over one connection that keeps itself connected and
/// resumes where it left off; made by [`Realtime::events`](crate::Realtime::events).
///
/// Read it either way:
/// - item by item: [`EventStream::next`] (or as a [`futures_util::Stream`]) yields every
///   [`StreamItem`]: events, resumes and gaps, statuses, errors;
/// - with handlers: register them with [`EventStream::on`] (typed), [`EventStream::on_gap`],
///   [`EventStream::on_status`] … and call [`EventStream::run`], which dispatches each item to
///   them. `next` calls no handler.
///
/// The connection starts with [`EventStream::connect`] (or the first read) on the current tokio
/// runtime, and ends with [`EventStream::close`], or when the stream is dropped. Up to 1024 items
/// wait for the application; beyond that the connection stops reading (a server then drops a
/// consumer that stays behind, and the stream resumes from where it was).
pub struct EventStream {
    /// The task, until it is started.
    task: Option<Task>,
    handle: Option<JoinHandle<()>>,
    rx: mpsc::Receiver<Msg>,
    stop: watch::Sender<bool>,
    status: Arc<Mutex<Status>>,
    /// Items read by `connect` or `close`, not yet handed out.
    pending: VecDeque<StreamItem>,
    /// Whether every channel was subscribed, or one was refused, on the first try.
    ready: Option<Result<(), Error>>,
    /// Set when the task has ended: `None` when closed by the application.
    end: Option<Option<Error>>,
    handlers: Handlers,
}

impl EventStream {
    pub(crate) fn new(
        options: Arc<crate::ClientOptions>,
        backoff: crate::Backoff,
        filter: Option<crate::Filter>,
        channels: Vec<String>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(BUFFER);
        let (stop, stop_rx) = watch::channel(false);
        let status = Arc::new(Mutex::new(Status::Connecting));
        let task = Task::new(options, backoff, filter, channels, tx, status.clone(), stop_rx);
        EventStream {
            task: Some(task),
            handle: None,
            rx,
            stop,
            status,
            pending: VecDeque::new(),
            ready: None,
            end: None,
            handlers: Handlers::default(),
        }
    }

    /// The connection's current status.
    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Connects (once) and returns when every channel is subscribed. Fails with
    /// [`Error::SubscriptionRefused`] when the server refuses one (the others stay subscribed),
    /// with [`Error::ConnectionRefused`] when it refuses the credential for good, or with
    /// [`Error::Closed`] when the stream ends first. Reconnecting afterwards is automatic;
    /// called again, it returns the same answer.
    ///
    /// What arrives meanwhile (statuses, first events) is kept for [`EventStream::next`].
    pub async fn connect(&mut self) -> Result<(), Error> {
        self.start();
        loop {
            if let Some(ready) = &self.ready {
                return ready.clone();
            }
            if let Some(end) = &self.end {
                return Err(end.clone().unwrap_or_else(stream_closed));
            }
            match self.rx.recv().await {
                Some(message) => {
                    if let Some(item) = self.absorb(message) {
                        self.pending.push_back(item);
                    }
                }
                None => return Err(stream_closed()),
            }
        }
    }

    /// The next item, or `None` once the stream has ended (closed, or ended by the server for
    /// good; the last item is then a [`Status::Closed`]). Starts the connection if need be.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<StreamItem> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    /// Calls `handler` with the data of every `name` event, decoded into `T`, and the event
    /// itself (channel, position, whether it was replayed), from [`EventStream::run`]. Data that
    /// does not decode goes to the error handlers as [`Error::Decode`].
    ///
    /// ```no_run
    /// # async fn demo(stream: &mut plexus_realtime_client::EventStream) {
    /// #[derive(serde::Deserialize)]
    /// struct Message {
    ///     text: String,
    /// }
    /// stream.on("message.received", |message: Message, event| {
    ///     println!("{} on {}", message.text, event.channel);
    /// });
    /// # }
    /// ```
    pub fn on<T, F>(&mut self, name: impl Into<String>, mut handler: F) -> &mut Self
    where
        T: DeserializeOwned,
        F: FnMut(T, &Event) + Send + 'static,
    {
        let handler: EventHandler = Box::new(move |event: &Event| {
            let data = event.decode::<T>().map_err(|error| Error::Decode {
                event: event.name.clone(),
                channel: event.channel.clone(),
                message: error.to_string(),
            })?;
            handler(data, event);
            Ok(())
        });
        self.handlers.events.entry(name.into()).or_default().push(handler);
        self
    }

    /// Calls `handler` with every status: connecting, open, reconnecting (attempt, delay, the
    /// close that caused it), closed.
    pub fn on_status(&mut self, handler: impl FnMut(&Status) + Send + 'static) -> &mut Self {
        self.handlers.status.push(Box::new(handler));
        self
    }

    /// Calls `handler` with every channel's [`Resume`] after a reconnect, recovered or not.
    pub fn on_resume(&mut self, handler: impl FnMut(&Resume) + Send + 'static) -> &mut Self {
        self.handlers.resume.push(Box::new(handler));
        self
    }

    /// Calls `handler` with the resumes that are gaps (`recovered: false`): events may have
    /// been missed on that channel.
    pub fn on_gap(&mut self, handler: impl FnMut(&Resume) + Send + 'static) -> &mut Self {
        self.handlers.gap.push(Box::new(handler));
        self
    }

    /// Calls `handler` with every error: refused subscriptions (with the server's reason),
    /// `pusher:error`s, refused connections, failed token functions, data that did not decode.
    /// Without an error handler they are logged (`tracing`, warn).
    pub fn on_error(&mut self, handler: impl FnMut(&Error) + Send + 'static) -> &mut Self {
        self.handlers.error.push(Box::new(handler));
        self
    }

    /// Reads the stream to its end, calling the handlers with each item. Returns `Ok` when the
    /// stream was closed, or why the server ended it for good.
    ///
    /// It is cancel-safe: to stop, race it against something else and then close the stream.
    ///
    /// ```no_run
    /// # async fn demo(mut stream: plexus_realtime_client::EventStream) {
    /// tokio::select! {
    ///     ended = stream.run() => eprintln!("the stream ended: {ended:?}"),
    ///     _ = tokio::signal::ctrl_c() => {}
    /// }
    /// stream.close().await;
    /// # }
    /// ```
    pub async fn run(&mut self) -> Result<(), Error> {
        while let Some(item) = self.next().await {
            self.dispatch(&item);
        }
        match &self.end {
            Some(Some(error)) => Err(error.clone()),
            _ => Ok(()),
        }
    }

    /// Stops for good: returns once the connection is closed (a closing handshake of at most
    /// 2 s) and its task has ended. What was still on the way stays readable with
    /// [`EventStream::next`], ending with [`Status::Closed`] (1000, `closed by the client`).
    pub async fn close(&mut self) {
        self.stop.send_replace(true);
        if self.task.take().is_some() {
            // Never started: nothing runs. End as a started stream would.
            let status = Status::Closed { code: 1000, reason: CLOSED_BY_CLIENT.to_owned() };
            *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status.clone();
            self.pending.push_back(StreamItem::Status(status));
            self.end = Some(None);
        }
        // Draining lets a task that waits to hand over an item see the request.
        while let Some(message) = self.rx.recv().await {
            if let Some(item) = self.absorb(message) {
                self.pending.push_back(item);
            }
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }

    fn start(&mut self) {
        if let Some(task) = self.task.take() {
            self.handle = Some(tokio::spawn(task.run()));
        }
    }

    fn absorb(&mut self, message: Msg) -> Option<StreamItem> {
        match message {
            Msg::Item(item) => return Some(item),
            Msg::Ready => {
                self.ready.get_or_insert(Ok(()));
            }
            Msg::Refused(error) => {
                self.ready.get_or_insert(Err(error));
            }
            Msg::End(end) => self.end = Some(end),
        }
        None
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<StreamItem>> {
        self.start();
        if let Some(item) = self.pending.pop_front() {
            return Poll::Ready(Some(item));
        }
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(message)) => {
                    if let Some(item) = self.absorb(message) {
                        return Poll::Ready(Some(item));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn dispatch(&mut self, item: &StreamItem) {
        let handlers = &mut self.handlers;
        match item {
            StreamItem::Event(event) => {
                let mut failed = Vec::new();
                for handler in handlers.events.get_mut(&event.name).into_iter().flatten() {
                    if let Err(error) = handler(event) {
                        failed.push(error);
                    }
                }
                for error in &failed {
                    self.report(error);
                }
            }
            StreamItem::Resumed(resume) => handlers.resume.iter_mut().for_each(|h| h(resume)),
            StreamItem::Gap(resume) => {
                handlers.resume.iter_mut().for_each(|h| h(resume));
                handlers.gap.iter_mut().for_each(|h| h(resume));
            }
            StreamItem::Status(status) => handlers.status.iter_mut().for_each(|h| h(status)),
            StreamItem::Error(error) => self.report(error),
        }
    }

    fn report(&mut self, error: &Error) {
        if self.handlers.error.is_empty() {
            tracing::warn!(%error, "plexus event stream");
        }
        self.handlers.error.iter_mut().for_each(|h| h(error));
    }
}

fn stream_closed() -> Error {
    Error::Closed { code: 1000, reason: "the stream was closed".to_owned() }
}

impl Stream for EventStream {
    type Item = StreamItem;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamItem>> {
        self.get_mut().poll_item(cx)
    }
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("status", &self.status())
            .field("started", &self.task.is_none())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> Event {
        Event { channel: "c".into(), name: "e".into(), data: data.into(), position: None, replayed: false }
    }

    #[test]
    fn decode_reads_json_and_plain_strings() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Item {
            i: u32,
        }
        assert_eq!(event("{\"i\":3}").decode::<Item>().unwrap(), Item { i: 3 });
        assert_eq!(event("\"quoted\"").decode::<String>().unwrap(), "quoted");
        assert_eq!(event("hello").decode::<String>().unwrap(), "hello");
        assert!(event("hello").decode::<Item>().is_err());
        assert!(event("{\"i\":\"x\"}").decode::<Item>().is_err());
    }
}
