//! The proxies' metrics with a real meshd and workload certificates: each
//! request counts under the identities mutual TLS proved on both sides,
//! with the handshakes, connections and bytes, and the config revision.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::deploys::{app, caller_of_web, cluster_with_web, get, http, web_proxy};
use super::prom::metric;
use super::support::*;

fn scrape(p: &raftmesh_dataplane_proxy::Proxy) -> String {
    p.config.metrics.render(&p.config)
}

#[test]
fn requests_count_under_the_identities_mtls_proved_on_both_sides() {
    run(async {
        let (c, mut admin) = cluster_with_web().await;
        let dir = tempfile::tempdir().unwrap();
        let web_app = app("web").await;
        let token = bootstrap_token(&mut admin, "web").await;
        let web = web_proxy(&c, dir.path(), "web-1", web_app.addr, token).await;
        let frontend = caller_of_web(&c, &mut admin, dir.path(), "frontend").await;
        // The identities in their certificates.
        let (me, them) = (
            frontend.config.own_spiffe().unwrap(),
            web.config.own_spiffe().unwrap(),
        );
        assert!(me.ends_with("/ns/default/sa/frontend"), "{me}");
        assert!(them.ends_with("/ns/default/sa/web"), "{them}");
        let out = |m: &str| {
            metric(
                m,
                "raftmesh_proxy_requests_total",
                &[
                    ("direction", "outbound"),
                    ("source_service", "frontend"),
                    ("source_identity", &me),
                    ("destination_service", "web"),
                    ("destination_identity", &them),
                    ("code", "200"),
                ],
            )
        };
        let inb = |m: &str| {
            metric(
                m,
                "raftmesh_proxy_requests_total",
                &[
                    ("direction", "inbound"),
                    ("source_namespace", "default"),
                    ("source_service", "frontend"),
                    ("source_identity", &me),
                    ("destination_service", "web"),
                    ("destination_identity", &them),
                    ("code", "200"),
                ],
            )
        };
        let (out0, in0) = (out(&scrape(&frontend)), inb(&scrape(&web)));
        let h = http();
        for _ in 0..5 {
            assert_eq!(get(&h, frontend.outbound, "web").await.unwrap().0, 200);
        }
        let m = scrape(&frontend);
        assert_eq!(out(&m) - out0, 5.0, "{m}");
        assert!(
            metric(
                &m,
                "raftmesh_proxy_tls_handshakes_total",
                &[("side", "client"), ("result", "ok")]
            ) >= 1.0,
            "{m}"
        );
        let rev = frontend.config.current().revision as f64;
        assert!(rev > 0.0);
        assert_eq!(
            metric(&m, "raftmesh_proxy_config_revision", &[]),
            rev,
            "{m}"
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

        let m = scrape(&web);
        assert_eq!(inb(&m) - in0, 5.0, "{m}");
        assert!(
            metric(
                &m,
                "raftmesh_proxy_tls_handshakes_total",
                &[("side", "server"), ("result", "ok")]
            ) >= 1.0
        );
        let peer = [
            ("direction", "inbound"),
            ("peer_service", "frontend"),
            ("peer_identity", me.as_str()),
        ];
        assert!(
            metric(&m, "raftmesh_proxy_tcp_connections_opened_total", &peer) >= 1.0,
            "{m}"
        );
        assert!(
            metric(&m, "raftmesh_proxy_tcp_received_bytes_total", &peer) > 0.0,
            "{m}"
        );

        // A stranger's broken handshake counts as failed, with its reason,
        // and never as a connection from anyone.
        let opened = metric(&m, "raftmesh_proxy_tcp_connections_opened_total", &[]);
        let mut s = tokio::net::TcpStream::connect(web.inbound.unwrap())
            .await
            .unwrap();
        s.write_all(b"\x16\x03\x01\x00\x05hello").await.unwrap();
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        eventually(
            "the failed handshake counted",
            Duration::from_secs(5),
            || {
                let m = scrape(&web);
                async move {
                    (metric(
                        &m,
                        "raftmesh_proxy_tls_handshakes_total",
                        &[
                            ("side", "server"),
                            ("result", "failed"),
                            ("reason", "protocol"),
                        ],
                    ) == 1.0)
                        .then_some(())
                }
            },
        )
        .await;
        assert_eq!(
            metric(
                &scrape(&web),
                "raftmesh_proxy_tcp_connections_opened_total",
                &[]
            ),
            opened
        );
        frontend.shutdown().await;
        web.shutdown().await;
        c.shutdown().await;
    });
}

/// Every node's metrics, rendered now.
fn node_metrics(c: &TestCluster) -> Vec<(u64, String)> {
    c.nodes
        .values()
        .map(|n| (n.id, n.ops.metrics().render(&n.raft, &n.reader)))
        .collect()
}

fn sum(all: &[(u64, String)], name: &str, with: &[(&str, &str)]) -> f64 {
    all.iter().map(|(_, m)| metric(m, name, with)).sum()
}

#[test]
fn meshd_counts_raft_writes_snapshots_discovery_tokens_and_certificates() {
    run(async {
        // Snapshots every 10 entries: a few are built along the way.
        let c = TestCluster::start_with(3, 10).await;
        let leader = c.wait_ready().await;
        let mut admin = c.client(leader).await;
        for i in 0..30 {
            admin
                .apply(apply_req(vec![super::deploys::doc(&format!(
                    "kind: Service\nmetadata: {{name: svc-{i}}}\nspec: {{ports: [{{port: 80}}]}}"
                ))]))
                .await
                .unwrap();
        }
        admin
            .apply(apply_req(vec![super::deploys::doc(
                "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}",
            )]))
            .await
            .unwrap();
        let all = node_metrics(&c);
        for (id, m) in &all {
            // Every node knows the leader and the term.
            assert_eq!(
                metric(m, "raftmesh_raft_leader", &[]),
                leader as f64,
                "node {id}: {m}"
            );
            assert!(metric(m, "raftmesh_raft_term", &[]) >= 1.0);
            assert!(
                metric(m, "raftmesh_raft_applied_index", &[]) >= 31.0,
                "node {id}"
            );
        }
        let lm = &all.iter().find(|(id, _)| *id == leader).unwrap().1;
        assert_eq!(metric(lm, "raftmesh_raft_is_leader", &[]), 1.0);
        assert!(
            metric(lm, "raftmesh_raft_commit_index", &[]) >= 31.0,
            "{lm}"
        );
        // Two followers, each with its lag.
        assert_eq!(
            super::prom::series(lm, "raftmesh_raft_replication_lag_entries").len(),
            2,
            "{lm}"
        );
        assert!(
            metric(
                lm,
                "raftmesh_write_duration_seconds_count",
                &[("result", "ok")]
            ) >= 31.0,
            "{lm}"
        );
        assert!(
            metric(lm, "raftmesh_raft_proposal_duration_seconds_count", &[]) >= 1.0,
            "{lm}"
        );
        assert!(
            metric(lm, "raftmesh_raft_proposal_commands_sum", &[]) >= 31.0,
            "{lm}"
        );
        // Snapshots: built here, with a size and a time.
        assert!(
            metric(lm, "raftmesh_raft_snapshots_total", &[("kind", "built")]) >= 1.0,
            "{lm}"
        );
        assert!(
            metric(lm, "raftmesh_raft_snapshot_bytes", &[]) > 100.0,
            "{lm}"
        );
        assert!(
            metric(
                lm,
                "raftmesh_raft_snapshot_last_seconds",
                &[("kind", "build")]
            ) > 0.0,
            "{lm}"
        );
        assert!(
            metric(lm, "raftmesh_raft_snapshot_index", &[]) >= 10.0,
            "{lm}"
        );
        assert!(
            metric(
                lm,
                "raftmesh_admin_authentications_total",
                &[("result", "ok")]
            ) >= 1.0
        );

        // A proxy: its token used, a certificate issued, a stream, deltas
        // and their acknowledgements.
        let dir = tempfile::tempdir().unwrap();
        let web_app = app("web").await;
        let token = bootstrap_token(&mut admin, "web").await;
        let web = web_proxy(&c, dir.path(), "web-1", web_app.addr, token).await;
        eventually(
            "the proxy's first config acknowledged",
            Duration::from_secs(10),
            || {
                let all = node_metrics(&c);
                async move {
                    (sum(&all, "raftmesh_discovery_ack_seconds_count", &[]) >= 1.0).then_some(())
                }
            },
        )
        .await;
        let all = node_metrics(&c);
        assert_eq!(
            sum(
                &all,
                "raftmesh_bootstrap_tokens_total",
                &[("result", "used")]
            ),
            1.0
        );
        assert_eq!(
            sum(
                &all,
                "raftmesh_certificates_issued_total",
                &[("kind", "first")]
            ),
            1.0
        );
        assert_eq!(sum(&all, "raftmesh_discovery_streams", &[]), 1.0);
        assert!(
            sum(
                &all,
                "raftmesh_discovery_deltas_sent_total",
                &[("kind", "full")]
            ) >= 1.0
        );
        assert!(sum(&all, "raftmesh_discovery_sent_bytes_total", &[]) > 0.0);
        // A change the proxy holds converges once it acknowledges it.
        let converged = sum(&all, "raftmesh_discovery_converged_seconds_count", &[]);
        admin
            .apply(apply_req(vec![super::deploys::doc(
                "kind: Route\nmetadata: {name: web}\nspec: {service: web, timeout: 3s}",
            )]))
            .await
            .unwrap();
        eventually(
            "the Route's revision converged",
            Duration::from_secs(10),
            || {
                let all = node_metrics(&c);
                async move {
                    (sum(&all, "raftmesh_discovery_converged_seconds_count", &[]) > converged)
                        .then_some(())
                }
            },
        )
        .await;
        // Refusals count by reason (a stranger's made-up tokens).
        let node = c.nodes.values().next().unwrap();
        let refused = |m: &str, name: &str, reason: &str| {
            metric(m, name, &[("result", "refused"), ("reason", reason)])
        };
        let before = node.ops.metrics().render(&node.raft, &node.reader);
        let (boot0, admin0) = (
            refused(&before, "raftmesh_bootstrap_tokens_total", "unknown"),
            refused(&before, "raftmesh_admin_authentications_total", "invalid"),
        );
        assert!(raftmesh_controlplane::tokens::admit_bootstrap(
            &node.ops,
            "rmb_madeup",
            "web",
            "default"
        )
        .await
        .is_err());
        assert!(raftmesh_controlplane::tokens::authenticate_admin(
            &node.ops,
            Some("Bearer rmt_madeup")
        )
        .await
        .is_err());
        let m = node.ops.metrics().render(&node.raft, &node.reader);
        assert_eq!(
            refused(&m, "raftmesh_bootstrap_tokens_total", "unknown") - boot0,
            1.0,
            "{m}"
        );
        assert_eq!(
            refused(&m, "raftmesh_admin_authentications_total", "invalid") - admin0,
            1.0,
            "{m}"
        );
        for secret in ["rmb_madeup", "rmt_madeup"] {
            assert!(!m.contains(secret));
        }
        web.shutdown().await;
        eventually("the stream counted closed", Duration::from_secs(10), || {
            let all = node_metrics(&c);
            async move { (sum(&all, "raftmesh_discovery_streams", &[]) == 0.0).then_some(()) }
        })
        .await;
        c.shutdown().await;
    });
}

#[test]
fn tracing_follows_the_committed_mesh_config_live_and_meshd_traces_admin_writes() {
    use super::otlp::{Collector, CLIENT, SERVER};
    run(async {
        let (collector, at) = Collector::start().await;
        let (c, mut admin) = cluster_with_web().await;
        let dir = tempfile::tempdir().unwrap();
        let web_app = app("web").await;
        let token = bootstrap_token(&mut admin, "web").await;
        let web = web_proxy(&c, dir.path(), "web-1", web_app.addr, token).await;
        let frontend = caller_of_web(&c, &mut admin, dir.path(), "frontend").await;
        let tracing = |percent: &str| {
            super::deploys::doc(&format!(
                "kind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{tracing: {{collector: '{at}', sample_percent: {percent}}}}}"
            ))
        };
        let on_everywhere = |percent: u32| {
            let ps = [frontend.config.clone(), web.config.clone()];
            async move {
                eventually(
                    "every proxy holds the tracing settings",
                    Duration::from_secs(10),
                    || {
                        let ps = ps.clone();
                        async move {
                            ps.iter()
                                .all(|p| {
                                    p.current().tracing.as_ref().and_then(|t| t.sample_percent)
                                        == Some(raftmesh_api::SamplePercent(percent * 10_000))
                                })
                                .then_some(())
                        }
                    },
                )
                .await
            }
        };
        // Turned on while everything runs: no restart.
        admin.apply(apply_req(vec![tracing("100")])).await.unwrap();
        on_everywhere(100).await;
        let h = http();
        assert_eq!(get(&h, frontend.outbound, "web").await.unwrap().0, 200);
        let client = eventually(
            "a client span from frontend",
            Duration::from_secs(10),
            || {
                let spans = collector.spans();
                async move {
                    spans
                        .into_iter()
                        .find(|s| s.kind == CLIENT && s.service == "frontend")
                }
            },
        )
        .await;
        let trace = collector.trace(&client.trace_id, 2).await;
        let server = trace.iter().find(|s| s.kind == SERVER).unwrap();
        assert_eq!(server.service, "web");
        assert_eq!(server.parent, client.span_id);

        // An admin write, traced by meshd from the call to the commit.
        let mut req = tonic::Request::new(apply_req(vec![super::deploys::doc(
            "kind: Route\nmetadata: {name: web}\nspec: {service: web, timeout: 2s}",
        )]));
        req.metadata_mut().insert(
            "traceparent",
            "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let revision = admin.apply(req).await.unwrap().into_inner().revision;
        let spans = collector.trace("5bf92f3577b34da6a3ce929d0e0e4736", 2).await;
        let apply = spans
            .iter()
            .find(|s| s.name == "raftmesh.v1.Admin/Apply")
            .unwrap();
        assert_eq!(apply.service, "meshd");
        assert_eq!(apply.parent, "10f067aa0ba902b7");
        let write = spans.iter().find(|s| s.name == "raft write").unwrap();
        assert_eq!(write.parent, apply.span_id);
        assert_eq!(write.attrs["raftmesh.revision"], revision.to_string());

        // Sampling turned down live: new traces are no longer recorded.
        admin.apply(apply_req(vec![tracing("0")])).await.unwrap();
        on_everywhere(0).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let before = collector.spans().len();
        for _ in 0..10 {
            assert_eq!(get(&h, frontend.outbound, "web").await.unwrap().0, 200);
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let after = collector.spans();
        assert!(
            after[before..].iter().all(|s| s.service == "meshd"),
            "{:#?}",
            &after[before..]
        );
        // And turned off.
        admin
            .apply(apply_req(vec![super::deploys::doc(
                "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {}",
            )]))
            .await
            .unwrap();
        eventually("tracing off everywhere", Duration::from_secs(10), || {
            let off = frontend.config.traces.active().is_none()
                && web.config.traces.active().is_none()
                && c.nodes.values().all(|n| n.ops.traces().active().is_none());
            async move { off.then_some(()) }
        })
        .await;
        frontend.shutdown().await;
        web.shutdown().await;
        c.shutdown().await;
    });
}
