//! Traces (MeshConfig `tracing`) through two proxies to a real OTLP/gRPC
//! collector stub: one client span on the caller's proxy and one server
//! span on the callee's per request, in one trace, each the parent of the
//! next hop, continuing the trace the app sent (W3C or B3).

use std::time::Duration;

use super::otlp::{Collector, CLIENT, SERVER};
use super::support::*;
use super::traffic::{callee, caller, echo, send};

fn mesh_config(collector: std::net::SocketAddr, percent: &str) -> String {
    format!("---\nkind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{trust_domain: east.mesh, tracing: {{collector: '{collector}', sample_percent: {percent}}}}}\n")
}

/// A header the app saw (the echo app answers them in its body).
fn seen<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[tokio::test]
async fn the_spans_of_one_request_across_two_proxies_share_a_trace_and_parent_correctly() {
    let (collector, at) = Collector::start().await;
    let app = echo("app", Duration::ZERO).await;
    let (b, _db) = callee(&app, &mesh_config(at, "100")).await;
    let route = format!(
        "kind: Route\nmetadata: {{name: web}}\nspec: {{service: web}}\n{}",
        mesh_config(at, "100")
    );
    let (a, _da) = caller(&[("web-1", b.inbound.unwrap(), "")], &route, "").await;
    let c = http_client();

    // A request with no trace: the caller's proxy starts one.
    let r = send(&c, &a, "GET", "/items?secret=1", &[]).await;
    assert_eq!(r.status(), 200);
    let tp = seen(r.body(), "traceparent").expect("the app gets a traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    let (trace, app_parent) = (parts[1].to_string(), parts[2].to_string());
    assert_eq!(parts[3], "01", "sampled: {tp}");
    let spans = collector.trace(&trace, 2).await;
    let client = spans.iter().find(|s| s.kind == CLIENT).unwrap();
    let server = spans.iter().find(|s| s.kind == SERVER).unwrap();
    assert_eq!(client.parent, "", "the caller's proxy started the trace");
    assert_eq!(
        server.parent, client.span_id,
        "the server span is the client span's child"
    );
    assert_eq!(
        app_parent, server.span_id,
        "the app's parent is the server span"
    );
    assert_eq!(
        (client.name.as_str(), server.name.as_str()),
        ("GET outbound", "GET inbound")
    );
    assert_eq!(client.service, "client");
    assert_eq!(server.service, "web");
    assert_eq!(client.attrs["raftmesh.service"], "web");
    assert_eq!(client.attrs["raftmesh.route"], "web");
    assert_eq!(
        client.attrs["raftmesh.endpoint"],
        b.inbound.unwrap().to_string()
    );
    assert_eq!(client.attrs["raftmesh.retry_attempts"], "0");
    assert_eq!(client.attrs["http.response.status_code"], "200");
    assert_eq!(client.attrs["url.path"], "/items", "never the query");
    assert_eq!(server.attrs["raftmesh.direction"], "inbound");
    assert!(!client.error && !server.error);

    // A request in a trace the app started: continued, not restarted.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = send(&c, &a, "GET", "/", &[("traceparent", parent)]).await;
    let spans = collector.trace("4bf92f3577b34da6a3ce929d0e0e4736", 2).await;
    let client = spans.iter().find(|s| s.kind == CLIENT).unwrap();
    assert_eq!(client.parent, "00f067aa0ba902b7");
    assert!(seen(r.body(), "traceparent")
        .unwrap()
        .contains("4bf92f3577b34da6a3ce929d0e0e4736"));

    // B3 is read when there is no traceparent, and kept up to date.
    let r = send(
        &c,
        &a,
        "GET",
        "/",
        &[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let spans = collector.trace("80f198ee56343ba864fe8b2a57d3eff7", 2).await;
    let client = spans.iter().find(|s| s.kind == CLIENT).unwrap();
    let server = spans.iter().find(|s| s.kind == SERVER).unwrap();
    assert_eq!(client.parent, "e457b5a2e4d86bd1");
    assert_eq!(seen(r.body(), "x-b3-spanid"), Some(server.span_id.as_str()));

    // An error answered by the mesh marks the client span failed.
    let (s, _, _) = get(&c, a.outbound, "nosuch", "/", &[]).await;
    assert_eq!(s, 404);
    for _ in 0..100 {
        if collector
            .spans()
            .iter()
            .any(|s| s.attrs.get("raftmesh.error").map(String::as_str) == Some("no-route"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = collector
        .spans()
        .into_iter()
        .find(|s| s.attrs.get("raftmesh.error").map(String::as_str) == Some("no-route"))
        .expect("the no-route span");
    assert!(failed.error);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn unsampled_requests_export_nothing_but_still_carry_the_decision() {
    let (collector, at) = Collector::start().await;
    let app = echo("app", Duration::ZERO).await;
    let (b, _db) = callee(&app, &mesh_config(at, "0")).await;
    let route = format!(
        "kind: Route\nmetadata: {{name: web}}\nspec: {{service: web}}\n{}",
        mesh_config(at, "0")
    );
    let (a, _da) = caller(&[("web-1", b.inbound.unwrap(), "")], &route, "").await;
    let c = http_client();
    for _ in 0..20 {
        let r = send(&c, &a, "GET", "/", &[]).await;
        let tp = seen(r.body(), "traceparent").expect("the decision travels");
        assert!(tp.ends_with("-00"), "{tp}");
    }
    // A request the app's own tracer sampled is recorded all the same.
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    send(&c, &a, "GET", "/", &[("traceparent", parent)]).await;
    let spans = collector.trace("0af7651916cd43dd8448eb211c80319c", 2).await;
    assert_eq!(spans.len(), 2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(collector.spans().len(), 2, "{:#?}", collector.spans());
    a.shutdown().await;
    b.shutdown().await;
}
