//! permessage-deflate's two parsers of client bytes: the `Sec-WebSocket-Extensions` offer
//! (`deflate::negotiate`) and the inflation of a compressed message (`deflate::inflate_message`).
//!
//! Invariants:
//! - neither panics, whatever the bytes;
//! - inflation never returns more than the limit it was given; under a limit it gives what it
//!   gives without one, and `TooLarge` only for a message that inflates past it (or turns out
//!   corrupt further on);
//! - what the server's compressor makes of any payload inflates back to that payload.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use plexus_protocol::deflate::{self, InflateError};
use plexus_protocol::wsframe::{self, Opcode};

#[derive(Arbitrary, Debug)]
struct Input {
    offer: String,
    compressed: Vec<u8>,
    max: u16,
    plain: Vec<u8>,
}

fuzz_target!(|input: Input| {
    if let Some(agreement) = deflate::negotiate([input.offer.as_str()]) {
        assert!(agreement.response_header().starts_with("permessage-deflate; server_no_context_takeover"));
    }

    let max = input.max as usize;
    let unbounded = deflate::inflate_message(&input.compressed, usize::MAX / 2);
    match deflate::inflate_message(&input.compressed, max) {
        Ok(inflated) => {
            assert!(inflated.len() <= max);
            assert_eq!(Ok(&inflated), unbounded.as_ref(), "a limit changes nothing below it");
        }
        Err(InflateError::TooLarge(limit)) => {
            assert_eq!(limit, max);
            // Past the limit before any fault: without a limit it is longer, or corrupt later on.
            match unbounded {
                Ok(whole) => assert!(whole.len() > max),
                Err(error) => assert_eq!(error, InflateError::Corrupt),
            }
        }
        Err(InflateError::Corrupt) => assert_eq!(unbounded, Err(InflateError::Corrupt)),
    }

    let frame = deflate::compress_frame_payload(&input.plain, Opcode::Binary).expect("the compressor never fails");
    let payload = wsframe::server_frame_payload(&frame);
    assert_eq!(deflate::inflate_message(&payload, input.plain.len()).unwrap(), input.plain);
});
