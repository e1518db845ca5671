//! Fault injection (`Route.fault`) on real sockets, with statistical
//! bounds where a share is involved.

use std::time::{Duration, Instant};

use super::support::*;

#[tokio::test]
async fn a_share_of_requests_is_aborted_and_the_rest_go_through() {
    let web = Upstream::start("web").await;
    let route = "kind: Route\nmetadata: {name: web}\nspec: {service: web, fault: {abort: {http_status: 503, percent: 20}}}\n";
    let (p, _d) = static_proxy(&mesh("web", &[("web-1", web.addr, "v1")], route)).await;
    let c = http_client();
    let n = 1_000;
    let mut aborted = 0;
    for _ in 0..n {
        let (s, _, e) = get(&c, p.outbound, "web", "/", &[]).await;
        match (s, e.as_deref()) {
            (200, None) => {}
            (503, Some("fault-injected")) => aborted += 1,
            other => panic!("{other:?}"),
        }
    }
    // Binomial(1000, 0.2): sd 12.6; 4 sd either side.
    assert!((150..=250).contains(&aborted), "{aborted} of {n} aborted");
    // Aborted requests never reached the app.
    assert_eq!(web.hits(), n - aborted);
    p.shutdown().await;
}

#[tokio::test]
async fn a_header_gated_delay_and_abort_touch_only_requests_that_carry_it() {
    let web = Upstream::start("web").await;
    let route = "kind: Route\nmetadata: {name: web}\nspec:\n  service: web\n  fault:\n    header: {name: x-chaos, value: \"on\"}\n    delay: {fixed: 300ms, percent: 100}\n    abort: {http_status: 418, percent: 100}\n";
    let (p, _d) = static_proxy(&mesh("web", &[("web-1", web.addr, "v1")], route)).await;
    let c = http_client();
    for _ in 0..20 {
        let (s, _, e) = get(&c, p.outbound, "web", "/", &[("x-chaos", "off")]).await;
        assert_eq!((s, e), (200, None));
    }
    let t0 = Instant::now();
    let (s, _, e) = get(&c, p.outbound, "web", "/", &[("x-chaos", "on")]).await;
    assert_eq!((s, e.as_deref()), (418, Some("fault-injected")));
    assert!(t0.elapsed() >= Duration::from_millis(300), "delayed first");
    assert_eq!(web.hits(), 20);
    p.shutdown().await;
}

#[tokio::test]
async fn a_grpc_call_gets_the_injected_grpc_status() {
    use raftmesh_api::v1 as pb;
    // Never reached: the fault answers first.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let route = "kind: Route\nmetadata: {name: grpcsvc}\nspec: {service: grpcsvc, fault: {abort: {grpc_status: 8, percent: 100}}}\n";
    let (p, _d) = static_proxy(&mesh("grpcsvc", &[("g-1", nowhere, "v1")], route)).await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", p.outbound))
        .unwrap()
        .origin("http://grpcsvc".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let e = pb::raft_client::RaftClient::new(ch)
        .node_info(pb::NodeInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().starts_with("fault-injected: "), "{e:?}");
    p.shutdown().await;
}
