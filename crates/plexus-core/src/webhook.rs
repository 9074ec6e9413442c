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
}

/// Whether any endpoint of `app` wants events of this kind (callers skip building events no one
/// asked for).
pub fn wanted(app: &App, kind: WebhookKind) -> bool {
    app.webhooks.iter().any(|w| w.events.contains(&kind))
}
