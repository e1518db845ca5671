//! The east-west gateway of federation (`--mode gateway`): peers' proxies
//! open mutual TLS to it with the SNI `<service>.<namespace>.svc.<this
//! trust domain>` (or, for one label set of the service's endpoints, a
//! subset, `s<id>.` before it: [`crate::tls::subset_id`]); the gateway
//! reads the ClientHello (rustls parses it;
//! nothing is terminated), checks that the service is exported, and
//! splices the connection, ClientHello included, to one of the service's
//! endpoints. The callee's proxy terminates the TLS, so it sees the
//! caller's own certificate and decides with it (deny by default across
//! trust domains, and only callers of peers the service is exported to:
//! `authz.rs`). The gateway cannot see who calls — in TLS 1.3 the client
//! certificate travels encrypted — so it refuses what no peer may reach,
//! and the callee refuses the rest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raftmesh_api::Spec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::compiled::{Backend, ServiceId};
use crate::state::Config;
use crate::tls::Workload;

/// Largest ClientHello read before the connection is refused.
const MAX_HELLO: usize = 16 * 1024;
/// How long a caller may take to send its ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves peers on `l` until `shutdown`.
pub async fn serve(
    l: TcpListener,
    config: Arc<Config>,
    workload: Option<Arc<Workload>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let warm = tokio::spawn(warm(config.clone()));
    let _stop_warming = AbortOnDrop(warm);
    loop {
        let (s, from) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            _ = crate::health::closing(&config.life) => {
                tracing::info!("draining: the gateway listener is closed");
                return;
            }
        };
        let (config, workload) = (config.clone(), workload.clone());
        let open = crate::server::OpenCount::new(config.inbound_open.clone());
        tokio::spawn(async move {
            let _open = open;
            if let Err(why) = relay(s, &config, workload.as_deref()).await {
                tracing::info!(%from, %why, "gateway refused a connection");
                config.metrics.error("gateway-refused");
            }
        });
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Subscribes to every exported service as soon as it is exported, so the
/// first peer's connection does not wait for its endpoints, and keeps the
/// subscriptions in use.
async fn warm(config: Arc<Config>) {
    let mut changed = config.watch();
    loop {
        let current = config.current();
        for r in current.resources.values() {
            if let Spec::Export(e) = &r.spec {
                let id = (r.metadata.namespace.clone(), e.service.clone());
                if current.service(&id).is_none() {
                    config.want(&id);
                }
                config
                    .stats
                    .service(&id)
                    .used
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}

/// The SNI of the ClientHello at the start of `s`, and every byte read.
async fn client_hello(s: &mut TcpStream) -> Result<(Option<String>, Vec<u8>), String> {
    let mut seen = Vec::new();
    let mut acceptor = rustls::server::Acceptor::default();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before its ClientHello".into());
        }
        seen.extend_from_slice(&chunk[..n]);
        if seen.len() > MAX_HELLO {
            return Err("ClientHello too large".into());
        }
        let mut rd = &chunk[..n];
        while !rd.is_empty() {
            acceptor.read_tls(&mut rd).map_err(|e| e.to_string())?;
        }
        match acceptor.accept() {
            Ok(Some(a)) => {
                return Ok((a.client_hello().server_name().map(str::to_string), seen));
            }
            Ok(None) => {}
            Err((e, _)) => return Err(format!("not a TLS ClientHello: {e}")),
        }
    }
}

/// The service an SNI names in trust domain `td` (`svc.ns.svc.<td>`), and
/// the subset label ([`crate::tls::subset_id`]) if it names one of its
/// label sets (`s<id>.svc.ns.svc.<td>`).
pub fn service_of_sni(sni: &str, td: &str) -> Option<(ServiceId, Option<String>)> {
    let (subset, base) = crate::tls::split_subset(sni, td);
    let rest = base.strip_suffix(td)?.strip_suffix(".svc.")?;
    let (svc, ns) = rest.split_once('.')?;
    let ok = |l: &str| raftmesh_api::validate::dns_label(l).is_ok();
    (ok(svc) && ok(ns)).then(|| {
        (
            (ns.to_string(), svc.to_string()),
            subset.map(str::to_string),
        )
    })
}

/// Whether an Export offers `id` to any peer.
fn exported(config: &Config, id: &ServiceId) -> bool {
    config.current().resources.values().any(|r| {
        matches!(&r.spec, Spec::Export(e) if r.metadata.namespace == id.0 && e.service == id.1 && !e.peers.is_empty())
    })
}

async fn relay(
    mut s: TcpStream,
    config: &Config,
    workload: Option<&Workload>,
) -> Result<(), String> {
    let _ = s.set_nodelay(true);
    let (sni, hello) = tokio::time::timeout(HELLO_TIMEOUT, client_hello(&mut s))
        .await
        .map_err(|_| "no ClientHello in time".to_string())??;
    let sni = sni.ok_or("no SNI")?;
    let td = workload
        .and_then(|w| w.tls())
        .and_then(|t| {
            raftmesh_api::identity::parse_spiffe_id(&t.spiffe).map(|w| w.trust_domain.to_string())
        })
        .ok_or("the gateway has no certificate yet (its trust domain is unknown)")?;
    let (id, subset) =
        service_of_sni(&sni, &td).ok_or_else(|| format!("SNI {sni:?} is no service of {td}"))?;
    if !exported(config, &id) {
        return Err(format!("{}.{} is not exported", id.1, id.0));
    }
    let table = config
        .lookup(&id, Duration::from_secs(1))
        .await
        .ok_or_else(|| format!("{}.{} has no endpoints here", id.1, id.0))?;
    let all = Backend {
        label: String::new(),
        subset: BTreeMap::new(),
        weight: 100,
        endpoints: (0..table.endpoints.len())
            .filter(|i| {
                let e = &table.endpoints[*i];
                e.tier == 0
                    && e.dial.is_none()
                    && subset
                        .as_ref()
                        .is_none_or(|s| *s == crate::tls::subset_id(&e.labels))
            })
            .collect(),
        ring: None,
    };
    if all.endpoints.is_empty() {
        return Err(match subset {
            Some(s) => format!("no endpoint of {}.{} has the label set {s}", id.1, id.0),
            None => format!("{}.{} has no endpoints here", id.1, id.0),
        });
    }
    let stats = config.stats.service(&id);
    stats.used.store(true, std::sync::atomic::Ordering::Relaxed);
    let rr = &stats.rr;
    let mut tried = Vec::new();
    for _ in 0..3 {
        let Some(i) = crate::balance::pick_avoiding(&table, &all, rr, &tried, None) else {
            break;
        };
        tried.push(i);
        let ep = &table.endpoints[i];
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(ep.addr)).await {
            Ok(Ok(mut up)) => {
                let _ = up.set_nodelay(true);
                up.write_all(&hello).await.map_err(|e| e.to_string())?;
                let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                return Ok(());
            }
            _ => {
                tracing::debug!(endpoint = %ep.addr, "gateway: endpoint unreachable; trying another")
            }
        }
    }
    Err(format!("no endpoint of {}.{} could be reached", id.1, id.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sni_names_a_service_of_this_trust_domain_only() {
        assert_eq!(
            service_of_sni("api.default.svc.west.mesh", "west.mesh"),
            Some((("default".into(), "api".into()), None))
        );
        assert_eq!(
            service_of_sni("s0123456789abcdef.api.default.svc.west.mesh", "west.mesh"),
            Some((
                ("default".into(), "api".into()),
                Some("s0123456789abcdef".into())
            ))
        );
        assert_eq!(
            service_of_sni("s0123456789abcdef.api.default.svc.east.mesh", "west.mesh"),
            None
        );
        assert_eq!(
            service_of_sni("api.default.svc.east.mesh", "west.mesh"),
            None
        );
        assert_eq!(service_of_sni("api.svc.west.mesh", "west.mesh"), None);
        assert_eq!(service_of_sni("a.b.c.svc.west.mesh", "west.mesh"), None);
        assert_eq!(
            service_of_sni("API.default.svc.west.mesh", "west.mesh"),
            None
        );
        assert_eq!(service_of_sni("evilwest.mesh", "west.mesh"), None);
    }
}
