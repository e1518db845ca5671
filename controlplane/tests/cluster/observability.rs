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
