//! Simulated proxies on discovery streams during chaos: each follows the
//! register keys, reconnects to another node after any failure (with its
//! last revision), and checks what it receives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use raftmesh_api::v1 as pb;
use raftmesh_api::v1::discovery_client::DiscoveryClient;
use raftmesh_api::v1::proxy_message::Msg as In;
use raftmesh_api::v1::server_message::Msg as Out;
use raftmesh_api::{Resource, ResourceKey, Spec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

/// What one simulated proxy saw.
#[derive(Debug, Default, Clone)]
pub struct ProxyView {
    /// Register values it holds (by key; `None` = absent).
    pub held: BTreeMap<String, Option<u64>>,
    /// Every (key, value) it was sent.
    pub seen: BTreeSet<(String, u64)>,
    /// Last revision.
    pub revision: u64,
    /// Deltas received.
    pub deltas: u64,
    /// Full states received.
    pub fulls: u64,
    /// Streams opened.
    pub connects: u64,
    /// Broken promises (revision not increasing, ...).
    pub violations: Vec<String>,
    /// The node it is connected to now.
    pub node: String,
}

/// A proxy's shared view.
pub type View = Arc<Mutex<ProxyView>>;

fn lock(v: &View) -> std::sync::MutexGuard<'_, ProxyView> {
    v.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn session(
    addr: &str,
    i: usize,
    token: &str,
    keys: usize,
    view: &View,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = DiscoveryClient::new(ch);
    let (tx, rx) = mpsc::channel(8);
    let last = lock(view).revision;
    tx.send(pb::ProxyMessage {
        msg: Some(In::Hello(pb::Hello {
            service: "chaos-proxy".into(),
            instance: format!("chaos-proxy-{i}"),
            token: token.into(),
            subscriptions: (0..keys).map(|k| format!("reg-{k}")).collect(),
            last_revision: last,
            ready: true,
            ..Default::default()
        })),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut inbound = tokio::time::timeout(
        Duration::from_secs(6),
        client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| "hello timed out".to_string())?
    .map_err(|s| s.message().to_string())?
    .into_inner();
    {
        let mut v = lock(view);
        v.connects += 1;
        v.node = addr.to_string();
    }
    loop {
        let m = tokio::select! {
            m = tokio::time::timeout(Duration::from_secs(15), inbound.message()) => m,
            _ = stop.changed() => return Ok(()),
        };
        let m = m
            .map_err(|_| "stream silent".to_string())?
            .map_err(|s| s.message().to_string())?;
        let Some(m) = m else {
            return Err("stream ended".into());
        };
        let Some(Out::Delta(d)) = m.msg else { continue };
        {
            let mut v = lock(view);
            if d.revision <= v.revision {
                let msg = format!(
                    "proxy {i}: revision went from {} to {} (full: {})",
                    v.revision, d.revision, d.full
                );
                v.violations.push(msg);
            }
            v.revision = v.revision.max(d.revision);
            v.deltas += 1;
            if d.full {
                v.fulls += 1;
                for val in v.held.values_mut() {
                    *val = None;
                }
            }
            for u in &d.upserts {
                let Ok(r) = Resource::try_from(u.clone()) else {
                    continue;
                };
                if let Spec::Service(s) = &r.spec {
                    let val = s.ports.first().map(|p| u64::from(p.port));
                    if let Some(x) = val {
                        v.seen.insert((r.metadata.name.clone(), x));
                    }
                    v.held.insert(r.metadata.name.clone(), val);
                }
            }
            for k in &d.removals {
                if let Ok(k) = ResourceKey::try_from(k.clone()) {
                    v.held.insert(k.name, None);
                }
            }
        }
        tx.send(pb::ProxyMessage {
            msg: Some(In::Ack(pb::Ack { nonce: d.nonce })),
        })
        .await
        .map_err(|e| e.to_string())?;
    }
}

/// Runs simulated proxy `i` until stopped.
pub async fn proxy(
    i: usize,
    addrs: Vec<String>,
    token: String,
    keys: usize,
    view: View,
    seed: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x57ea ^ i as u64);
    while !*stop.borrow() {
        let addr = addrs[rng.random_range(0..addrs.len())].clone();
        let _ = session(&addr, i, &token, keys, &view, &mut stop).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => return,
        }
    }
}
