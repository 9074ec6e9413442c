//! The receive buffer every connection owns: one reusable allocation, filled by one `read` call
//! at a time and consumed from the front by the frame or response parsers, so a single syscall
//! can deliver (and a single pass can parse) many messages.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes `buf[start..end]` are received and not yet consumed.
#[derive(Debug)]
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    pub fn new(capacity: usize) -> Self {
        ReadBuf { buf: vec![0; capacity.max(256)], start: 0, end: 0 }
    }

    /// The unconsumed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks `n` bytes at the front as consumed.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes room at the back: moves unconsumed bytes to the front when the tail is full and
    /// doubles the buffer only when a single message does not fit.
    fn make_room(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let len = self.buf.len();
                self.buf.resize(len * 2, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// One `read` call into the free space; returns how many bytes arrived (0 = end of stream).
    /// Cancel-safe: nothing is lost if the future is dropped before it completes.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> std::io::Result<usize> {
        let n = reader.read(self.make_room()).await?;
        self.end += n;
        Ok(n)
    }

    /// Appends bytes as if they had been read (tests).
    #[cfg(test)]
    pub fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.make_room()[0] = b;
            self.end += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_before_growing() {
        let mut b = ReadBuf::new(256);
        b.push(&[1; 256]);
        b.consume(200);
        b.push(&[2; 100]);
        assert_eq!(b.buf.len(), 256);
        assert_eq!(b.data().len(), 156);
        b.push(&[3; 200]);
        assert_eq!(b.buf.len(), 512);
        assert_eq!(b.data().len(), 356);
        b.consume(356);
        assert!(b.data().is_empty());
        assert_eq!((b.start, b.end), (0, 0));
    }
}
