//! `meshctl apply`, `get`, `delete`.

use std::io::Read as _;
use std::path::PathBuf;

use raftmesh_api::v1 as pb;
use raftmesh_api::{parse_documents, yaml, Kind, Resource};

use super::output::{resource_table, Format};
use super::{Conn, CtlError, CtlResult, ExitCode};

/// `meshctl apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A YAML file of resources, `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Return only once every proxy the change concerns has acknowledged it.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "30s", requires = "wait")]
    pub timeout: humantime::Duration,
}

/// `meshctl get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// service|svc, endpoint|ep, route, policy, meshconfig, token.
    pub kind: String,
    /// One resource by name; all of the kind when absent.
    pub name: Option<String>,
    /// Namespace (default: `default` for a NAME, every namespace otherwise).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    /// Answer from the node's own state, without a read-index round.
    #[arg(long)]
    pub stale: bool,
}

/// `meshctl delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The kind.
    pub kind: String,
    /// The name.
    pub name: String,
    /// Namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Delete only if the resource is still at this revision.
    #[arg(long)]
    pub revision: Option<u64>,
}

fn read_input(file: &PathBuf) -> Result<String, CtlError> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| {
            CtlError::new(ExitCode::BadInput, format!("reading standard input: {e}"))
        })?;
        return Ok(s);
    }
    std::fs::read_to_string(file).map_err(|e| {
        CtlError::new(
            ExitCode::BadInput,
            format!("cannot read {}: {e}", file.display()),
        )
    })
}

fn kind(s: &str) -> Result<Kind, CtlError> {
    s.parse()
        .map_err(|e: raftmesh_api::kind::UnknownKind| CtlError::new(ExitCode::Usage, e.to_string()))
}

/// Applies every document of the file as one all-or-nothing batch. A
/// document's `metadata.revision`, when present, makes its write a
/// compare-and-set.
pub async fn apply(conn: &Conn, args: ApplyArgs) -> CtlResult {
    let text = read_input(&args.file)?;
    let docs = parse_documents(&text).map_err(|e| {
        let name = if args.file.as_os_str() == "-" {
            "<stdin>".to_string()
        } else {
            args.file.display().to_string()
        };
        CtlError::new(
            ExitCode::BadInput,
            format!("{name}: {e}; nothing was applied"),
        )
    })?;
    let resp = conn.apply(&docs).await?;
    let mut failed = Vec::new();
    for (doc, res) in docs.iter().zip(&resp.results) {
        let what = format!("{}/{}", doc.kind().lower(), doc.metadata.name);
        match pb::WriteOutcome::try_from(res.outcome) {
            Ok(pb::WriteOutcome::Ok) if res.unchanged => {
                outln!("{what} unchanged (revision {})", res.revision)
            }
            Ok(pb::WriteOutcome::Ok) => outln!("{what} configured (revision {})", res.revision),
            Ok(pb::WriteOutcome::Conflict) => failed.push(format!(
                "{what}: conflict: it is at revision {}, the document expects {}",
                res.revision,
                doc.metadata.revision.unwrap_or(0)
            )),
            Ok(pb::WriteOutcome::Aborted) => {}
            other => failed.push(format!("{what}: {other:?}")),
        }
    }
    if failed.is_empty() {
        if args.wait {
            let revision = resp
                .results
                .iter()
                .map(|r| r.revision)
                .max()
                .unwrap_or(resp.revision);
            let affected = super::proxies::Affected::of(&docs);
            super::proxies::wait(conn, &affected, revision, args.timeout.into()).await?;
        }
        Ok(())
    } else {
        Err(CtlError::new(
            ExitCode::Conflict,
            format!("{}; nothing was applied", failed.join("; ")),
        ))
    }
}

fn resources(list: Vec<pb::Resource>) -> Result<Vec<Resource>, CtlError> {
    list.into_iter()
        .map(|r| {
            Resource::try_from(r).map_err(|e| {
                CtlError::new(ExitCode::Failed, format!("bad answer from the server: {e}"))
            })
        })
        .collect()
}

/// Shows one resource or a list.
pub async fn get(conn: &Conn, args: GetArgs) -> CtlResult {
    let kind = kind(&args.kind)?;
    let items = match &args.name {
        Some(name) => {
            let req = pb::GetRequest {
                kind: kind.as_str().into(),
                namespace: args.namespace.clone().unwrap_or_else(|| "default".into()),
                name: name.clone(),
                stale: args.stale,
            };
            let r = conn
                .call(true, |mut c| {
                    let req = req.clone();
                    async move { c.get(req).await.map(|r| r.into_inner()) }
                })
                .await?;
            resources(r.resource.into_iter().collect())?
        }
        None => {
            let req = pb::ListRequest {
                kind: kind.as_str().into(),
                namespace: args.namespace.clone().unwrap_or_default(),
                stale: args.stale,
            };
            let r = conn
                .call(true, |mut c| {
                    let req = req.clone();
                    async move { c.list(req).await.map(|r| r.into_inner()) }
                })
                .await?;
            resources(r.resources)?
        }
    };
    let out = match args.output {
        Format::Table => {
            if items.is_empty() {
                eprintln!("no {} found", kind.lower());
                return Ok(());
            }
            resource_table(&items)
        }
        Format::Yaml => {
            yaml::to_yaml(&items).map_err(|e| CtlError::new(ExitCode::Failed, e.to_string()))?
        }
        Format::Json => {
            let v = if args.name.is_some() {
                serde_json::to_string_pretty(&items[0])
            } else {
                serde_json::to_string_pretty(&items)
            };
            v.map_err(|e| CtlError::new(ExitCode::Failed, e.to_string()))? + "\n"
        }
    };
    out!("{out}");
    Ok(())
}

/// Deletes one resource.
pub async fn delete(conn: &Conn, args: DeleteArgs) -> CtlResult {
    let kind = kind(&args.kind)?;
    let req = pb::DeleteRequest {
        kind: kind.as_str().into(),
        namespace: args.namespace,
        name: args.name.clone(),
        expected_revision: args.revision,
    };
    let r = conn
        .call(false, |mut c| {
            let req = req.clone();
            async move { c.delete(req).await.map(|r| r.into_inner()) }
        })
        .await?;
    outln!(
        "{}/{} deleted (revision {})",
        kind.lower(),
        args.name,
        r.revision
    );
    Ok(())
}
