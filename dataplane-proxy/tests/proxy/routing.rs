//! Routing by authority, splits and matches.

use std::collections::HashMap;

use http::Request;
use http_body_util::{BodyExt, Empty};

use super::prom::metric;
use super::support::*;

#[tokio::test]
async fn a_service_is_reached_by_forward_proxy_or_by_host_header() {
    let web = Upstream::start("web-v1").await;
    let (p, _d) = static_proxy(&mesh("web", &[("web-1", web.addr, "v1")], "")).await;
    let c = http_client();
    let (s, body, _) = get(&c, p.outbound, "web", "/x", &[]).await;
    assert_eq!((s, body.as_str()), (200, "web-v1 /x host=web"));
    // curl -x http://proxy http://web/y sends an absolute URI to the proxy.
    let raw = raw_request(
        p.outbound,
        "GET http://web/y HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.ends_with("web-v1 /y host=web"), "{raw}");
    p.shutdown().await;
}

/// Writes `text` on a new connection and reads until the server closes it.
pub async fn raw_request(addr: std::net::SocketAddr, text: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(text.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(15), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_weighted_split_follows_the_weights_within_statistical_bounds() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let route = "kind: Route\nmetadata: {name: web}\nspec:\n  service: web\n  rules:\n    - backends:\n        - {subset: {version: v1}, weight: 80}\n        - {subset: {version: v2}, weight: 20}\n";
    let (p, _d) = static_proxy(&mesh(
        "web",
        &[("web-1", v1.addr, "v1"), ("web-2", v2.addr, "v2")],
        route,
    ))
    .await;
    let c = http_client();
    let n = 1_000;
    let mut count: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        let (s, body, _) = get(&c, p.outbound, "web", "/", &[]).await;
        assert_eq!(s, 200);
        *count
            .entry(body.split(' ').next().unwrap().to_string())
            .or_default() += 1;
    }
    let v2n = count.get("v2").copied().unwrap_or(0);
    // Binomial(1000, 0.2): mean 200, sd 12.6; ±60 is ~4.7 sd.
    assert!((140..=260).contains(&v2n), "{v2n} of {n} to v2: {count:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn a_header_match_sends_the_request_to_the_canary() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let route = "kind: Route\nmetadata: {name: web}\nspec:\n  service: web\n  rules:\n    - matches: [{headers: {x-canary: \"true\"}}]\n      backends: [{subset: {version: v2}, weight: 100}]\n    - matches: [{path_prefix: /beta/, method: GET}]\n      backends: [{subset: {version: v2}, weight: 100}]\n    - backends: [{subset: {version: v1}, weight: 100}]\n";
    let (p, _d) = static_proxy(&mesh(
        "web",
        &[("web-1", v1.addr, "v1"), ("web-2", v2.addr, "v2")],
        route,
    ))
    .await;
    let c = http_client();
    for _ in 0..20 {
        assert!(get(&c, p.outbound, "web", "/", &[("x-canary", "true")])
            .await
            .1
            .starts_with("v2"));
        assert!(get(&c, p.outbound, "web", "/", &[])
            .await
            .1
            .starts_with("v1"));
        assert!(get(&c, p.outbound, "web", "/beta/x", &[])
            .await
            .1
            .starts_with("v2"));
    }
    p.shutdown().await;
}

#[tokio::test]
async fn unknown_services_and_unhealthy_endpoints_get_explained_errors() {
    let web = Upstream::start("web").await;
    let y = format!(
        "{}---\nkind: Service\nmetadata: {{name: api}}\nspec: {{}}\n---\nkind: Endpoint\nmetadata: {{name: api-1}}\nspec: {{service: api, address: 127.0.0.1, port: {}, health: unhealthy}}\n",
        mesh("web", &[("web-1", web.addr, "v1")], ""),
        web.addr.port()
    );
    let (p, _d) = static_proxy(&y).await;
    let c = http_client();
    let (s, body, e) = get(&c, p.outbound, "nowhere", "/", &[]).await;
    assert_eq!((s, e.as_deref()), (404, Some("no-route")));
    assert_eq!(body, "no-route: no route to nowhere.default\n");
    let (s, _, e) = get(&c, p.outbound, "api", "/", &[]).await;
    assert_eq!((s, e.as_deref()), (503, Some("no-healthy-endpoints")));
    let m = reqwest_metrics(p.admin).await;
    assert!(
        m.contains("raftmesh_proxy_errors_total{code=\"no-healthy-endpoints\"} 1"),
        "{m}"
    );
    let requests = |with: &[(&str, &str)]| metric(&m, "raftmesh_proxy_requests_total", with);
    assert_eq!(
        requests(&[
            ("direction", "outbound"),
            ("destination_service", "api"),
            ("code", "503"),
            ("status_class", "5xx"),
            ("error", "no-healthy-endpoints"),
        ]),
        1.0,
        "{m}"
    );
    // No route: no destination (a name the app made up is never a label).
    assert_eq!(
        requests(&[("destination_service", ""), ("error", "no-route")]),
        1.0,
        "{m}"
    );
    assert!(!m.contains("nowhere"), "{m}");
    p.shutdown().await;
}

/// GET /metrics from the admin port.
pub async fn reqwest_metrics(admin: std::net::SocketAddr) -> String {
    let c = http_client();
    let r = c
        .request(
            Request::get(format!("http://{admin}/metrics"))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn authorization_and_the_app_see_one_normal_path_and_ambiguous_ones_are_refused() {
    let app = Upstream::start("app").await;
    let y = format!(
        "{}---\nkind: Policy\nmetadata: {{name: no-admin}}\nspec: {{service: client, action: deny, to: [{{paths: [/admin]}}]}}\n",
        mesh("web", &[], "")
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("static.yaml");
    std::fs::write(&f, y).unwrap();
    let mut c = base_config();
    c.config_file = Some(f);
    c.app_port = Some(app.addr.port());
    let p = raftmesh_dataplane_proxy::start(c).await.unwrap();
    let inbound = p.inbound.unwrap();
    let req =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: client\r\nConnection: close\r\n\r\n");
    // Every spelling of /admin is denied.
    for path in [
        "/admin",
        "/%61dmin",
        "//admin",
        "/x/../admin",
        "/./admin/",
        "/%2e%2e/admin",
    ] {
        let r = raw_request(inbound, &req(path)).await;
        assert!(r.starts_with("HTTP/1.1 403"), "{path}: {r}");
        assert!(r.contains("x-raftmesh-error: denied"), "{path}: {r}");
    }
    // Ambiguous encodings are refused before anyone reads them.
    for path in ["/public%2F..%2Fadmin", "/a%5cb", "/a%zz"] {
        let r = raw_request(inbound, &req(path)).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{path}: {r}");
        assert!(r.contains("x-raftmesh-error: bad-path"), "{path}: {r}");
    }
    // The app receives the normal path, the query untouched.
    let r = raw_request(inbound, &req("/docs//a/./b/../%63?q=%2F")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.ends_with("app /docs/a/c host=client"), "{r}");
    assert_eq!(app.hits(), 1, "nothing refused reached the app");
    p.shutdown().await;
}

#[tokio::test]
async fn a_host_that_is_not_a_service_name_gets_400_and_is_never_looked_up() {
    let web = Upstream::start("web").await;
    let (p, _d) = static_proxy(&mesh("web", &[("web-1", web.addr, "v1")], "")).await;
    for host in ["we_b", "web.pr%d", "-x", "a..b"] {
        let r = raw_request(
            p.outbound,
            &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 400"), "{host}: {r}");
        assert!(r.contains("x-raftmesh-error: bad-request"), "{host}: {r}");
    }
    let (s, _, _) = get(&http_client(), p.outbound, "web", "/", &[]).await;
    assert_eq!(s, 200);
    p.shutdown().await;
}
