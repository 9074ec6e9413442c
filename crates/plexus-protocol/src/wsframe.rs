//! WebSocket framing (RFC 6455 §5): server frames encoded once per event, client frames parsed
//! without holding a buffer between messages.
//!
//! Frames a server sends are never masked, so the bytes of a frame are the same for every
//! recipient: the hub encodes an event into one complete frame and every subscriber's queue holds
//! a reference to the same [`Bytes`]. The writer then hands those bytes to the kernel as they are
//! (vectored), with no per-subscriber framing or copying.
//!
//! Client frames are parsed by [`ClientFrameReader`] out of whatever bytes the transport has
//! read: it takes complete frames, unmasks them in place, reassembles fragments, checks UTF-8 and
//! the size limit, and leaves partial frames in the caller's buffer. An idle connection therefore
//! needs no read buffer at all; that is why plexus parses frames itself (see BENCHMARKS.md).

use bytes::{Buf, Bytes, BytesMut};

/// Most bytes a server frame header takes (no mask: 2 + 8).
pub const MAX_HEADER_LEN: usize = 10;

const FIN: u8 = 0x80;

/// The RSV1 bit: set on the first frame of a message compressed with permessage-deflate
/// ([`crate::deflate`]).
pub const RSV1: u8 = 0x40;

/// Most bytes reserved ahead of a frame still arriving; larger frames grow as their bytes come.
const RESERVE_AHEAD: usize = 16 * 1024;

/// WebSocket opcodes a server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// Builds one frame whose payload is written in place after room left for the header, so the
/// payload is never copied to make room for the header.
#[derive(Debug)]
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    pub fn with_capacity(payload_capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(MAX_HEADER_LEN + payload_capacity);
        buf.resize(MAX_HEADER_LEN, 0);
        FrameBuf { buf }
    }

    /// The payload being written.
    pub fn payload(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Writes the header in front of the payload and returns the whole frame.
    pub fn finish(self, opcode: Opcode) -> Bytes {
        self.finish_with(opcode, 0)
    }

    /// [`FrameBuf::finish`] for a payload compressed with permessage-deflate (RSV1 set).
    pub fn finish_compressed(self, opcode: Opcode) -> Bytes {
        self.finish_with(opcode, RSV1)
    }

    fn finish_with(mut self, opcode: Opcode, reserved_bits: u8) -> Bytes {
        let len = self.buf.len() - MAX_HEADER_LEN;
        let mut header = [0u8; MAX_HEADER_LEN];
        let header_len = write_header(&mut header, opcode, len);
        header[0] |= reserved_bits;
        let start = MAX_HEADER_LEN - header_len;
        self.buf[start..MAX_HEADER_LEN].copy_from_slice(&header[..header_len]);
        Bytes::from(self.buf).slice(start..)
    }
}

/// Writes a server frame header for a payload of `len` bytes; returns how many bytes it used.
pub fn write_header(out: &mut [u8; MAX_HEADER_LEN], opcode: Opcode, len: usize) -> usize {
    out[0] = FIN | opcode as u8;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// The payload of a complete, unmasked server frame built here (a slice: nothing is copied).
/// Used where a frame leaves the process by another route, such as a cluster bus.
pub fn server_frame_payload(frame: &Bytes) -> Bytes {
    frame.slice(server_header_len(frame)..)
}

/// The payload of a frame we built, borrowed (see [`server_frame_payload`]).
pub fn server_frame_payload_slice(frame: &[u8]) -> &[u8] {
    &frame[server_header_len(frame)..]
}

/// The header length of an unmasked frame we built, at most the frame's length.
fn server_header_len(frame: &[u8]) -> usize {
    let header_len = match frame.get(1).map(|b| b & 0x7f) {
        None => return frame.len(),
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
    };
    header_len.min(frame.len())
}

/// A complete frame around `payload` (copies it once).
pub fn frame(opcode: Opcode, payload: &[u8]) -> Bytes {
    let mut buf = FrameBuf::with_capacity(payload.len());
    buf.payload().extend_from_slice(payload);
    buf.finish(opcode)
}

/// A close frame with a status code and a reason (truncated to fit the 125-byte control limit
/// on a character boundary).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(Opcode::Close, &payload)
}

/// A complete message (or control frame) from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// `code` is absent for an empty close frame; the reason is already checked to be UTF-8.
    Close {
        code: Option<u16>,
        reason: Bytes,
    },
}

/// The refusal of a 64-bit length over 2^63 − 1.
const TOP_BIT_SET: &str = "64-bit payload length with its most significant bit set";

/// Why the client's byte stream is not acceptable WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    #[error("{0}")]
    Protocol(&'static str),
}

/// Parses client frames (RFC 6455 §5.2–5.5) from a caller-owned buffer.
#[derive(Debug)]
pub struct ClientFrameReader {
    max_message: usize,
    /// permessage-deflate was negotiated: a data message may arrive compressed (RSV1).
    inflate: bool,
    /// A fragmented message being reassembled: text (or binary), compressed, its bytes so far.
    fragments: Option<(bool, bool, BytesMut)>,
}

impl ClientFrameReader {
    pub fn new(max_message: usize) -> Self {
        ClientFrameReader { max_message, inflate: false, fragments: None }
    }

    /// A reader for a connection that negotiated permessage-deflate: compressed messages are
    /// inflated, and `max_message` bounds them after inflating as well as before.
    pub fn with_inflate(max_message: usize) -> Self {
        ClientFrameReader { max_message, inflate: true, fragments: None }
    }

    /// Takes the next complete message out of `buf`; `Ok(None)` means more bytes are needed.
    /// Control frames are returned as they arrive, also between the fragments of a message.
    pub fn next_message(&mut self, buf: &mut BytesMut) -> Result<Option<ClientMessage>, FrameError> {
        loop {
            let Some(frame) = self.take_frame(buf)? else { return Ok(None) };
            if let Some(message) = self.assemble(frame)? {
                return Ok(Some(message));
            }
        }
    }

    /// One complete frame, unmasked, or `None` if `buf` does not hold one yet.
    fn take_frame(&self, buf: &mut BytesMut) -> Result<Option<RawFrame>, FrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        // RSV1 marks a compressed message: allowed on the first frame of a data message only,
        // and only once permessage-deflate is agreed (RFC 7692 §6.1).
        let compressed = b0 & 0x70 == RSV1 && self.inflate && matches!(b0 & 0x0f, 0x1 | 0x2);
        if b0 & 0x70 != 0 && !compressed {
            return Err(FrameError::Protocol("reserved bits set without an extension"));
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let (len, len_bytes) = match b1 & 0x7f {
            126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 2),
            127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")), 8),
            126 | 127 => return Ok(None),
            short => (short as u64, 0),
        };
        if opcode & 0x08 != 0 && (!fin || len > 125) {
            return Err(FrameError::Protocol("control frames must be final and at most 125 bytes"));
        }
        // RFC 6455 §5.2: the 64-bit length's most significant bit MUST be 0. A frame that breaks
        // it is malformed (1002), not merely too large.
        if len >> 63 != 0 {
            return Err(FrameError::Protocol(TOP_BIT_SET));
        }
        // Checked so that no length a client claims can wrap: `len` may be anything up to 2^64-1.
        // Only a continuation adds to the message being reassembled: a control frame between
        // its fragments (RFC 6455 §5.4) is not part of it, and a data frame that starts another
        // message is refused as a protocol error once it is whole.
        let buffered = match &self.fragments {
            Some((_, _, fragments)) if opcode == 0x0 => fragments.len(),
            _ => 0,
        };
        let room = self.max_message.saturating_sub(buffered) as u64;
        if len > room {
            return Err(FrameError::TooLarge(self.max_message));
        }
        let header = 2 + len_bytes + 4;
        // `len` is at most `max_message`, so it fits a usize; with a limit near usize::MAX the
        // header does not.
        let Some(total) = (len as usize).checked_add(header) else {
            return Err(FrameError::TooLarge(self.max_message));
        };
        if buf.len() < total {
            // Make room for the rest of the frame, but never more than the bytes a client has
            // proven it sends: a header alone must not make every connection allocate its limit.
            buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
            return Ok(None);
        }
        let mask: [u8; 4] = buf[header - 4..header].try_into().expect("4 bytes");
        let mut frame = buf.split_to(total);
        frame.advance(header);
        for (i, byte) in frame.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
        Ok(Some(RawFrame { fin, opcode, compressed, payload: frame }))
    }

    fn assemble(&mut self, frame: RawFrame) -> Result<Option<ClientMessage>, FrameError> {
        let RawFrame { fin, opcode, compressed, payload } = frame;
        match opcode {
            0x0 => {
                let Some((_, _, buffer)) = self.fragments.as_mut() else {
                    return Err(FrameError::Protocol("continuation frame without a message to continue"));
                };
                buffer.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                let (text, compressed, whole) = self.fragments.take().expect("checked above");
                self.data_message(text, compressed, whole).map(Some)
            }
            0x1 | 0x2 => {
                if self.fragments.is_some() {
                    return Err(FrameError::Protocol("new message before the previous one was finished"));
                }
                if fin {
                    return self.data_message(opcode == 0x1, compressed, payload).map(Some);
                }
                self.fragments = Some((opcode == 0x1, compressed, payload));
                Ok(None)
            }
            0x8 => {
                if payload.len() == 1 {
                    return Err(FrameError::Protocol("close frame with a one-byte payload"));
                }
                if payload.is_empty() {
                    return Ok(Some(ClientMessage::Close { code: None, reason: Bytes::new() }));
                }
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                if !close_code_allowed_on_wire(code) {
                    return Err(FrameError::Protocol("close code not allowed on the wire"));
                }
                let reason = payload.freeze().slice(2..);
                std::str::from_utf8(&reason).map_err(|_| FrameError::InvalidUtf8)?;
                Ok(Some(ClientMessage::Close { code: Some(code), reason }))
            }
            0x9 => Ok(Some(ClientMessage::Ping(payload.freeze()))),
            0xA => Ok(Some(ClientMessage::Pong)),
            _ => Err(FrameError::Protocol("unknown opcode")),
        }
    }

    fn data_message(
        &self,
        text: bool,
        compressed: bool,
        payload: BytesMut,
    ) -> Result<ClientMessage, FrameError> {
        if !compressed {
            return data_message(text, payload);
        }
        let inflated =
            crate::deflate::inflate_message(&payload, self.max_message).map_err(|error| match error {
                crate::deflate::InflateError::TooLarge(max) => FrameError::TooLarge(max),
                crate::deflate::InflateError::Corrupt => {
                    FrameError::Protocol("compressed message is not valid DEFLATE data")
                }
            })?;
        data_message(text, BytesMut::from(&inflated[..]))
    }
}

/// Whether a peer may send `code` in a close frame (RFC 6455 §7.4): the defined codes except
/// 1004–1006 and 1015, which name conditions and must never be sent, the IANA-registered
/// 1012–1014, and the ranges for libraries and applications (3000–4999).
pub fn close_code_allowed_on_wire(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

struct RawFrame {
    fin: bool,
    opcode: u8,
    /// RSV1 on the first frame of a data message: the message is deflated.
    compressed: bool,
    payload: BytesMut,
}

fn data_message(text: bool, payload: BytesMut) -> Result<ClientMessage, FrameError> {
    if text {
        std::str::from_utf8(&payload).map_err(|_| FrameError::InvalidUtf8)?;
        Ok(ClientMessage::Text(payload.freeze()))
    } else {
        Ok(ClientMessage::Binary(payload.freeze()))
    }
}

/// Encodes a masked client frame (for clients, load generators and tests).
pub fn client_frame(opcode: Opcode, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut header = [0u8; MAX_HEADER_LEN];
    let header_len = write_header(&mut header, opcode, payload.len());
    if !fin {
        header[0] &= 0x7f;
    }
    header[1] |= 0x80;
    let mut out = Vec::with_capacity(header_len + 4 + payload.len());
    out.extend_from_slice(&header[..header_len]);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_text_frame_has_two_byte_header() {
        let f = frame(Opcode::Text, b"hi");
        assert_eq!(&f[..], &[0x81, 2, b'h', b'i']);
    }

    #[test]
    fn medium_and_large_lengths_use_extended_fields() {
        let f = frame(Opcode::Text, &[b'a'; 300]);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        assert_eq!(f.len(), 304);
        let f = frame(Opcode::Text, &vec![b'a'; 70_000]);
        assert_eq!(&f[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(f[2..10].try_into().unwrap()), 70_000);
        assert_eq!(f.len(), 70_010);
    }

    #[test]
    fn boundary_125_126_65535_65536() {
        assert_eq!(frame(Opcode::Text, &[0; 125]).len(), 127);
        assert_eq!(frame(Opcode::Text, &[0; 126]).len(), 130);
        assert_eq!(frame(Opcode::Text, &vec![0; 65_535]).len(), 65_539);
        assert_eq!(frame(Opcode::Text, &vec![0; 65_536]).len(), 65_546);
    }

    #[test]
    fn close_frame_carries_code_and_fits_control_limit() {
        let f = close_frame(4001, "nope");
        assert_eq!(&f[..], &[0x88, 6, 0x0f, 0xa1, b'n', b'o', b'p', b'e']);
        let long = "é".repeat(200);
        let f = close_frame(4200, &long);
        assert!(f.len() - 2 <= 125);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}

#[cfg(test)]
mod reader_tests {
    use super::*;
    use proptest::prelude::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn parse_all(reader: &mut ClientFrameReader, bytes: &[u8]) -> Result<Vec<ClientMessage>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(message) = reader.next_message(&mut buf)? {
            out.push(message);
        }
        Ok(out)
    }

    #[test]
    fn rfc_6455_masked_hello() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let bytes = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let messages = parse_all(&mut ClientFrameReader::new(1024), &bytes).unwrap();
        assert_eq!(messages, vec![ClientMessage::Text(Bytes::from_static(b"Hello"))]);
    }

    #[test]
    fn fragments_are_reassembled_around_control_frames() {
        let mut bytes = client_frame(Opcode::Text, false, b"Hel", MASK);
        bytes.extend(client_frame(Opcode::Ping, true, b"p", MASK));
        bytes.extend(client_frame(Opcode::Continuation, true, b"lo", MASK));
        let messages = parse_all(&mut ClientFrameReader::new(1024), &bytes).unwrap();
        assert_eq!(
            messages,
            vec![
                ClientMessage::Ping(Bytes::from_static(b"p")),
                ClientMessage::Text(Bytes::from_static(b"Hello"))
            ]
        );
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let frame = client_frame(Opcode::Text, true, &[b'a'; 300], MASK);
        let mut reader = ClientFrameReader::new(1024);
        let mut buf = BytesMut::new();
        for (i, byte) in frame.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let got = reader.next_message(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == frame.len() - 1, "byte {i}");
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn violations_are_reported() {
        let protocol = |bytes: Vec<u8>| parse_all(&mut ClientFrameReader::new(100), &bytes).unwrap_err();
        let mut unmasked = client_frame(Opcode::Text, true, b"x", MASK);
        unmasked[1] &= 0x7f;
        assert_eq!(protocol(unmasked), FrameError::Protocol("client frames must be masked"));
        let mut rsv = client_frame(Opcode::Text, true, b"x", MASK);
        rsv[0] |= 0x40;
        assert!(matches!(protocol(rsv), FrameError::Protocol(_)));
        assert!(matches!(
            protocol(client_frame(Opcode::Continuation, true, b"x", MASK)),
            FrameError::Protocol(_)
        ));
        assert!(matches!(protocol(client_frame(Opcode::Ping, false, b"x", MASK)), FrameError::Protocol(_)));
        let mut top_bit = vec![0x81, 0xff];
        top_bit.extend_from_slice(&(1u64 << 63).to_be_bytes());
        top_bit.extend_from_slice(&MASK);
        assert_eq!(protocol(top_bit), FrameError::Protocol(TOP_BIT_SET));
        assert_eq!(protocol(client_frame(Opcode::Text, true, &[b'a'; 101], MASK)), FrameError::TooLarge(100));
        assert_eq!(protocol(client_frame(Opcode::Text, true, &[0xff, 0xfe], MASK)), FrameError::InvalidUtf8);
        let mut two_starts = client_frame(Opcode::Text, false, b"a", MASK);
        two_starts.extend(client_frame(Opcode::Text, true, b"b", MASK));
        assert!(matches!(protocol(two_starts), FrameError::Protocol(_)));
        let mut too_long_in_parts = client_frame(Opcode::Text, false, &[b'a'; 60], MASK);
        too_long_in_parts.extend(client_frame(Opcode::Continuation, true, &[b'a'; 60], MASK));
        assert_eq!(protocol(too_long_in_parts), FrameError::TooLarge(100));
    }

    #[test]
    fn a_fragment_claiming_the_largest_lengths_is_refused_not_an_overflow() {
        // Found by fuzz/frame_reader: the buffered fragment plus the claimed length wrapped.
        for second in [0x80, 0x82] {
            for (len, refusal) in
                [(u64::MAX, FrameError::Protocol(TOP_BIT_SET)), (i64::MAX as u64, FrameError::TooLarge(41))]
            {
                let mut bytes = client_frame(Opcode::Text, false, b"a", MASK);
                bytes.extend_from_slice(&[second, 0xff]);
                bytes.extend_from_slice(&len.to_be_bytes());
                bytes.extend_from_slice(&MASK);
                assert_eq!(parse_all(&mut ClientFrameReader::new(41), &bytes), Err(refusal), "length {len}");
            }
        }
    }

    #[test]
    fn control_frames_between_fragments_do_not_count_toward_the_message() {
        // Found by fuzz/frame_reader: a ping between the fragments of a 9-byte message under a
        // 10-byte limit was refused as too large.
        let mut bytes = client_frame(Opcode::Text, false, b"abcdef", MASK);
        bytes.extend(client_frame(Opcode::Ping, true, b"12345", MASK));
        bytes.extend(client_frame(Opcode::Continuation, true, b"ghi", MASK));
        assert_eq!(
            parse_all(&mut ClientFrameReader::new(10), &bytes).unwrap(),
            vec![
                ClientMessage::Ping(Bytes::from_static(b"12345")),
                ClientMessage::Text(Bytes::from_static(b"abcdefghi"))
            ]
        );
        let mut second_start = client_frame(Opcode::Text, false, b"abcdef", MASK);
        second_start.extend(client_frame(Opcode::Text, true, b"ghijk", MASK));
        assert!(matches!(
            parse_all(&mut ClientFrameReader::new(10), &second_start),
            Err(FrameError::Protocol(_))
        ));
    }

    #[test]
    fn a_claimed_length_reserves_at_most_a_read_ahead() {
        // Found by fuzz/frame_reader (an out-of-memory abort): the header's claimed length was
        // reserved whole before any of the payload arrived.
        let mut reader = ClientFrameReader::new(i64::MAX as usize);
        let mut buf = BytesMut::from(&[0x81u8, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4][..]);
        assert_eq!(reader.next_message(&mut buf), Ok(None));
        assert!(buf.capacity() <= 14 + RESERVE_AHEAD, "reserved {} bytes", buf.capacity());
    }

    #[test]
    fn a_limit_near_usize_max_does_not_overflow() {
        // Found by fuzz/frame_reader: with ClientFrameReader::new(usize::MAX), header + length
        // overflowed.
        let mut bytes = vec![0x81u8, 0xff];
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        bytes.extend_from_slice(&MASK);
        assert_eq!(
            parse_all(&mut ClientFrameReader::new(usize::MAX), &bytes),
            Err(FrameError::Protocol(TOP_BIT_SET))
        );
        // The largest legal length: header + length still fits, so the reader waits for it.
        let mut buf = BytesMut::from(&[0x81u8, 0xff][..]);
        buf.extend_from_slice(&(i64::MAX as u64).to_be_bytes());
        buf.extend_from_slice(&MASK);
        assert_eq!(ClientFrameReader::new(usize::MAX).next_message(&mut buf), Ok(None));
    }

    #[test]
    fn oversized_length_is_refused_before_the_payload_arrives() {
        let mut reader = ClientFrameReader::new(1000);
        let mut buf = BytesMut::from(&[0x81u8, 0xff, 0, 0, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(reader.next_message(&mut buf), Err(FrameError::TooLarge(1000)));
    }

    #[test]
    fn a_continuation_claiming_u64_max_bytes_is_refused_not_a_wrap() {
        // One byte buffered, then a continuation whose 64-bit length is 2^64-1: `len + buffered`
        // used to wrap to 0 and the frame size with it.
        let mut bytes = client_frame(Opcode::Text, false, b"a", MASK);
        bytes.extend_from_slice(&[0x80, 0xff]);
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        bytes.extend_from_slice(&MASK);
        bytes.extend_from_slice(b"xyz");
        let mut reader = ClientFrameReader::new(1 << 20);
        assert_eq!(parse_all(&mut reader, &bytes), Err(FrameError::Protocol(TOP_BIT_SET)));
        for len in [u64::MAX - 1, u64::MAX / 2, (1 << 63) + 1, usize::MAX as u64] {
            let mut reader = ClientFrameReader::new(1000);
            let mut buf = BytesMut::from(&[0x81u8, 0xff][..]);
            buf.extend_from_slice(&len.to_be_bytes());
            let refusal =
                if len >> 63 != 0 { FrameError::Protocol(TOP_BIT_SET) } else { FrameError::TooLarge(1000) };
            assert_eq!(reader.next_message(&mut buf), Err(refusal), "length {len}");
        }
    }

    #[test]
    fn close_codes_that_must_not_be_sent_are_protocol_errors() {
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            let payload = code.to_be_bytes();
            let got = parse_all(
                &mut ClientFrameReader::new(100),
                &client_frame(Opcode::Close, true, &payload, MASK),
            );
            assert!(matches!(got, Err(FrameError::Protocol(_))), "code {code}: {got:?}");
        }
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999,
        ] {
            let payload = code.to_be_bytes();
            let got = parse_all(
                &mut ClientFrameReader::new(100),
                &client_frame(Opcode::Close, true, &payload, MASK),
            );
            assert_eq!(
                got,
                Ok(vec![ClientMessage::Close { code: Some(code), reason: Bytes::new() }]),
                "code {code}"
            );
        }
    }

    #[test]
    fn close_frames_carry_code_and_reason() {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let messages =
            parse_all(&mut ClientFrameReader::new(100), &client_frame(Opcode::Close, true, &payload, MASK));
        assert_eq!(
            messages.unwrap(),
            vec![ClientMessage::Close { code: Some(1000), reason: Bytes::from_static(b"bye") }]
        );
        let empty =
            parse_all(&mut ClientFrameReader::new(100), &client_frame(Opcode::Close, true, b"", MASK));
        assert_eq!(empty.unwrap(), vec![ClientMessage::Close { code: None, reason: Bytes::new() }]);
    }

    proptest! {
        #[test]
        fn any_split_of_a_frame_stream_yields_the_same_messages(
            texts in proptest::collection::vec(".{0,300}", 1..6),
            cuts in proptest::collection::vec(0usize..2000, 0..8),
        ) {
            let mut stream = Vec::new();
            for text in &texts {
                stream.extend(client_frame(Opcode::Text, true, text.as_bytes(), MASK));
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort();
            let mut reader = ClientFrameReader::new(1 << 16);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut start = 0;
            for end in cuts.into_iter().chain([stream.len()]) {
                buf.extend_from_slice(&stream[start..end]);
                start = end;
                while let Some(message) = reader.next_message(&mut buf).unwrap() {
                    got.push(message);
                }
            }
            let want: Vec<ClientMessage> = texts.iter().map(|t| ClientMessage::Text(Bytes::from(t.clone().into_bytes()))).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut reader = ClientFrameReader::new(256);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = reader.next_message(&mut buf) {}
        }
    }

    #[test]
    fn server_frame_payload_strips_every_header_size() {
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let framed = frame(Opcode::Text, &payload);
            assert_eq!(server_frame_payload(&framed), payload, "payload of {len} bytes");
        }
    }

    /// A client's compressed message: RSV1 on its first frame, the deflated payload masked.
    fn compressed_client_frames(message: &[u8], fragment_at: Option<usize>) -> Vec<u8> {
        let compressed = crate::deflate::compress_frame_payload(message, Opcode::Text).unwrap();
        let deflated = server_frame_payload(&compressed);
        let (first, rest) = deflated.split_at(fragment_at.unwrap_or(deflated.len()));
        let mut bytes = client_frame(Opcode::Text, rest.is_empty(), first, MASK);
        bytes[0] |= RSV1;
        if !rest.is_empty() {
            bytes.extend(client_frame(Opcode::Continuation, true, rest, MASK));
        }
        bytes
    }

    #[test]
    fn compressed_messages_are_inflated_whole_or_fragmented() {
        let message = br#"{"event":"client-typing","channel":"private-chat","data":{"who":"ann"}}"#.repeat(8);
        for fragment_at in [None, Some(5)] {
            let bytes = compressed_client_frames(&message, fragment_at);
            let messages = parse_all(&mut ClientFrameReader::with_inflate(4096), &bytes).unwrap();
            assert_eq!(messages, vec![ClientMessage::Text(Bytes::from(message.clone()))], "{fragment_at:?}");
        }
    }

    #[test]
    fn rsv1_is_refused_unless_deflate_was_agreed_and_only_on_a_first_frame() {
        let message = b"hello hello hello hello".repeat(4);
        let bytes = compressed_client_frames(&message, None);
        assert_eq!(
            parse_all(&mut ClientFrameReader::new(4096), &bytes),
            Err(FrameError::Protocol("reserved bits set without an extension"))
        );
        let mut continuation = client_frame(Opcode::Text, false, b"a", MASK);
        let mut second = client_frame(Opcode::Continuation, true, b"b", MASK);
        second[0] |= RSV1;
        continuation.extend(second);
        assert!(parse_all(&mut ClientFrameReader::with_inflate(4096), &continuation).is_err());
        let mut ping = client_frame(Opcode::Ping, true, b"p", MASK);
        ping[0] |= RSV1;
        assert!(parse_all(&mut ClientFrameReader::with_inflate(4096), &ping).is_err());
    }

    #[test]
    fn a_compressed_message_over_the_limit_once_inflated_is_too_large() {
        let bomb = compressed_client_frames(&vec![b' '; 1 << 20], None);
        assert!(bomb.len() < 4096, "a 1 MiB message of spaces is {} bytes compressed", bomb.len());
        assert_eq!(
            parse_all(&mut ClientFrameReader::with_inflate(64 * 1024), &bomb),
            Err(FrameError::TooLarge(64 * 1024))
        );
    }
}
