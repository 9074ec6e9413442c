//! `[[mirrors]]`: channel events of an app copied out to NATS subjects, the other direction of
//! `[[bridges]]`. Each event published on this node (HTTP API, client events, server-side
//! publishes, bridged messages) on a channel matching one of the entry's patterns goes to the
//! subject built from the entry's template, e.g. `plexus.{channel}.{event}`; the message body is
//! the Pusher message JSON subscribers get (`{"event","channel","data"}`). In a cluster each event
//! is mirrored once, by the node it entered on. The NATS side (bounded queue, at-most-once, loop
//! guard against overlapping bridges) is `plexus_nats::mirror`.

#[cfg(feature = "nats")]
use std::collections::HashMap;
use std::sync::Arc;

#[cfg(feature = "nats")]
use anyhow::Context;
#[cfg(feature = "nats")]
use bytes::Bytes;
#[cfg(feature = "nats")]
use plexus_core::access::glob_match;
#[cfg(feature = "nats")]
use plexus_core::EventMirror;
#[cfg(feature = "nats")]
use plexus_nats::mirror::MirrorPublisher;
#[cfg(feature = "nats")]
use plexus_protocol::wsframe;
use serde::{Deserialize, Serialize};

use crate::ServerState;

/// One `[[mirrors]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The app whose channel events are mirrored.
    pub app: String,
    #[serde(default = "default_url")]
    pub url: String,
    /// A PEM file of the CA certificates to trust for `url`'s TLS instead of the system's roots
    /// (TLS is then required; a `tls://` URL alone uses the system's roots).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Channel patterns (`*` = any run of characters); default every channel.
    #[serde(default = "every_channel")]
    pub channels: Vec<String>,
    /// Subject template with `{channel}` and `{event}`, e.g. `plexus.{channel}.{event}`.
    pub subject: String,
}

fn default_url() -> String {
    "nats://127.0.0.1:4222".into()
}

fn every_channel() -> Vec<String> {
    vec!["*".into()]
}

impl MirrorConfig {
    /// Why the entry is unusable, if it is.
    pub fn check(&self) -> Result<(), String> {
        #[cfg(not(feature = "nats"))]
        return Err(crate::bridge::NO_NATS.to_owned());
        #[cfg(feature = "nats")]
        self.check_template()
    }

    #[cfg(feature = "nats")]
    fn check_template(&self) -> Result<(), String> {
        let mut rest = self.subject.as_str();
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').ok_or_else(|| format!("{:?}: unclosed '{{'", self.subject))?;
            let name = &rest[open + 1..open + close];
            if name != "channel" && name != "event" {
                return Err(format!(
                    "{:?}: unknown placeholder {{{name}}}; use {{channel}} and {{event}}",
                    self.subject
                ));
            }
            rest = &rest[open + close + 1..];
        }
        let fixed = self.subject.replace("{channel}", "c").replace("{event}", "e");
        if fixed.split('.').any(|token| token.is_empty() || token == "*" || token == ">")
            || fixed.contains(char::is_whitespace)
        {
            return Err(format!("{:?}: a subject needs non-empty tokens and no wildcards", self.subject));
        }
        if self.channels.is_empty() {
            return Err("channels: name at least one pattern (\"*\" for all)".into());
        }
        Ok(())
    }

    /// The subject for one event. Channel and event names may hold characters NATS gives a
    /// meaning to (`.` stays: it adds tokens; wildcards and whitespace become `_`).
    #[cfg(feature = "nats")]
    fn subject_for(&self, channel: &str, event: &str) -> String {
        let clean = |text: &str| text.replace(|c: char| c == '*' || c == '>' || c.is_whitespace(), "_");
        self.subject.replace("{channel}", &clean(channel)).replace("{event}", &clean(event))
    }
}

#[cfg(feature = "nats")]
#[derive(Debug)]
struct Route {
    config: MirrorConfig,
    publisher: MirrorPublisher,
}

/// Every app's mirror routes, installed as the hubs' [`EventMirror`].
#[cfg(feature = "nats")]
#[derive(Debug)]
struct Mirrors {
    by_app: HashMap<String, Vec<Route>>,
}

#[cfg(feature = "nats")]
impl EventMirror for Mirrors {
    fn published(&self, app_id: &str, channel: &str, frame: &Bytes) {
        let Some(routes) = self.by_app.get(app_id) else { return };
        let mut matching =
            routes.iter().filter(|r| r.config.channels.iter().any(|p| glob_match(p, channel))).peekable();
        if matching.peek().is_none() {
            return;
        }
        #[derive(Deserialize)]
        struct Named<'a> {
            #[serde(borrow)]
            event: std::borrow::Cow<'a, str>,
        }
        let payload = wsframe::server_frame_payload(frame);
        let Ok(named) = serde_json::from_slice::<Named<'_>>(&payload) else { return };
        for route in matching {
            route.publisher.offer(app_id, route.config.subject_for(channel, &named.event), payload.clone());
        }
    }
}

/// Without NATS there are no mirrors to start; a configured one is refused.
#[cfg(not(feature = "nats"))]
pub async fn start(mirrors: &[MirrorConfig], _state: &Arc<ServerState>) -> anyhow::Result<()> {
    match mirrors.first() {
        Some(mirror) => anyhow::bail!("[[mirrors]] subject {}: {}", mirror.subject, crate::bridge::NO_NATS),
        None => Ok(()),
    }
}

/// Connects every mirror (one NATS connection per URL) and installs them; fails if one cannot
/// connect at start.
#[cfg(feature = "nats")]
pub async fn start(mirrors: &[MirrorConfig], state: &Arc<ServerState>) -> anyhow::Result<()> {
    if mirrors.is_empty() {
        return Ok(());
    }
    let mut publishers: HashMap<(String, Option<std::path::PathBuf>), MirrorPublisher> = HashMap::new();
    let mut by_app: HashMap<String, Vec<Route>> = HashMap::new();
    for config in mirrors {
        config.check().map_err(anyhow::Error::msg)?;
        let key = (config.url.clone(), config.ca_file.clone());
        let publisher = match publishers.get(&key) {
            Some(publisher) => publisher.clone(),
            None => {
                let publisher = MirrorPublisher::connect(&config.url, config.ca_file.as_deref())
                    .await
                    .with_context(|| format!("starting the mirror to {}", config.subject))?;
                publishers.insert(key, publisher.clone());
                publisher
            }
        };
        tracing::info!(app = %config.app, subject = %config.subject, channels = ?config.channels, "mirroring channel events to NATS");
        by_app.entry(config.app.clone()).or_default().push(Route { config: config.clone(), publisher });
    }
    if state.hubs.set_mirror(Arc::new(Mirrors { by_app })).is_err() {
        anyhow::bail!("this server already has an event mirror installed");
    }
    Ok(())
}

#[cfg(all(test, feature = "nats"))]
mod tests {
    use super::*;

    fn entry(subject: &str) -> MirrorConfig {
        MirrorConfig {
            app: "1".into(),
            url: default_url(),
            ca_file: None,
            channels: every_channel(),
            subject: subject.into(),
        }
    }

    #[test]
    fn templates_are_checked_and_filled() {
        assert_eq!(entry("out.{channel}.{event}").check(), Ok(()));
        assert!(entry("out.{chan}").check().unwrap_err().contains("{chan}"));
        assert!(entry("out.>").check().is_err());
        assert!(entry("out..{event}").check().is_err());
        assert!(entry("out.{event").check().unwrap_err().contains("unclosed"));
        assert_eq!(entry("out.{channel}.{event}").subject_for("feed-1", "new item*"), "out.feed-1.new_item_");
    }
}
