//! Publishing: the one verb every publisher uses — the HTTP API, the NATS bridge, the admin
//! console. An [`Event`] is checked against every rule (its name, its size, its channels, the
//! encrypted-channel rule, the app's cache budget) before anything is published
//! ([`AppHub::prepare`]), so a refused event reaches no one and a batch is published whole or not
//! at all; then each channel gets the event once ([`AppHub::publish`]): a `#server-to-user-`
//! channel goes to that user's connections, a cache channel keeps it, a history channel numbers
//! it, and in a cluster each channel's event is one message on the bus.
//!
//! Client events and typed channels' topic events follow rules of their own and publish already
//! encoded frames with [`AppHub::publish_frame`].

use bytes::Bytes;
use plexus_protocol::codec::{Data, ServerEvent};
use plexus_protocol::limits::{check_event_name, EventNameError, MAX_CHANNELS_PER_TRIGGER};
use plexus_protocol::{ChannelError, ChannelKind, ChannelName, SocketId};
use tokio::time::Duration;

use super::cache::CacheFull;
use super::stored::AppendWait;
use super::AppHub;
use crate::app::App;
use crate::cluster::Keep;

/// An event as a publisher hands it over, before any check.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub name: &'a str,
    /// The `data` every subscriber receives (a string; publishers send JSON text).
    pub data: &'a str,
    /// Channel names as given; each is checked.
    pub channels: &'a [String],
    /// The connection that must not receive it (the publisher's own socket).
    pub except: Option<SocketId>,
}

/// Why an event was refused. Nothing of a refused event is published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Name(#[from] EventNameError),
    #[error("event names starting with pusher: are reserved")]
    ReservedName,
    #[error("event data is {size} bytes; the limit is {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("an event must name 1 to {MAX_CHANNELS_PER_TRIGGER} channels")]
    ChannelCount,
    #[error("invalid channel {name:?}: {error}")]
    Channel { name: String, error: ChannelError },
    #[error("an event for an encrypted channel must name only that channel")]
    EncryptedWithOthers,
    #[error("cache channel {channel}: {full}")]
    CacheFull { channel: String, full: CacheFull },
    /// The durable history store did not take the event for this history channel (it is down,
    /// or too slow): the event reached no one there. Retrying later is safe.
    #[error("the history of channel {channel} cannot be written now; try again")]
    HistoryUnavailable { channel: String },
}

/// What a publish may still be waiting for: with a durable history store, the appends of its
/// history channels' events, which are delivered once stored. Without one, or without history
/// channels, there is nothing to wait for.
#[derive(Debug, Default)]
pub struct Published {
    waits: Vec<AppendWait>,
}

impl Published {
    /// Resolves once every history channel's event is stored and delivered; the first channel
    /// whose store refused is the error.
    pub async fn stored(self) -> Result<(), PublishError> {
        for AppendWait { channel, stored } in self.waits {
            if stored.await != Ok(true) {
                return Err(PublishError::HistoryUnavailable { channel: channel.to_string() });
            }
        }
        Ok(())
    }
}

/// An event that passed every check, encoded once per channel, ready to publish.
#[derive(Debug, Clone)]
pub struct Prepared {
    data: String,
    targets: Vec<(ChannelName, Bytes)>,
    except: Option<SocketId>,
}

impl Prepared {
    /// The channels it goes to, in the order given.
    pub fn channels(&self) -> impl Iterator<Item = &ChannelName> {
        self.targets.iter().map(|(channel, _)| channel)
    }
}

impl AppHub {
    /// Checks `event` against `app`'s rules and encodes it; nothing is published yet.
    pub fn prepare(&self, app: &App, event: &Event<'_>) -> Result<Prepared, PublishError> {
        check_event_name(event.name)?;
        if event.name.starts_with("pusher:") || event.name.starts_with("pusher_internal:") {
            return Err(PublishError::ReservedName);
        }
        if event.data.len() > app.max_payload_bytes() {
            return Err(PublishError::TooLarge { size: event.data.len(), max: app.max_payload_bytes() });
        }
        if event.channels.is_empty() || event.channels.len() > MAX_CHANNELS_PER_TRIGGER {
            return Err(PublishError::ChannelCount);
        }
        let channels = event
            .channels
            .iter()
            .map(|name| {
                ChannelName::parse_with_limit(name, app.max_channel_name_length)
                    .map_err(|error| PublishError::Channel { name: name.clone(), error })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if channels.len() > 1 && channels.iter().any(|c| c.kind() == ChannelKind::Encrypted) {
            return Err(PublishError::EncryptedWithOthers);
        }
        let mut targets = Vec::with_capacity(channels.len());
        for channel in channels {
            let frame =
                ServerEvent::new(event.name).channel(channel.as_str()).data(Data::Str(event.data)).to_frame();
            if channel.is_cache() {
                self.cache_room(&channel, &frame)
                    .map_err(|full| PublishError::CacheFull { channel: channel.to_string(), full })?;
            }
            targets.push((channel, frame));
        }
        Ok(Prepared { data: event.data.to_owned(), targets, except: event.except })
    }

    /// Publishes a prepared event to each of its channels; what it returns says whether a
    /// durable history store took its history channels' events.
    pub fn publish(&self, app: &App, event: &Prepared) -> Published {
        let mut published = Published::default();
        for (channel, frame) in &event.targets {
            if let Some(user_id) = channel.server_to_user_id() {
                self.send_to_user(user_id, frame);
                continue;
            }
            let keep = channel
                .is_cache()
                .then(|| Keep { data: &event.data, ttl: Duration::from_secs(app.cache_ttl_secs) });
            self.publish_keeping(
                app,
                channel.as_str(),
                frame,
                event.except,
                keep,
                Some(&mut published.waits),
            );
        }
        published
    }

    /// [`AppHub::prepare`], then [`AppHub::publish`].
    pub fn publish_event(&self, app: &App, event: &Event<'_>) -> Result<Published, PublishError> {
        let prepared = self.prepare(app, event)?;
        Ok(self.publish(app, &prepared))
    }
}
