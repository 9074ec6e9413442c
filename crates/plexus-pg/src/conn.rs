//! Opening a connection: URL parsing, the time bounds, and how the target is named in messages.

use std::path::Path;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, NoTls, Socket};

use crate::error::PgStoreError;
use crate::tls::{sslmode, Asked, RustlsConnect};

/// Per host, unless the URL sets `connect_timeout` itself.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// On top of the TCP connect: startup and authentication.
const STARTUP_ALLOWANCE: Duration = Duration::from_secs(5);

/// A parsed URL, the password-free name of where it points, and its TLS (see [`crate::tls`]).
#[derive(Clone)]
pub(crate) struct Target {
    config: Config,
    shown: String,
    tls: Option<RustlsConnect>,
}

impl Target {
    /// `ca_file`: a PEM file of the CA certificates to trust instead of the system's roots; it
    /// makes TLS required.
    pub(crate) fn parse(url: &str, ca_file: Option<&Path>) -> Result<Target, PgStoreError> {
        let (asked, url) = sslmode(url);
        let mut config: Config = url.parse().map_err(PgStoreError::InvalidUrl)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        let shown = show(&config);
        let refuse = |reason: String| Err(PgStoreError::Tls { target: shown.clone(), reason });
        let tls = match (asked, ca_file) {
            (Asked::Prefer, _) => {
                return refuse(
                    "sslmode=prefer (or allow) falls back to an unencrypted connection without a word; \
                     use sslmode=require (TLS, verified) or sslmode=disable"
                        .into(),
                )
            }
            (Asked::Disable, Some(ca_file)) => {
                return refuse(format!(
                    "ca_file {} is set but the URL says sslmode=disable",
                    ca_file.display()
                ))
            }
            (Asked::Verified, _) | (Asked::Nothing, Some(_)) => match RustlsConnect::new(ca_file) {
                Ok(tls) => Some(tls),
                Err(err) => return refuse(err.to_string()),
            },
            // An unknown value: tokio-postgres has already refused it while parsing.
            (Asked::Disable | Asked::Nothing | Asked::Other, _) => None,
        };
        config.ssl_mode(if tls.is_some() { SslMode::Require } else { SslMode::Disable });
        Ok(Target { config, shown, tls })
    }

    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// Connects and drives the connection on its own task, which ends when the client is dropped
    /// or the server goes away (the client then reports `is_closed`).
    pub(crate) async fn open(&self) -> Result<Client, PgStoreError> {
        let per_host = self.config.get_connect_timeout().copied().unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let hosts = u32::try_from(self.config.get_hosts().len().max(1)).unwrap_or(u32::MAX);
        let bound = per_host.saturating_mul(hosts).saturating_add(STARTUP_ALLOWANCE);
        let connected = async {
            match &self.tls {
                Some(tls) => self.start(tls.clone()).await,
                None => self.start(NoTls).await,
            }
        };
        match tokio::time::timeout(bound, connected).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(cause)) => Err(PgStoreError::Connect { target: self.shown.clone(), cause }),
            Err(_) => Err(PgStoreError::Timeout {
                what: format!("connecting to PostgreSQL at {}", self.shown),
                after: bound,
            }),
        }
    }

    /// Connects with `tls` and drives the connection on its own task.
    async fn start<T>(&self, tls: T) -> Result<Client, tokio_postgres::Error>
    where
        T: MakeTlsConnect<Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = self.config.connect(tls).await?;
        let shown = self.shown.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(target = %shown, "PostgreSQL connection ended: {}", crate::error::describe(&err));
            }
        });
        Ok(client)
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `host:port[,host:port...]/dbname`, as libpq pairs them: one port for all hosts, or one each.
fn show(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() { "<no host>".to_string() } else { hosts.join(",") };
    format!("{hosts}/{}", config.get_dbname().or(config.get_user()).unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_is_shown_without_the_password() {
        let target = Target::parse("postgres://plexus:hunter2@db.internal:6543/apps", None).unwrap();
        assert_eq!(target.shown(), "db.internal:6543/apps");
        assert!(!format!("{target:?}").contains("hunter2"));
        let target = Target::parse("host=/run/postgresql user=postgres", None).unwrap();
        assert_eq!(target.shown(), "/run/postgresql:5432/postgres");
    }

    #[test]
    fn bad_url_is_refused_readably() {
        let err = Target::parse("postgres://x@h:notaport/db", None).unwrap_err();
        assert!(err.to_string().starts_with("invalid PostgreSQL URL: invalid connection string"), "{err}");
    }

    #[test]
    fn tls_settings_that_would_downgrade_or_be_ignored_are_refused() {
        let err = Target::parse("postgres://x@db:5432/apps?sslmode=prefer", None).unwrap_err().to_string();
        assert!(err.contains("db:5432/apps") && err.contains("sslmode=prefer"), "{err}");
        let ca = Path::new("/etc/ca.pem");
        let err = Target::parse("postgres://x@db/apps?sslmode=disable", Some(ca)).unwrap_err().to_string();
        assert!(err.contains("ca_file /etc/ca.pem") && err.contains("sslmode=disable"), "{err}");
        let err = Target::parse("postgres://x@db/apps", Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(err.to_string().contains("cannot read CA file /nonexistent/ca.pem"), "{err}");
        let plain = Target::parse("postgres://x@db/apps", None).unwrap();
        assert!(plain.tls.is_none() && plain.config.get_ssl_mode() == SslMode::Disable);
        let verified = Target::parse("postgres://x@db/apps?sslmode=verify-full", None).unwrap();
        assert!(verified.tls.is_some() && verified.config.get_ssl_mode() == SslMode::Require);
    }
}
