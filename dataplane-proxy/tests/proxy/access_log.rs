//! Access logs (`MeshConfig.access_log`) through two proxies: one JSON
//! object per request on each side, sharing the trace id, with the route,
//! endpoint, identities, status, error code, durations and bytes, and
//! never a header value, a body or a query.

use std::time::Duration;

use super::support::*;
use super::traffic::{callee, caller, echo, send};

fn mesh_config(file: &std::path::Path, extra: &str) -> String {
    format!(
        "---\nkind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{trust_domain: east.mesh, access_log: {{file: '{}'{extra}}}}}\n",
        file.display()
    )
}

/// The JSON records in `file`, once it holds `n`.
async fn records(file: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never held {n} records", file.display());
}

#[tokio::test]
async fn each_side_logs_one_json_record_per_request_and_no_secrets() {
    let logs = tempfile::tempdir().unwrap();
    let (caller_log, callee_log) = (
        logs.path().join("caller.log"),
        logs.path().join("callee.log"),
    );
    let app = echo("app", Duration::ZERO).await;
    let (b, _db) = callee(&app, &mesh_config(&callee_log, "")).await;
    let route = format!(
        "kind: Route\nmetadata: {{name: web}}\nspec: {{service: web}}\n{}",
        mesh_config(&caller_log, "")
    );
    let (a, _da) = caller(&[("web-1", b.inbound.unwrap(), "")], &route, "").await;
    let c = http_client();
    let r = send(
        &c,
        &a,
        "GET",
        "/items?token=s3cr3t",
        &[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-api-key", "hunter2"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let body_len = r.body().len() as u64;
    let (s, _, e) = get(&c, a.outbound, "nosuch", "/", &[]).await;
    assert_eq!((s, e.as_deref()), (404, Some("no-route")));

    let out = records(&caller_log, 2).await;
    let first = &out[0];
    assert_eq!(first["direction"], "outbound");
    assert_eq!(first["status"], 200);
    assert_eq!(first["service"], "web");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/items");
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(first["source"], "spiffe://east.mesh/ns/default/sa/client");
    assert_eq!(first["endpoint"], b.inbound.unwrap().to_string());
    assert_eq!(first["response_bytes"], body_len);
    assert!(first["duration_ms"].as_f64().unwrap() >= first["head_ms"].as_f64().unwrap());
    assert!(first.get("error").is_none());
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(out[1]["status"], 404);
    assert_eq!(out[1]["error"], "no-route");

    let inb = records(&callee_log, 1).await;
    assert_eq!(inb[0]["direction"], "inbound");
    assert_eq!(inb[0]["status"], 200);
    assert_eq!(
        inb[0]["destination"],
        "spiffe://east.mesh/ns/default/sa/web"
    );
    assert_eq!(inb[0]["trace_id"], first["trace_id"]);
    assert_eq!(inb[0]["response_bytes"], body_len);

    // Never a header value, a body or a query.
    for f in [&caller_log, &callee_log] {
        let text = std::fs::read_to_string(f).unwrap();
        for secret in ["hunter2", "s3cr3t", "x-api-key", "app GET"] {
            assert!(
                !text.contains(secret),
                "{secret} in {}: {text}",
                f.display()
            );
        }
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn sampling_zero_logs_nothing() {
    let logs = tempfile::tempdir().unwrap();
    let file = logs.path().join("none.log");
    let app = echo("app", Duration::ZERO).await;
    let (b, _db) = callee(&app, "").await;
    let route = format!(
        "kind: Route\nmetadata: {{name: web}}\nspec: {{service: web}}\n{}",
        mesh_config(&file, ", sample_percent: 0")
    );
    let (a, _da) = caller(&[("web-1", b.inbound.unwrap(), "")], &route, "").await;
    let c = http_client();
    for _ in 0..20 {
        assert_eq!(get(&c, a.outbound, "web", "/", &[]).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!file.exists(), "a record was written at sample_percent 0");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_log_file_that_is_a_symbolic_link_is_not_written_through() {
    let logs = tempfile::tempdir().unwrap();
    let victim = logs.path().join("victim.log");
    std::fs::write(&victim, "untouched\n").unwrap();
    let link = logs.path().join("link.log");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let app = echo("app", Duration::ZERO).await;
    let (b, _db) = callee(&app, "").await;
    let route = format!(
        "kind: Route\nmetadata: {{name: web}}\nspec: {{service: web}}\n{}",
        mesh_config(&link, "")
    );
    let (a, _da) = caller(&[("web-1", b.inbound.unwrap(), "")], &route, "").await;
    let c = http_client();
    assert_eq!(get(&c, a.outbound, "web", "/", &[]).await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The record went to stdout instead.
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn an_opaque_tcp_connection_gets_one_record_on_each_side_with_bytes_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let logs = tempfile::tempdir().unwrap();
    let (out_log, in_log) = (logs.path().join("a.log"), logs.path().join("b.log"));
    // An app that answers "pong" to whatever it gets, then closes.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = app.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"pong\n").await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("b.yaml");
    std::fs::write(
        &f,
        format!(
            "kind: Service\nmetadata: {{name: app}}\nspec: {{}}\n{}",
            mesh_config(&in_log, "")
        ),
    )
    .unwrap();
    let mut c = base_config();
    c.config_file = Some(f);
    c.service = "app".into();
    c.app_port = Some(app_port);
    let b = raftmesh_dataplane_proxy::start(c).await.unwrap();
    let f = dir.path().join("a.yaml");
    std::fs::write(
        &f,
        format!(
            "kind: Service\nmetadata: {{name: db}}\nspec: {{ports: [{{port: 80, protocol: tcp}}]}}\n---\nkind: Endpoint\nmetadata: {{name: db-1}}\nspec: {{service: db, address: 127.0.0.1, port: {}}}\n{}",
            b.inbound.unwrap().port(),
            mesh_config(&out_log, "")
        ),
    )
    .unwrap();
    let mut c = base_config();
    c.config_file = Some(f);
    c.upstreams = vec![("db".into(), "127.0.0.1:0".parse().unwrap())];
    let a = raftmesh_dataplane_proxy::start(c).await.unwrap();
    let mut s = tokio::net::TcpStream::connect(a.upstreams[0].1)
        .await
        .unwrap();
    s.write_all(b"ping, not HTTP\n").await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"pong\n");
    drop(s);
    let out = &records(&out_log, 1).await[0];
    assert_eq!(out["protocol"], "tcp");
    assert_eq!(out["direction"], "outbound");
    assert_eq!(out["service"], "db");
    assert_eq!(out["endpoint"], b.inbound.unwrap().to_string());
    assert_eq!(out["request_bytes"], 15);
    assert_eq!(out["response_bytes"], 5);
    assert!(out.get("status").is_none() && out.get("method").is_none());
    assert!(out["duration_ms"].as_f64().unwrap() >= 0.0);
    let inb = &records(&in_log, 1).await[0];
    assert_eq!(inb["protocol"], "tcp");
    assert_eq!(inb["direction"], "inbound");
    assert_eq!(inb["service"], "app");
    assert_eq!(inb["request_bytes"], 15);
    assert_eq!(inb["response_bytes"], 5);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_request_s_body_bytes_are_logged() {
    let logs = tempfile::tempdir().unwrap();
    let (caller_log, callee_log) = (logs.path().join("a.log"), logs.path().join("b.log"));
    let app = echo("app", Duration::ZERO).await;
    let (b, _db) = callee(&app, &mesh_config(&callee_log, "")).await;
    let route = format!(
        "kind: Route\nmetadata: {{name: web}}\nspec: {{service: web}}\n{}",
        mesh_config(&caller_log, "")
    );
    let (a, _da) = caller(&[("web-1", b.inbound.unwrap(), "")], &route, "").await;
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(format!("http://{}/upload", a.outbound))
        .header("host", "web")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            1234
        ])))
        .unwrap();
    let r = c.request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    use http_body_util::BodyExt;
    let _ = r.into_body().collect().await;
    for f in [&caller_log, &callee_log] {
        let rec = &records(f, 1).await[0];
        assert_eq!(rec["method"], "POST");
        assert_eq!(rec["request_bytes"], 1234, "{}", f.display());
    }
    a.shutdown().await;
    b.shutdown().await;
}
