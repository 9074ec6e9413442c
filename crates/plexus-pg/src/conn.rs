//! Opening a connection: URL parsing, the time bounds, and how the target is named in messages.

use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use crate::error::PgStoreError;

/// Per host, unless the URL sets `connect_timeout` itself.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// On top of the TCP connect: startup and authentication.
const STARTUP_ALLOWANCE: Duration = Duration::from_secs(5);

/// A parsed URL and the password-free name of where it points.
#[derive(Clone)]
pub(crate) struct Target {
    config: Config,
    shown: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target, PgStoreError> {
        let mut config: Config = url.parse().map_err(PgStoreError::InvalidUrl)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        let shown = show(&config);
        Ok(Target { config, shown })
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
        let (client, connection) = match tokio::time::timeout(bound, self.config.connect(NoTls)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(cause)) => return Err(PgStoreError::Connect { target: self.shown.clone(), cause }),
            Err(_) => {
                return Err(PgStoreError::Timeout {
                    what: format!("connecting to PostgreSQL at {}", self.shown),
                    after: bound,
                })
            }
        };
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
        let target = Target::parse("postgres://plexus:hunter2@db.internal:6543/apps").unwrap();
        assert_eq!(target.shown(), "db.internal:6543/apps");
        assert!(!format!("{target:?}").contains("hunter2"));
        let target = Target::parse("host=/run/postgresql user=postgres").unwrap();
        assert_eq!(target.shown(), "/run/postgresql:5432/postgres");
    }

    #[test]
    fn bad_url_is_refused_readably() {
        let err = Target::parse("postgres://x@h:notaport/db").unwrap_err();
        assert!(err.to_string().starts_with("invalid PostgreSQL URL: invalid connection string"), "{err}");
    }
}
