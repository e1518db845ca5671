//! Endpoint health leases.
//!
//! Each node reports, every [`report_every`], the endpoints whose proxies
//! hold a discovery stream to it. The leader keeps the time each endpoint
//! was last reported (by any node). An endpoint registered by a proxy
//! (`lease_node` set) that nobody has reported for the grace period is
//! marked unhealthy; after the expiry it is removed. A new leader starts
//! every clock at the moment it took over, so a change of leader (or the
//! death of the node that held a stream, when the proxy reconnects
//! elsewhere within the grace period) never marks a live proxy unhealthy.
//! See docs/adr/0002-discovery.md.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use actix::prelude::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};
use actix::Addr;
use raftmesh_api::{Health, Kind, ResourceKey, Spec};
use raftmesh_storage::StateReader;

use super::hub::{DiscoveryHub, ListSessions};
use crate::cluster::{Change, ClusterOps, LeaseReport};

/// How often a node reports its streams to the leader: a quarter of the
/// grace period (so a few reports can be lost), at most every 2 s.
pub fn report_every(grace: Duration) -> Duration {
    (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Lease timing.
#[derive(Debug, Clone, Copy)]
pub struct LeaseConfig {
    /// Unreported for this long: unhealthy.
    pub grace: Duration,
    /// Unreported for this long: removed.
    pub expiry: Duration,
}

/// Keeps endpoint leases (on the leader) and reports this node's streams.
pub struct LeaseKeeper {
    ops: Arc<ClusterOps>,
    reader: StateReader,
    hub: Addr<DiscoveryHub>,
    cfg: LeaseConfig,
    /// Since when this node leads, if it does.
    leading_since: Option<Instant>,
    last_seen: HashMap<(String, String), Instant>,
    /// The revision each endpoint had at the last check: a proxy's own
    /// write (registration on a new stream, a ready report) counts as a
    /// sign of life even before the next lease report arrives.
    revisions: HashMap<(String, String), Option<u64>>,
    in_flight: HashSet<(String, String)>,
}

impl LeaseKeeper {
    /// A keeper for the node behind `ops`.
    pub fn new(
        ops: Arc<ClusterOps>,
        reader: StateReader,
        hub: Addr<DiscoveryHub>,
        cfg: LeaseConfig,
    ) -> Self {
        Self {
            ops,
            reader,
            hub,
            cfg,
            leading_since: None,
            last_seen: HashMap::new(),
            revisions: HashMap::new(),
            in_flight: HashSet::new(),
        }
    }

    fn report(&mut self, ctx: &mut Context<Self>) {
        let hub = self.hub.clone();
        let ops = self.ops.clone();
        let node = ops.id();
        ctx.spawn(
            async move {
                let Ok(sessions) = hub.send(ListSessions).await else {
                    return;
                };
                let endpoints = sessions
                    .iter()
                    .map(|s| (s.info.namespace.clone(), s.info.instance.clone()))
                    .collect();
                if let Err(e) = ops.report_leases(LeaseReport { node, endpoints }).await {
                    tracing::debug!(error = %e, "cannot report endpoint leases to the leader");
                }
            }
            .into_actor(self),
        );
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        let leading = self.ops.leader() == Some(self.ops.id());
        match (leading, self.leading_since) {
            (true, None) => {
                // Took over: everyone gets a fresh grace period.
                self.leading_since = Some(Instant::now());
                self.last_seen.clear();
                self.revisions.clear();
                return;
            }
            (false, Some(_)) => {
                self.leading_since = None;
                self.last_seen.clear();
                self.revisions.clear();
                return;
            }
            (false, None) => return,
            (true, Some(_)) => {}
        }
        let since = self.leading_since.unwrap_or_else(Instant::now);
        let (_, endpoints) = self.reader.list(Some(Kind::Endpoint), None);
        // Rebuilt each check, so endpoints that are gone drop out.
        let mut revisions = HashMap::with_capacity(endpoints.len());
        for r in endpoints {
            let Spec::Endpoint(e) = &r.spec else { continue };
            if e.lease_node.is_none() {
                continue; // written by hand: not ours to expire
            }
            let id = (r.metadata.namespace.clone(), r.metadata.name.clone());
            let previous = self.revisions.get(&id).copied();
            if self.in_flight.contains(&id) {
                if let Some(old) = previous {
                    revisions.insert(id, old);
                }
                continue;
            }
            let rev = r.metadata.revision;
            revisions.insert(id.clone(), rev);
            if previous.is_some_and(|old| old != rev) && e.health == Health::Healthy {
                // Written since the last check and healthy: the proxy
                // (re)registered or reported ready, so it is alive.
                self.last_seen.insert(id.clone(), Instant::now());
            }
            let seen = self.last_seen.get(&id).copied().unwrap_or(since).max(since);
            let gone = seen.elapsed();
            let change = if gone > self.cfg.expiry {
                tracing::info!(endpoint = %r.key(), gone = ?gone, "removing an endpoint whose proxy has been gone past the expiry");
                Change::<Infallible>::Delete
            } else if gone > self.cfg.grace && e.health == Health::Healthy {
                tracing::info!(endpoint = %r.key(), gone = ?gone, "marking an endpoint unhealthy: its proxy has no stream");
                let mut u = (*r).clone();
                if let Spec::Endpoint(ue) = &mut u.spec {
                    ue.health = Health::Unhealthy;
                }
                Change::Put(u)
            } else {
                continue;
            };
            self.in_flight.insert(id.clone());
            let ops = self.ops.clone();
            let key = ResourceKey::new(Kind::Endpoint, id.0.clone(), id.1.clone());
            // Compare-and-set on the revision checked: a proxy that wrote
            // meanwhile is alive, and its write stands.
            let mut change = Some(change);
            ctx.spawn(
                async move {
                    ops.update_from(&key, Some(Some(r)), 1, |_| {
                        change.take().unwrap_or(Change::Keep)
                    })
                    .await
                }
                .into_actor(self)
                .map(move |_, act, _| {
                    act.in_flight.remove(&id);
                }),
            );
        }
        self.revisions = revisions;
    }
}

impl Actor for LeaseKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(report_every(self.cfg.grace), |act, ctx| act.report(ctx));
        ctx.run_interval(Duration::from_millis(500), |act, ctx| act.check(ctx));
    }
}

impl Handler<LeaseReport> for LeaseKeeper {
    type Result = ();
    fn handle(&mut self, msg: LeaseReport, _: &mut Context<Self>) {
        let now = Instant::now();
        for id in msg.endpoints {
            self.last_seen.insert(id, now);
        }
    }
}

/// Stops the keeper (node shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopLeases;

impl Handler<StopLeases> for LeaseKeeper {
    type Result = ();
    fn handle(&mut self, _: StopLeases, ctx: &mut Context<Self>) {
        use actix::ActorContext;
        ctx.stop();
    }
}
