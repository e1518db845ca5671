//! Seeding a fresh store from a backup (`meshd server --restore`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{BasicNode, Membership, SnapshotMeta, StoredMembership, Vote};

use crate::{LogStore, NodeId, SnapshotData, StateMachine, StoreError};

/// Makes a fresh store hold `data` as its whole state, with `members` as the
/// voters of the new cluster, so that the cluster starts from the snapshot's
/// revision and its next write gets a higher one. Every node of the new
/// cluster is seeded the same way from the same file.
pub async fn restore(
    log: &mut LogStore,
    sm: &mut StateMachine,
    mut data: SnapshotData,
    members: BTreeMap<NodeId, BasicNode>,
    self_id: NodeId,
) -> Result<u64, StoreError> {
    let st = log
        .get_log_state()
        .await
        .map_err(|e| StoreError::Snapshot(format!("reading the log: {e}")))?;
    if st.last_log_id.is_some() || sm.reader().applied_revision() != 0 {
        return Err(StoreError::Snapshot(
            "the data directory already holds a cluster's state; restore needs an empty one".into(),
        ));
    }
    let log_id = data
        .last_applied
        .ok_or_else(|| StoreError::Snapshot("the snapshot holds no applied entry".into()))?;
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let membership = StoredMembership::new(Some(log_id), Membership::new(vec![voters], members));
    data.membership = membership.clone();
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: membership,
        snapshot_id: format!("restore-{}", log_id.index),
    };
    let bytes = data.encode()?;
    let io =
        |e: openraft::StorageError<NodeId>| StoreError::Snapshot(format!("seeding the store: {e}"));
    sm.install_snapshot(&meta, Box::new(Cursor::new(bytes)))
        .await
        .map_err(io)?;
    // The log continues after the snapshot; the vote carries its term so
    // that the new cluster's first election is at a later one.
    log.purge(log_id).await.map_err(io)?;
    log.save_committed(Some(log_id)).await.map_err(io)?;
    log.save_vote(&Vote::new(log_id.leader_id.term, self_id))
        .await
        .map_err(io)?;
    Ok(log_id.index)
}
