//! The web dashboard on meshd's `--http` port: a static page (the assets
//! are in the binary: no CDN, no build step) and the read-only JSON it
//! reads. Every `/api/` call needs an admin or read-only token as
//! `Authorization: Bearer`, checked by the admin API's own code (the page
//! keeps the token in the tab's session storage; nothing is in a cookie, so
//! no other site can make the browser call with it). The data is the admin
//! API's: `Stat` (as `meshctl stat -o json`), `ClusterStatus`,
//! `ListProxies`, and the recent changes from the change window.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use raftmesh_api::stat::StatRow;
use raftmesh_api::v1 as pb;
use raftmesh_api::v1::admin_server::Admin;
use serde::Deserialize;
use serde_json::json;
use tonic::Request;

use crate::admin::AdminService;
use crate::cluster::ClusterOps;

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct Dashboard {
    /// The admin API (authentication and data).
    pub admin: Arc<AdminService>,
    /// The node.
    pub ops: Arc<ClusterOps>,
}

/// The dashboard's routes.
pub fn routes(d: Dashboard) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/api/stat", get(stat))
        .route("/api/cluster", get(cluster))
        .route("/api/proxies", get(proxies))
        .route("/api/changes", get(changes))
        .with_state(d)
}

/// Headers every answer carries: no framing, no sniffing, nothing but
/// this origin's own scripts and styles.
fn secured(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    secured(([(header::CONTENT_TYPE, kind)], body).into_response())
}

fn json_answer(code: StatusCode, v: &serde_json::Value) -> Response {
    secured(
        (
            code,
            [(header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response(),
    )
}

/// An admin API status as an HTTP error with a JSON reason.
fn refused(s: &tonic::Status) -> Response {
    let code = match s.code() {
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut r = json_answer(code, &json!({"error": s.message()}));
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"raftmesh\""),
        );
    }
    r
}

/// An admin API request carrying the HTTP request's bearer token.
fn request<T>(headers: &HeaderMap, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

#[derive(Debug, Default, Deserialize)]
struct StatQuery {
    #[serde(default)]
    service: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    route: String,
}

async fn stat(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(q): Query<StatQuery>,
) -> Response {
    let req = request(
        &headers,
        pb::StatRequest {
            service: q.service,
            namespace: q.namespace,
            route: q.route,
        },
    );
    match d.admin.stat(req).await {
        Ok(r) => {
            let r = r.into_inner();
            let rows: Vec<StatRow> = r.rows.into_iter().map(StatRow::from).collect();
            json_answer(
                StatusCode::OK,
                &json!({"rows": rows, "window_s": r.window_s, "unreported_nodes": r.unreported_nodes}),
            )
        }
        Err(s) => refused(&s),
    }
}

async fn cluster(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    match d
        .admin
        .cluster_status(request(&headers, pb::ClusterStatusRequest {}))
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            let members: Vec<_> = r
                .members
                .iter()
                .map(|m| {
                    json!({
                        "id": m.id,
                        "addr": m.addr,
                        "voter": m.voter,
                        "state": m.state,
                        "applied_index": m.applied_index,
                        "lag": r.applied_index.saturating_sub(m.applied_index),
                        "last_contact_ms": m.last_contact_ms,
                        "rss_bytes": m.rss_bytes,
                    })
                })
                .collect();
            json_answer(
                StatusCode::OK,
                &json!({
                    "node_id": r.node_id,
                    "cluster_name": r.cluster_name,
                    "leader": r.leader,
                    "term": r.term,
                    "commit_index": r.commit_index,
                    "applied_index": r.applied_index,
                    "members": members,
                }),
            )
        }
        Err(s) => refused(&s),
    }
}

async fn proxies(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    match d
        .admin
        .list_proxies(request(&headers, pb::ListProxiesRequest {}))
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            let proxies: Vec<_> = r
                .proxies
                .iter()
                .map(|p| {
                    json!({
                        "instance": p.instance,
                        "service": p.service,
                        "namespace": p.namespace,
                        "node": p.node_id,
                        "acked_revision": p.acked_revision,
                        "sent_revision": p.sent_revision,
                        "connected_since_ms": p.connected_since_ms,
                        "disconnected_since_ms": (p.disconnected_since_ms != 0).then_some(p.disconnected_since_ms),
                    })
                })
                .collect();
            json_answer(
                StatusCode::OK,
                &json!({"proxies": proxies, "unreported_nodes": r.unreported_nodes}),
            )
        }
        Err(s) => refused(&s),
    }
}

/// The last changes this node applied (kind, namespace, name, revision,
/// deleted or not), newest first; never a resource's content.
async fn changes(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    // The admin API's authentication, on a call that reads nothing else.
    if let Err(s) = d
        .admin
        .who_am_i(request(&headers, pb::WhoAmIRequest {}))
        .await
    {
        return refused(&s);
    }
    let reader = d.ops.reader();
    let applied = reader.applied_revision();
    let events = match reader.changes_since(applied.saturating_sub(200)) {
        Ok((_, e)) => e,
        Err(raftmesh_storage::WindowError::TooOld { oldest, .. }) => reader
            .changes_since(oldest)
            .map(|(_, e)| e)
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let shown: Vec<_> = events
        .iter()
        .rev()
        .filter(|e| {
            !matches!(
                e.key.kind,
                raftmesh_api::Kind::Token
                    | raftmesh_api::Kind::Authority
                    | raftmesh_api::Kind::Peer
            )
        })
        .take(20)
        .map(|e| {
            json!({
                "revision": e.revision,
                "kind": e.key.kind.as_str(),
                "namespace": e.key.namespace,
                "name": e.key.name,
                "deleted": e.value.is_none(),
            })
        })
        .collect();
    json_answer(
        StatusCode::OK,
        &json!({"applied": applied, "changes": shown}),
    )
}

#[cfg(test)]
mod tests;
