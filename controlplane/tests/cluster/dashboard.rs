//! The web dashboard on `--http`: its JSON is behind an admin or read-only
//! token, and in a real browser (Debian's headless `chromium`) the page
//! draws the live topology with the figures `meshctl stat -o json` prints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use raftmesh_api::v1 as pb;

use super::deploys::{app, caller_of_web, cluster_with_web_tweaked, get, http, web_proxy};
use super::support::*;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<bytes::Bytes>,
>;

/// Status, headers and body of one call to the HTTP port.
async fn call(
    h: &Client,
    method: &str,
    url: String,
    token: Option<&str>,
) -> (u16, hyper::HeaderMap, String) {
    let mut req = hyper::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        h.request(req.body(Full::default()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    let (parts, body) = r.into_parts();
    let b = body.collect().await.unwrap().to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&b).into(),
    )
}

#[test]
fn the_dashboard_api_answers_admin_and_read_only_tokens_only() {
    run(async {
        let (c, mut admin) = cluster_with_web_tweaked(with_http).await;
        let base = format!("http://{}", c.nodes[&1].http_addr.unwrap());
        let h: Client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        // The page itself holds no data: served to anyone, locked down.
        let (code, headers, page) = call(&h, "GET", format!("{base}/"), None).await;
        assert_eq!(code, 200);
        assert!(page.contains("<title>Raftmesh</title>"));
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let (code, headers, _) = call(&h, "GET", format!("{base}/app.js"), None).await;
        assert_eq!(code, 200);
        assert!(headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));
        // Every API call: no token, a made-up one, a proxy's bootstrap
        // token, are all refused, naming why, and learn nothing.
        let bootstrap = bootstrap_token(&mut admin, "web").await;
        for api in ["stat", "cluster", "proxies", "changes"] {
            let url = format!("{base}/api/{api}");
            let (code, headers, body) = call(&h, "GET", url.clone(), None).await;
            assert_eq!(code, 401, "{api}: {body}");
            assert!(headers.contains_key("www-authenticate"));
            assert!(body.contains("\"error\""), "{body}");
            assert!(!body.contains("web"), "{api} leaks: {body}");
            let (code, _, body) = call(&h, "GET", url.clone(), Some("rma_made-up")).await;
            assert_eq!(code, 401, "{api}: {body}");
            let (code, _, body) = call(&h, "GET", url.clone(), Some(&bootstrap)).await;
            assert!(code == 401 || code == 403, "{api}: {code} {body}");
            // Read-only: the whole point of the dashboard.
            let ro = read_only_token(&mut admin).await;
            let (code, _, body) = call(&h, "GET", url.clone(), Some(&ro)).await;
            assert_eq!(code, 200, "{api}: {body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap();
            // Nothing is written through it.
            let (code, _, _) = call(&h, "POST", url, Some(TOKEN)).await;
            assert_eq!(code, 405, "{api}");
        }
        // Recent changes name what changed, never a token or its content.
        let (_, _, body) = call(&h, "GET", format!("{base}/api/changes"), Some(TOKEN)).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let kinds: Vec<&str> = v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["kind"].as_str().unwrap())
            .collect();
        assert!(kinds.contains(&"Service"), "{v}");
        assert!(!kinds.contains(&"Token"), "{v}");
        assert!(!body.contains("spec"), "{body}");
        // A bad filter is refused with the field named.
        let (code, _, body) = call(
            &h,
            "GET",
            format!("{base}/api/stat?service=%0a"),
            Some(TOKEN),
        )
        .await;
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("service"), "{body}");
        c.shutdown().await;
    });
}

/// Headless Chromium on `url`, with these extra flags; its stdout.
async fn chromium(
    bin: &std::path::Path,
    dir: &std::path::Path,
    url: &str,
    flags: &[&str],
) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(bin)
            .args([
                "--headless",
                // Root in CI: Chromium's sandbox needs an unprivileged user.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1280,1100",
                // Runs the page's scripts (and their fetches) before the dump.
                "--virtual-time-budget=8000",
            ])
            .arg(format!("--user-data-dir={}", dir.display()))
            .args(flags)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished within 90 s")
    .expect("chromium ran");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into()
}

/// The attributes of every `<tag class="class...">` in a serialized DOM.
fn elements(dom: &str, tag: &str, class: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let open = format!("<{tag} ");
    let mut rest = dom;
    while let Some(i) = rest.find(&open) {
        let tail = &rest[i + open.len()..];
        let end = tail.find('>').unwrap_or(tail.len());
        let mut attrs = BTreeMap::new();
        let mut a = &tail[..end];
        while let Some(eq) = a.find("=\"") {
            let name = a[..eq].trim().to_string();
            let v = &a[eq + 2..];
            let close = v.find('"').unwrap_or(v.len());
            attrs.insert(name, v[..close].replace("&amp;", "&"));
            a = &v[(close + 1).min(v.len())..];
        }
        if attrs
            .get("class")
            .is_some_and(|c| c.split(' ').any(|x| x == class))
        {
            out.push(attrs);
        }
        rest = &tail[end..];
    }
    out
}

fn num(m: &BTreeMap<String, String>, k: &str) -> f64 {
    m[k].parse().unwrap_or_else(|_| panic!("{k} in {m:?}"))
}

/// `meshctl stat -o json` against `node`.
async fn meshctl_stat(node: SocketAddr) -> Vec<serde_json::Value> {
    let bin = raftmesh_client::bins::find("meshctl", true).expect("meshctl");
    let out = tokio::process::Command::new(bin)
        .args(["--server", &node.to_string(), "--token", TOKEN])
        .args(["stat", "-o", "json"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_dashboard_in_chromium_draws_the_live_topology_with_the_figures_of_meshctl_stat() {
    let Some(bin) = which("chromium") else {
        eprintln!("SKIPPED: no `chromium` on PATH (Debian's package; .ci/run installs it)");
        assert!(
            !required("chromium"),
            "RAFTMESH_REQUIRE_TOOLS names chromium, which is not on PATH"
        );
        return;
    };
    run(async move {
        let (c, mut admin) = cluster_with_web_tweaked(with_http).await;
        let dir = tempfile::tempdir().unwrap();
        let web_app = app("web").await;
        let token = bootstrap_token(&mut admin, "web").await;
        let web = web_proxy(&c, dir.path(), "web-1", web_app.addr, token).await;
        let frontend = caller_of_web(&c, &mut admin, dir.path(), "frontend").await;
        let h = http();
        let load = {
            let (h, out) = (h.clone(), frontend.outbound);
            tokio::spawn(async move {
                loop {
                    let _ = get(&h, out, "web").await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        eventually("the edge in the figures", Duration::from_secs(15), || {
            let mut admin = admin.clone();
            async move {
                let r = admin
                    .stat(pb::StatRequest::default())
                    .await
                    .ok()?
                    .into_inner();
                r.rows.iter().any(|r| r.from == "frontend").then_some(())
            }
        })
        .await;
        let ro = read_only_token(&mut admin).await;
        let url = format!("http://{}/#token={ro}", c.nodes[&1].http_addr.unwrap());
        // A screenshot of the live page, for the README
        // (`RAFTMESH_SCREENSHOT=path` keeps it).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let shot = dir.path().join("dashboard.png");
        chromium(
            &bin,
            &dir.path().join("profile1"),
            &url,
            &[&format!("--screenshot={}", shot.display())],
        )
        .await;
        let png = std::fs::read(&shot).expect("the screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{} bytes",
            png.len()
        );
        if let Some(keep) = std::env::var_os("RAFTMESH_SCREENSHOT") {
            std::fs::copy(&shot, keep).unwrap();
        }
        // The traffic stops and its last reports arrive: from then on the
        // counts, success rates and latencies hold still (only the rates
        // fall as quiet seconds join the minute), so the page and meshctl
        // can be held to the same figures.
        load.abort();
        let figures = |admin: &mut raftmesh_client::Admin| {
            let mut admin = admin.clone();
            async move {
                let r = admin
                    .stat(pb::StatRequest::default())
                    .await
                    .unwrap()
                    .into_inner();
                r.rows
                    .iter()
                    .map(|r| (r.requests, r.failures, r.p99_ms.to_bits()))
                    .collect::<Vec<_>>()
            }
        };
        let settle = async {
            let mut last = figures(&mut admin).await;
            loop {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let now = figures(&mut admin).await;
                if now == last {
                    return;
                }
                last = now;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), settle)
            .await
            .expect("the figures settle once the traffic stops");
        let read = std::time::Instant::now();
        let dom = chromium(&bin, &dir.path().join("profile"), &url, &["--dump-dom"]).await;
        let cli = meshctl_stat(c.addrs[&1]).await;
        let between = read.elapsed().as_secs_f64();
        assert!(
            dom.contains("data-ready=\"true\""),
            "the page never loaded its data: {dom}"
        );
        // Signed in: the form is hidden, the data shown.
        assert!(dom.contains("<section id=\"login\" hidden"), "{dom}");
        assert!(dom.contains("<main id=\"main\">"), "{dom}");
        // The token left the address bar and is in no link or text.
        assert!(!dom.contains(&ro), "the token is in the page");
        // The topology: both services, the edge between them.
        let nodes = elements(&dom, "g", "node");
        let names: Vec<&str> = nodes.iter().map(|n| n["data-service"].as_str()).collect();
        assert!(
            names.contains(&"web.default") && names.contains(&"frontend.default"),
            "{names:?}"
        );
        let edges = elements(&dom, "g", "edge");
        assert_eq!(edges.len(), 1, "{edges:?}");
        assert_eq!(
            (edges[0]["data-from"].as_str(), edges[0]["data-to"].as_str()),
            ("frontend", "web")
        );
        // The table shows what `meshctl stat -o json` prints: the same rows
        // with the same counts, success rates and latencies.
        let rows = elements(&dom, "tr", "stat");
        assert_eq!(rows.len(), cli.len(), "page {rows:?}\nmeshctl {cli:?}");
        for r in &rows {
            let from = r["data-from"].as_str();
            let twin = cli
                .iter()
                .find(|x| {
                    x["service"] == r["data-service"].as_str()
                        && x["from"].as_str().unwrap_or("") == from
                })
                .unwrap_or_else(|| panic!("meshctl has no row for {r:?}: {cli:?}"));
            assert_eq!(
                num(r, "data-requests"),
                twin["requests"].as_f64().unwrap(),
                "{r:?} {twin}"
            );
            for (attr, field) in [("data-success", "success_rate"), ("data-p99", "p99_ms")] {
                let (page, cli) = (num(r, attr), twin[field].as_f64().unwrap());
                assert!(
                    (page - cli).abs() <= 1e-9 * cli.abs().max(1.0),
                    "{attr}: {r:?} {twin}"
                );
            }
            // A rate is requests over the seconds reported, which grew
            // by the time between the two reads (reports come every second).
            let (page, cli) = (num(r, "data-rps"), twin["rps"].as_f64().unwrap());
            let requests = num(r, "data-requests");
            let grown = requests / cli - requests / page;
            assert!(
                grown > -1.5 && grown < between + 1.5,
                "rps: the page's covers {:.1}s, meshctl's {:.1}s, read {between:.1}s apart",
                requests / page,
                requests / cli
            );
        }
        let edge = &edges[0];
        assert!(num(edge, "data-success") > 0.9, "{edge:?}");
        assert!(num(edge, "data-rps") > 1.0, "{edge:?}");
        // The cluster and the proxies.
        let members = elements(&dom, "tr", "member");
        assert_eq!(members.len(), 1);
        assert_eq!(members[0]["data-state"], "leader");
        let proxies: Vec<String> = elements(&dom, "tr", "proxy")
            .iter()
            .map(|p| p["data-instance"].clone())
            .collect();
        assert!(
            proxies.iter().any(|p| p == "web-1") && proxies.iter().any(|p| p == "frontend-1"),
            "{proxies:?}"
        );
        // Without a token: the sign-in form, no data.
        let bare = format!("http://{}/", c.nodes[&1].http_addr.unwrap());
        let dom = chromium(&bin, &dir.path().join("profile2"), &bare, &["--dump-dom"]).await;
        assert!(dom.contains("data-login=\"true\""), "{dom}");
        assert!(dom.contains("<main id=\"main\" hidden"), "{dom}");
        assert!(elements(&dom, "tr", "stat").is_empty());
        frontend.shutdown().await;
        web.shutdown().await;
        c.shutdown().await;
    });
}
