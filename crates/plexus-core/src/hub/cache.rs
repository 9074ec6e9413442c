//! Cache channels: the last event of each `cache-` channel, kept for `cache_ttl_secs` whether
//! anyone is subscribed or not, bounded per app ([`CacheLimits`]), replayed to each new
//! subscriber (or answered with `pusher:cache_miss`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use plexus_protocol::codec::{self};
use plexus_protocol::ChannelName;
use tokio::time::{Duration, Instant};

use crate::app::{App, WebhookKind};
use crate::webhook::WebhookEvent;

use super::*;

/// How much one app's cache channels may keep: a publish to a cache channel that would go past
/// either bound is refused before anything is published ([`AppHub::cache_room`]); a subscriber
/// to an uncached channel past the channel bound still gets `pusher:cache_miss`, but no
/// `cache_miss` webhook (there is no room to remember that one was sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    pub max_channels: usize,
    /// Frame bytes, summed over the app's cache channels.
    pub max_bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits { max_channels: 10_000, max_bytes: 16 << 20 }
    }
}

/// Why a cache channel cannot keep another event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheFull {
    #[error(
        "the app already keeps {0} cache channels, the most allowed; let some expire (cache_ttl_secs) first"
    )]
    Channels(usize),
    #[error("the app's cache channels already keep {used} bytes; this event would pass the limit of {max}")]
    Bytes { used: usize, max: usize },
}

/// What a shard knows about a cache channel.
#[derive(Debug)]
pub(super) enum CacheSlot {
    /// The last event published, as a ready frame, until it expires. Its `data` is kept only
    /// inside the frame ([`data_of`]): replays need the frame, and only the HTTP API and a
    /// peer's snapshot read the data.
    Event { frame: Bytes, expires: Instant },
    /// No event; when the last `cache_miss` webhook went out.
    Missed { webhook_at: Instant },
}

impl CacheSlot {
    pub(super) fn bytes(&self) -> usize {
        match self {
            CacheSlot::Event { frame, .. } => frame.len(),
            CacheSlot::Missed { .. } => 0,
        }
    }
}

/// One app's cache channels and bytes, across shards.
#[derive(Debug, Default)]
pub(super) struct CacheUsage {
    pub(super) channels: AtomicUsize,
    pub(super) bytes: AtomicUsize,
}

impl CacheUsage {
    pub(super) fn added(&self, slot: &CacheSlot, replaced: Option<&CacheSlot>) {
        match replaced {
            Some(old) => {
                self.bytes.fetch_sub(old.bytes(), Ordering::Relaxed);
            }
            None => {
                self.channels.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.bytes.fetch_add(slot.bytes(), Ordering::Relaxed);
    }

    pub(super) fn removed(&self, slot: &CacheSlot) {
        self.channels.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(slot.bytes(), Ordering::Relaxed);
    }
}

/// A cache channel's live event, as told to other nodes when they sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedEvent {
    pub channel: ChannelName,
    pub data: String,
    pub frame: Bytes,
    pub ttl: Duration,
}

/// A cache channel's current event, as the HTTP API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    pub data: String,
    /// Whole seconds until it expires.
    pub ttl_secs: u64,
}

impl AppHub {
    /// Sends a new cache-channel subscriber the cached event, or `pusher:cache_miss` (and a
    /// rate-limited `cache_miss` webhook).
    pub(super) fn replay_cache(
        &self,
        app: &App,
        cache: &mut HashMap<ChannelName, CacheSlot>,
        channel: &ChannelName,
        connection: &Connection,
    ) {
        let now = Instant::now();
        match cache.get_mut(channel) {
            Some(CacheSlot::Event { frame, expires, .. }) if *expires > now => {
                connection.outbound.push(frame.clone());
                return;
            }
            Some(CacheSlot::Missed { webhook_at })
                if now.duration_since(*webhook_at) < CACHE_MISS_WEBHOOK_INTERVAL =>
            {
                connection.outbound.push(codec::cache_miss(channel.as_str()));
                return;
            }
            _ => {}
        }
        connection.outbound.push(codec::cache_miss(channel.as_str()));
        let slot = CacheSlot::Missed { webhook_at: now };
        let known = cache.contains_key(channel);
        if !known && self.cache_usage.channels.load(Ordering::Relaxed) >= self.cache_limits.max_channels {
            return;
        }
        self.cache_usage.added(&slot, cache.get(channel));
        cache.insert(channel.clone(), slot);
        self.webhook(app, WebhookKind::CacheMiss, || WebhookEvent::CacheMiss {
            channel: channel.to_string(),
        });
    }

    /// Whether the app's cache has room for `channel` to keep `frame` (checked before
    /// publishing, so a refused event reaches no one).
    pub fn cache_room(&self, channel: &ChannelName, frame: &Bytes) -> Result<(), CacheFull> {
        let held = read(self.shard(channel.as_str())).cache.get(channel).map(CacheSlot::bytes);
        let limits = self.cache_limits;
        let channels = self.cache_usage.channels.load(Ordering::Relaxed);
        if held.is_none() && channels >= limits.max_channels {
            return Err(CacheFull::Channels(limits.max_channels));
        }
        let used = self.cache_usage.bytes.load(Ordering::Relaxed);
        if used - held.unwrap_or(0).min(used) + frame.len() > limits.max_bytes {
            return Err(CacheFull::Bytes { used, max: limits.max_bytes });
        }
        Ok(())
    }

    /// Keeps a cache channel's last event on this node only (another node published it).
    pub fn remember_here(&self, channel: &ChannelName, frame: &Bytes, ttl: Duration) {
        let slot = CacheSlot::Event { frame: frame.clone(), expires: Instant::now() + ttl };
        let mut shard = write(self.shard(channel.as_str()));
        self.cache_usage.added(&slot, shard.cache.get(channel));
        shard.cache.insert(channel.clone(), slot);
    }

    /// The cache channel's current event, if any.
    pub fn cached(&self, channel: &str) -> Option<CacheInfo> {
        let now = Instant::now();
        match read(self.shard(channel)).cache.get(channel) {
            Some(CacheSlot::Event { frame, expires }) if *expires > now => {
                let left = expires.duration_since(now);
                Some(CacheInfo {
                    data: data_of(frame),
                    ttl_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
                })
            }
            _ => None,
        }
    }

    /// Every cache channel's live event, for a peer that syncs.
    pub fn cached_events(&self) -> Vec<CachedEvent> {
        let now = Instant::now();
        let mut events = Vec::new();
        for shard in self.shards.iter() {
            for (name, slot) in read(shard).cache.iter() {
                if let CacheSlot::Event { frame, expires } = slot {
                    if *expires > now {
                        events.push(CachedEvent {
                            channel: name.clone(),
                            data: data_of(frame),
                            frame: frame.clone(),
                            ttl: expires.duration_since(now),
                        });
                    }
                }
            }
        }
        events
    }
}

/// A cached event's `data`, read back from its frame: the text the publisher sent (the frame
/// carries it as a JSON string), or the raw JSON of a `data` that is not a string.
fn data_of(frame: &Bytes) -> String {
    #[derive(serde::Deserialize)]
    struct Event<'a> {
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let payload = plexus_protocol::wsframe::server_frame_payload_slice(frame);
    let Ok(Event { data: Some(raw) }) = serde_json::from_slice(payload) else { return String::new() };
    serde_json::from_str::<String>(raw.get()).unwrap_or_else(|_| raw.get().to_owned())
}

#[cfg(test)]
mod tests {
    use plexus_protocol::codec::{Data, ServerEvent};

    #[test]
    fn the_data_of_a_cached_frame_is_exactly_what_was_published() {
        for data in ["{\"price\":1.5,\"note\":\"a \\\"quote\\\" and \\n\"}", "plain text ✓", ""] {
            let frame = ServerEvent::new("e").channel("cache-x").data(Data::Str(data)).to_frame();
            assert_eq!(super::data_of(&frame), data);
        }
    }
}
