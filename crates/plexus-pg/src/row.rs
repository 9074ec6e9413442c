//! One table row to one [`App`]: the column list, and the checks a row must pass to be served.
//!
//! The checks are those the config file gets (non-empty credentials, known webhook event kinds,
//! `http://` webhook URLs, a non-zero payload limit), plus the range checks that PostgreSQL's
//! signed integers need. The jsonb columns are parsed with the config file's own serde types, so
//! defaults and refused fields are the same in both stores. A row that fails is reported with a
//! reason that names the column and never includes the app secret or an API key.

use plexus_core::access::{ApiKey, ChannelScope};
use plexus_core::app::{App, HistoryRule, TokenKey, WebhookTarget};
use serde::de::DeserializeOwned;
use tokio_postgres::Row;

/// Selected in this order; jsonb comes back as text so no type integration feature is needed.
pub(crate) const COLUMNS: &str = "id, key, secret, enabled, enable_client_messages, \
     enable_user_authentication, enable_subscription_count, max_connections, max_event_payload_kb, \
     max_presence_members, max_presence_member_size_kb, max_client_events_per_second, \
     max_channel_name_length, user_authentication_timeout_secs, cache_ttl_secs, webhooks::text, \
     api_keys::text, channel_scopes::text, history::text, enable_tokens, token_keys::text, \
     heartbeat_interval_secs, heartbeat_timeout_secs, token_audience, token_issuer";

/// A row as PostgreSQL types it, before any check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawApp {
    pub id: String,
    pub key: String,
    pub secret: String,
    pub enabled: bool,
    pub enable_client_messages: bool,
    pub enable_user_authentication: bool,
    pub enable_subscription_count: bool,
    pub max_connections: i64,
    pub max_event_payload_kb: i64,
    pub max_presence_members: i64,
    pub max_presence_member_size_kb: i64,
    pub max_client_events_per_second: i64,
    pub max_channel_name_length: i64,
    pub user_authentication_timeout_secs: i64,
    pub cache_ttl_secs: i64,
    pub webhooks: String,
    pub api_keys: String,
    pub channel_scopes: String,
    pub history: String,
    pub enable_tokens: bool,
    pub token_keys: String,
    pub heartbeat_interval_secs: Option<i32>,
    pub heartbeat_timeout_secs: Option<i32>,
    pub token_audience: Option<String>,
    pub token_issuer: Option<String>,
}

impl RawApp {
    /// Reads a row selected with [`COLUMNS`]. Fails only on a table whose column types differ from
    /// the shipped schema (hand-made or half-migrated).
    pub(crate) fn from_row(row: &Row) -> Result<RawApp, String> {
        fn col<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, String> {
            row.try_get(i).map_err(|e| {
                let name = row.columns().get(i).map_or("?", |c| c.name());
                format!("column {name}: {}", crate::error::describe(&e))
            })
        }
        Ok(RawApp {
            id: col(row, 0)?,
            key: col(row, 1)?,
            secret: col(row, 2)?,
            enabled: col(row, 3)?,
            enable_client_messages: col(row, 4)?,
            enable_user_authentication: col(row, 5)?,
            enable_subscription_count: col(row, 6)?,
            max_connections: col(row, 7)?,
            max_event_payload_kb: col(row, 8)?,
            max_presence_members: col(row, 9)?,
            max_presence_member_size_kb: col(row, 10)?,
            max_client_events_per_second: col(row, 11)?,
            max_channel_name_length: col(row, 12)?,
            user_authentication_timeout_secs: col(row, 13)?,
            cache_ttl_secs: col(row, 14)?,
            webhooks: col(row, 15)?,
            api_keys: col(row, 16)?,
            channel_scopes: col(row, 17)?,
            history: col(row, 18)?,
            enable_tokens: col(row, 19)?,
            token_keys: col(row, 20)?,
            heartbeat_interval_secs: col(row, 21)?,
            heartbeat_timeout_secs: col(row, 22)?,
            token_audience: col(row, 23)?,
            token_issuer: col(row, 24)?,
        })
    }

    /// The app this row describes, or why it cannot be served.
    pub(crate) fn into_app(self) -> Result<App, String> {
        for (field, value) in [("id", &self.id), ("key", &self.key), ("secret", &self.secret)] {
            if value.is_empty() {
                return Err(format!("{field} must not be empty"));
            }
        }
        let webhooks: Vec<WebhookTarget> = json("webhooks", &self.webhooks)?;
        let api_keys = api_keys(&self.api_keys)?;
        let channel_scopes: Vec<ChannelScope> = json("channel_scopes", &self.channel_scopes)?;
        let history: Vec<HistoryRule> = json("history", &self.history)?;
        let token_keys: Vec<TokenKey> = json("token_keys", &self.token_keys)?;
        let heartbeat_interval_secs =
            self.heartbeat_interval_secs.map(|v| fit("heartbeat_interval_secs", v.into())).transpose()?;
        let heartbeat_timeout_secs =
            self.heartbeat_timeout_secs.map(|v| fit("heartbeat_timeout_secs", v.into())).transpose()?;
        let app = App {
            max_connections: fit("max_connections", self.max_connections)?,
            max_event_payload_kb: fit("max_event_payload_kb", self.max_event_payload_kb)?,
            max_presence_members: fit("max_presence_members", self.max_presence_members)?,
            max_presence_member_size_kb: fit(
                "max_presence_member_size_kb",
                self.max_presence_member_size_kb,
            )?,
            max_client_events_per_second: fit(
                "max_client_events_per_second",
                self.max_client_events_per_second,
            )?,
            max_channel_name_length: fit("max_channel_name_length", self.max_channel_name_length)?,
            user_authentication_timeout_secs: fit(
                "user_authentication_timeout_secs",
                self.user_authentication_timeout_secs,
            )?,
            cache_ttl_secs: fit("cache_ttl_secs", self.cache_ttl_secs)?,
            id: self.id,
            key: self.key,
            secret: self.secret,
            enabled: self.enabled,
            enable_client_messages: self.enable_client_messages,
            enable_user_authentication: self.enable_user_authentication,
            enable_subscription_count: self.enable_subscription_count,
            webhooks,
            api_keys,
            channel_scopes,
            history,
            enable_tokens: self.enable_tokens,
            token_keys,
            token_audience: self.token_audience,
            token_issuer: self.token_issuer,
            heartbeat_interval_secs,
            heartbeat_timeout_secs,
        };
        app.validate().map_err(|(field, reason)| format!("{field} {reason}"))?;
        Ok(app)
    }
}

/// A jsonb column (as text) into the config file's type for it.
fn json<T: DeserializeOwned>(column: &str, text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("{column}: {e}"))
}

/// `api_keys` as [`json`] reads it, except that serde's message, which quotes the string it
/// choked on, must not carry a key into the log: `["sk_live_…"]` (keys written as bare strings)
/// would otherwise print the secret. Every string standing where a key could be (an element,
/// the whole value, a `key` member) is blanked out of the message.
fn api_keys(text: &str) -> Result<Vec<ApiKey>, String> {
    let err = match serde_json::from_str(text) {
        Ok(keys) => return Ok(keys),
        Err(err) => err,
    };
    let mut reason = format!("api_keys: {err}");
    // Not valid JSON at all: serde_json's syntax errors give a position, not the text.
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else { return Err(reason) };
    let mut secrets = Vec::new();
    let elements = match &value {
        serde_json::Value::Array(items) => items.as_slice(),
        other => std::slice::from_ref(other),
    };
    for element in elements {
        match element {
            serde_json::Value::String(s) => secrets.push(s.as_str()),
            serde_json::Value::Object(fields) => {
                if let Some(serde_json::Value::String(s)) = fields.get("key") {
                    secrets.push(s);
                }
            }
            _ => {}
        }
    }
    for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
        // serde quotes strings in its messages with Rust's Debug escaping.
        reason = reason.replace(&format!("{secret:?}"), "\"<redacted>\"");
    }
    Err(reason)
}

/// A bigint column into the unsigned Rust field it stands for.
fn fit<T: TryFrom<i64>>(field: &str, value: i64) -> Result<T, String> {
    T::try_from(value).map_err(|_| format!("{field} = {value} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_core::app::WebhookKind;

    /// The shipped schema's column defaults, written out: a row inserted with only credentials.
    fn defaults(id: &str, key: &str, secret: &str) -> RawApp {
        RawApp {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            enabled: true,
            enable_client_messages: false,
            enable_user_authentication: false,
            enable_subscription_count: false,
            max_connections: 0,
            max_event_payload_kb: 10,
            max_presence_members: 100,
            max_presence_member_size_kb: 2,
            max_client_events_per_second: 10,
            max_channel_name_length: 200,
            user_authentication_timeout_secs: 30,
            cache_ttl_secs: 1800,
            webhooks: "[]".into(),
            api_keys: "[]".into(),
            channel_scopes: "[]".into(),
            history: "[]".into(),
            enable_tokens: false,
            token_keys: "[]".into(),
            heartbeat_interval_secs: None,
            heartbeat_timeout_secs: None,
            token_audience: None,
            token_issuer: None,
        }
    }

    #[test]
    fn schema_defaults_are_the_app_defaults() {
        assert_eq!(defaults("1", "k", "s").into_app().unwrap(), App::new("1", "k", "s"));
    }

    #[test]
    fn every_column_reaches_its_field() {
        let raw = RawApp {
            enabled: false,
            enable_client_messages: true,
            enable_user_authentication: true,
            enable_subscription_count: true,
            max_connections: 5_000_000_000,
            max_event_payload_kb: 64,
            max_presence_members: 7,
            max_presence_member_size_kb: 3,
            max_client_events_per_second: 0,
            max_channel_name_length: 50,
            user_authentication_timeout_secs: 9,
            cache_ttl_secs: 60,
            webhooks: r#"[{"url":"http://hooks.local/x","events":["member_added","cache_miss"]},
                          {"url":"http://hooks.local/y"}]"#
                .into(),
            api_keys: r#"[{"key":"sk_1","scopes":["events:read"],"channels":["a-*"],"max_connections":3},
                          {"key":"sk_2"}]"#
                .into(),
            channel_scopes: r#"[{"prefix":"a-","scope":"events:read"}]"#.into(),
            history: r#"[{"prefix":"feed-","size":5}]"#.into(),
            enable_tokens: true,
            token_keys: r#"[{"algorithm":"ES256","public_key":"-----BEGIN PUBLIC KEY-----","kid":"k1"}]"#
                .into(),
            heartbeat_interval_secs: Some(20),
            heartbeat_timeout_secs: Some(60),
            token_audience: Some("plexus".into()),
            token_issuer: Some("https://idp.example".into()),
            ..defaults("7", "key7", "secret7")
        };
        let app = raw.into_app().unwrap();
        let mut want = App::new("7", "key7", "secret7");
        want.enabled = false;
        want.enable_client_messages = true;
        want.enable_user_authentication = true;
        want.enable_subscription_count = true;
        want.max_connections = 5_000_000_000;
        want.max_event_payload_kb = 64;
        want.max_presence_members = 7;
        want.max_presence_member_size_kb = 3;
        want.max_client_events_per_second = 0;
        want.max_channel_name_length = 50;
        want.user_authentication_timeout_secs = 9;
        want.cache_ttl_secs = 60;
        want.webhooks = vec![
            WebhookTarget {
                url: "http://hooks.local/x".into(),
                events: vec![WebhookKind::MemberAdded, WebhookKind::CacheMiss],
                ca_file: None,
            },
            WebhookTarget { url: "http://hooks.local/y".into(), events: vec![], ca_file: None },
        ];
        want.api_keys = vec![
            ApiKey {
                key: "sk_1".into(),
                scopes: vec!["events:read".into()],
                channels: vec!["a-*".into()],
                max_connections: 3,
            },
            // The config file's defaults: every channel, 10 connections.
            ApiKey { key: "sk_2".into(), scopes: vec![], channels: vec!["*".into()], max_connections: 10 },
        ];
        want.channel_scopes = vec![ChannelScope { prefix: "a-".into(), scope: "events:read".into() }];
        want.history = vec![HistoryRule { prefix: "feed-".into(), size: 5, ttl_secs: 300 }];
        want.enable_tokens = true;
        want.token_keys = vec![TokenKey {
            algorithm: "ES256".into(),
            public_key: "-----BEGIN PUBLIC KEY-----".into(),
            kid: Some("k1".into()),
        }];
        want.heartbeat_interval_secs = Some(20);
        want.heartbeat_timeout_secs = Some(60);
        want.token_audience = Some("plexus".into());
        want.token_issuer = Some("https://idp.example".into());
        assert_eq!(app, want);
    }

    #[test]
    fn a_malformed_api_key_list_never_quotes_a_key() {
        for (json, key) in [
            (r#"["topsecret-bare"]"#, "topsecret-bare"),
            (r#""topsecret-whole""#, "topsecret-whole"),
            (r#"[{"key":"topsecret-member","channels":"x"}]"#, "topsecret-member"),
            (r#"[{"key":"k1"}, "topsecret-\"quoted"]"#, "topsecret-"),
        ] {
            let raw = RawApp { api_keys: json.into(), ..defaults("1", "k", "s") };
            let reason = raw.into_app().unwrap_err();
            assert!(reason.starts_with("api_keys: "), "{reason}");
            assert!(!reason.contains(key), "{reason:?} quotes {key:?}");
        }
        // What is not a key is still quoted, so the reason stays useful.
        let raw =
            RawApp { api_keys: r#"[{"key":"k1","scopes":"events:read"}]"#.into(), ..defaults("1", "k", "s") };
        let reason = raw.into_app().unwrap_err();
        assert!(reason.contains(r#"invalid type: string "events:read", expected a sequence"#), "{reason}");
    }

    #[test]
    fn bad_rows_are_refused_with_a_reason_that_hides_the_secret() {
        let ok = || defaults("1", "k", "topsecret-value");
        let hooks = |json: &str| RawApp { webhooks: json.into(), ..ok() };
        let cases: Vec<(RawApp, &str)> = vec![
            (defaults("", "k", "topsecret-value"), "id must not be empty"),
            (defaults("1", "", "topsecret-value"), "key must not be empty"),
            (defaults("1", "k", ""), "secret must not be empty"),
            (hooks(r#"[{"url":"http://h","events":["nope"]}]"#), "unknown variant `nope`"),
            (hooks(r#"{"url":"http://h"}"#), "webhooks: invalid type"),
            (hooks(r#"[{"url":"http://h","extra":1}]"#), "unknown field `extra`"),
            (hooks(r#"[{"url":"ftp://h"}]"#), "must be an http:// or https:// URL"),
            (hooks(r#"[{"url":"http://h","ca_file":"/ca.pem"}]"#), "not an https:// URL"),
            (RawApp { max_event_payload_kb: 0, ..ok() }, "max_event_payload_kb must be greater than 0"),
            (RawApp { api_keys: "{}".into(), ..ok() }, "api_keys: invalid type: map, expected a sequence"),
            (
                RawApp { api_keys: r#"[{"key":"k","scope":[]}]"#.into(), ..ok() },
                "api_keys: unknown field `scope`",
            ),
            (RawApp { api_keys: "[".into(), ..ok() }, "api_keys: EOF while parsing"),
            (
                RawApp { channel_scopes: r#"[{"prefix":"a"}]"#.into(), ..ok() },
                "channel_scopes: missing field `scope`",
            ),
            (
                RawApp { history: r#"[{"prefix":"a","size":-1}]"#.into(), ..ok() },
                "history: invalid value: integer `-1`",
            ),
            (
                RawApp { token_keys: r#"[{"algorithm":"RS256"}]"#.into(), ..ok() },
                "token_keys: missing field `public_key`",
            ),
            (
                RawApp { heartbeat_timeout_secs: Some(-5), ..ok() },
                "heartbeat_timeout_secs = -5 is out of range",
            ),
            (RawApp { max_connections: -1, ..ok() }, "max_connections = -1 is out of range"),
            // The shipped schema refuses these; a hand-made table may not.
            (RawApp { token_audience: Some(String::new()), ..ok() }, "token_audience must not be empty"),
            (RawApp { token_issuer: Some(String::new()), ..ok() }, "token_issuer must not be empty"),
            (
                RawApp { max_presence_members: 1 << 32, ..ok() },
                "max_presence_members = 4294967296 is out of range",
            ),
        ];
        for (raw, want) in cases {
            let reason = raw.into_app().unwrap_err();
            assert!(reason.contains(want), "{reason:?} should contain {want:?}");
            assert!(!reason.contains("topsecret"), "{reason}");
        }
    }
}
