//! Mesh DNS on real UDP sockets: a static-config proxy answering mesh
//! names, a resolver of the test's own behind it for everything else.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{rdata::A, Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::support::base_config;

const MESH: &str = "kind: Service\nmetadata: {name: web}\nspec: {vip: 240.240.0.7, ports: [{port: 80}]}\n---\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec: {vip: 240.240.0.8, ports: [{port: 80}]}\n---\nkind: Peer\nmetadata: {name: west}\nspec: {addresses: [\"10.9.0.1:7100\"], trust_domain: west.mesh}\n---\nkind: Import\nmetadata: {name: pay--west}\nspec: {peer: west, service: pay, gateways: [\"10.9.0.2:15443\"], trust_domain: west.mesh, vip: 240.240.0.9}\n";

/// A resolver answering every A query with 192.0.2.1, counting queries.
async fn resolver() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok((n, peer)) = s.recv_from(&mut buf).await {
            let q = Message::from_vec(&buf[..n]).unwrap();
            let name = q.queries[0].name().clone();
            let _ = tx.send(name.to_ascii());
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.queries = q.queries.clone();
            r.answers.push(Record::from_rdata(
                name,
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
            ));
            s.send_to(&r.to_vec().unwrap(), peer).await.unwrap();
        }
    });
    (addr, rx)
}

async fn dns_proxy(
    upstream: SocketAddr,
) -> (
    raftmesh_dataplane_proxy::Proxy,
    SocketAddr,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("static.yaml");
    std::fs::write(&f, MESH).unwrap();
    let mut c = base_config();
    c.config_file = Some(f);
    c.dns = Some("127.0.0.1:0".parse().unwrap());
    c.dns_upstream = Some(upstream);
    let p = raftmesh_dataplane_proxy::start(c).await.unwrap();
    let dns = p.dns.unwrap();
    (p, dns, dir)
}

/// Sends raw bytes; the reply, or `None` after a second.
async fn exchange(server: SocketAddr, bytes: &[u8]) -> Option<Message> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(bytes, server).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(1), s.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(Message::from_vec(&buf[..n]).unwrap())
}

async fn ask(server: SocketAddr, name: &str, ty: RecordType) -> Message {
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
    exchange(server, &q.to_vec().unwrap())
        .await
        .expect("no answer")
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn mesh_names_answer_their_virtual_address_and_other_names_go_to_the_resolver() {
    let (up, mut asked) = resolver().await;
    let (proxy, dns, _dir) = dns_proxy(up).await;
    let web = Ipv4Addr::new(240, 240, 0, 7);
    for name in ["web", "web.", "WEB.default.", "web.default"] {
        let m = ask(dns, name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(m.metadata.authoritative, "{name}");
        assert_eq!(a_records(&m), vec![web], "{name}");
    }
    // A service of another namespace, by name.namespace.
    let m = ask(dns, "api.shop.", RecordType::A).await;
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(240, 240, 0, 8)]);
    // An import from a peer, by service.namespace.peer.
    for name in ["pay.default.west.", "PAY.default.west"] {
        let m = ask(dns, name, RecordType::A).await;
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(240, 240, 0, 9)], "{name}");
    }
    // No IPv6 address: an empty answer at once, not a wait.
    let m = ask(dns, "web.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert!(
        asked.try_recv().is_err(),
        "a mesh name reached the resolver"
    );

    // Outside names (and `api` in a namespace other than its own) are the
    // resolver's.
    for name in [
        "example.com.",
        "api.",
        "web.default.example.",
        "pay.default.east.",
    ] {
        let m = ask(dns, name, RecordType::A).await;
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(192, 0, 2, 1)], "{name}");
        assert_eq!(asked.recv().await.unwrap(), name);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn malformed_queries_responses_and_floods_do_not_break_mesh_dns() {
    let (up, _asked) = resolver().await;
    let (proxy, dns, _dir) = dns_proxy(up).await;
    // A readable header with garbage after it: FORMERR, same id.
    let mut junk = vec![0xAB, 0xCD, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    junk.extend_from_slice(&[0xff; 40]);
    let m = exchange(dns, &junk).await.expect("no FORMERR");
    assert_eq!(m.metadata.id, 0xABCD);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // Shorter than a header: nothing.
    assert!(exchange(dns, &[1, 2, 3]).await.is_none());
    // A response is never answered (no reflection loops).
    let mut r = Message::response(7, OpCode::Query);
    r.add_query(Query::query(
        Name::from_ascii("web.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(r.metadata.message_type, MessageType::Response);
    assert!(exchange(dns, &r.to_vec().unwrap()).await.is_none());
    // Other opcodes: NOTIMP.
    let mut u = Message::new(9, MessageType::Query, OpCode::Update);
    u.add_query(Query::query(
        Name::from_ascii("web.").unwrap(),
        RecordType::A,
    ));
    let m = exchange(dns, &u.to_vec().unwrap()).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    // A flood of junk, then a real question is still answered.
    let flood = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..2000u32 {
        let _ = flood.send_to(&i.to_be_bytes(), dns).await;
    }
    let m = ask(dns, "web.", RecordType::A).await;
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(240, 240, 0, 7)]);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_resolver_that_does_not_answer_gives_servfail() {
    // A bound socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (proxy, dns, _dir) = dns_proxy(silent.local_addr().unwrap()).await;
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut q = Message::query();
    q.add_query(Query::query(
        Name::from_ascii("example.com.").unwrap(),
        RecordType::A,
    ));
    s.send_to(&q.to_vec().unwrap(), dns).await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), s.recv(&mut buf))
        .await
        .expect("no SERVFAIL")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.metadata.id, q.metadata.id);
    proxy.shutdown().await;
}
