//! The proxy against a scripted control plane: NACK of a bad config,
//! static stability (control plane gone; restart from the state dir).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use raftmesh_api::v1 as pb;
use raftmesh_api::v1::discovery_server::{Discovery, DiscoveryServer};
use raftmesh_api::Resource;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::support::*;

/// Sends its scripted deltas one at a time, each after the previous
/// one's ACK or NACK, and records what the proxy said.
#[derive(Clone, Default)]
struct Scripted {
    script: Arc<Vec<pb::Delta>>,
    said: Arc<Mutex<Vec<pb::proxy_message::Msg>>>,
}

#[tonic::async_trait]
impl Discovery for Scripted {
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
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let this = self.clone();
        tokio::spawn(async move {
            let mut next = 0;
            while let Ok(Some(m)) = inbound.message().await {
                let Some(msg) = m.msg else { continue };
                let step = matches!(
                    msg,
                    pb::proxy_message::Msg::Hello(_)
                        | pb::proxy_message::Msg::Ack(_)
                        | pb::proxy_message::Msg::Nack(_)
                );
                this.said.lock().unwrap().push(msg);
                if step && next < this.script.len() {
                    let d = this.script[next].clone();
                    next += 1;
                    if tx
                        .send(Ok(pb::ServerMessage {
                            msg: Some(pb::server_message::Msg::Delta(d)),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

fn delta(revision: u64, full: bool, yaml: &str) -> pb::Delta {
    pb::Delta {
        revision,
        full,
        nonce: format!("n{revision}"),
        upserts: yaml
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_yaml_ng::from_str::<Resource>(d).unwrap().into())
            .collect(),
        removals: vec![],
    }
}

async fn serve(cp: Scripted) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(DiscoveryServer::new(cp))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l))
            .await;
    });
    (addr, h)
}

async fn eventually<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cp_config(
    cp: std::net::SocketAddr,
    state: &std::path::Path,
) -> raftmesh_dataplane_proxy::config::ProxyConfig {
    let mut c = base_config();
    c.control_plane = vec![cp.to_string()];
    c.token = Some("tok".into());
    c.state_dir = Some(state.to_path_buf());
    c.subscribe = vec!["web".into()];
    c
}

#[tokio::test]
async fn a_config_that_fails_validation_is_nacked_and_the_old_one_kept() {
    let web = Upstream::start("web").await;
    let good = mesh("web", &[("web-1", web.addr, "v1")], "");
    let bad_route = "kind: Route\nmetadata: {name: web}\nspec:\n  service: web\n  rules: [{backends: [{subset: {version: v1}, weight: 90}]}]\n";
    let cp = Scripted {
        script: Arc::new(vec![delta(5, true, &good), delta(6, false, bad_route)]),
        ..Default::default()
    };
    let (addr, server) = serve(cp.clone()).await;
    let state = tempfile::tempdir().unwrap();
    let p = raftmesh_dataplane_proxy::start(cp_config(addr, state.path()))
        .await
        .unwrap();
    eventually("the NACK", || {
        cp.said
            .lock()
            .unwrap()
            .iter()
            .any(|m| matches!(m, pb::proxy_message::Msg::Nack(_)))
    })
    .await;
    let said = cp.said.lock().unwrap().clone();
    let pb::proxy_message::Msg::Hello(h) = &said[0] else {
        panic!("first was not Hello")
    };
    assert_eq!(h.subscriptions, ["web.default"]);
    assert!(said
        .iter()
        .any(|m| matches!(m, pb::proxy_message::Msg::Ack(a) if a.nonce == "n5")));
    let nack = said
        .iter()
        .find_map(|m| match m {
            pb::proxy_message::Msg::Nack(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(nack.nonce, "n6");
    assert!(
        nack.error.contains("weights sum to 90, must be 100"),
        "{}",
        nack.error
    );
    // The old config still routes, at its revision.
    assert_eq!(p.config.current().revision, 5);
    assert_eq!(
        get(&http_client(), p.outbound, "web", "/", &[]).await.0,
        200
    );
    p.shutdown().await;
    server.abort();
}

#[tokio::test]
async fn with_the_control_plane_gone_traffic_goes_on_and_a_restart_serves_from_the_state_dir() {
    let web = Upstream::start("web").await;
    let cp = Scripted {
        script: Arc::new(vec![delta(
            9,
            true,
            &mesh("web", &[("web-1", web.addr, "v1")], ""),
        )]),
        ..Default::default()
    };
    let (addr, server) = serve(cp.clone()).await;
    let state = tempfile::tempdir().unwrap();
    let p = raftmesh_dataplane_proxy::start(cp_config(addr, state.path()))
        .await
        .unwrap();
    let c = http_client();
    eventually("the first config", || p.config.current().revision == 9).await;
    // The control plane dies mid-traffic: not one request fails.
    let mut failed = 0;
    for i in 0..300 {
        if i == 50 {
            server.abort();
        }
        if get(&c, p.outbound, "web", "/", &[]).await.0 != 200 {
            failed += 1;
        }
    }
    assert_eq!(failed, 0);
    p.shutdown().await;
    // Restarted while the control plane is still down: serves at once.
    let p = raftmesh_dataplane_proxy::start(cp_config(addr, state.path()))
        .await
        .unwrap();
    assert_eq!(p.config.current().revision, 9);
    assert_eq!(get(&c, p.outbound, "web", "/", &[]).await.0, 200);
    let ready = get(&c, p.admin, "admin", "/ready", &[]).await;
    assert_eq!(ready.0, 200, "{ready:?}");
    let dump = get(&c, p.admin, "admin", "/config_dump", &[]).await.1;
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(v["revision"], 9);
    assert_eq!(v["source"], "state-dir");
    p.shutdown().await;
}

#[tokio::test]
async fn a_service_learned_from_traffic_is_unsubscribed_once_idle_and_bad_hosts_never_subscribe() {
    let web = Upstream::start("web").await;
    let cp = Scripted {
        script: Arc::new(vec![delta(
            3,
            true,
            &mesh("web", &[("web-1", web.addr, "v1")], ""),
        )]),
        ..Default::default()
    };
    let (addr, server) = serve(cp.clone()).await;
    let state = tempfile::tempdir().unwrap();
    let mut c = cp_config(addr, state.path());
    c.subscription_idle = Duration::from_secs(1);
    let p = raftmesh_dataplane_proxy::start(c).await.unwrap();
    eventually("the first config", || p.config.current().revision == 3).await;
    let client = http_client();
    // A made-up name that is not a service name: 400, no subscription.
    assert_eq!(get(&client, p.outbound, "no_such", "/", &[]).await.0, 400);
    // A service name meshd has not sent: learned (404 after the wait).
    assert_eq!(get(&client, p.outbound, "api", "/", &[]).await.0, 404);
    let said = |want: fn(&pb::proxy_message::Msg) -> Option<Vec<String>>| {
        cp.said
            .lock()
            .unwrap()
            .iter()
            .filter_map(want)
            .flatten()
            .collect::<Vec<_>>()
    };
    let subscribed = || {
        said(|m| match m {
            pb::proxy_message::Msg::Subscribe(s) => Some(s.services.clone()),
            _ => None,
        })
    };
    let unsubscribed = || {
        said(|m| match m {
            pb::proxy_message::Msg::Unsubscribe(s) => Some(s.services.clone()),
            _ => None,
        })
    };
    assert_eq!(subscribed(), ["api.default"]);
    // web keeps being used and is fixed (--subscribe); api goes idle.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while unsubscribed().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "api was never unsubscribed"
        );
        assert_eq!(get(&client, p.outbound, "web", "/", &[]).await.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(unsubscribed(), ["api.default"]);
    // Asked for again, it is subscribed again.
    get(&client, p.outbound, "api", "/", &[]).await;
    eventually("the second subscription", || subscribed().len() == 2).await;
    p.shutdown().await;
    server.abort();
}

#[tokio::test]
async fn without_a_certificate_a_strict_mesh_proxy_refuses_inbound_and_never_sends_plaintext_to_the_mesh(
) {
    // A control plane that sends config but never a certificate.
    let web = Upstream::start("web").await;
    let app = Upstream::start("app").await;
    let mesh_yaml = format!(
        "kind: Service\nmetadata: {{name: web}}\nspec: {{}}\n---\nkind: Endpoint\nmetadata: {{name: web-1}}\nspec: {{service: web, address: '127.0.0.1', port: {}, identity: 'spiffe://test.mesh/ns/default/sa/web'}}\n",
        web.addr.port()
    );
    let cp = Scripted {
        script: Arc::new(vec![delta(4, true, &mesh_yaml)]),
        ..Default::default()
    };
    let (addr, server) = serve(cp.clone()).await;
    let state = tempfile::tempdir().unwrap();
    let mut c = cp_config(addr, state.path());
    c.app_port = Some(app.addr.port());
    let p = raftmesh_dataplane_proxy::start(c).await.unwrap();
    eventually("the first config", || p.config.current().revision == 4).await;
    let client = http_client();
    // Outbound to a workload with an identity: 503 no-identity, nothing sent.
    let (s, _, e) = get(&client, p.outbound, "web", "/", &[]).await;
    assert_eq!((s, e.as_deref()), (503, Some("no-identity")));
    assert_eq!(web.hits(), 0, "plaintext reached a mesh workload");
    // Inbound: plaintext HTTP and TCP are closed unanswered; the app sees nothing.
    let inbound = p.inbound.unwrap();
    let r = super::routing::raw_request(
        inbound,
        "GET / HTTP/1.1\r\nHost: client\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r, "", "answered without a certificate: {r}");
    let r = super::routing::raw_request(inbound, "\x00\x01binary").await;
    assert_eq!(r, "");
    assert_eq!(app.hits(), 0);
    // /ready says why.
    let r = super::routing::raw_request(
        p.admin,
        "GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.contains("no workload certificate"), "{r}");
    p.shutdown().await;
    server.abort();
}
