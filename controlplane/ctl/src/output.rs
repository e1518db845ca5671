//! Output of meshctl: tables, YAML, JSON.

use std::fmt::Write as _;

use raftmesh_api::{Health, Resource, Spec};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// YAML documents.
    Yaml,
    /// JSON.
    Json,
}

/// Renders rows as aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.len());
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(&mut out, header.to_vec());
    for r in rows {
        line(&mut out, r.iter().map(String::as_str).collect());
    }
    out
}

fn rev(r: &Resource) -> String {
    r.metadata
        .revision
        .map(|x| x.to_string())
        .unwrap_or_default()
}

fn labels(l: &std::collections::BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A time in milliseconds since the epoch as RFC 3339 (UTC).
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// A kubectl-style table of resources of one kind (or mixed kinds).
pub fn resource_table(items: &[Resource]) -> String {
    let kind = items.first().map(Resource::kind);
    let same_kind = items.iter().all(|r| Some(r.kind()) == kind);
    if !same_kind || items.is_empty() {
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|r| {
                vec![
                    r.kind().to_string(),
                    r.metadata.namespace.clone(),
                    r.metadata.name.clone(),
                    rev(r),
                ]
            })
            .collect();
        return table(&["KIND", "NAMESPACE", "NAME", "REVISION"], &rows);
    }
    let (header, rows): (Vec<&str>, Vec<Vec<String>>) = match &items[0].spec {
        Spec::Service(_) => (
            vec!["NAMESPACE", "NAME", "VIP", "PORTS", "REVISION"],
            items
                .iter()
                .map(|r| {
                    let Spec::Service(s) = &r.spec else {
                        return vec![];
                    };
                    let ports = s
                        .ports
                        .iter()
                        .map(|p| {
                            format!(
                                "{}/{}",
                                p.port,
                                serde_json::to_value(p.protocol)
                                    .ok()
                                    .and_then(|v| v.as_str().map(String::from))
                                    .unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(",");
                    vec![
                        r.metadata.namespace.clone(),
                        r.metadata.name.clone(),
                        s.vip.map_or_else(|| "-".to_string(), |v| v.to_string()),
                        ports,
                        rev(r),
                    ]
                })
                .collect(),
        ),
        Spec::Endpoint(_) => (
            vec![
                "NAMESPACE",
                "NAME",
                "SERVICE",
                "ADDRESS",
                "HEALTH",
                "LABELS",
                "REVISION",
            ],
            items
                .iter()
                .map(|r| {
                    let Spec::Endpoint(e) = &r.spec else {
                        return vec![];
                    };
                    vec![
                        r.metadata.namespace.clone(),
                        r.metadata.name.clone(),
                        e.service.clone(),
                        format!("{}:{}", e.address, e.port),
                        match e.health {
                            Health::Healthy => "healthy".into(),
                            Health::Unhealthy => "unhealthy".into(),
                        },
                        labels(&e.labels),
                        rev(r),
                    ]
                })
                .collect(),
        ),
        Spec::Route(_) => (
            vec!["NAMESPACE", "NAME", "SERVICE", "RULES", "REVISION"],
            items
                .iter()
                .map(|r| {
                    let Spec::Route(x) = &r.spec else {
                        return vec![];
                    };
                    vec![
                        r.metadata.namespace.clone(),
                        r.metadata.name.clone(),
                        x.service.clone(),
                        x.rules.len().to_string(),
                        rev(r),
                    ]
                })
                .collect(),
        ),
        Spec::Policy(_) => (
            vec!["NAMESPACE", "NAME", "SERVICE", "ACTION", "FROM", "REVISION"],
            items
                .iter()
                .map(|r| {
                    let Spec::Policy(p) = &r.spec else {
                        return vec![];
                    };
                    vec![
                        r.metadata.namespace.clone(),
                        r.metadata.name.clone(),
                        p.service.clone(),
                        format!("{:?}", p.action).to_lowercase(),
                        if p.from.is_empty() {
                            "*".into()
                        } else {
                            p.from.join(",")
                        },
                        rev(r),
                    ]
                })
                .collect(),
        ),
        Spec::Token(_) => (
            vec!["ID", "SCOPE", "CREATED", "EXPIRES", "USES", "REVOKED"],
            items
                .iter()
                .map(|r| {
                    let Spec::Token(t) = &r.spec else {
                        return vec![];
                    };
                    let scope = match (&t.service, &t.role) {
                        (Some(s), _) => format!(
                            "service {}/{s}",
                            t.namespace.as_deref().unwrap_or("default")
                        ),
                        (None, Some(role)) => format!(
                            "role {}",
                            serde_json::to_value(role)
                                .ok()
                                .and_then(|v| v.as_str().map(String::from))
                                .unwrap_or_default()
                        ),
                        _ => "-".into(),
                    };
                    vec![
                        r.metadata.name.clone(),
                        scope,
                        rfc3339(t.created_at_ms),
                        t.expires_at_ms
                            .map(rfc3339)
                            .unwrap_or_else(|| "never".into()),
                        match t.max_uses {
                            Some(m) => format!("{}/{m}", t.uses),
                            None => t.uses.to_string(),
                        },
                        t.revoked.to_string(),
                    ]
                })
                .collect(),
        ),
        _ => (
            vec!["NAMESPACE", "NAME", "REVISION"],
            items
                .iter()
                .map(|r| {
                    vec![
                        r.metadata.namespace.clone(),
                        r.metadata.name.clone(),
                        rev(r),
                    ]
                })
                .collect(),
        ),
    };
    table(&header, &rows)
}

/// Bytes in a human unit.
pub fn bytes(n: u64) -> String {
    if n == 0 {
        return "-".into();
    }
    let mib = n as f64 / (1024.0 * 1024.0);
    format!("{mib:.1} MiB")
}

/// Writes to stdout; a closed pipe ends the process quietly (exit 0), as
/// other command-line tools do.
pub fn emit(s: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("meshctl: cannot write output: {e}");
        std::process::exit(1);
    }
}
