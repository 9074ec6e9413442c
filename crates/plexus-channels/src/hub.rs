//! The event hub: topics delivered through plexus channels.
//!
//! A typed channel declares the topics its connections may follow (`Channel::topic`). Following
//! `topic` on channel `name` subscribes the connection to the private plexus channel
//! `private-plexus.{name}.{topic}` (the topic escaped into the Pusher character set), and
//! [`EventHub::publish`] is an [`AppHub::publish`] to that channel: one encoded frame shared by
//! every subscriber, and cluster-wide when scale-out is on. The channel's outgoing middleware
//! runs once per publish, on the publishing node, before the frame is encoded. Being `private-`,
//! those channels cannot be joined by a Pusher client without a signature from the app secret.
//!
//! The registry of live channels (by id) is per process: [`EventHub::send_to`] and the `*_id`
//! verbs reach channels open on this node.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use plexus_core::AppHub;
use plexus_protocol::channel::TOPIC_CHANNEL_PREFIX;
use plexus_protocol::ChannelName;
use serde::Serialize;
use serde_json::Value;

use crate::context::{Ctx, Instance, LiveRef};
use crate::envelope;
use crate::error::{codes, ActionError};
use crate::middleware::{apply_outgoing, EventInfo, Outgoing};

/// What every connection and event hub of one [`Channels`](crate::Channels) share, without its
/// types: topics, outgoing middleware, live channels.
#[derive(Default)]
pub(crate) struct Shared {
    /// Declared topic (a name, or a `prefix*` family) → the channels that declared it.
    pub(crate) topics: BTreeMap<String, Vec<String>>,
    /// Channel name → its outgoing middleware, global ones first.
    pub(crate) outgoing: HashMap<String, Arc<[Outgoing]>>,
    /// Open channels on this node, by id.
    pub(crate) live: Mutex<HashMap<String, LiveRef>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("topics", &self.topics).finish_non_exhaustive()
    }
}

/// Characters a channel name allows, less `=` (our escape character).
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '@' | ',' | '.' | ';')
}

/// Escapes `topic` into channel-name characters, reversibly: every other byte becomes `=HH`.
fn escape_topic(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    for c in topic.chars() {
        if plain(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("={byte:02X}"));
            }
        }
    }
    out
}

impl Shared {
    pub(crate) fn outgoing_for(&self, channel: &str) -> Arc<[Outgoing]> {
        self.outgoing.get(channel).cloned().unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// The channels whose declared topics match `topic`: by name, or by a `prefix*` family.
    fn channels_for<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.topics
            .iter()
            .filter(move |(declared, _)| match declared.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => *declared == topic,
            })
            .flat_map(|(_, channels)| channels)
    }

    fn declares(&self, channel: &str, topic: &str) -> bool {
        self.channels_for(topic).any(|c| c == channel)
    }

    /// The plexus channel carrying `topic` for typed channel `channel`.
    pub(crate) fn topic_channel(
        &self,
        channel: &str,
        topic: &str,
        max_len: usize,
    ) -> Result<ChannelName, ActionError> {
        if !self.declares(channel, topic) {
            return Err(ActionError::new(
                codes::UNKNOWN_TOPIC,
                format!("channel {channel:?} declares no topic {topic:?}"),
            ));
        }
        let name = format!("{TOPIC_CHANNEL_PREFIX}{channel}.{}", escape_topic(topic));
        ChannelName::parse_with_limit(&name, max_len)
            .map_err(|e| ActionError::new(codes::UNKNOWN_TOPIC, format!("topic {topic:?}: {e}")))
    }

    pub(crate) fn register(&self, instance: &Arc<Instance>) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(instance.id.clone(), Arc::downgrade(instance));
    }

    pub(crate) fn forget(&self, id: &str) {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    fn find(&self, id: &str) -> Option<Arc<Instance>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).get(id).and_then(LiveRef::upgrade)
    }
}

/// Publish to topics and manage who follows them, for one app. Cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    hub: Arc<AppHub>,
    /// Settings for publishing: topic channels keep no history and take no app-specific rules.
    topics_app: Arc<plexus_core::App>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub").field("app_id", &self.hub.app_id()).finish_non_exhaustive()
    }
}

fn to_value<T: Serialize>(value: &T) -> Result<Value, ActionError> {
    serde_json::to_value(value).map_err(|e| ActionError::internal(format!("event: {e}")))
}

impl EventHub {
    pub(crate) fn new(hub: Arc<AppHub>, shared: Arc<Shared>) -> Self {
        let topics_app = Arc::new(plexus_core::App::new(hub.app_id(), "", ""));
        EventHub { hub, topics_app, shared }
    }

    /// Publishes `value` to everyone following `topic`, on every channel that declares it, each
    /// through its channel's outgoing middleware. Returns how many local connections got it.
    /// An undeclared topic is an `unknown_topic` error.
    pub fn publish<T: Serialize>(&self, topic: &str, value: &T) -> Result<usize, ActionError> {
        self.publish_value(topic, to_value(value)?, true)
    }

    /// [`publish`](Self::publish) without outgoing middleware (the low-level broadcast).
    pub fn broadcast<T: Serialize>(&self, topic: &str, value: &T) -> Result<usize, ActionError> {
        self.publish_value(topic, to_value(value)?, false)
    }

    fn publish_value(&self, topic: &str, value: Value, middleware: bool) -> Result<usize, ActionError> {
        let mut channels: Vec<&String> = self.shared.channels_for(topic).collect();
        // A channel may match through a name and a family: it still gets the event once.
        channels.sort();
        channels.dedup();
        if channels.is_empty() {
            return Err(ActionError::new(
                codes::UNKNOWN_TOPIC,
                format!("no channel declares topic {topic:?}"),
            ));
        }
        let mut delivered = 0;
        for channel in channels {
            let data = if middleware {
                let info = EventInfo { channel, topic: Some(topic) };
                match apply_outgoing(&self.shared.outgoing_for(channel), &info, value.clone()) {
                    Some(data) => data,
                    None => continue,
                }
            } else {
                value.clone()
            };
            // Publishing needs the name, not a length check: subscribers were checked on the way in.
            let name = self.shared.topic_channel(channel, topic, usize::MAX)?;
            let frame = envelope::topic_event(channel, topic, data);
            delivered += self.hub.publish_frame(&self.topics_app, name.as_str(), &frame, None);
        }
        Ok(delivered)
    }

    /// Makes the channel behind `ctx` follow `topic`.
    pub fn subscribe<S, U, O>(&self, topic: &str, ctx: &Ctx<S, U, O>) -> Result<(), ActionError> {
        ctx.instance().subscribe(topic)
    }

    pub fn unsubscribe<S, U, O>(&self, topic: &str, ctx: &Ctx<S, U, O>) {
        ctx.instance().unsubscribe(topic);
    }

    /// Makes the channel open on this node with id `channel_id` follow `topic`; `false` if no
    /// such channel is open here.
    pub fn subscribe_id(&self, topic: &str, channel_id: &str) -> Result<bool, ActionError> {
        match self.shared.find(channel_id) {
            Some(instance) => instance.subscribe(topic).map(|()| true),
            None => Ok(false),
        }
    }

    pub fn unsubscribe_id(&self, topic: &str, channel_id: &str) -> bool {
        match self.shared.find(channel_id) {
            Some(instance) => {
                instance.unsubscribe(topic);
                true
            }
            None => false,
        }
    }

    /// Sends `value` to one open channel on this node (through its outgoing middleware);
    /// `false` if it is not open here or the middleware dropped it.
    pub fn send_to<T: Serialize>(&self, channel_id: &str, value: &T) -> Result<bool, ActionError> {
        let data = to_value(value)?;
        Ok(self.shared.find(channel_id).is_some_and(|instance| instance.send_value(data)))
    }

    /// Ids of the channels open on this node (any app).
    pub fn live_channels(&self) -> Vec<String> {
        self.shared.live.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_escape_into_distinct_valid_channel_names() {
        assert_eq!(escape_topic("todos:updated"), "todos=3Aupdated");
        assert_eq!(escape_topic("a=b"), "a=3Db");
        assert_ne!(escape_topic("a:b"), escape_topic("a=3Ab"));
        assert_eq!(escape_topic("é"), "=C3=A9");
        for topic in ["todos:updated", "room/42 #x", "ü"] {
            assert!(ChannelName::parse(&format!("private-plexus.c.{}", escape_topic(topic))).is_ok());
        }
    }
}
