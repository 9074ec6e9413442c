//! The Pusher Channels protocol v7 and its HTTP API, as bytes and rules.
//!
//! This crate owns everything that is true of the wire regardless of how a server is built:
//! decoding client frames ([`codec::decode_client_frame`]), encoding server frames once so they can
//! be shared by every subscriber ([`codec`], [`wsframe`]), channel names and kinds ([`channel`]),
//! socket ids ([`socket_id`]), server-side subscription filters ([`filter`]), close codes and what a client does on them ([`close_code`]), and
//! every signature the protocol uses ([`signature`]). It does no I/O and knows nothing of tokio;
//! the server crates own sockets, clocks and state.
//!
//! Start with [`codec`] for the frames and [`signature`] for authentication.

pub mod channel;
pub mod close_code;
pub mod codec;
pub mod filter;
pub mod limits;
pub mod signature;
pub mod socket_id;
pub mod wsframe;

pub use channel::{ChannelError, ChannelKind, ChannelName};
pub use close_code::CloseCode;
pub use codec::{ClientFrame, DecodeError, RawJson};
pub use socket_id::SocketId;
