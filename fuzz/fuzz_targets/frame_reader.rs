//! Client WebSocket frames into `ClientFrameReader`, the first code that touches a socket's bytes.
//!
//! The input is a list of frames described structurally (opcode, FIN, RSV bits, mask, how the
//! length is written and whether it tells the truth), so libFuzzer spends its time on frame
//! sequences rather than on rediscovering the header layout. The bytes are parsed twice: all at
//! once, and cut at arbitrary points across `next_message` calls, as a socket delivers them.
//!
//! Invariants:
//! - every `Text` (and close reason) is UTF-8, no data message exceeds `max_message`, no ping
//!   carries more than 125 bytes;
//! - the cut stream yields exactly the messages, error and leftover bytes of the whole stream;
//! - when every frame's length is truthful, the messages and the error are those RFC 6455 gives
//!   ([`model`]).

#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use plexus_protocol::wsframe::{ClientFrameReader, ClientMessage, FrameError};

#[derive(Arbitrary, Debug)]
struct Input {
    max_message: MaxMessage,
    frames: Vec<Frame>,
    /// Where the byte stream is cut between reads (taken modulo the stream's length).
    cuts: Vec<u32>,
    /// Bytes after the last frame: a partial frame, or garbage.
    tail: Vec<u8>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum MaxMessage {
    Small(u8),
    Medium(u16),
    /// The limits of the code: limits near the header's length boundaries and the largest a
    /// config file can give (`max_frame_bytes` is a TOML integer, so at most `i64::MAX`).
    Boundary(u8),
    Any(u64),
}

const BOUNDARY_LIMITS: [u64; 10] = [0, 1, 125, 126, 127, 65_535, 65_536, 64 * 1024, 1 << 20, i64::MAX as u64];

impl MaxMessage {
    fn get(self) -> usize {
        let max = match self {
            MaxMessage::Small(n) => n as u64,
            MaxMessage::Medium(n) => n as u64,
            MaxMessage::Boundary(i) => BOUNDARY_LIMITS[i as usize % BOUNDARY_LIMITS.len()],
            MaxMessage::Any(n) => n,
        };
        usize::try_from(max).unwrap_or(usize::MAX)
    }
}

#[derive(Arbitrary, Debug)]
enum Frame {
    /// One frame, every field chosen.
    Raw(RawFrame),
    /// A text message cut into a first frame and continuations at byte offsets (so also inside a
    /// character), optionally with a ping between the parts.
    Fragmented { text: String, cuts: Vec<u8>, ping_between: bool, mask: [u8; 4] },
}

#[derive(Arbitrary, Debug)]
struct RawFrame {
    fin: bool,
    /// RSV1–3 are set only when the low nibble is all ones, so most frames are clean.
    rsv: u8,
    opcode: Op,
    unmasked: bool,
    mask: [u8; 4],
    length: Length,
    payload: Payload,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
    Other(u8),
}

impl Op {
    fn code(self) -> u8 {
        match self {
            Op::Continuation => 0x0,
            Op::Text => 0x1,
            Op::Binary => 0x2,
            Op::Close => 0x8,
            Op::Ping => 0x9,
            Op::Pong => 0xA,
            Op::Other(c) => c & 0x0f,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Payload {
    Bytes(Vec<u8>),
    Text(String),
    /// A close payload: status code, then a reason.
    Close(u16, String),
}

impl Payload {
    fn into_bytes(self) -> Vec<u8> {
        match self {
            Payload::Bytes(b) => b,
            Payload::Text(s) => s.into_bytes(),
            Payload::Close(code, reason) => {
                let mut out = code.to_be_bytes().to_vec();
                out.extend_from_slice(reason.as_bytes());
                out
            }
        }
    }
}

/// How the payload length is written.
#[derive(Arbitrary, Debug)]
enum Length {
    /// The shortest form, truthful.
    Minimal,
    /// Truthful, in the 16-bit extended field even when a shorter form exists.
    Wide16,
    /// Truthful, in the 64-bit extended field.
    Wide64,
    /// A claimed length that may disagree with the payload bytes that follow.
    Claim { value: Claim, form: u8 },
}

#[derive(Arbitrary, Debug)]
enum Claim {
    Boundary(u8),
    Off(i16),
    Any(u64),
}

const BOUNDARY_LENGTHS: [u64; 12] =
    [0, 1, 125, 126, 127, 65_535, 65_536, 1 << 32, (1 << 63) - 1, 1 << 63, u64::MAX - 1, u64::MAX];

/// A frame's bytes and whether its length field is truthful.
fn encode(frame: Frame, out: &mut Vec<u8>) -> bool {
    match frame {
        Frame::Raw(raw) => encode_raw(raw, out),
        Frame::Fragmented { text, cuts, ping_between, mask } => {
            let bytes = text.as_bytes();
            let mut offsets: Vec<usize> = cuts.iter().map(|c| *c as usize % (bytes.len() + 1)).collect();
            offsets.sort_unstable();
            offsets.dedup();
            let mut start = 0;
            let mut pieces = Vec::new();
            for end in offsets.into_iter().chain([bytes.len()]) {
                if end > start || pieces.is_empty() {
                    pieces.push(&bytes[start..end]);
                    start = end;
                }
            }
            let last = pieces.len() - 1;
            for (i, piece) in pieces.into_iter().enumerate() {
                let opcode = if i == 0 { 0x1 } else { 0x0 };
                write_frame(out, i == last, 0, opcode, Some(mask), piece.len() as u64, 0, piece);
                if ping_between && i != last {
                    write_frame(out, true, 0, 0x9, Some(mask), 1, 0, b"p");
                }
            }
            true
        }
    }
}

fn encode_raw(raw: RawFrame, out: &mut Vec<u8>) -> bool {
    let payload = raw.payload.into_bytes();
    let actual = payload.len() as u64;
    let (claimed, form) = match raw.length {
        Length::Minimal => (actual, 0),
        Length::Wide16 if actual <= u16::MAX as u64 => (actual, 1),
        Length::Wide16 | Length::Wide64 => (actual, 2),
        Length::Claim { value, form } => {
            let claimed = match value {
                Claim::Boundary(i) => BOUNDARY_LENGTHS[i as usize % BOUNDARY_LENGTHS.len()],
                Claim::Off(delta) => actual.saturating_add_signed(delta as i64),
                Claim::Any(n) => n,
            };
            (claimed, form % 3)
        }
    };
    let rsv = if raw.rsv & 0x0f == 0x0f { (raw.rsv >> 4) & 0x7 } else { 0 };
    let mask = (!raw.unmasked).then_some(raw.mask);
    write_frame(out, raw.fin, rsv, raw.opcode.code(), mask, claimed, form, &payload);
    claimed == actual
}

/// Writes one frame; `form` 0 picks the shortest length field that holds `claimed` (a claim
/// too large for the form asked for falls back to a wider one).
#[allow(clippy::too_many_arguments)]
fn write_frame(
    out: &mut Vec<u8>,
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    claimed: u64,
    form: u8,
    payload: &[u8],
) {
    out.push(if fin { 0x80 } else { 0 } | rsv << 4 | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let form = match form {
        0 if claimed < 126 => 0,
        0 | 1 if claimed <= u16::MAX as u64 => 1,
        _ => 2,
    };
    match form {
        0 => out.push(mask_bit | claimed as u8),
        1 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(claimed as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&claimed.to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// What a parse produced: the messages, then how it stopped (an error, or waiting for more
/// bytes with these left in the buffer).
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<ClientMessage>,
    error: Option<FrameError>,
    leftover: Vec<u8>,
}

fn parse(max_message: usize, stream: &[u8], cuts: &[usize]) -> Outcome {
    let mut reader = ClientFrameReader::new(max_message);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain([&stream.len()]) {
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        loop {
            match reader.next_message(&mut buf) {
                Ok(Some(message)) => {
                    check_message(&message, max_message);
                    messages.push(message);
                }
                Ok(None) => break,
                Err(error) => return Outcome { messages, error: Some(error), leftover: Vec::new() },
            }
        }
    }
    Outcome { messages, error: None, leftover: buf.to_vec() }
}

fn check_message(message: &ClientMessage, max_message: usize) {
    match message {
        ClientMessage::Text(text) => {
            assert!(std::str::from_utf8(text).is_ok(), "Text that is not UTF-8");
            assert!(text.len() <= max_message, "Text of {} bytes over the limit {max_message}", text.len());
        }
        ClientMessage::Binary(bytes) => {
            assert!(
                bytes.len() <= max_message,
                "Binary of {} bytes over the limit {max_message}",
                bytes.len()
            )
        }
        ClientMessage::Ping(payload) => assert!(payload.len() <= 125, "Ping of {} bytes", payload.len()),
        ClientMessage::Pong => {}
        ClientMessage::Close { code, reason } => {
            assert!(std::str::from_utf8(reason).is_ok(), "close reason that is not UTF-8");
            assert!(code.is_some() || reason.is_empty());
        }
    }
}

/// RFC 6455 §5 for a stream of frames whose lengths are all truthful: what a reader must
/// return. Written from the RFC rather than from the reader, so the two can disagree.
mod model {
    use super::*;

    /// Which error a frame sequence must end in; where RFC 6455 leaves the order of two checks
    /// open (a frame that is both too large and out of place), either answer is right.
    #[derive(Debug)]
    pub struct Expected {
        pub messages: Vec<ClientMessage>,
        pub error: Option<Vec<ErrorKind>>,
    }

    #[derive(Debug, PartialEq, Clone, Copy)]
    pub enum ErrorKind {
        TooLarge,
        Utf8,
        Protocol,
    }

    pub fn kind(error: &FrameError) -> ErrorKind {
        match error {
            FrameError::TooLarge(_) => ErrorKind::TooLarge,
            FrameError::InvalidUtf8 => ErrorKind::Utf8,
            FrameError::Protocol(_) => ErrorKind::Protocol,
        }
    }

    /// Parses frames back out of a stream built by [`super::write_frame`] (truthful lengths).
    pub fn expect(max: usize, stream: &[u8]) -> Expected {
        use ErrorKind::*;
        let mut messages = Vec::new();
        let mut fragments: Option<(bool, Vec<u8>)> = None;
        let mut at = 0;
        let fail = |messages, kinds: &[ErrorKind]| Expected { messages, error: Some(kinds.to_vec()) };
        while stream.len() - at >= 2 {
            let (b0, b1) = (stream[at], stream[at + 1]);
            let (len, header) = match b1 & 0x7f {
                126 if stream.len() - at >= 4 => {
                    (u16::from_be_bytes([stream[at + 2], stream[at + 3]]) as u64, 4)
                }
                127 if stream.len() - at >= 10 => {
                    (u64::from_be_bytes(stream[at + 2..at + 10].try_into().unwrap()), 10)
                }
                126 | 127 => break,
                n => (n as u64, 2),
            };
            let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
            if b0 & 0x70 != 0 || b1 & 0x80 == 0 {
                return fail(messages, &[Protocol]);
            }
            let control = opcode & 0x08 != 0;
            if control && (!fin || len > 125) {
                return fail(messages, &[Protocol]);
            }
            // RFC 6455 §5.2: a 64-bit length never has its top bit set.
            if len >> 63 != 0 {
                return fail(messages, &[Protocol]);
            }
            let buffered = fragments.as_ref().map_or(0, |(_, f)| f.len() as u64);
            // Control frames may arrive between fragments (§5.4) and are not part of the message.
            let size = if opcode == 0 { len.saturating_add(buffered) } else { len };
            let out_of_place = match opcode {
                0x0 => fragments.is_none(),
                0x1 | 0x2 => fragments.is_some(),
                0x8..=0xA => false,
                _ => true,
            };
            match (size > max as u64, out_of_place) {
                (true, true) => return fail(messages, &[TooLarge, Protocol]),
                (true, false) => return fail(messages, &[TooLarge]),
                (false, true) => return fail(messages, &[Protocol]),
                (false, false) => {}
            }
            let start = at + header + 4;
            if start > stream.len() || ((stream.len() - start) as u64) < len {
                break;
            }
            let mask: [u8; 4] = stream[start - 4..start].try_into().unwrap();
            let mut payload: Vec<u8> = stream[start..start + len as usize]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i & 3])
                .collect();
            at = start + len as usize;
            let whole = match opcode {
                0x0 => {
                    let (_, buffer) = fragments.as_mut().unwrap();
                    buffer.extend_from_slice(&payload);
                    if !fin {
                        continue;
                    }
                    Some(fragments.take().unwrap())
                }
                0x1 | 0x2 if !fin => {
                    fragments = Some((opcode == 0x1, payload));
                    continue;
                }
                0x1 | 0x2 => Some((opcode == 0x1, std::mem::take(&mut payload))),
                _ => None,
            };
            let message = match (whole, opcode) {
                (Some((true, text)), _) if std::str::from_utf8(&text).is_err() => {
                    return fail(messages, &[Utf8])
                }
                (Some((true, text)), _) => ClientMessage::Text(text.into()),
                (Some((false, bytes)), _) => ClientMessage::Binary(bytes.into()),
                (None, 0x8) if payload.len() == 1 => return fail(messages, &[Protocol]),
                (None, 0x8) if payload.is_empty() => {
                    ClientMessage::Close { code: None, reason: Default::default() }
                }
                // §7.4: 1004–1006 and 1015 must never be sent, 0–999 and 5000+ are undefined;
                // a bad code and a bad reason together may be reported either way.
                (None, 0x8) if !matches!(u16::from_be_bytes([payload[0], payload[1]]), 1000..=1003 | 1007..=1014 | 3000..=4999) => {
                    let kinds: &[ErrorKind] =
                        if std::str::from_utf8(&payload[2..]).is_ok() { &[Protocol] } else { &[Protocol, Utf8] };
                    return fail(messages, kinds);
                }
                (None, 0x8) if std::str::from_utf8(&payload[2..]).is_err() => return fail(messages, &[Utf8]),
                (None, 0x8) => ClientMessage::Close {
                    code: Some(u16::from_be_bytes([payload[0], payload[1]])),
                    reason: payload[2..].to_vec().into(),
                },
                (None, 0x9) => ClientMessage::Ping(payload.into()),
                (None, _) => ClientMessage::Pong,
            };
            messages.push(message);
        }
        Expected { messages, error: None }
    }
}

fuzz_target!(|input: Input| {
    let max_message = input.max_message.get();
    let mut stream = Vec::new();
    let mut truthful = true;
    for frame in input.frames {
        truthful &= encode(frame, &mut stream);
    }
    let frames_end = stream.len();
    stream.extend_from_slice(&input.tail);

    let whole = parse(max_message, &stream, &[]);
    let mut cuts: Vec<usize> = input.cuts.iter().map(|c| *c as usize % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    let split = parse(max_message, &stream, &cuts);
    assert_eq!(whole, split, "the same bytes, cut at {cuts:?}, parse differently");

    if truthful {
        let expected = model::expect(max_message, &stream[..frames_end]);
        let got = parse(max_message, &stream[..frames_end], &[]);
        assert_eq!(got.messages, expected.messages, "messages differ from RFC 6455");
        match (&got.error, &expected.error) {
            (None, None) => {}
            (Some(error), Some(kinds)) => {
                assert!(
                    kinds.contains(&model::kind(error)),
                    "error {error:?}, RFC 6455 says one of {kinds:?}"
                )
            }
            (got, want) => panic!("error {got:?}, RFC 6455 says {want:?}"),
        }
    }
});
