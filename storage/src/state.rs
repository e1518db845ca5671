//! The in-memory mesh state (the authoritative copy is on sled) and the
//! read handle the rest of meshd uses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::{BasicNode, LogId, StoredMembership};
use raftmesh_api::{Kind, Resource, ResourceKey};
use tokio::sync::watch;

use crate::window::{ChangeEvent, ChangeWindow, WindowError};
use crate::NodeId;

/// The resources, by key, with an index by the service they are about.
#[derive(Debug, Default)]
pub(crate) struct Resources {
    by_key: BTreeMap<ResourceKey, Arc<Resource>>,
    /// (kind, namespace, service) → names, for resources whose spec names a
    /// service (endpoints, routes, policies, ...).
    by_service: BTreeMap<(Kind, String, String), BTreeSet<String>>,
    /// Services' virtual addresses → the service holding each.
    vips: BTreeMap<u32, ResourceKey>,
}

impl Resources {
    fn index_key(r: &Resource) -> Option<(Kind, String, String)> {
        r.spec
            .service()
            .map(|s| (r.kind(), r.metadata.namespace.clone(), s.to_string()))
    }

    pub(crate) fn insert(&mut self, key: ResourceKey, r: Arc<Resource>) -> Option<Arc<Resource>> {
        let old = self.by_key.insert(key.clone(), r.clone());
        if let Some(o) = &old {
            self.unindex(o);
        }
        if let Some(v) = vip_of(&r) {
            self.vips.insert(v, key);
        }
        if let Some(ix) = Self::index_key(&r) {
            self.by_service
                .entry(ix)
                .or_default()
                .insert(r.metadata.name.clone());
        }
        old
    }

    pub(crate) fn remove(&mut self, key: &ResourceKey) -> Option<Arc<Resource>> {
        let old = self.by_key.remove(key);
        if let Some(o) = &old {
            self.unindex(o);
        }
        old
    }

    /// The service holding a virtual address, if any.
    pub(crate) fn vip_holder(&self, vip: u32) -> Option<&ResourceKey> {
        self.vips.get(&vip)
    }

    /// The highest virtual address in use within `[from, to]`.
    pub(crate) fn last_vip_in(&self, from: u32, to: u32) -> Option<u32> {
        self.vips.range(from..=to).next_back().map(|(v, _)| *v)
    }

    fn unindex(&mut self, r: &Resource) {
        if let Some(v) = vip_of(r) {
            if self.vips.get(&v) == Some(&r.key()) {
                self.vips.remove(&v);
            }
        }
        if let Some(ix) = Self::index_key(r) {
            if let Some(names) = self.by_service.get_mut(&ix) {
                names.remove(&r.metadata.name);
                if names.is_empty() {
                    self.by_service.remove(&ix);
                }
            }
        }
    }

    pub(crate) fn get(&self, key: &ResourceKey) -> Option<&Arc<Resource>> {
        self.by_key.get(key)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ResourceKey, &Arc<Resource>)> {
        self.by_key.iter()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.by_key.values()
    }

    pub(crate) fn range_kind(
        &self,
        kind: Kind,
    ) -> impl Iterator<Item = (&ResourceKey, &Arc<Resource>)> {
        self.by_key
            .range(ResourceKey::new(kind, "", "")..)
            .take_while(move |(k, _)| k.kind == kind)
    }
}

fn vip_of(r: &Resource) -> Option<u32> {
    r.spec.vip().map(u32::from)
}

impl FromIterator<Resource> for Resources {
    fn from_iter<I: IntoIterator<Item = Resource>>(iter: I) -> Self {
        let mut out = Resources::default();
        for r in iter {
            out.insert(r.key(), Arc::new(r));
        }
        out
    }
}

/// A consistent view of the applied state, held for the duration of a
/// closure passed to [`StateReader::view`].
pub struct StateView<'a> {
    state: &'a MeshState,
}

impl StateView<'_> {
    /// The applied revision this view reflects.
    pub fn revision(&self) -> u64 {
        self.state.applied_revision()
    }

    /// One resource.
    pub fn get(&self, key: &ResourceKey) -> Option<Arc<Resource>> {
        self.state.resources.get(key).cloned()
    }

    /// Resources of `kind` in `namespace` whose spec names `service`.
    pub fn for_service(&self, kind: Kind, namespace: &str, service: &str) -> Vec<Arc<Resource>> {
        let ix = (kind, namespace.to_string(), service.to_string());
        self.state
            .resources
            .by_service
            .get(&ix)
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| {
                        self.state
                            .resources
                            .get(&ResourceKey::new(kind, namespace, n.clone()))
                            .cloned()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every resource of a kind.
    pub fn of_kind(&self, kind: Kind) -> Vec<Arc<Resource>> {
        self.state
            .resources
            .range_kind(kind)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Everything the state machine has applied.
#[derive(Debug)]
pub(crate) struct MeshState {
    pub(crate) resources: Resources,
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
    pub(crate) snapshots: SnapshotStats,
}

/// What this node's snapshots cost, for meshd's metrics.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    /// Snapshots built here.
    pub built: std::sync::atomic::AtomicU64,
    /// Snapshots received from the leader and installed.
    pub installed: std::sync::atomic::AtomicU64,
    /// Bytes of the last snapshot built or installed.
    pub last_bytes: std::sync::atomic::AtomicU64,
    /// Microseconds the last build took (encode and durable save).
    pub last_build_us: std::sync::atomic::AtomicU64,
    /// Microseconds the last install took.
    pub last_install_us: std::sync::atomic::AtomicU64,
}

impl SnapshotStats {
    pub(crate) fn record(&self, installed: bool, bytes: usize, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.last_bytes.store(bytes as u64, Relaxed);
        if installed {
            self.installed.fetch_add(1, Relaxed);
            self.last_install_us.store(us, Relaxed);
        } else {
            self.built.fetch_add(1, Relaxed);
            self.last_build_us.store(us, Relaxed);
        }
    }
}

impl Shared {
    pub(crate) fn new(state: MeshState) -> Arc<Self> {
        let (applied_tx, _) = watch::channel(state.applied_revision());
        Arc::new(Self {
            state: RwLock::new(state),
            applied_tx,
            snapshots: SnapshotStats::default(),
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

    /// What this node's snapshots cost.
    pub fn snapshots(&self) -> &SnapshotStats {
        &self.shared.snapshots
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
                .range_kind(kind)
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
            integrity: None,
        }
    }

    /// Runs `f` on a consistent view of the state (one read lock; keep `f` short).
    pub fn view<T>(&self, f: impl FnOnce(&StateView<'_>) -> T) -> T {
        let s = self.shared.read();
        f(&StateView { state: &s })
    }

    /// The membership the state machine has applied.
    pub fn membership(&self) -> StoredMembership<NodeId, BasicNode> {
        self.shared.read().membership.clone()
    }
}
