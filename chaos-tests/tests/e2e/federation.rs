//! Two clusters of three meshd each (on loopback, so they reach each
//! other), peered with a token: `west` exports `api`, `east` imports it and
//! calls it through west's east-west gateway as `api.default.west`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use raftmesh_api::v1 as pb;
use raftmesh_chaos_tests::client::admin;
use raftmesh_chaos_tests::cluster::{Cluster, ClusterOpts};
use raftmesh_chaos_tests::net::Link;

use super::{mesh_proxy, mint, Client, ProxyProc};

/// An app that answers `<name> <the caller header it received>`.
async fn echo_caller(name: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<Incoming>| async move {
                    let caller = req
                        .headers()
                        .get("x-forwarded-client-cert")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(format!(
                        "{name} {caller}"
                    )))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

async fn apply(adm: &mut raftmesh_client::Admin, yaml: &str) {
    let items = raftmesh_api::parse_documents(yaml)
        .unwrap()
        .into_iter()
        .map(|r| pb::ApplyItem {
            resource: Some(r.into()),
            expected_revision: None,
        })
        .collect();
    adm.apply(pb::ApplyRequest { items }).await.unwrap();
}

/// (status, `x-raftmesh-error`, body).
pub(super) async fn call(
    c: &Client,
    to: SocketAddr,
    host: &str,
) -> Result<(u16, String, String), String> {
    let req = hyper::Request::get(format!("http://{to}/"))
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), c.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let s = r.status().as_u16();
    let code = r
        .headers()
        .get("x-raftmesh-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let b = r
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((s, code, String::from_utf8_lossy(&b).into_owned()))
}

/// Calls until `ok` holds (at most `within`); the last answer otherwise.
async fn until(
    c: &Client,
    to: SocketAddr,
    host: &str,
    within: Duration,
    procs: &[&ProxyProc],
    ok: impl Fn(&(u16, String, String)) -> bool,
) -> (u16, String, String) {
    let deadline = Instant::now() + within;
    loop {
        let last = call(c, to, host).await;
        if let Ok(r) = &last {
            if ok(r) {
                return r.clone();
            }
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("--- {}:\n{}", p.proc.name, p.proc.log_tail(30)))
                .collect();
            panic!("{host}: last answer {last:?}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The peering as the node running the link reports it.
async fn link_status(c: &Cluster, peer: &str) -> Option<pb::PeeringStatus> {
    for a in c.addrs() {
        let Ok(mut adm) = admin(&a, &c.token) else {
            continue;
        };
        let Ok(r) = adm.list_peerings(pb::ListPeeringsRequest {}).await else {
            continue;
        };
        if let Some(p) = r
            .into_inner()
            .peers
            .into_iter()
            .find(|p| p.name == peer && p.state == "connected")
        {
            return Some(p);
        }
    }
    None
}

fn proxy(dir: &Path, name: &str, cluster: &Cluster, args: &[&str]) -> ProxyProc {
    let mut all: Vec<String> = vec![
        "--control-plane".into(),
        cluster.addrs().join(","),
        "--instance".into(),
        name.into(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    mesh_proxy(dir, name, &all)
}

/// Two clusters, `west` (exporting `api` to east) and `east`, peered, on
/// loopback.
async fn peered() -> (
    Cluster,
    Cluster,
    raftmesh_client::Admin,
    raftmesh_client::Admin,
) {
    let loopback = ClusterOpts {
        loopback: true,
        ..Default::default()
    };
    let (west, east, _, wa, ea) = peered_on(loopback).await;
    (west, east, wa, ea)
}

/// [`peered`] on `opts`' network: as root, each cluster in network
/// namespaces on a bridge of its own, routed to the other through the
/// host (the [`Link`] that can partition them).
async fn peered_on(
    opts: ClusterOpts,
) -> (
    Cluster,
    Cluster,
    Option<Link>,
    raftmesh_client::Admin,
    raftmesh_client::Admin,
) {
    let west = Cluster::start(3, opts.clone()).unwrap();
    let east = Cluster::start(3, opts).unwrap();
    let link = (west.net.real() && east.net.real()).then(|| west.net.link(&east.net).unwrap());
    west.wait_leader(Duration::from_secs(20)).await.unwrap();
    east.wait_leader(Duration::from_secs(20)).await.unwrap();
    let mut wa = admin(&west.addrs()[0], &west.token).unwrap();
    let mut ea = admin(&east.addrs()[0], &east.token).unwrap();
    apply(&mut wa, "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {trust_domain: west.mesh}\n---\nkind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 80}]}\n---\nkind: Export\nmetadata: {name: api-to-east}\nspec: {service: api, peers: [east]}").await;
    apply(
        &mut ea,
        "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {trust_domain: east.mesh}",
    )
    .await;

    // Peering: a token from west, established on east.
    let token = loop {
        match wa
            .generate_peering_token(pb::GeneratePeeringTokenRequest {
                peer: "east".into(),
                ttl_ms: 0,
            })
            .await
        {
            Ok(r) => break r.into_inner().token,
            // The workload CA is made by the first leader, a moment after.
            Err(s) if s.message().contains("does not exist yet") => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(s) => panic!("generate-token: {s}"),
        }
    };
    let mut est = None;
    for _ in 0..50 {
        match ea
            .establish_peering(pb::EstablishPeeringRequest {
                peer: "west".into(),
                token: token.clone(),
            })
            .await
        {
            Ok(r) => {
                est = Some(r.into_inner());
                break;
            }
            Err(s) if s.message().contains("does not exist yet") => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(s) => panic!("establish: {s}"),
        }
    }
    assert!(est.is_some(), "east's CA never appeared");
    (west, east, link, wa, ea)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_calls_an_exported_service_through_the_gateway_and_keeps_calling_while_the_exporter_is_down(
) {
    let (mut west, east, mut wa, mut ea) = peered().await;
    // A second peering with the same cluster: its trust domain is a
    // peer's already (a token's one use is tested in
    // controlplane/tests/cluster/federation.rs).
    let token = wa
        .generate_peering_token(pb::GeneratePeeringTokenRequest {
            peer: "east2".into(),
            ttl_ms: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let again = ea
        .establish_peering(pb::EstablishPeeringRequest {
            peer: "west2".into(),
            token,
        })
        .await
        .unwrap_err();
    assert!(again.message().contains("peer west's already"), "{again}");

    // West: api behind its proxy, and a gateway. East: a caller.
    let dir = west.dir.path().to_path_buf();
    let app = echo_caller("api-west").await;
    let api_token = mint(&mut wa, "api").await;
    let gw_token = mint(&mut wa, "gateway").await;
    let client_token = mint(&mut ea, "client").await;
    let app_port = app.port().to_string();
    let api = proxy(
        &dir,
        "api-w1",
        &west,
        &[
            "--service",
            "api",
            "--app-port",
            &app_port,
            "--token",
            &api_token,
        ],
    );
    let gw = proxy(
        &dir,
        "gw-w1",
        &west,
        &[
            "--mode",
            "gateway",
            "--service",
            "gateway",
            "--token",
            &gw_token,
        ],
    );
    let client = proxy(
        &dir,
        "client-e1",
        &east,
        &[
            "--service",
            "client",
            "--token",
            &client_token,
            "--state-dir",
            &dir.join("client-state").display().to_string(),
        ],
    );
    let procs = [&api, &gw, &client];
    let http: Client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();

    // Deny by default across peers: no policy names east yet.
    let r = until(
        &http,
        client.outbound,
        "api.default.west",
        Duration::from_secs(30),
        &procs,
        |r| r.0 == 403,
    )
    .await;
    assert_eq!(r.1, "denied", "{r:?}");
    // A policy naming east's identity opens it; the app sees the caller's
    // own identity, in east's trust domain.
    apply(&mut wa, "kind: Policy\nmetadata: {name: east-client}\nspec: {service: api, action: allow, from: [\"spiffe://east.mesh/ns/default/sa/client\"]}").await;
    let r = until(
        &http,
        client.outbound,
        "api.default.west",
        Duration::from_secs(10),
        &procs,
        |r| r.0 == 200,
    )
    .await;
    assert_eq!(
        r.2, "api-west URI=spiffe://east.mesh/ns/default/sa/client",
        "{r:?}"
    );
    let first = link_status(&east, "west")
        .await
        .expect("east runs the link");
    // The import has a virtual address of east's (mesh DNS answers with it).
    let imports = list_any(&east, "Import").await.unwrap();
    assert!(
        matches!(&imports[..], [r] if matches!(&r.spec, raftmesh_api::Spec::Import(i) if i.vip.is_some() && i.gateways.len() == 1)),
        "{imports:?}"
    );
    assert_eq!(
        first.full_batches, 1,
        "one full sync, at the start: {first:?}"
    );

    // West's whole control plane dies: east's calls go on (served from
    // east's Raft and the proxies' last config).
    for id in 1..=3 {
        west.kill(id);
    }
    for i in 0..50 {
        let r = call(&http, client.outbound, "api.default.west").await;
        assert!(
            matches!(&r, Ok((200, _, _))),
            "call {i} with west's control plane down: {r:?}"
        );
    }
    // West comes back: the link resumes from east's watermark, without a
    // full resync.
    for id in 1..=3 {
        west.start_node(id, None).unwrap();
    }
    west.wait_leader(Duration::from_secs(20)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let resumed = loop {
        if let Some(s) = link_status(&east, "west").await {
            if s.connects > first.connects && s.batches > 0 {
                break s;
            }
        }
        assert!(Instant::now() < deadline, "the link did not resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        resumed.full_batches,
        0,
        "resumed without a full resync: {resumed:?}\n{}",
        (1..=3)
            .map(|id| west
                .log_tail(id, 400)
                .lines()
                .filter(|l| l.contains("peer link") || l.contains("started"))
                .collect::<Vec<_>>()
                .join("\n"))
            .collect::<Vec<_>>()
            .join("\n---\n")
    );

    // Un-export: west's api refuses east at once (the callee holds the
    // Exports), and within 5 s east's import is gone: no-route.
    let mut wa = admin(&west.addrs()[0], &west.token).unwrap();
    wa.delete(pb::DeleteRequest {
        kind: "Export".into(),
        namespace: String::new(),
        name: "api-to-east".into(),
        expected_revision: None,
    })
    .await
    .unwrap();

    let r = until(
        &http,
        client.outbound,
        "api.default.west",
        Duration::from_secs(5 + 2),
        &procs,
        |r| r.1 == "no-route",
    )
    .await;
    assert_eq!(r.1, "no-route", "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_fails_over_to_a_peer_when_local_endpoints_die_and_back_when_they_return() {
    let (west, east, mut wa, mut ea) = peered().await;
    apply(&mut wa, "kind: Policy\nmetadata: {name: east-client}\nspec: {service: api, action: allow, from: [\"spiffe://east.mesh/ns/default/sa/client\"]}").await;
    apply(&mut ea, "kind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 80}]}\n---\nkind: Route\nmetadata: {name: api}\nspec: {service: api, failover: [west], retries: {attempts: 2}}").await;
    let dir = east.dir.path().to_path_buf();
    let (west_app, east_app) = (echo_caller("api-west").await, echo_caller("api-east").await);
    let (wt, gt) = (mint(&mut wa, "api").await, mint(&mut wa, "gateway").await);
    let (et, ct) = (mint(&mut ea, "api").await, mint(&mut ea, "client").await);
    let wp = west_app.port().to_string();
    let _api_w = proxy(
        &dir,
        "api-w1",
        &west,
        &["--service", "api", "--app-port", &wp, "--token", &wt],
    );
    let _gw = proxy(
        &dir,
        "gw-w1",
        &west,
        &["--mode", "gateway", "--service", "gateway", "--token", &gt],
    );
    let ep = east_app.port().to_string();
    let east_api_args = [
        "--service",
        "api",
        "--app-port",
        ep.as_str(),
        "--token",
        et.as_str(),
    ];
    let mut api_e = proxy(&dir, "api-e1", &east, &east_api_args);
    let client = proxy(
        &dir,
        "client-e1",
        &east,
        &["--service", "client", "--token", &ct],
    );
    let http: Client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let procs = [&client];

    // East's own endpoint first.
    until(
        &http,
        client.outbound,
        "api",
        Duration::from_secs(30),
        &procs,
        |r| r.0 == 200 && r.2.starts_with("api-east"),
    )
    .await;
    let r = until(
        &http,
        client.outbound,
        "api.default.west",
        Duration::from_secs(30),
        &procs,
        |r| r.0 == 200,
    )
    .await;
    assert!(r.2.starts_with("api-west"), "{r:?}");
    for _ in 0..20 {
        let r = call(&http, client.outbound, "api").await.unwrap();
        assert!(r.2.starts_with("api-east"), "local endpoints first: {r:?}");
    }

    // East's api dies: traffic fails over to west's; once it has, not one
    // request fails.
    api_e.proc.kill();
    until(
        &http,
        client.outbound,
        "api",
        Duration::from_secs(30),
        &procs,
        |r| r.0 == 200 && r.2.starts_with("api-west"),
    )
    .await;
    for i in 0..100 {
        let r = call(&http, client.outbound, "api").await;
        assert!(
            matches!(&r, Ok((200, _, b)) if b.starts_with("api-west")),
            "request {i} after failover: {r:?}"
        );
    }

    // It returns: traffic moves back.
    api_e = proxy(&dir, "api-e1b", &east, &east_api_args);
    until(
        &http,
        client.outbound,
        "api",
        Duration::from_secs(30),
        &[&client, &api_e],
        |r| r.0 == 200 && r.2.starts_with("api-east"),
    )
    .await;
}

/// Applies `yaml` (or deletes an Export) through whichever node of `c`
/// answers; an error is only logged (a write during a fault may or may not
/// land: the end state is read back).
async fn write_any(c: &Cluster, yaml: Option<&str>, delete: Option<&str>) {
    for a in c.addrs() {
        let Ok(mut adm) = admin(&a, &c.token) else {
            continue;
        };
        let r = match (yaml, delete) {
            (Some(y), _) => {
                let items = raftmesh_api::parse_documents(y)
                    .unwrap()
                    .into_iter()
                    .map(|r| pb::ApplyItem {
                        resource: Some(r.into()),
                        expected_revision: None,
                    })
                    .collect();
                tokio::time::timeout(
                    Duration::from_secs(3),
                    adm.apply(pb::ApplyRequest { items }),
                )
                .await
                .map(|r| r.map(|_| ()))
            }
            (None, Some(name)) => tokio::time::timeout(
                Duration::from_secs(3),
                adm.delete(pb::DeleteRequest {
                    kind: "Export".into(),
                    namespace: String::new(),
                    name: name.into(),
                    expected_revision: None,
                }),
            )
            .await
            .map(|r| r.map(|_| ())),
            _ => return,
        };
        match r {
            Ok(Ok(())) => return,
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => return,
            _ => continue,
        }
    }
}

/// Every resource of `kind` on `c`, read from whichever node answers.
pub(super) async fn list_any(c: &Cluster, kind: &str) -> Option<Vec<raftmesh_api::Resource>> {
    for a in c.addrs() {
        let Ok(mut adm) = admin(&a, &c.token) else {
            continue;
        };
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(3),
            adm.list(pb::ListRequest {
                kind: kind.into(),
                ..Default::default()
            }),
        )
        .await
        {
            return Some(
                r.into_inner()
                    .resources
                    .into_iter()
                    .filter_map(|r| raftmesh_api::Resource::try_from(r).ok())
                    .collect(),
            );
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_converge_through_a_partition_between_the_clusters_and_leader_kills_on_both_sides()
{
    // As root, real namespaces and a real partition between the clusters;
    // otherwise loopback, and "unreachable" is every west node paused.
    let (mut west, mut east, link, _wa, _ea) = peered_on(ClusterOpts::default()).await;
    // The one export `peered` made, and twelve more toggled under faults.
    let services: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    let started = Instant::now();
    let mut step = 0u64;
    let mut faults = Vec::new();
    while started.elapsed() < Duration::from_secs(25) {
        let s = &services[(step * 7 % 12) as usize];
        if step % 3 == 2 {
            write_any(&west, None, Some(&format!("exp-{s}"))).await;
        } else {
            write_any(
                &west,
                Some(&format!("kind: Export\nmetadata: {{name: exp-{s}}}\nspec: {{service: {s}, peers: [east]}}")),
                None,
            )
            .await;
        }
        // The nemesis, on a fixed schedule: east's leader killed, west's
        // leader killed, west unreachable (every node paused), each healed
        // a few seconds later.
        match step {
            10 => {
                if let Ok(l) = east.wait_leader(Duration::from_secs(10)).await {
                    east.kill(l);
                    faults.push(format!("killed east's leader {l}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    east.start_node(l, None).unwrap();
                }
            }
            25 => {
                if let Ok(l) = west.wait_leader(Duration::from_secs(10)).await {
                    west.kill(l);
                    faults.push(format!("killed west's leader {l}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    west.start_node(l, None).unwrap();
                }
            }
            40 => match &link {
                Some(l) => {
                    l.cut().unwrap();
                    faults.push("the clusters partitioned from each other for 5 s".into());
                    // West goes on alone: what it exports now cannot reach
                    // east until the partition heals (the drops are real).
                    write_any(
                        &west,
                        Some("kind: Export\nmetadata: {name: exp-cut}\nspec: {service: cut, peers: [east]}"),
                        None,
                    )
                    .await;
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    let im = list_any(&east, "Import").await.unwrap_or_default();
                    assert!(
                        !im.iter().any(|r| matches!(&r.spec, raftmesh_api::Spec::Import(i) if i.service == "cut")),
                        "an export crossed the partition"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    l.heal().unwrap();
                }
                None => {
                    for id in 1..=3 {
                        west.pause(id);
                    }
                    faults.push("west unreachable (paused) for 3 s".into());
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    for id in 1..=3 {
                        west.resume(id);
                    }
                }
            },
            _ => {}
        }
        step += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(faults.len() == 3, "every fault ran: {faults:?}");

    // Healed: east's imports from west are exactly west's exports to east,
    // each once.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let exports = list_any(&west, "Export").await;
        let imports = list_any(&east, "Import").await;
        if let (Some(ex), Some(im)) = (exports, imports) {
            let mut want: Vec<String> = ex
                .iter()
                .filter_map(|r| match &r.spec {
                    raftmesh_api::Spec::Export(e) if e.peers.iter().any(|p| p == "east") => {
                        Some(e.service.clone())
                    }
                    _ => None,
                })
                .collect();
            want.sort();
            want.dedup();
            let mut got: Vec<String> = im
                .iter()
                .filter_map(|r| match &r.spec {
                    raftmesh_api::Spec::Import(i) if i.peer == "west" => Some(i.service.clone()),
                    _ => None,
                })
                .collect();
            got.sort();
            let dup = got.windows(2).any(|w| w[0] == w[1]);
            assert!(!dup, "an import twice: {got:?}");
            if got == want {
                eprintln!(
                    "converged after {} writes and {faults:?}: {} imports",
                    step,
                    got.len()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "east's imports {got:?} never matched west's exports {want:?} after {faults:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Sends a ClientHello for `sni` to the gateway at `gw`: whether the
/// gateway spliced it to an endpoint (a TLS handshake record comes back)
/// rather than closing the connection.
async fn gateway_splices(gw: SocketAddr, sni: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
    s.write_all(&hello).await.unwrap();
    let mut first = [0u8; 1];
    // 0x16: a handshake record (the callee's ServerHello).
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut first)).await,
        Ok(Ok(1)) if first[0] == 0x16
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_selects_a_subset_of_the_peer_s_endpoints_through_the_gateway() {
    let (west, east, mut wa, mut ea) = peered().await;
    apply(&mut wa, "kind: Service\nmetadata: {name: secret}\nspec: {ports: [{port: 80}]}\n---\nkind: Policy\nmetadata: {name: east-client}\nspec: {service: api, action: allow, from: [\"spiffe://east.mesh/ns/default/sa/client\"]}").await;
    // East has no api of its own: its Route sends canaries to west's v2,
    // everything else to west's api as a whole.
    apply(&mut ea, "kind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 80}]}\n---\nkind: Route\nmetadata: {name: api}\nspec:\n  service: api\n  failover: [west]\n  rules:\n  - matches: [{headers: {x-canary: \"1\"}}]\n    backends: [{subset: {version: v2}, weight: 100}]\n  - {}\n").await;
    let dir = east.dir.path().to_path_buf();
    let (v1_app, v2_app, secret_app) = (
        echo_caller("api-v1").await,
        echo_caller("api-v2").await,
        echo_caller("secret").await,
    );
    let (t1, t2) = (mint(&mut wa, "api").await, mint(&mut wa, "api").await);
    let (ts, gt) = (
        mint(&mut wa, "secret").await,
        mint(&mut wa, "gateway").await,
    );
    let ct = mint(&mut ea, "client").await;
    let (p1, p2, ps) = (
        v1_app.port().to_string(),
        v2_app.port().to_string(),
        secret_app.port().to_string(),
    );
    let _v1 = proxy(
        &dir,
        "api-v1",
        &west,
        &[
            "--service",
            "api",
            "--labels",
            "version=v1",
            "--app-port",
            &p1,
            "--token",
            &t1,
        ],
    );
    let _v2 = proxy(
        &dir,
        "api-v2",
        &west,
        &[
            "--service",
            "api",
            "--labels",
            "version=v2",
            "--app-port",
            &p2,
            "--token",
            &t2,
        ],
    );
    let _secret = proxy(
        &dir,
        "secret-w1",
        &west,
        &[
            "--service",
            "secret",
            "--labels",
            "version=v2",
            "--app-port",
            &ps,
            "--token",
            &ts,
        ],
    );
    let gw = proxy(
        &dir,
        "gw-w1",
        &west,
        &["--mode", "gateway", "--service", "gateway", "--token", &gt],
    );
    let client = proxy(
        &dir,
        "client-e1",
        &east,
        &["--service", "client", "--token", &ct],
    );
    let http: Client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let procs = [&client, &gw];

    // The import carries both label sets (from west's endpoints).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let imports = list_any(&east, "Import").await.unwrap_or_default();
        if let [r] = &imports[..] {
            if let raftmesh_api::Spec::Import(i) = &r.spec {
                if i.subsets.len() == 2 {
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "subsets never imported: {imports:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until(
        &http,
        client.outbound,
        "api",
        Duration::from_secs(30),
        &procs,
        |r| r.0 == 200,
    )
    .await;

    let canary = |i: usize| {
        let req = hyper::Request::get(format!("http://{}/{i}", client.outbound))
            .header("host", "api")
            .header("x-canary", "1")
            .body(Empty::new())
            .unwrap();
        http.request(req)
    };
    // Canaries reach v2 only; the rest reach west's api as a whole (the
    // gateway picks an endpoint per connection, and the caller's proxy
    // reuses its connection: whichever version, every request answered).
    for i in 0..40 {
        let r = tokio::time::timeout(Duration::from_secs(5), canary(i))
            .await
            .expect("canary timed out")
            .expect("canary failed");
        assert_eq!(r.status(), 200);
        let b = r.into_body().collect().await.unwrap().to_bytes();
        let b = String::from_utf8_lossy(&b).into_owned();
        assert!(b.starts_with("api-v2 "), "canary {i} reached {b:?}");
    }
    for i in 0..20 {
        let r = call(&http, client.outbound, "api").await.unwrap();
        assert_eq!(r.0, 200, "{r:?}");
        assert!(
            r.2.starts_with("api-v1 ") || r.2.starts_with("api-v2 "),
            "request {i} reached {r:?}"
        );
    }

    // An attacker at the gateway: a subset of an exported service is
    // spliced; a label set no endpoint has, a subset of a service not
    // exported (though an endpoint of it has that label set), and a
    // subset label of another trust domain are not.
    let v2 = std::collections::BTreeMap::from([("version".to_string(), "v2".to_string())]);
    let v2 = raftmesh_dataplane_proxy::tls::subset_id(&v2);
    assert!(gateway_splices(gw.inbound, &format!("{v2}.api.default.svc.west.mesh")).await);
    assert!(gateway_splices(gw.inbound, "api.default.svc.west.mesh").await);
    assert!(!gateway_splices(gw.inbound, "s0000000000000000.api.default.svc.west.mesh").await);
    assert!(!gateway_splices(gw.inbound, &format!("{v2}.secret.default.svc.west.mesh")).await);
    assert!(!gateway_splices(gw.inbound, "secret.default.svc.west.mesh").await);
    assert!(!gateway_splices(gw.inbound, &format!("{v2}.api.default.svc.east.mesh")).await);
}
