//! TLS on the main listener (`[server.tls]`): `wss://` and `https://` on the port that would
//! otherwise speak plain `ws://` and `http://`.
//!
//! This module owns reading the PEM files, checking that the key belongs to the certificate, and
//! swapping them at run time ([`Tls::reload`], which `main.rs` calls on SIGHUP). The swap goes
//! through a certificate resolver, so the rustls server configuration and every established
//! connection are untouched: only handshakes that start after the swap see the new certificate.
//!
//! The crypto provider is *ring*: it is already compiled into the binary for the NATS client,
//! and it builds with a C compiler alone, where aws-lc-rs would add a large C build (cmake) to
//! every fresh machine for no gain at our handshake rates.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, InconsistentKeys};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client that opens a TCP connection but never finishes the handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[server.tls]`: PEM files. Both are read at start and again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (e.g. Let's Encrypt's `fullchain.pem`).
    pub cert: PathBuf,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why the certificate files cannot be used. Every variant names the file at fault, and its
/// message is complete: the underlying error is part of it, not a `source` as well, so that a
/// chain printed whole (`{:#}`) says it once.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS file {path} (server.tls.{field}): {reason}")]
    Read { field: &'static str, path: String, reason: std::io::Error },
    #[error("no PEM certificate in {path} (server.tls.cert): {reason}")]
    NoCertificate { path: String, reason: String },
    #[error("no PEM private key in {path} (server.tls.key): {reason}")]
    NoKey { path: String, reason: String },
    #[error("the private key in {key} does not match the certificate in {cert}")]
    Mismatch { cert: String, key: String },
    #[error("unusable TLS key or certificate ({cert}, {key}): {reason}")]
    Unusable { cert: String, key: String, reason: rustls::Error },
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Reads and checks the certificate and key named by `files`.
fn load(files: &TlsConfig, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |field, path: &Path| {
        std::fs::read(path).map_err(|reason| TlsError::Read { field, path: shown(path), reason })
    };
    let cert_pem = read("cert", &files.cert)?;
    let key_pem = read("key", &files.key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate { path: shown(&files.cert), reason: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: shown(&files.cert),
            reason: "expected a -----BEGIN CERTIFICATE----- block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError::NoKey { path: shown(&files.key), reason: e.to_string() })?;
    CertifiedKey::from_der(chain, key, provider).map(Arc::new).map_err(|source| match source {
        rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
            TlsError::Mismatch { cert: shown(&files.cert), key: shown(&files.key) }
        }
        reason => TlsError::Unusable { cert: shown(&files.cert), key: shown(&files.key), reason },
    })
}

/// Hands every handshake the certificate current at that moment.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The listener's TLS state: the acceptor and the swappable certificate behind it.
pub struct Tls {
    files: TlsConfig,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the files; fails, naming the file, when they are unreadable, not PEM, or do not
    /// belong together.
    pub fn load(files: &TlsConfig) -> Result<Arc<Tls>, TlsError> {
        let provider = provider();
        let key = load(files, &provider)?;
        let resolver = Arc::new(Resolver { current: RwLock::new(key) });
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|reason| TlsError::Unusable {
                cert: shown(&files.cert),
                key: shown(&files.key),
                reason,
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // Only HTTP/1.1 is spoken (WebSocket upgrades need it).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(Tls {
            files: files.clone(),
            provider,
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }))
    }

    /// Reads the files again and, if they are good, serves them to every later handshake. On an
    /// error the current certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load(&self.files, &self.provider)?;
        *self.resolver.current.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }

    /// Completes the server side of a handshake, or gives up after [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }
}
