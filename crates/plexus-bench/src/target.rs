//! Where the load goes: the server's address (loopback only, checked here) and the app's
//! credentials, plus the local source addresses connections may be bound to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The server under test and the app used against it.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Value of the `Host` header.
    pub host_header: String,
    pub app_id: String,
    pub key: String,
    pub secret: String,
    /// Offer permessage-deflate on every WebSocket (`--deflate`).
    pub deflate: bool,
}

impl Target {
    /// Path of the WebSocket endpoint for this app.
    pub fn ws_path(&self) -> String {
        format!(
            "/app/{}?protocol=7&client=plexus-bench&version={}&flash=false",
            self.key,
            env!("CARGO_PKG_VERSION")
        )
    }
}

/// Resolves `host` to a loopback address, refusing anything else: this tool must never load a
/// machine other than the one it runs on. Accepts `localhost`, `127.x.x.x`, `::1` and `[::1]`.
pub fn loopback_ip(host: &str) -> Result<IpAddr, String> {
    let trimmed = host.trim();
    if trimmed.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let bare = trimmed.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(trimmed);
    let ip: IpAddr = bare
        .parse()
        .map_err(|_| format!("refusing host {host:?}: only 127.x.x.x, localhost or ::1 are allowed"))?;
    let loopback = match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    };
    if loopback {
        Ok(ip)
    } else {
        Err(format!("refusing host {host:?}: only 127.x.x.x, localhost or ::1 are allowed"))
    }
}

/// Local addresses to spread connections over: `127.0.0.1 ..= 127.0.0.K`. `None` for one source
/// (let the kernel choose); an error when several are asked of an IPv6 target or K is out of range.
pub fn source_ips(target: IpAddr, sources: u16) -> Result<Option<Vec<IpAddr>>, String> {
    match (sources, target) {
        (0, _) => Err("--sources must be at least 1".into()),
        (1, _) => Ok(None),
        (2..=254, IpAddr::V4(_)) => {
            Ok(Some((1..=sources).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8))).collect()))
        }
        (2..=254, IpAddr::V6(_)) => Err("--sources > 1 needs an IPv4 loopback target".into()),
        _ => Err("--sources must be at most 254".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_accepted() {
        for h in ["127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "::1", "[::1]"] {
            assert!(loopback_ip(h).is_ok(), "{h}");
        }
        assert_eq!(loopback_ip("localhost").unwrap(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn other_hosts_are_refused() {
        for h in [
            "10.0.0.1",
            "0.0.0.0",
            "192.168.1.1",
            "::",
            "::ffff:127.0.0.1",
            "example.com",
            "localhost.example.com",
            "128.0.0.1",
            "",
        ] {
            assert!(loopback_ip(h).is_err(), "{h}");
        }
    }

    #[test]
    fn sources_span_127_0_0_k() {
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(source_ips(v4, 1).unwrap(), None);
        let s = source_ips(v4, 3).unwrap().unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        assert!(source_ips(v4, 0).is_err());
        assert!(source_ips(v4, 255).is_err());
        assert!(source_ips(IpAddr::V6(Ipv6Addr::LOCALHOST), 2).is_err());
    }
}
