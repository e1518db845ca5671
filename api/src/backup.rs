//! The backup file: the whole mesh state at one revision, as JSON
//! (`meshctl backup save` writes it, `meshd server --restore` reads it).
//!
//! Its bytes are exactly a Raft snapshot's, so a backup restores what Raft
//! would ship; `raftmesh-storage` reads and writes it whole (with openraft's
//! log id and membership). A client only needs this summary, and a check
//! that the bytes are a backup at all before it writes them to disk.

use serde::Deserialize;

/// Format tag of a backup (and of a Raft snapshot); bumped on any
/// incompatible change.
pub const FORMAT: &str = "raftmesh-snapshot/v1";

/// What a backup holds, in short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    /// The revision it reflects (0 for an empty state).
    pub revision: u64,
    /// How many resources it holds.
    pub resources: usize,
}

/// Why bytes are not a backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Not JSON of the expected shape.
    #[error("not a Raftmesh backup: {0}")]
    Malformed(#[source] serde_json::Error),
    /// Another format (or version).
    #[error("format \"{0}\" is not supported (expected \"{FORMAT}\")")]
    Format(String),
}

#[derive(Deserialize)]
struct LogId {
    index: u64,
}

#[derive(Deserialize)]
struct Shape {
    format: String,
    last_applied: Option<LogId>,
    resources: Vec<serde::de::IgnoredAny>,
}

/// Reads the summary of a backup, checking its format.
pub fn summarize(bytes: &[u8]) -> Result<BackupSummary, BackupError> {
    let s: Shape = serde_json::from_slice(bytes).map_err(BackupError::Malformed)?;
    if s.format != FORMAT {
        return Err(BackupError::Format(s.format));
    }
    Ok(BackupSummary {
        revision: s.last_applied.map(|l| l.index).unwrap_or(0),
        resources: s.resources.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_is_summarized_and_anything_else_refused() {
        let b = br#"{"format":"raftmesh-snapshot/v1","last_applied":{"leader_id":{"term":2,"node_id":1},"index":41},"membership":{},"resources":[{},{}]}"#;
        assert_eq!(
            summarize(b).unwrap(),
            BackupSummary {
                revision: 41,
                resources: 2
            }
        );
        assert!(matches!(summarize(b"junk"), Err(BackupError::Malformed(_))));
        let other = br#"{"format":"raftmesh-snapshot/v0","last_applied":null,"resources":[]}"#;
        assert!(summarize(other)
            .unwrap_err()
            .to_string()
            .contains("is not supported"));
    }
}
