//! The configuration file (TOML) and how the command line and environment override it.
//!
//! Field names are a contract with tools outside this repository (`[server] host/port`,
//! `[[apps]]` with `id`, `key`, `secret`, the `enable_*` and `max_*` settings, `[[apps.webhooks]]`):
//! keep them. Unknown fields, bad types, duplicate keys or ids and missing secrets are errors that
//! name the field; a server never starts on a file it half understood.

use std::path::Path;

use plexus_core::app::AppSetError;
use plexus_core::{App, MemoryAppStore};
use serde::Deserialize;

pub use crate::bridge::BridgeConfig;
pub use crate::webhooks::WebhooksConfig;

/// Credentials of the embedded development app, used when no app is configured.
pub const DEV_APP: (&str, &str, &str) = ("app-id", "app-key", "app-secret");

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[admin]`: the dashboard and admin API listener (see [`crate::admin`]).
    #[serde(default)]
    pub admin: crate::admin::AdminConfig,
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    #[serde(default)]
    pub adapter: AdapterConfig,
    #[serde(default)]
    pub app_store: AppStoreConfig,
    #[serde(default)]
    pub bridges: Vec<BridgeConfig>,
    /// `[[mirrors]]`: channel events copied out to NATS subjects (see [`crate::mirror`]).
    #[serde(default)]
    pub mirrors: Vec<crate::mirror::MirrorConfig>,
    #[serde(default)]
    pub apps: Vec<App>,
    /// Typed channels served by HTTP backends: `[[action_proxy]]` with `app_id`, `channel`, `url`
    /// and optional `tags` (`plexus serve --tags` starts only the routes carrying a selected one).
    #[serde(default)]
    pub action_proxy: Vec<plexus_channels::proxy::ProxyRoute>,
}

/// `[adapter]`: how nodes of a cluster reach each other.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterConfig {
    pub driver: AdapterDriver,
    /// The bus; defaults to the standard local port of the driver's server.
    pub url: Option<String>,
    /// Names this cluster on the bus, so several clusters can share one NATS or Redis.
    pub prefix: String,
    /// How often a node tells the others it is alive.
    pub heartbeat_ms: u64,
    /// Silence after which a node is taken for dead and its connections' state is dropped.
    pub lease_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterDriver {
    /// One process; nothing else to run.
    #[default]
    Local,
    Nats,
    Redis,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        AdapterConfig {
            driver: AdapterDriver::Local,
            url: None,
            prefix: "plexus".into(),
            heartbeat_ms: 1000,
            lease_ms: 5000,
        }
    }
}

impl AdapterConfig {
    /// The bus URL, or the driver's local default.
    pub fn url(&self) -> String {
        match (&self.url, self.driver) {
            (Some(url), _) => url.clone(),
            (None, AdapterDriver::Redis) => "redis://127.0.0.1:6379".into(),
            (None, _) => "nats://127.0.0.1:4222".into(),
        }
    }
}

/// `[app_store]`: where apps come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppStoreConfig {
    pub driver: AppStoreDriver,
    /// PostgreSQL connection URL (driver = "postgres").
    pub url: Option<String>,
    pub table: String,
    /// How often the table is re-read: changes reach every node within this.
    pub refresh_secs: u64,
    /// Apply the schema migration at start (otherwise run `plexus migrate`).
    pub migrate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppStoreDriver {
    /// The `[[apps]]` of this file.
    #[default]
    Config,
    Postgres,
}

impl Default for AppStoreConfig {
    fn default() -> Self {
        AppStoreConfig {
            driver: AppStoreDriver::Config,
            url: None,
            table: "plexus_apps".into(),
            refresh_secs: 2,
            migrate: true,
        }
    }
}

/// `[metrics]`: Prometheus text at `GET /metrics` on its own listener, so scraping needs no app
/// credentials and can stay on a private interface.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub host: String,
    /// 0 picks a free port (logged at start).
    pub port: u16,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true, host: "127.0.0.1".into(), port: 9601 }
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Seconds of silence after which a client is pinged (advertised as `activity_timeout`).
    pub activity_timeout_secs: u64,
    /// Seconds to wait for any frame after our ping before closing with 4201.
    pub pong_timeout_secs: u64,
    /// Largest WebSocket message accepted from a client, in bytes.
    pub max_frame_bytes: usize,
    /// Bytes that may wait in one connection's outbound queue before it is closed as too slow (4100).
    pub max_queued_bytes: usize,
    /// Seconds one write to a client may stall before the connection is dropped.
    pub write_timeout_secs: u64,
    /// Largest HTTP API request body, in KiB.
    pub max_request_body_kb: usize,
    /// Seconds to wait for clients to leave on SIGTERM/SIGINT before exiting anyway.
    pub shutdown_grace_secs: u64,
    /// Close connections that carry no `protocol` parameter with 4008 instead of assuming 7.
    pub require_protocol_version: bool,
    /// Put the expected string-to-sign in 401 bodies (never the secret); for debugging SDKs.
    pub debug_signature_errors: bool,
    /// TCP listen backlog; large enough that a connect storm does not overflow it.
    pub listen_backlog: u32,
    /// Seconds between heartbeat comments on an idle SSE stream.
    pub sse_heartbeat_secs: u64,
    /// `[server.tls]`: serve wss:// and https:// on this port (see [`crate::tls`]).
    pub tls: Option<crate::tls::TlsConfig>,
    /// `[server.rate_limits]`: HTTP API and connection floods (see [`crate::rate_limit`]).
    pub rate_limits: crate::rate_limit::RateLimitConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".into(),
            port: 6001,
            activity_timeout_secs: plexus_protocol::limits::ACTIVITY_TIMEOUT_SECS,
            pong_timeout_secs: 30,
            max_frame_bytes: 64 * 1024,
            max_queued_bytes: 1024 * 1024,
            write_timeout_secs: 10,
            max_request_body_kb: 1024,
            shutdown_grace_secs: 10,
            require_protocol_version: false,
            debug_signature_errors: false,
            listen_backlog: 4096,
            sse_heartbeat_secs: 15,
            tls: None,
            rate_limits: Default::default(),
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid apps in {path}: {source}")]
    Apps { path: String, source: AppSetError },
    #[error("invalid setting {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        Config::parse(&text, &shown)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.into(), message: e.to_string() })?;
        MemoryAppStore::new(config.apps.clone())
            .map_err(|source| ConfigError::Apps { path: origin.into(), source })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        let positive = [
            ("server.activity_timeout_secs", s.activity_timeout_secs as usize),
            ("server.pong_timeout_secs", s.pong_timeout_secs as usize),
            ("server.max_frame_bytes", s.max_frame_bytes),
            ("server.max_queued_bytes", s.max_queued_bytes),
            ("server.write_timeout_secs", s.write_timeout_secs as usize),
            ("server.sse_heartbeat_secs", s.sse_heartbeat_secs as usize),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid { field, reason: "must be greater than 0".into() });
            }
        }
        let adapter = &self.adapter;
        if adapter.driver != AdapterDriver::Local {
            if adapter.prefix.is_empty()
                || !adapter.prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                return Err(ConfigError::Invalid {
                    field: "adapter.prefix",
                    reason: format!("{:?} must be letters, digits, '-' or '_'", adapter.prefix),
                });
            }
            if adapter.heartbeat_ms == 0 || adapter.lease_ms < 2 * adapter.heartbeat_ms {
                return Err(ConfigError::Invalid {
                    field: "adapter.lease_ms",
                    reason: "must be at least twice adapter.heartbeat_ms (and heartbeat_ms above 0)".into(),
                });
            }
        }
        if self.app_store.driver == AppStoreDriver::Postgres {
            if self.app_store.url.is_none() {
                return Err(ConfigError::Invalid {
                    field: "app_store.url",
                    reason: "driver = \"postgres\" needs a url, e.g. postgres://user@host:5432/db".into(),
                });
            }
            if self.app_store.refresh_secs == 0 {
                return Err(ConfigError::Invalid {
                    field: "app_store.refresh_secs",
                    reason: "must be greater than 0".into(),
                });
            }
        }
        for bridge in &self.bridges {
            if let Err(reason) = bridge.rule() {
                return Err(ConfigError::Invalid { field: "bridges", reason });
            }
        }
        for mirror in &self.mirrors {
            if let Err(reason) = mirror.check() {
                return Err(ConfigError::Invalid { field: "mirrors", reason });
            }
        }
        if let Err(error) = plexus_channels::proxy::channels(&self.action_proxy) {
            return Err(ConfigError::Invalid { field: "action_proxy", reason: error.to_string() });
        }
        for app in &self.apps {
            if let Err((field, reason)) = app.validate() {
                let field = match field {
                    "webhooks.url" => "apps.webhooks.url",
                    "max_event_payload_kb" => "apps.max_event_payload_kb",
                    "heartbeat_interval_secs" => "apps.heartbeat_interval_secs",
                    "heartbeat_timeout_secs" => "apps.heartbeat_timeout_secs",
                    "token_keys.algorithm" => "apps.token_keys.algorithm",
                    "token_keys.public_key" => "apps.token_keys.public_key",
                    _ => "apps",
                };
                return Err(ConfigError::Invalid { field, reason: format!("app {:?}: {reason}", app.id) });
            }
            if let Err(reason) = crate::tokens::check_keys(app) {
                return Err(ConfigError::Invalid {
                    field: "apps.token_keys.public_key",
                    reason: format!("app {:?}: {reason}", app.id),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[server]
host = "127.0.0.1"
port = 6001

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
enable_client_messages = true
enable_user_authentication = true
max_connections = 0                 # 0 = unlimited
max_event_payload_kb = 10
max_presence_members = 100
max_client_events_per_second = 10

[[apps.webhooks]]
url = "http://127.0.0.1:7001/webhook"
events = ["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event", "cache_miss", "subscription_count"]
"#;

    #[test]
    fn action_proxy_routes_are_checked() {
        let config: Config = toml::from_str(
            "[[action_proxy]]\napp_id=\"app-id\"\nchannel=\"todos\"\nurl=\"http://127.0.0.1:9/todos\"\n",
        )
        .unwrap();
        assert_eq!(config.action_proxy[0].channel, "todos");
        assert!(config.action_proxy[0].tags.is_empty(), "tags default to none");
        config.validate().unwrap();
        let tagged: Config = toml::from_str(
            "[[action_proxy]]\napp_id=\"a\"\nchannel=\"t\"\nurl=\"http://x/\"\ntags=[\"events\"]\n",
        )
        .unwrap();
        assert_eq!(tagged.action_proxy[0].tags, ["events"]);
        let bad: Config =
            toml::from_str("[[action_proxy]]\napp_id=\"a\"\nchannel=\"t\"\nurl=\"https://x/\"\n").unwrap();
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("action_proxy") && e.contains("http://"), "{e}");
    }

    #[test]
    fn the_documented_example_parses() {
        let config = Config::parse(FULL, "example").unwrap();
        assert_eq!(config.server.host, "127.0.0.1");
        assert_eq!(config.apps.len(), 1);
        assert!(config.apps[0].enable_client_messages);
        assert_eq!(config.apps[0].webhooks[0].events.len(), 7);
    }

    fn error_of(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = error_of("[server]\nhots = \"x\"\n");
        assert!(e.contains("hots"), "{e}");
        let e = error_of("[[apps]]\nid=\"1\"\nkey=\"k\"\nsecret=\"s\"\nmax_conections = 3\n");
        assert!(e.contains("max_conections"), "{e}");
    }

    #[test]
    fn bad_types_missing_secrets_and_duplicates_are_refused() {
        let e = error_of("[server]\nport = \"six\"\n");
        assert!(e.contains("port"), "{e}");
        let e = error_of("[[apps]]\nid=\"1\"\nkey=\"k\"\n");
        assert!(e.contains("secret"), "{e}");
        let e = error_of(
            "[[apps]]\nid=\"1\"\nkey=\"a\"\nsecret=\"s\"\n[[apps]]\nid=\"1\"\nkey=\"b\"\nsecret=\"s\"\n",
        );
        assert!(e.contains("duplicate app id"), "{e}");
        let e = error_of(
            "[[apps]]\nid=\"1\"\nkey=\"a\"\nsecret=\"s\"\n[[apps]]\nid=\"2\"\nkey=\"a\"\nsecret=\"s\"\n",
        );
        assert!(e.contains("duplicate app key"), "{e}");
        let e = error_of("[server]\nport = 1\nport = 2\n");
        assert!(e.contains("port"), "{e}");
        let e = error_of(
            "[[apps]]\nid=\"1\"\nkey=\"a\"\nsecret=\"s\"\n[[apps.webhooks]]\nurl=\"u\"\nevents=[\"nope\"]\n",
        );
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn webhook_urls_must_be_http() {
        let e = error_of(
            "[[apps]]\nid=\"1\"\nkey=\"a\"\nsecret=\"s\"\n[[apps.webhooks]]\nurl=\"ftp://x\"\nevents=[]\n",
        );
        assert!(e.contains("apps.webhooks.url"), "{e}");
    }

    #[test]
    fn cluster_and_app_store_sections_parse_and_are_checked() {
        let config = Config::parse(
            "[adapter]\ndriver = \"nats\"\nurl = \"nats://10.0.0.5:4222\"\nprefix = \"prod-eu\"\n\
             [app_store]\ndriver = \"postgres\"\nurl = \"postgres://plexus@db/plexus\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(config.adapter.driver, AdapterDriver::Nats);
        assert_eq!(config.adapter.url(), "nats://10.0.0.5:4222");
        assert_eq!(config.app_store.driver, AppStoreDriver::Postgres);
        assert_eq!(config.app_store.table, "plexus_apps");
        assert_eq!(
            Config::parse("[adapter]\ndriver = \"redis\"\n", "t").unwrap().adapter.url(),
            "redis://127.0.0.1:6379"
        );
        assert!(error_of("[adapter]\ndriver = \"kafka\"\n").contains("kafka"));
        assert!(error_of("[adapter]\ndriver = \"nats\"\nprefix = \"a.b\"\n").contains("adapter.prefix"));
        assert!(error_of("[adapter]\ndriver = \"redis\"\nheartbeat_ms = 1000\nlease_ms = 1500\n")
            .contains("adapter.lease_ms"));
        assert!(error_of("[app_store]\ndriver = \"postgres\"\n").contains("app_store.url"));
    }

    #[test]
    fn bridges_parse_and_bad_rules_are_named() {
        let config = Config::parse(
            "[[bridges]]\napp = \"1\"\nsubject = \"omni.events.{instance}.{type}\"\nchannel = \"instance-{instance}\"\nevent = \"{type}\"\nstream = \"OMNI\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(config.bridges[0].durable, "plexus-bridge");
        assert_eq!(config.bridges[0].url, "nats://127.0.0.1:4222");
        assert!(config.bridges[0].tags.is_empty(), "tags default to none");
        let tagged = Config::parse(
            "[[bridges]]\napp = \"1\"\nsubject = \"a.{x}\"\nchannel = \"c-{x}\"\nevent = \"e\"\ntags = [\"events\", \"ops\"]\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(tagged.bridges[0].tags, ["events", "ops"]);
        let e =
            error_of("[[bridges]]\napp = \"1\"\nsubject = \"a.{x}\"\nchannel = \"c-{y}\"\nevent = \"e\"\n");
        assert!(e.contains("bridges") && e.contains("{y}"), "{e}");
    }

    #[test]
    fn zero_timeouts_are_refused_with_the_field_name() {
        let e = error_of("[server]\npong_timeout_secs = 0\n");
        assert!(e.contains("server.pong_timeout_secs"), "{e}");
    }
}
