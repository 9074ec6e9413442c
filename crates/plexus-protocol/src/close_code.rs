//! Pusher close and error codes, with what pusher-js does when it sees each one.
//!
//! The ranges matter more than the numbers: 4000–4099 stop the client for good, 4100–4199 make it
//! back off, 4200–4299 make it reconnect at once, and ≥ 4300 are for `pusher:error` events only
//! (pusher-js treats an unknown close code as fatal). [`CloseCode::closes_socket`] encodes that rule.

/// What a client should do after a close with a given code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// 4000–4099: the connection is refused; retrying unchanged will fail again.
    Never,
    /// 4100–4199: try again after backing off.
    AfterBackoff,
    /// 4200–4299: reconnect immediately (e.g. to another node).
    Immediately,
}

/// Codes used in `pusher:error` events and WebSocket close frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// Unknown app key.
    AppNotFound = 4001,
    /// The app exists but is disabled.
    AppDisabled = 4003,
    /// The app has reached its connection quota.
    OverConnectionQuota = 4004,
    /// The request path is not `/app/{key}`.
    PathNotFound = 4005,
    /// The `protocol` parameter is not a number.
    InvalidVersionFormat = 4006,
    /// The `protocol` parameter names a version we do not speak.
    UnsupportedProtocolVersion = 4007,
    /// No `protocol` parameter (only in strict mode).
    NoProtocolVersion = 4008,
    /// Unauthorized: failed sign-in, sign-in timeout, terminated by the app.
    Unauthorized = 4009,
    /// Over capacity, or too slow to keep up: back off and retry.
    OverCapacity = 4100,
    /// Generic "reconnect now", used on shutdown so clients move to another node.
    ReconnectImmediately = 4200,
    /// No pong (nor anything else) within the grace period after our ping.
    PongNotReceived = 4201,
    /// Client event rejected (rate limit and other client-event rules). Error event only.
    ClientEventRejected = 4301,
    /// Watchlist longer than the limit. Error event only.
    WatchlistLimitExceeded = 4302,
    /// A subscription refused because the connection holds too many, or subscribes too fast.
    /// Error event only: the socket stays open.
    SubscriptionLimit = 4303,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        self as u16
    }

    /// What pusher-js will do after a close with this code.
    pub fn reconnect(self) -> Reconnect {
        match self.code() {
            4000..=4099 => Reconnect::Never,
            4100..=4199 => Reconnect::AfterBackoff,
            _ => Reconnect::Immediately,
        }
    }

    /// Whether the code may be used to close a socket. Codes ≥ 4300 belong in `pusher:error`
    /// events only: pusher-js would treat such a close as fatal.
    pub fn closes_socket(self) -> bool {
        self.code() < 4300
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_to_client_behaviour() {
        assert_eq!(CloseCode::AppNotFound.reconnect(), Reconnect::Never);
        assert_eq!(CloseCode::Unauthorized.reconnect(), Reconnect::Never);
        assert_eq!(CloseCode::OverCapacity.reconnect(), Reconnect::AfterBackoff);
        assert_eq!(CloseCode::ReconnectImmediately.reconnect(), Reconnect::Immediately);
        assert_eq!(CloseCode::PongNotReceived.reconnect(), Reconnect::Immediately);
    }

    #[test]
    fn error_only_codes_never_close_a_socket() {
        assert!(!CloseCode::ClientEventRejected.closes_socket());
        assert!(!CloseCode::WatchlistLimitExceeded.closes_socket());
        assert!(CloseCode::ReconnectImmediately.closes_socket());
    }
}
