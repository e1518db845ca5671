//! Starting and stopping one meshd node: storage, Raft, the gRPC server
//! (Raft, admin), the actors, cluster formation and joining.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use anyhow::{bail, Context as _};
use openraft::SnapshotPolicy;
use raftmesh_api::v1::admin_server::AdminServer;
use raftmesh_api::v1::raft_server::RaftServer;
use raftmesh_storage::{LogStore, SnapshotData, StateReader, StoreConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::admin::AdminService;
use crate::cluster::faults::Faults;
use crate::cluster::network::{ClientPool, Network};
use crate::cluster::{membership, ClusterOps};
use crate::config::{ServerConfig, TestHooks};
use crate::discovery::hub::DiscoveryHub;
use crate::discovery::leases::{LeaseConfig, LeaseKeeper};
use crate::discovery::{DiscoveryConfig, DiscoveryService};
use crate::rpc::{NodeCheck, RaftService};
use crate::tokens;
use crate::watcher::{ClusterWatcher, Stop};
use crate::{NodeId, Raft};
use raftmesh_api::v1::discovery_server::DiscoveryServer;
use raftmesh_client::MAX_MESSAGE_BYTES;

/// What a data directory records about its node, checked at every start.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Identity {
    id: NodeId,
    cluster_name: String,
}

/// A running node.
pub struct Node {
    /// This node's id.
    pub id: NodeId,
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The bound HTTP address, if any.
    pub http_addr: Option<SocketAddr>,
    /// openraft's handle.
    pub raft: Raft,
    /// Read access to the applied state.
    pub reader: StateReader,
    /// Leader requests from this node.
    pub ops: Arc<ClusterOps>,
    log: LogStore,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    http: Option<JoinHandle<std::io::Result<()>>>,
    watcher: Addr<ClusterWatcher>,
    hub: Addr<DiscoveryHub>,
    leases: Addr<LeaseKeeper>,
    lease_thread: actix::Arbiter,
    links: tokio::task::JoinHandle<()>,
}

/// Limits on meshd's one gRPC port (proxies, clients and nodes alike):
/// requests in flight per connection and HTTP/2 streams per connection are
/// bounded, a peer that stops answering keep-alive pings is dropped, a
/// burst of reset streams (the "rapid reset" attack) closes the
/// connection, and header blocks are bounded. Documented in
/// `docs/reference/meshd.md`.
pub mod limits {
    use std::time::Duration;

    /// Requests (and streams) in flight per connection; more wait.
    pub const CONCURRENCY_PER_CONNECTION: usize = 256;
    /// HTTP/2 streams a peer may open on one connection.
    pub const MAX_CONCURRENT_STREAMS: u32 = 256;
    /// A keep-alive ping this often on every connection...
    pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
    /// ...which must be answered within this.
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Streams a peer may reset before they are accepted.
    pub const MAX_PENDING_RESETS: usize = 32;
    /// Largest header block accepted.
    pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
}

fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(limits::CONCURRENCY_PER_CONNECTION)
        .max_concurrent_streams(limits::MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(limits::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(limits::KEEPALIVE_TIMEOUT))
        .http2_max_pending_accept_reset_streams(Some(limits::MAX_PENDING_RESETS))
        .http2_max_header_list_size(limits::MAX_HEADER_LIST_BYTES)
}

fn check_identity(dir: &Path, cfg: &ServerConfig) -> anyhow::Result<()> {
    let path = dir.join("node.json");
    let want = Identity {
        id: cfg.id,
        cluster_name: cfg.cluster_name.clone(),
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let have: Identity = serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is corrupt; it records which node owns this directory",
                    path.display()
                )
            })?;
            if have != want {
                bail!(
                    "data directory {} belongs to node {} of cluster \"{}\", not node {} of \"{}\"; use another --data-dir",
                    dir.display(),
                    have.id,
                    have.cluster_name,
                    want.id,
                    want.cluster_name
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            raftmesh_api::files::write_private(&path, &serde_json::to_vec(&want)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    Ok(())
}

fn raft_config(cfg: &ServerConfig) -> anyhow::Result<openraft::Config> {
    let c = openraft::Config {
        cluster_name: cfg.cluster_name.clone(),
        heartbeat_interval: cfg.heartbeat_ms,
        election_timeout_min: cfg.election_timeout_min_ms,
        election_timeout_max: cfg.election_timeout_max_ms,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
        max_in_snapshot_log_to_keep: (cfg.snapshot_logs / 2).min(1_000),
        // Chunks are JSON (bytes as numbers, ~3.5x): stay well under the
        // gRPC message limit.
        snapshot_max_chunk_size: 1024 * 1024,
        // openraft 0.9 gives each AppendEntries one heartbeat interval and
        // resends it unchanged when it times out: a call must carry little
        // enough to arrive, decode and sync within it (entries are at most
        // `MAX_ENTRY_BYTES`; the default 300 of them could make hundreds of
        // MiB and never get through, stopping the cluster's writes).
        max_payload_entries: 4,
        ..Default::default()
    };
    Ok(c.validate()?)
}

/// Starts a node, binding `cfg.listen`. Must run inside an actix `System`
/// (see [`crate::run_system`]).
pub async fn start(cfg: ServerConfig, hooks: TestHooks) -> anyhow::Result<Node> {
    let listener = TcpListener::bind(cfg.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (is another meshd running there?)",
            cfg.listen
        )
    })?;
    start_with_listener(cfg, listener, hooks).await
}

/// Starts a node on an already bound listener (tests bind port 0 first).
pub async fn start_with_listener(
    cfg: ServerConfig,
    listener: TcpListener,
    hooks: TestHooks,
) -> anyhow::Result<Node> {
    cfg.validate()?;
    let addr = listener.local_addr()?;
    // Owner-only: the state holds token hashes and the workload CA.
    raftmesh_api::files::create_private_dir(&cfg.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            cfg.data_dir.display()
        )
    })?;
    check_identity(&cfg.data_dir, &cfg)?;

    let (mut log, mut sm) =
        raftmesh_storage::open(&cfg.data_dir.join("raft"), &StoreConfig::default())?;
    let reader = sm.reader();
    if let Some(file) = &cfg.restore {
        restore(&cfg, file, &mut log, &mut sm).await?;
    }

    let tls = match &cfg.tls_dir {
        Some(dir) => Some(crate::server_tls::load(dir, cfg.id)?),
        None => None,
    };
    let secret = cfg.node_secret();
    let pool = ClientPool::new(tls.as_ref().map(|t| t.client.clone()), secret.clone());
    let node_check = match (&tls, secret) {
        (Some(_), _) => NodeCheck::Certificate,
        (None, Some(s)) => NodeCheck::Secret(s),
        // validate() refuses a config with neither.
        (None, None) => {
            bail!("no node credential: give --tls-dir, --cluster-secret-file or --admin-token-file")
        }
    };
    let raft = Raft::new(
        cfg.id,
        Arc::new(raft_config(&cfg)?),
        Network::new(pool.clone(), hooks.fault_file.clone().map(Faults::watch)),
        log.clone(),
        sm,
    )
    .await
    .context("starting raft")?;
    let kek = cfg.kek().context(
        "no cluster secret: give --cluster-secret-file or --admin-token-file (the workload CA key is encrypted under a key derived from it)",
    )?;
    let ops = ClusterOps::new(
        raft.clone(),
        cfg.id,
        pool.clone(),
        reader.clone(),
        hooks.unsafe_local_reads,
        kek,
    );

    let bootstrap_hash = cfg.admin_token.as_deref().map(tokens::hash_secret);
    let watcher = ClusterWatcher::new(
        ops.clone(),
        pool.clone(),
        reader.clone(),
        cfg.cluster_name.clone(),
        bootstrap_hash,
    )
    .start();
    let hub = DiscoveryHub::new(reader.clone(), cfg.endpoint_expiry, ops.metrics().clone()).start();
    // The lease keeper runs on a thread of its own: no burst of work on the
    // actors' thread (the hub routing a large apply) delays its reports
    // and checks.
    let lease_thread = actix::Arbiter::new();
    let keeper = LeaseKeeper::new(
        ops.clone(),
        reader.clone(),
        hub.clone(),
        LeaseConfig::new(cfg.endpoint_grace, cfg.endpoint_expiry),
    );
    let leases = LeaseKeeper::start_in_arbiter(&lease_thread.handle(), move |_| keeper);
    ops.set_lease_sink(leases.clone().recipient());

    let (shutdown, shutdown_rx) = watch::channel(false);
    let federation = crate::federation::Federation::new(
        ops.clone(),
        cfg.cluster_name.clone(),
        tls.as_ref().map(|t| t.ca_pem.clone()),
        shutdown_rx.clone(),
    );
    let links = crate::federation::link::spawn(federation.clone(), shutdown_rx.clone());
    tokio::spawn(ops.clone().follow_tracing(shutdown_rx.clone()));
    // One admin API, served over gRPC and read by the dashboard.
    let admin = Arc::new(AdminService::new(
        watcher.clone(),
        hub.clone(),
        ops.clone(),
        cfg.cluster_name.clone(),
        federation.clone(),
    ));
    let server = {
        let mut rx = shutdown_rx.clone();
        let raft_svc = RaftServer::new(RaftService::new(ops.clone(), hub.clone(), node_check))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let admin_svc = AdminServer::from_arc(admin.clone())
            .max_decoding_message_size(raftmesh_client::MAX_ADMIN_REQUEST_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let discovery = DiscoveryService::new(
            ops.clone(),
            reader.clone(),
            hub.clone(),
            DiscoveryConfig {
                cluster_name: cfg.cluster_name.clone(),
                ..DiscoveryConfig::default()
            },
        );
        let discovery_svc = DiscoveryServer::new(discovery.clone())
            .max_decoding_message_size(discovery.max_message_bytes());
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(std::time::Duration::from_secs(60)));
        let mut builder = grpc_server();
        if let Some(t) = &tls {
            builder = builder
                .tls_config(t.server.clone())
                .context("--tls-dir: the node's certificate or key is unusable")?;
        }
        tokio::spawn(
            builder
                .add_service(raft_svc)
                .add_service(admin_svc)
                .add_service(discovery_svc)
                .add_service(
                    raftmesh_api::v1::federation_server::FederationServer::new(
                        crate::federation::FederationService(federation),
                    )
                    .max_decoding_message_size(raftmesh_client::MAX_ADMIN_REQUEST_BYTES),
                )
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.wait_for(|s| *s).await;
                }),
        )
    };

    let mut http_addr = None;
    let http = match cfg.http {
        Some(a) => {
            let l = crate::http::bind(a)
                .await
                .with_context(|| format!("cannot listen on --http {a}"))?;
            http_addr = Some(l.local_addr()?);
            let mut rx = shutdown_rx.clone();
            Some(tokio::spawn(crate::http::serve(
                l,
                ops.clone(),
                crate::dashboard::Dashboard {
                    admin: admin.clone(),
                    ops: ops.clone(),
                },
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };

    if !cfg.initial_cluster.is_empty() && !raft.is_initialized().await? {
        let members = membership::members(&cfg.initial_cluster);
        // Every node of a new cluster does this with the same members; the
        // first entry is identical everywhere, so whichever lands first wins.
        if let Err(e) = raft.initialize(members).await {
            tracing::info!(error = %e, "cluster already initialized");
        }
    }
    if !cfg.join.is_empty() && !raft.is_initialized().await? {
        tokio::spawn(membership::join(
            pool.clone(),
            cfg.join.clone(),
            cfg.id,
            cfg.advertise.clone(),
            shutdown_rx,
        ));
    }
    tracing::info!(node = cfg.id, %addr, data_dir = %cfg.data_dir.display(), "meshd node started");
    Ok(Node {
        id: cfg.id,
        addr,
        http_addr,
        raft,
        reader,
        ops,
        log,
        shutdown,
        server,
        http,
        watcher,
        hub,
        leases,
        lease_thread,
        links,
    })
}

async fn restore(
    cfg: &ServerConfig,
    file: &Path,
    log: &mut LogStore,
    sm: &mut raftmesh_storage::StateMachine,
) -> anyhow::Result<()> {
    if sm.reader().applied_revision() != 0 {
        tracing::warn!(file = %file.display(), "--restore ignored: the data directory already holds this node's state");
        return Ok(());
    }
    let bytes =
        std::fs::read(file).with_context(|| format!("cannot read --restore {}", file.display()))?;
    let data = SnapshotData::decode_backup(&bytes)
        .with_context(|| format!("--restore {}", file.display()))?;
    let members = membership::members(&cfg.initial_cluster);
    let rev = raftmesh_storage::restore(log, sm, data, members, cfg.id).await?;
    tracing::info!(revision = rev, file = %file.display(), "restored the state from a backup");
    Ok(())
}

impl Node {
    /// Stops serving, shuts Raft down and flushes storage.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        tracing::info!(node = self.id, "shutting down");
        let _ = self.shutdown.send(true);
        self.watcher.do_send(Stop);
        self.hub.do_send(crate::discovery::hub::StopHub);
        self.leases.do_send(crate::discovery::leases::StopLeases);
        self.lease_thread.stop();
        self.links.abort();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        if let Some(h) = self.http {
            let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
        }
        self.log.flush().await?;
        Ok(())
    }
}
