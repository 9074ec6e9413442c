//! Text ⇄ frames: the only code that turns wire text into types, and the encoders for every
//! server event.
//!
//! Decoding is strict about what it needs and lenient about the rest (unknown top-level fields are
//! ignored, `pusher:*` payloads may arrive as an object or as a JSON string holding one). A
//! [`DecodeError`] is never a reason to close a socket: the digest says to answer with
//! `pusher:error` and carry on.
//!
//! Encoding writes JSON straight into a [`FrameBuf`], so a server event becomes a complete
//! WebSocket frame in one pass and one allocation; the hub shares that frame with every subscriber.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::wsframe::{FrameBuf, Opcode};

/// A frame a client sent, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Ping,
    Pong,
    Subscribe(Subscribe),
    Unsubscribe {
        channel: String,
    },
    Signin {
        auth: String,
        user_data: String,
    },
    /// A `client-*` event; `data` is kept as the sender's raw JSON so it is relayed verbatim.
    ClientEvent {
        event: String,
        channel: String,
        data: Option<RawJson>,
    },
    /// A `plexus:*` event: a plexus extension of the protocol (typed channels), handed as is to
    /// whichever extension the server runs. pusher-js never sends these.
    Extension {
        event: String,
        data: Option<RawJson>,
    },
    /// Any other event name: ignored by the server (the digest §1).
    Unknown {
        event: String,
    },
}

/// A JSON value kept as the exact text received, compared by that text.
#[derive(Debug, Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Parses `text` as one JSON value, keeping it verbatim.
    pub fn new(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(RawJson)
    }

    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// `pusher:subscribe` data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Subscribe {
    pub channel: String,
    #[serde(default)]
    pub auth: Option<String>,
    /// Kept as the exact string received: the presence signature covers these bytes.
    #[serde(default)]
    pub channel_data: Option<String>,
    /// plexus extension: a server-side filter (see [`crate::filter`]).
    #[serde(default)]
    pub filter: Option<crate::filter::SubscriptionFilter>,
    /// plexus extension: the `position` of the last event the client saw, to resume from.
    #[serde(default)]
    pub position: Option<String>,
}

/// Why a frame could not be understood. Every variant is answered with `pusher:error`, never a close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("frame has no \"event\" field")]
    MissingEvent,
    #[error("invalid data for {event}: {reason}")]
    InvalidData { event: &'static str, reason: String },
    #[error("client event {0:?} has no channel")]
    MissingChannel(String),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    event: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct UnsubscribeData {
    channel: String,
}

#[derive(Deserialize)]
struct SigninData {
    auth: String,
    user_data: String,
}

/// Decodes `pusher:*` data that may be an object or a JSON string holding an object.
fn protocol_data<T: for<'de> Deserialize<'de>>(
    event: &'static str,
    data: Option<&RawValue>,
) -> Result<T, DecodeError> {
    let invalid = |reason: String| DecodeError::InvalidData { event, reason };
    let raw = data.ok_or_else(|| invalid("missing data".into()))?;
    let text = raw.get();
    if text.starts_with('"') {
        let inner: String = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        serde_json::from_str(&inner).map_err(|e| invalid(e.to_string()))
    } else {
        serde_json::from_str(text).map_err(|e| invalid(e.to_string()))
    }
}

/// Event names with this prefix are plexus protocol extensions ([`ClientFrame::Extension`]).
pub const EXTENSION_PREFIX: &str = "plexus:";

/// Decodes one text frame from a client.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, DecodeError> {
    let envelope: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    let event = envelope.event.ok_or(DecodeError::MissingEvent)?;
    let data = envelope.data.as_deref();
    Ok(match &*event {
        "pusher:ping" => ClientFrame::Ping,
        "pusher:pong" => ClientFrame::Pong,
        "pusher:subscribe" => ClientFrame::Subscribe(protocol_data("pusher:subscribe", data)?),
        "pusher:unsubscribe" => {
            let d: UnsubscribeData = protocol_data("pusher:unsubscribe", data)?;
            ClientFrame::Unsubscribe { channel: d.channel }
        }
        "pusher:signin" => {
            let d: SigninData = protocol_data("pusher:signin", data)?;
            ClientFrame::Signin { auth: d.auth, user_data: d.user_data }
        }
        name if name.starts_with("client-") => {
            let channel = envelope.channel.ok_or_else(|| DecodeError::MissingChannel(name.to_owned()))?;
            ClientFrame::ClientEvent {
                event: event.into_owned(),
                channel: channel.into_owned(),
                data: envelope.data.map(RawJson),
            }
        }
        name if name.starts_with(EXTENSION_PREFIX) => {
            ClientFrame::Extension { event: event.into_owned(), data: envelope.data.map(RawJson) }
        }
        _ => ClientFrame::Unknown { event: event.into_owned() },
    })
}

impl ClientFrame {
    /// The JSON a client sends for this frame (used by our clients, the load generator and tests).
    pub fn to_json(&self) -> String {
        use serde_json::json;
        let value = match self {
            ClientFrame::Ping => json!({"event": "pusher:ping", "data": {}}),
            ClientFrame::Pong => json!({"event": "pusher:pong", "data": {}}),
            ClientFrame::Subscribe(s) => {
                let mut data = json!({"channel": s.channel});
                if let Some(auth) = &s.auth {
                    data["auth"] = json!(auth);
                }
                if let Some(cd) = &s.channel_data {
                    data["channel_data"] = json!(cd);
                }
                if let Some(filter) = &s.filter {
                    data["filter"] = json!(filter);
                }
                if let Some(position) = &s.position {
                    data["position"] = json!(position);
                }
                json!({"event": "pusher:subscribe", "data": data})
            }
            ClientFrame::Unsubscribe { channel } => {
                json!({"event": "pusher:unsubscribe", "data": {"channel": channel}})
            }
            ClientFrame::Signin { auth, user_data } => {
                json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})
            }
            ClientFrame::ClientEvent { event, channel, data } => {
                return relayed_json(event, Some(channel), data.as_ref())
            }
            ClientFrame::Extension { event, data } => return relayed_json(event, None, data.as_ref()),
            ClientFrame::Unknown { event } => json!({"event": event}),
        };
        value.to_string()
    }
}

/// How an event's `data` is put on the wire.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// No `data` field.
    Absent,
    /// A JSON string holding this text (the Pusher "string data" form).
    Str(&'a str),
    /// This text is already JSON and goes on the wire verbatim (relayed client events, objects).
    Raw(&'a str),
}

/// One server → client event, encoded once into a complete WebSocket text frame.
#[derive(Debug, Clone, Copy)]
pub struct ServerEvent<'a> {
    pub event: &'a str,
    pub channel: Option<&'a str>,
    pub data: Data<'a>,
    pub user_id: Option<&'a str>,
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    serde_json::to_writer(&mut *out, s).expect("string serialisation into a Vec is infallible");
}

impl<'a> ServerEvent<'a> {
    pub fn new(event: &'a str) -> Self {
        ServerEvent { event, channel: None, data: Data::Absent, user_id: None }
    }

    pub fn channel(mut self, channel: &'a str) -> Self {
        self.channel = Some(channel);
        self
    }

    pub fn data(mut self, data: Data<'a>) -> Self {
        self.data = data;
        self
    }

    pub fn user_id(mut self, user_id: Option<&'a str>) -> Self {
        self.user_id = user_id;
        self
    }

    fn encoded_len_hint(&self) -> usize {
        let data = match self.data {
            Data::Absent => 0,
            Data::Str(s) => s.len() + s.len() / 8 + 2,
            Data::Raw(s) => s.len(),
        };
        40 + self.event.len()
            + self.channel.map_or(0, str::len)
            + data
            + self.user_id.map_or(0, |u| u.len() + 12)
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"event\":");
        push_json_str(out, self.event);
        if let Some(channel) = self.channel {
            out.extend_from_slice(b",\"channel\":");
            push_json_str(out, channel);
        }
        match self.data {
            Data::Absent => {}
            Data::Str(s) => {
                out.extend_from_slice(b",\"data\":");
                push_json_str(out, s);
            }
            Data::Raw(s) => {
                out.extend_from_slice(b",\"data\":");
                out.extend_from_slice(s.as_bytes());
            }
        }
        if let Some(user_id) = self.user_id {
            out.extend_from_slice(b",\"user_id\":");
            push_json_str(out, user_id);
        }
        out.push(b'}');
    }

    /// The event as JSON text.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        self.write_json(&mut out);
        String::from_utf8(out).expect("encoder writes only UTF-8")
    }

    /// The event as one complete WebSocket text frame, ready to share between subscribers.
    pub fn to_frame(&self) -> Bytes {
        let mut buf = FrameBuf::with_capacity(self.encoded_len_hint());
        self.write_json(buf.payload());
        buf.finish(Opcode::Text)
    }
}

/// `pusher:connection_established`, with its data double-encoded as every client expects.
pub fn connection_established(socket_id: &str, activity_timeout_secs: u64) -> Bytes {
    let inner =
        format!("{{\"socket_id\":{},\"activity_timeout\":{activity_timeout_secs}}}", json_str(socket_id));
    ServerEvent::new("pusher:connection_established").data(Data::Str(&inner)).to_frame()
}

/// `pusher:error` with an object `data` (`code` may be null, as Pusher sends for non-fatal errors).
pub fn error(code: Option<u16>, message: &str, channel: Option<&str>) -> Bytes {
    let code = code.map_or_else(|| "null".to_owned(), |c| c.to_string());
    let data = format!("{{\"code\":{code},\"message\":{}}}", json_str(message));
    let mut event = ServerEvent::new("pusher:error").data(Data::Raw(&data));
    event.channel = channel;
    event.to_frame()
}

/// `pusher:subscription_error` on a channel, which pusher-js and Laravel Echo surface on the
/// channel object (`type` is `AuthError`, `LimitReached` or `InvalidChannel`).
pub fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> Bytes {
    let data = format!("{{\"type\":{},\"error\":{},\"status\":{status}}}", json_str(kind), json_str(message));
    ServerEvent::new("pusher:subscription_error").channel(channel).data(Data::Raw(&data)).to_frame()
}

pub fn pong() -> Bytes {
    ServerEvent::new("pusher:pong").data(Data::Str("{}")).to_frame()
}

pub fn ping() -> Bytes {
    ServerEvent::new("pusher:ping").data(Data::Str("{}")).to_frame()
}

/// `pusher_internal:subscription_succeeded` for a non-presence channel.
pub fn subscription_succeeded(channel: &str) -> Bytes {
    ServerEvent::new("pusher_internal:subscription_succeeded")
        .channel(channel)
        .data(Data::Str("{}"))
        .to_frame()
}

/// `pusher_internal:subscription_succeeded` for a presence channel; `presence_json` is the
/// `{"presence":{"ids":…,"hash":…,"count":n}}` object, sent as a string.
pub fn presence_subscription_succeeded(channel: &str, presence_json: &str) -> Bytes {
    ServerEvent::new("pusher_internal:subscription_succeeded")
        .channel(channel)
        .data(Data::Str(presence_json))
        .to_frame()
}

/// `pusher_internal:member_added`; `user_info_json` is raw JSON (or `None` for no info).
pub fn member_added(channel: &str, user_id: &str, user_info_json: Option<&str>) -> Bytes {
    let inner = match user_info_json {
        Some(info) => format!("{{\"user_id\":{},\"user_info\":{info}}}", json_str(user_id)),
        None => format!("{{\"user_id\":{}}}", json_str(user_id)),
    };
    ServerEvent::new("pusher_internal:member_added").channel(channel).data(Data::Str(&inner)).to_frame()
}

pub fn member_removed(channel: &str, user_id: &str) -> Bytes {
    let inner = format!("{{\"user_id\":{}}}", json_str(user_id));
    ServerEvent::new("pusher_internal:member_removed").channel(channel).data(Data::Str(&inner)).to_frame()
}

/// `pusher:cache_miss`: a cache channel had no event for a new subscriber.
pub fn cache_miss(channel: &str) -> Bytes {
    ServerEvent::new("pusher:cache_miss").channel(channel).data(Data::Str("{}")).to_frame()
}

/// `pusher_internal:subscription_count` with `{"subscription_count":n}` as string data.
pub fn subscription_count(channel: &str, count: usize) -> Bytes {
    let inner = format!("{{\"subscription_count\":{count}}}");
    ServerEvent::new("pusher_internal:subscription_count").channel(channel).data(Data::Str(&inner)).to_frame()
}

/// `pusher:signin_success`, echoing the exact `user_data` string that was signed.
pub fn signin_success(user_data: &str) -> Bytes {
    let data = format!("{{\"user_data\":{}}}", json_str(user_data));
    ServerEvent::new("pusher:signin_success").data(Data::Raw(&data)).to_frame()
}

/// A relayed frame (client event, `plexus:*`) with its `data` written exactly as the client gave
/// it: a float keeps every digit, where a round trip through `Value` would not.
fn relayed_json(event: &str, channel: Option<&str>, data: Option<&RawJson>) -> String {
    let mut out = String::with_capacity(32 + event.len() + data.map_or(0, |d| d.get().len()));
    out.push_str("{\"event\":");
    out.push_str(&json_str(event));
    if let Some(channel) = channel {
        out.push_str(",\"channel\":");
        out.push_str(&json_str(channel));
    }
    if let Some(data) = data {
        out.push_str(",\"data\":");
        out.push_str(data.get());
    }
    out.push('}');
    out
}

/// `s` as a JSON string literal.
pub fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serialisation is infallible")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn relayed_data_is_sent_exactly_as_given() {
        // The fuzzer's finding 6 (FUZZING.md): a float lost its last digit on the way out.
        for data in ["4.6370820446571567e+92", "null", "{\"a\":[1,2.50,\"x\"]}"] {
            let raw = RawJson::new(data.to_owned()).unwrap();
            let event = ClientFrame::ClientEvent {
                event: "client-typing".into(),
                channel: "private-room".into(),
                data: Some(raw),
            };
            let text = event.to_json();
            assert_eq!(
                text,
                format!("{{\"event\":\"client-typing\",\"channel\":\"private-room\",\"data\":{data}}}")
            );
            if data != "null" {
                // A `null` data reads back as no data, like an absent field.
                assert_eq!(decode_client_frame(&text).unwrap().to_json(), text);
            }
            let extension = ClientFrame::Extension {
                event: "plexus:action".into(),
                data: Some(RawJson::new(data.to_owned()).unwrap()),
            };
            assert_eq!(extension.to_json(), format!("{{\"event\":\"plexus:action\",\"data\":{data}}}"));
        }
    }

    fn text(frame: &Bytes) -> &str {
        let header = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        std::str::from_utf8(&frame[header..]).unwrap()
    }

    #[test]
    fn connection_established_data_is_a_string() {
        let f = connection_established("123.456", 120);
        assert_eq!(
            text(&f),
            r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":120}"}"#
        );
    }

    #[test]
    fn error_data_is_an_object_and_code_may_be_null() {
        assert_eq!(
            text(&error(Some(4001), "no", None)),
            r#"{"event":"pusher:error","data":{"code":4001,"message":"no"}}"#
        );
        assert_eq!(
            text(&error(None, "bad \"sig\"", Some("private-a"))),
            r#"{"event":"pusher:error","channel":"private-a","data":{"code":null,"message":"bad \"sig\""}}"#
        );
    }

    #[test]
    fn golden_v14_pong_and_subscription_succeeded() {
        assert_eq!(text(&pong()), r#"{"event":"pusher:pong","data":"{}"}"#);
        assert_eq!(
            text(&subscription_succeeded("my-channel")),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"my-channel","data":"{}"}"#
        );
    }

    #[test]
    fn signin_cache_and_count_events_have_the_documented_shapes() {
        assert_eq!(
            text(&signin_success(r#"{"id":"1"}"#)),
            r#"{"event":"pusher:signin_success","data":{"user_data":"{\"id\":\"1\"}"}}"#
        );
        assert_eq!(
            text(&cache_miss("cache-a")),
            r#"{"event":"pusher:cache_miss","channel":"cache-a","data":"{}"}"#
        );
        assert_eq!(
            text(&subscription_count("a", 42)),
            r#"{"event":"pusher_internal:subscription_count","channel":"a","data":"{\"subscription_count\":42}"}"#
        );
    }

    #[test]
    fn member_events_are_double_encoded() {
        assert_eq!(
            text(&member_added("presence-room", "42", Some(r#"{"name":"Ann"}"#))),
            r#"{"event":"pusher_internal:member_added","channel":"presence-room","data":"{\"user_id\":\"42\",\"user_info\":{\"name\":\"Ann\"}}"}"#
        );
        assert_eq!(
            text(&member_removed("presence-room", "42")),
            r#"{"event":"pusher_internal:member_removed","channel":"presence-room","data":"{\"user_id\":\"42\"}"}"#
        );
    }

    #[test]
    fn relayed_client_event_keeps_raw_data_and_adds_user_id() {
        let e = ServerEvent::new("client-typing")
            .channel("presence-chat")
            .data(Data::Raw(r#"{"on":true}"#))
            .user_id(Some("42"));
        assert_eq!(
            e.to_json(),
            r#"{"event":"client-typing","channel":"presence-chat","data":{"on":true},"user_id":"42"}"#
        );
    }

    #[test]
    fn decodes_subscribe_with_object_or_string_data() {
        let obj = r#"{"event":"pusher:subscribe","data":{"channel":"presence-room","auth":"k:s","channel_data":"{\"user_id\":\"42\"}"}}"#;
        let s = r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\",\"auth\":\"\"}"}"#;
        assert_eq!(
            decode_client_frame(obj).unwrap(),
            ClientFrame::Subscribe(Subscribe {
                channel: "presence-room".into(),
                auth: Some("k:s".into()),
                channel_data: Some(r#"{"user_id":"42"}"#.into()),
                filter: None,
                position: None,
            })
        );
        assert_eq!(
            decode_client_frame(s).unwrap(),
            ClientFrame::Subscribe(Subscribe {
                channel: "a".into(),
                auth: Some(String::new()),
                channel_data: None,
                filter: None,
                position: None,
            })
        );
    }

    #[test]
    fn client_event_data_is_kept_verbatim() {
        let f = decode_client_frame(
            r#"{"event":"client-x","channel":"private-a","data":{"b": [1, 2]}, "extra": 1}"#,
        )
        .unwrap();
        match f {
            ClientFrame::ClientEvent { event, channel, data } => {
                assert_eq!((event.as_str(), channel.as_str()), ("client-x", "private-a"));
                assert_eq!(data.unwrap().get(), r#"{"b": [1, 2]}"#);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn errors_are_reported_not_panicked() {
        assert!(matches!(decode_client_frame("not json"), Err(DecodeError::InvalidJson(_))));
        assert!(matches!(decode_client_frame("[1]"), Err(DecodeError::InvalidJson(_))));
        assert_eq!(decode_client_frame(r#"{"data":{}}"#), Err(DecodeError::MissingEvent));
        assert!(matches!(
            decode_client_frame(r#"{"event":"pusher:subscribe","data":{}}"#),
            Err(DecodeError::InvalidData { event: "pusher:subscribe", .. })
        ));
        assert_eq!(
            decode_client_frame(r#"{"event":"client-a","data":{}}"#),
            Err(DecodeError::MissingChannel("client-a".into()))
        );
        assert_eq!(
            decode_client_frame(r#"{"event":"whatever"}"#),
            Ok(ClientFrame::Unknown { event: "whatever".into() })
        );
    }

    #[test]
    fn plexus_events_are_extensions_with_their_data_verbatim() {
        let frame = decode_client_frame(r#"{"event":"plexus:action","data":{"ref":"1", "x":[1]}}"#).unwrap();
        match frame {
            ClientFrame::Extension { event, data } => {
                assert_eq!(event, "plexus:action");
                assert_eq!(data.unwrap().get(), r#"{"ref":"1", "x":[1]}"#);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            decode_client_frame(r#"{"event":"plexus:open"}"#),
            Ok(ClientFrame::Extension { event: "plexus:open".into(), data: None })
        );
    }

    fn arb_client_frame() -> impl Strategy<Value = ClientFrame> {
        let s = ".{0,40}";
        prop_oneof![
            Just(ClientFrame::Ping),
            Just(ClientFrame::Pong),
            (s, proptest::option::of(s), proptest::option::of(s)).prop_map(
                |(channel, auth, channel_data)| {
                    ClientFrame::Subscribe(Subscribe {
                        channel,
                        auth,
                        channel_data,
                        filter: None,
                        position: None,
                    })
                }
            ),
            s.prop_map(|channel| ClientFrame::Unsubscribe { channel }),
            (s, s).prop_map(|(auth, user_data)| ClientFrame::Signin { auth, user_data }),
            ("client-[a-z]{0,10}", s, proptest::option::of(any::<i64>())).prop_map(|(event, channel, n)| {
                ClientFrame::ClientEvent {
                    event,
                    channel,
                    data: n.map(|n| RawJson::new(format!("{{\"n\":{n}}}")).unwrap()),
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(frame in arb_client_frame()) {
            let decoded = decode_client_frame(&frame.to_json()).unwrap();
            // RawValue compares by text; our encoder re-serialises data, so compare as values.
            match (&decoded, &frame) {
                (ClientFrame::ClientEvent { event: e1, channel: c1, data: d1 }, ClientFrame::ClientEvent { event: e2, channel: c2, data: d2 }) => {
                    prop_assert_eq!(e1, e2);
                    prop_assert_eq!(c1, c2);
                    let v = |d: &Option<RawJson>| d.as_ref().map(|r| serde_json::from_str::<serde_json::Value>(r.get()).unwrap());
                    prop_assert_eq!(v(d1), v(d2));
                }
                _ => prop_assert_eq!(decoded, frame),
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = decode_client_frame(&text);
        }

        #[test]
        fn json_shaped_garbage_never_panics(event in ".{0,20}", data in ".{0,40}") {
            let _ = decode_client_frame(&format!(r#"{{"event":{},"data":{}}}"#, json_str(&event), data));
            let _ = decode_client_frame(&format!(r#"{{"event":{},"channel":"x","data":{}}}"#, json_str(&event), json_str(&data)));
        }

        #[test]
        fn server_events_are_valid_json_with_the_fields_given(event in ".{0,30}", channel in ".{0,30}", data in ".{0,60}") {
            let json = ServerEvent::new(&event).channel(&channel).data(Data::Str(&data)).to_json();
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(v["event"].as_str().unwrap(), event.as_str());
            prop_assert_eq!(v["channel"].as_str().unwrap(), channel.as_str());
            prop_assert_eq!(v["data"].as_str().unwrap(), data.as_str());
        }
    }
}
