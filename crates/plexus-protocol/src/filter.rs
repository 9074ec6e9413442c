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

/// A filter with more terms than [`MAX_FILTER_TERMS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a filter may have at most {MAX_FILTER_TERMS} event names and fields, not {terms}")]
pub struct FilterTooLarge {
    pub terms: usize,
}

/// The server checks it per subscriber; clients (`plexus-client`) build it, send it and check it
/// again on what they receive, so both sides apply one rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionFilter {
    /// Keep only these event names (`None`: every name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// Keep only events whose JSON data has each dotted field (`"chat.id"`) equal to the value.
    #[serde(default, rename = "where", skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Value>,
}

impl SubscriptionFilter {
    /// A filter that keeps everything.
    pub fn new() -> Self {
        SubscriptionFilter::default()
    }

    /// Keeps only these event names.
    pub fn events<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.events = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Keeps only events whose data has the dotted `path` equal to `value`.
    pub fn where_eq(mut self, path: impl Into<String>, value: impl Into<Value>) -> Self {
        self.fields.insert(path.into(), value.into());
        self
    }

    /// Whether it keeps everything (and so need not be sent).
    pub fn is_empty(&self) -> bool {
        self.events.is_none() && self.fields.is_empty()
    }

    /// Refuses filters too large to check per event.
    pub fn validate(&self) -> Result<(), FilterTooLarge> {
        let terms = self.events.as_ref().map_or(0, Vec::len) + self.fields.len();
        if terms > MAX_FILTER_TERMS {
            return Err(FilterTooLarge { terms });
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
        assert!(SubscriptionFilter::new().matches("anything", None));
        assert!(!SubscriptionFilter::new().events(Vec::<String>::new()).matches("anything", None));
    }

    #[test]
    fn the_builder_sends_only_what_is_set() {
        let built = SubscriptionFilter::new().events(["message.received"]).where_eq("chat.id", "c1");
        assert_eq!(
            serde_json::to_value(&built).unwrap(),
            json!({"events": ["message.received"], "where": {"chat.id": "c1"}})
        );
        assert_eq!(serde_json::to_value(SubscriptionFilter::new()).unwrap(), json!({}));
        assert!(SubscriptionFilter::new().is_empty() && !built.is_empty());
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
