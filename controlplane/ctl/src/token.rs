//! `meshctl token ...` and `meshctl whoami`.

use raftmesh_api::convert::pb_role;
use raftmesh_api::v1 as pb;
use raftmesh_api::{Resource, Role, Spec};
use serde_json::json;

use super::output::{resource_table, rfc3339, Format};
use super::{Conn, CtlError, CtlResult, ExitCode};

/// Token roles on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    /// Every admin call.
    Admin,
    /// Reads only.
    ReadOnly,
}

/// `meshctl token`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Create a token. The secret is printed once, alone on the last line of
    /// standard output; its id goes to standard error.
    Create {
        /// A bootstrap token for proxies of this service.
        #[arg(long, conflicts_with = "role", required_unless_present = "role")]
        service: Option<String>,
        /// The service's namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// An admin token with this role.
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        /// Lifetime (default 15m for bootstrap tokens, none for admin tokens).
        #[arg(long)]
        ttl: Option<humantime::Duration>,
        /// How many times it may be used (default: unlimited within its lifetime).
        #[arg(long)]
        uses: Option<u32>,
    },
    /// List tokens (never their secrets).
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Revoke a token.
    Revoke {
        /// Its id.
        id: String,
    },
}

fn token_json(r: &Resource) -> serde_json::Value {
    let Spec::Token(t) = &r.spec else {
        return json!(null);
    };
    json!({
        "id": r.metadata.name,
        "service": t.service,
        "namespace": t.namespace,
        "role": t.role,
        "created_at": rfc3339(t.created_at_ms),
        "expires_at": t.expires_at_ms.map(rfc3339),
        "uses": t.uses,
        "max_uses": t.max_uses,
        "revoked": t.revoked,
        "revision": r.metadata.revision,
    })
}

/// Runs a token command.
pub async fn run(conn: &Conn, cmd: TokenCmd) -> CtlResult {
    match cmd {
        TokenCmd::Create {
            service,
            namespace,
            role,
            ttl,
            uses,
        } => {
            let scope = match (service, role) {
                (Some(service), _) => pb::create_token_request::Scope::Service(pb::ServiceScope {
                    service,
                    namespace,
                }),
                (None, Some(r)) => pb::create_token_request::Scope::Role(pb_role(match r {
                    RoleArg::Admin => Role::Admin,
                    RoleArg::ReadOnly => Role::ReadOnly,
                }) as i32),
                (None, None) => {
                    return Err(CtlError::new(ExitCode::Usage, "give --service or --role"))
                }
            };
            if uses == Some(0) {
                return Err(CtlError::new(ExitCode::Usage, "--uses must be at least 1"));
            }
            let req = pb::CreateTokenRequest {
                scope: Some(scope),
                ttl_ms: ttl
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0),
                max_uses: uses.unwrap_or(0),
            };
            let r = conn
                .call(false, |mut c| {
                    let req = req.clone();
                    async move { c.create_token(req).await.map(|r| r.into_inner()) }
                })
                .await?;
            eprintln!("id: {}", r.id);
            if let Some(t) = r.token.and_then(|t| Resource::try_from(t).ok()) {
                if let Spec::Token(t) = &t.spec {
                    eprintln!(
                        "expires: {}",
                        t.expires_at_ms
                            .map(rfc3339)
                            .unwrap_or_else(|| "never".into())
                    );
                }
            }
            outln!("{}", r.secret);
        }
        TokenCmd::List { output } => {
            let r = conn
                .call(true, |mut c| async move {
                    c.list_tokens(pb::ListTokensRequest {})
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            let tokens: Vec<Resource> = r
                .tokens
                .into_iter()
                .filter_map(|t| Resource::try_from(t).ok())
                .collect();
            match output {
                Format::Table => out!("{}", resource_table(&tokens)),
                Format::Json => outln!(
                    "{}",
                    serde_json::to_string_pretty(
                        &tokens.iter().map(token_json).collect::<Vec<_>>()
                    )
                    .map_err(|e| CtlError::new(ExitCode::Failed, e.to_string()))?
                ),
                Format::Yaml => out!(
                    "{}",
                    serde_yaml_ng::to_string(&tokens.iter().map(token_json).collect::<Vec<_>>())
                        .map_err(|e| CtlError::new(ExitCode::Failed, e.to_string()))?
                ),
            }
        }
        TokenCmd::Revoke { id } => {
            let r = conn
                .call(false, |mut c| {
                    let id = id.clone();
                    async move {
                        c.revoke_token(pb::RevokeTokenRequest { id })
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            outln!("token {id} revoked (revision {})", r.revision);
        }
    }
    Ok(())
}

/// Shows the caller's token.
pub async fn whoami(conn: &Conn) -> CtlResult {
    let r = conn
        .call(true, |mut c| async move {
            c.who_am_i(pb::WhoAmIRequest {})
                .await
                .map(|r| r.into_inner())
        })
        .await?;
    let role = match pb::TokenRole::try_from(r.role) {
        Ok(pb::TokenRole::ReadOnly) => "read-only",
        Ok(pb::TokenRole::Admin) => "admin",
        _ => "unknown",
    };
    outln!(
        "token {} (role {role}) on cluster {}, answered by node {}",
        r.token_id,
        r.cluster_name,
        r.node_id
    );
    Ok(())
}
