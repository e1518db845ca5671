//! Discovery: one bidirectional gRPC stream per proxy, carrying deltas of
//! the mesh state in the proxy's scope.
//!
//! The [`hub::DiscoveryHub`] actor routes applied change events to the
//! sessions that care (an index by service). Each stream is an owned tokio
//! task rather than an actor: a node holds thousands of streams, and actix
//! actors of one arbiter share a thread, while tasks spread over the worker
//! pool and cost a few hundred bytes each (docs/adr/0002-discovery.md).
//!
//! A stream's life, one file per stage: `admission.rs` (the `Hello`, the
//! token or certificate), `registration.rs` (the proxy's Endpoint and its
//! health), `stream.rs` (deltas, acks, certificates, heartbeats). The
//! endpoint leases that notice a proxy gone are `leases.rs`.
//!
//! Per stream: a first `Hello` (validated, its bootstrap token checked), an
//! initial delta (what changed since the proxy's last revision, or a full
//! state), then at most one unacknowledged delta at a time; changes that
//! arrive meanwhile coalesce into the next one (latest value per key), so a
//! slow proxy costs memory bounded by its scope, never by the rate of change.

mod admission;
pub mod challenge;
pub mod hub;
pub mod leases;
mod registration;
pub mod scope;
pub mod session;
mod stream;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use raftmesh_api::v1 as pb;
use raftmesh_api::v1::discovery_server::Discovery;
use raftmesh_api::v1::proxy_message::Msg as In;
use raftmesh_api::{Kind, Resource, ResourceKey, Spec};
use raftmesh_storage::StateReader;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::ClusterOps;
use hub::DiscoveryHub;
use scope::{parse_subscription, Scope};

/// Discovery settings of a node.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// How long to wait for the first message.
    pub hello_timeout: Duration,
    /// How long a node that is behind the proxy's revision waits to catch up.
    pub catch_up_timeout: Duration,
    /// Server heartbeat interval.
    pub heartbeat: Duration,
    /// A stream silent for this long is closed.
    pub idle_timeout: Duration,
    /// Largest message accepted from a proxy.
    pub max_message_bytes: usize,
    /// The cluster's name (default trust domain `<name>.mesh`).
    pub cluster_name: String,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            hello_timeout: Duration::from_secs(10),
            catch_up_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(35),
            max_message_bytes: 256 * 1024,
            cluster_name: "raftmesh".into(),
        }
    }
}

/// The Discovery gRPC service of one node.
#[derive(Clone)]
pub struct DiscoveryService {
    ctx: Arc<Ctx>,
}

struct Ctx {
    ops: Arc<ClusterOps>,
    reader: StateReader,
    hub: Addr<DiscoveryHub>,
    cfg: DiscoveryConfig,
    next_id: AtomicU64,
    challenges: challenge::Challenges,
}

impl Ctx {
    fn cluster_name(&self) -> &str {
        &self.cfg.cluster_name
    }
}

impl DiscoveryService {
    /// The service over a node's state and hub.
    pub fn new(
        ops: Arc<ClusterOps>,
        reader: StateReader,
        hub: Addr<DiscoveryHub>,
        cfg: DiscoveryConfig,
    ) -> Self {
        Self {
            ctx: Arc::new(Ctx {
                ops,
                reader,
                hub,
                cfg,
                next_id: AtomicU64::new(1),
                challenges: challenge::Challenges::default(),
            }),
        }
    }

    /// Largest message this service accepts.
    pub fn max_message_bytes(&self) -> usize {
        self.ctx.cfg.max_message_bytes
    }
}

/// Every resource in `scope`, and the revision it reflects.
pub fn full_state(reader: &StateReader, scope: &Scope) -> (u64, Vec<Arc<Resource>>) {
    reader.view(|v| {
        let mut out = Vec::new();
        for (ns, svc) in &scope.calls {
            if let Some(s) = v.get(&ResourceKey::new(Kind::Service, ns.clone(), svc.clone())) {
                out.push(s);
            }
            out.extend(v.for_service(Kind::Endpoint, ns, svc));
            out.extend(v.for_service(Kind::Route, ns, svc));
            out.extend(v.for_service(Kind::Import, ns, svc));
        }
        out.extend(v.for_service(Kind::Policy, &scope.own.0, &scope.own.1));
        // Its own service's Route (a `rate_limit` is kept by the callee),
        // unless already there as a service it calls.
        if !scope.calls.contains(&scope.own) {
            out.extend(v.for_service(Kind::Route, &scope.own.0, &scope.own.1));
        }
        // Egress: the namespace's Externals and the Policies on them.
        out.extend(
            v.of_kind(Kind::External)
                .into_iter()
                .filter(|r| r.metadata.namespace == scope.own.0),
        );
        out.extend(v.of_kind(Kind::Policy).into_iter().filter(|r| {
            r.metadata.namespace == scope.own.0 && matches!(&r.spec, Spec::Policy(p) if p.external)
        }));
        for kind in [Kind::MeshConfig, Kind::Revocation, Kind::Peer, Kind::Export] {
            out.extend(
                v.of_kind(kind)
                    .into_iter()
                    .filter(|r| !matches!(&r.spec, Spec::Peer(p) if p.pending())),
            );
        }
        (v.revision(), out)
    })
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type StreamStream = ReceiverStream<Result<pb::ServerMessage, Status>>;

    async fn stream(
        &self,
        req: Request<Streaming<pb::ProxyMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(self.ctx.cfg.hello_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within the time limit"))??;
        let hello = match first.and_then(|m| m.msg) {
            Some(In::Hello(h)) => h,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a stream must be Hello",
                ))
            }
            None => return Err(Status::invalid_argument("the stream ended before Hello")),
        };
        let admitted = self.ctx.admit(&hello).await?;
        // Outbound is bounded: the session sends one delta, then waits for
        // the ack; heartbeats and errors are all else.
        let (tx, rx) = mpsc::channel(4);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let instance = admitted.info.instance.clone();
            if let Err(e) = stream::run_session(ctx, admitted, inbound, tx.clone()).await {
                tracing::info!(%instance, error = %e.message(), "discovery stream closed with an error");
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn challenge(
        &self,
        _req: Request<pb::ChallengeRequest>,
    ) -> Result<Response<pb::ChallengeResponse>, Status> {
        Ok(Response::new(pb::ChallengeResponse {
            nonce: self.ctx.challenges.issue(crate::procinfo::unix_ms()),
            valid_for_ms: challenge::VALID_FOR.as_millis() as u64,
        }))
    }
}

/// Every proxy connected to any node of the cluster, sorted by instance,
/// and the nodes that could not be asked.
pub async fn cluster_sessions(
    ops: &ClusterOps,
    hub: &Addr<DiscoveryHub>,
) -> (Vec<session::SessionStatus>, Vec<u64>) {
    let mut out: Vec<session::SessionStatus> = match hub.send(hub::ListSessions).await {
        Ok(s) => s.iter().map(|s| s.status()).collect(),
        Err(_) => Vec::new(),
    };
    out.extend(hub.send(hub::ListDeparted).await.unwrap_or_default());
    let mut missing = Vec::new();
    for id in ops.peers() {
        let asked = async {
            let addr = ops.addr_of(id).ok_or(())?;
            let mut client = ops.pool().get(&addr).map_err(|_| ())?;
            let mut req = Request::new(pb::RaftPayload {
                json: b"null".to_vec(),
            });
            req.set_timeout(Duration::from_secs(2));
            let reply = client.sessions(req).await.map_err(|_| ())?;
            serde_json::from_slice::<Vec<session::SessionStatus>>(&reply.get_ref().json)
                .map_err(|_| ())
        };
        match asked.await {
            Ok(s) => out.extend(s),
            Err(()) => missing.push(id),
        }
    }
    // A proxy connected anywhere is not gone; of several departures of one
    // proxy, the latest counts.
    let connected: std::collections::HashSet<(String, String)> = out
        .iter()
        .filter(|s| s.disconnected_since_ms.is_none())
        .map(|s| (s.info.namespace.clone(), s.info.instance.clone()))
        .collect();
    out.retain(|s| {
        s.disconnected_since_ms.is_none()
            || !connected.contains(&(s.info.namespace.clone(), s.info.instance.clone()))
    });
    out.sort_by(|a, b| {
        (&a.info.namespace, &a.info.instance, b.disconnected_since_ms).cmp(&(
            &b.info.namespace,
            &b.info.instance,
            a.disconnected_since_ms,
        ))
    });
    out.dedup_by(|later, first| {
        later.info.namespace == first.info.namespace && later.info.instance == first.info.instance
    });
    (out, missing)
}

/// The scope a status describes.
pub fn scope_of(s: &session::SessionStatus) -> Scope {
    Scope {
        own: (s.info.namespace.clone(), s.info.service.clone()),
        calls: s
            .subscriptions
            .iter()
            .filter_map(|x| parse_subscription(x, &s.info.namespace).ok())
            .collect(),
    }
}
