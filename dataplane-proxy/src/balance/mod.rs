//! Endpoint selection: power of two choices over peak-EWMA latency (or
//! round robin), locality preference, outlier ejection and circuit breaking.
//! `Balance` is the tower service that picks an endpoint for each attempt.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use raftmesh_api::LoadBalancer;
use rand::Rng;

use crate::error::ProxyError;
use crate::route::Target;
use crate::snapshot::{Backend, Endpoint, Outlier, ServiceTable};
use crate::{metrics, Body};

fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Decay time of the peak-EWMA latency estimate.
const DECAY_US: f64 = 10_000_000.0;
/// Latency assumed for an endpoint never measured.
const DEFAULT_RTT_US: f64 = 1_000.0;
/// Longest ejection.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Live statistics of one endpoint.
#[derive(Debug)]
pub struct EndpointStats {
    pending: AtomicU32,
    ewma_bits: AtomicU64,
    stamp_us: AtomicU64,
    failures: AtomicU32,
    ejected_until_us: AtomicU64,
    ejections: AtomicU32,
}

impl Default for EndpointStats {
    fn default() -> Self {
        Self {
            pending: AtomicU32::new(0),
            ewma_bits: AtomicU64::new(DEFAULT_RTT_US.to_bits()),
            stamp_us: AtomicU64::new(now_us()),
            failures: AtomicU32::new(0),
            ejected_until_us: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
        }
    }
}

impl EndpointStats {
    fn ewma(&self) -> f64 {
        f64::from_bits(self.ewma_bits.load(Ordering::Relaxed))
    }

    /// Expected cost of sending one more request here.
    pub fn cost(&self) -> f64 {
        self.ewma() * f64::from(self.pending.load(Ordering::Relaxed) + 1)
    }

    /// Whether the endpoint is ejected now.
    pub fn ejected(&self) -> bool {
        self.ejected_until_us.load(Ordering::Relaxed) > now_us()
    }

    /// Peak-sensitive: a slower sample takes over at once, faster ones
    /// pull the estimate down with exponential decay.
    fn observe(&self, rtt: Duration) {
        let now = now_us();
        let rtt = rtt.as_micros() as f64;
        let prev = self.ewma();
        let dt = now.saturating_sub(self.stamp_us.swap(now, Ordering::Relaxed)) as f64;
        let next = if rtt > prev {
            rtt
        } else {
            let w = (-dt / DECAY_US).exp();
            prev * w + rtt * (1.0 - w)
        };
        self.ewma_bits.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Records a failed attempt; returns true when it ejects the endpoint.
    fn fail(&self, outlier: &Outlier, may_eject: bool) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < outlier.consecutive_failures || !may_eject {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let d = (outlier.base_ejection * 2u32.saturating_pow(k)).min(MAX_EJECTION);
        self.ejected_until_us
            .store(now_us() + d.as_micros() as u64, Ordering::Relaxed);
        true
    }

    fn succeed(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if !self.ejected() && self.ejected_until_us.load(Ordering::Relaxed) != 0 {
            // Back from an ejection and answering well: forget the history.
            self.ejected_until_us.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
        }
    }
}

/// Per-service counters that outlive snapshots.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Requests in flight (circuit breaking).
    pub in_flight: AtomicU32,
    /// Round-robin position.
    pub rr: AtomicUsize,
    /// Retry budget.
    pub budget: crate::retry::Budget,
}

/// Picks an endpoint of `backend`, or None when none is usable: healthy,
/// not ejected, and in this cluster when any such is.
pub fn pick(t: &ServiceTable, backend: &Backend, rr: &AtomicUsize) -> Option<usize> {
    pick_avoiding(t, backend, rr, &[])
}

/// The endpoints a request's earlier attempts went to: a retry goes to
/// another endpoint when there is one (a dead endpoint answers a connect
/// failure fast, so its latency alone would not steer P2C away from it).
#[derive(Debug, Clone, Default)]
pub struct Tried(Arc<Mutex<Vec<usize>>>);

impl Tried {
    fn list(&self) -> Vec<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn add(&self, i: usize) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(i);
    }
}

/// [`pick`], leaving out `avoid` unless nothing else is usable.
pub fn pick_avoiding(
    t: &ServiceTable,
    backend: &Backend,
    rr: &AtomicUsize,
    avoid: &[usize],
) -> Option<usize> {
    let usable = |i: &usize, avoid: &[usize]| {
        let e: &Endpoint = &t.endpoints[*i];
        e.healthy && !e.stats.ejected() && !avoid.contains(i)
    };
    // Usable endpoints, those in this cluster when there are any.
    let candidates = |avoid: &[usize]| -> Vec<usize> {
        let ok = backend
            .endpoints
            .iter()
            .copied()
            .filter(|i| usable(i, avoid));
        let local: Vec<usize> = ok.clone().filter(|i| t.endpoints[*i].local).collect();
        if local.is_empty() {
            ok.collect()
        } else {
            local
        }
    };
    let mut cands = candidates(avoid);
    if cands.is_empty() && !avoid.is_empty() {
        cands = candidates(&[]);
    }
    match cands.len() {
        0 => None,
        1 => Some(cands[0]),
        n => match t.lb {
            LoadBalancer::RoundRobin => Some(cands[rr.fetch_add(1, Ordering::Relaxed) % n]),
            LoadBalancer::P2cEwma => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
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

/// The endpoint chosen for an attempt.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The name its certificate carries, for a mesh workload (mTLS).
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
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

type BoxFut = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

impl<S> tower::Service<Request<Body>> for Balance<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> BoxFut {
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
            let i = pick_avoiding(t, backend, &target.stats.rr, &avoid).ok_or_else(|| {
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
            req.extensions_mut().insert(Upstream {
                addr: ep.addr,
                server_name: ep.server_name.clone(),
            });
            ep.stats.pending.fetch_add(1, Ordering::Relaxed);
            target.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let result = inner.call(req).await;
            ep.stats.pending.fetch_sub(1, Ordering::Relaxed);
            target.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            let failed = match &result {
                Ok(r) => r.status().is_server_error(),
                Err(e) => matches!(e, ProxyError::Connect(_) | ProxyError::Reset(_)),
            };
            if failed {
                let ejected_now = t.endpoints.iter().filter(|e| e.stats.ejected()).count();
                let may_eject = (ejected_now + 1) * 100
                    <= t.endpoints.len() * t.outlier.max_ejection_percent as usize;
                if ep.stats.fail(&t.outlier, may_eject) {
                    tracing::warn!(service = %name, endpoint = %ep.name, addr = %ep.addr, "ejecting an endpoint after consecutive failures");
                    metrics::ejection(name);
                }
            } else {
                ep.stats.observe(started.elapsed());
                ep.stats.succeed();
            }
            result
        })
    }
}

#[cfg(test)]
mod tests;
