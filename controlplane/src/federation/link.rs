//! The importer's side: one link per established peer, run by this
//! cluster's Raft leader only (started when it leads, stopped when it does
//! not). A link watches what the peer exports from the revision the
//! imports reflect, and writes each batch — the imports and the new
//! watermark, `Peer.imported_revision` — into this cluster's Raft as one
//! entry, conditional on the Peer not having changed meanwhile. So a link
//! interrupted anywhere resumes from exactly what was committed: nothing
//! applied twice, nothing lost, no full resync while the peer's change
//! window reaches back.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use raftmesh_api::v1 as pb;
use raftmesh_api::v1::federation_client::FederationClient;
use raftmesh_api::{ImportSpec, Metadata, PeerSpec, Resource, Spec};
use raftmesh_storage::{Command, OpResult};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::{check_pems, peer, Federation, PEER_HEADER};
use crate::procinfo::unix_ms;

/// What a link last saw, for `meshctl peering list`.
#[derive(Debug, Clone, Default)]
pub struct LinkState {
    /// The stream is open.
    pub connected: bool,
    /// The peer's newest revision seen.
    pub peer_revision: u64,
    /// When the peer was last heard from (Unix ms).
    pub last_contact_ms: u64,
    /// How many times the link has connected.
    pub connects: u64,
    /// Batches received since it last connected.
    pub batches: u64,
    /// Full resyncs among them.
    pub full_batches: u64,
    /// Why the link last failed.
    pub last_error: String,
}

/// The links this node runs.
#[derive(Clone, Default)]
pub struct LinkTable(Arc<Mutex<HashMap<String, LinkState>>>);

impl LinkTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LinkState>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of every link's state.
    pub fn snapshot(&self) -> HashMap<String, LinkState> {
        self.lock().clone()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut LinkState)) {
        f(self.lock().entry(name.to_string()).or_default());
    }

    fn remove(&self, name: &str) {
        self.lock().remove(name);
    }
}

/// Most imports written in one Raft entry (an entry stays far below
/// `MAX_ENTRY_BYTES`); a larger batch is written in several, the
/// watermark with the last.
const IMPORTS_PER_ENTRY: usize = 1_000;
/// A batch that changes nothing moves the watermark at most this often.
const WATERMARK_EVERY: Duration = Duration::from_secs(10);
/// A link that hears nothing for this long (three heartbeats) reconnects.
const SILENCE: Duration = Duration::from_secs(16);

/// A client for the first of `addresses` that answers.
async fn connect(
    addresses: &[String],
    server_ca_pem: &str,
) -> Result<FederationClient<Channel>, String> {
    let tls = (!server_ca_pem.is_empty()).then(|| raftmesh_client::client_tls(server_ca_pem));
    let mut last = String::from("no addresses");
    for a in addresses {
        let ep = raftmesh_client::endpoint(a, tls.as_ref()).map_err(|e| e.to_string())?;
        match ep.connect().await {
            Ok(ch) => {
                return Ok(FederationClient::new(ch)
                    .max_decoding_message_size(raftmesh_client::MAX_MESSAGE_BYTES))
            }
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(format!("cannot reach the peer ({last})"))
}

fn authorized<T>(
    msg: T,
    name_at_peer: &str,
    credential: &str,
) -> Result<tonic::Request<T>, String> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        PEER_HEADER,
        name_at_peer
            .parse()
            .map_err(|_| "bad peer name".to_string())?,
    );
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}")
            .parse()
            .map_err(|_| "bad credential".to_string())?,
    );
    Ok(req)
}

/// Spends a token's secret at the cluster that made it; answers the
/// link's credential.
pub async fn exchange(
    addresses: &[String],
    server_ca_pem: &str,
    req: pb::ExchangeRequest,
) -> Result<String, String> {
    let mut c = connect(addresses, server_ca_pem).await?;
    let mut r = tonic::Request::new(req);
    r.set_timeout(Duration::from_secs(10));
    let resp = c
        .exchange(r)
        .await
        .map_err(|s| format!("the peer refused the exchange: {}", s.message()))?;
    Ok(resp.into_inner().credential)
}

/// Tells the peer the peering is deleted.
pub async fn forget(p: &PeerSpec, credential: &str) -> Result<(), String> {
    let mut c = tokio::time::timeout(
        Duration::from_secs(3),
        connect(&p.addresses, &p.server_ca_pem),
    )
    .await
    .map_err(|_| "timeout".to_string())??;
    let mut r = authorized(pb::ForgetRequest {}, &p.name_at_peer, credential)?;
    r.set_timeout(Duration::from_secs(3));
    c.forget(r).await.map_err(|s| s.message().to_string())?;
    Ok(())
}

fn fingerprint(p: &PeerSpec) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &p.addresses,
        &p.server_ca_pem,
        &p.name_at_peer,
        &p.credential,
    )
        .hash(&mut h);
    h.finish()
}

/// Runs the links while this node leads, until `shutdown`.
pub fn spawn(fed: Arc<Federation>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut running: HashMap<String, (u64, JoinHandle<()>)> = HashMap::new();
        loop {
            let leading = fed.ops.raft().metrics().borrow().current_leader == Some(fed.ops.id());
            let mut want = HashMap::new();
            if leading {
                let (_, peers) = fed.reader().list(Some(raftmesh_api::Kind::Peer), None);
                for r in peers {
                    if let Spec::Peer(p) = &r.spec {
                        if !p.pending() && !p.credential.is_empty() && !p.addresses.is_empty() {
                            want.insert(r.metadata.name.clone(), fingerprint(p));
                        }
                    }
                }
            }
            running.retain(|name, (fp, h)| {
                let keep = want.get(name) == Some(fp) && !h.is_finished();
                if !keep {
                    h.abort();
                    fed.links.remove(name);
                }
                keep
            });
            for (name, fp) in want {
                running.entry(name.clone()).or_insert_with(|| {
                    tracing::info!(peer = %name, "starting the peering link (this node leads)");
                    (fp, tokio::spawn(run(fed.clone(), name)))
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.wait_for(|s| *s) => {
                    running.values().for_each(|(_, h)| h.abort());
                    return;
                }
            }
        }
    })
}

async fn run(fed: Arc<Federation>, name: String) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = Instant::now();
        let e = match once(&fed, &name).await {
            Ok(()) => "the peer ended the stream".to_string(),
            Err(e) => e,
        };
        tracing::warn!(peer = %name, error = %e, "peering link interrupted; reconnecting");
        fed.links.update(&name, |s| {
            s.connected = false;
            s.last_error = e;
        });
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(200);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn once(fed: &Federation, name: &str) -> Result<(), String> {
    let (_, p) = peer(fed.reader(), name).ok_or("the peer is gone")?;
    let credential = fed.credential(name, &p)?;
    let mut client = connect(&p.addresses, &p.server_ca_pem).await?;
    let req = authorized(
        pb::WatchRequest {
            from_revision: p.imported_revision,
        },
        &p.name_at_peer,
        &credential,
    )?;
    let mut stream = client
        .watch(req)
        .await
        .map_err(|s| format!("the peer refused the link: {}", s.message()))?
        .into_inner();
    fed.links.update(name, |s| {
        s.connected = true;
        s.last_error.clear();
        s.connects += 1;
        s.batches = 0;
        s.full_batches = 0;
    });
    let mut last_watermark = Instant::now();
    loop {
        let batch = match tokio::time::timeout(SILENCE, stream.message()).await {
            Err(_) => return Err(format!("nothing from the peer for {SILENCE:?}")),
            Ok(Err(s)) => return Err(format!("the link failed: {}", s.message())),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(b))) => b,
        };
        fed.links.update(name, |s| {
            s.peer_revision = batch.revision;
            s.last_contact_ms = unix_ms();
            s.batches += 1;
            s.full_batches += u64::from(batch.full);
        });
        if apply(fed, name, &batch, &mut last_watermark).await? {
            last_watermark = Instant::now();
        }
    }
}

/// Checks a batch from the peer; the error names what is wrong.
fn check(b: &pb::ExportBatch) -> Result<(), String> {
    let label = |s: &str, what: &str| {
        raftmesh_api::validate::dns_label(s).map_err(|e| format!("the peer sent a bad {what}: {e}"))
    };
    for g in &b.gateways {
        g.parse::<std::net::SocketAddr>()
            .map_err(|_| format!("the peer sent a bad gateway address {g:?}"))?;
    }
    for u in &b.upserts {
        label(&u.namespace, "namespace")?;
        label(&u.name, "service name")?;
        for g in &u.gateways {
            g.parse::<std::net::SocketAddr>()
                .map_err(|_| format!("the peer sent a bad gateway address {g:?}"))?;
        }
    }
    for k in &b.exported {
        label(&k.namespace, "namespace")?;
        label(&k.name, "service name")?;
    }
    raftmesh_api::validate::dns_subdomain(&b.trust_domain)
        .map_err(|e| format!("the peer sent a bad trust domain: {e}"))?;
    check_pems(&b.trust_bundle_pem, "trust bundle from the peer")
}

/// Writes a batch into this cluster's Raft; answers whether anything was
/// written.
async fn apply(
    fed: &Federation,
    name: &str,
    b: &pb::ExportBatch,
    last_watermark: &mut Instant,
) -> Result<bool, String> {
    check(b)?;
    let reader = fed.reader();
    let (peer_res, p) = peer(reader, name).ok_or("the peer was deleted")?;
    if b.trust_domain == fed.trust_domain() {
        return Err(format!(
            "the peer now claims this cluster's trust domain {}; refusing its exports",
            b.trust_domain
        ));
    }
    let (_, imports) = reader.list(Some(raftmesh_api::Kind::Import), None);
    let held: BTreeMap<(String, String), Arc<Resource>> = imports
        .into_iter()
        .filter_map(|r| match &r.spec {
            Spec::Import(i) if i.peer == name => {
                Some(((r.metadata.namespace.clone(), i.service.clone()), r.clone()))
            }
            _ => None,
        })
        .collect();
    let mut cmds = Vec::new();
    for u in &b.upserts {
        let spec = ImportSpec {
            peer: name.to_string(),
            service: u.name.clone(),
            gateways: u.gateways.clone(),
            trust_domain: b.trust_domain.clone(),
            protocol: raftmesh_api::convert::protocol_of(u.protocol),
            subsets: u.subsets.iter().map(|l| l.labels.clone()).collect(),
            revision: b.revision,
            // Given (and then kept) by the state machine.
            vip: None,
        };
        let mut md = Metadata::named(ImportSpec::resource_name(&u.name, name));
        md.namespace = u.namespace.clone();
        let resource = Resource {
            metadata: md,
            spec: Spec::Import(spec),
        };
        // Whatever the peer sent is checked as an apply would be; one bad
        // export is left out (and said), the others still imported.
        if let Err(e) = resource.validate() {
            tracing::warn!(peer = %name, service = %u.name, error = %e, "not importing a bad export from the peer");
            continue;
        }
        cmds.push(Command::Put {
            resource,
            expected_revision: None,
        });
    }
    let exported: std::collections::BTreeSet<(String, String)> = b
        .exported
        .iter()
        .map(|k| (k.namespace.clone(), k.name.clone()))
        .collect();
    let upserted: std::collections::BTreeSet<(String, String)> = b
        .upserts
        .iter()
        .map(|u| (u.namespace.clone(), u.name.clone()))
        .collect();
    for (k, r) in &held {
        if !exported.contains(k) {
            cmds.push(Command::Delete {
                key: r.key(),
                expected_revision: None,
            });
            continue;
        }
        // Held and unchanged: brought up to date with the peer's gateways
        // and trust domain, which every batch carries whole.
        if let Spec::Import(i) = &r.spec {
            if !upserted.contains(k)
                && (i.gateways != b.gateways || i.trust_domain != b.trust_domain)
            {
                let mut next = i.clone();
                next.gateways = b.gateways.clone();
                next.trust_domain = b.trust_domain.clone();
                cmds.push(Command::Put {
                    resource: Resource {
                        metadata: Metadata {
                            revision: None,
                            ..r.metadata.clone()
                        },
                        spec: Spec::Import(next),
                    },
                    expected_revision: None,
                });
            }
        }
    }
    let mut next = p.clone();
    next.imported_revision = b.revision;
    next.trust_domain = b.trust_domain.clone();
    next.root_ca_pem = b.trust_bundle_pem.concat();
    let only_watermark = cmds.is_empty()
        && PeerSpec {
            imported_revision: p.imported_revision,
            ..next.clone()
        } == p;
    if only_watermark
        && (next.imported_revision == p.imported_revision
            || last_watermark.elapsed() < WATERMARK_EVERY)
    {
        return Ok(false);
    }
    // Earlier parts of a very large batch go first, on their own (puts and
    // deletes are idempotent: a link interrupted between them resends).
    while cmds.len() > IMPORTS_PER_ENTRY {
        let rest = cmds.split_off(IMPORTS_PER_ENTRY);
        write(fed, std::mem::replace(&mut cmds, rest)).await?;
    }
    cmds.push(Command::Put {
        resource: Resource {
            metadata: peer_res.metadata.clone(),
            spec: Spec::Peer(next),
        },
        expected_revision: Some(peer_res.metadata.revision.unwrap_or(0)),
    });
    write(fed, cmds).await?;
    if !only_watermark {
        tracing::info!(peer = %name, revision = b.revision, upserts = b.upserts.len(), full = b.full, "imports written");
    }
    Ok(true)
}

async fn write(fed: &Federation, cmds: Vec<Command>) -> Result<(), String> {
    let resp = fed
        .ops
        .write(Command::Batch(cmds))
        .await
        .map_err(|e| format!("writing the imports: {e}"))?;
    match resp.results.iter().find(|r| !matches!(r, OpResult::Ok { .. })) {
        None => Ok(()),
        Some(OpResult::Conflict { .. }) | Some(OpResult::Aborted) => {
            Err("the peer's record changed meanwhile (another link, or a delete); starting over from the stored revision".into())
        }
        Some(other) => Err(format!("writing the imports failed: {other:?}")),
    }
}
