//! PostgreSQL-backed app store (`[app_store] driver = "postgres"`): apps live in one table, every
//! node keeps an in-memory snapshot of it and re-reads it on a short interval, so adding,
//! disabling or rotating an app reaches every node without a restart.
//!
//! This crate owns the table's schema and its migrations ([`migrate`]), the snapshot and its
//! refresh ([`PgAppStore`]), and the report of what a refresh changed ([`AppChange`]), precise
//! enough to act on: which API keys were revoked, whether token settings changed. What to do
//! about a change (closing a disabled app's connections, or a revoked key's) belongs to the server.
//!
//! # Connection
//!
//! A libpq-style URL or key/value string, e.g. `postgres://plexus:pw@10.0.0.5:5432/plexus` or
//! `host=/run/postgresql dbname=plexus`. `connect_timeout` defaults to 5 s per host when the URL
//! does not set it; `options=-c%20search_path%3Dmyschema` puts the tables in another schema.
//!
//! TLS (rustls on ring) with `sslmode=require` (or `verify-ca` / `verify-full`), verified against
//! the system's root certificates, or with a CA file ([`PgAppStore::connect_with`],
//! [`migrate_with`]) verified against that CA instead. Verification is never skipped, and
//! `sslmode=prefer` is refused as it would fall back to plain TCP silently; without `sslmode`
//! and a CA file the connection is plain TCP (for loopback, a Unix socket or a private network).
//!
//! # Schema
//!
//! [`migrate`] (run at start or by `plexus migrate`) creates the table (default name
//! `plexus_apps`) from the migrations shipped in this crate: `migrations/0001_apps.sql` (the
//! table), `0002_access.sql` (API keys, channel scopes, history, tokens, heartbeat) and
//! `0003_token_claims.sql` (the audience and issuer tokens must carry). A table made by an older
//! release is upgraded in place, its rows taking the new columns' defaults.
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
//! | `webhooks` | jsonb, `[{"url": "https://…", "events": ["channel_occupied", …], "ca_file": …}]` | `[]` |
//! | `created_at`, `updated_at` | timestamptz (a trigger keeps `updated_at` current) | now() |
//! | `api_keys` | jsonb, `[{"key": "sk_…", "scopes": […], "channels": […], "max_connections": 10}]` | `[]` |
//! | `channel_scopes` | jsonb, `[{"prefix": "chats-", "scope": "chats:read"}]` | `[]` |
//! | `history` | jsonb, `[{"prefix": "feed-", "size": 100, "ttl_secs": 300}]` | `[]` |
//! | `enable_tokens` | boolean | false |
//! | `token_keys` | jsonb, `[{"algorithm": "RS256", "public_key": "-----BEGIN PUBLIC KEY-----…", "kid": …}]` | `[]` |
//! | `heartbeat_interval_secs`, `heartbeat_timeout_secs` | integer, null = the server's default | null |
//! | `token_audience`, `token_issuer` | text, non-empty; null = the claim (`aud`, `iss`) is not checked | null |
//!
//! Columns and defaults are those of the `[[apps]]` config entries (`plexus_core::App`); a jsonb
//! column holds what the matching `[[apps.…]]` tables hold, as an array of objects, and is read
//! with the same types, so defaults and refused fields are the same in both stores. Applied
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
//! -- tokens: accept only those issued for this app (aud) by this issuer (iss); null: unchecked
//! update plexus_apps set token_audience = 'plexus', token_issuer = 'https://idp.example' where id = '42';
//! -- API keys: add one, narrow one, revoke one (connections with a revoked or narrowed key are
//! -- reported in AppChange::KeysRevoked)
//! update plexus_apps set api_keys = api_keys || '[{"key": "sk_live_2", "scopes": ["events:read"]}]'
//! where id = '42';
//! update plexus_apps set api_keys = jsonb_set(api_keys, '{0,channels}', '["instance-inst_1*"]')
//! where id = '42';
//! update plexus_apps set api_keys = (select coalesce(jsonb_agg(k), '[]') from jsonb_array_elements(api_keys) k
//!                                    where k->>'key' <> 'sk_live_2')
//! where id = '42';
//! -- remove
//! delete from plexus_apps where id = '42';
//! ```
//!
//! A row that cannot be served (empty id, key or secret; a key already used by an app with a
//! smaller id; webhooks that are not an array of `{url, events, ca_file}` with known event kinds and
//! `http://` or `https://` URLs (`ca_file` only with `https://`); a jsonb column that is not an array of the objects its `[[apps.…]]` table
//! allows, e.g. an unknown field or a wrong type; a limit out of range) is skipped with a warning
//! naming the app, the column and the reason, once, and the other rows are served. The reason
//! never quotes the app secret or an API key. An app whose row turns bad is reported
//! [`AppChange::Removed`].
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
mod tls;

pub use error::PgStoreError;
pub use schema::{migrate, migrate_with};
pub use store::{AppChange, PgAppStore};
