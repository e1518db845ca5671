//! The spec of each kind: Service, Endpoint, Route, Policy, MeshConfig,
//! Token, the federation kinds (Peer, Export, Import) and the workload CA
//! (Authority), with their YAML field names and defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::is_default;
use crate::HumanDuration;

/// Application protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (and HTTP/2 when both sides offer it).
    #[default]
    Http,
    /// HTTP/2 only.
    Http2,
    /// gRPC over HTTP/2.
    Grpc,
    /// Opaque TCP.
    Tcp,
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    /// 1–65535.
    pub port: u32,
    /// `http` when not given.
    #[serde(default)]
    pub protocol: Protocol,
}

/// `kind: Service`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The ports the service serves.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// The service's virtual IPv4 address, assigned by meshd from
    /// MeshConfig `service_vip_range` when the service is first stored and
    /// kept for its life; an apply may repeat it, never change it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<std::net::Ipv4Addr>,
}

/// Health of an endpoint as the control plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Receives traffic.
    #[default]
    Healthy,
    /// Receives no traffic.
    Unhealthy,
}

/// `kind: Endpoint` — one workload instance; its name is the instance id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// The service the instance belongs to.
    pub service: String,
    /// IP address or host name other proxies reach it at.
    pub address: String,
    /// Port of its inbound listener, 1–65535.
    pub port: u32,
    /// Labels that subsets select on (`version: v2`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The cluster it runs in; empty means this cluster.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// A locality (zone) for locality-aware balancing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub locality: String,
    /// Health as the control plane sees it.
    #[serde(default, skip_serializing_if = "is_default")]
    pub health: Health,
    /// SPIFFE ID its proxy presents, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identity: String,
    /// The meshd node holding its health lease; absent for endpoints written by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_node: Option<u64>,
    /// An east-west gateway of federation (`mesh-proxy --mode gateway`):
    /// peers reach the exported services through it.
    #[serde(default, skip_serializing_if = "is_default")]
    pub gateway: bool,
}

/// Conditions a request must meet for a rule to apply (all of them).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// The request path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Each header has exactly this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The request method (`GET`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The request path: exactly, by prefix, or by a regular expression
    /// (not with `path_prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Headers tested by exact value, regular expression, or presence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_matches: Vec<ValueMatch>,
    /// Query parameters tested by exact value, regular expression, or
    /// presence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
}

/// `matches[].path`: exactly one of `exact`, `prefix` and `regex`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    /// The whole path is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The whole path matches this regular expression (RE2 syntax, anchored
    /// at both ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A header or query parameter test: exactly one of `exact`, `regex` and
/// `present`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    /// The header or parameter name (a header's is compared without case).
    pub name: String,
    /// Its value is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Its whole value matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: it is there (any value); `false`: it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// Header changes: `set` replaces, `add` appends, `remove` drops.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Headers set to these values (replacing any).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers added with these values (beside any).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// `rules[].rewrite`: what the callee receives instead.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the prefix the request matched (every match of the rule
    /// must test a path prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Replaces the Host (authority) the callee sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// `rules[].redirect`: the caller's proxy answers with a redirect instead
/// of sending the request; the parts not given are the request's own.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// The whole path (the query is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Replaces the prefix the request matched (as `rewrite.path_prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

/// A weighted share of traffic to the endpoints whose labels hold a subset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Labels an endpoint must carry (non-empty).
    pub subset: BTreeMap<String, String>,
    /// Share of the rule's traffic; a rule's weights sum to 100.
    pub weight: u32,
}

/// One traffic rule: when `matches` hold (any of them; none = always),
/// split over `backends` (none = every endpoint of the service).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Alternatives; the rule applies when any matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Weighted subsets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
    /// Path and host rewrites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Changes to the request's headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderOps>,
    /// Changes to the response's headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderOps>,
    /// Answer with a redirect instead (no backends, no rewrite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Copy a share of the requests to another subset or service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

/// `rules[].mirror`: a copy of a share of the rule's requests sent to
/// another subset of the service, or to another service, fire and forget
/// (its answer is discarded; the caller never waits for it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Another service of the namespace (routed by its own Route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Or a subset of this service (labels).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subset: BTreeMap<String, String>,
    /// Share of the requests copied, 0–100.
    pub percent: u32,
    /// Requests with a larger body are not copied (default 64 KiB, at most
    /// 10 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u32>,
}

/// When a request is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RetryOn {
    /// Any 5xx answer.
    #[serde(rename = "5xx")]
    Status5xx,
    /// 502, 503, 504.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// The connection to the endpoint could not be made.
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The connection was reset before an answer.
    #[serde(rename = "reset")]
    Reset,
}

/// gRPC statuses a gRPC call is retried on (read from a trailers-only
/// answer's headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrpcRetryOn {
    /// 1 CANCELLED.
    Cancelled,
    /// 4 DEADLINE_EXCEEDED.
    DeadlineExceeded,
    /// 8 RESOURCE_EXHAUSTED.
    ResourceExhausted,
    /// 13 INTERNAL.
    Internal,
    /// 14 UNAVAILABLE.
    Unavailable,
}

impl GrpcRetryOn {
    /// Its numeric gRPC status.
    pub fn code(self) -> u8 {
        match self {
            GrpcRetryOn::Cancelled => 1,
            GrpcRetryOn::DeadlineExceeded => 4,
            GrpcRetryOn::ResourceExhausted => 8,
            GrpcRetryOn::Internal => 13,
            GrpcRetryOn::Unavailable => 14,
        }
    }
}

/// Retries, within the proxy's retry budget. Whatever the policy, a
/// request that never reached the app (the connection failed, or the
/// endpoint refused the stream) is retried on another endpoint; the
/// policy adds retries of idempotent requests on the conditions in `on`,
/// and of gRPC calls on the statuses in `grpc_on`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Further attempts after the first, at most 10 (0: no retry at all,
    /// not even of requests that never reached the app).
    pub attempts: u32,
    /// Conditions that trigger a retry of an idempotent request (GET,
    /// HEAD, OPTIONS, TRACE, PUT, DELETE); default `[5xx,
    /// connect-failure]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<RetryOn>,
    /// gRPC statuses that trigger a retry of a gRPC call (any method);
    /// default `[unavailable]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_on: Vec<GrpcRetryOn>,
    /// Time limit of each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<HumanDuration>,
    /// First backoff between attempts (default 25ms); each further one
    /// doubles, up to `backoff_max`, with full jitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_base: Option<HumanDuration>,
    /// Longest backoff (default 250ms, at least `backoff_base`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_max: Option<HumanDuration>,
}

/// Endpoint selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency.
    #[default]
    P2cEwma,
    /// Round robin.
    RoundRobin,
    /// Power of two choices over requests in flight.
    LeastRequest,
    /// A hash ring over `hash_on`: the same key reaches the same endpoint,
    /// and an endpoint leaving moves only its own keys.
    ConsistentHash,
}

/// `hash_on`: the key of `consistent-hash`, exactly one of these.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashOn {
    /// A request header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// The caller's workload identity.
    #[serde(default, skip_serializing_if = "is_default")]
    pub source_identity: bool,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RateLimitKey {
    /// Every request of the service, whoever sends it.
    #[default]
    Route,
    /// Each caller identity on its own.
    Caller,
}

/// `rate_limit`: a token bucket kept by each of the service's own proxies
/// (a local limit: N endpoints admit up to N times the rate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens added per second (1–1,000,000).
    pub requests_per_second: u32,
    /// Bucket size (default: `requests_per_second`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// One bucket for the route, or one per caller identity.
    #[serde(default, skip_serializing_if = "is_default")]
    pub per: RateLimitKey,
}

/// Limits per upstream service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Requests waiting for a connection or an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Open connections to the service's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

/// Ejection of failing endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx or connect failures before ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// First ejection time; doubles on each further ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection: Option<HumanDuration>,
    /// At most this share of endpoints is ejected at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// `kind: Route` — traffic rules for a service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The service these rules apply to.
    pub service: String,
    /// First matching rule wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RouteRule>,
    /// Time limit of a whole request, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Time limit of opening a connection to an endpoint (TCP and TLS);
    /// default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<HumanDuration>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// Balancing algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Circuit breaking limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Outlier ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<OutlierDetection>,
    /// Peers whose import of the service takes its traffic when no local
    /// endpoint can (all unhealthy or ejected), tried in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<String>,
    /// Faults injected into the service's requests, to test how callers
    /// bear them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Box<Fault>>,
    /// The key of `load_balancer: consistent-hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// How many requests the service's proxies admit (each on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// Faults injected by the caller's proxy (`Route.fault`): a share of the
/// requests delayed, a share answered with an error instead of sent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Delay before the request goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// An answer instead of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    /// Only requests with this header (`name` or `name: value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<FaultHeader>,
}

/// `fault.delay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// How long.
    pub fixed: HumanDuration,
    /// Share of the requests, 0–100.
    pub percent: u32,
}

/// `fault.abort`: exactly one of `http_status` and `grpc_status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// The HTTP status answered (200–599; a gRPC call gets its gRPC
    /// equivalent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u32>,
    /// The gRPC status answered (1–16; an HTTP request gets 503 for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// Share of the requests, 0–100.
    pub percent: u32,
}

/// `fault.header`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultHeader {
    /// The header's name.
    pub name: String,
    /// Its value; any value when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Whether a policy allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Allow matching requests.
    #[default]
    Allow,
    /// Deny matching requests (deny wins over allow).
    Deny,
}

/// What a policy applies to: methods and path prefixes (empty = all).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyTarget {
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Path prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// `kind: Policy` — authorization for a service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The service receiving the requests (with `external`: the External
    /// the requests go to).
    pub service: String,
    /// `service` names an External: the Policy is kept by the callers'
    /// proxies (every proxy of the namespace), on their egress.
    #[serde(default, skip_serializing_if = "is_default")]
    pub external: bool,
    /// Allow or deny.
    #[serde(default)]
    pub action: Action,
    /// Source identities: exact SPIFFE IDs, prefixes ending in `*`, or `*`.
    /// Empty matches any identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
    /// Methods and paths; empty matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<PolicyTarget>,
}

impl PolicySpec {
    /// Whether `from` covers a caller (`None`: one without an identity).
    /// Empty covers everyone; `*` any identity; `prefix*` an identity
    /// under that prefix on a `/` boundary (`spiffe://td/ns/prod*` covers
    /// `…/ns/prod/sa/x`, never `…/ns/production/…`); else exact.
    pub fn covers(&self, who: Option<&str>) -> bool {
        if self.from.is_empty() {
            return true;
        }
        let Some(who) = who else { return false };
        self.from.iter().any(|f| entry_covers(f, who))
    }

    /// Whether an entry of `from` that names trust domain `td` explicitly
    /// (`spiffe://td/...`, never `*`) covers `who`: how a caller from a
    /// peer cluster must be allowed.
    pub fn names_caller_in(&self, who: &str, td: &str) -> bool {
        let prefix = format!("spiffe://{td}/");
        self.from
            .iter()
            .filter(|f| f.starts_with(&prefix))
            .any(|f| entry_covers(f, who))
    }
}

fn entry_covers(f: &str, who: &str) -> bool {
    f == "*"
        || f == who
        || f.strip_suffix('*').is_some_and(|prefix| {
            who.strip_prefix(prefix).is_some_and(|rest| {
                prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/')
            })
        })
}

/// Mutual-TLS mode at inbound listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Only mutual TLS from the mesh's CA.
    #[default]
    Strict,
    /// Mutual TLS or plaintext, for migration.
    Permissive,
}

/// `kind: MeshConfig` — cluster-wide settings; the one resource is named `mesh`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfigSpec {
    /// Trust domain of workload identities; default `<cluster-name>.mesh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// Default `strict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsMode>,
    /// What happens when no policy matches; default `allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_policy: Option<Action>,
    /// Lifetime of workload certificates; default 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_ttl: Option<HumanDuration>,
    /// Which services a proxy may subscribe to: its own namespace's
    /// (`namespace`, the default) or every namespace's (`mesh`); a Policy
    /// allowing its identity opens a service of another namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_scope: Option<DiscoveryScope>,
    /// What a proxy's capture listener does with a connection for a
    /// destination outside the mesh: relay it unchanged (`allow`, the
    /// default) or close it (`deny`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<OutboundMode>,
    /// The IPv4 range services' virtual addresses come from (CIDR, prefix
    /// 8 to 30); default [`DEFAULT_SERVICE_VIP_RANGE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_vip_range: Option<String>,
    /// Defaults of every proxy's readiness probe of its app (a proxy's
    /// `--probe-*` flags override them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_probe: Option<Box<AppProbe>>,
    /// Every proxy's access log: one JSON object per request (absent: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
    /// Traces exported over OTLP by every proxy and meshd (absent: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

/// `MeshConfig.tracing`: every proxy (a span per hop, client and server
/// side) and meshd (admin writes through Raft commit) export spans over
/// OTLP/gRPC to `collector`. A trace is sampled where it starts, at
/// `sample_percent`; a request that arrives sampled or not keeps that.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// The OTLP/gRPC collector, `host:port` (plaintext gRPC).
    pub collector: String,
    /// Share of new traces sampled, 0–100 with up to four decimals
    /// (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_percent: Option<SamplePercent>,
}

/// A percentage kept exactly, in millionths (`0.0001` % steps): written
/// and read as a number (`1`, `0.5`, `100`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct SamplePercent(pub u32);

impl SamplePercent {
    /// Parts per million of 100 %.
    pub const WHOLE: u32 = 1_000_000;

    /// From a percentage; `None` outside 0–100 or not a number.
    pub fn from_percent(p: f64) -> Option<Self> {
        (p.is_finite() && (0.0..=100.0).contains(&p))
            .then(|| SamplePercent((p * 10_000.0).round() as u32))
    }

    /// As a percentage.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }

    /// As a ratio, 0–1.
    pub fn ratio(self) -> f64 {
        f64::from(self.0) / f64::from(Self::WHOLE)
    }
}

impl Serialize for SamplePercent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.percent())
    }
}

impl<'de> Deserialize<'de> for SamplePercent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = f64::deserialize(d)?;
        SamplePercent::from_percent(p).ok_or_else(|| {
            serde::de::Error::custom(format!("sample_percent {p} is not between 0 and 100"))
        })
    }
}

/// `MeshConfig.access_log`: each proxy writes one flat JSON object per
/// request (and per TCP tunnel) it serves, to stdout or a file. Never a
/// header value or a body.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// Share of the requests logged, 0–100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_percent: Option<u32>,
    /// An absolute path each proxy appends to (default: stdout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// How a proxy checks that its app is ready (`MeshConfig.app_probe`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppProbe {
    /// An HTTP GET of this path (2xx or 3xx is ready); without it, a TCP
    /// connect to the app's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    /// Time between probes; default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// Time limit of one probe; default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Failed probes in a row that make a ready app not ready; default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// Passed probes in a row that make it ready again; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
}

/// Where services' virtual addresses come from unless MeshConfig says
/// otherwise: a reserved (class E) range no real network routes.
pub const DEFAULT_SERVICE_VIP_RANGE: &str = "240.240.0.0/16";

/// An IPv4 CIDR as (network, prefix length); `None` unless the prefix is 8
/// to 30 and the address is the network's.
pub fn parse_vip_range(s: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    if !(8..=30).contains(&len) {
        return None;
    }
    let mask = u32::MAX << (32 - len);
    (u32::from(ip) & !mask == 0).then_some((ip, len))
}

/// Captured traffic to destinations outside the mesh (`MeshConfig.outbound`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundMode {
    /// Relayed unchanged.
    #[default]
    Allow,
    /// Closed.
    Deny,
}

/// How far a proxy's discovery reaches (`MeshConfig.discovery_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryScope {
    /// Services of the proxy's own namespace, and those a Policy opens.
    #[default]
    Namespace,
    /// Every service.
    Mesh,
}

/// Role of an admin token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Every admin call.
    Admin,
    /// Reads only.
    ReadOnly,
}

/// `kind: Token` — a bootstrap token (scoped to a service) or an admin
/// token (with a role). Only the SHA-256 of the secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// For a bootstrap token: the service it may register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// For a bootstrap token: the service's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// For an admin token: its role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// Unix milliseconds; absent = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Absent = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
    /// Times it has been used.
    #[serde(default)]
    pub uses: u32,
    /// Revoked tokens are refused.
    #[serde(default)]
    pub revoked: bool,
}

/// `kind: Peer` — another cluster, made by `meshctl peering` (not by
/// apply): pending on the side that generated a token (`secret_sha256`
/// set, no addresses), established on both sides once the token is
/// exchanged. Its `Debug` never shows the credential.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    /// Addresses of its meshd nodes.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Its trust domain.
    #[serde(default)]
    pub trust_domain: String,
    /// Its workload trust bundle (PEM roots): verifies its workloads.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root_ca_pem: String,
    /// The CA that verifies its meshd nodes (PEM); empty when they serve
    /// plaintext (loopback development only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_ca_pem: String,
    /// The name the peer knows this cluster by.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name_at_peer: String,
    /// The credential both sides present on the peering link, sealed under
    /// the cluster secret (`sealed:v1:...`). Never sent to proxies or
    /// shown by the admin API.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential: String,
    /// While pending: the SHA-256 of the token's one-time secret.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_sha256: String,
    /// While pending: Unix milliseconds after which the token is refused.
    #[serde(default, skip_serializing_if = "is_default")]
    pub expires_at_ms: u64,
    /// The peer's revision the imports reflect (the link resumes after it).
    #[serde(default, skip_serializing_if = "is_default")]
    pub imported_revision: u64,
}

impl PeerSpec {
    /// Whether the token has not been exchanged yet.
    pub fn pending(&self) -> bool {
        !self.secret_sha256.is_empty()
    }
}

impl std::fmt::Debug for PeerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSpec")
            .field("addresses", &self.addresses)
            .field("trust_domain", &self.trust_domain)
            .field("name_at_peer", &self.name_at_peer)
            .field(
                "credential",
                &if self.credential.is_empty() {
                    ""
                } else {
                    "(sealed)"
                },
            )
            .field("pending", &self.pending())
            .field("imported_revision", &self.imported_revision)
            .finish_non_exhaustive()
    }
}

/// `kind: Export` — a service offered to peers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    /// The service.
    pub service: String,
    /// The peers that may import it.
    #[serde(default)]
    pub peers: Vec<String>,
}

/// `kind: Import` — a service taken from a peer, written by the peering
/// link (never by apply): named `<service>--<peer>` in the service's
/// namespace, reached as `<service>.<namespace>.<peer>`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportSpec {
    /// The exporting peer.
    pub peer: String,
    /// The service.
    pub service: String,
    /// The peer's east-west gateways (`IP:port`) the service is reached
    /// through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// The peer's trust domain (the service's certificates carry it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trust_domain: String,
    /// The service's protocol.
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
    /// The distinct label sets of the service's endpoints at the peer
    /// (at most [`ImportSpec::MAX_SUBSETS`]): a Route's backend that
    /// selects `version: v2` reaches, through the gateways, only the
    /// peer's endpoints whose labels hold it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<BTreeMap<String, String>>,
    /// The peer's revision this import reflects.
    #[serde(default, skip_serializing_if = "is_default")]
    pub revision: u64,
    /// Its virtual address in this cluster (given by meshd, from
    /// MeshConfig `service_vip_range`, as a Service's): mesh DNS answers
    /// `service.namespace.peer` with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<std::net::Ipv4Addr>,
}

impl crate::Spec {
    /// The virtual address field of a kind that has one (Service, Import).
    pub fn vip_slot(&mut self) -> Option<&mut Option<std::net::Ipv4Addr>> {
        match self {
            crate::Spec::Service(s) => Some(&mut s.vip),
            crate::Spec::Import(i) => Some(&mut i.vip),
            _ => None,
        }
    }

    /// Its virtual address, if it has one.
    pub fn vip(&self) -> Option<std::net::Ipv4Addr> {
        match self {
            crate::Spec::Service(s) => s.vip,
            crate::Spec::Import(i) => i.vip,
            _ => None,
        }
    }
}

impl ImportSpec {
    /// Most label sets an import carries: an exporter with more sends the
    /// first of them in order (and says so in its log).
    pub const MAX_SUBSETS: usize = 64;

    /// The resource name of the import of `service` from `peer`.
    pub fn resource_name(service: &str, peer: &str) -> String {
        format!("{service}--{peer}")
    }
}

/// One root of the workload CA. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaRoot {
    /// Its id (for messages and rotation).
    pub id: String,
    /// The root certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8). Never sent to proxies or shown by
    /// `meshctl get`; it travels only in Raft and in snapshots.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_pem: String,
    /// Unix milliseconds after which the root is no longer valid.
    pub not_after_ms: u64,
    /// Whether it signs new workload certificates (exactly one does).
    pub signing: bool,
}

impl std::fmt::Debug for CaRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRoot")
            .field("id", &self.id)
            .field("cert_pem", &self.cert_pem)
            .field(
                "key_pem",
                &if self.key_pem.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("not_after_ms", &self.not_after_ms)
            .field("signing", &self.signing)
            .finish()
    }
}

/// `kind: Authority` — the cluster's workload CA: its roots (all trusted;
/// one signs). Written by meshd at bootstrap and by `meshctl ca rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthoritySpec {
    /// The roots, oldest first.
    pub roots: Vec<CaRoot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debug_form_of_a_ca_root_never_shows_its_key() {
        let root = CaRoot {
            id: "root-1".into(),
            cert_pem: "-----BEGIN CERTIFICATE-----".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49".into(),
            not_after_ms: 1,
            signing: true,
        };
        let shown = format!(
            "{root:?} {:?}",
            AuthoritySpec {
                roots: vec![root.clone()]
            }
        );
        assert!(
            !shown.contains("PRIVATE KEY") && !shown.contains("MIGHAgEA"),
            "{shown}"
        );
        assert!(
            shown.contains("<redacted>") && shown.contains("root-1"),
            "{shown}"
        );
    }
}

/// `kind: Revocation` — a workload identity, or one instance, denied from
/// the commit on: meshd issues it no certificate and closes its streams,
/// proxies refuse its certificate and drop its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationSpec {
    /// A SPIFFE ID (every instance of that service), or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identity: String,
    /// One instance (in the resource's namespace), or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// Why (shown in refusals).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// `kind: External` — hosts outside the mesh that the namespace's
/// workloads reach through their outbound proxy (egress): by HTTP (Host or
/// absolute URI) or by a CONNECT tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSpec {
    /// DNS names (`api.example.com`), a leading wildcard
    /// (`*.example.com`: any name under it), or IPv4 addresses; 1–32.
    pub hosts: Vec<String>,
    /// Ports the hosts may be reached on (default 80 and 443); at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u32>,
    /// TLS origination: plain HTTP from the app leaves the proxy over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ExternalTls>,
}

impl ExternalSpec {
    /// Ports allowed when `ports` is empty.
    pub const DEFAULT_PORTS: [u32; 2] = [80, 443];
}

/// `External.tls`: the proxy opens TLS to the host, verifying its
/// certificate for the requested name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalTls {
    /// The port TLS goes to (default 443).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Roots (PEM) to verify the host with, instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}
