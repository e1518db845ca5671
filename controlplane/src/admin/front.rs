//! The admin front: what the admin API does, against the cluster — writes
//! through Raft (all or none), linearizable or stale reads, deletes,
//! membership, backups, tokens, CA rotation. A plain struct with async
//! methods: calls run side by side on the worker pool. The gRPC adapter in
//! `admin/mod.rs` authenticates and converts; everything else happens here.

use std::sync::Arc;
use std::time::Duration;

use raftmesh_api::{Kind, Resource, ResourceKey};
use raftmesh_storage::{Command, OpResult, StateReader, MAX_ENTRY_BYTES};

use crate::ca::LifecycleError;
use crate::cluster::{ClusterError, ClusterOps, MembershipView};
use crate::tokens::{self, Caller, CreatedToken, TokenError, TokenScope};

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// From the cluster (no leader, unknown outcome, ...).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is invalid; nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// A compare-and-set failed; nothing was changed.
    #[error("{0}")]
    Conflict(String),
    /// The caller's token was revoked (or changed) before the write was
    /// applied; nothing was changed.
    #[error("{0}")]
    Unauthenticated(String),
    /// A bug or a broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<TokenError> for AdminError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Cluster(c) => AdminError::Cluster(c),
            TokenError::NotFound(_) => AdminError::NotFound(e.to_string()),
            TokenError::Invalid(_) | TokenError::Refused(_) => AdminError::Invalid(e.to_string()),
            TokenError::Conflict(_) => AdminError::Conflict(e.to_string()),
        }
    }
}

impl From<LifecycleError> for AdminError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Cluster(c) => AdminError::Cluster(c),
            LifecycleError::NotReady => AdminError::Invalid(e.to_string()),
            LifecycleError::Conflict(_) => AdminError::Conflict(e.to_string()),
            LifecycleError::Make(_) => AdminError::Internal(e.to_string()),
        }
    }
}

/// The outcome of an apply: the revision of the batch and one result per item.
#[derive(Debug, Clone)]
pub struct ApplyOutcome {
    /// The batch's revision (log index).
    pub revision: u64,
    /// Per item, in order.
    pub results: Vec<(ResourceKey, OpResult)>,
}

/// A change of membership.
#[derive(Debug, Clone)]
pub enum MembershipChange {
    /// Add a node (a learner first).
    Add {
        /// Its id.
        id: u64,
        /// Its address.
        addr: String,
        /// Stop at learner.
        learner_only: bool,
    },
    /// Remove a node.
    Remove(u64),
    /// Hand leadership to a voter.
    TransferLeader(u64),
}

/// The admin front of one node.
pub struct AdminFront {
    ops: Arc<ClusterOps>,
    reader: StateReader,
    cluster_name: String,
}

impl AdminFront {
    /// A front over the node's cluster operations and state.
    pub fn new(ops: Arc<ClusterOps>, cluster_name: String) -> Self {
        Self {
            reader: ops.reader().clone(),
            ops,
            cluster_name,
        }
    }

    async fn barrier(&self, stale: bool) -> Result<(), AdminError> {
        if !stale {
            self.ops.read_barrier().await?;
        }
        Ok(())
    }

    /// Writes `cmd` on behalf of `caller`, conditional on the caller's
    /// token being unchanged when the entry is applied; returns the
    /// command's own results.
    async fn write_as(
        &self,
        caller: &Caller,
        cmd: Command,
    ) -> Result<raftmesh_storage::Response, AdminError> {
        let mut r = self
            .ops
            .write(Command::Batch(vec![caller.guard(), cmd]))
            .await?;
        if r.results.is_empty() {
            return Err(AdminError::Internal("a write returned no results".into()));
        }
        match r.results.remove(0) {
            // Held (`Aborted` when another command of the batch failed).
            OpResult::Ok { .. } | OpResult::Aborted => Ok(r),
            OpResult::Conflict { .. } | OpResult::NotFound => Err(AdminError::Unauthenticated(format!(
                "token {} was revoked or changed before this write was applied; nothing was written",
                caller.token_id
            ))),
        }
    }

    /// Applies resources (each with an optional expected revision), all or
    /// none, on behalf of `caller`.
    pub async fn apply(
        &self,
        caller: &Caller,
        items: Vec<(Resource, Option<u64>)>,
    ) -> Result<ApplyOutcome, AdminError> {
        // Validation is linear in the documents; a large apply runs it off
        // the async workers, so Raft heartbeats and discovery streams on
        // this node keep their time (a 120,000-document apply once held a
        // worker for 40 s and cost the node its followers' trust).
        let reader = self.reader.clone();
        let (keys, cmds) = if items.len() > 1_000 {
            tokio::task::spawn_blocking(move || prepare_apply(&reader, items))
                .await
                .map_err(|e| AdminError::Internal(e.to_string()))??
        } else {
            prepare_apply(&reader, items)?
        };
        let r = self.write_as(caller, cmds).await?;
        Ok(ApplyOutcome {
            revision: r.revision,
            results: keys.into_iter().zip(r.results).collect(),
        })
    }

    /// Reads one resource (linearizable unless `stale`) and the revision read at.
    pub async fn get(
        &self,
        key: &ResourceKey,
        stale: bool,
    ) -> Result<(u64, Arc<Resource>), AdminError> {
        self.barrier(stale).await?;
        match self.reader.get(key) {
            (rev, Some(r)) => Ok((rev, r)),
            (rev, None) => Err(AdminError::NotFound(format!(
                "{key} not found (at revision {rev})"
            ))),
        }
    }

    /// Reads the resources of a kind (every kind when `None`) in a
    /// namespace (every one when `None`).
    pub async fn list(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
        stale: bool,
    ) -> Result<(u64, Vec<Arc<Resource>>), AdminError> {
        self.barrier(stale).await?;
        Ok(self.reader.list(kind, namespace))
    }

    /// Deletes one resource, compare-and-set when `expected_revision` is
    /// given, on behalf of `caller`.
    pub async fn delete(
        &self,
        caller: &Caller,
        key: ResourceKey,
        expected_revision: Option<u64>,
    ) -> Result<u64, AdminError> {
        let r = self
            .write_as(
                caller,
                Command::Delete {
                    key: key.clone(),
                    expected_revision,
                },
            )
            .await?;
        match r.results.first() {
            Some(OpResult::Ok { revision, .. }) => Ok(*revision),
            Some(OpResult::NotFound) => Err(AdminError::NotFound(format!("{key} not found"))),
            Some(OpResult::Conflict { current }) => Err(AdminError::Conflict(format!(
                "{key} is at revision {current}, not the expected {}; nothing was deleted",
                expected_revision.unwrap_or(0)
            ))),
            other => Err(AdminError::Internal(format!(
                "unexpected delete result {other:?}"
            ))),
        }
    }

    /// Adds or removes a node, or hands leadership to another voter.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipView, AdminError> {
        Ok(match change {
            MembershipChange::Add {
                id,
                addr,
                learner_only,
            } => self.ops.add_node(id, addr, learner_only).await?,
            MembershipChange::Remove(id) => self.ops.remove_node(id).await?,
            MembershipChange::TransferLeader(id) => self.ops.transfer_leader(id).await?,
        })
    }

    /// A backup: the whole state at one revision, encoded (the same bytes
    /// as a Raft snapshot, see `raftmesh_api::backup`).
    pub async fn backup(&self) -> Result<(u64, Vec<u8>), AdminError> {
        self.barrier(false).await?;
        let data = self.reader.snapshot_data();
        let bytes = data
            .encode_backup()
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        Ok((data.revision(), bytes))
    }

    /// Creates a token; the secret is in the answer, once.
    pub async fn create_token(
        &self,
        scope: TokenScope,
        ttl: Option<Duration>,
        max_uses: Option<u32>,
    ) -> Result<CreatedToken, AdminError> {
        Ok(tokens::create(&self.ops, scope, ttl, max_uses).await?)
    }

    /// Revokes a token.
    pub async fn revoke_token(&self, id: &str) -> Result<u64, AdminError> {
        Ok(tokens::revoke(&self.ops, id).await?)
    }

    /// Rotates the workload CA (see `ca::rotate`).
    pub async fn rotate_ca(&self, overlap: Duration) -> Result<(u64, String), AdminError> {
        Ok(crate::ca::rotate(&self.ops, &self.cluster_name, overlap).await?)
    }
}

/// Validates the documents of one apply and turns them into commands:
/// every rule, no CA or token documents, no resource twice.
fn prepare_apply(
    reader: &StateReader,
    items: Vec<(Resource, Option<u64>)>,
) -> Result<(Vec<ResourceKey>, Command), AdminError> {
    if items.is_empty() {
        return Err(AdminError::Invalid("nothing to apply".into()));
    }
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut keys = Vec::with_capacity(items.len());
    let mut cmds = Vec::with_capacity(items.len());
    for (i, (res, expected)) in items.into_iter().enumerate() {
        res.validate()
            .map_err(|e| AdminError::Invalid(format!("document {}: {e}", i + 1)))?;
        if res.kind() == Kind::Authority {
            return Err(AdminError::Invalid(format!(
                "document {}: the workload CA is managed by meshd; rotate it with `meshctl ca rotate`",
                i + 1
            )));
        }
        if res.kind() == Kind::Token {
            return Err(AdminError::Invalid(format!(
                "document {}: tokens are not applied; create them with `meshctl token create`",
                i + 1
            )));
        }
        if matches!(res.kind(), Kind::Peer | Kind::Import) {
            return Err(AdminError::Invalid(format!(
                "document {}: {} resources are made by peering, not applied; use `meshctl peering generate-token` and `meshctl peering establish`, and apply an Export on the other cluster",
                i + 1,
                res.kind()
            )));
        }
        let key = res.key();
        if let raftmesh_api::Spec::Service(s) = &res.spec {
            if let Some(vip) = s.vip {
                let stored = match reader.get(&key).1.as_deref().map(|r| &r.spec) {
                    Some(raftmesh_api::Spec::Service(c)) => c.vip,
                    _ => None,
                };
                if stored != Some(vip) {
                    return Err(AdminError::Invalid(format!(
                        "document {}: spec.vip {vip} is assigned by meshd ({key} has {}); leave it out",
                        i + 1,
                        stored.map_or("none yet".to_string(), |v| v.to_string())
                    )));
                }
            }
        }
        if !seen.insert(key.clone()) {
            return Err(AdminError::Invalid(format!(
                "document {}: {key} appears twice in one apply",
                i + 1
            )));
        }
        keys.push(key);
        cmds.push(Command::Put {
            resource: res,
            expected_revision: expected,
        });
    }
    let cmd = Command::Batch(cmds);
    let bytes = cmd.encoded_len();
    if bytes > MAX_ENTRY_BYTES {
        return Err(AdminError::Invalid(format!(
            "these {} documents make a {:.1} MiB Raft entry; one apply may make at most {} MiB (every follower must take it within one heartbeat): split them into several files, each applied all or none; nothing was written",
            keys.len(),
            bytes as f64 / (1024.0 * 1024.0),
            MAX_ENTRY_BYTES / (1024 * 1024)
        )));
    }
    Ok((keys, cmd))
}
