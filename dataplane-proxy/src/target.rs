//! What a request carries between the layers of the outbound stack, as
//! request extensions: where it goes ([`Target`], set by `route`), which
//! endpoints its attempts went to ([`Tried`], kept by `retry`, read by
//! `balance`), the endpoint of this attempt ([`Upstream`], set by
//! `balance`, read by `forward`), and a slot the listener reads back for
//! metrics ([`RouteInfo`]). Layers import these, never each other.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::compiled::ServiceTable;
use crate::stats::ServiceStats;

/// A slot the outermost handler passes down (as `Arc<RouteInfo>`) to learn
/// where a request went, for metrics and the access log: its service table,
/// rule and backend (set by `route`) and the endpoint of its last attempt
/// (set by `balance`).
#[derive(Debug, Default)]
pub struct RouteInfo {
    routed: std::sync::OnceLock<(Arc<ServiceTable>, usize, usize)>,
    /// The endpoint's index + 1 (0: none yet).
    endpoint: std::sync::atomic::AtomicUsize,
    /// Attempts sent.
    attempts: std::sync::atomic::AtomicU32,
    /// Whether an attempt reached an endpoint (an answer, or a failure
    /// after the request could have been read there).
    reached: std::sync::atomic::AtomicBool,
}

impl RouteInfo {
    /// Records the route (the first call wins: a mirror copy never counts).
    pub fn routed(&self, table: &Arc<ServiceTable>, rule: usize, backend: usize) {
        let _ = self.routed.set((table.clone(), rule, backend));
    }

    /// Records the endpoint of an attempt.
    pub fn attempted(&self, endpoint: usize) {
        self.endpoint
            .store(endpoint + 1, std::sync::atomic::Ordering::Relaxed);
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records that an attempt reached its endpoint.
    pub fn mark_reached(&self) {
        self.reached
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether any attempt may have reached an endpoint: an attempt
    /// answered, failed after connecting, or was cut by a timeout.
    pub fn reached(&self) -> bool {
        self.reached.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Attempts sent (retries are the attempts after the first).
    pub fn attempts(&self) -> u32 {
        self.attempts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The table, rule and backend, once routed.
    pub fn route(&self) -> Option<&(Arc<ServiceTable>, usize, usize)> {
        self.routed.get()
    }

    /// The endpoint of the last attempt.
    pub fn endpoint(&self) -> Option<&crate::compiled::Endpoint> {
        let (t, _, _) = self.routed.get()?;
        let i = self
            .endpoint
            .load(std::sync::atomic::Ordering::Relaxed)
            .checked_sub(1)?;
        t.endpoints.get(i)
    }

    /// (service, subset) names, empty when not routed.
    pub fn names(&self) -> (String, String) {
        self.route()
            .map(|(t, r, b)| (t.id.1.clone(), t.rules[*r].backends[*b].label.clone()))
            .unwrap_or_default()
    }
}

/// Where a request goes: its service, rule and backend.
#[derive(Debug, Clone)]
pub struct Target {
    /// The service's table in the compiled config the request was routed with.
    pub table: Arc<ServiceTable>,
    /// Index of the matched rule.
    pub rule: usize,
    /// Index of the chosen backend in the rule.
    pub backend: usize,
    /// Counters of the service.
    pub stats: Arc<ServiceStats>,
    /// Where `balance` records the endpoint of each attempt (`None` for a
    /// mirror copy).
    pub chosen: Option<Arc<RouteInfo>>,
    /// The request's consistent-hash key, hashed (when the service hashes
    /// and the request has the key).
    pub hash: Option<u64>,
}

impl Target {
    /// `k=v,...` of the chosen subset (for metrics).
    pub fn subset(&self) -> &str {
        &self.table.rules[self.rule].backends[self.backend].label
    }
}

/// The endpoints a request's earlier attempts went to: a retry goes to
/// another endpoint when there is one (a dead endpoint answers a connect
/// failure fast, so its latency alone would not steer P2C away from it).
#[derive(Debug, Clone, Default)]
pub struct Tried(Arc<Mutex<Vec<usize>>>);

impl Tried {
    /// Endpoints tried so far (indices into the service's endpoints).
    pub fn list(&self) -> Vec<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records an attempt's endpoint.
    pub fn add(&self, i: usize) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(i);
    }
}

/// The endpoint chosen for an attempt.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The name its certificate carries, for a mesh workload (mTLS).
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// Through a peer's gateway: the pool key of connections to it for this
    /// service (one gateway address serves many names).
    pub dial: Option<Arc<str>>,
    /// The service's connect timeout and connection limit.
    pub limits: crate::tls::Dial,
}
