//! [`PgAppStore`]: the snapshot lookups read, and the refresh that replaces it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use plexus_core::access::glob_match;
use plexus_core::app::{App, AppStore};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::conn::Target;
use crate::error::PgStoreError;
use crate::row::{RawApp, COLUMNS};
use crate::schema::Table;

/// A hung server (half-open TCP, a lock on the table) must not stall the refresh loop forever.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What one refresh found different, by app id, ordered by id.
///
/// Each app gets at most one of `Added`, `Removed`, `Disabled`, `Enabled` and `Updated`: an app
/// that was disabled and edited in the same interval is reported `Disabled` only (its connections
/// close anyway). An `Updated` app that is enabled may also get, right after it, the variants
/// that say which of its live connections the edit affects: [`AppChange::KeysRevoked`] and
/// [`AppChange::TokensChanged`]. Changes not listed there (limits, flags, heartbeat settings,
/// history rules, a key's `max_connections`) apply to new connections and subscriptions only.
///
/// `Debug` never prints an API key in full; see [`AppChange::KeysRevoked`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum AppChange {
    /// A row appeared (or a skipped row became valid).
    Added(String),
    /// A row disappeared (or became invalid and is now skipped).
    Removed(String),
    /// `enabled` went from true to false: the app's connections should be closed.
    Disabled(String),
    /// `enabled` went from false to true.
    Enabled(String),
    /// Anything else about the app changed: key or secret rotated, flags, limits, webhooks, API
    /// keys, token settings, heartbeat settings.
    Updated(String),
    /// API keys (`api_keys[].key`, the secrets clients present) that the last snapshot accepted
    /// and this one no longer honours as fully, in the order the app listed them: connections
    /// opened with one of them should be closed, and may come back under the new grants. A key
    /// is revoked when it was deleted, lost a scope, lost channel coverage (a pattern the new
    /// patterns do not cover, e.g. `a-*` narrowed to `a-b-*`), or when the app's `channel_scopes`
    /// changed and the key lacks a scope one of the new rules asks for. Widening a key (or adding
    /// one) is not a revocation. The test is conservative: replacing `a-*` by `a-x*` plus `a-y*`
    /// reports the key even if only those channels were ever used.
    ///
    /// Adding the first key to an app that had none (so connections now need one) revokes no
    /// key; connections opened without a key are not reported here.
    ///
    /// `Debug` shows at most the first four characters of each key.
    KeysRevoked { app_id: String, keys: Vec<String> },
    /// The app accepted signed tokens (`enable_tokens`, or any `token_keys`) and `enable_tokens`,
    /// `token_keys`, `token_audience`, `token_issuer` or the secret (the HS256 key) changed:
    /// tokens accepted before may no longer verify, so connections opened with a token should be checked again or closed. Turning
    /// tokens on for an app that accepted none is only `Updated`: no live connection holds one.
    TokensChanged(String),
}

impl AppChange {
    pub fn id(&self) -> &str {
        match self {
            AppChange::Added(id)
            | AppChange::Removed(id)
            | AppChange::Disabled(id)
            | AppChange::Enabled(id)
            | AppChange::Updated(id)
            | AppChange::KeysRevoked { app_id: id, .. }
            | AppChange::TokensChanged(id) => id,
        }
    }
}

/// The server logs every change; API keys are secrets, so only enough of one to recognise it
/// is printed (nothing of a key of eight characters or fewer).
impl fmt::Debug for AppChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppChange::Added(id) => f.debug_tuple("Added").field(id).finish(),
            AppChange::Removed(id) => f.debug_tuple("Removed").field(id).finish(),
            AppChange::Disabled(id) => f.debug_tuple("Disabled").field(id).finish(),
            AppChange::Enabled(id) => f.debug_tuple("Enabled").field(id).finish(),
            AppChange::Updated(id) => f.debug_tuple("Updated").field(id).finish(),
            AppChange::TokensChanged(id) => f.debug_tuple("TokensChanged").field(id).finish(),
            AppChange::KeysRevoked { app_id, keys } => {
                let shown: Vec<String> = keys
                    .iter()
                    .map(|key| {
                        let prefix: String = if key.chars().count() > 8 {
                            key.chars().take(4).collect()
                        } else {
                            String::new()
                        };
                        format!("{prefix}…")
                    })
                    .collect();
                f.debug_struct("KeysRevoked").field("app_id", app_id).field("keys", &shown).finish()
            }
        }
    }
}

/// One consistent view of the table, never modified after it is built.
#[derive(Default)]
struct Snapshot {
    by_id: HashMap<String, Arc<App>>,
    by_key: HashMap<String, Arc<App>>,
    sorted: Vec<Arc<App>>,
}

/// Apps read from a PostgreSQL table, served from memory.
///
/// Lookups clone an `Arc` under a read lock that is only ever held for a pointer copy or swap;
/// they never wait on the database. [`PgAppStore::refresh`] (or the loop started by
/// [`PgAppStore::spawn_refresh`]) reads the whole table and swaps in a new snapshot.
pub struct PgAppStore {
    target: Target,
    table: Table,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Held across a refresh, so concurrent refreshes run one after the other and each change is
    /// reported to exactly one caller.
    refresher: Mutex<Refresher>,
}

#[derive(Default)]
struct Refresher {
    /// `None` after any failure: the next refresh reconnects.
    client: Option<Client>,
    /// Rows skipped by the last refresh, id to reason, so a bad row is logged when it turns bad
    /// or its reason changes, not on every tick.
    skipped: BTreeMap<String, String>,
}

impl PgAppStore {
    /// Connects to `url` and loads the apps in `table`. Fails if the database cannot be reached
    /// or the table is missing (the message then says to run `plexus migrate`).
    pub async fn connect(url: &str, table: &str) -> Result<Arc<PgAppStore>, PgStoreError> {
        Self::connect_with(url, None, table).await
    }

    /// [`PgAppStore::connect`] over TLS verified against the CA certificates of the PEM file
    /// `ca_file` (see the crate's "Connection"); every reconnect of the refresh uses it too.
    pub async fn connect_with(
        url: &str,
        ca_file: Option<&std::path::Path>,
        table: &str,
    ) -> Result<Arc<PgAppStore>, PgStoreError> {
        let table = Table::parse(table)?;
        let target = Target::parse(url, ca_file)?;
        let store = Arc::new(PgAppStore {
            target,
            table,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            refresher: Mutex::new(Refresher::default()),
        });
        store.refresh().await?;
        tracing::info!(
            table = store.table.name(),
            target = store.target.shown(),
            apps = store.current().sorted.len(),
            "app store loaded"
        );
        Ok(store)
    }

    /// Reads the whole table, swaps in the new snapshot and returns what changed since the last
    /// one. Invalid rows are skipped (logged with the reason) and the others served. On error the
    /// current snapshot stays as it is and the connection is re-opened on the next call.
    pub async fn refresh(&self) -> Result<Vec<AppChange>, PgStoreError> {
        let mut refresher = self.refresher.lock().await;
        let rows = match self.fetch(&mut refresher).await {
            Ok(rows) => rows,
            Err(err) => {
                refresher.client = None;
                return Err(err);
            }
        };
        let (next, skipped) = build(rows);
        self.report_skipped(&mut refresher.skipped, skipped);
        let next = Arc::new(next);
        let previous =
            std::mem::replace(&mut *self.snapshot.write().unwrap_or_else(|e| e.into_inner()), next.clone());
        let changes = diff(&previous, &next);
        for change in &changes {
            tracing::debug!(table = self.table.name(), "app store change: {change:?}");
        }
        Ok(changes)
    }

    /// Calls [`PgAppStore::refresh`] every `every` (the first time one interval from now) and
    /// hands non-empty change lists to `on_change`. While the database is unreachable the last
    /// good snapshot keeps being served; the outage is logged once as a warning, and its end as
    /// an info line. The loop stops when the store is dropped or the handle aborted. Must be
    /// called inside a Tokio runtime, like everything else here.
    ///
    /// Refreshes run one at a time: a change is reported to whoever refreshed first, so calling
    /// [`PgAppStore::refresh`] by hand alongside this loop takes those changes away from it.
    pub fn spawn_refresh(
        self: &Arc<Self>,
        every: Duration,
        on_change: impl Fn(Vec<AppChange>) + Send + Sync + 'static,
    ) -> JoinHandle<()> {
        let store: Weak<PgAppStore> = Arc::downgrade(self);
        // tokio's interval refuses a zero period.
        let every = every.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                ticks.tick().await;
                let Some(store) = store.upgrade() else { break };
                match store.refresh().await {
                    Ok(changes) => {
                        if failing {
                            failing = false;
                            tracing::info!(table = store.table.name(), "app store refresh works again");
                        }
                        if !changes.is_empty() {
                            on_change(changes);
                        }
                    }
                    Err(err) if !failing => {
                        failing = true;
                        tracing::warn!(
                            table = store.table.name(),
                            "app store refresh failed, serving the last loaded apps until it works again: {err}"
                        );
                    }
                    Err(err) => {
                        tracing::debug!(table = store.table.name(), "app store refresh still failing: {err}")
                    }
                }
            }
        })
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn fetch(&self, refresher: &mut Refresher) -> Result<Vec<tokio_postgres::Row>, PgStoreError> {
        let client = match refresher.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => self.target.open().await?,
        };
        let sql = format!("select {COLUMNS} from {} order by id", self.table.quoted());
        let rows = match tokio::time::timeout(QUERY_TIMEOUT, client.query(&sql, &[])).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(cause)) => return Err(self.query_error(cause)),
            Err(_) => {
                return Err(PgStoreError::Timeout {
                    what: format!("reading app store table {:?}", self.table.name()),
                    after: QUERY_TIMEOUT,
                })
            }
        };
        refresher.client = Some(client);
        Ok(rows)
    }

    fn query_error(&self, cause: tokio_postgres::Error) -> PgStoreError {
        let table = self.table.name().to_string();
        match cause.code() {
            Some(code) if *code == SqlState::UNDEFINED_TABLE => PgStoreError::MissingTable { table },
            Some(code) if *code == SqlState::UNDEFINED_COLUMN => {
                PgStoreError::OutdatedSchema { table, cause }
            }
            _ => PgStoreError::Query { what: "reading the app store table", cause },
        }
    }

    fn report_skipped(&self, known: &mut BTreeMap<String, String>, now: BTreeMap<String, String>) {
        for (id, reason) in &now {
            if known.get(id) != Some(reason) {
                tracing::warn!(table = self.table.name(), app = %id, "skipping app row: {reason}");
            }
        }
        for id in known.keys().filter(|id| !now.contains_key(*id)) {
            tracing::info!(table = self.table.name(), app = %id, "app row no longer skipped");
        }
        *known = now;
    }
}

/// The snapshot for these rows (ordered by id, so the first of two rows sharing a key wins),
/// and the rows left out with why.
fn build(rows: Vec<tokio_postgres::Row>) -> (Snapshot, BTreeMap<String, String>) {
    let apps = rows.iter().map(|row| {
        let id = row.try_get::<_, String>(0).unwrap_or_else(|_| "<unreadable id>".to_string());
        (id, RawApp::from_row(row).and_then(RawApp::into_app))
    });
    build_from(apps)
}

fn build_from(
    rows: impl IntoIterator<Item = (String, Result<App, String>)>,
) -> (Snapshot, BTreeMap<String, String>) {
    let mut snapshot = Snapshot::default();
    let mut skipped = BTreeMap::new();
    for (id, app) in rows {
        let app = match app {
            Ok(app) => app,
            Err(reason) => {
                skipped.insert(id, reason);
                continue;
            }
        };
        if snapshot.by_id.contains_key(&app.id) {
            skipped.insert(id, "duplicate id".into());
            continue;
        }
        if let Some(other) = snapshot.by_key.get(&app.key) {
            skipped.insert(id, format!("key {:?} is already used by app {:?}", app.key, other.id));
            continue;
        }
        let app = Arc::new(app);
        snapshot.by_id.insert(app.id.clone(), app.clone());
        snapshot.by_key.insert(app.key.clone(), app.clone());
        snapshot.sorted.push(app);
    }
    snapshot.sorted.sort_by(|a, b| a.id.cmp(&b.id));
    (snapshot, skipped)
}

/// Changes from `old` to `new`, ordered by app id (see [`AppChange`] for what goes with what).
fn diff(old: &Snapshot, new: &Snapshot) -> Vec<AppChange> {
    let mut changes = Vec::new();
    for (id, app) in &new.by_id {
        match old.by_id.get(id) {
            None => changes.push(AppChange::Added(id.clone())),
            Some(before) if before == app => {}
            Some(before) if before.enabled && !app.enabled => changes.push(AppChange::Disabled(id.clone())),
            Some(before) if !before.enabled && app.enabled => changes.push(AppChange::Enabled(id.clone())),
            Some(before) => {
                changes.push(AppChange::Updated(id.clone()));
                // A disabled app has no connections for these to act on.
                if app.enabled {
                    let keys = revoked_keys(before, app);
                    if !keys.is_empty() {
                        changes.push(AppChange::KeysRevoked { app_id: id.clone(), keys });
                    }
                    if tokens_changed(before, app) {
                        changes.push(AppChange::TokensChanged(id.clone()));
                    }
                }
            }
        }
    }
    changes.extend(
        old.by_id.keys().filter(|id| !new.by_id.contains_key(*id)).map(|id| AppChange::Removed(id.clone())),
    );
    // Stable, so an app's details stay right after its `Updated`.
    changes.sort_by(|a, b| a.id().cmp(b.id()));
    changes
}

/// The keys of `old` that `new` honours less (the rules are on [`AppChange::KeysRevoked`]).
fn revoked_keys(old: &App, new: &App) -> Vec<String> {
    // A key is only ever checked against the scope the longest matching rule names, so when the
    // rules change, a key that holds every scope they name is the only kind sure to lose nothing.
    let rules_changed = old.channel_scopes != new.channel_scopes;
    let mut revoked: Vec<String> = Vec::new();
    for (i, before) in old.api_keys.iter().enumerate() {
        // Lookups take the first key with a given secret; later duplicates were never used.
        if old.api_keys[..i].iter().any(|k| k.key == before.key) {
            continue;
        }
        let honoured = match new.api_keys.iter().find(|k| k.key == before.key) {
            None => false,
            Some(after) => {
                before.scopes.iter().all(|scope| after.has_scope(scope))
                    && before.channels.iter().all(|pattern| covers(&after.channels, pattern))
                    && !(rules_changed && new.channel_scopes.iter().any(|rule| !after.has_scope(&rule.scope)))
            }
        };
        if !honoured {
            revoked.push(before.key.clone());
        }
    }
    revoked
}

/// Whether every channel `pattern` matches is matched by one of `patterns`. Sufficient, not
/// exact: `pattern` is matched as text, its `*`s as literal characters. Since `*` never occurs
/// in a channel name, a literal `*` can only be consumed by a `*` of the covering pattern, which
/// then consumes whatever the original `*` stands for just as well.
fn covers(patterns: &[String], pattern: &str) -> bool {
    patterns.iter().any(|p| glob_match(p, pattern))
}

/// Whether tokens accepted under `old` may not verify under `new`.
fn tokens_changed(old: &App, new: &App) -> bool {
    let accepts_tokens = old.enable_tokens || !old.token_keys.is_empty();
    accepts_tokens
        && (old.enable_tokens != new.enable_tokens
            || old.token_keys != new.token_keys
            || old.token_audience != new.token_audience
            || old.token_issuer != new.token_issuer
            || old.secret != new.secret)
}

impl AppStore for PgAppStore {
    fn by_key(&self, key: &str) -> Option<Arc<App>> {
        self.current().by_key.get(key).cloned()
    }

    fn by_id(&self, id: &str) -> Option<Arc<App>> {
        self.current().by_id.get(id).cloned()
    }

    fn list(&self) -> Vec<Arc<App>> {
        self.current().sorted.clone()
    }
}

/// Apps are counted, never printed: their `Debug` hides secrets, but a list of every app in a log
/// line is noise.
impl fmt::Debug for PgAppStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgAppStore")
            .field("target", &self.target)
            .field("table", &self.table.name())
            .field("apps", &self.current().sorted.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_core::access::{ApiKey, ChannelScope};
    use plexus_core::app::TokenKey;

    fn snapshot(apps: Vec<App>) -> Snapshot {
        build_from(apps.into_iter().map(|app| (app.id.clone(), Ok(app)))).0
    }

    #[test]
    fn diff_names_each_kind_of_change_once_per_app() {
        let mut disabled_and_rotated = App::new("d", "kd", "sd");
        let mut enabled = App::new("e", "ke", "se");
        enabled.enabled = false;
        let old = snapshot(vec![
            App::new("same", "k1", "s1"),
            App::new("gone", "k2", "s2"),
            disabled_and_rotated.clone(),
            enabled.clone(),
            App::new("rotated", "kr", "old-secret"),
            App::new("limits", "kl", "sl"),
        ]);
        disabled_and_rotated.enabled = false;
        disabled_and_rotated.secret = "new".into();
        enabled.enabled = true;
        let mut limits = App::new("limits", "kl", "sl");
        limits.max_connections = 10;
        let new = snapshot(vec![
            App::new("same", "k1", "s1"),
            App::new("added", "k3", "s3"),
            disabled_and_rotated,
            enabled,
            App::new("rotated", "kr", "new-secret"),
            limits,
        ]);
        assert_eq!(
            diff(&old, &new),
            vec![
                AppChange::Added("added".into()),
                AppChange::Disabled("d".into()),
                AppChange::Enabled("e".into()),
                AppChange::Removed("gone".into()),
                AppChange::Updated("limits".into()),
                AppChange::Updated("rotated".into()),
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }

    fn key(secret: &str, scopes: &[&str], channels: &[&str]) -> ApiKey {
        ApiKey {
            key: secret.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            channels: channels.iter().map(|s| s.to_string()).collect(),
            max_connections: 10,
        }
    }

    fn with_keys(keys: Vec<ApiKey>) -> App {
        let mut app = App::new("1", "k", "s");
        app.api_keys = keys;
        app
    }

    #[test]
    fn a_key_is_revoked_when_deleted_or_narrowed_and_not_when_widened() {
        let old = with_keys(vec![
            key("sk_deleted", &["events:read"], &["*"]),
            key("sk_lost_scope", &["events:read", "chats:read"], &["*"]),
            key("sk_narrowed", &["events:read"], &["a-*"]),
            key("sk_widened", &["events:read"], &["a-b-*", "c"]),
            key("sk_untouched", &["*"], &["*"]),
        ]);
        let new = with_keys(vec![
            key("sk_untouched", &["*"], &["*"]),
            key("sk_widened", &["events:read", "chats:read"], &["a-*", "c*"]),
            key("sk_narrowed", &["events:read"], &["a-b-*"]),
            key("sk_lost_scope", &["events:read"], &["*"]),
            key("sk_added", &["events:read"], &["*"]),
        ]);
        assert_eq!(revoked_keys(&old, &new), ["sk_deleted", "sk_lost_scope", "sk_narrowed"]);
        assert!(revoked_keys(&new, &new).is_empty());
        // A key's `*` scope or channel is only honoured by `*`.
        let star = with_keys(vec![key("sk", &["*"], &["*"])]);
        assert_eq!(revoked_keys(&star, &with_keys(vec![key("sk", &["events:read"], &["*"])])), ["sk"]);
        assert_eq!(revoked_keys(&star, &with_keys(vec![key("sk", &["*"], &["a*"])])), ["sk"]);
    }

    #[test]
    fn new_channel_scope_rules_revoke_the_keys_that_lack_a_scope_they_name() {
        let mut old = with_keys(vec![
            key("sk_events", &["events:read"], &["*"]),
            key("sk_both", &["events:read", "chats:read"], &["*"]),
            key("sk_all", &["*"], &["*"]),
        ]);
        let mut new = old.clone();
        new.channel_scopes = vec![ChannelScope { prefix: "chats-".into(), scope: "chats:read".into() }];
        assert_eq!(revoked_keys(&old, &new), ["sk_events"]);
        // Removing a rule can narrow too: the shorter prefix's rule takes over.
        old.channel_scopes = vec![
            ChannelScope { prefix: "a-".into(), scope: "chats:read".into() },
            ChannelScope { prefix: "a-b-".into(), scope: "events:read".into() },
        ];
        new.channel_scopes = old.channel_scopes[..1].to_vec();
        assert_eq!(revoked_keys(&old, &new), ["sk_events"]);
    }

    #[test]
    fn token_changes_are_reported_only_for_apps_that_accepted_tokens() {
        let plain = App::new("1", "k", "s");
        let rotated = App { secret: "s2".into(), ..plain.clone() };
        assert!(!tokens_changed(&plain, &rotated), "no token could have been signed with it");
        let hs256 = App { enable_tokens: true, ..plain.clone() };
        assert!(!tokens_changed(&plain, &hs256), "turning tokens on revokes nothing");
        assert!(tokens_changed(&hs256, &App { secret: "s2".into(), ..hs256.clone() }));
        assert!(tokens_changed(&hs256, &plain));
        let rs256 = App {
            token_keys: vec![TokenKey { algorithm: "RS256".into(), public_key: "pem".into(), kid: None }],
            ..plain.clone()
        };
        assert!(tokens_changed(&rs256, &plain));
        assert!(tokens_changed(&rs256, &App { secret: "s2".into(), ..rs256.clone() }));
        assert!(!tokens_changed(&rs256, &App { max_connections: 5, ..rs256.clone() }));
        assert!(tokens_changed(&rs256, &App { token_audience: Some("plexus".into()), ..rs256.clone() }));
        assert!(tokens_changed(&hs256, &App { token_issuer: Some("https://idp".into()), ..hs256.clone() }));
        assert!(!tokens_changed(&plain, &App { token_audience: Some("plexus".into()), ..plain.clone() }));
    }

    #[test]
    fn key_and_token_changes_follow_the_update_of_an_enabled_app_only() {
        let old = App { enable_tokens: true, ..with_keys(vec![key("sk_gone_1234", &["*"], &["*"])]) };
        let edited = App { secret: "s2".into(), ..with_keys(vec![]) };
        assert_eq!(
            diff(&snapshot(vec![old.clone()]), &snapshot(vec![edited.clone()])),
            [
                AppChange::Updated("1".into()),
                AppChange::KeysRevoked { app_id: "1".into(), keys: vec!["sk_gone_1234".into()] },
                AppChange::TokensChanged("1".into()),
            ]
        );
        let disabled = App { enabled: false, ..edited.clone() };
        assert_eq!(
            diff(&snapshot(vec![old.clone()]), &snapshot(vec![disabled])),
            [AppChange::Disabled("1".into())]
        );
        let (off, off_edited) = (App { enabled: false, ..old }, App { enabled: false, ..edited });
        assert_eq!(diff(&snapshot(vec![off]), &snapshot(vec![off_edited])), [AppChange::Updated("1".into())]);
    }

    #[test]
    fn debug_shows_no_more_than_four_characters_of_a_revoked_key() {
        let change = AppChange::KeysRevoked {
            app_id: "42".into(),
            keys: vec!["sk_live_very_secret".into(), "short-12".into()],
        };
        let printed = format!("{change:?}");
        assert!(printed.contains("\"42\"") && printed.contains("sk_l…"), "{printed}");
        assert!(!printed.contains("sk_live") && !printed.contains("short"), "{printed}");
    }

    #[test]
    fn a_bad_row_or_a_duplicate_key_is_skipped_and_the_rest_served() {
        let (snap, skipped) = build_from(vec![
            ("a".to_string(), Ok(App::new("a", "shared", "s"))),
            ("b".to_string(), Err("secret must not be empty".to_string())),
            ("c".to_string(), Ok(App::new("c", "shared", "s"))),
            ("d".to_string(), Ok(App::new("d", "kd", "s"))),
        ]);
        assert_eq!(snap.sorted.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["a", "d"]);
        assert_eq!(snap.by_key["shared"].id, "a");
        assert_eq!(skipped["b"], "secret must not be empty");
        assert_eq!(skipped["c"], "key \"shared\" is already used by app \"a\"");
    }
}
