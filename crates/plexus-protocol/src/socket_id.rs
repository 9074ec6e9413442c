//! Socket ids: `^\d+\.\d+$`, the only shape every Pusher server SDK accepts.

use std::fmt;
use std::str::FromStr;

/// A connection's id, `"{high}.{low}"`. Stored as two integers so it is `Copy`, hashes cheaply and
/// compares without touching the heap during fan-out (socket exclusion runs per subscriber).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    high: u64,
    low: u64,
}

/// Largest half we generate: ten decimal digits, like Pusher's own ids.
const HALF_MAX: u64 = 10_000_000_000;

impl SocketId {
    /// Builds an id from two random words (the caller owns the randomness; this crate does no I/O).
    pub fn from_random(a: u64, b: u64) -> Self {
        SocketId { high: a % HALF_MAX, low: b % HALF_MAX }
    }
}

/// Why a string is not a socket id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid socket_id {0:?}: expected digits, a dot and digits (e.g. \"1234.5678\")")]
pub struct InvalidSocketId(pub String);

impl FromStr for SocketId {
    type Err = InvalidSocketId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidSocketId(text.chars().take(64).collect());
        let (high, low) = text.split_once('.').ok_or_else(invalid)?;
        let digits = |s: &str| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(high) || !digits(low) {
            return Err(invalid());
        }
        Ok(SocketId { high: high.parse().map_err(|_| invalid())?, low: low.parse().map_err(|_| invalid())? })
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.high, self.low)
    }
}

impl fmt::Debug for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_sdk_shape() {
        let id: SocketId = "264774.13368624".parse().unwrap();
        assert_eq!(id.to_string(), "264774.13368624");
    }

    #[test]
    fn rejects_anything_but_digits_dot_digits() {
        for bad in
            ["", "1", "1.", ".1", "1.2.3", "a.1", "1.b", " 1.2", "1.2 ", "-1.2", "1.99999999999999999999"]
        {
            assert!(bad.parse::<SocketId>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn generated_ids_have_at_most_ten_digits_per_half() {
        let id = SocketId::from_random(u64::MAX, u64::MAX - 1);
        let text = id.to_string();
        let (a, b) = text.split_once('.').unwrap();
        assert!(a.len() <= 10 && b.len() <= 10, "{text}");
        assert_eq!(text.parse::<SocketId>().unwrap(), id);
    }
}
