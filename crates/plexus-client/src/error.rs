//! The errors a stream reports.

/// What went wrong, as a stream reports it ([`StreamItem::Error`](crate::StreamItem::Error),
/// [`EventStream::connect`](crate::EventStream::connect), [`EventStream::run`](crate::EventStream::run)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The options cannot work (no channel, a URL that is not `ws://`).
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The server refused a subscription (`pusher:subscription_error`); the connection and the
    /// other channels carry on.
    #[error("subscription to {channel} refused ({status}): {message}")]
    SubscriptionRefused {
        /// The refused channel.
        channel: String,
        /// Its HTTP-like status: 403 when the credential does not grant the channel or its scope.
        status: u16,
        /// The refusal's `type` (`AuthError`, `LimitReached`, `InvalidChannel`…).
        kind: String,
        /// The server's reason, e.g. `the API key grants no access to channel "secret-1"`.
        message: String,
    },
    /// The server refused the WebSocket upgrade over HTTP: 401 (no or unknown key, a bad
    /// token), 403 (no read scope), 429 (the key is at its connection limit).
    #[error("the server refused the connection with HTTP {status}: {message}")]
    ConnectionRefused {
        /// The HTTP status.
        status: u16,
        /// The server's `{"error": …}`, or the body as text.
        message: String,
    },
    /// A `pusher:error` from the server (`code` is a Pusher close code or an HTTP-like status).
    #[error("server error{}: {message}", code.map(|c| format!(" {c}")).unwrap_or_default())]
    Server {
        /// The error's code, when it has one.
        code: Option<u16>,
        /// The server's message.
        message: String,
    },
    /// The token function failed; the stream tries again after a backoff.
    #[error("could not get a token: {0}")]
    Token(String),
    /// The stream ended: the server closed the connection for good (4000–4099), or the stream
    /// was closed (1000).
    #[error("the stream is closed: {code} {reason}")]
    Closed {
        /// The close code.
        code: u16,
        /// Its reason.
        reason: String,
    },
    /// An event's data did not decode into the handler's type ([`EventStream::on`](crate::EventStream::on)).
    #[error("cannot decode the data of {event} on {channel}: {message}")]
    Decode {
        /// The event's name.
        event: String,
        /// Its channel.
        channel: String,
        /// What serde said.
        message: String,
    },
}
