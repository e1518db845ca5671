//! The exporter's side of the link: what this cluster exports to a peer
//! (its view), and the `Watch` stream that sends it — first what changed
//! after the importer's revision (everything only when this node's change
//! window no longer reaches back that far), then every change as it is
//! applied, and a heartbeat every few seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use raftmesh_api::v1 as pb;
use raftmesh_api::{Health, ImportSpec, Kind, Spec};
use raftmesh_storage::StateReader;
use tokio::sync::mpsc;
use tonic::Status;

use super::{peer, Federation};

/// A service, by namespace and name.
pub type Key = (String, String);

/// How long a node behind the importer's revision waits to catch up
/// before it answers with everything.
const CATCH_UP: Duration = Duration::from_secs(10);

/// How often a quiet link hears from the exporter.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// The healthy gateways of this cluster (`IP:port`, sorted).
pub fn gateways(reader: &StateReader) -> Vec<String> {
    let mut out: Vec<String> = reader
        .view(|v| v.of_kind(Kind::Endpoint))
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
    out.sort();
    out.dedup();
    out
}

/// The distinct label sets of each exported service's endpoints (at most
/// [`ImportSpec::MAX_SUBSETS`] each, the first in order).
fn subsets(
    endpoints: &[Arc<raftmesh_api::Resource>],
    exported: &BTreeSet<Key>,
) -> BTreeMap<Key, BTreeSet<BTreeMap<String, String>>> {
    let mut out: BTreeMap<Key, BTreeSet<_>> = BTreeMap::new();
    for r in endpoints {
        let Spec::Endpoint(e) = &r.spec else { continue };
        let key = (r.metadata.namespace.clone(), e.service.clone());
        if e.gateway || e.labels.is_empty() || !exported.contains(&key) {
            continue;
        }
        out.entry(key).or_default().insert(e.labels.clone());
    }
    for (k, sets) in &mut out {
        if sets.len() > ImportSpec::MAX_SUBSETS {
            tracing::warn!(service = %k.1, namespace = %k.0, label_sets = sets.len(), "more label sets than an import carries; peers see the first {}", ImportSpec::MAX_SUBSETS);
            while sets.len() > ImportSpec::MAX_SUBSETS {
                sets.pop_last();
            }
        }
    }
    out
}

/// What this cluster exports to `peer` now, at the revision returned.
pub fn view(reader: &StateReader, peer: &str) -> (u64, BTreeMap<Key, pb::ExportedService>) {
    let gateways = gateways(reader);
    reader.view(|v| {
        let exported: BTreeSet<Key> = v
            .of_kind(Kind::Export)
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::Export(e) if e.peers.iter().any(|p| p == peer) => {
                    Some((r.metadata.namespace.clone(), e.service.clone()))
                }
                _ => None,
            })
            .collect();
        let mut subsets = subsets(&v.of_kind(Kind::Endpoint), &exported);
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
                    subsets: subsets
                        .remove(&(r.metadata.namespace.clone(), e.service.clone()))
                        .unwrap_or_default()
                        .into_iter()
                        .map(|labels| pb::Labels { labels })
                        .collect(),
                },
            );
        }
        (v.revision(), out)
    })
}

/// What may have changed after a revision.
#[derive(Debug, PartialEq, Eq)]
pub enum Since {
    /// Unknown: the importer has nothing, or a revision this cluster never
    /// reached (a restore from an older backup): everything, as a full
    /// resync.
    Unknown,
    /// These services: their Export, Service or an Endpoint of theirs
    /// (whose labels make the subsets) was written after the revision. Everything else a batch carries whole (the exported list,
    /// the gateways, the trust domain and bundle), so deletions and
    /// gateway changes need no history: a resume works after any restart
    /// of the exporter, not only while its change window reaches back.
    Services(BTreeSet<Key>),
}

/// The services whose export may have changed after revision `from`.
pub fn changed_since(reader: &StateReader, from: u64) -> Since {
    if from == 0 || from > reader.applied_revision() {
        return Since::Unknown;
    }
    let newer = |r: &Arc<raftmesh_api::Resource>| r.metadata.revision.unwrap_or(0) > from;
    reader.view(|v| {
        let mut out = BTreeSet::new();
        for r in v.of_kind(Kind::Export).iter().filter(|r| newer(r)) {
            if let Spec::Export(e) = &r.spec {
                out.insert((r.metadata.namespace.clone(), e.service.clone()));
            }
        }
        for r in v.of_kind(Kind::Service).iter().filter(|r| newer(r)) {
            out.insert((r.metadata.namespace.clone(), r.metadata.name.clone()));
        }
        // An endpoint's labels are the export's subsets.
        for r in v.of_kind(Kind::Endpoint).iter().filter(|r| newer(r)) {
            if let Spec::Endpoint(e) = &r.spec {
                out.insert((r.metadata.namespace.clone(), e.service.clone()));
            }
        }
        Since::Services(out)
    })
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
        gateways: gateways(fed.reader()),
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
    // A node still catching up (just restarted, or a lagging follower)
    // first reaches the importer's revision, so it can answer with what
    // changed since rather than everything.
    let _ = tokio::time::timeout(CATCH_UP, applied.wait_for(|r| *r >= from)).await;
    let (rev, mut sent) = view(&reader, name);
    let (full, upserts) = match changed_since(&reader, from) {
        Since::Unknown => (true, sent.values().cloned().collect()),
        Since::Services(keys) => (
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

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, yaml_spec: &str) -> Arc<raftmesh_api::Resource> {
        let r = raftmesh_api::parse_documents(&format!(
            "kind: Endpoint\nmetadata: {{name: {name}}}\nspec: {yaml_spec}"
        ))
        .unwrap()
        .remove(0);
        Arc::new(r)
    }

    #[test]
    fn an_export_s_subsets_are_the_distinct_label_sets_of_its_endpoints() {
        let mut eps = vec![
            endpoint(
                "a1",
                "{service: api, address: 10.0.0.1, port: 80, labels: {version: v1}}",
            ),
            endpoint(
                "a2",
                "{service: api, address: 10.0.0.2, port: 80, labels: {version: v1}}",
            ),
            endpoint(
                "a3",
                "{service: api, address: 10.0.0.3, port: 80, labels: {version: v2, zone: b}}",
            ),
            // Unlabelled: reached through the whole service only.
            endpoint("a4", "{service: api, address: 10.0.0.4, port: 80}"),
            // A gateway, and a service not exported.
            endpoint(
                "g1",
                "{service: api, address: 10.0.0.5, port: 80, gateway: true, labels: {version: gw}}",
            ),
            endpoint(
                "s1",
                "{service: secret, address: 10.0.0.6, port: 80, labels: {version: v9}}",
            ),
        ];
        let exported = BTreeSet::from([("default".to_string(), "api".to_string())]);
        let got = subsets(&eps, &exported);
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            got,
            BTreeMap::from([(
                ("default".to_string(), "api".to_string()),
                BTreeSet::from([
                    labels(&[("version", "v1")]),
                    labels(&[("version", "v2"), ("zone", "b")]),
                ])
            )])
        );
        // More than an import carries: the first ones, in order.
        for i in 0..ImportSpec::MAX_SUBSETS + 10 {
            eps.push(endpoint(
                &format!("x{i}"),
                &format!(
                    "{{service: api, address: 10.1.0.1, port: 80, labels: {{n: \"{i:03}\"}}}}"
                ),
            ));
        }
        let got = subsets(&eps, &exported);
        let sets = &got[&("default".to_string(), "api".to_string())];
        assert_eq!(sets.len(), ImportSpec::MAX_SUBSETS);
        assert_eq!(sets.first(), Some(&labels(&[("n", "000")])));
    }
}
