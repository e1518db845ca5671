//! The state machine: applies commands to the mesh state, persists it on
//! sled, records change events, builds and installs snapshots.
//!
//! Applied state is written to sled with each apply but not flushed; the
//! next log flush (every append, vote and purge flushes the whole database)
//! makes it durable. After a crash the state is a prefix of the log, and
//! openraft re-applies the rest (see `docs/adr/0001-storage-layout.md`).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use raftmesh_api::{Kind, Resource, ResourceKey, Spec};

use crate::db::Trees;
use crate::snapshot::{SnapshotData, SNAPSHOT_FORMAT};
use crate::state::{MeshState, Resources, Shared, StateReader};
use crate::window::{ChangeEvent, ChangeWindow};
use crate::{Command, Leaf, NodeId, OpResult, Response, StoreConfig, StoreError, TypeConfig};

const APPLIED: &[u8] = b"m/applied";
const MEMBERSHIP: &[u8] = b"m/membership";
const RESOURCE_PREFIX: &[u8] = b"r";
const SNAP_META: &[u8] = b"meta";
const SNAP_DATA: &[u8] = b"data";

type SResult<T> = Result<T, StorageError<NodeId>>;
type StoredSnapshot = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

fn sm_err(verb: ErrorVerb) -> impl Fn(StoreError) -> StorageError<NodeId> {
    move |e| StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&e)).into()
}

fn resource_key(key: &ResourceKey) -> Result<Vec<u8>, StoreError> {
    let mut k = RESOURCE_PREFIX.to_vec();
    serde_json::to_writer(&mut k, key).map_err(|source| StoreError::Corrupt {
        what: "key",
        source,
    })?;
    Ok(k)
}

fn json<T: serde::Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|source| StoreError::Corrupt { what, source })
}

fn io(doing: &'static str) -> impl Fn(sled::Error) -> StoreError {
    move |source| StoreError::Io { doing, source }
}

/// The state-machine half of the store. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct StateMachine {
    trees: Arc<Trees>,
    shared: Arc<Shared>,
}

impl StateMachine {
    /// Loads the applied state from sled, or from the stored snapshot when
    /// that is newer (a crash during snapshot installation).
    pub(crate) fn load(trees: Arc<Trees>, config: &StoreConfig) -> Result<Self, StoreError> {
        let corrupt = |what| move |source| StoreError::Corrupt { what, source };
        let last_applied: Option<LogId<NodeId>> =
            match trees.state.get(APPLIED).map_err(io("reading state"))? {
                Some(b) => serde_json::from_slice(&b).map_err(corrupt("applied log id"))?,
                None => None,
            };
        let membership: StoredMembership<NodeId, BasicNode> =
            match trees.state.get(MEMBERSHIP).map_err(io("reading state"))? {
                Some(b) => serde_json::from_slice(&b).map_err(corrupt("membership"))?,
                None => StoredMembership::default(),
            };
        let mut resources = Resources::default();
        for item in trees.state.scan_prefix(RESOURCE_PREFIX) {
            let (_, v) = item.map_err(io("reading state"))?;
            let r: Resource = serde_json::from_slice(&v).map_err(corrupt("resource"))?;
            resources.insert(r.key(), Arc::new(r));
        }
        let applied = last_applied.map(|l| l.index).unwrap_or(0);
        let sm = Self {
            shared: Shared::new(MeshState {
                resources,
                last_applied,
                membership,
                window: ChangeWindow::new(applied, config.event_window),
            }),
            trees,
        };
        if let Some((meta, bytes)) = sm.read_snapshot()? {
            if meta.last_log_id > last_applied {
                tracing::warn!(snapshot = ?meta.last_log_id, ?last_applied, "state is behind the stored snapshot; reloading from it");
                sm.replace_state(&meta, SnapshotData::decode(&bytes)?)?;
            }
        }
        Ok(sm)
    }

    /// A read handle on the applied state.
    pub fn reader(&self) -> StateReader {
        StateReader {
            shared: self.shared.clone(),
        }
    }

    fn read_snapshot(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        let t = &self.trees.snapshot;
        let (Some(meta), Some(data)) = (
            t.get(SNAP_META).map_err(io("reading the snapshot"))?,
            t.get(SNAP_DATA).map_err(io("reading the snapshot"))?,
        ) else {
            return Ok(None);
        };
        let meta = serde_json::from_slice(&meta).map_err(|source| StoreError::Corrupt {
            what: "snapshot meta",
            source,
        })?;
        Ok(Some((meta, data.to_vec())))
    }

    async fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert(SNAP_META, json("snapshot meta", meta)?);
        batch.insert(SNAP_DATA, data);
        self.trees
            .snapshot
            .apply_batch(batch)
            .map_err(io("saving the snapshot"))?;
        self.trees.flush("saving the snapshot").await
    }

    /// Replaces the whole state with a snapshot's, in one atomic sled batch.
    fn replace_state(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: SnapshotData,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for item in self.trees.state.scan_prefix(RESOURCE_PREFIX) {
            let (k, _) = item.map_err(io("reading state"))?;
            batch.remove(k);
        }
        let mut resources = Resources::default();
        for r in data.resources {
            batch.insert(resource_key(&r.key())?, json("resource", &r)?);
            resources.insert(r.key(), Arc::new(r));
        }
        batch.insert(APPLIED, json("applied log id", &meta.last_log_id)?);
        batch.insert(MEMBERSHIP, json("membership", &meta.last_membership)?);

        let revision = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        {
            let mut s = self.shared.write();
            self.trees
                .state
                .apply_batch(batch)
                .map_err(io("installing a snapshot"))?;
            s.resources = resources;
            s.last_applied = meta.last_log_id;
            s.membership = meta.last_membership.clone();
            // Events before the snapshot are unknown here: streams resuming
            // from an older revision get a full state.
            s.window.reset(revision);
        }
        self.shared.publish_applied(revision);
        Ok(())
    }
}

/// Gives services their virtual addresses while one command is applied:
/// a service keeps the address it has; a new one gets the next free address
/// of MeshConfig `service_vip_range` after the highest in use (wrapping
/// round), so replicas, which apply the same entries in the same order,
/// choose the same.
#[derive(Default)]
struct VipAllocator {
    /// Taken by this command (not in the index until it commits).
    taken: std::collections::HashSet<u32>,
    /// Where the next search starts.
    next: Option<u32>,
}

impl VipAllocator {
    fn assign(&mut self, s: &MeshState, r: &mut Resource, current: Option<&Resource>) {
        let key = r.key();
        let kept = current
            .filter(|c| c.kind() == r.kind())
            .and_then(|c| c.spec.vip());
        let Some(vip) = r.spec.vip_slot() else {
            return;
        };
        if let Some(v) = kept {
            *vip = Some(v);
            return;
        }
        // An address given for a new service or import (a restore, or a
        // race the admin front did not see) stands if it is free.
        if let Some(v) = vip.map(u32::from) {
            if s.resources.vip_holder(v).is_none_or(|k| *k == key) && self.taken.insert(v) {
                return;
            }
        }
        *vip = self.allocate(s).map(std::net::Ipv4Addr::from);
        if vip.is_none() {
            tracing::warn!(service = %key, "no free virtual address left in service_vip_range; the service has none");
        }
    }

    fn allocate(&mut self, s: &MeshState) -> Option<u32> {
        let range = s
            .resources
            .range_kind(Kind::MeshConfig)
            .find_map(|(_, r)| match &r.spec {
                Spec::MeshConfig(m) => m.service_vip_range.clone(),
                _ => None,
            })
            .and_then(|r| raftmesh_api::parse_vip_range(&r))
            .or_else(|| raftmesh_api::parse_vip_range(raftmesh_api::DEFAULT_SERVICE_VIP_RANGE))?;
        let net = u32::from(range.0);
        let (first, last) = (net + 1, net + ((1u32 << (32 - range.1)) - 2));
        let start = self
            .next
            .or_else(|| {
                s.resources
                    .last_vip_in(first, last)
                    .map(|v| v.saturating_add(1))
            })
            .filter(|n| (first..=last).contains(n))
            .unwrap_or(first);
        let mut v = start;
        loop {
            if s.resources.vip_holder(v).is_none() && !self.taken.contains(&v) {
                self.taken.insert(v);
                self.next = Some(v + 1);
                return Some(v);
            }
            v = if v == last { first } else { v + 1 };
            if v == start {
                return None;
            }
        }
    }
}

/// Applies one command at `revision`, all or nothing, recording the writes
/// in `batch` and the change events in the window.
fn apply_command(
    s: &mut MeshState,
    cmd: Command,
    revision: u64,
    batch: &mut sled::Batch,
) -> Result<Vec<OpResult>, StoreError> {
    let leaves = cmd.leaves();
    // Writes staged by earlier commands of the same batch.
    let mut staged: BTreeMap<ResourceKey, Option<Arc<Resource>>> = BTreeMap::new();
    let mut results = Vec::with_capacity(leaves.len());
    let mut failed = false;
    let mut vips = VipAllocator::default();
    for leaf in leaves {
        let key = leaf.key();
        let current = match staged.get(&key) {
            Some(v) => v.clone(),
            None => s.resources.get(&key).cloned(),
        };
        let current_rev = current
            .as_ref()
            .map(|r| r.metadata.revision.unwrap_or(0))
            .unwrap_or(0);
        let result = if leaf.expected_revision().is_some_and(|e| e != current_rev) {
            OpResult::Conflict {
                current: current_rev,
            }
        } else {
            match leaf {
                Leaf::Put(resource, _) => match &current {
                    Some(cur) if cur.same_content(resource) => OpResult::Ok {
                        revision: current_rev,
                        unchanged: true,
                    },
                    _ => {
                        let mut resource = resource.clone();
                        vips.assign(s, &mut resource, current.as_deref());
                        if current
                            .as_deref()
                            .is_some_and(|c| c.same_content(&resource))
                        {
                            // Only the address meshd keeps was left out.
                            results.push(OpResult::Ok {
                                revision: current_rev,
                                unchanged: true,
                            });
                            continue;
                        }
                        staged.insert(key, Some(Arc::new(resource.with_revision(revision))));
                        OpResult::Ok {
                            revision,
                            unchanged: false,
                        }
                    }
                },
                Leaf::Expect(..) => OpResult::Ok {
                    revision: current_rev,
                    unchanged: true,
                },
                Leaf::Delete(..) if current.is_none() => OpResult::NotFound,
                Leaf::Delete(..) => {
                    staged.insert(key, None);
                    OpResult::Ok {
                        revision,
                        unchanged: false,
                    }
                }
            }
        };
        failed |= !result.is_ok();
        results.push(result);
    }
    if failed {
        for r in results.iter_mut().filter(|r| r.is_ok()) {
            *r = OpResult::Aborted;
        }
        return Ok(results);
    }
    for (key, value) in staged {
        let k = resource_key(&key)?;
        let previous = match &value {
            Some(r) => {
                batch.insert(k, json("resource", r.as_ref())?);
                s.resources.insert(key.clone(), r.clone())
            }
            None => {
                batch.remove(k);
                s.resources.remove(&key)
            }
        };
        s.window.push(ChangeEvent {
            revision,
            key,
            value,
            previous,
        });
    }
    Ok(results)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        let started = std::time::Instant::now();
        let (last_applied, membership, resources) = {
            let s = self.shared.read();
            (
                s.last_applied,
                s.membership.clone(),
                s.resources.values().cloned().collect::<Vec<_>>(),
            )
        };
        let data = SnapshotData {
            format: SNAPSHOT_FORMAT.to_string(),
            last_applied,
            membership: membership.clone(),
            resources: resources.iter().map(|r| (**r).clone()).collect(),
            integrity: None,
        };
        let bytes = data.encode().map_err(sm_err(ErrorVerb::Read))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{nanos}", l.leader_id, l.index),
            None => format!("--{nanos}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        self.save_snapshot(&meta, &bytes).await.map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        tracing::info!(
            revision = data.revision(),
            bytes = bytes.len(),
            "built a snapshot"
        );
        self.shared
            .snapshots
            .record(false, bytes.len(), started.elapsed());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> SResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let s = self.shared.read();
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut responses = Vec::new();
        let t0 = std::time::Instant::now();
        let last = {
            let mut s = self.shared.write();
            for entry in entries {
                let revision = entry.log_id.index;
                s.last_applied = Some(entry.log_id);
                let results = match entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Normal(Command::Group(cmds)) => {
                        let mut results = Vec::new();
                        for cmd in cmds {
                            results.extend(
                                apply_command(&mut s, cmd, revision, &mut batch)
                                    .map_err(sm_err(ErrorVerb::Write))?,
                            );
                        }
                        results
                    }
                    EntryPayload::Normal(cmd) => apply_command(&mut s, cmd, revision, &mut batch)
                        .map_err(sm_err(ErrorVerb::Write))?,
                    EntryPayload::Membership(m) => {
                        s.membership = StoredMembership::new(Some(entry.log_id), m);
                        batch.insert(
                            MEMBERSHIP,
                            json("membership", &s.membership).map_err(sm_err(ErrorVerb::Write))?,
                        );
                        Vec::new()
                    }
                };
                responses.push(Response { revision, results });
            }
            batch.insert(
                APPLIED,
                json("applied log id", &s.last_applied).map_err(sm_err(ErrorVerb::Write))?,
            );
            self.trees
                .state
                .apply_batch(batch)
                .map_err(io("applying entries"))
                .map_err(sm_err(ErrorVerb::Write))?;
            s.applied_revision()
        };
        self.shared.publish_applied(last);
        tracing::debug!(
            entries = responses.len(),
            revision = last,
            apply_us = t0.elapsed().as_micros() as u64,
            "applied"
        );
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> SResult<()> {
        let started = std::time::Instant::now();
        let bytes = snapshot.into_inner();
        let sig = Some(meta.signature());
        let data = SnapshotData::decode(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(sig.clone(), AnyError::new(&e)))?;
        if data.last_applied != meta.last_log_id {
            let e = StoreError::Snapshot(format!(
                "data is at {:?} but its meta says {:?}",
                data.last_applied, meta.last_log_id
            ));
            return Err(StorageIOError::read_snapshot(sig, AnyError::new(&e)).into());
        }
        // Stored first: if we crash while replacing the state, `load`
        // finishes the job from the stored snapshot.
        self.save_snapshot(meta, &bytes)
            .await
            .map_err(|e| StorageIOError::write_snapshot(sig.clone(), AnyError::new(&e)))?;
        self.replace_state(meta, data)
            .map_err(|e| StorageIOError::write_snapshot(sig, AnyError::new(&e)))?;
        tracing::info!(revision = ?meta.last_log_id, "installed a snapshot");
        self.shared
            .snapshots
            .record(true, bytes.len(), started.elapsed());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        let snap = self.read_snapshot().map_err(sm_err(ErrorVerb::Read))?;
        Ok(snap.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
