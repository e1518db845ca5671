use super::*;

fn who() -> ProxyInfo {
    ProxyInfo {
        instance: "web-1".into(),
        service: "web".into(),
        namespace: "default".into(),
        node_id: 1,
        connected_since_ms: 0,
    }
}

fn edge(inbound: bool, from: &str, to: &str, requests: u64, failures: u64) -> pb::StatsEdge {
    let mut latency_buckets = vec![0; LATENCY_BUCKETS];
    latency_buckets[4] = requests;
    pb::StatsEdge {
        inbound,
        source_namespace: "default".into(),
        source_service: from.into(),
        destination_namespace: "default".into(),
        destination_service: to.into(),
        requests,
        failures,
        latency_buckets,
        ..Default::default()
    }
}

fn report(edges: Vec<pb::StatsEdge>) -> pb::Stats {
    pb::Stats {
        window_ms: 5000,
        edges,
    }
}

#[test]
fn a_proxy_reports_only_its_own_traffic() {
    assert_eq!(
        validate(&who(), &report(vec![edge(true, "frontend", "web", 3, 1)])),
        Ok(())
    );
    assert_eq!(
        validate(&who(), &report(vec![edge(false, "web", "api", 3, 1)])),
        Ok(())
    );
    // Another service's inbound traffic, or outbound traffic from another
    // service, is not this proxy's to report.
    let e = validate(&who(), &report(vec![edge(true, "frontend", "api", 3, 1)])).unwrap_err();
    assert!(e.contains("not this proxy's service default/web"), "{e}");
    let e = validate(&who(), &report(vec![edge(false, "api", "db", 3, 1)])).unwrap_err();
    assert!(e.contains("outbound edge's source"), "{e}");
}

#[test]
fn reports_that_do_not_add_up_are_refused() {
    let bad = |f: &dyn Fn(&mut pb::Stats)| {
        let mut r = report(vec![edge(true, "frontend", "web", 3, 1)]);
        f(&mut r);
        validate(&who(), &r).unwrap_err()
    };
    assert!(bad(&|r| r.window_ms = 0).contains("window_ms"));
    assert!(bad(&|r| r.window_ms = 10_000_000).contains("window_ms"));
    assert!(bad(&|r| r.edges[0].failures = 4).contains("do not add up"));
    assert!(bad(&|r| r.edges[0].local_requests = 4).contains("do not add up"));
    assert!(bad(&|r| r.edges[0].latency_buckets[0] = 1).contains("do not add up"));
    assert!(bad(&|r| r.edges[0].latency_buckets[0] = u64::MAX).contains("do not add up"));
    assert!(bad(&|r| r.edges[0].latency_buckets.push(0)).contains("latency buckets"));
    assert!(bad(&|r| r.edges[0].route = "x".repeat(300)).contains("route"));
    assert!(bad(&|r| r.edges[0].subset = "a\nb".into()).contains("subset"));
    assert!(bad(&|r| r.edges[0].destination_service = String::new()).contains("destination"));
    assert!(bad(&|r| {
        let one = r.edges[0].clone();
        r.edges = vec![one; MAX_EDGES + 1];
    })
    .contains("edges"));
}

fn session(service: &str) -> Arc<Session> {
    let mut info = who();
    info.service = service.into();
    info.instance = format!("{service}-1");
    Session::new(
        1,
        info,
        crate::discovery::scope::Scope {
            own: ("default".into(), service.into()),
            calls: Default::default(),
        },
    )
}

fn calls(services: &[&str]) -> std::collections::BTreeSet<(String, String)> {
    services
        .iter()
        .map(|s| ("default".to_string(), s.to_string()))
        .collect()
}

#[test]
fn rates_cover_the_time_each_proxy_reported_and_old_reports_age_out() {
    let web = session("web");
    let none = calls(&[]);
    // Two 5 s windows: 50 requests in 10 s.
    let r = |edges| report(edges);
    web.reports
        .push(
            5_000,
            0,
            &none,
            r(vec![edge(true, "frontend", "web", 20, 0)]),
        )
        .unwrap();
    web.reports
        .push(
            10_000,
            0,
            &none,
            r(vec![edge(true, "frontend", "web", 30, 3)]),
        )
        .unwrap();
    // A quiet proxy's empty window lowers no one else's rate.
    let web2 = session("web");
    web2.reports.push(10_000, 0, &none, r(vec![])).unwrap();
    let edges = node_edges(&[web.clone(), web2], 10_000);
    assert_eq!(edges.len(), 1);
    assert_eq!((edges[0].requests, edges[0].failures), (50, 3));
    assert!((edges[0].rps - 5.0).abs() < 1e-9, "{}", edges[0].rps);
    // A minute of quiet reports later, the first window is gone: 30
    // requests over the 60 s the kept reports cover.
    for at in (15_000..=65_000).step_by(5_000) {
        web.reports.push(at, 0, &none, r(vec![])).unwrap();
    }
    let edges = node_edges(&[web], 66_000);
    assert_eq!(edges[0].requests, 30);
    assert!((edges[0].rps - 0.5).abs() < 1e-9, "{}", edges[0].rps);
}

#[test]
fn a_proxy_cannot_raise_its_rates_with_short_windows_or_many_reports() {
    let web = session("web");
    let none = calls(&[]);
    let mut short = report(vec![edge(true, "frontend", "web", 100, 0)]);
    short.window_ms = 1;
    web.reports.push(5_000, 0, &none, short.clone()).unwrap();
    // Sooner than half a second after the last: refused.
    let e = web
        .reports
        .push(5_100, 0, &none, short.clone())
        .unwrap_err();
    assert!(e.contains("at most one every"), "{e}");
    // The window is the time since the last report as the node saw it,
    // whatever the proxy claims (1 ms, or a minute).
    let mut long = report(vec![edge(true, "frontend", "web", 100, 0)]);
    long.window_ms = 60_000;
    web.reports.push(6_000, 0, &none, long).unwrap();
    let windows: Vec<u64> = web
        .reports
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.window_ms)
        .collect();
    assert_eq!(windows, [5_000, 1_000]);
    let edges = node_edges(&[web], 6_000);
    assert!(
        (edges[0].rps - 200.0 / 6.0).abs() < 1e-9,
        "{}",
        edges[0].rps
    );
}

#[test]
fn outbound_edges_count_only_toward_services_the_proxy_calls() {
    let batch = session("batch");
    let mut forged = edge(false, "batch", "payments", 1000, 1000);
    forged.local_requests = 1000;
    forged.local_failures = 1000;
    let mut own = edge(false, "batch", "api", 10, 0);
    own.route = "api".into();
    let import = edge(false, "batch", "api.west", 5, 0);
    let dropped = batch
        .reports
        .push(
            5_000,
            0,
            &calls(&["api"]),
            report(vec![forged, own, import]),
        )
        .unwrap();
    assert_eq!(dropped, 1);
    let edges = node_edges(&[batch], 5_000);
    let to: Vec<&str> = edges.iter().map(|e| e.destination.1.as_str()).collect();
    assert_eq!(to, ["api", "api.west"]);
}

#[test]
fn a_proxy_keeps_a_bounded_number_of_different_edges() {
    let web = session("web");
    let none = calls(&[]);
    for round in 0..3u64 {
        let edges = (0..MAX_EDGES)
            .map(|i| edge(true, &format!("caller-{round}-{i}"), "web", 1, 0))
            .collect();
        web.reports
            .push(5_000 * (round + 1), 0, &none, report(edges))
            .unwrap();
    }
    assert_eq!(node_edges(&[web], 15_000).len(), MAX_KEPT_EDGES);
}

fn merged(e: pb::StatsEdge, rps: f64) -> Edge {
    Edge {
        inbound: e.inbound,
        source: (e.source_namespace, e.source_service),
        destination: (e.destination_namespace, e.destination_service),
        route: e.route,
        subset: e.subset,
        requests: e.requests,
        failures: e.failures,
        local_requests: e.local_requests,
        local_failures: e.local_failures,
        rps,
        local_rps: rps * e.local_requests as f64 / e.requests.max(1) as f64,
        buckets: e.latency_buckets,
    }
}

#[test]
fn a_request_counts_once_per_service_and_edge() {
    // frontend → web seen on both sides; web's proxy counts it. frontend's
    // proxy adds the 5 answers it made itself (no healthy endpoint).
    let mut out = edge(false, "frontend", "web", 105, 5);
    out.local_requests = 5;
    out.local_failures = 5;
    out.route = "web".into();
    let edges = vec![
        merged(edge(true, "frontend", "web", 100, 0), 10.0),
        merged(out, 10.5),
        merged(edge(true, "", "web", 10, 10), 1.0),
    ];
    let rows = rows(&edges, &Filter::default());
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let whole = rows.iter().find(|r| r.from.is_none()).unwrap();
    assert_eq!((whole.requests, whole.failures), (115, 15));
    assert!((whole.rps - 11.5).abs() < 1e-9);
    let from = rows
        .iter()
        .find(|r| r.from.as_deref() == Some("frontend"))
        .unwrap();
    assert_eq!((from.requests, from.failures), (105, 5));
    assert!((from.success_rate - 100.0 / 105.0).abs() < 1e-9);
    assert!(from.p50_ms > 0.8 && from.p50_ms <= 1.6, "{}", from.p50_ms);
    // The Route's view is the callers' side, all of it.
    let by_route = super::rows(
        &edges,
        &Filter {
            route: Some("web".into()),
            ..Filter::default()
        },
    );
    assert_eq!(by_route.len(), 1);
    assert_eq!(by_route[0].requests, 105);
    assert_eq!(by_route[0].route.as_deref(), Some("web"));
}

#[test]
fn a_service_filter_keeps_its_rows_and_its_callers_edges() {
    let edges = vec![
        merged(edge(true, "frontend", "web", 10, 0), 1.0),
        merged(edge(true, "web", "api", 20, 0), 2.0),
        merged(edge(true, "batch", "api", 30, 0), 3.0),
    ];
    let f = |s: &str| Filter {
        service: Some(s.into()),
        ..Filter::default()
    };
    let web = rows(&edges, &f("web"));
    let names: Vec<_> = web
        .iter()
        .map(|r| format!("{}<-{}", r.service, r.from.as_deref().unwrap_or("*")))
        .collect();
    // web as a whole and from frontend; its call to api as an edge, but not
    // api as a whole (that holds batch's calls too).
    assert_eq!(names, ["api<-web", "web<-*", "web<-frontend"]);
}
