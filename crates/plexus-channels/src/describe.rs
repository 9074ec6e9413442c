//! What the wired channels offer, read back from the wiring itself (for `plexus info`, the admin
//! listener's `GET /api/info`, and anyone listing an application's channels), and selection of
//! wirings by tag (`plexus serve --tags`, [`Channels::only_tags`](crate::Channels::only_tags)).
//!
//! Type names are Rust's ([`std::any::type_name`]) without module paths, so the description is
//! the same whether or not the `typescript` feature is on and reads like the handler signatures:
//! `send(Send) -> ChatMessage`, `history(()) -> Vec<ChatMessage>`.

use serde::Serialize;

use crate::wire::{ActionEntry, Wiring};

/// One wired channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelDescription {
    pub name: String,
    pub tags: Vec<String>,
    /// The channel-wide default: whether its actions need a session.
    pub auth: bool,
    /// Type of the opening data (query parameters plus the open `params`).
    pub opening: String,
    /// In name order; the `on_message` fallback, if any, last (named `*`).
    pub actions: Vec<ActionDescription>,
    /// Topics its connections may follow (a name ending in `*` is a family).
    pub topics: Vec<TopicDescription>,
    /// Backends every action is forwarded to, for channels of the HTTP action proxy.
    pub proxied: Vec<ProxyTarget>,
}

/// One action of a wired channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionDescription {
    /// The action name a client sends; `*` for the `on_message` fallback (any other name).
    pub name: String,
    pub input: String,
    pub output: String,
    /// Whether it runs only once the connection has a session (its override or the channel's).
    pub session: bool,
    /// Names of its permission groups (any one passing allows the call); empty: none.
    pub permissions: Vec<String>,
    /// The channel's `on_message`, which takes every request no action matched.
    pub fallback: bool,
}

impl ActionDescription {
    /// `public` or `session`, then the permission groups: `session permissions=owner|admin`.
    pub fn auth_label(&self) -> String {
        let base = if self.session { "session" } else { "public" };
        match self.permissions.is_empty() {
            true => base.to_owned(),
            false => format!("{base} permissions={}", self.permissions.join("|")),
        }
    }
}

/// A topic a channel declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicDescription {
    pub topic: String,
    /// Type of its events.
    #[serde(rename = "type")]
    pub event: String,
}

/// Where an action-proxy channel forwards the actions of one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyTarget {
    pub app_id: String,
    pub url: String,
    pub tags: Vec<String>,
}

impl ChannelDescription {
    pub(crate) fn of<S, U>(wiring: &Wiring<S, U>) -> Self {
        let action = |name: &str, entry: &ActionEntry<S, U>, fallback: bool| ActionDescription {
            name: name.to_owned(),
            input: short_type_name(entry.types.input),
            output: short_type_name(entry.types.output),
            session: entry.auth.unwrap_or(wiring.auth),
            permissions: entry.permissions.clone(),
            fallback,
        };
        let mut actions: Vec<_> =
            wiring.actions.iter().map(|(name, entry)| action(name, entry, false)).collect();
        actions.extend(wiring.on_message.as_ref().map(|entry| action("*", entry, true)));
        ChannelDescription {
            name: wiring.name.clone(),
            tags: wiring.tags.clone(),
            auth: wiring.auth,
            opening: short_type_name(wiring.opening_type),
            actions,
            topics: wiring
                .topics
                .iter()
                .map(|(topic, ty)| TopicDescription { topic: topic.clone(), event: short_type_name(ty) })
                .collect(),
            proxied: wiring.proxied.clone(),
        }
    }
}

/// A Rust type name without its module paths: `alloc::vec::Vec<chat::ChatMessage>` becomes
/// `Vec<ChatMessage>`, `serde_json::map::Map<alloc::string::String, serde_json::value::Value>`
/// becomes `Map<String, Value>`.
///
/// ```
/// assert_eq!(plexus_channels::describe::short_type_name("core::option::Option<a::b::C>"), "Option<C>");
/// assert_eq!(plexus_channels::describe::short_type_name("(u8, alloc::string::String)"), "(u8, String)");
/// ```
pub fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    // Where the path segment being written began: a `::` drops everything since.
    let mut segment = 0;
    let mut chars = full.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.truncate(segment);
            continue;
        }
        out.push(c);
        if !(c.is_alphanumeric() || c == '_') {
            segment = out.len();
        }
    }
    out
}

/// Whether a wiring tagged `tags` is selected by `wanted`: it carries at least one of them.
///
/// ```
/// use plexus_channels::describe::tagged_with_any;
/// assert!(tagged_with_any(&["events", "todos"], &["todos"]));
/// assert!(!tagged_with_any(&["events"], &["chat"]));
/// assert!(!tagged_with_any::<&str, &str>(&[], &["chat"]));
/// ```
pub fn tagged_with_any<T: AsRef<str>, W: AsRef<str>>(tags: &[T], wanted: &[W]) -> bool {
    tags.iter().any(|tag| wanted.iter().any(|w| w.as_ref() == tag.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_lose_their_paths_but_keep_their_shape() {
        assert_eq!(short_type_name("()"), "()");
        assert_eq!(short_type_name("alloc::vec::Vec<chat_example::ChatMessage>"), "Vec<ChatMessage>");
        assert_eq!(
            short_type_name("serde_json::map::Map<alloc::string::String, serde_json::value::Value>"),
            "Map<String, Value>"
        );
        assert_eq!(short_type_name("[u8; 4]"), "[u8; 4]");
        assert_eq!(short_type_name("&str"), "&str");
        assert_eq!(
            short_type_name("core::result::Result<a::B, std::collections::hash::map::HashMap<u8, c::D>>"),
            "Result<B, HashMap<u8, D>>"
        );
    }
}
