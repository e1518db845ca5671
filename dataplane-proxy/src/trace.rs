//! A span per request on each proxy it passes (MeshConfig `tracing`): a
//! client span on the caller's proxy, a server span on the callee's, each
//! a child of the context the request arrived with, and the context passed
//! on in `traceparent` (and B3's headers when the request used them). The
//! exporter is `raftmesh_client::otel`; with tracing off this costs one
//! atomic load per request.

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use raftmesh_client::otel::Hop;

use crate::state::Config;
use crate::target::RouteInfo;

/// Starts the span of a request on `direction` and writes its context into
/// the request's headers for the next hop; `None` with tracing off.
pub fn start<B>(
    config: &Config,
    direction: &'static str,
    req: &mut http::Request<B>,
) -> Option<Hop> {
    let active = config.traces.active()?;
    let kind = if direction == "outbound" {
        SpanKind::Client
    } else {
        SpanKind::Server
    };
    let parent = active.parent(req.headers());
    let hop = active.start(kind, format!("{} {direction}", req.method()), &parent);
    hop.inject(req.headers_mut());
    if hop.recording() {
        hop.set(vec![
            KeyValue::new("raftmesh.direction", direction),
            KeyValue::new("http.request.method", req.method().to_string()),
            KeyValue::new("url.path", req.uri().path().to_string()),
        ]);
    }
    Some(hop)
}

/// What the answer was: where the request went (the routed service, else
/// `service`), its status, the mesh's error code, and (outbound) the route,
/// endpoint and retries.
pub fn answered(
    hop: &Hop,
    service: &str,
    route: Option<&RouteInfo>,
    code: u16,
    error: &'static str,
    client: bool,
) {
    if !hop.recording() {
        return;
    }
    let routed = route.and_then(RouteInfo::route);
    let service = routed.map_or(service, |(t, _, _)| t.id.1.as_str());
    let mut attrs = vec![
        KeyValue::new("raftmesh.service", service.to_string()),
        KeyValue::new("http.response.status_code", i64::from(code)),
    ];
    if let Some(r) = route {
        if let Some((t, rule, backend)) = routed {
            attrs.push(KeyValue::new(
                "raftmesh.route",
                t.route.as_deref().unwrap_or("").to_string(),
            ));
            attrs.push(KeyValue::new("raftmesh.rule", *rule as i64));
            attrs.push(KeyValue::new(
                "raftmesh.subset",
                t.rules[*rule].backends[*backend].label.clone(),
            ));
        }
        if let Some(e) = r.endpoint() {
            attrs.push(KeyValue::new("raftmesh.endpoint", e.addr.to_string()));
        }
        attrs.push(KeyValue::new(
            "raftmesh.retry_attempts",
            i64::from(r.attempts().saturating_sub(1)),
        ));
    }
    if !error.is_empty() {
        attrs.push(KeyValue::new("raftmesh.error", error));
    }
    hop.set(attrs);
    // A client span fails on 4xx and 5xx, a server span on 5xx (OTel's
    // HTTP conventions); a mesh error always.
    if !error.is_empty() || code >= 500 || (client && code >= 400) {
        hop.fail(if error.is_empty() {
            code.to_string()
        } else {
            error.to_string()
        });
    }
}
