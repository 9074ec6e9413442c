//! TLS for the app store's connections: tokio-postgres's connector traits over tokio-rustls, with
//! plexus-tls's trust (the system's roots, or `ca_file` instead), and what a URL's `sslmode`
//! means here.
//!
//! | URL `sslmode` | `ca_file` | connection |
//! | --- | --- | --- |
//! | absent or `disable` | none | plain TCP, as before TLS was supported |
//! | `require`, `verify-ca` or `verify-full` | none | TLS, verified against the system's roots |
//! | absent, `require`, `verify-ca` or `verify-full` | set | TLS, verified against the CA file |
//! | `prefer` | any | refused: it falls back to plain TCP without a word |
//! | `disable` | set | refused: the CA file would be ignored |
//!
//! Verified always means the chain and the host name (libpq's `verify-full`): `require` does not
//! mean "encrypt but trust anyone" here. Channel binding is not offered (SCRAM still never sends
//! the password; the TLS certificate is verified), so `channel_binding=require` is refused by the
//! server handshake.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use plexus_tls::rustls::pki_types::{InvalidDnsNameError, ServerName};
use plexus_tls::rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// Connects with TLS, verifying the server against `config`'s roots.
#[derive(Clone)]
pub(crate) struct RustlsConnect {
    config: Arc<ClientConfig>,
}

impl RustlsConnect {
    pub(crate) fn new(ca_file: Option<&Path>) -> Result<RustlsConnect, plexus_tls::TlsError> {
        Ok(RustlsConnect { config: plexus_tls::client_config(ca_file)? })
    }
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnector;
    type Error = InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnector, InvalidDnsNameError> {
        Ok(RustlsConnector { config: self.config.clone(), name: ServerName::try_from(domain)?.to_owned() })
    }
}

/// One connection's handshake, for the host it was made for.
pub(crate) struct RustlsConnector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            Ok(RustlsStream(connector.connect(self.name, stream).await?))
        })
    }
}

/// A TLS connection to the server.
pub(crate) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// What the URL asks for, read before tokio-postgres parses it (which cannot tell an absent
/// `sslmode` from `prefer`, and knows no `verify-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    Nothing,
    Disable,
    Prefer,
    /// `require`, `verify-ca` or `verify-full`.
    Verified,
    Other,
}

/// The `sslmode` of a URL (`postgres://…?sslmode=…`) or key/value string (`sslmode=…`), and the
/// text with a `verify-ca` / `verify-full` spelt `require`, which tokio-postgres understands.
pub(crate) fn sslmode(url: &str) -> (Asked, String) {
    let Some(at) = find_key(url, "sslmode=") else { return (Asked::Nothing, url.to_owned()) };
    let start = at + "sslmode=".len();
    let end = url[start..]
        .find(|c: char| c == '&' || c == '#' || c.is_whitespace())
        .map_or(url.len(), |n| start + n);
    let value = &url[start..end];
    let asked = match value {
        "disable" => Asked::Disable,
        "prefer" | "allow" => Asked::Prefer,
        "require" | "verify-ca" | "verify-full" => Asked::Verified,
        _ => Asked::Other,
    };
    let rewritten = if asked == Asked::Verified {
        format!("{}require{}", &url[..start], &url[end..])
    } else {
        url.to_owned()
    };
    (asked, rewritten)
}

/// Where `key` starts as a parameter: after `?`, `&`, whitespace, or at the start.
fn find_key(url: &str, key: &str) -> Option<usize> {
    url.match_indices(key)
        .map(|(at, _)| at)
        .find(|&at| at == 0 || url[..at].ends_with(['?', '&', ' ', '\t', '\n']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_read_from_urls_and_key_value_strings() {
        assert_eq!(sslmode("postgres://u@h/db").0, Asked::Nothing);
        assert_eq!(sslmode("postgres://u@h/db?sslmode=disable").0, Asked::Disable);
        assert_eq!(sslmode("postgres://u@h/db?connect_timeout=3&sslmode=prefer").0, Asked::Prefer);
        assert_eq!(
            sslmode("postgres://u@h/db?sslmode=verify-full&x=1"),
            (Asked::Verified, "postgres://u@h/db?sslmode=require&x=1".to_owned())
        );
        assert_eq!(
            sslmode("host=h sslmode=verify-ca dbname=d"),
            (Asked::Verified, "host=h sslmode=require dbname=d".to_owned())
        );
        assert_eq!(sslmode("host=h xsslmode=require").0, Asked::Nothing, "only a whole key counts");
        assert_eq!(sslmode("host=h sslmode=nonsense").0, Asked::Other);
    }
}
