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
    /// In a backup: `sha256:<hex>` of the rest, which a restore checks
    /// (absent in Raft snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<String>,
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

    /// Serialises as a backup: with the integrity digest a restore checks.
    pub fn encode_backup(&self) -> Result<Vec<u8>, StoreError> {
        let mut d = self.clone();
        d.integrity = None;
        d.integrity = Some(d.digest()?);
        d.encode()
    }

    /// Reads a backup and trusts nothing in it: everything [`decode`]
    /// checks, then the integrity digest (a changed or damaged file is
    /// refused), every resource's validity, and that no resource appears
    /// twice.
    ///
    /// [`decode`]: Self::decode
    pub fn decode_backup(bytes: &[u8]) -> Result<Self, StoreError> {
        let mut s = Self::decode(bytes)?;
        let Some(claimed) = s.integrity.take() else {
            return Err(StoreError::Snapshot(
                "the backup carries no integrity digest (made by an older meshctl?): it cannot be checked; take a new one with `meshctl backup save`".into(),
            ));
        };
        if claimed != s.digest()? {
            return Err(StoreError::Snapshot(
                "the backup's integrity digest does not match its contents: the file was changed or damaged".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for r in &s.resources {
            r.validate().map_err(|e| {
                StoreError::Snapshot(format!("the backup holds an invalid resource: {e}"))
            })?;
            if !seen.insert(r.key()) {
                return Err(StoreError::Snapshot(format!(
                    "the backup holds {} twice",
                    r.key()
                )));
            }
        }
        Ok(s)
    }

    /// `sha256:<hex>` of the encoding without the digest.
    fn digest(&self) -> Result<String, StoreError> {
        use sha2::{Digest, Sha256};
        let mut d = self.clone();
        d.integrity = None;
        let hash = Sha256::digest(d.encode()?);
        Ok(format!(
            "sha256:{}",
            hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ))
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
