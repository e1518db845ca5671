//! The Raft snapshot: the whole mesh state at one revision, as JSON.
//!
//! The same bytes are a backup (`meshctl backup save`, `--restore`), so a
//! backup restores exactly what Raft would ship; the format tag and the
//! summary clients read are `raftmesh_api::backup`.

use openraft::{BasicNode, LogId, StoredMembership};
use raftmesh_api::Resource;
use serde::{Deserialize, Serialize};

use crate::{NodeId, StoreError};

/// Format tag; bumped on any incompatible change.
pub const SNAPSHOT_FORMAT: &str = raftmesh_api::backup::FORMAT;

/// The state machine at one point of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotData {
    /// Always [`SNAPSHOT_FORMAT`].
    pub format: String,
    /// The last entry the state reflects.
    pub last_applied: Option<LogId<NodeId>>,
    /// The membership in force at that point.
    pub membership: StoredMembership<NodeId, BasicNode>,
    /// Every resource, each carrying its revision in `metadata.revision`.
    pub resources: Vec<Resource>,
}

impl SnapshotData {
    /// The revision the snapshot reflects (0 for an empty state).
    pub fn revision(&self) -> u64 {
        self.last_applied.map(|l| l.index).unwrap_or(0)
    }

    /// Serialises to bytes.
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(self).map_err(|source| StoreError::Corrupt {
            what: "snapshot",
            source,
        })
    }

    /// Reads and checks snapshot bytes: the format tag, and that every
    /// resource has a revision no later than the snapshot's.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let s: SnapshotData = serde_json::from_slice(bytes)
            .map_err(|e| StoreError::Snapshot(format!("not a Raftmesh snapshot: {e}")))?;
        if s.format != SNAPSHOT_FORMAT {
            return Err(StoreError::Snapshot(format!(
                "format \"{}\" is not supported (expected \"{SNAPSHOT_FORMAT}\")",
                s.format
            )));
        }
        let rev = s.revision();
        for r in &s.resources {
            match r.metadata.revision {
                Some(x) if x <= rev => {}
                other => {
                    return Err(StoreError::Snapshot(format!(
                        "{} has revision {other:?}, must be at most the snapshot's {rev}",
                        r.key()
                    )))
                }
            }
        }
        Ok(s)
    }
}
