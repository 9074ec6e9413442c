//! The Pusher Channels protocol v7 and its HTTP API, as bytes and rules.
//!
//! This crate owns everything that is true of the wire regardless of how a server is built:
//! decoding client frames ([`codec::decode_client_frame`]), encoding server frames once so they can
//! be shared by every subscriber ([`codec`], [`wsframe`]) and compressed once for all that negotiated
//! permessage-deflate ([`deflate`]) or rendered once as server-sent events for every SSE reader
//! ([`sse`]), channel names and kinds ([`channel`]),
//! socket ids ([`socket_id`]), server-side subscription filters ([`filter`]), close codes and what a client does on them ([`close_code`]), and
//! every signature the protocol uses ([`signature`]). It does no I/O and knows nothing of tokio;
//! the server crates own sockets, clocks and state.
//!
//! Start with [`codec`] for the frames and [`signature`] for authentication.
//!
//! ```
//! use plexus_protocol::{codec, signature, ChannelKind, ChannelName, ClientFrame};
//!
//! // What pusher-js sends to join a private channel, as the server decodes it.
//! let frame = codec::decode_client_frame(
//!     r#"{"event":"pusher:subscribe","data":{"channel":"private-foobar","auth":"k:sig"}}"#,
//! )?;
//! let ClientFrame::Subscribe(subscribe) = frame else { panic!("a subscribe frame") };
//! let channel = ChannelName::parse(&subscribe.channel)?;
//! assert_eq!(channel.kind(), ChannelKind::Private);
//!
//! // The signature an app's auth endpoint returns for it (Pusher's published test vector).
//! let to_sign = signature::channel_string_to_sign("1234.1234", "private-foobar", None);
//! assert_eq!(
//!     signature::auth_token("278d425bdf160c739803", "7ad3773142a6692b25b8", &to_sign),
//!     "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4",
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod channel;
pub mod close_code;
pub mod codec;
pub mod deflate;
pub mod filter;
pub mod limits;
pub mod signature;
pub mod socket_id;
pub mod sse;
pub mod wsframe;

pub use channel::{ChannelError, ChannelKind, ChannelName};
pub use close_code::CloseCode;
pub use codec::{ClientFrame, DecodeError, RawJson};
pub use socket_id::SocketId;
