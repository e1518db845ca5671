//! `meshctl peering ...`: federation with other clusters
//! (`docs/federation.md`).

use raftmesh_api::v1 as pb;
use serde_json::json;

use super::output::{rfc3339, table, Format};
use super::{Conn, CtlError, CtlResult, ExitCode};

/// `meshctl peering`.
#[derive(Debug, clap::Subcommand)]
pub enum PeeringCmd {
    /// Make a token for another cluster to establish a peering with this
    /// one. The token is printed alone on the last line of standard
    /// output; it works once, until it expires.
    GenerateToken {
        /// The name this cluster gives the other one.
        #[arg(long)]
        peer: String,
        /// Lifetime (default 15m).
        #[arg(long)]
        ttl: Option<humantime::Duration>,
    },
    /// Establish a peering with the cluster that generated the token.
    Establish {
        /// The name this cluster gives the other one.
        #[arg(long)]
        peer: String,
        /// The token `meshctl peering generate-token` printed there.
        #[arg(long)]
        token: String,
    },
    /// Peers: state, the revision imported, last contact.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Delete a peering here and (when it can be reached) on the peer, with
    /// everything imported from it.
    Delete {
        /// The peer.
        name: String,
    },
}

fn peer_json(p: &pb::PeeringStatus) -> serde_json::Value {
    json!({
        "name": p.name,
        "state": p.state,
        "trust_domain": p.trust_domain,
        "addresses": p.addresses,
        "imported_revision": p.imported_revision,
        "peer_revision": (p.peer_revision != 0).then_some(p.peer_revision),
        "lag": (p.peer_revision != 0).then(|| p.peer_revision.saturating_sub(p.imported_revision)),
        "last_contact": (p.last_contact_ms != 0).then(|| rfc3339(p.last_contact_ms)),
        "imports": p.imports,
        "batches": p.batches,
        "full_batches": p.full_batches,
        "connects": p.connects,
        "last_error": (!p.last_error.is_empty()).then_some(&p.last_error),
    })
}

fn failed(e: impl std::fmt::Display) -> CtlError {
    CtlError::new(ExitCode::Failed, e.to_string())
}

/// Runs a peering command.
pub async fn run(conn: &Conn, cmd: PeeringCmd) -> CtlResult {
    match cmd {
        PeeringCmd::GenerateToken { peer, ttl } => {
            let req = pb::GeneratePeeringTokenRequest {
                peer,
                ttl_ms: ttl
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0),
            };
            let r = conn
                .call(false, |mut c| {
                    let req = req.clone();
                    async move { c.generate_peering_token(req).await.map(|r| r.into_inner()) }
                })
                .await?;
            eprintln!("expires: {}", rfc3339(r.expires_at_ms));
            outln!("{}", r.token);
        }
        PeeringCmd::Establish { peer, token } => {
            let req = pb::EstablishPeeringRequest {
                peer: peer.clone(),
                token,
            };
            let r = conn
                .call(false, |mut c| {
                    let req = req.clone();
                    async move { c.establish_peering(req).await.map(|r| r.into_inner()) }
                })
                .await?;
            outln!("peering with {peer} established (revision {})", r.revision);
        }
        PeeringCmd::List { output } => {
            let r = conn
                .call(true, |mut c| async move {
                    c.list_peerings(pb::ListPeeringsRequest {})
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            let items: Vec<_> = r.peers.iter().map(peer_json).collect();
            match output {
                Format::Table => {
                    let rows: Vec<Vec<String>> = r
                        .peers
                        .iter()
                        .map(|p| {
                            vec![
                                p.name.clone(),
                                p.state.clone(),
                                p.trust_domain.clone(),
                                p.imported_revision.to_string(),
                                if p.peer_revision == 0 {
                                    "-".into()
                                } else {
                                    p.peer_revision
                                        .saturating_sub(p.imported_revision)
                                        .to_string()
                                },
                                if p.last_contact_ms == 0 {
                                    "-".into()
                                } else {
                                    rfc3339(p.last_contact_ms)
                                },
                                p.imports.to_string(),
                            ]
                        })
                        .collect();
                    out!(
                        "{}",
                        table(
                            &[
                                "NAME",
                                "STATE",
                                "TRUST DOMAIN",
                                "IMPORTED REV",
                                "LAG",
                                "LAST CONTACT",
                                "IMPORTS"
                            ],
                            &rows
                        )
                    );
                }
                Format::Json => outln!("{}", serde_json::to_string_pretty(&items).map_err(failed)?),
                Format::Yaml => out!("{}", serde_yaml_ng::to_string(&items).map_err(failed)?),
            }
        }
        PeeringCmd::Delete { name } => {
            let r = conn
                .call(false, |mut c| {
                    let peer = name.clone();
                    async move {
                        c.delete_peering(pb::DeletePeeringRequest { peer })
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            if r.peer_told {
                outln!(
                    "peering with {name} deleted here and on the peer (revision {})",
                    r.revision
                );
            } else {
                outln!(
                    "peering with {name} deleted here (revision {}); the peer could not be told: delete it there too",
                    r.revision
                );
            }
        }
    }
    Ok(())
}
