//! Connectors for hyper-util's client: `http://` in the clear, `https://` over TLS verified as
//! the crate root describes (hyper-rustls, HTTP/1.1 only).

use std::path::Path;
use std::sync::Arc;

use hyper_util::client::legacy::connect::HttpConnector;
use rustls::RootCertStore;

use crate::TlsError;

/// `http://` and `https://` URLs; an `https://` URL is never sent in the clear.
pub type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A connector whose `https://` requests trust [`crate::roots`]`(ca_file)`.
pub fn connector(ca_file: Option<&Path>) -> Result<HttpsConnector, TlsError> {
    Ok(build(crate::roots(ca_file)?))
}

/// A connector for `http://` URLs only: it needs no trust store (so it works on a machine
/// without one), and an `https://` request through it fails its handshake, as it trusts no CA.
pub fn http_connector() -> HttpsConnector {
    build(Arc::new(RootCertStore::empty()))
}

fn build(roots: Arc<RootCertStore>) -> HttpsConnector {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(crate::config_with_roots(roots))
        .https_or_http()
        .enable_http1()
        .build()
}

/// Whether `url` is an `https://` URL (any case of the scheme).
pub fn is_https(url: &str) -> bool {
    url.get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}
