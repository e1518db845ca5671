//! A cluster of real `meshd` processes, each with its own data directory,
//! address and (as root) network namespace, for end-to-end and chaos tests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::net::Net;
use crate::procs::{free_port, Proc};

/// One meshd process and what it needs to restart.
pub struct Node {
    /// Node id (1-based).
    pub id: u64,
    /// `ip:port` of its gRPC port.
    pub addr: String,
    /// Its process, while running.
    pub proc: Option<Proc>,
    /// Whether it is paused (SIGSTOP).
    pub paused: bool,
    args: Vec<String>,
}

/// Options of a test cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOpts {
    /// Extra flags for every node (e.g. `--unsafe-local-reads`).
    pub extra_args: Vec<String>,
    /// Data directories on a `lazyfs` mount, so power cuts can be
    /// simulated ([`Cluster::power_cut`]); needs [`power_loss_available`].
    pub power_loss: bool,
    /// Hosts for workloads beside the nodes' (network namespaces on the
    /// same bridge, numbered after the nodes; root only).
    pub workload_hosts: u64,
    /// Every node on loopback, even as root (clusters that must reach
    /// each other: federation).
    pub loopback: bool,
}

/// Whether this machine can simulate power loss: root, `/dev/fuse`.
pub fn power_loss_available() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("power-loss runs need root (a FUSE mount)".into());
    }
    if !std::path::Path::new("/dev/fuse").exists() {
        return Err("power-loss runs need /dev/fuse".into());
    }
    Ok(())
}

/// The `lazyfs` mount the data directories live on.
struct LazyMount {
    proc: Proc,
    mountpoint: PathBuf,
    cuts: PathBuf,
}

impl LazyMount {
    fn start(dir: &std::path::Path) -> Result<Self, String> {
        let bin = raftmesh_client::bins::find("lazyfs", true).map_err(|e| e.to_string())?;
        let (backing, mountpoint) = (dir.join("backing"), dir.join("disk"));
        let cuts = dir.join("lazyfs.cuts");
        for d in [&backing, &mountpoint] {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        let mut cmd = std::process::Command::new(bin);
        cmd.arg(&backing)
            .arg(&mountpoint)
            .arg("--cuts-file")
            .arg(&cuts);
        let proc =
            Proc::spawn("lazyfs", cmd, &dir.join("lazyfs.log")).map_err(|e| e.to_string())?;
        let m = Self {
            proc,
            mountpoint,
            cuts,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !m.mounted() {
            if Instant::now() > deadline {
                return Err("lazyfs did not mount within 10 s (see lazyfs.log)".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(m)
    }

    fn mounted(&self) -> bool {
        std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == Some(&*self.mountpoint.to_string_lossy()))
        })
    }

    fn cuts(&self) -> usize {
        std::fs::read_to_string(&self.cuts)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        self.proc.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.mounted() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.mounted() {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        self.proc.kill();
    }
}

/// A running cluster; every process, namespace and file is removed when it
/// is dropped.
pub struct Cluster {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The admin token's secret.
    pub token: String,
    /// The network between the nodes.
    pub net: Net,
    meshd: PathBuf,
    lazy: Option<LazyMount>,
    // Last: removed after the processes are gone.
    /// Where data and logs live.
    pub dir: TempDir,
}

/// Where libfaketime lives on Debian.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

impl Cluster {
    /// Starts `n` meshd nodes forming one cluster.
    pub fn start(n: u64, opts: ClusterOpts) -> Result<Self, String> {
        let meshd = raftmesh_client::bins::find("meshd", true).map_err(|e| e.to_string())?;
        let dir = tempfile::Builder::new()
            .prefix("raftmesh-cluster-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let net = Net::with_hosts_on(n, opts.workload_hosts, dir.path(), opts.loopback)?;
        if opts.workload_hosts > 0 && !net.real() {
            return Err("workload hosts need network namespaces (root, ip, iptables)".into());
        }
        let lazy = if opts.power_loss {
            power_loss_available()?;
            Some(LazyMount::start(dir.path())?)
        } else {
            None
        };
        let data_root = match &lazy {
            Some(l) => l.mountpoint.clone(),
            None => dir.path().to_path_buf(),
        };
        let token = format!(
            "chaos-admin-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let token_file = dir.path().join("admin.token");
        std::fs::write(&token_file, &token).map_err(|e| e.to_string())?;
        let addrs: Vec<String> = (1..=n)
            .map(|i| format!("{}:{}", net.ip(i), free_port()))
            .collect();
        let initial = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let mut args: Vec<String> = vec![
                "server".into(),
                "--id".into(),
                id.to_string(),
                "--listen".into(),
                addr.clone(),
                "--http".into(),
                "off".into(),
                "--data-dir".into(),
                data_root.join(format!("n{id}")).display().to_string(),
                "--initial-cluster".into(),
                initial.clone(),
                "--admin-token-file".into(),
                token_file.display().to_string(),
                "--fault-file".into(),
                net.fault_file(id).display().to_string(),
                "--parent-pid".into(),
                std::process::id().to_string(),
                // The harness's own network namespaces: no TLS on purpose.
                "--insecure-plaintext".into(),
            ];
            args.extend(opts.extra_args.iter().cloned());
            nodes.push(Node {
                id,
                addr: addr.clone(),
                proc: None,
                paused: false,
                args,
            });
        }
        let mut c = Cluster {
            nodes,
            token,
            net,
            meshd,
            lazy,
            dir,
        };
        for id in 1..=n {
            c.start_node(id, None)?;
        }
        Ok(c)
    }

    /// (Re)starts node `id` from its data directory; `faketime` (e.g.
    /// `"+30s x1.5"`) runs it under libfaketime.
    pub fn start_node(&mut self, id: u64, faketime: Option<&str>) -> Result<(), String> {
        let log = self.dir.path().join(format!("n{id}.log"));
        let mut cmd = self.net.command(id, &self.meshd);
        let node = &mut self.nodes[id as usize - 1];
        cmd.args(&node.args)
            .env("RAFTMESH_LOG", "info,openraft=warn");
        if let Some(ft) = faketime {
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME", ft)
                .env("FAKETIME_DONT_RESET", "1");
        }
        node.proc = Some(Proc::spawn(format!("meshd-{id}"), cmd, &log).map_err(|e| e.to_string())?);
        node.paused = false;
        Ok(())
    }

    /// `ip:port` of every node.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// SIGKILL node `id`.
    pub fn kill(&mut self, id: u64) {
        let n = &mut self.nodes[id as usize - 1];
        if let Some(mut p) = n.proc.take() {
            p.kill();
        }
        n.paused = false;
    }

    /// SIGSTOP node `id`.
    pub fn pause(&mut self, id: u64) {
        let n = &mut self.nodes[id as usize - 1];
        if let Some(p) = &n.proc {
            p.signal("STOP");
            n.paused = true;
        }
    }

    /// SIGCONT node `id`.
    pub fn resume(&mut self, id: u64) {
        let n = &mut self.nodes[id as usize - 1];
        if let Some(p) = &n.proc {
            p.signal("CONT");
        }
        n.paused = false;
    }

    /// Whether node `id` runs (and is not paused).
    pub fn up(&self, id: u64) -> bool {
        let n = &self.nodes[id as usize - 1];
        n.proc.is_some() && !n.paused
    }

    /// The leader, once the cluster answers status with one (and the
    /// admin token works), within `timeout`.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let live: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| n.proc.is_some() && !n.paused)
                .map(|n| n.addr.clone())
                .collect();
            if let Ok(s) = crate::client::cluster_status(&live, &self.token).await {
                if let Some(l) = s.leader {
                    if self
                        .nodes
                        .get(l as usize - 1)
                        .is_some_and(|n| n.proc.is_some())
                    {
                        return Ok(l);
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no leader within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Cuts the power under every node: each must be down already (a
    /// killed process); every write not synced is lost. Returns once the
    /// file system says it is done.
    pub fn power_cut(&mut self) -> Result<(), String> {
        if self.nodes.iter().any(|n| n.proc.is_some()) {
            return Err("power_cut with nodes still running".into());
        }
        let lazy = self
            .lazy
            .as_ref()
            .ok_or("this cluster was not started with power_loss")?;
        let before = lazy.cuts();
        lazy.proc.signal("USR1");
        let deadline = Instant::now() + Duration::from_secs(10);
        while lazy.cuts() == before {
            if Instant::now() > deadline {
                return Err("lazyfs did not report the power cut within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The last lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join(format!("n{id}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut p) = n.proc.take() {
                p.kill();
            }
        }
        // Unmounted before the directory under it is removed.
        self.lazy = None;
    }
}
