//! Realtime behaviour of plexus, independent of any transport or HTTP framework.
//!
//! - [`access`]: API keys of event-stream consumers: scopes and channel grants.
//! - [`app`]: an app's credentials, feature flags and limits, and the [`app::AppStore`] that finds them.
//! - [`extension`]: the seam through which `plexus:*` frames reach a protocol extension (typed channels).
//! - [`hub`]: each app's channels, one room per concern: the registry and presence, fan-out,
//!   cache channels, history, the cluster replica, signed-in users.
//! - [`outbound`]: each connection's bounded queue of encoded frames and the slow-consumer policy.
//! - [`session`]: one connection's state machine: client frames in, replies and hub calls out.
//! - [`observe`]: the debug console's seam, free while nobody watches.
//! - [`webhook`]: the events the hub reports for webhooks, and the [`webhook::WebhookSink`] seam.
//!
//! A transport (the WebSocket endpoint in `plexus-server`) owns the socket: it feeds decoded text
//! into a [`session::Session`] and writes whatever the connection's [`outbound::Outbound`] queue
//! yields. Start reading at [`hub::AppHub::publish`] for the hot path.

pub mod access;
pub mod app;
pub mod cluster;
pub mod extension;
pub mod hub;
pub mod observe;
pub mod outbound;
pub mod session;
pub mod webhook;

pub use app::{App, AppStore, MemoryAppStore};
pub use extension::{ExtensionConnect, ExtensionHandler, ExtensionSession};
pub use hub::{AppHub, Connection, EventMirror, Hubs};
pub use outbound::Outbound;
pub use session::{Heartbeat, Session, SessionLimits};
