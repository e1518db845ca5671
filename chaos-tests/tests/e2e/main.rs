//! The whole path with the built binaries, as a user runs it: three meshd
//! processes, mesh-proxy processes beside an app, traffic through both
//! proxies; then every meshd killed mid-traffic, and a proxy restarted while
//! they are down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod federation;
mod hosts;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use raftmesh_api::v1 as pb;
use raftmesh_chaos_tests::client::admin;
use raftmesh_chaos_tests::cluster::{Cluster, ClusterOpts};
use raftmesh_chaos_tests::procs::{free_port, Proc};

async fn app(name: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(move |_req: hyper::Request<Incoming>| async move {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(name))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A bootstrap token for proxies of `service`.
async fn mint(adm: &mut raftmesh_client::Admin, service: &str) -> String {
    raftmesh_chaos_tests::client::bootstrap_token(adm, service)
        .await
        .unwrap()
}

struct ProxyProc {
    proc: Proc,
    outbound: SocketAddr,
    admin: SocketAddr,
    inbound: SocketAddr,
}

fn mesh_proxy(dir: &Path, name: &str, args: &[String]) -> ProxyProc {
    mesh_proxy_at(dir, name, args, (free_port(), free_port(), free_port()))
}

/// [`mesh_proxy`] on these (outbound, admin, inbound) ports.
fn mesh_proxy_at(dir: &Path, name: &str, args: &[String], (o, a, i): (u16, u16, u16)) -> ProxyProc {
    let mut cmd = Command::new(raftmesh_client::bins::find("mesh-proxy", true).unwrap());
    cmd.args([
        "--outbound",
        &format!("127.0.0.1:{o}"),
        "--admin",
        &format!("127.0.0.1:{a}"),
        "--inbound",
        &format!("127.0.0.1:{i}"),
    ])
    .args(args)
    .env("RAFTMESH_LOG", "info");
    let proc = Proc::spawn(name, cmd, &dir.join(format!("{name}.log"))).unwrap();
    ProxyProc {
        proc,
        outbound: format!("127.0.0.1:{o}").parse().unwrap(),
        admin: format!("127.0.0.1:{a}").parse().unwrap(),
        inbound: format!("127.0.0.1:{i}").parse().unwrap(),
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

async fn get(c: &Client, to: SocketAddr, host: &str) -> Result<(u16, String), String> {
    federation::call(c, to, host).await.map(|(s, _, b)| (s, b))
}

async fn until_ok(c: &Client, to: SocketAddr, host: &str, proc: &ProxyProc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = get(c, to, host).await;
        if let Ok((200, _)) = last {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no successful request through {} (last: {last:?}):\n{}",
            proc.proc.name,
            proc.proc.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_the_death_of_every_meshd_and_a_proxy_restart() {
    let mut cluster = Cluster::start(3, ClusterOpts::default()).unwrap();
    cluster.wait_leader(Duration::from_secs(20)).await.unwrap();
    let addrs = cluster.addrs();
    let mut adm = admin(&addrs[0], &cluster.token).unwrap();
    let web_token = mint(&mut adm, "web").await;
    let client_token = mint(&mut adm, "client").await;
    let svc: raftmesh_api::Resource = serde_yaml_ng::from_str(
        "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}",
    )
    .unwrap();
    adm.apply(pb::ApplyRequest {
        items: vec![pb::ApplyItem {
            resource: Some(svc.into()),
            expected_revision: None,
        }],
    })
    .await
    .unwrap();

    let dir = cluster.dir.path().to_path_buf();
    let cp = addrs.join(",");
    let app_addr = app("web-v1").await;
    let web = mesh_proxy(
        &dir,
        "web-proxy",
        &[
            "--control-plane".into(),
            cp.clone(),
            "--service".into(),
            "web".into(),
            "--instance".into(),
            "web-1".into(),
            "--labels".into(),
            "version=v1".into(),
            "--app-port".into(),
            app_addr.port().to_string(),
            "--token".into(),
            web_token,
        ],
    );
    let client_args: Vec<String> = vec![
        "--control-plane".into(),
        cp,
        "--service".into(),
        "client".into(),
        "--instance".into(),
        "client-1".into(),
        "--subscribe".into(),
        "web".into(),
        "--token".into(),
        client_token,
        "--state-dir".into(),
        dir.join("client-state").display().to_string(),
    ];
    let mut client = mesh_proxy(&dir, "client-proxy", &client_args);
    let http: Client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    until_ok(&http, client.outbound, "web", &client).await;
    let (s, body) = get(&http, client.outbound, "web").await.unwrap();
    assert_eq!(
        (s, body.as_str()),
        (200, "web-v1"),
        "app → client proxy → web proxy → app"
    );

    // Every meshd dies mid-traffic: not one request fails.
    let mut failures = Vec::new();
    for i in 0..400 {
        if i == 100 {
            for id in 1..=3 {
                cluster.kill(id);
            }
        }
        match get(&http, client.outbound, "web").await {
            Ok((200, _)) => {}
            other => failures.push(format!("request {i}: {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // The client proxy restarts while every meshd is still down: it serves
    // from its state directory.
    client.proc.kill();
    client = mesh_proxy(&dir, "client-proxy-2", &client_args);
    until_ok(&http, client.outbound, "web", &client).await;
    let ready = get(&http, client.admin, "admin").await;
    assert!(ready.is_ok());
    drop(web);
}
