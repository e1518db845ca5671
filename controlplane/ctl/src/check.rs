//! `meshctl check`: what an operator should worry about, one line per
//! check, and a non-zero exit status when one fails.
//!
//! The checks: every member reachable and a leader elected; clock offsets
//! between nodes; the workload CA (a signing root, days to expiry of every
//! root); with `--ca-file`, the server certificate each node presents.

use std::sync::Arc;

use raftmesh_api::v1 as pb;
use raftmesh_api::{Resource, Spec};

use super::{Conn, CtlError, CtlResult, ExitCode};

/// A clock offset above this is a warning...
pub const SKEW_WARN_MS: i64 = 1_000;
/// ...and above this a failure (tokens and certificates use wall clocks;
/// proofs of possession allow 5 minutes).
pub const SKEW_FAIL_MS: i64 = 30_000;
/// Certificates expiring sooner than this many days are a warning...
pub const EXPIRY_WARN_DAYS: i64 = 30;
/// ...and sooner than this a failure.
pub const EXPIRY_FAIL_DAYS: i64 = 7;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Fine.
    Ok,
    /// Look at it soon.
    Warn,
    /// Broken, or about to be.
    Fail,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How it came out.
    pub level: Level,
    /// What was checked.
    pub check: String,
    /// What was found, and what to do.
    pub detail: String,
}

fn finding(level: Level, check: impl Into<String>, detail: impl Into<String>) -> Finding {
    Finding {
        level,
        check: check.into(),
        detail: detail.into(),
    }
}

/// Reachability and clock offsets, from a cluster status.
pub fn cluster_findings(s: &pb::ClusterStatusResponse) -> Vec<Finding> {
    let mut out = Vec::new();
    match s.leader {
        Some(l) => out.push(finding(
            Level::Ok,
            "leader",
            format!("node {l} leads term {}", s.term),
        )),
        None => out.push(finding(
            Level::Fail,
            "leader",
            "no leader: fewer than a majority of voters can reach each other",
        )),
    }
    let mut worst: Option<(u64, i64)> = None;
    for m in &s.members {
        if m.state == "unreachable" {
            out.push(finding(
                Level::Fail,
                format!("node {}", m.id),
                format!(
                    "unreachable at {} (not heard from for {}); check the process and the network",
                    m.addr,
                    m.last_contact_ms
                        .map(|x| format!("{x} ms"))
                        .unwrap_or_else(|| "ever".into())
                ),
            ));
        } else {
            out.push(finding(
                Level::Ok,
                format!("node {}", m.id),
                format!("{} at {}, applied {}", m.state, m.addr, m.applied_index),
            ));
        }
        if let Some(o) = m.clock_offset_ms {
            if worst.is_none_or(|(_, w)| o.abs() > w.abs()) {
                worst = Some((m.id, o));
            }
        }
    }
    match worst {
        Some((id, o)) if o.abs() > SKEW_FAIL_MS => out.push(finding(
            Level::Fail,
            "clock skew",
            format!(
                "node {id}'s clock is {o} ms off node {}'s; fix NTP on the nodes",
                s.node_id
            ),
        )),
        Some((id, o)) if o.abs() > SKEW_WARN_MS => out.push(finding(
            Level::Warn,
            "clock skew",
            format!(
                "node {id}'s clock is {o} ms off node {}'s; check NTP",
                s.node_id
            ),
        )),
        Some((_, o)) => out.push(finding(
            Level::Ok,
            "clock skew",
            format!("largest offset between nodes {} ms", o.abs()),
        )),
        None => out.push(finding(
            Level::Warn,
            "clock skew",
            "no node's clock could be read",
        )),
    }
    out
}

fn days_left(not_after_s: i64, now_s: i64) -> i64 {
    (not_after_s - now_s).div_euclid(86_400)
}

fn expiry_level(days: i64) -> Level {
    if days < EXPIRY_FAIL_DAYS {
        Level::Fail
    } else if days < EXPIRY_WARN_DAYS {
        Level::Warn
    } else {
        Level::Ok
    }
}

/// The workload CA's roots: present, one signing, days to expiry.
pub fn ca_findings(authority: Option<&Resource>, now_s: i64) -> Vec<Finding> {
    let Some(Spec::Authority(a)) = authority.map(|r| &r.spec) else {
        return vec![finding(
            Level::Fail,
            "workload CA",
            "no workload CA yet: the leader creates it when the cluster first forms",
        )];
    };
    let mut out = Vec::new();
    let signing = a.roots.iter().filter(|r| r.signing).count();
    out.push(if signing == 1 {
        finding(
            Level::Ok,
            "trust bundle",
            format!("{} root(s), one signing", a.roots.len()),
        )
    } else {
        finding(
            Level::Fail,
            "trust bundle",
            format!("{signing} signing roots (want exactly one); run `meshctl ca rotate`"),
        )
    });
    for r in &a.roots {
        let days = days_left(
            i64::try_from(r.not_after_ms / 1000).unwrap_or(i64::MAX),
            now_s,
        );
        let lvl = expiry_level(days);
        let what = if r.signing { "signing" } else { "trusted" };
        let hint = if lvl == Level::Ok {
            ""
        } else {
            "; run `meshctl ca rotate`"
        };
        out.push(finding(
            lvl,
            format!("root {}", r.id),
            format!("{what}, expires in {days} days{hint}"),
        ));
    }
    out
}

/// Why a node's server certificate could not be checked.
#[derive(Debug, thiserror::Error)]
enum CertCheckError {
    #[error("--ca-file: {0}")]
    CaFile(String),
    #[error("{0}")]
    Tls(#[from] rustls::Error),
    #[error("{host}: {why}")]
    Name { host: String, why: String },
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    #[error("TLS handshake: {0}")]
    Handshake(#[source] std::io::Error),
    #[error("no certificate presented")]
    NoCertificate,
    #[error("unparsable certificate: {0}")]
    Unparsable(String),
}

/// The server certificate `addr` presents, checked against `ca_pem`: days
/// to its expiry.
async fn server_cert_days(addr: &str, ca_pem: &str, now_s: i64) -> Result<i64, CertCheckError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| CertCheckError::CaFile(e.to_string()))?)
            .map_err(|e| CertCheckError::CaFile(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(addr);
    let name = ServerName::try_from(host.to_string()).map_err(|e| CertCheckError::Name {
        host: host.to_string(),
        why: e.to_string(),
    })?;
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| CertCheckError::ConnectTimeout)?
    .map_err(CertCheckError::Connect)?;
    let tls = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .map_err(|_| CertCheckError::HandshakeTimeout)?
    .map_err(CertCheckError::Handshake)?;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(CertCheckError::NoCertificate)?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| CertCheckError::Unparsable(e.to_string()))?;
    Ok(days_left(cert.validity().not_after.timestamp(), now_s))
}

/// Runs every check, prints one line each, fails when one fails.
pub async fn run(conn: &Conn, ca_pem: Option<&str>) -> CtlResult {
    let now_s = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut all = Vec::new();
    let status = conn
        .call(true, |mut c| async move {
            c.cluster_status(pb::ClusterStatusRequest {})
                .await
                .map(|r| r.into_inner())
        })
        .await;
    let members: Vec<(u64, String)> = match &status {
        Ok(s) => {
            all.extend(cluster_findings(s));
            s.members.iter().map(|m| (m.id, m.addr.clone())).collect()
        }
        Err(e) => {
            all.push(finding(
                Level::Fail,
                "reachability",
                format!(
                    "no node of {} answered: {}",
                    conn.servers().join(","),
                    e.message()
                ),
            ));
            Vec::new()
        }
    };
    if status.is_ok() {
        let authority = conn
            .call(true, |mut c| async move {
                c.get(pb::GetRequest {
                    kind: "Authority".into(),
                    namespace: String::new(),
                    name: raftmesh_api::identity::CA_NAME.into(),
                    stale: false,
                })
                .await
                .map(|r| r.into_inner())
            })
            .await;
        match authority {
            Ok(r) => {
                let res = r.resource.and_then(|r| Resource::try_from(r).ok());
                all.extend(ca_findings(res.as_ref(), now_s));
            }
            Err(e) if e.code() == tonic::Code::NotFound => all.extend(ca_findings(None, now_s)),
            Err(e) => all.push(finding(Level::Fail, "workload CA", e.message().to_string())),
        }
    }
    match ca_pem {
        Some(pem) => {
            for (id, addr) in &members {
                let check = format!("node {id} server certificate");
                match server_cert_days(addr, pem, now_s).await {
                    Ok(days) => {
                        let lvl = expiry_level(days);
                        let hint = if lvl == Level::Ok {
                            ""
                        } else {
                            "; make new node certificates with `meshd tls init`"
                        };
                        all.push(finding(lvl, check, format!("expires in {days} days{hint}")));
                    }
                    Err(e) => all.push(finding(Level::Fail, check, e.to_string())),
                }
            }
        }
        None => all.push(finding(
            Level::Warn,
            "server TLS",
            "not checked: no --ca-file (plaintext to meshd is for loopback development only)",
        )),
    }
    for f in &all {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        outln!("{tag}  {:<28} {}", f.check, f.detail);
    }
    let fails = all.iter().filter(|f| f.level == Level::Fail).count();
    if fails > 0 {
        return Err(CtlError::new(
            ExitCode::Failed,
            format!("{fails} check(s) failed"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, state: &str, offset: Option<i64>) -> pb::Member {
        pb::Member {
            id,
            addr: format!("10.0.0.{id}:7100"),
            voter: true,
            last_contact_ms: Some(10),
            rss_bytes: 1,
            state: state.into(),
            applied_index: 5,
            clock_offset_ms: offset,
        }
    }

    fn status(members: Vec<pb::Member>, leader: Option<u64>) -> pb::ClusterStatusResponse {
        pb::ClusterStatusResponse {
            node_id: 1,
            cluster_name: "east".into(),
            leader,
            term: 2,
            commit_index: 5,
            applied_index: 5,
            members,
        }
    }

    fn levels(f: &[Finding], check: &str) -> Vec<Level> {
        f.iter()
            .filter(|x| x.check == check)
            .map(|x| x.level)
            .collect()
    }

    #[test]
    fn a_healthy_cluster_passes_and_each_problem_is_named() {
        let ok = cluster_findings(&status(
            vec![
                member(1, "leader", Some(0)),
                member(2, "follower", Some(-40)),
                member(3, "follower", Some(120)),
            ],
            Some(1),
        ));
        assert!(ok.iter().all(|f| f.level == Level::Ok), "{ok:?}");

        let bad = cluster_findings(&status(
            vec![
                member(1, "leader", Some(0)),
                member(2, "unreachable", None),
                member(3, "follower", Some(-45_000)),
            ],
            None,
        ));
        assert_eq!(levels(&bad, "leader"), vec![Level::Fail]);
        assert_eq!(levels(&bad, "node 2"), vec![Level::Fail]);
        assert_eq!(levels(&bad, "clock skew"), vec![Level::Fail]);
        assert!(bad
            .iter()
            .any(|f| f.detail.contains("node 3's clock is -45000 ms")));

        let warn = cluster_findings(&status(
            vec![
                member(1, "leader", Some(0)),
                member(2, "follower", Some(2_500)),
            ],
            Some(1),
        ));
        assert_eq!(levels(&warn, "clock skew"), vec![Level::Warn]);
    }

    #[test]
    fn ca_roots_are_checked_for_a_signer_and_expiry() {
        let now_ms = 1_800_000_000_000;
        let root = raftmesh_controlplane::ca::new_root("east.mesh", now_ms).unwrap();
        let mk = |roots| Resource {
            metadata: raftmesh_api::Metadata::named("workload-ca"),
            spec: Spec::Authority(raftmesh_api::AuthoritySpec { roots }),
        };
        let now_s = (now_ms / 1000) as i64;
        let f = ca_findings(Some(&mk(vec![root.clone()])), now_s);
        assert!(f.iter().all(|x| x.level == Level::Ok), "{f:?}");
        // Ten years on, the root has a few days left at most.
        let later = now_s + 10 * 365 * 86_400 - 2 * 86_400;
        let f = ca_findings(Some(&mk(vec![root.clone()])), later);
        assert_eq!(levels(&f, &format!("root {}", root.id)), vec![Level::Fail]);
        let mut unsigned = root.clone();
        unsigned.signing = false;
        let f = ca_findings(Some(&mk(vec![unsigned])), now_s);
        assert_eq!(levels(&f, "trust bundle"), vec![Level::Fail]);
        assert_eq!(
            levels(&ca_findings(None, now_s), "workload CA"),
            vec![Level::Fail]
        );
    }
}
