//! Server-to-client WebSocket framing (RFC 6455 §5.2), done once per event.
//!
//! Frames a server sends are never masked, so the bytes of a frame are the same for every
//! recipient: the hub encodes an event into one complete frame and every subscriber's queue holds
//! a reference to the same [`Bytes`]. The writer then hands those bytes to the kernel as they are
//! (vectored), with no per-subscriber framing or copying. Reading client frames (masked,
//! possibly fragmented) is left to the WebSocket crate in the server.

use bytes::Bytes;

/// Most bytes a server frame header takes (no mask: 2 + 8).
pub const MAX_HEADER_LEN: usize = 10;

const FIN: u8 = 0x80;

/// WebSocket opcodes a server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Text = 0x1,
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
    pub fn finish(mut self, opcode: Opcode) -> Bytes {
        let len = self.buf.len() - MAX_HEADER_LEN;
        let mut header = [0u8; MAX_HEADER_LEN];
        let header_len = write_header(&mut header, opcode, len);
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
