//! `meshctl proxies`, `meshctl proxy-config`, and `apply --wait`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use raftmesh_api::v1 as pb;
use raftmesh_api::{yaml, Resource, Spec};
use serde_json::json;

use super::output::{resource_table, rfc3339, table, Format};
use super::{Conn, CtlError, CtlResult, ExitCode};

async fn list_all(conn: &Conn) -> Result<pb::ListProxiesResponse, CtlError> {
    Ok(conn
        .call(true, |mut c| async move {
            c.list_proxies(pb::ListProxiesRequest {})
                .await
                .map(|r| r.into_inner())
        })
        .await?)
}

async fn list(conn: &Conn) -> Result<Vec<pb::ProxyStatus>, CtlError> {
    Ok(list_all(conn).await?.proxies)
}

fn proxy_json(p: &pb::ProxyStatus) -> serde_json::Value {
    json!({
        "instance": p.instance,
        "service": p.service,
        "namespace": p.namespace,
        "node": p.node_id,
        "acked_revision": p.acked_revision,
        "sent_revision": p.sent_revision,
        "connected_since": rfc3339(p.connected_since_ms),
        "disconnected_since": (p.disconnected_since_ms != 0).then(|| rfc3339(p.disconnected_since_ms)),
        "subscriptions": p.subscriptions,
    })
}

/// Lists every connected proxy in the cluster.
pub async fn proxies(conn: &Conn, output: Format) -> CtlResult {
    let ps = list(conn).await?;
    match output {
        Format::Table => {
            if ps.is_empty() {
                eprintln!("no proxy is connected");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = ps
                .iter()
                .map(|p| {
                    vec![
                        p.instance.clone(),
                        p.service.clone(),
                        p.namespace.clone(),
                        p.node_id.to_string(),
                        p.acked_revision.to_string(),
                        p.sent_revision.to_string(),
                        if p.disconnected_since_ms == 0 {
                            rfc3339(p.connected_since_ms)
                        } else {
                            format!("gone since {}", rfc3339(p.disconnected_since_ms))
                        },
                        p.subscriptions.join(","),
                    ]
                })
                .collect();
            out!(
                "{}",
                table(
                    &[
                        "INSTANCE",
                        "SERVICE",
                        "NAMESPACE",
                        "NODE",
                        "ACKED",
                        "SENT",
                        "CONNECTED",
                        "SUBSCRIPTIONS"
                    ],
                    &rows
                )
            );
        }
        Format::Json | Format::Yaml => {
            let v: Vec<_> = ps.iter().map(proxy_json).collect();
            let text = if output == Format::Json {
                serde_json::to_string_pretty(&v)
                    .map(|s| s + "\n")
                    .map_err(|e| e.to_string())
            } else {
                serde_yaml_ng::to_string(&v).map_err(|e| e.to_string())
            };
            out!("{}", text.map_err(|e| CtlError::new(ExitCode::Failed, e))?);
        }
    }
    Ok(())
}

/// Shows what one proxy holds.
pub async fn proxy_config(conn: &Conn, instance: String, output: Format) -> CtlResult {
    let r = conn
        .call(true, |mut c| {
            let instance = instance.clone();
            async move {
                c.proxy_config(pb::ProxyConfigRequest { instance })
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await?;
    let status = r
        .status
        .ok_or_else(|| CtlError::new(ExitCode::Failed, "the server sent no status"))?;
    let resources: Vec<Resource> = r
        .resources
        .into_iter()
        .filter_map(|x| Resource::try_from(x).ok())
        .collect();
    let pending: Vec<&Resource> = resources
        .iter()
        .filter(|r| r.metadata.revision.unwrap_or(0) > status.acked_revision)
        .collect();
    match output {
        Format::Json => {
            let v = json!({"proxy": proxy_json(&status), "resources": resources});
            out!(
                "{}\n",
                serde_json::to_string_pretty(&v)
                    .map_err(|e| CtlError::new(ExitCode::Failed, e.to_string()))?
            );
        }
        Format::Yaml | Format::Table => {
            eprintln!(
                "proxy {} ({}.{}) on node {}: sent revision {}, acked revision {}{}",
                status.instance,
                status.service,
                status.namespace,
                status.node_id,
                status.sent_revision,
                status.acked_revision,
                if pending.is_empty() {
                    String::new()
                } else {
                    format!("; {} resource(s) newer than its ack", pending.len())
                }
            );
            if output == Format::Table {
                out!("{}", resource_table(&resources));
            } else {
                out!(
                    "{}",
                    yaml::to_yaml(&resources)
                        .map_err(|e| CtlError::new(ExitCode::Failed, e.to_string()))?
                );
            }
        }
    }
    Ok(())
}

/// Which proxies a change concerns.
#[derive(Debug, Default)]
pub struct Affected {
    /// Proxies that call these services (`name.namespace`).
    callers: BTreeSet<String>,
    /// Proxies of these services (`name.namespace`).
    members: BTreeSet<String>,
    /// Every proxy.
    everyone: bool,
}

impl Affected {
    /// The proxies the documents concern.
    pub fn of(docs: &[Resource]) -> Self {
        let mut a = Affected::default();
        for r in docs {
            let ns = &r.metadata.namespace;
            match &r.spec {
                Spec::Service(_) => {
                    a.callers.insert(format!("{}.{ns}", r.metadata.name));
                }
                Spec::Endpoint(_) | Spec::Route(_) => {
                    if let Some(s) = r.spec.service() {
                        a.callers.insert(format!("{s}.{ns}"));
                    }
                }
                Spec::Policy(p) => {
                    a.members.insert(format!("{}.{ns}", p.service));
                }
                Spec::MeshConfig(_) => a.everyone = true,
                _ => {}
            }
        }
        a
    }

    fn concerns(&self, p: &pb::ProxyStatus) -> bool {
        self.everyone
            || p.subscriptions.iter().any(|s| self.callers.contains(s))
            || self
                .members
                .contains(&format!("{}.{}", p.service, p.namespace))
    }
}

/// Waits until every proxy the change concerns has acknowledged `revision`,
/// printing progress on stderr.
pub async fn wait(conn: &Conn, affected: &Affected, revision: u64, timeout: Duration) -> CtlResult {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let all = list_all(conn).await?;
        // A proxy gone from its node (until it reconnects or its lease
        // ends) counts too: it has not acknowledged the change.
        let relevant: Vec<&pb::ProxyStatus> = all
            .proxies
            .iter()
            .filter(|p| affected.concerns(p))
            .collect();
        let done = relevant
            .iter()
            .filter(|p| p.acked_revision >= revision)
            .count();
        let mut line = format!("{done}/{} proxies at revision {revision}", relevant.len());
        // A node that did not report may hold proxies not counted above.
        if !all.unreported_nodes.is_empty() {
            line += &format!(
                "; nodes {:?} did not report their proxies",
                all.unreported_nodes
            );
        }
        if line != last {
            eprintln!("{line}");
            last = line.clone();
        }
        if done == relevant.len() && all.unreported_nodes.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let behind: Vec<String> = relevant
                .iter()
                .filter(|p| p.acked_revision < revision)
                .take(10)
                .map(|p| {
                    let gone = if p.disconnected_since_ms != 0 {
                        "disconnected, "
                    } else {
                        ""
                    };
                    format!("{} ({gone}acked {})", p.instance, p.acked_revision)
                })
                .collect();
            return Err(CtlError::new(
                ExitCode::Failed,
                format!(
                    "timed out after {}: {line}; behind: {}",
                    humantime::format_duration(timeout),
                    behind.join(", ")
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
