//! Membership: adding and removing nodes, handing leadership to another
//! voter, and a new node joining an existing cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::leader::{call_remote, AddNode, RemoveNode, TransferLeader, Via};
use super::network::{to_payload, ClientPool};
use super::{fatal, ClusterError, ClusterOps, MembershipView};
use crate::NodeId;

/// Node-local control messages (leadership transfer).
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

impl ClusterOps {
    /// Adds node `id` at `addr` (a learner first; a voter once caught up
    /// unless `learner_only`).
    pub async fn add_node(
        &self,
        id: NodeId,
        addr: String,
        learner_only: bool,
    ) -> Result<MembershipView, ClusterError> {
        self.submit(AddNode {
            id,
            addr,
            learner_only,
        })
        .await
    }

    /// Removes node `id`.
    pub async fn remove_node(&self, id: NodeId) -> Result<MembershipView, ClusterError> {
        self.submit(RemoveNode { id }).await
    }

    /// Hands leadership to voter `id`.
    pub async fn transfer_leader(&self, id: NodeId) -> Result<MembershipView, ClusterError> {
        self.submit(TransferLeader { id }).await
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

    pub(super) async fn add_node_local(
        &self,
        req: AddNode,
    ) -> Result<MembershipView, ClusterError> {
        let AddNode {
            id,
            addr,
            learner_only,
        } = req;
        self.check_leader()?;
        let view = self.membership_view();
        if view.voters.contains(&id) {
            if self.addr_of(id).as_deref() == Some(addr.as_str()) {
                return Ok(view);
            }
            return Err(ClusterError::Invalid(format!(
                "node {id} is already a voter at another address; remove it first"
            )));
        }
        tracing::info!(node = id, %addr, "adding a learner");
        self.raft
            .add_learner(id, BasicNode { addr }, true)
            .await
            .map_err(|e| self.write_err(e))?;
        if !learner_only {
            tracing::info!(node = id, "promoting the learner to voter");
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(|e| self.write_err(e))?;
        }
        Ok(self.membership_view())
    }

    pub(super) async fn remove_node_local(
        &self,
        id: NodeId,
    ) -> Result<MembershipView, ClusterError> {
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
            .map_err(|e| self.write_err(e))?;
        Ok(self.membership_view())
    }

    /// openraft 0.9 has no leadership transfer, so: make sure the target has
    /// the whole log, stop the other voters (and this leader) from starting
    /// elections, stop heartbeats so their leader leases lapse, and ask the
    /// target to stand. It then wins the next election. Writes are refused
    /// here meanwhile (they would renew the leases).
    pub(super) async fn transfer_leader_local(
        &self,
        target: NodeId,
    ) -> Result<MembershipView, ClusterError> {
        self.check_leader()?;
        let view = self.membership_view();
        if target == self.id {
            return Ok(view);
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
    ) -> Result<MembershipView, ClusterError> {
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
            self.control(*v, &hold).await?;
        }
        self.raft.runtime_config().elect(false);
        self.raft.runtime_config().heartbeat(false);
        self.control(target, &Control::Elect).await?;

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
            Ok(true) => Ok(self.membership_view()),
            _ => Err(ClusterError::Unavailable(format!(
                "node {target} did not become leader within 5s; leadership is unchanged or with another node"
            ))),
        }
    }

    /// Sends a control message to another node.
    async fn control(&self, node: NodeId, msg: &Control) -> Result<(), ClusterError> {
        let unavailable = |why: String| ClusterError::Unavailable(format!("node {node}: {why}"));
        let addr = self
            .addr_of(node)
            .ok_or_else(|| unavailable("no address".into()))?;
        let mut client = self
            .pool
            .get(&addr)
            .map_err(|e| unavailable(e.to_string()))?;
        let payload = to_payload(msg).map_err(|e| unavailable(e.to_string()))?;
        let mut req = tonic::Request::new(payload);
        req.set_timeout(Duration::from_secs(2));
        client
            .control(req)
            .await
            .map(|_| ())
            .map_err(|s| unavailable(format!("at {addr}: {}", s.message())))
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
}

/// Asks the cluster (through any of `seeds`) to add this node, until it does.
pub async fn join(
    pool: ClientPool,
    seeds: Vec<String>,
    id: NodeId,
    addr: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let req = AddNode {
        id,
        addr,
        learner_only: false,
    };
    let mut delay = Duration::from_millis(200);
    for attempt in 1u32.. {
        for seed in &seeds {
            let Ok(client) = pool.get(seed) else {
                continue;
            };
            match call_remote(client, Via::Relay, &req, Duration::from_secs(60)).await {
                Ok(Ok(_)) => {
                    tracing::info!(node = id, via = %seed, "joined the cluster");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(attempt, via = %seed, error = %e, "join refused; retrying")
                }
                Err(s) => {
                    tracing::warn!(attempt, via = %seed, error = %s.message(), "cannot reach the cluster to join; retrying")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// The voters of a new cluster as openraft takes them.
pub fn members(initial: &BTreeMap<NodeId, String>) -> BTreeMap<NodeId, BasicNode> {
    initial
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect()
}
