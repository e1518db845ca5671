//! The node-to-node gRPC service: Raft messages, forwarded leader requests,
//! control during leadership transfer, and node facts for cluster status.

use std::sync::Arc;

use raftmesh_api::v1::raft_server::Raft as RaftRpc;
use raftmesh_api::v1::{NodeInfoRequest, NodeInfoResponse, RaftPayload};
use tonic::{Request, Response, Status};

use crate::cluster::credential::{self, ClusterSecret};
use crate::cluster::network::{from_payload, to_payload};
use crate::cluster::{ClusterOps, Control, LeaderRequest};
use crate::procinfo;

/// What a caller must present to be served as a node.
#[derive(Debug, Clone)]
pub enum NodeCheck {
    /// Server TLS: a client certificate the server CA signed, which tonic
    /// verified.
    Certificate,
    /// Plaintext: a fresh proof under the cluster secret.
    Secret(ClusterSecret),
}

/// Serves one node's side of the node-to-node protocol. Every call must
/// come from a node; `node_info` answers strangers with nothing.
pub struct RaftService {
    ops: Arc<ClusterOps>,
    hub: actix::Addr<crate::discovery::hub::DiscoveryHub>,
    check: NodeCheck,
}

impl RaftService {
    /// The discovery streams this node holds.
    async fn local_sessions(&self) -> Result<Vec<Arc<crate::discovery::session::Session>>, Status> {
        self.hub
            .send(crate::discovery::hub::ListSessions)
            .await
            .map_err(|_| Status::unavailable("the node is shutting down"))
    }

    /// The service for the node behind `ops`, admitting callers by `check`.
    pub fn new(
        ops: Arc<ClusterOps>,
        hub: actix::Addr<crate::discovery::hub::DiscoveryHub>,
        check: NodeCheck,
    ) -> Self {
        Self { ops, hub, check }
    }

    fn check_node<T>(&self, req: &Request<T>) -> Result<(), Status> {
        match &self.check {
            NodeCheck::Certificate if req.peer_certs().is_none_or(|c| c.is_empty()) => {
                Err(Status::permission_denied(
                    "node-to-node calls need a node certificate signed by the server CA (meshd tls init)",
                ))
            }
            NodeCheck::Certificate => Ok(()),
            NodeCheck::Secret(s) => Ok(credential::check(s, req)?),
        }
    }
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    encoded(to_payload(v))
}

fn encoded(p: Result<RaftPayload, serde_json::Error>) -> Result<Response<RaftPayload>, Status> {
    p.map(Response::new)
        .map_err(|e| Status::internal(format!("encoding the reply: {e}")))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_node(&req)?;
        let r = from_payload(req.get_ref(), "append-entries request")?;
        reply(&self.ops.raft().append_entries(r).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_node(&req)?;
        let r = from_payload(req.get_ref(), "vote request")?;
        reply(&self.ops.raft().vote(r).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_node(&req)?;
        let r = from_payload(req.get_ref(), "install-snapshot request")?;
        reply(&self.ops.raft().install_snapshot(r).await)
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_node(&req)?;
        let r: LeaderRequest = from_payload(req.get_ref(), "leader request")?;
        encoded(self.ops.serve_forwarded(r).await)
    }

    async fn relay(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_node(&req)?;
        let r: LeaderRequest = from_payload(req.get_ref(), "leader request")?;
        encoded(self.ops.serve_relayed(r).await)
    }

    async fn control(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_node(&req)?;
        let c: Control = from_payload(req.get_ref(), "control message")?;
        let res = self.ops.handle_control(c).await;
        reply(&res)
    }

    async fn sessions(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_node(&req)?;
        let sessions = self.local_sessions().await?;
        let mut statuses: Vec<_> = sessions.iter().map(|s| s.status()).collect();
        statuses.extend(
            self.hub
                .send(crate::discovery::hub::ListDeparted)
                .await
                .unwrap_or_default(),
        );
        reply(&statuses)
    }

    async fn stats(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_node(&req)?;
        let sessions = self.local_sessions().await?;
        reply(&crate::livestats::node_edges(
            &sessions,
            procinfo::unix_ms(),
        ))
    }

    type TapStream =
        tokio_stream::wrappers::ReceiverStream<Result<raftmesh_api::v1::TapRecord, Status>>;

    /// Another node's tap: this node's proxies of the service record, and
    /// their records stream back until the tap's time is up or the caller
    /// goes away (then the proxies are told to stop).
    async fn tap(&self, req: Request<RaftPayload>) -> Result<Response<Self::TapStream>, Status> {
        self.check_node(&req)?;
        let spec: crate::tap::Spec = from_payload(req.get_ref(), "tap")?;
        let duration =
            std::time::Duration::from_millis(spec.duration_ms).min(crate::tap::MAX_DURATION);
        let (tx, records) = tokio::sync::mpsc::channel(256);
        let local = crate::tap::open_local(&self.ops, &self.hub, &spec, tx).await;
        Ok(Response::new(crate::tap::relay(
            local,
            records,
            duration,
            crate::tap::MAX_RECORDS,
        )))
    }

    async fn node_info(
        &self,
        req: Request<NodeInfoRequest>,
    ) -> Result<Response<NodeInfoResponse>, Status> {
        if self.check_node(&req).is_err() {
            // A stranger learns nothing: no id, role, term, leader, index
            // or memory to plan an attack with.
            return Ok(Response::new(NodeInfoResponse::default()));
        }
        let m = self.ops.raft().metrics().borrow().clone();
        Ok(Response::new(NodeInfoResponse {
            id: self.ops.id(),
            rss_bytes: procinfo::rss_bytes(),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            state: crate::cluster::state_name(m.state).to_string(),
            unix_ms: procinfo::unix_ms(),
            term: m.current_term,
            leader: m.current_leader,
        }))
    }
}
