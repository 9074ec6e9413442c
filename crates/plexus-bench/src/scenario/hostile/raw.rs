//! Raw TCP and HTTP for attacks: connections from a chosen loopback source, hand-written
//! requests, and the server's reaction named for the tallies (`http_400`, `closed_eof`,
//! `reset`, `no_response`, `held_open`, …). Every wait here ends at a given instant.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::rbuf::ReadBuf;
use crate::ws::{find, io_kind};

/// Makes the `n`-th trickled header line.
pub type LineFn = dyn Fn(u64) -> Vec<u8> + Sync;

/// What the server did, and how long after our last deliberate act (`None`: it did nothing).
pub type Reaction = (String, Option<Duration>);

/// Short name of an I/O failure: resets and broken pipes are both the server hanging up hard.
pub fn io_outcome(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted => {
            "reset".into()
        }
        _ => format!("io_{}", io_kind(e)),
    }
}

/// TCP connect from `source` (kernel-chosen port), with an optional small receive buffer.
pub async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    recv_buffer: Option<u32>,
    until: Instant,
) -> Result<TcpStream, String> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("connect_{}", io_kind(&e)))?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).map_err(|e| format!("connect_{}", io_kind(&e)))?;
    }
    if let Some(size) = recv_buffer {
        let _ = socket.set_recv_buffer_size(size);
    }
    match tokio::time::timeout_at(until.into(), socket.connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(format!("connect_{}", io_kind(&e))),
        Err(_) => Err("connect_timeout".into()),
    }
}

/// Status code of a response head at the front of `buf`, and the head's length.
pub fn head_status(buf: &[u8]) -> Option<(u16, usize)> {
    let end = find(buf, b"\r\n\r\n")?;
    let line = std::str::from_utf8(&buf[..end]).ok()?.split("\r\n").next()?;
    let status = line.split(' ').nth(1)?.parse().ok()?;
    Some((status, end + 4))
}

/// Reads until a response head arrived; consumes it and returns its status. Errors name what
/// happened instead (`eof`, `reset`, `no_response`, `garbled`).
pub async fn read_status<R>(stream: &mut R, rx: &mut ReadBuf, until: Instant) -> Result<u16, String>
where
    R: tokio::io::AsyncRead + Unpin,
{
    loop {
        if let Some((status, len)) = head_status(rx.data()) {
            rx.consume(len);
            return Ok(status);
        }
        if rx.data().len() > 64 * 1024 {
            return Err("garbled".into());
        }
        match tokio::time::timeout_at(until.into(), rx.fill(stream)).await {
            Ok(Ok(0)) => return Err("eof".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(io_outcome(&e)),
            Err(_) => return Err("no_response".into()),
        }
    }
}

/// One request on a fresh connection; the reaction is the status (`http_404`) or what happened.
pub async fn request(addr: SocketAddr, source: Option<IpAddr>, bytes: &[u8], until: Instant) -> Reaction {
    let mut stream = match connect(addr, source, None, until).await {
        Ok(s) => s,
        Err(reason) => return (reason, None),
    };
    let sent = Instant::now();
    if let Err(e) = stream.write_all(bytes).await {
        return (io_outcome(&e), Some(sent.elapsed()));
    }
    let mut rx = ReadBuf::new(4096);
    match read_status(&mut stream, &mut rx, until).await {
        Ok(status) => (format!("http_{status}"), Some(sent.elapsed())),
        Err(reason) if reason == "no_response" => (reason, None),
        Err(reason) => (reason, Some(sent.elapsed())),
    }
}

/// Keeps `stream` open until `until`, writing `trickle(n)` every `every` when given, and watching
/// for the server to answer or hang up: `http_408`, `closed_eof`, `reset`, or `held_open` when
/// it did neither. The reaction time counts from `started`.
pub async fn hold(
    stream: &mut TcpStream,
    started: Instant,
    until: Instant,
    trickle: Option<(Duration, &LineFn)>,
) -> Reaction {
    let mut rx = ReadBuf::new(4096);
    let mut n = 0u64;
    let mut next_line = trickle.map(|(every, _)| Instant::now() + every);
    loop {
        let line_at = next_line.unwrap_or(until);
        tokio::select! {
            read = rx.fill(stream) => match read {
                Ok(0) => return ("closed_eof".into(), Some(started.elapsed())),
                Ok(_) => {
                    if let Some((status, _)) = head_status(rx.data()) {
                        return (format!("http_{status}"), Some(started.elapsed()));
                    }
                    if rx.data().len() > 64 * 1024 {
                        return ("garbled".into(), Some(started.elapsed()));
                    }
                }
                Err(e) => return (io_outcome(&e), Some(started.elapsed())),
            },
            () = tokio::time::sleep_until(line_at.into()), if next_line.is_some() && line_at < until => {
                if let Some((every, line)) = trickle {
                    if let Err(e) = stream.write_all(&line(n)).await {
                        return (io_outcome(&e), Some(started.elapsed()));
                    }
                    n += 1;
                    next_line = Some(Instant::now() + every);
                }
            }
            () = tokio::time::sleep_until(until.into()) => return ("held_open".into(), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_of_a_head() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        let mut wire = head.to_vec();
        wire.extend_from_slice(b"xx");
        assert_eq!(head_status(&wire), Some((101, head.len())));
        assert_eq!(head_status(b"HTTP/1.1 400 Bad"), None);
        assert_eq!(head_status(b"garbage\r\n\r\n"), None);
    }

    #[test]
    fn resets_are_named_alike() {
        assert_eq!(io_outcome(&io::Error::from(io::ErrorKind::ConnectionReset)), "reset");
        assert_eq!(io_outcome(&io::Error::from(io::ErrorKind::BrokenPipe)), "reset");
        assert_eq!(io_outcome(&io::Error::from(io::ErrorKind::TimedOut)), "io_timed_out");
    }
}
