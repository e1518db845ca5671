//! Errors at the storage boundary.

use std::path::PathBuf;

/// A storage failure outside openraft's own calls (opening, restoring).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The sled database could not be opened.
    #[error("cannot open the data directory {path}: {source} (is another meshd using it?)")]
    Open {
        /// The directory.
        path: PathBuf,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// A read or write failed.
    #[error("storage I/O failed while {doing}: {source}")]
    Io {
        /// What was being done.
        doing: &'static str,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// Making flushed data durable (`fdatasync`) failed.
    #[error("cannot sync the data directory to disk while {doing}: {source} (is the disk full or failing?)")]
    Sync {
        /// What was being done.
        doing: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Stored bytes could not be decoded.
    #[error("stored {what} is corrupt: {source}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A snapshot file could not be used.
    #[error("invalid snapshot: {0}")]
    Snapshot(String),
}
