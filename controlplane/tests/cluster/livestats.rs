//! `meshctl stat`'s data (the admin API's `Stat`): proxies report their
//! traffic on their discovery streams, any node answers for every proxy
//! on every node, each request counts once, and a proxy cannot report
//! traffic that is not its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftmesh_api::stat::StatRow;
use raftmesh_api::v1 as pb;
use raftmesh_api::v1::proxy_message::Msg as In;
use raftmesh_api::v1::server_message::Msg as Out;

use super::deploys::{app, doc, get, http};
use super::proxy::{hello, msg, FakeProxy};
use super::support::*;

async fn stat(admin: &mut raftmesh_client::Admin, req: pb::StatRequest) -> pb::StatResponse {
    admin.stat(req).await.unwrap().into_inner()
}

fn row<'a>(rows: &'a [pb::StatRow], service: &str, from: &str) -> Option<&'a pb::StatRow> {
    rows.iter()
        .find(|r| r.service == service && r.from == from && r.route.is_empty())
}

#[test]
fn stat_on_any_node_covers_proxies_on_every_node_and_counts_each_request_once() {
    run(async {
        let c = TestCluster::start(3).await;
        let mut admin = c.client(1).await;
        // Half of frontend's calls are answered 503 by its own proxy (the
        // fault layer): they never reach web's proxy, and must still count.
        admin
            .apply(apply_req(vec![
                doc("kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}"),
                doc("kind: Route\nmetadata: {name: web}\nspec: {service: web, fault: {abort: {http_status: 503, percent: 50}}}"),
            ]))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let web_app = app("web").await;
        // web's proxy on node 2, frontend's on node 3; node 1 is asked.
        let only = |cfg: &mut raftmesh_dataplane_proxy::config::ProxyConfig, id: u64| {
            cfg.control_plane = vec![c.addrs[&id].to_string()];
        };
        let token = bootstrap_token(&mut admin, "web").await;
        let mut cfg = proxy_config(
            &c,
            dir.path(),
            "web",
            "web-1",
            Some(web_app.addr),
            token,
            &[],
        );
        only(&mut cfg, 2);
        let web = raftmesh_dataplane_proxy::start(cfg).await.unwrap();
        let token = bootstrap_token(&mut admin, "frontend").await;
        let mut cfg = proxy_config(
            &c,
            dir.path(),
            "frontend",
            "frontend-1",
            None,
            token,
            &["web"],
        );
        only(&mut cfg, 3);
        let frontend = raftmesh_dataplane_proxy::start(cfg).await.unwrap();
        let up = std::time::Instant::now();
        let h = http();
        eventually(
            "web answers through the mesh",
            Duration::from_secs(15),
            || {
                let (h, out) = (h.clone(), frontend.outbound);
                async move { matches!(get(&h, out, "web").await, Ok((200, _))).then_some(()) }
            },
        )
        .await;
        // What the warm-up left, once every report of it is in.
        let settled = |admin: &mut raftmesh_client::Admin| {
            let mut admin = admin.clone();
            async move {
                let mut last = None;
                loop {
                    let r = stat(&mut admin, pb::StatRequest::default()).await;
                    let now = row(&r.rows, "web", "").map(|r| (r.requests, r.failures));
                    if let Some(settled) = now.filter(|n| Some(*n) == last) {
                        return settled;
                    }
                    last = now;
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
            }
        };
        let (r0, f0) = tokio::time::timeout(Duration::from_secs(20), settled(&mut admin))
            .await
            .expect("the warm-up's reports arrive");
        // Exactly 200 requests, each answer seen by the client.
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        for _ in 0..200 {
            match get(&h, frontend.outbound, "web").await {
                Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                Ok((503, _)) => failed.fetch_add(1, Ordering::Relaxed),
                other => panic!("unexpected answer {other:?}"),
            };
        }
        let failed = failed.load(Ordering::Relaxed);
        assert!(
            failed > 40 && failed < 160,
            "{failed} of 200 aborted at 50 %"
        );
        let rows = eventually(
            "every request in the figures",
            Duration::from_secs(10),
            || {
                let mut admin = admin.clone();
                async move {
                    let r = stat(&mut admin, pb::StatRequest::default()).await;
                    let w = row(&r.rows, "web", "")?;
                    (w.requests == r0 + 200).then_some(r)
                }
            },
        )
        .await;
        assert!(rows.unreported_nodes.is_empty(), "{rows:?}");
        let whole = row(&rows.rows, "web", "").unwrap();
        assert_eq!(whole.failures, f0 + failed, "{whole:?}");
        let edge = row(&rows.rows, "web", "frontend").expect("the frontend → web edge");
        assert_eq!(
            (edge.requests, edge.failures),
            (whole.requests, whole.failures)
        );
        assert_eq!(edge.from_namespace, "default");
        let shown = StatRow::from(edge.clone());
        assert!(
            shown.success_rate > 0.0 && shown.success_rate < 1.0,
            "{shown:?}"
        );
        // The rate is the requests over the seconds web's proxy reported:
        // at most the time since the proxies started, at least a second.
        let covered = edge.requests as f64 / edge.rps;
        assert!(
            covered >= 1.0 && covered <= up.elapsed().as_secs_f64() + 2.0,
            "{covered:.1}s of reports for {edge:?}"
        );
        // Latency from web's side: positive, ordered.
        assert!(edge.p50_ms > 0.0 && edge.p50_ms <= edge.p95_ms && edge.p95_ms <= edge.p99_ms);
        // frontend is only a caller: no row of its own.
        assert!(row(&rows.rows, "frontend", "").is_none(), "{rows:?}");
        // The Route's view: its callers' side, every request.
        let by_route = stat(
            &mut admin,
            pb::StatRequest {
                route: "web".into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(by_route.rows.len(), 1, "{by_route:?}");
        assert_eq!(by_route.rows[0].requests, whole.requests);
        assert_eq!(by_route.rows[0].failures, whole.failures);
        // A filter on a service nobody calls is empty, not an error.
        let none = stat(
            &mut admin,
            pb::StatRequest {
                service: "nobody".into(),
                ..Default::default()
            },
        )
        .await;
        assert!(none.rows.is_empty());
        // A node that cannot be asked is named, never silently left out.
        frontend.shutdown().await;
        let mut c = c;
        c.stop(3).await;
        let r = stat(&mut admin, pb::StatRequest::default()).await;
        assert_eq!(r.unreported_nodes, vec![3], "{r:?}");
        web.shutdown().await;
        c.shutdown().await;
    });
}

#[test]
fn a_proxy_cannot_report_traffic_that_is_not_its_own() {
    run(async {
        let c = TestCluster::start(1).await;
        let mut admin = c.client(1).await;
        admin
            .apply(apply_req(vec![doc(
                "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}",
            )]))
            .await
            .unwrap();
        let token = bootstrap_token(&mut admin, "batch").await;
        let mut p = FakeProxy::connect(c.addrs[&1], hello("batch", "batch-1", &token, &[]))
            .await
            .unwrap();
        p.expect().await;
        let edge = |inbound: bool, to: &str| {
            let mut latency_buckets = vec![0; raftmesh_api::stat::LATENCY_BUCKETS];
            latency_buckets[3] = 1000;
            pb::StatsEdge {
                inbound,
                source_namespace: "default".into(),
                source_service: "frontend".into(),
                destination_namespace: "default".into(),
                destination_service: to.into(),
                requests: 1000,
                failures: 1000,
                latency_buckets,
                ..Default::default()
            }
        };
        // batch claims web's inbound traffic: all of it failing.
        let forged = pb::Stats {
            window_ms: 1000,
            edges: vec![edge(true, "web")],
        };
        p.tx.send(msg(In::Stats(forged))).await.unwrap();
        let refusal = loop {
            match tokio::time::timeout(Duration::from_secs(5), p.rx.message()).await {
                Ok(Ok(Some(pb::ServerMessage {
                    msg: Some(Out::Error(e)),
                }))) => break e,
                Ok(Ok(Some(_))) => continue,
                other => panic!("no refusal: {other:?}"),
            }
        };
        assert_eq!(refusal.code, "bad-stats");
        assert!(
            refusal
                .message
                .contains("not this proxy's service default/batch"),
            "{refusal:?}"
        );
        // The stream goes on, and its own traffic is taken; an outbound
        // edge to a service batch does not call, with answers batch's proxy
        // claims it made itself (they would count against web), is not.
        let mut local = edge(false, "web");
        local.source_service = "batch".into();
        local.local_requests = 1000;
        local.local_failures = 1000;
        let own = pb::Stats {
            window_ms: 1000,
            edges: vec![edge(true, "batch"), local],
        };
        tokio::time::sleep(Duration::from_millis(600)).await;
        p.tx.send(msg(In::Stats(own))).await.unwrap();
        let r = eventually("batch's own report", Duration::from_secs(5), || {
            let mut admin = admin.clone();
            async move {
                let r = stat(&mut admin, pb::StatRequest::default()).await;
                row(&r.rows, "batch", "").is_some().then_some(r)
            }
        })
        .await;
        assert!(row(&r.rows, "web", "").is_none(), "{r:?}");
        assert_eq!(row(&r.rows, "batch", "frontend").unwrap().requests, 1000);
        c.shutdown().await;
    });
}

/// `meshctl tap`'s stream (the admin API's `Tap`).
async fn tap(
    admin: &mut raftmesh_client::Admin,
    req: pb::TapRequest,
) -> Result<Vec<pb::TapRecord>, tonic::Status> {
    let mut s = admin.tap(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.message().await? {
        out.push(r);
    }
    Ok(out)
}

fn tap_req(max_records: u32) -> pb::TapRequest {
    pb::TapRequest {
        service: "web".into(),
        namespace: String::new(),
        sample_ppm: 1_000_000,
        max_records,
        duration_ms: 20_000,
    }
}

#[test]
fn tap_streams_requests_from_a_services_proxies_on_every_node_and_never_a_header_value() {
    run(async {
        let c = TestCluster::start(3).await;
        let mut admin = c.client(1).await;
        admin
            .apply(apply_req(vec![doc(
                "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}",
            ), doc("kind: Route\nmetadata: {name: web}\nspec: {service: web, load_balancer: round-robin}")]))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // web-1 on node 2, web-2 on node 3; the tap is asked of node 1.
        let mut webs = Vec::new();
        let mut apps = Vec::new();
        for (i, node, body) in [(1, 2, "web-a"), (2, 3, "web-b")] {
            let a = app(body).await;
            let token = bootstrap_token(&mut admin, "web").await;
            let mut cfg = proxy_config(
                &c,
                dir.path(),
                "web",
                &format!("web-{i}"),
                Some(a.addr),
                token,
                &[],
            );
            cfg.control_plane = vec![c.addrs[&node].to_string()];
            webs.push(raftmesh_dataplane_proxy::start(cfg).await.unwrap());
            apps.push(a);
        }
        let token = bootstrap_token(&mut admin, "frontend").await;
        let cfg = proxy_config(
            &c,
            dir.path(),
            "frontend",
            "frontend-1",
            None,
            token,
            &["web"],
        );
        let frontend = raftmesh_dataplane_proxy::start(cfg).await.unwrap();
        let h = http();
        eventually("both web proxies serving", Duration::from_secs(15), || {
            let mut admin = admin.clone();
            async move {
                let r = admin
                    .list_proxies(pb::ListProxiesRequest {})
                    .await
                    .ok()?
                    .into_inner();
                (r.proxies
                    .iter()
                    .filter(|p| p.service == "web" && p.acked_revision > 0)
                    .count()
                    == 2)
                    .then_some(())
            }
        })
        .await;
        // frontend knows both: each app answers it (in turn: round robin).
        eventually(
            "both web apps answer through the mesh",
            Duration::from_secs(15),
            || {
                let (h, out) = (h.clone(), frontend.outbound);
                async move {
                    let mut seen = std::collections::BTreeSet::new();
                    for _ in 0..4 {
                        if let Ok((200, body)) = get(&h, out, "web").await {
                            seen.insert(body);
                        }
                    }
                    (seen.len() == 2).then_some(())
                }
            },
        )
        .await;
        // Requests carrying a secret in a header and in the query.
        let send = {
            let out = frontend.outbound;
            move || async move {
                let s = tokio::net::TcpStream::connect(out).await.unwrap();
                let (mut send, conn) = hyper::client::conn::http1::handshake::<
                    _,
                    http_body_util::Empty<bytes::Bytes>,
                >(hyper_util::rt::TokioIo::new(s))
                .await
                .unwrap();
                tokio::spawn(conn);
                for _ in 0..100 {
                    let req = hyper::Request::get("/orders?token=q-secret")
                        .header("host", "web")
                        .header("authorization", "Bearer h-secret")
                        .body(http_body_util::Empty::new())
                        .unwrap();
                    if send.send_request(req).await.is_err() {
                        return;
                    }
                }
            }
        };
        let tapping = {
            let mut admin = admin.clone();
            tokio::spawn(async move { tap(&mut admin, tap_req(40)).await })
        };
        // Traffic until the tap has its records.
        let records = loop {
            send().await;
            if tapping.is_finished() {
                break tapping.await.unwrap().unwrap();
            }
        };
        assert_eq!(records.len(), 40, "max_records ends the stream");
        let instances: std::collections::BTreeSet<&str> =
            records.iter().map(|r| r.instance.as_str()).collect();
        assert_eq!(
            instances.into_iter().collect::<Vec<_>>(),
            ["web-1", "web-2"],
            "records from the proxies on both other nodes"
        );
        for r in &records {
            assert_eq!(r.direction, "inbound");
            assert_eq!(
                (r.method.as_str(), r.path.as_str(), r.status),
                ("GET", "/orders", 200)
            );
            assert!(r.source.ends_with("/sa/frontend"), "{r:?}");
            assert!(r.header_names.iter().any(|h| h == "authorization"), "{r:?}");
            let all = format!("{r:?}");
            assert!(
                !all.contains("secret"),
                "a header value or the query leaked: {all}"
            );
        }
        // Admin tokens only; bad requests name the field.
        let ro = read_only_token(&mut admin).await;
        let mut reader =
            raftmesh_client::admin_client(&c.addrs[&1].to_string(), Some(&ro), None).unwrap();
        let e = tap(&mut reader, tap_req(1)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        let mut bad = tap_req(1);
        bad.sample_ppm = 0;
        let e = tap(&mut admin, bad).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("sample_ppm"), "{e:?}");
        // The tap is closed on the proxies once its stream ended.
        eventually("the proxies' taps closed", Duration::from_secs(5), || {
            let closed = webs.iter().all(|w| w.config.taps.sample().is_empty());
            async move { closed.then_some(()) }
        })
        .await;
        frontend.shutdown().await;
        for w in webs {
            w.shutdown().await;
        }
        c.shutdown().await;
    });
}
