//! [`Ctx`]: what every handler gets — the open channel (id, name, state, opening data), `send`
//! and `close`, the connection's session, a logger, the application's services and the event hub.
//!
//! A `Ctx` is a cheap handle (a few `Arc`s). Handlers may keep it and use it later, e.g. from a
//! spawned task; `send` on a closed channel does nothing.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use plexus_core::{App, AppHub, Connection};
use plexus_protocol::ChannelName;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::envelope;
use crate::error::ActionError;
use crate::hub::{EventHub, Shared};
use crate::middleware::{apply_outgoing, EventInfo};

/// Where an open channel is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    /// Opening: `on_connect` is running.
    Initial,
    Open,
    Closed,
}

/// What the connection's worker is told besides client requests.
#[derive(Debug)]
pub(crate) enum Job {
    Request(envelope::Request),
    /// `ctx.close()` was called on the channel with this id.
    Closed {
        channel: String,
        id: String,
    },
}

/// One connection, as the typed channels on it share it.
#[derive(Debug)]
pub(crate) struct ConnCore {
    pub(crate) app: Arc<App>,
    pub(crate) hub: Arc<AppHub>,
    pub(crate) connection: Arc<Connection>,
    pub(crate) socket_id: String,
    /// Topic channels this connection holds → the typed channel that subscribed.
    pub(crate) topics: Mutex<HashMap<ChannelName, String>>,
    /// Weak, so a handle kept by a handler does not keep the worker alive past the connection.
    pub(crate) jobs: mpsc::WeakSender<Job>,
    pub(crate) opened: AtomicUsize,
    pub(crate) shared: Arc<Shared>,
}

impl ConnCore {
    pub(crate) fn push(&self, frame: bytes::Bytes) {
        self.connection.outbound.push(frame);
    }

    /// Leaves the topic channels of `channel` (all of them when `None`).
    pub(crate) fn leave_topics(&self, channel: Option<&str>) {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let leaving: Vec<ChannelName> = topics
            .iter()
            .filter(|(_, owner)| channel.is_none_or(|c| *owner == c))
            .map(|(name, _)| name.clone())
            .collect();
        for name in leaving {
            topics.remove(&name);
            self.hub.unsubscribe(&self.app, self.connection.socket_id, &name, None);
        }
    }
}

/// One open typed channel on one connection (the part that does not depend on its types).
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) id: String,
    pub(crate) name: String,
    state: AtomicU8,
    pub(crate) conn: Arc<ConnCore>,
}

const INITIAL: u8 = 0;
const OPEN: u8 = 1;
const CLOSED: u8 = 2;

impl Instance {
    pub(crate) fn new(id: String, name: String, conn: Arc<ConnCore>) -> Self {
        Instance { id, name, state: AtomicU8::new(INITIAL), conn }
    }

    pub(crate) fn state(&self) -> ChannelState {
        match self.state.load(Ordering::Acquire) {
            INITIAL => ChannelState::Initial,
            OPEN => ChannelState::Open,
            _ => ChannelState::Closed,
        }
    }

    pub(crate) fn set_open(&self) {
        let _ = self.state.compare_exchange(INITIAL, OPEN, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Marks the channel closed and leaves its topics; `true` the first time.
    pub(crate) fn mark_closed(&self) -> bool {
        let first = self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED;
        if first {
            self.conn.leave_topics(Some(&self.name));
            self.conn.shared.forget(&self.id);
        }
        first
    }

    /// Sends `data` to this channel's client through the outgoing middleware.
    pub(crate) fn send_value(&self, data: Value) -> bool {
        if self.state() == ChannelState::Closed {
            return false;
        }
        let info = EventInfo { channel: &self.name, topic: None };
        match apply_outgoing(&self.conn.shared.outgoing_for(&self.name), &info, data) {
            Some(data) => {
                self.conn.push(envelope::direct_event(&self.name, &self.id, data));
                true
            }
            None => false,
        }
    }

    /// Closes from the server side: the client gets `plexus:closed`, the worker runs `on_disconnect`.
    pub(crate) fn close(&self) {
        if self.mark_closed() {
            self.conn.push(envelope::closed(&self.name, &self.id));
            if let Some(jobs) = self.conn.jobs.upgrade() {
                let job = Job::Closed { channel: self.name.clone(), id: self.id.clone() };
                // Full queue: the worker still runs on_disconnect when the connection ends.
                let _ = jobs.try_send(job);
            }
        }
    }

    pub(crate) fn subscribe(&self, topic: &str) -> Result<(), ActionError> {
        if self.state() == ChannelState::Closed {
            return Err(ActionError::new(crate::error::codes::NOT_OPEN, "the channel is closed"));
        }
        let name =
            self.conn.shared.topic_channel(&self.name, topic, self.conn.app.max_channel_name_length)?;
        let mut topics = self.conn.topics.lock().unwrap_or_else(|p| p.into_inner());
        if topics.contains_key(&name) {
            return Ok(());
        }
        self.conn
            .hub
            .subscribe(&self.conn.app, &self.conn.connection, &name, None)
            .map_err(|e| ActionError::internal(e.to_string()))?;
        topics.insert(name, self.name.clone());
        Ok(())
    }

    pub(crate) fn unsubscribe(&self, topic: &str) {
        let Ok(name) =
            self.conn.shared.topic_channel(&self.name, topic, self.conn.app.max_channel_name_length)
        else {
            return;
        };
        let mut topics = self.conn.topics.lock().unwrap_or_else(|p| p.into_inner());
        if topics.remove(&name).is_some() {
            self.conn.hub.unsubscribe(&self.conn.app, self.conn.connection.socket_id, &name, None);
        }
    }
}

/// The session slot of one connection, shared by all its channels.
pub(crate) type SessionSlot<U> = Arc<Mutex<Option<Arc<U>>>>;

/// A handler's context with the opening data's type erased (how the runtime holds it).
pub(crate) struct RawCtx<S, U> {
    pub(crate) instance: Arc<Instance>,
    pub(crate) services: Arc<S>,
    pub(crate) session: SessionSlot<U>,
    pub(crate) opening: Arc<dyn Any + Send + Sync>,
    pub(crate) span: tracing::Span,
}

impl<S, U> Clone for RawCtx<S, U> {
    fn clone(&self) -> Self {
        RawCtx {
            instance: self.instance.clone(),
            services: self.services.clone(),
            session: self.session.clone(),
            opening: self.opening.clone(),
            span: self.span.clone(),
        }
    }
}

impl<S, U> RawCtx<S, U> {
    pub(crate) fn services(&self) -> &S {
        &self.services
    }

    pub(crate) fn session(&self) -> Option<Arc<U>> {
        self.session.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The typed context. The runtime built `opening` with this wiring's own parser, so the
    /// type always matches.
    pub(crate) fn typed<O: Send + Sync + 'static>(self) -> Ctx<S, U, O> {
        let opening =
            self.opening.clone().downcast::<O>().expect("opening data parsed by this wiring's parser");
        Ctx { raw: self, opening }
    }
}

/// The context every handler gets. `S`: the application's services; `U`: its session type;
/// `O`: the channel's opening data.
pub struct Ctx<S, U, O = crate::wire::OpeningData> {
    raw: RawCtx<S, U>,
    opening: Arc<O>,
}

impl<S, U, O> Clone for Ctx<S, U, O> {
    fn clone(&self) -> Self {
        Ctx { raw: self.raw.clone(), opening: self.opening.clone() }
    }
}

impl<S, U, O> std::fmt::Debug for Ctx<S, U, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("channel", &self.raw.instance.name)
            .field("id", &self.raw.instance.id)
            .field("state", &self.raw.instance.state())
            .finish_non_exhaustive()
    }
}

impl<S, U, O> Ctx<S, U, O> {
    /// This open channel's id, unique per connection and open.
    pub fn id(&self) -> &str {
        &self.raw.instance.id
    }

    /// The channel's wired name.
    pub fn channel(&self) -> &str {
        &self.raw.instance.name
    }

    /// The id of the app the connection belongs to.
    pub fn app_id(&self) -> &str {
        &self.raw.instance.conn.app.id
    }

    pub(crate) fn app(&self) -> &plexus_core::App {
        &self.raw.instance.conn.app
    }

    /// The socket id of the connection (as pusher-js knows it).
    pub fn socket_id(&self) -> &str {
        &self.raw.instance.conn.socket_id
    }

    /// What the channel was opened with: the connection URL's query parameters, overlaid by
    /// the `params` of `plexus:open`.
    pub fn opening(&self) -> &O {
        &self.opening
    }

    pub fn state(&self) -> ChannelState {
        self.raw.instance.state()
    }

    /// The application's services, as given to [`Channels::new`](crate::Channels::new).
    pub fn services(&self) -> &S {
        &self.raw.services
    }

    /// The shared handle on the services, for work that outlives the handler.
    pub fn services_arc(&self) -> Arc<S> {
        self.raw.services.clone()
    }

    /// A span naming the channel and its id; handlers already run inside it.
    pub fn logger(&self) -> &tracing::Span {
        &self.raw.span
    }

    /// The connection's session, once an action has set one.
    pub fn session(&self) -> Option<Arc<U>> {
        self.raw.session()
    }

    /// Sets the connection's session (e.g. after verifying a token): every channel on this
    /// connection sees it from the next call on.
    pub fn set_session(&self, session: U) {
        *self.raw.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(session));
    }

    pub fn clear_session(&self) {
        *self.raw.session.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Sends `value` to this client as a `plexus:event` of this channel, through the outgoing
    /// middleware. Returns whether it was queued (not closed, not dropped by middleware).
    pub fn send<T: Serialize>(&self, value: &T) -> Result<bool, ActionError> {
        let data = serde_json::to_value(value).map_err(|e| ActionError::internal(format!("send: {e}")))?;
        Ok(self.raw.instance.send_value(data))
    }

    /// Closes this channel (not the connection): the client gets `plexus:closed`,
    /// `on_disconnect` runs, its topic subscriptions end.
    pub fn close(&self) {
        self.raw.instance.close();
    }

    /// The event hub of this connection's app.
    pub fn event_hub(&self) -> EventHub {
        let conn = &self.raw.instance.conn;
        EventHub::new(conn.hub.clone(), conn.shared.clone())
    }

    /// Subscribes this channel to `topic` (one of the channel's declared topics).
    pub fn subscribe(&self, topic: &str) -> Result<(), ActionError> {
        self.raw.instance.subscribe(topic)
    }

    pub fn unsubscribe(&self, topic: &str) {
        self.raw.instance.unsubscribe(topic);
    }

    pub(crate) fn instance(&self) -> &Arc<Instance> {
        &self.raw.instance
    }
}

/// A live channel as the event hub's registry holds it (no strong reference: a closed channel
/// simply stops resolving).
pub(crate) type LiveRef = Weak<Instance>;
