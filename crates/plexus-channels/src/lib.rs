//! Typed channels for plexus: wire channels to async Rust functions on the same WebSocket as
//! Pusher channels.
//!
//! - [`wire`]: [`Channel`] (name, lifecycle handlers, action table, auth default, tags, topics),
//!   [`Action`] (typed handler, auth override, [`Permissions`]).
//! - [`context`]: [`Ctx`], what every handler gets: channel id, opening data, `send`, `close`,
//!   state, logger, session, services, event hub.
//! - [`middleware`]: around actions, and on outgoing events.
//! - [`hub`]: [`EventHub`], topics delivered through plexus channels (cluster-wide).
//! - [`describe`]: [`ChannelDescription`], what is wired (actions, types, auth, tags, topics),
//!   and selection by tag.
//! - [`runtime`]: [`Channels`], the set of wirings installed into a server, and the per-connection
//!   worker. [`envelope`]: the `plexus:*` frames (`docs/typed-channels.md` describes the protocol).
//! - [`proxy`]: the HTTP action proxy, typed channels served by a backend in any language.
//! - `typescript` (cargo feature `typescript`): the generated TypeScript client's types.
//!
//! Start at [`Channels`]; `examples/chat` is a complete application.
//!
//! ```no_run
//! use plexus_channels::{Action, ActionError, Channel, Channels, Ctx};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default)]
//! struct Services;
//! struct User { name: String }
//! #[derive(Deserialize)]
//! struct Login { token: String }
//! #[derive(Serialize)]
//! struct Hello { name: String }
//!
//! async fn login(ctx: Ctx<Services, User>, input: Login) -> Result<Hello, ActionError> {
//!     if input.token.is_empty() {
//!         return Err(ActionError::new("bad_token", "empty token"));
//!     }
//!     ctx.set_session(User { name: input.token.clone() });
//!     Ok(Hello { name: input.token })
//! }
//!
//! # async fn run(state: std::sync::Arc<plexus_server::ServerState>) {
//! let channels = Channels::new(Services)
//!     .wire(Channel::new("greeter").action("login", Action::new(login).auth(false)));
//! let installed = state.install_channels(channels);
//! # }
//! ```

pub mod context;
pub mod describe;
pub mod envelope;
pub mod error;
pub mod hub;
pub mod middleware;
pub mod proxy;
pub mod runtime;
#[cfg(feature = "typescript")]
pub mod typescript;
pub mod wire;

pub use context::{ChannelState, Ctx};
pub use describe::{ActionDescription, ChannelDescription, ProxyTarget, TopicDescription};
pub use error::{codes, ActionError};
pub use hub::EventHub;
pub use middleware::{around, ActionInfo, EventInfo, Next};
pub use runtime::{Channels, Installed};
pub use wire::{check, check_sync, Action, Channel, Check, Message, OpeningData, Permissions, TypeNames};
