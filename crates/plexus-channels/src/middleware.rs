//! The two kinds of middleware.
//!
//! - Around actions ([`ActionMiddleware`]): sees the route and the session, calls [`Next::run`]
//!   (or refuses without calling it) and sees the result: audit, timing, tracing. Global ones run
//!   first, then the wiring's, outermost first; they wrap the auth and permission checks too, so
//!   an audit log also sees refused calls.
//! - On outgoing events ([`Outgoing`]): transform an event's data or drop it. Global ones
//!   (registered for a channel name) run first, then the wiring's own, in registration order.
//!   They run where the event is produced — once per publish, not once per recipient — so they
//!   are plain synchronous functions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::error::ActionError;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an action call's result is before it is put on the wire.
pub type ActionResult = Result<Value, ActionError>;

/// The route and caller of one action call.
#[derive(Debug)]
pub struct ActionInfo<U> {
    /// The typed channel's name.
    pub channel: String,
    /// The open channel's id (unique per connection).
    pub channel_id: String,
    /// The action name; `None` when the call goes to `on_message`.
    pub action: Option<String>,
    /// The connection's session when the call arrived.
    pub session: Option<Arc<U>>,
}

impl<U> Clone for ActionInfo<U> {
    fn clone(&self) -> Self {
        ActionInfo {
            channel: self.channel.clone(),
            channel_id: self.channel_id.clone(),
            action: self.action.clone(),
            session: self.session.clone(),
        }
    }
}

/// The rest of the chain: the inner middleware, then auth, permissions and the handler.
pub struct Next {
    inner: BoxFuture<'static, ActionResult>,
}

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Next")
    }
}

impl Next {
    pub(crate) fn new(inner: BoxFuture<'static, ActionResult>) -> Self {
        Next { inner }
    }

    /// Runs the rest of the chain and returns its result (the output as JSON, or the error).
    pub async fn run(self) -> ActionResult {
        self.inner.await
    }
}

/// Middleware around each action call.
pub type ActionMiddleware<U> =
    Arc<dyn Fn(ActionInfo<U>, Next) -> BoxFuture<'static, ActionResult> + Send + Sync>;

/// Wraps an async function as [`ActionMiddleware`].
///
/// ```
/// use plexus_channels::middleware::{around, ActionInfo, Next};
/// let timing = around(|info: ActionInfo<()>, next: Next| async move {
///     let started = std::time::Instant::now();
///     let result = next.run().await;
///     tracing::info!(channel = %info.channel, action = ?info.action, elapsed = ?started.elapsed(), ok = result.is_ok());
///     result
/// });
/// # let _ = timing;
/// ```
pub fn around<U, F, Fut>(f: F) -> ActionMiddleware<U>
where
    F: Fn(ActionInfo<U>, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ActionResult> + Send + 'static,
{
    Arc::new(move |info, next| Box::pin(f(info, next)))
}

/// Which event an outgoing middleware is looking at.
#[derive(Debug, Clone, Copy)]
pub struct EventInfo<'a> {
    /// The typed channel's name.
    pub channel: &'a str,
    /// The topic, for event-hub events; `None` for `ctx.send`.
    pub topic: Option<&'a str>,
}

/// Middleware on outgoing events: returns the (possibly changed) data, or `None` to drop it.
pub type Outgoing = Arc<dyn Fn(&EventInfo<'_>, Value) -> Option<Value> + Send + Sync>;

/// Runs `chain` over `data`; `None` if one of them dropped it.
pub(crate) fn apply_outgoing(chain: &[Outgoing], info: &EventInfo<'_>, data: Value) -> Option<Value> {
    chain.iter().try_fold(data, |data, middleware| middleware(info, data))
}
