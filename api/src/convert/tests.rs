//! Round trips domain → proto → domain (and through bytes and YAML).

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use prost::Message;

use crate::v1 as pb;
use crate::*;

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,10}[a-z0-9]"
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ./:_-]{1,20}"
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    option::of(text())
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(name(), name(), 0..4)
}

fn dur() -> impl Strategy<Value = Option<HumanDuration>> {
    option::of((1u64..100_000_000).prop_map(HumanDuration::from_millis))
}

fn nz() -> impl Strategy<Value = Option<u32>> {
    option::of(1u32..10_000)
}

fn service() -> impl Strategy<Value = Spec> {
    (
        vec(
            (
                0u32..70_000,
                prop_oneof![
                    Just(Protocol::Http),
                    Just(Protocol::Http2),
                    Just(Protocol::Grpc),
                    Just(Protocol::Tcp)
                ],
            )
                .prop_map(|(port, protocol)| ServicePort { port, protocol }),
            0..4,
        ),
        option::of(any::<u32>().prop_map(std::net::Ipv4Addr::from)),
    )
        .prop_map(|(ports, vip)| Spec::Service(ServiceSpec { ports, vip }))
}

fn endpoint() -> impl Strategy<Value = Spec> {
    (
        name(),
        text(),
        any::<u32>(),
        labels(),
        "[a-z]{0,5}",
        "[a-z]{0,5}",
        prop_oneof![Just(Health::Healthy), Just(Health::Unhealthy)],
        "[a-z:/.]{0,12}",
        option::of(1u64..10),
        any::<bool>(),
    )
        .prop_map(
            |(
                service,
                address,
                port,
                labels,
                cluster,
                locality,
                health,
                identity,
                lease_node,
                gateway,
            )| {
                Spec::Endpoint(EndpointSpec {
                    service,
                    address,
                    port,
                    labels,
                    cluster,
                    locality,
                    health,
                    identity,
                    lease_node,
                    gateway,
                })
            },
        )
}

fn route() -> impl Strategy<Value = Spec> {
    let value_match = || {
        (name(), 0..3u8, text(), any::<bool>()).prop_map(|(name, which, v, p)| ValueMatch {
            name,
            exact: (which == 0).then(|| v.clone()),
            regex: (which == 1).then_some(v),
            present: (which == 2).then_some(p),
        })
    };
    let path = option::of((opt_text(), opt_text(), opt_text()).prop_map(
        |(exact, prefix, regex)| PathMatch {
            exact,
            prefix,
            regex,
        },
    ));
    let m = (
        opt_text(),
        labels(),
        option::of("[A-Z]{3,6}"),
        path,
        vec(value_match(), 0..3),
        vec(value_match(), 0..3),
    )
        .prop_map(
            |(path_prefix, headers, method, path, header_matches, query_params)| RouteMatch {
                path_prefix,
                headers,
                method,
                path,
                header_matches,
                query_params,
            },
        );
    let b = (labels(), any::<u32>()).prop_map(|(subset, weight)| Backend { subset, weight });
    let ops = || {
        option::of(
            (labels(), labels(), vec(name(), 0..3)).prop_map(|(set, add, remove)| HeaderOps {
                set,
                add,
                remove,
            }),
        )
    };
    let rewrite = option::of(
        (opt_text(), opt_text()).prop_map(|(path_prefix, host)| Rewrite { path_prefix, host }),
    );
    let redirect = option::of(
        (nz(), opt_text(), opt_text(), nz(), opt_text(), opt_text()).prop_map(
            |(status, scheme, host, port, path, path_prefix)| Redirect {
                status,
                scheme,
                host,
                port,
                path,
                path_prefix,
            },
        ),
    );
    let mirror = option::of((opt_text(), labels(), any::<u32>(), nz()).prop_map(
        |(service, subset, percent, max_body_bytes)| Mirror {
            service,
            subset,
            percent,
            max_body_bytes,
        },
    ));
    let rule = (
        vec(m, 0..3),
        vec(b, 0..3),
        rewrite,
        ops(),
        ops(),
        redirect,
        mirror,
    )
        .prop_map(
            |(matches, backends, rewrite, request_headers, response_headers, redirect, mirror)| {
                RouteRule {
                    matches,
                    backends,
                    rewrite,
                    request_headers,
                    response_headers,
                    redirect,
                    mirror,
                }
            },
        );
    let retry_on = prop_oneof![
        Just(RetryOn::Status5xx),
        Just(RetryOn::GatewayError),
        Just(RetryOn::ConnectFailure),
        Just(RetryOn::Reset)
    ];
    let grpc_on = prop_oneof![
        Just(GrpcRetryOn::Cancelled),
        Just(GrpcRetryOn::DeadlineExceeded),
        Just(GrpcRetryOn::ResourceExhausted),
        Just(GrpcRetryOn::Internal),
        Just(GrpcRetryOn::Unavailable)
    ];
    let retries = option::of(
        (
            any::<u32>(),
            vec(retry_on, 0..3),
            vec(grpc_on, 0..3),
            dur(),
            dur(),
            dur(),
        )
            .prop_map(
                |(attempts, on, grpc_on, per_try_timeout, backoff_base, backoff_max)| RetryPolicy {
                    attempts,
                    on,
                    grpc_on,
                    per_try_timeout,
                    backoff_base,
                    backoff_max,
                },
            ),
    );
    let lb = option::of(prop_oneof![
        Just(LoadBalancer::P2cEwma),
        Just(LoadBalancer::RoundRobin),
        Just(LoadBalancer::LeastRequest),
        Just(LoadBalancer::ConsistentHash)
    ]);
    let cb = option::of((nz(), nz()).prop_map(|(a, b)| CircuitBreaker {
        max_pending_requests: a,
        max_connections: b,
    }));
    let od = option::of((nz(), dur(), nz()).prop_map(|(a, b, c)| OutlierDetection {
        consecutive_failures: a,
        base_ejection: b,
        max_ejection_percent: c,
    }));
    (
        name(),
        vec(rule, 0..3),
        dur(),
        retries,
        lb,
        cb,
        od,
        vec(name(), 0..3),
    )
        .prop_map(
            |(
                service,
                rules,
                timeout,
                retries,
                load_balancer,
                circuit_breaker,
                outlier,
                failover,
            )| {
                Spec::Route(RouteSpec {
                    service,
                    rules,
                    timeout,
                    connect_timeout: timeout,
                    fault: timeout.map(|d| {
                        Box::new(Fault {
                            delay: Some(FaultDelay {
                                fixed: d,
                                percent: 10,
                            }),
                            abort: Some(FaultAbort {
                                http_status: Some(503),
                                grpc_status: None,
                                percent: 5,
                            }),
                            header: Some(FaultHeader {
                                name: "x-fault".into(),
                                value: None,
                            }),
                        })
                    }),
                    retries,
                    hash_on: failover.first().map(|n| HashOn {
                        header: Some(n.clone()),
                        cookie: Some(n.clone()),
                        source_identity: true,
                    }),
                    rate_limit: circuit_breaker
                        .as_ref()
                        .map(|c: &CircuitBreaker| RateLimit {
                            requests_per_second: c.max_connections.unwrap_or(1),
                            burst: c.max_pending_requests,
                            per: if c.max_connections.is_some() {
                                RateLimitKey::Caller
                            } else {
                                RateLimitKey::Route
                            },
                        }),
                    load_balancer,
                    circuit_breaker,
                    outlier,
                    failover,
                })
            },
        )
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![Just(Action::Allow), Just(Action::Deny)]
}

fn policy() -> impl Strategy<Value = Spec> {
    let target = (vec("[A-Z]{3,6}", 0..3), vec(text(), 0..3))
        .prop_map(|(methods, paths)| PolicyTarget { methods, paths });
    (name(), action(), vec(text(), 0..3), vec(target, 0..3)).prop_map(
        |(service, action, from, to)| {
            Spec::Policy(PolicySpec {
                external: service.len() % 2 == 0,
                service,
                action,
                from,
                to,
            })
        },
    )
}

fn mesh_config() -> impl Strategy<Value = Spec> {
    (
        opt_text(),
        option::of(prop_oneof![
            Just(MtlsMode::Strict),
            Just(MtlsMode::Permissive)
        ]),
        option::of(action()),
        dur(),
        option::of(prop_oneof![
            Just(DiscoveryScope::Namespace),
            Just(DiscoveryScope::Mesh)
        ]),
        option::of(prop_oneof![
            Just(OutboundMode::Allow),
            Just(OutboundMode::Deny)
        ]),
    )
        .prop_map(
            |(trust_domain, mtls, default_policy, cert_ttl, discovery_scope, outbound)| {
                Spec::MeshConfig(MeshConfigSpec {
                    trust_domain,
                    mtls,
                    default_policy,
                    cert_ttl,
                    discovery_scope,
                    outbound,
                    service_vip_range: None,
                    access_log: outbound.map(|_| AccessLog {
                        sample_percent: Some(10),
                        file: Some("/var/log/mesh.log".into()),
                    }),
                    tracing: mtls.map(|_| Tracing {
                        collector: "otel.observability:4317".into(),
                        sample_percent: cert_ttl
                            .map(|d| SamplePercent((d.as_millis() % 1_000_001) as u32)),
                    }),
                    app_probe: cert_ttl.map(|d| {
                        Box::new(AppProbe {
                            http_path: Some("/ready".into()),
                            interval: Some(d),
                            timeout: None,
                            failure_threshold: Some(3),
                            success_threshold: None,
                        })
                    }),
                })
            },
        )
}

fn token() -> impl Strategy<Value = Spec> {
    let scope = prop_oneof![
        (name(), option::of(name())).prop_map(|(s, ns)| (Some(s), ns, None)),
        prop_oneof![Just(Role::Admin), Just(Role::ReadOnly)].prop_map(|r| (None, None, Some(r))),
        Just((None, None, None)),
    ];
    (
        "[0-9a-f]{64}",
        scope,
        any::<u64>(),
        option::of(1u64..u64::MAX),
        nz(),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                secret_sha256,
                (service, namespace, role),
                created_at_ms,
                expires_at_ms,
                max_uses,
                uses,
                revoked,
            )| {
                Spec::Token(TokenSpec {
                    secret_sha256,
                    service,
                    namespace,
                    role,
                    created_at_ms,
                    expires_at_ms,
                    max_uses,
                    uses,
                    revoked,
                })
            },
        )
}

fn federation() -> impl Strategy<Value = Spec> {
    prop_oneof![
        (
            (vec(text(), 0..3), name(), "[A-Z]{0,10}", "[A-Z]{0,10}"),
            (name(), text(), text(), any::<u64>(), any::<u64>())
        )
            .prop_map(
                |(
                    (addresses, trust_domain, root_ca_pem, server_ca_pem),
                    (name_at_peer, credential, secret_sha256, expires_at_ms, imported_revision),
                )| {
                    Spec::Peer(PeerSpec {
                        addresses,
                        trust_domain,
                        root_ca_pem,
                        server_ca_pem,
                        name_at_peer,
                        credential,
                        secret_sha256,
                        expires_at_ms,
                        imported_revision,
                    })
                }
            ),
        (name(), vec(name(), 0..3))
            .prop_map(|(service, peers)| Spec::Export(ExportSpec { service, peers })),
        (name(), name(), vec(text(), 0..3), name(), any::<u64>()).prop_map(
            |(peer, service, gateways, trust_domain, revision)| Spec::Import(ImportSpec {
                peer,
                service,
                gateways,
                trust_domain,
                protocol: Default::default(),
                subsets: (revision % 3 == 0)
                    .then(|| BTreeMap::from([("version".to_string(), format!("v{revision}"))]))
                    .into_iter()
                    .collect(),
                revision,
                vip: (revision % 2 == 0).then(|| std::net::Ipv4Addr::from(revision as u32)),
            })
        ),
        vec((name(), text(), text(), any::<u64>(), any::<bool>()), 0..3).prop_map(|roots| {
            Spec::Authority(AuthoritySpec {
                roots: roots
                    .into_iter()
                    .map(|(id, cert_pem, key_pem, not_after_ms, signing)| CaRoot {
                        id,
                        cert_pem,
                        key_pem,
                        not_after_ms,
                        signing,
                    })
                    .collect(),
            })
        }),
    ]
}

fn external() -> impl Strategy<Value = Spec> {
    let tls =
        option::of((nz(), opt_text()).prop_map(|(port, ca_pem)| ExternalTls { port, ca_pem }));
    (vec(text(), 0..3), vec(any::<u32>(), 0..3), tls)
        .prop_map(|(hosts, ports, tls)| Spec::External(ExternalSpec { hosts, ports, tls }))
}

pub(crate) fn resource() -> impl Strategy<Value = Resource> {
    let spec = prop_oneof![
        service(),
        endpoint(),
        route(),
        policy(),
        mesh_config(),
        token(),
        federation(),
        external()
    ];
    (name(), name(), option::of(1u64..u64::MAX), spec).prop_map(
        |(name, namespace, revision, spec)| Resource {
            metadata: Metadata {
                name,
                namespace,
                revision,
            },
            spec,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn proto_round_trip(r in resource()) {
        let p: pb::Resource = r.clone().into();
        let back = Resource::try_from(p.clone()).unwrap();
        prop_assert_eq!(&back, &r);
        // And through the bytes on the wire.
        let bytes = p.encode_to_vec();
        let decoded = pb::Resource::decode(bytes.as_slice()).unwrap();
        prop_assert_eq!(Resource::try_from(decoded).unwrap(), r);
    }

    #[test]
    fn json_and_yaml_round_trip(r in resource()) {
        let json = serde_json::to_string(&r).unwrap();
        prop_assert_eq!(&serde_json::from_str::<Resource>(&json).unwrap(), &r);
        let yaml = serde_yaml_ng::to_string(&r).unwrap();
        prop_assert_eq!(serde_yaml_ng::from_str::<Resource>(&yaml).unwrap(), r);
    }

    #[test]
    fn key_round_trip(r in resource()) {
        let k = r.key();
        let p: pb::ResourceKey = k.clone().into();
        prop_assert_eq!(ResourceKey::try_from(p).unwrap(), k);
    }
}

#[test]
fn missing_spec_on_the_wire_is_an_error_naming_the_field() {
    let p = pb::Resource {
        metadata: Some(pb::Metadata {
            name: "web".into(),
            namespace: String::new(),
            revision: 0,
        }),
        spec: None,
    };
    let e = Resource::try_from(p).unwrap_err();
    assert_eq!(e.to_string(), "resource.spec: is missing");
}

#[test]
fn unknown_enum_value_on_the_wire_is_an_error() {
    let p = pb::Resource {
        metadata: Some(pb::Metadata::default()),
        spec: Some(pb::resource::Spec::Service(pb::ServiceSpec {
            ports: vec![pb::ServicePort {
                port: 80,
                protocol: 99,
            }],
            vip: String::new(),
        })),
    };
    let e = Resource::try_from(p).unwrap_err();
    assert!(e.to_string().contains("protocol: unknown value 99"), "{e}");
}

#[test]
fn empty_namespace_on_the_wire_means_default() {
    let p = pb::Resource {
        metadata: Some(pb::Metadata {
            name: "web".into(),
            namespace: String::new(),
            revision: 0,
        }),
        spec: Some(pb::resource::Spec::Service(pb::ServiceSpec::default())),
    };
    assert_eq!(Resource::try_from(p).unwrap().metadata.namespace, "default");
}
