//! Outbound TLS for plexus's clients: https webhooks and action proxy backends (hyper, through
//! [`http`]), `rediss://` (redis), `tls://` NATS (async-nats) and PostgreSQL (`sslmode=require`).
//!
//! One policy for every connection plexus makes:
//!
//! - **Trust** is the system's root certificates (`rustls-native-certs`: on Debian the
//!   `ca-certificates` store under `/etc/ssl/certs`) or, where a connection sets `ca_file`, the
//!   CA certificates of that PEM file *instead* (a private CA: only certificates it signed are
//!   accepted). This is what `sslrootcert` means to libpq, and what redis and async-nats do with
//!   a root certificate of their own.
//! - **Verification is never off**: the chain must lead to a trusted root and the certificate must
//!   name the host of the URL (DNS name or IP address). There is no "insecure" switch.
//! - **No downgrade**: a URL that asks for TLS gets TLS or an error; a `ca_file` next to a URL
//!   that would not use TLS is a configuration error, not a silent plaintext connection.
//! - **Crypto** is rustls on *ring*, the provider already in the binary (aws-lc-rs would add a
//!   cmake C build).
//!
//! Errors name what failed and why; [`describe`] turns a client library's error chain into one
//! line and adds a hint when the reason is a refused certificate ([`hint`]).
//!
//! ```no_run
//! use std::path::Path;
//!
//! // The system's roots, as for a webhook receiver on the public internet...
//! let public = plexus_tls::client_config(None)?;
//! // ...or only a private CA's certificates, as for a database on an internal network.
//! let internal = plexus_tls::client_config(Some(Path::new("/etc/plexus/internal-ca.pem")))?;
//! # let _ = (public, internal);
//! # Ok::<(), plexus_tls::TlsError>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, ClientConfig, RootCertStore};

pub use rustls;

#[cfg(feature = "hyper")]
pub mod http;
#[cfg(feature = "test-ca")]
pub mod test_ca;

/// Why trust could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {}: {reason}", .path.display())]
    ReadCaFile { path: PathBuf, reason: String },
    #[error("CA file {}: {reason}", .path.display())]
    BadCaFile { path: PathBuf, reason: String },
    #[error(
        "no system root certificates could be loaded ({reason}); install the ca-certificates \
         package, or set ca_file to the PEM file of the CA that signed the server's certificate"
    )]
    NoSystemRoots { reason: String },
}

/// The crypto provider of every outbound connection: *ring*.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(ring::default_provider())).clone()
}

/// Makes *ring* the process's default provider, for client libraries that build their rustls
/// configuration with `ClientConfig::builder()` (redis, async-nats). Harmless when a default is
/// already installed.
pub fn install_default_provider() {
    let _ = ring::default_provider().install_default();
}

/// A PEM file of CA certificates, read and checked.
#[derive(Debug, Clone)]
pub struct CaFile {
    pub path: PathBuf,
    /// The file as it was read (for client libraries that take PEM bytes).
    pub pem: Vec<u8>,
    pub certs: Vec<CertificateDer<'static>>,
}

impl CaFile {
    /// Reads `path`: it must hold at least one PEM `CERTIFICATE` block, each usable as a trust
    /// anchor.
    pub fn read(path: &Path) -> Result<CaFile, TlsError> {
        let pem = std::fs::read(path)
            .map_err(|err| TlsError::ReadCaFile { path: path.to_owned(), reason: err.to_string() })?;
        let bad = |reason: String| TlsError::BadCaFile { path: path.to_owned(), reason };
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| bad(format!("not a PEM certificate file: {err}")))?;
        if certs.is_empty() {
            return Err(bad(
                "no certificate in it (expected PEM `-----BEGIN CERTIFICATE-----` blocks)".into()
            ));
        }
        let mut store = RootCertStore::empty();
        for (n, cert) in certs.iter().enumerate() {
            store
                .add(cert.clone())
                .map_err(|err| bad(format!("certificate {} is not usable as a CA: {err}", n + 1)))?;
        }
        Ok(CaFile { path: path.to_owned(), pem, certs })
    }

    fn roots(&self) -> RootCertStore {
        let mut store = RootCertStore::empty();
        store.add_parsable_certificates(self.certs.iter().cloned());
        store
    }
}

/// The system's root certificates, loaded once per process.
pub fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, TlsError>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            store.add_parsable_certificates(loaded.certs);
            if store.is_empty() {
                let reason = if loaded.errors.is_empty() {
                    "the system's store is empty".to_owned()
                } else {
                    loaded.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
                };
                return Err(TlsError::NoSystemRoots { reason });
            }
            Ok(Arc::new(store))
        })
        .clone()
}

/// What to trust: the CA file's certificates when one is given, otherwise the system's roots.
pub fn roots(ca_file: Option<&Path>) -> Result<Arc<RootCertStore>, TlsError> {
    match ca_file {
        Some(path) => Ok(Arc::new(CaFile::read(path)?.roots())),
        None => system_roots(),
    }
}

/// A client configuration that verifies servers against [`roots`]`(ca_file)`, on *ring*, with
/// TLS 1.2 and 1.3 and no client certificate.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    Ok(Arc::new(config_with_roots(roots(ca_file)?)))
}

fn config_with_roots(roots: Arc<RootCertStore>) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// One line from an error and its sources ("a: b: c"), leaving out a source whose text the line
/// already holds, then the [`hint`] for a refused certificate, if any.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    if let Some(hint) = hint(err) {
        text.push_str(" (");
        text.push_str(hint);
        text.push(')');
    }
    text
}

/// What to do about a refused server certificate somewhere in `err`'s chain (rustls errors are
/// often wrapped in `std::io::Error`, whose `source` skips them, so those are looked into too).
pub fn hint(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut next = Some(err);
    while let Some(current) = next {
        if let Some(found) = rustls_error(current).and_then(hint_for) {
            return Some(found);
        }
        next = current.source();
    }
    None
}

/// The rustls error `err` is, or wraps in (possibly nested) `std::io::Error`s (hyper-rustls
/// wraps tokio-rustls's io::Error in another) or an `Arc` (redis keeps its io::Error in one).
/// Both hide the wrapped error from `source`, so the chain alone never shows it.
fn rustls_error<'a>(mut err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    loop {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(shared) = err.downcast_ref::<Shared>() {
            err = &**shared;
            continue;
        }
        err = err.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

fn hint_for(err: &rustls::Error) -> Option<&'static str> {
    let cert = match err {
        rustls::Error::InvalidCertificate(cert) => cert,
        rustls::Error::InvalidMessage(_) => {
            return Some(
                "the server did not answer in TLS: is TLS enabled on it, and is this the port it \
                 serves TLS on?",
            )
        }
        _ => return None,
    };
    Some(match cert {
        CertificateError::UnknownIssuer => {
            "the server's certificate is not signed by a CA this connection trusts: set its ca_file \
             to the PEM file of the CA that signed it"
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "the server's certificate does not name the host of the URL"
        }
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is outside its validity period (or this machine's clock is wrong)"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, contents: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("plexus-tls-unit-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named_with_the_reason() {
        let missing = Path::new("/nonexistent/plexus-ca.pem");
        let err = CaFile::read(missing).unwrap_err().to_string();
        assert!(err.starts_with("cannot read CA file /nonexistent/plexus-ca.pem: "), "{err}");

        let empty = temp("empty.pem", b"just text\n");
        let err = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(err.contains(&empty.display().to_string()) && err.contains("no certificate"), "{err}");

        let garbage =
            temp("garbage.pem", b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n");
        let err = CaFile::read(&garbage).unwrap_err().to_string();
        assert!(err.contains(&garbage.display().to_string()), "{err}");
        for path in [empty, garbage] {
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn a_refused_certificate_gets_a_hint_even_inside_an_io_error() {
        let tls = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, tls));
        let text = describe(&io);
        assert!(text.starts_with("invalid peer certificate: UnknownIssuer ("), "{text}");
        assert!(text.contains("ca_file"), "{text}");
        let tls = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        let shared: Arc<dyn std::error::Error + Send + Sync> =
            Arc::new(std::io::Error::new(std::io::ErrorKind::InvalidData, tls));
        assert_eq!(hint(&shared), Some("the server's certificate does not name the host of the URL"));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(describe(&plain), "refused");
    }
}
