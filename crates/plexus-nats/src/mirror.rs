//! The NATS side of `[[mirrors]]`: channel events published on this node, copied out to NATS
//! subjects for services that consume the bus (audit, analytics, other systems).
//!
//! Publishing never waits on NATS: events go into a bounded queue that one task drains. A full
//! queue (NATS unreachable for long, or slower than the event rate) drops the newest event,
//! counts it in `plexus_mirror_dropped_total` and logs; realtime delivery is never held back.
//! Delivery is therefore at most once, like core NATS itself. Every mirrored message carries the
//! header [`MIRROR_HEADER`], and the subject bridge refuses messages that carry it, so a mirror
//! and a bridge whose subjects overlap cannot feed each other in a loop.

use std::time::Duration;

use async_nats::{ConnectOptions, HeaderMap};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::TransportError;

/// Marks a message plexus mirrored out; its value is the app id.
pub const MIRROR_HEADER: &str = "Plexus-Mirror";

/// Events waiting to be published, per connection.
const QUEUE: usize = 10_000;

/// A connection that publishes mirrored events; cheap to share.
#[derive(Debug, Clone)]
pub struct MirrorPublisher {
    queue: mpsc::Sender<Mirrored>,
}

#[derive(Debug)]
struct Mirrored {
    app_id: String,
    subject: String,
    payload: Bytes,
}

impl MirrorPublisher {
    /// Connects to `url` and starts the publishing task. `ca_file`: TLS required, verified against
    /// that PEM file's CA certificates (see [`crate::tls_options`]).
    pub async fn connect(
        url: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Result<MirrorPublisher, TransportError> {
        let shown = crate::redact_url(url, true);
        let connect_error =
            |reason: String| TransportError::Connect { bus: "NATS", url: shown.clone(), reason };
        let options = crate::tls_options(ConnectOptions::new(), url, ca_file).map_err(connect_error)?;
        let client = tokio::time::timeout(Duration::from_secs(6), options.connect(url))
            .await
            .map_err(|_| connect_error("not connected within 6 s".into()))?
            .map_err(|e| connect_error(plexus_tls::describe(&e)))?;
        let (queue, mut pending) = mpsc::channel::<Mirrored>(QUEUE);
        tokio::spawn(async move {
            let published = metrics::counter!("plexus_mirror_published_total");
            while let Some(event) = pending.recv().await {
                let mut headers = HeaderMap::new();
                headers.insert(MIRROR_HEADER, event.app_id.as_str());
                match client.publish_with_headers(event.subject, headers, event.payload).await {
                    Ok(()) => published.increment(1),
                    Err(error) => {
                        metrics::counter!("plexus_mirror_dropped_total").increment(1);
                        tracing::warn!(%error, "mirror: publishing to NATS failed; event dropped");
                    }
                }
                // A burst goes out in one write; the last event of it is not left in a buffer.
                if pending.is_empty() {
                    if let Err(error) = client.flush().await {
                        tracing::warn!(%error, "mirror: flushing to NATS failed");
                    }
                }
            }
        });
        Ok(MirrorPublisher { queue })
    }

    /// Queues one event for `subject`; false (and counted, logged) when the queue is full.
    pub fn offer(&self, app_id: &str, subject: String, payload: Bytes) -> bool {
        let event = Mirrored { app_id: app_id.to_owned(), subject, payload };
        match self.queue.try_send(event) {
            Ok(()) => true,
            Err(_) => {
                metrics::counter!("plexus_mirror_dropped_total").increment(1);
                tracing::warn!("mirror: queue full (NATS slow or unreachable); event dropped");
                false
            }
        }
    }
}
