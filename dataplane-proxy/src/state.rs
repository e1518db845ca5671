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
    current: ArcSwap<CompiledConfig>,
    changed: watch::Sender<u64>,
    learn_tx: Option<mpsc::Sender<ServiceId>>,
}

impl Config {
    /// A config holding `initial`; `learn_tx` receives services requests
    /// ask for that the compiled config lacks (none with a static config).
    pub fn new(
        identity: Identity,
        initial: CompiledConfig,
        stats: StatsRegistry,
        learn_tx: Option<mpsc::Sender<ServiceId>>,
        conn_limits: crate::conn::ConnLimits,
    ) -> Arc<Self> {
        let (changed, _) = watch::channel(initial.revision);
        Arc::new(Self {
            namespace: identity.namespace.clone(),
            identity,
            metrics: stats.metrics().clone(),
            stats,
            conn_limits,
            current: ArcSwap::from_pointee(initial),
            changed,
            learn_tx,
        })
    }

    /// The compiled config in force.
    pub fn current(&self) -> Arc<CompiledConfig> {
        self.current.load_full()
    }

    /// Makes `s` the compiled config in force.
    pub fn install(&self, s: CompiledConfig) {
        let rev = s.revision;
        self.current.store(Arc::new(s));
        self.changed
            .send_modify(|r| *r = rev.max(r.wrapping_add(1)));
    }

    /// Notified on every install.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Asks the control plane for a service and waits up to `wait` for it.
    pub async fn learn(&self, id: &ServiceId, wait: Duration) -> Option<Arc<ServiceTable>> {
        let tx = self.learn_tx.as_ref()?;
        let mut rx = self.watch();
        if tx.try_send(id.clone()).is_err() {
            tracing::debug!(service = ?id, "subscription queue full");
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
        found.ok().flatten()
    }
}
