//! `meshctl stat`: the last minute of traffic, per service and per caller
//! → callee edge (or per backend of a Route), from every proxy's reports on
//! every node.

use std::time::Duration;

use raftmesh_api::stat::StatRow;
use raftmesh_api::v1 as pb;

use super::output::{table, Format};
use super::{Conn, CtlError, CtlResult, ExitCode};

/// `meshctl stat`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "TARGET is a service (`web`, `svc/web`) or a Route (`route/web-split`): a service's rows are the service as a whole (FROM `*`) and each calling service; a Route's rows are its backends as its callers' proxies saw them. Figures cover the last minute; a proxy reports every --stats-interval (5s)."
)]
pub struct StatArgs {
    /// What to show: `NAME` or `svc/NAME` (a service), `route/NAME` (a Route); all services when absent.
    pub target: Option<String>,
    /// Only this namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Output format (`json`: an array of rows, the dashboard's `/api/stat`).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    /// Print again every few seconds until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

/// The request a target names.
fn request(a: &StatArgs) -> Result<pb::StatRequest, CtlError> {
    let mut r = pb::StatRequest {
        namespace: a.namespace.clone().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(t) = &a.target {
        let (kind, name) = t.split_once('/').unwrap_or(("svc", t));
        if name.is_empty() {
            return Err(CtlError::new(
                ExitCode::Usage,
                format!("stat: \"{t}\" names nothing; use NAME, svc/NAME or route/NAME"),
            ));
        }
        match kind {
            "svc" | "service" | "services" => r.service = name.to_string(),
            "route" | "routes" => r.route = name.to_string(),
            _ => {
                return Err(CtlError::new(
                    ExitCode::Usage,
                    format!("stat: \"{kind}\" is not svc or route (in \"{t}\")"),
                ))
            }
        }
    }
    Ok(r)
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2}s", v / 1000.0)
    } else {
        format!("{v:.1}ms")
    }
}

fn print(resp: &pb::StatResponse, rows: &[StatRow], routed: bool, output: Format) -> CtlResult {
    if !resp.unreported_nodes.is_empty() {
        eprintln!(
            "warning: nodes {:?} did not answer; their proxies' traffic is missing",
            resp.unreported_nodes
        );
    }
    match output {
        Format::Json => out!(
            "{}\n",
            serde_json::to_string_pretty(rows)
                .map_err(|e| CtlError::new(ExitCode::Failed, e.to_string()))?
        ),
        Format::Yaml => out!(
            "{}",
            serde_yaml_ng::to_string(rows)
                .map_err(|e| CtlError::new(ExitCode::Failed, e.to_string()))?
        ),
        Format::Table if rows.is_empty() => {
            eprintln!("no traffic in the last {}s", resp.window_s);
        }
        Format::Table => {
            let body: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let mut row = vec![r.namespace.clone(), r.service.clone()];
                    if routed {
                        row.push(r.route.clone().unwrap_or_default());
                        row.push(
                            r.subset
                                .clone()
                                .filter(|s| !s.is_empty())
                                .unwrap_or("*".into()),
                        );
                    } else {
                        row.push(match (&r.from, &r.from_namespace) {
                            (Some(f), Some(ns)) if *ns != r.namespace => format!("{f}.{ns}"),
                            (Some(f), _) => f.clone(),
                            (None, _) => "*".into(),
                        });
                    }
                    row.extend([
                        format!("{:.2}%", r.success_rate * 100.0),
                        format!("{:.1}", r.rps),
                        ms(r.p50_ms),
                        ms(r.p95_ms),
                        ms(r.p99_ms),
                        r.requests.to_string(),
                    ]);
                    row
                })
                .collect();
            let header: &[&str] = if routed {
                &[
                    "NAMESPACE",
                    "SERVICE",
                    "ROUTE",
                    "SUBSET",
                    "SUCCESS",
                    "RPS",
                    "P50",
                    "P95",
                    "P99",
                    "REQUESTS",
                ]
            } else {
                &[
                    "NAMESPACE",
                    "SERVICE",
                    "FROM",
                    "SUCCESS",
                    "RPS",
                    "P50",
                    "P95",
                    "P99",
                    "REQUESTS",
                ]
            };
            out!("{}", table(header, &body));
        }
    }
    Ok(())
}

/// Prints the last minute's figures (again every few seconds with `--watch`).
pub async fn run(conn: &Conn, a: StatArgs) -> CtlResult {
    let req = request(&a)?;
    let routed = !req.route.is_empty();
    loop {
        let resp = conn
            .call(true, |mut c| {
                let req = req.clone();
                async move { c.stat(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        let rows: Vec<StatRow> = resp.rows.iter().cloned().map(StatRow::from).collect();
        print(&resp, &rows, routed, a.output)?;
        if !a.watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        if a.output == Format::Table {
            outln!("");
        }
    }
}
