//! The live statistics a proxy reports to meshd on its discovery stream
//! (`meshctl stat`, the dashboard): per caller → callee edge, requests,
//! failures and latency buckets, counted with atomics as requests end
//! (`metrics::Recorder` keeps each connection's edges) and sent as the
//! difference since the last report. Nothing here is written to Raft; a
//! lost report only thins the last minute's figures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use raftmesh_api::stat::{bucket_of, LATENCY_BUCKETS};
use raftmesh_api::v1 as pb;

/// One edge as this proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EdgeKey {
    /// Inbound (to this workload) or outbound (from it).
    pub inbound: bool,
    /// The caller (namespace, service); empty when it has no mesh identity.
    pub source: (String, String),
    /// The callee (namespace, service).
    pub destination: (String, String),
    /// Outbound: the Route's name.
    pub route: String,
    /// Outbound: the backend's subset.
    pub subset: String,
}

/// Counts = requests, failures, local requests, local failures, then the
/// latency buckets.
const COUNTS: usize = 4 + LATENCY_BUCKETS;

/// One edge's traffic since the proxy started.
#[derive(Debug)]
pub struct EdgeCounts([AtomicU64; COUNTS]);

impl EdgeCounts {
    fn new() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    /// Counts one answer. `local`: this proxy made it (the request reached
    /// no other proxy).
    pub fn add(&self, failed: bool, local: bool, seconds: f64) {
        self.0[0].fetch_add(1, Relaxed);
        if failed {
            self.0[1].fetch_add(1, Relaxed);
        }
        if local {
            self.0[2].fetch_add(1, Relaxed);
            if failed {
                self.0[3].fetch_add(1, Relaxed);
            }
        }
        self.0[4 + bucket_of(seconds)].fetch_add(1, Relaxed);
    }

    fn read(&self) -> [u64; COUNTS] {
        std::array::from_fn(|i| self.0[i].load(Relaxed))
    }
}

/// Whether an answer counts as failed: a 5xx, or a gRPC status that is the
/// server's fault (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
/// UNAVAILABLE, DATA_LOSS); a refusal by policy (403, 429) or a client's
/// mistake is an answer, not a failure.
pub fn failed(code: u16, grpc: &str) -> bool {
    code >= 500 || matches!(grpc, "2" | "4" | "12" | "13" | "14" | "15")
}

/// At most this many edges are kept (a bound on top of the labels' own:
/// they come from the config and certificates).
const MAX_EDGES: usize = 4096;

/// Every edge of one proxy and what the last report covered.
#[derive(Debug)]
pub struct Edges {
    edges: Mutex<HashMap<EdgeKey, Arc<EdgeCounts>>>,
    reported: Mutex<Reported>,
}

#[derive(Debug)]
struct Reported {
    at: Instant,
    counts: HashMap<EdgeKey, [u64; COUNTS]>,
}

impl Default for Edges {
    fn default() -> Self {
        Self {
            edges: Mutex::default(),
            reported: Mutex::new(Reported {
                at: Instant::now(),
                counts: HashMap::new(),
            }),
        }
    }
}

impl Edges {
    /// The counters of `key` (kept by the caller's connection); `None` past
    /// the bound or for an edge to no known service.
    pub fn get(&self, key: EdgeKey) -> Option<Arc<EdgeCounts>> {
        if key.destination.1.is_empty() {
            return None;
        }
        let mut edges = self.edges.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = edges.get(&key) {
            return Some(c.clone());
        }
        if edges.len() >= MAX_EDGES {
            return None;
        }
        let c = Arc::new(EdgeCounts::new());
        edges.insert(key, c.clone());
        Some(c)
    }

    /// What changed since the last report (edges with no new requests
    /// left out), and marks it reported.
    pub fn report(&self) -> pb::Stats {
        let now: Vec<(EdgeKey, [u64; COUNTS])> = self
            .edges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, c)| (k.clone(), c.read()))
            .collect();
        let mut r = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        let at = Instant::now();
        let window_ms = at.duration_since(r.at).as_millis().min(u32::MAX as u128) as u32;
        r.at = at;
        let mut edges = Vec::new();
        for (key, counts) in now {
            let before = r.counts.get(&key).copied().unwrap_or([0; COUNTS]);
            let d: [u64; COUNTS] = std::array::from_fn(|i| counts[i].saturating_sub(before[i]));
            // Counters read while requests end may be torn (one a request
            // ahead of another): the buckets say how many requests ended,
            // the rest is held to them, and what is left over goes in the
            // next report (the baseline moves by what was reported).
            let requests: u64 = d[4..].iter().sum();
            let failures = d[1].min(requests);
            let local = d[2].min(requests);
            let local_failures = d[3].min(local).min(failures);
            let mut sent = before;
            for (i, v) in [requests, failures, local, local_failures]
                .into_iter()
                .enumerate()
            {
                sent[i] += v;
            }
            for i in 4..COUNTS {
                sent[i] += d[i];
            }
            if requests > 0 {
                edges.push(pb::StatsEdge {
                    inbound: key.inbound,
                    source_namespace: key.source.0.clone(),
                    source_service: key.source.1.clone(),
                    destination_namespace: key.destination.0.clone(),
                    destination_service: key.destination.1.clone(),
                    route: key.route.clone(),
                    subset: key.subset.clone(),
                    requests,
                    failures,
                    local_requests: local,
                    local_failures,
                    latency_buckets: d[4..].to_vec(),
                });
            }
            r.counts.insert(key, sent);
        }
        pb::Stats { window_ms, edges }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(inbound: bool, dest: &str) -> EdgeKey {
        EdgeKey {
            inbound,
            source: ("default".into(), "frontend".into()),
            destination: ("default".into(), dest.into()),
            route: String::new(),
            subset: String::new(),
        }
    }

    #[test]
    fn a_report_holds_what_changed_since_the_last_one() {
        let e = Edges::default();
        let web = e.get(key(true, "web")).unwrap();
        let api = e.get(key(false, "api")).unwrap();
        web.add(false, false, 0.001);
        web.add(true, false, 0.002);
        api.add(true, true, 0.0001);
        let r = e.report();
        assert_eq!(r.edges.len(), 2);
        let w = r.edges.iter().find(|x| x.inbound).unwrap();
        assert_eq!((w.requests, w.failures, w.local_requests), (2, 1, 0));
        assert_eq!(w.latency_buckets.len(), LATENCY_BUCKETS);
        assert_eq!(w.latency_buckets.iter().sum::<u64>(), 2);
        let a = r.edges.iter().find(|x| !x.inbound).unwrap();
        assert_eq!((a.requests, a.local_requests, a.local_failures), (1, 1, 1));
        // Only the new answer is in the next report; an idle edge is left out.
        web.add(false, false, 0.001);
        let r = e.report();
        assert_eq!(r.edges.len(), 1);
        assert_eq!(r.edges[0].requests, 1);
        assert!(e.report().edges.is_empty());
    }

    #[test]
    fn a_torn_read_is_reported_consistently_and_its_rest_later() {
        let e = Edges::default();
        let c = e.get(key(true, "web")).unwrap();
        // As if read between a request's counters: failed and counted,
        // but not in a bucket yet.
        c.0[0].fetch_add(1, Relaxed);
        c.0[1].fetch_add(1, Relaxed);
        assert!(e.report().edges.is_empty());
        c.0[4].fetch_add(1, Relaxed);
        let r = e.report();
        assert_eq!((r.edges[0].requests, r.edges[0].failures), (1, 1));
        assert!(e.report().edges.is_empty());
    }

    #[test]
    fn edges_to_no_service_are_not_kept() {
        let e = Edges::default();
        assert!(e.get(key(false, "")).is_none());
    }

    #[test]
    fn failures_are_the_servers_fault_only() {
        assert!(failed(503, ""));
        assert!(failed(200, "14"));
        assert!(!failed(403, ""));
        assert!(!failed(429, ""));
        assert!(!failed(200, "5"));
        assert!(!failed(200, "0"));
    }
}
