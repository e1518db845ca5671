//! Opening the sled database and its trees.

use std::path::Path;
use std::sync::Arc;

use crate::durable::DiskSync;
use crate::{LogStore, StateMachine, StoreError};

/// Storage settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// sled's page cache, in bytes (default 64 MiB). sled's own default is
    /// 1 GiB, too much for a sidecar-sized control plane.
    pub cache_capacity: u64,
    /// How many change events the resume window keeps (default 100,000).
    pub event_window: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            cache_capacity: 64 * 1024 * 1024,
            event_window: 100_000,
        }
    }
}

/// The sled trees of one node (see `docs/adr/0001-storage-layout.md`).
#[derive(Clone)]
pub(crate) struct Trees {
    pub(crate) db: sled::Db,
    /// Log entries: big-endian u64 index → JSON entry.
    pub(crate) log: sled::Tree,
    /// `vote`, `committed`, `last_purged` → JSON.
    pub(crate) raft: sled::Tree,
    /// Resources (`r` + JSON key) and `m/applied`, `m/membership`.
    pub(crate) state: sled::Tree,
    /// The current snapshot: `meta` and `data`.
    pub(crate) snapshot: sled::Tree,
    /// What sled's flush leaves out (`durable.rs`).
    pub(crate) disk: Arc<DiskSync>,
}

impl Trees {
    /// Writes every buffered change to disk; returns once it survives a
    /// power cut (sled's flush, then `DiskSync::sync`).
    pub(crate) async fn flush(&self, doing: &'static str) -> Result<(), StoreError> {
        // One blocking task for both (a thread hop less than sled's
        // `flush_async` followed by a sync).
        let (db, disk) = (self.db.clone(), self.disk.clone());
        tokio::task::spawn_blocking(move || {
            db.flush()
                .map_err(|source| StoreError::Io { doing, source })?;
            disk.sync()
                .map_err(|source| StoreError::Sync { doing, source })
        })
        .await
        .map_err(|e| StoreError::Sync {
            doing,
            source: std::io::Error::other(e.to_string()),
        })?
        .map(drop)
    }
}

/// Opens (or creates) the store in `dir` and returns its two halves.
pub fn open(dir: &Path, config: &StoreConfig) -> Result<(LogStore, StateMachine), StoreError> {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(config.cache_capacity)
        .open()
        .map_err(|source| StoreError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
    let tree = |name: &'static str| {
        db.open_tree(name).map_err(|source| StoreError::Io {
            doing: "opening trees",
            source,
        })
    };
    let disk = DiskSync::open(dir).map_err(|source| StoreError::Sync {
        doing: "syncing the data directory at open",
        source,
    })?;
    let trees = Arc::new(Trees {
        disk: Arc::new(disk),
        log: tree("log")?,
        raft: tree("raft")?,
        state: tree("state")?,
        snapshot: tree("snapshot")?,
        db,
    });
    let sm = StateMachine::load(trees.clone(), config)?;
    Ok((LogStore::new(trees), sm))
}
