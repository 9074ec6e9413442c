//! Server-sent events: the `text/event-stream` form of the frames a WebSocket client gets, for
//! readers that cannot hold a WebSocket (`EventSource`, curl, plain-HTTP proxies).
//!
//! One event frame becomes one SSE event: `id:` its history position when it has one (so a
//! reader's `Last-Event-ID` resumes it), `event:` the Pusher event name, `data:` the Pusher
//! message JSON. Like [`crate::deflate::compress_frame`], [`event_from_frame`] is meant to run
//! once per event for every SSE reader of it, never once per reader.

use bytes::Bytes;

use crate::wsframe;

/// The comment line a stream sends while idle, so proxies keep it open.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// The SSE event for one server frame (a complete WebSocket text frame as
/// [`crate::codec`] builds it). A frame whose payload names no event goes out as SSE's default
/// event type, `message`, rather than vanish.
pub fn event_from_frame(frame: &[u8]) -> Bytes {
    event_from_payload(wsframe::server_frame_payload_slice(frame))
}

/// [`event_from_frame`] for the frame's payload: the Pusher message JSON.
pub fn event_from_payload(payload: &[u8]) -> Bytes {
    #[derive(serde::Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        event: std::borrow::Cow<'a, str>,
        #[serde(default, borrow)]
        position: Option<std::borrow::Cow<'a, str>>,
    }
    let named: Option<Named<'_>> = serde_json::from_slice(payload).ok();
    let name = named.as_ref().map_or("message", |n| &n.event);
    let mut out = Vec::with_capacity(payload.len() + name.len() + 48);
    if let Some(position) = named.as_ref().and_then(|n| n.position.as_deref()) {
        push_field(&mut out, b"id: ", position);
    }
    push_field(&mut out, b"event: ", name);
    // One `data:` line, unless a client's raw JSON data held line breaks between its tokens:
    // then several, which an SSE reader joins back with line feeds.
    for line in payload.split(|b| *b == b'\n' || *b == b'\r').filter(|line| !line.is_empty()) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
}

/// The last event of a stream the server ends: `plexus:closed` with the close code and reason a
/// WebSocket client would get.
pub fn closed(code: u16, message: &str) -> Bytes {
    let data = serde_json::json!({ "code": code, "message": message });
    Bytes::from(format!("event: plexus:closed\ndata: {data}\n\n"))
}

/// Writes `value` as the rest of one field line. A value that carried a line break or another
/// control character into here would end the field and forge the next one, so they are
/// replaced (names are checked where they enter; this is the second fence).
fn push_field(out: &mut Vec<u8>, field: &[u8], value: &str) {
    out.extend_from_slice(field);
    for c in value.chars() {
        let c = if c.is_control() { char::REPLACEMENT_CHARACTER } else { c };
        let mut utf8 = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Data, ServerEvent};

    fn text(bytes: &Bytes) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn an_event_frame_becomes_one_sse_event_with_its_position_as_id() {
        let frame = ServerEvent::new("greet").channel("room").data(Data::Str("{\"a\":1}")).to_frame();
        assert_eq!(
            text(&event_from_frame(&frame)),
            "event: greet\ndata: {\"event\":\"greet\",\"channel\":\"room\",\"data\":\"{\\\"a\\\":1}\"}\n\n"
        );
        let stamped = br#"{"event":"e","channel":"h","data":"x","position":"7:3"}"#;
        assert!(text(&event_from_payload(stamped)).starts_with("id: 7:3\nevent: e\ndata: "));
    }

    #[test]
    fn control_characters_in_a_name_never_end_a_field_and_line_breaks_split_data_lines() {
        let forged = br#"{"event":"evil\nid: 999\n\nevent: x","data":{"a":
1}}"#;
        let sse = event_from_payload(forged);
        let lines: Vec<&str> = text(&sse).split('\n').collect();
        assert_eq!(lines[0], "event: evil\u{fffd}id: 999\u{fffd}\u{fffd}event: x");
        assert_eq!(
            &lines[1..],
            ["data: {\"event\":\"evil\\nid: 999\\n\\nevent: x\",\"data\":{\"a\":", "data: 1}}", "", ""]
        );
    }

    #[test]
    fn a_payload_without_a_name_is_a_message_event_and_closed_is_valid_json() {
        assert_eq!(text(&event_from_payload(b"[1]")), "event: message\ndata: [1]\n\n");
        let closed = closed(4100, "too \"slow\"");
        let data = text(&closed).strip_prefix("event: plexus:closed\ndata: ").unwrap().trim_end();
        let value: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(value, serde_json::json!({"code": 4100, "message": "too \"slow\""}));
    }
}
