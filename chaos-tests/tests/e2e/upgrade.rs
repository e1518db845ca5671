//! Upgrading mesh-proxy under load: a new process started with the same
//! flags and `--takeover` takes the running one's listening sockets; the
//! old one drains and exits; the app is never restarted and no request
//! fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioExecutor;
use raftmesh_api::v1 as pb;
use raftmesh_chaos_tests::client::admin;
use raftmesh_chaos_tests::cluster::{Cluster, ClusterOpts};

use super::{app, get, mesh_proxy, mint, until_ok, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_binary_upgrade_under_500_requests_a_second_fails_none_and_keeps_the_app() {
    let cluster = Cluster::start(1, ClusterOpts::default()).unwrap();
    cluster.wait_leader(Duration::from_secs(20)).await.unwrap();
    let addrs = cluster.addrs();
    let mut adm = admin(&addrs[0], &cluster.token).unwrap();
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
    // One app for the whole test: it is never restarted.
    let app_addr = app("web-v1").await;
    let web_args: Vec<String> = vec![
        "--control-plane".into(),
        cp.clone(),
        "--service".into(),
        "web".into(),
        "--instance".into(),
        "web-1".into(),
        "--app-port".into(),
        app_addr.port().to_string(),
        "--token".into(),
        mint(&mut adm, "web").await,
        "--state-dir".into(),
        dir.join("web-state").display().to_string(),
    ];
    let mut old = mesh_proxy(&dir, "web-proxy-old", &web_args);
    let client = mesh_proxy(
        &dir,
        "client-proxy",
        &[
            "--control-plane".into(),
            cp,
            "--service".into(),
            "client".into(),
            "--instance".into(),
            "client-1".into(),
            "--subscribe".into(),
            "web".into(),
            "--token".into(),
            mint(&mut adm, "client").await,
        ],
    );
    let http: Client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    until_ok(&http, client.outbound, "web", &client).await;

    // 500 requests a second, each on its own task.
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (sent, failed, failures, stop) =
            (sent.clone(), failed.clone(), failures.clone(), stop.clone());
        let (http, out) = (http.clone(), client.outbound);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            let mut inflight = tokio::task::JoinSet::new();
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                sent.fetch_add(1, Ordering::SeqCst);
                let (http, failed, failures) = (http.clone(), failed.clone(), failures.clone());
                inflight.spawn(async move {
                    match get(&http, out, "web").await {
                        Ok((200, _)) => {}
                        other => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            failures.lock().unwrap().push(format!("{other:?}"));
                        }
                    }
                });
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The upgrade: the same flags and --takeover (the ports are not bound
    // again: the old proxy's sockets are used).
    let mut new_args = web_args.clone();
    new_args.push("--takeover".into());
    let same_ports = (old.outbound.port(), old.admin.port(), old.inbound.port());
    let new = super::mesh_proxy_at(&dir, "web-proxy-new", &new_args, same_ports);
    let deadline = Instant::now() + Duration::from_secs(20);
    while old.proc.running() {
        assert!(
            Instant::now() < deadline,
            "the old proxy did not stop after the takeover:\n{}\n--- new:\n{}",
            old.proc.log_tail(30),
            new.proc.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("proxy upgrade under load: {sent} requests, {failed} failed");
    assert!(sent > 1_500, "the load ran: {sent}");
    assert_eq!(
        failed,
        0,
        "{:?}\n--- old:\n{}\n--- new:\n{}",
        failures.lock().unwrap(),
        old.proc.log_tail(20),
        new.proc.log_tail(20)
    );
    // The new proxy serves on the old one's inbound port, under the same
    // instance, and the app behind it is the one from the start.
    let (s, body) = get(&http, client.outbound, "web").await.unwrap();
    assert_eq!((s, body.as_str()), (200, "web-v1"));
    let log = new.proc.log_tail(200);
    assert!(log.contains("serving on a socket taken over"), "{log}");
    let eps = super::federation::list_any(&cluster, "Endpoint")
        .await
        .unwrap();
    assert!(
        matches!(&eps[..], [e] if e.metadata.name == "web-1"
            && matches!(&e.spec, raftmesh_api::Spec::Endpoint(s) if s.health == raftmesh_api::Health::Healthy)),
        "one web endpoint, healthy, kept across the upgrade: {eps:?}"
    );
}
