//! For tests only (feature `test-ca`): a CA made in the test (nothing committed), certificates it
//! issues for loopback servers, and a small HTTPS server that reports each handshake's outcome.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::sync::mpsc;

/// A throwaway certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

/// A server certificate and its key, as PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "plexus test CA");
        let key = KeyPair::generate().expect("a key");
        TestCa { issuer: CertifiedIssuer::self_signed(params, key).expect("a CA certificate") }
    }

    /// The CA certificate, PEM: what a client's `ca_file` holds.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns that path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.cert_pem()).expect("write ca.pem");
        path
    }

    /// A certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("a key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .expect("valid names")
            .signed_by(&key, &self.issuer)
            .expect("signed");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// The leaf for `localhost` and `127.0.0.1`, for servers on loopback.
    pub fn loopback(&self) -> Leaf {
        self.issue(&["localhost", "127.0.0.1"])
    }
}

impl Leaf {
    /// Writes `{name}.pem` and `{name}.key` into `dir`; returns (certificate, key) paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write certificate");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    /// A rustls server configuration presenting this certificate (HTTP/1.1 by ALPN).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key PEM");
        let mut config = ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the defaults")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("matching certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// What the HTTPS server saw: a finished handshake, a refused one (with rustls's reason), or a
/// request.
#[derive(Debug)]
pub enum Seen {
    Handshake,
    HandshakeFailed(String),
    Request(Box<hyper::Request<Bytes>>),
}

/// An HTTPS/1.1 server on 127.0.0.1 that answers every request with `answer(request)` (status,
/// JSON body) and reports what it sees.
#[derive(Debug)]
pub struct HttpsServer {
    pub addr: SocketAddr,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpsServer {
    pub async fn start(
        leaf: &Leaf,
        answer: impl Fn(&hyper::Request<Bytes>) -> (u16, String) + Send + Sync + 'static,
    ) -> HttpsServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("bound");
        let acceptor = tokio_rustls::TlsAcceptor::from(leaf.server_config());
        let (tx, seen) = mpsc::unbounded_channel();
        let answer = Arc::new(answer);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, tx, answer) = (acceptor.clone(), tx.clone(), answer.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let _ = tx.send(Seen::Handshake);
                            tls
                        }
                        Err(err) => {
                            let _ = tx.send(Seen::HandshakeFailed(err.to_string()));
                            return;
                        }
                    };
                    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let (tx, answer) = (tx.clone(), answer.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let request = hyper::Request::from_parts(parts, body);
                            let (status, text) = answer(&request);
                            let _ = tx.send(Seen::Request(Box::new(request)));
                            let response = hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(text)))
                                .expect("a valid response");
                            Ok::<_, hyper::Error>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        HttpsServer { addr, seen, task }
    }

    /// `https://127.0.0.1:{port}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// The next thing seen, within `wait` (None when nothing came).
    pub async fn next(&mut self, wait: std::time::Duration) -> Option<Seen> {
        tokio::time::timeout(wait, self.seen.recv()).await.ok().flatten()
    }

    /// Waits (up to `wait`) for the next request, skipping handshake reports; panics on a
    /// refused handshake.
    pub async fn request(&mut self, wait: std::time::Duration) -> hyper::Request<Bytes> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Seen::Request(request)) => return *request,
                Some(Seen::Handshake) => {}
                Some(Seen::HandshakeFailed(reason)) => panic!("a client refused the handshake: {reason}"),
                None => panic!("no request within {wait:?}"),
            }
        }
    }

    /// Waits (up to `wait`) for a refused handshake and returns its reason; panics if a request
    /// arrives first.
    pub async fn refused(&mut self, wait: std::time::Duration) -> String {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Seen::HandshakeFailed(reason)) => return reason,
                Some(Seen::Handshake) => {}
                Some(Seen::Request(request)) => panic!("a request arrived: {request:?}"),
                None => panic!("no refused handshake within {wait:?}"),
            }
        }
    }
}
