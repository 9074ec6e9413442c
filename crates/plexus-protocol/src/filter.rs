//! Server-side subscription filters, a plexus extension of `pusher:subscribe`:
//!
//! ```json
//! {"event":"pusher:subscribe","data":{"channel":"instance-inst_1",
//!   "filter":{"events":["message.received"],"where":{"chat.id":"c1","direction":"in"}}}}
//! ```
//!
//! `events` keeps only events with those names; `where` keeps only events whose data is a JSON
//! object with each (dotted) field equal to the given JSON value. Events filtered out never
//! cross the wire. A subscription without `filter` (what pusher-js sends) gets everything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most conditions one filter may carry (each is checked per event for this subscriber).
pub const MAX_FILTER_TERMS: usize = 32;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    #[serde(default, rename = "where", skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Value>,
}

impl SubscriptionFilter {
    /// Refuses filters too large to check per event.
    pub fn validate(&self) -> Result<(), String> {
        let terms = self.events.as_ref().map_or(0, Vec::len) + self.fields.len();
        if terms > MAX_FILTER_TERMS {
            return Err(format!(
                "a filter may have at most {MAX_FILTER_TERMS} event names and fields, not {terms}"
            ));
        }
        Ok(())
    }

    /// Whether the filter needs the event's data parsed.
    pub fn needs_data(&self) -> bool {
        !self.fields.is_empty()
    }

    /// Whether an event passes; `data` is the event's data parsed as JSON (when it is JSON).
    pub fn matches(&self, event: &str, data: Option<&Value>) -> bool {
        if let Some(events) = &self.events {
            if !events.iter().any(|e| e == event) {
                return false;
            }
        }
        self.fields.iter().all(|(path, wanted)| {
            let mut current = data;
            for key in path.split('.') {
                current = current.and_then(|v| v.get(key));
            }
            current == Some(wanted)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_and_fields_must_all_match() {
        let filter: SubscriptionFilter = serde_json::from_value(json!({
            "events": ["message.received"], "where": {"chat.id": "c1", "n": 2}
        }))
        .unwrap();
        let data = json!({"chat": {"id": "c1"}, "n": 2});
        assert!(filter.matches("message.received", Some(&data)));
        assert!(!filter.matches("typing", Some(&data)));
        assert!(!filter.matches("message.received", Some(&json!({"chat": {"id": "c2"}, "n": 2}))));
        assert!(!filter.matches("message.received", Some(&json!({"chat": {"id": "c1"}, "n": "2"}))));
        assert!(!filter.matches("message.received", None));
        let events_only: SubscriptionFilter = serde_json::from_value(json!({"events": ["a"]})).unwrap();
        assert!(events_only.matches("a", None) && !events_only.needs_data());
    }

    #[test]
    fn a_subscribe_with_a_filter_survives_encoding() {
        let filter: SubscriptionFilter =
            serde_json::from_value(json!({"events": ["a"], "where": {"x.y": 1}})).unwrap();
        let frame = crate::ClientFrame::Subscribe(crate::codec::Subscribe {
            channel: "c".into(),
            auth: None,
            channel_data: None,
            filter: Some(filter),
            position: Some("7:41".into()),
        });
        assert_eq!(crate::codec::decode_client_frame(&frame.to_json()).unwrap(), frame);
    }

    #[test]
    fn unknown_keys_and_huge_filters_are_refused() {
        assert!(serde_json::from_value::<SubscriptionFilter>(json!({"evnts": ["a"]})).is_err());
        let many: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        let filter: SubscriptionFilter = serde_json::from_value(json!({ "events": many })).unwrap();
        assert!(filter.validate().is_err());
    }
}
