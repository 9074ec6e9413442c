//! The one error type of this crate, with messages an operator can act on.

use std::time::Duration;

/// Why the app store could not be migrated, connected or refreshed.
///
/// Messages never contain the connection password: targets are printed from the parsed
/// configuration (hosts, ports, database), not from the URL.
#[derive(Debug, thiserror::Error)]
pub enum PgStoreError {
    #[error(
        "invalid app store table name {0:?}: use lowercase ASCII letters, digits and underscores, \
         starting with a letter or underscore, at most 63 characters"
    )]
    InvalidTable(String),
    #[error("invalid PostgreSQL URL: {}", describe(.0))]
    InvalidUrl(tokio_postgres::Error),
    #[error("cannot connect to PostgreSQL at {target}: {}", describe(.cause))]
    Connect { target: String, cause: tokio_postgres::Error },
    #[error("PostgreSQL at {target}: {reason}")]
    Tls { target: String, reason: String },
    #[error("timed out after {after:?} {what}")]
    Timeout { what: String, after: Duration },
    #[error("app store table {table:?} does not exist; run `plexus migrate` to create it")]
    MissingTable { table: String },
    #[error(
        "app store table {table:?} does not have the expected columns ({}); \
         run `plexus migrate` to bring it up to date",
        describe(.cause)
    )]
    OutdatedSchema { table: String, cause: tokio_postgres::Error },
    #[error("{what} failed: {}", describe(.cause))]
    Query { what: &'static str, cause: tokio_postgres::Error },
    #[error("migration {version} of app store table {table:?} failed: {}", describe(.cause))]
    Migration { version: i32, table: String, cause: tokio_postgres::Error },
}

/// tokio-postgres prints only its error kind ("db error", "error connecting to server"); the
/// useful part (the server's message, the OS error) sits in the source chain.
pub(crate) fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str("; ");
            text.push_str(detail);
        }
        if let Some(hint) = db.hint() {
            text.push_str("; hint: ");
            text.push_str(hint);
        }
        return text;
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    // A refused certificate: what to do about it.
    if let Some(hint) = plexus_tls::hint(err) {
        text.push_str(" (");
        text.push_str(hint);
        text.push(')');
    }
    text
}
