//! The proxy's live configuration: the current compiled config (swapped
//! atomically), change notification, and the queue of services to learn.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};

use crate::compiled::{CompiledConfig, Identity, ServiceId, ServiceTable};
use crate::metrics::Metrics;
use crate::stats::StatsRegistry;

/// Shared by every listener and the discovery client.
pub struct Config {
    /// The proxy's namespace (for authorities without one).
    pub namespace: String,
    /// Who the proxy is.
    pub identity: Identity,
    /// Live endpoint and service counters.
    pub stats: StatsRegistry,
    /// This proxy's metrics.
    pub metrics: Arc<Metrics>,
    /// How long client connections may take and idle (`conn.rs`).
    pub conn_limits: crate::conn::ConnLimits,
    /// The app's readiness and the proxy's lifecycle (`health.rs`).
    pub life: watch::Sender<crate::health::Life>,
    /// Why the app's last probe failed (for `/ready`).
    pub probe_failure: Arc<std::sync::Mutex<String>>,
    /// Inbound connections open (a drain waits for them).
    pub inbound_open: Arc<std::sync::atomic::AtomicUsize>,
    /// The buckets of the service's Route `rate_limit` (inbound).
    pub limiter: crate::ratelimit::Limiter,
    /// Where access log records go.
    pub access_log: Arc<crate::accesslog::Sink>,
    /// The taps meshd has open on this proxy (`meshctl tap`).
    pub taps: Arc<crate::tap::Taps>,
    /// The ports this proxy listens on (egress never relays to them).
    pub own_ports: std::sync::Mutex<Vec<u16>>,
    /// Outbound (and captured) connections open (a takeover waits for them).
    pub outbound_open: Arc<std::sync::atomic::AtomicUsize>,
    /// Traces (MeshConfig `tracing`), following each config installed.
    pub traces: raftmesh_client::otel::Traces,
    /// The workload's key and certificate (a mesh proxy's).
    pub workload: std::sync::OnceLock<Arc<crate::tls::Workload>>,
    current: ArcSwap<CompiledConfig>,
    changed: watch::Sender<u64>,
    learn_tx: Option<mpsc::Sender<Interest>>,
    /// Names the control plane did not know when last asked, and when.
    misses: std::sync::Mutex<std::collections::HashMap<ServiceId, tokio::time::Instant>>,
}

/// Whether `ip` is an address of this host (bound to an interface).
fn is_local_ip(ip: std::net::IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// What the discovery client is told about a service requests asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// Subscribe to it (a request named it, and the proxy lacks it).
    Want(ServiceId),
    /// It did not arrive in time (likely no such service): drop the
    /// subscription unless it has arrived since, so made-up names a
    /// workload resolves do not fill the subscription set.
    Missed(ServiceId),
}

/// How long a name the control plane did not know is not asked again.
pub const MISS_TTL: Duration = Duration::from_secs(5);
/// Misses remembered at most.
const MISS_CAP: usize = 4096;

impl Config {
    /// A config holding `initial`; `learn_tx` receives services requests
    /// ask for that the compiled config lacks (none with a static config).
    pub fn new(
        identity: Identity,
        initial: CompiledConfig,
        stats: StatsRegistry,
        learn_tx: Option<mpsc::Sender<Interest>>,
        conn_limits: crate::conn::ConnLimits,
        has_app: bool,
    ) -> Arc<Self> {
        let (changed, _) = watch::channel(initial.revision);
        let traces = raftmesh_client::otel::Traces::new(&identity.service, &identity.namespace, "");
        traces.configure(initial.tracing.as_ref());
        if initial.source != crate::compiled::Source::Empty {
            stats.metrics().config_installed(initial.revision);
        }
        Arc::new(Self {
            namespace: identity.namespace.clone(),
            identity,
            metrics: stats.metrics().clone(),
            stats,
            conn_limits,
            life: crate::health::channel(has_app),
            probe_failure: Default::default(),
            inbound_open: Default::default(),
            limiter: Default::default(),
            own_ports: Default::default(),
            access_log: Default::default(),
            taps: Default::default(),
            outbound_open: Default::default(),
            workload: Default::default(),
            traces,
            current: ArcSwap::from_pointee(initial),
            changed,
            learn_tx,
            misses: Default::default(),
        })
    }

    /// The compiled config in force.
    pub fn current(&self) -> Arc<CompiledConfig> {
        self.current.load_full()
    }

    /// Makes `s` the compiled config in force.
    pub fn install(&self, s: CompiledConfig) {
        let rev = s.revision;
        self.metrics.config_installed(rev);
        self.traces.configure(s.tracing.as_ref());
        self.current.store(Arc::new(s));
        self.changed
            .send_modify(|r| *r = rev.max(r.wrapping_add(1)));
    }

    /// This workload's SPIFFE ID: its certificate's, or (none yet, or a
    /// static-config proxy) the one the MeshConfig's trust domain gives.
    pub fn own_spiffe(&self) -> Option<String> {
        if let Some(tls) = self.workload.get().and_then(|w| w.tls()) {
            return Some(tls.spiffe.clone());
        }
        let c = self.current();
        let td = &c.authz.trust_domain;
        (!td.is_empty()).then(|| {
            raftmesh_api::identity::spiffe_id(td, &self.identity.namespace, &self.identity.service)
        })
    }

    /// Records a port this proxy listens on.
    pub fn note_own_port(&self, port: u16) {
        self.own_ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(port);
    }

    /// Whether `addr` is one of this proxy's own listeners (a local
    /// address on a port it listens on).
    pub fn is_own(&self, addr: std::net::SocketAddr) -> bool {
        let listened = self
            .own_ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&addr.port());
        listened
            && (addr.ip().is_loopback() || addr.ip().is_unspecified() || is_local_ip(addr.ip()))
    }

    /// Notified on every install.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether `name` is a peer cluster's (`svc.ns.<peer>` names an import).
    pub fn is_peer(&self, name: &str) -> bool {
        self.current().peers.contains_key(name)
    }

    /// Whether `ns` is a namespace the proxy knows: its own, or one of a
    /// service it holds (a host name `a.b` is taken for service `a` of
    /// namespace `b` only then, so `example.com` is not looked up).
    pub fn knows_namespace(&self, ns: &str) -> bool {
        ns == self.namespace || self.current().services.keys().any(|(n, _)| n == ns)
    }

    /// A service held, or learned now (at most `wait`); a name the control
    /// plane did not know is not asked again for [`MISS_TTL`], so names
    /// outside the mesh cost the wait at most once per [`MISS_TTL`].
    pub async fn lookup(&self, id: &ServiceId, wait: Duration) -> Option<Arc<ServiceTable>> {
        if let Some(t) = self.current().service(id) {
            return Some(t.clone());
        }
        {
            let mut m = self.misses.lock().unwrap_or_else(|e| e.into_inner());
            if m.get(id).is_some_and(|t| t.elapsed() < MISS_TTL) {
                return None;
            }
            m.remove(id);
        }
        let (asked, found) = self.ask(id, wait).await;
        if asked && found.is_none() {
            if let Some(tx) = &self.learn_tx {
                let _ = tx.try_send(Interest::Missed(id.clone()));
            }
            let mut m = self.misses.lock().unwrap_or_else(|e| e.into_inner());
            if m.len() >= MISS_CAP {
                m.retain(|_, t| t.elapsed() < MISS_TTL);
                if m.len() >= MISS_CAP {
                    m.clear();
                }
            }
            m.insert(id.clone(), tokio::time::Instant::now());
        }
        found
    }

    /// Asks the control plane for a service without waiting for it (a
    /// gateway warming the services it will be asked for).
    pub fn want(&self, id: &ServiceId) {
        if let Some(tx) = &self.learn_tx {
            let _ = tx.try_send(Interest::Want(id.clone()));
        }
    }

    /// Asks the control plane for a service and waits up to `wait` for it.
    pub async fn learn(&self, id: &ServiceId, wait: Duration) -> Option<Arc<ServiceTable>> {
        self.ask(id, wait).await.1
    }

    /// [`Config::learn`], and whether the control plane was asked (not
    /// when the queue is full: then it answers at once).
    async fn ask(&self, id: &ServiceId, wait: Duration) -> (bool, Option<Arc<ServiceTable>>) {
        let Some(tx) = self.learn_tx.as_ref() else {
            return (false, None);
        };
        let mut rx = self.watch();
        if tx.try_send(Interest::Want(id.clone())).is_err() {
            tracing::debug!(service = ?id, "subscription queue full");
            return (false, self.current().service(id).cloned());
        }
        let found = tokio::time::timeout(wait, async {
            loop {
                if let Some(t) = self.current().service(id).cloned() {
                    return Some(t);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        (true, found.ok().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_name_the_control_plane_does_not_know_is_asked_once_then_not_for_a_while() {
        let (tx, mut rx) = mpsc::channel(8);
        let config = Config::new(
            Identity {
                namespace: "default".into(),
                ..Default::default()
            },
            CompiledConfig::empty(),
            StatsRegistry::new(Metrics::new()),
            Some(tx),
            Default::default(),
            false,
        );
        let id: ServiceId = ("com".into(), "example".into());
        assert!(config.lookup(&id, Duration::from_secs(1)).await.is_none());
        assert_eq!(rx.try_recv().unwrap(), Interest::Want(id.clone()));
        // The subscription is given up at once, not kept until idle.
        assert_eq!(rx.try_recv().unwrap(), Interest::Missed(id.clone()));
        // Within MISS_TTL: answered at once, the control plane not asked.
        assert!(config.lookup(&id, Duration::from_secs(1)).await.is_none());
        assert!(rx.try_recv().is_err());
        tokio::time::advance(MISS_TTL + Duration::from_millis(1)).await;
        assert!(config.lookup(&id, Duration::from_secs(1)).await.is_none());
        assert_eq!(
            rx.try_recv().unwrap(),
            Interest::Want(id.clone()),
            "asked again once the miss expired"
        );
        // Namespaces: its own, and those of services it holds.
        assert!(config.knows_namespace("default"));
        assert!(!config.knows_namespace("com"));
    }
}
