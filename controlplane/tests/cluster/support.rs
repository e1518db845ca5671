//! A test cluster of in-process nodes and helpers to drive it.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use raftmesh_api::v1 as pb;
use raftmesh_api::{Resource, ServicePort, ServiceSpec, Spec};
use raftmesh_controlplane::config::ServerConfig;
use raftmesh_controlplane::config::TestHooks;
use raftmesh_controlplane::node::{self, Node};
use tempfile::TempDir;
use tokio::net::TcpListener;

pub const TOKEN: &str = "test-admin-secret";

/// Polls `f` until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct TestCluster {
    pub nodes: BTreeMap<u64, Node>,
    pub addrs: BTreeMap<u64, SocketAddr>,
    pub dir: TempDir,
    pub snapshot_logs: u64,
    pub tweak: fn(&mut ServerConfig),
    /// The server CA when the nodes serve TLS (`tls_dir`).
    pub ca_pem: Option<String>,
}

fn no_tweak(_: &mut ServerConfig) {}

pub fn config(id: u64, addr: SocketAddr, dir: &TempDir, snapshot_logs: u64) -> ServerConfig {
    let mut c = ServerConfig::new(id, addr, dir.path().join(format!("n{id}")));
    c.cluster_name = "test".into();
    c.admin_token = Some(TOKEN.into());
    c.snapshot_logs = snapshot_logs;
    c
}

impl TestCluster {
    /// Starts `n` voters from one `--initial-cluster`.
    pub async fn start(n: u64) -> Self {
        Self::start_with(n, 10_000).await
    }

    pub async fn start_with(n: u64, snapshot_logs: u64) -> Self {
        Self::start_tweaked(n, snapshot_logs, no_tweak).await
    }

    /// Starts `n` voters, each config adjusted by `tweak`.
    pub async fn start_tweaked(n: u64, snapshot_logs: u64, tweak: fn(&mut ServerConfig)) -> Self {
        let dir = TempDir::new().unwrap();
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listeners.insert(id, l);
        }
        let addrs: BTreeMap<u64, SocketAddr> = listeners
            .iter()
            .map(|(id, l)| (*id, l.local_addr().unwrap()))
            .collect();
        let initial: BTreeMap<u64, String> =
            addrs.iter().map(|(id, a)| (*id, a.to_string())).collect();
        let mut nodes = BTreeMap::new();
        let mut ca_pem = None;
        for (id, l) in listeners {
            let mut c = config(id, addrs[&id], &dir, snapshot_logs);
            c.initial_cluster = initial.clone();
            tweak(&mut c);
            if let Some(d) = &c.tls_dir {
                ca_pem = std::fs::read_to_string(d.join("ca.pem")).ok();
            }
            nodes.insert(
                id,
                node::start_with_listener(c, l, hooks(&dir, id))
                    .await
                    .unwrap(),
            );
        }
        let cluster = Self {
            nodes,
            addrs,
            dir,
            snapshot_logs,
            tweak,
            ca_pem,
        };
        cluster.wait_ready().await;
        cluster
    }

    /// Waits for a leader and the stored admin token.
    pub async fn wait_ready(&self) -> u64 {
        let leader = self.wait_leader().await;
        let c = self.client(leader).await;
        eventually("the admin token to work", Duration::from_secs(10), || {
            let mut c = c.clone();
            async move { c.who_am_i(pb::WhoAmIRequest {}).await.ok() }
        })
        .await;
        leader
    }

    /// The leader every running node agrees on.
    pub async fn wait_leader(&self) -> u64 {
        eventually(
            "a leader all running nodes agree on",
            Duration::from_secs(10),
            || async {
                let leaders: Vec<Option<u64>> = self
                    .nodes
                    .values()
                    .map(|n| n.raft.metrics().borrow().current_leader)
                    .collect();
                match leaders.first() {
                    Some(Some(l))
                        if leaders.iter().all(|x| *x == Some(*l)) && self.nodes.contains_key(l) =>
                    {
                        Some(*l)
                    }
                    _ => None,
                }
            },
        )
        .await
    }

    pub async fn client(&self, id: u64) -> Admin {
        match &self.ca_pem {
            Some(ca) => raftmesh_client::admin_client(
                &self.addrs[&id].to_string(),
                Some(TOKEN),
                Some(&raftmesh_client::client_tls(ca)),
            )
            .unwrap(),
            None => client(self.addrs[&id], Some(TOKEN)),
        }
    }

    /// Stops a node gracefully (its data stays).
    pub async fn stop(&mut self, id: u64) {
        let n = self.nodes.remove(&id).unwrap();
        n.shutdown().await.unwrap();
    }

    /// Restarts a stopped node from its data directory, on its old port.
    pub async fn restart(&mut self, id: u64) {
        let l = bind_retry(self.addrs[&id]).await;
        let mut c = config(id, self.addrs[&id], &self.dir, self.snapshot_logs);
        (self.tweak)(&mut c);
        let n = node::start_with_listener(c, l, hooks(&self.dir, id))
            .await
            .unwrap();
        self.nodes.insert(id, n);
    }

    /// Sets node `id`'s fault rules (`cluster/faults.rs`: JSON of
    /// `delay_ms` and `drop` by peer); they apply within 100 ms.
    pub async fn faults(&self, id: u64, rules: &str) {
        std::fs::write(self.dir.path().join(format!("faults-{id}.json")), rules).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    pub async fn shutdown(self) {
        for (_, n) in self.nodes {
            n.shutdown().await.unwrap();
        }
    }
}

pub async fn bind_retry(addr: SocketAddr) -> TcpListener {
    eventually(
        "the port to be free again",
        Duration::from_secs(5),
        || async { TcpListener::bind(addr).await.ok() },
    )
    .await
}

pub type Admin = raftmesh_client::Admin;

pub fn client(addr: SocketAddr, token: Option<&str>) -> Admin {
    raftmesh_client::admin_client(&addr.to_string(), token, None).unwrap()
}

pub fn service(name: &str, port: u32) -> Resource {
    Resource::new(
        name,
        Spec::Service(ServiceSpec {
            vip: None,
            ports: vec![ServicePort {
                port,
                protocol: Default::default(),
            }],
        }),
    )
}

pub fn apply_req(resources: Vec<Resource>) -> pb::ApplyRequest {
    pb::ApplyRequest {
        items: resources
            .into_iter()
            .map(|r| pb::ApplyItem {
                expected_revision: None,
                resource: Some(r.into()),
            })
            .collect(),
    }
}

pub fn get_req(name: &str, stale: bool) -> pb::GetRequest {
    pb::GetRequest {
        kind: "Service".into(),
        namespace: String::new(),
        name: name.into(),
        stale,
    }
}

/// Runs a test body inside an actix System on a multi-thread runtime.
pub fn run<F: Future<Output = ()>>(f: F) {
    raftmesh_controlplane::run_system(f);
}

/// Each node watches its own fault file (none at first: no faults).
fn hooks(dir: &TempDir, id: u64) -> TestHooks {
    TestHooks {
        fault_file: Some(dir.path().join(format!("faults-{id}.json"))),
        ..TestHooks::default()
    }
}

/// A bootstrap token for `service` in the default namespace.
pub async fn bootstrap_token(admin: &mut Admin, service: &str) -> String {
    let secret = raftmesh_client::bootstrap_token(admin, service, "")
        .await
        .unwrap();
    assert!(
        secret.starts_with("rmb_"),
        "a bootstrap secret says what it is: {secret}"
    );
    secret
}

/// An in-process proxy's configuration against cluster `c` (its state in
/// `dir/instance`).
pub fn proxy_config(
    c: &TestCluster,
    dir: &std::path::Path,
    service: &str,
    instance: &str,
    app: Option<SocketAddr>,
    token: String,
    subs: &[&str],
) -> raftmesh_dataplane_proxy::config::ProxyConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    raftmesh_dataplane_proxy::config::ProxyConfig {
        control_plane: c.addrs.values().map(|a| a.to_string()).collect(),
        service: service.into(),
        instance: instance.into(),
        namespace: "default".into(),
        labels: Default::default(),
        app_port: app.map(|a| a.port()),
        gateway: false,
        advertise: "127.0.0.1".into(),
        inbound: any,
        outbound: any,
        capture: None,
        dns: None,
        dns_upstream: None,
        admin: any,
        upstreams: vec![],
        token: Some(token),
        ca_pem: None,
        state_dir: Some(dir.join(instance)),
        config_file: None,
        cluster: String::new(),
        locality: String::new(),
        subscribe: subs.iter().map(|s| s.to_string()).collect(),
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

/// Whether `tool` must be there (`RAFTMESH_REQUIRE_TOOLS`, which `.ci/run`
/// sets once it installed them): its test then fails instead of skipping.
pub fn required(tool: &str) -> bool {
    std::env::var("RAFTMESH_REQUIRE_TOOLS").is_ok_and(|v| v.split(',').any(|t| t.trim() == tool))
}

/// `name` on PATH.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A node config tweak: `--http` on a free loopback port.
pub fn with_http(c: &mut ServerConfig) {
    c.http = Some("127.0.0.1:0".parse().unwrap());
}

/// A read-only admin token's secret.
pub async fn read_only_token(admin: &mut raftmesh_client::Admin) -> String {
    admin
        .create_token(pb::CreateTokenRequest {
            scope: Some(pb::create_token_request::Scope::Role(
                pb::TokenRole::ReadOnly as i32,
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret
}
