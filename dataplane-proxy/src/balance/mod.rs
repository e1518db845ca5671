//! Endpoint selection: power of two choices over peak-EWMA latency (or
//! round robin, least-request, consistent hashing), locality preference
//! with zone spill-over, outlier ejection and circuit breaking.
//! `Balance` is the tower service that picks an endpoint for each attempt;
//! the statistics it decides on are `stats.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use raftmesh_api::LoadBalancer;
use rand::Rng;

use crate::compiled::{tier, Backend, Endpoint, ServiceTable};
use crate::error::ProxyError;
use crate::stack::{BoxFuture, Next};
use crate::target::{Target, Tried, Upstream};
use crate::Body;

/// Picks an endpoint of `backend`, or None when none is usable: healthy,
/// not ejected, and of the nearest tier that has any (this cluster, other
/// clusters of the mesh, then a Route's failover peers in their order).
pub fn pick(t: &ServiceTable, backend: &Backend, rr: &AtomicUsize) -> Option<usize> {
    pick_avoiding(t, backend, rr, &[], None)
}

/// How much more a zone's endpoints are taken to carry than their healthy
/// share (Envoy's overprovisioning factor): the caller's zone keeps all its
/// traffic while at least 1/1.4 ≈ 71 % of its endpoints are usable, and
/// spills the rest to the cluster's other zones below that.
pub const OVERPROVISION_PERCENT: usize = 140;

/// [`pick`], leaving out `avoid` unless nothing else is usable; `key` is
/// the request's consistent-hash key, when the service hashes and the
/// request has one.
pub fn pick_avoiding(
    t: &ServiceTable,
    backend: &Backend,
    rr: &AtomicUsize,
    avoid: &[usize],
    key: Option<u64>,
) -> Option<usize> {
    let usable = |i: &usize, avoid: &[usize]| {
        let e: &Endpoint = &t.endpoints[*i];
        e.healthy && !e.stats.ejected() && !avoid.contains(i)
    };
    // Usable endpoints of the nearest tier that has any; the caller's zone
    // spills a share to the rest of its cluster when too few of its own
    // are usable. (Each endpoint's state is read once: `ejected` reads
    // the clock.)
    // Consistent hashing keeps a key on one endpoint of the cluster
    // whatever the caller's zone: its zones are one tier then.
    let hashing = t.lb == LoadBalancer::ConsistentHash;
    let tier_of = |i: &usize| match t.endpoints[*i].tier {
        tier::CLUSTER if hashing => tier::ZONE,
        x => x,
    };
    let candidates = |avoid: &[usize]| -> Vec<usize> {
        let mut ok: Vec<usize> = backend
            .endpoints
            .iter()
            .copied()
            .filter(|i| usable(i, avoid))
            .collect();
        let Some(mut nearest) = ok.iter().map(tier_of).min() else {
            return ok;
        };
        if nearest == tier::ZONE && ok.iter().any(|i| tier_of(i) == tier::CLUSTER) {
            let total = backend
                .endpoints
                .iter()
                .filter(|i| tier_of(i) == tier::ZONE)
                .count();
            let keep =
                ok.iter().filter(|i| tier_of(i) == tier::ZONE).count() * OVERPROVISION_PERCENT;
            if keep < total * 100 && rand::rng().random_range(0..total * 100) >= keep {
                nearest = tier::CLUSTER;
            }
        }
        if ok.iter().any(|i| tier_of(i) != nearest) {
            ok.retain(|i| tier_of(i) == nearest);
        }
        ok
    };
    let mut cands = candidates(avoid);
    if cands.is_empty() && !avoid.is_empty() {
        cands = candidates(&[]);
    }
    match cands.len() {
        0 => None,
        1 => Some(cands[0]),
        n => match (t.lb, key, &backend.ring) {
            (LoadBalancer::ConsistentHash, Some(key), Some(ring)) => ring.find(key, &cands),
            (LoadBalancer::RoundRobin, ..) => Some(cands[rr.fetch_add(1, Ordering::Relaxed) % n]),
            (LoadBalancer::LeastRequest, ..) => {
                let (a, b) = two(n);
                let load = |i: usize| t.endpoints[cands[i]].stats.in_flight();
                Some(if load(a) <= load(b) {
                    cands[a]
                } else {
                    cands[b]
                })
            }
            // P2C, and hashing without a key (the request lacks it).
            _ => {
                let (a, b) = two(n);
                let (ea, eb) = (&t.endpoints[cands[a]], &t.endpoints[cands[b]]);
                Some(if ea.stats.cost() <= eb.stats.cost() {
                    cands[a]
                } else {
                    cands[b]
                })
            }
        },
    }
}

/// Two distinct random indices below `n` (n ≥ 2).
fn two(n: usize) -> (usize, usize) {
    let mut rng = rand::rng();
    let a = rng.random_range(0..n);
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

/// Each endpoint of `backend` and why it is not usable (for the log).
fn why_none(t: &ServiceTable, backend: &Backend) -> String {
    if backend.endpoints.is_empty() {
        return "none in this subset".into();
    }
    backend
        .endpoints
        .iter()
        .map(|i| {
            let e = &t.endpoints[*i];
            let state = match (e.healthy, e.stats.ejected()) {
                (false, _) => "unhealthy",
                (true, true) => "ejected",
                (true, false) => "usable",
            };
            format!("{} tier {} {state}", e.name, e.tier)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Picks an endpoint per attempt and records how it went.
#[derive(Clone)]
pub struct Balance<S> {
    inner: S,
}

/// Layer for [`Balance`].
#[derive(Clone, Default)]
pub struct BalanceLayer;

impl<S> tower::Layer<S> for BalanceLayer {
    type Service = Balance<S>;
    fn layer(&self, inner: S) -> Balance<S> {
        Balance { inner }
    }
}

impl<S: Next> tower::Service<Request<Body>> for Balance<S> {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> BoxFuture {
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let Some(target) = req.extensions().get::<Target>().cloned() else {
                return Err(ProxyError::BadRequest);
            };
            let t = &target.table;
            let name = &t.id.1;
            let backend = &t.rules[target.rule].backends[target.backend];
            if let Some(max) = t.max_in_flight {
                if target.stats.in_flight.load(Ordering::Relaxed) >= max {
                    return Err(ProxyError::CircuitOpen(name.clone()));
                }
            }
            let tried = req.extensions().get::<Tried>().cloned();
            let avoid = tried.as_ref().map(Tried::list).unwrap_or_default();
            let i = pick_avoiding(t, backend, &target.stats.rr, &avoid, target.hash).ok_or_else(|| {
                if target.stats.time_to_say_why() {
                    tracing::warn!(service = %name, subset = %backend.label, endpoints = %why_none(t, backend), "no usable endpoint for a request");
                }
                ProxyError::NoHealthyEndpoints(if backend.label.is_empty() {
                    name.clone()
                } else {
                    format!("{name} (subset {})", backend.label)
                })
            })?;
            if let Some(tried) = &tried {
                tried.add(i);
            }
            let ep = &t.endpoints[i];
            if let Some(c) = &target.chosen {
                c.attempted(i);
            }
            req.extensions_mut().insert(Upstream {
                addr: ep.addr,
                server_name: ep.server_name.clone(),
                dial: ep.dial.clone(),
                limits: crate::tls::Dial {
                    timeout: t.connect_timeout,
                    limit: target.stats.connection_limit(t.max_connections),
                },
            });
            ep.stats.pending.fetch_add(1, Ordering::Relaxed);
            target.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            // An attempt cut by a timeout may have arrived: counted reached.
            let mut cut = CutCounts(target.chosen.clone());
            let result = inner.call(req).await;
            cut.0 = None;
            ep.stats.pending.fetch_sub(1, Ordering::Relaxed);
            target.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            // An attempt refused before the request was sent never reached
            // the endpoint's proxy (`meshctl stat` counts it at the caller).
            if !matches!(
                &result,
                Err(ProxyError::Connect(_) | ProxyError::Refused(_))
            ) {
                if let Some(c) = &target.chosen {
                    c.mark_reached();
                }
            }
            let failed = match &result {
                Ok(r) => r.status().is_server_error(),
                Err(e) => matches!(
                    e,
                    ProxyError::Connect(_)
                        | ProxyError::Reset(_)
                        | ProxyError::ResetBeforeAnswer(_)
                ),
                // (`Closed` and `Refused`: an endpoint closing or shedding,
                // not failing.)
            };
            if failed {
                let ejected_now = t.endpoints.iter().filter(|e| e.stats.ejected()).count();
                let may_eject = (ejected_now + 1) * 100
                    <= t.endpoints.len() * t.outlier.max_ejection_percent as usize;
                if ep.stats.fail(&t.outlier, may_eject) {
                    tracing::warn!(service = %name, endpoint = %ep.name, addr = %ep.addr, "ejecting an endpoint after consecutive failures");
                    target.stats.metrics.ejection(&t.id);
                }
            } else {
                ep.stats.observe(started.elapsed());
                ep.stats.succeed();
            }
            result
        })
    }
}

pub mod ring;

#[cfg(test)]
mod tests;

/// Marks the request reached when an attempt is dropped before it ends
/// (a timeout cut it: the endpoint may have the request).
struct CutCounts(Option<std::sync::Arc<crate::target::RouteInfo>>);

impl Drop for CutCounts {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.mark_reached();
        }
    }
}
