//! The durable webhook queue: every signed-off batch is written here before its first delivery
//! attempt and removed once delivered (or given up), so a crash loses nothing accepted.
//!
//! An embedded redb file under `[webhooks] data_dir`: no service to run, ACID commits, and the
//! pending jobs are read back in order at start.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("webhook_jobs");

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

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("webhook store: {0}")]
    Redb(#[from] redb::Error),
    #[error("webhook store: cannot create {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("webhook store: corrupt job: {0}")]
    Corrupt(#[from] serde_json::Error),
}

fn redb_error(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Redb(error.into())
}

/// Pending webhook jobs on disk.
#[derive(Debug)]
pub struct JobStore {
    db: Database,
}

impl JobStore {
    /// Opens (or creates) `data_dir/webhooks.redb`.
    pub fn open(data_dir: &Path) -> Result<JobStore, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StoreError::Dir { path: data_dir.display().to_string(), source })?;
        let db = Database::create(data_dir.join("webhooks.redb")).map_err(redb_error)?;
        let tx = db.begin_write().map_err(redb_error)?;
        tx.open_table(JOBS).map_err(redb_error)?;
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

    /// Writes jobs in one durable commit.
    pub fn insert(&self, jobs: &[Job]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(redb_error)?;
        {
            let mut table = tx.open_table(JOBS).map_err(redb_error)?;
            for job in jobs {
                let bytes = serde_json::to_vec(job)?;
                table.insert(job.id, bytes.as_slice()).map_err(redb_error)?;
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

#[cfg(test)]
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

    #[test]
    fn jobs_survive_reopening_in_order_until_removed() {
        let dir = std::env::temp_dir().join(format!("plexus-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
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
}
