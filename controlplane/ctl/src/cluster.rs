//! `meshctl cluster ...`: status, membership, leadership.

use raftmesh_api::v1 as pb;
use serde_json::json;

use super::output::{bytes, table, Format};
use super::{Conn, CtlError, CtlResult, ExitCode};

/// `meshctl cluster`.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCmd {
    /// Leader, term, indexes and every member's state.
    Status {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Add a node (as a learner, then a voter once it has caught up).
    AddNode {
        /// The new node's id.
        id: u64,
        /// Its address, HOST:PORT.
        addr: String,
        /// Keep it a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node.
    RemoveNode {
        /// Its id.
        id: u64,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        /// The voter to lead.
        id: u64,
    },
}

/// The JSON form of cluster status (DESIGN.md "meshctl").
pub fn status_json(s: &pb::ClusterStatusResponse) -> serde_json::Value {
    json!({
        "node_id": s.node_id,
        "cluster_name": s.cluster_name,
        "leader": s.leader,
        "term": s.term,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "members": s.members.iter().map(|m| json!({
            "id": m.id,
            "addr": m.addr,
            "voter": m.voter,
            "state": m.state,
            "applied_index": m.applied_index,
            "last_contact_ms": m.last_contact_ms,
            "rss_bytes": m.rss_bytes,
            "clock_offset_ms": m.clock_offset_ms,
        })).collect::<Vec<_>>(),
    })
}

fn print_membership(m: &pb::MembershipResponse) {
    outln!(
        "voters {:?}, learners {:?}, leader {}",
        m.voters,
        m.learners,
        m.leader
            .map(|l| l.to_string())
            .unwrap_or_else(|| "unknown".into())
    );
}

/// Runs a cluster command.
pub async fn run(conn: &Conn, cmd: ClusterCmd) -> CtlResult {
    match cmd {
        ClusterCmd::Status { output } => {
            let s = conn
                .call(true, |mut c| async move {
                    c.cluster_status(pb::ClusterStatusRequest {})
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            match output {
                Format::Json | Format::Yaml => {
                    let v = status_json(&s);
                    let text = if output == Format::Json {
                        serde_json::to_string_pretty(&v).map(|t| t + "\n")
                    } else {
                        serde_yaml_ng::to_string(&v)
                            .map_err(|e| serde_json::Error::io(std::io::Error::other(e)))
                    };
                    out!(
                        "{}",
                        text.map_err(|e| CtlError::new(ExitCode::Failed, e.to_string()))?
                    );
                }
                Format::Table => {
                    outln!(
                        "cluster {}: leader {}, term {}, commit {}, applied {} (answered by node {})",
                        s.cluster_name,
                        s.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into()),
                        s.term,
                        s.commit_index,
                        s.applied_index,
                        s.node_id
                    );
                    let rows: Vec<Vec<String>> = s
                        .members
                        .iter()
                        .map(|m| {
                            vec![
                                m.id.to_string(),
                                m.addr.clone(),
                                m.state.clone(),
                                if m.voter { "yes".into() } else { "no".into() },
                                m.applied_index.to_string(),
                                m.last_contact_ms
                                    .map(|x| format!("{x}ms"))
                                    .unwrap_or_else(|| "never".into()),
                                bytes(m.rss_bytes),
                            ]
                        })
                        .collect();
                    out!(
                        "{}",
                        table(
                            &[
                                "ID",
                                "ADDRESS",
                                "STATE",
                                "VOTER",
                                "APPLIED",
                                "LAST CONTACT",
                                "RSS"
                            ],
                            &rows
                        )
                    );
                }
            }
        }
        ClusterCmd::AddNode { id, addr, learner } => {
            let req = pb::AddNodeRequest {
                id,
                addr,
                learner_only: learner,
            };
            let m = conn
                .call(true, |mut c| {
                    let req = req.clone();
                    async move { c.add_node(req).await.map(|r| r.into_inner()) }
                })
                .await?;
            print_membership(&m);
        }
        ClusterCmd::RemoveNode { id } => {
            let m = conn
                .call(true, |mut c| async move {
                    c.remove_node(pb::RemoveNodeRequest { id })
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            print_membership(&m);
        }
        ClusterCmd::TransferLeader { id } => {
            let m = conn
                .call(true, |mut c| async move {
                    c.transfer_leader(pb::TransferLeaderRequest { id })
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            print_membership(&m);
        }
    }
    Ok(())
}
