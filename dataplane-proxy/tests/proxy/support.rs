//! Upstream servers, proxies and clients for the tests.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use raftmesh_dataplane_proxy::config::ProxyConfig;
use raftmesh_dataplane_proxy::Proxy;
use tokio::net::TcpListener;

/// An HTTP upstream answering its name, with a status and delay that
/// tests can change while it runs.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub status: Arc<AtomicU16>,
    pub delay_ms: Arc<AtomicU64>,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let u = Upstream {
            addr: l.local_addr().unwrap(),
            hits: Arc::new(AtomicUsize::new(0)),
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::new(AtomicU64::new(0)),
        };
        let s = u.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move {
                            s.hits.fetch_add(1, Ordering::SeqCst);
                            let d = s.delay_ms.load(Ordering::SeqCst);
                            if d > 0 {
                                tokio::time::sleep(Duration::from_millis(d)).await;
                            }
                            let host = req
                                .headers()
                                .get("host")
                                .map(|h| h.to_str().unwrap_or("").to_string())
                                .unwrap_or_default();
                            let mut r = Response::new(Full::new(Bytes::from(format!(
                                "{name} {} host={host}",
                                req.uri().path()
                            ))));
                            *r.status_mut() =
                                http::StatusCode::from_u16(s.status.load(Ordering::SeqCst))
                                    .unwrap();
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        u
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A proxy config on free ports, with nothing else set.
pub fn base_config() -> ProxyConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    ProxyConfig {
        control_plane: vec![],
        service: "client".into(),
        instance: "client-1".into(),
        namespace: "default".into(),
        labels: BTreeMap::new(),
        app_port: None,
        gateway: false,
        advertise: "127.0.0.1".into(),
        inbound: any,
        outbound: any,
        capture: None,
        dns: None,
        dns_upstream: None,
        admin: any,
        upstreams: vec![],
        token: None,
        ca_pem: None,
        state_dir: None,
        config_file: None,
        cluster: String::new(),
        locality: String::new(),
        subscribe: vec![],
        subscription_idle: std::time::Duration::from_secs(600),
        stats_interval: std::time::Duration::from_secs(1),
        idle_timeout: std::time::Duration::from_secs(60),
        header_timeout: std::time::Duration::from_secs(10),
        http1_fast_path: true,
        workers: None,
        probe: Default::default(),
        drain_timeout: std::time::Duration::from_secs(5),
        takeover: false,
    }
}

/// A proxy running from a static resource YAML.
pub async fn static_proxy(yaml: &str) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("static.yaml");
    std::fs::write(&f, yaml).unwrap();
    let mut c = base_config();
    c.config_file = Some(f);
    (raftmesh_dataplane_proxy::start(c).await.unwrap(), dir)
}

/// A Service and one Endpoint per (name, addr, version).
pub fn mesh(service: &str, endpoints: &[(&str, SocketAddr, &str)], extra: &str) -> String {
    let mut y =
        format!("kind: Service\nmetadata: {{name: {service}}}\nspec: {{ports: [{{port: 80}}]}}\n");
    for (name, addr, version) in endpoints {
        y += &format!(
            "---\nkind: Endpoint\nmetadata: {{name: {name}}}\nspec: {{service: {service}, address: '{}', port: {}, labels: {{version: {version}}}}}\n",
            addr.ip(),
            addr.port()
        );
    }
    if !extra.is_empty() {
        y += "---\n";
        y += extra;
    }
    y
}

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A GET through the proxy's outbound port, naming the service by Host.
pub async fn get(
    c: &HttpClient,
    proxy: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Option<String>) {
    let mut b = Request::get(format!("http://{proxy}{path}")).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let r = c.request(b.body(Empty::new()).unwrap()).await.unwrap();
    let status = r.status().as_u16();
    let err = r
        .headers()
        .get("x-raftmesh-error")
        .map(|v| v.to_str().unwrap().to_string());
    let body =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    (status, body, err)
}
