//! [`ActionError`]: what a handler, an auth check or a permission check answers instead of an
//! output. It goes back to the caller as `{"code", "message"}` in a `plexus:reply`; the
//! connection and the channel stay open.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A typed error sent back to the caller of an action.
///
/// ```
/// use plexus_channels::ActionError;
/// let e = ActionError::new("not_found", "no todo 7");
/// assert_eq!((e.code(), e.message()), ("not_found", "no todo 7"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionError {
    code: Cow<'static, str>,
    message: String,
}

impl ActionError {
    /// An application error with its own code (`not_found`, `conflict`, …).
    pub fn new(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ActionError { code: code.into(), message: message.into() }
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The action needs a session and the connection has none yet.
    pub fn unauthenticated() -> Self {
        Self::new(codes::UNAUTHENTICATED, "this action requires a session: authenticate first")
    }

    /// No permission group passed.
    pub fn forbidden() -> Self {
        Self::new(codes::FORBIDDEN, "no permission group allows this call")
    }

    /// The input did not match the action's input type.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_INPUT, message)
    }

    /// Something failed on the server; the message is for logs, not a stack trace.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL, message)
    }
}

/// Read from a backend's answer (the HTTP action proxy): `{"code", "message"?}`.
impl<'de> Deserialize<'de> for ActionError {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            code: String,
            #[serde(default)]
            message: String,
        }
        let wire = Wire::deserialize(deserializer)?;
        Ok(ActionError::new(wire.code, wire.message))
    }
}

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ActionError {}

/// The codes plexus itself sends. Applications add their own.
pub mod codes {
    /// The action requires a session (`auth`) and the connection has none.
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    /// Permission groups exist and none passed.
    pub const FORBIDDEN: &str = "forbidden";
    /// The input does not deserialize into the action's input type; the message names the field.
    pub const INVALID_INPUT: &str = "invalid_input";
    /// The channel has no such action and no `on_message` fallback.
    pub const UNKNOWN_ACTION: &str = "unknown_action";
    /// No channel of that name is wired.
    pub const UNKNOWN_CHANNEL: &str = "unknown_channel";
    /// The channel is not open on this connection (send `plexus:open` first).
    pub const NOT_OPEN: &str = "not_open";
    /// The channel is already open on this connection.
    pub const ALREADY_OPEN: &str = "already_open";
    /// The channel does not declare that topic.
    pub const UNKNOWN_TOPIC: &str = "unknown_topic";
    /// The `plexus:*` frame itself is malformed (not an object, no `ref`, no `channel`, …).
    pub const BAD_REQUEST: &str = "bad_request";
    /// Too many requests are waiting on this connection.
    pub const OVERLOADED: &str = "overloaded";
    /// The handler failed unexpectedly (e.g. panicked).
    pub const INTERNAL: &str = "internal";
}
