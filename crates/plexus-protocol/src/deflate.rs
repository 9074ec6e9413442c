//! permessage-deflate (RFC 7692): the offer a client makes in `Sec-WebSocket-Extensions`, the
//! answer plexus gives, and the compression of whole messages both ways.
//!
//! plexus always answers with `server_no_context_takeover` and `client_no_context_takeover`: every
//! message is compressed on its own, by both sides. That is what lets the fan-out compress an
//! event **once** and hand the same bytes to every subscriber that negotiated compression (a
//! shared sliding window would make each connection's bytes its own), and it means no connection
//! keeps a compression window between messages: an idle compressed connection costs what a plain
//! one does. Compressing and inflating use one scratch state per thread, reset per message.
//!
//! A client that asks for a smaller server window than 2^15 (`server_max_window_bits`) gets it
//! agreed, and then receives its messages uncompressed (RSV1 clear), which the extension allows
//! for any message: the compressor here always uses the full window, so it could not keep a
//! smaller promise. Browsers never ask for one.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub use crate::wsframe::RSV1;

use crate::wsframe::{self, FrameBuf, Opcode};

/// The extension's token.
pub const EXTENSION: &str = "permessage-deflate";

/// The empty stored block every flushed message ends with; the extension strips it on the wire
/// and the receiver appends it back (RFC 7692 §7.2.1–7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What was agreed with a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The client capped our window (`server_max_window_bits` below 15): its messages go out
    /// uncompressed.
    server_max_window_bits: Option<u8>,
}

impl Agreement {
    /// Whether messages to this client may be compressed here.
    pub fn compresses_to_client(&self) -> bool {
        self.server_max_window_bits.is_none_or(|bits| bits == 15)
    }

    /// The `Sec-WebSocket-Extensions` value of the handshake response.
    pub fn response_header(&self) -> String {
        let mut answer = format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
        if let Some(bits) = self.server_max_window_bits {
            answer.push_str(&format!("; server_max_window_bits={bits}"));
        }
        answer
    }
}

/// Picks the first `permessage-deflate` offer plexus can accept from the values of the request's
/// `Sec-WebSocket-Extensions` headers; `None` when there is none (the connection stays plain).
/// An offer with an unknown or repeated parameter, or a value outside the RFC's range, is
/// declined and the next one considered (RFC 7692 §5.1).
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a str>) -> Option<Agreement> {
    header_values.into_iter().flat_map(|value| value.split(',')).find_map(accept_offer)
}

fn accept_offer(offer: &str) -> Option<Agreement> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut seen = [false; 4];
    let mut agreement = Agreement { server_max_window_bits: None };
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                agreement.server_max_window_bits = Some(window_bits(value?)?);
                2
            }
            "client_max_window_bits" => {
                // Any window the client uses inflates with ours (2^15): nothing to answer.
                if let Some(value) = value {
                    window_bits(value)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
    }
    Some(agreement)
}

/// A window size parameter: 8 to 15, digits only (RFC 7692 §7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.len() > 2 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// How hard the shared compressor works. JSON events are small and compressed once per event,
/// not per subscriber, so a middle level costs little and saves most of the bytes.
const LEVEL: u32 = 6;

thread_local! {
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(LEVEL), false));
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// The compressed twin of a complete, unfragmented server data frame built by [`wsframe`]: the
/// same message, its payload deflated, RSV1 set. `None` for control frames and for payloads
/// that would not shrink.
pub fn compress_frame(frame: &Bytes) -> Option<Bytes> {
    let opcode = *frame.first()? & 0x0f;
    let opcode = match opcode {
        0x1 => Opcode::Text,
        0x2 => Opcode::Binary,
        _ => return None,
    };
    let payload = wsframe::server_frame_payload_slice(frame);
    let compressed = compress_frame_payload(payload, opcode)?;
    (compressed.len() < frame.len()).then_some(compressed)
}

/// `payload` as one compressed message frame (RSV1 set), or `None` if the compressor failed.
pub fn compress_frame_payload(payload: &[u8], opcode: Opcode) -> Option<Bytes> {
    COMPRESSOR.with(|compressor| {
        let mut compressor = compressor.borrow_mut();
        compressor.reset();
        // Deflate grows incompressible data by a few bytes per block and the flush adds a 5-byte
        // empty block: with this much room one call almost always does the whole message.
        let mut out = FrameBuf::with_capacity(payload.len() + payload.len() / 1000 + 64);
        let buf = out.payload();
        let payload_start = buf.len();
        loop {
            let consumed = compressor.total_in() as usize;
            compressor.compress_vec(&payload[consumed..], buf, FlushCompress::Sync).ok()?;
            // Done once every byte is in and the flush fit (output stopped short of the end).
            if compressor.total_in() as usize == payload.len() && buf.len() < buf.capacity() {
                break;
            }
            buf.reserve(buf.capacity());
        }
        if !buf[payload_start..].ends_with(&TAIL) {
            return None;
        }
        buf.truncate(buf.len() - TAIL.len());
        Some(out.finish_compressed(opcode))
    })
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// The message inflates to more than the limit: refused before the rest is inflated.
    #[error("message inflates to more than {0} bytes")]
    TooLarge(usize),
    #[error("compressed message is not valid DEFLATE data")]
    Corrupt,
}

/// Inflates one compressed message (its frames' payloads, joined), refusing as soon as the result
/// would exceed `max` bytes: a small message that inflates to gigabytes is stopped at `max`.
pub fn inflate_message(compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    INFLATER.with(|inflater| {
        let mut inflater = inflater.borrow_mut();
        inflater.reset(false);
        let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).saturating_add(64).min(max + 1));
        // The message, then the empty block its sender stripped (RFC 7692 §7.2.2).
        for input in [compressed, &TAIL[..]] {
            let mut position = 0;
            loop {
                if out.len() == out.capacity() {
                    // Doubling, but never past the limit plus the one byte that proves it is passed.
                    let room = out.capacity().max(64).min((max + 1).saturating_sub(out.len()));
                    if room == 0 {
                        return Err(InflateError::TooLarge(max));
                    }
                    out.reserve_exact(room);
                }
                let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
                let status = inflater
                    .decompress_vec(&input[position..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                position += (inflater.total_in() - in_before) as usize;
                if out.len() > max {
                    return Err(InflateError::TooLarge(max));
                }
                if status == Status::StreamEnd {
                    // A final block ends the message; anything after it is not part of it.
                    return Ok(out);
                }
                if position == input.len() && out.len() < out.capacity() {
                    break;
                }
                let stalled = (inflater.total_in(), inflater.total_out()) == (in_before, out_before);
                if stalled && out.len() < out.capacity() {
                    return Err(InflateError::Corrupt);
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_offer_is_accepted_with_no_context_takeover_both_ways() {
        let agreement = negotiate(["permessage-deflate; client_max_window_bits"]).unwrap();
        assert!(agreement.compresses_to_client());
        assert_eq!(
            agreement.response_header(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn offers_are_taken_in_order_and_bad_ones_declined() {
        assert_eq!(negotiate([]), None);
        assert_eq!(negotiate(["x-webkit-deflate-frame"]), None);
        // Unknown parameter, repeated parameter, out-of-range bits, value where none belongs.
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=010",
            "permessage-deflate; server_no_context_takeover=1",
        ] {
            assert_eq!(negotiate([bad]), None, "{bad}");
        }
        let second = negotiate([
            "permessage-deflate; server_max_window_bits=7, permessage-deflate; server_max_window_bits=8",
        ]);
        let second = second.unwrap();
        assert!(!second.compresses_to_client());
        assert!(second.response_header().ends_with("; server_max_window_bits=8"));
        let quoted = negotiate([
            "foo",
            "permessage-deflate; client_max_window_bits=\"10\"; server_max_window_bits=15",
        ]);
        assert!(quoted.unwrap().compresses_to_client());
    }

    #[test]
    fn a_compressed_frame_inflates_to_the_same_message() {
        let json = br#"{"event":"price","channel":"ticker","data":"{\"bid\":101.5,\"ask\":101.7,\"symbol\":\"ACME\"}"}"#
            .repeat(20);
        let plain = wsframe::frame(Opcode::Text, &json);
        let compressed = compress_frame(&plain).expect("repetitive JSON shrinks");
        assert_eq!(compressed[0], 0x80 | RSV1 | 0x1, "FIN, RSV1, text");
        assert!(compressed.len() < plain.len() / 3, "{} of {}", compressed.len(), plain.len());
        let payload = wsframe::server_frame_payload(&compressed);
        assert_eq!(inflate_message(&payload, 1 << 20).unwrap(), json);
        // The compressor starts afresh for every message: the same input, the same bytes.
        assert_eq!(compress_frame(&plain).unwrap(), compressed);
    }

    #[test]
    fn control_frames_and_incompressible_payloads_stay_plain() {
        assert_eq!(compress_frame(&wsframe::close_frame(1000, "bye")), None);
        assert_eq!(compress_frame(&wsframe::frame(Opcode::Text, b"{}")), None);
    }

    #[test]
    fn a_zip_bomb_is_refused_at_the_limit() {
        let huge = vec![b'a'; 10 << 20];
        let bomb = compress_frame_payload(&huge, Opcode::Text).unwrap();
        let payload = wsframe::server_frame_payload(&bomb);
        assert!(payload.len() < 20_000, "10 MiB of one byte deflates to {} bytes", payload.len());
        assert_eq!(inflate_message(&payload, 64 * 1024), Err(InflateError::TooLarge(64 * 1024)));
        assert_eq!(inflate_message(&payload, 10 << 20).unwrap().len(), 10 << 20, "exactly the limit passes");
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(inflate_message(&[0xff, 0xff, 0xff, 0xff, 0x00], 1024), Err(InflateError::Corrupt));
    }

    #[test]
    fn the_rfc_7692_example_inflates() {
        // RFC 7692 §7.2.3.1: "Hello" compressed without context takeover.
        assert_eq!(inflate_message(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 1024).unwrap(), b"Hello");
    }
}
