//! Channel names and kinds.
//!
//! A name is validated once at the edge ([`ChannelName::parse`]) and passed inward as a
//! [`ChannelName`]; its [`ChannelKind`] follows from anchored prefix tests in the order the digest
//! (§5.2) gives, so `private-encrypted-cache-x` is encrypted *and* cached, and a name that merely
//! contains `private-` is public.

use std::fmt;
use std::sync::Arc;

use crate::limits::MAX_CHANNEL_NAME_LEN;

/// Prefix of the internal channel that `sendToUser` publishes to.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// Prefix of the channels that carry typed channels' topics (`private-plexus.{channel}.{topic}`,
/// see `plexus-channels`): plexus's own plumbing, left out of the Pusher HTTP API's channel
/// listing and out of webhooks, where a Pusher application does not expect them.
pub const TOPIC_CHANNEL_PREFIX: &str = "private-plexus.";

/// Whether `name` is one of plexus's internal topic channels ([`TOPIC_CHANNEL_PREFIX`]).
pub fn is_topic_channel(name: &str) -> bool {
    name.starts_with(TOPIC_CHANNEL_PREFIX)
}

/// What a channel's name makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Public,
    Private,
    Presence,
    /// `private-encrypted-`: subscription auth like private; the server relays ciphertext only.
    Encrypted,
    /// `#server-to-user-{id}`: reaches every socket signed in as that user.
    ServerToUser,
}

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {len} characters long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("channel name contains {0:?}; allowed are A-Z a-z 0-9 _ - = @ , . ;")]
    InvalidCharacter(char),
}

/// A validated channel name. Cheap to clone (shared text), since the registry, every subscribed
/// session and queued webhooks all hold the same names.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';')
}

impl ChannelName {
    /// Validates `name` with the default length limit.
    pub fn parse(name: &str) -> Result<Self, ChannelError> {
        Self::parse_with_limit(name, MAX_CHANNEL_NAME_LEN)
    }

    /// Validates `name`: the Pusher character set, `#` only in the `#server-to-user-` prefix,
    /// at most `max_len` characters.
    pub fn parse_with_limit(name: &str, max_len: usize) -> Result<Self, ChannelError> {
        if name.is_empty() {
            return Err(ChannelError::Empty);
        }
        let len = name.chars().count();
        if len > max_len {
            return Err(ChannelError::TooLong { len, max: max_len });
        }
        let body = name.strip_prefix(SERVER_TO_USER_PREFIX).unwrap_or(name);
        if body.is_empty() {
            return Err(ChannelError::Empty);
        }
        if let Some(bad) = body.chars().find(|c| !allowed(*c)) {
            return Err(ChannelError::InvalidCharacter(bad));
        }
        Ok(ChannelName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> ChannelKind {
        kind_of(&self.0)
    }

    /// Cache channels keep their last event (`cache-`, `private-cache-`, `presence-cache-`,
    /// `private-encrypted-cache-`).
    pub fn is_cache(&self) -> bool {
        let n = self.as_str();
        ["cache-", "private-cache-", "presence-cache-", "private-encrypted-cache-"]
            .iter()
            .any(|p| n.starts_with(p))
    }

    /// Whether subscribing needs a signature from the app's auth endpoint.
    pub fn requires_auth(&self) -> bool {
        matches!(self.kind(), ChannelKind::Private | ChannelKind::Presence | ChannelKind::Encrypted)
    }

    /// Client events are allowed on private and presence channels only (never encrypted).
    pub fn allows_client_events(&self) -> bool {
        matches!(self.kind(), ChannelKind::Private | ChannelKind::Presence)
    }

    /// For `#server-to-user-{id}`, the user id.
    pub fn server_to_user_id(&self) -> Option<&str> {
        self.as_str().strip_prefix(SERVER_TO_USER_PREFIX)
    }
}

fn kind_of(name: &str) -> ChannelKind {
    if name.starts_with("private-encrypted-") {
        ChannelKind::Encrypted
    } else if name.starts_with("private-") {
        ChannelKind::Private
    } else if name.starts_with("presence-") {
        ChannelKind::Presence
    } else if name.starts_with(SERVER_TO_USER_PREFIX) {
        ChannelKind::ServerToUser
    } else {
        ChannelKind::Public
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind(name: &str) -> ChannelKind {
        ChannelName::parse(name).unwrap().kind()
    }

    #[test]
    fn kinds_follow_anchored_prefixes_in_digest_order() {
        assert_eq!(kind("private-encrypted-cache-x"), ChannelKind::Encrypted);
        assert_eq!(kind("private-encrypted-x"), ChannelKind::Encrypted);
        assert_eq!(kind("private-cache-x"), ChannelKind::Private);
        assert_eq!(kind("private-x"), ChannelKind::Private);
        assert_eq!(kind("presence-cache-x"), ChannelKind::Presence);
        assert_eq!(kind("presence-x"), ChannelKind::Presence);
        assert_eq!(kind("cache-x"), ChannelKind::Public);
        assert_eq!(kind("#server-to-user-42"), ChannelKind::ServerToUser);
        assert_eq!(kind("my-private-channel"), ChannelKind::Public);
        assert_eq!(kind("xpresence-a"), ChannelKind::Public);
    }

    #[test]
    fn cache_flag_covers_all_four_cache_prefixes() {
        for name in ["cache-a", "private-cache-a", "presence-cache-a", "private-encrypted-cache-a"] {
            assert!(ChannelName::parse(name).unwrap().is_cache(), "{name}");
        }
        for name in ["a-cache-b", "private-a", "presence-a", "private-encrypted-a"] {
            assert!(!ChannelName::parse(name).unwrap().is_cache(), "{name}");
        }
    }

    #[test]
    fn client_events_only_on_private_and_presence() {
        let allows = |n: &str| ChannelName::parse(n).unwrap().allows_client_events();
        assert!(allows("private-a") && allows("presence-a") && allows("private-cache-a"));
        assert!(!allows("public") && !allows("private-encrypted-a") && !allows("cache-a"));
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert_eq!(ChannelName::parse(""), Err(ChannelError::Empty));
        assert_eq!(ChannelName::parse("#server-to-user-"), Err(ChannelError::Empty));
        assert!(matches!(
            ChannelName::parse(&"a".repeat(201)),
            Err(ChannelError::TooLong { len: 201, max: 200 })
        ));
        assert!(ChannelName::parse(&"a".repeat(200)).is_ok());
        assert_eq!(ChannelName::parse("a b"), Err(ChannelError::InvalidCharacter(' ')));
        assert_eq!(ChannelName::parse("a:b"), Err(ChannelError::InvalidCharacter(':')));
        assert_eq!(ChannelName::parse("#other"), Err(ChannelError::InvalidCharacter('#')));
        assert_eq!(ChannelName::parse("a#b"), Err(ChannelError::InvalidCharacter('#')));
        assert!(ChannelName::parse("A-z_0=9@,.;").is_ok());
    }

    proptest! {
        #[test]
        fn any_name_from_the_allowed_set_parses(name in "[A-Za-z0-9_\\-=@,.;]{1,200}") {
            let parsed = ChannelName::parse(&name).unwrap();
            prop_assert_eq!(parsed.as_str(), name.as_str());
        }

        #[test]
        fn arbitrary_text_never_panics_and_accepted_names_are_in_the_set(name in ".{0,250}") {
            if let Ok(parsed) = ChannelName::parse(&name) {
                let body = parsed.as_str().strip_prefix(SERVER_TO_USER_PREFIX).unwrap_or(parsed.as_str());
                prop_assert!(body.chars().all(allowed));
                prop_assert!(parsed.as_str().chars().count() <= MAX_CHANNEL_NAME_LEN);
            }
        }
    }
}
