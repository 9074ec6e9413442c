//! NATS over TLS against a private nats-server whose config requires TLS, with a certificate from
//! a CA made in the test: the whole transport contract passes over `tls://` when the CA is the
//! `ca_file`; without it the connection is refused with the URL and the TLS reason (also when
//! the URL says `nats://` and the server asks for TLS); and a CA file never lets a server without
//! TLS be used in the clear.

use std::path::PathBuf;
use std::sync::Arc;

use plexus_core::cluster::{InboundSender, NodeId, Transport};
use plexus_tls::test_ca::TestCa;
use plexus_transport_tests::{free_port, run_contract, unique_prefix, ServerProcess};

const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A private nats-server on a free loopback port (TLS required when `tls`), its CA's PEM file,
/// and its temp dir.
struct Nats {
    _server: ServerProcess,
    port: u16,
    ca_file: PathBuf,
    dir: PathBuf,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn nats(name: &str, tls: bool) -> Nats {
    let dir = std::env::temp_dir().join(format!("plexus-nats-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.loopback().write(&dir, "nats");
    let ca_file = ca.write_ca(&dir);
    let port = free_port();
    let tls_block = if tls {
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 2\n}}\n",
            cert.display(),
            key.display()
        )
    } else {
        String::new()
    };
    let config = dir.join("nats.conf");
    std::fs::write(&config, format!("listen: \"127.0.0.1:{port}\"\n{tls_block}")).unwrap();
    let args = vec!["-c".into(), config.display().to_string()];
    let server = ServerProcess::start(NATS_SERVER, args, port).await;
    Nats { _server: server, port, ca_file, dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transport_contract_holds_over_tls_with_a_private_ca() {
    let nats = nats("contract", true).await;
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let connector = |prefix: String, node: NodeId, inbound: InboundSender| {
        let (url, ca_file) = (url.clone(), nats.ca_file.clone());
        async move {
            let transport: Arc<dyn Transport> =
                plexus_nats::connect_with(&url, Some(&ca_file), &prefix, node, inbound)
                    .await
                    .unwrap_or_else(|err| panic!("tls:// with the test CA: {err}"));
            transport
        }
    };
    run_contract(&connector).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_the_server_is_refused_and_the_error_says_why() {
    let nats = nats("refused", true).await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    for url in [format!("tls://127.0.0.1:{}", nats.port), format!("nats://127.0.0.1:{}", nats.port)] {
        let err = plexus_nats::connect(&url, &unique_prefix("refused"), 1, tx.clone())
            .await
            .expect_err("the test CA is not among the system's roots");
        let text = err.to_string();
        assert!(text.contains(&url), "names the URL: {text}");
        assert!(text.contains("UnknownIssuer"), "gives the TLS reason: {text}");
    }
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let err = plexus_nats::connect(&url, &unique_prefix("refused"), 1, tx).await.unwrap_err().to_string();
    assert!(err.contains("ca_file"), "and what to do about it: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_requires_tls_even_from_a_server_that_does_not_offer_it() {
    let nats = nats("plain", false).await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let err = plexus_nats::connect_with(&url, Some(&nats.ca_file), &unique_prefix("plain"), 1, tx.clone())
        .await
        .expect_err("no TLS offered, so no connection");
    let text = err.to_string();
    assert!(text.contains(&url) && text.contains("did not answer in TLS"), "{text}");
    // Without a CA file the same server is fine in the clear: nothing asked for TLS.
    plexus_nats::connect(&url, &unique_prefix("plain"), 2, tx).await.expect("plain NATS");
}
