//! The exporter's side of the link: what this cluster exports to a peer
//! (its view), and the `Watch` stream that sends it — first what changed
//! after the importer's revision (everything only when this node's change
//! window no longer reaches back that far), then every change as it is
//! applied, and a heartbeat every few seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use raftmesh_api::v1 as pb;
use raftmesh_api::{Health, Kind, Spec};
use raftmesh_storage::StateReader;
use tokio::sync::mpsc;
use tonic::Status;

use super::{peer, Federation};

/// A service, by namespace and name.
pub type Key = (String, String);

/// How often a quiet link hears from the exporter.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// What this cluster exports to `peer` now, at the revision returned.
pub fn view(reader: &StateReader, peer: &str) -> (u64, BTreeMap<Key, pb::ExportedService>) {
    reader.view(|v| {
        let mut gateways: Vec<String> = v
            .of_kind(Kind::Endpoint)
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::Endpoint(e) if e.gateway && e.health == Health::Healthy => {
                    let ip: std::net::IpAddr = e.address.parse().ok()?;
                    let port = u16::try_from(e.port).ok()?;
                    Some(std::net::SocketAddr::new(ip, port).to_string())
                }
                _ => None,
            })
            .collect();
        gateways.sort();
        gateways.dedup();
        let mut out = BTreeMap::new();
        for r in v.of_kind(Kind::Export) {
            let Spec::Export(e) = &r.spec else { continue };
            if !e.peers.iter().any(|p| p == peer) {
                continue;
            }
            let ns = r.metadata.namespace.clone();
            let protocol = v
                .get(&raftmesh_api::ResourceKey::new(
                    Kind::Service,
                    ns.clone(),
                    e.service.clone(),
                ))
                .and_then(|s| match &s.spec {
                    Spec::Service(s) => s.ports.first().map(|p| p.protocol),
                    _ => None,
                })
                .unwrap_or_default();
            out.insert(
                (ns.clone(), e.service.clone()),
                pb::ExportedService {
                    namespace: ns,
                    name: e.service.clone(),
                    protocol: pb::Protocol::from(protocol) as i32,
                    gateways: gateways.clone(),
                },
            );
        }
        (v.revision(), out)
    })
}

/// The services whose export may have changed after revision `from`, or
/// `None` when everything must be sent (the window does not reach back,
/// or a change touches every export: a gateway, the CA, the MeshConfig).
pub fn changed_since(reader: &StateReader, from: u64) -> Option<BTreeSet<Key>> {
    if from == 0 || from > reader.applied_revision() {
        return None;
    }
    let (_, events) = reader.changes_since(from).ok()?;
    let mut out = BTreeSet::new();
    for ev in events {
        let ns = ev.key.namespace.clone();
        for r in ev.value.iter().chain(ev.previous.iter()) {
            match &r.spec {
                Spec::Export(e) => {
                    out.insert((ns.clone(), e.service.clone()));
                }
                Spec::Service(_) => {
                    out.insert((ns.clone(), ev.key.name.clone()));
                }
                Spec::Endpoint(e) if e.gateway => return None,
                Spec::Authority(_) | Spec::MeshConfig(_) => return None,
                _ => {}
            }
        }
    }
    Some(out)
}

fn batch(
    fed: &Federation,
    revision: u64,
    full: bool,
    upserts: Vec<pb::ExportedService>,
    view: &BTreeMap<Key, pb::ExportedService>,
) -> pb::ExportBatch {
    pb::ExportBatch {
        revision,
        upserts,
        exported: view
            .keys()
            .map(|(ns, name)| pb::ExportKey {
                namespace: ns.clone(),
                name: name.clone(),
            })
            .collect(),
        full,
        trust_domain: fed.trust_domain(),
        trust_bundle_pem: fed.trust_bundle(),
    }
}

/// The `Watch` stream for peer `name`, resuming after `from`.
pub fn watch(fed: Arc<Federation>, name: String, from: u64) -> super::BatchStream {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        if let Err(e) = serve(&fed, &name, from, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

type Tx = mpsc::Sender<Result<pb::ExportBatch, Status>>;

async fn serve(fed: &Federation, name: &str, from: u64, tx: &Tx) -> Result<(), Status> {
    let reader = fed.reader().clone();
    let mut applied = reader.watch_applied();
    let (rev, mut sent) = view(&reader, name);
    let (full, upserts) = match changed_since(&reader, from) {
        None => (true, sent.values().cloned().collect()),
        Some(keys) => (
            false,
            sent.iter()
                .filter(|(k, _)| keys.contains(*k))
                .map(|(_, v)| v.clone())
                .collect(),
        ),
    };
    tracing::info!(peer = %name, from, revision = rev, full, services = sent.len(), "peer link: watching exports");
    let first = batch(fed, rev, full, upserts, &sent);
    let mut bundle = first.trust_bundle_pem.clone();
    if tx.send(Ok(first)).await.is_err() {
        return Ok(());
    }
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.tick().await;
    let mut shutdown = fed.shutdown.clone();
    loop {
        let heartbeat = tokio::select! {
            r = applied.changed() => {
                if r.is_err() {
                    return Err(Status::unavailable("this node is shutting down"));
                }
                // Let a burst of writes land in one batch.
                tokio::time::sleep(Duration::from_millis(50)).await;
                false
            }
            _ = beat.tick() => true,
            _ = tx.closed() => return Ok(()),
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                return Err(Status::unavailable("this node is shutting down"));
            }
        };
        if peer(&reader, name).is_none_or(|(_, p)| p.pending()) {
            return Err(Status::permission_denied(
                "the peering was deleted on this side",
            ));
        }
        let (rev, now) = view(&reader, name);
        let upserts: Vec<_> = now
            .iter()
            .filter(|(k, v)| sent.get(*k) != Some(*v))
            .map(|(_, v)| v.clone())
            .collect();
        let b = batch(fed, rev, false, upserts, &now);
        let changed = !b.upserts.is_empty()
            || sent.len() != now.len()
            || !sent.keys().eq(now.keys())
            || b.trust_bundle_pem != bundle;
        if changed || heartbeat {
            bundle = b.trust_bundle_pem.clone();
            sent = now;
            if tx.send(Ok(b)).await.is_err() {
                return Ok(());
            }
        }
    }
}
