//! `meshctl tap` (the admin API's `Tap`, admin tokens only): the node
//! answering it tells its proxies of the service to send records of a
//! sample of their requests (`ServerMessage.tap`), and asks every other
//! node to do the same with theirs (`Raft/Tap`, a stream of the records
//! back). Records arrive on the proxies' discovery streams
//! (`ProxyMessage.tap_record`) and are taken only for a tap open on that
//! node for that proxy's own service. A tap ends at its record count, its
//! deadline, or when its caller goes away; the proxies stop by themselves
//! at the deadline too. Nothing is written to Raft.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use raftmesh_api::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tonic::Request;

use crate::cluster::ClusterOps;
use crate::discovery::hub::{DiscoveryHub, ListSessions};
use crate::discovery::session::{ProxyInfo, Session};

/// Records a second each proxy sends at most.
pub const MAX_PER_SECOND: u32 = 100;
/// A tap lasts at most this long.
pub const MAX_DURATION: Duration = Duration::from_secs(300);
/// At most this many records per tap.
pub const MAX_RECORDS: u32 = 10_000;
/// Records waiting for the caller, per tap.
const QUEUE: usize = 256;

/// One tap, as nodes pass it to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Unique in the cluster: `<node>-<n>`.
    pub id: String,
    /// The service's namespace.
    pub namespace: String,
    /// The service whose proxies record.
    pub service: String,
    /// Millionths of requests recorded.
    pub sample_ppm: u32,
    /// For this long.
    pub duration_ms: u64,
}

impl Spec {
    /// A tap from an admin request, checked: the error names the field.
    pub fn from_request(id: String, r: pb::TapRequest) -> Result<Self, String> {
        let namespace = if r.namespace.is_empty() {
            raftmesh_api::DEFAULT_NAMESPACE.to_string()
        } else {
            r.namespace
        };
        for (field, v) in [("service", &r.service), ("namespace", &namespace)] {
            raftmesh_api::validate::dns_label(v).map_err(|e| {
                format!(
                    "tap: {field} \"{}\": {e}",
                    v.chars().take(64).collect::<String>()
                )
            })?;
        }
        if !(1..=1_000_000).contains(&r.sample_ppm) {
            return Err(format!(
                "tap: sample_ppm {} is not within 1..=1000000 (0.0001 % to 100 %)",
                r.sample_ppm
            ));
        }
        if !(1..=MAX_RECORDS).contains(&r.max_records) {
            return Err(format!(
                "tap: max_records {} is not within 1..={MAX_RECORDS}",
                r.max_records
            ));
        }
        if !(1000..=MAX_DURATION.as_millis() as u64).contains(&r.duration_ms) {
            return Err(format!(
                "tap: duration_ms {} is not within 1 s..={} s",
                r.duration_ms,
                MAX_DURATION.as_secs()
            ));
        }
        Ok(Spec {
            id,
            namespace,
            service: r.service,
            sample_ppm: r.sample_ppm,
            duration_ms: r.duration_ms,
        })
    }

    fn start(&self, duration_ms: u64) -> pb::TapStart {
        pb::TapStart {
            id: self.id.clone(),
            sample_ppm: self.sample_ppm,
            duration_ms,
            max_per_second: MAX_PER_SECOND,
        }
    }
}

#[derive(Debug)]
struct Open {
    namespace: String,
    service: String,
    tx: mpsc::Sender<pb::TapRecord>,
}

/// The taps open on this node.
#[derive(Debug, Default)]
pub struct Taps {
    next: AtomicU64,
    open: Mutex<HashMap<String, Open>>,
}

impl Taps {
    /// A new tap id of this node's.
    pub fn next_id(&self, node: u64) -> String {
        format!("{node}-{}", self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Takes a proxy's record for the tap it names, if that tap is open
    /// here and is on the proxy's own service (dropped otherwise, or when
    /// the caller is behind).
    pub fn deliver(&self, who: &ProxyInfo, mut r: pb::TapRecord) {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(o) = open.get(&r.tap_id) else {
            return;
        };
        if o.namespace != who.namespace || o.service != who.service {
            tracing::warn!(instance = %who.instance, tap = %r.tap_id, "a proxy sent a record for a tap not on its service; dropped");
            return;
        }
        if let Err(e) = check(&r) {
            tracing::warn!(instance = %who.instance, tap = %r.tap_id, error = %e, "a proxy sent a bad tap record; dropped");
            return;
        }
        r.instance.clone_from(&who.instance);
        let _ = o.tx.try_send(r);
    }
}

/// Checks a record from a proxy: bounded text with no control characters
/// (it is printed on an operator's terminal and shown in a browser).
fn check(r: &pb::TapRecord) -> Result<(), String> {
    if !matches!(r.direction.as_str(), "inbound" | "outbound") {
        return Err("direction is not inbound or outbound".into());
    }
    if r.header_names.len() > 64 {
        return Err(format!("{} header names, at most 64", r.header_names.len()));
    }
    let fields = [
        ("source", &r.source, 512),
        ("destination", &r.destination, 512),
        ("service", &r.service, 253),
        ("subset", &r.subset, 512),
        ("endpoint", &r.endpoint, 512),
        ("method", &r.method, 32),
        ("authority", &r.authority, 260),
        ("path", &r.path, 2048),
        ("error", &r.error, 64),
        ("trace_id", &r.trace_id, 64),
    ];
    let names = r.header_names.iter().map(|h| ("header name", h, 128));
    for (field, v, max) in fields.into_iter().chain(names) {
        if v.len() > max || v.chars().any(char::is_control) {
            return Err(format!(
                "{field} is longer than {max} bytes or holds control characters"
            ));
        }
    }
    Ok(())
}

/// A tap open on this node's proxies; closing it (dropping) tells them to
/// stop.
pub struct Local {
    taps: Arc<ClusterOps>,
    id: String,
    stop: pb::TapStart,
    sessions: Vec<Weak<Session>>,
}

impl Drop for Local {
    fn drop(&mut self) {
        self.taps
            .taps()
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
        for s in self.sessions.iter().filter_map(Weak::upgrade) {
            s.push_tap(self.stop.clone());
        }
    }
}

/// Opens `spec` on this node's proxies of its service; their records come
/// to `tx`.
pub async fn open_local(
    ops: &Arc<ClusterOps>,
    hub: &actix::Addr<DiscoveryHub>,
    spec: &Spec,
    tx: mpsc::Sender<pb::TapRecord>,
) -> Local {
    ops.taps()
        .open
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(
            spec.id.clone(),
            Open {
                namespace: spec.namespace.clone(),
                service: spec.service.clone(),
                tx,
            },
        );
    let sessions: Vec<Arc<Session>> = hub
        .send(ListSessions)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.info.namespace == spec.namespace && s.info.service == spec.service)
        .collect();
    for s in &sessions {
        s.push_tap(spec.start(spec.duration_ms));
    }
    tracing::info!(tap = %spec.id, service = %spec.service, namespace = %spec.namespace, proxies = sessions.len(), "tap open");
    Local {
        taps: ops.clone(),
        id: spec.id.clone(),
        stop: spec.start(0),
        sessions: sessions.iter().map(Arc::downgrade).collect(),
    }
}

/// Opens `spec` on every node: this node's proxies, and every other
/// member's through `Raft/Tap`. Records come to the receiver until the
/// returned guards are dropped; the members that could not be asked are
/// named.
pub async fn open_cluster(
    ops: &Arc<ClusterOps>,
    hub: &actix::Addr<DiscoveryHub>,
    spec: &Spec,
) -> (mpsc::Receiver<pb::TapRecord>, Vec<Guard>, Vec<u64>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut guards = vec![Guard::Local(open_local(ops, hub, spec, tx.clone()).await)];
    let peers = ops.peers();
    // Every other member at once.
    let opened = futures::future::join_all(peers.iter().map(|&id| async move {
        let addr = ops.addr_of(id).ok_or(())?;
        let mut client = ops.pool().get(&addr).map_err(|_| ())?;
        let json = serde_json::to_vec(spec).map_err(|_| ())?;
        let mut req = Request::new(pb::RaftPayload { json });
        req.set_timeout(Duration::from_millis(spec.duration_ms) + Duration::from_secs(5));
        let stream = tokio::time::timeout(Duration::from_secs(2), client.tap(req))
            .await
            .map_err(|_| ())?
            .map_err(|_| ())?
            .into_inner();
        Ok::<_, ()>(stream)
    }))
    .await;
    let mut missing = Vec::new();
    for (id, r) in peers.into_iter().zip(opened) {
        match r {
            Ok(mut stream) => {
                let tx = tx.clone();
                guards.push(Guard::Remote(tokio::spawn(async move {
                    while let Ok(Some(r)) = stream.message().await {
                        if tx.send(r).await.is_err() {
                            return;
                        }
                    }
                })));
            }
            Err(()) => missing.push(id),
        }
    }
    (rx, guards, missing)
}

/// The records of a tap, to its caller: until `max` records, the end of
/// `duration`, or the caller gone, whichever is first (a caller reading
/// slowly does not hold the tap past its end). `open` is held until then.
pub fn relay<T: Send + 'static>(
    open: T,
    mut records: mpsc::Receiver<pb::TapRecord>,
    duration: Duration,
    max: u32,
) -> tokio_stream::wrappers::ReceiverStream<Result<pb::TapRecord, tonic::Status>> {
    let (out, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let _open = open;
        let until = tokio::time::sleep(duration.min(MAX_DURATION));
        tokio::pin!(until);
        for _ in 0..max {
            let r = tokio::select! {
                r = records.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
                () = out.closed() => return,
                () = &mut until => return,
            };
            let permit = tokio::select! {
                p = out.reserve() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = &mut until => return,
            };
            permit.send(Ok(r));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// What keeps a tap open on one node.
pub enum Guard {
    /// This node's proxies.
    Local(Local),
    /// Another node's, streaming back (aborted: its stream is cancelled,
    /// and that node closes its side).
    Remote(tokio::task::JoinHandle<()>),
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Guard::Remote(h) = self {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> pb::TapRequest {
        pb::TapRequest {
            service: "web".into(),
            namespace: String::new(),
            sample_ppm: 1_000_000,
            max_records: 10,
            duration_ms: 10_000,
        }
    }

    #[test]
    fn a_tap_request_is_checked_field_by_field() {
        let s = Spec::from_request("1-1".into(), req()).unwrap();
        assert_eq!(s.namespace, "default");
        let bad = |f: &dyn Fn(&mut pb::TapRequest)| {
            let mut r = req();
            f(&mut r);
            Spec::from_request("1-1".into(), r).unwrap_err()
        };
        assert!(bad(&|r| r.service = "Bad Name".into()).contains("service"));
        assert!(bad(&|r| r.namespace = "x/y".into()).contains("namespace"));
        assert!(bad(&|r| r.sample_ppm = 0).contains("sample_ppm"));
        assert!(bad(&|r| r.sample_ppm = 1_000_001).contains("sample_ppm"));
        assert!(bad(&|r| r.max_records = 0).contains("max_records"));
        assert!(bad(&|r| r.max_records = MAX_RECORDS + 1).contains("max_records"));
        assert!(bad(&|r| r.duration_ms = 10).contains("duration_ms"));
        assert!(bad(&|r| r.duration_ms = 3_600_000).contains("duration_ms"));
    }

    #[test]
    fn records_are_taken_only_for_an_open_tap_on_the_proxys_own_service() {
        let taps = Taps::default();
        let (tx, mut rx) = mpsc::channel(4);
        taps.open.lock().unwrap().insert(
            "1-1".into(),
            Open {
                namespace: "default".into(),
                service: "web".into(),
                tx,
            },
        );
        let who = |svc: &str| ProxyInfo {
            instance: format!("{svc}-1"),
            service: svc.into(),
            namespace: "default".into(),
            node_id: 1,
            connected_since_ms: 0,
        };
        let rec = |tap: &str| pb::TapRecord {
            tap_id: tap.into(),
            direction: "inbound".into(),
            path: "/x".into(),
            instance: "forged".into(),
            ..Default::default()
        };
        taps.deliver(&who("api"), rec("1-1"));
        // Escape sequences for an operator's terminal, or no direction.
        let mut evil = rec("1-1");
        evil.path = "/x\u{1b}]52;c;cm0gLXJmIH4=\u{7}".into();
        taps.deliver(&who("web"), evil);
        taps.deliver(
            &who("web"),
            pb::TapRecord {
                direction: "sideways".into(),
                ..rec("1-1")
            },
        );
        taps.deliver(&who("web"), rec("9-9"));
        assert!(rx.try_recv().is_err());
        taps.deliver(&who("web"), rec("1-1"));
        // The instance is the stream's, whatever the record claims.
        assert_eq!(rx.try_recv().unwrap().instance, "web-1");
    }
}
