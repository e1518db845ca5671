//! Getting a request to the leader. Each kind of request is a type with
//! its own reply type ([`LeaderCall`]); on the wire between nodes it
//! travels as one [`LeaderRequest`] and comes back as
//! `Result<Reply, ClusterError>`, so the caller decodes exactly the answer
//! it asked for.
//!
//! The JSON on the wire is the shape earlier versions of meshd speak
//! (`{"Write": …}`, `"ReadIndex"`; replies `{"Ok": {"Written": …}}`,
//! `{"Ok": "Done"}`), so a rolling upgrade can forward between old and new
//! nodes (docs/operations.md, "Upgrade"); a test pins it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use raftmesh_api::v1::RaftPayload;
use raftmesh_storage::{Command, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::network::{from_payload, to_payload, RaftRpcClient};
use super::{ClusterError, ClusterOps, LeaseReport, MembershipView};
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

/// Add a node: as a learner, then (unless `learner_only`) promote it to
/// voter once it has caught up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddNode {
    /// The new node's id.
    pub id: NodeId,
    /// Its address.
    pub addr: String,
    /// Stop after adding it as a learner.
    pub learner_only: bool,
}

/// Remove a node from the cluster.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RemoveNode {
    /// Which node.
    pub id: NodeId,
}

/// Hand leadership to another voter.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TransferLeader {
    /// The voter to lead.
    pub id: NodeId,
}

/// A request only the leader serves, as it travels between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum LeaderRequest {
    /// [`Write`].
    Write(Write),
    /// [`ReadIndex`] (a unit variant on the wire).
    ReadIndex,
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
    /// The reply's name on the wire (`Done` for `()`).
    const REPLY: &'static str;
    /// A write may not be sent again once it may have reached a leader.
    const WRITE: bool;
    /// Serves the request on this node, which must lead (never forwards).
    fn serve_local(
        self,
        ops: &ClusterOps,
    ) -> impl Future<Output = Result<Self::Reply, ClusterError>> + Send;
}

macro_rules! leader_call {
    ($t:ident, $reply:ty, $tag:literal, $write:expr, |$c:ident, $ops:ident| $body:expr) => {
        impl LeaderCall for $t {
            type Reply = $reply;
            const REPLY: &'static str = $tag;
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

leader_call!(Write, Response, "Written", true, |c, ops| ops
    .write_local(c.0)
    .await);
leader_call!(ReadIndex, u64, "ReadIndex", false, |_c, ops| ops
    .read_index_local()
    .await);
leader_call!(AddNode, MembershipView, "Membership", false, |c, ops| ops
    .add_node_local(c)
    .await);
leader_call!(RemoveNode, MembershipView, "Membership", false, |c, ops| {
    ops.remove_node_local(c.id).await
});
leader_call!(
    TransferLeader,
    MembershipView,
    "Membership",
    false,
    |c, ops| ops.transfer_leader_local(c.id).await
);
leader_call!(LeaseReport, (), "Done", false, |c, ops| ops.leases_local(c));

macro_rules! into_request {
    ($($t:ident),*) => {
        $(impl From<$t> for LeaderRequest {
            fn from(c: $t) -> Self {
                LeaderRequest::$t(c)
            }
        })*
    };
}
into_request!(Write, AddNode, RemoveNode, TransferLeader, LeaseReport);

impl From<ReadIndex> for LeaderRequest {
    fn from(_: ReadIndex) -> Self {
        LeaderRequest::ReadIndex
    }
}

/// A reply as earlier versions put it on the wire: `{"Ok": {"<REPLY>": v}}`
/// (`{"Ok": "<REPLY>"}` when `v` is `()`), or `{"Err": e}`.
fn encode<C: LeaderCall>(
    r: &Result<C::Reply, ClusterError>,
) -> Result<RaftPayload, serde_json::Error> {
    let one = |k: &str, v: Value| Value::Object([(k.to_string(), v)].into_iter().collect());
    let v = match r {
        Ok(reply) => {
            let inner = serde_json::to_value(reply)?;
            let tagged = if inner.is_null() {
                Value::String(C::REPLY.into())
            } else {
                one(C::REPLY, inner)
            };
            one("Ok", tagged)
        }
        Err(e) => one("Err", serde_json::to_value(e)?),
    };
    to_payload(&v)
}

/// Reads a reply [`encode`] wrote; one of another kind is refused.
fn decode<C: LeaderCall>(p: &RaftPayload) -> Result<Result<C::Reply, ClusterError>, tonic::Status> {
    let malformed =
        |why: String| tonic::Status::invalid_argument(format!("malformed leader response: {why}"));
    let tagged = match from_payload::<Result<Value, ClusterError>>(p, "leader response")? {
        Err(e) => return Ok(Err(e)),
        Ok(v) => v,
    };
    let inner = match tagged {
        Value::String(s) if s == C::REPLY => Value::Null,
        Value::Object(mut m) if m.len() == 1 => m
            .remove(C::REPLY)
            .ok_or_else(|| malformed(format!("expected {}", C::REPLY)))?,
        other => return Err(malformed(format!("expected {}, got {other}", C::REPLY))),
    };
    serde_json::from_value(inner)
        .map(Ok)
        .map_err(|e| malformed(e.to_string()))
}

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
    decode::<C>(reply.get_ref())
}

enum Forwarded {
    Retry(ClusterError),
    Final(ClusterError),
}

/// Applies `$f` to the typed call inside a [`LeaderRequest`].
macro_rules! dispatch {
    ($req:expr, |$c:ident| $body:expr) => {
        match $req {
            LeaderRequest::Write($c) => encode::<Write>(&$body),
            LeaderRequest::ReadIndex => {
                let $c = ReadIndex;
                encode::<ReadIndex>(&$body)
            }
            LeaderRequest::AddNode($c) => encode::<AddNode>(&$body),
            LeaderRequest::RemoveNode($c) => encode::<RemoveNode>(&$body),
            LeaderRequest::TransferLeader($c) => encode::<TransferLeader>(&$body),
            LeaderRequest::LeaseReport($c) => encode::<LeaseReport>(&$body),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload as JSON, to compare with what earlier versions send
    /// (field order aside).
    fn json(p: &RaftPayload) -> Value {
        serde_json::from_slice(&p.json).unwrap()
    }

    fn was(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn requests_and_replies_keep_the_wire_shape_of_earlier_versions() {
        let req = |r: LeaderRequest| serde_json::to_string(&r).unwrap();
        assert_eq!(req(ReadIndex.into()), r#""ReadIndex""#);
        assert_eq!(
            req(RemoveNode { id: 3 }.into()),
            r#"{"RemoveNode":{"id":3}}"#
        );
        assert_eq!(
            req(AddNode {
                id: 4,
                addr: "a:1".into(),
                learner_only: false
            }
            .into()),
            r#"{"AddNode":{"id":4,"addr":"a:1","learner_only":false}}"#
        );
        assert!(req(Write(Command::Group(vec![])).into()).starts_with(r#"{"Write":"#));

        let p = encode::<ReadIndex>(&Ok(7)).unwrap();
        assert_eq!(json(&p), was(r#"{"Ok":{"ReadIndex":7}}"#));
        assert_eq!(decode::<ReadIndex>(&p).unwrap(), Ok(7));
        let p = encode::<LeaseReport>(&Ok(())).unwrap();
        assert_eq!(json(&p), was(r#"{"Ok":"Done"}"#));
        assert_eq!(decode::<LeaseReport>(&p).unwrap(), Ok(()));
        let p = encode::<RemoveNode>(&Err(ClusterError::NoLeader)).unwrap();
        assert_eq!(json(&p), was(r#"{"Err":"NoLeader"}"#));
        assert_eq!(
            decode::<RemoveNode>(&p).unwrap(),
            Err(ClusterError::NoLeader)
        );
        let view = MembershipView {
            voters: vec![1, 2],
            learners: vec![],
            leader: Some(1),
        };
        let p = encode::<TransferLeader>(&Ok(view.clone())).unwrap();
        assert_eq!(
            json(&p),
            was(r#"{"Ok":{"Membership":{"voters":[1,2],"learners":[],"leader":1}}}"#)
        );
        assert_eq!(decode::<AddNode>(&p).unwrap(), Ok(view));
    }

    #[test]
    fn a_reply_of_another_kind_is_refused_not_misread() {
        let p = encode::<ReadIndex>(&Ok(7)).unwrap();
        let e = decode::<TransferLeader>(&p).unwrap_err();
        assert!(e.message().contains("expected Membership"), "{e}");
        let p = encode::<LeaseReport>(&Ok(())).unwrap();
        assert!(decode::<ReadIndex>(&p).is_err());
    }
}
