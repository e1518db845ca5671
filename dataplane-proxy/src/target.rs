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

/// A slot the outermost handler passes down to learn where a request went
/// (service and subset), for metrics.
#[derive(Debug, Clone, Default)]
pub struct RouteInfo(
    pub Arc<std::sync::OnceLock<(String, String)>>,
    /// The endpoint of the last attempt, when the request is logged.
    pub Option<Arc<Mutex<Option<SocketAddr>>>>,
);

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
    /// Where `balance` records the endpoint of each attempt (a logged
    /// request's).
    pub chosen: Option<Arc<Mutex<Option<SocketAddr>>>>,
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
