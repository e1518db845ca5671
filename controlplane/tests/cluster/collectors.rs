//! Real collectors: Debian's `prometheus` scrapes a meshd node and two
//! proxies from a generated scrape config, and its query API answers the
//! request rate of a live edge; the Grafana dashboard in
//! `docs/observability/` only queries series the programs export.

use std::time::Duration;

use super::deploys::{app, caller_of_web, cluster_with_web_tweaked, get, http, web_proxy};
use super::support::*;

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The JSON of a Prometheus API query.
async fn query(h: &super::deploys::Client, prom: u16, q: &str) -> serde_json::Value {
    let qs: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", q)
        .finish();
    let req = hyper::Request::get(format!("http://127.0.0.1:{prom}/api/v1/query?{qs}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), h.request(req)).await {
        Ok(Ok(r)) => {
            use http_body_util::BodyExt;
            let b = r.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null)
        }
        _ => serde_json::Value::Null,
    }
}

/// The first value of an instant-vector answer.
fn first_value(v: &serde_json::Value) -> Option<f64> {
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_meshd_and_proxies_and_answers_the_rate_of_a_live_edge() {
    let Some(bin) = which("prometheus") else {
        eprintln!("SKIPPED: no `prometheus` on PATH (Debian's package; .ci/run installs it)");
        assert!(
            !required("prometheus"),
            "RAFTMESH_REQUIRE_TOOLS names prometheus, which is not on PATH"
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
        let node = c.nodes.values().next().unwrap().http_addr.unwrap();
        // The scrape config, generated from where everything listens.
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: meshd\n    static_configs: [{{targets: ['{node}']}}]\n  - job_name: mesh-proxy\n    static_configs: [{{targets: ['{}', '{}']}}]\n",
            frontend.admin, web.admin
        );
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config).unwrap();
        let port = free_port();
        let mut prom = tokio::process::Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Live traffic frontend → web while Prometheus scrapes.
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
        eventually("every target up", Duration::from_secs(30), || {
            let h = h.clone();
            async move {
                let v = query(&h, port, "sum(up)").await;
                (first_value(&v) == Some(3.0)).then_some(())
            }
        })
        .await;
        let edge = r#"sum(rate(raftmesh_proxy_requests_total{direction="inbound",source_service="frontend",destination_service="web",code="200"}[5s]))"#;
        let rate = eventually("the edge's request rate", Duration::from_secs(30), || {
            let h = h.clone();
            async move { first_value(&query(&h, port, edge).await).filter(|r| *r > 1.0) }
        })
        .await;
        // About 50/s are sent (one every 20 ms plus the answer's time).
        assert!(rate > 1.0 && rate < 200.0, "{rate} requests/s");
        let leader = query(&h, port, "sum(raftmesh_raft_is_leader)").await;
        assert_eq!(first_value(&leader), Some(1.0), "{leader}");
        load.abort();
        let _ = prom.kill().await;
        frontend.shutdown().await;
        web.shutdown().await;
        c.shutdown().await;
    });
}

#[test]
fn the_grafana_dashboard_and_the_docs_name_exactly_the_series_meshd_and_the_proxies_export() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/docs/observability/grafana-dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    let mut queried = std::collections::BTreeSet::new();
    for p in json["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let mut rest = t["expr"].as_str().unwrap();
            while let Some(i) = rest.find("raftmesh_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                queried.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    assert!(queried.len() > 15, "{queried:?}");
    let families: Vec<(String, &str)> = raftmesh_dataplane_proxy::metrics::Metrics::new()
        .families()
        .iter()
        .chain(raftmesh_controlplane::metrics::NodeMetrics::new().families())
        .cloned()
        .collect();
    // The names a family's series have: a counter's end `_total`, a
    // histogram's `_bucket`, `_count` and `_sum`, a gauge's are its own.
    let series_of = |(f, kind): &(String, &str)| -> Vec<String> {
        match *kind {
            "counter" => vec![format!("{f}_total")],
            "histogram" => ["_bucket", "_count", "_sum"]
                .iter()
                .map(|s| format!("{f}{s}"))
                .collect(),
            _ => vec![f.clone()],
        }
    };
    let exported: Vec<String> = families.iter().flat_map(series_of).collect();
    for name in &queried {
        assert!(
            exported.contains(name),
            "the dashboard queries {name}, which nothing exports"
        );
    }
    // Every series is documented, under the name it is scraped by.
    let doc = std::fs::read_to_string(format!("{root}/docs/observability.md")).unwrap();
    for f in &families {
        let name = series_of(f).swap_remove(0);
        let name = name.trim_end_matches("_bucket");
        assert!(doc.contains(name), "{name} is not in docs/observability.md");
    }
}
