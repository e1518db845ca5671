//! What the proxy learns about its upstreams as traffic flows, kept across
//! config changes: per-endpoint latency (peak EWMA), load and outlier state
//! (consecutive failures, ejections), per-service requests in flight,
//! round-robin position and retry budget. The balance and retry layers
//! read and update these; the compiled config points at them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::ServiceId;

/// Outlier ejection settings.
#[derive(Debug, Clone, Copy)]
pub struct Outlier {
    /// Consecutive failures before ejection.
    pub consecutive_failures: u32,
    /// First ejection time.
    pub base_ejection: Duration,
    /// At most this share ejected.
    pub max_ejection_percent: u32,
}

impl Default for Outlier {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }
}

fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Decay time of the peak-EWMA latency estimate.
const DECAY_US: f64 = 10_000_000.0;
/// Latency assumed for an endpoint never measured.
const DEFAULT_RTT_US: f64 = 1_000.0;
/// The latency a failed attempt counts as.
const FAILURE_RTT: Duration = Duration::from_secs(1);
/// Longest ejection.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Live statistics of one endpoint.
#[derive(Debug)]
pub struct EndpointStats {
    /// Attempts in flight to this endpoint.
    pub(crate) pending: AtomicU32,
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

    /// Attempts in flight to this endpoint.
    pub fn in_flight(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Whether the endpoint is ejected now.
    pub fn ejected(&self) -> bool {
        self.ejected_until_us.load(Ordering::Relaxed) > now_us()
    }

    /// Peak-sensitive: a slower sample takes over at once, faster ones
    /// pull the estimate down with exponential decay.
    pub(crate) fn observe(&self, rtt: Duration) {
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
    /// A failure also counts as a very slow answer in the latency estimate
    /// (as Finagle's and Linkerd's peak-EWMA balancers do): an endpoint
    /// that fails fast must not look like the fastest one.
    pub(crate) fn fail(&self, outlier: &Outlier, may_eject: bool) -> bool {
        self.observe(FAILURE_RTT);
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

    pub(crate) fn succeed(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if !self.ejected() && self.ejected_until_us.load(Ordering::Relaxed) != 0 {
            // Back from an ejection and answering well: forget the history.
            self.ejected_until_us.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
        }
    }
}

/// Per-service counters that outlive compiled configs.
#[derive(Debug)]
pub struct ServiceStats {
    /// Requests in flight (circuit breaking).
    pub in_flight: AtomicU32,
    /// Round-robin position.
    pub rr: AtomicUsize,
    /// Retry budget.
    pub budget: Budget,
    /// A request used this service since the subscription sweep last
    /// looked (`subscriptions.rs`).
    pub used: std::sync::atomic::AtomicBool,
    /// When a request last found no usable endpoint and said why in the
    /// log (µs of [`now_us`]; at most once a second per service).
    said_no_endpoint_us: AtomicU64,
    /// The service's connection limit and its permits (one per open
    /// connection), made when a Route first sets one.
    connections: std::sync::Mutex<Option<(u32, Arc<tokio::sync::Semaphore>)>>,
    /// Where the layers count what happens to this service's requests
    /// (retries, ejections): the proxy's metrics, reached through the
    /// target a request already carries rather than cloned per request.
    pub metrics: Arc<Metrics>,
}

impl ServiceStats {
    /// Fresh counters reporting to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            rr: AtomicUsize::new(0),
            budget: Budget::default(),
            used: std::sync::atomic::AtomicBool::new(false),
            said_no_endpoint_us: AtomicU64::new(0),
            connections: std::sync::Mutex::new(None),
            metrics,
        }
    }

    /// The permits of a limit of `max` connections (none without one). A
    /// changed limit starts a new set: connections open under the old one
    /// keep their permits until they close.
    pub fn connection_limit(&self, max: Option<u32>) -> Option<Arc<tokio::sync::Semaphore>> {
        let max = max?;
        let mut c = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &*c {
            Some((m, s)) if *m == max => Some(s.clone()),
            _ => {
                let s = Arc::new(tokio::sync::Semaphore::new(max as usize));
                *c = Some((max, s.clone()));
                Some(s)
            }
        }
    }

    /// Whether to log, now, why a request found no usable endpoint (once
    /// a second per service, so an outage does not flood the log).
    pub fn time_to_say_why(&self) -> bool {
        let now = now_us().max(1);
        let last = self.said_no_endpoint_us.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= 1_000_000)
            && self
                .said_no_endpoint_us
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Milli-tokens a request deposits (0.2 of a retry).
const DEPOSIT: u64 = 200;
/// Milli-tokens a retry costs.
const COST: u64 = 1_000;
/// Most milli-tokens held (100 retries).
const CAP: u64 = 100_000;
/// Milli-tokens at start (10 retries), so low traffic can still retry.
pub const RESERVE: u64 = 10_000;

/// A service's retry budget.
#[derive(Debug)]
pub struct Budget(AtomicU64);

impl Default for Budget {
    fn default() -> Self {
        Self(AtomicU64::new(RESERVE))
    }
}

impl Budget {
    /// A request passed: it earns 0.2 of a retry.
    pub fn deposit(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some((v + DEPOSIT).min(CAP))
            });
    }

    /// Takes one retry's worth, if there is one.
    pub fn withdraw(&self) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                v.checked_sub(COST)
            })
            .is_ok()
    }
}

/// Live statistics per endpoint address and per service, kept across
/// compiled configs so a config change does not forget ejections and
/// latencies; one per proxy.
#[derive(Debug)]
pub struct StatsRegistry {
    by_addr: Mutex<HashMap<SocketAddr, Arc<EndpointStats>>>,
    by_service: Mutex<HashMap<ServiceId, Arc<ServiceStats>>>,
    metrics: Arc<Metrics>,
}

impl StatsRegistry {
    /// An empty registry whose services report to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            by_addr: Mutex::default(),
            by_service: Mutex::default(),
            metrics,
        }
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Counters of a service.
    pub fn service(&self, id: &ServiceId) -> Arc<ServiceStats> {
        let mut m = self
            .by_service
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = m.get(id) {
            return s.clone();
        }
        m.entry(id.clone())
            .or_insert_with(|| Arc::new(ServiceStats::new(self.metrics.clone())))
            .clone()
    }

    /// Counters of a service, if it was ever called.
    pub fn existing(&self, id: &ServiceId) -> Option<Arc<ServiceStats>> {
        self.by_service
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    pub(crate) fn get(&self, addr: SocketAddr) -> Arc<EndpointStats> {
        let mut m = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
        m.entry(addr)
            .or_insert_with(|| Arc::new(EndpointStats::default()))
            .clone()
    }

    pub(crate) fn retain(&self, live: &std::collections::HashSet<SocketAddr>) {
        let mut m = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
        m.retain(|a, _| live.contains(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_time_doubles_and_success_resets_the_count() {
        let s = EndpointStats::default();
        let o = Outlier {
            consecutive_failures: 2,
            base_ejection: Duration::from_millis(0),
            max_ejection_percent: 100,
        };
        assert!(!s.fail(&o, true));
        assert!(s.fail(&o, true), "the second consecutive failure ejects");
        assert_eq!(s.ejections.load(Ordering::Relaxed), 1);
        s.succeed();
        assert!(!s.fail(&o, true), "a success in between resets the streak");
        assert!(!s.fail(&o, false), "ejection can be refused (max percent)");
    }

    #[test]
    fn a_failing_endpoint_costs_more_than_a_slow_answering_one() {
        let (failing, slow) = (EndpointStats::default(), EndpointStats::default());
        slow.observe(Duration::from_millis(50));
        let o = Outlier {
            consecutive_failures: 1_000,
            ..Outlier::default()
        };
        failing.fail(&o, false);
        assert!(
            failing.cost() > slow.cost(),
            "{} <= {}",
            failing.cost(),
            slow.cost()
        );
    }
}
