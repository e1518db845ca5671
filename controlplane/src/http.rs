//! meshd's HTTP port: `/healthz`, `/readyz`, `/metrics` (Prometheus text)
//! and the web dashboard (`/`, `/api/...`: `crate::dashboard`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::cluster::ClusterOps;
use crate::dashboard::Dashboard;

#[derive(Clone)]
struct AppState {
    ops: Arc<ClusterOps>,
}

/// The HTTP app of a node; apart from `serve` so tests can drive it.
fn app(ops: Arc<ClusterOps>, dashboard: Dashboard) -> Router {
    let state = AppState { ops };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(crate::dashboard::routes(dashboard))
}

async fn ready(State(s): State<AppState>) -> (StatusCode, String) {
    let m = s.ops.raft().metrics().borrow().clone();
    match m.current_leader {
        Some(l) => (StatusCode::OK, format!("ready: leader is node {l}\n")),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader known\n".into(),
        ),
    }
}

async fn metrics(State(s): State<AppState>) -> (StatusCode, String) {
    let text = s.ops.metrics().render(s.ops.raft(), s.ops.reader());
    if text.is_empty() {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed; see meshd's log\n".into(),
        )
    } else {
        (StatusCode::OK, text)
    }
}

/// Serves the HTTP port until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    ops: Arc<ClusterOps>,
    dashboard: Dashboard,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(ops, dashboard))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the HTTP port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
