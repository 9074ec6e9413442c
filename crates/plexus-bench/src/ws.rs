//! A minimal WebSocket client (RFC 6455), just enough for a load generator: the HTTP upgrade
//! handshake, masked client frames out, unmasked server frames in (7/16/64-bit lengths,
//! fragmentation), pongs for server pings and a best-effort close.
//!
//! Reading is batch-oriented: [`WsConn::fill`] does one `read` into the connection's reusable
//! [`ReadBuf`], then [`WsConn::drain`] hands every complete text message in it to a callback as a
//! borrowed slice, so the receive path does no per-message allocation. Replies the callback wants
//! to send go into the connection's [`Outbox`] and leave in one write ([`WsConn::flush`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::rbuf::ReadBuf;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Largest message accepted from the server; anything bigger is a protocol error, not an
/// allocation.
const MAX_MESSAGE: u64 = 16 * 1024 * 1024;
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const RSV1: u8 = 0x40;

/// Bytes every connection of this process read from its socket after the handshake: what the
/// server put on the wire, compressed or not.
static WIRE_BYTES_RECEIVED: AtomicU64 = AtomicU64::new(0);

/// [`WIRE_BYTES_RECEIVED`] so far.
pub fn wire_bytes_received() -> u64 {
    WIRE_BYTES_RECEIVED.load(Ordering::Relaxed)
}

/// Why a connection stopped working; [`WsError::reason`] names it for the error tallies.
#[derive(Debug)]
pub enum WsError {
    Connect(io::Error),
    Io(io::Error),
    Eof,
    Handshake(String),
    Protocol(&'static str),
    /// The server sent a close frame with this code.
    Closed(Option<u16>),
}

impl WsError {
    pub fn reason(&self) -> String {
        match self {
            WsError::Connect(e) => format!("tcp_connect_{}", io_kind(e)),
            WsError::Io(e) => format!("io_{}", io_kind(e)),
            WsError::Eof => "eof".into(),
            WsError::Handshake(why) => format!("handshake_{why}"),
            WsError::Protocol(why) => format!("ws_protocol_{why}"),
            WsError::Closed(Some(code)) => format!("closed_{code}"),
            WsError::Closed(None) => "closed".into(),
        }
    }
}

/// Short snake-case name of an I/O error kind (`refused`, `reset`, `timed_out`, …).
pub fn io_kind(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused".into(),
        io::ErrorKind::ConnectionReset => "reset".into(),
        io::ErrorKind::ConnectionAborted => "aborted".into(),
        io::ErrorKind::BrokenPipe => "broken_pipe".into(),
        io::ErrorKind::TimedOut => "timed_out".into(),
        io::ErrorKind::AddrInUse => "addr_in_use".into(),
        io::ErrorKind::AddrNotAvailable => "addr_not_available".into(),
        _ => match e.raw_os_error() {
            Some(24) => "too_many_open_files".into(),
            Some(code) => format!("os_{code}"),
            None => format!("{:?}", e.kind()).to_ascii_lowercase(),
        },
    }
}

/// What a message callback wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep parsing the buffered messages.
    Continue,
    /// Stop after this message; the rest stays buffered for the next [`WsConn::drain`].
    Stop,
}

/// A server frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: u8,
    /// RSV1: a permessage-deflate message.
    pub compressed: bool,
    pub header_len: usize,
    pub payload_len: u64,
}

/// Parses a server frame header from the front of `buf`; `Ok(None)` when more bytes are needed.
/// `inflate`: the connection negotiated permessage-deflate, so RSV1 is allowed.
pub fn parse_header(buf: &[u8], inflate: bool) -> Result<Option<FrameHeader>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let allowed = if inflate { RSV1 } else { 0 };
    if buf[0] & 0x70 & !allowed != 0 {
        return Err(WsError::Protocol("rsv_bits"));
    }
    if buf[1] & 0x80 != 0 {
        return Err(WsError::Protocol("masked_server_frame"));
    }
    let fin = buf[0] & 0x80 != 0;
    let compressed = buf[0] & RSV1 != 0;
    let opcode = buf[0] & 0x0f;
    let (payload_len, header_len) = match buf[1] & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(WsError::Protocol("length_msb"));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (n as u64, 2),
    };
    if opcode >= OP_CLOSE && (payload_len > 125 || !fin) {
        return Err(WsError::Protocol("bad_control_frame"));
    }
    if payload_len > MAX_MESSAGE {
        return Err(WsError::Protocol("frame_too_large"));
    }
    Ok(Some(FrameHeader { fin, opcode, compressed, header_len, payload_len }))
}

/// Frames waiting to be written, masked as a client must.
#[derive(Debug)]
pub struct Outbox {
    buf: Vec<u8>,
    rng: u32,
}

impl Outbox {
    /// An empty outbox whose masking keys derive from `seed`.
    pub fn new(seed: u32) -> Self {
        Outbox { buf: Vec::new(), rng: seed | 1 }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift32: masking keys need not be cryptographic here (loopback, our own server).
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        x.to_ne_bytes()
    }

    /// Queues one complete, masked frame.
    pub fn frame(&mut self, opcode: u8, payload: &[u8]) {
        let len = payload.len();
        self.buf.push(0x80 | opcode);
        if len < 126 {
            self.buf.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            self.buf.push(0x80 | 126);
            self.buf.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.buf.push(0x80 | 127);
            self.buf.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = self.next_mask();
        self.buf.extend_from_slice(&mask);
        let start = self.buf.len();
        self.buf.extend_from_slice(payload);
        for (i, b) in self.buf[start..].iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
    }

    /// Queues a text frame.
    pub fn text(&mut self, payload: &[u8]) {
        self.frame(OP_TEXT, payload);
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Turns buffered bytes into messages; holds the state of a fragmented message.
#[derive(Debug, Default)]
pub struct Decoder {
    fragments: Vec<u8>,
    in_fragmented: bool,
    /// permessage-deflate was agreed: RSV1 messages are inflated (plexus sends each message in
    /// one frame, so only whole compressed messages are expected).
    inflate: bool,
}

impl Decoder {
    /// Parses every complete frame in `rx`, passing text (and binary) messages to `on_text` as
    /// borrowed slices. Pings are answered into `out`, pongs ignored; a close frame ends the
    /// connection with [`WsError::Closed`]. Incomplete frames stay buffered.
    pub fn drain<F>(&mut self, rx: &mut ReadBuf, out: &mut Outbox, mut on_text: F) -> Result<(), WsError>
    where
        F: FnMut(&[u8], &mut Outbox) -> Flow,
    {
        loop {
            let data = rx.data();
            let Some(h) = parse_header(data, self.inflate)? else {
                return Ok(());
            };
            let total = h.header_len + h.payload_len as usize;
            if data.len() < total {
                return Ok(());
            }
            let payload = &data[h.header_len..total];
            let mut flow = Flow::Continue;
            match h.opcode {
                OP_TEXT | OP_BINARY if h.fin && !self.in_fragmented && h.compressed => {
                    flow = with_inflated(payload, |inflated| on_text(inflated, out))?;
                }
                OP_TEXT | OP_BINARY if h.fin && !self.in_fragmented => {
                    flow = on_text(payload, out);
                }
                OP_TEXT | OP_BINARY if !self.in_fragmented => {
                    self.in_fragmented = true;
                    self.fragments.clear();
                    self.fragments.extend_from_slice(payload);
                }
                OP_CONTINUATION if self.in_fragmented => {
                    self.fragments.extend_from_slice(payload);
                    if self.fragments.len() as u64 > MAX_MESSAGE {
                        return Err(WsError::Protocol("message_too_large"));
                    }
                    if h.fin {
                        self.in_fragmented = false;
                        flow = on_text(&self.fragments, out);
                    }
                }
                OP_PING => out.frame(OP_PONG, payload),
                OP_PONG => {}
                OP_CLOSE => {
                    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Err(WsError::Closed(code));
                }
                _ => return Err(WsError::Protocol("unexpected_opcode")),
            }
            rx.consume(total);
            if flow == Flow::Stop {
                return Ok(());
            }
        }
    }
}

/// Compressed messages this thread inflated lately, by their bytes, at most this many.
const INFLATED_KEPT: usize = 4096;

thread_local! {
    /// What recent compressed messages inflated to. The server compresses each event once and
    /// every compressed subscriber gets the same bytes, so one inflate serves all of this
    /// thread's subscribers (whose reads interleave events): the load generator then measures
    /// the server rather than thousands of inflates of one message.
    static INFLATED: std::cell::RefCell<std::collections::HashMap<Vec<u8>, Vec<u8>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Calls `use_message` with the inflated `compressed` message.
fn with_inflated<T>(compressed: &[u8], use_message: impl FnOnce(&[u8]) -> T) -> Result<T, WsError> {
    INFLATED.with(|inflated| {
        let mut inflated = inflated.borrow_mut();
        if !inflated.contains_key(compressed) {
            if inflated.len() >= INFLATED_KEPT {
                inflated.clear();
            }
            let message = plexus_protocol::deflate::inflate_message(compressed, MAX_MESSAGE as usize)
                .map_err(|_| WsError::Protocol("bad_compressed_message"))?;
            inflated.insert(compressed.to_vec(), message);
        }
        Ok(use_message(&inflated[compressed]))
    })
}

/// One client WebSocket connection.
#[derive(Debug)]
pub struct WsConn {
    stream: TcpStream,
    rx: ReadBuf,
    out: Outbox,
    decoder: Decoder,
}

impl WsConn {
    /// TCP connect (optionally from `source`, port chosen by the kernel) and upgrade.
    /// `deflate`: offer permessage-deflate as a browser does, and inflate what comes compressed.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        host_header: &str,
        path: &str,
        seed: u32,
        read_buffer: usize,
        deflate: bool,
    ) -> Result<WsConn, WsError> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(WsError::Connect)?;
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0)).map_err(WsError::Connect)?;
        }
        let stream = socket.connect(addr).await.map_err(WsError::Connect)?;
        stream.set_nodelay(true).map_err(WsError::Connect)?;
        let mut conn = WsConn {
            stream,
            rx: ReadBuf::new(read_buffer),
            out: Outbox::new(seed),
            decoder: Decoder::default(),
        };
        conn.handshake(host_header, path, deflate).await?;
        Ok(conn)
    }

    async fn handshake(&mut self, host_header: &str, path: &str, deflate: bool) -> Result<(), WsError> {
        let mut nonce = [0u8; 16];
        for chunk in nonce.chunks_mut(4) {
            chunk.copy_from_slice(&self.out.next_mask());
        }
        let key = base64::engine::general_purpose::STANDARD.encode(nonce);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
            if deflate {
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            } else {
                ""
            }
        );
        self.stream.write_all(request.as_bytes()).await.map_err(WsError::Io)?;
        let head_len = loop {
            if let Some(pos) = find(self.rx.data(), b"\r\n\r\n") {
                break pos + 4;
            }
            if self.rx.data().len() > 16 * 1024 {
                return Err(WsError::Handshake("header_too_large".into()));
            }
            if self.rx.fill(&mut self.stream).await.map_err(WsError::Io)? == 0 {
                return Err(WsError::Eof);
            }
        };
        let head = std::str::from_utf8(&self.rx.data()[..head_len])
            .map_err(|_| WsError::Handshake("not_utf8".into()))?;
        check_upgrade_response(head, &key)?;
        // Compressed frames are inflated only where the server agreed to send them.
        self.decoder.inflate =
            head.split("\r\n").filter_map(|line| line.split_once(':')).any(|(name, value)| {
                name.trim().eq_ignore_ascii_case("sec-websocket-extensions")
                    && value.contains("permessage-deflate")
            });
        self.rx.consume(head_len);
        WIRE_BYTES_RECEIVED.fetch_add(self.rx.data().len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// One `read` from the socket into the receive buffer. Cancel-safe.
    pub async fn fill(&mut self) -> Result<(), WsError> {
        match self.rx.fill(&mut self.stream).await {
            Ok(0) => Err(WsError::Eof),
            Ok(n) => {
                WIRE_BYTES_RECEIVED.fetch_add(n as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(WsError::Io(e)),
        }
    }

    /// Parses every complete message buffered, passing text (and binary) messages to `on_text`
    /// with the outbox for replies. See [`Decoder::drain`].
    pub fn drain<F>(&mut self, on_text: F) -> Result<(), WsError>
    where
        F: FnMut(&[u8], &mut Outbox) -> Flow,
    {
        self.decoder.drain(&mut self.rx, &mut self.out, on_text)
    }

    /// Queues a text message.
    pub fn send_text(&mut self, payload: &[u8]) {
        self.out.text(payload);
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), WsError> {
        if self.out.buf.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.out.buf).await;
        self.out.buf.clear();
        result.map_err(WsError::Io)
    }

    /// Writes `bytes` as they are (hand-made frames, possibly invalid ones), after anything queued.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), WsError> {
        self.flush().await?;
        self.stream.write_all(bytes).await.map_err(WsError::Io)
    }

    /// Best effort: sends a close frame (waiting at most `wait` for the write) and drops the socket.
    pub async fn close(mut self, code: u16, wait: Duration) {
        self.out.frame(OP_CLOSE, &code.to_be_bytes());
        let _ = tokio::time::timeout(wait, async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// Checks a 101 response and its `Sec-WebSocket-Accept`.
fn check_upgrade_response(head: &str, key: &str) -> Result<(), WsError> {
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .ok_or_else(|| WsError::Handshake("bad_status_line".into()))?;
    if status != "101" {
        return Err(WsError::Handshake(format!("http_{status}")));
    }
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, v)| v.trim())
        .ok_or_else(|| WsError::Handshake("no_accept".into()))?;
    if accept != accept_key(key) {
        return Err(WsError::Handshake("bad_accept".into()));
    }
    Ok(())
}

/// The `Sec-WebSocket-Accept` a server must answer to `key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = hay[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if hay.len() - at < needle.len() {
            return None;
        }
        if &hay[at + 1..at + needle.len()] == rest {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_protocol::wsframe::{frame, Opcode};

    /// Runs the real decoder over a stand-alone buffer (no socket), feeding bytes in `chunks`.
    fn messages(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut rx = ReadBuf::new(256);
        let mut out = Outbox::new(7);
        let mut decoder = Decoder::default();
        let mut got = Vec::new();
        for chunk in chunks {
            rx.push(chunk);
            decoder
                .drain(&mut rx, &mut out, |m, _| {
                    got.push(m.to_vec());
                    Flow::Continue
                })
                .unwrap();
        }
        (got, out.buf)
    }

    #[test]
    fn stop_leaves_later_messages_buffered() {
        let mut rx = ReadBuf::new(256);
        let mut out = Outbox::new(1);
        let mut decoder = Decoder::default();
        rx.push(&frame(Opcode::Text, b"one"));
        rx.push(&frame(Opcode::Text, b"two"));
        let mut seen = 0;
        decoder
            .drain(&mut rx, &mut out, |_, _| {
                seen += 1;
                Flow::Stop
            })
            .unwrap();
        assert_eq!(seen, 1);
        decoder
            .drain(&mut rx, &mut out, |m, _| {
                assert_eq!(m, b"two");
                Flow::Continue
            })
            .unwrap();
        assert!(rx.data().is_empty());
        rx.push(&[0x88, 2, 0x0f, 0xa1]);
        assert!(matches!(
            decoder.drain(&mut rx, &mut out, |_, _| Flow::Continue),
            Err(WsError::Closed(Some(4001)))
        ));
    }

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&frame(Opcode::Text, b"hello"));
        wire.extend_from_slice(&frame(Opcode::Text, &[b'a'; 300]));
        wire.extend_from_slice(&frame(Opcode::Text, b"bye"));
        for split in 1..wire.len() {
            let (got, _) = messages(&[&wire[..split], &wire[split..]]);
            assert_eq!(got.len(), 3, "split at {split}");
            assert_eq!(got[0], b"hello");
            assert_eq!(got[1].len(), 300);
            assert_eq!(got[2], b"bye");
        }
        let bytewise: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(messages(&bytewise).0.len(), 3);
    }

    #[test]
    fn sixteen_and_sixty_four_bit_lengths() {
        let f = frame(Opcode::Text, &[b'x'; 300]);
        let h = parse_header(&f, false).unwrap().unwrap();
        assert_eq!((h.header_len, h.payload_len), (4, 300));
        let f = frame(Opcode::Text, &vec![b'y'; 70_000]);
        let h = parse_header(&f, false).unwrap().unwrap();
        assert_eq!((h.header_len, h.payload_len), (10, 70_000));
        assert!(parse_header(&f[..9], false).unwrap().is_none());
        assert!(parse_header(&f[..3], false).unwrap().is_none());
        let (got, _) = messages(&[&f[..5000], &f[5000..]]);
        assert_eq!(got[0].len(), 70_000);
        // A 64-bit length with the top bit set is invalid.
        let mut bad = vec![0x81, 127];
        bad.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(parse_header(&bad, false).is_err());
    }

    #[test]
    fn masked_or_oversized_control_frames_are_refused() {
        assert!(parse_header(&[0x81, 0x85, 0, 0, 0, 0], false).is_err());
        assert!(parse_header(&[0x89, 126, 0, 200], false).is_err());
        assert!(parse_header(&[0x09, 0], false).is_err());
    }

    #[test]
    fn fragments_and_pings() {
        let mut wire = vec![0x01, 3];
        wire.extend_from_slice(b"abc");
        wire.extend_from_slice(&frame(Opcode::Ping, b"p"));
        wire.extend_from_slice(&[0x80, 2, b'd', b'e']);
        let (got, out) = messages(&[&wire]);
        assert_eq!(got, vec![b"abcde".to_vec()]);
        // One masked pong carrying "p".
        assert_eq!(out[0], 0x8A);
        assert_eq!(out[1], 0x80 | 1);
        assert_eq!(out[6] ^ out[2], b'p');
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Outbox::new(42);
        out.text(&[b'z'; 200]);
        assert_eq!(out.buf[0], 0x81);
        assert_eq!(out.buf[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([out.buf[2], out.buf[3]]), 200);
        let mask = [out.buf[4], out.buf[5], out.buf[6], out.buf[7]];
        let payload: Vec<u8> = out.buf[8..].iter().enumerate().map(|(i, b)| b ^ mask[i & 3]).collect();
        assert_eq!(payload, vec![b'z'; 200]);
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn find_locates_needles() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(find(b"aaa", b"b"), None);
        assert_eq!(find(b"x\r\n\r\n", b"\r\n\r\n"), Some(1));
    }

    #[test]
    fn compressed_messages_are_inflated_only_once_deflate_was_agreed() {
        let message = br#"{"event":"quote","data":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
        let compressed = plexus_protocol::deflate::compress_frame(&frame(Opcode::Text, message)).unwrap();
        let mut rx = ReadBuf::new(256);
        rx.push(&compressed);
        let mut plain = Decoder::default();
        assert!(
            plain.drain(&mut rx, &mut Outbox::new(7), |_, _| Flow::Continue).is_err(),
            "RSV1 unasked for"
        );
        let mut decoder = Decoder { inflate: true, ..Decoder::default() };
        let mut got = Vec::new();
        decoder
            .drain(&mut rx, &mut Outbox::new(7), |m, _| {
                got.push(m.to_vec());
                Flow::Continue
            })
            .unwrap();
        assert_eq!(got, vec![message.to_vec()]);
    }
}
