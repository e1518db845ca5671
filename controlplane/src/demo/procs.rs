//! The demo's processes: three `meshd server` nodes (this very binary) and
//! six `mesh-proxy` sidecars, each told to exit when the demo's process is
//! gone, and all killed when [`Procs`] is dropped, whatever happens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

/// One proxy of the demo and the ports it uses on loopback.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    /// Its service.
    pub service: &'static str,
    /// Its instance id.
    pub instance: String,
    /// The `version` label of its subset, if any.
    pub version: Option<&'static str>,
    /// The app it fronts (none for a caller).
    pub app: Option<SocketAddr>,
    /// Services it calls, subscribed up front.
    pub subscribe: &'static [&'static str],
    /// Admin port (`/ready`).
    pub admin: SocketAddr,
    /// Outbound port (what the app calls).
    pub outbound: SocketAddr,
    /// Inbound port (what other proxies call).
    pub inbound: SocketAddr,
}

/// The demo's child processes, by name (`node-1`, `proxy-web-v1`, ...).
pub struct Procs {
    children: BTreeMap<String, Child>,
    args: BTreeMap<String, (PathBuf, Vec<String>)>,
    dir: PathBuf,
}

impl Procs {
    /// Processes whose logs go to `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            children: BTreeMap::new(),
            args: BTreeMap::new(),
            dir: dir.to_path_buf(),
        }
    }

    /// Starts (or restarts, with the same arguments) process `name`.
    pub fn spawn(&mut self, name: &str) -> anyhow::Result<u32> {
        let (exe, args) = self
            .args
            .get(name)
            .with_context(|| format!("no demo process is called {name}"))?;
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = Command::new(exe)
            // Its own process group: Ctrl-C in the terminal reaches only
            // the demo, which then stops the traffic before the mesh.
            .process_group(0)
            .args(args)
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .env("RAFTMESH_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {} for {name}", exe.display()))?;
        let pid = child.id();
        self.children.insert(name.to_string(), child);
        Ok(pid)
    }

    /// Records how to start `name`, then starts it.
    pub fn start(&mut self, name: &str, exe: PathBuf, args: Vec<String>) -> anyhow::Result<u32> {
        self.args.insert(name.to_string(), (exe, args));
        self.spawn(name)
    }

    /// `kill -9` of process `name`, if it runs.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.children.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills every process.
    pub fn kill_all(&mut self) {
        let names: Vec<String> = self.children.keys().cloned().collect();
        for n in names {
            self.kill(&n);
        }
    }

    /// Pids of the running processes whose name starts with `prefix`.
    pub fn pids(&self, prefix: &str) -> Vec<u32> {
        self.children
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, c)| c.id())
            .collect()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// `meshd server` arguments of node `id` of the demo's cluster.
pub fn node_args(
    id: u64,
    addr: &str,
    initial: &str,
    dir: &Path,
    token_file: &Path,
    http: Option<&str>,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "server",
        "--id",
        &id.to_string(),
        "--listen",
        addr,
        "--http",
        http.unwrap_or("off"),
        "--initial-cluster",
        initial,
        "--cluster-name",
        "demo",
        "--endpoint-grace",
        "5s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push("--data-dir".into());
    a.push(dir.join(format!("n{id}")).display().to_string());
    a.push("--admin-token-file".into());
    a.push(token_file.display().to_string());
    a
}

/// `mesh-proxy` arguments for `p`, registering with `control_plane`.
pub fn proxy_args(
    p: &ProxySpec,
    control_plane: &[String],
    dir: &Path,
    token_file: &Path,
) -> Vec<String> {
    let mut a = vec![
        "--control-plane".to_string(),
        control_plane.join(","),
        "--service".into(),
        p.service.into(),
        "--instance".into(),
        p.instance.clone(),
        "--admin".into(),
        p.admin.to_string(),
        "--outbound".into(),
        p.outbound.to_string(),
        "--inbound".into(),
        p.inbound.to_string(),
        "--advertise".into(),
        "127.0.0.1".into(),
        "--token-file".into(),
        token_file.display().to_string(),
        "--state-dir".into(),
        dir.join(format!("proxy-{}", p.instance))
            .display()
            .to_string(),
    ];
    if let Some(v) = p.version {
        a.push("--labels".into());
        a.push(format!("version={v}"));
    }
    if let Some(app) = p.app {
        a.push("--app-port".into());
        a.push(app.port().to_string());
    }
    if !p.subscribe.is_empty() {
        a.push("--subscribe".into());
        a.push(p.subscribe.join(","));
    }
    a
}

/// [`proxy_args`] for a proxy under capture in a host of its own
/// (`--transparent`): its own address advertised, the capture and DNS
/// listeners on, meshd verified with its CA.
pub fn transparent_args(args: Vec<String>, ca_file: &Path) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len() + 6);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--advertise" {
            it.next();
            continue;
        }
        out.push(a);
    }
    out.extend([
        "--capture".into(),
        format!("127.0.0.1:{}", super::hosts::CAPTURE_PORT),
        "--dns".into(),
        format!("127.0.0.1:{}", super::hosts::DNS_PORT),
        "--ca-file".into(),
        ca_file.display().to_string(),
    ]);
    out
}

/// Whether a proxy's admin port answers `/ready` with 200 (it holds a config).
pub async fn proxy_ready(admin: SocketAddr) -> bool {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let Ok(uri) = format!("http://{admin}/ready").parse::<hyper::Uri>() else {
        return false;
    };
    matches!(client.get(uri).await, Ok(r) if r.status() == hyper::StatusCode::OK)
}

/// Whether a request through the proxy's outbound at `outbound` to
/// `service` is answered 200 (its endpoints registered and ready).
pub async fn serves(outbound: SocketAddr, service: &str) -> bool {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let Ok(req) = hyper::Request::get(format!("http://{outbound}/"))
        .header("host", service)
        .body(http_body_util::Empty::new())
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), client.request(req)).await,
        Ok(Ok(r)) if r.status() == hyper::StatusCode::OK
    )
}
