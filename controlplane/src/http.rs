//! meshd's HTTP port: `/healthz`, `/readyz` and `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use openraft::ServerState;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::Raft;

#[derive(Clone)]
struct AppState {
    raft: Raft,
    metrics: Arc<NodeMetrics>,
}

struct NodeMetrics {
    registry: Registry,
    term: Gauge<u64, AtomicU64>,
    applied: Gauge<u64, AtomicU64>,
    last_log: Gauge<u64, AtomicU64>,
    is_leader: Gauge,
    has_leader: Gauge,
    rss: Gauge<u64, AtomicU64>,
}

impl NodeMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("raftmesh");
        let m = Self {
            term: Gauge::default(),
            applied: Gauge::default(),
            last_log: Gauge::default(),
            is_leader: Gauge::default(),
            has_leader: Gauge::default(),
            rss: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("raft_term", "Current Raft term", m.term.clone());
        registry.register(
            "raft_applied_index",
            "Last applied log index (revision)",
            m.applied.clone(),
        );
        registry.register("raft_last_log_index", "Last log index", m.last_log.clone());
        registry.register(
            "raft_is_leader",
            "1 if this node leads",
            m.is_leader.clone(),
        );
        registry.register(
            "raft_has_leader",
            "1 if this node knows a leader",
            m.has_leader.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory",
            m.rss.clone(),
        );
        Self { registry, ..m }
    }
}

/// The HTTP app of a node; apart from `serve` so tests can drive it.
fn app(raft: Raft) -> Router {
    let state = AppState {
        raft,
        metrics: Arc::new(NodeMetrics::new()),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn ready(State(s): State<AppState>) -> (StatusCode, String) {
    let m = s.raft.metrics().borrow().clone();
    match m.current_leader {
        Some(l) => (StatusCode::OK, format!("ready: leader is node {l}\n")),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader known\n".into(),
        ),
    }
}

async fn metrics(State(s): State<AppState>) -> (StatusCode, String) {
    let m = s.raft.metrics().borrow().clone();
    let g = &s.metrics;
    g.term.set(m.current_term);
    g.applied.set(m.last_applied.map(|l| l.index).unwrap_or(0));
    g.last_log.set(m.last_log_index.unwrap_or(0));
    g.is_leader.set(i64::from(m.state == ServerState::Leader));
    g.has_leader.set(i64::from(m.current_leader.is_some()));
    g.rss.set(crate::procinfo::rss_bytes());
    let mut out = String::new();
    match encode(&mut out, &g.registry) {
        Ok(()) => (StatusCode::OK, out),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        ),
    }
}

/// Serves the HTTP port until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    raft: Raft,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(raft))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the HTTP port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
