//! The wiring API: a [`Channel`] binds a name to lifecycle handlers and a table of typed
//! [`Action`]s; [`Permissions`] guard actions. Everything here is built once at start-up and
//! shared by every connection.
//!
//! Auth and permissions: a channel says whether its actions need a session (`auth`, default
//! `true`); an action may override that (`Action::auth(false)` for `authenticate` or `history`).
//! An action with [`Permissions`] runs when any of its groups passes, a group passing when all of
//! its checks do. The permissions an action is defined with can be replaced at the wiring by
//! calling [`Action::permissions`] again on a clone of it.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::context::{Ctx, RawCtx};
use crate::error::ActionError;
use crate::middleware::{ActionMiddleware, ActionResult, BoxFuture, EventInfo, Outgoing};

/// Opening data for channels that do not declare a type: the query parameters and `params`.
pub type OpeningData = Map<String, Value>;

/// One permission check over the services, the action's input and the session.
pub type Check<S, U, In> =
    Arc<dyn for<'a> Fn(&'a S, &'a In, Option<&'a U>) -> BoxFuture<'a, bool> + Send + Sync>;

/// An async check, e.g. `check(|db: &Db, input: &Delete, user| Box::pin(async move { … }))`.
pub fn check<S, U, In, F>(f: F) -> Check<S, U, In>
where
    F: for<'a> Fn(&'a S, &'a In, Option<&'a U>) -> BoxFuture<'a, bool> + Send + Sync + 'static,
{
    Arc::new(f)
}

/// A check that needs no I/O, e.g. `check_sync(|_, _, user: Option<&User>| user.is_some_and(|u| u.admin))`.
pub fn check_sync<S, U, In, F>(f: F) -> Check<S, U, In>
where
    S: 'static,
    U: 'static,
    In: 'static,
    F: Fn(&S, &In, Option<&U>) -> bool + Send + Sync + 'static,
{
    Arc::new(move |s, input, user| {
        let allowed = f(s, input, user);
        Box::pin(async move { allowed })
    })
}

/// A named group of checks.
type Group<S, U, In> = (String, Vec<Check<S, U, In>>);

/// Named groups of checks: a call is allowed when every check of at least one group passes.
pub struct Permissions<S, U, In> {
    groups: Vec<Group<S, U, In>>,
}

impl<S, U, In> Clone for Permissions<S, U, In> {
    fn clone(&self) -> Self {
        Permissions { groups: self.groups.clone() }
    }
}

impl<S, U, In> std::fmt::Debug for Permissions<S, U, In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.groups.iter().map(|(name, checks)| (name, checks.len()))).finish()
    }
}

impl<S, U, In> Default for Permissions<S, U, In> {
    fn default() -> Self {
        Permissions { groups: Vec::new() }
    }
}

impl<S, U, In> Permissions<S, U, In> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a group named `name` (for logs) that passes when all of `checks` pass.
    pub fn group(
        mut self,
        name: impl Into<String>,
        checks: impl IntoIterator<Item = Check<S, U, In>>,
    ) -> Self {
        self.groups.push((name.into(), checks.into_iter().collect()));
        self
    }

    /// `Ok` when there are no groups or one passes; [`ActionError::forbidden`] otherwise.
    async fn allow(&self, services: &S, input: &In, session: Option<&U>) -> Result<(), ActionError> {
        if self.groups.is_empty() {
            return Ok(());
        }
        'groups: for (name, checks) in &self.groups {
            for check in checks {
                if !check(services, input, session).await {
                    continue 'groups;
                }
            }
            tracing::debug!(group = %name, "permission group passed");
            return Ok(());
        }
        Err(ActionError::forbidden())
    }
}

/// The type-erased form every action takes once wired.
pub(crate) type ErasedAction<S, U> =
    Arc<dyn Fn(RawCtx<S, U>, Value) -> BoxFuture<'static, ActionResult> + Send + Sync>;

/// The Rust types of an action, for introspection and client generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeNames {
    pub input: &'static str,
    pub output: &'static str,
}

pub(crate) struct ActionEntry<S, U> {
    /// `None`: the channel's default.
    pub(crate) auth: Option<bool>,
    pub(crate) run: ErasedAction<S, U>,
    pub(crate) types: TypeNames,
    /// Names of the permission groups, for introspection (the checks are inside `run`).
    pub(crate) permissions: Vec<String>,
}

impl<S, U> Clone for ActionEntry<S, U> {
    fn clone(&self) -> Self {
        ActionEntry {
            auth: self.auth,
            run: self.run.clone(),
            types: self.types.clone(),
            permissions: self.permissions.clone(),
        }
    }
}

type Handler<S, U, O, In, Out> =
    Arc<dyn Fn(Ctx<S, U, O>, In) -> BoxFuture<'static, Result<Out, ActionError>> + Send + Sync>;

/// An action definition: an async handler `fn(ctx, input) -> Result<Out, ActionError>`, whether
/// it needs a session, and its permissions. Cheap to clone.
///
/// `In` is deserialized from the request's `input` (a missing input is `null`, which is what
/// `()` expects); `Out` is serialized into the reply (`()` sends a reply without `output`).
pub struct Action<S, U, O, In, Out> {
    handler: Handler<S, U, O, In, Out>,
    auth: Option<bool>,
    permissions: Option<Permissions<S, U, In>>,
}

impl<S, U, O, In, Out> Clone for Action<S, U, O, In, Out> {
    fn clone(&self) -> Self {
        Action { handler: self.handler.clone(), auth: self.auth, permissions: self.permissions.clone() }
    }
}

impl<S, U, O, In, Out> std::fmt::Debug for Action<S, U, O, In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Action").field("auth", &self.auth).field("permissions", &self.permissions).finish()
    }
}

impl<S, U, O, In, Out> Action<S, U, O, In, Out>
where
    S: Send + Sync + 'static,
    U: Send + Sync + 'static,
    O: Send + Sync + 'static,
    In: DeserializeOwned + Send + Sync + 'static,
    Out: Serialize + 'static,
{
    pub fn new<F, Fut>(handler: F) -> Self
    where
        F: Fn(Ctx<S, U, O>, In) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Out, ActionError>> + Send + 'static,
    {
        Action {
            handler: Arc::new(move |ctx, input| Box::pin(handler(ctx, input))),
            auth: None,
            permissions: None,
        }
    }

    /// Overrides the channel's `auth` default for this action.
    pub fn auth(mut self, required: bool) -> Self {
        self.auth = Some(required);
        self
    }

    /// Sets (or, on a clone at the wiring, replaces) the permission groups.
    pub fn permissions(mut self, permissions: Permissions<S, U, In>) -> Self {
        self.permissions = Some(permissions);
        self
    }

    fn erase(self) -> ActionEntry<S, U> {
        let Action { handler, auth, permissions } = self;
        let groups = permissions.iter().flat_map(|p| &p.groups).map(|(name, _)| name.clone()).collect();
        let permissions = permissions.map(Arc::new);
        let run: ErasedAction<S, U> = Arc::new(move |raw: RawCtx<S, U>, input: Value| {
            let handler = handler.clone();
            let permissions = permissions.clone();
            Box::pin(async move {
                let input: In = serde_path_to_error::deserialize(input).map_err(invalid_input)?;
                if let Some(permissions) = &permissions {
                    let session = raw.session();
                    permissions.allow(raw.services(), &input, session.as_deref()).await?;
                }
                let output = handler(raw.typed::<O>(), input).await?;
                serde_json::to_value(output).map_err(|e| ActionError::internal(format!("output: {e}")))
            })
        });
        let types = TypeNames { input: std::any::type_name::<In>(), output: std::any::type_name::<Out>() };
        ActionEntry { auth, run, types, permissions: groups }
    }
}

/// `invalid input at `text`: invalid type: integer `1`, expected a string`.
fn invalid_input(error: serde_path_to_error::Error<serde_json::Error>) -> ActionError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    if path == "." {
        ActionError::invalid_input(format!("invalid input: {inner}"))
    } else {
        ActionError::invalid_input(format!("invalid input at `{path}`: {inner}"))
    }
}

/// A message that matched no action, for `on_message`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Message {
    /// The action name the client gave, if any.
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub input: Value,
}

pub(crate) type Lifecycle<S, U> = Arc<dyn Fn(RawCtx<S, U>) -> BoxFuture<'static, ActionResult> + Send + Sync>;
pub(crate) type Disconnect<S, U> = Arc<dyn Fn(RawCtx<S, U>) -> BoxFuture<'static, ()> + Send + Sync>;
pub(crate) type ParseOpening = fn(Value) -> Result<Arc<dyn Any + Send + Sync>, ActionError>;

/// A channel with its types erased: what [`Channels`](crate::Channels) keeps.
pub(crate) struct Wiring<S, U> {
    pub(crate) name: String,
    pub(crate) auth: bool,
    pub(crate) tags: Vec<String>,
    pub(crate) on_connect: Option<Lifecycle<S, U>>,
    pub(crate) on_disconnect: Option<Disconnect<S, U>>,
    pub(crate) on_message: Option<ActionEntry<S, U>>,
    pub(crate) actions: BTreeMap<String, ActionEntry<S, U>>,
    pub(crate) middleware: Vec<ActionMiddleware<U>>,
    pub(crate) outgoing: Vec<Outgoing>,
    /// Topic name → Rust type name of its events.
    pub(crate) topics: BTreeMap<String, &'static str>,
    pub(crate) parse_opening: ParseOpening,
    pub(crate) opening_type: &'static str,
    /// Set by the HTTP action proxy: where its actions go, for introspection.
    pub(crate) proxied: Vec<crate::describe::ProxyTarget>,
    #[cfg(feature = "typescript")]
    pub(crate) ts: crate::typescript::TsChannel,
}

/// A typed channel: `S` the application's services, `U` its session type, `O` the opening data.
///
/// ```
/// use plexus_channels::{Action, ActionError, Channel, Ctx};
/// use serde::{Deserialize, Serialize};
///
/// struct Services;
/// #[derive(Debug)]
/// struct User { id: String }
/// #[derive(Deserialize)]
/// struct Echo { text: String }
/// #[derive(Serialize)]
/// struct Echoed { text: String }
///
/// async fn echo(_ctx: Ctx<Services, User>, input: Echo) -> Result<Echoed, ActionError> {
///     Ok(Echoed { text: input.text })
/// }
///
/// let channel = Channel::<Services, User>::new("echo")
///     .auth(false)
///     .tags(["demo"])
///     .action("echo", Action::new(echo));
/// # let _ = channel;
/// ```
pub struct Channel<S, U, O = OpeningData> {
    wiring: Wiring<S, U>,
    _opening: PhantomData<fn() -> O>,
}

impl<S, U, O> std::fmt::Debug for Channel<S, U, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.wiring.name)
            .field("actions", &self.wiring.actions.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn parse_opening<O: DeserializeOwned + Send + Sync + 'static>(
    value: Value,
) -> Result<Arc<dyn Any + Send + Sync>, ActionError> {
    let opening: O = serde_path_to_error::deserialize(value).map_err(|e| {
        let error = invalid_input(e);
        ActionError::invalid_input(format!("opening data: {}", error.message()))
    })?;
    Ok(Arc::new(opening))
}

impl<S, U, O> Channel<S, U, O>
where
    S: Send + Sync + 'static,
    U: Send + Sync + 'static,
    O: DeserializeOwned + Send + Sync + 'static,
{
    /// A channel named `name` (letters, digits, `_` and `-`; unique among the wired channels).
    /// Its actions need a session unless `auth(false)` says otherwise.
    pub fn new(name: impl Into<String>) -> Self {
        Channel {
            wiring: Wiring {
                name: name.into(),
                auth: true,
                tags: Vec::new(),
                on_connect: None,
                on_disconnect: None,
                on_message: None,
                actions: BTreeMap::new(),
                middleware: Vec::new(),
                outgoing: Vec::new(),
                topics: BTreeMap::new(),
                parse_opening: parse_opening::<O>,
                opening_type: std::any::type_name::<O>(),
                proxied: Vec::new(),
                #[cfg(feature = "typescript")]
                ts: Default::default(),
            },
            _opening: PhantomData,
        }
    }

    /// Whether actions need a session by default.
    pub fn auth(mut self, required: bool) -> Self {
        self.wiring.auth = required;
        self
    }

    /// Labels for introspection and selection: a process can run only the channels of some tags
    /// ([`Channels::only_tags`](crate::Channels::only_tags), `plexus serve --tags`).
    pub fn tags<T: Into<String>>(mut self, tags: impl IntoIterator<Item = T>) -> Self {
        self.wiring.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Runs when a client opens the channel; its value (unless `()`) is the open reply's output,
    /// e.g. a welcome. An error refuses the open.
    pub fn on_connect<F, Fut, W>(mut self, f: F) -> Self
    where
        F: Fn(Ctx<S, U, O>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<W, ActionError>> + Send + 'static,
        W: Serialize + 'static,
    {
        let f = Arc::new(f);
        self.wiring.on_connect = Some(Arc::new(move |raw: RawCtx<S, U>| {
            let f = f.clone();
            Box::pin(async move {
                let welcome = f(raw.typed::<O>()).await?;
                serde_json::to_value(welcome).map_err(|e| ActionError::internal(format!("welcome: {e}")))
            })
        }));
        self
    }

    /// Runs once when the channel closes: the client closed it, a handler called `ctx.close()`,
    /// or the connection ended.
    pub fn on_disconnect<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Ctx<S, U, O>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let f = Arc::new(f);
        self.wiring.on_disconnect = Some(Arc::new(move |raw: RawCtx<S, U>| {
            let f = f.clone();
            Box::pin(async move { f(raw.typed::<O>()).await })
        }));
        self
    }

    /// Handles requests whose action is missing or not in the table (instead of `unknown_action`).
    pub fn on_message<Out: Serialize + 'static>(mut self, action: Action<S, U, O, Message, Out>) -> Self {
        self.wiring.on_message = Some(action.erase());
        self
    }

    /// Routes requests with `"action": name` to `action`.
    pub fn action<In, Out>(mut self, name: impl Into<String>, action: Action<S, U, O, In, Out>) -> Self
    where
        In: DeserializeOwned + Send + Sync + 'static,
        Out: Serialize + 'static,
    {
        let name = name.into();
        let previous = self.wiring.actions.insert(name.clone(), action.erase());
        assert!(previous.is_none(), "channel {:?} wires action {name:?} twice", self.wiring.name);
        self
    }

    /// Middleware around this channel's actions (after the global ones).
    pub fn middleware(mut self, middleware: ActionMiddleware<U>) -> Self {
        self.wiring.middleware.push(middleware);
        self
    }

    /// Middleware on this channel's outgoing events (after the global ones for its name).
    pub fn outgoing<F>(mut self, f: F) -> Self
    where
        F: Fn(&EventInfo<'_>, Value) -> Option<Value> + Send + Sync + 'static,
    {
        self.wiring.outgoing.push(Arc::new(f));
        self
    }

    /// Declares a topic whose events (of type `T`) this channel's connections can subscribe to
    /// through the event hub. A name ending in `*` declares a family: `room:*` covers `room:lobby`.
    pub fn topic<T: Serialize + 'static>(mut self, topic: impl Into<String>) -> Self {
        self.wiring.topics.insert(topic.into(), std::any::type_name::<T>());
        self
    }

    #[cfg(feature = "typescript")]
    pub(crate) fn ts_mut(&mut self) -> &mut crate::typescript::TsChannel {
        &mut self.wiring.ts
    }

    pub(crate) fn proxied(mut self, targets: Vec<crate::describe::ProxyTarget>) -> Self {
        self.wiring.proxied = targets;
        self
    }

    pub(crate) fn into_wiring(self) -> Wiring<S, U> {
        self.wiring
    }
}
