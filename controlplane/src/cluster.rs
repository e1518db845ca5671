//! Requests only the leader can serve — writes, membership changes, read
//! indexes — and how any node gets them to the leader.
//!
//! A follower forwards to the node it believes leads; that node executes or
//! answers "not leader" (never forwarding again), and the follower retries
//! as leadership settles, within a deadline. A write is retried only when
//! it certainly did not reach a leader, so no write is applied twice.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use raftmesh_storage::{Command, Response, StateReader};
use serde::{Deserialize, Serialize};

use crate::network::{from_payload, never_sent, to_payload, ClientPool};
use crate::{NodeId, Raft};

/// A request the leader must serve.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum LeaderRequest {
    /// Propose a command.
    Write(Command),
    /// Confirm leadership with a quorum and return the index a
    /// linearizable read must wait for.
    ReadIndex,
    /// Add a node: as a learner, then (unless `learner_only`) promote it to
    /// voter once it has caught up.
    AddNode {
        /// The new node's id.
        id: NodeId,
        /// Its address.
        addr: String,
        /// Stop after adding it as a learner.
        learner_only: bool,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        /// Which node.
        id: NodeId,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        /// The voter to lead.
        id: NodeId,
    },
    /// The endpoints whose proxies hold a stream to a node (health leases).
    LeaseReport(crate::discovery::leases::LeaseReport),
}

impl LeaderRequest {
    fn is_write(&self) -> bool {
        matches!(self, LeaderRequest::Write(_))
    }
}

/// The leader's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderResponse {
    /// The applied command's response.
    Written(Response),
    /// The read index.
    ReadIndex(u64),
    /// Membership after the change.
    Membership(MembershipView),
    /// Done, nothing to report.
    Done,
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

/// Why a leader request failed.
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

/// Node-local control messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Control {
    /// Do not start elections for this long (others are being handed
    /// leadership).
    HoldElections {
        /// Milliseconds.
        ms: u64,
    },
    /// Start elections normally again.
    Resume,
    /// Start an election now.
    Elect,
}

/// How long a request may look for a leader.
pub const LEADER_DEADLINE: Duration = Duration::from_secs(10);

/// Leader requests of one node.
pub struct ClusterOps {
    raft: Raft,
    writes: crate::batcher::Batcher,
    id: NodeId,
    pool: ClientPool,
    reader: StateReader,
    transferring: AtomicBool,
    /// Bumped by every hold and resume, so a hold's timer only lifts its own hold.
    hold_generation: Arc<AtomicU64>,
    /// Test-only fault: serve "linearizable" reads without a read index.
    unsafe_local_reads: bool,
    /// This node's lease keeper, once started.
    leases: std::sync::OnceLock<actix::Addr<crate::discovery::leases::LeaseKeeper>>,
}

impl ClusterOps {
    /// Leader requests for node `id`.
    pub fn new(
        raft: Raft,
        id: NodeId,
        pool: ClientPool,
        reader: StateReader,
        unsafe_local_reads: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            writes: crate::batcher::Batcher::start(raft.clone()),
            raft,
            id,
            pool,
            reader,
            transferring: AtomicBool::new(false),
            hold_generation: Arc::new(AtomicU64::new(0)),
            unsafe_local_reads,
            leases: std::sync::OnceLock::new(),
        })
    }

    /// Connects lease reports to this node's lease keeper.
    pub fn set_lease_keeper(&self, addr: actix::Addr<crate::discovery::leases::LeaseKeeper>) {
        let _ = self.leases.set(addr);
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

    /// The address of member `id`, from the current membership.
    pub fn addr_of(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&id).map(|n| n.addr.clone())
    }

    /// The current leader, as this node sees it.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Routes a request to the leader and returns its answer.
    pub async fn submit(&self, req: LeaderRequest) -> Result<LeaderResponse, ClusterError> {
        let deadline = Instant::now() + LEADER_DEADLINE;
        let mut metrics = self.raft.metrics();
        let mut last_err = ClusterError::NoLeader;
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            match leader {
                Some(l) if l == self.id => match self.execute_local(req.clone()).await {
                    Err(e @ ClusterError::NotLeader { .. }) => last_err = e,
                    other => return other,
                },
                Some(l) => match self.forward(l, &req).await {
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

    async fn forward(
        &self,
        leader: NodeId,
        req: &LeaderRequest,
    ) -> Result<LeaderResponse, Forwarded> {
        let addr = self
            .addr_of(leader)
            .ok_or(Forwarded::Retry(ClusterError::NoLeader))?;
        let mut client = self.pool.get(&addr).map_err(|e| {
            Forwarded::Final(ClusterError::Unavailable(format!(
                "bad leader address {addr}: {e}"
            )))
        })?;
        let payload =
            to_payload(req).map_err(|e| Forwarded::Final(ClusterError::Invalid(e.to_string())))?;
        let mut request = tonic::Request::new(payload);
        request.set_timeout(LEADER_DEADLINE);
        match client.forward(request).await {
            Ok(reply) => {
                let r: Result<LeaderResponse, ClusterError> =
                    from_payload(reply.get_ref(), "leader response").map_err(|s| {
                        Forwarded::Final(ClusterError::Unknown(s.message().to_string()))
                    })?;
                r.map_err(|e| match e {
                    // Refused before anything was proposed: safe to retry.
                    ClusterError::NotLeader { .. } | ClusterError::NoLeader => Forwarded::Retry(e),
                    other => Forwarded::Final(other),
                })
            }
            Err(status) if never_sent(&status) || !req.is_write() => {
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

    /// Serves a request on this node if it leads; never forwards.
    pub async fn execute_local(&self, req: LeaderRequest) -> Result<LeaderResponse, ClusterError> {
        match req {
            LeaderRequest::Write(cmd) => {
                if self.transferring.load(Ordering::SeqCst) {
                    return Err(self.not_leader(None));
                }
                match self.writes.write(cmd).await {
                    Ok(r) => Ok(LeaderResponse::Written(r)),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        Err(self.not_leader(f.leader_id))
                    }
                    Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                        Err(ClusterError::Invalid(e.to_string()))
                    }
                    Err(RaftError::Fatal(e)) => Err(fatal(e)),
                }
            }
            LeaderRequest::ReadIndex => match self.raft.get_read_log_id().await {
                Ok((read, _applied)) => Ok(LeaderResponse::ReadIndex(
                    read.map(|l| l.index).unwrap_or(0),
                )),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    Err(self.not_leader(f.leader_id))
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => Err(
                    ClusterError::Unavailable(format!("the leader cannot reach a majority: {e}")),
                ),
                Err(RaftError::Fatal(e)) => Err(fatal(e)),
            },
            LeaderRequest::AddNode {
                id,
                addr,
                learner_only,
            } => self.add_node(id, addr, learner_only).await,
            LeaderRequest::RemoveNode { id } => self.remove_node(id).await,
            LeaderRequest::TransferLeader { id } => self.transfer_leader(id).await,
            LeaderRequest::LeaseReport(r) => {
                self.check_leader()?;
                if let Some(k) = self.leases.get() {
                    k.do_send(r);
                }
                Ok(LeaderResponse::Done)
            }
        }
    }

    fn not_leader(&self, leader: Option<NodeId>) -> ClusterError {
        ClusterError::NotLeader {
            node: self.id,
            leader,
        }
    }

    /// Membership as this node sees it now.
    pub fn membership_view(&self) -> MembershipView {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        MembershipView {
            voters: voters.iter().copied().collect(),
            learners: membership.learner_ids().collect(),
            leader: m.current_leader,
        }
    }

    fn check_leader(&self) -> Result<(), ClusterError> {
        match self.leader() {
            Some(l) if l == self.id => Ok(()),
            other => Err(self.not_leader(other)),
        }
    }

    async fn add_node(
        &self,
        id: NodeId,
        addr: String,
        learner_only: bool,
    ) -> Result<LeaderResponse, ClusterError> {
        self.check_leader()?;
        let view = self.membership_view();
        if view.voters.contains(&id) {
            if self.addr_of(id).as_deref() == Some(addr.as_str()) {
                return Ok(LeaderResponse::Membership(view));
            }
            return Err(ClusterError::Invalid(format!(
                "node {id} is already a voter at another address; remove it first"
            )));
        }
        tracing::info!(node = id, %addr, "adding a learner");
        self.raft
            .add_learner(id, BasicNode { addr }, true)
            .await
            .map_err(|e| self.membership_err(e))?;
        if !learner_only {
            tracing::info!(node = id, "promoting the learner to voter");
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(|e| self.membership_err(e))?;
        }
        Ok(LeaderResponse::Membership(self.membership_view()))
    }

    async fn remove_node(&self, id: NodeId) -> Result<LeaderResponse, ClusterError> {
        self.check_leader()?;
        let view = self.membership_view();
        let change = if view.voters.contains(&id) {
            if view.voters.len() == 1 {
                return Err(ClusterError::Invalid(format!(
                    "node {id} is the last voter; a cluster needs one"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if view.learners.contains(&id) {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(ClusterError::Invalid(format!(
                "node {id} is not a member (voters {:?}, learners {:?})",
                view.voters, view.learners
            )));
        };
        tracing::info!(node = id, "removing a member");
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| self.membership_err(e))?;
        Ok(LeaderResponse::Membership(self.membership_view()))
    }

    fn membership_err(
        &self,
        e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
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

    /// openraft 0.9 has no leadership transfer, so: make sure the target has
    /// the whole log, stop the other voters (and this leader) from starting
    /// elections, stop heartbeats so their leader leases lapse, and ask the
    /// target to stand. It then wins the next election. Writes are refused
    /// here meanwhile (they would renew the leases).
    async fn transfer_leader(&self, target: NodeId) -> Result<LeaderResponse, ClusterError> {
        self.check_leader()?;
        let view = self.membership_view();
        if target == self.id {
            return Ok(LeaderResponse::Membership(view));
        }
        if !view.voters.contains(&target) {
            return Err(ClusterError::Invalid(format!(
                "node {target} is not a voter (voters {:?})",
                view.voters
            )));
        }
        if self.transferring.swap(true, Ordering::SeqCst) {
            return Err(ClusterError::Unavailable(
                "a leadership transfer is already under way".into(),
            ));
        }
        let result = self.do_transfer(target, &view.voters).await;
        self.raft.runtime_config().heartbeat(true);
        self.raft.runtime_config().elect(true);
        for v in view.voters.iter().filter(|v| **v != self.id) {
            let _ = self.control(*v, &Control::Resume).await;
        }
        self.transferring.store(false, Ordering::SeqCst);
        result
    }

    async fn do_transfer(
        &self,
        target: NodeId,
        voters: &[NodeId],
    ) -> Result<LeaderResponse, ClusterError> {
        // 1. The target must hold the whole log.
        let caught_up = async {
            let mut rx = self.raft.metrics();
            loop {
                let m = rx.borrow_and_update().clone();
                let last = m.last_log_index;
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&target).cloned().flatten())
                    .map(|l| l.index);
                if last.is_some() && matched >= last {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), caught_up)
            .await
            .map_err(|_| {
                ClusterError::Unavailable(format!(
                    "node {target} did not catch up with the log within 5s"
                ))
            })?;

        // 2. Nobody but the target may stand; leases lapse without heartbeats.
        let hold = Control::HoldElections { ms: 5_000 };
        for v in voters.iter().filter(|v| **v != self.id && **v != target) {
            self.control(*v, &hold)
                .await
                .map_err(ClusterError::Unavailable)?;
        }
        self.raft.runtime_config().elect(false);
        self.raft.runtime_config().heartbeat(false);
        self.control(target, &Control::Elect)
            .await
            .map_err(ClusterError::Unavailable)?;

        // 3. Wait for the target to lead.
        let mut rx = self.raft.metrics();
        let won = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if rx.borrow_and_update().current_leader == Some(target) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match won {
            Ok(true) => Ok(LeaderResponse::Membership(self.membership_view())),
            _ => Err(ClusterError::Unavailable(format!(
                "node {target} did not become leader within 5s; leadership is unchanged or with another node"
            ))),
        }
    }

    async fn control(&self, node: NodeId, msg: &Control) -> Result<(), String> {
        let addr = self
            .addr_of(node)
            .ok_or_else(|| format!("node {node} has no address"))?;
        let mut client = self.pool.get(&addr).map_err(|e| e.to_string())?;
        let payload = to_payload(msg).map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(payload);
        req.set_timeout(Duration::from_secs(2));
        client
            .control(req)
            .await
            .map(|_| ())
            .map_err(|s| format!("node {node} at {addr}: {}", s.message()))
    }

    /// Applies a control message to this node.
    pub async fn handle_control(&self, msg: Control) -> Result<(), ClusterError> {
        match msg {
            Control::HoldElections { ms } => {
                let generation = self.hold_generation.fetch_add(1, Ordering::SeqCst) + 1;
                self.raft.runtime_config().elect(false);
                let raft = self.raft.clone();
                let hold_generation = self.hold_generation.clone();
                // Bounded: if the leader never sends Resume, elections
                // come back on their own.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    if hold_generation.load(Ordering::SeqCst) == generation {
                        raft.runtime_config().elect(true);
                    }
                });
            }
            Control::Resume => {
                self.hold_generation.fetch_add(1, Ordering::SeqCst);
                self.raft.runtime_config().elect(true);
            }
            Control::Elect => {
                self.raft.trigger().elect().await.map_err(fatal)?;
            }
        }
        Ok(())
    }

    /// Waits until this node can serve a linearizable read, and returns the
    /// revision the read reflects at least.
    pub async fn read_barrier(&self) -> Result<u64, ClusterError> {
        if self.unsafe_local_reads {
            return Ok(self.reader.applied_revision());
        }
        let index = match self.submit(LeaderRequest::ReadIndex).await? {
            LeaderResponse::ReadIndex(i) => i,
            other => {
                return Err(ClusterError::Unknown(format!(
                    "unexpected answer {other:?}"
                )))
            }
        };
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

enum Forwarded {
    Retry(ClusterError),
    Final(ClusterError),
}
