//! The app store over TLS, against a private PostgreSQL of the test's own (initdb in a temp dir,
//! `ssl = on` with a certificate from a CA made in the test, and a pg_hba that admits TCP clients
//! only over TLS): migrated and read with the CA as `ca_file`; refused without it, with the
//! target, the TLS reason and the fix in the error; plain TCP refused by the server.
//!
//! The server runs as the `postgres` user when the test runs as root (PostgreSQL refuses root),
//! and is stopped by its PID (SIGINT, a fast shutdown) when the test ends.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use plexus_core::app::AppStore;
use plexus_pg::{migrate_with, PgAppStore};
use plexus_tls::test_ca::TestCa;
use tokio_postgres::NoTls;

const WAIT: Duration = Duration::from_secs(20);

/// The newest PostgreSQL server binaries Debian installed.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (Debian's postgresql package)")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version with bin/postgres").1
}

/// The uid and gid to run PostgreSQL as: `postgres` when this test runs as root.
fn run_as() -> Option<(u32, u32)> {
    if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line =
        passwd.lines().find(|l| l.starts_with("postgres:")).expect("a postgres user to run PostgreSQL as");
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
}

fn command(program: PathBuf, user: Option<(u32, u32)>) -> Command {
    let mut command = Command::new(program);
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command.stdin(Stdio::null());
    command
}

/// A private PostgreSQL with TLS on a free loopback port.
struct TlsPostgres {
    child: Child,
    port: u16,
    dir: PathBuf,
    ca_file: PathBuf,
}

impl TlsPostgres {
    async fn start() -> TlsPostgres {
        let user = run_as();
        let dir = std::env::temp_dir().join(format!("plexus-pg-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let own = |path: &Path| {
            if let Some((uid, gid)) = user {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        };
        own(&dir);
        let data = dir.join("data");
        let bin = bin_dir();
        let initdb = command(bin.join("initdb"), user)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("initdb runs");
        assert!(initdb.status.success(), "initdb: {}", String::from_utf8_lossy(&initdb.stderr));

        let ca = TestCa::new();
        let ca_file = ca.write_ca(&dir);
        let (cert, key) = ca.loopback().write(&data, "server");
        for file in [&cert, &key] {
            own(file);
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        // TCP only over TLS; the Unix socket (the test's admin connection) in the clear.
        std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
            .unwrap();

        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = command(bin.join("postgres"), user)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "ssl=on", "-c", "ssl_cert_file=server.pem", "-c", "ssl_key_file=server.key"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        let mut server = TlsPostgres { child, port, dir, ca_file };
        server.wait_ready().await;
        server
    }

    /// Polls (bounded) until the server answers a query on its Unix socket.
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(client) = self.admin().await {
                if client.simple_query("select 1").await.is_ok() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("postgres exited ({status}) before it was ready");
            }
            assert!(tokio::time::Instant::now() < deadline, "postgres not ready within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A plain connection over the Unix socket, for the test's own SQL.
    async fn admin(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let url = format!("host={} port={} user=postgres dbname=postgres", self.dir.display(), self.port);
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    fn url(&self, query: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres{query}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        // A fast shutdown (SIGINT) by PID, so no shared memory is left behind; SIGKILL if it lingers.
        let _ = Command::new("kill").arg("-INT").arg(self.child.id().to_string()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_store_is_migrated_and_read_over_tls_with_the_ca_and_refused_without_it() {
    let pg = TlsPostgres::start().await;
    let table = "plexus_apps_tls";

    // A CA file makes TLS required: migrate and load over TLS (pg_hba admits nothing else).
    let url = pg.url("");
    migrate_with(&url, Some(&pg.ca_file), table).await.expect("migrate over TLS");
    let admin = pg.admin().await.unwrap();
    admin
        .execute(&format!("insert into {table} (id, key, secret) values ('7', 'tls-key', 'tls-secret')"), &[])
        .await
        .unwrap();
    let verified = pg.url("?sslmode=verify-full");
    let store = PgAppStore::connect_with(&verified, Some(&pg.ca_file), table).await.expect("load over TLS");
    assert_eq!(store.by_key("tls-key").expect("the row, read over TLS").id, "7");

    // Without the CA the system's roots do not know the server's certificate.
    let err =
        PgAppStore::connect_with(&pg.url("?sslmode=require"), None, table).await.unwrap_err().to_string();
    let target = format!("127.0.0.1:{}/postgres", pg.port);
    assert!(err.contains(&target), "names the target: {err}");
    assert!(err.contains("invalid peer certificate: UnknownIssuer") && err.contains("ca_file"), "{err}");

    // Not asked for TLS, plexus does not use it, and this server admits no plain TCP.
    let err = PgAppStore::connect(&url, table).await.unwrap_err().to_string();
    assert!(err.contains("no encryption"), "{err}");
}
