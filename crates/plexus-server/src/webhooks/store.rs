//! The durable webhook queue: every event is written here when the batcher accepts it, and every
//! signed-off batch (a job) before its first delivery attempt; jobs are removed once delivered
//! (or given up). So a crash loses nothing accepted.
//!
//! An embedded redb file under `[webhooks] data_dir`: no service to run, ACID commits, and what
//! is left is read back in order at start. Two tables: `webhook_events` (accepted events still in
//! the batch window or held back, by sequence number) and `webhook_jobs` (request bodies, by job
//! id). A file written before events were persisted has only `webhook_jobs`; opening it adds the
//! other table.
//!
//! Built without the `redb` feature (an embedder's choice), the same queue is kept in memory: it
//! behaves the same while the process runs and loses what is pending when it stops.

use std::collections::BTreeMap;
use std::path::Path;

use plexus_core::webhook::WebhookEvent;
#[cfg(feature = "redb")]
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[cfg(feature = "redb")]
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("webhook_jobs");
#[cfg(feature = "redb")]
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("webhook_events");

/// One request to make: a body for one endpoint of one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Increasing; delivery order per endpoint follows it.
    pub id: u64,
    pub app_id: String,
    pub url: String,
    /// The exact bytes to send (signed at send time with the app's current secret).
    pub body: String,
    /// Unix milliseconds when the batch was made; the retry window counts from here.
    pub created_ms: u64,
}

/// An accepted event not yet turned into a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub app_id: String,
    pub event: WebhookEvent,
    /// Unix milliseconds when a held-back `channel_vacated` / `member_removed` is due; `None` for
    /// an event that went straight into the batch window.
    pub hold_until_ms: Option<u64>,
}

/// The on-disk shape: the event as its webhook JSON, so the file reads like what is sent.
#[derive(Serialize, Deserialize)]
struct EventRecord {
    app_id: String,
    event: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hold_until_ms: Option<u64>,
}

/// What one batcher wake-up changes, written in one transaction: so an event turned into a job
/// is never both on disk as an event and a job, nor neither.
#[derive(Debug, Default)]
pub struct Changes {
    /// Newly accepted events, by sequence number.
    pub insert: BTreeMap<u64, StoredEvent>,
    /// Events stored earlier that are gone now (cancelled with their pair, or made into jobs).
    pub delete: Vec<u64>,
    /// Jobs made from events of this wake-up's flush.
    pub jobs: Vec<Job>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.insert.is_empty() && self.delete.is_empty() && self.jobs.is_empty()
    }

    /// The event `seq` is done with: never written if it was accepted in this same wake-up,
    /// deleted otherwise.
    pub fn forget(&mut self, seq: u64) {
        if self.insert.remove(&seq).is_none() {
            self.delete.push(seq);
        }
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[cfg(feature = "redb")]
    #[error("webhook store: {0}")]
    Redb(#[from] redb::Error),
    #[error("webhook store: cannot create {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    /// redb's "Database already open. Cannot acquire lock.": another process (most likely another
    /// plexus) has the file.
    #[error(
        "webhook store: {path} is in use by another process (Database already open. Cannot acquire lock.); \
         give each server its own data directory with --data-dir, PLEXUS_DATA_DIR or [webhooks] data_dir"
    )]
    Locked { path: String },
    #[error("webhook store: corrupt record: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("webhook store: event {seq} is not a webhook event this version knows")]
    UnknownEvent { seq: u64 },
}

/// A stored event's bytes: its webhook JSON, so the file reads like what is sent.
fn encode_event(stored: &StoredEvent) -> Result<Vec<u8>, StoreError> {
    let record = EventRecord {
        app_id: stored.app_id.clone(),
        event: stored.event.to_json(),
        hold_until_ms: stored.hold_until_ms,
    };
    Ok(serde_json::to_vec(&record)?)
}

/// The inverse of [`encode_event`].
fn decode_stored(seq: u64, bytes: &[u8]) -> Result<StoredEvent, StoreError> {
    let record: EventRecord = serde_json::from_slice(bytes)?;
    let event = decode_event(&record.event).ok_or(StoreError::UnknownEvent { seq })?;
    Ok(StoredEvent { app_id: record.app_id, event, hold_until_ms: record.hold_until_ms })
}

#[cfg(feature = "redb")]
fn redb_error(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Redb(error.into())
}

/// redb's page cache for the store. redb's default is a 1 GiB ceiling, filled as pages are
/// touched and never given back; the store is a queue whose live pages are few, so a small cache
/// costs a re-read at most and keeps a webhook flood from growing the process for good.
#[cfg(feature = "redb")]
const STORE_CACHE_BYTES: usize = 4 << 20;

/// Pending webhook events and jobs on disk.
#[cfg(feature = "redb")]
#[derive(Debug)]
pub struct JobStore {
    db: Database,
}

#[cfg(feature = "redb")]
impl JobStore {
    /// Opens (or creates) `data_dir/webhooks.redb`.
    pub fn open(data_dir: &Path) -> Result<JobStore, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StoreError::Dir { path: data_dir.display().to_string(), source })?;
        let file = data_dir.join("webhooks.redb");
        let db =
            redb::Builder::new().set_cache_size(STORE_CACHE_BYTES).create(&file).map_err(
                |error| match error {
                    redb::DatabaseError::DatabaseAlreadyOpen => {
                        StoreError::Locked { path: file.display().to_string() }
                    }
                    error => redb_error(error),
                },
            )?;
        let tx = db.begin_write().map_err(redb_error)?;
        tx.open_table(JOBS).map_err(redb_error)?;
        tx.open_table(EVENTS).map_err(redb_error)?;
        tx.commit().map_err(redb_error)?;
        Ok(JobStore { db })
    }

    /// Every pending job, oldest first.
    pub fn pending(&self) -> Result<Vec<Job>, StoreError> {
        let tx = self.db.begin_read().map_err(redb_error)?;
        let table = tx.open_table(JOBS).map_err(redb_error)?;
        let mut jobs = Vec::new();
        for entry in table.iter().map_err(redb_error)? {
            let (_, value) = entry.map_err(redb_error)?;
            jobs.push(serde_json::from_slice(value.value())?);
        }
        Ok(jobs)
    }

    /// Every accepted event not yet made into a job, in the order they were accepted.
    pub fn events(&self) -> Result<Vec<(u64, StoredEvent)>, StoreError> {
        let tx = self.db.begin_read().map_err(redb_error)?;
        let table = tx.open_table(EVENTS).map_err(redb_error)?;
        let mut events = Vec::new();
        for entry in table.iter().map_err(redb_error)? {
            let (key, value) = entry.map_err(redb_error)?;
            events.push((key.value(), decode_stored(key.value(), value.value())?));
        }
        Ok(events)
    }

    /// Applies one wake-up's changes in one durable commit.
    pub fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(redb_error)?;
        {
            let mut events = tx.open_table(EVENTS).map_err(redb_error)?;
            for (seq, stored) in &changes.insert {
                events.insert(*seq, encode_event(stored)?.as_slice()).map_err(redb_error)?;
            }
            for seq in &changes.delete {
                events.remove(*seq).map_err(redb_error)?;
            }
            let mut jobs = tx.open_table(JOBS).map_err(redb_error)?;
            for job in &changes.jobs {
                let bytes = serde_json::to_vec(job)?;
                jobs.insert(job.id, bytes.as_slice()).map_err(redb_error)?;
            }
        }
        tx.commit().map_err(redb_error)
    }

    pub fn remove(&self, id: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(redb_error)?;
        {
            let mut table = tx.open_table(JOBS).map_err(redb_error)?;
            table.remove(id).map_err(redb_error)?;
        }
        tx.commit().map_err(redb_error)
    }
}

/// Pending webhook events and jobs in memory (built without `redb`): the same records as on
/// disk, gone when the process stops.
#[cfg(not(feature = "redb"))]
#[derive(Debug, Default)]
pub struct JobStore {
    tables: std::sync::Mutex<MemoryTables>,
}

#[cfg(not(feature = "redb"))]
#[derive(Debug, Default)]
struct MemoryTables {
    jobs: BTreeMap<u64, Vec<u8>>,
    events: BTreeMap<u64, Vec<u8>>,
}

#[cfg(not(feature = "redb"))]
impl JobStore {
    pub fn open(data_dir: &Path) -> Result<JobStore, StoreError> {
        tracing::warn!(
            data_dir = %data_dir.display(),
            "built without the `redb` feature: pending webhooks are kept in memory and lost on restart"
        );
        Ok(JobStore::default())
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, MemoryTables> {
        self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn pending(&self) -> Result<Vec<Job>, StoreError> {
        self.tables().jobs.values().map(|bytes| Ok(serde_json::from_slice(bytes)?)).collect()
    }

    pub fn events(&self) -> Result<Vec<(u64, StoredEvent)>, StoreError> {
        self.tables().events.iter().map(|(seq, bytes)| Ok((*seq, decode_stored(*seq, bytes)?))).collect()
    }

    pub fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        let mut tables = self.tables();
        for (seq, stored) in &changes.insert {
            tables.events.insert(*seq, encode_event(stored)?);
        }
        for seq in &changes.delete {
            tables.events.remove(seq);
        }
        for job in &changes.jobs {
            tables.jobs.insert(job.id, serde_json::to_vec(job)?);
        }
        Ok(())
    }

    pub fn remove(&self, id: u64) -> Result<(), StoreError> {
        self.tables().jobs.remove(&id);
        Ok(())
    }
}

impl JobStore {
    /// Writes jobs in one commit.
    pub fn insert(&self, jobs: &[Job]) -> Result<(), StoreError> {
        self.commit(&Changes { jobs: jobs.to_vec(), ..Changes::default() })
    }
}

/// The inverse of [`WebhookEvent::to_json`].
fn decode_event(value: &Value) -> Option<WebhookEvent> {
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    let channel = text("channel")?;
    Some(match value.get("name")?.as_str()? {
        "channel_occupied" => WebhookEvent::ChannelOccupied { channel },
        "channel_vacated" => WebhookEvent::ChannelVacated { channel },
        "member_added" => WebhookEvent::MemberAdded { channel, user_id: text("user_id")? },
        "member_removed" => WebhookEvent::MemberRemoved { channel, user_id: text("user_id")? },
        "client_event" => WebhookEvent::ClientEvent {
            channel,
            event: text("event")?,
            data: text("data")?,
            socket_id: text("socket_id")?,
            user_id: text("user_id"),
        },
        "cache_miss" => WebhookEvent::CacheMiss { channel },
        "subscription_count" => WebhookEvent::SubscriptionCount {
            channel,
            subscription_count: usize::try_from(value.get("subscription_count")?.as_u64()?).ok()?,
        },
        _ => return None,
    })
}

#[cfg(all(test, feature = "redb"))]
mod tests {
    use super::*;

    fn job(id: u64) -> Job {
        Job {
            id,
            app_id: "a".into(),
            url: "http://127.0.0.1:1/".into(),
            body: format!("{{\"n\":{id}}}"),
            created_ms: 1,
        }
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("plexus-store-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn stored(event: WebhookEvent, hold_until_ms: Option<u64>) -> StoredEvent {
        StoredEvent { app_id: "a".into(), event, hold_until_ms }
    }

    #[test]
    fn jobs_survive_reopening_in_order_until_removed() {
        let dir = temp_dir("jobs");
        {
            let store = JobStore::open(&dir).unwrap();
            store.insert(&[job(3), job(1)]).unwrap();
            store.insert(&[job(2)]).unwrap();
            store.remove(3).unwrap();
        }
        let store = JobStore::open(&dir).unwrap();
        assert_eq!(store.pending().unwrap(), vec![job(1), job(2)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_event_kind_survives_the_store() {
        let dir = temp_dir("kinds");
        let c = || "presence-c".to_owned();
        let all = [
            WebhookEvent::ChannelOccupied { channel: c() },
            WebhookEvent::ChannelVacated { channel: c() },
            WebhookEvent::MemberAdded { channel: c(), user_id: "u".into() },
            WebhookEvent::MemberRemoved { channel: c(), user_id: "u".into() },
            WebhookEvent::ClientEvent {
                channel: c(),
                event: "client-x".into(),
                data: "{\"a\":1}".into(),
                socket_id: "1.2".into(),
                user_id: Some("u".into()),
            },
            WebhookEvent::ClientEvent {
                channel: c(),
                event: "client-x".into(),
                data: "".into(),
                socket_id: "1.2".into(),
                user_id: None,
            },
            WebhookEvent::CacheMiss { channel: c() },
            WebhookEvent::SubscriptionCount { channel: c(), subscription_count: 7 },
        ];
        let mut changes = Changes::default();
        for (seq, event) in all.iter().enumerate() {
            changes.insert.insert(seq as u64 + 1, stored(event.clone(), Some(seq as u64)));
        }
        JobStore::open(&dir).unwrap().commit(&changes).unwrap();
        let back = JobStore::open(&dir).unwrap().events().unwrap();
        let expected: Vec<(u64, StoredEvent)> = changes.insert.into_iter().collect();
        assert_eq!(back, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn events_become_jobs_in_one_commit_and_a_forgotten_new_event_is_never_written() {
        let dir = temp_dir("commit");
        let store = JobStore::open(&dir).unwrap();
        let occupied = |n: u32| stored(WebhookEvent::ChannelOccupied { channel: format!("c{n}") }, None);
        let mut first = Changes::default();
        first.insert.insert(1, occupied(1));
        first.insert.insert(2, occupied(2));
        store.commit(&first).unwrap();

        let mut second = Changes::default();
        second.insert.insert(3, occupied(3));
        second.forget(3); // accepted and cancelled in the same wake-up
        second.forget(1); // stored earlier, made into a job now
        second.jobs.push(job(10));
        assert_eq!(second.delete, vec![1]);
        store.commit(&second).unwrap();

        assert_eq!(store.events().unwrap(), vec![(2, occupied(2))]);
        assert_eq!(store.pending().unwrap(), vec![job(10)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_from_before_events_were_stored_opens_with_its_jobs() {
        let dir = temp_dir("old-file");
        std::fs::create_dir_all(&dir).unwrap();
        {
            // What the previous version wrote: the jobs table only.
            let db = Database::create(dir.join("webhooks.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut table = tx.open_table(JOBS).unwrap();
                table.insert(4, serde_json::to_vec(&job(4)).unwrap().as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        let store = JobStore::open(&dir).unwrap();
        assert_eq!(store.pending().unwrap(), vec![job(4)]);
        assert!(store.events().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
