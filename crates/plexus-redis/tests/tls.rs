//! `rediss://` against a private redis-server that speaks TLS only (`--port 0 --tls-port …`), with
//! a certificate from a CA made in the test: the whole transport contract passes over TLS when the
//! CA is the `ca_file`; without it (the system's roots) the connection is refused and the error
//! names the URL and the TLS reason; a CA file never makes a `redis://` URL connect in the clear.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use plexus_core::cluster::{InboundSender, NodeId, Transport};
use plexus_tls::test_ca::TestCa;
use plexus_transport_tests::{free_port, run_contract, unique_prefix, ServerProcess};

/// A TLS-only redis-server on a free loopback port, its CA's PEM file, and its temp dir.
struct TlsRedis {
    _server: ServerProcess,
    url: String,
    ca_file: PathBuf,
    dir: PathBuf,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn tls_redis(name: &str) -> TlsRedis {
    let dir = std::env::temp_dir().join(format!("plexus-rediss-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.loopback().write(&dir, "redis");
    let ca_file = ca.write_ca(&dir);
    let port = free_port();
    let path = |p: &Path| p.display().to_string();
    let args = vec![
        "--port".into(),
        "0".into(),
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        path(&cert),
        "--tls-key-file".into(),
        path(&key),
        "--tls-ca-cert-file".into(),
        path(&ca_file),
        "--tls-auth-clients".into(),
        "no".into(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--save".into(),
        "".into(),
        "--appendonly".into(),
        "no".into(),
        "--dir".into(),
        path(&dir),
    ];
    let server = ServerProcess::start("redis-server", args, port).await;
    TlsRedis { _server: server, url: format!("rediss://127.0.0.1:{port}"), ca_file, dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transport_contract_holds_over_rediss_with_a_private_ca() {
    let redis = tls_redis("contract").await;
    let connector = |prefix: String, node: NodeId, inbound: InboundSender| {
        let (url, ca_file) = (redis.url.clone(), redis.ca_file.clone());
        async move {
            let transport: Arc<dyn Transport> =
                plexus_redis::connect_with(&url, Some(&ca_file), &prefix, node, inbound)
                    .await
                    .unwrap_or_else(|err| panic!("rediss with the test CA: {err}"));
            transport
        }
    };
    run_contract(&connector).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_the_server_is_refused_and_the_error_says_why() {
    let redis = tls_redis("refused").await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let err = plexus_redis::connect(&redis.url, &unique_prefix("refused"), 1, tx.clone())
        .await
        .expect_err("the test CA is not among the system's roots");
    let text = err.to_string();
    assert!(text.contains(&redis.url), "names the URL: {text}");
    assert!(text.contains("invalid peer certificate: UnknownIssuer") && text.contains("ca_file"), "{text}");

    // A CA file is never a reason to talk to a plain redis:// URL.
    let plain = redis.url.replacen("rediss://", "redis://", 1);
    let err = plexus_redis::connect_with(&plain, Some(&redis.ca_file), &unique_prefix("p"), 2, tx.clone())
        .await
        .expect_err("ca_file with redis://");
    assert!(err.to_string().contains("not rediss://"), "{err}");

    // Verification cannot be switched off from the URL.
    let insecure = format!("{}/#insecure", redis.url);
    let err =
        plexus_redis::connect(&insecure, &unique_prefix("i"), 3, tx).await.expect_err("#insecure is refused");
    assert!(err.to_string().contains("insecure"), "{err}");
}
