//! The proxy's configuration, compiled from the resources it holds into an
//! immutable routing table, swapped atomically when a delta is applied.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raftmesh_api::{
    Action, EndpointSpec, Health, ImportSpec, LoadBalancer, MtlsMode, PolicySpec, Protocol,
    Resource, ResourceKey, RetryOn, Spec,
};

use crate::stats::{EndpointStats, StatsRegistry};

/// Where a compiled config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// No configuration yet.
    Empty,
    /// The control plane.
    ControlPlane,
    /// The state directory, at start.
    StateDir,
    /// `--config-file`.
    ConfigFile,
}

pub use crate::stats::Outlier;
pub use crate::ServiceId;

/// One endpoint as routing sees it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its Endpoint resource name.
    pub name: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Nearness ([`tier`]): the caller's zone, its cluster, another
    /// cluster of the mesh, then a Route's failover peers in order.
    /// Traffic goes to the nearest tier with a usable endpoint.
    pub tier: u8,
    /// Through a peer's gateway: the pool key of connections to it for
    /// this service (see [`crate::tls::gateway_authority`]).
    pub dial: Option<Arc<str>>,
    /// One subset (label set) of a peer's service, through its gateway:
    /// only a backend selecting labels it holds sends to it; a backend of
    /// every endpoint uses the gateway's whole-service endpoint instead.
    pub subset_only: bool,
    /// Healthy as the control plane sees it.
    pub healthy: bool,
    /// For a mesh workload: the name its certificate carries (mTLS).
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// Its SPIFFE ID, when it has one (metrics' `destination_identity`).
    pub identity: Option<Arc<str>>,
    /// Live statistics (kept across compiled configs).
    pub stats: Arc<EndpointStats>,
}

/// A weighted subset of a rule.
#[derive(Debug, Clone)]
pub struct Backend {
    /// `k=v,...`, for metrics.
    pub label: String,
    /// Labels an endpoint must carry (empty = every endpoint).
    pub subset: BTreeMap<String, String>,
    /// Weight (a rule's weights sum to 100, or one backend of 100).
    pub weight: u32,
    /// Indices into the service's endpoints.
    pub endpoints: Vec<usize>,
    /// The hash ring over `endpoints` (`consistent-hash` only).
    pub ring: Option<Arc<crate::balance::ring::Ring>>,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Any of these matches (empty = always).
    pub matches: Vec<crate::route::matching::Match>,
    /// Where traffic goes.
    pub backends: Vec<Backend>,
    /// Rewrites, header changes, a redirect (`None`: nothing to do).
    pub actions: Option<Arc<crate::route::actions::Actions>>,
    /// Copies of a share of the requests (`None`: none).
    pub mirror: Option<Arc<crate::route::mirror::Mirror>>,
}

/// The key of `consistent-hash`.
#[derive(Debug, Clone)]
pub enum HashKey {
    /// A header's value.
    Header(http::header::HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The caller (this proxy's own identity).
    Source,
}

/// Retry settings of a service.
#[derive(Debug, Clone)]
pub struct Retries {
    /// Further attempts.
    pub attempts: u32,
    /// Conditions.
    pub on: Vec<RetryOn>,
    /// gRPC statuses a gRPC call is retried on.
    pub grpc_on: Vec<u8>,
    /// Time limit per attempt.
    pub per_try_timeout: Option<Duration>,
    /// First backoff; each further one doubles, up to `backoff_max`.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
}

impl Retries {
    /// What a service without a retry policy gets: requests that never
    /// reached the app are retried twice, on other endpoints.
    pub const NEVER_REACHED_ATTEMPTS: u32 = 2;
    /// Default first backoff.
    pub const BACKOFF_BASE: Duration = Duration::from_millis(25);
    /// Default longest backoff.
    pub const BACKOFF_MAX: Duration = Duration::from_millis(250);
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: Self::NEVER_REACHED_ATTEMPTS,
            on: Vec::new(),
            grpc_on: Vec::new(),
            per_try_timeout: None,
            backoff_base: Self::BACKOFF_BASE,
            backoff_max: Self::BACKOFF_MAX,
        }
    }
}

/// Everything needed to route to one service.
#[derive(Debug, Clone)]
pub struct ServiceTable {
    /// (namespace, name).
    pub id: ServiceId,
    /// The service's protocol (first port's; http when unknown).
    pub protocol: Protocol,
    /// The Route resource's name (metrics' `route`); `None`: no Route.
    pub route: Option<Arc<str>>,
    /// Rules, first match wins.
    pub rules: Vec<Rule>,
    /// Whole-request time limit.
    pub timeout: Option<Duration>,
    /// Retries.
    pub retries: Option<Retries>,
    /// Balancing.
    pub lb: LoadBalancer,
    /// The key of `consistent-hash`.
    pub hash_on: Option<HashKey>,
    /// Most requests in flight (circuit breaking); `None` = unlimited.
    pub max_in_flight: Option<u32>,
    /// Most connections open to the service's endpoints; a request beyond
    /// waits for one to be free. `None` = unlimited.
    pub max_connections: Option<u32>,
    /// Time limit of opening a connection to an endpoint.
    pub connect_timeout: Duration,
    /// Faults injected into its requests.
    pub fault: Option<Arc<crate::fault::Faults>>,
    /// Outlier ejection.
    pub outlier: Outlier,
    /// Every endpoint of the service.
    pub endpoints: Vec<Endpoint>,
}

/// Inbound authorization of this proxy's service.
#[derive(Debug, Clone, Default)]
pub struct Authz {
    /// Policies of this proxy's service.
    pub policies: Vec<PolicySpec>,
    /// What happens when none matches.
    pub default: Action,
    /// mTLS mode.
    pub mtls: MtlsMode,
    /// Captured connections for destinations outside the mesh.
    pub outbound: raftmesh_api::OutboundMode,
    /// Revoked workload identities (SPIFFE IDs): refused whatever the
    /// policies say, and their open connections closed.
    pub revoked: std::collections::HashSet<String>,
    /// This cluster's trust domain ("" while unknown: then no caller is
    /// taken for a peer's).
    pub trust_domain: String,
    /// Peers' trust domains → their names.
    pub peer_domains: HashMap<String, String>,
    /// The peers this proxy's service is exported to.
    pub exported_to: std::collections::HashSet<String>,
    /// Its Route's `rate_limit`, kept on inbound requests.
    pub rate_limit: Option<raftmesh_api::RateLimit>,
}

/// The compiled configuration.
#[derive(Debug)]
pub struct CompiledConfig {
    /// Revision of the last delta applied.
    pub revision: u64,
    /// Where it came from.
    pub source: Source,
    /// Everything held, by key.
    pub resources: BTreeMap<ResourceKey, Resource>,
    /// Routing tables by service.
    pub services: HashMap<ServiceId, Arc<ServiceTable>>,
    /// Inbound authorization.
    pub authz: Authz,
    /// Peers' trust domains and workload roots (PEM), by peer name.
    pub peers: BTreeMap<String, (String, String)>,
    /// MeshConfig's defaults for the app readiness probe.
    pub app_probe: Option<raftmesh_api::AppProbe>,
    /// The Externals of the proxy's namespace (egress).
    pub externals: Vec<Arc<crate::egress::External>>,
    /// MeshConfig's access log settings (`None`: off).
    pub access_log: Option<raftmesh_api::AccessLog>,
    /// MeshConfig `tracing` (`None`: off).
    pub tracing: Option<raftmesh_api::Tracing>,
}

impl CompiledConfig {
    /// No configuration.
    pub fn empty() -> Self {
        Self {
            revision: 0,
            source: Source::Empty,
            resources: BTreeMap::new(),
            services: HashMap::new(),
            authz: Authz::default(),
            peers: BTreeMap::new(),
            app_probe: None,
            externals: Vec::new(),
            access_log: None,
            tracing: None,
        }
    }

    /// Peers' trust domains and roots, for [`crate::tls::Workload::set_peers`].
    pub fn peer_trust(&self) -> Vec<(String, String)> {
        self.peers.values().cloned().collect()
    }

    /// The table of a service.
    pub fn service(&self, id: &ServiceId) -> Option<&Arc<ServiceTable>> {
        self.services.get(id)
    }

    /// The virtual address of a held service (or import, `svc.peer`).
    pub fn vip_of(&self, id: &ServiceId) -> Option<std::net::Ipv4Addr> {
        self.services.get(id)?;
        self.resources.values().find_map(|r| {
            (r.metadata.namespace == id.0 && table_name(r).as_deref() == Some(id.1.as_str()))
                .then(|| r.spec.vip())
                .flatten()
        })
    }

    /// The service whose virtual address is `vip`, among those held (a
    /// scan: a proxy holds the few services it calls).
    pub fn service_by_vip(&self, vip: std::net::Ipv4Addr) -> Option<&Arc<ServiceTable>> {
        self.resources.values().find_map(|r| {
            if r.spec.vip() != Some(vip) {
                return None;
            }
            self.services
                .get(&(r.metadata.namespace.clone(), table_name(r)?))
        })
    }
}

/// The routing table a Service or Import resource is the address of:
/// `name`, or `service.peer` for an import.
fn table_name(r: &Resource) -> Option<String> {
    match &r.spec {
        Spec::Service(_) => Some(r.metadata.name.clone()),
        Spec::Import(i) => Some(format!("{}.{}", i.service, i.peer)),
        _ => None,
    }
}

fn subset_label(s: &BTreeMap<String, String>) -> String {
    s.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn endpoint_addr(e: &EndpointSpec) -> Option<SocketAddr> {
    let port = u16::try_from(e.port).ok()?;
    if let Ok(ip) = e.address.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    // Host names are resolved once, when the config is compiled (off the
    // runtime's threads: xds.rs compiles in spawn_blocking).
    std::net::ToSocketAddrs::to_socket_addrs(&(e.address.as_str(), port))
        .ok()
        .and_then(|mut it| it.next())
}

/// What the proxy itself is, for locality and authorization.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Own namespace.
    pub namespace: String,
    /// Own service.
    pub service: String,
    /// Own cluster ("" = this cluster).
    pub cluster: String,
    /// Own locality (zone); "" = none, every endpoint of the cluster is
    /// as near.
    pub locality: String,
}

/// How long opening a connection to an endpoint may take, unless a Route
/// says otherwise.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Nearness tiers of endpoints (lower first; see [`Endpoint::tier`]).
pub mod tier {
    /// This cluster, the caller's zone (or no zone known).
    pub const ZONE: u8 = 0;
    /// This cluster, another zone.
    pub const CLUSTER: u8 = 1;
    /// Another cluster of this mesh (`Endpoint.cluster`).
    pub const MESH: u8 = 2;
    /// A Route's first failover peer; the k-th is `PEER + k`.
    pub const PEER: u8 = 3;
}

/// A Route rule, compiled (its mirror is added by the caller).
fn compile_rule(rule: &raftmesh_api::RouteRule) -> Rule {
    Rule {
        matches: rule
            .matches
            .iter()
            .map(crate::route::matching::Match::compile)
            .collect(),
        actions: crate::route::actions::Actions::compile(rule).map(Arc::new),
        backends: rule
            .backends
            .iter()
            .map(|b| Backend {
                label: subset_label(&b.subset),
                subset: b.subset.clone(),
                weight: b.weight,
                endpoints: Vec::new(),
                ring: None,
            })
            .chain(rule.backends.is_empty().then(|| Backend {
                label: String::new(),
                subset: BTreeMap::new(),
                weight: 100,
                endpoints: Vec::new(),
                ring: None,
            }))
            .collect(),
        mirror: None,
    }
}

/// Compiles held resources into a routing configuration. Every resource must already be
/// valid (the caller validates and NACKs otherwise).
pub fn compile(
    revision: u64,
    source: Source,
    resources: BTreeMap<ResourceKey, Resource>,
    me: &Identity,
    stats: &StatsRegistry,
) -> CompiledConfig {
    let mut services: HashMap<ServiceId, ServiceTable> = HashMap::new();
    let mut live = std::collections::HashSet::new();
    let mut authz = Authz::default();
    fn table(services: &mut HashMap<ServiceId, ServiceTable>, id: ServiceId) -> &mut ServiceTable {
        services.entry(id.clone()).or_insert_with(|| ServiceTable {
            id,
            protocol: Protocol::Http,
            route: None,
            rules: Vec::new(),
            timeout: None,
            retries: None,
            lb: LoadBalancer::P2cEwma,
            hash_on: None,
            max_in_flight: None,
            max_connections: None,
            connect_timeout: CONNECT_TIMEOUT,
            fault: None,
            outlier: Outlier::default(),
            endpoints: Vec::new(),
        })
    }
    // Revocations first: a revoked workload's endpoints are dropped.
    let mut revoked_instances = std::collections::HashSet::new();
    for r in resources.values() {
        if let Spec::Revocation(x) = &r.spec {
            if !x.identity.is_empty() {
                authz.revoked.insert(x.identity.clone());
            }
            if !x.instance.is_empty() {
                revoked_instances.insert((r.metadata.namespace.clone(), x.instance.clone()));
            }
        }
    }
    let mut routes = Vec::new();
    let mut app_probe = None;
    let mut access_log = None;
    let mut tracing_settings = None;
    let mut imports = Vec::new();
    let mut peers = BTreeMap::new();
    for r in resources.values() {
        let ns = r.metadata.namespace.clone();
        match &r.spec {
            Spec::Endpoint(e)
                if authz.revoked.contains(&e.identity)
                    || revoked_instances.contains(&(ns.clone(), r.metadata.name.clone())) =>
            {
                tracing::debug!(endpoint = %r.key(), "skipping a revoked workload's endpoint");
            }
            Spec::Service(s) => {
                let t = table(&mut services, (ns, r.metadata.name.clone()));
                t.protocol = s.ports.first().map(|p| p.protocol).unwrap_or_default();
            }
            Spec::Endpoint(e) => {
                let Some(addr) = endpoint_addr(e) else {
                    tracing::warn!(endpoint = %r.key(), "cannot resolve the endpoint's address; skipping it");
                    continue;
                };
                live.insert(addr);
                let t = table(&mut services, (ns, e.service.clone()));
                t.endpoints.push(Endpoint {
                    name: r.metadata.name.clone(),
                    addr,
                    labels: e.labels.clone(),
                    tier: if !(e.cluster.is_empty() || e.cluster == me.cluster) {
                        tier::MESH
                    } else if me.locality.is_empty()
                        || e.locality.is_empty()
                        || e.locality == me.locality
                    {
                        tier::ZONE
                    } else {
                        tier::CLUSTER
                    },
                    dial: None,
                    subset_only: false,
                    healthy: e.health == Health::Healthy,
                    server_name: (!e.identity.is_empty())
                        .then(|| crate::tls::server_name_for(&e.identity))
                        .flatten(),
                    identity: (!e.identity.is_empty()).then(|| e.identity.as_str().into()),
                    stats: stats.get(addr),
                });
            }
            Spec::Route(x) => routes.push((ns, r.metadata.name.clone(), x.clone())),
            Spec::Policy(p) if ns == me.namespace && p.service == me.service && !p.external => {
                authz.policies.push(p.clone());
            }
            Spec::Peer(p) if !p.trust_domain.is_empty() => {
                authz
                    .peer_domains
                    .insert(p.trust_domain.clone(), r.metadata.name.clone());
                peers.insert(
                    r.metadata.name.clone(),
                    (p.trust_domain.clone(), p.root_ca_pem.clone()),
                );
            }
            Spec::Export(e) if ns == me.namespace && e.service == me.service => {
                authz.exported_to.extend(e.peers.iter().cloned());
            }
            Spec::Import(i) => imports.push((ns, i.clone())),
            Spec::MeshConfig(m) => {
                app_probe = m.app_probe.as_deref().cloned();
                access_log = m.access_log.clone();
                tracing_settings = m.tracing.clone();
                authz.trust_domain = m.trust_domain.clone().unwrap_or_default();
                authz.default = m.default_policy.unwrap_or_default();
                authz.mtls = m.mtls.unwrap_or_default();
                authz.outbound = m.outbound.unwrap_or_default();
            }
            _ => {}
        }
    }
    // An import is a service of its own, `service.peer`, whose endpoints
    // are the peer's gateways; a Route's failover peers add them to the
    // local service, after its own endpoints. Each gateway is one endpoint
    // for the whole service and one per label set (subset) the peer's
    // endpoints carry, asked for by SNI (`s<id>.svc.ns.svc.<td>`).
    let gateway_endpoints = |ns: &str, i: &ImportSpec, tier: u8| -> Vec<Endpoint> {
        let base = format!("{}.{ns}.svc.{}", i.service, i.trust_domain);
        let identity: Arc<str> =
            raftmesh_api::identity::spiffe_id(&i.trust_domain, ns, &i.service).into();
        let names: Vec<(String, BTreeMap<String, String>, _)> =
            std::iter::once((base.clone(), BTreeMap::new()))
                .chain(i.subsets.iter().map(|labels| {
                    (
                        format!("{}.{base}", crate::tls::subset_id(labels)),
                        labels.clone(),
                    )
                }))
                .filter_map(|(sni, labels)| {
                    let name = rustls::pki_types::ServerName::try_from(sni.clone()).ok()?;
                    Some((sni, labels, name))
                })
                .collect();
        let mut out = Vec::new();
        for addr in i
            .gateways
            .iter()
            .filter_map(|g| g.parse::<SocketAddr>().ok())
        {
            for (sni, labels, name) in &names {
                let whole = labels.is_empty();
                out.push(Endpoint {
                    name: if whole {
                        format!("{}/{addr}", i.peer)
                    } else {
                        format!("{}/{addr}/{}", i.peer, &sni[..17])
                    },
                    addr,
                    labels: labels.clone(),
                    tier,
                    subset_only: !whole,
                    healthy: true,
                    server_name: Some(name.clone()),
                    identity: Some(identity.clone()),
                    dial: Some(crate::tls::gateway_authority(sni, addr).into()),
                    stats: stats.get(addr),
                });
            }
        }
        out
    };
    for (ns, i) in &imports {
        let t = table(
            &mut services,
            (ns.clone(), format!("{}.{}", i.service, i.peer)),
        );
        t.protocol = i.protocol;
        t.endpoints = gateway_endpoints(ns, i, 0);
        live.extend(t.endpoints.iter().map(|e| e.addr));
    }
    for (ns, _, route) in &routes {
        for (k, peer) in route.failover.iter().enumerate() {
            let Some((_, i)) = imports
                .iter()
                .find(|(n, i)| n == ns && i.service == route.service && &i.peer == peer)
            else {
                continue;
            };
            let tier = u8::try_from(k)
                .ok()
                .and_then(|k| tier::PEER.checked_add(k))
                .unwrap_or(u8::MAX);
            let eps = gateway_endpoints(ns, i, tier);
            live.extend(eps.iter().map(|e| e.addr));
            table(&mut services, (ns.clone(), route.service.clone()))
                .endpoints
                .extend(eps);
        }
    }
    for (ns, route_name, route) in routes {
        let key = (ns, route.service.clone());
        if key.0 == me.namespace && route.service == me.service {
            authz.rate_limit = route.rate_limit.clone();
            // Held for its rate limit: not a service this proxy calls
            // unless it holds the service too.
            if !services.contains_key(&key) {
                continue;
            }
        }
        let t = table(&mut services, key);
        t.route = Some(route_name.into());
        t.timeout = route.timeout.map(|d| d.as_duration());
        t.retries = route.retries.as_ref().map(|r| Retries {
            attempts: r.attempts,
            on: if r.on.is_empty() {
                vec![RetryOn::Status5xx, RetryOn::ConnectFailure]
            } else {
                r.on.clone()
            },
            grpc_on: if r.grpc_on.is_empty() {
                vec![raftmesh_api::GrpcRetryOn::Unavailable.code()]
            } else {
                r.grpc_on.iter().map(|g| g.code()).collect()
            },
            per_try_timeout: r.per_try_timeout.map(|d| d.as_duration()),
            backoff_base: r
                .backoff_base
                .map_or(Retries::BACKOFF_BASE, |d| d.as_duration()),
            backoff_max: r
                .backoff_max
                .map_or(Retries::BACKOFF_MAX, |d| d.as_duration()),
        });
        t.lb = route.load_balancer.unwrap_or_default();
        t.hash_on = route.hash_on.as_ref().and_then(|h| {
            if h.source_identity {
                Some(HashKey::Source)
            } else if let Some(c) = &h.cookie {
                Some(HashKey::Cookie(c.clone()))
            } else {
                h.header.as_deref().and_then(|n| {
                    http::header::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                        .ok()
                        .map(HashKey::Header)
                })
            }
        });
        if let Some(cb) = &route.circuit_breaker {
            t.max_in_flight = cb.max_pending_requests;
            t.max_connections = cb.max_connections;
        }
        t.connect_timeout = route
            .connect_timeout
            .map_or(CONNECT_TIMEOUT, |d| d.as_duration());
        t.fault = route
            .fault
            .as_deref()
            .and_then(crate::fault::Faults::compile)
            .map(Arc::new);
        if let Some(o) = &route.outlier {
            let d = Outlier::default();
            t.outlier = Outlier {
                consecutive_failures: o.consecutive_failures.unwrap_or(d.consecutive_failures),
                base_ejection: o
                    .base_ejection
                    .map(|x| x.as_duration())
                    .unwrap_or(d.base_ejection),
                max_ejection_percent: o.max_ejection_percent.unwrap_or(d.max_ejection_percent),
            };
        }
        let ns = &t.id.0;
        t.rules = route
            .rules
            .iter()
            .map(|rule| {
                let mut r = compile_rule(rule);
                if let Some(m) = &rule.mirror {
                    use crate::route::mirror::{Mirror, To, MAX_BODY};
                    let to = match &m.service {
                        Some(svc) => To::Service((ns.clone(), svc.clone())),
                        None => {
                            // Never chosen for the primary (weight 0).
                            r.backends.push(Backend {
                                label: subset_label(&m.subset),
                                subset: m.subset.clone(),
                                weight: 0,
                                endpoints: Vec::new(),
                                ring: None,
                            });
                            To::Backend(r.backends.len() - 1)
                        }
                    };
                    r.mirror = Some(Arc::new(Mirror {
                        to,
                        percent: m.percent,
                        max_body: m.max_body_bytes.map_or(MAX_BODY, |b| b as usize),
                    }));
                }
                r
            })
            .collect();
    }
    // Resolve subsets to endpoint indices; a service without a Route has one
    // rule sending everything to every endpoint.
    for t in services.values_mut() {
        if t.rules.is_empty() {
            t.rules.push(Rule {
                matches: Vec::new(),
                backends: vec![Backend {
                    label: String::new(),
                    subset: BTreeMap::new(),
                    weight: 100,
                    endpoints: Vec::new(),
                    ring: None,
                }],
                actions: None,
                mirror: None,
            });
        }
        t.endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        for rule in &mut t.rules {
            for b in &mut rule.backends {
                b.endpoints = t
                    .endpoints
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| {
                        if b.subset.is_empty() {
                            !e.subset_only
                        } else {
                            b.subset.iter().all(|(k, v)| e.labels.get(k) == Some(v))
                        }
                    })
                    .map(|(i, _)| i)
                    .collect();
                if t.lb == LoadBalancer::ConsistentHash {
                    let ring = crate::balance::ring::Ring::new(
                        b.endpoints
                            .iter()
                            .map(|i| (*i, t.endpoints[*i].name.as_str())),
                    );
                    b.ring = Some(Arc::new(ring));
                }
            }
        }
    }
    stats.retain(&live);
    let held: Vec<&Resource> = resources.values().collect();
    let externals = crate::egress::compile(&held, &me.namespace, &authz);
    CompiledConfig {
        externals,
        access_log,
        tracing: tracing_settings,
        revision,
        source,
        resources,
        services: services
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect(),
        authz,
        peers,
        app_probe,
    }
}

/// Validates every held resource; the error names the first bad one.
pub fn validate_all(resources: &BTreeMap<ResourceKey, Resource>) -> Result<(), String> {
    for r in resources.values() {
        r.validate().map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn endpoints_are_tiered_zone_cluster_mesh_then_failover_peers_in_order() {
        let yaml = r#"
kind: Endpoint
metadata: {name: api-1}
spec: {service: api, address: 10.0.0.1, port: 80, locality: zone-a}
---
kind: Endpoint
metadata: {name: api-2}
spec: {service: api, address: 10.0.0.2, port: 80, locality: zone-b}
---
kind: Endpoint
metadata: {name: api-3}
spec: {service: api, address: 10.0.0.3, port: 80, cluster: other}
---
kind: Route
metadata: {name: api}
spec: {service: api, failover: [north, west]}
---
kind: Peer
metadata: {name: west}
spec: {addresses: ["10.9.0.1:7100"], trust_domain: west.mesh}
---
kind: Import
metadata: {name: api--west}
spec: {peer: west, service: api, gateways: ["10.9.0.2:15443"], trust_domain: west.mesh}
"#;
        let held = raftmesh_api::parse_documents(yaml)
            .unwrap()
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        let me = Identity {
            namespace: "default".into(),
            service: "client".into(),
            cluster: String::new(),
            locality: "zone-a".into(),
        };
        let c = compile(
            1,
            Source::StateDir,
            held,
            &me,
            &StatsRegistry::new(Metrics::new()),
        );
        let api = c.service(&("default".into(), "api".into())).unwrap();
        let tiers: BTreeMap<&str, u8> = api
            .endpoints
            .iter()
            .map(|e| (e.name.as_str(), e.tier))
            .collect();
        // `north` has no import: west is the second failover peer.
        assert_eq!(
            tiers,
            BTreeMap::from([
                ("api-1", tier::ZONE),
                ("api-2", tier::CLUSTER),
                ("api-3", tier::MESH),
                ("west/10.9.0.2:15443", tier::PEER + 1),
            ])
        );
        // The import alone, as `api.default.west`: through the gateway, with
        // the name west's certificates carry.
        let imported = c.service(&("default".into(), "api.west".into())).unwrap();
        assert_eq!(imported.endpoints.len(), 1);
        let gw = &imported.endpoints[0];
        assert_eq!(gw.addr, "10.9.0.2:15443".parse().unwrap());
        assert_eq!(
            gw.server_name,
            Some(rustls::pki_types::ServerName::try_from("api.default.svc.west.mesh").unwrap())
        );
        assert_eq!(
            gw.dial.as_deref(),
            Some("10-9-0-2.api.default.svc.west.mesh:15443")
        );
        assert_eq!(
            c.authz.peer_domains.get("west.mesh").map(String::as_str),
            Some("west")
        );
    }

    #[test]
    fn a_backend_selecting_labels_reaches_the_peer_s_subset_by_its_own_sni() {
        let yaml = r#"
kind: Route
metadata: {name: api}
spec:
  service: api
  failover: [west]
  rules:
  - matches: [{headers: {x-canary: "1"}}]
    backends: [{subset: {version: v2}, weight: 100}]
  - {}
---
kind: Import
metadata: {name: api--west}
spec:
  peer: west
  service: api
  gateways: ["10.9.0.2:15443", "10.9.0.3:15443"]
  trust_domain: west.mesh
  subsets: [{version: v1}, {version: v2}]
"#;
        let held = raftmesh_api::parse_documents(yaml)
            .unwrap()
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        let c = compile(
            1,
            Source::StateDir,
            held,
            &Identity::default(),
            &StatsRegistry::new(Metrics::new()),
        );
        let api = c.service(&("default".into(), "api".into())).unwrap();
        let names = |rule: usize| -> Vec<String> {
            api.rules[rule].backends[0]
                .endpoints
                .iter()
                .map(|i| {
                    let e = &api.endpoints[*i];
                    format!(
                        "{} {}",
                        e.addr,
                        e.dial.as_deref().unwrap().split(':').next().unwrap()
                    )
                })
                .collect()
        };
        let v2 =
            crate::tls::subset_id(&BTreeMap::from([("version".to_string(), "v2".to_string())]));
        // The canary rule: each gateway, asked for v2 only.
        assert_eq!(
            names(0),
            vec![
                format!("10.9.0.2:15443 10-9-0-2.{v2}.api.default.svc.west.mesh"),
                format!("10.9.0.3:15443 10-9-0-3.{v2}.api.default.svc.west.mesh"),
            ]
        );
        // Everything else: each gateway for the whole service, never a
        // subset's endpoint (that would weigh each label set alike).
        assert_eq!(
            names(1),
            vec![
                "10.9.0.2:15443 10-9-0-2.api.default.svc.west.mesh".to_string(),
                "10.9.0.3:15443 10-9-0-3.api.default.svc.west.mesh".to_string(),
            ]
        );
        let e = &api.endpoints[api.rules[0].backends[0].endpoints[0]];
        assert_eq!(
            e.server_name,
            Some(
                rustls::pki_types::ServerName::try_from(format!("{v2}.api.default.svc.west.mesh"))
                    .unwrap()
            )
        );
        assert_eq!(e.tier, tier::PEER);
    }
}
