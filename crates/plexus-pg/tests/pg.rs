//! Against the PostgreSQL at 127.0.0.1:5432 (trust auth, database `test`, user `postgres`). Each
//! test works on its own randomly named table and drops it, and its migration records, when done,
//! even if it fails.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_core::access::ApiKey;
use plexus_core::app::{App, AppStore, WebhookKind, WebhookTarget};
use plexus_pg::{migrate, AppChange, PgAppStore, PgStoreError};
use tokio::sync::{mpsc, Notify};
use tokio_postgres::{Client, NoTls};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The versions of the migrations this release ships, as `plexus_schema_migrations` records them.
const SHIPPED: [i32; 3] = [1, 2, 3];
/// Upper bound for anything that should happen "soon"; never a sleep.
const PATIENCE: Duration = Duration::from_secs(15);

/// A table name no other test (or earlier run) uses, and an admin connection to edit it.
struct Scratch {
    table: String,
    admin: Client,
}

impl Scratch {
    async fn new() -> Scratch {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u32(std::process::id());
        let table = format!("plexus_test_{:016x}", hasher.finish());
        Scratch { table, admin: admin().await }
    }

    async fn migrated() -> Scratch {
        let scratch = Scratch::new().await;
        migrate(URL, &scratch.table).await.expect("migrate");
        scratch
    }

    /// Runs `sql` with `{t}` standing for the table.
    async fn sql(&self, sql: &str) -> u64 {
        let sql = sql.replace("{t}", &self.table);
        self.admin.execute(sql.as_str(), &[]).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"))
    }

    async fn migration_records(&self) -> Vec<(i32, std::time::SystemTime)> {
        self.admin
            .query(
                "select version, applied_at from plexus_schema_migrations where app_table = $1 order by version",
                &[&self.table],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }

    /// Makes the table exactly as a release that shipped `migrations` (the first ones of this
    /// release's, in order) left it, under the lock `migrate` takes (0x706c_6578_7573_0001), since
    /// migration 1's `create or replace function` fails when another test's migration runs it at
    /// the same moment. The bookkeeping table's definition is repeated because those releases
    /// created it the same way.
    async fn as_an_older_release_left_it(&self, migrations: &[&str]) {
        let mut sql = format!(
            "begin;
             select pg_advisory_xact_lock({lock});
             create table if not exists plexus_schema_migrations (
                 app_table text not null, version integer not null,
                 applied_at timestamptz not null default now(), primary key (app_table, version));",
            lock = 0x706c_6578_7573_0001_i64,
        );
        for (version, migration) in (1..).zip(migrations) {
            let migration = migration
                .replace("{table}", &format!("\"{}\"", self.table))
                .replace("{trigger}", &format!("\"{}_touch_updated_at\"", self.table));
            sql.push_str(&format!(
                "{migration};
                 insert into plexus_schema_migrations (app_table, version) values ('{table}', {version});",
                table = self.table,
            ));
        }
        sql.push_str("commit;");
        self.admin.batch_execute(&sql).await.unwrap();
    }

    async fn connect(&self) -> Arc<PgAppStore> {
        PgAppStore::connect(URL, &self.table).await.expect("connect")
    }
}

/// Async work cannot run in `Drop` on the test's runtime, so cleanup gets a thread and a runtime
/// of its own.
impl Drop for Scratch {
    fn drop(&mut self) {
        let table = self.table.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let client = admin().await;
                for sql in [
                    format!("drop table if exists {table}"),
                    format!("drop table if exists {table}_away"),
                    format!("delete from plexus_schema_migrations where app_table = '{table}'"),
                ] {
                    // The migrations table may not exist in a test that never migrated.
                    let _ = client.batch_execute(&sql).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

async fn admin() -> Client {
    let (client, connection) = tokio_postgres::connect(URL, NoTls).await.expect(
        "PostgreSQL at 127.0.0.1:5432 (start it with \
         `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`)",
    );
    tokio::spawn(connection);
    client
}

fn added(id: &str) -> AppChange {
    AppChange::Added(id.into())
}

#[tokio::test]
async fn migrate_creates_the_schema_and_a_second_run_changes_nothing() {
    let scratch = Scratch::migrated().await;
    let columns: Vec<(String, String, Option<String>)> = scratch
        .admin
        .query(
            "select column_name::text, data_type::text, column_default::text from information_schema.columns \
             where table_name = $1 order by ordinal_position",
            &[&scratch.table],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let names: Vec<&str> = columns.iter().map(|(name, _, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "key",
            "secret",
            "enabled",
            "enable_client_messages",
            "enable_user_authentication",
            "enable_subscription_count",
            "max_connections",
            "max_event_payload_kb",
            "max_presence_members",
            "max_presence_member_size_kb",
            "max_client_events_per_second",
            "max_channel_name_length",
            "user_authentication_timeout_secs",
            "cache_ttl_secs",
            "webhooks",
            "created_at",
            "updated_at",
            "api_keys",
            "channel_scopes",
            "history",
            "enable_tokens",
            "token_keys",
            "heartbeat_interval_secs",
            "heartbeat_timeout_secs",
            "token_audience",
            "token_issuer",
        ]
    );
    for text in ["token_audience", "token_issuer"] {
        let column = columns.iter().find(|(name, _, _)| name == text).unwrap();
        assert_eq!((column.1.as_str(), column.2.as_deref()), ("text", None), "{text}");
    }
    for jsonb in ["webhooks", "api_keys", "channel_scopes", "history", "token_keys"] {
        let column = columns.iter().find(|(name, _, _)| name == jsonb).unwrap();
        assert_eq!(column.1, "jsonb", "{jsonb}");
        assert_eq!(column.2.as_deref(), Some("'[]'::jsonb"), "{jsonb}");
    }
    let records = scratch.migration_records().await;
    assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), SHIPPED);

    // The key is unique and the trigger keeps updated_at current.
    scratch.sql("insert into {t} (id, key, secret) values ('1', 'k', 's')").await;
    let duplicate = scratch
        .admin
        .execute(&format!("insert into {} (id, key, secret) values ('2', 'k', 's')", scratch.table), &[])
        .await
        .unwrap_err();
    assert!(duplicate.to_string().contains("db error"), "{duplicate:?}");
    scratch
        .sql("update {t} set created_at = now() - interval '1 day', updated_at = now() - interval '1 day'")
        .await;
    scratch.sql("update {t} set secret = 's2'").await;
    let fresh: bool = scratch
        .admin
        .query_one(&format!("select updated_at > created_at + interval '1 hour' from {}", scratch.table), &[])
        .await
        .unwrap()
        .get(0);
    assert!(fresh, "updated_at should be set by the trigger");

    migrate(URL, &scratch.table).await.expect("second migrate");
    assert_eq!(scratch.migration_records().await, records, "a second run records nothing new");
    let rows: i64 = scratch
        .admin
        .query_one(&format!("select count(*) from {}", scratch.table), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "a second run leaves the data alone");
}

#[tokio::test]
async fn concurrent_migrations_all_succeed_and_apply_once() {
    let scratch = Scratch::new().await;
    let (a, b, c) = tokio::join!(
        migrate(URL, &scratch.table),
        migrate(URL, &scratch.table),
        migrate(URL, &scratch.table)
    );
    a.expect("first");
    b.expect("second");
    c.expect("third");
    assert_eq!(scratch.migration_records().await.len(), SHIPPED.len());
    scratch.sql("insert into {t} (id, key, secret) values ('1', 'k', 's')").await;
}

#[tokio::test]
async fn migrate_recreates_a_table_that_was_dropped_by_hand() {
    let scratch = Scratch::migrated().await;
    scratch.sql("drop table {t}").await;
    migrate(URL, &scratch.table).await.expect("migrate after drop");
    scratch.sql("insert into {t} (id, key, secret) values ('1', 'k', 's')").await;
    assert_eq!(scratch.migration_records().await.len(), SHIPPED.len());
}

#[tokio::test]
async fn a_row_with_only_credentials_is_the_default_app() {
    let scratch = Scratch::migrated().await;
    scratch.sql("insert into {t} (id, key, secret) values ('1', 'key-1', 'secret-1')").await;
    let store = scratch.connect().await;
    assert_eq!(*store.by_id("1").expect("by id"), App::new("1", "key-1", "secret-1"));
    assert_eq!(*store.by_key("key-1").expect("by key"), App::new("1", "key-1", "secret-1"));
    assert_eq!(store.list().len(), 1);
    assert!(store.by_key("1").is_none() && store.by_id("key-1").is_none());
}

#[tokio::test]
async fn every_column_is_read_into_its_field() {
    let scratch = Scratch::migrated().await;
    scratch
        .sql(
            r#"insert into {t} (id, key, secret, enabled, enable_client_messages, enable_user_authentication,
                 enable_subscription_count, max_connections, max_event_payload_kb, max_presence_members,
                 max_presence_member_size_kb, max_client_events_per_second, max_channel_name_length,
                 user_authentication_timeout_secs, cache_ttl_secs, webhooks)
               values ('9', 'k9', 's9', false, true, true, true, 5000000000, 64, 7, 3, 0, 50, 9, 60,
                 '[{"url": "http://hooks.local/a", "events": ["channel_occupied", "subscription_count"]}]')"#,
        )
        .await;
    let store = scratch.connect().await;
    let mut want = App::new("9", "k9", "s9");
    want.enabled = false;
    want.enable_client_messages = true;
    want.enable_user_authentication = true;
    want.enable_subscription_count = true;
    want.max_connections = 5_000_000_000;
    want.max_event_payload_kb = 64;
    want.max_presence_members = 7;
    want.max_presence_member_size_kb = 3;
    want.max_client_events_per_second = 0;
    want.max_channel_name_length = 50;
    want.user_authentication_timeout_secs = 9;
    want.cache_ttl_secs = 60;
    want.webhooks = vec![WebhookTarget {
        url: "http://hooks.local/a".into(),
        events: vec![WebhookKind::ChannelOccupied, WebhookKind::SubscriptionCount],
        ca_file: None,
    }];
    assert_eq!(*store.by_key("k9").unwrap(), want);
}

#[tokio::test]
async fn refresh_reports_each_kind_of_change() {
    let scratch = Scratch::migrated().await;
    let store = scratch.connect().await;
    assert!(store.list().is_empty());
    assert_eq!(store.refresh().await.unwrap(), []);

    scratch.sql("insert into {t} (id, key, secret) values ('1', 'key-1', 'secret-1')").await;
    assert_eq!(store.refresh().await.unwrap(), [added("1")]);
    assert_eq!(store.by_key("key-1").unwrap().secret, "secret-1");
    assert_eq!(store.refresh().await.unwrap(), [], "nothing changed since");

    scratch.sql("update {t} set enabled = false where id = '1'").await;
    assert_eq!(store.refresh().await.unwrap(), [AppChange::Disabled("1".into())]);
    assert!(!store.by_key("key-1").unwrap().enabled);

    scratch.sql("update {t} set enabled = true where id = '1'").await;
    assert_eq!(store.refresh().await.unwrap(), [AppChange::Enabled("1".into())]);
    assert!(store.by_key("key-1").unwrap().enabled);

    scratch.sql("update {t} set secret = 'secret-2' where id = '1'").await;
    assert_eq!(store.refresh().await.unwrap(), [AppChange::Updated("1".into())]);
    assert_eq!(store.by_key("key-1").unwrap().secret, "secret-2");

    scratch.sql("update {t} set key = 'key-2' where id = '1'").await;
    assert_eq!(store.refresh().await.unwrap(), [AppChange::Updated("1".into())]);
    assert!(store.by_key("key-1").is_none());
    assert_eq!(store.by_key("key-2").unwrap().id, "1");

    scratch.sql("update {t} set max_connections = 3 where id = '1'").await;
    assert_eq!(store.refresh().await.unwrap(), [AppChange::Updated("1".into())]);
    assert_eq!(store.by_id("1").unwrap().max_connections, 3);

    scratch.sql("insert into {t} (id, key, secret) values ('2', 'key-3', 's')").await;
    scratch.sql("delete from {t} where id = '1'").await;
    assert_eq!(store.refresh().await.unwrap(), [AppChange::Removed("1".into()), added("2")]);
    assert!(store.by_id("1").is_none() && store.by_key("key-2").is_none());
    assert_eq!(store.list().iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["2"]);
}

#[tokio::test]
async fn bad_rows_are_skipped_and_the_others_load() {
    let scratch = Scratch::migrated().await;
    scratch
        .sql(
            r#"insert into {t} (id, key, secret, webhooks) values
                 ('good', 'k-good', 's', '[{"url": "http://h/", "events": ["member_added"]}]'),
                 ('empty-secret', 'k-empty', '', '[]'),
                 ('bad-kind', 'k-kind', 's', '[{"url": "http://h/", "events": ["channel_exploded"]}]'),
                 ('not-array', 'k-shape', 's', '{"url": "http://h/"}'),
                 ('clear-ca', 'k-clear-ca', 's', '[{"url": "http://h/", "ca_file": "/etc/ca.pem"}]')"#,
        )
        .await;
    let store = scratch.connect().await;
    assert_eq!(store.list().iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["good"]);
    for key in ["k-empty", "k-kind", "k-shape", "k-clear-ca"] {
        assert!(store.by_key(key).is_none(), "{key}");
    }

    // Fixing a row brings it in; breaking one takes it out.
    scratch.sql("update {t} set secret = 'fixed' where id = 'empty-secret'").await;
    scratch.sql("update {t} set secret = '' where id = 'good'").await;
    assert_eq!(
        store.refresh().await.unwrap(),
        [AppChange::Added("empty-secret".into()), AppChange::Removed("good".into())]
    );
    assert_eq!(store.by_key("k-empty").unwrap().secret, "fixed");
}

#[tokio::test]
async fn connect_to_a_missing_table_says_to_run_plexus_migrate() {
    let scratch = Scratch::new().await;
    let err = PgAppStore::connect(URL, &scratch.table).await.unwrap_err();
    assert!(matches!(err, PgStoreError::MissingTable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&scratch.table) && text.contains("run `plexus migrate`"), "{text}");
}

#[tokio::test]
async fn connect_to_a_closed_port_fails_readably_and_quickly() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("postgres://postgres:pw-never-shown@127.0.0.1:{port}/test");
    let started = Instant::now();
    let err = tokio::time::timeout(PATIENCE, PgAppStore::connect(&url, "plexus_apps"))
        .await
        .expect("connect should give up by itself")
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(12), "{:?}", started.elapsed());
    assert!(matches!(err, PgStoreError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with(&format!("cannot connect to PostgreSQL at 127.0.0.1:{port}/test: ")), "{text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(!text.contains("pw-never-shown") && !format!("{err:?}").contains("pw-never-shown"), "{err:?}");

    let err = migrate(&url, "plexus_apps").await.unwrap_err();
    assert!(matches!(err, PgStoreError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn bad_table_names_are_refused_before_connecting() {
    let err = PgAppStore::connect(URL, "apps; drop table x").await.unwrap_err();
    assert!(matches!(err, PgStoreError::InvalidTable(_)), "{err:?}");
    let err = migrate(URL, "Apps").await.unwrap_err();
    assert!(matches!(err, PgStoreError::InvalidTable(_)), "{err:?}");
}

async fn next_changes(rx: &mut mpsc::UnboundedReceiver<Vec<AppChange>>) -> Vec<AppChange> {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("the refresh loop should report the change")
        .expect("the refresh loop ended")
}

#[tokio::test]
async fn the_refresh_loop_reports_changes_made_in_the_database() {
    let scratch = Scratch::migrated().await;
    let store = scratch.connect().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = store.spawn_refresh(Duration::from_millis(50), move |changes| {
        let _ = tx.send(changes);
    });

    scratch.sql("insert into {t} (id, key, secret) values ('1', 'k', 's')").await;
    assert_eq!(next_changes(&mut rx).await, [added("1")]);
    assert_eq!(store.by_key("k").unwrap().id, "1");

    scratch.sql("update {t} set enabled = false where id = '1'").await;
    assert_eq!(next_changes(&mut rx).await, [AppChange::Disabled("1".into())]);
    task.abort();
}

#[tokio::test]
async fn an_outage_keeps_the_last_snapshot_and_the_loop_recovers_by_itself() {
    let scratch = Scratch::migrated().await;
    scratch.sql("insert into {t} (id, key, secret) values ('1', 'k', 's')").await;
    let store = scratch.connect().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = store.spawn_refresh(Duration::from_millis(50), move |changes| {
        let _ = tx.send(changes);
    });

    // The table goes away: refreshes fail, lookups go on.
    scratch.sql("alter table {t} rename to {t}_away").await;
    let err = store.refresh().await.unwrap_err();
    assert!(matches!(err, PgStoreError::MissingTable { .. }), "{err:?}");
    assert_eq!(store.by_key("k").unwrap().secret, "s");
    scratch.sql("alter table {t}_away rename to {t}").await;
    scratch.sql("update {t} set secret = 's2'").await;
    assert_eq!(next_changes(&mut rx).await, [AppChange::Updated("1".into())]);
    assert_eq!(store.by_key("k").unwrap().secret, "s2");

    // The server drops the store's connection: the loop opens a new one.
    let killed: i64 = scratch
        .admin
        .query_one(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity \
             where datname = 'test' and pid <> pg_backend_pid() and query like '%' || $1 || '%'",
            &[&scratch.table],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "the store's connection should have been found");
    scratch.sql("update {t} set enabled = false").await;
    assert_eq!(next_changes(&mut rx).await, [AppChange::Disabled("1".into())]);
    task.abort();
}

/// Everything the store logs while the guard lives, on this thread (the test runtime is
/// single-threaded, so that includes the refresh loop).
#[derive(Clone, Default)]
struct Logs(Arc<(Mutex<Vec<u8>>, Notify)>);

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0 .0.lock().unwrap()).matches(needle).count()
    }

    async fn wait_for(&self, needle: &str, times: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            // Created before the check, so a line written in between still wakes it.
            let written = self.0 .1.notified();
            if self.count(needle) >= times {
                return;
            }
            if tokio::time::timeout_at(deadline, written).await.is_err() {
                panic!("waited for {times} x {needle:?}");
            }
        }
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 .0.lock().unwrap().extend_from_slice(buf);
        self.0 .1.notify_waiters();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn an_outage_is_logged_once_and_its_end_once() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let scratch = Scratch::migrated().await;
    let store = scratch.connect().await;
    let task = store.spawn_refresh(Duration::from_millis(10), |_| {});

    scratch.sql("alter table {t} rename to {t}_away").await;
    // Ticks are counted by their debug lines, so no guess at how long several ticks take.
    logs.wait_for("app store refresh still failing", 3).await;
    assert_eq!(logs.count("app store refresh failed, serving the last loaded apps"), 1);
    assert_eq!(logs.count("does not exist; run `plexus migrate`"), 1 + logs.count("still failing"));

    scratch.sql("alter table {t}_away rename to {t}").await;
    logs.wait_for("app store refresh works again", 1).await;
    let ticks = logs.count("still failing");
    // A later tick, made visible by the line it logs.
    scratch.sql("insert into {t} (id, key, secret) values ('x', 'kx', '')").await;
    logs.wait_for("skipping app row: secret must not be empty", 1).await;
    assert_eq!(logs.count("app store refresh works again"), 1);
    assert_eq!(logs.count("serving the last loaded apps"), 1);
    assert_eq!(logs.count("still failing"), ticks);
    task.abort();
}

#[tokio::test]
async fn a_bad_row_is_logged_once_not_on_every_refresh() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let scratch = Scratch::migrated().await;
    scratch.sql("insert into {t} (id, key, secret) values ('x', 'kx', '')").await;
    let store = scratch.connect().await;
    for _ in 0..3 {
        assert_eq!(store.refresh().await.unwrap(), []);
    }
    assert_eq!(logs.count("skipping app row: secret must not be empty"), 1);
    scratch
        .sql("update {t} set secret = 's', webhooks = '[{\"url\": \"http://h\", \"events\": [\"nope\"]}]'")
        .await;
    assert_eq!(store.refresh().await.unwrap(), []);
    assert_eq!(logs.count("skipping app row: webhooks: unknown variant `nope`"), 1, "a new reason is logged");
    scratch.sql("update {t} set webhooks = '[]'").await;
    assert_eq!(store.refresh().await.unwrap(), [added("x")]);
    assert_eq!(logs.count("app row no longer skipped"), 1);
}

#[tokio::test]
async fn the_refresh_loop_stops_when_the_store_is_dropped() {
    let scratch = Scratch::migrated().await;
    let store = scratch.connect().await;
    let task = store.spawn_refresh(Duration::from_millis(10), |_| {});
    drop(store);
    tokio::time::timeout(PATIENCE, task).await.expect("loop should end").unwrap();
}

/// The apps of a config file snippet, parsed the way the server parses `[[apps]]`.
fn apps_from_toml(text: &str) -> Vec<App> {
    let file: toml::Table = toml::from_str(text).expect("valid TOML");
    file["apps"].clone().try_into().expect("valid [[apps]]")
}

#[tokio::test]
async fn a_version_1_table_is_upgraded_in_place_and_its_rows_keep_their_values() {
    let scratch = Scratch::new().await;
    scratch.as_an_older_release_left_it(&[include_str!("../migrations/0001_apps.sql")]).await;
    scratch
        .sql(
            r#"insert into {t} (id, key, secret, enable_client_messages, max_connections, webhooks) values
                 ('1', 'k1', 's1', true, 77, '[{"url": "http://h/", "events": ["member_added"]}]'),
                 ('2', 'k2', 's2', false, 0, '[]')"#,
        )
        .await;
    // A node of the new release that does not migrate says what to do.
    let err = PgAppStore::connect(URL, &scratch.table).await.unwrap_err();
    assert!(matches!(err, PgStoreError::OutdatedSchema { .. }), "{err:?}");
    assert!(err.to_string().contains("run `plexus migrate`"), "{err}");

    migrate(URL, &scratch.table).await.expect("upgrade");
    assert_eq!(scratch.migration_records().await.iter().map(|r| r.0).collect::<Vec<_>>(), SHIPPED);
    let store = scratch.connect().await;
    let mut first = App::new("1", "k1", "s1");
    first.enable_client_messages = true;
    first.max_connections = 77;
    first.webhooks = vec![WebhookTarget {
        url: "http://h/".into(),
        events: vec![WebhookKind::MemberAdded],
        ca_file: None,
    }];
    assert_eq!(*store.by_id("1").unwrap(), first, "old values kept, new settings at their defaults");
    assert_eq!(*store.by_id("2").unwrap(), App::new("2", "k2", "s2"));

    // The new columns are there to be set, and the trigger survived.
    scratch.sql(r#"update {t} set api_keys = '[{"key": "sk_new_key_1"}]', heartbeat_timeout_secs = 45 where id = '2'"#).await;
    assert_eq!(store.refresh().await.unwrap(), [AppChange::Updated("2".into())]);
    let second = store.by_id("2").unwrap();
    assert_eq!(second.api_keys[0].key, "sk_new_key_1");
    assert_eq!(second.heartbeat_timeout_secs, Some(45));
    let touched: bool = scratch
        .admin
        .query_one(&format!("select updated_at > created_at from {} where id = '2'", scratch.table), &[])
        .await
        .unwrap()
        .get(0);
    assert!(touched, "updated_at should be set by the trigger");
}

#[tokio::test]
async fn a_version_2_table_gains_the_token_claim_columns_in_place() {
    let scratch = Scratch::new().await;
    scratch
        .as_an_older_release_left_it(&[
            include_str!("../migrations/0001_apps.sql"),
            include_str!("../migrations/0002_access.sql"),
        ])
        .await;
    scratch
        .sql(r#"insert into {t} (id, key, secret, enable_tokens, api_keys) values ('1', 'k1', 's1', true, '[{"key": "sk_kept_key"}]')"#)
        .await;
    let err = PgAppStore::connect(URL, &scratch.table).await.unwrap_err();
    assert!(matches!(err, PgStoreError::OutdatedSchema { .. }), "{err:?}");

    migrate(URL, &scratch.table).await.expect("upgrade");
    assert_eq!(scratch.migration_records().await.iter().map(|r| r.0).collect::<Vec<_>>(), SHIPPED);
    let store = scratch.connect().await;
    let mut want = App::new("1", "k1", "s1");
    want.enable_tokens = true;
    // The config file's defaults for a key given alone: every channel, 10 connections.
    want.api_keys = vec![ApiKey {
        key: "sk_kept_key".into(),
        scopes: vec![],
        channels: vec!["*".into()],
        max_connections: 10,
    }];
    assert_eq!(*store.by_id("1").unwrap(), want, "old values kept; neither claim checked, as before");

    scratch.sql("update {t} set token_audience = 'plexus', token_issuer = 'https://idp.example'").await;
    assert_eq!(
        store.refresh().await.unwrap(),
        [AppChange::Updated("1".into()), AppChange::TokensChanged("1".into())]
    );
    let app = store.by_id("1").unwrap();
    assert_eq!(app.token_audience.as_deref(), Some("plexus"));
    assert_eq!(app.token_issuer.as_deref(), Some("https://idp.example"));

    // An empty value fails the update, rather than the store skipping (unserving) the app.
    for column in ["token_audience", "token_issuer"] {
        let sql = format!("update {} set {column} = ''", scratch.table);
        let err = scratch.admin.execute(sql.as_str(), &[]).await.unwrap_err();
        let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
        assert_eq!(db.code(), &tokio_postgres::error::SqlState::CHECK_VIOLATION, "{db:?}");
        assert!(db.constraint().is_some_and(|c| c.contains(column)), "{db:?}");
    }
    assert!(store.refresh().await.unwrap().is_empty());
    assert_eq!(store.by_id("1").unwrap().token_audience.as_deref(), Some("plexus"));
}

const ACCESS_TOML: &str = r#"
[[apps]]
id = "5"
key = "key-5"
secret = "secret-5"
enable_tokens = true
token_audience = "plexus"
token_issuer = "https://idp.example"
heartbeat_interval_secs = 20
heartbeat_timeout_secs = 60

[[apps.api_keys]]
key = "sk_live_one"
scopes = ["events:read"]
channels = ["instance-inst_1*"]
max_connections = 3

[[apps.api_keys]]
key = "sk_live_two"

[[apps.channel_scopes]]
prefix = "chats-"
scope = "chats:read"

[[apps.history]]
prefix = "feed-"
size = 50

[[apps.token_keys]]
algorithm = "ES256"
public_key = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
kid = "2024"
"#;

#[tokio::test]
async fn a_row_with_keys_scopes_history_tokens_and_heartbeat_is_the_app_the_config_file_describes() {
    let scratch = Scratch::migrated().await;
    scratch
        .sql(
            r#"insert into {t} (id, key, secret, enable_tokens, token_audience, token_issuer,
                 heartbeat_interval_secs, heartbeat_timeout_secs, api_keys, channel_scopes, history, token_keys)
               values ('5', 'key-5', 'secret-5', true, 'plexus', 'https://idp.example', 20, 60,
                 '[{"key": "sk_live_one", "scopes": ["events:read"], "channels": ["instance-inst_1*"], "max_connections": 3},
                   {"key": "sk_live_two"}]',
                 '[{"prefix": "chats-", "scope": "chats:read"}]',
                 '[{"prefix": "feed-", "size": 50}]',
                 '[{"algorithm": "ES256", "kid": "2024",
                    "public_key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"}]')"#,
        )
        .await;
    let store = scratch.connect().await;
    let from_file = apps_from_toml(ACCESS_TOML);
    assert_eq!(from_file.len(), 1);
    let from_row = store.by_key("key-5").expect("served");
    assert_eq!(*from_row, from_file[0]);
    // Defaults filled in the same way by both: the second key's channels and limit, the rule's ttl.
    assert_eq!(from_row.api_keys[1].channels, ["*"]);
    assert_eq!(from_row.api_keys[1].max_connections, 10);
    assert_eq!(from_row.history[0].ttl_secs, 300);
    assert_eq!(from_row.token_audience.as_deref(), Some("plexus"), "not left at its default by both");
}

/// The log line that says why `app` was skipped, if any.
fn skip_line(logs: &Logs, app: &str) -> Option<String> {
    let text = String::from_utf8_lossy(&logs.0 .0.lock().unwrap()).into_owned();
    text.lines()
        .find(|line| line.contains("skipping app row") && line.contains(&format!("app={app}")))
        .map(str::to_string)
}

#[tokio::test]
async fn malformed_access_columns_skip_the_row_with_a_reason_and_the_others_load() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let scratch = Scratch::migrated().await;
    scratch
        .sql(
            r#"insert into {t} (id, key, secret, api_keys, channel_scopes, history, token_keys) values
                 ('good', 'k-good', 's', '[{"key": "sk_fine_key"}]', '[]', '[]', '[]'),
                 ('keys-object', 'k-1', 's', '{"key": "sk_x"}', '[]', '[]', '[]'),
                 ('keys-unknown', 'k-2', 's', '[{"key": "sk_x", "scope": ["events:read"]}]', '[]', '[]', '[]'),
                 ('keys-bare', 'k-3', 's', '["sk_live_must_not_be_logged"]', '[]', '[]', '[]'),
                 ('scopes-type', 'k-4', 's', '[]', '[{"prefix": 1, "scope": "chats:read"}]', '[]', '[]'),
                 ('history-type', 'k-5', 's', '[]', '[]', '[{"prefix": "feed-", "size": "big"}]', '[]'),
                 ('tokens-shape', 'k-6', 's', '[]', '[]', '[]', '"-----BEGIN PUBLIC KEY-----"')"#,
        )
        .await;
    let store = scratch.connect().await;
    assert_eq!(store.list().iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["good"]);
    for (app, reason) in [
        ("keys-object", "api_keys: invalid type: map, expected a sequence"),
        ("keys-unknown", "api_keys: unknown field `scope`"),
        ("keys-bare", "api_keys: invalid type: string \"<redacted>\""),
        ("scopes-type", "channel_scopes: invalid type: integer `1`, expected a string"),
        ("history-type", "history: invalid type: string \"big\""),
        ("tokens-shape", "token_keys: invalid type: string"),
    ] {
        let line = skip_line(&logs, app).unwrap_or_else(|| panic!("no skip logged for {app}"));
        assert!(line.contains(reason), "{line:?} should contain {reason:?}");
    }
    assert_eq!(logs.count("sk_live_must_not_be_logged"), 0, "an API key reached the log");

    // Fixing a row brings it in, and the good row was served throughout.
    scratch.sql(r#"update {t} set api_keys = '[{"key": "sk_x"}]' where id = 'keys-object'"#).await;
    assert_eq!(store.refresh().await.unwrap(), [added("keys-object")]);
    assert_eq!(store.by_key("k-1").unwrap().api_keys[0].key, "sk_x");
    assert_eq!(store.by_key("k-good").unwrap().api_keys[0].key, "sk_fine_key");
}

fn updated(id: &str) -> AppChange {
    AppChange::Updated(id.into())
}

fn revoked(id: &str, keys: &[&str]) -> AppChange {
    AppChange::KeysRevoked { app_id: id.into(), keys: keys.iter().map(|k| k.to_string()).collect() }
}

#[tokio::test]
async fn refresh_reports_revoked_keys_and_token_changes_and_nothing_for_added_keys() {
    let scratch = Scratch::migrated().await;
    scratch
        .sql(
            r#"insert into {t} (id, key, secret, api_keys) values ('1', 'k', 's',
                 '[{"key": "sk_a_0000000", "scopes": ["events:read"], "channels": ["a-*"]},
                   {"key": "sk_b_0000000", "scopes": ["*"]}]')"#,
        )
        .await;
    let store = scratch.connect().await;

    // Added or widened keys take nothing away.
    scratch.sql(r#"update {t} set api_keys = api_keys || '[{"key": "sk_c_0000000"}]'"#).await;
    assert_eq!(store.refresh().await.unwrap(), [updated("1")]);
    scratch.sql(r#"update {t} set api_keys = jsonb_set(api_keys, '{0,channels}', '["a-*", "b-*"]')"#).await;
    assert_eq!(store.refresh().await.unwrap(), [updated("1")]);
    assert_eq!(store.by_id("1").unwrap().api_keys[0].channels, ["a-*", "b-*"]);

    // Narrowed channels, then a deleted key.
    scratch.sql(r#"update {t} set api_keys = jsonb_set(api_keys, '{0,channels}', '["a-1-*"]')"#).await;
    assert_eq!(store.refresh().await.unwrap(), [updated("1"), revoked("1", &["sk_a_0000000"])]);
    scratch
        .sql(
            r#"update {t} set api_keys = (select jsonb_agg(k) from jsonb_array_elements(api_keys) k
                                           where k->>'key' <> 'sk_b_0000000')"#,
        )
        .await;
    assert_eq!(store.refresh().await.unwrap(), [updated("1"), revoked("1", &["sk_b_0000000"])]);
    // A scope rule the remaining keys do not hold, then every key at once.
    scratch.sql(r#"update {t} set channel_scopes = '[{"prefix": "chats-", "scope": "chats:read"}]'"#).await;
    assert_eq!(
        store.refresh().await.unwrap(),
        [updated("1"), revoked("1", &["sk_a_0000000", "sk_c_0000000"])]
    );
    scratch.sql("update {t} set api_keys = '[]'").await;
    assert_eq!(
        store.refresh().await.unwrap(),
        [updated("1"), revoked("1", &["sk_a_0000000", "sk_c_0000000"])]
    );

    // Tokens: turning them on affects no live connection; after that every token setting does.
    let tokens = |id: &str| AppChange::TokensChanged(id.into());
    scratch.sql("update {t} set enable_tokens = true").await;
    assert_eq!(store.refresh().await.unwrap(), [updated("1")]);
    scratch.sql("update {t} set secret = 's2'").await;
    assert_eq!(store.refresh().await.unwrap(), [updated("1"), tokens("1")]);
    scratch
        .sql(r#"update {t} set token_keys = '[{"algorithm": "RS256", "public_key": "-----BEGIN PUBLIC KEY-----"}]'"#)
        .await;
    assert_eq!(store.refresh().await.unwrap(), [updated("1"), tokens("1")]);
    scratch.sql("update {t} set token_audience = 'plexus'").await;
    assert_eq!(store.refresh().await.unwrap(), [updated("1"), tokens("1")]);
    scratch.sql("update {t} set token_issuer = 'https://idp.example'").await;
    assert_eq!(store.refresh().await.unwrap(), [updated("1"), tokens("1")]);
    scratch.sql("update {t} set enable_tokens = false").await;
    assert_eq!(store.refresh().await.unwrap(), [updated("1"), tokens("1")]);
    // Other settings are only an update.
    scratch.sql("update {t} set heartbeat_interval_secs = 10, history = '[{\"prefix\": \"feed-\"}]'").await;
    assert_eq!(store.refresh().await.unwrap(), [updated("1")]);
    assert_eq!(store.by_id("1").unwrap().heartbeat_interval_secs, Some(10));
}
