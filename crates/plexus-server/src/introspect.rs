//! What a server is wired with, for `plexus info` and the admin listener's `GET /api/info`:
//! apps (credentials other than the secret, flags, webhook endpoints), their live channels when a
//! server is running, the typed channels wired into it (from the wiring itself:
//! [`plexus_channels::ChannelDescription`], kept by [`ServerState::install_channels`]) and the
//! NATS bridges (`[[bridges]]`), each with its tags.
//!
//! The JSON is a contract for scripts: `typed_channels[]` holds `channel`, `tags`, `auth`
//! (`public` or `session`: the channel's default), `opening`, `actions[]` (`name` — `*` for the
//! `on_message` fallback —, `input`, `output`, `auth`, `permissions`, `fallback`), `topics[]`
//! (`topic`, `type`) and `proxied[]` (`app_id`, `url`, `tags`: action-proxy backends);
//! `bridges[]` holds `app`, `url`, `subject`, `channel`, `event`, `source`, `tags`.

use serde::Serialize;
use serde_json::{json, Value};

use crate::bridge::BridgeConfig;
use crate::ServerState;

/// One action of a typed channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypedAction {
    /// The action name; `*` for the channel's `on_message` fallback (any other name).
    pub name: String,
    pub input: String,
    pub output: String,
    /// `public`, or `session` when the call needs a session.
    pub auth: String,
    /// Permission groups, any one of which must pass; empty: none.
    pub permissions: Vec<String>,
    pub fallback: bool,
}

/// A typed channel as wired into the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypedChannel {
    /// The channel name.
    pub channel: String,
    pub tags: Vec<String>,
    /// The channel's default for its actions: `public` or `session`.
    pub auth: String,
    /// Type of the opening data.
    pub opening: String,
    pub actions: Vec<TypedAction>,
    pub topics: Vec<plexus_channels::TopicDescription>,
    /// For action-proxy channels: the backend of each app.
    pub proxied: Vec<plexus_channels::ProxyTarget>,
}

fn auth_word(session: bool) -> String {
    if session { "session" } else { "public" }.to_owned()
}

impl From<&plexus_channels::ChannelDescription> for TypedChannel {
    fn from(described: &plexus_channels::ChannelDescription) -> Self {
        TypedChannel {
            channel: described.name.clone(),
            tags: described.tags.clone(),
            auth: auth_word(described.auth),
            opening: described.opening.clone(),
            actions: described
                .actions
                .iter()
                .map(|a| TypedAction {
                    name: a.name.clone(),
                    input: a.input.clone(),
                    output: a.output.clone(),
                    auth: auth_word(a.session),
                    permissions: a.permissions.clone(),
                    fallback: a.fallback,
                })
                .collect(),
            topics: described.topics.clone(),
            proxied: described.proxied.clone(),
        }
    }
}

/// The typed channels of `described`, in its order.
pub fn typed_channels(described: &[plexus_channels::ChannelDescription]) -> Vec<TypedChannel> {
    described.iter().map(TypedChannel::from).collect()
}

/// One `[[bridges]]` entry as shown: NATS subject to channel and event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bridge {
    pub app: String,
    /// The NATS URL, credentials masked.
    pub url: String,
    pub subject: String,
    pub channel: String,
    pub event: String,
    /// `core group NAME` or `jetstream STREAM durable NAME`.
    pub source: String,
    pub tags: Vec<String>,
}

impl From<&BridgeConfig> for Bridge {
    fn from(config: &BridgeConfig) -> Self {
        let source = match &config.stream {
            Some(stream) => format!("jetstream {stream} durable {}", config.durable),
            None => format!("core group {}", config.group),
        };
        Bridge {
            app: config.app.clone(),
            url: plexus_core::cluster::redact_url(&config.url, true),
            subject: config.subject.clone(),
            channel: config.channel.clone(),
            event: config.event.clone(),
            source,
            tags: config.tags.clone(),
        }
    }
}

/// The bridges of `configs`, in their order.
pub fn bridges(configs: &[BridgeConfig]) -> Vec<Bridge> {
    configs.iter().map(Bridge::from).collect()
}

fn app_json(app: &plexus_core::App) -> Value {
    json!({
        "id": app.id, "key": app.key, "enabled": app.enabled,
        "enable_client_messages": app.enable_client_messages,
        "enable_user_authentication": app.enable_user_authentication,
        "max_connections": app.max_connections,
        "webhooks": app.webhooks.iter().map(|w| w.url.clone()).collect::<Vec<_>>(),
    })
}

/// From the configuration alone (no server running): apps, and no live channels.
pub fn describe_apps(apps: &[plexus_core::App], typed: &[TypedChannel], bridges: &[Bridge]) -> Value {
    json!({
        "source": "config",
        "apps": apps.iter().map(app_json).collect::<Vec<_>>(),
        "typed_channels": typed,
        "bridges": bridges,
    })
}

/// From a running server: apps with their occupied channels, the typed channels installed in
/// it, and the bridges it runs (the caller's to say: they are not part of the state).
pub fn describe(state: &ServerState, bridges: &[Bridge]) -> Value {
    let typed = typed_channels(state.typed_channels());
    let apps: Vec<Value> = state
        .apps
        .list()
        .iter()
        .map(|app| {
            let mut entry = app_json(app);
            let mut channels: Vec<Value> = state
                .hubs
                .hub(&app.id)
                .channels("")
                .into_iter()
                .map(|c| json!({"name": c.name.as_str(), "subscription_count": c.subscription_count, "user_count": c.user_count}))
                .collect();
            channels.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            entry["channels"] = Value::Array(channels);
            entry
        })
        .collect();
    json!({ "source": "server", "apps": apps, "typed_channels": typed, "bridges": bridges })
}

/// The human-readable form `plexus info` prints.
pub fn render(info: &Value) -> String {
    let mut out = String::new();
    for app in info["apps"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "app {} (key {}){}\n",
            app["id"].as_str().unwrap_or("?"),
            app["key"].as_str().unwrap_or("?"),
            if app["enabled"] == json!(false) { " [disabled]" } else { "" }
        ));
        for flag in ["enable_client_messages", "enable_user_authentication"] {
            if app[flag] == json!(true) {
                out.push_str(&format!("  {flag}\n"));
            }
        }
        for url in app["webhooks"].as_array().into_iter().flatten() {
            out.push_str(&format!("  webhook {}\n", url.as_str().unwrap_or("?")));
        }
        if let Some(channels) = app["channels"].as_array() {
            out.push_str(&format!("  channels: {}\n", channels.len()));
            for c in channels {
                out.push_str(&format!(
                    "    {} subscriptions={}{}\n",
                    c["name"].as_str().unwrap_or("?"),
                    c["subscription_count"],
                    c["user_count"].as_u64().map(|u| format!(" users={u}")).unwrap_or_default()
                ));
            }
        }
    }
    let typed = info["typed_channels"].as_array().map_or(0, Vec::len);
    out.push_str(&format!("typed channels: {typed}\n"));
    for channel in info["typed_channels"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} tags={} auth={} opening={}\n",
            text(&channel["channel"]),
            tags(&channel["tags"]),
            text(&channel["auth"]),
            text(&channel["opening"])
        ));
        for action in channel["actions"].as_array().into_iter().flatten() {
            let permissions = list(&action["permissions"]);
            out.push_str(&format!(
                "    {}({}) -> {} auth={}{}{}\n",
                text(&action["name"]),
                text(&action["input"]),
                text(&action["output"]),
                text(&action["auth"]),
                if permissions.is_empty() { String::new() } else { format!(" permissions={permissions}") },
                if action["fallback"] == json!(true) { " (on_message: any other action)" } else { "" }
            ));
        }
        for topic in channel["topics"].as_array().into_iter().flatten() {
            out.push_str(&format!("    topic {}: {}\n", text(&topic["topic"]), text(&topic["type"])));
        }
        for target in channel["proxied"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "    forwarded for app {} to {} tags={}\n",
                text(&target["app_id"]),
                text(&target["url"]),
                tags(&target["tags"])
            ));
        }
    }
    let bridges = info["bridges"].as_array().map_or(0, Vec::len);
    out.push_str(&format!("bridges: {bridges}\n"));
    for bridge in info["bridges"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} -> app {} channel {} event {} tags={}\n    {} from {}\n",
            text(&bridge["subject"]),
            text(&bridge["app"]),
            text(&bridge["channel"]),
            text(&bridge["event"]),
            tags(&bridge["tags"]),
            text(&bridge["source"]),
            text(&bridge["url"])
        ));
    }
    out
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

/// `a,b`, or `-` for no tags.
fn tags(value: &Value) -> String {
    match list(value) {
        none if none.is_empty() => "-".to_owned(),
        some => some,
    }
}

/// `a,b` for a JSON array of strings (empty for none).
fn list(value: &Value) -> String {
    value.as_array().into_iter().flatten().map(text).collect::<Vec<_>>().join(",")
}
