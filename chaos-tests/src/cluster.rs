//! A cluster of real `meshd` processes, each with its own data directory
//! and ports, for end-to-end and chaos tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::procs::{free_port, Proc};

/// One meshd process and what it needs to restart.
pub struct Node {
    /// Node id (1-based).
    pub id: u64,
    /// gRPC port.
    pub port: u16,
    /// Its process, while running.
    pub proc: Option<Proc>,
    args: Vec<String>,
}

/// Options of a test cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOpts {
    /// Extra flags for every node (e.g. `--unsafe-local-reads`).
    pub extra_args: Vec<String>,
    /// Set `FAKETIME` per node (libfaketime offsets), by node index.
    pub env: Vec<(String, String)>,
}

/// A running cluster; every process is killed when it is dropped.
pub struct Cluster {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The admin token's secret.
    pub token: String,
    /// Where data and logs live.
    pub dir: TempDir,
    meshd: PathBuf,
}

impl Cluster {
    /// Starts `n` meshd nodes forming one cluster.
    pub fn start(n: u64, opts: ClusterOpts) -> Result<Self, String> {
        let meshd = crate::binaries::path("meshd")?;
        let dir = tempfile::Builder::new()
            .prefix("raftmesh-cluster-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let token = format!("chaos-admin-{}", std::process::id());
        let token_file = dir.path().join("admin.token");
        std::fs::write(&token_file, &token).map_err(|e| e.to_string())?;
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let mut args: Vec<String> = vec![
                "server".into(),
                "--id".into(),
                id.to_string(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--http".into(),
                "off".into(),
                "--data-dir".into(),
                dir.path().join(format!("n{id}")).display().to_string(),
                "--initial-cluster".into(),
                initial.clone(),
                "--admin-token-file".into(),
                token_file.display().to_string(),
            ];
            args.extend(opts.extra_args.iter().cloned());
            nodes.push(Node {
                id,
                port: *port,
                proc: None,
                args,
            });
        }
        let mut c = Cluster {
            nodes,
            token,
            dir,
            meshd,
        };
        for id in 1..=n {
            c.start_node(id)?;
        }
        Ok(c)
    }

    /// (Re)starts node `id` from its data directory.
    pub fn start_node(&mut self, id: u64) -> Result<(), String> {
        let log = self.dir.path().join(format!("n{id}.log"));
        let node = &mut self.nodes[id as usize - 1];
        let mut cmd = Command::new(&self.meshd);
        cmd.args(&node.args)
            .env("RAFTMESH_LOG", "info,openraft=warn");
        node.proc = Some(Proc::spawn(format!("meshd-{id}"), cmd, &log).map_err(|e| e.to_string())?);
        Ok(())
    }

    /// `host:port` of every node.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// SIGKILL node `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut p) = self.nodes[id as usize - 1].proc.take() {
            p.kill();
        }
    }

    /// The leader, once the cluster answers status with one (and the
    /// admin token works), within `timeout`.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let live: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| n.proc.is_some())
                .map(|n| format!("127.0.0.1:{}", n.port))
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
}
