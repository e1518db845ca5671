//! Domain types of the mesh state, in the YAML form of DESIGN.md ("Resources").
//!
//! A document is `{kind, metadata: {name, namespace}, spec}`. Unknown fields
//! are refused, so a typo (`wieght`) is an error rather than a silent default.

use std::collections::BTreeMap;
use std::fmt;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{HumanDuration, Kind, DEFAULT_NAMESPACE};

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Name, namespace and (when read back) revision of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// A DNS-1123 label.
    pub name: String,
    /// A DNS-1123 label; `default` when not given.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The revision of the resource's last write. On apply, a given revision
    /// is a compare-and-set: the write happens only if it still matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

impl Metadata {
    /// Metadata in the default namespace.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: default_namespace(),
            revision: None,
        }
    }
}

/// The identity of a resource in the mesh state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceKey {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ResourceKey {
    /// A key from its parts.
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

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

/// Retries for safe requests, within the proxy's retry budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Further attempts after the first, at most 10.
    pub attempts: u32,
    /// Conditions that trigger a retry; default `[5xx, connect-failure]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<RetryOn>,
    /// Time limit of each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<HumanDuration>,
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
    /// The service receiving the requests.
    pub service: String,
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

/// `kind: Peer` — another cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    /// Addresses of its meshd nodes or gateways.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Its trust domain.
    #[serde(default)]
    pub trust_domain: String,
    /// Its root certificate (PEM).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root_ca_pem: String,
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

/// `kind: Import` — a service taken from a peer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportSpec {
    /// The exporting peer.
    pub peer: String,
    /// The service.
    pub service: String,
}

/// One root of the workload CA.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
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

/// `kind: Authority` — the cluster's workload CA: its roots (all trusted;
/// one signs). Written by meshd at bootstrap and by `meshctl ca rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthoritySpec {
    /// The roots, oldest first.
    pub roots: Vec<CaRoot>,
}

/// The spec of a resource, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Spec {
    /// `kind: Service`.
    Service(ServiceSpec),
    /// `kind: Endpoint`.
    Endpoint(EndpointSpec),
    /// `kind: Route`.
    Route(RouteSpec),
    /// `kind: Policy`.
    Policy(PolicySpec),
    /// `kind: MeshConfig`.
    MeshConfig(MeshConfigSpec),
    /// `kind: Token`.
    Token(TokenSpec),
    /// `kind: Peer`.
    Peer(PeerSpec),
    /// `kind: Export`.
    Export(ExportSpec),
    /// `kind: Import`.
    Import(ImportSpec),
    /// `kind: Authority`.
    Authority(AuthoritySpec),
}

impl Spec {
    /// The kind of this spec.
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Service(_) => Kind::Service,
            Spec::Endpoint(_) => Kind::Endpoint,
            Spec::Route(_) => Kind::Route,
            Spec::Policy(_) => Kind::Policy,
            Spec::MeshConfig(_) => Kind::MeshConfig,
            Spec::Token(_) => Kind::Token,
            Spec::Peer(_) => Kind::Peer,
            Spec::Export(_) => Kind::Export,
            Spec::Import(_) => Kind::Import,
            Spec::Authority(_) => Kind::Authority,
        }
    }

    /// The service this resource is about, for kinds that name one.
    pub fn service(&self) -> Option<&str> {
        match self {
            Spec::Endpoint(s) => Some(&s.service),
            Spec::Route(s) => Some(&s.service),
            Spec::Policy(s) => Some(&s.service),
            Spec::Export(s) => Some(&s.service),
            Spec::Import(s) => Some(&s.service),
            _ => None,
        }
    }
}

/// One resource: `{kind, metadata, spec}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Name, namespace, revision.
    pub metadata: Metadata,
    /// The kind-specific part.
    pub spec: Spec,
}

impl Resource {
    /// A resource in the default namespace.
    pub fn new(name: impl Into<String>, spec: Spec) -> Self {
        Self {
            metadata: Metadata::named(name),
            spec,
        }
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// Its key in the mesh state.
    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(
            self.kind(),
            self.metadata.namespace.clone(),
            self.metadata.name.clone(),
        )
    }

    /// The same resource with `metadata.revision` set.
    pub fn with_revision(mut self, revision: u64) -> Self {
        self.metadata.revision = Some(revision);
        self
    }

    /// Whether two resources say the same thing, revisions aside.
    pub fn same_content(&self, other: &Resource) -> bool {
        self.metadata.name == other.metadata.name
            && self.metadata.namespace == other.metadata.namespace
            && self.spec == other.spec
    }

    /// Reads a resource from a generic document value (the parsed form of a
    /// YAML or JSON document). Errors name the field path.
    pub fn from_value(value: serde_json::Value) -> Result<Self, DocumentError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            kind: String,
            metadata: Metadata,
            #[serde(default)]
            spec: serde_json::Value,
        }
        let raw: Raw = serde_path_to_error::deserialize(value).map_err(|e| DocumentError {
            path: e.path().to_string(),
            message: e.inner().to_string(),
            key: None,
        })?;
        let kind: Kind = raw
            .kind
            .parse()
            .map_err(|e: crate::kind::UnknownKind| DocumentError {
                path: "kind".into(),
                message: e.to_string(),
                key: None,
            })?;
        let key = ResourceKey::new(
            kind,
            raw.metadata.namespace.clone(),
            raw.metadata.name.clone(),
        );
        let spec_value = match raw.spec {
            serde_json::Value::Null => serde_json::Value::Object(Default::default()),
            v => v,
        };
        fn spec_of<T: serde::de::DeserializeOwned>(
            v: serde_json::Value,
            key: &ResourceKey,
        ) -> Result<T, DocumentError> {
            serde_path_to_error::deserialize(v).map_err(|e| {
                let p = e.path().to_string();
                DocumentError {
                    path: if p == "." {
                        "spec".into()
                    } else {
                        format!("spec.{p}")
                    },
                    message: e.inner().to_string(),
                    key: Some(key.clone()),
                }
            })
        }
        let spec = match kind {
            Kind::Service => Spec::Service(spec_of(spec_value, &key)?),
            Kind::Endpoint => Spec::Endpoint(spec_of(spec_value, &key)?),
            Kind::Route => Spec::Route(spec_of(spec_value, &key)?),
            Kind::Policy => Spec::Policy(spec_of(spec_value, &key)?),
            Kind::MeshConfig => Spec::MeshConfig(spec_of(spec_value, &key)?),
            Kind::Token => Spec::Token(spec_of(spec_value, &key)?),
            Kind::Peer => Spec::Peer(spec_of(spec_value, &key)?),
            Kind::Export => Spec::Export(spec_of(spec_value, &key)?),
            Kind::Import => Spec::Import(spec_of(spec_value, &key)?),
            Kind::Authority => Spec::Authority(spec_of(spec_value, &key)?),
        };
        Ok(Resource {
            metadata: raw.metadata,
            spec,
        })
    }
}

/// A document that is not a well-formed resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{path}: {message}", key.as_ref().map(|k| format!("{} \"{}\": ", k.kind.lower(), k.name)).unwrap_or_default())]
pub struct DocumentError {
    /// Dotted path of the offending field (`spec.rules[0].backends[1]`).
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// The resource, when kind and name could be read.
    pub key: Option<ResourceKey>,
}

impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("kind", self.kind().as_str())?;
        m.serialize_entry("metadata", &self.metadata)?;
        match &self.spec {
            Spec::Service(x) => m.serialize_entry("spec", x)?,
            Spec::Endpoint(x) => m.serialize_entry("spec", x)?,
            Spec::Route(x) => m.serialize_entry("spec", x)?,
            Spec::Policy(x) => m.serialize_entry("spec", x)?,
            Spec::MeshConfig(x) => m.serialize_entry("spec", x)?,
            Spec::Token(x) => m.serialize_entry("spec", x)?,
            Spec::Peer(x) => m.serialize_entry("spec", x)?,
            Spec::Export(x) => m.serialize_entry("spec", x)?,
            Spec::Import(x) => m.serialize_entry("spec", x)?,
            Spec::Authority(x) => m.serialize_entry("spec", x)?,
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Resource::from_value(v).map_err(serde::de::Error::custom)
    }
}
