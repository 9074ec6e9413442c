//! The comparison transport (cargo feature `tungstenite`): tokio-tungstenite in both directions.
//!
//! Built only to measure the WebSocket crate choice on the same connection loop (BENCHMARKS.md).
//! tungstenite frames every message itself, so each shared event frame is unwrapped to its JSON
//! payload, checked as UTF-8 and framed again for every recipient: the per-recipient cost the
//! default transport avoids.

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use plexus_core::Connection;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::{FrameWriter, Incoming, MessageReader, ReadFault};

type Stream = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

pub async fn split(
    upgraded: hyper::upgrade::Upgraded,
    max_message_bytes: usize,
) -> (TungsteniteReader, TungsteniteWriter) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes));
    let stream = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let (sink, stream) = stream.split();
    (TungsteniteReader { stream }, TungsteniteWriter { sink })
}

pub struct TungsteniteReader {
    stream: SplitStream<Stream>,
}

impl MessageReader for TungsteniteReader {
    type Payload = Bytes;

    async fn next(&mut self, _connection: &Connection) -> Result<Incoming<Bytes>, ReadFault> {
        // tungstenite answers pings and echoes closes on its own.
        match self.stream.next().await {
            Some(Ok(Message::Text(text))) => Ok(Incoming::Text(Bytes::from(text))),
            Some(Ok(Message::Binary(bytes))) => Ok(Incoming::Binary(bytes)),
            Some(Ok(Message::Close(_))) => Ok(Incoming::Close),
            Some(Ok(_)) => Ok(Incoming::Ignored),
            Some(Err(Error::Capacity(_))) => Err(ReadFault::TooLarge),
            Some(Err(Error::Utf8(_))) => Err(ReadFault::InvalidUtf8),
            Some(Err(Error::Protocol(e))) => Err(ReadFault::Protocol(e.to_string())),
            Some(Err(_)) | None => Err(ReadFault::Gone),
        }
    }
}

pub struct TungsteniteWriter {
    sink: SplitSink<Stream, Message>,
}

/// A complete server data frame (the hub's encoding) as tungstenite's message: text or binary,
/// without its header. Control frames are tungstenite's own business.
fn message_of(frame: &Bytes) -> Option<std::io::Result<Message>> {
    if frame.len() < 2 {
        return None;
    }
    let header = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let payload = frame.slice(header..);
    match frame[0] & 0x0f {
        0x1 => Some(Utf8Bytes::try_from(payload).map(Message::Text).map_err(std::io::Error::other)),
        0x2 => Some(Ok(Message::Binary(payload))),
        _ => None,
    }
}

impl FrameWriter for TungsteniteWriter {
    async fn write_batch(&mut self, frames: &[Bytes]) -> std::io::Result<()> {
        for frame in frames {
            let Some(message) = message_of(frame) else { continue };
            self.sink.feed(message?).await.map_err(std::io::Error::other)?;
        }
        self.sink.flush().await.map_err(std::io::Error::other)
    }

    async fn finish(&mut self, close: Option<(u16, &str)>) -> std::io::Result<()> {
        let frame =
            close.map(|(code, reason)| CloseFrame { code: CloseCode::from(code), reason: reason.into() });
        let _ = self.sink.send(Message::Close(frame)).await;
        self.sink.close().await.map_err(std::io::Error::other)
    }
}
