//! The demo's live table: traffic per caller and service, the control
//! plane's state, and the story so far, redrawn every second.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::PoisonError;
use std::time::Instant;

use super::{traffic, Mesh};

/// `v1 90% · v2 10%`, or `-` before any traffic.
pub fn split_text(s: &BTreeMap<String, f64>) -> String {
    if s.is_empty() {
        return "-".into();
    }
    s.iter()
        .map(|(v, x)| format!("{} {:.0}%", if v.is_empty() { "?" } else { v }, x * 100.0))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// `meshctl stat`'s rows as the demo prints them: a service as a whole
/// (`*`) and per caller, with its success rate, rate and latency.
pub fn stat_lines(rows: &[raftmesh_api::stat::StatRow]) -> Vec<String> {
    let mut out = vec![format!(
        "{:<8} {:<10} {:>9} {:>7} {:>9} {:>9} {:>9}",
        "SERVICE", "FROM", "SUCCESS", "RPS", "P50", "P95", "P99"
    )];
    for r in rows {
        out.push(format!(
            "{:<8} {:<10} {:>8.2}% {:>7.1} {:>7.1}ms {:>7.1}ms {:>7.1}ms",
            r.service,
            r.from.as_deref().unwrap_or("*"),
            r.success_rate * 100.0,
            r.rps,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms
        ));
    }
    out
}

/// Redraws the whole screen.
pub fn draw(mesh: &Mesh, started: Instant) {
    let mut out = String::new();
    out.push_str("\x1b[2J\x1b[H");
    out.push_str(&format!(
        "Raftmesh demo — 3 meshd nodes, 6 proxies, every request crosses two proxies          t={:.0}s\n\n",
        started.elapsed().as_secs_f64()
    ));
    out.push_str(&format!(
        "{:<10} {:<8} {:>7} {:>9} {:>9} {:>9}  {}\n",
        "CALLER", "SERVICE", "REQ/S", "SUCCESS", "P50", "P99", "SPLIT (by app version)"
    ));
    for ((caller, svc), w) in traffic::windows(&mesh.flows, 5) {
        let success = if w.denied > 0.0 {
            format!("{:.1}% (403 {:.0}%)", w.success * 100.0, w.denied * 100.0)
        } else {
            format!("{:.2}%", w.success * 100.0)
        };
        out.push_str(&format!(
            "{:<10} {:<8} {:>7.1} {:>9} {:>7.1}ms {:>7.1}ms  {}\n",
            caller,
            svc,
            w.rps,
            success,
            w.p50.as_secs_f64() * 1e3,
            w.p99.as_secs_f64() * 1e3,
            split_text(&w.split)
        ));
    }
    let (total, failed, denied) = traffic::totals(&mesh.flows);
    out.push_str(&format!(
        "\n{total} requests so far, {failed} failed, {denied} denied\n\n"
    ));
    match mesh
        .last_status
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
    {
        Some(s) => {
            out.push_str(&format!(
                "CONTROL PLANE  leader: {}  term {}  revision {}\n",
                s.leader
                    .map(|l| format!("node {l}"))
                    .unwrap_or_else(|| "none".into()),
                s.term,
                s.applied_index
            ));
            for m in &s.members {
                out.push_str(&format!(
                    "  node {}  {:<11} applied {}\n",
                    m.id, m.state, m.applied_index
                ));
            }
        }
        None => out.push_str("CONTROL PLANE  (no node answers)\n"),
    }
    out.push_str("\nMESHCTL STAT  the last minute, as the proxies report it (the numbers above are the callers')\n");
    for l in stat_lines(&mesh.stat.lock().unwrap_or_else(PoisonError::into_inner)) {
        out.push_str(&format!("  {l}\n"));
    }
    out.push_str("\nSTORY\n");
    for (t, line) in mesh.story.recent(8) {
        out.push_str(&format!("  {:>4.0}s  {line}\n", t.as_secs_f64()));
    }
    out.push_str(&format!(
        "\nDashboard: {}\nTry, in another terminal:\n  export RAFTMESH_SERVER={} RAFTMESH_TOKEN={}\n  meshctl stat; meshctl tap web; meshctl cluster status; meshctl proxies\nCtrl-C stops everything.\n",
        mesh.dashboard.lock().unwrap_or_else(PoisonError::into_inner),
        mesh.addrs.join(","),
        mesh.token
    ));
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
