//! The apps table's schema: its name, the shipped migrations, and applying them.

use crate::conn::Target;
use crate::error::PgStoreError;

/// Shipped migrations, in order. A version, once released, never changes: later schema changes
/// are new entries.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_apps.sql")),
    (2, include_str!("../migrations/0002_access.sql")),
    (3, include_str!("../migrations/0003_token_claims.sql")),
];

/// Serialises migrations across every node and every table of the database ("plexus" in ASCII,
/// then 1). Transaction-scoped, so a node that dies mid-migration cannot leave it held.
const MIGRATION_LOCK: i64 = 0x706c_6578_7573_0001;

/// How long a node waits for another node's migration before giving up.
const LOCK_TIMEOUT: &str = "60s";

/// Which migrations have run, per app table: several plexus deployments (or test runs) may share
/// one database with different table names.
const CREATE_MIGRATIONS_TABLE: &str = "create table if not exists plexus_schema_migrations (
    app_table  text        not null,
    version    integer     not null,
    applied_at timestamptz not null default now(),
    primary key (app_table, version)
)";

/// A validated table name. Only lowercase plain identifiers are accepted, so the quoted form used
/// in SQL names the same table as the unquoted one an operator types into psql.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    name: String,
}

impl Table {
    pub(crate) fn parse(name: &str) -> Result<Table, PgStoreError> {
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !first_ok || !rest_ok || name.len() > 63 {
            return Err(PgStoreError::InvalidTable(name.to_string()));
        }
        Ok(Table { name: name.to_string() })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.name)
    }

    fn migration_sql(&self, template: &str) -> String {
        template
            .replace("{table}", &self.quoted())
            .replace("{trigger}", &format!("\"{}_touch_updated_at\"", self.name))
    }
}

/// Creates or upgrades the apps table `table` in the database at `url`. Idempotent: migrations
/// already recorded in `plexus_schema_migrations` are skipped. Nodes starting together are
/// serialised by a PostgreSQL advisory lock, so exactly one of them applies each migration.
///
/// If the record says a table was migrated but the table is gone (dropped by hand), the table is
/// created again rather than leaving `connect` to fail forever with "run plexus migrate".
pub async fn migrate(url: &str, table: &str) -> Result<(), PgStoreError> {
    migrate_with(url, None, table).await
}

/// [`migrate`] over TLS verified against the CA certificates of the PEM file `ca_file` (see the
/// crate's "Connection").
pub async fn migrate_with(
    url: &str,
    ca_file: Option<&std::path::Path>,
    table: &str,
) -> Result<(), PgStoreError> {
    let table = Table::parse(table)?;
    let target = Target::parse(url, ca_file)?;
    let mut client = target.open().await?;
    let step = |what: &'static str| move |cause| PgStoreError::Query { what, cause };

    let tx = client.transaction().await.map_err(step("starting the migration transaction"))?;
    tx.batch_execute(&format!("set local lock_timeout = '{LOCK_TIMEOUT}'"))
        .await
        .map_err(step("setting the migration lock timeout"))?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(step("taking the migration lock"))?;
    tx.batch_execute(CREATE_MIGRATIONS_TABLE).await.map_err(step("creating plexus_schema_migrations"))?;

    let exists: bool = tx
        .query_one("select to_regclass($1) is not null", &[&table.quoted()])
        .await
        .map_err(step("looking up the app store table"))?
        .get(0);
    if !exists {
        tx.execute("delete from plexus_schema_migrations where app_table = $1", &[&table.name()])
            .await
            .map_err(step("clearing the records of a dropped app store table"))?;
    }
    let applied: Vec<i32> = tx
        .query("select version from plexus_schema_migrations where app_table = $1", &[&table.name()])
        .await
        .map_err(step("reading plexus_schema_migrations"))?
        .iter()
        .map(|row| row.get(0))
        .collect();

    let mut ran = Vec::new();
    for &(version, template) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        tx.batch_execute(&table.migration_sql(template)).await.map_err(|cause| PgStoreError::Migration {
            version,
            table: table.name().to_string(),
            cause,
        })?;
        tx.execute(
            "insert into plexus_schema_migrations (app_table, version) values ($1, $2)",
            &[&table.name(), &version],
        )
        .await
        .map_err(step("recording a migration"))?;
        ran.push(version);
    }
    tx.commit().await.map_err(step("committing the migration"))?;

    if ran.is_empty() {
        tracing::info!(table = table.name(), target = target.shown(), "app store schema is up to date");
    } else {
        tracing::info!(table = table.name(), target = target.shown(), versions = ?ran, "app store schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_lowercase_identifiers() {
        for good in ["plexus_apps", "_t", "apps2", &"a".repeat(63)] {
            assert_eq!(Table::parse(good).unwrap().name(), good);
        }
        for bad in ["", "Apps", "2apps", "public.apps", "apps;drop", "a\"b", "apps ", &"a".repeat(64)] {
            let err = Table::parse(bad).unwrap_err();
            assert!(matches!(err, PgStoreError::InvalidTable(_)), "{bad:?}");
        }
    }

    #[test]
    fn migration_templates_have_no_placeholder_left() {
        let table = Table::parse("user").unwrap();
        for (_, template) in MIGRATIONS {
            let sql = table.migration_sql(template);
            assert!(!sql.contains("{table}") && !sql.contains("{trigger}"), "{sql}");
            assert!(sql.contains("create table \"user\" (") || sql.contains("alter table \"user\""), "{sql}");
        }
    }

    #[test]
    fn migration_versions_increase() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
