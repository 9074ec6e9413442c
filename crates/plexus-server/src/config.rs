//! The configuration (TOML) and its checks; [`crate::layers`] reads it from the file, the
//! environment and the command line.
//!
//! Field names are a contract with tools outside this repository (`[server] host/port`,
//! `[[apps]]` with `id`, `key`, `secret`, the `enable_*` and `max_*` settings, `[[apps.webhooks]]`):
//! keep them. Unknown fields, bad types, duplicate keys or ids and missing secrets are errors that
//! name the field; a server never starts on a configuration it half understood.

use std::path::Path;

use plexus_core::app::AppSetError;
use plexus_core::{App, MemoryAppStore};
use serde::{Deserialize, Serialize};

pub use crate::bridge::BridgeConfig;
pub use crate::webhooks::WebhooksConfig;

/// Credentials of the embedded development app, used when no app is configured.
pub const DEV_APP: (&str, &str, &str) = ("app-id", "app-key", "app-secret");

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterConfig {
    pub driver: AdapterDriver,
    /// The bus; defaults to the standard local port of the driver's server. `rediss://` and
    /// `tls://` (NATS) connect over TLS.
    pub url: Option<String>,
    /// A PEM file of the CA certificates to trust for the bus's TLS instead of the system's
    /// roots. Requires TLS: a `rediss://` URL for Redis; for NATS any URL (TLS is then required).
    pub ca_file: Option<std::path::PathBuf>,
    /// Names this cluster on the bus, so several clusters can share one NATS or Redis.
    pub prefix: String,
    /// How often a node tells the others it is alive.
    pub heartbeat_ms: u64,
    /// Silence after which a node is taken for dead and its connections' state is dropped.
    pub lease_ms: u64,
    /// Where history channels' events are kept: in each node's memory (`memory`), or in the
    /// bus's own durable store (`bus`: JetStream with NATS, Redis Streams with Redis), so that
    /// positions are the same on every node and history outlives restarts of every node.
    pub history: HistoryPlace,
}

/// `[adapter] history`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryPlace {
    #[default]
    Memory,
    Bus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
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
            ca_file: None,
            prefix: "plexus".into(),
            heartbeat_ms: 1000,
            lease_ms: 5000,
            history: HistoryPlace::Memory,
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppStoreConfig {
    pub driver: AppStoreDriver,
    /// PostgreSQL connection URL (driver = "postgres"); `sslmode=require` (or `verify-full`)
    /// connects over TLS, verified.
    pub url: Option<String>,
    /// A PEM file of the CA certificates to trust instead of the system's roots; makes TLS
    /// required.
    pub ca_file: Option<std::path::PathBuf>,
    pub table: String,
    /// How often the table is re-read: changes reach every node within this.
    pub refresh_secs: u64,
    /// Apply the schema migration at start (otherwise run `plexus migrate`).
    pub migrate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
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
            ca_file: None,
            table: "plexus_apps".into(),
            refresh_secs: 2,
            migrate: true,
        }
    }
}

/// `[metrics]`: Prometheus text at `GET /metrics` on its own listener, so scraping needs no app
/// credentials and can stay on a private interface.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Seconds of silence after which a client is pinged (advertised as `activity_timeout`).
    pub activity_timeout_secs: u64,
    /// Seconds to wait for any frame after our ping before closing with 4201.
    pub pong_timeout_secs: u64,
    /// Largest WebSocket message accepted from a client, in bytes (after inflating, for a
    /// compressed one).
    pub max_frame_bytes: usize,
    /// Accept permessage-deflate (RFC 7692) when a client offers it: each event is compressed
    /// once and the same bytes go to every client that negotiated it.
    pub compression: bool,
    /// Event frames shorter than this many bytes go out uncompressed even to clients that
    /// negotiated compression (small frames barely shrink).
    pub compression_min_bytes: u32,
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
    /// Channels one connection (socket or SSE stream) may hold; more are refused with 4303.
    pub max_subscriptions_per_connection: usize,
    /// Subscribes and unsubscribes per second per connection (bursts of ten seconds' worth);
    /// over it a subscribe is refused with 4303. 0 = no limit.
    pub max_subscribes_per_sec: u32,
    /// Frames per second per connection (bursts of ten seconds' worth); over it the connection
    /// is closed with 4100. 0 = no limit.
    pub max_frames_per_sec: u32,
    /// Cache channels one app may keep at once; a publish that would start another is refused
    /// with 429.
    pub max_cached_channels_per_app: usize,
    /// KiB one app's cache channels may keep (their last events' frames); a publish past it is
    /// refused with 429.
    pub max_cache_kb_per_app: usize,
    /// Sockets held at once (HTTP and WebSocket); over it new ones are refused (503, or 4100
    /// in-band on the WebSocket endpoint). Unset: the open-file limit less a reserve.
    pub max_connections: Option<usize>,
    /// Sockets held at once from one client address; 0 = no limit (the default: behind a proxy
    /// every client shares one address).
    pub max_connections_per_ip: u32,
    /// Seconds a new connection has for its TLS handshake and its first request head.
    pub request_header_timeout_secs: u64,
    /// Seconds an idle keep-alive connection is kept (and a later request head may take).
    pub keep_alive_timeout_secs: u64,
    /// Seconds an HTTP API request body may take to arrive once it is allowed to.
    pub request_body_timeout_secs: u64,
    /// KiB of HTTP API request bodies being read at once, across all clients; over it → 503.
    pub request_bodies_in_flight_kb: usize,
    /// KiB of request bodies being read at once from one client address; 0 = no limit.
    pub request_bodies_in_flight_per_ip_kb: usize,
    /// `[server.tls]`: serve wss:// and https:// on this port (see [`crate::tls`]).
    pub tls: Option<crate::tls::TlsConfig>,
    /// `[server.rate_limits]`: HTTP API and connection floods (see [`crate::rate_limit`]).
    pub rate_limits: crate::rate_limit::RateLimitConfig,
    /// How the server's own log lines are written on stderr.
    pub log_format: LogFormat,
}

/// `[server] log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One line per event for people: time, level, target, message, fields (colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line for collectors: `timestamp`, `level`, `target`, `message` and the
    /// event's fields, plus its spans.
    Json,
}

impl ServerConfig {
    /// How much each app's cache channels may keep.
    pub fn cache_limits(&self) -> plexus_core::hub::CacheLimits {
        plexus_core::hub::CacheLimits {
            max_channels: self.max_cached_channels_per_app,
            max_bytes: self.max_cache_kb_per_app * 1024,
        }
    }

    /// What each connection may ask of the server.
    pub fn session_limits(&self) -> plexus_core::SessionLimits {
        plexus_core::SessionLimits {
            queue_max_bytes: self.max_queued_bytes,
            max_subscriptions: self.max_subscriptions_per_connection,
            subscribes_per_sec: self.max_subscribes_per_sec,
            frames_per_sec: self.max_frames_per_sec,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".into(),
            port: 6001,
            activity_timeout_secs: plexus_protocol::limits::ACTIVITY_TIMEOUT_SECS,
            pong_timeout_secs: 30,
            max_frame_bytes: 64 * 1024,
            compression: true,
            compression_min_bytes: 128,
            max_queued_bytes: 1024 * 1024,
            write_timeout_secs: 10,
            max_request_body_kb: 1024,
            shutdown_grace_secs: 10,
            require_protocol_version: false,
            debug_signature_errors: false,
            listen_backlog: 4096,
            sse_heartbeat_secs: 15,
            max_subscriptions_per_connection: 1000,
            max_subscribes_per_sec: 100,
            max_frames_per_sec: 200,
            max_cached_channels_per_app: 10_000,
            max_cache_kb_per_app: 16 * 1024,
            max_connections: None,
            max_connections_per_ip: 0,
            request_header_timeout_secs: 10,
            // Above the 60 s idle timeout of common load balancers, so they close first.
            keep_alive_timeout_secs: 75,
            request_body_timeout_secs: 30,
            request_bodies_in_flight_kb: 64 * 1024,
            request_bodies_in_flight_per_ip_kb: 0,
            tls: None,
            rate_limits: Default::default(),
            log_format: LogFormat::Text,
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
    /// A value of the merged layers does not fit its field.
    #[error("invalid setting {field} (from {origin}): {message}")]
    Setting { field: String, origin: String, message: String },
    /// A `PLEXUS_…__…` variable that cannot be used.
    #[error("invalid environment variable {var}: {reason}")]
    Variable { var: String, reason: String },
    /// A `${VAR}` in the file that cannot be replaced.
    #[error("invalid config file {path}: {field}: {reason}")]
    Interpolation { path: String, field: String, reason: String },
}

impl Config {
    /// Reads and validates a file alone (no environment, no flags; see [`crate::layers`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let layers = crate::layers::Layers { file: Some(path.to_owned()), ..Default::default() };
        Ok(crate::layers::load(&layers)?.config)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Ok(crate::layers::parse(text, origin)?.config)
    }

    /// The checks beyond types: unique app ids and keys, limits, wirings. `origin` names where
    /// the configuration came from in errors.
    pub fn check(&self, origin: &str) -> Result<(), ConfigError> {
        MemoryAppStore::new(self.apps.clone())
            .map_err(|source| ConfigError::Apps { path: origin.into(), source })?;
        self.validate()
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
            ("server.request_header_timeout_secs", s.request_header_timeout_secs as usize),
            ("server.keep_alive_timeout_secs", s.keep_alive_timeout_secs as usize),
            ("server.request_body_timeout_secs", s.request_body_timeout_secs as usize),
            ("server.max_connections", s.max_connections.unwrap_or(1)),
            ("server.max_subscriptions_per_connection", s.max_subscriptions_per_connection),
            ("server.request_bodies_in_flight_kb", s.request_bodies_in_flight_kb),
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
            if let Some(ca_file) = &adapter.ca_file {
                let url = adapter.url();
                if adapter.driver == AdapterDriver::Redis && !url.starts_with("rediss://") {
                    return Err(ConfigError::Invalid {
                        field: "adapter.ca_file",
                        reason: format!(
                            "{} is set but adapter.url is not rediss:// (it would connect in the clear)",
                            ca_file.display()
                        ),
                    });
                }
                if let Err(error) = plexus_tls::CaFile::read(ca_file) {
                    return Err(ConfigError::Invalid { field: "adapter.ca_file", reason: error.to_string() });
                }
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
            if let Some(Err(error)) = self.app_store.ca_file.as_deref().map(plexus_tls::CaFile::read) {
                return Err(ConfigError::Invalid { field: "app_store.ca_file", reason: error.to_string() });
            }
            if self.app_store.refresh_secs == 0 {
                return Err(ConfigError::Invalid {
                    field: "app_store.refresh_secs",
                    reason: "must be greater than 0".into(),
                });
            }
        }
        for bridge in &self.bridges {
            if let Err(reason) = bridge.check() {
                return Err(ConfigError::Invalid { field: "bridges", reason });
            }
            if let Some(Err(error)) = bridge.ca_file.as_deref().map(plexus_tls::CaFile::read) {
                return Err(ConfigError::Invalid { field: "bridges.ca_file", reason: error.to_string() });
            }
        }
        for mirror in &self.mirrors {
            if let Err(reason) = mirror.check() {
                return Err(ConfigError::Invalid { field: "mirrors", reason });
            }
            if let Some(Err(error)) = mirror.ca_file.as_deref().map(plexus_tls::CaFile::read) {
                return Err(ConfigError::Invalid { field: "mirrors.ca_file", reason: error.to_string() });
            }
        }
        if let Err(error) = plexus_channels::proxy::channels(&self.action_proxy) {
            return Err(ConfigError::Invalid { field: "action_proxy", reason: error.to_string() });
        }
        for app in &self.apps {
            if let Err((field, reason)) = app.validate() {
                let field = match field {
                    "webhooks.url" => "apps.webhooks.url",
                    "webhooks.ca_file" => "apps.webhooks.ca_file",
                    "max_event_payload_kb" => "apps.max_event_payload_kb",
                    "heartbeat_interval_secs" => "apps.heartbeat_interval_secs",
                    "heartbeat_timeout_secs" => "apps.heartbeat_timeout_secs",
                    "token_keys.algorithm" => "apps.token_keys.algorithm",
                    "token_keys.public_key" => "apps.token_keys.public_key",
                    "token_audience" => "apps.token_audience",
                    "token_issuer" => "apps.token_issuer",
                    _ => "apps",
                };
                return Err(ConfigError::Invalid { field, reason: format!("app {:?}: {reason}", app.id) });
            }
            for webhook in &app.webhooks {
                if let Some(Err(error)) = webhook.ca_file.as_deref().map(plexus_tls::CaFile::read) {
                    return Err(ConfigError::Invalid {
                        field: "apps.webhooks.ca_file",
                        reason: format!("app {:?}: {error}", app.id),
                    });
                }
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
            toml::from_str("[[action_proxy]]\napp_id=\"a\"\nchannel=\"t\"\nurl=\"ftp://x/\"\n").unwrap();
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("action_proxy") && e.contains("http://"), "{e}");
        let https: Config =
            toml::from_str("[[action_proxy]]\napp_id=\"a\"\nchannel=\"t\"\nurl=\"https://x/\"\n").unwrap();
        https.validate().unwrap();
        let clear: Config = toml::from_str(
            "[[action_proxy]]\napp_id=\"a\"\nchannel=\"t\"\nurl=\"http://x/\"\nca_file=\"/etc/ca.pem\"\n",
        )
        .unwrap();
        let e = clear.validate().unwrap_err().to_string();
        assert!(e.contains("ca_file /etc/ca.pem") && e.contains("not an https:// URL"), "{e}");
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
    fn webhook_urls_must_be_http_or_https_and_a_ca_file_needs_https_and_a_certificate() {
        let hook = |fields: &str| {
            format!("[[apps]]\nid=\"1\"\nkey=\"a\"\nsecret=\"s\"\n[[apps.webhooks]]\n{fields}\n")
        };
        let e = error_of(&hook("url=\"ftp://x\"\nevents=[]"));
        assert!(e.contains("apps.webhooks.url"), "{e}");
        Config::parse(&hook("url=\"https://hooks.example/x\""), "t").unwrap();
        let e = error_of(&hook("url=\"http://x/\"\nca_file=\"/etc/ca.pem\""));
        assert!(e.contains("apps.webhooks.ca_file") && e.contains("not an https:// URL"), "{e}");
        let e = error_of(&hook("url=\"https://x/\"\nca_file=\"/nonexistent/ca.pem\""));
        assert!(
            e.contains("apps.webhooks.ca_file") && e.contains("cannot read CA file /nonexistent/ca.pem"),
            "{e}"
        );
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
        let e =
            error_of("[adapter]\ndriver = \"redis\"\nurl = \"redis://h:6379\"\nca_file = \"/etc/ca.pem\"\n");
        assert!(e.contains("adapter.ca_file") && e.contains("not rediss://"), "{e}");
        let e = error_of("[adapter]\ndriver = \"nats\"\nca_file = \"/nonexistent/ca.pem\"\n");
        assert!(
            e.contains("adapter.ca_file") && e.contains("cannot read CA file /nonexistent/ca.pem"),
            "{e}"
        );
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
