//! Typed configuration of a meshd node. This module is the one place that
//! reads flags, environment and files; everything else takes a
//! [`ServerConfig`] (and, in tests and chaos runs, [`TestHooks`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::NodeId;

/// Why a configuration was refused; the message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag's value, or a combination of flags, is wrong.
    #[error("{0}")]
    Flag(String),
    /// A file named by a flag cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The admin token file is empty.
    #[error("{path} is empty; it must hold a secret")]
    EmptySecret {
        /// The file.
        path: String,
    },
}

/// The shortest secret accepted for the first admin token or the cluster
/// secret: 16 bytes, 128 bits.
pub const MIN_SECRET_BYTES: usize = 16;

fn flag(msg: impl Into<String>) -> ConfigError {
    ConfigError::Flag(msg.into())
}

/// Options tests and fault injection use; off in production.
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    /// Serve reads without a read index (a deliberately broken build for
    /// the chaos tests to catch).
    pub unsafe_local_reads: bool,
    /// A fault-injection file (see `cluster/faults.rs`).
    pub fault_file: Option<PathBuf>,
}

/// Checks a cluster name: a DNS-1123 label (it becomes part of the trust domain).
pub fn validate_cluster_name(name: &str) -> Result<(), ConfigError> {
    raftmesh_api::validate::dns_label(name).map_err(|e| flag(format!("--cluster-name: {e}")))
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This node's id (1 or more).
    pub id: NodeId,
    /// The gRPC address to bind (Raft, admin, discovery).
    pub listen: SocketAddr,
    /// The address other nodes and clients use to reach this one
    /// (default: `listen`).
    pub advertise: String,
    /// The HTTP address for metrics and health; `None` disables it.
    pub http: Option<SocketAddr>,
    /// Where sled keeps this node's state.
    pub data_dir: PathBuf,
    /// The voters of a new cluster, the same on every node.
    pub initial_cluster: BTreeMap<NodeId, String>,
    /// Addresses of existing nodes to join through (node added later).
    pub join: Vec<String>,
    /// Name of the cluster (trust domain default `<name>.mesh`).
    pub cluster_name: String,
    /// The secret of the first admin token; only its SHA-256 is stored.
    pub admin_token: Option<String>,
    /// A backup file (`meshctl backup save`) to start a new cluster from.
    pub restore: Option<PathBuf>,
    /// Build a Raft snapshot (and purge the log) every this many entries.
    pub snapshot_logs: u64,
    /// How long a proxy's stream may be gone before its endpoint is unhealthy.
    pub endpoint_grace: Duration,
    /// How long before such an endpoint is removed.
    pub endpoint_expiry: Duration,
    /// Raft timing.
    pub heartbeat_ms: u64,
    /// Raft election timeout range, low end.
    pub election_timeout_min_ms: u64,
    /// Raft election timeout range, high end.
    pub election_timeout_max_ms: u64,
    /// Server TLS files (`meshd tls init`); plaintext when `None`.
    pub tls_dir: Option<PathBuf>,
    /// The cluster secret (`--cluster-secret-file`): the node credential
    /// without TLS. When `None`, one is derived from `admin_token`.
    pub cluster_secret: Option<String>,
    /// Listen off loopback without TLS (`--insecure-plaintext`).
    pub insecure_plaintext: bool,
}

impl ServerConfig {
    /// A config with the documented defaults for node `id` at `listen`.
    pub fn new(id: NodeId, listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            id,
            listen,
            advertise: listen.to_string(),
            http: None,
            data_dir,
            initial_cluster: BTreeMap::new(),
            join: Vec::new(),
            cluster_name: "raftmesh".into(),
            admin_token: None,
            restore: None,
            snapshot_logs: 10_000,
            endpoint_grace: Duration::from_secs(10),
            endpoint_expiry: Duration::from_secs(300),
            heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            tls_dir: None,
            cluster_secret: None,
            insecure_plaintext: false,
        }
    }

    /// The node credential on node-to-node calls without TLS: the cluster
    /// secret's, else one derived from the first admin token's secret.
    /// `None` with TLS (the node certificate is the credential).
    pub fn node_secret(&self) -> Option<crate::cluster::credential::ClusterSecret> {
        use crate::cluster::credential::ClusterSecret;
        if self.tls_dir.is_some() {
            return None;
        }
        match (&self.cluster_secret, &self.admin_token) {
            (Some(s), _) => Some(ClusterSecret::from_file_contents(s)),
            (None, Some(t)) => Some(ClusterSecret::from_admin_token(t)),
            (None, None) => None,
        }
    }

    /// The key-encryption key of the workload CA key, from the cluster
    /// secret, else the first admin token's secret (TLS or not). `None`
    /// when the node has neither (`validate` refuses that).
    pub fn kek(&self) -> Option<crate::ca::seal::Kek> {
        use crate::ca::seal::Kek;
        match (&self.cluster_secret, &self.admin_token) {
            (Some(s), _) => Some(Kek::derive("file", s)),
            (None, Some(t)) => Some(Kek::derive("admin-token", t)),
            (None, None) => None,
        }
    }

    /// Checks the combination of settings; the error says what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(flag("--id must be 1 or more"));
        }
        if !self.initial_cluster.is_empty() && !self.join.is_empty() {
            return Err(flag("give either --initial-cluster (a new cluster) or --join (an existing one), not both"));
        }
        if let Some(addr) = self.initial_cluster.get(&self.id) {
            if *addr != self.advertise {
                return Err(flag(format!(
                    "--initial-cluster names node {} at {addr}, but this node listens/advertises {}",
                    self.id, self.advertise
                )));
            }
        } else if !self.initial_cluster.is_empty() {
            return Err(flag(format!(
                "--initial-cluster does not name this node (--id {})",
                self.id
            )));
        }
        if self.restore.is_some() && self.initial_cluster.is_empty() {
            return Err(flag("--restore starts a new cluster: give --initial-cluster too (the same on every node)"));
        }
        if self.election_timeout_min_ms <= self.heartbeat_ms * 2
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            return Err(flag(
                "election timeouts must exceed twice the heartbeat and min < max",
            ));
        }
        if self.endpoint_expiry <= self.endpoint_grace {
            return Err(flag(
                "--endpoint-expiry must be longer than --endpoint-grace",
            ));
        }
        if self.snapshot_logs < 10 {
            return Err(flag("--snapshot-logs must be at least 10"));
        }
        for (what, secret) in [
            (
                "the first admin token's secret (--admin-token-file)",
                &self.admin_token,
            ),
            (
                "the cluster secret (--cluster-secret-file)",
                &self.cluster_secret,
            ),
        ] {
            if let Some(s) = secret.as_deref().map(str::trim) {
                if s.len() < MIN_SECRET_BYTES {
                    return Err(flag(format!(
                        "{what} is {} bytes; at least {MIN_SECRET_BYTES} (128 bits) are needed: \
                         make one with `head -c 32 /dev/urandom | base64`",
                        s.len()
                    )));
                }
            }
        }
        if self.tls_dir.is_some() && self.cluster_secret.is_none() && self.admin_token.is_none() {
            return Err(flag(
                "the workload CA key is encrypted under a key derived from a cluster secret every \
                 node holds: give every node the same --cluster-secret-file (`meshd tls init` makes \
                 one) or the same --admin-token-file",
            ));
        }
        if self.tls_dir.is_none() {
            if self.cluster_secret.is_none() && self.admin_token.is_none() {
                return Err(flag(
                    "without --tls-dir, node-to-node calls need a cluster secret every node holds: \
                     give every node the same --cluster-secret-file (`meshd tls init` makes one) \
                     or the same --admin-token-file",
                ));
            }
            if !self.listen.ip().is_loopback() && !self.insecure_plaintext {
                return Err(flag(format!(
                    "refusing to listen on {} without TLS: anyone on the network could read \
                     the cluster's traffic and admin tokens. Give --tls-dir (`meshd tls init` \
                     makes one), or --insecure-plaintext to accept that",
                    self.listen
                )));
            }
        }
        validate_cluster_name(&self.cluster_name)
    }
}

/// Parses `1=127.0.0.1:7101,2=127.0.0.1:7102`.
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| flag(format!("\"{part}\" is not ID=HOST:PORT")))?;
        let id: NodeId = id.trim().parse().map_err(|_| {
            flag(format!(
                "\"{id}\" in \"{part}\" is not a node id (a number)"
            ))
        })?;
        if id == 0 {
            return Err(flag(format!("node ids start at 1 (\"{part}\")")));
        }
        let addr = addr.trim();
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(flag(format!("\"{addr}\" in \"{part}\" is not HOST:PORT")));
        }
        if out.insert(id, addr.to_string()).is_some() {
            return Err(flag(format!("node {id} is listed twice")));
        }
    }
    if out.is_empty() {
        return Err(flag("no node listed (expected ID=HOST:PORT,...)"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parses_and_rejects_bad_entries() {
        let m = parse_initial_cluster("1=127.0.0.1:7101, 2=127.0.0.1:7102,3=host:7103").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[&3], "host:7103");
        assert!(parse_initial_cluster("1=a:1,1=b:2")
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
        assert!(parse_initial_cluster("x=a:1")
            .unwrap_err()
            .to_string()
            .contains("not a node id"));
        assert!(parse_initial_cluster("1=a")
            .unwrap_err()
            .to_string()
            .contains("HOST:PORT"));
        assert!(parse_initial_cluster("").is_err());
    }

    #[test]
    fn without_tls_a_node_needs_a_credential_and_loopback() {
        let mut c = ServerConfig::new(1, "127.0.0.1:7101".parse().unwrap(), "d".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--cluster-secret-file"), "{e}");
        c.cluster_secret = Some("shared-by-every-node".into());
        c.validate().unwrap();
        assert!(c.node_secret().is_some());
        c.cluster_secret = None;
        c.admin_token = Some("first-admin-secret".into());
        c.validate().unwrap();
        assert!(c.node_secret().is_some(), "derived from the admin token");
        c.listen = "0.0.0.0:7101".parse().unwrap();
        c.advertise = c.listen.to_string();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("--insecure-plaintext") && e.contains("--tls-dir"),
            "{e}"
        );
        c.insecure_plaintext = true;
        c.validate().unwrap();
        c.insecure_plaintext = false;
        c.tls_dir = Some("tls".into());
        c.validate().unwrap();
        assert!(
            c.node_secret().is_none(),
            "with TLS the certificate is the credential"
        );
        assert!(c.kek().is_some(), "the CA key is sealed with TLS too");
        // With TLS a secret is still needed: it seals the CA key.
        c.admin_token = None;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("encrypted") && e.contains("--cluster-secret-file"),
            "{e}"
        );
    }

    #[test]
    fn a_secret_shorter_than_128_bits_is_refused() {
        let mut c = ServerConfig::new(1, "127.0.0.1:7101".parse().unwrap(), "d".into());
        c.admin_token = Some("fifteen-bytes!!".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("15 bytes") && e.contains("128 bits"), "{e}");
        c.admin_token = Some("sixteen-bytes!!!".into());
        c.validate().unwrap();
        c.cluster_secret = Some("short".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--cluster-secret-file"), "{e}");
    }

    #[test]
    fn config_must_name_this_node_in_initial_cluster() {
        let mut c = ServerConfig::new(1, "127.0.0.1:7101".parse().unwrap(), "d".into());
        c.admin_token = Some("a-secret-every-node-holds".into());
        c.initial_cluster = parse_initial_cluster("2=127.0.0.1:7102").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("does not name this node"));
        c.initial_cluster = parse_initial_cluster("1=127.0.0.1:7101").unwrap();
        c.validate().unwrap();
        c.join = vec!["x:1".into()];
        assert!(c.validate().unwrap_err().to_string().contains("not both"));
    }
}

/// `meshd server` flags. This and [`DevArgs`] are the only places that read
/// flags, environment and files.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// This node's id (1 or more), unique in the cluster.
    #[arg(long)]
    pub id: NodeId,
    /// gRPC address (Raft, admin API, discovery).
    #[arg(long, default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Address other nodes reach this one at (default: --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// HTTP address for /metrics, /healthz, /readyz and the dashboard (plain HTTP: keep it on loopback or a management network); `off` to disable.
    #[arg(long, default_value = "127.0.0.1:7180")]
    pub http: String,
    /// Data directory (default ./data/<id>).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Voters of a new cluster, the same on every node: ID=HOST:PORT,...
    #[arg(long, value_parser = parse_initial_cluster)]
    pub initial_cluster: Option<BTreeMap<NodeId, String>>,
    /// Join an existing cluster through these nodes: HOST:PORT,...
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    /// Cluster name; the default trust domain is <name>.mesh.
    #[arg(long, default_value = "raftmesh")]
    pub cluster_name: String,
    /// File holding the secret of the first admin token.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// The first admin token's secret itself (prefer --admin-token-file).
    #[arg(
        long,
        env = "RAFTMESH_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<String>,
    /// Server TLS files made by `meshd tls init`.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Without --tls-dir: a file holding the secret every node of the
    /// cluster shares, which node-to-node calls prove they know (default:
    /// one derived from --admin-token-file).
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
    /// Listen on a non-loopback address without --tls-dir (the traffic and
    /// the tokens in it travel in clear: never in production).
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// How long a proxy may be gone before its endpoint is unhealthy.
    #[arg(long, default_value = "10s")]
    pub endpoint_grace: humantime::Duration,
    /// How long before an endpoint whose proxy is gone is removed.
    #[arg(long, default_value = "5m")]
    pub endpoint_expiry: humantime::Duration,
    /// Start a new cluster from a backup file (give it to every node).
    #[arg(long)]
    pub restore: Option<PathBuf>,
    /// Snapshot and purge the log every this many entries.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_logs: u64,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100, hide = true)]
    pub heartbeat_ms: u64,
    /// Raft election timeout, low end, in milliseconds.
    #[arg(long, default_value_t = 400, hide = true)]
    pub election_timeout_min_ms: u64,
    /// Raft election timeout, high end, in milliseconds.
    #[arg(long, default_value_t = 800, hide = true)]
    pub election_timeout_max_ms: u64,
    /// FAULT INJECTION for chaos tests: serve reads without a read index.
    #[arg(long, hide = true)]
    pub unsafe_local_reads: bool,
    /// FAULT INJECTION for chaos tests: delays and drops of outgoing Raft messages.
    #[arg(long, hide = true)]
    pub fault_file: Option<PathBuf>,
    /// Exit when this process is gone (used by `meshd demo` for its nodes).
    #[arg(long, hide = true)]
    pub parent_pid: Option<u32>,
}

/// Reads a secret from a file, trimmed; refuses an empty one.
pub fn read_secret_file(path: &std::path::Path) -> Result<String, ConfigError> {
    let s = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(ConfigError::EmptySecret {
            path: path.display().to_string(),
        });
    }
    Ok(s)
}

/// Parses `--http`: an address, or `off`.
pub fn parse_http(s: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| flag(format!("--http \"{s}\" is not HOST:PORT or off")))
}

impl ServerArgs {
    /// The node config these flags describe.
    pub fn into_config(self) -> Result<(ServerConfig, TestHooks), ConfigError> {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from("data").join(self.id.to_string()));
        let mut c = ServerConfig::new(self.id, self.listen, data_dir);
        c.advertise = self.advertise.unwrap_or_else(|| self.listen.to_string());
        c.http = parse_http(&self.http)?;
        c.initial_cluster = self.initial_cluster.unwrap_or_default();
        c.join = self.join;
        c.cluster_name = self.cluster_name;
        c.admin_token = match (self.admin_token_file, self.admin_token) {
            (Some(f), _) => Some(read_secret_file(&f)?),
            (None, Some(t)) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => None,
        };
        c.restore = self.restore;
        c.tls_dir = self.tls_dir;
        c.cluster_secret = self
            .cluster_secret_file
            .as_deref()
            .map(read_secret_file)
            .transpose()?;
        c.insecure_plaintext = self.insecure_plaintext;
        c.snapshot_logs = self.snapshot_logs;
        c.endpoint_grace = self.endpoint_grace.into();
        c.endpoint_expiry = self.endpoint_expiry.into();
        c.heartbeat_ms = self.heartbeat_ms;
        c.election_timeout_min_ms = self.election_timeout_min_ms;
        c.election_timeout_max_ms = self.election_timeout_max_ms;
        c.validate()?;
        Ok((
            c,
            TestHooks {
                unsafe_local_reads: self.unsafe_local_reads,
                fault_file: self.fault_file,
            },
        ))
    }
}

/// `meshd dev` flags.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// gRPC address.
    #[arg(long, default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// HTTP address, or `off`.
    #[arg(long, default_value = "127.0.0.1:7180")]
    pub http: String,
    /// Keep state here instead of a temporary directory removed on exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Admin token secret to use instead of a random one.
    #[arg(long, env = "RAFTMESH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Cluster name.
    #[arg(long, default_value = "dev")]
    pub cluster_name: String,
}
