//! A minimal keep-alive HTTP/1.1 client for the signed Pusher HTTP API: builds signed publish
//! requests and parses `Content-Length` responses (several per read when requests are
//! pipelined). Chunked responses are not supported and are reported as an error.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use plexus_protocol::signature::sign_api_query;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::rbuf::ReadBuf;
use crate::target::Target;
use crate::ws::{find, io_kind};

/// A parsed response head; the body is `body_len` bytes right after the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Head + body: how many bytes to consume.
    pub total_len: usize,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// Why a response could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    Malformed(&'static str),
    Chunked,
}

impl HttpError {
    pub fn reason(&self) -> String {
        match self {
            HttpError::Malformed(why) => format!("http_malformed_{why}"),
            HttpError::Chunked => "http_chunked_unsupported".into(),
        }
    }
}

/// Parses one complete response from the front of `buf`; `Ok(None)` until all of it arrived.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response>, HttpError> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err(HttpError::Malformed("head_too_large"));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| HttpError::Malformed("utf8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    if !status_line.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("status_line"));
    }
    let status: u16 =
        status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(HttpError::Malformed("status"))?;
    let mut content_length = None;
    let mut close = status_line.starts_with("HTTP/1.0");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            content_length =
                Some(value.parse::<usize>().map_err(|_| HttpError::Malformed("content_length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            return Err(HttpError::Chunked);
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let body_len = match content_length {
        Some(n) => n,
        None if status == 204 || status == 304 || (100..200).contains(&status) => 0,
        None => return Err(HttpError::Malformed("no_content_length")),
    };
    let total_len = head_end + 4 + body_len;
    Ok((buf.len() >= total_len).then_some(Response { status, total_len, close }))
}

/// Builds signed API requests for one app.
#[derive(Debug, Clone)]
pub struct Signer {
    target: Target,
}

impl Signer {
    pub fn new(target: &Target) -> Self {
        Signer { target: target.clone() }
    }

    /// Appends a complete signed `POST /apps/{id}/{endpoint}` request carrying `body` to `out`.
    pub fn post(&self, endpoint: &str, body: &[u8], out: &mut Vec<u8>) {
        let t = &self.target;
        let path = format!("/apps/{}/{endpoint}", t.app_id);
        let query = sign_api_query(&t.key, &t.secret, "POST", &path, body, unix_secs(), &[]);
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "POST {path}?{query} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            t.host_header,
            body.len()
        );
        out.extend_from_slice(body);
    }
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Appends a JSON string literal for `s` (quotes and escapes included) to `out`.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// One keep-alive connection used request → response (closed loop).
#[derive(Debug)]
pub struct HttpConn {
    addr: SocketAddr,
    /// The local address to connect from (the kernel's choice when `None`).
    source: Option<std::net::IpAddr>,
    stream: Option<TcpStream>,
    rx: ReadBuf,
}

impl HttpConn {
    pub fn new(addr: SocketAddr) -> Self {
        HttpConn::from_source(addr, None)
    }

    /// Connects from `source`, so a server's per-address limits see this client apart from others.
    pub fn from_source(addr: SocketAddr, source: Option<std::net::IpAddr>) -> Self {
        HttpConn { addr, source, stream: None, rx: ReadBuf::new(8 * 1024) }
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        let Some(source) = self.source else { return TcpStream::connect(self.addr).await };
        let socket = match self.addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        socket.connect(self.addr).await
    }

    /// Sends one request and waits for its response; reconnects when the server closed the
    /// previous connection. Returns the status, or an error reason.
    pub async fn round_trip(&mut self, request: &[u8]) -> Result<u16, String> {
        if self.stream.is_none() {
            let stream = self.connect().await.map_err(|e| format!("http_connect_{}", io_kind(&e)))?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
            self.rx = ReadBuf::new(8 * 1024);
        }
        let result = self.exchange(request).await;
        if !matches!(result, Ok((_, false))) {
            self.stream = None;
        }
        result.map(|(status, _)| status)
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<(u16, bool), String> {
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(request).await.map_err(|e| format!("http_io_{}", io_kind(&e)))?;
        loop {
            if let Some(r) = parse_response(self.rx.data()).map_err(|e| e.reason())? {
                self.rx.consume(r.total_len);
                return Ok((r.status, r.close));
            }
            match self.rx.fill(stream).await {
                Ok(0) => return Err("http_eof".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("http_io_{}", io_kind(&e))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipelined_responses() {
        let one = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        let two =
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"e\":\"no\"}!";
        let mut wire = one.to_vec();
        wire.extend_from_slice(two);
        let r = parse_response(&wire).unwrap().unwrap();
        assert_eq!((r.status, r.total_len, r.close), (200, one.len(), false));
        let r = parse_response(&wire[r.total_len..]).unwrap().unwrap();
        assert_eq!((r.status, r.total_len, r.close), (401, two.len(), true));
        for cut in 0..one.len() {
            assert_eq!(parse_response(&one[..cut]).unwrap(), None, "{cut}");
        }
    }

    #[test]
    fn refuses_chunked_and_missing_length() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_response(chunked), Err(HttpError::Chunked));
        let nolen = b"HTTP/1.1 200 OK\r\n\r\n";
        assert!(parse_response(nolen).is_err());
        assert_eq!(parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap().unwrap().total_len, 27);
    }

    #[test]
    fn signed_request_has_query_and_body() {
        let target = Target {
            addr: "127.0.0.1:1".parse().unwrap(),
            host_header: "127.0.0.1:1".into(),
            app_id: "3".into(),
            key: "k".into(),
            secret: "s".into(),
            deflate: false,
        };
        let mut out = Vec::new();
        Signer::new(&target).post("events", b"{}", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /apps/3/events?auth_key=k&auth_timestamp="));
        assert!(text.contains("&body_md5=99914b932bd37a50b983c5e7c90ae93b&auth_signature="));
        assert!(text.ends_with("Content-Length: 2\r\n\r\n{}"));
    }
}
