//! The demo's scripted story: a canary, a deny policy, the leader's death
//! and an endpoint's, each narrated with what the traffic saw.

use std::io::IsTerminal;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::bail;
use raftmesh_api::v1 as pb;
use raftmesh_api::Resource;

use super::{apply, doc, route, traffic, Mesh};

/// The narration: timestamped lines, printed as they come when stdout is
/// not a terminal, shown in the table otherwise.
pub struct Story {
    lines: Mutex<Vec<(Duration, String)>>,
    start: Instant,
}

impl Story {
    /// A story whose clock starts at `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            lines: Mutex::new(Vec::new()),
            start,
        }
    }

    /// Adds a line.
    pub fn say(&self, line: impl Into<String>) {
        let line = line.into();
        let t = self.start.elapsed();
        if !std::io::stdout().is_terminal() {
            println!("[{:>5.1}s] {line}", t.as_secs_f64());
        }
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((t, line));
    }

    /// The last `n` lines.
    pub fn recent(&self, n: usize) -> Vec<(Duration, String)> {
        let l = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        l[l.len().saturating_sub(n)..].to_vec()
    }
}

async fn pause(d: u64) {
    tokio::time::sleep(Duration::from_secs(d)).await;
}

/// Plays the story against the running mesh.
pub async fn run(mesh: &Mesh) -> anyhow::Result<()> {
    let say = |s: &str| mesh.story.say(s);
    pause(6).await;
    for (v1, v2) in [(90, 10), (50, 50), (0, 100)] {
        say(&format!(
            "canary: route web {v1}% to v1, {v2}% to v2 (meshctl apply)"
        ));
        let rev = apply(&mesh.conn, vec![route(v1, v2)?]).await?;
        say(&format!(
            "  committed at revision {rev}; the proxies apply it; watch the split follow"
        ));
        pause(8).await;
    }
    // What the proxies report, next to what the callers measured.
    if let Some(rows) = mesh.stat().await {
        say("meshctl stat: the same traffic as the proxies report it (any node answers for all)");
        for l in super::table::stat_lines(&rows) {
            say(&format!("  {l}"));
        }
    }
    // Deny one caller.
    let batch = raftmesh_api::spiffe_id(
        &raftmesh_api::default_trust_domain("demo"),
        "default",
        "batch",
    );
    say(&format!(
        "deny: a Policy on api refuses {batch} (batch); frontend is not named"
    ));
    let rev = apply(
        &mesh.conn,
        vec![doc(&format!(
            "kind: Policy\nmetadata: {{name: api-no-batch}}\nspec: {{service: api, action: deny, from: ['{batch}']}}\n"
        ))?],
    )
    .await?;
    say(&format!(
        "  committed at revision {rev}; api's proxy checks each caller's certificate"
    ));
    pause(2).await;
    let t = Instant::now();
    pause(5).await;
    let (n, denied, _) = traffic::outcomes_since(&mesh.flows, "batch", "api", t);
    let (m, _, failed) = traffic::outcomes_since(&mesh.flows, "frontend", "api", t);
    say(&format!(
        "  batch -> api: {denied} of {n} requests denied (403 denied); frontend -> api: {failed} of {m} failed"
    ));
    say("lift the deny (meshctl delete policy api-no-batch)");
    mesh.conn
        .call(false, |mut c| async move {
            c.delete(pb::DeleteRequest {
                kind: "Policy".into(),
                namespace: String::new(),
                name: "api-no-batch".into(),
                expected_revision: None,
            })
            .await
            .map(|r| r.into_inner())
        })
        .await
        .map_err(|e| anyhow::anyhow!("deleting the policy: {}", e.message()))?;
    pause(4).await;
    // Kill the leader.
    let Some(leader) = mesh.leader(None, Duration::from_secs(5)).await else {
        bail!("no leader to kill");
    };
    say(&format!("kill -9 the leader, node {leader}"));
    let t0 = Instant::now();
    mesh.procs().kill(&format!("node-{leader}"));
    match mesh.leader(Some(leader), Duration::from_secs(10)).await {
        Some(new) => say(&format!(
            "  node {new} is the new leader after {} ms; traffic never needed the control plane",
            t0.elapsed().as_millis()
        )),
        None => say("  no new leader within 10 s"),
    }
    pause(5).await;
    say(&format!(
        "  failed requests since the kill: {}",
        traffic::failed_since(&mesh.flows, t0)
    ));
    say(&format!(
        "node {leader} restarts from its data directory and catches up"
    ));
    mesh.procs().spawn(&format!("node-{leader}"))?;
    pause(5).await;
    // Kill an endpoint.
    say("kill the web v2-b instance (its proxy stops answering)");
    let t1 = Instant::now();
    mesh.procs().kill("proxy-web-v2-b");
    pause(3).await;
    let after = Instant::now();
    pause(6).await;
    let health = mesh
        .conn
        .call(true, |mut c| async move {
            c.get(pb::GetRequest {
                kind: "Endpoint".into(),
                namespace: String::new(),
                name: "web-v2-b".into(),
                stale: false,
            })
            .await
            .map(|r| r.into_inner())
        })
        .await
        .ok()
        .and_then(|r| r.resource)
        .and_then(|r| Resource::try_from(r).ok())
        .and_then(|r| match r.spec {
            raftmesh_api::Spec::Endpoint(e) => Some(format!("{:?}", e.health).to_lowercase()),
            _ => None,
        })
        .unwrap_or_else(|| "gone".into());
    say(&format!(
        "  callers retried on the other v2 instance and ejected it: {} failed since the kill ({} in the last 6 s); meshd now reports web-v2-b {health}",
        traffic::failed_since(&mesh.flows, t1),
        traffic::failed_since(&mesh.flows, after)
    ));
    say("back to 90/10: the surviving v2 instance takes the canary share");
    apply(&mesh.conn, vec![route(90, 10)?]).await?;
    pause(5).await;
    say("the story is over; the mesh keeps running (Ctrl-C to stop)");
    Ok(())
}
