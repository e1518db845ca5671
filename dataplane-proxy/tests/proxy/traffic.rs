//! Traffic policy on real sockets through two proxies (the caller's
//! outbound, then each callee's inbound to its app): matching, rewrites,
//! header changes, redirects, mirroring, least-request, consistent
//! hashing, zone spill-over, local rate limits and fault injection.
//! Statistical tests state their bounds.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use raftmesh_dataplane_proxy::Proxy;
use tokio::net::TcpListener;

use super::support::*;

/// An app that answers `<name> <method> <path?query>` and then each request
/// header as `name: value` on a line, after a delay.
#[derive(Clone)]
pub(super) struct Echo {
    pub(super) hits: Arc<AtomicUsize>,
    pub(super) addr: SocketAddr,
    /// `<method> <path> mirror=<x-raftmesh-mirror> <body>` per request.
    pub(super) seen: Arc<std::sync::Mutex<Vec<String>>>,
}

pub(super) async fn echo(name: &'static str, delay: Duration) -> Echo {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = Echo {
        hits: Arc::default(),
        addr: l.local_addr().unwrap(),
        seen: Arc::default(),
    };
    let (hits, seen) = (e.hits.clone(), e.seen.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (hits, seen) = (hits.clone(), seen.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let seen = seen.clone();
                    async move {
                        tokio::time::sleep(delay).await;
                        let mut body = format!(
                            "{name} {} {}\n",
                            req.method(),
                            req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
                        );
                        for (k, v) in req.headers() {
                            body += &format!("{k}: {}\n", v.to_str().unwrap_or("?"));
                        }
                        let (parts, b) = req.into_parts();
                        use http_body_util::BodyExt;
                        let got = b.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        seen.lock().unwrap().push(format!(
                            "{} {} mirror={} {}",
                            parts.method,
                            parts.uri.path(),
                            parts
                                .headers
                                .get("x-raftmesh-mirror")
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default(),
                            String::from_utf8_lossy(&got)
                        ));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    e
}

/// A callee's proxy: service `web`, inbound to `app`, holding `yaml`.
pub(super) async fn callee(app: &Echo, yaml: &str) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("callee.yaml");
    std::fs::write(
        &f,
        format!("kind: Service\nmetadata: {{name: web}}\nspec: {{}}\n{yaml}"),
    )
    .unwrap();
    let mut c = base_config();
    c.config_file = Some(f);
    c.service = "web".into();
    c.app_port = Some(app.addr.port());
    (raftmesh_dataplane_proxy::start(c).await.unwrap(), dir)
}

/// The caller's proxy (service `client`, in `locality`): service `web`
/// with one endpoint per (name, callee inbound, extra spec fields).
pub(super) async fn caller(
    endpoints: &[(&str, SocketAddr, &str)],
    route: &str,
    locality: &str,
) -> (Proxy, tempfile::TempDir) {
    let mut y = "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n".to_string();
    for (name, at, extra) in endpoints {
        y += &format!(
            "---\nkind: Endpoint\nmetadata: {{name: {name}}}\nspec: {{service: web, address: 127.0.0.1, port: {}{extra}}}\n",
            at.port()
        );
    }
    y += "---\n";
    y += route;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("caller.yaml");
    std::fs::write(&f, y).unwrap();
    let mut c = base_config();
    c.config_file = Some(f);
    c.locality = locality.into();
    (raftmesh_dataplane_proxy::start(c).await.unwrap(), dir)
}

/// Sends `req` (Host `web`) through the caller's outbound port.
pub(super) async fn send(
    c: &HttpClient,
    p: &Proxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response<String> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", p.outbound))
        .header("host", "web");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let r = c
        .request(b.body(Default::default()).unwrap())
        .await
        .unwrap();
    let (parts, body) = r.into_parts();
    use http_body_util::BodyExt;
    let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Response::from_parts(parts, body)
}

#[tokio::test]
async fn exact_regex_query_header_regex_and_presence_matches_pick_the_rule() {
    let (v1, v2) = (
        echo("v1", Duration::ZERO).await,
        echo("v2", Duration::ZERO).await,
    );
    let (b1, _d1) = callee(&v1, "").await;
    let (b2, _d2) = callee(&v2, "").await;
    let route = r#"kind: Route
metadata: {name: web}
spec:
  service: web
  rules:
  - matches: [{path: {exact: /exact}}]
    backends: [{subset: {version: v2}, weight: 100}]
  - matches: [{path: {regex: "/users/[0-9]+"}}]
    backends: [{subset: {version: v2}, weight: 100}]
  - matches:
    - query_params: [{name: beta, exact: "1"}]
    - header_matches: [{name: x-debug, present: true}]
    backends: [{subset: {version: v2}, weight: 100}]
  - matches: [{method: GET, header_matches: [{name: x-user, regex: "adm[a-z]*"}, {name: x-block, present: false}]}]
    backends: [{subset: {version: v2}, weight: 100}]
  - backends: [{subset: {version: v1}, weight: 100}]
"#;
    let (a, _da) = caller(
        &[
            ("web-1", b1.inbound.unwrap(), ", labels: {version: v1}"),
            ("web-2", b2.inbound.unwrap(), ", labels: {version: v2}"),
        ],
        route,
        "",
    )
    .await;
    let c = http_client();
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("GET", "/exact", &[], "v2"),
        ("GET", "/exact/", &[], "v1"),
        ("GET", "/exactly", &[], "v1"),
        ("GET", "/users/42", &[], "v2"),
        // Anchored at both ends.
        ("GET", "/users/42/x", &[], "v1"),
        ("GET", "/x/users/42", &[], "v1"),
        ("GET", "/users/4x", &[], "v1"),
        ("GET", "/x?beta=1", &[], "v2"),
        ("GET", "/x?alpha=0&beta=1", &[], "v2"),
        ("GET", "/x?beta=2", &[], "v1"),
        ("GET", "/x?betax=1", &[], "v1"),
        ("GET", "/x", &[("x-debug", "")], "v2"),
        ("GET", "/x", &[("x-user", "admin")], "v2"),
        ("GET", "/x", &[("x-user", "xadmin")], "v1"),
        ("POST", "/x", &[("x-user", "admin")], "v1"),
        ("GET", "/x", &[("x-user", "admin"), ("x-block", "1")], "v1"),
    ];
    for (method, path, headers, want) in cases {
        let r = send(&c, &a, method, path, headers).await;
        assert_eq!(r.status(), 200, "{method} {path} {headers:?}: {}", r.body());
        assert!(
            r.body().starts_with(&format!("{want} ")),
            "{method} {path} {headers:?} reached {}",
            r.body()
        );
    }
    for p in [a, b1, b2] {
        p.shutdown().await;
    }
}

#[tokio::test]
async fn rewrites_and_header_changes_reach_the_callee_and_the_caller() {
    let app = echo("app", Duration::ZERO).await;
    let (b, _db) = callee(&app, "").await;
    let route = r#"kind: Route
metadata: {name: web}
spec:
  service: web
  rules:
  - matches: [{path_prefix: /api/}, {path: {prefix: /v1/}}]
    rewrite: {path_prefix: /internal/, host: "web-internal.example:8080"}
    request_headers: {set: {x-env: prod}, add: {x-tag: mesh}, remove: [x-secret]}
    response_headers: {set: {cache-control: no-store}, add: {x-served-by: raftmesh}, remove: [x-powered-by]}
  - {}
"#;
    let (a, _da) = caller(&[("web-1", b.inbound.unwrap(), "")], route, "").await;
    let c = http_client();
    let r = send(
        &c,
        &a,
        "GET",
        "/api/items?id=7",
        &[("x-env", "dev"), ("x-tag", "app"), ("x-secret", "s3cret")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let body = r.body();
    assert!(body.starts_with("app GET /internal/items?id=7\n"), "{body}");
    assert!(
        body.contains("\nhost: web-internal.example:8080\n"),
        "{body}"
    );
    assert!(
        body.contains("\nx-env: prod\n") && !body.contains("x-env: dev"),
        "{body}"
    );
    assert!(
        body.contains("\nx-tag: app\n") && body.contains("\nx-tag: mesh\n"),
        "{body}"
    );
    assert!(!body.contains("x-secret"), "{body}");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["x-served-by"], "raftmesh");
    // The second match's prefix is the one replaced.
    let r = send(&c, &a, "GET", "/v1/x", &[]).await;
    assert!(
        r.body().starts_with("app GET /internal/x\n"),
        "{}",
        r.body()
    );
    // Another rule: untouched.
    let r = send(&c, &a, "GET", "/other", &[("x-secret", "s")]).await;
    assert!(r.body().starts_with("app GET /other\n"), "{}", r.body());
    assert!(r.body().contains("\nx-secret: s\n"));
    assert!(r.body().contains("\nhost: web\n"), "{}", r.body());
    assert!(r.headers().get("x-served-by").is_none());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_redirect_is_answered_by_the_caller_s_proxy_and_never_reaches_the_callee() {
    let app = echo("app", Duration::ZERO).await;
    let (b, _db) = callee(&app, "").await;
    let route = r#"kind: Route
metadata: {name: web}
spec:
  service: web
  rules:
  - matches: [{path_prefix: /old/}]
    redirect: {path_prefix: /new/, status: 301}
  - matches: [{path: {exact: /login}}]
    redirect: {scheme: https, host: auth.example.com}
  - {}
"#;
    let (a, _da) = caller(&[("web-1", b.inbound.unwrap(), "")], route, "").await;
    let c = http_client();
    let r = send(&c, &a, "GET", "/old/page?q=1", &[]).await;
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "http://web/new/page?q=1");
    let r = send(&c, &a, "POST", "/login", &[]).await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "https://auth.example.com/login");
    assert_eq!(app.hits.load(Ordering::SeqCst), 0);
    let r = send(&c, &a, "GET", "/oldish", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.hits.load(Ordering::SeqCst), 1);
    a.shutdown().await;
    b.shutdown().await;
}

/// Three callees, e1..e3, and a caller with `route` over them.
async fn three(
    route: &str,
) -> (
    Vec<Echo>,
    Vec<(Proxy, tempfile::TempDir)>,
    Proxy,
    tempfile::TempDir,
) {
    let mut apps = Vec::new();
    let mut callees = Vec::new();
    for name in ["e1", "e2", "e3"] {
        let e = echo(name, Duration::ZERO).await;
        callees.push(callee(&e, "").await);
        apps.push(e);
    }
    let eps: Vec<(String, SocketAddr)> = callees
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (format!("web-{}", i + 1), p.inbound.unwrap()))
        .collect();
    let eps: Vec<(&str, SocketAddr, &str)> =
        eps.iter().map(|(n, a)| (n.as_str(), *a, "")).collect();
    let (a, d) = caller(&eps, route, "").await;
    (apps, callees, a, d)
}

#[tokio::test]
async fn consistent_hashing_keeps_each_key_on_one_endpoint_by_header_or_cookie() {
    let route = "kind: Route\nmetadata: {name: web}\nspec: {service: web, load_balancer: consistent-hash, hash_on: {header: x-user}}\n";
    let (_apps, callees, a, _d) = three(route).await;
    let c = http_client();
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..12 {
        let id = format!("user-{user}");
        let mut at = std::collections::BTreeSet::new();
        for _ in 0..8 {
            let r = send(&c, &a, "GET", "/", &[("x-user", &id)]).await;
            at.insert(r.body()[..2].to_string());
        }
        assert_eq!(at.len(), 1, "{id} reached {at:?}");
        seen.extend(at);
    }
    // 12 keys over 3 endpoints: all on one has chance 3·(1/3)^12 ≈ 6e-6.
    assert!(seen.len() >= 2, "{seen:?}");
    a.shutdown().await;
    // By cookie, among other cookies.
    let route = "kind: Route\nmetadata: {name: web}\nspec: {service: web, load_balancer: consistent-hash, hash_on: {cookie: session}}\n";
    let eps: Vec<(String, SocketAddr)> = callees
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (format!("web-{}", i + 1), p.inbound.unwrap()))
        .collect();
    let eps: Vec<(&str, SocketAddr, &str)> =
        eps.iter().map(|(n, a)| (n.as_str(), *a, "")).collect();
    let (a, _d2) = caller(&eps, route, "").await;
    for s in 0..6 {
        let mut at = std::collections::BTreeSet::new();
        for k in 0..6 {
            let cookie = format!("theme=dark{k}; session=s{s}; lang=en");
            let r = send(&c, &a, "GET", "/", &[("cookie", &cookie)]).await;
            at.insert(r.body()[..2].to_string());
        }
        assert_eq!(at.len(), 1, "session s{s} reached {at:?}");
    }
    a.shutdown().await;
    for (p, _) in callees {
        p.shutdown().await;
    }
}

#[tokio::test]
async fn least_request_sends_new_requests_away_from_a_slow_endpoint() {
    let fast = echo("fast", Duration::ZERO).await;
    let slow = echo("slow", Duration::from_millis(400)).await;
    let (bf, _df) = callee(&fast, "").await;
    let (bs, _ds) = callee(&slow, "").await;
    let route =
        "kind: Route\nmetadata: {name: web}\nspec: {service: web, load_balancer: least-request}\n";
    let (a, _da) = caller(
        &[
            ("web-1", bf.inbound.unwrap(), ""),
            ("web-2", bs.inbound.unwrap(), ""),
        ],
        route,
        "",
    )
    .await;
    let c = http_client();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (c, out) = (c.clone(), a.outbound);
        tasks.push(tokio::spawn(async move {
            get(&c, out, "web", "/", &[]).await.0
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // The slow endpoint holds each request 400 ms: once it has one in
    // flight, every later pick compares 1+ against the fast one's ~0. Round
    // robin would send it 50.
    let to_slow = slow.hits.load(Ordering::SeqCst);
    assert!(to_slow <= 5, "{to_slow} of 100 went to the slow endpoint");
    for p in [a, bf, bs] {
        p.shutdown().await;
    }
}

#[tokio::test]
async fn the_caller_s_zone_spills_over_when_too_few_of_its_endpoints_are_usable() {
    let near = echo("near", Duration::ZERO).await;
    let far = echo("far", Duration::ZERO).await;
    let (bn, _dn) = callee(&near, "").await;
    let (bf, _df) = callee(&far, "").await;
    let run = |unhealthy: usize| {
        let (bn, bf) = (bn.inbound.unwrap(), bf.inbound.unwrap());
        async move {
            let mut eps = vec![("far-0", bf, ", locality: zone-b")];
            for (i, name) in ["near-0", "near-1", "near-2", "near-3"]
                .into_iter()
                .enumerate()
            {
                eps.push((
                    name,
                    bn,
                    if i < unhealthy {
                        ", locality: zone-a, health: unhealthy"
                    } else {
                        ", locality: zone-a"
                    },
                ));
            }
            caller(
                &eps,
                "kind: Route\nmetadata: {name: web}\nspec: {service: web}\n",
                "zone-a",
            )
            .await
        }
    };
    let c = http_client();
    // One of four usable: the zone keeps 1.4 × 25 % = 35 % of the traffic.
    let (a, _da) = run(3).await;
    let n = 1_000;
    for _ in 0..n {
        assert_eq!(get(&c, a.outbound, "web", "/", &[]).await.0, 200);
    }
    let (to_near, to_far) = (
        near.hits.load(Ordering::SeqCst),
        far.hits.load(Ordering::SeqCst),
    );
    assert_eq!(to_near + to_far, n);
    // Binomial(1000, 0.35): sd 15; 4 sd either side.
    assert!(
        (290..=410).contains(&to_near),
        "{to_near} of {n} stayed in the zone"
    );
    a.shutdown().await;
    // Every zone endpoint healthy: nothing leaves the zone.
    near.hits.store(0, Ordering::SeqCst);
    far.hits.store(0, Ordering::SeqCst);
    let (a, _da) = run(0).await;
    for _ in 0..200 {
        assert_eq!(get(&c, a.outbound, "web", "/", &[]).await.0, 200);
    }
    assert_eq!(
        far.hits.load(Ordering::SeqCst),
        0,
        "spilled while the zone was whole"
    );
    a.shutdown().await;
    bn.shutdown().await;
    bf.shutdown().await;
}

#[tokio::test]
async fn the_callee_s_proxy_keeps_the_route_s_rate_limit_with_429_rate_limited() {
    let app = echo("app", Duration::ZERO).await;
    let limit = "---\nkind: Route\nmetadata: {name: web}\nspec: {service: web, rate_limit: {requests_per_second: 2, burst: 5}}\n";
    let (b, _db) = callee(&app, limit).await;
    let (a, _da) = caller(
        &[("web-1", b.inbound.unwrap(), "")],
        "kind: Route\nmetadata: {name: web}\nspec: {service: web}\n",
        "",
    )
    .await;
    let c = http_client();
    let t0 = std::time::Instant::now();
    let mut ok = 0;
    for _ in 0..20 {
        match get(&c, a.outbound, "web", "/", &[]).await {
            (200, _, None) => ok += 1,
            (429, body, Some(code)) => {
                assert_eq!(code, "rate-limited");
                assert!(body.contains("rate_limit"), "{body}");
            }
            other => panic!("{other:?}"),
        }
    }
    // The burst, plus 2 a second for the time the loop took.
    let refill = (t0.elapsed().as_secs_f64() * 2.0).floor() as usize;
    assert!(
        (5..=5 + refill).contains(&ok),
        "{ok} admitted in {:?}",
        t0.elapsed()
    );
    assert_eq!(
        app.hits.load(Ordering::SeqCst),
        ok,
        "refused requests never reached the app"
    );
    // Tokens come back at the rate.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(get(&c, a.outbound, "web", "/", &[]).await.0, 200);
    a.shutdown().await;
    b.shutdown().await;
}

/// POSTs `body` (Host `web`) through the caller's outbound port.
async fn post(p: &Proxy, path: &str, body: Vec<u8>) -> u16 {
    let c: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let r = c
        .request(
            Request::post(format!("http://{}{path}", p.outbound))
                .header("host", "web")
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
        .await
        .unwrap();
    r.status().as_u16()
}

#[tokio::test]
async fn mirroring_copies_a_share_with_its_body_and_never_holds_the_primary() {
    let v1 = echo("v1", Duration::ZERO).await;
    // The mirror answers only after 3 s.
    let v2 = echo("v2", Duration::from_secs(3)).await;
    let next = echo("next", Duration::ZERO).await;
    let (b1, _d1) = callee(&v1, "").await;
    let (b2, _d2) = callee(&v2, "").await;
    let (bn, _dn) = callee(&next, "").await;
    let route = r#"kind: Route
metadata: {name: web}
spec:
  service: web
  rules:
  - matches: [{path_prefix: /all}]
    backends: [{subset: {version: v1}, weight: 100}]
    mirror: {subset: {version: v2}, percent: 100, max_body_bytes: 1024}
  - matches: [{path_prefix: /some}]
    backends: [{subset: {version: v1}, weight: 100}]
    mirror: {service: web-next, percent: 30}
"#;
    let next_svc = format!(
        "---\nkind: Service\nmetadata: {{name: web-next}}\nspec: {{ports: [{{port: 80}}]}}\n---\nkind: Endpoint\nmetadata: {{name: next-1}}\nspec: {{service: web-next, address: 127.0.0.1, port: {}}}\n",
        bn.inbound.unwrap().port()
    );
    let (a, _da) = caller(
        &[
            ("web-1", b1.inbound.unwrap(), ", labels: {version: v1}"),
            ("web-2", b2.inbound.unwrap(), ", labels: {version: v2}"),
        ],
        &format!("{route}{next_svc}"),
        "",
    )
    .await;
    // Every request copied, body and all; the primary answers long before
    // the mirror's 3 s (functional: it does not wait for the copy).
    let t0 = std::time::Instant::now();
    for i in 0..5 {
        assert_eq!(
            post(&a, "/all", format!("hello {i}").into_bytes()).await,
            200
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // A body past max_body_bytes is sent to the primary only.
    assert_eq!(post(&a, "/all", vec![b'x'; 4096]).await, 200);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let mut copies = v2.seen.lock().unwrap().clone();
    copies.sort();
    let want: Vec<String> = (0..5)
        .map(|i| format!("POST /all mirror=true hello {i}"))
        .collect();
    assert_eq!(copies, want);
    assert_eq!(v1.hits.load(Ordering::SeqCst), 6);
    assert!(v1
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.contains(" mirror= ")));

    // 30 % to another service (Binomial(600, 0.3): sd 11.2, 4 sd).
    let c = http_client();
    for _ in 0..600 {
        assert_eq!(get(&c, a.outbound, "web", "/some", &[]).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let copied = next.hits.load(Ordering::SeqCst);
    assert!((135..=225).contains(&copied), "{copied} of 600 copied");
    for p in [a, b1, b2, bn] {
        p.shutdown().await;
    }
}

#[tokio::test]
async fn faults_are_injected_by_the_caller_s_proxy_in_front_of_the_callee_s() {
    let app = echo("app", Duration::ZERO).await;
    let (b, _db) = callee(&app, "").await;
    let route = "kind: Route\nmetadata: {name: web}\nspec:\n  service: web\n  fault:\n    header: {name: x-chaos, value: \"on\"}\n    delay: {fixed: 200ms, percent: 100}\n    abort: {http_status: 503, percent: 50}\n";
    let (a, _da) = caller(&[("web-1", b.inbound.unwrap(), "")], route, "").await;
    let c = http_client();
    // Without the header: through both proxies to the app, untouched.
    for _ in 0..10 {
        assert_eq!(get(&c, a.outbound, "web", "/", &[]).await.0, 200);
    }
    assert_eq!(app.hits.load(Ordering::SeqCst), 10);
    // With it: every request delayed, half aborted before leaving the
    // caller's proxy (Binomial(200, 0.5): sd 7.1, 4 sd either side).
    let t0 = std::time::Instant::now();
    let mut aborted = 0;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let c = c.clone();
        let out = a.outbound;
        tasks.push(tokio::spawn(async move {
            get(&c, out, "web", "/", &[("x-chaos", "on")]).await
        }));
    }
    for t in tasks {
        match t.await.unwrap() {
            (200, _, None) => {}
            (503, _, Some(code)) if code == "fault-injected" => aborted += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(t0.elapsed() >= Duration::from_millis(200), "not delayed");
    assert!((72..=128).contains(&aborted), "{aborted} of 200 aborted");
    // Aborted requests never reached the callee's proxy or the app.
    assert_eq!(app.hits.load(Ordering::SeqCst), 10 + 200 - aborted);
    a.shutdown().await;
    b.shutdown().await;
}
