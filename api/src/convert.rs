//! Conversions between the domain types and their protobuf form.
//!
//! Domain → proto cannot fail. Proto → domain fails on what the wire allows
//! and the domain does not (a missing spec, an unknown enum value), naming the
//! field. Validation is separate: a converted resource still needs `validate()`.

use crate::v1 as pb;
use crate::*;

/// A protobuf message that has no domain meaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConvertError {
    /// Which field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> ConvertError {
    ConvertError {
        field: field.to_string(),
        message: message.into(),
    }
}

fn opt_ms(ms: u64) -> Option<HumanDuration> {
    (ms != 0).then(|| HumanDuration::from_millis(ms))
}

fn ms(d: Option<HumanDuration>) -> u64 {
    d.map(HumanDuration::as_millis).unwrap_or(0)
}

fn opt_u32(v: u32) -> Option<u32> {
    (v != 0).then_some(v)
}

fn opt_str(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<ResourceKey> for pb::ResourceKey {
    fn from(k: ResourceKey) -> Self {
        pb::ResourceKey {
            kind: k.kind.as_str().to_string(),
            namespace: k.namespace,
            name: k.name,
        }
    }
}

impl TryFrom<pb::ResourceKey> for ResourceKey {
    type Error = ConvertError;
    fn try_from(k: pb::ResourceKey) -> Result<Self, ConvertError> {
        let kind = k
            .kind
            .parse()
            .map_err(|e: kind::UnknownKind| err("key.kind", e.to_string()))?;
        Ok(ResourceKey::new(kind, k.namespace, k.name))
    }
}

impl From<Protocol> for pb::Protocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Http => pb::Protocol::Http,
            Protocol::Http2 => pb::Protocol::Http2,
            Protocol::Grpc => pb::Protocol::Grpc,
            Protocol::Tcp => pb::Protocol::Tcp,
        }
    }
}

/// The protocol of a wire value; an unknown value is HTTP.
pub fn protocol_of(v: i32) -> Protocol {
    protocol(v).unwrap_or_default()
}

fn protocol(v: i32) -> Result<Protocol, ConvertError> {
    match pb::Protocol::try_from(v) {
        Ok(pb::Protocol::Http | pb::Protocol::Unspecified) => Ok(Protocol::Http),
        Ok(pb::Protocol::Http2) => Ok(Protocol::Http2),
        Ok(pb::Protocol::Grpc) => Ok(Protocol::Grpc),
        Ok(pb::Protocol::Tcp) => Ok(Protocol::Tcp),
        Err(_) => Err(err("protocol", format!("unknown value {v}"))),
    }
}

fn health(v: i32) -> Result<Health, ConvertError> {
    match pb::Health::try_from(v) {
        Ok(pb::Health::Healthy | pb::Health::Unspecified) => Ok(Health::Healthy),
        Ok(pb::Health::Unhealthy) => Ok(Health::Unhealthy),
        Err(_) => Err(err("health", format!("unknown value {v}"))),
    }
}

fn action(v: i32, field: &str) -> Result<Option<Action>, ConvertError> {
    match pb::PolicyAction::try_from(v) {
        Ok(pb::PolicyAction::Unspecified) => Ok(None),
        Ok(pb::PolicyAction::Allow) => Ok(Some(Action::Allow)),
        Ok(pb::PolicyAction::Deny) => Ok(Some(Action::Deny)),
        Err(_) => Err(err(field, format!("unknown value {v}"))),
    }
}

fn pb_action(a: Option<Action>) -> i32 {
    match a {
        None => pb::PolicyAction::Unspecified as i32,
        Some(Action::Allow) => pb::PolicyAction::Allow as i32,
        Some(Action::Deny) => pb::PolicyAction::Deny as i32,
    }
}

/// The protobuf form of a role.
pub fn pb_role(r: Role) -> pb::TokenRole {
    match r {
        Role::Admin => pb::TokenRole::Admin,
        Role::ReadOnly => pb::TokenRole::ReadOnly,
    }
}

/// The domain form of a protobuf role.
pub fn role(v: i32) -> Result<Role, ConvertError> {
    match pb::TokenRole::try_from(v) {
        Ok(pb::TokenRole::Admin) => Ok(Role::Admin),
        Ok(pb::TokenRole::ReadOnly) => Ok(Role::ReadOnly),
        _ => Err(err("role", format!("unknown value {v}"))),
    }
}

fn retry_on(s: &str) -> Result<RetryOn, ConvertError> {
    Ok(match s {
        "5xx" => RetryOn::Status5xx,
        "gateway-error" => RetryOn::GatewayError,
        "connect-failure" => RetryOn::ConnectFailure,
        "reset" => RetryOn::Reset,
        other => return Err(err("retries.on", format!("unknown condition \"{other}\""))),
    })
}

fn grpc_retry_on(s: &str) -> Result<GrpcRetryOn, ConvertError> {
    Ok(match s {
        "cancelled" => GrpcRetryOn::Cancelled,
        "deadline-exceeded" => GrpcRetryOn::DeadlineExceeded,
        "resource-exhausted" => GrpcRetryOn::ResourceExhausted,
        "internal" => GrpcRetryOn::Internal,
        "unavailable" => GrpcRetryOn::Unavailable,
        other => {
            return Err(err(
                "retries.grpc_on",
                format!("unknown gRPC status \"{other}\""),
            ))
        }
    })
}

/// The YAML/wire name of a gRPC retry status.
pub fn grpc_retry_on_str(r: GrpcRetryOn) -> &'static str {
    match r {
        GrpcRetryOn::Cancelled => "cancelled",
        GrpcRetryOn::DeadlineExceeded => "deadline-exceeded",
        GrpcRetryOn::ResourceExhausted => "resource-exhausted",
        GrpcRetryOn::Internal => "internal",
        GrpcRetryOn::Unavailable => "unavailable",
    }
}

/// The YAML/wire name of a retry condition.
pub fn retry_on_str(r: RetryOn) -> &'static str {
    match r {
        RetryOn::Status5xx => "5xx",
        RetryOn::GatewayError => "gateway-error",
        RetryOn::ConnectFailure => "connect-failure",
        RetryOn::Reset => "reset",
    }
}

fn route_to_pb(r: RouteSpec) -> pb::RouteSpec {
    pb::RouteSpec {
        service: r.service,
        rules: r
            .rules
            .into_iter()
            .map(|rule| pb::RouteRule {
                matches: rule
                    .matches
                    .into_iter()
                    .map(|m| pb::RouteMatch {
                        path_prefix: m.path_prefix.unwrap_or_default(),
                        headers: m.headers,
                        method: m.method.unwrap_or_default(),
                        path: m.path.map(|p| pb::PathMatch {
                            exact: p.exact,
                            prefix: p.prefix,
                            regex: p.regex,
                        }),
                        header_matches: m
                            .header_matches
                            .into_iter()
                            .map(value_match_to_pb)
                            .collect(),
                        query_params: m.query_params.into_iter().map(value_match_to_pb).collect(),
                    })
                    .collect(),
                backends: rule
                    .backends
                    .into_iter()
                    .map(|b| pb::RouteBackend {
                        subset: b.subset,
                        weight: b.weight,
                    })
                    .collect(),
                rewrite: rule.rewrite.map(|r| pb::Rewrite {
                    path_prefix: r.path_prefix,
                    host: r.host,
                }),
                request_headers: rule.request_headers.map(header_ops_to_pb),
                response_headers: rule.response_headers.map(header_ops_to_pb),
                redirect: rule.redirect.map(|r| pb::Redirect {
                    status: r.status.unwrap_or(0),
                    scheme: r.scheme,
                    host: r.host,
                    port: r.port.unwrap_or(0),
                    path: r.path,
                    path_prefix: r.path_prefix,
                }),
                mirror: rule.mirror.map(|m| pb::Mirror {
                    service: m.service.unwrap_or_default(),
                    subset: m.subset.into_iter().collect(),
                    percent: m.percent,
                    max_body_bytes: m.max_body_bytes.unwrap_or(0),
                }),
            })
            .collect(),
        timeout_ms: ms(r.timeout),
        retries: r.retries.map(|p| pb::RetryPolicy {
            attempts: p.attempts,
            on: p
                .on
                .into_iter()
                .map(|o| retry_on_str(o).to_string())
                .collect(),
            per_try_timeout_ms: ms(p.per_try_timeout),
            grpc_on: p
                .grpc_on
                .into_iter()
                .map(|o| grpc_retry_on_str(o).to_string())
                .collect(),
            backoff_base_ms: ms(p.backoff_base),
            backoff_max_ms: ms(p.backoff_max),
        }),
        load_balancer: match r.load_balancer {
            None => pb::LoadBalancer::Unspecified,
            Some(LoadBalancer::P2cEwma) => pb::LoadBalancer::P2cEwma,
            Some(LoadBalancer::RoundRobin) => pb::LoadBalancer::RoundRobin,
            Some(LoadBalancer::LeastRequest) => pb::LoadBalancer::LeastRequest,
            Some(LoadBalancer::ConsistentHash) => pb::LoadBalancer::ConsistentHash,
        } as i32,
        hash_on: r.hash_on.map(|h| pb::HashOn {
            header: h.header,
            cookie: h.cookie,
            source_identity: h.source_identity,
        }),
        rate_limit: r.rate_limit.map(|l| pb::RateLimit {
            requests_per_second: l.requests_per_second,
            burst: l.burst.unwrap_or(0),
            per: match l.per {
                RateLimitKey::Route => "route",
                RateLimitKey::Caller => "caller",
            }
            .into(),
        }),
        circuit_breaker: r.circuit_breaker.map(|c| pb::CircuitBreaker {
            max_pending_requests: c.max_pending_requests.unwrap_or(0),
            max_connections: c.max_connections.unwrap_or(0),
        }),
        outlier: r.outlier.map(|o| pb::OutlierDetection {
            consecutive_failures: o.consecutive_failures.unwrap_or(0),
            base_ejection_ms: ms(o.base_ejection),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(0),
        }),
        failover: r.failover,
        connect_timeout_ms: ms(r.connect_timeout),
        fault: r.fault.map(|f| pb::Fault {
            has_delay: f.delay.is_some(),
            delay_ms: f.delay.as_ref().map_or(0, |d| d.fixed.as_millis()),
            delay_percent: f.delay.as_ref().map_or(0, |d| d.percent),
            has_abort: f.abort.is_some(),
            abort_http_status: f.abort.as_ref().and_then(|a| a.http_status).unwrap_or(0),
            abort_grpc_status: f.abort.as_ref().and_then(|a| a.grpc_status).unwrap_or(0),
            abort_percent: f.abort.as_ref().map_or(0, |a| a.percent),
            header_name: f
                .header
                .as_ref()
                .map(|h| h.name.clone())
                .unwrap_or_default(),
            header_value: f.header.and_then(|h| h.value),
        }),
    }
}

fn value_match_to_pb(v: ValueMatch) -> pb::ValueMatch {
    pb::ValueMatch {
        name: v.name,
        exact: v.exact,
        regex: v.regex,
        present: v.present,
    }
}

fn value_match_from_pb(v: pb::ValueMatch) -> ValueMatch {
    ValueMatch {
        name: v.name,
        exact: v.exact,
        regex: v.regex,
        present: v.present,
    }
}

fn header_ops_to_pb(h: HeaderOps) -> pb::HeaderOps {
    pb::HeaderOps {
        set: h.set.into_iter().collect(),
        add: h.add.into_iter().collect(),
        remove: h.remove,
    }
}

fn header_ops_from_pb(h: pb::HeaderOps) -> HeaderOps {
    HeaderOps {
        set: h.set.into_iter().collect(),
        add: h.add.into_iter().collect(),
        remove: h.remove,
    }
}

fn route_from_pb(r: pb::RouteSpec) -> Result<RouteSpec, ConvertError> {
    let per = match r.rate_limit.as_ref().map(|l| l.per.as_str()) {
        None | Some("" | "route") => RateLimitKey::Route,
        Some("caller") => RateLimitKey::Caller,
        Some(other) => {
            return Err(err(
                "rate_limit.per",
                format!("unknown value {other:?} (route or caller)"),
            ))
        }
    };
    Ok(RouteSpec {
        hash_on: r.hash_on.map(|h| HashOn {
            header: h.header,
            cookie: h.cookie,
            source_identity: h.source_identity,
        }),
        rate_limit: r.rate_limit.map(|l| RateLimit {
            requests_per_second: l.requests_per_second,
            burst: opt_u32(l.burst),
            per,
        }),
        service: r.service,
        rules: r
            .rules
            .into_iter()
            .map(|rule| RouteRule {
                matches: rule
                    .matches
                    .into_iter()
                    .map(|m| RouteMatch {
                        path_prefix: opt_str(m.path_prefix),
                        headers: m.headers,
                        method: opt_str(m.method),
                        path: m.path.map(|p| PathMatch {
                            exact: p.exact,
                            prefix: p.prefix,
                            regex: p.regex,
                        }),
                        header_matches: m
                            .header_matches
                            .into_iter()
                            .map(value_match_from_pb)
                            .collect(),
                        query_params: m
                            .query_params
                            .into_iter()
                            .map(value_match_from_pb)
                            .collect(),
                    })
                    .collect(),
                backends: rule
                    .backends
                    .into_iter()
                    .map(|b| Backend {
                        subset: b.subset,
                        weight: b.weight,
                    })
                    .collect(),
                rewrite: rule.rewrite.map(|r| Rewrite {
                    path_prefix: r.path_prefix,
                    host: r.host,
                }),
                request_headers: rule.request_headers.map(header_ops_from_pb),
                response_headers: rule.response_headers.map(header_ops_from_pb),
                redirect: rule.redirect.map(|r| Redirect {
                    status: opt_u32(r.status),
                    scheme: r.scheme,
                    host: r.host,
                    port: opt_u32(r.port),
                    path: r.path,
                    path_prefix: r.path_prefix,
                }),
                mirror: rule.mirror.map(|m| Mirror {
                    service: opt_str(m.service),
                    subset: m.subset.into_iter().collect(),
                    percent: m.percent,
                    max_body_bytes: opt_u32(m.max_body_bytes),
                }),
            })
            .collect(),
        timeout: opt_ms(r.timeout_ms),
        connect_timeout: opt_ms(r.connect_timeout_ms),
        fault: r.fault.map(|f| {
            Box::new(Fault {
                delay: f.has_delay.then(|| FaultDelay {
                    fixed: crate::HumanDuration::from_millis(f.delay_ms),
                    percent: f.delay_percent,
                }),
                abort: f.has_abort.then(|| FaultAbort {
                    http_status: opt_u32(f.abort_http_status),
                    grpc_status: opt_u32(f.abort_grpc_status),
                    percent: f.abort_percent,
                }),
                header: (!f.header_name.is_empty()).then_some(FaultHeader {
                    name: f.header_name,
                    value: f.header_value,
                }),
            })
        }),
        retries: r
            .retries
            .map(|p| -> Result<RetryPolicy, ConvertError> {
                Ok(RetryPolicy {
                    attempts: p.attempts,
                    on: p.on.iter().map(|s| retry_on(s)).collect::<Result<_, _>>()?,
                    per_try_timeout: opt_ms(p.per_try_timeout_ms),
                    grpc_on: p
                        .grpc_on
                        .iter()
                        .map(|s| grpc_retry_on(s))
                        .collect::<Result<_, _>>()?,
                    backoff_base: opt_ms(p.backoff_base_ms),
                    backoff_max: opt_ms(p.backoff_max_ms),
                })
            })
            .transpose()?,
        load_balancer: match pb::LoadBalancer::try_from(r.load_balancer) {
            Ok(pb::LoadBalancer::Unspecified) => None,
            Ok(pb::LoadBalancer::P2cEwma) => Some(LoadBalancer::P2cEwma),
            Ok(pb::LoadBalancer::RoundRobin) => Some(LoadBalancer::RoundRobin),
            Ok(pb::LoadBalancer::LeastRequest) => Some(LoadBalancer::LeastRequest),
            Ok(pb::LoadBalancer::ConsistentHash) => Some(LoadBalancer::ConsistentHash),
            Err(_) => {
                return Err(err(
                    "load_balancer",
                    format!("unknown value {}", r.load_balancer),
                ))
            }
        },
        circuit_breaker: r.circuit_breaker.map(|c| CircuitBreaker {
            max_pending_requests: opt_u32(c.max_pending_requests),
            max_connections: opt_u32(c.max_connections),
        }),
        outlier: r.outlier.map(|o| OutlierDetection {
            consecutive_failures: opt_u32(o.consecutive_failures),
            base_ejection: opt_ms(o.base_ejection_ms),
            max_ejection_percent: opt_u32(o.max_ejection_percent),
        }),
        failover: r.failover,
    })
}

impl From<Spec> for pb::resource::Spec {
    fn from(spec: Spec) -> Self {
        use pb::resource::Spec as P;
        match spec {
            Spec::Service(s) => P::Service(pb::ServiceSpec {
                ports: s
                    .ports
                    .into_iter()
                    .map(|p| pb::ServicePort {
                        port: p.port,
                        protocol: pb::Protocol::from(p.protocol) as i32,
                    })
                    .collect(),
                vip: s.vip.map(|v| v.to_string()).unwrap_or_default(),
            }),
            Spec::Endpoint(e) => P::Endpoint(pb::EndpointSpec {
                service: e.service,
                address: e.address,
                port: e.port,
                labels: e.labels,
                cluster: e.cluster,
                locality: e.locality,
                health: match e.health {
                    Health::Healthy => pb::Health::Healthy,
                    Health::Unhealthy => pb::Health::Unhealthy,
                } as i32,
                identity: e.identity,
                lease_node: e.lease_node.unwrap_or(0),
                gateway: e.gateway,
            }),
            Spec::Route(r) => P::Route(route_to_pb(r)),
            Spec::Policy(p) => P::Policy(pb::PolicySpec {
                service: p.service,
                external: p.external,
                action: pb_action(Some(p.action)),
                from: p.from,
                to: p
                    .to
                    .into_iter()
                    .map(|t| pb::PolicyTarget {
                        methods: t.methods,
                        paths: t.paths,
                    })
                    .collect(),
            }),
            Spec::MeshConfig(m) => P::MeshConfig(pb::MeshConfigSpec {
                trust_domain: m.trust_domain.unwrap_or_default(),
                mtls: match m.mtls {
                    None => pb::MtlsMode::Unspecified,
                    Some(MtlsMode::Strict) => pb::MtlsMode::Strict,
                    Some(MtlsMode::Permissive) => pb::MtlsMode::Permissive,
                } as i32,
                default_policy: pb_action(m.default_policy),
                cert_ttl_ms: ms(m.cert_ttl),
                discovery_scope: match m.discovery_scope {
                    None => String::new(),
                    Some(DiscoveryScope::Namespace) => "namespace".into(),
                    Some(DiscoveryScope::Mesh) => "mesh".into(),
                },
                outbound: match m.outbound {
                    None => String::new(),
                    Some(OutboundMode::Allow) => "allow".into(),
                    Some(OutboundMode::Deny) => "deny".into(),
                },
                service_vip_range: m.service_vip_range.unwrap_or_default(),
                app_probe: m.app_probe.map(|p| pb::AppProbe {
                    http_path: p.http_path.unwrap_or_default(),
                    interval_ms: ms(p.interval),
                    timeout_ms: ms(p.timeout),
                    failure_threshold: p.failure_threshold.unwrap_or(0),
                    success_threshold: p.success_threshold.unwrap_or(0),
                }),
                access_log: m.access_log.map(|a| pb::AccessLog {
                    sample_percent: a.sample_percent,
                    file: a.file,
                }),
                tracing: m.tracing.map(|t| pb::Tracing {
                    collector: t.collector,
                    sample_ppm: t.sample_percent.map(|p| p.0),
                }),
            }),
            Spec::Token(t) => P::Token(pb::TokenSpec {
                secret_sha256: t.secret_sha256,
                scope: match (t.service, t.role) {
                    (Some(service), _) => Some(pb::token_spec::Scope::Service(pb::ServiceScope {
                        service,
                        namespace: t.namespace.unwrap_or_default(),
                    })),
                    (None, Some(r)) => Some(pb::token_spec::Scope::Role(pb_role(r) as i32)),
                    (None, None) => None,
                },
                created_at_ms: t.created_at_ms,
                expires_at_ms: t.expires_at_ms.unwrap_or(0),
                max_uses: t.max_uses.unwrap_or(0),
                uses: t.uses,
                revoked: t.revoked,
            }),
            Spec::Peer(p) => P::Peer(pb::PeerSpec {
                addresses: p.addresses,
                trust_domain: p.trust_domain,
                root_ca_pem: p.root_ca_pem,
                server_ca_pem: p.server_ca_pem,
                name_at_peer: p.name_at_peer,
                credential: p.credential,
                secret_sha256: p.secret_sha256,
                expires_at_ms: p.expires_at_ms,
                imported_revision: p.imported_revision,
            }),
            Spec::Export(e) => P::Export(pb::ExportSpec {
                service: e.service,
                peers: e.peers,
            }),
            Spec::Authority(a) => P::Authority(pb::AuthoritySpec {
                roots: a
                    .roots
                    .into_iter()
                    .map(|r| pb::CaRoot {
                        id: r.id,
                        cert_pem: r.cert_pem,
                        key_pem: r.key_pem,
                        not_after_ms: r.not_after_ms,
                        signing: r.signing,
                    })
                    .collect(),
            }),
            Spec::Import(i) => P::Import(pb::ImportSpec {
                peer: i.peer,
                service: i.service,
                gateways: i.gateways,
                trust_domain: i.trust_domain,
                protocol: pb::Protocol::from(i.protocol) as i32,
                revision: i.revision,
                vip: i.vip.map(|v| v.to_string()).unwrap_or_default(),
                subsets: i
                    .subsets
                    .into_iter()
                    .map(|labels| pb::Labels { labels })
                    .collect(),
            }),
            Spec::External(e) => P::External(pb::ExternalSpec {
                hosts: e.hosts,
                ports: e.ports,
                tls: e.tls.map(|t| pb::ExternalTls {
                    port: t.port.unwrap_or(0),
                    ca_pem: t.ca_pem,
                }),
            }),
            Spec::Revocation(r) => P::Revocation(pb::RevocationSpec {
                identity: r.identity,
                instance: r.instance,
                reason: r.reason,
            }),
        }
    }
}

impl TryFrom<pb::resource::Spec> for Spec {
    type Error = ConvertError;
    fn try_from(spec: pb::resource::Spec) -> Result<Self, ConvertError> {
        use pb::resource::Spec as P;
        Ok(match spec {
            P::Service(s) => Spec::Service(ServiceSpec {
                ports: s
                    .ports
                    .into_iter()
                    .map(|p| {
                        Ok(ServicePort {
                            port: p.port,
                            protocol: protocol(p.protocol)?,
                        })
                    })
                    .collect::<Result<_, ConvertError>>()?,
                vip: match s.vip.as_str() {
                    "" => None,
                    v => Some(v.parse().map_err(|_| {
                        err(
                            "service.vip",
                            format!("{} is not an IPv4 address", crate::validate::shown(v)),
                        )
                    })?),
                },
            }),
            P::Endpoint(e) => Spec::Endpoint(EndpointSpec {
                service: e.service,
                address: e.address,
                port: e.port,
                labels: e.labels,
                cluster: e.cluster,
                locality: e.locality,
                health: health(e.health)?,
                identity: e.identity,
                lease_node: (e.lease_node != 0).then_some(e.lease_node),
                gateway: e.gateway,
            }),
            P::Route(r) => Spec::Route(route_from_pb(r)?),
            P::Policy(p) => Spec::Policy(PolicySpec {
                service: p.service,
                external: p.external,
                action: action(p.action, "policy.action")?.unwrap_or_default(),
                from: p.from,
                to: p
                    .to
                    .into_iter()
                    .map(|t| PolicyTarget {
                        methods: t.methods,
                        paths: t.paths,
                    })
                    .collect(),
            }),
            P::MeshConfig(m) => Spec::MeshConfig(MeshConfigSpec {
                trust_domain: opt_str(m.trust_domain),
                mtls: match pb::MtlsMode::try_from(m.mtls) {
                    Ok(pb::MtlsMode::Unspecified) => None,
                    Ok(pb::MtlsMode::Strict) => Some(MtlsMode::Strict),
                    Ok(pb::MtlsMode::Permissive) => Some(MtlsMode::Permissive),
                    Err(_) => {
                        return Err(err("meshconfig.mtls", format!("unknown value {}", m.mtls)))
                    }
                },
                default_policy: action(m.default_policy, "meshconfig.default_policy")?,
                cert_ttl: opt_ms(m.cert_ttl_ms),
                discovery_scope: match m.discovery_scope.as_str() {
                    "" => None,
                    "namespace" => Some(DiscoveryScope::Namespace),
                    "mesh" => Some(DiscoveryScope::Mesh),
                    other => {
                        return Err(err(
                            "meshconfig.discovery_scope",
                            format!("unknown value {}", crate::validate::shown(other)),
                        ))
                    }
                },
                outbound: match m.outbound.as_str() {
                    "" => None,
                    "allow" => Some(OutboundMode::Allow),
                    "deny" => Some(OutboundMode::Deny),
                    other => {
                        return Err(err(
                            "meshconfig.outbound",
                            format!("unknown value {}", crate::validate::shown(other)),
                        ))
                    }
                },
                service_vip_range: (!m.service_vip_range.is_empty()).then_some(m.service_vip_range),
                app_probe: m.app_probe.map(|p| {
                    Box::new(AppProbe {
                        http_path: opt_str(p.http_path),
                        interval: opt_ms(p.interval_ms),
                        timeout: opt_ms(p.timeout_ms),
                        failure_threshold: opt_u32(p.failure_threshold),
                        success_threshold: opt_u32(p.success_threshold),
                    })
                }),
                access_log: m.access_log.map(|a| AccessLog {
                    sample_percent: a.sample_percent,
                    file: a.file,
                }),
                tracing: m.tracing.map(|t| Tracing {
                    collector: t.collector,
                    sample_percent: t.sample_ppm.map(SamplePercent),
                }),
            }),
            P::Token(t) => {
                let (service, namespace, role) = match t.scope {
                    Some(pb::token_spec::Scope::Service(s)) => {
                        (Some(s.service), opt_str(s.namespace), None)
                    }
                    Some(pb::token_spec::Scope::Role(r)) => (None, None, Some(role(r)?)),
                    None => (None, None, None),
                };
                Spec::Token(TokenSpec {
                    secret_sha256: t.secret_sha256,
                    service,
                    namespace,
                    role,
                    created_at_ms: t.created_at_ms,
                    expires_at_ms: (t.expires_at_ms != 0).then_some(t.expires_at_ms),
                    max_uses: opt_u32(t.max_uses),
                    uses: t.uses,
                    revoked: t.revoked,
                })
            }
            P::Peer(p) => Spec::Peer(PeerSpec {
                addresses: p.addresses,
                trust_domain: p.trust_domain,
                root_ca_pem: p.root_ca_pem,
                server_ca_pem: p.server_ca_pem,
                name_at_peer: p.name_at_peer,
                credential: p.credential,
                secret_sha256: p.secret_sha256,
                expires_at_ms: p.expires_at_ms,
                imported_revision: p.imported_revision,
            }),
            P::Export(e) => Spec::Export(ExportSpec {
                service: e.service,
                peers: e.peers,
            }),
            P::Authority(a) => Spec::Authority(AuthoritySpec {
                roots: a
                    .roots
                    .into_iter()
                    .map(|r| CaRoot {
                        id: r.id,
                        cert_pem: r.cert_pem,
                        key_pem: r.key_pem,
                        not_after_ms: r.not_after_ms,
                        signing: r.signing,
                    })
                    .collect(),
            }),
            P::Import(i) => Spec::Import(ImportSpec {
                peer: i.peer,
                service: i.service,
                gateways: i.gateways,
                trust_domain: i.trust_domain,
                protocol: protocol(i.protocol)?,
                subsets: i.subsets.into_iter().map(|l| l.labels).collect(),
                revision: i.revision,
                vip: match i.vip.as_str() {
                    "" => None,
                    v => Some(v.parse().map_err(|_| {
                        err(
                            "import.vip",
                            format!("{} is not an IPv4 address", crate::validate::shown(v)),
                        )
                    })?),
                },
            }),
            P::External(e) => Spec::External(ExternalSpec {
                hosts: e.hosts,
                ports: e.ports,
                tls: e.tls.map(|t| ExternalTls {
                    port: opt_u32(t.port),
                    ca_pem: t.ca_pem,
                }),
            }),
            P::Revocation(r) => Spec::Revocation(RevocationSpec {
                identity: r.identity,
                instance: r.instance,
                reason: r.reason,
            }),
        })
    }
}

impl From<Resource> for pb::Resource {
    fn from(r: Resource) -> Self {
        pb::Resource {
            metadata: Some(pb::Metadata {
                name: r.metadata.name,
                namespace: r.metadata.namespace,
                revision: r.metadata.revision.unwrap_or(0),
            }),
            spec: Some(r.spec.into()),
        }
    }
}

impl TryFrom<pb::Resource> for Resource {
    type Error = ConvertError;
    fn try_from(r: pb::Resource) -> Result<Self, ConvertError> {
        let m = r
            .metadata
            .ok_or_else(|| err("resource.metadata", "is missing"))?;
        let spec = r.spec.ok_or_else(|| err("resource.spec", "is missing"))?;
        Ok(Resource {
            metadata: Metadata {
                name: m.name,
                namespace: if m.namespace.is_empty() {
                    DEFAULT_NAMESPACE.to_string()
                } else {
                    m.namespace
                },
                revision: (m.revision != 0).then_some(m.revision),
            },
            spec: spec.try_into()?,
        })
    }
}

#[cfg(test)]
mod tests;
