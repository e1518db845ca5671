//! The proxy's Prometheus metrics through two proxies on real sockets:
//! requests by route, rule, subset, status and error code on both sides,
//! gRPC statuses from trailers, connections and bytes, the config's
//! revision and age, and never a path or a value a caller made up.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::prom::{has, metric, series};
use super::support::*;
use super::traffic::{callee, caller, send, Echo};

/// An app answering `/status/<code>` with that status, and with
/// `x-raftmesh-error: <err>` when asked by `?err=<err>`.
async fn status_app() -> Echo {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = Echo {
        hits: Default::default(),
        addr: l.local_addr().unwrap(),
        seen: Default::default(),
    };
    let hits = app.hits.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let code: u16 = req
                            .uri()
                            .path()
                            .strip_prefix("/status/")
                            .and_then(|p| p.split('/').next())
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(200);
                        let mut r = Response::new(Full::new(Bytes::from_static(b"answer\n")));
                        *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
                        if let Some(err) = req.uri().query().and_then(|q| q.strip_prefix("err=")) {
                            r.headers_mut()
                                .insert("x-raftmesh-error", err.parse().unwrap());
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    app
}

fn scrape(p: &raftmesh_dataplane_proxy::Proxy) -> String {
    p.config.metrics.render(&p.config)
}

#[tokio::test]
async fn requests_count_by_route_rule_subset_status_and_error_on_both_sides_never_by_path() {
    let app = status_app().await;
    let (b, _db) = callee(&app, "").await;
    let route = "kind: Route\nmetadata: {name: web-route}\nspec: {service: web, rules: [{matches: [{headers: {x-canary: 'true'}}], backends: [{subset: {version: v1}, weight: 100}]}, {}]}\n---\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {trust_domain: east.mesh}\n";
    let (a, _da) = caller(
        &[("web-1", b.inbound.unwrap(), ", labels: {version: v1}")],
        route,
        "",
    )
    .await;
    let c = http_client();
    for _ in 0..3 {
        assert_eq!(
            send(&c, &a, "GET", "/status/200/secret-path", &[])
                .await
                .status(),
            200
        );
    }
    for _ in 0..2 {
        let r = send(&c, &a, "GET", "/status/503", &[("x-canary", "true")]).await;
        assert_eq!(r.status(), 503);
    }
    // Error codes another side sent: a mesh code is kept, anything else is
    // `other` (a label never takes a value from the network as it is).
    assert_eq!(
        send(&c, &a, "GET", "/status/403?err=denied", &[])
            .await
            .status(),
        403
    );
    assert_eq!(
        send(&c, &a, "GET", "/status/418?err=x-user-1234", &[])
            .await
            .status(),
        418
    );
    // The proxy's own error, and a name that is not a service.
    let (s, _, e) = get(&c, a.outbound, "made-up-name", "/", &[]).await;
    assert_eq!((s, e.as_deref()), (404, Some("no-route")));

    let m = scrape(&a);
    let out = |with: &[(&str, &str)]| {
        let mut all = vec![("direction", "outbound"), ("destination_service", "web")];
        all.extend_from_slice(with);
        metric(&m, "raftmesh_proxy_requests_total", &all)
    };
    let me = [
        ("source_namespace", "default"),
        ("source_service", "client"),
        ("source_identity", "spiffe://east.mesh/ns/default/sa/client"),
        ("destination_namespace", "default"),
        ("route", "web-route"),
    ];
    assert_eq!(out(&me), 7.0, "{m}");
    let ok = [
        ("rule", "1"),
        ("subset", ""),
        ("code", "200"),
        ("status_class", "2xx"),
        ("error", ""),
    ];
    assert_eq!(out(&ok), 3.0, "{m}");
    let canary = [
        ("rule", "0"),
        ("subset", "version=v1"),
        ("code", "503"),
        ("status_class", "5xx"),
    ];
    assert_eq!(out(&canary), 2.0, "{m}");
    assert_eq!(out(&[("code", "403"), ("error", "denied")]), 1.0, "{m}");
    assert_eq!(out(&[("code", "418"), ("error", "other")]), 1.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "raftmesh_proxy_requests_total",
            &[("destination_service", ""), ("error", "no-route")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "raftmesh_proxy_request_duration_seconds_count",
            &[
                ("direction", "outbound"),
                ("destination_service", "web"),
                ("route", "web-route"),
                ("status_class", "2xx")
            ]
        ),
        3.0,
        "{m}"
    );
    for never in ["secret-path", "made-up-name", "x-user-1234", "x-canary"] {
        assert!(!m.contains(never), "{never} in the metrics: {m}");
    }
    // Connections from the app, the bytes through them, and the config.
    assert!(
        metric(
            &m,
            "raftmesh_proxy_tcp_connections_opened_total",
            &[("direction", "outbound")]
        ) >= 1.0
    );
    assert!(
        metric(
            &m,
            "raftmesh_proxy_tcp_received_bytes_total",
            &[("direction", "outbound")]
        ) >= 8.0 * "GET /status/200/secret-path HTTP/1.1\r\n".len() as f64,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "raftmesh_proxy_tcp_sent_bytes_total",
            &[("direction", "outbound")]
        ) > 0.0
    );
    assert_eq!(
        metric(
            &m,
            "raftmesh_proxy_endpoints",
            &[("destination_service", "web"), ("state", "usable")]
        ),
        1.0,
        "{m}"
    );
    let web = [("destination_service", "web")];
    assert!(has(&m, "raftmesh_proxy_circuit_open", &web), "{m}");
    assert_eq!(metric(&m, "raftmesh_proxy_circuit_open", &web), 0.0);
    let applied = metric(&m, "raftmesh_proxy_config_applied_timestamp_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        applied > now - 600.0 && applied <= now + 1.0,
        "{applied} vs {now}"
    );
    let age = metric(&m, "raftmesh_proxy_config_age_seconds", &[]);
    assert!((0.0..600.0).contains(&age), "{age}");

    // The callee's proxy counts the same requests inbound (no identity:
    // these came in plaintext).
    let m = scrape(&b);
    let inb = |with: &[(&str, &str)]| {
        let mut all = vec![
            ("direction", "inbound"),
            ("destination_service", "web"),
            ("source_identity", ""),
        ];
        all.extend_from_slice(with);
        metric(&m, "raftmesh_proxy_requests_total", &all)
    };
    assert_eq!(inb(&[("code", "200")]), 3.0, "{m}");
    assert_eq!(inb(&[("code", "503")]), 2.0, "{m}");
    assert_eq!(inb(&[("code", "418"), ("error", "other")]), 1.0, "{m}");
    assert!(
        metric(
            &m,
            "raftmesh_proxy_tcp_connections_opened_total",
            &[("direction", "inbound"), ("peer_service", "")]
        ) >= 1.0
    );
    assert!(!m.contains("secret-path"), "{m}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_grpc_call_counts_its_status_from_the_headers_or_the_trailers() {
    use raftmesh_api::v1 as pb;
    // First call: UNAVAILABLE (trailers-only); then OK in trailers.
    let (app, _calls) = super::resilience::flaky_h2(Some(14), Duration::ZERO).await;
    let (p, _d) = static_proxy(&mesh("grpcsvc", &[("g-1", app, "v1")], "")).await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", p.outbound))
        .unwrap()
        .origin("http://grpcsvc".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut c = pb::raft_client::RaftClient::new(ch);
    let e = c.node_info(pb::NodeInfoRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    c.node_info(pb::NodeInfoRequest {}).await.unwrap();
    let m = scrape(&p);
    let grpc = |status: &str| {
        metric(
            &m,
            "raftmesh_proxy_requests_total",
            &[
                ("destination_service", "grpcsvc"),
                ("code", "200"),
                ("grpc_status", status),
            ],
        )
    };
    assert_eq!(grpc("14"), 1.0, "{m}");
    // Counted only once its trailers came.
    assert_eq!(grpc("0"), 1.0, "{m}");
    p.shutdown().await;
}

#[tokio::test]
async fn every_line_of_the_exposition_parses_and_the_admin_port_serves_it() {
    let app = status_app().await;
    let (p, _d) = static_proxy(&mesh("web", &[("web-1", app.addr, "v1")], "")).await;
    let (s, _, _) = get(&http_client(), p.outbound, "web", "/", &[]).await;
    assert_eq!(s, 200);
    let text = super::routing::reqwest_metrics(p.admin).await;
    // Every line is `name{labels} value` (`series` panics on a label
    // that is not quoted or a value that is not a number).
    let mut lines = 0;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        assert!(name.starts_with("raftmesh_proxy_"), "{l}");
        lines += series(&text, name).len();
    }
    assert!(lines > 20, "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    for family in [
        "raftmesh_proxy_requests",
        "raftmesh_proxy_request_duration_seconds",
        "raftmesh_proxy_tcp_connections_opened",
        "raftmesh_proxy_config_revision",
        "raftmesh_proxy_endpoints",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family}: {text}"
        );
    }
    p.shutdown().await;
}
