//! Egress through the outbound proxy: `External` hosts by HTTP and by
//! CONNECT, their declared ports, Policies on them, TLS origination with
//! given roots, and MeshConfig `outbound: allow | deny` for hosts nothing
//! declares.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use raftmesh_dataplane_proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::support::*;

/// An HTTP server outside the mesh answering `<name> <path> host=<host>`,
/// over TLS when `tls` is given.
async fn outside(name: &'static str, tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let host = req
                        .headers()
                        .get("host")
                        .map(|h| h.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "{name} {} host={host}",
                        req.uri().path()
                    )))))
                });
                let b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(cfg) => {
                        if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await {
                            let _ = b.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                    None => {
                        let _ = b.serve_connection(TokioIo::new(s), svc).await;
                    }
                }
            });
        }
    });
    addr
}

async fn proxy_with(yaml: &str) -> (Proxy, tempfile::TempDir) {
    static_proxy(yaml).await
}

/// A raw request through the proxy's outbound port: the status line, and
/// the rest of what came back.
async fn raw(p: &Proxy, text: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(p.outbound).await.unwrap();
    s.write_all(text.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    let (status, rest) = out.split_once("\r\n").unwrap_or((&out, ""));
    (status.to_string(), rest.to_string())
}

const MESH: &str = "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {trust_domain: east.mesh}\n";

#[tokio::test]
async fn a_declared_host_is_reached_by_http_and_connect_on_its_ports_only() {
    let up = outside("stripe", None).await;
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_port = other.local_addr().unwrap().port();
    let ext = format!(
        "{MESH}---\nkind: External\nmetadata: {{name: stripe}}\nspec: {{hosts: [127.0.0.1], ports: [{}]}}\n",
        up.port()
    );
    let (p, _d) = proxy_with(&ext).await;
    let port = up.port();
    // Forward-proxy style (absolute URI) and by Host alone.
    let (status, body) = raw(
        &p,
        &format!("GET http://127.0.0.1:{port}/v1/charges HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(
        body.ends_with(&format!("stripe /v1/charges host=127.0.0.1:{port}")),
        "{body}"
    );
    let (status, _) = raw(
        &p,
        &format!("GET /x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    // A port the External does not declare.
    let (status, body) = raw(
        &p,
        &format!("GET /x HTTP/1.1\r\nHost: 127.0.0.1:{other_port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden", "{body}");
    assert!(body.contains("x-raftmesh-error: egress-denied"), "{body}");
    let (status, _) = raw(
        &p,
        &format!("CONNECT 127.0.0.1:{other_port} HTTP/1.1\r\nHost: 127.0.0.1:{other_port}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    // CONNECT: a tunnel to the host; HTTP written into it reaches it.
    let mut s = tokio::net::TcpStream::connect(p.outbound).await.unwrap();
    s.write_all(
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"GET /tunnel HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.ends_with("stripe /tunnel host=localhost"),
        "{answer}"
    );
    p.shutdown().await;
    drop(other);
}

#[tokio::test]
async fn a_policy_on_an_external_denies_this_workload_by_http_and_connect() {
    let up = outside("stripe", None).await;
    let port = up.port();
    let ext = format!(
        "{MESH}---\nkind: External\nmetadata: {{name: stripe}}\nspec: {{hosts: [127.0.0.1], ports: [{port}]}}\n---\nkind: Policy\nmetadata: {{name: no-stripe}}\nspec: {{service: stripe, external: true, action: deny, from: ['spiffe://east.mesh/ns/default/sa/client'], to: [{{paths: [/v1/]}}]}}\n"
    );
    let (p, _d) = proxy_with(&ext).await;
    let (status, body) = raw(
        &p,
        &format!("GET /v1/charges HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden", "{body}");
    assert!(body.contains("x-raftmesh-error: denied"), "{body}");
    // Outside the denied paths: allowed.
    let (status, _) = raw(
        &p,
        &format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    p.shutdown().await;
    // A deny of every request covers CONNECT too.
    let ext = format!(
        "{MESH}---\nkind: External\nmetadata: {{name: stripe}}\nspec: {{hosts: [127.0.0.1], ports: [{port}]}}\n---\nkind: Policy\nmetadata: {{name: no-stripe}}\nspec: {{service: stripe, external: true, action: deny}}\n"
    );
    let (p, _d) = proxy_with(&ext).await;
    let (status, body) = raw(
        &p,
        &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden", "{body}");
    p.shutdown().await;
}

/// A CA and a server config for `127.0.0.1` signed by it.
fn tls_for_loopback() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(std::net::IpAddr::from([
        127, 0, 0, 1,
    ]))];
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    (ca_cert.pem(), Arc::new(cfg))
}

#[tokio::test]
async fn tls_origination_verifies_the_host_with_the_given_roots() {
    let (ca_pem, server) = tls_for_loopback();
    let up = outside("secure", Some(server)).await;
    let ext = |ca: &str| {
        let ca = ca.replace('\n', "\\n");
        format!(
            "{MESH}---\nkind: External\nmetadata: {{name: secure}}\nspec: {{hosts: [127.0.0.1], ports: [80], tls: {{port: {}, ca_pem: \"{ca}\"}}}}\n",
            up.port()
        )
    };
    let (p, _d) = proxy_with(&ext(&ca_pem)).await;
    // The app speaks plain HTTP to port 80; the proxy speaks TLS to the host.
    let (status, body) = raw(
        &p,
        "GET /pay HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.ends_with("secure /pay host=127.0.0.1"), "{body}");
    p.shutdown().await;
    // Other roots: the host's certificate is not trusted, nothing is sent.
    let (other_ca, _) = tls_for_loopback();
    let (p, _d) = proxy_with(&ext(&other_ca)).await;
    let (status, body) = raw(
        &p,
        "GET /pay HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert!(
        body.contains("x-raftmesh-error: upstream-connect"),
        "{body}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn undeclared_hosts_are_relayed_under_allow_and_refused_under_deny() {
    let up = outside("anywhere", None).await;
    let port = up.port();
    let req = format!("GET /x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    // The default: allow.
    let (p, _d) = proxy_with(MESH).await;
    let (status, body) = raw(&p, &req).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    // Never to its own listeners: a request naming the outbound port
    // would loop.
    for target in [p.outbound, p.admin] {
        let (status, body) = raw(
            &p,
            &format!(
                "GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                target.port()
            ),
        )
        .await;
        assert_eq!(status, "HTTP/1.1 403 Forbidden", "{body}");
        assert!(body.contains("own listener"), "{body}");
    }
    // A dotted name that is neither a mesh service nor resolvable.
    let (status, body) = raw(
        &p,
        "GET /x HTTP/1.1\r\nHost: nothing.invalid\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 404 Not Found", "{body}");
    assert!(body.contains("x-raftmesh-error: no-route"), "{body}");
    p.shutdown().await;
    // deny: only what an External declares.
    let deny = "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {trust_domain: east.mesh, outbound: deny}\n";
    let (p, _d) = proxy_with(deny).await;
    let (status, body) = raw(&p, &req).await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden", "{body}");
    assert!(body.contains("x-raftmesh-error: egress-denied"), "{body}");
    let (status, _) = raw(
        &p,
        &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    p.shutdown().await;
    let declared = format!(
        "{deny}---\nkind: External\nmetadata: {{name: here}}\nspec: {{hosts: [127.0.0.1], ports: [{port}]}}\n"
    );
    let (p, _d) = proxy_with(&declared).await;
    let (status, body) = raw(&p, &req).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    p.shutdown().await;
}
