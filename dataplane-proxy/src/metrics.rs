//! Prometheus metrics of one proxy: each [`Metrics`] has its own registry,
//! so proxies running in one process (tests, benchmarks) count apart.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Request labels (bounded: services and subsets come from config).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Target service (outbound) or own service (inbound).
    pub service: String,
    /// Chosen subset, `k=v,...`.
    pub subset: String,
    /// HTTP status code.
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    direction: &'static str,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// The metrics of one proxy.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    retries: Family<ServiceLabel, Counter>,
    ejections: Family<ServiceLabel, Counter>,
    errors: Family<CodeLabel, Counter>,
    connections: Family<DirectionLabel, Gauge<i64, std::sync::atomic::AtomicI64>>,
    nacks: Counter<u64, AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A registry with every series of the proxy.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("raftmesh_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        let retries = Family::<ServiceLabel, Counter>::default();
        let ejections = Family::<ServiceLabel, Counter>::default();
        let errors = Family::<CodeLabel, Counter>::default();
        let connections =
            Family::<DirectionLabel, Gauge<i64, std::sync::atomic::AtomicI64>>::default();
        let nacks = Counter::default();
        registry.register(
            "requests",
            "Requests by direction, service, subset and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency",
            latency.clone(),
        );
        registry.register("retries", "Retries sent", retries.clone());
        registry.register(
            "ejections",
            "Endpoints ejected after consecutive failures",
            ejections.clone(),
        );
        registry.register(
            "errors",
            "Responses the proxy made itself, by x-raftmesh-error code",
            errors.clone(),
        );
        registry.register(
            "open_connections",
            "Open client connections",
            connections.clone(),
        );
        registry.register("config_nacks", "Configurations refused", nacks.clone());
        Arc::new(Metrics {
            registry,
            requests,
            latency,
            retries,
            ejections,
            errors,
            connections,
            nacks,
        })
    }

    /// Counts a finished request.
    pub fn request(&self, labels: RequestLabels, took: Duration) {
        self.latency
            .get_or_create(&LatencyLabels {
                direction: labels.direction,
                service: labels.service.clone(),
            })
            .observe(took.as_secs_f64());
        self.requests.get_or_create(&labels).inc();
    }

    /// Counts a retry.
    pub fn retry(&self, service: &str) {
        self.retries
            .get_or_create(&ServiceLabel {
                service: service.into(),
            })
            .inc();
    }

    /// Counts an ejection.
    pub fn ejection(&self, service: &str) {
        self.ejections
            .get_or_create(&ServiceLabel {
                service: service.into(),
            })
            .inc();
    }

    /// Counts a response the proxy made itself.
    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&CodeLabel { code }).inc();
    }

    /// Counts a refused configuration.
    pub fn nack(&self) {
        self.nacks.inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The metrics of one inbound connection, looked up once: every request
/// on it has the same direction and service, and nearly every one the same
/// status code, so the per-request cost is an atomic add or two instead of
/// label allocations and hash lookups.
pub struct InboundRecorder {
    metrics: Arc<Metrics>,
    service: String,
    latency: Histogram,
    last: std::sync::Mutex<Option<(u16, Counter)>>,
}

impl InboundRecorder {
    /// For the proxy's own service.
    pub fn new(metrics: &Arc<Metrics>, service: &str) -> Self {
        let latency = metrics
            .latency
            .get_or_create(&LatencyLabels {
                direction: "inbound",
                service: service.to_string(),
            })
            .clone();
        Self {
            metrics: metrics.clone(),
            service: service.to_string(),
            latency,
            last: std::sync::Mutex::new(None),
        }
    }

    /// Records one request.
    pub fn record(&self, code: u16, took: Duration) {
        self.latency.observe(took.as_secs_f64());
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*last {
            Some((c, counter)) if *c == code => {
                counter.inc();
            }
            _ => {
                let counter = self
                    .metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        direction: "inbound",
                        service: self.service.clone(),
                        subset: String::new(),
                        code,
                    })
                    .clone();
                counter.inc();
                *last = Some((code, counter));
            }
        }
    }
}

/// Tracks an open connection until dropped.
pub struct ConnGuard(Gauge<i64, std::sync::atomic::AtomicI64>);

impl ConnGuard {
    /// A connection opened on `direction`.
    pub fn open(metrics: &Metrics, direction: &'static str) -> Self {
        let g = metrics
            .connections
            .get_or_create(&DirectionLabel { direction })
            .clone();
        g.inc();
        Self(g)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
