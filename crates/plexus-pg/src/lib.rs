//! PostgreSQL-backed app store (`[app_store] driver = "postgres"`): apps live in one table, every
//! node keeps an in-memory snapshot of it and re-reads it on a short interval, so adding,
//! disabling or rotating an app reaches every node without a restart.
//!
//! This crate owns the table's schema and its migrations ([`migrate`]), the snapshot and its
//! refresh ([`PgAppStore`]), and the report of what a refresh changed ([`AppChange`]). What to do
//! about a change (closing a disabled app's connections) belongs to the server.
//!
//! # Connection
//!
//! A libpq-style URL or key/value string, e.g. `postgres://plexus:pw@10.0.0.5:5432/plexus` or
//! `host=/run/postgresql dbname=plexus`. There is **no TLS**: connect over loopback, a Unix
//! socket or a private network. `connect_timeout` defaults to 5 s per host when the URL does not
//! set it; `options=-c%20search_path%3Dmyschema` puts the tables in another schema.
//!
//! # Schema
//!
//! [`migrate`] (run at start or by `plexus migrate`) creates the table (default name
//! `plexus_apps`) from `migrations/0001_apps.sql`, shipped in this crate:
//!
//! | column | type | default |
//! | --- | --- | --- |
//! | `id` | text, primary key | |
//! | `key` | text, unique | |
//! | `secret` | text | |
//! | `enabled` | boolean | true |
//! | `enable_client_messages`, `enable_user_authentication`, `enable_subscription_count` | boolean | false |
//! | `max_connections` (0 = unlimited) | bigint | 0 |
//! | `max_event_payload_kb` | bigint | 10 |
//! | `max_presence_members` | bigint | 100 |
//! | `max_presence_member_size_kb` | bigint | 2 |
//! | `max_client_events_per_second` (0 = unlimited) | bigint | 10 |
//! | `max_channel_name_length` | bigint | 200 |
//! | `user_authentication_timeout_secs` | bigint | 30 |
//! | `cache_ttl_secs` | bigint | 1800 |
//! | `webhooks` | jsonb, `[{"url": "http://…", "events": ["channel_occupied", …]}]` | `[]` |
//! | `created_at`, `updated_at` | timestamptz (a trigger keeps `updated_at` current) | now() |
//!
//! Columns and defaults are those of the `[[apps]]` config entries (`plexus_core::App`). Applied
//! migrations are recorded per table in `plexus_schema_migrations (app_table, version,
//! applied_at)`; running [`migrate`] again changes nothing, and nodes migrating at once are
//! serialised by an advisory lock.
//!
//! # Managing apps
//!
//! ```sql
//! -- add (every other setting at its default)
//! insert into plexus_apps (id, key, secret) values ('42', 'app-key', 'app-secret');
//! -- add with settings and a webhook
//! insert into plexus_apps (id, key, secret, enable_client_messages, max_connections, webhooks)
//! values ('43', 'other-key', 'other-secret', true, 1000,
//!         '[{"url": "http://hooks.internal/pusher", "events": ["channel_occupied", "channel_vacated"]}]');
//! -- disable (its connections are closed) and enable again
//! update plexus_apps set enabled = false where id = '42';
//! update plexus_apps set enabled = true where id = '42';
//! -- rotate the secret (or the key)
//! update plexus_apps set secret = 'new-secret' where id = '42';
//! -- remove
//! delete from plexus_apps where id = '42';
//! ```
//!
//! A row that cannot be served (empty id, key or secret; a key already used by an app with a
//! smaller id; webhooks that are not an array of `{url, events}` with known event kinds and
//! `http://` URLs; a limit out of range) is skipped with a warning naming the reason, once, and
//! the other rows are served. An app whose row turns bad is reported [`AppChange::Removed`].
//!
//! # Refresh
//!
//! [`PgAppStore::spawn_refresh`] re-reads the whole table every interval; a change made in the
//! database is served by every node within one interval (plus the query time). A failed refresh
//! keeps the last good snapshot: nodes go on serving the apps they knew while the database is
//! down, and reconnect by themselves. Lookups never touch the database.

mod conn;
mod error;
mod row;
mod schema;
mod store;

pub use error::PgStoreError;
pub use schema::migrate;
pub use store::{AppChange, PgAppStore};
