//! meshd: the Raftmesh control-plane node.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use raftmesh_controlplane::config::{parse_http, DevArgs, ServerArgs, ServerConfig, TestHooks};
use raftmesh_controlplane::node::{self, Node};
use raftmesh_controlplane::{run_system, tokens};

#[derive(Parser)]
#[command(
    name = "meshd",
    version,
    about = "Raftmesh control-plane node",
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run a node of a cluster.
    Server(ServerArgs),
    /// A one-node control plane in one command, printing its address and admin token.
    Dev(DevArgs),
    /// A whole local mesh with traffic: 3 nodes, proxies, a scripted story.
    Demo(raftmesh_controlplane::demo::DemoArgs),
    /// Server TLS files for `meshd server --tls-dir`.
    #[command(subcommand)]
    Tls(TlsCmd),
}

#[derive(Subcommand)]
enum TlsCmd {
    /// Make a server CA and one certificate per node (node-1.pem, node-1-key.pem, ...),
    /// and a cluster secret (cluster.secret) for clusters run without TLS.
    Init {
        /// The folder to write; it must not already hold a CA.
        #[arg(long)]
        out: std::path::PathBuf,
        /// How many nodes (ids 1..=N).
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Names and IP addresses clients use to reach the nodes (every node
        /// certificate carries them all).
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
        hosts: Vec<String>,
        /// Lifetime of the node certificates.
        #[arg(long, default_value = "365days")]
        validity: humantime::Duration,
    },
}

fn tls(cmd: TlsCmd) -> anyhow::Result<()> {
    match cmd {
        TlsCmd::Init {
            out,
            nodes,
            hosts,
            validity,
        } => {
            let files = raftmesh_controlplane::server_tls::init(
                &raftmesh_controlplane::server_tls::InitOptions {
                    out: out.clone(),
                    nodes,
                    hosts,
                    validity: validity.into(),
                },
            )?;
            for f in &files {
                println!("wrote {}", f.display());
            }
            println!(
                "start each node with `meshd server --id N --tls-dir {dir}`; clients verify meshd with \
                 `--ca-file {dir}/{ca}`. Keep {dir}/{key} offline: only new node certificates need it. \
                 Without TLS, give every node `--cluster-secret-file {dir}/{secret}` instead.",
                dir = out.display(),
                ca = raftmesh_controlplane::server_tls::CA_CERT,
                key = raftmesh_controlplane::server_tls::CA_KEY,
                secret = raftmesh_controlplane::server_tls::CLUSTER_SECRET,
            );
            Ok(())
        }
    }
}

fn init_tracing(quiet: bool) {
    // The demo draws a table on the terminal: only warnings by default.
    let default = if quiet {
        "warn,openraft=error"
    } else {
        "info,openraft=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAFTMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

async fn serve_until_signal(node: Node, parent: Option<u32>) -> anyhow::Result<()> {
    tokio::select! {
        sig = wait_for_signal() => tracing::info!(signal = sig?, "stopping"),
        _ = raftmesh_client::bins::parent_gone(parent) => {
            tracing::info!("the parent process is gone; stopping")
        }
    }
    node.shutdown().await
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let parent = args.parent_pid;
    let (cfg, hooks) = args.into_config()?;
    if cfg.tls_dir.is_none() {
        warn_plaintext();
    }
    if hooks.unsafe_local_reads {
        tracing::error!(
            "--unsafe-local-reads: reads are NOT linearizable (fault injection for chaos tests)"
        );
    }
    let node = node::start(cfg, hooks).await?;
    serve_until_signal(node, parent).await
}

fn warn_plaintext() {
    tracing::warn!(
        "meshd is running WITHOUT TLS (no --tls-dir): node-to-node and client traffic is plaintext. \
         Fine on loopback for development; never in production"
    );
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let temp = match &args.data_dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("meshd-dev-").tempdir()?),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()))
        .context("no data directory")?;
    let token = args.admin_token.clone().unwrap_or_else(tokens::new_secret);
    let mut cfg = ServerConfig::new(1, args.listen, data_dir.clone());
    cfg.http = parse_http(&args.http)?;
    cfg.cluster_name = args.cluster_name.clone();
    cfg.initial_cluster = [(1, args.listen.to_string())].into_iter().collect();
    cfg.admin_token = Some(token.clone());
    warn_plaintext();
    let node = node::start(cfg, TestHooks::default()).await?;
    // Ready once the admin token is stored, so the printed token works.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokens::authenticate(
        &node.reader,
        Some(&format!("Bearer {token}")),
        raftmesh_controlplane::procinfo::unix_ms(),
    )
    .is_err()
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the dev node did not become ready in 10s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let where_ = if temp.is_some() {
        " (temporary, removed on exit)"
    } else {
        ""
    };
    println!("meshd dev: a one-node Raftmesh control plane is running");
    println!("  address:     {}", node.addr);
    if let Some(h) = node.http_addr {
        println!("  metrics:     http://{h}/metrics");
    }
    println!("  data dir:    {}{where_}", data_dir.display());
    println!("  admin token: {token}");
    println!();
    println!("Try:");
    println!(
        "  export RAFTMESH_SERVER={} RAFTMESH_TOKEN={token}",
        node.addr
    );
    println!("  meshctl cluster status");
    println!();
    println!("Ctrl-C stops it.");
    serve_until_signal(node, None).await?;
    drop(temp);
    Ok(())
}

fn main() {
    // Everything meshd writes — its data directory, sled's files, TLS files,
    // backups of the demo — is its user's only.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Demo(_)));
    let result = run_system(async move {
        match cli.command {
            Command::Server(a) => server(a).await,
            Command::Dev(a) => dev(a).await,
            Command::Demo(a) => raftmesh_controlplane::demo::run(a).await,
            Command::Tls(c) => tls(c),
        }
    });
    if let Err(e) = result {
        eprintln!("meshd: {e:#}");
        std::process::exit(1);
    }
}
