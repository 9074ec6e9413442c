//! [`Channels`]: the set of wired channels, installed into a plexus server as its protocol
//! extension, and the worker that serves each connection's typed channels.
//!
//! A connection gets its worker task with its first `plexus:*` frame (Pusher-only connections
//! hold one small box and nothing else). The reader hands it decoded requests through a bounded
//! queue (a full queue is answered with `overloaded` at once, so the reader never waits), and the
//! worker serves them one at a time, in order: an `authenticate` is done before the next request
//! looks at the session. Each call runs in its own task, so a panicking handler becomes an
//! `internal` error reply rather than a dead connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use plexus_core::{ExtensionConnect, ExtensionHandler, ExtensionSession, Hubs};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::context::{ConnCore, Instance, Job, RawCtx, SessionSlot};
use crate::envelope::{self, Request};
use crate::error::{codes, ActionError};
use crate::hub::{EventHub, Shared};
use crate::middleware::{ActionInfo, ActionMiddleware, BoxFuture, EventInfo, Next, Outgoing};
use crate::wire::{Channel, Wiring};

/// Requests waiting per connection before new ones are refused with `overloaded`.
const QUEUE: usize = 64;
/// Query parameters pusher-js adds to every connection URL: not opening data.
const PUSHER_QUERY: [&str; 4] = ["protocol", "client", "version", "flash"];

/// The wired channels of an application: `S` its services, `U` its session type.
///
/// Built once at start, then installed into a server (`plexus_server::ServerState::install_channels`).
///
/// ```
/// # use plexus_channels::{Channel, Channels};
/// struct Services;
/// let channels = Channels::<Services, ()>::new(Services).wire(Channel::<Services, ()>::new("todos"));
/// assert_eq!(channels.describe()[0].name, "todos");
/// ```
pub struct Channels<S, U> {
    services: Arc<S>,
    wirings: HashMap<String, Arc<Wiring<S, U>>>,
    middleware: Vec<ActionMiddleware<U>>,
    outgoing: Vec<(String, Outgoing)>,
}

impl<S, U> std::fmt::Debug for Channels<S, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels")
            .field("channels", &self.wirings.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync + 'static, U: Send + Sync + 'static> Channels<S, U> {
    /// No channels yet; handlers will get `services` through their context.
    pub fn new(services: S) -> Self {
        Self::with_services(Arc::new(services))
    }

    /// [`new`](Self::new) with services the application also uses elsewhere (its HTTP routes).
    pub fn with_services(services: Arc<S>) -> Self {
        Channels { services, wirings: HashMap::new(), middleware: Vec::new(), outgoing: Vec::new() }
    }

    /// Adds a channel. Panics on a duplicate or malformed name: a wiring mistake, found at start.
    pub fn wire<O>(mut self, channel: Channel<S, U, O>) -> Self
    where
        O: serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        let wiring = channel.into_wiring();
        let name = wiring.name.clone();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "channel name {name:?}: use letters, digits, '_' and '-'"
        );
        assert!(!self.wirings.contains_key(&name), "channel {name:?} is wired twice");
        self.wirings.insert(name, Arc::new(wiring));
        self
    }

    /// Keeps only the channels tagged with at least one of `tags`, so one build can run as
    /// several deployments (`--tags events` on one node, `--tags chat` on another). The channels
    /// left out are logged; none kept is legal (the node then serves the Pusher protocol only).
    ///
    /// ```
    /// # use plexus_channels::{Channel, Channels};
    /// let channels = Channels::<(), ()>::new(())
    ///     .wire(Channel::<(), ()>::new("chat").tags(["chat"]))
    ///     .wire(Channel::<(), ()>::new("feed").tags(["events", "feed"]))
    ///     .only_tags(["events"]);
    /// assert_eq!(channels.describe().iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["feed"]);
    /// ```
    pub fn only_tags<T: AsRef<str>>(mut self, tags: impl IntoIterator<Item = T>) -> Self {
        let wanted: Vec<T> = tags.into_iter().collect();
        self.wirings.retain(|name, wiring| {
            let keep = crate::describe::tagged_with_any(&wiring.tags, &wanted);
            if !keep {
                tracing::info!(channel = %name, tags = ?wiring.tags, "typed channel left out: none of its tags is selected");
            }
            keep
        });
        self
    }

    /// Middleware around every action of every channel (before each wiring's own).
    pub fn middleware(mut self, middleware: ActionMiddleware<U>) -> Self {
        self.middleware.push(middleware);
        self
    }

    /// Middleware on outgoing events of every channel named `channel` (before its inline ones).
    pub fn outgoing<F>(mut self, channel: impl Into<String>, f: F) -> Self
    where
        F: Fn(&EventInfo<'_>, Value) -> Option<Value> + Send + Sync + 'static,
    {
        self.outgoing.push((channel.into(), Arc::new(f)));
        self
    }

    /// The wirings in name order (stable output for generated code).
    #[cfg(feature = "typescript")]
    pub(crate) fn wirings_sorted(&self) -> Vec<&Wiring<S, U>> {
        let mut wirings: Vec<_> = self.wirings.values().map(|w| &**w).collect();
        wirings.sort_by(|a, b| a.name.cmp(&b.name));
        wirings
    }

    /// What is wired, in name order (see [`describe`](crate::describe)).
    pub fn describe(&self) -> Vec<crate::ChannelDescription> {
        let mut out: Vec<_> = self.wirings.values().map(|w| crate::ChannelDescription::of(w)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// These channels as a server's `plexus:*` extension, and the handle on them that outlives
    /// the wiring. Servers call this for you: `ServerState::install_channels(channels)`.
    pub fn into_extension(self, hubs: Arc<Hubs>) -> (Arc<dyn ExtensionHandler>, Installed) {
        let described = self.describe();
        let mut shared = Shared::default();
        for wiring in self.wirings.values() {
            for topic in wiring.topics.keys() {
                shared.topics.entry(topic.clone()).or_default().push(wiring.name.clone());
            }
            let mut chain: Vec<Outgoing> = self
                .outgoing
                .iter()
                .filter(|(name, _)| *name == wiring.name)
                .map(|(_, f)| f.clone())
                .collect();
            chain.extend(wiring.outgoing.iter().cloned());
            shared.outgoing.insert(wiring.name.clone(), Arc::from(chain));
        }
        let shared = Arc::new(shared);
        let runtime = Arc::new(Runtime(Arc::new(Inner {
            services: self.services,
            wirings: self.wirings,
            middleware: self.middleware,
            shared: shared.clone(),
        })));
        (runtime, Installed { hubs, shared, described })
    }
}

/// Channels installed in a server: reach the event hub from outside handlers (HTTP routes, jobs).
#[derive(Debug, Clone)]
pub struct Installed {
    hubs: Arc<Hubs>,
    shared: Arc<Shared>,
    described: Vec<crate::ChannelDescription>,
}

impl Installed {
    /// The event hub of app `app_id`.
    pub fn event_hub(&self, app_id: &str) -> EventHub {
        EventHub::new(self.hubs.hub(app_id), self.shared.clone())
    }

    /// What was wired when these channels were installed, in name order.
    pub fn describe(&self) -> &[crate::ChannelDescription] {
        &self.described
    }
}

/// What every connection's worker shares.
struct Inner<S, U> {
    services: Arc<S>,
    wirings: HashMap<String, Arc<Wiring<S, U>>>,
    middleware: Vec<ActionMiddleware<U>>,
    shared: Arc<Shared>,
}

struct Runtime<S, U>(Arc<Inner<S, U>>);

impl<S, U> std::fmt::Debug for Runtime<S, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("channels", &self.0.wirings.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync + 'static, U: Send + Sync + 'static> ExtensionHandler for Runtime<S, U> {
    fn connect(&self, connect: ExtensionConnect<'_>) -> Box<dyn ExtensionSession> {
        // Nothing more until the first plexus:* frame: a Pusher-only connection costs one box.
        Box::new(ConnSession::Idle(Some(Box::new(Idle {
            inner: self.0.clone(),
            app: connect.app.clone(),
            hub: connect.hub.clone(),
            connection: connect.connection.clone(),
            query: connect.query.map(Box::from),
        }))))
    }
}

/// A connection that has not sent a `plexus:*` frame yet.
struct Idle<S, U> {
    inner: Arc<Inner<S, U>>,
    app: Arc<plexus_core::App>,
    hub: Arc<plexus_core::AppHub>,
    connection: Arc<plexus_core::Connection>,
    query: Option<Box<str>>,
}

impl<S: Send + Sync + 'static, U: Send + Sync + 'static> Idle<S, U> {
    /// Spawns the connection's worker.
    fn start(self) -> Started {
        let (tx, rx) = mpsc::channel(QUEUE);
        let conn = Arc::new(ConnCore {
            app: self.app,
            hub: self.hub,
            socket_id: self.connection.socket_id.to_string(),
            connection: self.connection,
            topics: Mutex::new(HashMap::new()),
            jobs: tx.downgrade(),
            opened: Default::default(),
            shared: self.inner.shared.clone(),
        });
        let query: Map<String, Value> = self
            .query
            .as_deref()
            .into_iter()
            .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
            .filter(|(k, _)| !PUSHER_QUERY.contains(&k.as_ref()))
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        let gone = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            inner: self.inner,
            conn: conn.clone(),
            query,
            session: Arc::new(Mutex::new(None)),
            open: HashMap::new(),
            gone: gone.clone(),
        };
        tokio::spawn(worker.run(rx));
        Started { jobs: Some(tx), conn, gone }
    }
}

/// The reader's side of one connection: decodes and queues.
enum ConnSession<S, U> {
    /// `Option` only so `start` can take it by value.
    Idle(Option<Box<Idle<S, U>>>),
    Started(Started),
}

struct Started {
    jobs: Option<mpsc::Sender<Job>>,
    conn: Arc<ConnCore>,
    gone: Arc<AtomicBool>,
}

impl<S, U> std::fmt::Debug for ConnSession<S, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnSession::Idle(_) => f.write_str("ConnSession::Idle"),
            ConnSession::Started(started) => f
                .debug_struct("ConnSession")
                .field("socket_id", &started.conn.socket_id)
                .finish_non_exhaustive(),
        }
    }
}

impl<S: Send + Sync + 'static, U: Send + Sync + 'static> ExtensionSession for ConnSession<S, U> {
    fn on_event(&mut self, event: &str, data: Option<&str>) {
        if let ConnSession::Idle(idle) = self {
            let idle = idle.take().expect("an idle session holds its parts until it starts");
            *self = ConnSession::Started(idle.start());
        }
        let ConnSession::Started(started) = self else { return };
        started.on_event(event, data);
    }
}

impl Started {
    fn on_event(&mut self, event: &str, data: Option<&str>) {
        let request = match envelope::decode(event, data) {
            Ok(request) => request,
            Err(bad) => return self.conn.push(envelope::reply_error(&bad.reference, &bad.error)),
        };
        let Some(jobs) = &self.jobs else { return };
        if let Err(mpsc::error::TrySendError::Full(Job::Request(request))) =
            jobs.try_send(Job::Request(request))
        {
            let reference = match &request {
                Request::Open { reference, .. }
                | Request::Action { reference, .. }
                | Request::Close { reference, .. } => reference,
            };
            let error =
                ActionError::new(codes::OVERLOADED, format!("more than {QUEUE} requests are waiting"));
            self.conn.push(envelope::reply_error(reference, &error));
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        // The connection is leaving its hub: topic subscriptions go now, synchronously; the
        // worker skips what is still queued and runs the on_disconnect handlers.
        self.gone.store(true, Ordering::Release);
        self.conn.leave_topics(None);
        self.jobs = None;
    }
}

/// An open channel as the worker holds it.
struct Open<S, U> {
    wiring: Arc<Wiring<S, U>>,
    ctx: RawCtx<S, U>,
}

struct Worker<S, U> {
    inner: Arc<Inner<S, U>>,
    conn: Arc<ConnCore>,
    query: Map<String, Value>,
    session: SessionSlot<U>,
    open: HashMap<String, Open<S, U>>,
    gone: Arc<AtomicBool>,
}

impl<S: Send + Sync + 'static, U: Send + Sync + 'static> Worker<S, U> {
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            if self.gone.load(Ordering::Acquire) {
                continue;
            }
            match job {
                Job::Request(Request::Open { reference, channel, params }) => {
                    let reply = match self.open(&channel, params).await {
                        Ok((id, welcome)) => envelope::reply_ok(&reference, welcome, Some(&id)),
                        Err(error) => envelope::reply_error(&reference, &error),
                    };
                    self.conn.push(reply);
                }
                Job::Request(Request::Action { reference, channel, action, input }) => {
                    let reply = match self.call(&channel, action, input).await {
                        Ok(output) => envelope::reply_ok(&reference, output, None),
                        Err(error) => envelope::reply_error(&reference, &error),
                    };
                    self.conn.push(reply);
                }
                Job::Request(Request::Close { reference, channel }) => {
                    let reply = match self.open.remove(&channel) {
                        Some(open) => {
                            open.ctx.instance.mark_closed();
                            disconnect(open).await;
                            envelope::reply_ok(&reference, Value::Null, None)
                        }
                        None => envelope::reply_error(&reference, &not_open(&channel)),
                    };
                    self.conn.push(reply);
                }
                Job::Closed { channel, id } => {
                    if self.open.get(&channel).is_some_and(|open| open.ctx.instance.id == id) {
                        if let Some(open) = self.open.remove(&channel) {
                            disconnect(open).await;
                        }
                    }
                }
            }
        }
        for (_, open) in self.open.drain() {
            open.ctx.instance.mark_closed();
            disconnect(open).await;
        }
    }

    async fn open(
        &mut self,
        channel: &str,
        params: Map<String, Value>,
    ) -> Result<(String, Value), ActionError> {
        let wiring = self.inner.wirings.get(channel).cloned().ok_or_else(|| {
            ActionError::new(codes::UNKNOWN_CHANNEL, format!("no channel {channel:?} is wired"))
        })?;
        if self.open.contains_key(channel) {
            return Err(ActionError::new(
                codes::ALREADY_OPEN,
                format!("channel {channel:?} is already open"),
            ));
        }
        let mut opening = self.query.clone();
        opening.extend(params);
        let opening = (wiring.parse_opening)(Value::Object(opening))?;
        let n = self.conn.opened.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("{}.{n}", self.conn.socket_id);
        let instance = Arc::new(Instance::new(id.clone(), wiring.name.clone(), self.conn.clone()));
        let span = tracing::info_span!("channel", name = %wiring.name, id = %id);
        let ctx = RawCtx {
            instance: instance.clone(),
            services: self.inner.services.clone(),
            session: self.session.clone(),
            opening,
            span,
        };
        let welcome = match &wiring.on_connect {
            Some(on_connect) => run_isolated(on_connect(ctx.clone()), &ctx.span).await,
            None => Ok(Value::Null),
        };
        if let Err(error) = welcome {
            instance.mark_closed();
            return Err(error);
        }
        instance.set_open();
        self.conn.shared.register(&instance);
        self.open.insert(channel.to_owned(), Open { wiring, ctx });
        welcome.map(|welcome| (id, welcome))
    }

    async fn call(
        &mut self,
        channel: &str,
        action: Option<String>,
        input: Value,
    ) -> Result<Value, ActionError> {
        let open = self.open.get(channel).ok_or_else(|| not_open(channel))?;
        let wiring = &open.wiring;
        let routed = action.as_deref().and_then(|name| wiring.actions.get(name));
        let (entry, input) = match (routed, &wiring.on_message) {
            (Some(entry), _) => (entry, input),
            (None, Some(fallback)) => (fallback, serde_json::json!({"action": action, "input": input})),
            (None, None) => {
                let message = match &action {
                    Some(name) => format!("channel {channel:?} has no action {name:?}"),
                    None => format!("channel {channel:?} needs an \"action\""),
                };
                return Err(ActionError::new(codes::UNKNOWN_ACTION, message));
            }
        };
        let needs_session = entry.auth.unwrap_or(wiring.auth);
        let ctx = open.ctx.clone();
        let run = entry.run.clone();
        let info = ActionInfo {
            channel: wiring.name.clone(),
            channel_id: ctx.instance.id.clone(),
            action: routed.is_some().then(|| action.clone()).flatten(),
            session: ctx.session(),
        };
        let span = ctx.span.clone();
        let mut chain: BoxFuture<'static, _> = Box::pin(async move {
            if needs_session && ctx.session().is_none() {
                return Err(ActionError::unauthenticated());
            }
            run(ctx, input).await
        });
        for middleware in self.inner.middleware.iter().chain(&wiring.middleware).rev() {
            chain = middleware(info.clone(), Next::new(chain));
        }
        run_isolated(chain, &span).await
    }
}

/// Runs `future` in its own task inside `span`; a panic becomes an `internal` error.
async fn run_isolated<T: Send + 'static>(
    future: BoxFuture<'static, Result<T, ActionError>>,
    span: &tracing::Span,
) -> Result<T, ActionError> {
    match tokio::spawn(future.instrument(span.clone())).await {
        // The docs promise an `internal` error's details in the server log: the caller only
        // gets the code.
        Ok(Err(error)) if error.code() == codes::INTERNAL => {
            tracing::error!(parent: span, message = error.message(), "channel handler answered internal");
            Err(error)
        }
        Ok(result) => result,
        Err(error) => {
            tracing::error!(parent: span, %error, "channel handler failed");
            Err(ActionError::internal("the handler failed"))
        }
    }
}

async fn disconnect<S: Send + Sync + 'static, U: Send + Sync + 'static>(open: Open<S, U>) {
    if let Some(on_disconnect) = &open.wiring.on_disconnect {
        let span = open.ctx.span.clone();
        let future = on_disconnect(open.ctx);
        let _ = run_isolated(
            Box::pin(async move {
                future.await;
                Ok(())
            }),
            &span,
        )
        .await;
    }
}

fn not_open(channel: &str) -> ActionError {
    ActionError::new(
        codes::NOT_OPEN,
        format!("channel {channel:?} is not open on this connection: send plexus:open first"),
    )
}
