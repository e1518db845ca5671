//! The in-memory mesh state (the authoritative copy is on sled) and the
//! read handle the rest of meshd uses.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::{BasicNode, LogId, StoredMembership};
use raftmesh_api::{Kind, Resource, ResourceKey};
use tokio::sync::watch;

use crate::window::{ChangeEvent, ChangeWindow, WindowError};
use crate::NodeId;

/// Everything the state machine has applied.
#[derive(Debug)]
pub(crate) struct MeshState {
    pub(crate) resources: BTreeMap<ResourceKey, Arc<Resource>>,
    pub(crate) last_applied: Option<LogId<NodeId>>,
    pub(crate) membership: StoredMembership<NodeId, BasicNode>,
    pub(crate) window: ChangeWindow,
}

impl MeshState {
    pub(crate) fn applied_revision(&self) -> u64 {
        self.last_applied.map(|l| l.index).unwrap_or(0)
    }
}

/// The state shared between the state machine (the only writer) and readers.
pub(crate) struct Shared {
    state: RwLock<MeshState>,
    applied_tx: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new(state: MeshState) -> Arc<Self> {
        let (applied_tx, _) = watch::channel(state.applied_revision());
        Arc::new(Self {
            state: RwLock::new(state),
            applied_tx,
        })
    }

    // A panic while holding the lock stops the state machine task, and with
    // it the node (openraft treats it as fatal); readers may still look.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, MeshState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, MeshState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn publish_applied(&self, revision: u64) {
        self.applied_tx.send_replace(revision);
    }
}

/// Read access to the applied mesh state. Cheap to clone.
///
/// Reads here are local: they reflect what this node has applied. The
/// control plane makes them linearizable by waiting for a read index first.
#[derive(Clone)]
pub struct StateReader {
    pub(crate) shared: Arc<Shared>,
}

impl StateReader {
    /// The revision (log index) of the last applied entry.
    pub fn applied_revision(&self) -> u64 {
        self.shared.read().applied_revision()
    }

    /// A receiver that changes whenever the applied revision does.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.shared.applied_tx.subscribe()
    }

    /// One resource and the applied revision the answer reflects.
    pub fn get(&self, key: &ResourceKey) -> (u64, Option<Arc<Resource>>) {
        let s = self.shared.read();
        (s.applied_revision(), s.resources.get(key).cloned())
    }

    /// Resources of a kind (every kind if `None`), in one namespace or all,
    /// sorted by key, and the applied revision they reflect.
    pub fn list(&self, kind: Option<Kind>, namespace: Option<&str>) -> (u64, Vec<Arc<Resource>>) {
        let s = self.shared.read();
        let in_ns = |k: &ResourceKey| namespace.is_none_or(|ns| k.namespace == ns);
        let items = match kind {
            Some(kind) => s
                .resources
                .range(ResourceKey::new(kind, "", "")..)
                .take_while(|(k, _)| k.kind == kind)
                .filter(|(k, _)| in_ns(k))
                .map(|(_, v)| v.clone())
                .collect(),
            None => s
                .resources
                .iter()
                .filter(|(k, _)| in_ns(k))
                .map(|(_, v)| v.clone())
                .collect(),
        };
        (s.applied_revision(), items)
    }

    /// Every change after revision `after`, and the applied revision they
    /// bring the caller to. Fails when the window no longer reaches back
    /// that far (the caller needs [`StateReader::list`] of everything), or
    /// when `after` is ahead of this node.
    pub fn changes_since(&self, after: u64) -> Result<(u64, Vec<ChangeEvent>), WindowError> {
        let s = self.shared.read();
        let applied = s.applied_revision();
        s.window.since(after, applied).map(|ev| (applied, ev))
    }

    /// The oldest revision a stream can resume from.
    pub fn window_start(&self) -> u64 {
        self.shared.read().window.start()
    }

    /// The whole state as one consistent snapshot (the payload of
    /// `meshctl snapshot save`).
    pub fn snapshot_data(&self) -> crate::SnapshotData {
        let s = self.shared.read();
        crate::SnapshotData {
            format: crate::snapshot::SNAPSHOT_FORMAT.to_string(),
            last_applied: s.last_applied,
            membership: s.membership.clone(),
            resources: s.resources.values().map(|r| (**r).clone()).collect(),
        }
    }

    /// The membership the state machine has applied.
    pub fn membership(&self) -> StoredMembership<NodeId, BasicNode> {
        self.shared.read().membership.clone()
    }
}
