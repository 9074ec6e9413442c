//! The default transport: `fastwebsockets` reads client frames; event frames are written as the
//! hub encoded them, shared by every recipient, in one vectored write per batch.
//!
//! A server frame is never masked, so the bytes of an event frame are the same for every
//! subscriber: nothing here frames, copies or allocates per recipient. Plain TCP is split into
//! owned halves (no lock between reader and writer); other streams fall back to a locked split.

use std::io::IoSlice;
use std::pin::Pin;

use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, Role, WebSocketError};
use hyper_util::rt::TokioIo;
use plexus_core::Connection;
use plexus_protocol::wsframe::{self, Opcode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{FrameWriter, Incoming, MessageReader, ReadFault};

type BoxedRead = Pin<Box<dyn AsyncRead + Send>>;
type BoxedWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// Splits an upgraded connection into this transport's reader and writer.
pub fn split(upgraded: hyper::upgrade::Upgraded, max_message_bytes: usize) -> (FastReader, VectoredWriter) {
    let (read, write): (BoxedRead, BoxedWrite) = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (read, write) = parts.io.into_inner().into_split();
            // Bytes the HTTP layer read past the handshake belong to the first frames. Copy them:
            // the slice would otherwise keep hyper's whole read buffer alive for the connection.
            let early = Bytes::copy_from_slice(&parts.read_buf);
            drop(parts.read_buf);
            (Box::pin(tokio::io::AsyncReadExt::chain(std::io::Cursor::new(early), read)), Box::pin(write))
        }
        Err(upgraded) => {
            let (read, write) = tokio::io::split(TokioIo::new(upgraded));
            (Box::pin(read), Box::pin(write))
        }
    };
    (FastReader::new(read, max_message_bytes), VectoredWriter { write })
}

/// Reads client messages: unmasks, reassembles fragments, validates UTF-8.
pub struct FastReader {
    inner: FragmentCollectorRead<BoxedRead>,
}

impl FastReader {
    fn new(read: BoxedRead, max_message_bytes: usize) -> Self {
        let (mut read, _unused_write) =
            fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
        read.set_max_message_size(max_message_bytes);
        FastReader { inner: FragmentCollectorRead::new(read) }
    }
}

impl MessageReader for FastReader {
    type Payload = Payload<'static>;

    async fn next(&mut self, connection: &Connection) -> Result<Incoming<Self::Payload>, ReadFault> {
        // Control replies the WebSocket layer owes the client go through the queue.
        let mut owed = |frame: Frame<'_>| {
            match frame.opcode {
                OpCode::Pong => {
                    connection.outbound.push(wsframe::frame(Opcode::Pong, &frame.payload));
                }
                OpCode::Close => {
                    connection.outbound.push(wsframe::frame(Opcode::Close, &frame.payload));
                    connection.outbound.end();
                }
                _ => {}
            }
            std::future::ready(Ok::<(), std::io::Error>(()))
        };
        match self.inner.read_frame(&mut owed).await {
            Ok(frame) => Ok(match frame.opcode {
                OpCode::Text => Incoming::Text(frame.payload),
                OpCode::Binary => Incoming::Binary(frame.payload),
                OpCode::Close => Incoming::Close,
                _ => Incoming::Ignored,
            }),
            Err(WebSocketError::FrameTooLarge) => Err(ReadFault::TooLarge),
            Err(WebSocketError::InvalidUTF8) => Err(ReadFault::InvalidUtf8),
            Err(
                WebSocketError::UnexpectedEOF | WebSocketError::IoError(_) | WebSocketError::ConnectionClosed,
            ) => Err(ReadFault::Gone),
            Err(other) => Err(ReadFault::Protocol(other.to_string())),
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

/// Writes every frame with as few syscalls as the kernel allows (up to 64 frames per call).
async fn write_frames<W: AsyncWrite + Unpin + ?Sized>(
    write: &mut W,
    frames: &[Bytes],
) -> std::io::Result<()> {
    const MAX_SLICES: usize = 64;
    let (mut index, mut offset) = (0, 0);
    while index < frames.len() {
        let count = (frames.len() - index).min(MAX_SLICES);
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        slices[0] = IoSlice::new(&frames[index][offset..]);
        for (slot, frame) in slices[1..count].iter_mut().zip(&frames[index + 1..]) {
            *slot = IoSlice::new(frame);
        }
        let mut written = write.write_vectored(&slices[..count]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
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
