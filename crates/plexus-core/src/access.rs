//! Credentials of event-stream consumers: who may connect, and to which channels.
//!
//! An app that lists `[[apps.api_keys]]` (or accepts signed tokens) takes WebSocket connections
//! only with a credential. A credential carries a [`Grant`]: **scopes** (`events:read`,
//! `chats:read`, …) and **channel patterns** (with `*`, e.g. `instance-inst_1-*`). The app's
//! `[[apps.channel_scopes]]` say which scope a channel prefix needs. A subscription is allowed
//! when the channel matches one of the grant's patterns and the grant holds the scope the
//! channel's prefix needs; otherwise it is refused with a message naming what is missing. API
//! keys and tokens differ only in where the grant comes from (the app's config, or the token's
//! claims). Nothing here does I/O; the server checks credentials at the upgrade and the session
//! on subscribe.

use serde::{Deserialize, Serialize};

use crate::app::App;

/// One API key of an app.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The secret the client presents.
    pub key: String,
    /// What the key may read, e.g. `["events:read"]`; `*` grants every scope.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Channel patterns the key may subscribe to (`*` matches any run of characters).
    #[serde(default = "everything")]
    pub channels: Vec<String>,
    /// Concurrent connections with this key; more are refused with HTTP 429.
    #[serde(default = "default_key_connections")]
    pub max_connections: u32,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: String = self.key.chars().take(4).collect();
        f.debug_struct("ApiKey")
            .field("key", &format_args!("{shown}…"))
            .field("scopes", &self.scopes)
            .field("channels", &self.channels)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

fn default_key_connections() -> u32 {
    10
}

/// The scope a channel prefix needs (`[[apps.channel_scopes]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelScope {
    pub prefix: String,
    pub scope: String,
}

/// Whether `pattern` (with `*` for any run of characters) matches all of `text`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn holds(scopes: &[String], scope: &str) -> bool {
    scopes.iter().any(|s| s == "*" || s == scope)
}

/// What one connection's credential allows: scopes and channel patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Names the credential in refusals: "the API key", "the token".
    pub source: &'static str,
    pub scopes: Vec<String>,
    pub channels: Vec<String>,
}

/// Why a credential may not subscribe to a channel; `credential` names it ("the API key", "the
/// token").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotGranted {
    #[error("{credential} grants no access to channel {channel:?}")]
    Channel { credential: &'static str, channel: String },
    #[error("{credential} lacks scope {scope:?}, which channel {channel:?} needs")]
    Scope { credential: &'static str, scope: String, channel: String },
}

impl ApiKey {
    /// Whether the key may open a stream at all: it needs some read scope.
    pub fn can_read(&self) -> bool {
        self.scopes.iter().any(|s| s == "*" || s.ends_with(":read"))
    }

    /// Whether the key holds `scope` (`*` holds every scope).
    pub fn has_scope(&self, scope: &str) -> bool {
        holds(&self.scopes, scope)
    }

    /// What a connection opened with this key may subscribe to.
    pub fn grant(&self) -> Grant {
        Grant { source: "the API key", scopes: self.scopes.clone(), channels: self.channels.clone() }
    }

    /// Whether the key may subscribe to `channel` of `app`; the error names what is missing.
    pub fn permits(&self, app: &App, channel: &str) -> Result<(), NotGranted> {
        self.grant().permits(app, channel)
    }
}

impl Grant {
    /// Whether the grant holds `scope` (`*` holds every scope).
    pub fn has_scope(&self, scope: &str) -> bool {
        holds(&self.scopes, scope)
    }

    /// Whether the grant allows subscribing to `channel` of `app`; the error names what is
    /// missing.
    pub fn permits(&self, app: &App, channel: &str) -> Result<(), NotGranted> {
        let source = self.source;
        if !self.channels.iter().any(|pattern| glob_match(pattern, channel)) {
            return Err(NotGranted::Channel { credential: source, channel: channel.to_owned() });
        }
        let needed = app
            .channel_scopes
            .iter()
            .filter(|rule| channel.starts_with(&rule.prefix))
            .max_by_key(|rule| rule.prefix.len());
        match needed {
            Some(rule) if !self.has_scope(&rule.scope) => Err(NotGranted::Scope {
                credential: source,
                scope: rule.scope.clone(),
                channel: channel.to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

impl Grant {
    /// Whether a pattern of this grant that matches `channel` spells out the channel's kind:
    /// `private-orders-*` names `private-orders-1`, `*` or `priv*` do not. Such a grant admits a
    /// private, encrypted or presence channel without a channel signature (which a stream that
    /// cannot learn its socket id — SSE — could never present); a blanket `*` never does.
    pub fn names_explicitly(&self, channel: &str) -> bool {
        // `private-` also names encrypted channels (`private-encrypted-…`), whose events the
        // server cannot read anyway.
        let kind_prefix = ["presence-", "private-", "#server-to-user-"]
            .into_iter()
            .find(|prefix| channel.starts_with(prefix));
        let Some(kind_prefix) = kind_prefix else { return true };
        self.channels.iter().any(|pattern| {
            let literal = pattern.split('*').next().unwrap_or("");
            literal.starts_with(kind_prefix) && glob_match(pattern, channel)
        })
    }
}

/// Finds the key `presented` among `app`'s keys, comparing in constant time per key.
pub fn find_key<'a>(app: &'a App, presented: &str) -> Option<&'a ApiKey> {
    app.api_keys.iter().find(|k| constant_time_eq(k.key.as_bytes(), presented.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_patterns_that_spell_out_the_kind_name_a_private_channel() {
        let grant = |channels: &[&str]| super::Grant {
            source: "the API key",
            scopes: vec![],
            channels: channels.iter().map(|c| c.to_string()).collect(),
        };
        assert!(grant(&["private-orders-*"]).names_explicitly("private-orders-1"));
        assert!(grant(&["presence-room-1"]).names_explicitly("presence-room-1"));
        assert!(grant(&["private-*"]).names_explicitly("private-encrypted-x"), "private-* covers encrypted");
        assert!(!grant(&["*"]).names_explicitly("private-orders-1"));
        assert!(!grant(&["priv*"]).names_explicitly("private-orders-1"));
        assert!(!grant(&["private-orders-*"]).names_explicitly("presence-orders-1"));
        assert!(!grant(&["private-*"]).names_explicitly("presence-x"));
        assert!(grant(&["*"]).names_explicitly("news"), "public channels need no naming");
    }

    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("instance-inst_1-*", "instance-inst_1-chats"));
        assert!(!glob_match("instance-inst_1-*", "instance-inst_2-chats"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("a*c*e", "abcd"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("*-log", "x-log") && !glob_match("*-log", "x-logs"));
    }

    #[test]
    fn grants_and_scopes_decide_and_name_what_is_missing() {
        let mut app = App::new("1", "k", "s");
        app.channel_scopes = vec![
            ChannelScope { prefix: "chats-".into(), scope: "chats:read".into() },
            ChannelScope { prefix: "instance-".into(), scope: "events:read".into() },
        ];
        let key = ApiKey {
            key: "sk".into(),
            scopes: vec!["events:read".into()],
            channels: vec!["instance-inst_1*".into(), "chats-*".into()],
            max_connections: 10,
        };
        assert!(key.can_read());
        assert_eq!(key.permits(&app, "instance-inst_1"), Ok(()));
        assert!(matches!(key.permits(&app, "instance-inst_2"), Err(NotGranted::Channel { .. })));
        let refused = key.permits(&app, "chats-1").unwrap_err();
        assert!(matches!(&refused, NotGranted::Scope { scope, .. } if scope == "chats:read"));
        assert!(refused.to_string().contains("lacks scope \"chats:read\""), "{refused}");
        let writer = ApiKey { scopes: vec!["events:write".into()], ..key.clone() };
        assert!(!writer.can_read());
        app.api_keys = vec![key];
        assert!(find_key(&app, "sk").is_some());
        assert!(find_key(&app, "sk2").is_none() && find_key(&app, "s").is_none());
        assert!(!format!("{:?}", app.api_keys[0]).contains("\"sk\""));
    }
}
