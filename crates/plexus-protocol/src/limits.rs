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
