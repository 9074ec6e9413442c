//! The seam for protocol extensions: `plexus:*` events that the Pusher [`Session`](crate::Session)
//! does not own (typed channels, see `docs/typed-channels.md`).
//!
//! A server registers at most one [`ExtensionHandler`]. For every connection it opens one
//! [`ExtensionSession`], which the Pusher session feeds every `plexus:*` frame and drops when the
//! connection ends (dropping is the disconnect signal). Replies go out through the connection's
//! own [`Outbound`](crate::Outbound) queue, ordered with everything else on the socket. Pusher
//! frames never reach an extension, so the Pusher hot path pays nothing for it.

use std::fmt;
use std::sync::Arc;

use crate::app::App;
use crate::hub::{AppHub, Connection};

/// What an extension learns about a new connection.
#[derive(Debug, Clone, Copy)]
pub struct ExtensionConnect<'a> {
    pub app: &'a Arc<App>,
    pub hub: &'a Arc<AppHub>,
    pub connection: &'a Arc<Connection>,
    /// The connection URL's query string (without `?`), e.g. `protocol=7&room=lobby`.
    pub query: Option<&'a str>,
}

/// A protocol extension, one per server.
pub trait ExtensionHandler: Send + Sync + fmt::Debug {
    /// Called once per accepted connection, after `pusher:connection_established` is queued.
    fn connect(&self, connect: ExtensionConnect<'_>) -> Box<dyn ExtensionSession>;
}

/// One connection's extension state. Dropped when the connection ends, before the connection
/// leaves its hub.
pub trait ExtensionSession: Send + fmt::Debug {
    /// One `plexus:*` frame from the client: its event name and raw JSON `data`, if any. Must not
    /// block: the connection's reader waits for it.
    fn on_event(&mut self, event: &str, data: Option<&str>);
}
