//! One table row to one [`App`]: the column list, and the checks a row must pass to be served.
//!
//! The checks are those the config file gets (non-empty credentials, known webhook event kinds,
//! `http://` webhook URLs, a non-zero payload limit), plus the range checks that PostgreSQL's
//! signed integers need. A row that fails is reported with a reason that never includes the secret.

use plexus_core::app::{App, WebhookTarget};
use tokio_postgres::Row;

/// Selected in this order; jsonb comes back as text so no type integration feature is needed.
pub(crate) const COLUMNS: &str = "id, key, secret, enabled, enable_client_messages, \
     enable_user_authentication, enable_subscription_count, max_connections, max_event_payload_kb, \
     max_presence_members, max_presence_member_size_kb, max_client_events_per_second, \
     max_channel_name_length, user_authentication_timeout_secs, cache_ttl_secs, webhooks::text";

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
        })
    }

    /// The app this row describes, or why it cannot be served.
    pub(crate) fn into_app(self) -> Result<App, String> {
        for (field, value) in [("id", &self.id), ("key", &self.key), ("secret", &self.secret)] {
            if value.is_empty() {
                return Err(format!("{field} must not be empty"));
            }
        }
        let webhooks: Vec<WebhookTarget> =
            serde_json::from_str(&self.webhooks).map_err(|e| format!("webhooks: {e}"))?;
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
            // API keys for event streams are configured in the file only so far.
            api_keys: Vec::new(),
            channel_scopes: Vec::new(),
            history: Vec::new(),
            enable_tokens: false,
            token_keys: Vec::new(),
            heartbeat_interval_secs: None,
            heartbeat_timeout_secs: None,
        };
        app.validate().map_err(|(field, reason)| format!("{field} {reason}"))?;
        Ok(app)
    }
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
            },
            WebhookTarget { url: "http://hooks.local/y".into(), events: vec![] },
        ];
        assert_eq!(app, want);
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
            (hooks(r#"[{"url":"https://h"}]"#), "must be an http:// URL"),
            (RawApp { max_event_payload_kb: 0, ..ok() }, "max_event_payload_kb must be greater than 0"),
            (RawApp { max_connections: -1, ..ok() }, "max_connections = -1 is out of range"),
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
