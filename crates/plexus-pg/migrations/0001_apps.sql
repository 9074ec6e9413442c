-- plexus app store, schema version 1.
--
-- `{table}` and `{trigger}` are replaced with the configured table name (default `plexus_apps`)
-- and its trigger's name, both quoted, before this runs. Column names and defaults are those of
-- `plexus_core::App` (the `[[apps]]` config keys): a row that sets only id, key and secret is the
-- same app as a config entry that sets only those three. Numbers are bigint because PostgreSQL has
-- no unsigned types; the store refuses a row whose value does not fit the Rust field.

create table {table} (
    id                               text        primary key,
    key                              text        not null unique,
    secret                           text        not null,
    enabled                          boolean     not null default true,
    enable_client_messages           boolean     not null default false,
    enable_user_authentication       boolean     not null default false,
    enable_subscription_count        boolean     not null default false,
    max_connections                  bigint      not null default 0    check (max_connections >= 0),
    max_event_payload_kb             bigint      not null default 10   check (max_event_payload_kb > 0),
    max_presence_members             bigint      not null default 100  check (max_presence_members >= 0),
    max_presence_member_size_kb      bigint      not null default 2    check (max_presence_member_size_kb >= 0),
    max_client_events_per_second     bigint      not null default 10   check (max_client_events_per_second >= 0),
    max_channel_name_length          bigint      not null default 200  check (max_channel_name_length >= 0),
    user_authentication_timeout_secs bigint      not null default 30   check (user_authentication_timeout_secs >= 0),
    cache_ttl_secs                   bigint      not null default 1800 check (cache_ttl_secs >= 0),
    -- [{"url": "http://...", "events": ["channel_occupied", ...]}, ...]
    webhooks                         jsonb       not null default '[]',
    created_at                       timestamptz not null default now(),
    updated_at                       timestamptz not null default now()
);

-- Operators edit this table by hand; the trigger keeps updated_at honest without them having to.
create or replace function plexus_touch_updated_at() returns trigger language plpgsql as $$
begin
    new.updated_at := now();
    return new;
end
$$;

create trigger {trigger} before update on {table}
    for each row execute function plexus_touch_updated_at();
