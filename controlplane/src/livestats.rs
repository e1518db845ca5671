//! Live traffic statistics (`meshctl stat`, the dashboard): what proxies
//! report on their discovery streams (`ProxyMessage.stats`, every few
//! seconds), kept a minute per session and never written to Raft; merged
//! per node (`Raft/Stats`) and across the cluster into the rows
//! `raftmesh_api::stat::StatRow` describes. Design: `docs/adr/0005-live-stats.md`.
//!
//! Counting rules: a service's (and an edge's) figures come from its own
//! proxies' inbound side, plus the answers a caller's proxy made itself
//! (no route, no healthy endpoint, connection refused: the request reached
//! no inbound proxy), so no request counts twice. A Route's rows come from
//! its callers' proxies (outbound), by backend.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use raftmesh_api::stat::{quantile_ms, StatRow, LATENCY_BUCKETS};
use raftmesh_api::v1 as pb;
use serde::{Deserialize, Serialize};
use tonic::Request;

use crate::cluster::ClusterOps;
use crate::discovery::session::{ProxyInfo, Session};

/// How far back the figures reach.
pub const WINDOW: Duration = Duration::from_secs(60);

/// At most this many reports are kept per proxy (one a second at most).
const MAX_REPORTS: usize = 60;
/// At most this many edges per report.
pub const MAX_EDGES: usize = 256;
/// At most this many different edges are kept per proxy (over its minute).
pub const MAX_KEPT_EDGES: usize = 256;
/// Reports closer together than this are refused.
pub const MIN_REPORT_GAP_MS: u64 = 500;
/// A name (namespace, service, route, subset) is at most this long.
const MAX_NAME: usize = 253;
/// A report covers at most this long.
const MAX_REPORT_MS: u32 = 120_000;

/// One report as a session keeps it.
#[derive(Debug)]
struct Report {
    at_ms: u64,
    window_ms: u64,
    edges: Vec<pb::StatsEdge>,
}

/// The last minute of one proxy's reports.
#[derive(Debug, Default)]
pub struct Reports(Mutex<VecDeque<Report>>);

/// An edge's identity in a report.
type ReportedEdge = (bool, [String; 6]);

fn edge_id(e: &pb::StatsEdge) -> ReportedEdge {
    (
        e.inbound,
        [
            e.source_namespace.clone(),
            e.source_service.clone(),
            e.destination_namespace.clone(),
            e.destination_service.clone(),
            e.route.clone(),
            e.subset.clone(),
        ],
    )
}

impl Reports {
    /// Keeps a validated report received at `now_ms` from a proxy connected
    /// since `since_ms` that calls `calls`:
    /// - its window is the time since its last report (or since it
    ///   connected) as this node measured it, whatever the proxy claims, so
    ///   a proxy cannot raise its rates by claiming short windows, and a
    ///   report sooner than [`MIN_REPORT_GAP_MS`] is refused;
    /// - an outbound edge to a service it does not call is dropped (its
    ///   local answers would count in that service's figures);
    /// - at most [`MAX_KEPT_EDGES`] different edges are kept over the minute.
    ///
    /// Answers how many edges were dropped.
    pub fn push(
        &self,
        now_ms: u64,
        since_ms: u64,
        calls: &std::collections::BTreeSet<(String, String)>,
        s: pb::Stats,
    ) -> Result<usize, String> {
        let mut q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let last = q.back().map_or(since_ms, |r| r.at_ms);
        let gap = now_ms.saturating_sub(last);
        if gap < MIN_REPORT_GAP_MS {
            return Err(format!(
                "stats: a report {gap} ms after the last; at most one every {MIN_REPORT_GAP_MS} ms"
            ));
        }
        let oldest = now_ms.saturating_sub(WINDOW.as_millis() as u64);
        while q.len() >= MAX_REPORTS || q.front().is_some_and(|r| r.at_ms < oldest) {
            q.pop_front();
        }
        let mut kept: std::collections::BTreeSet<_> =
            q.iter().flat_map(|r| r.edges.iter().map(edge_id)).collect();
        let called = |e: &pb::StatsEdge| {
            // An import (`svc.peer`) is called through the local `svc`.
            let svc = e.destination_service.split('.').next().unwrap_or_default();
            calls.contains(&(e.destination_namespace.clone(), svc.to_string()))
        };
        let total = s.edges.len();
        let mut edges = Vec::with_capacity(total);
        for e in s.edges {
            if !e.inbound && !called(&e) {
                continue;
            }
            let id = edge_id(&e);
            if !kept.contains(&id) {
                if kept.len() >= MAX_KEPT_EDGES {
                    continue;
                }
                kept.insert(id);
            }
            edges.push(e);
        }
        let dropped = total - edges.len();
        drop(kept);
        q.push_back(Report {
            at_ms: now_ms,
            window_ms: gap.min(u64::from(MAX_REPORT_MS)),
            edges,
        });
        Ok(dropped)
    }
}

/// Checks a proxy's report: bounded, consistent, and about its own traffic
/// only (an inbound edge ends at its service, an outbound one starts
/// there). The error names what is wrong; the report is then dropped.
pub fn validate(who: &ProxyInfo, s: &pb::Stats) -> Result<(), String> {
    if s.window_ms == 0 || s.window_ms > MAX_REPORT_MS {
        return Err(format!(
            "stats: window_ms {} is not within 1..={MAX_REPORT_MS}",
            s.window_ms
        ));
    }
    if s.edges.len() > MAX_EDGES {
        return Err(format!(
            "stats: {} edges, at most {MAX_EDGES} per report",
            s.edges.len()
        ));
    }
    let own = (who.namespace.as_str(), who.service.as_str());
    for (i, e) in s.edges.iter().enumerate() {
        let at = |what: String| format!("stats: edge {i}: {what}");
        for (field, v) in [
            ("source_namespace", &e.source_namespace),
            ("source_service", &e.source_service),
            ("destination_namespace", &e.destination_namespace),
            ("destination_service", &e.destination_service),
            ("route", &e.route),
            ("subset", &e.subset),
        ] {
            if v.len() > MAX_NAME || v.chars().any(char::is_control) {
                return Err(at(format!(
                    "{field} is longer than {MAX_NAME} bytes or holds control characters"
                )));
            }
        }
        let (mine, side) = if e.inbound {
            (
                (
                    e.destination_namespace.as_str(),
                    e.destination_service.as_str(),
                ),
                "an inbound edge's destination",
            )
        } else {
            (
                (e.source_namespace.as_str(), e.source_service.as_str()),
                "an outbound edge's source",
            )
        };
        if mine != own {
            return Err(at(format!(
                "{side} is {}/{}, not this proxy's service {}/{}",
                mine.0, mine.1, own.0, own.1
            )));
        }
        if e.destination_service.is_empty() {
            return Err(at("no destination_service".into()));
        }
        if e.latency_buckets.len() != LATENCY_BUCKETS {
            return Err(at(format!(
                "{} latency buckets, not {LATENCY_BUCKETS}",
                e.latency_buckets.len()
            )));
        }
        let in_buckets = e
            .latency_buckets
            .iter()
            .try_fold(0u64, |a, n| a.checked_add(*n));
        if in_buckets != Some(e.requests)
            || e.failures > e.requests
            || e.local_requests > e.requests
            || e.local_failures > e.local_requests.min(e.failures)
        {
            return Err(at("counts do not add up (failures and local answers are at most the requests, the buckets hold every request)".into()));
        }
    }
    Ok(())
}

/// One edge's last minute on one node (or merged over several), as nodes
/// exchange it (`Raft/Stats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    /// Inbound (counted at the callee) or outbound (at the caller).
    pub inbound: bool,
    /// The caller (namespace, service); empty without a mesh identity.
    pub source: (String, String),
    /// The callee.
    pub destination: (String, String),
    /// Outbound: the Route and the backend's subset.
    pub route: String,
    /// The backend's subset.
    pub subset: String,
    /// Requests, failures, and the proxy's own answers.
    pub requests: u64,
    /// Of which failed.
    pub failures: u64,
    /// Outbound: answered by the caller's proxy itself.
    pub local_requests: u64,
    /// Of which failed.
    pub local_failures: u64,
    /// Requests per second (summed over proxies: each over the time its
    /// reports cover).
    pub rps: f64,
    /// The local answers per second.
    pub local_rps: f64,
    /// Latency counts per bucket.
    pub buckets: Vec<u64>,
}

/// A service: (namespace, name).
type Name = (String, String);

type EdgeId = (bool, Name, Name, String, String);

impl Edge {
    fn id(&self) -> EdgeId {
        (
            self.inbound,
            self.source.clone(),
            self.destination.clone(),
            self.route.clone(),
            self.subset.clone(),
        )
    }

    fn absorb(&mut self, o: &Edge) {
        self.requests = self.requests.saturating_add(o.requests);
        self.failures = self.failures.saturating_add(o.failures);
        self.local_requests = self.local_requests.saturating_add(o.local_requests);
        self.local_failures = self.local_failures.saturating_add(o.local_failures);
        self.rps += o.rps;
        self.local_rps += o.local_rps;
        if self.buckets.len() < o.buckets.len() {
            self.buckets.resize(o.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a = a.saturating_add(*b);
        }
    }
}

/// Merges edges with the same id.
pub fn merge(edges: impl IntoIterator<Item = Edge>) -> Vec<Edge> {
    let mut by: BTreeMap<EdgeId, Edge> = BTreeMap::new();
    for e in edges {
        match by.get_mut(&e.id()) {
            Some(m) => m.absorb(&e),
            None => {
                by.insert(e.id(), e);
            }
        }
    }
    by.into_values().collect()
}

/// The last minute of these sessions' reports, merged.
pub fn node_edges(sessions: &[Arc<Session>], now_ms: u64) -> Vec<Edge> {
    let oldest = now_ms.saturating_sub(WINDOW.as_millis() as u64);
    let mut all = Vec::new();
    for s in sessions {
        let q = s.reports.0.lock().unwrap_or_else(PoisonError::into_inner);
        let kept: Vec<&Report> = q.iter().filter(|r| r.at_ms >= oldest).collect();
        let covered_ms: u64 = kept.iter().map(|r| r.window_ms).sum();
        if covered_ms == 0 {
            continue;
        }
        let per_s = 1000.0 / covered_ms as f64;
        let edges = kept.iter().flat_map(|r| &r.edges).map(|e| Edge {
            inbound: e.inbound,
            source: (e.source_namespace.clone(), e.source_service.clone()),
            destination: (
                e.destination_namespace.clone(),
                e.destination_service.clone(),
            ),
            route: e.route.clone(),
            subset: e.subset.clone(),
            requests: e.requests,
            failures: e.failures,
            local_requests: e.local_requests,
            local_failures: e.local_failures,
            rps: e.requests as f64 * per_s,
            local_rps: e.local_requests as f64 * per_s,
            buckets: e.latency_buckets.clone(),
        });
        all.extend(merge(edges.collect::<Vec<_>>()));
    }
    merge(all)
}

/// Every node's edges, merged, and the nodes that could not be asked.
pub async fn cluster_edges(
    ops: &ClusterOps,
    hub: &actix::Addr<crate::discovery::hub::DiscoveryHub>,
) -> (Vec<Edge>, Vec<u64>) {
    let mut all = match hub.send(crate::discovery::hub::ListSessions).await {
        Ok(s) => node_edges(&s, crate::procinfo::unix_ms()),
        Err(_) => Vec::new(),
    };
    // Every other member at once: one that does not answer costs 2 s, not
    // 2 s per member.
    let peers = ops.peers();
    let asked = futures::future::join_all(peers.iter().map(|&id| async move {
        let addr = ops.addr_of(id).ok_or(())?;
        let mut client = ops.pool().get(&addr).map_err(|_| ())?;
        let mut req = Request::new(pb::RaftPayload {
            json: b"null".to_vec(),
        });
        req.set_timeout(Duration::from_secs(2));
        let reply = tokio::time::timeout(Duration::from_secs(2), client.stats(req))
            .await
            .map_err(|_| ())?
            .map_err(|_| ())?;
        serde_json::from_slice::<Vec<Edge>>(&reply.get_ref().json).map_err(|_| ())
    }))
    .await;
    let mut missing = Vec::new();
    for (id, r) in peers.into_iter().zip(asked) {
        match r {
            Ok(e) => all.extend(e),
            Err(()) => missing.push(id),
        }
    }
    (merge(all), missing)
}

/// What rows to make.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this service (as callee or caller).
    pub service: Option<String>,
    /// Only this namespace's services.
    pub namespace: Option<String>,
    /// A Route's backends instead of services and edges.
    pub route: Option<String>,
}

#[derive(Default)]
struct Sum {
    requests: u64,
    failures: u64,
    rps: f64,
    buckets: Vec<u64>,
}

impl Sum {
    fn add(&mut self, requests: u64, failures: u64, rps: f64, buckets: Option<&[u64]>) {
        self.requests = self.requests.saturating_add(requests);
        self.failures = self.failures.saturating_add(failures);
        self.rps += rps;
        if let Some(b) = buckets {
            if self.buckets.len() < b.len() {
                self.buckets.resize(b.len(), 0);
            }
            for (a, n) in self.buckets.iter_mut().zip(b) {
                *a = a.saturating_add(*n);
            }
        }
    }

    fn row(
        self,
        destination: &(String, String),
        from: Option<&(String, String)>,
        route: Option<(&str, &str)>,
    ) -> StatRow {
        let q = |p| quantile_ms(&self.buckets, p).unwrap_or(0.0);
        StatRow {
            namespace: destination.0.clone(),
            service: destination.1.clone(),
            from_namespace: from.map(|f| f.0.clone()),
            from: from.map(|f| f.1.clone()),
            route: route.map(|r| r.0.to_string()),
            subset: route.map(|r| r.1.to_string()),
            requests: self.requests,
            failures: self.failures,
            success_rate: if self.requests == 0 {
                1.0
            } else {
                1.0 - self.failures.min(self.requests) as f64 / self.requests as f64
            },
            rps: self.rps,
            p50_ms: q(0.5),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
        }
    }
}

/// The rows `meshctl stat` prints, sorted: each service as a whole, then
/// its callers; or a Route's backends.
pub fn rows(edges: &[Edge], f: &Filter) -> Vec<StatRow> {
    let ns_ok = |ns: &str| f.namespace.as_deref().is_none_or(|n| n == ns);
    if let Some(route) = &f.route {
        let mut by: BTreeMap<((String, String), String), Sum> = BTreeMap::new();
        for e in edges.iter().filter(|e| !e.inbound && &e.route == route) {
            if !ns_ok(&e.destination.0) {
                continue;
            }
            by.entry((e.destination.clone(), e.subset.clone()))
                .or_default()
                .add(e.requests, e.failures, e.rps, Some(&e.buckets));
        }
        return by
            .into_iter()
            .map(|((d, subset), s)| s.row(&d, None, Some((route, &subset))))
            .collect();
    }
    // Per callee, then per caller of it ("" = no mesh identity: the
    // service's row only).
    let mut by: BTreeMap<(Name, Option<Name>), Sum> = BTreeMap::new();
    for e in edges {
        let (requests, failures, rps, buckets) = if e.inbound {
            (e.requests, e.failures, e.rps, Some(e.buckets.as_slice()))
        } else if e.local_requests > 0 {
            (e.local_requests, e.local_failures, e.local_rps, None)
        } else {
            continue;
        };
        let callee = match f.service.as_deref() {
            Some(s) => e.destination.1 == s && ns_ok(&e.destination.0),
            None => ns_ok(&e.destination.0),
        };
        let caller = f
            .service
            .as_deref()
            .is_some_and(|s| e.source.1 == s && ns_ok(&e.source.0));
        if callee {
            by.entry((e.destination.clone(), None))
                .or_default()
                .add(requests, failures, rps, buckets);
        }
        if !e.source.1.is_empty() && (callee || caller) {
            by.entry((e.destination.clone(), Some(e.source.clone())))
                .or_default()
                .add(requests, failures, rps, buckets);
        }
    }
    by.into_iter()
        .map(|((d, from), s)| s.row(&d, from.as_ref(), None))
        .collect()
}

#[cfg(test)]
mod tests;
