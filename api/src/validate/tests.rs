//! Validation rules, each with a passing and a failing case.

use crate::*;

fn parse_one(yaml: &str) -> Resource {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn errors(yaml: &str) -> String {
    parse_one(yaml).validate().unwrap_err().to_string()
}

const DESIGN_EXAMPLE: &str = r#"
kind: Service
metadata: {name: web, namespace: default}
spec:
  ports: [{port: 80, protocol: http}]
---
kind: Endpoint
metadata: {name: web-v1-1}
spec: {service: web, address: 127.0.0.1, port: 15006, labels: {version: v1}}
---
kind: Route
metadata: {name: web}
spec:
  service: web
  rules:
    - matches: [{headers: {x-canary: "true"}}]
      backends: [{subset: {version: v2}, weight: 100}]
    - backends:
        - {subset: {version: v1}, weight: 90}
        - {subset: {version: v2}, weight: 10}
  timeout: 2s
  retries: {attempts: 2, on: [5xx, connect-failure]}
---
kind: Policy
metadata: {name: web-from-frontend}
spec:
  service: web
  action: allow
  from: ["spiffe://east.mesh/ns/default/sa/frontend"]
  to: [{methods: [GET], paths: ["/api/"]}]
---
kind: MeshConfig
metadata: {name: mesh}
spec: {trust_domain: east.mesh, mtls: strict, default_policy: allow, cert_ttl: 24h}
"#;

#[test]
fn design_example_parses_and_validates() {
    let rs = parse_documents(DESIGN_EXAMPLE).unwrap();
    assert_eq!(rs.len(), 5);
    let kinds: Vec<Kind> = rs.iter().map(Resource::kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Service,
            Kind::Endpoint,
            Kind::Route,
            Kind::Policy,
            Kind::MeshConfig
        ]
    );
    let Spec::Route(route) = &rs[2].spec else {
        panic!()
    };
    assert_eq!(route.timeout.unwrap().as_millis(), 2000);
    assert_eq!(
        route.retries.as_ref().unwrap().on,
        [RetryOn::Status5xx, RetryOn::ConnectFailure]
    );
    assert_eq!(route.rules[0].matches[0].headers["x-canary"], "true");
    assert_eq!(rs[1].metadata.namespace, "default");
}

#[test]
fn weights_must_sum_to_100() {
    let e = errors(
        "kind: Route\nmetadata: {name: web}\nspec:\n  service: web\n  rules:\n    - backends: [{subset: {version: v1}, weight: 90}]\n",
    );
    assert_eq!(
        e,
        "route \"web\": spec.rules[0].backends: weights sum to 90, must be 100"
    );
}

#[test]
fn ports_must_be_in_range() {
    let e =
        errors("kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 0}, {port: 70000}]}\n");
    assert!(
        e.contains("service \"web\": spec.ports[0].port: port 0 is out of range, must be 1-65535"),
        "{e}"
    );
    assert!(
        e.contains("spec.ports[1].port: port 70000 is out of range"),
        "{e}"
    );
    let e = errors("kind: Endpoint\nmetadata: {name: e1}\nspec: {service: web, address: 10.0.0.1, port: 65536}\n");
    assert!(e.contains("endpoint \"e1\": spec.port: port 65536"), "{e}");
}

#[test]
fn duplicate_ports_are_refused() {
    let e = errors("kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}, {port: 80, protocol: grpc}]}\n");
    assert!(
        e.contains("spec.ports[1].port: port 80 is listed twice"),
        "{e}"
    );
}

#[test]
fn names_are_dns_labels() {
    for bad in ["Web", "web_1", "-web", "web-", &"a".repeat(64)] {
        let r = Resource::new(bad, Spec::Service(ServiceSpec::default()));
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("metadata.name"), "{bad}: {e}");
    }
    for good in ["web", "w", "web-v1-1", "0abc", &"a".repeat(63)] {
        Resource::new(good, Spec::Service(ServiceSpec::default()))
            .validate()
            .unwrap();
    }
    let e = errors("kind: Service\nmetadata: {name: web, namespace: Prod}\nspec: {}\n");
    assert!(
        e.contains("service \"Prod/web\": metadata.namespace"),
        "{e}"
    );
}

#[test]
fn durations_must_parse_and_errors_name_the_field() {
    let e = parse_documents(
        "kind: Route\nmetadata: {name: web}\nspec: {service: web, timeout: 2 parsecs}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("document 1: route \"web\": spec.timeout: invalid duration \"2 parsecs\""),
        "{e}"
    );
    let e = errors("kind: Route\nmetadata: {name: web}\nspec: {service: web, timeout: 0s}\n");
    assert!(e.contains("spec.timeout: must be more than 0"), "{e}");
}

#[test]
fn subsets_must_not_be_empty() {
    let e = errors(
        "kind: Route\nmetadata: {name: web}\nspec:\n  service: web\n  rules: [{backends: [{subset: {}, weight: 100}]}]\n",
    );
    assert!(
        e.contains("spec.rules[0].backends[0].subset: subset must not be empty"),
        "{e}"
    );
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    let e = parse_documents(
        "kind: Service\nmetadata: {name: a}\nspec: {}\n---\nkind: Route\nmetadata: {name: web}\nspec:\n  service: web\n  rules: [{backends: [{subset: {v: a}, wieght: 100}]}]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("document 2: route \"web\": spec.rules[0].backends[0]"),
        "{e}"
    );
    assert!(e.contains("unknown field `wieght`"), "{e}");
}

#[test]
fn unknown_kind_and_bad_yaml_are_reported_by_document() {
    let e = parse_documents("kind: Gateway\nmetadata: {name: a}\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("document 1: kind: unknown kind \"Gateway\""),
        "{e}"
    );
    let e = parse_documents("kind: Service\nmetadata: {name: a}\n---\nkind: [\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("document 2: not valid YAML"), "{e}");
    assert_eq!(parse_documents("---\n").unwrap_err(), ParseError::Empty);
}

#[test]
fn retry_and_method_rules() {
    let e = errors("kind: Route\nmetadata: {name: web}\nspec: {service: web, retries: {attempts: 11}, rules: [{matches: [{method: FETCH, path_prefix: api}]}]}\n");
    assert!(
        e.contains("spec.retries.attempts: 11 is more than 10"),
        "{e}"
    );
    assert!(
        e.contains("spec.rules[0].matches[0].method: \"FETCH\" is not an HTTP method"),
        "{e}"
    );
    assert!(
        e.contains("spec.rules[0].matches[0].path_prefix: \"api\" must start with '/'"),
        "{e}"
    );
}

#[test]
fn policy_sources_are_spiffe_ids_prefixes_or_star() {
    let ok = "kind: Policy\nmetadata: {name: p}\nspec: {service: web, from: ['*', 'spiffe://east.mesh/ns/default/sa/a', 'spiffe://east.mesh/ns/prod/*']}\n";
    parse_one(ok).validate().unwrap();
    let e = errors("kind: Policy\nmetadata: {name: p}\nspec: {service: web, action: deny, from: [frontend, 'spiffe://a/*/b']}\n");
    assert!(e.contains("spec.from[0]: \"frontend\" must be"), "{e}");
    assert!(e.contains("spec.from[1]"), "{e}");
}

#[test]
fn mesh_config_is_a_singleton_named_mesh() {
    let e = errors("kind: MeshConfig\nmetadata: {name: east}\nspec: {}\n");
    assert!(
        e.contains("meshconfig \"east\": metadata.name: is \"east\", must be \"mesh\""),
        "{e}"
    );
    let e = errors(
        "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {trust_domain: East_Mesh, cert_ttl: 1s}\n",
    );
    assert!(e.contains("spec.trust_domain"), "{e}");
    assert!(
        e.contains("spec.cert_ttl: 1s must be between 1m and 365d"),
        "{e}"
    );
}

#[test]
fn the_service_vip_range_is_an_ipv4_network_of_a_sane_size() {
    for bad in [
        "10.0.0.1/16",
        "10.0.0.0/31",
        "10.0.0.0/4",
        "fd00::/8",
        "10.0.0.0",
    ] {
        let e = errors(&format!(
            "kind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{service_vip_range: \"{bad}\"}}\n"
        ));
        assert!(e.contains("spec.service_vip_range"), "{bad}: {e}");
    }
    let ok: Resource = serde_yaml_ng::from_str(
        "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {service_vip_range: 10.96.0.0/12}\n",
    )
    .unwrap();
    assert!(ok.validate().is_ok());
}

#[test]
fn token_needs_exactly_one_scope() {
    let h = "a".repeat(64);
    let e = errors(&format!(
        "kind: Token\nmetadata: {{name: t1}}\nspec: {{secret_sha256: {h}, created_at_ms: 1}}\n"
    ));
    assert!(e.contains("exactly one of service"), "{e}");
    let e = errors(&format!(
        "kind: Token\nmetadata: {{name: t1}}\nspec: {{secret_sha256: {h}, service: web, role: admin, created_at_ms: 1}}\n"
    ));
    assert!(e.contains("exactly one of service"), "{e}");
    parse_one(&format!("kind: Token\nmetadata: {{name: t1}}\nspec: {{secret_sha256: {h}, role: read-only, created_at_ms: 1}}\n"))
        .validate()
        .unwrap();
    let e = errors("kind: Token\nmetadata: {name: t1}\nspec: {secret_sha256: xyz, service: web, created_at_ms: 1}\n");
    assert!(
        e.contains("spec.secret_sha256: must be 64 hex digits"),
        "{e}"
    );
}

#[test]
fn endpoint_address_and_labels() {
    let e = errors("kind: Endpoint\nmetadata: {name: e1}\nspec: {service: web, address: 'not an address', port: 80, labels: {'bad key!': v}}\n");
    assert!(
        e.contains("spec.address: \"not an address\" is neither"),
        "{e}"
    );
    assert!(e.contains("label key \"bad key!\""), "{e}");
    parse_one("kind: Endpoint\nmetadata: {name: e1}\nspec: {service: web, address: 'fe80::1', port: 80}\n")
        .validate()
        .unwrap();
    parse_one("kind: Endpoint\nmetadata: {name: e1}\nspec: {service: web, address: web-1.east.internal, port: 80}\n")
        .validate()
        .unwrap();
}

#[test]
fn all_errors_are_listed_not_just_the_first() {
    let e = parse_one("kind: Service\nmetadata: {name: Web}\nspec: {ports: [{port: 0}]}\n")
        .validate()
        .unwrap_err();
    assert_eq!(e.0.len(), 2);
}

#[test]
fn yaml_output_parses_back() {
    let rs = parse_documents(DESIGN_EXAMPLE).unwrap();
    let text = yaml::to_yaml(&rs).unwrap();
    assert_eq!(parse_documents(&text).unwrap(), rs);
}

#[test]
fn an_error_never_echoes_a_huge_value() {
    let huge = "X".repeat(100_000);
    let e = super::dns_label(&huge).unwrap_err();
    assert!(e.len() < 200, "{} bytes", e.len());
    assert!(e.contains("(100000 bytes)"), "{e}");
    let r = Resource::new(
        huge.to_lowercase(),
        Spec::Service(crate::ServiceSpec::default()),
    );
    let e = r.validate().unwrap_err().to_string();
    assert!(e.len() < 400, "{} bytes", e.len());
}

const TRAFFIC_POLICY: &str = r#"
kind: Route
metadata: {name: web}
spec:
  service: web
  load_balancer: consistent-hash
  hash_on: {cookie: session}
  rate_limit: {requests_per_second: 100, burst: 200, per: caller}
  rules:
  - matches:
    - path: {regex: "/users/[0-9]+"}
      header_matches: [{name: x-user, regex: "adm.*"}, {name: x-debug, present: true}]
      query_params: [{name: beta, exact: "1"}]
    backends: [{subset: {version: v2}, weight: 100}]
  - matches: [{path: {prefix: /api/}}, {path_prefix: /v1/}]
    rewrite: {path_prefix: /, host: "web-internal:8080"}
    request_headers: {set: {x-env: prod}, add: {x-tag: a}, remove: [x-secret]}
    response_headers: {add: {x-served-by: mesh}}
    mirror: {service: web-next, percent: 10, max_body_bytes: 1048576}
  - matches: [{path: {exact: /old}}]
    redirect: {scheme: https, host: example.com, port: 8443, path: /new, status: 308}
"#;

#[test]
fn the_traffic_policy_fields_parse_validate_and_round_trip() {
    let r = parse_one(TRAFFIC_POLICY);
    r.validate().unwrap();
    let back = Resource::try_from(crate::v1::Resource::from(r.clone())).unwrap();
    assert_eq!(back, r);
}

#[test]
fn bad_traffic_policy_fields_are_refused_naming_field_and_rule() {
    let route =
        |spec: &str| format!("kind: Route\nmetadata: {{name: web}}\nspec:\n  service: web\n{spec}");
    let cases = [
        (
            "  rules: [{matches: [{path: {regex: \"(unclosed\"}}]}]\n",
            "spec.rules[0].matches[0].path.regex: \"(unclosed\" is not a regular expression (RE2 syntax)",
        ),
        (
            "  rules: [{matches: [{path: {exact: /a, prefix: /b}}]}]\n",
            "spec.rules[0].matches[0].path: give exactly one of exact, prefix and regex",
        ),
        (
            "  rules: [{matches: [{path_prefix: /a, path: {exact: /a}}]}]\n",
            "spec.rules[0].matches[0].path: give path or path_prefix, not both",
        ),
        (
            "  rules: [{matches: [{path: {exact: a}}]}]\n",
            "spec.rules[0].matches[0].path.exact: \"a\" must start with '/'",
        ),
        (
            "  rules: [{matches: [{header_matches: [{name: x-a, exact: b, present: true}]}]}]\n",
            "spec.rules[0].matches[0].header_matches[0]: give exactly one of exact, regex and present",
        ),
        (
            "  rules: [{matches: [{header_matches: [{name: \"x a\", present: true}]}]}]\n",
            "spec.rules[0].matches[0].header_matches[0].name: \"x a\" is not a valid HTTP header name",
        ),
        (
            "  rules: [{matches: [{query_params: [{name: \"\", present: true}]}]}]\n",
            "spec.rules[0].matches[0].query_params[0].name: must be 1 to 256 characters",
        ),
        (
            "  rules: [{matches: [{query_params: [{name: q, regex: \"a{99999}\"}]}]}]\n",
            "spec.rules[0].matches[0].query_params[0].regex: \"a{99999}\" is not a regular expression",
        ),
        (
            "  rules: [{matches: [{method: GET}], rewrite: {path_prefix: /x}}]\n",
            "spec.rules[0].rewrite.path_prefix: every match of the rule must test a path prefix",
        ),
        (
            "  rules: [{rewrite: {host: \"bad host\"}}]\n",
            "spec.rules[0].rewrite.host: \"bad host\" is not a host name",
        ),
        (
            "  rules: [{request_headers: {set: {Host: x}}}]\n",
            "spec.rules[0].request_headers.set: \"Host\" is the proxy's to set",
        ),
        (
            "  rules: [{response_headers: {add: {x-raftmesh-error: none}}}]\n",
            "spec.rules[0].response_headers.add: \"x-raftmesh-error\" is the proxy's to set",
        ),
        (
            "  rules: [{request_headers: {set: {x-a: \"line\\nbreak\"}}}]\n",
            "spec.rules[0].request_headers.set.x-a: \"line\\nbreak\" holds control characters",
        ),
        (
            "  rules: [{redirect: {status: 200}}]\n",
            "spec.rules[0].redirect.status: 200 is not a redirect status",
        ),
        (
            "  rules: [{redirect: {scheme: ftp}}]\n",
            "spec.rules[0].redirect.scheme: \"ftp\" is not http or https",
        ),
        (
            "  rules: [{redirect: {path: /x}, backends: [{subset: {v: a}, weight: 100}]}]\n",
            "spec.rules[0].redirect: a redirect rule answers itself: it takes no backends and no rewrite",
        ),
        (
            "  rules: [{redirect: {host: \"a.example:80\"}}]\n",
            "spec.rules[0].redirect.host: give the port as redirect.port",
        ),
        (
            "  rules: [{mirror: {percent: 10}}]\n",
            "spec.rules[0].mirror: give exactly one of service and subset",
        ),
        (
            "  rules: [{mirror: {service: web, percent: 101}}]\n",
            "spec.rules[0].mirror.percent: 101 is more than 100",
        ),
        (
            "  rules: [{mirror: {subset: {version: v2}, percent: 1, max_body_bytes: 20000000}}]\n",
            "spec.rules[0].mirror.max_body_bytes: 20000000 must be between 1 and 10 MiB",
        ),
        (
            "  rules: [{matches: [{path: {regex: \"/public)|(?:.*\"}}]}]\n",
            "spec.rules[0].matches[0].path.regex: \"/public)|(?:.*\" is not a regular expression",
        ),
        (
            "  rules: [{matches: [{path_prefix: /a}], rewrite: {path_prefix: \"/é/\"}}]\n",
            "spec.rules[0].rewrite.path_prefix: \"/é/\" must start with '/' and hold only URI path characters",
        ),
        (
            "  rules: [{redirect: {path: \"/x?y\"}}]\n",
            "spec.rules[0].redirect.path: \"/x?y\" must start with '/' and hold only URI path characters",
        ),
        (
            "  load_balancer: consistent-hash\n",
            "spec.hash_on: load_balancer consistent-hash needs hash_on",
        ),
        (
            "  hash_on: {header: x-user}\n",
            "spec.hash_on: hash_on is the key of load_balancer consistent-hash",
        ),
        (
            "  load_balancer: consistent-hash\n  hash_on: {header: x-user, source_identity: true}\n",
            "spec.hash_on: give exactly one of header, cookie and source_identity",
        ),
        (
            "  rate_limit: {requests_per_second: 0}\n",
            "spec.rate_limit.requests_per_second: 0 must be between 1 and 1000000",
        ),
        (
            "  rate_limit: {requests_per_second: 5, burst: 0}\n",
            "spec.rate_limit.burst: 0 must be between 1 and 10000000",
        ),
        (
            "  rate_limit: {requests_per_second: 5, per: ip}\n",
            "unknown variant `ip`",
        ),
    ];
    for (spec, want) in cases {
        let yaml = route(spec);
        let got = match crate::parse_documents(&yaml) {
            Ok(rs) => rs[0].validate().unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(got.contains(want), "{spec}\n  got:  {got}\n  want: {want}");
    }
}

#[test]
fn access_log_settings_are_checked() {
    parse_one("kind: MeshConfig\nmetadata: {name: mesh}\nspec: {access_log: {sample_percent: 5, file: /var/log/a.log}}\n")
        .validate()
        .unwrap();
    let e = errors("kind: MeshConfig\nmetadata: {name: mesh}\nspec: {access_log: {sample_percent: 101, file: a.log}}\n");
    assert!(
        e.contains("spec.access_log.sample_percent: 101 is more than 100"),
        "{e}"
    );
    assert!(
        e.contains("spec.access_log.file: \"a.log\" is not an absolute path"),
        "{e}"
    );
    for bad in [
        "/etc/passwd",
        "/var/log/../../etc/cron.d/x.log",
        "/root/.ssh/authorized_keys",
    ] {
        let e = errors(&format!(
            "kind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{access_log: {{file: '{bad}'}}}}\n"
        ));
        assert!(
            e.contains("is not an absolute path to a .log or .jsonl file"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn tracing_settings_are_checked() {
    let r = parse_one("kind: MeshConfig\nmetadata: {name: mesh}\nspec: {tracing: {collector: 'otel.observability:4317', sample_percent: 0.5}}\n");
    r.validate().unwrap();
    let crate::Spec::MeshConfig(m) = &r.spec else {
        panic!()
    };
    assert_eq!(
        m.tracing.as_ref().unwrap().sample_percent,
        Some(crate::SamplePercent(5_000))
    );
    let e = errors("kind: MeshConfig\nmetadata: {name: mesh}\nspec: {tracing: {collector: 'http://otel:4317'}}\n");
    assert!(
        e.contains("spec.tracing.collector: \"http://otel:4317\" is not host:port"),
        "{e}"
    );
    for bad in ["101", "-1", "1e400"] {
        let y = format!("kind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{tracing: {{collector: 'otel:4317', sample_percent: {bad}}}}}\n");
        let e = crate::parse_documents(&y)
            .map(|r| format!("{bad} parsed as {r:?}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.tracing.sample_percent"), "{bad}: {e}");
    }
}

#[test]
fn an_external_names_hosts_ports_and_its_tls_and_bad_ones_are_refused() {
    parse_one("kind: External\nmetadata: {name: stripe}\nspec: {hosts: [api.stripe.com, \"*.stripe.net\", 10.1.2.3], ports: [443, 8443], tls: {port: 443}}\n")
        .validate()
        .unwrap();
    let cases = [
        ("{hosts: []}", "spec.hosts: 0 hosts, must be 1 to 32"),
        (
            "{hosts: [Api.Example.com]}",
            "spec.hosts[0]: \"Api.Example.com\" is not a lower-case DNS name",
        ),
        (
            "{hosts: [\"*.com\"]}",
            "spec.hosts[0]: \"*.com\" is not a lower-case DNS name with a dot",
        ),
        ("{hosts: [\"a.*.com\"]}", "spec.hosts[0]"),
        (
            "{hosts: [web]}",
            "spec.hosts[0]: \"web\" is not a lower-case DNS name with a dot",
        ),
        (
            "{hosts: [a.com], ports: [0]}",
            "spec.ports[0]: port 0 is out of range",
        ),
        (
            "{hosts: [a.com], tls: {ca_pem: nonsense}}",
            "spec.tls.ca_pem: must be one or more PEM certificates",
        ),
    ];
    for (spec, want) in cases {
        let got = errors(&format!(
            "kind: External\nmetadata: {{name: x}}\nspec: {spec}\n"
        ));
        assert!(got.contains(want), "{spec}\n  got:  {got}\n  want: {want}");
    }
}
