//! Protocol-wide limits that are not per-app settings.
//!
//! Per-app limits (payload size, presence members, client event rate) live with the app
//! configuration in `plexus-core`; these are the ceilings every Pusher SDK already enforces, so
//! accepting more would only let through what no official client sends.

/// Longest channel name accepted (the node and go SDKs validate 200; see the digest §5.1).
pub const MAX_CHANNEL_NAME_LEN: usize = 200;
/// Longest event name accepted on the HTTP API and for client events.
pub const MAX_EVENT_NAME_LEN: usize = 200;
/// Most channels one `POST /events` may name.
pub const MAX_CHANNELS_PER_TRIGGER: usize = 100;
/// Most events one `POST /batch_events` may carry.
pub const MAX_BATCH_EVENTS: usize = 10;
/// Longest presence user id.
pub const MAX_USER_ID_LEN: usize = 128;
/// How long a signed HTTP API request stays valid, either side of the server's clock.
pub const API_TIMESTAMP_WINDOW_SECS: u64 = 600;
/// The `activity_timeout` we advertise (seconds): pusher-js pings after this much silence.
pub const ACTIVITY_TIMEOUT_SECS: u64 = 120;

/// Why an event name is refused, wherever it enters (HTTP API, client events, bridges, typed
/// channels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventNameError {
    #[error("event name must be 1 to {MAX_EVENT_NAME_LEN} characters")]
    Length,
    /// Names travel on into other protocols — an SSE `event:` field, log lines, headers — where
    /// a line break or another control character would end a field and let the name forge the
    /// next one.
    #[error("event name must not contain control characters (such as a line break)")]
    ControlCharacter,
}

/// Checks an event name's length and characters (reserved prefixes are the caller's rule).
pub fn check_event_name(name: &str) -> Result<(), EventNameError> {
    if name.is_empty() || name.chars().count() > MAX_EVENT_NAME_LEN {
        return Err(EventNameError::Length);
    }
    if name.chars().any(char::is_control) {
        return Err(EventNameError::ControlCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_refuse_control_characters_and_bad_lengths() {
        assert_eq!(check_event_name("order.created"), Ok(()));
        assert_eq!(check_event_name("client-é ✓"), Ok(()));
        assert_eq!(check_event_name(""), Err(EventNameError::Length));
        assert_eq!(check_event_name(&"a".repeat(MAX_EVENT_NAME_LEN + 1)), Err(EventNameError::Length));
        for bad in ["evil\nid: 999", "a\rb", "tab\there", "nul\0", "del\u{7f}", "c1\u{85}"] {
            assert_eq!(check_event_name(bad), Err(EventNameError::ControlCharacter), "{bad:?}");
        }
    }
}
