//! A Rust client for plexus event streams: the same realtime face as the TypeScript SDK's
//! `client.realtime.events(…)` (README "Event streams in TypeScript").
//!
//! A stream subscribes some channels over one WebSocket with an API key or a token, optionally
//! with a server-side [`Filter`], and keeps itself connected: it answers and sends Pusher pings,
//! reconnects with a backoff, and after a reconnect subscribes each channel again from the last
//! position seen on it, so the events published meanwhile arrive once each, in order
//! ([`Event::replayed`]), followed by a [`StreamItem::Resumed`] — or a [`StreamItem::Gap`] when
//! the server could not replay them all (reload what you show).
//!
//! ```no_run
//! use plexus_realtime_client::{Client, ClientOptions, Credentials, EventsOptions, Filter, StreamItem};
//!
//! #[derive(Debug, serde::Deserialize)]
//! struct Message {
//!     text: String,
//! }
//!
//! # async fn demo() -> Result<(), plexus_realtime_client::Error> {
//! let client = Client::new(
//!     ClientOptions::new("ws://127.0.0.1:6001", "app-key").credentials(Credentials::api_key("sk_live_…")),
//! );
//! let mut stream = client.realtime().events(
//!     EventsOptions::new(["instance-inst_1"])
//!         .filters(Filter::new().events(["message.received"]).where_eq("chat.id", "c1")),
//! )?;
//! stream.connect().await?; // every channel subscribed (a refusal carries the server's reason)
//!
//! // Item by item …
//! while let Some(item) = stream.next().await {
//!     match item {
//!         StreamItem::Event(event) => {
//!             let message: Message = event.decode().expect("a message");
//!             println!("{} {:?} {}", event.channel, event.position, message.text);
//!         }
//!         StreamItem::Gap(gap) => println!("events may have been missed on {}: reload", gap.channel),
//!         StreamItem::Status(status) => println!("{status:?}"),
//!         StreamItem::Error(error) => eprintln!("{error}"),
//!         StreamItem::Resumed(_) => {}
//!     }
//! #   break;
//! }
//!
//! // … or with typed handlers.
//! stream
//!     .on("message.received", |message: Message, event| println!("{}: {}", event.channel, message.text))
//!     .on_gap(|gap| println!("reload {}", gap.channel))
//!     .on_error(|error| eprintln!("{error}"));
//! tokio::select! {
//!     ended = stream.run() => ended?,
//!     _ = tokio::signal::ctrl_c() => {}
//! }
//! stream.close().await; // no task or socket left
//! # Ok(())
//! # }
//! ```
//!
//! How a stream behaves, as the TypeScript one does:
//! - it connects to `{url}/app/{app_key}?protocol=7&client=plexus-rust&version=…` with
//!   `&api_key=…` or `&token=…` ([`Credentials`]); a [`Credentials::TokenFn`] is asked for a fresh
//!   token before every attempt;
//! - it reconnects after 1, 2, 4, 8, 16, 30, 30 … s ([`Backoff`]; jitter, on by default, draws
//!   each delay from the upper half), the backoff starting over once connected; at once after a
//!   close with 4200–4299; never after 4000–4099 (unknown app 4001, unauthorized 4009 …) — except
//!   that with a token function a 4009 fetches a new token and reconnects. An upgrade refused
//!   with HTTP 401 or 403 (unknown key, bad token, no read scope) is reported as
//!   [`Error::ConnectionRefused`] and handled as a 4009 close: final for a fixed credential;
//! - it answers `pusher:ping`, pings a server silent for its `activity_timeout`, and drops a
//!   connection that does not answer within [`ClientOptions::pong_timeout`] (30 s);
//! - it checks the filter on every event itself too, replayed ones included.
//!
//! Only `ws://` is supported: the crate is built without TLS.

mod error;
mod options;
mod stream;
mod task;

use std::sync::Arc;

pub use error::Error;
pub use options::{Backoff, ClientOptions, Credentials, EventsOptions, TokenFn};
/// Subscription filters (README "Server-side filters"): the server's own type, so the client
/// sends and re-checks (a replay may not be filtered by every server) by the server's rule.
pub use plexus_protocol::filter::SubscriptionFilter as Filter;
pub use stream::{Event, EventStream, Resume, Status, StreamItem};

/// Sent as `version=` in the connection URL.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A plexus server and how to connect to it; cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    options: Arc<ClientOptions>,
}

impl Client {
    /// A client with `options`; nothing connects until a stream does.
    pub fn new(options: ClientOptions) -> Self {
        Client { options: Arc::new(options) }
    }

    /// The realtime face: event streams.
    pub fn realtime(&self) -> Realtime {
        Realtime { options: self.options.clone() }
    }

    /// The options the client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }
}

/// Makes event streams; from [`Client::realtime`].
#[derive(Debug, Clone)]
pub struct Realtime {
    options: Arc<ClientOptions>,
}

impl Realtime {
    /// A stream of the channels' events over its own connection, which starts with
    /// [`EventStream::connect`] or the first read. Fails with [`Error::InvalidOptions`] without
    /// a channel, or when the client's URL is not `ws://` (or `http://`).
    pub fn events(&self, options: EventsOptions) -> Result<EventStream, Error> {
        let url = ws_base(&self.options.url);
        if url.starts_with("wss://") {
            return Err(Error::InvalidOptions(format!(
                "{url}: wss:// needs TLS, which plexus-client is built without; use ws://"
            )));
        }
        if !url.starts_with("ws://") {
            return Err(Error::InvalidOptions(format!("{url}: the URL must start with ws://")));
        }
        let mut channels: Vec<String> = Vec::with_capacity(options.channels.len());
        for channel in options.channels {
            if !channels.contains(&channel) {
                channels.push(channel);
            }
        }
        if channels.is_empty() {
            return Err(Error::InvalidOptions("an event stream needs at least one channel".to_owned()));
        }
        let filter = options.filters.filter(|f| !f.is_empty());
        let backoff = options.backoff.unwrap_or(self.options.backoff);
        Ok(EventStream::new(self.options.clone(), backoff, filter, channels))
    }
}

/// The URL without trailing slashes, `http(s)://` taken as `ws(s)://`.
fn ws_base(url: &str) -> String {
    let url = url.trim_end_matches('/');
    match url.strip_prefix("http") {
        Some(rest) => format!("ws{rest}"),
        None => url.to_owned(),
    }
}

/// The URL of one connection attempt (`token` from a token function, or the fixed one).
pub(crate) fn connection_url(options: &ClientOptions, token: Option<&str>) -> String {
    let mut url = format!(
        "{}/app/{}?protocol=7&client=plexus-rust&version={SDK_VERSION}",
        ws_base(&options.url),
        encode(&options.app_key)
    );
    if let Credentials::ApiKey(key) = &options.credentials {
        url.push_str("&api_key=");
        url.push_str(&encode(key));
    }
    if let Some(token) = token {
        url.push_str("&token=");
        url.push_str(&encode(token));
    }
    url
}

/// Percent-encodes as JavaScript's `encodeURIComponent`.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_carries_the_credential_as_the_typescript_client_sends_it() {
        let options =
            ClientOptions::new("http://127.0.0.1:6001/", "app key").credentials(Credentials::api_key("sk/1"));
        assert_eq!(
            connection_url(&options, None),
            format!("ws://127.0.0.1:6001/app/app%20key?protocol=7&client=plexus-rust&version={SDK_VERSION}&api_key=sk%2F1")
        );
        let options = ClientOptions::new("ws://h:1", "k").credentials(Credentials::token("a.b.c"));
        assert!(connection_url(&options, Some("a.b.c")).ends_with("&token=a.b.c"));
    }

    #[test]
    fn streams_need_a_channel_and_plain_ws() {
        let client = Client::new(ClientOptions::default());
        assert!(matches!(client.realtime().events(EventsOptions::default()), Err(Error::InvalidOptions(_))));
        let tls = Client::new(ClientOptions::new("wss://example.com", "k"));
        assert!(matches!(tls.realtime().events(EventsOptions::new(["a"])), Err(Error::InvalidOptions(_))));
        assert!(client.realtime().events(EventsOptions::new(["a", "a"])).is_ok());
    }
}
