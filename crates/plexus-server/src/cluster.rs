//! Joining a cluster: connects the bus `[adapter]` names and starts this node's receive loop.
//! The cluster protocol itself lives in `plexus_core::cluster`; the buses in `plexus-nats` and
//! `plexus-redis`.

use std::sync::Arc;
use std::time::Duration;

#[cfg(any(feature = "nats", feature = "redis"))]
use anyhow::Context as _;
use plexus_core::cluster::node::random_node_id;
use plexus_core::cluster::{
    redact_url, ClusterNode, ClusterOptions, Inbound, InboundSender, NodeId, Transport,
};
use plexus_core::history_store::HistoryStore;
use plexus_core::webhook::WebhookSink;
use tokio::sync::mpsc;

use crate::config::{AdapterConfig, AdapterDriver, HistoryPlace};
use crate::ServerState;

/// A node connected to its bus, not yet receiving.
#[derive(Debug)]
pub struct Connected {
    pub node: Arc<ClusterNode>,
    /// The bus's durable history store, when `[adapter] history = "bus"`.
    pub history: Option<Arc<dyn HistoryStore>>,
    inbound: mpsc::UnboundedReceiver<Inbound>,
}

/// Connects to the bus of `config` (nothing for the local driver). `webhooks` is where this
/// node's state webhooks go while it leads the cluster.
pub async fn connect(
    config: &AdapterConfig,
    webhooks: Arc<dyn WebhookSink>,
) -> anyhow::Result<Option<Connected>> {
    if config.driver == AdapterDriver::Local {
        anyhow::ensure!(
            config.history == HistoryPlace::Memory,
            "[adapter] history = \"bus\" needs driver = \"nats\" or \"redis\": one process keeps history in memory"
        );
        return Ok(None);
    }
    let id = random_node_id();
    let (inbound_tx, inbound) = mpsc::unbounded_channel();
    let transport = connect_bus(config, id, inbound_tx).await?;
    let options = ClusterOptions {
        heartbeat: Duration::from_millis(config.heartbeat_ms),
        lease: Duration::from_millis(config.lease_ms),
        // Figures for the dashboard's per-node charts: every fifth heartbeat (5 s by default,
        // the charts' sampling interval).
        load_every: Duration::from_millis(config.heartbeat_ms.saturating_mul(5)),
        ..ClusterOptions::default()
    };
    let shown = redact_url(&config.url(), config.driver == AdapterDriver::Nats);
    tracing::info!(node = id, driver = ?config.driver, url = %shown, prefix = %config.prefix, "joined the cluster bus");
    let history = match config.history {
        HistoryPlace::Memory => None,
        HistoryPlace::Bus => Some(connect_history(config).await?),
    };
    Ok(Some(Connected { node: ClusterNode::new(id, transport, webhooks, options), history, inbound }))
}

/// The bus's durable history store (`[adapter] history = "bus"`).
async fn connect_history(config: &AdapterConfig) -> anyhow::Result<Arc<dyn HistoryStore>> {
    let url = config.url();
    let ca_file = config.ca_file.as_deref();
    match config.driver {
        #[cfg(feature = "nats")]
        AdapterDriver::Nats => {
            let options = plexus_nats::history::HistoryOptions::default();
            Ok(Arc::new(
                plexus_nats::history::JetStreamHistory::connect(&url, ca_file, &config.prefix, options)
                    .await
                    .context("cannot open channel history in JetStream ([adapter] history = \"bus\"); is JetStream enabled on the NATS server?")?,
            ))
        }
        #[cfg(feature = "redis")]
        AdapterDriver::Redis => Ok(Arc::new(
            plexus_redis::RedisHistory::connect(&url, ca_file, &config.prefix)
                .await
                .context("cannot open channel history in Redis Streams ([adapter] history = \"bus\")")?,
        )),
        #[allow(unreachable_patterns)]
        driver => {
            let _ = (url, ca_file);
            anyhow::bail!("[adapter] history = \"bus\" needs a bus: driver {driver:?} has none")
        }
    }
}

/// The bus `[adapter]` names, connected; a driver whose feature this build left out is refused
/// with the feature's name.
async fn connect_bus(
    config: &AdapterConfig,
    id: NodeId,
    inbound: InboundSender,
) -> anyhow::Result<Arc<dyn Transport>> {
    let url = config.url();
    let ca_file = config.ca_file.as_deref();
    match config.driver {
        #[cfg(feature = "nats")]
        AdapterDriver::Nats => Ok(plexus_nats::connect_with(&url, ca_file, &config.prefix, id, inbound)
            .await
            .context("cannot join the cluster over NATS")?),
        #[cfg(feature = "redis")]
        AdapterDriver::Redis => Ok(plexus_redis::connect_with(&url, ca_file, &config.prefix, id, inbound)
            .await
            .context("cannot join the cluster over Redis")?),
        #[allow(unreachable_patterns)]
        driver => {
            let _ = (url, ca_file, id, inbound);
            let feature = format!("{driver:?}").to_lowercase();
            anyhow::bail!(
                "[adapter] driver = {feature:?}: this plexus was built without the `{feature}` feature"
            )
        }
    }
}

/// Starts receiving from the cluster into `state`'s hubs, and returns once this node has heard
/// from its peers and holds their state (or after a bounded wait), so clients that connect next
/// see the whole cluster.
pub async fn start(connected: Connected, state: &Arc<ServerState>) {
    let Connected { node, inbound, .. } = connected;
    let mut ready = node.ready();
    tokio::spawn(node.clone().run(state.hubs.clone(), state.apps.clone(), inbound));
    let synced = tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|ready| *ready)).await;
    if synced.is_err() {
        tracing::warn!("peers' state not complete after 10 s; serving anyway, it will catch up");
    }
}
