//! The cluster watcher: an actor that keeps track of every member (last
//! contact, memory, applied index, clock offset, role) and answers cluster
//! status. On the leader its tick also runs the first leader's duties: the
//! workload CA is created (`ca::create_if_missing`) and the first admin
//! token stored (`tokens::store_first_admin`), each once, retried until done.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use actix::prelude::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, ResponseFuture, WrapFuture,
};
use raftmesh_api::v1 as pb;
use raftmesh_storage::StateReader;

use crate::cluster::network::ClientPool;
use crate::cluster::{state_name, ClusterOps, Updated};
use crate::NodeId;
use crate::{procinfo, tokens};

/// How often members are polled.
const TICK: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    info: pb::NodeInfoResponse,
    /// Its clock minus ours (midpoint of the round trip).
    offset_ms: i64,
}

/// Cluster status, as the admin API returns it.
#[derive(Message)]
#[rtype(result = "pb::ClusterStatusResponse")]
pub struct GetStatus;

/// Stops the actor (node shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Watches the members of one node's cluster.
pub struct ClusterWatcher {
    ops: Arc<ClusterOps>,
    pool: ClientPool,
    reader: StateReader,
    cluster_name: String,
    seen: BTreeMap<NodeId, Seen>,
    in_flight: BTreeMap<NodeId, Instant>,
    /// SHA-256 of the bootstrap admin secret, until it is stored.
    bootstrap_hash: Option<String>,
    bootstrap_in_flight: bool,
    ca_in_flight: bool,
    /// The signing root whose key this node last checked it can open.
    ca_checked: Option<String>,
}

impl ClusterWatcher {
    /// A watcher for the node behind `ops`.
    pub fn new(
        ops: Arc<ClusterOps>,
        pool: ClientPool,
        reader: StateReader,
        cluster_name: String,
        bootstrap_hash: Option<String>,
    ) -> Self {
        Self {
            ops,
            pool,
            reader,
            cluster_name,
            seen: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            bootstrap_hash,
            bootstrap_in_flight: false,
            ca_in_flight: false,
            ca_checked: None,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let metrics = self.ops.raft().metrics().borrow().clone();
        let me = self.ops.id();
        for (id, node) in metrics.membership_config.membership().nodes() {
            if *id == me {
                continue;
            }
            // One poll at a time per member; a stuck one is abandoned after 2s.
            if self
                .in_flight
                .get(id)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
            {
                continue;
            }
            let Ok(mut client) = self.pool.get(&node.addr) else {
                continue;
            };
            let id = *id;
            self.in_flight.insert(id, Instant::now());
            let fut = async move {
                let mut req = tonic::Request::new(pb::NodeInfoRequest {});
                req.set_timeout(Duration::from_millis(400));
                let sent = procinfo::unix_ms();
                let r = client.node_info(req).await.map(|r| r.into_inner());
                let mid = (sent + procinfo::unix_ms()) / 2;
                r.map(|info| {
                    let offset = i64::try_from(info.unix_ms).unwrap_or(i64::MAX)
                        - i64::try_from(mid).unwrap_or(i64::MAX);
                    (info, offset)
                })
            };
            ctx.spawn(fut.into_actor(self).map(move |res, act, _| {
                act.in_flight.remove(&id);
                if let Ok((info, offset_ms)) = res {
                    act.seen.insert(
                        id,
                        Seen {
                            at: Instant::now(),
                            info,
                            offset_ms,
                        },
                    );
                }
            }));
        }
        let leading = metrics.current_leader == Some(me);
        self.maybe_store_bootstrap_token(ctx, leading);
        self.maybe_create_ca(ctx, leading);
    }

    /// The leader creates the workload CA once, and seals a key an
    /// earlier version stored in clear; every node says, once per signing
    /// root, when it cannot open the key (another cluster secret).
    fn maybe_create_ca(&mut self, ctx: &mut Context<Self>, leader: bool) {
        if let Some((_, ca)) = crate::ca::authority(&self.reader) {
            let signing = ca.roots.iter().find(|r| r.signing).map(|r| r.id.clone());
            if signing.is_some() && signing != self.ca_checked {
                self.ca_checked = signing;
                if let Err(e) = crate::ca::can_sign(self.ops.kek(), &ca) {
                    tracing::error!(error = %e, "this node serves everything but new workload certificates");
                }
            }
            let plain = ca
                .roots
                .iter()
                .any(|r| !crate::ca::seal::is_sealed(&r.key_pem));
            if leader && plain && !self.ca_in_flight {
                self.ca_in_flight = true;
                let ops = self.ops.clone();
                let fut = async move { crate::ca::seal_plain_keys(&ops).await };
                ctx.spawn(fut.into_actor(self).map(|res, act, _| {
                    act.ca_in_flight = false;
                    match res {
                        Ok(Updated::Written(_)) => tracing::info!(
                            "sealed the workload CA key an earlier version stored in clear"
                        ),
                        Ok(Updated::Kept(_)) => {}
                        Err(e) => tracing::warn!(error = %e, "could not seal the workload CA key yet; will retry"),
                    }
                }));
            }
            return;
        }
        if !leader || self.ca_in_flight {
            return;
        }
        self.ca_in_flight = true;
        let ops = self.ops.clone();
        let cluster_name = self.cluster_name.clone();
        let fut = async move { crate::ca::create_if_missing(&ops, &cluster_name).await };
        ctx.spawn(fut.into_actor(self).map(|res, act, _| {
            act.ca_in_flight = false;
            match res {
                Ok(Updated::Written(_)) => tracing::info!("created the workload CA"),
                Ok(Updated::Kept(_)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not create the workload CA yet; will retry")
                }
            }
        }));
    }

    /// The leader stores the first admin token once.
    fn maybe_store_bootstrap_token(&mut self, ctx: &mut Context<Self>, leader: bool) {
        let Some(hash) = self.bootstrap_hash.clone() else {
            return;
        };
        if tokens::first_admin_stored(&self.reader) {
            self.bootstrap_hash = None;
            return;
        }
        if !leader || self.bootstrap_in_flight {
            return;
        }
        self.bootstrap_in_flight = true;
        let ops = self.ops.clone();
        let fut = async move { tokens::store_first_admin(&ops, hash).await };
        ctx.spawn(fut.into_actor(self).map(|res, act, _| {
            act.bootstrap_in_flight = false;
            match res {
                Ok(Updated::Written(_)) => {
                    tracing::info!("stored the bootstrap admin token (its SHA-256 only)")
                }
                Ok(Updated::Kept(_)) => {}
                Err(e) => tracing::warn!(error = %e, "could not store the bootstrap admin token yet; will retry"),
            }
        }));
    }
}

impl Actor for ClusterWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
    }
}

impl Handler<Stop> for ClusterWatcher {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        use actix::ActorContext;
        ctx.stop();
    }
}

impl Handler<GetStatus> for ClusterWatcher {
    type Result = ResponseFuture<pb::ClusterStatusResponse>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        let m = self.ops.raft().metrics().borrow().clone();
        let me = self.ops.id();
        let membership = m.membership_config.membership().clone();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let members: Vec<pb::Member> = membership
            .nodes()
            .map(|(id, node)| {
                let voter = voters.contains(id);
                if *id == me {
                    return pb::Member {
                        id: *id,
                        addr: node.addr.clone(),
                        voter,
                        last_contact_ms: Some(0),
                        rss_bytes: procinfo::rss_bytes(),
                        state: state_name(m.state).to_string(),
                        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
                        clock_offset_ms: Some(0),
                    };
                }
                match self.seen.get(id) {
                    Some(s) => {
                        let age = u64::try_from(s.at.elapsed().as_millis()).unwrap_or(u64::MAX);
                        // Not heard from for several polls: report it as such.
                        let state = if age > 3 * TICK.as_millis() as u64 {
                            "unreachable".to_string()
                        } else {
                            s.info.state.clone()
                        };
                        pb::Member {
                            id: *id,
                            addr: node.addr.clone(),
                            voter,
                            last_contact_ms: Some(age),
                            rss_bytes: s.info.rss_bytes,
                            state,
                            applied_index: s.info.applied_index,
                            clock_offset_ms: Some(s.offset_ms),
                        }
                    }
                    None => pb::Member {
                        id: *id,
                        addr: node.addr.clone(),
                        voter,
                        last_contact_ms: None,
                        rss_bytes: 0,
                        state: "unreachable".into(),
                        applied_index: 0,
                        clock_offset_ms: None,
                    },
                }
            })
            .collect();
        let raft = self.ops.raft().clone();
        let cluster_name = self.cluster_name.clone();
        Box::pin(async move {
            let commit_index = raft
                .with_raft_state(|s| s.committed.map(|l| l.index).unwrap_or(0))
                .await
                .unwrap_or(0);
            pb::ClusterStatusResponse {
                node_id: me,
                cluster_name,
                leader: m.current_leader,
                term: m.current_term,
                commit_index,
                applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
                members,
            }
        })
    }
}
