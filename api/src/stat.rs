//! Live traffic statistics shared by the proxy (which counts), meshd (which
//! merges) and meshctl (which prints): the latency buckets, percentiles
//! from merged buckets, and the row `meshctl stat -o json` and the
//! dashboard's `/api/stat` print.

use serde::{Deserialize, Serialize};

use crate::v1 as pb;

/// Upper bounds of the latency buckets, in seconds: 0.1 ms doubling 18
/// times (to 13.1 s), the same as `raftmesh_proxy_request_duration_seconds`.
/// A report carries one more count, for answers slower than the last.
pub const LATENCY_BOUNDS_S: [f64; 18] = {
    let mut b = [0.0; 18];
    let mut i = 0;
    let mut v = 0.0001;
    while i < 18 {
        b[i] = v;
        v *= 2.0;
        i += 1;
    }
    b
};

/// Counts per report: one per bound and one unbounded.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_S.len() + 1;

/// The bucket an answer taking `seconds` counts in.
pub fn bucket_of(seconds: f64) -> usize {
    LATENCY_BOUNDS_S
        .iter()
        .position(|b| seconds <= *b)
        .unwrap_or(LATENCY_BOUNDS_S.len())
}

/// The `q` quantile (0–1) of merged bucket counts, in milliseconds,
/// interpolated within its bucket as Prometheus's `histogram_quantile`
/// does; answers in the unbounded bucket count as the last bound. `None`
/// when there are no counts.
pub fn quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        let before = seen;
        seen += n;
        if (seen as f64) >= rank && *n > 0 {
            let Some(upper) = LATENCY_BOUNDS_S.get(i) else {
                return Some(LATENCY_BOUNDS_S[LATENCY_BOUNDS_S.len() - 1] * 1000.0);
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BOUNDS_S[i - 1] };
            let within = (rank - before as f64) / *n as f64;
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
    }
    Some(LATENCY_BOUNDS_S[LATENCY_BOUNDS_S.len() - 1] * 1000.0)
}

/// One row of `meshctl stat`: a service as a whole (`from` empty) or one
/// caller → callee edge, or (with `route`) one backend of a Route as its
/// callers' proxies saw it. The figures cover the last minute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatRow {
    /// The callee's namespace.
    pub namespace: String,
    /// The callee.
    pub service: String,
    /// The caller's namespace (`null` with `from`).
    pub from_namespace: Option<String>,
    /// The calling service; `null` for the service as a whole (callers
    /// without a mesh identity count there only).
    pub from: Option<String>,
    /// A Route's rows: its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// A Route's rows: the backend's subset (`k=v,...`, empty for all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Requests answered in the window.
    pub requests: u64,
    /// Of which failed (5xx, or a server-side gRPC status).
    pub failures: u64,
    /// 1 − failures/requests.
    pub success_rate: f64,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<pb::StatRow> for StatRow {
    fn from(r: pb::StatRow) -> Self {
        let success_rate = if r.requests == 0 {
            1.0
        } else {
            1.0 - r.failures.min(r.requests) as f64 / r.requests as f64
        };
        let (from_namespace, from) = match opt(r.from) {
            Some(f) => (Some(r.from_namespace), Some(f)),
            None => (None, None),
        };
        let routed = !r.route.is_empty();
        StatRow {
            namespace: r.namespace,
            service: r.service,
            from_namespace,
            from,
            route: opt(r.route),
            subset: routed.then_some(r.subset),
            requests: r.requests,
            failures: r.failures,
            success_rate,
            rps: r.rps,
            p50_ms: r.p50_ms,
            p95_ms: r.p95_ms,
            p99_ms: r.p99_ms,
        }
    }
}

impl From<StatRow> for pb::StatRow {
    fn from(r: StatRow) -> Self {
        pb::StatRow {
            namespace: r.namespace,
            service: r.service,
            from_namespace: r.from_namespace.unwrap_or_default(),
            from: r.from.unwrap_or_default(),
            route: r.route.unwrap_or_default(),
            subset: r.subset.unwrap_or_default(),
            requests: r.requests,
            failures: r.failures,
            rps: r.rps,
            p50_ms: r.p50_ms,
            p95_ms: r.p95_ms,
            p99_ms: r.p99_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_match_the_proxy_histogram_and_buckets_are_found() {
        assert!((LATENCY_BOUNDS_S[0] - 0.0001).abs() < 1e-12);
        assert!((LATENCY_BOUNDS_S[17] - 0.0001 * 131072.0).abs() < 1e-9);
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(0.00015), 1);
        assert_eq!(bucket_of(60.0), 18);
    }

    #[test]
    fn quantiles_interpolate_within_merged_buckets() {
        let mut b = [0u64; LATENCY_BUCKETS];
        assert_eq!(quantile_ms(&b, 0.5), None);
        // 100 answers in (0.8 ms, 1.6 ms].
        b[bucket_of(0.001)] = 100;
        let p50 = quantile_ms(&b, 0.5).unwrap();
        assert!((p50 - 1.2).abs() < 1e-9, "{p50}");
        // One slow answer beyond the last bound: p99 stays within the
        // fast bucket, the maximum is the last bound.
        b[LATENCY_BUCKETS - 1] = 1;
        assert!(quantile_ms(&b, 0.99).unwrap() < 1.7);
        assert!((quantile_ms(&b, 1.0).unwrap() - 13107.2).abs() < 1e-6);
    }

    #[test]
    fn rows_keep_their_shape_through_the_wire() {
        let row = StatRow {
            namespace: "default".into(),
            service: "web".into(),
            from_namespace: Some("default".into()),
            from: Some("frontend".into()),
            route: None,
            subset: None,
            requests: 10,
            failures: 1,
            success_rate: 0.9,
            rps: 2.5,
            p50_ms: 1.0,
            p95_ms: 2.0,
            p99_ms: 3.0,
        };
        let back = StatRow::from(pb::StatRow::from(row.clone()));
        assert_eq!(back, row);
        let json = serde_json::to_value(&back).unwrap();
        assert_eq!(json["from"], "frontend");
        assert!(json.get("route").is_none());
        let whole = StatRow::from(pb::StatRow {
            service: "web".into(),
            requests: 0,
            ..Default::default()
        });
        assert_eq!(whole.from, None);
        assert_eq!(whole.success_rate, 1.0);
    }
}
