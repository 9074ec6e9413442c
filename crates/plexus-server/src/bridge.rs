//! `[[bridges]]`: NATS subjects whose messages become channel events of an app. The mapping and
//! the NATS side live in `plexus_nats::bridge`; this module checks the configuration and
//! publishes each message with the same rules as the HTTP API.

use std::sync::Arc;

#[cfg(feature = "nats")]
use anyhow::Context;
#[cfg(feature = "nats")]
use plexus_core::hub::Event;
#[cfg(feature = "nats")]
use plexus_nats::bridge::{self, BridgedEvent, Rejection, RuleError, Source, SubjectRule};
use serde::{Deserialize, Serialize};

use crate::ServerState;

/// One `[[bridges]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// The app whose channels receive the events.
    pub app: String,
    #[serde(default = "default_url")]
    pub url: String,
    /// A PEM file of the CA certificates to trust for `url`'s TLS instead of the system's roots
    /// (TLS is then required; a `tls://` URL alone uses the system's roots).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Subject pattern with named tokens, e.g. `omni.events.{instance}.{type}`.
    pub subject: String,
    /// Channel template, e.g. `instance-{instance}`.
    pub channel: String,
    /// Event name template, e.g. `{type}`.
    pub event: String,
    /// JetStream stream to read with a durable consumer (instead of core subjects).
    #[serde(default)]
    pub stream: Option<String>,
    /// The durable consumer's name (with `stream`); nodes of a cluster share it.
    #[serde(default = "default_durable")]
    pub durable: String,
    /// Queue group for core subjects, so each message is taken by one node of a cluster.
    #[serde(default = "default_group")]
    pub group: String,
    /// Labels for introspection and selection: `plexus serve --tags` runs only the bridges
    /// carrying a selected tag.
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_url() -> String {
    "nats://127.0.0.1:4222".into()
}

fn default_durable() -> String {
    "plexus-bridge".into()
}

fn default_group() -> String {
    "plexus-bridge".into()
}

/// Why `[[bridges]]` and `[[mirrors]]` cannot run in a build without NATS.
#[cfg(not(feature = "nats"))]
pub(crate) const NO_NATS: &str = "this plexus was built without the `nats` feature";

impl BridgeConfig {
    /// Why the entry is unusable, if it is.
    pub fn check(&self) -> Result<(), String> {
        #[cfg(feature = "nats")]
        return self.rule().map(drop).map_err(|error| error.to_string());
        #[cfg(not(feature = "nats"))]
        return Err(NO_NATS.to_owned());
    }

    /// The parsed rule, or why the entry is unusable.
    #[cfg(feature = "nats")]
    pub fn rule(&self) -> Result<SubjectRule, RuleError> {
        SubjectRule::parse(&self.subject, &self.channel, &self.event)
    }

    #[cfg(feature = "nats")]
    fn source(&self) -> Source {
        match &self.stream {
            Some(stream) => Source::JetStream { stream: stream.clone(), durable: self.durable.clone() },
            None => Source::Core { group: self.group.clone() },
        }
    }
}

/// Without NATS there are no bridges to start; a configured one is refused.
#[cfg(not(feature = "nats"))]
pub async fn start(bridges: &[BridgeConfig], _state: &Arc<ServerState>) -> anyhow::Result<()> {
    match bridges.first() {
        Some(bridge) => anyhow::bail!("[[bridges]] subject {}: {NO_NATS}", bridge.subject),
        None => Ok(()),
    }
}

/// Starts every bridge; fails if one cannot connect or set up its consumer.
#[cfg(feature = "nats")]
pub async fn start(bridges: &[BridgeConfig], state: &Arc<ServerState>) -> anyhow::Result<()> {
    for config in bridges {
        let rule = config.rule()?;
        let publisher = state.clone();
        let app_id = config.app.clone();
        let deliver = Arc::new(move |event: BridgedEvent| {
            let app = publisher.apps.by_id(&app_id).ok_or_else(|| Rejection::UnknownApp(app_id.clone()))?;
            if !app.enabled {
                return Err(Rejection::AppDisabled(app_id.clone()));
            }
            let channels = [event.channel];
            let event = Event { name: &event.event, data: &event.data, channels: &channels, except: None };
            // Acknowledged once queued: nobody waits for a durable history store's append, so an
            // event it fails to take is still delivered live, without a position.
            drop(publisher.hubs.hub(&app.id).publish_event(&app, &event)?);
            Ok(())
        });
        bridge::run(&config.url, config.ca_file.as_deref(), rule, config.source(), deliver)
            .await
            .with_context(|| format!("starting the bridge for subject {}", config.subject))?;
    }
    Ok(())
}
