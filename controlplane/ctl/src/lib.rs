//! meshctl: the admin CLI. One module per command group, in the istioctl
//! style; exit status says what went wrong (see [`ExitCode`]).
//!
//! A client of meshd's admin API through `raftmesh-client` only: this crate
//! must not depend on openraft, sled, actix or the proxy (`.ci/run` checks
//! it with `cargo tree`).

/// `print!` that ends quietly when stdout is a closed pipe (`meshctl ... | head`).
macro_rules! out {
    ($($t:tt)*) => { $crate::output::emit(&format!($($t)*)) };
}

/// `println!` that ends quietly when stdout is a closed pipe.
macro_rules! outln {
    ($($t:tt)*) => { $crate::output::emit(&(format!($($t)*) + "\n")) };
}

mod backup;
mod check;
mod cluster;
mod output;
mod peering;
mod proxies;
mod resources;
mod revoke;
mod stat;
mod tap;
mod token;

pub use clap::Parser;
use clap::Subcommand;

pub use output::Format;
pub use raftmesh_client::Conn;

/// Exit status of meshctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// The server refused or could not be reached.
    Failed = 1,
    /// Bad usage (clap's own code).
    Usage = 2,
    /// The input (a file, a document) is invalid; nothing was sent.
    BadInput = 3,
    /// Authentication or permission refused.
    Denied = 4,
    /// A compare-and-set conflict; nothing was changed.
    Conflict = 5,
}

/// A failed command: its exit status and a one-line reason.
#[derive(Debug)]
pub struct CtlError {
    /// Exit status.
    pub code: ExitCode,
    /// Printed on stderr.
    pub message: String,
}

impl CtlError {
    /// An error with an exit status.
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for CtlError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        let code = match s.code() {
            Code::Unauthenticated | Code::PermissionDenied => ExitCode::Denied,
            Code::InvalidArgument => ExitCode::BadInput,
            Code::FailedPrecondition | Code::Aborted => ExitCode::Conflict,
            _ => ExitCode::Failed,
        };
        let what = match s.code() {
            Code::Unavailable => "unavailable",
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission denied",
            Code::NotFound => "not found",
            Code::InvalidArgument => "invalid",
            Code::FailedPrecondition | Code::Aborted => "conflict",
            Code::Unimplemented => "not supported",
            _ => "error",
        };
        CtlError::new(code, format!("{what}: {}", s.message()))
    }
}

/// Result of a command.
pub type CtlResult = Result<(), CtlError>;

/// The meshctl command line.
#[derive(Debug, Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Operate a Raftmesh cluster",
    max_term_width = 100
)]
pub struct Cli {
    /// meshd addresses, tried in order until one answers.
    #[arg(
        long,
        global = true,
        env = "RAFTMESH_SERVER",
        value_delimiter = ',',
        default_value = "127.0.0.1:7100"
    )]
    pub server: Vec<String>,
    /// Admin token (the secret).
    #[arg(long, global = true, env = "RAFTMESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate to verify meshd with (clusters started with --tls-dir).
    #[arg(long, global = true, env = "RAFTMESH_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    /// The command.
    pub command: Command,
}

/// meshctl commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update resources from YAML documents, all or none.
    #[command(
        after_help = "One apply is one Raft entry of at most 1 MiB (about 6,500 small Services); meshd refuses a larger one and writes nothing. Apply larger sets in several files (bench/large-apply.sh: 120,000 Services in files of 5,000)."
    )]
    Apply(resources::ApplyArgs),
    /// Show resources.
    Get(resources::GetArgs),
    /// Delete a resource.
    Delete(resources::DeleteArgs),
    /// Cluster membership and health.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Backups of the whole state (also `meshctl snapshot`).
    #[command(subcommand, alias = "snapshot")]
    Backup(backup::BackupCmd),
    /// Bootstrap and admin tokens.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// Deny a workload identity or instance from now on (no certificate,
    /// streams closed, refused by every proxy).
    #[command(subcommand)]
    Revoke(revoke::RevokeCmd),
    /// Show which token you are using.
    Whoami,
    /// Federation with other clusters: tokens, peers.
    #[command(subcommand)]
    Peering(peering::PeeringCmd),
    /// The workload CA.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Check reachability, clock skew, the workload CA and server certificates;
    /// exits non-zero when a check fails.
    Check,
    /// Connected proxies and the revision each has acknowledged.
    Proxies {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// The last minute of traffic per service and caller (success rate, requests/s, latency).
    Stat(stat::StatArgs),
    /// Live request records from a service's proxies (admin tokens only).
    Tap(tap::TapArgs),
    /// What one proxy was sent and has acknowledged.
    ProxyConfig {
        /// The proxy's instance id.
        instance: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: Format,
    },
}

/// `meshctl ca`.
#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Roll to a new workload CA root: trusted everywhere first, then signing;
    /// the previous root stays trusted until the next rotation.
    Rotate,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> CtlResult {
    let ca_pem = match &cli.ca_file {
        Some(f) => Some(
            raftmesh_client::read_ca_file(f, "--ca-file")
                .map_err(|e| CtlError::new(ExitCode::Usage, e.to_string()))?,
        ),
        None => None,
    };
    let conn = Conn::new(cli.server, cli.token.as_deref())
        .map_err(|e| CtlError::new(ExitCode::Usage, e.to_string()))?
        .with_tls(ca_pem.as_deref().map(raftmesh_client::client_tls));
    match cli.command {
        Command::Apply(a) => resources::apply(&conn, a).await,
        Command::Get(a) => resources::get(&conn, a).await,
        Command::Delete(a) => resources::delete(&conn, a).await,
        Command::Cluster(c) => cluster::run(&conn, c).await,
        Command::Backup(c) => backup::run(&conn, c).await,
        Command::Token(c) => token::run(&conn, c).await,
        Command::Revoke(c) => revoke::run(&conn, c).await,
        Command::Whoami => token::whoami(&conn).await,
        Command::Peering(c) => peering::run(&conn, c).await,
        Command::Ca(CaCmd::Rotate) => {
            let r = conn
                .call(false, |mut c| async move {
                    c.rotate_ca(raftmesh_api::v1::RotateCaRequest {})
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            outln!(
                "new workload CA root {} (revision {}): trusted by every proxy now, signing shortly",
                r.new_root_fingerprint,
                r.revision
            );
            Ok(())
        }
        Command::Check => check::run(&conn, ca_pem.as_deref()).await,
        Command::Proxies { output } => proxies::proxies(&conn, output).await,
        Command::Stat(a) => stat::run(&conn, a).await,
        Command::Tap(a) => tap::run(&conn, a).await,
        Command::ProxyConfig { instance, output } => {
            proxies::proxy_config(&conn, instance, output).await
        }
    }
}

/// meshctl's `main`: parses arguments, runs, prints the error, returns the
/// exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshctl: cannot start: {e}");
            return ExitCode::Failed as i32;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("meshctl: {}", e.message);
            e.code as i32
        }
    }
}
