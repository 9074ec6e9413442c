//! What a server is wired with, for `plexus info` and the admin listener's `GET /api/info`:
//! apps (credentials other than the secret, flags, webhook endpoints), their live channels when a
//! server is running, and the typed channels wired into it.
//!
//! Extension point: typed channels are not part of this build yet. Whoever adds them fills
//! [`TypedChannel`] entries (actions with their input and output types, auth, tags) and passes
//! them to [`describe`]; `plexus info` prints them without further changes. Until then the list
//! is empty, and `tags` selection (`plexus serve --tags`) does not exist.

use serde::Serialize;
use serde_json::{json, Value};

use crate::ServerState;

/// One action of a typed channel.
#[derive(Debug, Clone, Serialize)]
pub struct TypedAction {
    pub name: String,
    pub input: String,
    pub output: String,
    /// Who may call it (e.g. `public`, `private`, `presence`).
    pub auth: String,
}

/// A typed channel as wired into the server.
#[derive(Debug, Clone, Serialize)]
pub struct TypedChannel {
    /// The channel name or pattern.
    pub channel: String,
    pub actions: Vec<TypedAction>,
    pub tags: Vec<String>,
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
pub fn describe_apps(apps: &[plexus_core::App], typed: &[TypedChannel]) -> Value {
    json!({ "source": "config", "apps": apps.iter().map(app_json).collect::<Vec<_>>(), "typed_channels": typed })
}

/// From a running server: apps with their occupied channels.
pub fn describe(state: &ServerState, typed: &[TypedChannel]) -> Value {
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
    json!({ "source": "server", "apps": apps, "typed_channels": typed })
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
        out.push_str(&format!("  {} tags={}\n", channel["channel"].as_str().unwrap_or("?"), channel["tags"]));
        for action in channel["actions"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "    {}({}) -> {} auth={}\n",
                action["name"].as_str().unwrap_or("?"),
                action["input"].as_str().unwrap_or("?"),
                action["output"].as_str().unwrap_or("?"),
                action["auth"].as_str().unwrap_or("?")
            ));
        }
    }
    out
}
