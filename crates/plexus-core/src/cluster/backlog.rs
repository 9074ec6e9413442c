//! The bounded queue a bus transport puts between [`Transport::send`](super::Transport::send) and
//! the task that publishes: it keeps `send` non-blocking and the order intact, and caps what piles up
//! while the bus is away, by count and by bytes, dropping (and counting) the excess.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::Route;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Messages that may wait for the bus.
pub const MAX_MESSAGES: usize = 100_000;

/// Bytes that may wait for the bus; at the cluster's 512 KiB per message the count alone would
/// allow tens of GiB.
pub const MAX_BYTES: usize = 256 * 1024 * 1024;

/// The sending half, owned by the transport.
#[derive(Debug)]
pub struct Backlog {
    tx: mpsc::Sender<(Route, Bytes)>,
    bytes: Arc<AtomicUsize>,
    dropped: AtomicU64,
    bus: &'static str,
}

/// The receiving half, owned by the publishing task.
#[derive(Debug)]
pub struct BacklogReceiver {
    rx: mpsc::Receiver<(Route, Bytes)>,
    bytes: Arc<AtomicUsize>,
}

pub fn backlog(bus: &'static str) -> (Backlog, BacklogReceiver) {
    let (tx, rx) = mpsc::channel(MAX_MESSAGES);
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        Backlog { tx, bytes: Arc::clone(&bytes), dropped: AtomicU64::new(0), bus },
        BacklogReceiver { rx, bytes },
    )
}

impl Backlog {
    /// Queues a message, or drops it when the backlog is full. Never blocks.
    pub fn push(&self, route: Route, message: Bytes) {
        let len = message.len();
        if self.bytes.fetch_add(len, Ordering::Relaxed) + len > MAX_BYTES {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            self.drop_one();
            return;
        }
        if self.tx.try_send((route, message)).is_err() {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            self.drop_one();
        }
    }

    /// Resolves once the publishing task has taken every message queued so far.
    pub async fn taken(&self) {
        while self.tx.capacity() < self.tx.max_capacity() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Messages dropped so far because the backlog was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn drop_one(&self) {
        let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // Logarithmically few lines however long the outage lasts.
        if total.is_power_of_two() {
            tracing::warn!(
                bus = self.bus,
                dropped = total,
                "cluster bus backlog full; dropping outgoing messages (peers re-sync)"
            );
        }
    }
}

impl BacklogReceiver {
    /// The next message; `None` once the transport is gone and the backlog is empty.
    pub async fn recv(&mut self) -> Option<(Route, Bytes)> {
        let item = self.rx.recv().await?;
        self.bytes.fetch_sub(item.1.len(), Ordering::Relaxed);
        Some(item)
    }

    /// The next message if one is queued already.
    pub fn try_recv(&mut self) -> Option<(Route, Bytes)> {
        let item = self.rx.try_recv().ok()?;
        self.bytes.fetch_sub(item.1.len(), Ordering::Relaxed);
        Some(item)
    }

    /// Whether the transport is gone (more messages may still be queued).
    pub fn is_closed(&self) -> bool {
        self.rx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_order_and_drops_beyond_the_byte_cap() {
        let (backlog, mut rx) = backlog("test");
        backlog.push(Route::All, Bytes::from_static(b"one"));
        backlog.push(Route::Node(7), Bytes::from_static(b"two"));
        backlog.push(Route::All, Bytes::from(vec![0u8; MAX_BYTES]));
        assert_eq!(backlog.dropped(), 1);
        assert_eq!(rx.recv().await, Some((Route::All, Bytes::from_static(b"one"))));
        assert_eq!(rx.try_recv(), Some((Route::Node(7), Bytes::from_static(b"two"))));
        assert_eq!(rx.try_recv(), None);
        assert_eq!(rx.bytes.load(Ordering::Relaxed), 0);
        // With the queue empty again the same large message fits.
        backlog.push(Route::All, Bytes::from(vec![0u8; MAX_BYTES]));
        assert_eq!(backlog.dropped(), 1);
        drop(backlog);
        assert!(rx.recv().await.is_some());
        assert!(rx.is_closed());
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn drops_beyond_the_message_cap() {
        let (backlog, mut rx) = backlog("test");
        for _ in 0..MAX_MESSAGES + 3 {
            backlog.push(Route::All, Bytes::new());
        }
        assert_eq!(backlog.dropped(), 3);
        assert!(rx.try_recv().is_some());
        backlog.push(Route::All, Bytes::new());
        assert_eq!(backlog.dropped(), 3);
    }
}
