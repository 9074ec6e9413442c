//! The events the hub reports for webhooks, and the seam that takes them.
//!
//! The hub calls a [`WebhookSink`] at the moments the digest (§11.2) names, in causal order
//! (`channel_occupied` before `member_added`, `member_removed` before `channel_vacated`). It never
//! waits on delivery: a sink must return at once (queue, batch and retry elsewhere).

use std::fmt;

use crate::app::{App, WebhookKind};

/// One webhook event, as the Pusher SDKs parse it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    ChannelOccupied { channel: String },
    ChannelVacated { channel: String },
    MemberAdded { channel: String, user_id: String },
    MemberRemoved { channel: String, user_id: String },
    ClientEvent { channel: String, event: String, data: String, socket_id: String, user_id: Option<String> },
    CacheMiss { channel: String },
    SubscriptionCount { channel: String, subscription_count: usize },
}

impl WebhookEvent {
    /// The channel the event is about.
    pub fn channel(&self) -> &str {
        match self {
            WebhookEvent::ChannelOccupied { channel }
            | WebhookEvent::ChannelVacated { channel }
            | WebhookEvent::MemberAdded { channel, .. }
            | WebhookEvent::MemberRemoved { channel, .. }
            | WebhookEvent::ClientEvent { channel, .. }
            | WebhookEvent::CacheMiss { channel }
            | WebhookEvent::SubscriptionCount { channel, .. } => channel,
        }
    }

    /// The event as it appears in a webhook body's `events` array (the shapes the Pusher SDKs
    /// parse: `data` of a client event is a string, `subscription_count` a number).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            WebhookEvent::ChannelOccupied { channel } => {
                json!({"name": "channel_occupied", "channel": channel})
            }
            WebhookEvent::ChannelVacated { channel } => {
                json!({"name": "channel_vacated", "channel": channel})
            }
            WebhookEvent::MemberAdded { channel, user_id } => {
                json!({"name": "member_added", "channel": channel, "user_id": user_id})
            }
            WebhookEvent::MemberRemoved { channel, user_id } => {
                json!({"name": "member_removed", "channel": channel, "user_id": user_id})
            }
            WebhookEvent::ClientEvent { channel, event, data, socket_id, user_id } => {
                let mut value = json!({
                    "name": "client_event", "channel": channel, "event": event, "data": data, "socket_id": socket_id
                });
                if let Some(user_id) = user_id {
                    value["user_id"] = json!(user_id);
                }
                value
            }
            WebhookEvent::CacheMiss { channel } => json!({"name": "cache_miss", "channel": channel}),
            WebhookEvent::SubscriptionCount { channel, subscription_count } => {
                json!({"name": "subscription_count", "channel": channel, "subscription_count": subscription_count})
            }
        }
    }

    pub fn kind(&self) -> WebhookKind {
        match self {
            WebhookEvent::ChannelOccupied { .. } => WebhookKind::ChannelOccupied,
            WebhookEvent::ChannelVacated { .. } => WebhookKind::ChannelVacated,
            WebhookEvent::MemberAdded { .. } => WebhookKind::MemberAdded,
            WebhookEvent::MemberRemoved { .. } => WebhookKind::MemberRemoved,
            WebhookEvent::ClientEvent { .. } => WebhookKind::ClientEvent,
            WebhookEvent::CacheMiss { .. } => WebhookKind::CacheMiss,
            WebhookEvent::SubscriptionCount { .. } => WebhookKind::SubscriptionCount,
        }
    }
}

/// Takes webhook events for an app. Must not block: it runs inside the hub's critical sections.
pub trait WebhookSink: Send + Sync + fmt::Debug {
    fn submit(&self, app_id: &str, event: WebhookEvent);

    /// An event that happened a while ago and was held until now (by the cluster's leader gate
    /// while no node led). Such events arrive together, so a sink must not read their closeness
    /// in arrival as closeness in time: a member who stayed for seconds is not a flicker.
    fn submit_late(&self, app_id: &str, event: WebhookEvent) {
        self.submit(app_id, event);
    }
}

/// Whether any endpoint of `app` wants events of this kind (callers skip building events no one
/// asked for).
pub fn wanted(app: &App, kind: WebhookKind) -> bool {
    app.webhooks.iter().any(|w| w.events.contains(&kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn webhook_json_has_the_shapes_the_sdks_parse() {
        let client = WebhookEvent::ClientEvent {
            channel: "presence-a".into(),
            event: "client-x".into(),
            data: r#"{"a":1}"#.into(),
            socket_id: "1.2".into(),
            user_id: Some("u".into()),
        };
        assert_eq!(
            client.to_json(),
            json!({"name": "client_event", "channel": "presence-a", "event": "client-x", "data": "{\"a\":1}", "socket_id": "1.2", "user_id": "u"})
        );
        let count = WebhookEvent::SubscriptionCount { channel: "c".into(), subscription_count: 3 };
        assert_eq!(
            count.to_json(),
            json!({"name": "subscription_count", "channel": "c", "subscription_count": 3})
        );
        assert_eq!(count.channel(), "c");
    }
}
