//! Zero trust end to end: the CA, bootstrap tokens, workload certificates,
//! mutual TLS between proxies, authorization, rotation.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use raftmesh_api::v1 as pb;
use raftmesh_api::{Resource, Spec};
use raftmesh_dataplane_proxy::config::ProxyConfig;
use raftmesh_dataplane_proxy::Proxy;

use super::proxy::{hello, FakeProxy};
use super::support::*;

fn doc(y: &str) -> Resource {
    serde_yaml_ng::from_str(y).unwrap()
}

/// 4 MiB, every byte telling its place.
fn big_body() -> Vec<u8> {
    (0..4u32 << 20).map(|i| (i % 251) as u8).collect()
}

async fn app(name: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                // Answers its name, and who its proxy said called; `/big`:
                // 4 MiB of a known pattern.
                let svc = hyper::service::service_fn(
                    move |r: hyper::Request<hyper::body::Incoming>| async move {
                        let body = if r.uri().path() == "/big" {
                            Bytes::from(big_body())
                        } else {
                            Bytes::from(name)
                        };
                        let mut resp = hyper::Response::new(Full::new(body));
                        if let Some(v) = r.headers().get("x-forwarded-client-cert") {
                            resp.headers_mut().insert("x-seen-caller", v.clone());
                        }
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    addr
}

async fn proxy(
    c: &TestCluster,
    dir: &std::path::Path,
    service: &str,
    instance: &str,
    app: Option<SocketAddr>,
    token: String,
    subs: &[&str],
) -> Proxy {
    raftmesh_dataplane_proxy::start(proxy_config(c, dir, service, instance, app, token, subs))
        .await
        .unwrap()
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

fn http() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

async fn get(c: &Client, to: SocketAddr, host: &str) -> (u16, String, String) {
    let req = hyper::Request::get(format!("http://{to}/x"))
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    let r = c.request(req).await.unwrap();
    let code = r
        .headers()
        .get("x-raftmesh-error")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let s = r.status().as_u16();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (s, String::from_utf8_lossy(&b).into_owned(), code)
}

/// A mesh of one web app behind its proxy and two callers.
struct Mesh {
    c: TestCluster,
    _dir: tempfile::TempDir,
    web: Proxy,
    frontend: Proxy,
    batch: Proxy,
}

async fn mesh() -> Mesh {
    let c = TestCluster::start(1).await;
    let mut admin = c.client(1).await;
    admin
        .apply(apply_req(vec![doc(
            "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}",
        )]))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let web_app = app("web").await;
    let web = proxy(
        &c,
        dir.path(),
        "web",
        "web-1",
        Some(web_app),
        bootstrap_token(&mut admin, "web").await,
        &[],
    )
    .await;
    let frontend = proxy(
        &c,
        dir.path(),
        "frontend",
        "frontend-1",
        None,
        bootstrap_token(&mut admin, "frontend").await,
        &["web"],
    )
    .await;
    let batch = proxy(
        &c,
        dir.path(),
        "batch",
        "batch-1",
        None,
        bootstrap_token(&mut admin, "batch").await,
        &["web"],
    )
    .await;
    let h = http();
    for p in [&frontend, &batch] {
        eventually("traffic through the mesh", Duration::from_secs(15), || {
            let (h, out) = (h.clone(), p.outbound);
            async move { (get(&h, out, "web").await.0 == 200).then_some(()) }
        })
        .await;
    }
    Mesh {
        c,
        _dir: dir,
        web,
        frontend,
        batch,
    }
}

#[test]
fn proxies_talk_over_mutual_tls_and_plaintext_to_a_strict_inbound_is_refused() {
    run(async {
        let m = mesh().await;
        let h = http();
        let (s, body, _) = get(&h, m.frontend.outbound, "web").await;
        assert_eq!((s, body.as_str()), (200, "web"));
        // The app learns the caller from its certificate; a caller's own
        // x-forwarded-client-cert is dropped, never passed on.
        let req = hyper::Request::get(format!("http://{}/", m.frontend.outbound))
            .header("host", "web")
            .header(
                "x-forwarded-client-cert",
                "URI=spiffe://test.mesh/ns/default/sa/admin",
            )
            .body(Empty::new())
            .unwrap();
        let r = h.request(req).await.unwrap();
        assert_eq!(
            r.headers()
                .get("x-seen-caller")
                .map(|v| v.to_str().unwrap()),
            Some("URI=spiffe://test.mesh/ns/default/sa/frontend")
        );
        // The endpoint was registered with the workload's SPIFFE ID.
        let ep = m.c.nodes[&1]
            .reader
            .get(&raftmesh_api::ResourceKey::new(
                raftmesh_api::Kind::Endpoint,
                "default",
                "web-1",
            ))
            .1
            .unwrap();
        let Spec::Endpoint(e) = &ep.spec else {
            panic!()
        };
        assert_eq!(e.identity, "spiffe://test.mesh/ns/default/sa/web");
        // The web proxy holds a certificate for that identity.
        let tls = m.web.config.current();
        let _ = tls;
        // Plaintext straight to the web proxy's inbound: refused (strict by default).
        let (s, _, code) = get(&h, m.web.inbound.unwrap(), "web").await;
        assert_eq!((s, code.as_str()), (403, "mtls-required"));
        // Permissive mode accepts it, for migration.
        let mut admin = m.c.client(1).await;
        admin
            .apply(apply_req(vec![doc(
                "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {mtls: permissive}",
            )]))
            .await
            .unwrap();
        let inbound = m.web.inbound.unwrap();
        eventually("permissive mode", Duration::from_secs(10), || {
            let h = h.clone();
            async move { (get(&h, inbound, "web").await.0 == 200).then_some(()) }
        })
        .await;
        // A plaintext keep-alive connection, served while permissive...
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(inbound).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        // ...is closed when the mesh switches to strict.
        admin
            .apply(apply_req(vec![doc(
                "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {mtls: strict}",
            )]))
            .await
            .unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a connection without a client certificate stayed open in strict mode"
        );
        let (s, _, code) = get(&h, inbound, "web").await;
        assert_eq!((s, code.as_str()), (403, "mtls-required"));
        m.c.shutdown().await;
    });
}

/// The callee's inbound fast path over mutual TLS: a large answer to a
/// slow reader arrives whole, and no request left the fast path. (The fast
/// path flushes each answer, as hyper does; this run did not stall without
/// the flush either, so it shows the relay over TLS, not the flush.)
#[test]
fn a_large_answer_crosses_mutual_tls_whole_to_a_slow_reader() {
    run(async {
        let m = mesh().await;
        let h = http();
        for _ in 0..3 {
            let req = hyper::Request::get(format!("http://{}/big", m.frontend.outbound))
                .header("host", "web")
                .body(Empty::new())
                .unwrap();
            let r = h.request(req).await.unwrap();
            assert_eq!(r.status(), 200);
            let mut body = r.into_body();
            let mut got = Vec::with_capacity(4 << 20);
            let read = tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(f) = body.frame().await {
                    if let Ok(d) = f.unwrap().into_data() {
                        got.extend_from_slice(&d);
                        // A slow reader: the TLS connection backs up.
                        if got.len() % (256 << 10) < d.len() {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
            .await;
            assert!(read.is_ok(), "stalled after {} bytes", got.len());
            assert!(got == big_body(), "{} bytes, not the app's", got.len());
        }
        let metrics = h
            .request(
                hyper::Request::get(format!("http://{}/metrics", m.web.admin))
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let metrics = String::from_utf8_lossy(&metrics);
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with("raftmesh_proxy_http1_fallbacks_total{")),
            "every request on the fast path: {metrics}"
        );
        assert!(
            metrics.contains("raftmesh_proxy_tls_handshakes_total{"),
            "over mutual TLS"
        );
        m.c.shutdown().await;
    });
}

#[test]
fn a_client_certificate_from_another_ca_is_refused() {
    run(async {
        let m = mesh().await;
        // A CA of our own, a certificate for "frontend" signed by it.
        let ca = raftmesh_api::AuthoritySpec {
            roots: vec![raftmesh_controlplane::ca::new_root(
                "test.mesh",
                raftmesh_controlplane::procinfo::unix_ms(),
            )
            .unwrap()],
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let cert = raftmesh_controlplane::ca::crypto::issue(
            &ca,
            "test.mesh",
            "default",
            "frontend",
            &csr,
            Duration::from_secs(3600),
            raftmesh_controlplane::procinfo::unix_ms(),
        )
        .unwrap();
        use rustls_pki_types::pem::PemObject;
        let chain =
            vec![
                rustls::pki_types::CertificateDer::from_pem_slice(cert.cert_pem.as_bytes())
                    .unwrap(),
            ];
        let pkey = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
            .unwrap();
        // Trust anything from the server (we test the server's check).
        let mut roots = rustls::RootCertStore::empty();
        let real = raftmesh_controlplane::ca::authority(&m.c.nodes[&1].reader)
            .unwrap()
            .1;
        for r in &real.roots {
            roots
                .add(
                    rustls::pki_types::CertificateDer::from_pem_slice(r.cert_pem.as_bytes())
                        .unwrap(),
                )
                .unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, pkey)
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(m.web.inbound.unwrap())
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("web.default.svc.test.mesh").unwrap();
        let r = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await;
        // TLS 1.3: the client may finish its side; the server refuses at the
        // first read.
        let refused = match r {
            Err(_) => true,
            Ok(mut s) => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
                let mut buf = [0u8; 16];
                !matches!(tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
            }
        };
        assert!(refused, "a certificate from another CA was accepted");
        m.c.shutdown().await;
    });
}

#[test]
fn a_deny_policy_reaches_live_keep_alive_connections_within_a_second() {
    run(async {
        let m = mesh().await;
        let h = http(); // one client: its connections to the proxy stay open
        assert_eq!(get(&h, m.batch.outbound, "web").await.0, 200);
        assert_eq!(get(&h, m.frontend.outbound, "web").await.0, 200);
        let mut admin = m.c.client(1).await;
        let t0 = std::time::Instant::now();
        admin
            .apply(apply_req(vec![doc(
                "kind: Policy\nmetadata: {name: no-batch}\nspec: {service: web, action: deny, from: ['spiffe://test.mesh/ns/default/sa/batch']}",
            )]))
            .await
            .unwrap();
        let denied = eventually("the deny to apply", Duration::from_secs(5), || {
            let h = h.clone();
            let out = m.batch.outbound;
            async move {
                let r = get(&h, out, "web").await;
                (r.0 == 403).then_some(r)
            }
        })
        .await;
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t0.elapsed()
        );
        assert_eq!(denied.2, "denied");
        assert!(denied.1.contains("deny policy"), "{}", denied.1);
        // Others are unaffected.
        assert_eq!(get(&h, m.frontend.outbound, "web").await.0, 200);
        m.c.shutdown().await;
    });
}

#[test]
fn a_ca_rotation_under_load_fails_no_request() {
    run(async {
        let m = mesh().await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut tasks = Vec::new();
        for out in [m.frontend.outbound, m.batch.outbound] {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let h = http();
                while !stop.load(Ordering::Relaxed) {
                    if get(&h, out, "web").await.0 == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = raftmesh_controlplane::ca::authority(&m.c.nodes[&1].reader)
            .unwrap()
            .1;
        let mut admin = m.c.client(1).await;
        let r = admin
            .rotate_ca(pb::RotateCaRequest {})
            .await
            .unwrap()
            .into_inner();
        // Proxies fetch certificates from the new root; traffic goes on.
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let after = raftmesh_controlplane::ca::authority(&m.c.nodes[&1].reader)
            .unwrap()
            .1;
        assert_ne!(before.roots, after.roots);
        assert_eq!(after.roots.iter().filter(|r| r.signing).count(), 1);
        assert_eq!(
            after.roots.iter().find(|r| r.signing).unwrap().id,
            r.new_root_fingerprint
        );
        assert!(
            ok.load(Ordering::Relaxed) > 100,
            "too little traffic: {}",
            ok.load(Ordering::Relaxed)
        );
        assert_eq!(
            failed.load(Ordering::Relaxed),
            0,
            "requests failed during the rotation"
        );
        // The CA's key never leaves through the admin API.
        let g = admin
            .get(pb::GetRequest {
                kind: "authority".into(),
                namespace: String::new(),
                name: "workload-ca".into(),
                stale: false,
            })
            .await
            .unwrap()
            .into_inner();
        let res = Resource::try_from(g.resource.unwrap()).unwrap();
        let Spec::Authority(a) = res.spec else {
            panic!()
        };
        assert!(a.roots.iter().all(|r| r.key_pem.is_empty()));
        m.c.shutdown().await;
    });
}

#[test]
fn workload_certificates_rotate_at_half_life_under_load() {
    run(async {
        let c = TestCluster::start(1).await;
        let mut admin = c.client(1).await;
        admin
            .apply(apply_req(vec![
                doc("kind: Service\nmetadata: {name: web}\nspec: {}"),
                doc("kind: MeshConfig\nmetadata: {name: mesh}\nspec: {cert_ttl: 1m}"),
            ]))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let web_app = app("web").await;
        let web = proxy(
            &c,
            dir.path(),
            "web",
            "web-1",
            Some(web_app),
            bootstrap_token(&mut admin, "web").await,
            &[],
        )
        .await;
        let fe = proxy(
            &c,
            dir.path(),
            "frontend",
            "fe-1",
            None,
            bootstrap_token(&mut admin, "frontend").await,
            &["web"],
        )
        .await;
        let h = http();
        eventually("traffic", Duration::from_secs(15), || {
            let (h, out) = (h.clone(), fe.outbound);
            async move { (get(&h, out, "web").await.0 == 200).then_some(()) }
        })
        .await;
        let cert_file = dir.path().join("web-1").join("identity").join("cert.pem");
        let first = std::fs::read_to_string(&cert_file).unwrap();
        // Owner-only files.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&cert_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("web-1").join("identity").join("key.pem"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let mut failed = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(50);
        let mut rotated = false;
        while std::time::Instant::now() < deadline {
            if get(&h, fe.outbound, "web").await.0 != 200 {
                failed += 1;
            }
            if std::fs::read_to_string(&cert_file).unwrap() != first {
                rotated = true;
                // A few more requests on the new certificate.
                for _ in 0..50 {
                    if get(&h, fe.outbound, "web").await.0 != 200 {
                        failed += 1;
                    }
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            rotated,
            "the certificate was not renewed at half its 1-minute life"
        );
        assert_eq!(failed, 0);
        drop(web);
        c.shutdown().await;
    });
}

#[test]
fn bootstrap_tokens_are_refused_when_expired_revoked_used_up_or_for_another_service() {
    run(async {
        let c = TestCluster::start(3).await;
        let leader = c.wait_ready().await;
        let mut admin = c.client(leader).await;
        let mk = |ttl_ms: u64, uses: u32| pb::CreateTokenRequest {
            scope: Some(pb::create_token_request::Scope::Service(pb::ServiceScope {
                service: "web".into(),
                namespace: String::new(),
            })),
            ttl_ms,
            max_uses: uses,
        };
        let addr = c.addrs[&leader];
        // Expired.
        let t = admin.create_token(mk(1, 0)).await.unwrap().into_inner();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let e = FakeProxy::connect(addr, hello("web", "w1", &t.secret, &[]))
            .await
            .err()
            .unwrap();
        assert!(e.message().contains("has expired"), "{}", e.message());
        // Revoked.
        let t = admin.create_token(mk(0, 0)).await.unwrap().into_inner();
        admin
            .revoke_token(pb::RevokeTokenRequest { id: t.id.clone() })
            .await
            .unwrap();
        let e = FakeProxy::connect(addr, hello("web", "w1", &t.secret, &[]))
            .await
            .err()
            .unwrap();
        assert!(e.message().contains("has been revoked"), "{}", e.message());
        // Another service's.
        let e = FakeProxy::connect(
            addr,
            hello("api", "a1", &bootstrap_token(&mut admin, "web").await, &[]),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        // Single use, tried at once against two different nodes: one wins.
        let t = admin.create_token(mk(0, 1)).await.unwrap().into_inner();
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        let (a, b) = (c.addrs[&ids[0]], c.addrs[&ids[1]]);
        let (s1, s2) = (t.secret.clone(), t.secret.clone());
        let (r1, r2) = tokio::join!(
            FakeProxy::connect(a, hello("web", "w-a", &s1, &[])),
            FakeProxy::connect(b, hello("web", "w-b", &s2, &[]))
        );
        let wins = [r1.is_ok(), r2.is_ok()].iter().filter(|x| **x).count();
        assert_eq!(wins, 1, "a single-use token worked {wins} times");
        let e = FakeProxy::connect(c.addrs[&ids[2]], hello("web", "w-c", &t.secret, &[]))
            .await
            .err()
            .unwrap();
        assert!(e.message().contains("used"), "{}", e.message());
        c.shutdown().await;
    });
}

#[test]
fn a_certificate_signing_request_yields_a_certificate_for_the_token_s_service_only_and_a_captured_hello_is_useless(
) {
    run(async {
        let c = TestCluster::start(1).await;
        let mut admin = c.client(1).await;
        let token = bootstrap_token(&mut admin, "web").await;
        let key = rcgen::KeyPair::generate().unwrap();
        // The CSR asks for "admin": meshd ignores its names.
        let csr = rcgen::CertificateParams::new(vec!["admin.default.svc.test.mesh".to_string()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let mut h = hello("web", "web-1", &token, &[]);
        h.csr_pem = csr;
        let mut p = FakeProxy::connect(c.addrs[&1], h).await.unwrap();
        let cert = loop {
            match p.rx.message().await.unwrap().unwrap().msg {
                Some(pb::server_message::Msg::Certificate(c)) => break c,
                _ => continue,
            }
        };
        let ca = raftmesh_controlplane::ca::authority(&c.nodes[&1].reader)
            .unwrap()
            .1;
        let id = raftmesh_controlplane::ca::crypto::verify_workload(
            &ca,
            &cert.certificate_pem,
            raftmesh_controlplane::procinfo::unix_ms(),
        )
        .unwrap();
        assert_eq!(id, "spiffe://test.mesh/ns/default/sa/web");
        assert!(!cert.certificate_pem.contains("admin"));
        assert_eq!(cert.trust_bundle_pem.len(), 1);
        let ttl = cert.expires_at_ms - raftmesh_controlplane::procinfo::unix_ms();
        assert!(
            (23 * 3_600_000..=24 * 3_600_000).contains(&ttl),
            "default TTL is 24h: {ttl}"
        );
        // The proxy reconnects with its certificate and a proof over a
        // nonce of the node's, no token.
        let addr = c.addrs[&1];
        let sign = |k: &rcgen::KeyPair, nonce: &[u8], csr: &str| {
            rcgen::SigningKey::sign(
                k,
                &raftmesh_api::identity::hello_proof_message("web-1", nonce, csr),
            )
            .unwrap()
        };
        let mut h = hello("web", "web-1", "", &[]);
        h.certificate_pem = cert.certificate_pem.clone();
        h.proof_nonce = challenge(addr).await;
        h.proof = sign(&key, &h.proof_nonce, "");
        assert!(FakeProxy::connect(addr, h.clone()).await.is_ok());
        // The same Hello again (captured on the wire): the nonce is spent.
        let e = FakeProxy::connect(addr, h.clone()).await.err().unwrap();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("already used"), "{}", e.message());
        // The captured proof with a fresh nonce does not verify.
        let mut replay = h.clone();
        replay.proof_nonce = challenge(addr).await;
        let e = FakeProxy::connect(addr, replay).await.err().unwrap();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        // An attacker's CSR under a proof the proxy made for its own (or
        // none): no certificate for the attacker's key.
        let attacker = rcgen::KeyPair::generate().unwrap();
        let attacker_csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&attacker)
            .unwrap()
            .pem()
            .unwrap();
        let mut stolen = hello("web", "web-1", "", &[]);
        stolen.certificate_pem = cert.certificate_pem.clone();
        stolen.proof_nonce = challenge(addr).await;
        stolen.proof = sign(&key, &stolen.proof_nonce, "");
        stolen.csr_pem = attacker_csr.clone();
        let e = FakeProxy::connect(addr, stolen).await.err().unwrap();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        // A nonce that is not the node's, or none.
        let mut forged = h.clone();
        forged.proof_nonce = vec![0u8; 56];
        forged.proof = sign(&key, &forged.proof_nonce, "");
        let e = FakeProxy::connect(addr, forged.clone())
            .await
            .err()
            .unwrap();
        assert!(
            e.message().contains("not issued by this node"),
            "{}",
            e.message()
        );
        forged.proof_nonce.clear();
        forged.proof = sign(&key, &[], "");
        let e = FakeProxy::connect(addr, forged).await.err().unwrap();
        assert!(e.message().contains("no proof nonce"), "{}", e.message());
        // The real proxy renewing binds its own CSR and gets a certificate.
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let mut renew = hello("web", "web-1", "", &[]);
        renew.certificate_pem = cert.certificate_pem.clone();
        renew.proof_nonce = challenge(addr).await;
        renew.csr_pem = csr.clone();
        renew.proof = sign(&key, &renew.proof_nonce, &csr);
        let mut p = FakeProxy::connect(addr, renew).await.unwrap();
        loop {
            if let Some(pb::server_message::Msg::Certificate(c)) =
                p.rx.message().await.unwrap().unwrap().msg
            {
                assert!(!c.certificate_pem.is_empty());
                break;
            }
        }
        // Someone else's proof (another key) is refused.
        let other = rcgen::KeyPair::generate().unwrap();
        h.proof_nonce = challenge(addr).await;
        h.proof = sign(&other, &h.proof_nonce, "");
        let e = FakeProxy::connect(addr, h).await.err().unwrap();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        c.shutdown().await;
    });
}

/// A fresh proof nonce from the node at `addr`.
async fn challenge(addr: SocketAddr) -> Vec<u8> {
    let channel = raftmesh_client::endpoint(&addr.to_string(), None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::discovery_client::DiscoveryClient::new(channel)
        .challenge(pb::ChallengeRequest {})
        .await
        .unwrap()
        .into_inner()
        .nonce
}

#[test]
fn a_node_with_another_cluster_secret_cannot_open_the_ca_key_and_says_why() {
    run(async {
        let c = TestCluster::start(1).await;
        let node = &c.nodes[&1];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while raftmesh_controlplane::ca::authority(&node.reader).is_none() {
            assert!(tokio::time::Instant::now() < deadline, "no CA");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, ca) = raftmesh_controlplane::ca::authority(&node.reader).unwrap();
        assert!(
            ca.roots
                .iter()
                .all(|r| raftmesh_controlplane::ca::seal::is_sealed(&r.key_pem)),
            "the CA key is sealed in the Raft state"
        );
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let sign = |kek| {
            raftmesh_controlplane::ca::certificate(
                &node.reader,
                kek,
                "test",
                "web",
                "default",
                &csr,
                raftmesh_controlplane::procinfo::unix_ms(),
            )
        };
        assert!(sign(node.ops.kek()).is_ok());
        let other = raftmesh_controlplane::ca::seal::Kek::derive(
            "file",
            "another-cluster-secret-32-bytes.",
        );
        let e = sign(&other).unwrap_err();
        assert!(
            matches!(e, raftmesh_controlplane::ca::IdentityError::Sealed(_)),
            "{e}"
        );
        assert!(e.to_string().contains("cannot decrypt"), "{e}");
        // A key an earlier version stored in clear is sealed by the leader.
        let kek = node.ops.kek();
        let plain: Vec<raftmesh_api::CaRoot> = ca
            .roots
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.key_pem = kek.open(&r.id, &r.key_pem).unwrap();
                r
            })
            .collect();
        node.ops
            .update(&raftmesh_controlplane::ca::ca_key(), 1, |cur| {
                let mut next = (**cur.unwrap()).clone();
                next.spec = Spec::Authority(raftmesh_api::AuthoritySpec {
                    roots: plain.clone(),
                });
                raftmesh_controlplane::cluster::Change::<std::io::Error>::Put(next)
            })
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (_, ca) = raftmesh_controlplane::ca::authority(&node.reader).unwrap();
            if ca
                .roots
                .iter()
                .all(|r| raftmesh_controlplane::ca::seal::is_sealed(&r.key_pem))
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the leader never sealed a key stored in clear"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(sign(node.ops.kek()).is_ok());
        c.shutdown().await;
    });
}

/// An app that answers every request with an endless chunked stream
/// (a line every 100 ms).
async fn streaming_app() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_r: hyper::Request<hyper::body::Incoming>| async move {
                        let ticks = tokio_stream::StreamExt::map(
                            tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(
                                Duration::from_millis(100),
                            )),
                            |_| {
                                Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from("tick\n")))
                            },
                        );
                        Ok::<_, Infallible>(hyper::Response::new(http_body_util::StreamBody::new(
                            ticks,
                        )))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    addr
}

/// Reads from `s` until it ends; how long after `since` that was.
async fn ended_after<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    since: std::time::Instant,
) -> Duration {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(r.is_ok(), "still flowing 10 s after the deny");
    since.elapsed()
}

#[test]
fn a_committed_deny_ends_live_tcp_tunnels_and_streaming_answers() {
    run(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let c = TestCluster::start(1).await;
        let mut admin = c.client(1).await;
        admin
            .apply(apply_req(vec![doc(
                "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}",
            )]))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let web = proxy(
            &c,
            dir.path(),
            "web",
            "web-1",
            Some(streaming_app().await),
            bootstrap_token(&mut admin, "web").await,
            &[],
        )
        .await;
        // A caller with a TCP upstream to web, and its outbound for HTTP.
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let front = raftmesh_dataplane_proxy::start(ProxyConfig {
            control_plane: c.addrs.values().map(|a| a.to_string()).collect(),
            service: "frontend".into(),
            instance: "frontend-1".into(),
            namespace: "default".into(),
            labels: Default::default(),
            app_port: None,
            gateway: false,
            advertise: "127.0.0.1".into(),
            inbound: any,
            outbound: any,
            capture: None,
            dns: None,
            dns_upstream: None,
            admin: any,
            upstreams: vec![("web".into(), any)],
            token: Some(bootstrap_token(&mut admin, "frontend").await),
            ca_pem: None,
            state_dir: Some(dir.path().join("frontend-1")),
            config_file: None,
            cluster: String::new(),
            locality: String::new(),
            subscribe: vec!["web".into()],
            subscription_idle: Duration::from_secs(600),
            stats_interval: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(60),
            header_timeout: std::time::Duration::from_secs(10),
            http1_fast_path: true,
            workers: None,
            probe: Default::default(),
            drain_timeout: std::time::Duration::from_secs(5),
            takeover: false,
        })
        .await
        .unwrap();
        let request = b"GET /stream HTTP/1.1\r\nHost: web\r\n\r\n";
        // A TCP tunnel (mTLS between the proxies) carrying a stream...
        let mut tunnel = eventually("a TCP tunnel to web", Duration::from_secs(15), || {
            let up = front.upstreams[0].1;
            async move {
                let mut s = tokio::net::TcpStream::connect(up).await.ok()?;
                s.write_all(request).await.ok()?;
                let mut buf = [0u8; 64];
                let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
                    .await
                    .ok()?
                    .ok()?;
                (n > 0 && buf.starts_with(b"HTTP/1.1 200")).then_some(s)
            }
        })
        .await;
        // ...and an HTTP streaming answer through the outbound port.
        let mut http_stream = tokio::net::TcpStream::connect(front.outbound)
            .await
            .unwrap();
        http_stream.write_all(request).await.unwrap();
        let mut buf = [0u8; 64];
        let n = http_stream.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        // A deny for the caller, committed: both end.
        let t0 = std::time::Instant::now();
        admin
            .apply(apply_req(vec![doc(
                "kind: Policy\nmetadata: {name: no-front}\nspec: {service: web, action: deny, from: ['spiffe://test.mesh/ns/default/sa/frontend']}",
            )]))
            .await
            .unwrap();
        let tcp = ended_after(&mut tunnel, t0).await;
        let http = ended_after(&mut http_stream, t0).await;
        eprintln!("tunnel ended {tcp:?}, stream ended {http:?} after the deny was sent");
        assert!(
            tcp < Duration::from_secs(2) && http < Duration::from_secs(2),
            "{tcp:?} {http:?}"
        );
        front.shutdown().await;
        web.shutdown().await;
        c.shutdown().await;
    });
}

#[test]
fn a_revoked_identity_or_instance_is_refused_by_meshd_and_every_proxy() {
    run(async {
        use raftmesh_ctl::Parser as _;
        let m = mesh().await;
        let h = http();
        assert_eq!(get(&h, m.batch.outbound, "web").await.0, 200);
        assert_eq!(get(&h, m.frontend.outbound, "web").await.0, 200);
        let servers =
            m.c.addrs
                .values()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",");
        let meshctl = |args: &[&str]| {
            let mut all = vec!["meshctl", "--server", &servers, "--token", TOKEN];
            all.extend_from_slice(args);
            raftmesh_ctl::run(raftmesh_ctl::Cli::try_parse_from(all).unwrap())
        };
        // meshctl revoke identity: batch is refused by web within a second.
        let t0 = std::time::Instant::now();
        meshctl(&[
            "revoke",
            "identity",
            "spiffe://test.mesh/ns/default/sa/batch",
            "--reason",
            "key leaked",
        ])
        .await
        .unwrap();
        eventually("web refusing batch", Duration::from_secs(5), || {
            let (h, out) = (h.clone(), m.batch.outbound);
            async move { (get(&h, out, "web").await.0 != 200).then_some(()) }
        })
        .await;
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t0.elapsed()
        );
        assert_eq!(
            get(&h, m.frontend.outbound, "web").await.0,
            200,
            "others unaffected"
        );
        // meshd ended batch's stream and refuses it a new one (no renewal).
        let mut admin = m.c.client(1).await;
        eventually("batch's stream closed", Duration::from_secs(5), || {
            let mut admin = admin.clone();
            async move {
                let ps = admin
                    .list_proxies(pb::ListProxiesRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .proxies;
                ps.iter()
                    .any(|p| p.instance == "batch-1" && p.disconnected_since_ms > 0)
                    .then_some(())
            }
        })
        .await;
        let token = bootstrap_token(&mut admin, "batch").await;
        let e = FakeProxy::connect(m.c.addrs[&1], hello("batch", "batch-2", &token, &[]))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().contains("revoked") && e.message().contains("key leaked"),
            "{}",
            e.message()
        );
        // An instance: its endpoint is dropped by every caller.
        meshctl(&["revoke", "instance", "web-1"]).await.unwrap();
        eventually(
            "frontend no longer sending to web-1",
            Duration::from_secs(5),
            || {
                let (h, out) = (h.clone(), m.frontend.outbound);
                async move { (get(&h, out, "web").await.0 == 503).then_some(()) }
            },
        )
        .await;
        m.c.shutdown().await;
    });
}
