//! `meshctl tap SERVICE`: live request records from the service's proxies
//! on every node (admin tokens only): method, authority, path without its
//! query, status, latency, caller and callee, and the request's header
//! names; never a header value or a body.

use std::time::Duration;

use raftmesh_api::v1 as pb;
use serde_json::json;

use super::output::Format;
use super::{Conn, CtlError, CtlResult, ExitCode};

/// `meshctl tap`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Each proxy of SERVICE records a sample of the requests it serves (inbound and outbound), at most 100 a second, until --max records or --duration. Needs an admin token. Records name paths (no query), callers and header names; never a header value or a body."
)]
pub struct TapArgs {
    /// The service whose proxies record.
    pub service: String,
    /// Its namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Stop after this many records (at most 10000).
    #[arg(long, default_value_t = 100)]
    pub max: u32,
    /// Percent of requests recorded (0.0001 to 100).
    #[arg(long, default_value_t = 100.0)]
    pub sample: f64,
    /// Stop after this long (at most 5m).
    #[arg(long, default_value = "60s")]
    pub duration: humantime::Duration,
    /// Output format (`json`: one object per line).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

fn record_json(r: &pb::TapRecord) -> serde_json::Value {
    json!({
        "time": super::output::rfc3339(r.unix_ms),
        "instance": r.instance,
        "direction": r.direction,
        "source": r.source,
        "destination": r.destination,
        "service": r.service,
        "subset": r.subset,
        "endpoint": r.endpoint,
        "method": r.method,
        "authority": r.authority,
        "path": r.path,
        "status": r.status,
        "error": r.error,
        "duration_ms": r.duration_ms,
        "request_bytes": r.request_bytes,
        "response_bytes": r.response_bytes,
        "trace_id": r.trace_id,
        "header_names": r.header_names,
    })
}

/// The name a SPIFFE ID stands for in a line: its service, or the ID.
fn who(id: &str) -> &str {
    match id.rsplit_once("/sa/") {
        Some((_, svc)) if !svc.is_empty() => svc,
        _ if id.is_empty() => "-",
        _ => id,
    }
}

fn line(r: &pb::TapRecord) -> String {
    let status = if r.error.is_empty() {
        r.status.to_string()
    } else {
        format!("{} ({})", r.status, r.error)
    };
    format!(
        "{} {:<8} {} -> {} {} {}{} {} {:.1}ms {} headers: {}",
        super::output::rfc3339(r.unix_ms),
        r.direction,
        who(&r.source),
        if r.direction == "outbound" {
            r.service.as_str()
        } else {
            who(&r.destination)
        },
        r.method,
        r.authority,
        r.path,
        status,
        r.duration_ms,
        r.instance,
        r.header_names.join(",")
    )
}

/// `s` with control characters escaped: a record comes from a proxy, and
/// a line must not be able to drive the terminal.
fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            esc
        })
        .collect()
}

/// Streams the records until the server ends the tap.
pub async fn run(conn: &Conn, a: TapArgs) -> CtlResult {
    if !(a.sample > 0.0 && a.sample <= 100.0) {
        return Err(CtlError::new(
            ExitCode::Usage,
            format!("--sample {} is not a percent above 0, up to 100", a.sample),
        ));
    }
    let req = pb::TapRequest {
        service: a.service.clone(),
        namespace: a.namespace.clone(),
        sample_ppm: ((a.sample * 10_000.0).round() as u32).max(1),
        max_records: a.max,
        duration_ms: Duration::from(a.duration)
            .as_millis()
            .min(u128::from(u64::MAX)) as u64,
    };
    let resp = conn
        .call(true, |mut c| {
            let req = req.clone();
            async move { c.tap(req).await }
        })
        .await?;
    if let Some(nodes) = resp.metadata().get("raftmesh-unreported-nodes") {
        eprintln!(
            "warning: nodes {} could not open the tap; their proxies' requests are missing",
            nodes.to_str().unwrap_or("?")
        );
    }
    if a.output == Format::Table {
        eprintln!(
            "tapping {}.{} ({} % of requests, at most {} records, {}); Ctrl-C to stop",
            a.service, a.namespace, a.sample, a.max, a.duration
        );
    }
    let mut stream = resp.into_inner();
    let mut n = 0u32;
    while let Some(r) = stream.message().await? {
        n += 1;
        match a.output {
            Format::Table => outln!("{}", clean(&line(&r))),
            Format::Json | Format::Yaml => outln!("{}", record_json(&r)),
        }
    }
    if a.output == Format::Table {
        eprintln!("{n} records");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_cannot_drive_the_terminal() {
        let r = pb::TapRecord {
            direction: "inbound".into(),
            path: "/x\u{1b}]52;c;cm0=\u{7}".into(),
            ..Default::default()
        };
        let l = clean(&line(&r));
        assert!(!l.chars().any(char::is_control), "{l}");
        assert!(l.contains("\\u{1b}"), "{l}");
    }
}
