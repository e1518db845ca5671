//! Deploys that fail no request: an app that is not ready is taken out,
//! and a rolling restart of every instance under load fails nothing (a
//! real meshd, proxies in this process, real sockets).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use raftmesh_api::Resource;
use raftmesh_dataplane_proxy::Proxy;

use super::support::*;

pub(super) fn doc(y: &str) -> Resource {
    serde_yaml_ng::from_str(y).unwrap()
}

/// An app answering its name, whose `/ready` answers 503 while `ready` is
/// false; stopped when the handle drops.
pub(super) struct App {
    pub(super) addr: SocketAddr,
    ready: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) async fn app(name: &'static str) -> App {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let ready = Arc::new(AtomicBool::new(true));
    let r = ready.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let r = r.clone();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let r = r.clone();
                        async move {
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(name)));
                            if req.uri().path() == "/ready" && !r.load(Ordering::SeqCst) {
                                *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            }
                            Ok::<_, Infallible>(resp)
                        }
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
    App { addr, ready, task }
}

pub(super) type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

pub(super) fn http() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

pub(super) async fn get(c: &Client, to: SocketAddr, host: &str) -> Result<(u16, String), String> {
    let req = hyper::Request::get(format!("http://{to}/x"))
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
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let b = r.into_body().collect().await.map_err(|e| e.to_string())?;
    let body = String::from_utf8_lossy(&b.to_bytes()).into_owned();
    Ok((s, if code.is_empty() { body } else { code }))
}

pub(super) async fn web_proxy(
    c: &TestCluster,
    dir: &std::path::Path,
    instance: &str,
    app: SocketAddr,
    token: String,
) -> Proxy {
    let mut cfg = proxy_config(c, dir, "web", instance, Some(app), token, &[]);
    cfg.probe = raftmesh_api::AppProbe {
        http_path: Some("/ready".into()),
        interval: Some(raftmesh_api::HumanDuration::from_millis(100)),
        failure_threshold: Some(1),
        ..Default::default()
    };
    raftmesh_dataplane_proxy::start(cfg).await.unwrap()
}

/// A one-node cluster with Service `web`.
pub(super) async fn cluster_with_web() -> (TestCluster, raftmesh_client::Admin) {
    cluster_with_web_tweaked(|_| {}).await
}

/// [`cluster_with_web`], its node's config adjusted by `tweak`.
pub(super) async fn cluster_with_web_tweaked(
    tweak: fn(&mut raftmesh_controlplane::config::ServerConfig),
) -> (TestCluster, raftmesh_client::Admin) {
    let c = TestCluster::start_tweaked(1, 10_000, tweak).await;
    let mut admin = c.client(1).await;
    admin
        .apply(apply_req(vec![doc(
            "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}",
        )]))
        .await
        .unwrap();
    (c, admin)
}

/// A caller of `web`, once a request through it is answered.
async fn frontend(
    c: &TestCluster,
    admin: &mut raftmesh_client::Admin,
    dir: &std::path::Path,
) -> Proxy {
    caller_of_web(c, admin, dir, "frontend").await
}

/// A proxy of service `svc` calling `web`, once a request through it is
/// answered.
pub(super) async fn caller_of_web(
    c: &TestCluster,
    admin: &mut raftmesh_client::Admin,
    dir: &std::path::Path,
    svc: &str,
) -> Proxy {
    let ft = bootstrap_token(admin, svc).await;
    let frontend = raftmesh_dataplane_proxy::start(proxy_config(
        c,
        dir,
        svc,
        &format!("{svc}-1"),
        None,
        ft,
        &["web"],
    ))
    .await
    .unwrap();
    let h = http();
    eventually("traffic through the mesh", Duration::from_secs(15), || {
        let (h, out) = (h.clone(), frontend.outbound);
        async move { matches!(get(&h, out, "web").await, Ok((200, _))).then_some(()) }
    })
    .await;
    frontend
}

#[test]
fn an_app_that_is_not_ready_is_taken_out_within_a_second_of_the_report_and_put_back() {
    run(async {
        let (c, mut admin) = cluster_with_web().await;
        let dir = tempfile::tempdir().unwrap();
        let web_app = app("web").await;
        let token = bootstrap_token(&mut admin, "web").await;
        let web = web_proxy(&c, dir.path(), "web-1", web_app.addr, token).await;
        let frontend = frontend(&c, &mut admin, dir.path()).await;
        let h = http();

        // The app says it is not ready: its proxy reports it, and the
        // caller stops sending to it.
        let mut life = web.config.life.subscribe();
        web_app.ready.store(false, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(5), life.wait_for(|l| !l.app_ready))
            .await
            .expect("the probe never saw the app unready")
            .unwrap();
        let reported = Instant::now();
        let out = loop {
            match get(&h, frontend.outbound, "web").await {
                Ok((503, code)) if code == "no-healthy-endpoints" => break reported.elapsed(),
                Ok((200, _)) => {}
                other => panic!("while the endpoint goes out: {other:?}"),
            }
            assert!(
                reported.elapsed() < Duration::from_secs(5),
                "still routed to a not-ready app"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        eprintln!("not-ready endpoint out of the caller's choice {out:?} after the report");
        assert!(
            out < Duration::from_secs(1),
            "callers must stop within 1 s of the report, took {out:?}"
        );
        // /ready of the proxy says so too.
        let r = reqwest_like_get(web.admin, "/ready").await;
        assert!(r.starts_with("not ready: the app is not ready"), "{r}");

        // Ready again: back in.
        web_app.ready.store(true, Ordering::SeqCst);
        eventually("the endpoint back in", Duration::from_secs(5), || {
            let (h, out) = (h.clone(), frontend.outbound);
            async move { matches!(get(&h, out, "web").await, Ok((200, _))).then_some(()) }
        })
        .await;
        frontend.shutdown().await;
        web.shutdown().await;
        c.shutdown().await;
    });
}

/// The body of a GET to `addr` (plain HTTP/1.1).
async fn reqwest_like_get(addr: SocketAddr, path: &str) -> String {
    let c: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let r = c
        .get(format!("http://{addr}{path}").parse().unwrap())
        .await
        .unwrap();
    String::from_utf8_lossy(&r.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

#[test]
fn a_rolling_restart_of_every_instance_under_load_fails_no_request() {
    run(async {
        let (c, mut admin) = cluster_with_web().await;
        let dir = tempfile::tempdir().unwrap();
        let mut instances = Vec::new();
        for i in 1..=3 {
            let a = app("web").await;
            let t = bootstrap_token(&mut admin, "web").await;
            let p = web_proxy(&c, dir.path(), &format!("web-{i}"), a.addr, t).await;
            instances.push((a, p));
        }
        let frontend = frontend(&c, &mut admin, dir.path()).await;
        let h = http();

        // 500 requests/s, each on its own task, failures kept.
        let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (sent, failed, failures, stop) =
                (sent.clone(), failed.clone(), failures.clone(), stop.clone());
            let (h, out) = (h.clone(), frontend.outbound);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(2));
                let mut inflight = tokio::task::JoinSet::new();
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let (h, failed, failures) = (h.clone(), failed.clone(), failures.clone());
                    sent.fetch_add(1, Ordering::SeqCst);
                    inflight.spawn(async move {
                        match get(&h, out, "web").await {
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
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Each instance in turn: drained (out of rotation, in-flight work
        // finished), its app stopped, deregistered; then a new app and
        // proxy under the same instance name, ready before the next.
        for i in 0..3 {
            let name = format!("web-{}", i + 1);
            let (old_app, old) = instances.remove(0);
            old.drain(Duration::from_secs(5)).await;
            drop(old_app);
            old.leave().await;
            let a = app("web").await;
            let t = bootstrap_token(&mut admin, "web").await;
            let p = web_proxy(&c, dir.path(), &name, a.addr, t).await;
            let mut life = p.config.life.subscribe();
            tokio::time::timeout(Duration::from_secs(10), life.wait_for(|l| l.app_ready))
                .await
                .expect("the new instance never became ready")
                .unwrap();
            // Registered healthy and known to the caller before the next.
            tokio::time::sleep(Duration::from_millis(500)).await;
            instances.push((a, p));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::SeqCst);
        load.await.unwrap();
        let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
        eprintln!("rolling restart of 3 instances: {sent} requests, {failed} failed");
        assert!(sent > 1_000, "the load ran: {sent}");
        assert_eq!(failed, 0, "{:?}", failures.lock().unwrap());
        frontend.shutdown().await;
        for (_, p) in instances {
            p.shutdown().await;
        }
        c.shutdown().await;
    });
}
