//! The admin gRPC API: authentication, conversion between the wire and the
//! domain, and the mapping of errors to gRPC statuses (one function,
//! [`status`]). The work itself is done by the [`AdminFront`] and, for
//! cluster status, the [`ClusterWatcher`] actor.

mod front;

use std::pin::Pin;
use std::time::Duration;

use actix::Addr;
use futures::Stream;
use raftmesh_api::convert::{pb_role, role};
use raftmesh_api::v1 as pb;
use raftmesh_api::v1::admin_server::Admin;
use raftmesh_api::{Kind, Resource, ResourceKey, Role, DEFAULT_NAMESPACE};
use raftmesh_storage::{OpResult, StateReader};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub use front::*;

use crate::cluster::{ClusterError, ClusterOps, MembershipView};
use crate::discovery::hub::DiscoveryHub;
use crate::discovery::session::SessionStatus;
use crate::discovery::{cluster_sessions, full_state, scope_of};
use crate::tokens::{self, AuthError, Caller, TokenScope};
use crate::watcher::{ClusterWatcher, GetStatus};

/// What a call needs from its caller's role.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Write,
    /// A write whose Raft entry is conditional on the caller's token
    /// (apply, delete): checked without a read barrier.
    GuardedWrite,
}

/// The admin gRPC service of one node.
pub struct AdminService {
    front: Arc<AdminFront>,
    watcher: Addr<ClusterWatcher>,
    hub: Addr<DiscoveryHub>,
    ops: Arc<ClusterOps>,
    reader: StateReader,
    node_id: u64,
    cluster_name: String,
    federation: Arc<crate::federation::Federation>,
}

impl AdminService {
    /// The service over a node's actors and state.
    pub fn new(
        watcher: Addr<ClusterWatcher>,
        hub: Addr<DiscoveryHub>,
        ops: Arc<ClusterOps>,
        cluster_name: String,
        federation: Arc<crate::federation::Federation>,
    ) -> Self {
        Self {
            front: Arc::new(AdminFront::new(ops.clone(), cluster_name.clone())),
            watcher,
            hub,
            node_id: ops.id(),
            reader: ops.reader().clone(),
            ops,
            cluster_name,
            federation,
        }
    }

    async fn auth<T>(&self, req: &Request<T>, need: Need) -> Result<Caller, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or(""));
        let checked = match need {
            // The write itself carries the token's revision (`Caller::guard`).
            Need::GuardedWrite => tokens::authenticate_writer(&self.ops, header).await,
            Need::Read | Need::Write => tokens::authenticate_admin(&self.ops, header).await,
        };
        let caller = checked.map_err(|e| match e {
            AuthError::NotAdmin(_) => Status::permission_denied(e.to_string()),
            AuthError::Unconfirmed(_) => Status::unavailable(e.to_string()),
            _ => Status::unauthenticated(e.to_string()),
        })?;
        if need != Need::Read && caller.role == Role::ReadOnly {
            return Err(Status::permission_denied(format!(
                "token {} is read-only; this call changes the cluster",
                caller.token_id
            )));
        }
        Ok(caller)
    }
}

/// The response metadata of a `Tap` naming the nodes that could not open
/// it (their proxies' requests are missing), comma-separated.
pub const TAP_UNREPORTED: &str = "raftmesh-unreported-nodes";

/// Maps an admin error to the status a client sees, logging internal ones.
pub fn status(e: AdminError) -> Status {
    match e {
        AdminError::Cluster(c) => match c {
            ClusterError::Invalid(m) => Status::invalid_argument(m),
            ClusterError::NotLeader { .. }
            | ClusterError::NoLeader
            | ClusterError::ShuttingDown => Status::unavailable(c.to_string()),
            ClusterError::Unknown(_) | ClusterError::Unavailable(_) => {
                Status::unavailable(c.to_string())
            }
        },
        AdminError::NotFound(m) => Status::not_found(m),
        AdminError::Invalid(m) => Status::invalid_argument(m),
        AdminError::Conflict(m) => Status::failed_precondition(m),
        AdminError::Unauthenticated(m) => Status::unauthenticated(m),
        AdminError::Internal(m) => {
            tracing::error!(error = %m, "admin request failed");
            Status::internal(format!("internal error on the server: {m}"))
        }
    }
}

fn parse_kind(s: &str) -> Result<Kind, Status> {
    s.parse()
        .map_err(|e: raftmesh_api::kind::UnknownKind| Status::invalid_argument(e.to_string()))
}

fn ns(s: &str) -> String {
    if s.is_empty() {
        DEFAULT_NAMESPACE.to_string()
    } else {
        s.to_string()
    }
}

fn membership(v: MembershipView) -> pb::MembershipResponse {
    pb::MembershipResponse {
        voters: v.voters,
        learners: v.learners,
        leader: v.leader,
    }
}

fn outcome(r: &OpResult) -> (pb::WriteOutcome, u64, bool) {
    match r {
        OpResult::Ok {
            revision,
            unchanged,
        } => (pb::WriteOutcome::Ok, *revision, *unchanged),
        OpResult::Conflict { current } => (pb::WriteOutcome::Conflict, *current, false),
        OpResult::NotFound => (pb::WriteOutcome::NotFound, 0, false),
        OpResult::Aborted => (pb::WriteOutcome::Aborted, 0, false),
    }
}

type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

const BACKUP_CHUNK: usize = 1024 * 1024;

impl AdminService {
    async fn apply_now(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let t0 = std::time::Instant::now();
        let caller = self.auth(&req, Need::GuardedWrite).await?;
        let t_auth = t0.elapsed();
        let mut items = Vec::new();
        for (i, item) in req.into_inner().items.into_iter().enumerate() {
            let r = item.resource.ok_or_else(|| {
                Status::invalid_argument(format!("item {}: resource is missing", i + 1))
            })?;
            let r = Resource::try_from(r)
                .map_err(|e| Status::invalid_argument(format!("item {}: {e}", i + 1)))?;
            items.push((r, item.expected_revision));
        }
        let t_decode = t0.elapsed();
        let out = self.front.apply(&caller, items).await.map_err(status)?;
        tracing::debug!(
            auth_us = t_auth.as_micros() as u64,
            decode_us = t_decode.as_micros() as u64,
            total_us = t0.elapsed().as_micros() as u64,
            "admin apply"
        );
        Ok(Response::new(pb::ApplyResponse {
            revision: out.revision,
            results: out
                .results
                .iter()
                .map(|(k, r)| {
                    let (o, revision, unchanged) = outcome(r);
                    pb::WriteResult {
                        key: Some(k.clone().into()),
                        outcome: o as i32,
                        revision,
                        unchanged,
                    }
                })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        use opentelemetry::context::FutureExt as _;
        // Traced from the call to the committed, applied answer.
        let Some(active) = self.ops.traces().active() else {
            return self.apply_now(req).await;
        };
        let parent = raftmesh_client::otel::extract(&req.metadata().clone().into_headers());
        let span = active.start(
            opentelemetry::trace::SpanKind::Server,
            "raftmesh.v1.Admin/Apply".into(),
            &parent,
        );
        span.set(vec![opentelemetry::KeyValue::new(
            "raftmesh.items",
            req.get_ref().items.len() as i64,
        )]);
        let r = self
            .apply_now(req)
            .with_context(span.context().clone())
            .await;
        match &r {
            Ok(resp) => span.set(vec![opentelemetry::KeyValue::new(
                "raftmesh.revision",
                resp.get_ref().revision as i64,
            )]),
            Err(s) => span.fail(format!("{:?}: {}", s.code(), s.message())),
        }
        r
    }
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let caller = self.auth(&req, Need::Read).await?;
        let r = req.into_inner();
        let key = ResourceKey::new(parse_kind(&r.kind)?, ns(&r.namespace), r.name);
        let (revision, res) = self.front.get(&key, r.stale).await.map_err(status)?;
        Ok(Response::new(pb::GetResponse {
            resource: Some(redact(&res, caller.role)),
            revision,
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let caller = self.auth(&req, Need::Read).await?;
        let r = req.into_inner();
        let kind = if r.kind.is_empty() {
            None
        } else {
            Some(parse_kind(&r.kind)?)
        };
        let namespace = (!r.namespace.is_empty()).then_some(r.namespace);
        let (revision, items) = self
            .front
            .list(kind, namespace.as_deref(), r.stale)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListResponse {
            resources: items.iter().map(|r| redact(r, caller.role)).collect(),
            revision,
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let caller = self.auth(&req, Need::GuardedWrite).await?;
        let r = req.into_inner();
        let kind = parse_kind(&r.kind)?;
        if kind == Kind::Token {
            return Err(Status::invalid_argument(
                "tokens are revoked, not deleted: use `meshctl token revoke ID`",
            ));
        }
        if kind == Kind::Authority {
            return Err(Status::invalid_argument(
                "the workload CA cannot be deleted; rotate it with `meshctl ca rotate`",
            ));
        }
        let key = ResourceKey::new(kind, ns(&r.namespace), r.name);
        let revision = self
            .front
            .delete(&caller, key, r.expected_revision)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteResponse { revision }))
    }

    async fn cluster_status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.auth(&req, Need::Read).await?;
        let s = self
            .watcher
            .send(GetStatus)
            .await
            .map_err(|e| Status::unavailable(format!("the node is shutting down: {e}")))?;
        Ok(Response::new(s))
    }

    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.auth(&req, Need::Write).await?;
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("node ids start at 1"));
        }
        if r.addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(Status::invalid_argument(format!(
                "\"{}\" is not HOST:PORT",
                r.addr
            )));
        }
        let v = self
            .front
            .change_membership(MembershipChange::Add {
                id: r.id,
                addr: r.addr,
                learner_only: r.learner_only,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(membership(v)))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.auth(&req, Need::Write).await?;
        let id = req.into_inner().id;
        let v = self
            .front
            .change_membership(MembershipChange::Remove(id))
            .await
            .map_err(status)?;
        Ok(Response::new(membership(v)))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.auth(&req, Need::Write).await?;
        let id = req.into_inner().id;
        let v = self
            .front
            .change_membership(MembershipChange::TransferLeader(id))
            .await
            .map_err(status)?;
        Ok(Response::new(membership(v)))
    }

    type SaveBackupStream = BackupStream;

    async fn save_backup(
        &self,
        req: Request<pb::SaveBackupRequest>,
    ) -> Result<Response<Self::SaveBackupStream>, Status> {
        // A backup holds every secret hash and the CA key: admins only.
        let caller = self.auth(&req, Need::Write).await?;
        let (revision, bytes) = self.front.backup().await.map_err(status)?;
        tracing::info!(revision, bytes = bytes.len(), token = %caller.token_id, "backup saved by a client");
        let chunks: Vec<Result<pb::BackupChunk, Status>> = bytes
            .chunks(BACKUP_CHUNK)
            .map(|c| Ok(pb::BackupChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.auth(&req, Need::Write).await?;
        let r = req.into_inner();
        let scope = match r.scope {
            Some(pb::create_token_request::Scope::Service(s)) => {
                raftmesh_api::validate::dns_label(&s.service)
                    .map_err(|e| Status::invalid_argument(format!("--service: {e}")))?;
                let namespace = ns(&s.namespace);
                raftmesh_api::validate::dns_label(&namespace)
                    .map_err(|e| Status::invalid_argument(format!("--namespace: {e}")))?;
                TokenScope::Service {
                    service: s.service,
                    namespace,
                }
            }
            Some(pb::create_token_request::Scope::Role(r)) => {
                TokenScope::Role(role(r).map_err(|e| Status::invalid_argument(e.to_string()))?)
            }
            None => {
                return Err(Status::invalid_argument(
                    "a token needs a service or a role",
                ))
            }
        };
        let ttl = (r.ttl_ms != 0).then(|| Duration::from_millis(r.ttl_ms));
        let created = self
            .front
            .create_token(scope, ttl, (r.max_uses != 0).then_some(r.max_uses))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateTokenResponse {
            id: created.id,
            secret: created.secret,
            token: Some(created.resource.into()),
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = self.auth(&req, Need::Read).await?;
        let (_, items) = self
            .front
            .list(Some(Kind::Token), None, false)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: items.iter().map(|r| redact(r, caller.role)).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.auth(&req, Need::Write).await?;
        let id = req.into_inner().id;
        let revision = self.front.revoke_token(&id).await.map_err(status)?;
        Ok(Response::new(pb::RevokeTokenResponse { revision }))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = self.auth(&req, Need::Read).await?;
        Ok(Response::new(pb::WhoAmIResponse {
            token_id: caller.token_id,
            role: pb_role(caller.role) as i32,
            node_id: self.node_id,
            cluster_name: self.cluster_name.clone(),
        }))
    }

    async fn rotate_ca(
        &self,
        req: Request<pb::RotateCaRequest>,
    ) -> Result<Response<pb::RotateCaResponse>, Status> {
        self.auth(&req, Need::Write).await?;
        let (revision, id) = self
            .front
            .rotate_ca(Duration::from_secs(3))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RotateCaResponse {
            revision,
            new_root_fingerprint: id,
        }))
    }

    async fn generate_peering_token(
        &self,
        req: Request<pb::GeneratePeeringTokenRequest>,
    ) -> Result<Response<pb::GeneratePeeringTokenResponse>, Status> {
        self.auth(&req, Need::Write).await?;
        let r = req.into_inner();
        let ttl = (r.ttl_ms != 0).then(|| Duration::from_millis(r.ttl_ms));
        let (token, expires_at_ms) = self
            .federation
            .generate_token(&r.peer, ttl)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GeneratePeeringTokenResponse {
            token,
            expires_at_ms,
        }))
    }

    async fn establish_peering(
        &self,
        req: Request<pb::EstablishPeeringRequest>,
    ) -> Result<Response<pb::EstablishPeeringResponse>, Status> {
        self.auth(&req, Need::Write).await?;
        let r = req.into_inner();
        let revision = self
            .federation
            .establish(&r.peer, &r.token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::EstablishPeeringResponse { revision }))
    }

    async fn list_peerings(
        &self,
        req: Request<pb::ListPeeringsRequest>,
    ) -> Result<Response<pb::ListPeeringsResponse>, Status> {
        self.auth(&req, Need::Read).await?;
        Ok(Response::new(pb::ListPeeringsResponse {
            peers: self.federation.list(),
        }))
    }

    async fn delete_peering(
        &self,
        req: Request<pb::DeletePeeringRequest>,
    ) -> Result<Response<pb::DeletePeeringResponse>, Status> {
        self.auth(&req, Need::Write).await?;
        let (revision, peer_told) = self
            .federation
            .delete(&req.into_inner().peer)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeletePeeringResponse {
            revision,
            peer_told,
        }))
    }

    async fn list_proxies(
        &self,
        req: Request<pb::ListProxiesRequest>,
    ) -> Result<Response<pb::ListProxiesResponse>, Status> {
        self.auth(&req, Need::Read).await?;
        let (sessions, missing) = cluster_sessions(&self.ops, &self.hub).await;
        if !missing.is_empty() {
            tracing::warn!(?missing, "some nodes did not report their proxies");
        }
        Ok(Response::new(pb::ListProxiesResponse {
            proxies: sessions.iter().map(proxy_status).collect(),
            unreported_nodes: missing,
        }))
    }

    async fn stat(
        &self,
        req: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatResponse>, Status> {
        self.auth(&req, Need::Read).await?;
        let r = req.into_inner();
        let filter = stat_filter(r)?;
        let (edges, missing) = crate::livestats::cluster_edges(&self.ops, &self.hub).await;
        if !missing.is_empty() {
            tracing::warn!(?missing, "some nodes did not report their proxies' traffic");
        }
        Ok(Response::new(pb::StatResponse {
            rows: crate::livestats::rows(&edges, &filter)
                .into_iter()
                .map(Into::into)
                .collect(),
            window_s: crate::livestats::WINDOW.as_secs() as u32,
            unreported_nodes: missing,
        }))
    }

    type TapStream = tokio_stream::wrappers::ReceiverStream<Result<pb::TapRecord, Status>>;

    /// Live request records from every proxy of a service on every node:
    /// admin tokens only (a record names paths and callers).
    async fn tap(&self, req: Request<pb::TapRequest>) -> Result<Response<Self::TapStream>, Status> {
        let caller = self.auth(&req, Need::Read).await?;
        if caller.role != Role::Admin {
            return Err(Status::permission_denied(format!(
                "token {} is read-only; tap shows requests, for admin tokens only",
                caller.token_id
            )));
        }
        let r = req.into_inner();
        let max = r.max_records;
        let spec = crate::tap::Spec::from_request(self.ops.taps().next_id(self.node_id), r)
            .map_err(Status::invalid_argument)?;
        let (records, guards, missing) =
            crate::tap::open_cluster(&self.ops, &self.hub, &spec).await;
        let duration = Duration::from_millis(spec.duration_ms);
        let mut resp = Response::new(crate::tap::relay(guards, records, duration, max));
        if !missing.is_empty() {
            tracing::warn!(?missing, tap = %spec.id, "some nodes could not open the tap");
            let list = missing
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            if let Ok(v) = list.parse() {
                resp.metadata_mut().insert(TAP_UNREPORTED, v);
            }
        }
        Ok(resp)
    }

    async fn proxy_config(
        &self,
        req: Request<pb::ProxyConfigRequest>,
    ) -> Result<Response<pb::ProxyConfigResponse>, Status> {
        let caller = self.auth(&req, Need::Read).await?;
        let instance = req.into_inner().instance;
        let (sessions, missing) = cluster_sessions(&self.ops, &self.hub).await;
        let s = sessions
            .iter()
            .find(|s| s.info.instance == instance)
            .ok_or_else(|| {
                let also = if missing.is_empty() {
                    String::new()
                } else {
                    format!(" (nodes {missing:?} did not answer)")
                };
                Status::not_found(format!(
                    "no connected proxy has instance \"{instance}\"{also}"
                ))
            })?;
        let (_, resources) = full_state(&self.reader, &scope_of(s));
        Ok(Response::new(pb::ProxyConfigResponse {
            status: Some(proxy_status(s)),
            resources: resources.iter().map(|r| redact(r, caller.role)).collect(),
        }))
    }
}

/// A `Stat` request's filter: names of at most 253 bytes, no control
/// characters.
pub fn stat_filter(r: pb::StatRequest) -> Result<crate::livestats::Filter, Status> {
    let name = |field: &str, v: String| {
        if v.len() > 253 || v.chars().any(char::is_control) {
            return Err(Status::invalid_argument(format!(
                "stat: {field} is longer than 253 bytes or holds control characters"
            )));
        }
        Ok((!v.is_empty()).then_some(v))
    };
    Ok(crate::livestats::Filter {
        service: name("service", r.service)?,
        namespace: name("namespace", r.namespace)?,
        route: name("route", r.route)?,
    })
}

fn proxy_status(s: &SessionStatus) -> pb::ProxyStatus {
    pb::ProxyStatus {
        instance: s.info.instance.clone(),
        service: s.info.service.clone(),
        namespace: s.info.namespace.clone(),
        node_id: s.info.node_id,
        acked_revision: s.acked_revision,
        sent_revision: s.sent_revision,
        connected_since_ms: s.info.connected_since_ms,
        subscriptions: s.subscriptions.clone(),
        disconnected_since_ms: s.disconnected_since_ms.unwrap_or(0),
    }
}

/// The wire form of a resource for a caller: the CA's private keys never
/// leave the cluster through the admin API, and a read-only caller does
/// not see token hashes either (a hash is what an offline guess of a
/// secret would be checked against).
fn redact(r: &Resource, role: Role) -> pb::Resource {
    let mut r = r.clone();
    match &mut r.spec {
        raftmesh_api::Spec::Authority(a) => {
            for root in &mut a.roots {
                root.key_pem.clear();
            }
        }
        raftmesh_api::Spec::Token(t) if role != Role::Admin => t.secret_sha256.clear(),
        // The link's credential (sealed) and a pending token's hash are
        // never shown.
        raftmesh_api::Spec::Peer(p) => {
            p.credential.clear();
            p.secret_sha256.clear();
        }
        _ => {}
    }
    r.into()
}
