-- plexus app store, schema version 2: API keys, channel scopes, history, tokens and heartbeat.
--
-- Adds the `plexus_core::App` fields version 1 left to the config file, under their `[[apps]]`
-- names. Existing rows get the defaults, which are the config file's: no keys (connections need
-- none), no scope rules, no history, tokens off, the server's heartbeat. The jsonb columns hold
-- what the TOML holds, as arrays of objects (`[[apps.api_keys]]` → `[{"key": …, …}]`); they are
-- not constrained here because the store parses them with the config file's types and skips a
-- row it cannot read, naming the column, rather than have an edit fail with a bare check error.

alter table {table}
    add column api_keys                jsonb   not null default '[]',
    add column channel_scopes          jsonb   not null default '[]',
    add column history                 jsonb   not null default '[]',
    add column enable_tokens           boolean not null default false,
    add column token_keys              jsonb   not null default '[]',
    add column heartbeat_interval_secs integer null check (heartbeat_interval_secs >= 0),
    add column heartbeat_timeout_secs  integer null check (heartbeat_timeout_secs >= 0);
