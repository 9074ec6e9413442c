//! Client text into the protocol's decoders: `decode_client_frame`, `ChannelName::parse` and
//! subscription filters, as a socket's text frames reach them.
//!
//! Invariants:
//! - nothing panics, on any text;
//! - a decoded frame encodes to text that decodes to the same frame (`decode(encode(x)) == x`),
//!   and so does every frame built field by field;
//! - an accepted channel name has at most 200 characters from the Pusher set (`#` only in the
//!   `#server-to-user-` prefix), and its kind is the one its anchored prefix gives;
//! - a filter matches an event built to satisfy it, and an empty filter matches everything.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use plexus_protocol::channel::SERVER_TO_USER_PREFIX;
use plexus_protocol::codec::{decode_client_frame, json_str, ClientFrame, RawJson, Subscribe};
use plexus_protocol::filter::SubscriptionFilter;
use plexus_protocol::limits::MAX_CHANNEL_NAME_LEN;
use plexus_protocol::{ChannelError, ChannelKind, ChannelName};
use serde_json::Value;

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any text, as a client may send it.
    Text(String),
    /// An envelope with a chosen event name and `data` text (as is, or as a JSON string holding
    /// it, the two forms `pusher:*` data may take), so decoding reaches the data decoders.
    Envelope { event: EventName, channel: Option<String>, data: String, as_string: bool },
    /// A frame built field by field, encoded, decoded.
    Frame(FrameSpec),
    /// A channel name on its own.
    Channel(String),
}

#[derive(Arbitrary, Debug)]
enum EventName {
    Subscribe,
    Unsubscribe,
    Signin,
    Ping,
    Client(String),
    Extension(String),
    Other(String),
}

impl EventName {
    fn text(&self) -> String {
        match self {
            EventName::Subscribe => "pusher:subscribe".into(),
            EventName::Unsubscribe => "pusher:unsubscribe".into(),
            EventName::Signin => "pusher:signin".into(),
            EventName::Ping => "pusher:ping".into(),
            EventName::Client(s) => format!("client-{s}"),
            EventName::Extension(s) => format!("plexus:{s}"),
            EventName::Other(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum FrameSpec {
    Ping,
    Pong,
    Subscribe {
        channel: String,
        auth: Option<String>,
        channel_data: Option<String>,
        filter: Option<FilterSpec>,
        position: Option<String>,
    },
    Unsubscribe(String),
    Signin(String, String),
    ClientEvent {
        event: String,
        channel: String,
        data: Option<JsonSpec>,
    },
    Extension {
        event: String,
        data: Option<JsonSpec>,
    },
    Unknown(String),
}

#[derive(Arbitrary, Debug)]
struct FilterSpec {
    events: Option<Vec<String>>,
    fields: Vec<(String, JsonSpec)>,
}

/// A JSON value of bounded depth (the depth comes from the input's length).
#[derive(Arbitrary, Debug)]
enum JsonSpec {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
    Array(Vec<JsonSpec>),
    Object(Vec<(String, JsonSpec)>),
}

impl JsonSpec {
    fn value(&self) -> Value {
        match self {
            JsonSpec::Null => Value::Null,
            JsonSpec::Bool(b) => Value::Bool(*b),
            JsonSpec::Int(n) => Value::from(*n),
            JsonSpec::Uint(n) => Value::from(*n),
            // JSON has no NaN or infinity; serde_json would write them as null.
            JsonSpec::Float(f) if f.is_finite() => Value::from(*f),
            JsonSpec::Float(_) => Value::Null,
            JsonSpec::Str(s) => Value::from(s.as_str()),
            JsonSpec::Array(items) => Value::Array(items.iter().map(JsonSpec::value).collect()),
            JsonSpec::Object(fields) => {
                Value::Object(fields.iter().map(|(k, v)| (k.clone(), v.value())).collect())
            }
        }
    }
}

impl FrameSpec {
    /// The frame, or `None` where the spec names something no decoder produces (a client event
    /// whose name lacks `client-`, an unknown event with a known name).
    fn frame(&self) -> Option<ClientFrame> {
        let raw =
            |data: &Option<JsonSpec>| data.as_ref().map(|d| RawJson::new(d.value().to_string()).unwrap());
        Some(match self {
            FrameSpec::Ping => ClientFrame::Ping,
            FrameSpec::Pong => ClientFrame::Pong,
            FrameSpec::Subscribe { channel, auth, channel_data, filter, position } => {
                ClientFrame::Subscribe(Subscribe {
                    channel: channel.clone(),
                    auth: auth.clone(),
                    channel_data: channel_data.clone(),
                    filter: filter.as_ref().map(|f| SubscriptionFilter {
                        events: f.events.clone(),
                        fields: f.fields.iter().map(|(k, v)| (k.clone(), v.value())).collect(),
                    }),
                    position: position.clone(),
                })
            }
            FrameSpec::Unsubscribe(channel) => ClientFrame::Unsubscribe { channel: channel.clone() },
            FrameSpec::Signin(auth, user_data) => {
                ClientFrame::Signin { auth: auth.clone(), user_data: user_data.clone() }
            }
            FrameSpec::ClientEvent { event, channel, data } => ClientFrame::ClientEvent {
                event: format!("client-{event}"),
                channel: channel.clone(),
                data: raw(data),
            },
            FrameSpec::Extension { event, data } => {
                ClientFrame::Extension { event: format!("plexus:{event}"), data: raw(data) }
            }
            FrameSpec::Unknown(event) => {
                let known =
                    ["pusher:ping", "pusher:pong", "pusher:subscribe", "pusher:unsubscribe", "pusher:signin"];
                if known.contains(&event.as_str())
                    || event.starts_with("client-")
                    || event.starts_with("plexus:")
                {
                    return None;
                }
                ClientFrame::Unknown { event: event.clone() }
            }
        })
    }
}

/// The frame as it comes back from the wire: relayed `data` is written verbatim by the encoder
/// (so compared as text: a number serde_json cannot hold, like `666e333`, must pass through
/// untouched), and a `data` of `null` reads back as no data, since a JSON `null` is how an
/// absent optional field is written.
#[derive(Debug, PartialEq)]
enum Normal {
    Frame(ClientFrame),
    Relayed { event: String, channel: Option<String>, data: Option<String> },
}

fn normal(frame: ClientFrame) -> Normal {
    let value = |data: Option<RawJson>| data.map(|d| d.get().to_owned()).filter(|text| text != "null");
    match frame {
        ClientFrame::ClientEvent { event, channel, data } => {
            Normal::Relayed { event, channel: Some(channel), data: value(data) }
        }
        ClientFrame::Extension { event, data } => Normal::Relayed { event, channel: None, data: value(data) },
        other => Normal::Frame(other),
    }
}

/// The deepest nesting of arrays and objects in JSON text.
fn nesting(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for c in text.chars() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_string = false,
            (true, false, _) => {}
            (false, _, '"') => in_string = true,
            (false, _, '[' | '{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn round_trip(frame: ClientFrame) {
    let text = frame.to_json();
    let decoded = match decode_client_frame(&text) {
        Ok(decoded) => decoded,
        // The decoder bounds nesting (serde_json's 128 levels): deeper frames are refused with a
        // reason, which is the promise for them.
        Err(e) if nesting(&text) > 127 && e.to_string().contains("recursion limit") => return,
        Err(e) => panic!("{text:?} of {frame:?} does not decode: {e}"),
    };
    if let ClientFrame::Subscribe(subscribe) = &decoded {
        check_subscribe(subscribe);
    }
    match (normal(decoded), normal(frame)) {
        (
            Normal::Relayed { event: e1, channel: c1, data: d1 },
            Normal::Relayed { event: e2, channel: c2, data: d2 },
        ) => {
            assert_eq!((e1, c1), (e2, c2), "{text:?} decodes to another frame");
            assert_eq!(d1, d2, "{text:?} decodes to other data");
        }
        (Normal::Frame(ClientFrame::Subscribe(mut got)), Normal::Frame(ClientFrame::Subscribe(mut sent))) => {
            // Filter values are parsed into `Value`, so compared with `same_json`.
            let got_fields = got.filter.as_mut().map(|f| std::mem::take(&mut f.fields));
            let sent_fields = sent.filter.as_mut().map(|f| std::mem::take(&mut f.fields));
            assert_eq!(got, sent, "{text:?} decodes to another subscription");
            let object = |fields: Option<std::collections::BTreeMap<String, Value>>| {
                fields.map(|f| Value::Object(f.into_iter().collect()))
            };
            let (got_fields, sent_fields) = (object(got_fields), object(sent_fields));
            let same = match (&got_fields, &sent_fields) {
                (Some(a), Some(b)) => same_json(a, b),
                (a, b) => a == b,
            };
            assert!(same, "{text:?} decodes to another filter: {got_fields:?}, not {sent_fields:?}");
        }
        (decoded, frame) => assert_eq!(decoded, frame, "{text:?} decodes to another frame"),
    }
}

/// JSON equality where floats may differ in the last bits: filter values are parsed into a
/// `serde_json::Value`, and serde_json's default float parser (without its `float_roundtrip`
/// feature) can be one ULP off on the way back (see FUZZING.md).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            // A few units in the last place, counted on the bits so subnormals count too.
            x == y || (x.is_sign_negative() == y.is_sign_negative() && x.to_bits().abs_diff(y.to_bits()) <= 4)
        }
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len() && xs.iter().all(|(k, x)| ys.get(k).is_some_and(|y| same_json(x, y)))
        }
        _ => a == b,
    }
}

fn check_channel(name: &str) {
    match ChannelName::parse(name) {
        Ok(channel) => {
            assert_eq!(channel.as_str(), name);
            assert!(name.chars().count() <= MAX_CHANNEL_NAME_LEN);
            let body = name.strip_prefix(SERVER_TO_USER_PREFIX).unwrap_or(name);
            assert!(!body.is_empty());
            assert!(
                body.chars().all(|c| c.is_ascii_alphanumeric() || "_-=@,.;".contains(c)),
                "{name:?} accepted with a character outside the set"
            );
            let kind = if name.starts_with("private-encrypted-") {
                ChannelKind::Encrypted
            } else if name.starts_with("private-") {
                ChannelKind::Private
            } else if name.starts_with("presence-") {
                ChannelKind::Presence
            } else if name.starts_with(SERVER_TO_USER_PREFIX) {
                ChannelKind::ServerToUser
            } else {
                ChannelKind::Public
            };
            assert_eq!(channel.kind(), kind, "{name:?}");
            assert_eq!(channel.server_to_user_id().is_some(), kind == ChannelKind::ServerToUser);
        }
        Err(ChannelError::TooLong { len, max }) => {
            assert_eq!((len, max), (name.chars().count(), MAX_CHANNEL_NAME_LEN));
            assert!(len > max);
        }
        Err(ChannelError::Empty) => assert!(name.is_empty() || name == SERVER_TO_USER_PREFIX),
        Err(ChannelError::InvalidCharacter(c)) => assert!(name.contains(c)),
    }
}

/// What the server does with a subscription: the channel name, and the filter's checks.
fn check_subscribe(subscribe: &Subscribe) {
    check_channel(&subscribe.channel);
    let Some(filter) = &subscribe.filter else { return };
    let _ = filter.validate();
    if filter.is_empty() {
        assert!(filter.matches("any", None));
    }
    // An event named as the filter asks, whose data holds every wanted value at its path, passes
    // (unless two paths collide, such as `a` and `a.b`).
    let event = match &filter.events {
        Some(names) => match names.first() {
            Some(name) => name.as_str(),
            None => return,
        },
        None => "any",
    };
    let mut data = Value::Object(Default::default());
    for (path, wanted) in &filter.fields {
        if !insert_at(&mut data, path, wanted.clone()) {
            return;
        }
    }
    // A later path may have gone through an earlier one's object value (`""` then `"."`).
    let at = |path: &str| path.split('.').try_fold(&data, |v, key| v.get(key));
    if filter.fields.iter().any(|(path, wanted)| at(path) != Some(wanted)) {
        return;
    }
    assert!(filter.matches(event, Some(&data)), "{filter:?} refuses {event:?} with {data}");
}

/// Puts `value` at the dotted `path`; false if something else is already on the way.
fn insert_at(data: &mut Value, path: &str, value: Value) -> bool {
    let mut current = data;
    let mut keys = path.split('.').peekable();
    while let Some(key) = keys.next() {
        let Value::Object(map) = current else { return false };
        if keys.peek().is_none() {
            if map.contains_key(key) {
                return false;
            }
            map.insert(key.to_owned(), value);
            return true;
        }
        current = map.entry(key.to_owned()).or_insert_with(|| Value::Object(Default::default()));
    }
    unreachable!("split yields at least one key")
}

fn check_text(text: &str) {
    if let Ok(frame) = decode_client_frame(text) {
        if let ClientFrame::Subscribe(subscribe) = &frame {
            check_subscribe(subscribe);
        }
        round_trip(frame);
    }
    // The same text where the server meets names and filters on their own.
    let _ = serde_json::from_str::<SubscriptionFilter>(text);
    let _ = ChannelName::parse(text);
}

fuzz_target!(|input: Input| {
    match input {
        Input::Text(text) => check_text(&text),
        Input::Envelope { event, channel, data, as_string } => {
            let data = if as_string { json_str(&data) } else { data };
            let mut text = format!("{{\"event\":{}", json_str(&event.text()));
            if let Some(channel) = channel {
                text.push_str(&format!(",\"channel\":{}", json_str(&channel)));
            }
            text.push_str(&format!(",\"data\":{data}}}"));
            check_text(&text);
        }
        Input::Frame(spec) => {
            if let Some(frame) = spec.frame() {
                round_trip(frame);
            }
        }
        Input::Channel(name) => check_channel(&name),
    }
});
