//! Apps: credentials, feature flags and limits, and where they are looked up.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::access::{ApiKey, ChannelScope};

/// One webhook endpoint and the event kinds it wants (delivery belongs to the webhooks issue;
/// the shape is fixed now because config files already carry it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    /// `http://…` or `https://…`.
    pub url: String,
    #[serde(default)]
    pub events: Vec<WebhookKind>,
    /// For an `https://` URL: a PEM file of the CA certificates to trust instead of the system's
    /// roots (a private CA). Read by the server delivering the webhooks.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

/// Event kinds a webhook endpoint can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookKind {
    ChannelOccupied,
    ChannelVacated,
    MemberAdded,
    MemberRemoved,
    ClientEvent,
    CacheMiss,
    SubscriptionCount,
}

/// An app as configured. Field names are the config file's (`[[apps]]`), a contract with tools
/// outside this repository.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub id: String,
    pub key: String,
    pub secret: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub enable_client_messages: bool,
    #[serde(default)]
    pub enable_user_authentication: bool,
    /// Concurrent connections; 0 = unlimited.
    #[serde(default)]
    pub max_connections: u64,
    /// Largest event `data`, API and client events alike.
    #[serde(default = "default_payload_kb")]
    pub max_event_payload_kb: u32,
    #[serde(default = "default_presence_members")]
    pub max_presence_members: u32,
    /// Largest presence `user_info`, as JSON text.
    #[serde(default = "default_member_size_kb")]
    pub max_presence_member_size_kb: u32,
    /// Per connection; 0 = unlimited.
    #[serde(default = "default_client_events_per_second")]
    pub max_client_events_per_second: u32,
    #[serde(default = "default_channel_name_length")]
    pub max_channel_name_length: usize,
    /// Seconds a connection of an app with `enable_user_authentication` has to sign in (or
    /// subscribe to a private or presence channel) before it is closed with 4009.
    #[serde(default = "default_user_authentication_timeout")]
    pub user_authentication_timeout_secs: u64,
    /// Send `pusher_internal:subscription_count` to subscribers of non-presence channels.
    #[serde(default)]
    pub enable_subscription_count: bool,
    /// How long a cache channel keeps its last event.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_secs: u64,
    #[serde(default)]
    pub webhooks: Vec<WebhookTarget>,
    /// Keys for event-stream consumers; when any is listed, WebSocket connections need one.
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
    /// The scope each channel prefix needs from an API key.
    #[serde(default)]
    pub channel_scopes: Vec<ChannelScope>,
    /// Channels that keep a bounded history, for clients that resume after a reconnect.
    #[serde(default)]
    pub history: Vec<HistoryRule>,
    /// Accept signed tokens (JWT, HS256 with the app secret) in place of an API key.
    #[serde(default)]
    pub enable_tokens: bool,
    /// Public keys that verify RS256 / ES256 tokens; listing any also enables tokens.
    #[serde(default)]
    pub token_keys: Vec<TokenKey>,
    /// When set, a token must name this audience in `aud` (the claim's string, or one of its
    /// array's): an identity provider signs tokens for many services with the same key, and a
    /// token meant for another one must not open this app. Unset: `aud` is not checked.
    #[serde(default)]
    pub token_audience: Option<String>,
    /// When set, a token's `iss` must equal it. Unset: `iss` is not checked.
    #[serde(default)]
    pub token_issuer: Option<String>,
    /// Silence after which the server pings a connection of this app; unset: 30 s for
    /// connections with an API key or token, `[server] activity_timeout_secs` for the others.
    #[serde(default)]
    pub heartbeat_interval_secs: Option<u64>,
    /// Silence (no frame, no pong) after which a connection of this app is closed with 4201;
    /// unset: 90 s for keyed connections, activity + pong timeout for the others.
    #[serde(default)]
    pub heartbeat_timeout_secs: Option<u64>,
}

/// `[[apps.token_keys]]`: a public key that verifies tokens signed by another party (an
/// identity provider, the app's backend) with RS256 or ES256.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKey {
    /// `RS256` or `ES256`.
    pub algorithm: String,
    /// The public key, PEM (`-----BEGIN PUBLIC KEY-----`).
    pub public_key: String,
    /// When set, only tokens whose header names this `kid` are checked with this key.
    #[serde(default)]
    pub kid: Option<String>,
}

/// `[[apps.history]]`: channels starting with `prefix` keep their last `size` events for
/// `ttl_secs`, numbered so a client can resume from the last one it saw.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    pub prefix: String,
    #[serde(default = "default_history_size")]
    pub size: usize,
    #[serde(default = "default_history_ttl")]
    pub ttl_secs: u64,
}

fn default_history_size() -> usize {
    100
}
fn default_history_ttl() -> u64 {
    300
}

fn yes() -> bool {
    true
}
fn default_payload_kb() -> u32 {
    10
}
fn default_presence_members() -> u32 {
    100
}
fn default_member_size_kb() -> u32 {
    2
}
fn default_client_events_per_second() -> u32 {
    10
}
fn default_user_authentication_timeout() -> u64 {
    30
}
fn default_cache_ttl() -> u64 {
    1800
}
fn default_channel_name_length() -> usize {
    plexus_protocol::limits::MAX_CHANNEL_NAME_LEN
}

impl App {
    /// An app with the given credentials and every other setting at its default.
    pub fn new(id: impl Into<String>, key: impl Into<String>, secret: impl Into<String>) -> Self {
        App {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            enabled: true,
            enable_client_messages: false,
            enable_user_authentication: false,
            max_connections: 0,
            max_event_payload_kb: default_payload_kb(),
            max_presence_members: default_presence_members(),
            max_presence_member_size_kb: default_member_size_kb(),
            max_client_events_per_second: default_client_events_per_second(),
            max_channel_name_length: default_channel_name_length(),
            user_authentication_timeout_secs: default_user_authentication_timeout(),
            enable_subscription_count: false,
            cache_ttl_secs: default_cache_ttl(),
            webhooks: Vec::new(),
            api_keys: Vec::new(),
            channel_scopes: Vec::new(),
            history: Vec::new(),
            enable_tokens: false,
            token_keys: Vec::new(),
            token_audience: None,
            token_issuer: None,
            heartbeat_interval_secs: None,
            heartbeat_timeout_secs: None,
        }
    }

    /// Whether connections may present a signed token (`enable_tokens`, or any `token_keys`).
    pub fn accepts_tokens(&self) -> bool {
        self.enable_tokens || !self.token_keys.is_empty()
    }

    /// Whether connections need a credential (an API key or a token) to connect.
    pub fn requires_credentials(&self) -> bool {
        !self.api_keys.is_empty() || self.accepts_tokens()
    }

    /// The history rule of `channel` (the longest matching prefix), if it keeps one.
    pub fn history_rule(&self, channel: &str) -> Option<&HistoryRule> {
        self.history
            .iter()
            .filter(|rule| channel.starts_with(&rule.prefix))
            .max_by_key(|rule| rule.prefix.len())
    }

    /// Checks the settings a store cannot express in its types; the error names the field
    /// (`webhooks.url`, `max_event_payload_kb`) and why. Every app store calls it.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for webhook in &self.webhooks {
            let https = webhook.url.starts_with("https://");
            if !https && !webhook.url.starts_with("http://") {
                return Err((
                    "webhooks.url",
                    format!("{:?} must be an http:// or https:// URL", webhook.url),
                ));
            }
            if let (Some(ca_file), false) = (&webhook.ca_file, https) {
                return Err((
                    "webhooks.ca_file",
                    format!(
                        "{} is set for {:?}, which is not an https:// URL (it would be sent in the clear)",
                        ca_file.display(),
                        webhook.url
                    ),
                ));
            }
        }
        if self.heartbeat_interval_secs == Some(0) {
            return Err(("heartbeat_interval_secs", "must be at least 1".into()));
        }
        if let (Some(interval), Some(timeout)) = (self.heartbeat_interval_secs, self.heartbeat_timeout_secs) {
            if timeout <= interval {
                return Err((
                    "heartbeat_timeout_secs",
                    format!("must be greater than heartbeat_interval_secs ({interval})"),
                ));
            }
        }
        for key in &self.token_keys {
            if !matches!(key.algorithm.as_str(), "RS256" | "ES256") {
                return Err(("token_keys.algorithm", format!("{:?}: use RS256 or ES256", key.algorithm)));
            }
            if !key.public_key.contains("-----BEGIN") {
                return Err((
                    "token_keys.public_key",
                    "must be a PEM public key (-----BEGIN PUBLIC KEY-----)".into(),
                ));
            }
        }
        // An empty value would admit only tokens whose claim is empty too: surely a mistake for
        // "no check", which is leaving the setting out.
        if self.token_audience.as_deref() == Some("") {
            return Err((
                "token_audience",
                "must not be empty (leave token_audience out to accept any aud)".into(),
            ));
        }
        if self.token_issuer.as_deref() == Some("") {
            return Err((
                "token_issuer",
                "must not be empty (leave token_issuer out to accept any iss)".into(),
            ));
        }
        if self.max_event_payload_kb == 0 {
            return Err(("max_event_payload_kb", "must be greater than 0".into()));
        }
        Ok(())
    }

    pub fn max_payload_bytes(&self) -> usize {
        self.max_event_payload_kb as usize * 1024
    }

    pub fn max_member_info_bytes(&self) -> usize {
        self.max_presence_member_size_kb as usize * 1024
    }
}

/// Secrets never reach logs: `Debug` prints everything but the secret.
impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("enabled", &self.enabled)
            .field("enable_client_messages", &self.enable_client_messages)
            .field("enable_user_authentication", &self.enable_user_authentication)
            .field("max_connections", &self.max_connections)
            .field("max_event_payload_kb", &self.max_event_payload_kb)
            .field("max_presence_members", &self.max_presence_members)
            .field("max_presence_member_size_kb", &self.max_presence_member_size_kb)
            .field("max_client_events_per_second", &self.max_client_events_per_second)
            .field("max_channel_name_length", &self.max_channel_name_length)
            .field("user_authentication_timeout_secs", &self.user_authentication_timeout_secs)
            .field("enable_subscription_count", &self.enable_subscription_count)
            .field("cache_ttl_secs", &self.cache_ttl_secs)
            .field("webhooks", &self.webhooks)
            .field("api_keys", &self.api_keys)
            .field("channel_scopes", &self.channel_scopes)
            .field("history", &self.history)
            .field("enable_tokens", &self.enable_tokens)
            .field("token_keys", &self.token_keys)
            .field("token_audience", &self.token_audience)
            .field("token_issuer", &self.token_issuer)
            .field("heartbeat_interval_secs", &self.heartbeat_interval_secs)
            .field("heartbeat_timeout_secs", &self.heartbeat_timeout_secs)
            .finish()
    }
}

/// Where apps are found. Lookups are synchronous because they sit on the connection path; a
/// store backed by a database keeps a cached snapshot and refreshes it in the background.
pub trait AppStore: Send + Sync + fmt::Debug {
    fn by_key(&self, key: &str) -> Option<Arc<App>>;
    fn by_id(&self, id: &str) -> Option<Arc<App>>;
    fn list(&self) -> Vec<Arc<App>>;
}

/// Why a set of apps cannot be served together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppSetError {
    #[error("duplicate app id {0:?}")]
    DuplicateId(String),
    #[error("duplicate app key {0:?}")]
    DuplicateKey(String),
    #[error("app {id:?}: {field} must not be empty")]
    Empty { id: String, field: &'static str },
}

/// Apps held in memory: the config file's, or the embedded development app. The whole set can
/// be replaced at run time (`SIGHUP` re-reads the config file); lookups see the old set or the
/// new one, never a mix.
#[derive(Debug, Default)]
pub struct MemoryAppStore {
    apps: std::sync::RwLock<AppSet>,
}

#[derive(Debug, Default)]
struct AppSet {
    by_id: HashMap<String, Arc<App>>,
    by_key: HashMap<String, Arc<App>>,
}

/// What replacing a store's apps changed, by app id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppSetChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Present before and after with any setting different (credentials, flags, keys, …).
    pub changed: Vec<String>,
}

impl AppSet {
    /// Builds the set, refusing duplicate ids or keys and empty credentials.
    fn new(apps: impl IntoIterator<Item = App>) -> Result<Self, AppSetError> {
        let mut set = AppSet::default();
        for app in apps {
            for (field, value) in [("id", &app.id), ("key", &app.key), ("secret", &app.secret)] {
                if value.is_empty() {
                    return Err(AppSetError::Empty { id: app.id.clone(), field });
                }
            }
            if set.by_id.contains_key(&app.id) {
                return Err(AppSetError::DuplicateId(app.id));
            }
            if set.by_key.contains_key(&app.key) {
                return Err(AppSetError::DuplicateKey(app.key));
            }
            let app = Arc::new(app);
            set.by_id.insert(app.id.clone(), app.clone());
            set.by_key.insert(app.key.clone(), app);
        }
        Ok(set)
    }
}

impl MemoryAppStore {
    /// Builds the store, refusing duplicate ids or keys and empty credentials.
    pub fn new(apps: impl IntoIterator<Item = App>) -> Result<Self, AppSetError> {
        Ok(MemoryAppStore { apps: std::sync::RwLock::new(AppSet::new(apps)?) })
    }

    /// Replaces every app at once; an invalid set changes nothing.
    pub fn replace(&self, apps: impl IntoIterator<Item = App>) -> Result<AppSetChanges, AppSetError> {
        let next = AppSet::new(apps)?;
        let mut current = self.apps.write().unwrap_or_else(|p| p.into_inner());
        let mut changes = AppSetChanges::default();
        for (id, app) in &next.by_id {
            match current.by_id.get(id) {
                None => changes.added.push(id.clone()),
                Some(old) if **old != **app => changes.changed.push(id.clone()),
                Some(_) => {}
            }
        }
        changes.removed = current.by_id.keys().filter(|id| !next.by_id.contains_key(*id)).cloned().collect();
        for list in [&mut changes.added, &mut changes.removed, &mut changes.changed] {
            list.sort();
        }
        *current = next;
        Ok(changes)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, AppSet> {
        self.apps.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl AppStore for MemoryAppStore {
    fn by_key(&self, key: &str) -> Option<Arc<App>> {
        self.read().by_key.get(key).cloned()
    }

    fn by_id(&self, id: &str) -> Option<Arc<App>> {
        self.read().by_id.get(id).cloned()
    }

    fn list(&self) -> Vec<Arc<App>> {
        let mut apps: Vec<_> = self.read().by_id.values().cloned().collect();
        apps.sort_by(|a, b| a.id.cmp(&b.id));
        apps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_secret() {
        let app = App::new("1", "key", "very-secret-value");
        let printed = format!("{app:?}");
        assert!(printed.contains("key") && !printed.contains("very-secret-value"), "{printed}");
    }

    #[test]
    fn token_audience_and_issuer_are_optional_and_never_empty() {
        // An entry written before the settings existed reads as it did: no aud or iss check.
        let old: App = serde_json::from_str(r#"{"id": "1", "key": "k", "secret": "s"}"#).unwrap();
        assert_eq!(old, App::new("1", "k", "s"));
        assert_eq!((old.token_audience, old.token_issuer), (None, None));
        let set: App = serde_json::from_str(
            r#"{"id": "1", "key": "k", "secret": "very-secret-value",
                "token_audience": "plexus", "token_issuer": "https://idp.example"}"#,
        )
        .unwrap();
        assert_eq!(set.validate(), Ok(()));
        let printed = format!("{set:?}");
        assert!(
            printed.contains("https://idp.example") && !printed.contains("very-secret-value"),
            "{printed}"
        );
        for (field, app) in [
            ("token_audience", App { token_audience: Some(String::new()), ..set.clone() }),
            ("token_issuer", App { token_issuer: Some(String::new()), ..set.clone() }),
        ] {
            let (named, reason) = app.validate().unwrap_err();
            assert_eq!(named, field);
            assert!(reason.contains(field), "{reason}");
        }
    }

    #[test]
    fn store_finds_by_key_and_id_and_refuses_duplicates() {
        let store = MemoryAppStore::new([App::new("1", "k1", "s1"), App::new("2", "k2", "s2")]).unwrap();
        assert_eq!(store.by_key("k2").unwrap().id, "2");
        assert_eq!(store.by_id("1").unwrap().key, "k1");
        assert!(store.by_key("1").is_none());
        assert_eq!(store.list().len(), 2);
        assert_eq!(
            MemoryAppStore::new([App::new("1", "a", "s"), App::new("1", "b", "s")]).unwrap_err(),
            AppSetError::DuplicateId("1".into())
        );
        assert_eq!(
            MemoryAppStore::new([App::new("1", "a", "s"), App::new("2", "a", "s")]).unwrap_err(),
            AppSetError::DuplicateKey("a".into())
        );
        assert!(matches!(
            MemoryAppStore::new([App::new("1", "a", "")]),
            Err(AppSetError::Empty { field: "secret", .. })
        ));
    }

    #[test]
    fn replacing_the_apps_reports_what_changed_and_refuses_a_bad_set_whole() {
        let store = MemoryAppStore::new([App::new("1", "k1", "s1"), App::new("2", "k2", "s2")]).unwrap();
        let mut rotated = App::new("2", "k2", "rotated");
        rotated.enable_tokens = true;
        let changes = store.replace([App::new("1", "k1", "s1"), rotated, App::new("3", "k3", "s3")]).unwrap();
        assert_eq!(
            changes,
            AppSetChanges { added: vec!["3".into()], removed: vec![], changed: vec!["2".into()] }
        );
        assert_eq!(store.by_key("k2").unwrap().secret, "rotated");
        let changes = store.replace([App::new("3", "k3", "s3")]).unwrap();
        assert_eq!(changes.removed, vec!["1".to_string(), "2".to_string()]);
        assert!(store.by_key("k1").is_none());
        assert!(store.replace([App::new("4", "k", "s"), App::new("5", "k", "s")]).is_err());
        assert_eq!(store.list().len(), 1, "a refused set leaves the old one in place");
    }
}
