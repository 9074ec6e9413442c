//! The typed-channel envelope on the wire (`docs/typed-channels.md`): decoding the client's
//! `plexus:*` requests and encoding every frame the server sends for typed channels.
//!
//! Requests carry a client-chosen `ref`; the `plexus:reply` to a request carries the same `ref`
//! and either `ok: true` with an optional `output`, or `ok: false` with an `error`. Events the
//! server pushes (`plexus:event`, `plexus:closed`) carry no ref.

use bytes::Bytes;
use plexus_protocol::codec::{Data, ServerEvent};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{codes, ActionError};

pub const OPEN: &str = "plexus:open";
pub const ACTION: &str = "plexus:action";
pub const CLOSE: &str = "plexus:close";
pub const REPLY: &str = "plexus:reply";
pub const EVENT: &str = "plexus:event";
pub const CLOSED: &str = "plexus:closed";

/// A request from the client, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `plexus:open {ref, channel, params?}`: open a typed channel with opening data.
    Open { reference: Value, channel: String, params: Map<String, Value> },
    /// `plexus:action {ref, channel, action?, input?}`: call an action (no action: `on_message`).
    Action { reference: Value, channel: String, action: Option<String>, input: Value },
    /// `plexus:close {ref, channel}`: close a typed channel.
    Close { reference: Value, channel: String },
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "ref")]
    reference: Value,
    channel: String,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    params: Option<Map<String, Value>>,
}

/// Why a request could not be decoded: the reply goes to `reference` (null when the frame did
/// not carry a usable one).
#[derive(Debug, Clone, PartialEq)]
pub struct Undecodable {
    pub reference: Value,
    pub error: ActionError,
}

/// Decodes the `data` of a `plexus:*` frame named `event`.
pub fn decode(event: &str, data: Option<&str>) -> Result<Request, Undecodable> {
    let bad = |reference: Value, message: String| Undecodable {
        reference,
        error: ActionError::new(codes::BAD_REQUEST, message),
    };
    let Some(text) = data else {
        return Err(bad(Value::Null, format!("{event} needs a data object")));
    };
    let value: Value = serde_json::from_str(text).map_err(|e| bad(Value::Null, e.to_string()))?;
    if !value.is_object() {
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        };
        return Err(bad(
            Value::Null,
            format!("{event}: data must be an object ({{\"ref\", \"channel\", …}}), not {kind}"),
        ));
    }
    let reference = value.get("ref").cloned().unwrap_or(Value::Null);
    if !matches!(reference, Value::String(_) | Value::Number(_)) {
        return Err(bad(Value::Null, format!("{event} needs a \"ref\" (string or number)")));
    }
    let raw: Raw =
        serde_json::from_value(value).map_err(|e| bad(reference.clone(), format!("{event}: {e}")))?;
    match event {
        OPEN => Ok(Request::Open {
            reference: raw.reference,
            channel: raw.channel,
            params: raw.params.unwrap_or_default(),
        }),
        ACTION => Ok(Request::Action {
            reference: raw.reference,
            channel: raw.channel,
            action: raw.action,
            input: raw.input,
        }),
        CLOSE => Ok(Request::Close { reference: raw.reference, channel: raw.channel }),
        other => Err(bad(raw.reference, format!("unknown plexus event {other:?}"))),
    }
}

fn frame(event: &str, data: &Value) -> Bytes {
    ServerEvent::new(event).data(Data::Raw(&data.to_string())).to_frame()
}

/// `plexus:reply` with `ok: true`; `output` is left out when it is null (a unit result).
pub fn reply_ok(reference: &Value, output: Value, channel_id: Option<&str>) -> Bytes {
    let mut data = json!({"ref": reference, "ok": true});
    if !output.is_null() {
        data["output"] = output;
    }
    if let Some(id) = channel_id {
        data["id"] = json!(id);
    }
    frame(REPLY, &data)
}

/// `plexus:reply` with `ok: false` and the error.
pub fn reply_error(reference: &Value, error: &ActionError) -> Bytes {
    frame(REPLY, &json!({"ref": reference, "ok": false, "error": error}))
}

/// `plexus:event` sent to one open channel (`ctx.send`).
pub fn direct_event(channel: &str, id: &str, data: Value) -> Bytes {
    frame(EVENT, &json!({"channel": channel, "id": id, "data": data}))
}

/// `plexus:event` for everyone subscribed to `topic` on `channel`.
pub fn topic_event(channel: &str, topic: &str, data: Value) -> Bytes {
    frame(EVENT, &json!({"channel": channel, "topic": topic, "data": data}))
}

/// `plexus:closed`: the server closed the channel.
pub fn closed(channel: &str, id: &str) -> Bytes {
    frame(CLOSED, &json!({"channel": channel, "id": id}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_request_kind() {
        let open = decode(OPEN, Some(r#"{"ref":"1","channel":"chat","params":{"room":"a"}}"#)).unwrap();
        assert!(matches!(open, Request::Open { ref params, .. } if params["room"] == "a"));
        let action =
            decode(ACTION, Some(r#"{"ref":2,"channel":"chat","action":"send","input":{"text":"hi"}}"#))
                .unwrap();
        assert_eq!(
            action,
            Request::Action {
                reference: json!(2),
                channel: "chat".into(),
                action: Some("send".into()),
                input: json!({"text": "hi"}),
            }
        );
        assert!(matches!(decode(CLOSE, Some(r#"{"ref":"3","channel":"chat"}"#)), Ok(Request::Close { .. })));
    }

    #[test]
    fn malformed_requests_name_the_problem_and_keep_the_ref() {
        let no_ref = decode(ACTION, Some(r#"{"channel":"chat"}"#)).unwrap_err();
        assert_eq!((no_ref.reference, no_ref.error.code()), (Value::Null, codes::BAD_REQUEST));
        let no_channel = decode(ACTION, Some(r#"{"ref":"9"}"#)).unwrap_err();
        assert_eq!(no_channel.reference, json!("9"));
        assert!(no_channel.error.message().contains("channel"), "{}", no_channel.error);
        assert!(decode(ACTION, None).is_err());
        assert!(decode(ACTION, Some("[1,2]")).is_err());
        assert!(decode("plexus:nope", Some(r#"{"ref":"1","channel":"c"}"#)).is_err());
    }

    #[test]
    fn unit_output_is_left_out_of_the_reply() {
        let bytes = reply_ok(&json!("1"), Value::Null, None);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.ends_with(r#"{"event":"plexus:reply","data":{"ok":true,"ref":"1"}}"#), "{text}");
    }
}
