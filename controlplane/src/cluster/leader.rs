//! Getting a request to the leader. Each kind of request is a type with
//! its own reply type ([`LeaderCall`]); on the wire between nodes it
//! travels as one [`LeaderRequest`] and comes back as
//! `Result<Reply, ClusterError>`, so the caller decodes exactly the answer
//! it asked for.

use std::future::Future;
use std::time::{Duration, Instant};

use raftmesh_api::v1::RaftPayload;
use raftmesh_storage::{Command, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::membership::{AddNode, MembershipView, RemoveNode, TransferLeader};
use super::network::{from_payload, to_payload, RaftRpcClient};
use super::{ClusterError, ClusterOps, LeaseReport};
use crate::NodeId;

/// How long a request may look for a leader.
pub const LEADER_DEADLINE: Duration = Duration::from_secs(10);

/// Propose a command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Write(pub Command);

/// Confirm leadership with a quorum; the reply is the index a linearizable
/// read must wait for.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ReadIndex;

/// A request only the leader serves, as it travels between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum LeaderRequest {
    /// [`Write`].
    Write(Write),
    /// [`ReadIndex`].
    ReadIndex(ReadIndex),
    /// [`AddNode`].
    AddNode(AddNode),
    /// [`RemoveNode`].
    RemoveNode(RemoveNode),
    /// [`TransferLeader`].
    TransferLeader(TransferLeader),
    /// [`LeaseReport`].
    LeaseReport(LeaseReport),
}

/// One kind of leader request and its answer.
pub(crate) trait LeaderCall: Clone + Into<LeaderRequest> + Send + Sync {
    /// What the leader answers.
    type Reply: Serialize + DeserializeOwned + Send;
    /// A write may not be sent again once it may have reached a leader.
    const WRITE: bool;
    /// Serves the request on this node, which must lead (never forwards).
    fn serve_local(
        self,
        ops: &ClusterOps,
    ) -> impl Future<Output = Result<Self::Reply, ClusterError>> + Send;
}

macro_rules! leader_call {
    ($t:ident, $reply:ty, $write:expr, |$c:ident, $ops:ident| $body:expr) => {
        impl From<$t> for LeaderRequest {
            fn from(c: $t) -> Self {
                LeaderRequest::$t(c)
            }
        }
        impl LeaderCall for $t {
            type Reply = $reply;
            const WRITE: bool = $write;
            #[allow(clippy::manual_async_fn)]
            fn serve_local(
                self,
                $ops: &ClusterOps,
            ) -> impl Future<Output = Result<$reply, ClusterError>> + Send {
                let $c = self;
                async move { $body }
            }
        }
    };
}

leader_call!(Write, Response, true, |c, ops| ops.write_local(c.0).await);
leader_call!(ReadIndex, u64, false, |_c, ops| ops
    .read_index_local()
    .await);
leader_call!(AddNode, MembershipView, false, |c, ops| ops
    .add_node_local(c)
    .await);
leader_call!(RemoveNode, MembershipView, false, |c, ops| ops
    .remove_node_local(c.id)
    .await);
leader_call!(TransferLeader, MembershipView, false, |c, ops| ops
    .transfer_leader_local(c.id)
    .await);
leader_call!(LeaseReport, (), false, |c, ops| ops.leases_local(c));

/// Which node-to-node RPC carries a leader request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Via {
    /// To the leader itself, which serves it or says "not leader".
    Forward,
    /// To any node, which submits it as its own (used to join).
    Relay,
}

/// Sends `call` to another node and decodes its typed answer; the outer
/// error is the transport's.
pub(crate) async fn call_remote<C: LeaderCall>(
    mut client: RaftRpcClient,
    via: Via,
    call: &C,
    timeout: Duration,
) -> Result<Result<C::Reply, ClusterError>, tonic::Status> {
    let payload = to_payload(&Into::<LeaderRequest>::into(call.clone()))
        .map_err(|e| tonic::Status::internal(format!("encoding a leader request: {e}")))?;
    let mut request = tonic::Request::new(payload);
    request.set_timeout(timeout);
    let reply = match via {
        Via::Forward => client.forward(request).await?,
        Via::Relay => client.relay(request).await?,
    };
    from_payload(reply.get_ref(), "leader response")
}

enum Forwarded {
    Retry(ClusterError),
    Final(ClusterError),
}

fn encode<T: Serialize>(v: &Result<T, ClusterError>) -> Result<RaftPayload, serde_json::Error> {
    to_payload(v)
}

/// Applies `$f` to the typed call inside a [`LeaderRequest`].
macro_rules! dispatch {
    ($req:expr, |$c:ident| $body:expr) => {
        match $req {
            LeaderRequest::Write($c) => encode(&$body),
            LeaderRequest::ReadIndex($c) => encode(&$body),
            LeaderRequest::AddNode($c) => encode(&$body),
            LeaderRequest::RemoveNode($c) => encode(&$body),
            LeaderRequest::TransferLeader($c) => encode(&$body),
            LeaderRequest::LeaseReport($c) => encode(&$body),
        }
    };
}

impl ClusterOps {
    /// Routes a request to the leader and returns its answer.
    pub(crate) async fn submit<C: LeaderCall>(&self, call: C) -> Result<C::Reply, ClusterError> {
        let deadline = Instant::now() + LEADER_DEADLINE;
        let mut metrics = self.raft.metrics();
        let mut last_err = ClusterError::NoLeader;
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            match leader {
                Some(l) if l == self.id => match call.clone().serve_local(self).await {
                    Err(e @ ClusterError::NotLeader { .. }) => last_err = e,
                    other => return other,
                },
                Some(l) => match self.forward(l, &call).await {
                    Ok(r) => return Ok(r),
                    Err(Forwarded::Retry(e)) => last_err = e,
                    Err(Forwarded::Final(e)) => return Err(e),
                },
                None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(match last_err {
                    ClusterError::NotLeader { .. } => ClusterError::NoLeader,
                    e => e,
                });
            }
            // Wait for leadership news, but not forever: a forwarded request
            // may have failed for reasons metrics never reflect.
            let wait = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(wait, metrics.changed()).await;
        }
    }

    async fn forward<C: LeaderCall>(
        &self,
        leader: NodeId,
        call: &C,
    ) -> Result<C::Reply, Forwarded> {
        let addr = self
            .addr_of(leader)
            .ok_or(Forwarded::Retry(ClusterError::NoLeader))?;
        let client = self.pool.get(&addr).map_err(|e| {
            Forwarded::Final(ClusterError::Unavailable(format!(
                "bad leader address {addr}: {e}"
            )))
        })?;
        match call_remote(client, Via::Forward, call, LEADER_DEADLINE).await {
            Ok(r) => r.map_err(|e| match e {
                // Refused before anything was proposed: safe to retry.
                ClusterError::NotLeader { .. } | ClusterError::NoLeader => Forwarded::Retry(e),
                other => Forwarded::Final(other),
            }),
            Err(status) if raftmesh_client::never_sent(&status) || !C::WRITE => {
                Err(Forwarded::Retry(ClusterError::Unavailable(format!(
                    "leader {leader} at {addr}: {}",
                    status.message()
                ))))
            }
            Err(status) => Err(Forwarded::Final(ClusterError::Unknown(format!(
                "forwarding to leader {leader} at {addr} failed: {}",
                status.message()
            )))),
        }
    }

    /// Serves a request another node forwarded here as to the leader
    /// (never forwarding it again); answers the encoded reply.
    pub async fn serve_forwarded(
        &self,
        req: LeaderRequest,
    ) -> Result<RaftPayload, serde_json::Error> {
        dispatch!(req, |c| c.serve_local(self).await)
    }

    /// Submits a request another node relayed here, as this node's own.
    pub async fn serve_relayed(
        &self,
        req: LeaderRequest,
    ) -> Result<RaftPayload, serde_json::Error> {
        dispatch!(req, |c| self.submit(c).await)
    }
}
