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
use raftmesh_api::{Health, Kind, Resource, ResourceKey, Spec};
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
    /// A check this much later than the one before means the keeper was
    /// stalled: every endpoint gets a fresh grace period
    /// ([`LeaseConfig::stall_for`]: half the grace).
    pub stalled_after: Duration,
}

impl LeaseConfig {
    /// The timing for a grace period and an expiry.
    pub fn new(grace: Duration, expiry: Duration) -> Self {
        Self {
            grace,
            expiry,
            stalled_after: Self::stall_for(grace),
        }
    }

    /// The gap between checks taken as a stall: half the grace period.
    pub fn stall_for(grace: Duration) -> Duration {
        grace / 2
    }
}

/// An endpoint, by (namespace, name).
pub type EndpointId = (String, String);

/// The leader's lease clocks: when each endpoint's proxy was last seen, and
/// what becomes of endpoints whose proxies are gone. No I/O: the clock is
/// tokio's, so tests pause and advance it.
#[derive(Debug)]
pub struct Leases {
    cfg: LeaseConfig,
    /// Since when this node leads, if it does.
    leading_since: Option<Instant>,
    last_seen: HashMap<EndpointId, Instant>,
    /// The revision each endpoint had at the last check: a proxy's own
    /// write (registration on a new stream, a ready report) counts as a
    /// sign of life even before the next lease report arrives.
    revisions: HashMap<EndpointId, Option<u64>>,
    /// Endpoints with a change being written.
    in_flight: HashSet<EndpointId>,
    /// A check has run since this node took over (endpoints it sees for
    /// the first time after that were registered while it leads).
    checked_once: bool,
    /// When the last check ran.
    last_check: Option<Instant>,
}

impl Leases {
    /// No clocks yet.
    pub fn new(cfg: LeaseConfig) -> Self {
        Self {
            cfg,
            leading_since: None,
            last_seen: HashMap::new(),
            revisions: HashMap::new(),
            in_flight: HashSet::new(),
            checked_once: false,
            last_check: None,
        }
    }

    /// A node reported streams for these endpoints.
    pub fn reported(&mut self, endpoints: Vec<EndpointId>) {
        let now = Instant::now();
        for id in endpoints {
            self.last_seen.insert(id, now);
        }
    }

    /// The change written for `id` finished (either way).
    pub fn done(&mut self, id: &EndpointId) {
        self.in_flight.remove(id);
    }

    /// One check: whether this node leads, and the endpoints in the state.
    /// Answers the changes to write (each compare-and-set on the revision
    /// given), marking them in flight until [`done`](Self::done).
    pub fn check(
        &mut self,
        leading: bool,
        endpoints: Vec<Arc<Resource>>,
    ) -> Vec<(EndpointId, Arc<Resource>, Change<Infallible>)> {
        match (leading, self.leading_since) {
            (true, None) => {
                // Took over: everyone gets a fresh grace period.
                self.leading_since = Some(Instant::now());
                self.last_check = Some(Instant::now());
                self.last_seen.clear();
                self.revisions.clear();
                self.checked_once = false;
                return Vec::new();
            }
            (false, Some(_)) => {
                self.leading_since = None;
                self.last_seen.clear();
                self.revisions.clear();
                return Vec::new();
            }
            (false, None) => return Vec::new(),
            (true, Some(_)) => {}
        }
        // Checks run every 500 ms. If this one comes much later, this node
        // was stalled (reports were not read either): what it missed says
        // nothing about the proxies, so every endpoint gets a fresh grace
        // period, as at a takeover.
        let now = Instant::now();
        let last = self.last_check.replace(now);
        if let Some(gap) = last
            .map(|l| now - l)
            .filter(|g| *g > self.cfg.stalled_after)
        {
            tracing::warn!(
                stalled = ?gap,
                "the lease keeper was stalled; every endpoint gets a fresh grace period"
            );
            self.leading_since = Some(now);
            self.last_seen.clear();
        }
        let since = self.leading_since.unwrap_or_else(Instant::now);
        let mut out = Vec::new();
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
            match previous {
                // Written since the last check and healthy: the proxy
                // (re)registered or reported ready, so it is alive.
                Some(old) if old != rev && e.health == Health::Healthy => {
                    self.last_seen.insert(id.clone(), Instant::now());
                }
                // First seen while this node leads: just registered, so its
                // grace period starts now, not when this node took over.
                None if self.checked_once => {
                    self.last_seen
                        .entry(id.clone())
                        .or_insert_with(Instant::now);
                }
                _ => {}
            }
            let seen = self.last_seen.get(&id).copied().unwrap_or(since).max(since);
            let gone = seen.elapsed();
            let change = if gone > self.cfg.expiry {
                tracing::info!(endpoint = %r.key(), gone = ?gone, "removing an endpoint whose proxy has been gone past the expiry");
                Change::Delete
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
            out.push((id, r, change));
        }
        self.revisions = revisions;
        self.checked_once = true;
        out
    }
}

/// Keeps endpoint leases (on the leader) and reports this node's streams.
pub struct LeaseKeeper {
    ops: Arc<ClusterOps>,
    reader: StateReader,
    hub: Addr<DiscoveryHub>,
    leases: Leases,
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
            leases: Leases::new(cfg),
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
        let endpoints = if leading {
            self.reader.list(Some(Kind::Endpoint), None).1
        } else {
            Vec::new()
        };
        for (id, current, change) in self.leases.check(leading, endpoints) {
            let ops = self.ops.clone();
            let key = ResourceKey::new(Kind::Endpoint, id.0.clone(), id.1.clone());
            // Compare-and-set on the revision checked: a proxy that wrote
            // meanwhile is alive, and its write stands.
            let mut change = Some(change);
            ctx.spawn(
                async move {
                    ops.update_from(&key, Some(Some(current)), 1, |_| {
                        change.take().unwrap_or(Change::Keep)
                    })
                    .await
                }
                .into_actor(self)
                .map(move |_, act, _| act.leases.done(&id)),
            );
        }
    }
}

impl Actor for LeaseKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(report_every(self.leases.cfg.grace), |act, ctx| {
            act.report(ctx)
        });
        ctx.run_interval(Duration::from_millis(500), |act, ctx| act.check(ctx));
    }
}

impl Handler<LeaseReport> for LeaseKeeper {
    type Result = ();
    fn handle(&mut self, msg: LeaseReport, _: &mut Context<Self>) {
        self.leases.reported(msg.endpoints);
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

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);
    const EXPIRY: Duration = Duration::from_secs(60);

    fn endpoint(revision: u64, health: Health) -> Arc<Resource> {
        let mut r: Resource = serde_yaml_ng::from_str(
            "kind: Endpoint\nmetadata: {name: web-1}\nspec: {service: web, address: 10.0.0.1, port: 80, lease_node: 1}",
        )
        .unwrap();
        if let Spec::Endpoint(e) = &mut r.spec {
            e.health = health;
        }
        Arc::new(r.with_revision(revision))
    }

    fn leases() -> Leases {
        // These tests jump the clock between checks; the stall rule has
        // its own test.
        Leases::new(LeaseConfig {
            grace: GRACE,
            expiry: EXPIRY,
            stalled_after: Duration::from_secs(3600),
        })
    }

    fn id() -> EndpointId {
        ("default".into(), "web-1".into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_proxy_s_endpoint_turns_unhealthy_after_the_grace_then_goes_after_the_expiry() {
        let mut l = leases();
        assert!(
            l.check(true, vec![endpoint(5, Health::Healthy)]).is_empty(),
            "took over"
        );
        tokio::time::advance(GRACE / 2).await;
        l.reported(vec![id()]);
        tokio::time::advance(GRACE - Duration::from_secs(1)).await;
        assert!(
            l.check(true, vec![endpoint(5, Health::Healthy)]).is_empty(),
            "reported within the grace"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let changes = l.check(true, vec![endpoint(5, Health::Healthy)]);
        assert_eq!(changes.len(), 1);
        let Change::Put(r) = &changes[0].2 else {
            panic!("expected unhealthy, got {:?}", changes[0].2);
        };
        assert!(matches!(&r.spec, Spec::Endpoint(e) if e.health == Health::Unhealthy));
        assert!(
            l.check(true, vec![endpoint(5, Health::Healthy)]).is_empty(),
            "nothing more while the change is in flight"
        );
        l.done(&id());
        tokio::time::advance(EXPIRY).await;
        let changes = l.check(true, vec![endpoint(6, Health::Unhealthy)]);
        assert!(
            matches!(changes[..], [(_, _, Change::Delete)]),
            "{changes:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_keeper_gives_every_endpoint_a_fresh_grace_period() {
        let mut l = Leases::new(LeaseConfig::new(GRACE, EXPIRY));
        assert!(l.check(true, vec![endpoint(5, Health::Healthy)]).is_empty());
        // Checked every 500 ms, unreported: unhealthy after the grace.
        let mut changes = Vec::new();
        for _ in 0..((GRACE.as_millis() / 500) + 2) {
            tokio::time::advance(Duration::from_millis(500)).await;
            changes = l.check(true, vec![endpoint(5, Health::Healthy)]);
            if !changes.is_empty() {
                break;
            }
        }
        assert_eq!(changes.len(), 1, "a gone proxy is still marked unhealthy");
        l.done(&id());
        // Reported, then the keeper's thread is stalled past the grace
        // (no reports read, no checks run): not the proxies' fault.
        l.reported(vec![id()]);
        assert!(l.check(true, vec![endpoint(7, Health::Healthy)]).is_empty());
        tokio::time::advance(GRACE * 3).await;
        assert!(
            l.check(true, vec![endpoint(7, Health::Healthy)]).is_empty(),
            "a stall of the keeper marked a live endpoint unhealthy"
        );
        tokio::time::advance(GRACE / 4).await;
        assert!(l.check(true, vec![endpoint(7, Health::Healthy)]).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_leader_gives_every_endpoint_a_fresh_grace_period() {
        let mut l = leases();
        assert!(l.check(true, vec![endpoint(5, Health::Healthy)]).is_empty());
        tokio::time::advance(GRACE * 2).await;
        assert!(l.check(false, vec![]).is_empty(), "lost the lead");
        assert!(
            l.check(true, vec![endpoint(5, Health::Healthy)]).is_empty(),
            "leads again"
        );
        tokio::time::advance(GRACE - Duration::from_secs(1)).await;
        assert!(l.check(true, vec![endpoint(5, Health::Healthy)]).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_proxy_s_own_healthy_write_counts_as_a_sign_of_life() {
        let mut l = leases();
        assert!(l.check(true, vec![endpoint(5, Health::Healthy)]).is_empty());
        assert!(l.check(true, vec![endpoint(5, Health::Healthy)]).is_empty());
        tokio::time::advance(GRACE - Duration::from_secs(1)).await;
        // Re-registered (a new revision) without a lease report yet.
        assert!(l.check(true, vec![endpoint(9, Health::Healthy)]).is_empty());
        tokio::time::advance(GRACE - Duration::from_secs(1)).await;
        assert!(
            l.check(true, vec![endpoint(9, Health::Healthy)]).is_empty(),
            "the write renewed the lease"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(l.check(true, vec![endpoint(9, Health::Healthy)]).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_registered_long_after_the_takeover_gets_a_whole_grace_period() {
        let mut l = leases();
        assert!(l.check(true, vec![]).is_empty(), "took over");
        assert!(l.check(true, vec![]).is_empty());
        tokio::time::advance(GRACE * 3).await;
        // A proxy registers now; its node's next lease report is yet to come.
        assert!(
            l.check(true, vec![endpoint(40, Health::Healthy)])
                .is_empty(),
            "a new endpoint is not marked unhealthy for the leader's age"
        );
        tokio::time::advance(GRACE - Duration::from_secs(1)).await;
        assert!(l
            .check(true, vec![endpoint(40, Health::Healthy)])
            .is_empty());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            l.check(true, vec![endpoint(40, Health::Healthy)]).len(),
            1,
            "but it is once a whole grace period passes without a report"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_written_by_hand_is_never_expired() {
        let mut l = leases();
        let mut r = (*endpoint(5, Health::Healthy)).clone();
        if let Spec::Endpoint(e) = &mut r.spec {
            e.lease_node = None;
        }
        let r = Arc::new(r);
        assert!(l.check(true, vec![r.clone()]).is_empty());
        tokio::time::advance(EXPIRY * 2).await;
        assert!(l.check(true, vec![r]).is_empty());
    }
}
