//! The Raft node as the rest of meshd sees it: the typed write path, reads
//! that are linearizable, membership, and how any node gets a request to
//! the leader.
//!
//! - [`ClusterOps::write`] proposes a command and answers its own response;
//!   [`ClusterOps::update`] is the one compare-and-set loop (read, decide,
//!   write with the revision read, retry on conflict).
//! - [`ClusterOps::read_barrier`] makes a follower's next read linearizable.
//! - Membership changes and leadership transfer live in `membership.rs`.
//!
//! A follower forwards a request to the node it believes leads; that node
//! executes it or answers "not leader" (never forwarding again), and the
//! follower retries as leadership settles, within a deadline. A write is
//! retried only when it certainly did not reach a leader, so no write is
//! applied twice (`leader.rs`).

mod batcher;
pub mod credential;
pub mod faults;
mod leader;
pub mod membership;
pub mod network;
mod update;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ServerState;
use raftmesh_storage::{Command, Response, StateReader};
use serde::{Deserialize, Serialize};

use crate::{NodeId, Raft};
use batcher::Batcher;
use network::ClientPool;

pub use leader::{AddNode, LeaderRequest, RemoveNode, TransferLeader, Write, LEADER_DEADLINE};
pub use membership::Control;
pub use update::{Change, UpdateError, Updated};

/// Why a cluster request failed. It travels between nodes (a forwarded
/// request's answer), so its details are messages, not sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClusterError {
    /// The node asked is not the leader.
    #[error("node {node} is not the leader (leader: {leader:?})")]
    NotLeader {
        /// The node that answered.
        node: NodeId,
        /// Who it thinks leads.
        leader: Option<NodeId>,
    },
    /// No leader could be reached before the deadline.
    #[error("no leader is available: the cluster may be electing one or may have lost its majority; retry in a moment")]
    NoLeader,
    /// The request makes no sense (unknown node, last voter, ...).
    #[error("{0}")]
    Invalid(String),
    /// The request reached a leader but its outcome is unknown.
    #[error("the outcome is unknown ({0}): the write may or may not have been applied; read the state before retrying")]
    Unknown(String),
    /// The leader cannot serve it now (lost quorum, ...).
    #[error("{0}")]
    Unavailable(String),
    /// This node is stopping.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Voters, learners and leader after a membership change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipView {
    /// Voting members.
    pub voters: Vec<NodeId>,
    /// Non-voting members.
    pub learners: Vec<NodeId>,
    /// The leader, if known.
    pub leader: Option<NodeId>,
}

/// A node's endpoint-lease report to the leader: the endpoints whose
/// proxies hold a discovery stream to it (see `discovery/leases.rs`).
#[derive(actix::Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct LeaseReport {
    /// The reporting node.
    pub node: NodeId,
    /// Endpoints (namespace, name) with a live stream there.
    pub endpoints: Vec<(String, String)>,
}

/// Leader requests of one node, and its view of the cluster.
pub struct ClusterOps {
    raft: Raft,
    writes: Batcher,
    id: NodeId,
    pool: ClientPool,
    reader: StateReader,
    transferring: AtomicBool,
    /// Bumped by every hold and resume, so a hold's timer only lifts its own hold.
    hold_generation: Arc<AtomicU64>,
    /// Test-only fault: serve "linearizable" reads without a read index.
    unsafe_local_reads: bool,
    /// Where lease reports go on this node once it leads (the lease keeper).
    leases: std::sync::OnceLock<actix::Recipient<LeaseReport>>,
    /// Seals and opens the workload CA key (`ca::seal`).
    kek: crate::ca::seal::Kek,
    /// Read barriers left for tokens this node does not know.
    token_lookups: crate::tokens::LookupBudget,
    /// The node's metrics.
    metrics: Arc<crate::metrics::NodeMetrics>,
    /// The node's traces (MeshConfig `tracing`, followed by `follow_tracing`).
    traces: raftmesh_client::otel::Traces,
    /// The taps open on this node's proxies (`meshctl tap`).
    taps: crate::tap::Taps,
}

impl ClusterOps {
    /// Leader requests for node `id`.
    pub fn new(
        raft: Raft,
        id: NodeId,
        pool: ClientPool,
        reader: StateReader,
        unsafe_local_reads: bool,
        kek: crate::ca::seal::Kek,
    ) -> Arc<Self> {
        let metrics = Arc::new(crate::metrics::NodeMetrics::new());
        Arc::new(Self {
            writes: Batcher::start(raft.clone(), metrics.clone()),
            metrics,
            traces: raftmesh_client::otel::Traces::new("meshd", "", &format!("node-{id}")),
            taps: crate::tap::Taps::default(),
            raft,
            id,
            pool,
            reader,
            transferring: AtomicBool::new(false),
            hold_generation: Arc::new(AtomicU64::new(0)),
            unsafe_local_reads,
            leases: std::sync::OnceLock::new(),
            kek,
            token_lookups: crate::tokens::LookupBudget::default(),
        })
    }

    /// Every other member of the cluster (voters and learners).
    pub fn peers(&self) -> Vec<NodeId> {
        let view = self.membership_view();
        view.voters
            .iter()
            .chain(view.learners.iter())
            .copied()
            .filter(|id| *id != self.id)
            .collect()
    }

    /// The taps open on this node's proxies.
    pub fn taps(&self) -> &crate::tap::Taps {
        &self.taps
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::NodeMetrics> {
        &self.metrics
    }

    /// The node's traces.
    pub fn traces(&self) -> &raftmesh_client::otel::Traces {
        &self.traces
    }

    /// Keeps the node's traces in line with the committed MeshConfig
    /// `tracing` until `stop` turns true (the node shuts down).
    pub async fn follow_tracing(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut applied = self.reader.watch_applied();
        loop {
            let settings = crate::meshconfig::mesh_config(&self.reader).and_then(|m| m.tracing);
            self.traces.configure(settings.as_ref());
            tokio::select! {
                r = applied.changed() => if r.is_err() { break },
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.traces.configure(None);
    }

    /// The budget of read barriers for unknown tokens.
    pub fn token_lookups(&self) -> &crate::tokens::LookupBudget {
        &self.token_lookups
    }

    /// The key-encryption key of the workload CA key.
    pub fn kek(&self) -> &crate::ca::seal::Kek {
        &self.kek
    }

    /// Delivers lease reports that reach this node (as leader) to `to`.
    pub fn set_lease_sink(&self, to: actix::Recipient<LeaseReport>) {
        let _ = self.leases.set(to);
    }

    /// The clients to other nodes.
    pub fn pool(&self) -> &ClientPool {
        &self.pool
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The applied state.
    pub fn reader(&self) -> &StateReader {
        &self.reader
    }

    /// The address of member `id`, from the current membership.
    pub fn addr_of(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&id).map(|n| n.addr.clone())
    }

    /// The current leader, as this node sees it.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Proposes `cmd` through the leader and answers its own response.
    pub async fn write(&self, cmd: Command) -> Result<Response, ClusterError> {
        let started = std::time::Instant::now();
        let span = self.traces.child("raft write");
        let r = self.submit(leader::Write(cmd)).await;
        self.metrics.write(r.is_ok(), started.elapsed());
        if let Some(s) = &span {
            match &r {
                Ok(resp) => s.set(vec![
                    opentelemetry::KeyValue::new("raftmesh.revision", resp.revision as i64),
                    opentelemetry::KeyValue::new("raftmesh.node", self.id as i64),
                ]),
                Err(e) => s.fail(e.to_string()),
            }
        }
        r
    }

    /// Hands a lease report to the leader's lease keeper.
    pub async fn report_leases(&self, report: LeaseReport) -> Result<(), ClusterError> {
        self.submit(report).await
    }

    /// Waits until this node can serve a linearizable read, and returns the
    /// revision the read reflects at least.
    pub async fn read_barrier(&self) -> Result<u64, ClusterError> {
        if self.unsafe_local_reads {
            return Ok(self.reader.applied_revision());
        }
        let index = self.submit(leader::ReadIndex).await?;
        self.wait_applied(index, Duration::from_secs(5)).await?;
        Ok(index)
    }

    /// Waits until this node has applied `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ClusterError> {
        let mut rx = self.reader.watch_applied();
        let wait = async {
            loop {
                if *rx.borrow_and_update() >= index {
                    return Ok(());
                }
                if rx.changed().await.is_err() {
                    return Err(ClusterError::ShuttingDown);
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            ClusterError::Unavailable(format!(
                "node {} has not applied revision {index} within {timeout:?}; it may be cut off from the leader",
                self.id
            ))
        })?
    }

    /// This node's Raft role, as a word.
    pub fn state_name(&self) -> &'static str {
        state_name(self.raft.metrics().borrow().state)
    }

    /// Proposes a command on this node, which must lead.
    async fn write_local(&self, cmd: Command) -> Result<Response, ClusterError> {
        if self.transferring.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(self.not_leader(None));
        }
        self.writes.write(cmd).await.map_err(|e| self.write_err(e))
    }

    /// The read index, confirmed with a quorum, on this node, which must lead.
    async fn read_index_local(&self) -> Result<u64, ClusterError> {
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(self.not_leader(f.leader_id))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => Err(
                ClusterError::Unavailable(format!("the leader cannot reach a majority: {e}")),
            ),
            Err(RaftError::Fatal(e)) => Err(fatal(e)),
        }
    }

    /// Delivers a lease report on this node, which must lead.
    fn leases_local(&self, report: LeaseReport) -> Result<(), ClusterError> {
        self.check_leader()?;
        if let Some(k) = self.leases.get() {
            k.do_send(report);
        }
        Ok(())
    }

    fn not_leader(&self, leader: Option<NodeId>) -> ClusterError {
        ClusterError::NotLeader {
            node: self.id,
            leader,
        }
    }

    fn check_leader(&self) -> Result<(), ClusterError> {
        match self.leader() {
            Some(l) if l == self.id => Ok(()),
            other => Err(self.not_leader(other)),
        }
    }

    /// openraft's answer to a write or membership change, as a cluster error.
    fn write_err(
        &self,
        e: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>,
    ) -> ClusterError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                self.not_leader(f.leader_id)
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ClusterError::Invalid(e.to_string())
            }
            RaftError::Fatal(e) => fatal(e),
        }
    }
}

/// A Raft role as a word for status output.
pub fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn fatal(e: openraft::error::Fatal<NodeId>) -> ClusterError {
    match e {
        openraft::error::Fatal::Stopped => ClusterError::ShuttingDown,
        other => ClusterError::Unavailable(format!("raft stopped: {other}")),
    }
}
