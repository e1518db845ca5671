//! Traffic policy through meshd: a Route's `rate_limit` reaches the
//! callee's own proxies (not only its callers'), which keep one bucket per
//! caller identity over mTLS, and a changed limit applies live.

use std::time::Duration;

use super::deploys::{app, caller_of_web, cluster_with_web, doc, get, http, web_proxy, Client};
use super::support::*;

/// Waits until `p` holds its service's Route `rate_limit` with `burst`.
async fn holds_limit(p: &raftmesh_dataplane_proxy::Proxy, burst: u32) {
    eventually(
        "the limit at the callee's proxy",
        Duration::from_secs(10),
        || {
            let l = p.config.current().authz.rate_limit.clone();
            async move { l.filter(|l| l.burst == Some(burst)).map(|_| ()) }
        },
    )
    .await;
}

/// Admitted of `n` requests through `out` to `web`; every refusal must be
/// the rate limit's.
async fn admitted(h: &Client, out: std::net::SocketAddr, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        match get(h, out, "web").await {
            Ok((200, _)) => ok += 1,
            Ok((429, code)) => assert_eq!(code, "rate-limited"),
            other => panic!("{other:?}"),
        }
    }
    ok
}

#[test]
fn a_per_caller_rate_limit_is_kept_by_the_callee_s_proxy_for_each_identity() {
    run(async {
        let (c, mut admin) = cluster_with_web().await;
        let dir = tempfile::tempdir().unwrap();
        let web_app = app("web").await;
        let token = bootstrap_token(&mut admin, "web").await;
        let web = web_proxy(&c, dir.path(), "web-1", web_app.addr, token).await;
        let h = http();
        let mut callers = Vec::new();
        for svc in ["frontend", "batch"] {
            callers.push(caller_of_web(&c, &mut admin, dir.path(), svc).await);
        }
        let limit = |burst: u32| {
            doc(&format!(
                "kind: Route\nmetadata: {{name: web}}\nspec: {{service: web, rate_limit: {{requests_per_second: 1, burst: {burst}, per: caller}}}}"
            ))
        };
        admin.apply(apply_req(vec![limit(3)])).await.unwrap();
        // The callee's proxy holds its own service's Route.
        holds_limit(&web, 3).await;
        // Each identity has its own bucket: 3 (plus at most the refill of
        // the time the 10 requests took, at 1/s) each.
        for p in &callers {
            let ok = admitted(&h, p.outbound, 10).await;
            assert!((3..=4).contains(&ok), "{ok} admitted");
        }
        // A changed limit applies without a restart, with full buckets.
        admin.apply(apply_req(vec![limit(6)])).await.unwrap();
        holds_limit(&web, 6).await;
        let ok = admitted(&h, callers[0].outbound, 12).await;
        assert!((6..=7).contains(&ok), "{ok} admitted after the change");
        // A proxy that starts after the Route gets it in its first config.
        let token = bootstrap_token(&mut admin, "web").await;
        let web2 = web_proxy(&c, dir.path(), "web-2", web_app.addr, token).await;
        // (No later change carries it: only the first config can.)
        holds_limit(&web2, 6).await;
        web2.shutdown().await;
        for p in callers {
            p.shutdown().await;
        }
        web.shutdown().await;
        c.shutdown().await;
    });
}

/// An app that switches any `Upgrade` request to an echo of the bytes that
/// follow, and answers other requests with `plain <path>`.
async fn upgrade_app() -> std::net::SocketAddr {
    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |mut req: hyper::Request<hyper::body::Incoming>| async move {
                        let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                        if let Some(proto) = req.headers().get("upgrade").cloned() {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                let mut io = hyper_util::rt::TokioIo::new(on.await.unwrap());
                                let mut buf = [0u8; 1024];
                                loop {
                                    match io.read(&mut buf).await {
                                        Ok(0) | Err(_) => return,
                                        Ok(n) => {
                                            if io.write_all(&buf[..n]).await.is_err() {
                                                return;
                                            }
                                        }
                                    }
                                }
                            });
                            if let Some(who) = req.headers().get("x-forwarded-client-cert") {
                                resp.headers_mut().insert("x-seen-caller", who.clone());
                            }
                            *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                            resp.headers_mut().insert("upgrade", proto);
                            resp.headers_mut()
                                .insert("connection", "upgrade".parse().unwrap());
                        } else {
                            *resp.body_mut() =
                                Full::new(Bytes::from(format!("plain {}", req.uri().path())));
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Writes `head` to a new connection to `to` and reads the answer's head.
async fn open(to: std::net::SocketAddr, head: &str) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(to).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.push(b[0]);
    }
    (s, String::from_utf8(got).unwrap())
}

/// Writes `msg` and reads as many bytes back.
async fn echo_round(s: &mut tokio::net::TcpStream, msg: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echoed")
        .unwrap();
    back
}

#[test]
fn websockets_and_connect_tunnels_cross_both_proxies_over_mtls_and_end_when_a_policy_denies_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    run(async {
        let (c, mut admin) = cluster_with_web().await;
        let dir = tempfile::tempdir().unwrap();
        let app_addr = upgrade_app().await;
        let t = bootstrap_token(&mut admin, "web").await;
        let web = raftmesh_dataplane_proxy::start(proxy_config(
            &c,
            dir.path(),
            "web",
            "web-1",
            Some(app_addr),
            t,
            &[],
        ))
        .await
        .unwrap();
        let fe = caller_of_web(&c, &mut admin, dir.path(), "frontend").await;
        // A WebSocket handshake: the 101 comes back through both proxies,
        // then bytes flow both ways.
        let ws = "GET /chat HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let (mut s, head) = open(fe.outbound, ws).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("upgrade: websocket"),
            "{head}"
        );
        // The hop between the proxies is mutual TLS: the callee's proxy
        // knew the caller's identity from its certificate.
        assert!(
            head.contains("spiffe://") && head.contains("/sa/frontend"),
            "{head}"
        );
        for i in 0..3 {
            let msg = format!("frame {i} \u{1F600}");
            assert_eq!(echo_round(&mut s, msg.as_bytes()).await, msg.as_bytes());
        }
        let big = vec![7u8; 256 * 1024];
        assert_eq!(echo_round(&mut s, &big).await, big);

        // CONNECT: the callee's proxy opens the tunnel to its app's port;
        // an HTTP request written into it reaches the app.
        let (mut t, head) = open(
            fe.outbound,
            "CONNECT web:80 HTTP/1.1\r\nHost: web:80\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        t.write_all(b"GET /through HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), t.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.ends_with("plain /through"), "{answer}");

        // A deny limited to a path covers a CONNECT (decided as opaque
        // TCP: it could carry a request for that path), not the open
        // WebSocket to another path.
        admin
            .apply(apply_req(vec![doc(
                "kind: Policy\nmetadata: {name: no-admin}\nspec: {service: web, action: deny, to: [{paths: [/admin]}]}",
            )]))
            .await
            .unwrap();
        eventually("CONNECT refused", Duration::from_secs(10), || async {
            let (_t, head) = open(
                fe.outbound,
                "CONNECT web:80 HTTP/1.1\r\nHost: web:80\r\n\r\n",
            )
            .await;
            head.starts_with("HTTP/1.1 403").then_some(())
        })
        .await;
        assert_eq!(echo_round(&mut s, b"still open").await, b"still open");

        // A deny policy for the caller closes the open WebSocket.
        admin
            .apply(apply_req(vec![doc(
                "kind: Policy\nmetadata: {name: no-frontend}\nspec: {service: web, action: deny}",
            )]))
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let _ = s.write_all(b"x").await;
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the tunnel outlived the deny policy");
        // And a new handshake is refused.
        let (_s, head) = open(fe.outbound, ws).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        fe.shutdown().await;
        web.shutdown().await;
        c.shutdown().await;
    });
}

#[test]
fn externals_and_the_policies_on_them_reach_every_proxy_of_their_namespace() {
    run(async {
        let (c, mut admin) = cluster_with_web().await;
        let dir = tempfile::tempdir().unwrap();
        let t = bootstrap_token(&mut admin, "frontend").await;
        let fe = raftmesh_dataplane_proxy::start(proxy_config(
            &c,
            dir.path(),
            "frontend",
            "frontend-1",
            None,
            t,
            &[],
        ))
        .await
        .unwrap();
        let held = |p: &raftmesh_dataplane_proxy::Proxy| {
            let cur = p.config.current();
            cur.externals
                .iter()
                .map(|e| (e.name.clone(), e.authz.policies.len()))
                .collect::<Vec<_>>()
        };
        admin
            .apply(apply_req(vec![
                doc("kind: External\nmetadata: {name: stripe}\nspec: {hosts: [api.stripe.com], ports: [443]}"),
                doc("kind: Policy\nmetadata: {name: no-stripe}\nspec: {service: stripe, external: true, action: deny}"),
                doc("kind: External\nmetadata: {name: other, namespace: prod}\nspec: {hosts: [other.example.com]}"),
            ]))
            .await
            .unwrap();
        // As a change, to a proxy already connected (it calls nothing).
        eventually("the External at the proxy", Duration::from_secs(10), || {
            let h = held(&fe);
            async move { (h == vec![("stripe".to_string(), 1)]).then_some(()) }
        })
        .await;
        // In the first config of a proxy that connects afterwards.
        let t = bootstrap_token(&mut admin, "batch").await;
        let b = raftmesh_dataplane_proxy::start(proxy_config(
            &c,
            dir.path(),
            "batch",
            "batch-1",
            None,
            t,
            &[],
        ))
        .await
        .unwrap();
        eventually(
            "the External in a first config",
            Duration::from_secs(10),
            || {
                let h = held(&b);
                async move { (h == vec![("stripe".to_string(), 1)]).then_some(()) }
            },
        )
        .await;
        // The Policy on the External is not taken for the proxy's own
        // inbound authorization.
        assert!(b.config.current().authz.policies.is_empty());
        fe.shutdown().await;
        b.shutdown().await;
        c.shutdown().await;
    });
}
