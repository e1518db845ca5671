//! The admin front: an actor that serves admin requests against the
//! cluster (writes through Raft, linearizable or stale reads, membership,
//! tokens, snapshots). The gRPC adapter in `admin/mod.rs` authenticates
//! and converts; everything else happens here.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::{Actor, Context, Handler, Message, ResponseFuture};
use raftmesh_api::{
    Kind, Metadata, Resource, ResourceKey, Role, Spec, TokenSpec, DEFAULT_NAMESPACE,
};
use raftmesh_storage::{Command, OpResult, StateReader};

use crate::auth;
use crate::cluster::{ClusterError, ClusterOps, LeaderRequest, LeaderResponse, MembershipView};
use crate::procinfo::unix_ms;

/// Default lifetime of a bootstrap token.
pub const DEFAULT_BOOTSTRAP_TTL: Duration = Duration::from_secs(15 * 60);

/// Why an admin request failed.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// A bug or a broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Apply resources, all or none.
#[derive(Message)]
#[rtype(result = "Result<ApplyOutcome, AdminError>")]
pub struct ApplyResources {
    /// Each resource with its optional expected revision.
    pub items: Vec<(Resource, Option<u64>)>,
}

/// The outcome of an apply: the revision of the batch and one result per item.
#[derive(Debug, Clone)]
pub struct ApplyOutcome {
    /// The batch's revision (log index).
    pub revision: u64,
    /// Per item, in order.
    pub results: Vec<(ResourceKey, OpResult)>,
}

/// Read one resource.
#[derive(Message)]
#[rtype(result = "Result<(u64, Arc<Resource>), AdminError>")]
pub struct GetResource {
    /// Which.
    pub key: ResourceKey,
    /// Skip the read index.
    pub stale: bool,
}

/// Read resources of a kind.
#[derive(Message)]
#[rtype(result = "Result<(u64, Vec<Arc<Resource>>), AdminError>")]
pub struct ListResources {
    /// `None`: every kind.
    pub kind: Option<Kind>,
    /// `None`: every namespace.
    pub namespace: Option<String>,
    /// Skip the read index.
    pub stale: bool,
}

/// Delete one resource.
#[derive(Message)]
#[rtype(result = "Result<u64, AdminError>")]
pub struct DeleteResource {
    /// Which.
    pub key: ResourceKey,
    /// Compare-and-set.
    pub expected_revision: Option<u64>,
}

/// Add, remove or transfer leadership.
#[derive(Message)]
#[rtype(result = "Result<MembershipView, AdminError>")]
pub struct ChangeMembership(pub LeaderRequest);

/// A consistent snapshot of the whole state, encoded.
#[derive(Message)]
#[rtype(result = "Result<(u64, Vec<u8>), AdminError>")]
pub struct TakeSnapshot;

/// What a new token may do.
#[derive(Debug, Clone)]
pub enum TokenScope {
    /// Register proxies of this service.
    Service {
        /// Service name.
        service: String,
        /// Its namespace.
        namespace: String,
    },
    /// Call the admin API with this role.
    Role(Role),
}

/// Create a token; the secret is returned once.
#[derive(Message)]
#[rtype(result = "Result<CreatedToken, AdminError>")]
pub struct CreateToken {
    /// What it may do.
    pub scope: TokenScope,
    /// Lifetime; `None` = the default for its kind.
    pub ttl: Option<Duration>,
    /// `None` = unlimited.
    pub max_uses: Option<u32>,
}

/// A new token.
#[derive(Debug, Clone)]
pub struct CreatedToken {
    /// Its id.
    pub id: String,
    /// Its secret (shown once, never stored).
    pub secret: String,
    /// The stored resource.
    pub resource: Resource,
}

/// Revoke a token.
#[derive(Message)]
#[rtype(result = "Result<u64, AdminError>")]
pub struct RevokeToken {
    /// Its id.
    pub id: String,
}

/// The admin front of one node.
pub struct AdminFront {
    ops: Arc<ClusterOps>,
    reader: StateReader,
}

impl AdminFront {
    /// A front over the node's cluster operations and state.
    pub fn new(ops: Arc<ClusterOps>, reader: StateReader) -> Self {
        Self { ops, reader }
    }
}

impl Actor for AdminFront {
    type Context = Context<Self>;
}

async fn barrier(ops: &ClusterOps, stale: bool) -> Result<(), AdminError> {
    if !stale {
        ops.read_barrier().await?;
    }
    Ok(())
}

async fn write(ops: &ClusterOps, cmd: Command) -> Result<raftmesh_storage::Response, AdminError> {
    match ops.submit(LeaderRequest::Write(cmd)).await? {
        LeaderResponse::Written(r) => Ok(r),
        other => Err(AdminError::Internal(format!(
            "unexpected leader answer {other:?}"
        ))),
    }
}

impl Handler<ApplyResources> for AdminFront {
    type Result = ResponseFuture<Result<ApplyOutcome, AdminError>>;

    fn handle(&mut self, msg: ApplyResources, _: &mut Context<Self>) -> Self::Result {
        let ops = self.ops.clone();
        Box::pin(async move {
            if msg.items.is_empty() {
                return Err(AdminError::Invalid("nothing to apply".into()));
            }
            let mut keys = Vec::with_capacity(msg.items.len());
            let mut cmds = Vec::with_capacity(msg.items.len());
            for (i, (res, expected)) in msg.items.into_iter().enumerate() {
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
                if keys.contains(&res.key()) {
                    return Err(AdminError::Invalid(format!(
                        "document {}: {} appears twice in one apply",
                        i + 1,
                        res.key()
                    )));
                }
                keys.push(res.key());
                cmds.push(Command::Put {
                    resource: res,
                    expected_revision: expected,
                });
            }
            let cmd = if cmds.len() == 1 {
                cmds.remove(0)
            } else {
                Command::Batch(cmds)
            };
            let r = write(&ops, cmd).await?;
            Ok(ApplyOutcome {
                revision: r.revision,
                results: keys.into_iter().zip(r.results).collect(),
            })
        })
    }
}

impl Handler<GetResource> for AdminFront {
    type Result = ResponseFuture<Result<(u64, Arc<Resource>), AdminError>>;

    fn handle(&mut self, msg: GetResource, _: &mut Context<Self>) -> Self::Result {
        let (ops, reader) = (self.ops.clone(), self.reader.clone());
        Box::pin(async move {
            barrier(&ops, msg.stale).await?;
            match reader.get(&msg.key) {
                (rev, Some(r)) => Ok((rev, r)),
                (rev, None) => Err(AdminError::NotFound(format!(
                    "{} not found (at revision {rev})",
                    msg.key
                ))),
            }
        })
    }
}

impl Handler<ListResources> for AdminFront {
    type Result = ResponseFuture<Result<(u64, Vec<Arc<Resource>>), AdminError>>;

    fn handle(&mut self, msg: ListResources, _: &mut Context<Self>) -> Self::Result {
        let (ops, reader) = (self.ops.clone(), self.reader.clone());
        Box::pin(async move {
            barrier(&ops, msg.stale).await?;
            Ok(reader.list(msg.kind, msg.namespace.as_deref()))
        })
    }
}

impl Handler<DeleteResource> for AdminFront {
    type Result = ResponseFuture<Result<u64, AdminError>>;

    fn handle(&mut self, msg: DeleteResource, _: &mut Context<Self>) -> Self::Result {
        let ops = self.ops.clone();
        Box::pin(async move {
            let key = msg.key;
            let r = write(
                &ops,
                Command::Delete {
                    key: key.clone(),
                    expected_revision: msg.expected_revision,
                },
            )
            .await?;
            match r.results.first() {
                Some(OpResult::Ok { revision, .. }) => Ok(*revision),
                Some(OpResult::NotFound) => Err(AdminError::NotFound(format!("{key} not found"))),
                Some(OpResult::Conflict { current }) => Err(AdminError::Conflict(format!(
                    "{key} is at revision {current}, not the expected {}; nothing was deleted",
                    msg.expected_revision.unwrap_or(0)
                ))),
                other => Err(AdminError::Internal(format!(
                    "unexpected delete result {other:?}"
                ))),
            }
        })
    }
}

impl Handler<ChangeMembership> for AdminFront {
    type Result = ResponseFuture<Result<MembershipView, AdminError>>;

    fn handle(&mut self, msg: ChangeMembership, _: &mut Context<Self>) -> Self::Result {
        let ops = self.ops.clone();
        Box::pin(async move {
            match ops.submit(msg.0).await? {
                LeaderResponse::Membership(v) => Ok(v),
                other => Err(AdminError::Internal(format!(
                    "unexpected leader answer {other:?}"
                ))),
            }
        })
    }
}

impl Handler<TakeSnapshot> for AdminFront {
    type Result = ResponseFuture<Result<(u64, Vec<u8>), AdminError>>;

    fn handle(&mut self, _: TakeSnapshot, _: &mut Context<Self>) -> Self::Result {
        let (ops, reader) = (self.ops.clone(), self.reader.clone());
        Box::pin(async move {
            barrier(&ops, false).await?;
            let data = reader.snapshot_data();
            let bytes = data
                .encode()
                .map_err(|e| AdminError::Internal(e.to_string()))?;
            Ok((data.revision(), bytes))
        })
    }
}

impl Handler<CreateToken> for AdminFront {
    type Result = ResponseFuture<Result<CreatedToken, AdminError>>;

    fn handle(&mut self, msg: CreateToken, _: &mut Context<Self>) -> Self::Result {
        let ops = self.ops.clone();
        Box::pin(async move {
            let secret = auth::new_secret();
            let id = auth::new_token_id();
            let now = unix_ms();
            let (service, namespace, role, default_ttl) = match msg.scope {
                TokenScope::Service { service, namespace } => (
                    Some(service),
                    Some(namespace),
                    None,
                    Some(DEFAULT_BOOTSTRAP_TTL),
                ),
                TokenScope::Role(r) => (None, None, Some(r), None),
            };
            let ttl = msg.ttl.or(default_ttl);
            let resource = Resource {
                metadata: Metadata::named(id.clone()),
                spec: Spec::Token(TokenSpec {
                    secret_sha256: auth::hash_secret(&secret),
                    service,
                    namespace,
                    role,
                    created_at_ms: now,
                    expires_at_ms: ttl.map(|t| {
                        now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
                    }),
                    max_uses: msg.max_uses,
                    uses: 0,
                    revoked: false,
                }),
            };
            resource
                .validate()
                .map_err(|e| AdminError::Invalid(e.to_string()))?;
            let r = write(
                &ops,
                Command::Put {
                    resource: resource.clone(),
                    expected_revision: Some(0),
                },
            )
            .await?;
            match r.results.first() {
                Some(OpResult::Ok { revision, .. }) => Ok(CreatedToken {
                    id,
                    secret,
                    resource: resource.with_revision(*revision),
                }),
                other => Err(AdminError::Internal(format!(
                    "token id collision or failure: {other:?}"
                ))),
            }
        })
    }
}

impl Handler<RevokeToken> for AdminFront {
    type Result = ResponseFuture<Result<u64, AdminError>>;

    fn handle(&mut self, msg: RevokeToken, _: &mut Context<Self>) -> Self::Result {
        let (ops, reader) = (self.ops.clone(), self.reader.clone());
        Box::pin(async move {
            let key = ResourceKey::new(Kind::Token, DEFAULT_NAMESPACE, msg.id.clone());
            // Compare-and-set on what we read, retried if a use or another
            // revocation got in between.
            for _ in 0..5 {
                barrier(&ops, false).await?;
                let Some(current) = reader.get(&key).1 else {
                    return Err(AdminError::NotFound(format!("token {} not found", msg.id)));
                };
                let mut updated = (*current).clone();
                let Spec::Token(t) = &mut updated.spec else {
                    return Err(AdminError::Internal(
                        "token resource without a token spec".into(),
                    ));
                };
                if t.revoked {
                    return Ok(current.metadata.revision.unwrap_or(0));
                }
                t.revoked = true;
                let r = write(
                    &ops,
                    Command::Put {
                        resource: updated,
                        expected_revision: current.metadata.revision,
                    },
                )
                .await?;
                match r.results.first() {
                    Some(OpResult::Ok { revision, .. }) => return Ok(*revision),
                    Some(OpResult::Conflict { .. }) => continue,
                    other => {
                        return Err(AdminError::Internal(format!("unexpected result {other:?}")))
                    }
                }
            }
            Err(AdminError::Conflict(format!(
                "token {} kept changing; try again",
                msg.id
            )))
        })
    }
}

/// Stops the actor (node shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopFront;

impl Handler<StopFront> for AdminFront {
    type Result = ();
    fn handle(&mut self, _: StopFront, ctx: &mut Context<Self>) {
        use actix::ActorContext;
        ctx.stop();
    }
}

/// Rolls the workload CA to a new root, with overlap: the new root is added
/// (trusted, not signing) first, proxies get the new bundle, and only then
/// does it become the signing root. The root before the current one is
/// dropped (its certificates have had a whole rotation to be renewed).
#[derive(Message)]
#[rtype(result = "Result<(u64, String), AdminError>")]
pub struct RotateCa {
    /// The cluster's name (default trust domain).
    pub cluster_name: String,
    /// How long the new root is trusted before it signs.
    pub overlap: Duration,
}

impl Handler<RotateCa> for AdminFront {
    type Result = ResponseFuture<Result<(u64, String), AdminError>>;

    fn handle(&mut self, msg: RotateCa, _: &mut Context<Self>) -> Self::Result {
        let (ops, reader) = (self.ops.clone(), self.reader.clone());
        Box::pin(async move {
            use crate::discovery::identity;
            barrier(&ops, false).await?;
            let (cur, ca) = identity::authority(&reader).ok_or_else(|| {
                AdminError::Invalid("the workload CA does not exist yet; retry in a moment".into())
            })?;
            let td = identity::trust_domain(&reader, &msg.cluster_name);
            let mut new = crate::ca::new_root(&td, unix_ms())
                .map_err(|e| AdminError::Internal(e.to_string()))?;
            new.signing = false;
            let new_id = new.id.clone();
            let mut roots: Vec<raftmesh_api::CaRoot> =
                ca.roots.into_iter().filter(|r| r.signing).collect();
            roots.push(new);
            let step1 = Resource {
                metadata: cur.metadata.clone(),
                spec: Spec::Authority(raftmesh_api::AuthoritySpec {
                    roots: roots.clone(),
                }),
            };
            let r = write(
                &ops,
                Command::Put {
                    resource: step1,
                    expected_revision: cur.metadata.revision,
                },
            )
            .await?;
            let Some(OpResult::Ok { revision, .. }) = r.results.first() else {
                return Err(AdminError::Conflict(
                    "the CA changed meanwhile; run the rotation again".into(),
                ));
            };
            tracing::info!(root = %new_id, "new workload CA root is trusted; it signs after the overlap");
            tokio::time::sleep(msg.overlap).await;
            for root in &mut roots {
                root.signing = root.id == new_id;
            }
            let step2 = Resource {
                metadata: cur.metadata.clone(),
                spec: Spec::Authority(raftmesh_api::AuthoritySpec { roots }),
            };
            let r = write(
                &ops,
                Command::Put {
                    resource: step2,
                    expected_revision: Some(*revision),
                },
            )
            .await?;
            match r.results.first() {
                Some(OpResult::Ok { revision, .. }) => Ok((*revision, new_id)),
                _ => Err(AdminError::Conflict(
                    "the CA changed during the rotation; the new root is trusted but not signing; run it again".into(),
                )),
            }
        })
    }
}
