//! Validation of resources. Every error names the resource, the field and
//! the rule: `route "web": spec.rules[1].backends: weights sum to 90, must be 100`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::{Kind, Resource, Spec};

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {}: {field}: {rule}", kind.lower(), display_name(namespace, name))]
pub struct ValidationError {
    /// Kind of the resource.
    pub kind: Kind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Dotted path of the field (`spec.rules[1].backends`).
    pub field: String,
    /// The rule, as a sentence fragment.
    pub rule: String,
}

fn display_name(namespace: &str, name: &str) -> String {
    if namespace == crate::DEFAULT_NAMESPACE || namespace.is_empty() {
        shown(name)
    } else {
        shown(&format!("{namespace}/{name}"))
    }
}

/// Every broken rule of one resource (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

struct Checker<'a> {
    res: &'a Resource,
    errors: Vec<ValidationError>,
}

impl Checker<'_> {
    fn fail(&mut self, field: impl Into<String>, rule: impl Into<String>) {
        self.errors.push(ValidationError {
            kind: self.res.kind(),
            namespace: self.res.metadata.namespace.clone(),
            name: self.res.metadata.name.clone(),
            field: field.into(),
            rule: rule.into(),
        });
    }

    fn check(&mut self, ok: bool, field: impl Into<String>, rule: impl Into<String>) {
        if !ok {
            self.fail(field, rule);
        }
    }

    fn label(&mut self, value: &str, field: &str) {
        if let Err(rule) = dns_label(value) {
            self.fail(field, rule);
        }
    }

    fn port(&mut self, port: u32, field: &str) {
        self.check(
            (1..=65535).contains(&port),
            field,
            format!("port {port} is out of range, must be 1-65535"),
        );
    }

    fn labels(&mut self, labels: &BTreeMap<String, String>, field: &str) {
        for (k, v) in labels {
            if let Err(rule) = label_key(k) {
                self.fail(format!("{field}.{k}"), rule);
            }
            if let Err(rule) = label_value(v) {
                self.fail(format!("{field}.{k}"), rule);
            }
        }
    }

    fn method(&mut self, m: &str, field: &str) {
        self.check(
            HTTP_METHODS.contains(&m),
            field,
            format!(
                "{} is not an HTTP method (one of {})",
                shown(m),
                HTTP_METHODS.join(", ")
            ),
        );
    }

    fn path_prefix(&mut self, p: &str, field: &str) {
        // RFC 3986 path characters: unreserved, sub-delims, ':', '@', '/',
        // and '%' escapes.
        let path_char = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b);
        self.check(
            p.starts_with('/') && p.bytes().all(path_char),
            field,
            format!(
                "{} must start with '/' and hold only URI path characters (no spaces, '?', '#' or non-ASCII: escape them with %)",
                shown(p)
            ),
        );
    }

    fn regex(&mut self, re: &str, field: &str) {
        if let Err(rule) = compile_regex(re) {
            self.fail(field, rule);
        }
    }

    fn value_match(&mut self, v: &crate::ValueMatch, field: &str) {
        match (&v.exact, &v.regex, v.present) {
            (Some(x), None, None) => self.check(
                x.len() <= 8192 && header_value(x),
                format!("{field}.exact"),
                format!(
                    "{} holds control characters or is longer than 8192",
                    shown(x)
                ),
            ),
            (None, Some(x), None) => self.regex(x, &format!("{field}.regex")),
            (None, None, Some(_)) => {}
            _ => self.fail(field, "give exactly one of exact, regex and present"),
        }
    }

    /// A host name or address, optionally with `:port`.
    fn authority(&mut self, h: &str, field: &str) {
        let (host, port) = match h.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            _ => (h, None),
        };
        let host_ok = dns_subdomain(host).is_ok() || host.parse::<std::net::Ipv4Addr>().is_ok();
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        self.check(
            host_ok && port_ok,
            field,
            format!(
                "{} is not a host name or IPv4 address with an optional :port",
                shown(h)
            ),
        );
    }

    fn header_ops(&mut self, ops: &crate::HeaderOps, field: &str) {
        let names = ops
            .set
            .iter()
            .map(|(k, v)| ("set", k, Some(v)))
            .chain(ops.add.iter().map(|(k, v)| ("add", k, Some(v))))
            .chain(ops.remove.iter().map(|k| ("remove", k, None)));
        let mut n = 0;
        for (op, k, v) in names {
            n += 1;
            let f = format!("{field}.{op}");
            if !header_name(k) {
                self.fail(f, format!("{} is not a valid HTTP header name", shown(k)));
                continue;
            }
            let lower = k.to_ascii_lowercase();
            self.check(
                !RESERVED_HEADERS.contains(&lower.as_str()) && !lower.starts_with("x-raftmesh-"),
                f.clone(),
                format!(
                    "{} is the proxy's to set (reserved: {}, x-raftmesh-*; the host is rewrite.host)",
                    shown(k),
                    RESERVED_HEADERS.join(", ")
                ),
            );
            if let Some(v) = v {
                self.check(
                    v.len() <= 8192 && header_value(v),
                    format!("{f}.{k}"),
                    format!(
                        "{} holds control characters or is longer than 8192",
                        shown(v)
                    ),
                );
            }
        }
        self.check(n <= 32, field, format!("{n} header changes, at most 32"));
    }
}

/// Headers a Route's `request_headers`/`response_headers` may not touch:
/// they frame the message or steer the proxy.
pub const RESERVED_HEADERS: [&str; 10] = [
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "x-forwarded-client-cert",
];

/// At most this many header and query tests in one match.
pub const MAX_MATCH_TESTS: usize = 16;

/// A route's regular expression as the proxy runs it: RE2 syntax (linear
/// time, no backtracking), anchored at both ends, at most 1,024 characters
/// and 1 MiB compiled.
pub fn compile_regex(re: &str) -> Result<regex::Regex, String> {
    if re.len() > 1024 {
        return Err(format!("{} is longer than 1024 characters", shown(re)));
    }
    let fail = |e: regex::Error| {
        let first = e.to_string();
        let last = first.lines().last().unwrap_or_default().trim().to_string();
        format!(
            "{} is not a regular expression (RE2 syntax): {last}",
            shown(re)
        )
    };
    // Alone first: a `)` that closes the anchoring group early (`a)|(?:.*`)
    // does not parse on its own.
    regex::RegexBuilder::new(re)
        .size_limit(1 << 20)
        .build()
        .map_err(fail)?;
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            let first = e.to_string();
            let last = first.lines().last().unwrap_or_default().trim().to_string();
            format!(
                "{} is not a regular expression (RE2 syntax): {last}",
                shown(re)
            )
        })
}

fn header_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// A value as an error shows it: quoted, and cut to 64 characters with its
/// length when longer, so an error never echoes a huge value.
pub fn shown(v: &str) -> String {
    const MAX: usize = 64;
    if v.chars().count() <= MAX {
        format!("{v:?}")
    } else {
        let head: String = v.chars().take(MAX).collect();
        format!("{head:?}… ({} bytes)", v.len())
    }
}

/// Checks a DNS-1123 label: 1–63 characters of `a-z`, `0-9`, `-`, starting
/// and ending with a letter or digit.
pub fn dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!(
            "{} is {} characters, must be at most 63",
            shown(s),
            s.len()
        ));
    }
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok_chars || !ends_ok(s.bytes().next()) || !ends_ok(s.bytes().last()) {
        return Err(format!(
            "{} is not a DNS-1123 label (lower-case letters, digits and '-', starting and ending with a letter or digit)",
            shown(s)
        ));
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err(format!("{} is longer than 253 characters", shown(s)));
    }
    for part in s.split('.') {
        dns_label(part).map_err(|_| {
            format!(
                "{} is not a DNS name (dot-separated DNS-1123 labels)",
                shown(s)
            )
        })?;
    }
    Ok(())
}

fn label_key(k: &str) -> Result<(), String> {
    let ok = !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        && k.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && k.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "label key {} must be letters, digits, '-', '_', '.', '/', starting and ending with a letter or digit",
            shown(k)
        ))
    }
}

fn label_value(v: &str) -> Result<(), String> {
    let ok = v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "label value {} must be at most 63 letters, digits, '-', '_' or '.'",
            shown(v)
        ))
    }
}

fn header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A service reference: `name` or `name.namespace`.
pub fn service_ref(s: &str) -> Result<(), String> {
    let mut parts = s.splitn(2, '.');
    let name = parts.next().unwrap_or_default();
    dns_label(name)?;
    if let Some(ns) = parts.next() {
        dns_label(ns)?;
    }
    Ok(())
}

impl Resource {
    /// Checks every rule; the error lists each broken one.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut c = Checker {
            res: self,
            errors: Vec::new(),
        };
        c.label(&self.metadata.name, "metadata.name");
        c.label(&self.metadata.namespace, "metadata.namespace");
        match &self.spec {
            Spec::Service(s) => {
                let mut seen = BTreeSet::new();
                for (i, p) in s.ports.iter().enumerate() {
                    c.port(p.port, &format!("spec.ports[{i}].port"));
                    c.check(
                        seen.insert(p.port),
                        format!("spec.ports[{i}].port"),
                        format!("port {} is listed twice", p.port),
                    );
                }
            }
            Spec::Endpoint(e) => {
                c.label(&e.service, "spec.service");
                let addr_ok =
                    e.address.parse::<IpAddr>().is_ok() || dns_subdomain(&e.address).is_ok();
                c.check(
                    addr_ok,
                    "spec.address",
                    format!("\"{}\" is neither an IP address nor a DNS name", e.address),
                );
                c.port(e.port, "spec.port");
                c.labels(&e.labels, "spec.labels");
                if !e.cluster.is_empty() {
                    c.label(&e.cluster, "spec.cluster");
                }
                if !e.locality.is_empty() {
                    if let Err(r) = label_value(&e.locality) {
                        c.fail("spec.locality", r);
                    }
                }
            }
            Spec::Route(r) => validate_route(&mut c, r),
            Spec::Policy(p) => {
                c.label(&p.service, "spec.service");
                for (i, f) in p.from.iter().enumerate() {
                    let ok = f == "*"
                        || (f.starts_with("spiffe://")
                            && f.len() > "spiffe://".len()
                            && !f[..f.len() - 1].contains('*')
                            && !f.contains(char::is_whitespace));
                    c.check(
                        ok,
                        format!("spec.from[{i}]"),
                        format!("{} must be \"*\", a SPIFFE ID (spiffe://...), or a SPIFFE ID prefix ending in '*'", shown(f)),
                    );
                }
                for (i, t) in p.to.iter().enumerate() {
                    for (j, m) in t.methods.iter().enumerate() {
                        c.method(m, &format!("spec.to[{i}].methods[{j}]"));
                    }
                    for (j, path) in t.paths.iter().enumerate() {
                        c.path_prefix(path, &format!("spec.to[{i}].paths[{j}]"));
                    }
                }
            }
            Spec::MeshConfig(m) => {
                c.check(
                    self.metadata.name == "mesh",
                    "metadata.name",
                    format!(
                        "is \"{}\", must be \"mesh\" (there is one MeshConfig per cluster)",
                        self.metadata.name
                    ),
                );
                if let Some(td) = &m.trust_domain {
                    if let Err(r) = dns_subdomain(td) {
                        c.fail("spec.trust_domain", r);
                    }
                }
                if let Some(range) = &m.service_vip_range {
                    c.check(
                        crate::parse_vip_range(range).is_some(),
                        "spec.service_vip_range",
                        format!(
                            "{} is not an IPv4 network like 240.240.0.0/16 (prefix 8 to 30, host bits zero)",
                            shown(range)
                        ),
                    );
                }
                if let Some(p) = &m.app_probe {
                    validate_probe(&mut c, p, "spec.app_probe");
                }
                if let Some(a) = &m.access_log {
                    if let Some(p) = a.sample_percent {
                        c.check(
                            p <= 100,
                            "spec.access_log.sample_percent",
                            format!("{p} is more than 100"),
                        );
                    }
                    if let Some(f) = &a.file {
                        // Every proxy appends to it, some as root: a log
                        // file only, never a system file by another name.
                        let name_ok = f.ends_with(".log") || f.ends_with(".jsonl");
                        c.check(
                            f.starts_with('/')
                                && f.len() <= 4096
                                && !f.contains('\0')
                                && !f.split('/').any(|seg| seg == "..")
                                && name_ok,
                            "spec.access_log.file",
                            format!(
                                "{} is not an absolute path to a .log or .jsonl file (no '..')",
                                shown(f)
                            ),
                        );
                    }
                }
                if let Some(t) = &m.tracing {
                    c.check(
                        host_port(&t.collector),
                        "spec.tracing.collector",
                        format!(
                            "{} is not host:port (an OTLP/gRPC collector, e.g. otel-collector.observability:4317)",
                            shown(&t.collector)
                        ),
                    );
                    if let Some(p) = t.sample_percent {
                        c.check(
                            p.0 <= crate::SamplePercent::WHOLE,
                            "spec.tracing.sample_percent",
                            format!("{} is more than 100", p.percent()),
                        );
                    }
                }
                if let Some(ttl) = m.cert_ttl {
                    let ms = ttl.as_millis();
                    c.check(
                        (60_000..=365 * 86_400_000).contains(&ms),
                        "spec.cert_ttl",
                        format!("{ttl} must be between 1m and 365d"),
                    );
                }
            }
            Spec::Token(t) => {
                c.check(
                    t.secret_sha256.len() == 64
                        && t.secret_sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                    "spec.secret_sha256",
                    "must be 64 hex digits (the SHA-256 of the secret)",
                );
                match (&t.service, &t.role) {
                    (Some(s), None) => {
                        c.label(s, "spec.service");
                        if let Some(ns) = &t.namespace {
                            c.label(ns, "spec.namespace");
                        }
                    }
                    (None, Some(_)) => c.check(
                        t.namespace.is_none(),
                        "spec.namespace",
                        "only a service token has a namespace",
                    ),
                    _ => c.fail("spec", "exactly one of service (bootstrap token) or role (admin token) must be set"),
                }
                if let Some(max) = t.max_uses {
                    c.check(
                        max > 0,
                        "spec.max_uses",
                        "must be at least 1 (omit it for unlimited uses)",
                    );
                }
                if let Some(exp) = t.expires_at_ms {
                    c.check(
                        exp > t.created_at_ms,
                        "spec.expires_at_ms",
                        "must be after created_at_ms",
                    );
                }
            }
            Spec::Peer(p) => {
                if !p.pending() {
                    c.check(
                        !p.addresses.is_empty(),
                        "spec.addresses",
                        "must list at least one address",
                    );
                    if let Err(r) = dns_subdomain(&p.trust_domain) {
                        c.fail("spec.trust_domain", r);
                    }
                }
                for (i, a) in p.addresses.iter().enumerate() {
                    c.check(
                        host_port(a),
                        format!("spec.addresses[{i}]"),
                        "must be HOST:PORT",
                    );
                }
            }
            Spec::Export(e) => {
                c.label(&e.service, "spec.service");
                c.check(
                    !e.peers.is_empty(),
                    "spec.peers",
                    "must list at least one peer",
                );
                for (i, p) in e.peers.iter().enumerate() {
                    c.label(p, &format!("spec.peers[{i}]"));
                }
            }
            Spec::Authority(a) => {
                c.check(
                    !a.roots.is_empty(),
                    "spec.roots",
                    "must hold at least one root",
                );
                let signing = a.roots.iter().filter(|r| r.signing).count();
                c.check(
                    signing == 1,
                    "spec.roots",
                    format!("{signing} roots sign; exactly one must"),
                );
                for (i, r) in a.roots.iter().enumerate() {
                    c.check(
                        r.cert_pem.contains("BEGIN CERTIFICATE"),
                        format!("spec.roots[{i}].cert_pem"),
                        "must be a PEM certificate",
                    );
                }
            }
            Spec::Import(i) => {
                c.label(&i.peer, "spec.peer");
                c.label(&i.service, "spec.service");
                for (n, g) in i.gateways.iter().enumerate() {
                    c.check(
                        g.parse::<std::net::SocketAddr>().is_ok(),
                        format!("spec.gateways[{n}]"),
                        "must be IP:PORT",
                    );
                }
                if !i.trust_domain.is_empty() {
                    if let Err(r) = dns_subdomain(&i.trust_domain) {
                        c.fail("spec.trust_domain", r);
                    }
                }
                c.check(
                    i.subsets.len() <= crate::ImportSpec::MAX_SUBSETS,
                    "spec.subsets",
                    format!(
                        "{} label sets, at most {} allowed",
                        i.subsets.len(),
                        crate::ImportSpec::MAX_SUBSETS
                    ),
                );
                let mut seen = BTreeSet::new();
                for (n, s) in i.subsets.iter().enumerate() {
                    let f = format!("spec.subsets[{n}]");
                    c.check(!s.is_empty(), &f, "must not be empty");
                    c.check(seen.insert(s), &f, "is listed twice");
                    c.labels(s, &f);
                }
            }
            Spec::External(e) => validate_external(&mut c, e),
            Spec::Revocation(r) => {
                c.check(
                    r.identity.is_empty() != r.instance.is_empty(),
                    "spec",
                    "give exactly one of identity (a SPIFFE ID) and instance",
                );
                if !r.identity.is_empty() {
                    c.check(
                        crate::identity::parse_spiffe_id(&r.identity).is_some(),
                        "spec.identity",
                        format!(
                            "{} is not a workload SPIFFE ID (spiffe://<trust domain>/ns/<namespace>/sa/<service>)",
                            shown(&r.identity)
                        ),
                    );
                }
                if !r.instance.is_empty() {
                    c.label(&r.instance, "spec.instance");
                }
                c.check(
                    r.reason.len() <= 256,
                    "spec.reason",
                    "must be at most 256 bytes",
                );
            }
        }
        if c.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(c.errors))
        }
    }
}

/// `HOST:PORT` with a port of 1–65535 and a host that is an IP address or
/// a DNS name.
pub fn host_port(s: &str) -> bool {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok_and(|p| p != 0) && dns_subdomain(host).is_ok()
}

/// The rules of an app readiness probe (MeshConfig, and the proxy's
/// flags).
pub fn probe_rules(p: &crate::AppProbe) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(path) = &p.http_path {
        if !path.starts_with('/')
            || path.len() > 1024
            || path.bytes().any(|b| b <= b' ' || b == 0x7f)
        {
            out.push((
                "http_path",
                format!("{} must be a path starting with '/', without spaces or control bytes, at most 1024 bytes", shown(path)),
            ));
        }
    }
    for (f, d) in [("interval", p.interval), ("timeout", p.timeout)] {
        if let Some(d) = d {
            if !(10..=60_000).contains(&d.as_millis()) {
                out.push((f, format!("{d} must be between 10ms and 1m")));
            }
        }
    }
    for (f, n) in [
        ("failure_threshold", p.failure_threshold),
        ("success_threshold", p.success_threshold),
    ] {
        if let Some(n) = n {
            if !(1..=100).contains(&n) {
                out.push((f, format!("{n} must be between 1 and 100")));
            }
        }
    }
    out
}

fn validate_probe(c: &mut Checker<'_>, p: &crate::AppProbe, field: &str) {
    for (f, rule) in probe_rules(p) {
        c.fail(format!("{field}.{f}"), rule);
    }
}

fn validate_external(c: &mut Checker<'_>, e: &crate::ExternalSpec) {
    c.check(
        (1..=32).contains(&e.hosts.len()),
        "spec.hosts",
        format!("{} hosts, must be 1 to 32", e.hosts.len()),
    );
    for (i, h) in e.hosts.iter().enumerate() {
        let name = h.strip_prefix("*.").unwrap_or(h);
        // A single label is only ever a mesh service's name.
        let ok = (dns_subdomain(name).is_ok() && name.contains('.'))
            || (!h.starts_with("*.") && h.parse::<std::net::Ipv4Addr>().is_ok());
        c.check(
            ok,
            format!("spec.hosts[{i}]"),
            format!(
                "{} is not a lower-case DNS name with a dot, *.<such a name>, or an IPv4 address",
                shown(h)
            ),
        );
    }
    c.check(e.ports.len() <= 16, "spec.ports", "at most 16 ports");
    for (i, p) in e.ports.iter().enumerate() {
        c.port(*p, &format!("spec.ports[{i}]"));
    }
    if let Some(t) = &e.tls {
        if let Some(p) = t.port {
            c.port(p, "spec.tls.port");
        }
        if let Some(pem) = &t.ca_pem {
            let certs = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
                .map(|p| {
                    p.ok()
                        .filter(|p| p.label == "CERTIFICATE" && p.parse_x509().is_ok())
                })
                .collect::<Vec<_>>();
            c.check(
                !certs.is_empty() && certs.iter().all(Option::is_some),
                "spec.tls.ca_pem",
                "must be one or more PEM certificates",
            );
        }
    }
}

fn validate_route(c: &mut Checker<'_>, r: &crate::RouteSpec) {
    c.label(&r.service, "spec.service");
    for (i, p) in r.failover.iter().enumerate() {
        c.label(p, &format!("spec.failover[{i}]"));
    }
    for (i, rule) in r.rules.iter().enumerate() {
        for (j, m) in rule.matches.iter().enumerate() {
            let f = format!("spec.rules[{i}].matches[{j}]");
            if let Some(p) = &m.path_prefix {
                c.path_prefix(p, &format!("{f}.path_prefix"));
            }
            if let Some(method) = &m.method {
                c.method(method, &format!("{f}.method"));
            }
            for h in m.headers.keys() {
                c.check(
                    header_name(h),
                    format!("{f}.headers"),
                    format!("{} is not a valid HTTP header name", shown(h)),
                );
            }
            if let Some(p) = &m.path {
                let pf = format!("{f}.path");
                c.check(
                    m.path_prefix.is_none(),
                    pf.clone(),
                    "give path or path_prefix, not both",
                );
                match (&p.exact, &p.prefix, &p.regex) {
                    (Some(x), None, None) => c.path_prefix(x, &format!("{pf}.exact")),
                    (None, Some(x), None) => c.path_prefix(x, &format!("{pf}.prefix")),
                    (None, None, Some(x)) => c.regex(x, &format!("{pf}.regex")),
                    _ => c.fail(pf, "give exactly one of exact, prefix and regex"),
                }
            }
            c.check(
                m.header_matches.len() + m.query_params.len() <= MAX_MATCH_TESTS,
                f.clone(),
                format!("at most {MAX_MATCH_TESTS} header_matches and query_params together"),
            );
            for (k, v) in m.header_matches.iter().enumerate() {
                let vf = format!("{f}.header_matches[{k}]");
                c.check(
                    header_name(&v.name),
                    format!("{vf}.name"),
                    format!("{} is not a valid HTTP header name", shown(&v.name)),
                );
                c.value_match(v, &vf);
            }
            for (k, v) in m.query_params.iter().enumerate() {
                let vf = format!("{f}.query_params[{k}]");
                c.check(
                    !v.name.is_empty() && v.name.len() <= 256,
                    format!("{vf}.name"),
                    "must be 1 to 256 characters",
                );
                c.value_match(v, &vf);
            }
        }
        let every_match_has_prefix = !rule.matches.is_empty()
            && rule.matches.iter().all(|m| {
                m.path_prefix.is_some() || m.path.as_ref().is_some_and(|p| p.prefix.is_some())
            });
        let rf = format!("spec.rules[{i}]");
        if let Some(rw) = &rule.rewrite {
            if let Some(p) = &rw.path_prefix {
                c.path_prefix(p, &format!("{rf}.rewrite.path_prefix"));
                c.check(
                    every_match_has_prefix,
                    format!("{rf}.rewrite.path_prefix"),
                    "every match of the rule must test a path prefix (path_prefix or path.prefix): that is the part replaced",
                );
            }
            if let Some(h) = &rw.host {
                c.authority(h, &format!("{rf}.rewrite.host"));
            }
        }
        for (which, ops) in [
            ("request_headers", &rule.request_headers),
            ("response_headers", &rule.response_headers),
        ] {
            if let Some(ops) = ops {
                c.header_ops(ops, &format!("{rf}.{which}"));
            }
        }
        if let Some(m) = &rule.mirror {
            let mf = format!("{rf}.mirror");
            c.check(
                m.percent <= 100,
                format!("{mf}.percent"),
                format!("{} is more than 100", m.percent),
            );
            match (&m.service, m.subset.is_empty()) {
                (Some(svc), true) => c.label(svc, &format!("{mf}.service")),
                (None, false) => c.labels(&m.subset, &format!("{mf}.subset")),
                _ => c.fail(mf.clone(), "give exactly one of service and subset"),
            }
            if let Some(b) = m.max_body_bytes {
                c.check(
                    (1..=10 * 1024 * 1024).contains(&b),
                    format!("{mf}.max_body_bytes"),
                    format!("{b} must be between 1 and 10 MiB (10485760)"),
                );
            }
            c.check(
                rule.redirect.is_none(),
                mf,
                "a redirect rule sends nothing to mirror",
            );
        }
        if let Some(rd) = &rule.redirect {
            let df = format!("{rf}.redirect");
            c.check(
                rule.backends.is_empty() && rule.rewrite.is_none(),
                df.clone(),
                "a redirect rule answers itself: it takes no backends and no rewrite",
            );
            if let Some(st) = rd.status {
                c.check(
                    matches!(st, 301 | 302 | 303 | 307 | 308),
                    format!("{df}.status"),
                    format!("{st} is not a redirect status (301, 302, 303, 307 or 308)"),
                );
            }
            if let Some(sc) = &rd.scheme {
                c.check(
                    sc == "http" || sc == "https",
                    format!("{df}.scheme"),
                    format!("{} is not http or https", shown(sc)),
                );
            }
            if let Some(h) = &rd.host {
                c.authority(h, &format!("{df}.host"));
                c.check(
                    !h.contains(':'),
                    format!("{df}.host"),
                    "give the port as redirect.port",
                );
            }
            if let Some(p) = rd.port {
                c.port(p, &format!("{df}.port"));
            }
            if let Some(p) = &rd.path {
                c.path_prefix(p, &format!("{df}.path"));
                c.check(
                    rd.path_prefix.is_none(),
                    format!("{df}.path"),
                    "give path or path_prefix, not both",
                );
            }
            if let Some(p) = &rd.path_prefix {
                c.path_prefix(p, &format!("{df}.path_prefix"));
                c.check(
                    every_match_has_prefix,
                    format!("{df}.path_prefix"),
                    "every match of the rule must test a path prefix (path_prefix or path.prefix): that is the part replaced",
                );
            }
        }
        if !rule.backends.is_empty() {
            let sum: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
            c.check(
                sum == 100,
                format!("spec.rules[{i}].backends"),
                format!("weights sum to {sum}, must be 100"),
            );
        }
        for (j, b) in rule.backends.iter().enumerate() {
            let f = format!("spec.rules[{i}].backends[{j}].subset");
            c.check(
                !b.subset.is_empty(),
                f.clone(),
                "subset must not be empty (omit backends to use every endpoint)",
            );
            c.labels(&b.subset, &f);
        }
    }
    if let Some(t) = r.timeout {
        c.check(t.as_millis() > 0, "spec.timeout", "must be more than 0");
    }
    let hashing = r.load_balancer == Some(crate::LoadBalancer::ConsistentHash);
    match &r.hash_on {
        None => c.check(
            !hashing,
            "spec.hash_on",
            "load_balancer consistent-hash needs hash_on (header, cookie or source_identity)",
        ),
        Some(h) => {
            c.check(
                hashing,
                "spec.hash_on",
                "hash_on is the key of load_balancer consistent-hash; set that too",
            );
            let given = usize::from(h.header.is_some())
                + usize::from(h.cookie.is_some())
                + usize::from(h.source_identity);
            c.check(
                given == 1,
                "spec.hash_on",
                "give exactly one of header, cookie and source_identity",
            );
            if let Some(n) = &h.header {
                c.check(
                    header_name(n),
                    "spec.hash_on.header",
                    format!("{} is not a valid HTTP header name", shown(n)),
                );
            }
            if let Some(n) = &h.cookie {
                c.check(
                    header_name(n),
                    "spec.hash_on.cookie",
                    format!("{} is not a valid cookie name", shown(n)),
                );
            }
        }
    }
    if let Some(l) = &r.rate_limit {
        c.check(
            (1..=1_000_000).contains(&l.requests_per_second),
            "spec.rate_limit.requests_per_second",
            format!("{} must be between 1 and 1000000", l.requests_per_second),
        );
        if let Some(b) = l.burst {
            c.check(
                (1..=10_000_000).contains(&b),
                "spec.rate_limit.burst",
                format!("{b} must be between 1 and 10000000"),
            );
        }
    }
    if let Some(f) = &r.fault {
        if let Some(d) = &f.delay {
            c.check(
                d.percent <= 100,
                "spec.fault.delay.percent",
                format!("{} is more than 100", d.percent),
            );
            c.check(
                d.fixed.as_millis() <= 3_600_000,
                "spec.fault.delay.fixed",
                format!("{} is more than 1h", d.fixed),
            );
        }
        if let Some(a) = &f.abort {
            c.check(
                a.percent <= 100,
                "spec.fault.abort.percent",
                format!("{} is more than 100", a.percent),
            );
            match (a.http_status, a.grpc_status) {
                (Some(h), None) => c.check(
                    (200..=599).contains(&h),
                    "spec.fault.abort.http_status",
                    format!("{h} is not an HTTP status from 200 to 599"),
                ),
                (None, Some(g)) => c.check(
                    (1..=16).contains(&g),
                    "spec.fault.abort.grpc_status",
                    format!("{g} is not a gRPC error status (1 to 16)"),
                ),
                _ => c.fail(
                    "spec.fault.abort",
                    "give exactly one of http_status and grpc_status",
                ),
            }
        }
        if let Some(h) = &f.header {
            c.check(
                header_name(&h.name),
                "spec.fault.header.name",
                format!("{} is not a valid HTTP header name", shown(&h.name)),
            );
        }
    }
    if let Some(t) = r.connect_timeout {
        c.check(
            (1..=60_000).contains(&t.as_millis()),
            "spec.connect_timeout",
            format!("{t} must be between 1ms and 1m"),
        );
    }
    if let Some(retries) = &r.retries {
        c.check(
            retries.attempts <= 10,
            "spec.retries.attempts",
            format!("{} is more than 10", retries.attempts),
        );
        if let Some(t) = retries.per_try_timeout {
            c.check(
                t.as_millis() > 0,
                "spec.retries.per_try_timeout",
                "must be more than 0",
            );
        }
        let base = retries.backoff_base.map_or(25, |d| d.as_millis());
        if let Some(d) = retries.backoff_base {
            c.check(
                (1..=10_000).contains(&d.as_millis()),
                "spec.retries.backoff_base",
                format!("{d} must be between 1ms and 10s"),
            );
        }
        if let Some(d) = retries.backoff_max {
            c.check(
                d.as_millis() >= base && d.as_millis() <= 60_000,
                "spec.retries.backoff_max",
                format!("{d} must be at least backoff_base ({base}ms) and at most 1m"),
            );
        }
    }
    if let Some(cb) = &r.circuit_breaker {
        for (v, f) in [
            (
                cb.max_pending_requests,
                "spec.circuit_breaker.max_pending_requests",
            ),
            (cb.max_connections, "spec.circuit_breaker.max_connections"),
        ] {
            if let Some(v) = v {
                c.check(v > 0, f, "must be at least 1");
            }
        }
    }
    if let Some(o) = &r.outlier {
        if let Some(n) = o.consecutive_failures {
            c.check(
                n > 0,
                "spec.outlier.consecutive_failures",
                "must be at least 1",
            );
        }
        if let Some(t) = o.base_ejection {
            c.check(
                t.as_millis() > 0,
                "spec.outlier.base_ejection",
                "must be more than 0",
            );
        }
        if let Some(p) = o.max_ejection_percent {
            c.check(
                (1..=100).contains(&p),
                "spec.outlier.max_ejection_percent",
                format!("{p} must be 1-100"),
            );
        }
    }
}

#[cfg(test)]
mod tests;
