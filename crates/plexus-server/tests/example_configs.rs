//! The configurations under `examples/config/` load through the loader `plexus serve` uses
//! (`Config::load`: TOML with unknown fields, wrong types and duplicates refused, then every
//! validation), so an example operators copy cannot drift from the schema.
//!
//! `Config::load` does not open the `[server.tls]` files (`plexus serve` reads them afterwards with
//! `Tls::load`, before binding), so the TLS example is parsed as written and its table is then
//! handed to `Tls::load` with a throwaway certificate in place of the example's paths.

use std::path::{Path, PathBuf};

use plexus_server::config::{AdapterDriver, AppStoreDriver, Config, DEV_APP};

/// Every example, by file name. A `.toml` added to the directory must be added here too.
const EXAMPLES: [&str; 5] =
    ["apps-in-postgres.toml", "cluster-nats.toml", "cluster-redis.toml", "single-node.toml", "tls.toml"];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/config")
}

fn load(name: &str) -> Config {
    Config::load(&examples_dir().join(name)).unwrap_or_else(|e| panic!("{name} does not load: {e}"))
}

fn text(name: &str) -> String {
    std::fs::read_to_string(examples_dir().join(name)).unwrap()
}

#[test]
fn every_example_loads_through_the_servers_loader() {
    let mut on_disk: Vec<String> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, EXAMPLES, "examples/config/*.toml and this test's list differ");
    for name in EXAMPLES {
        load(name);
    }
}

#[test]
fn each_example_wires_what_its_name_says() {
    let single = load("single-node.toml");
    assert_eq!(single.adapter.driver, AdapterDriver::Local);
    assert_eq!(single.app_store.driver, AppStoreDriver::Config);
    assert!(!single.apps.is_empty() && single.server.tls.is_none());

    let nats = load("cluster-nats.toml");
    assert_eq!(nats.adapter.driver, AdapterDriver::Nats);
    assert!(nats.adapter.url().starts_with("nats://"));

    let redis = load("cluster-redis.toml");
    assert_eq!(redis.adapter.driver, AdapterDriver::Redis);
    assert!(redis.adapter.url().starts_with("redis://"));
    assert!(redis.apps.len() >= 2, "the Redis example shows two isolated apps");

    let postgres = load("apps-in-postgres.toml");
    assert_eq!(postgres.app_store.driver, AppStoreDriver::Postgres);
    assert!(postgres.app_store.url.as_deref().is_some_and(|url| url.starts_with("postgres://")));
    assert!(postgres.apps.is_empty(), "apps come from the table, not the file");

    let tls = load("tls.toml");
    let files = tls.server.tls.expect("tls.toml has [server.tls]");
    assert!(files.cert.is_absolute() && files.key.is_absolute(), "{files:?}");
}

/// Puts `line` right after the first line that is exactly `header` (comments aside).
fn insert_after(text: &str, header: &str, line: &str) -> Option<String> {
    let mut out = String::new();
    let mut done = false;
    for current in text.lines() {
        out.push_str(current);
        out.push('\n');
        if !done && current.split('#').next().unwrap().trim() == header {
            out.push_str(line);
            out.push('\n');
            done = true;
        }
    }
    done.then_some(out)
}

#[test]
fn an_unknown_field_in_any_example_is_refused() {
    for name in EXAMPLES {
        let original = text(name);
        let mut tables = 0;
        for header in ["[server]", "[[apps]]", "[metrics]", "[webhooks]", "[adapter]", "[app_store]"] {
            let Some(typo) = insert_after(&original, header, "bogus_setting = 1") else { continue };
            tables += 1;
            let error = Config::parse(&typo, name)
                .err()
                .unwrap_or_else(|| panic!("{name}: an unknown field under {header} was accepted"))
                .to_string();
            assert!(error.contains("bogus_setting"), "{name} {header}: {error}");
        }
        assert!(tables >= 3, "{name}: only {tables} tables checked");
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `plexus serve` refuses (or moves to 127.0.0.1) a non-loopback host while an app has the
/// public development secret; the examples listen publicly, so they must carry secrets of their
/// own, and those must be visibly placeholders.
#[test]
fn public_examples_carry_placeholder_secrets_not_the_development_one() {
    let (_, _, dev_secret) = DEV_APP;
    for name in EXAMPLES {
        let config = load(name);
        for app in &config.apps {
            assert_ne!(app.secret, dev_secret, "{name}: app {} uses the development secret", app.id);
            assert!(
                app.secret.starts_with("change-me-"),
                "{name}: app {} secret is not a placeholder",
                app.id
            );
        }
        if !is_loopback(&config.server.host) {
            assert!(
                !config.apps.is_empty() || config.app_store.driver == AppStoreDriver::Postgres,
                "{name}: a public host with no apps would serve the development app"
            );
        }
    }
}

#[test]
fn the_tls_table_is_what_the_certificate_loader_reads() {
    let files = load("tls.toml").server.tls.unwrap();
    let dir = std::env::temp_dir().join(format!("plexus-example-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["ws.example.com".to_owned()]).unwrap().self_signed(&key).unwrap();
    let mut local = files.clone();
    local.cert = dir.join(files.cert.file_name().unwrap());
    local.key = dir.join(files.key.file_name().unwrap());
    std::fs::write(&local.cert, cert.pem()).unwrap();
    std::fs::write(&local.key, key.serialize_pem()).unwrap();
    plexus_server::tls::Tls::load(&local).unwrap();
    if !files.cert.exists() {
        // As `plexus serve` would report it on a machine without the example's files.
        let error = plexus_server::tls::Tls::load(&files).unwrap_err().to_string();
        assert!(error.contains(&files.cert.display().to_string()), "{error}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
