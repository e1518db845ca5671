//! Protocols across two proxies: opaque TCP, gRPC unary and streaming;
//! hostile clients.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use raftmesh_api::v1 as pb;
use raftmesh_api::v1::discovery_server::{Discovery, DiscoveryServer};
use raftmesh_api::v1::raft_server::{Raft, RaftServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::support::*;

/// Proxy B: inbound to an app on `app_port`.
async fn server_side(app_port: u16) -> (raftmesh_dataplane_proxy::Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("b.yaml");
    std::fs::write(&f, "kind: Service\nmetadata: {name: app}\nspec: {}\n").unwrap();
    let mut c = base_config();
    c.config_file = Some(f);
    c.service = "app".into();
    c.app_port = Some(app_port);
    (raftmesh_dataplane_proxy::start(c).await.unwrap(), dir)
}

fn endpoint_doc(service: &str, protocol: &str, at: SocketAddr) -> String {
    format!(
        "kind: Service\nmetadata: {{name: {service}}}\nspec: {{ports: [{{port: 80, protocol: {protocol}}}]}}\n---\nkind: Endpoint\nmetadata: {{name: {service}-1}}\nspec: {{service: {service}, address: 127.0.0.1, port: {}}}\n",
        at.port()
    )
}

#[tokio::test]
async fn opaque_tcp_crosses_two_proxies_through_an_upstream_port() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = echo.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let (b, _db) = server_side(echo_port).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.yaml");
    std::fs::write(&f, endpoint_doc("echo", "tcp", b.inbound.unwrap())).unwrap();
    let mut c = base_config();
    c.config_file = Some(f);
    c.upstreams = vec![("echo".into(), "127.0.0.1:0".parse().unwrap())];
    let a = raftmesh_dataplane_proxy::start(c).await.unwrap();
    let up = a.upstreams[0].1;
    for i in 0..5 {
        let mut s = tokio::net::TcpStream::connect(up).await.unwrap();
        let msg = format!("hello {i}, not HTTP\n");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8(buf).unwrap(), msg);
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// A gRPC server: unary NodeInfo answers id 42; Discovery echoes heartbeats.
struct Fake;

#[tonic::async_trait]
impl Raft for Fake {
    type TapStream = futures::stream::Empty<Result<pb::TapRecord, Status>>;

    async fn tap(&self, _: Request<pb::RaftPayload>) -> Result<Response<Self::TapStream>, Status> {
        Err(Status::unimplemented("no raft here"))
    }

    async fn append_entries(
        &self,
        _: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        Err(Status::unimplemented("no raft here"))
    }
    async fn vote(&self, _: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        Err(Status::unimplemented("no raft here"))
    }
    async fn install_snapshot(
        &self,
        _: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        Err(Status::unimplemented("no raft here"))
    }
    async fn forward(
        &self,
        _: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        Err(Status::failed_precondition(
            "a custom status travels in trailers",
        ))
    }
    async fn relay(
        &self,
        _: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        Err(Status::unimplemented("no raft here"))
    }
    async fn control(
        &self,
        _: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        Err(Status::unimplemented("no raft here"))
    }
    async fn node_info(
        &self,
        _: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        Ok(Response::new(pb::NodeInfoResponse {
            id: 42,
            ..Default::default()
        }))
    }
    async fn sessions(
        &self,
        _: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        Err(Status::unimplemented("no raft here"))
    }

    async fn stats(
        &self,
        _: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        Err(Status::unimplemented("no raft here"))
    }
}

#[tonic::async_trait]
impl Discovery for Fake {
    type StreamStream = Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;
    async fn challenge(
        &self,
        _: Request<pb::ChallengeRequest>,
    ) -> Result<Response<pb::ChallengeResponse>, Status> {
        Err(Status::unimplemented("this fake admits no certificates"))
    }
    async fn stream(
        &self,
        req: Request<Streaming<pb::ProxyMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let inbound = req.into_inner();
        let out = inbound.map(|m| {
            let m = m?;
            match m.msg {
                Some(pb::proxy_message::Msg::Heartbeat(h)) => Ok(pb::ServerMessage {
                    msg: Some(pb::server_message::Msg::Heartbeat(h)),
                }),
                _ => Err(Status::invalid_argument("heartbeats only")),
            }
        });
        Ok(Response::new(Box::pin(out)))
    }
}

#[tokio::test]
async fn grpc_unary_and_streaming_cross_two_proxies_with_trailers_intact() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = l.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftServer::new(Fake))
            .add_service(DiscoveryServer::new(Fake))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l)),
    );
    let (b, _db) = server_side(app_port).await;
    let (a, _da) = static_proxy(&endpoint_doc("grpcsvc", "grpc", b.inbound.unwrap())).await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", a.outbound))
        .unwrap()
        .origin("http://grpcsvc".parse().unwrap())
        .connect()
        .await
        .unwrap();

    let mut unary = pb::raft_client::RaftClient::new(ch.clone());
    for _ in 0..10 {
        let r = unary
            .node_info(pb::NodeInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.id, 42);
    }
    let e = unary.forward(pb::RaftPayload::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(e.message(), "a custom status travels in trailers");

    let mut streaming = pb::discovery_client::DiscoveryClient::new(ch);
    let outgoing = tokio_stream::iter((1..=20u64).map(|i| pb::ProxyMessage {
        msg: Some(pb::proxy_message::Msg::Heartbeat(pb::Heartbeat {
            unix_ms: i,
        })),
    }));
    let mut replies = streaming.stream(outgoing).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(m) = replies.message().await.unwrap() {
        if let Some(pb::server_message::Msg::Heartbeat(h)) = m.msg {
            got.push(h.unix_ms);
        }
    }
    assert_eq!(
        got,
        (1..=20).collect::<Vec<_>>(),
        "every message, in order, then a clean end"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn grpc_callers_get_grpc_statuses_from_the_proxy_never_a_text_503() {
    // A callee whose proxy denies everything, an endpoint that refuses
    // connections, one that accepts and never answers, and no service.
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftServer::new(Fake))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(app)),
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("b.yaml");
    std::fs::write(
        &f,
        "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {default_policy: deny}\n---\nkind: Service\nmetadata: {name: app}\nspec: {}\n",
    )
    .unwrap();
    let mut c = base_config();
    c.config_file = Some(f);
    c.service = "app".into();
    c.app_port = Some(app_port);
    let b = raftmesh_dataplane_proxy::start(c).await.unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let yaml = [
        endpoint_doc("denied", "grpc", b.inbound.unwrap()),
        endpoint_doc("down", "grpc", closed),
        endpoint_doc("slow", "grpc", silent_addr),
        "kind: Route\nmetadata: {name: slow}\nspec: {service: slow, timeout: 300ms}\n".into(),
    ]
    .join("---\n");
    let (a, _da) = static_proxy(&yaml).await;
    let call = |service: &'static str| {
        let outbound = a.outbound;
        async move {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{outbound}"))
                .unwrap()
                .origin(format!("http://{service}").parse().unwrap())
                .connect()
                .await
                .unwrap();
            pb::raft_client::RaftClient::new(ch)
                .node_info(pb::NodeInfoRequest {})
                .await
                .unwrap_err()
        }
    };
    for (service, code, error) in [
        ("down", tonic::Code::Unavailable, "upstream-connect"),
        ("slow", tonic::Code::DeadlineExceeded, "upstream-timeout"),
        ("nosuch", tonic::Code::Unimplemented, "no-route"),
        ("denied", tonic::Code::PermissionDenied, "denied"),
    ] {
        let s = call(service).await;
        assert_eq!(s.code(), code, "{service}: {s:?}");
        assert!(
            s.message().starts_with(&format!("{error}: ")),
            "{service}: the message names the code: {s:?}"
        );
        assert_eq!(
            s.metadata()
                .get("x-raftmesh-error")
                .map(|v| v.to_str().unwrap()),
            Some(error),
            "{service}"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn slowloris_and_malformed_requests_do_not_harm_other_connections() {
    let web = Upstream::start("web").await;
    let (p, _d) = static_proxy(&mesh("web", &[("web-1", web.addr, "v1")], "")).await;
    // Ten connections that trickle a never-finished request.
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(p.outbound).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // A malformed request gets a 400 and its connection closed.
    let raw = super::routing::raw_request(p.outbound, "THIS IS NOT HTTP\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw:?}");
    // Everyone else is served meanwhile.
    let c = http_client();
    for _ in 0..50 {
        for s in &mut slow {
            let _ = s.write_all(b"a").await;
        }
        assert_eq!(get(&c, p.outbound, "web", "/", &[]).await.0, 200);
    }
    p.shutdown().await;
}

#[tokio::test]
async fn inbound_forwards_http_to_the_local_app_and_explains_when_it_is_down() {
    let app = Upstream::start("app").await;
    let (b, _d) = server_side(app.addr.port()).await;
    let c = http_client();
    let (s, body, _) = get(&c, b.inbound.unwrap(), "app", "/hello", &[]).await;
    assert_eq!((s, body.as_str()), (200, "app /hello host=app"));
    b.shutdown().await;
    let nothing = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (b, _d) = server_side(nothing).await;
    let (s, _, e) = get(&c, b.inbound.unwrap(), "app", "/", &[]).await;
    assert_eq!((s, e.as_deref()), (503, Some("app-unavailable")));
    b.shutdown().await;
}

/// An HTTP/1.1 app on a free port answering "ok" to every request, that
/// counts the connections it accepts: keep-alive, or (`close_after_one`)
/// closing each connection after one answer without saying so (no
/// `connection: close`).
async fn counting_app(close_after_one: bool) -> (u16, Arc<AtomicU32>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU32::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                loop {
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    got.clear();
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() || close_after_one {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted)
}

/// An app that closes each connection after one answer: the inbound
/// side's kept connection goes stale between requests, and each request
/// must still reach the app, on a new connection.
#[tokio::test]
async fn inbound_survives_an_app_that_closes_idle_connections() {
    let (port, accepted) = counting_app(true).await;
    let (b, _d) = server_side(port).await;
    let c = http_client(); // one keep-alive connection to the inbound side
    for i in 0..20 {
        let (s, body, e) = get(&c, b.inbound.unwrap(), "app", "/", &[]).await;
        assert_eq!((s, body.as_str(), e), (200, "ok", None), "request {i}");
        if i % 2 == 0 {
            // Give the close time to arrive, so some requests find the
            // connection known-closed and some find it closing.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    assert!(accepted.load(Ordering::SeqCst) >= 20);
    b.shutdown().await;
}

#[tokio::test]
async fn idle_downstream_connections_share_the_connections_to_the_app() {
    let (port, accepted) = counting_app(false).await;
    let (b, _d) = server_side(port).await;
    // Twenty client connections, one request each, all kept open.
    let mut held = Vec::new();
    for i in 0..20 {
        let mut c = tokio::net::TcpStream::connect(b.inbound.unwrap())
            .await
            .unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"ok") {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection {i} closed before its answer");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "connection {i}: {got:?}");
        held.push(c);
    }
    // One request at a time: the app needs one connection, not twenty.
    let n = accepted.load(Ordering::SeqCst);
    assert!(
        n <= 2,
        "the app saw {n} connections for 20 sequential requests"
    );
    b.shutdown().await;
}

#[tokio::test]
async fn a_keep_alive_connection_may_wait_past_the_header_limit_and_a_slow_head_may_not() {
    let web = Upstream::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.yaml");
    std::fs::write(&f, mesh("web", &[("web-1", web.addr, "v1")], "")).unwrap();
    let mut c = base_config();
    c.config_file = Some(f);
    c.header_timeout = Duration::from_secs(1);
    c.idle_timeout = Duration::from_secs(3);
    let p = raftmesh_dataplane_proxy::start(c).await.unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(p.outbound).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        s.write_all(req).await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        // Waiting between requests longer than the header limit is fine
        // (it closed the connection here before).
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    // Idle past the idle limit: closed.
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "still open after the idle limit: {closed:?}"
    );
    // A request head that trickles in: cut at the header limit.
    let mut slow = tokio::net::TcpStream::connect(p.outbound).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let t0 = std::time::Instant::now();
    let cut = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await;
    assert!(
        matches!(cut, Ok(Ok(0)) | Ok(Err(_))),
        "a slow head was kept: {cut:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    p.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_survives_30_s_under_the_default_limits() {
    let web = Upstream::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.yaml");
    std::fs::write(&f, mesh("web", &[("web-1", web.addr, "v1")], "")).unwrap();
    let mut c = base_config();
    c.config_file = Some(f);
    // mesh-proxy's defaults (--idle-timeout 60s, --header-timeout 10s).
    c.idle_timeout = Duration::from_secs(60);
    c.header_timeout = Duration::from_secs(10);
    let p = raftmesh_dataplane_proxy::start(c).await.unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(p.outbound).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for round in 0..2 {
        s.write_all(req).await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "round {round}: {}",
            String::from_utf8_lossy(&buf[..n])
        );
        if round == 0 {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }
    p.shutdown().await;
}
