//! Prometheus metrics of one proxy: each [`Metrics`] has its own registry,
//! so proxies running in one process (tests, benchmarks) count apart.
//!
//! Every label value is bounded: services, routes, subsets and identities
//! come from the config or from certificates the mesh's CA issued, status
//! codes and gRPC statuses are numbers from fixed sets, error codes are the
//! mesh's own. No path, host, header value or instance address is a label.
//! Every series is listed in `docs/observability.md`.

use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::compiled::{ServiceId, ServiceTable};
use crate::livestats::{EdgeCounts, EdgeKey};
use crate::target::RouteInfo;

/// One side of a request or connection: a workload, as far as it is known.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Party {
    /// Its namespace (empty: unknown).
    pub namespace: String,
    /// Its service (empty: unknown).
    pub service: String,
    /// Its SPIFFE ID (empty: none proven).
    pub identity: String,
}

impl Party {
    /// The workload a SPIFFE ID names (a caller's certificate); unknown
    /// for none, or for an ID not of the mesh's form.
    pub fn of_spiffe(id: Option<&str>) -> Party {
        let Some(id) = id else {
            return Party::default();
        };
        match raftmesh_api::identity::parse_spiffe_id(id) {
            Some(w) => Party {
                namespace: w.namespace.to_string(),
                service: w.service.to_string(),
                identity: id.to_string(),
            },
            None => Party {
                identity: id.to_string(),
                ..Party::default()
            },
        }
    }

    /// The caller a certificate proves, as a label: a caller of another
    /// trust domain (a federated peer, whose CA could mint any number of
    /// identities) counts as its trust domain only, `spiffe://<td>`.
    pub fn caller(id: Option<&str>, config: &crate::state::Config) -> Party {
        let own = config.own_spiffe();
        let own_td = own
            .as_deref()
            .and_then(raftmesh_api::identity::parse_spiffe_id)
            .map(|w| w.trust_domain);
        match id.and_then(raftmesh_api::identity::parse_spiffe_id) {
            Some(w) if Some(w.trust_domain) != own_td => Party {
                identity: format!("spiffe://{}", w.trust_domain),
                ..Party::default()
            },
            _ => Party::of_spiffe(id),
        }
    }

    /// This proxy's workload.
    pub fn own(config: &crate::state::Config) -> Party {
        Party {
            namespace: config.identity.namespace.clone(),
            service: config.identity.service.clone(),
            identity: config.own_spiffe().unwrap_or_default(),
        }
    }
}

/// The labels of `raftmesh_proxy_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The caller's namespace.
    pub source_namespace: String,
    /// The caller's service.
    pub source_service: String,
    /// The caller's SPIFFE ID (inbound: from its certificate).
    pub source_identity: String,
    /// The callee's namespace.
    pub destination_namespace: String,
    /// The callee's service.
    pub destination_service: String,
    /// The callee's SPIFFE ID (outbound: the endpoint's).
    pub destination_identity: String,
    /// The Route resource that routed it (outbound).
    pub route: String,
    /// The index of the Route's rule that matched (outbound).
    pub rule: String,
    /// The chosen subset, `k=v,...` (outbound).
    pub subset: String,
    /// `2xx`, `4xx`, ...
    pub status_class: &'static str,
    /// The HTTP status code.
    pub code: u16,
    /// The gRPC status (`0`..`16`), for gRPC calls.
    pub grpc_status: &'static str,
    /// The `x-raftmesh-error` code, when the mesh answered an error.
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    direction: &'static str,
    source_namespace: String,
    source_service: String,
    destination_namespace: String,
    destination_service: String,
    route: String,
    status_class: &'static str,
}

/// A service this proxy calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination_namespace: String,
    destination_service: String,
}

impl DestinationLabels {
    fn of(id: &ServiceId) -> Self {
        Self {
            destination_namespace: id.0.clone(),
            destination_service: id.1.clone(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointStateLabels {
    destination_namespace: String,
    destination_service: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// The labels of TCP connection series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    direction: &'static str,
    peer_namespace: String,
    peer_service: String,
    peer_identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    /// `server` (inbound) or `client` (to an endpoint or an External).
    side: &'static str,
    /// `ok` or `failed`.
    result: &'static str,
    /// Why it failed (empty when it did not).
    reason: &'static str,
}

type IntGauge = Gauge<i64, AtomicI64>;

/// The metrics of one proxy.
pub struct Metrics {
    registry: Registry,
    /// Every family registered (`<prefix>_<name>`) and its type
    /// (`counter`, `gauge`, `histogram`).
    families: Vec<(String, &'static str)>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    retries: Family<DestinationLabels, Counter>,
    ejections: Family<DestinationLabels, Counter>,
    errors: Family<CodeLabel, Counter>,
    fallbacks: Family<ReasonLabel, Counter>,
    connections: Family<DirectionLabel, IntGauge>,
    opened: Family<PeerLabels, Counter>,
    closed: Family<PeerLabels, Counter>,
    received: Family<PeerLabels, Counter>,
    sent: Family<PeerLabels, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    nacks: Counter<u64, AtomicU64>,
    revision: IntGauge,
    applied_at: Gauge<f64, AtomicU64>,
    config_age: Gauge<f64, AtomicU64>,
    endpoints: Family<EndpointStateLabels, IntGauge>,
    in_flight: Family<DestinationLabels, IntGauge>,
    circuit_open: Family<DestinationLabels, IntGauge>,
    /// Held while rendering.
    rendering: Mutex<()>,
    /// The edges reported to meshd (`meshctl stat`).
    pub edges: crate::livestats::Edges,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Registers `metric` as `name` and notes the name.
fn reg<M: prometheus_client::registry::Metric>(
    r: &mut Registry,
    names: &mut Vec<(&'static str, &'static str)>,
    name: &'static str,
    help: &str,
    metric: M,
) {
    let kind = match metric.metric_type() {
        prometheus_client::metrics::MetricType::Counter => "counter",
        prometheus_client::metrics::MetricType::Histogram => "histogram",
        _ => "gauge",
    };
    names.push((name, kind));
    r.register(name, help, metric);
}

impl Metrics {
    /// The name of every family (as in `# HELP` lines; a family with no
    /// series yet is not in the exposition at all).
    pub fn families(&self) -> &[(String, &'static str)] {
        &self.families
    }

    /// A registry with every series of the proxy.
    pub fn new() -> Arc<Self> {
        let mut r = Registry::with_prefix("raftmesh_proxy");
        let m = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(raftmesh_api::stat::LATENCY_BOUNDS_S)
            }),
            retries: Family::default(),
            ejections: Family::default(),
            errors: Family::default(),
            fallbacks: Family::default(),
            connections: Family::default(),
            opened: Family::default(),
            closed: Family::default(),
            received: Family::default(),
            sent: Family::default(),
            handshakes: Family::default(),
            nacks: Counter::default(),
            edges: crate::livestats::Edges::default(),
            revision: Gauge::default(),
            applied_at: Gauge::default(),
            config_age: Gauge::default(),
            endpoints: Family::default(),
            in_flight: Family::default(),
            circuit_open: Family::default(),
            rendering: Mutex::new(()),
            registry: Registry::default(),
            families: Vec::new(),
        };
        let mut names = Vec::new();
        reg(&mut r, &mut names,
            "requests",
            "Requests answered, by direction, source and destination (service and identity), route, rule, subset, status class and code, gRPC status and x-raftmesh-error code",
            m.requests.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "request_duration_seconds",
            "Time from a request's arrival to its answer's head (gRPC: to its trailers)",
            m.latency.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "retries",
            "Retries sent, by destination",
            m.retries.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "ejections",
            "Endpoints ejected after consecutive failures, by destination",
            m.ejections.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "errors",
            "Answers and refusals the proxy made itself, by x-raftmesh-error code",
            m.errors.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "http1_fallbacks",
            "Inbound HTTP/1.1 connections the fast path handed to hyper, by the reason of the request that needed it",
            m.fallbacks.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "open_connections",
            "Open client connections, by direction",
            m.connections.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "tcp_connections_opened",
            "Connections opened, by direction and peer",
            m.opened.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "tcp_connections_closed",
            "Connections closed, by direction and peer",
            m.closed.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "tcp_received_bytes",
            "Bytes received from the peer of a connection (after TLS), by direction and peer",
            m.received.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "tcp_sent_bytes",
            "Bytes sent to the peer of a connection (before TLS), by direction and peer",
            m.sent.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "tls_handshakes",
            "TLS handshakes, by side, result and failure reason",
            m.handshakes.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "config_nacks",
            "Configurations refused",
            m.nacks.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "config_revision",
            "The revision of the configuration in force",
            m.revision.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "config_applied_timestamp_seconds",
            "When the configuration in force was installed (Unix time)",
            m.applied_at.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "config_age_seconds",
            "Time since the configuration in force was installed",
            m.config_age.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "endpoints",
            "Endpoints of the services this proxy calls, by state (usable, ejected, unhealthy)",
            m.endpoints.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "requests_in_flight",
            "Requests in flight to a service",
            m.in_flight.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "circuit_open",
            "1 while a service's max_in_flight is reached (new requests get circuit-open)",
            m.circuit_open.clone(),
        );
        Arc::new(Metrics {
            registry: r,
            families: names
                .iter()
                .map(|(n, k)| (format!("raftmesh_proxy_{n}"), *k))
                .collect(),
            ..m
        })
    }

    /// Counts a retry.
    pub fn retry(&self, service: &ServiceId) {
        self.retries
            .get_or_create(&DestinationLabels::of(service))
            .inc();
    }

    /// Counts an ejection.
    pub fn ejection(&self, service: &ServiceId) {
        self.ejections
            .get_or_create(&DestinationLabels::of(service))
            .inc();
    }

    /// Counts a response or refusal the proxy made itself.
    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&CodeLabel { code }).inc();
    }

    /// Counts an inbound connection the fast path handed to hyper.
    pub fn fallback(&self, reason: &'static str) {
        self.fallbacks.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a refused configuration.
    pub fn nack(&self) {
        self.nacks.inc();
    }

    /// Records a configuration installed.
    pub fn config_installed(&self, revision: u64) {
        self.revision
            .set(i64::try_from(revision).unwrap_or(i64::MAX));
        self.applied_at.set(crate::unix_ms() as f64 / 1000.0);
    }

    /// Counts a TLS handshake (`reason` empty when it succeeded).
    pub fn handshake(&self, side: &'static str, reason: Option<&'static str>) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                side,
                result: if reason.is_some() { "failed" } else { "ok" },
                reason: reason.unwrap_or(""),
            })
            .inc();
    }

    /// The Prometheus text exposition; the series read at scrape time
    /// (config age, endpoint states, requests in flight) are taken from
    /// `config` first.
    pub fn render(&self, config: &crate::state::Config) -> String {
        // One scrape at a time: the gauges below are cleared and refilled.
        let _one = self
            .rendering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let applied = self.applied_at.get();
        if applied > 0.0 {
            self.config_age
                .set((crate::unix_ms() as f64 / 1000.0 - applied).max(0.0));
        }
        self.endpoints.clear();
        self.in_flight.clear();
        self.circuit_open.clear();
        let current = config.current();
        for (id, t) in &current.services {
            let Some(stats) = config.stats.existing(id) else {
                // Never called: nothing to say about it.
                continue;
            };
            let dest = DestinationLabels::of(id);
            let state = |state| EndpointStateLabels {
                destination_namespace: id.0.clone(),
                destination_service: id.1.clone(),
                state,
            };
            let mut counts = [0i64; 3];
            for e in &t.endpoints {
                counts[if !e.healthy {
                    2
                } else if e.stats.ejected() {
                    1
                } else {
                    0
                }] += 1;
            }
            for (s, n) in ["usable", "ejected", "unhealthy"].into_iter().zip(counts) {
                self.endpoints.get_or_create(&state(s)).set(n);
            }
            let n = stats.in_flight.load(std::sync::atomic::Ordering::Relaxed);
            self.in_flight.get_or_create(&dest).set(i64::from(n));
            self.circuit_open
                .get_or_create(&dest)
                .set(i64::from(t.max_in_flight.is_some_and(|m| n >= m)));
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// `1xx` .. `5xx`; `other` outside 100–599 (a status a server outside
/// the mesh may send).
fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// A `grpc-status` value as a label: `0`..`16`, or `other`.
pub fn grpc_status(v: Option<&http::HeaderValue>) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    let Some(v) = v else { return "" };
    std::str::from_utf8(v.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .and_then(|n| CODES.get(n).copied())
        .unwrap_or("other")
}

/// What one request's series are keyed by on a connection.
/// What the cache matches a request by: the table by address only, held
/// weakly (its address cannot be reused while the `Weak` lives, and an old
/// config's endpoints are not kept alive by a long-lived connection).
struct Key {
    route: Option<(std::sync::Weak<ServiceTable>, usize, usize)>,
    identity: Option<Arc<str>>,
    code: u16,
    grpc: &'static str,
    error: &'static str,
}

impl Key {
    fn same(&self, o: &Key) -> bool {
        self.code == o.code
            && self.grpc == o.grpc
            && self.error == o.error
            && self.identity == o.identity
            && match (&self.route, &o.route) {
                (None, None) => true,
                (Some((a, ra, ba)), Some((b, rb, bb))) => {
                    std::sync::Weak::ptr_eq(a, b) && ra == rb && ba == bb
                }
                _ => false,
            }
    }
}

/// The request series of one connection: its fixed side is known once, and
/// the series its requests count under are looked up once and kept (a few
/// per connection), so a request costs a short scan and two atomic adds
/// instead of label allocations and hash lookups.
pub struct Recorder {
    metrics: Arc<Metrics>,
    side: Side,
    cache: Mutex<Vec<Cached>>,
}

/// A connection's series for one key: the Prometheus ones and its edge's
/// live counts (none for an edge to no known service).
type Cached = (Key, Counter, Histogram, Option<Arc<EdgeCounts>>);

/// Which side of the requests a connection carries.
enum Side {
    /// From this workload's app: the source is read from the config at each
    /// new series (its identity is known only once the trust domain is),
    /// the destination is each request's service.
    Outbound(Arc<crate::state::Config>),
    /// From `caller` to this workload (`own`).
    Inbound { caller: Party, own: Party },
}

/// Series kept per connection.
const CACHED: usize = 8;

impl Recorder {
    /// For requests from this workload's app.
    pub fn outbound(config: &Arc<crate::state::Config>) -> Self {
        Self {
            metrics: config.metrics.clone(),
            side: Side::Outbound(config.clone()),
            cache: Mutex::new(Vec::new()),
        }
    }

    /// For requests from `caller` to this workload.
    pub fn inbound(metrics: &Arc<Metrics>, caller: Party, own: Party) -> Self {
        Self {
            metrics: metrics.clone(),
            side: Side::Inbound { caller, own },
            cache: Mutex::new(Vec::new()),
        }
    }

    /// Counts one answered request: `route` is where it went (outbound),
    /// `error` the mesh's error code when the mesh answered one, `local`
    /// whether this proxy answered it itself.
    pub fn record(
        &self,
        route: Option<&RouteInfo>,
        (code, grpc, error): (u16, &'static str, &'static str),
        local: bool,
        took: Duration,
    ) {
        let routed = route.and_then(|r| r.route());
        let key = Key {
            route: routed.map(|(t, r, b)| (Arc::downgrade(t), *r, *b)),
            identity: route
                .and_then(|r| r.endpoint())
                .and_then(|e| e.identity.clone()),
            code,
            grpc,
            error,
        };
        let secs = took.as_secs_f64();
        let count = |(_, c, h, e): &Cached| {
            c.inc();
            h.observe(secs);
            if let Some(e) = e {
                e.add(crate::livestats::failed(code, grpc), local, secs);
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(hit) = cache.iter().find(|(k, ..)| k.same(&key)) {
            count(hit);
            return;
        }
        let (c, h, e) = self.series(&key, routed);
        let entry = (key, c, h, e);
        count(&entry);
        if cache.len() == CACHED {
            cache.remove(0);
        }
        cache.push(entry);
    }

    fn series(
        &self,
        key: &Key,
        routed: Option<&(Arc<ServiceTable>, usize, usize)>,
    ) -> (Counter, Histogram, Option<Arc<EdgeCounts>>) {
        let unknown = Party::default();
        let (direction, source, destination) = match &self.side {
            Side::Outbound(config) => ("outbound", Party::own(config), &unknown),
            Side::Inbound { caller, own } => ("inbound", caller.clone(), own),
        };
        let (dest_ns, dest_svc, route, rule, subset) = match routed {
            Some((t, r, b)) => (
                t.id.0.clone(),
                t.id.1.clone(),
                t.route.as_deref().unwrap_or("").to_string(),
                if t.route.is_some() {
                    r.to_string()
                } else {
                    String::new()
                },
                t.rules[*r].backends[*b].label.clone(),
            ),
            None => (
                destination.namespace.clone(),
                destination.service.clone(),
                String::new(),
                String::new(),
                String::new(),
            ),
        };
        let dest_identity = match &key.identity {
            Some(id) => id.to_string(),
            None => destination.identity.clone(),
        };
        let edge = self.metrics.edges.get(EdgeKey {
            inbound: direction == "inbound",
            source: (source.namespace.clone(), source.service.clone()),
            destination: (dest_ns.clone(), dest_svc.clone()),
            route: route.clone(),
            subset: subset.clone(),
        });
        let status_class = status_class(key.code);
        let latency = LatencyLabels {
            direction,
            source_namespace: source.namespace.clone(),
            source_service: source.service.clone(),
            destination_namespace: dest_ns.clone(),
            destination_service: dest_svc.clone(),
            route: route.clone(),
            status_class,
        };
        let labels = RequestLabels {
            direction,
            source_namespace: source.namespace.clone(),
            source_service: source.service.clone(),
            source_identity: source.identity.clone(),
            destination_namespace: dest_ns,
            destination_service: dest_svc,
            destination_identity: dest_identity,
            route,
            rule,
            subset,
            status_class,
            // Bounded: a code outside 100–599 counts as 0.
            code: if (100..=599).contains(&key.code) {
                key.code
            } else {
                0
            },
            grpc_status: key.grpc,
            error: key.error,
        };
        (
            self.metrics.requests.get_or_create(&labels).clone(),
            self.metrics.latency.get_or_create(&latency).clone(),
            edge,
        )
    }
}

/// A gRPC answer whose status comes in its trailers: counted when they
/// arrive (or when the answer ends without them).
pub struct Tally {
    recorder: Arc<Recorder>,
    route: Option<Arc<RouteInfo>>,
    code: u16,
    error: &'static str,
    started: std::time::Instant,
    grpc: &'static str,
}

impl Tally {
    /// Waits for the trailers of an answer `code`.
    pub fn new(
        recorder: Arc<Recorder>,
        route: Option<Arc<RouteInfo>>,
        code: u16,
        error: &'static str,
        started: std::time::Instant,
    ) -> Box<Self> {
        Box::new(Self {
            recorder,
            route,
            code,
            error,
            started,
            grpc: "",
        })
    }

    /// The answer's trailers.
    pub fn trailers(&mut self, t: &http::HeaderMap) {
        self.grpc = grpc_status(t.get("grpc-status"));
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        // Trailers came from the other side: not an answer of this proxy's.
        self.recorder.record(
            self.route.as_deref(),
            (self.code, self.grpc, self.error),
            false,
            self.started.elapsed(),
        );
    }
}

/// One connection, counted open, opened and closed (by direction and
/// peer), with the bytes through it.
pub struct ConnGuard {
    open: IntGauge,
    metrics: Arc<Metrics>,
    direction: &'static str,
    /// Counted opened (its peer known): counted closed when dropped.
    closed: Option<Counter>,
}

impl ConnGuard {
    /// A connection accepted on `direction`; it counts as opened once its
    /// peer is known ([`ConnGuard::peer`]: a connection refused before,
    /// in its TLS handshake say, never does).
    pub fn open(metrics: &Arc<Metrics>, direction: &'static str) -> Self {
        let g = metrics
            .connections
            .get_or_create(&DirectionLabel { direction })
            .clone();
        g.inc();
        Self {
            open: g,
            metrics: metrics.clone(),
            direction,
            closed: None,
        }
    }

    /// The connection's peer is known: it counts as opened, and `io`'s
    /// bytes count under it.
    pub fn peer<S>(&mut self, peer: &Party, io: S) -> Counted<S> {
        self.counted(peer, io, false)
    }

    /// [`ConnGuard::peer`] for a connection from the local app relayed to
    /// `peer`: what `io` (the app's side) sends is what the peer receives.
    pub fn relayed_to<S>(&mut self, peer: &Party, io: S) -> Counted<S> {
        self.counted(peer, io, true)
    }

    fn counted<S>(&mut self, peer: &Party, io: S, reversed: bool) -> Counted<S> {
        let labels = PeerLabels {
            direction: self.direction,
            peer_namespace: peer.namespace.clone(),
            peer_service: peer.service.clone(),
            peer_identity: peer.identity.clone(),
        };
        self.metrics.opened.get_or_create(&labels).inc();
        self.closed = Some(self.metrics.closed.get_or_create(&labels).clone());
        let (received, sent) = (
            self.metrics.received.get_or_create(&labels).clone(),
            self.metrics.sent.get_or_create(&labels).clone(),
        );
        let (received, sent) = if reversed {
            (sent, received)
        } else {
            (received, sent)
        };
        Counted {
            io,
            received,
            sent,
            totals: (0, 0),
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.dec();
        if let Some(c) = &self.closed {
            c.inc();
        }
    }
}

/// A stream whose bytes are counted as they pass.
pub struct Counted<S> {
    io: S,
    received: Counter,
    sent: Counter,
    /// (received, sent) on this connection.
    totals: (u64, u64),
}

impl<S> Counted<S> {
    /// Bytes received from the peer and sent to it so far.
    pub fn totals(&self) -> (u64, u64) {
        self.totals
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.received.inc_by(n as u64);
            self.totals.0 += n as u64;
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.sent.inc_by(n as u64);
            self.totals.1 += n as u64;
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.sent.inc_by(n as u64);
            self.totals.1 += n as u64;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Why a TLS handshake failed, as a label.
pub fn handshake_failure(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => "closed",
            _ => "io",
        };
    };
    match tls {
        Error::NoCertificatesPresented => "no-certificate",
        Error::InvalidCertificate(c) => match c {
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => "certificate-expired",
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown-issuer",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "wrong-name"
            }
            CertificateError::Revoked => "revoked",
            _ => "bad-certificate",
        },
        Error::AlertReceived(_) => "alert-received",
        Error::PeerIncompatible(_) | Error::NoApplicationProtocol => "incompatible",
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. }
        | Error::PeerMisbehaved(_) => "protocol",
        _ => "other",
    }
}
