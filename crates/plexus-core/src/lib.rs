//! Realtime behaviour of plexus, independent of any transport or HTTP framework.
//!
//! - [`access`]: API keys of event-stream consumers: scopes and channel grants.
//! - [`app`]: an app's credentials, feature flags and limits, and the [`app::AppStore`] that finds them.
//! - [`extension`]: the seam through which `plexus:*` frames reach a protocol extension (typed channels).
//! - [`history_store`]: where history channels' events are kept and numbered: the [`history_store::HistoryStore`]
//!   seam and the in-memory store.
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
//!
//! A connection subscribes through its session, and an event published to the app's hub lands in
//! its queue, already encoded as a WebSocket frame — no socket involved:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use plexus_realtime_core::hub::Event;
//! use plexus_realtime_core::webhook::{WebhookEvent, WebhookSink};
//! use plexus_realtime_core::{App, AppHub, Heartbeat, Session, SessionLimits};
//!
//! #[derive(Debug)]
//! struct NoWebhooks;
//! impl WebhookSink for NoWebhooks {
//!     fn submit(&self, _app_id: &str, _event: WebhookEvent) {}
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = Arc::new(App::new("app-id", "app-key", "app-secret"));
//! let hub = Arc::new(AppHub::new(&app.id, Arc::new(NoWebhooks)));
//! let heartbeat = Heartbeat { interval: Duration::from_secs(120), pong_grace: Duration::from_secs(30) };
//! let now = tokio::time::Instant::now();
//! let mut session = Session::start(app.clone(), hub.clone(), SessionLimits::default(), heartbeat, now)?;
//! session.handle_text(r#"{"event":"pusher:subscribe","data":{"channel":"news"}}"#, now);
//!
//! let channels = ["news".to_owned()];
//! let event = Event { name: "headline", data: r#"{"title":"hello"}"#, channels: &channels, except: None };
//! hub.publish(&app, &hub.prepare(&app, &event)?);
//!
//! // What the connection's writer would send: connection_established, subscription_succeeded,
//! // then the event.
//! let mut frames = Vec::new();
//! session.connection().outbound.drain_into(&mut frames).await;
//! let last = plexus_protocol::wsframe::server_frame_payload(&frames[frames.len() - 1]);
//! assert!(String::from_utf8_lossy(&last).contains(r#""event":"headline""#));
//! # Ok(())
//! # }
//! ```

pub mod access;
pub mod app;
pub mod cluster;
mod crash_point;
pub mod extension;
pub mod history_store;
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
