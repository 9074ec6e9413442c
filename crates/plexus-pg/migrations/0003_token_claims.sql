-- plexus app store, schema version 3: the audience and issuer an app's tokens must carry.
--
-- `token_audience` and `token_issuer` are the `[[apps]]` settings of the same names. Null, the
-- default and what existing rows get, checks neither claim, as before this version. An empty
-- string is refused here rather than by the store: it would admit only tokens whose claim is
-- empty (surely a typo for "no check"), and the store would skip the whole row, closing the app's
-- connections on every node, where a failed update changes nothing.

alter table {table}
    add column token_audience text null check (token_audience <> ''),
    add column token_issuer   text null check (token_issuer <> '');
