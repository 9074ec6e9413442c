//! The default transport: plexus's own framing over the raw socket halves.
//!
//! Reading: bytes are read into a per-thread scratch buffer and only a frame's worth is kept per
//! connection, so an idle connection holds no read buffer; [`ClientFrameReader`] parses, unmasks
//! and checks them. Writing: event frames go out exactly as the hub encoded them, shared by every
//! recipient, in one vectored write per batch; nothing is framed, copied or allocated per
//! recipient, and the writer's idle state is a few words. Plain TCP is split into owned halves
//! (no lock between reader and writer); other streams fall back to a locked split.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Poll};

use bytes::{Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use plexus_core::Connection;
use plexus_protocol::wsframe::{self, ClientFrameReader, ClientMessage, FrameError, Opcode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{FrameWriter, Incoming, MessageReader, ReadFault};
use crate::listener::PlainIo;

type BoxedRead = Pin<Box<dyn AsyncRead + Send>>;
type BoxedWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// Bytes read per syscall, into a buffer shared by every connection on the thread.
const SCRATCH_BYTES: usize = 16 * 1024;
/// Frames handed to the kernel per vectored write.
const MAX_SLICES: usize = 64;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

/// Splits an upgraded connection into this transport's reader and writer.
/// `inflate`: the client negotiated permessage-deflate, so its messages may arrive compressed.
pub fn split(
    upgraded: hyper::upgrade::Upgraded,
    max_message_bytes: usize,
    inflate: bool,
) -> (FrameReader, VectoredWriter) {
    let (read, write, early): (BoxedRead, BoxedWrite, BytesMut) =
        match upgraded.downcast::<TokioIo<PlainIo>>() {
            Ok(parts) => {
                // The HTTP layer's stall guard is dropped here: the writer has its own timeout.
                let (read, write) = parts.io.into_inner().into_inner().into_split();
                // Bytes the HTTP layer read past the handshake belong to the first frames. Copy them:
                // the slice would otherwise keep hyper's whole read buffer alive for the connection.
                (Box::pin(read), Box::pin(write), BytesMut::from(&parts.read_buf[..]))
            }
            Err(upgraded) => {
                let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                (Box::pin(read), Box::pin(write), BytesMut::new())
            }
        };
    let frames = if inflate {
        ClientFrameReader::with_inflate(max_message_bytes)
    } else {
        ClientFrameReader::new(max_message_bytes)
    };
    let reader = FrameReader { read, pending: early, frames };
    (reader, VectoredWriter { write })
}

/// Reads client messages with [`ClientFrameReader`].
pub struct FrameReader {
    read: BoxedRead,
    /// Bytes of frames not yet complete; empty (no allocation) between messages.
    pending: BytesMut,
    frames: ClientFrameReader,
}

impl FrameReader {
    /// Reads what the socket has into `pending`. Cancel-safe: a read that has not completed has
    /// consumed nothing.
    async fn fill(&mut self) -> Result<(), ReadFault> {
        poll_fn(|cx| {
            SCRATCH.with_borrow_mut(|scratch| {
                let mut buf = ReadBuf::new(scratch);
                match ready!(self.read.as_mut().poll_read(cx, &mut buf)) {
                    Ok(()) if buf.filled().is_empty() => Poll::Ready(Err(ReadFault::Gone)),
                    Ok(()) => {
                        self.pending.extend_from_slice(buf.filled());
                        Poll::Ready(Ok(()))
                    }
                    Err(_) => Poll::Ready(Err(ReadFault::Gone)),
                }
            })
        })
        .await
    }
}

impl MessageReader for FrameReader {
    type Payload = Bytes;

    async fn next(&mut self, connection: &Connection) -> Result<Incoming<Bytes>, ReadFault> {
        loop {
            match self.frames.next_message(&mut self.pending) {
                Ok(Some(message)) => {
                    if self.pending.is_empty() {
                        // Let go of the consumed buffer now rather than at the next read.
                        self.pending = BytesMut::new();
                    }
                    return Ok(match message {
                        ClientMessage::Text(text) => Incoming::Text(text),
                        ClientMessage::Binary(bytes) => Incoming::Binary(bytes),
                        ClientMessage::Ping(payload) => {
                            connection.outbound.push(wsframe::frame(Opcode::Pong, &payload));
                            Incoming::Ignored
                        }
                        ClientMessage::Pong => Incoming::Ignored,
                        ClientMessage::Close { code, .. } => {
                            // Echo the close (RFC 6455 §5.5.1) after whatever is already queued.
                            let echo = code.map_or_else(
                                || wsframe::frame(Opcode::Close, b""),
                                |c| wsframe::close_frame(c, ""),
                            );
                            connection.outbound.push(echo);
                            connection.outbound.end();
                            Incoming::Close
                        }
                    });
                }
                Ok(None) => self.fill().await?,
                Err(FrameError::TooLarge(_)) => return Err(ReadFault::TooLarge),
                Err(FrameError::InvalidUtf8) => return Err(ReadFault::InvalidUtf8),
                Err(FrameError::Protocol(reason)) => return Err(ReadFault::Protocol(reason.to_owned())),
            }
        }
    }
}

/// Writes pre-framed bytes straight to the socket.
pub struct VectoredWriter {
    write: BoxedWrite,
}

impl FrameWriter for VectoredWriter {
    async fn write_batch(&mut self, frames: &[Bytes]) -> std::io::Result<()> {
        write_frames(&mut self.write, frames).await
    }

    async fn finish(&mut self, close: Option<(u16, &str)>) -> std::io::Result<()> {
        if let Some((code, reason)) = close {
            write_frames(&mut self.write, &[wsframe::close_frame(code, reason)]).await?;
        }
        self.write.shutdown().await
    }
}

/// Writes every frame with as few syscalls as the kernel allows. The slice array lives only
/// inside each poll, so a writer waiting on a full socket keeps just two indices.
async fn write_frames<W: AsyncWrite + Unpin + ?Sized>(
    write: &mut W,
    frames: &[Bytes],
) -> std::io::Result<()> {
    let (mut index, mut offset) = (0usize, 0usize);
    poll_fn(|cx| {
        while index < frames.len() {
            let count = (frames.len() - index).min(MAX_SLICES);
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            slices[0] = IoSlice::new(&frames[index][offset..]);
            for (slot, frame) in slices[1..count].iter_mut().zip(&frames[index + 1..]) {
                *slot = IoSlice::new(frame);
            }
            let mut written = ready!(Pin::new(&mut *write).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(std::io::Error::from(std::io::ErrorKind::WriteZero)));
            }
            while written > 0 {
                let left = frames[index].len() - offset;
                if written >= left {
                    written -= left;
                    index += 1;
                    offset = 0;
                } else {
                    offset += written;
                    written = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    })
    .await?;
    write.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts at most `chunk` bytes per call, to exercise partial vectored writes.
    struct Trickle {
        out: Vec<u8>,
        chunk: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            self.out.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let mut budget = self.chunk;
            let mut written = 0;
            for buf in bufs {
                let n = buf.len().min(budget);
                self.out.extend_from_slice(&buf[..n]);
                written += n;
                budget -= n;
                if budget == 0 {
                    break;
                }
            }
            std::task::Poll::Ready(Ok(written))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_resume_mid_frame_and_keep_order() {
        let frames: Vec<Bytes> = (0..150u8).map(|i| Bytes::from(vec![i; (i as usize % 7) + 1])).collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        for chunk in [1, 3, 10, 1000, 100_000] {
            let mut sink = Trickle { out: Vec::new(), chunk };
            write_frames(&mut sink, &frames).await.unwrap();
            assert_eq!(sink.out, expected, "chunk {chunk}");
        }
    }
}
