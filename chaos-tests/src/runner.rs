//! One seeded chaos run: a cluster, workloads recording histories, the
//! nemesis on a schedule, then the checks. A seed replays the schedule.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use raftmesh_api::v1 as pb;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::client::admin;
use crate::cluster::{Cluster, ClusterOpts};
use crate::history::{Call, History, HistoryWriter};
use crate::linearizability::{check_history, CheckOptions, Verdict};
use crate::nemesis::{self, Fault};
use crate::streams::{self, ProxyView};
use crate::workload::{self, RegisterLoad, SetOutcome};

/// What a run does.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// meshd nodes (3 or 5).
    pub nodes: u64,
    /// Time under faults.
    pub duration: Duration,
    /// Fault kinds the nemesis picks from.
    pub faults: Vec<Fault>,
    /// Run the deliberately broken build (reads without read index).
    pub unsafe_reads: bool,
    /// Register clients.
    pub workers: usize,
    /// Registers.
    pub keys: usize,
    /// Simulated proxies.
    pub proxies: usize,
    /// Where histories are kept.
    pub out_dir: PathBuf,
}

impl RunConfig {
    /// A run with the defaults of the quick suite.
    pub fn new(seed: u64, out_dir: PathBuf) -> Self {
        Self {
            seed,
            nodes: 3,
            duration: Duration::from_secs(20),
            faults: Fault::available(),
            unsafe_reads: false,
            workers: 5,
            keys: 3,
            proxies: 4,
            out_dir,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The seed (replays the schedule).
    pub seed: u64,
    /// Nodes.
    pub nodes: u64,
    /// `namespaces` (real packet drops) or `loopback` (fault files).
    pub net: &'static str,
    /// Faults injected, in order.
    pub faults: Vec<String>,
    /// Register operations recorded.
    pub ops: usize,
    /// …of which ok / fail / info.
    pub ok: usize,
    /// Failed (took no effect).
    pub fail: usize,
    /// Unknown outcome.
    pub info: usize,
    /// The linearizability verdict.
    pub linearizable: String,
    /// Set adds acknowledged.
    pub set_acked: usize,
    /// Acknowledged adds missing at the end (lost writes).
    pub set_lost: usize,
    /// Elements present that were never added.
    pub set_unexpected: usize,
    /// Discovery deltas received by the simulated proxies.
    pub stream_deltas: u64,
    /// Full resyncs among them.
    pub stream_fulls: u64,
    /// Whether every proxy matched the final state within 10 s of the last
    /// write (the workload runs on after healing).
    pub streams_converged: bool,
    /// Seconds from healing to convergence.
    pub converged_after_heal_s: f64,
    /// Times the cluster's final register state changed after the clients
    /// stopped (writes whose clients gave up, committed late).
    pub final_state_moved: u32,
    /// Broken guarantees, in words (empty = none).
    pub violations: Vec<String>,
    /// The history file.
    pub history: String,
    /// Wall time of the run, seconds.
    pub seconds: f64,
}

impl Summary {
    /// Whether the run found nothing wrong.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A bootstrap token for the simulated proxies, from whichever node
/// answers (a node may still be catching up right after the election).
async fn mint_proxy_token(addrs: &[String], token: &str) -> Result<String, String> {
    let mut last = String::new();
    for attempt in 0..30 {
        let addr = &addrs[attempt % addrs.len()];
        let answer = admin(addr, token)
            .map_err(|e| e.to_string())?
            .create_token(pb::CreateTokenRequest {
                scope: Some(pb::create_token_request::Scope::Service(pb::ServiceScope {
                    service: "chaos-proxy".into(),
                    namespace: String::new(),
                })),
                ttl_ms: 3_600_000,
                max_uses: 0,
            })
            .await;
        match answer {
            Ok(r) => return Ok(r.into_inner().secret),
            Err(e) => last = format!("{addr}: {}", e.message()),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!("minting a proxy token: {last}"))
}

/// Final register values from linearizable reads (retrying until healed).
async fn final_registers(
    addrs: &[String],
    token: &str,
    keys: usize,
) -> Result<BTreeMap<String, Option<u64>>, String> {
    let mut out = BTreeMap::new();
    for k in 0..keys {
        let key = format!("reg-{k}");
        let mut got = None;
        'tries: for _ in 0..60 {
            for a in addrs {
                let mut c = admin(a, token).map_err(|e| e.to_string())?;
                let r = tokio::time::timeout(
                    Duration::from_secs(2),
                    c.get(pb::GetRequest {
                        kind: "Service".into(),
                        namespace: String::new(),
                        name: key.clone(),
                        stale: false,
                    }),
                )
                .await;
                match r {
                    Ok(Ok(r)) => {
                        let v = r
                            .into_inner()
                            .resource
                            .and_then(|r| raftmesh_api::Resource::try_from(r).ok())
                            .and_then(|r| match r.spec {
                                raftmesh_api::Spec::Service(s) => {
                                    s.ports.first().map(|p| u64::from(p.port))
                                }
                                _ => None,
                            });
                        got = Some(v);
                        break 'tries;
                    }
                    Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                        got = Some(None);
                        break 'tries;
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        out.insert(
            key.clone(),
            got.ok_or_else(|| format!("cannot read {key} after healing"))?,
        );
    }
    Ok(out)
}

/// Runs one seeded test.
pub async fn run(cfg: &RunConfig) -> Result<Summary, String> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut opts = ClusterOpts::default();
    if cfg.unsafe_reads {
        opts.extra_args.push("--unsafe-local-reads".into());
    }
    opts.power_loss = cfg.faults.contains(&Fault::PowerLoss);
    let mut cluster = Cluster::start(cfg.nodes, opts)?;
    let net = if cluster.net.real() {
        "namespaces"
    } else {
        "loopback"
    };
    cluster
        .wait_leader(Duration::from_secs(30))
        .await
        .map_err(|e| format!("{e}; node 1 log:\n{}", cluster.log_tail(1, 20)))?;
    let addrs = cluster.addrs();
    let token = cluster.token.clone();
    let proxy_token = mint_proxy_token(&addrs, &token).await?;

    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| e.to_string())?;
    let history_path = cfg.out_dir.join(format!(
        "seed-{}-{}n{}.jsonl",
        cfg.seed,
        cfg.nodes,
        if cfg.unsafe_reads { "-unsafe" } else { "" }
    ));
    let _ = std::fs::remove_file(&history_path);
    let file = std::fs::File::create(&history_path).map_err(|e| e.to_string())?;
    let recorder = Arc::new(Mutex::new(HistoryWriter::new(BufWriter::new(file))));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let load = RegisterLoad {
        workers: cfg.workers,
        keys: cfg.keys,
        values: 5,
    };
    let mut tasks = Vec::new();
    for w in 0..cfg.workers {
        tasks.push(tokio::spawn(workload::register_worker(
            w,
            addrs.clone(),
            token.clone(),
            load.clone(),
            recorder.clone(),
            cfg.seed,
            stop.clone(),
        )));
    }
    let set = Arc::new(Mutex::new(SetOutcome::default()));
    for w in 0..2 {
        tasks.push(tokio::spawn(workload::set_worker(
            w,
            addrs.clone(),
            token.clone(),
            set.clone(),
            cfg.seed,
            stop.clone(),
        )));
    }
    let views: Vec<streams::View> = (0..cfg.proxies)
        .map(|_| Arc::new(Mutex::new(ProxyView::default())))
        .collect();
    let (pstop_tx, pstop) = tokio::sync::watch::channel(false);
    let mut ptasks = Vec::new();
    for (i, v) in views.iter().enumerate() {
        ptasks.push(tokio::spawn(streams::proxy(
            i,
            addrs.clone(),
            proxy_token.clone(),
            cfg.keys,
            v.clone(),
            cfg.seed,
            pstop.clone(),
        )));
    }

    // The schedule: healthy a moment, a fault for a few seconds, heal.
    let mut faults = Vec::new();
    let deadline = Instant::now() + cfg.duration;
    while Instant::now() + Duration::from_secs(3) < deadline {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..2500))).await;
        let f = *cfg.faults.choose(&mut rng).ok_or("no fault kinds")?;
        let (what, undo) = nemesis::inject(&mut cluster, f, &mut rng).await?;
        faults.push(what);
        tokio::time::sleep(Duration::from_millis(rng.random_range(2000..5000))).await;
        nemesis::heal(&mut cluster, undo)?;
    }
    cluster.net.heal()?;
    let healed = Instant::now();
    cluster
        .wait_leader(Duration::from_secs(30))
        .await
        .map_err(|e| format!("after healing: {e}"))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }

    let mut violations = Vec::new();
    // Set: nothing acknowledged is lost, nothing never added appears.
    let present = workload::read_set(&addrs, &token).await?;
    let s = lock(&set).clone();
    let lost: Vec<u64> = s.acked.difference(&present).copied().collect();
    let unexpected: Vec<u64> = present.difference(&s.attempted).copied().collect();
    if !lost.is_empty() {
        violations.push(format!(
            "{} acknowledged adds lost: {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        ));
    }
    if !unexpected.is_empty() {
        violations.push(format!(
            "{} elements never added are present",
            unexpected.len()
        ));
    }

    // Streams: converge within 10 s, only written values. The workload runs
    // on after healing, so the state is final only once it has stopped:
    // the 10 s count from then (and the time since healing is reported).
    // A write whose client gave up (timed out, indeterminate) may still
    // commit after this first read, so the state is read again each round:
    // the proxies must match what the cluster holds now.
    let mut finals = final_registers(&addrs, &token, cfg.keys).await?;
    let writes_stopped = Instant::now();
    let mut converged = false;
    let mut converged_at = Instant::now();
    let mut last_read = Instant::now();
    let mut final_state_moved = 0;
    while writes_stopped.elapsed() < Duration::from_secs(10) {
        if last_read.elapsed() > Duration::from_secs(1) {
            if let Ok(now) = final_registers(&addrs, &token, cfg.keys).await {
                if now != finals {
                    final_state_moved += 1;
                }
                finals = now;
            }
            last_read = Instant::now();
        }
        if views.iter().all(|v| {
            let v = lock(v);
            finals
                .iter()
                .all(|(k, want)| v.held.get(k).copied().flatten() == *want)
        }) {
            converged = true;
            converged_at = Instant::now();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = pstop_tx.send(true);
    for t in ptasks {
        let _ = t.await;
    }
    if !converged && std::env::var_os("CHAOS_KEEP").is_some() {
        let copy = cfg.out_dir.join(format!("seed-{}-cluster", cfg.seed));
        eprintln!(
            "chaos: keeping the cluster's files in {} (CHAOS_KEEP)",
            copy.display()
        );
        let _ = std::process::Command::new("cp")
            .arg("-r")
            .arg(cluster.dir.path())
            .arg(&copy)
            .status();
    }
    if !converged && cfg.proxies > 0 {
        let held: Vec<String> = views
            .iter()
            .map(|v| {
                let v = lock(v);
                format!(
                    "{:?} at revision {} after {} connects, on {}",
                    v.held, v.revision, v.connects, v.node
                )
            })
            .collect();
        violations.push(format!(
            "proxies did not converge within 10 s of the last write ({:.1} s after healing): final {finals:?}, held {held:?}",
            healed.elapsed().as_secs_f64()
        ));
    }
    drop(recorder);
    let history =
        History::from_path(&history_path).map_err(|e| format!("reading the history: {e}"))?;
    let mut written: BTreeSet<(String, u64)> = BTreeSet::new();
    for op in &history.ops {
        match &op.call {
            Call::Write(v) => {
                if let Some(x) = v.as_u64() {
                    written.insert((op.key.clone(), x));
                }
            }
            Call::Cas { new: n, .. } => {
                if let Some(x) = n.as_u64() {
                    written.insert((op.key.clone(), x));
                }
            }
            Call::Read => {}
        }
    }
    let (mut deltas, mut fulls) = (0, 0);
    for v in &views {
        let v = lock(v);
        deltas += v.deltas;
        fulls += v.fulls;
        violations.extend(v.violations.iter().cloned());
        for s in v.seen.difference(&written) {
            violations.push(format!(
                "a proxy was sent {}={}, a value never written",
                s.0, s.1
            ));
        }
    }

    let verdict = check_history(
        &history,
        &CheckOptions {
            timeout: Some(Duration::from_secs(120)),
            ..CheckOptions::default()
        },
    );
    match &verdict {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable { key, .. } => {
            violations.push(format!("register {key} is not linearizable"))
        }
        Verdict::Unknown { reason } => {
            violations.push(format!("linearizability unknown: {reason}"))
        }
    }
    let count = |o: crate::history::Outcome| history.ops.iter().filter(|x| x.outcome == o).count();
    Ok(Summary {
        seed: cfg.seed,
        nodes: cfg.nodes,
        net,
        faults,
        ops: history.ops.len(),
        ok: count(crate::history::Outcome::Ok),
        fail: count(crate::history::Outcome::Fail),
        info: count(crate::history::Outcome::Info),
        linearizable: verdict.label().to_string(),
        set_acked: s.acked.len(),
        set_lost: lost.len(),
        set_unexpected: unexpected.len(),
        stream_deltas: deltas,
        stream_fulls: fulls,
        streams_converged: converged,
        final_state_moved,
        converged_after_heal_s: (converged_at.duration_since(healed).as_secs_f64() * 10.0).round()
            / 10.0,
        violations,
        history: history_path.display().to_string(),
        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}

/// A targeted check that reads need a read index: write 1, cut the leader
/// off, write 2 through the majority, then read from the old leader. A
/// correct build refuses (no quorum) or waits; the broken one answers 1, a
/// stale read. Returns the verdict on the recorded history.
pub async fn stale_read_probe(
    unsafe_reads: bool,
    out_dir: &std::path::Path,
) -> Result<Verdict, String> {
    let mut opts = ClusterOpts::default();
    if unsafe_reads {
        opts.extra_args.push("--unsafe-local-reads".into());
    }
    let cluster = Cluster::start(3, opts)?;
    let old = cluster.wait_leader(Duration::from_secs(30)).await?;
    let addr = |i: u64| cluster.nodes[i as usize - 1].addr.clone();
    let token = cluster.token.clone();
    std::fs::create_dir_all(out_dir).map_err(|e| e.to_string())?;
    let path = out_dir.join(format!(
        "stale-read-{}.jsonl",
        if unsafe_reads { "unsafe" } else { "safe" }
    ));
    let _ = std::fs::remove_file(&path);
    let mut w = HistoryWriter::new(BufWriter::new(
        std::fs::File::create(&path).map_err(|e| e.to_string())?,
    ));
    let reg = |v: u64| -> Result<raftmesh_api::Resource, String> {
        serde_yaml_ng::from_str(&format!(
            "kind: Service\nmetadata: {{name: reg-0}}\nspec: {{ports: [{{port: {v}}}]}}"
        ))
        .map_err(|e| e.to_string())
    };
    let write = |c: &mut crate::client::Admin, v: u64| {
        let r = reg(v);
        let mut c = c.clone();
        async move {
            c.apply(pb::ApplyRequest {
                items: vec![pb::ApplyItem {
                    resource: Some(r?.into()),
                    expected_revision: None,
                }],
            })
            .await
            .map_err(|e| e.message().to_string())
        }
    };
    use crate::history::{EventType, Function};
    use serde_json::{json, Value};
    let rec_err = |e: std::io::Error| e.to_string();
    let mut leader_client = admin(&addr(old), &token).map_err(|e| e.to_string())?;
    w.invoke(0, Function::Write, "reg-0", json!(1))
        .map_err(rec_err)?;
    write(&mut leader_client, 1).await?;
    w.complete(0, EventType::Ok, Function::Write, "reg-0", json!(1))
        .map_err(rec_err)?;
    // Let the followers apply it.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let rest: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    cluster.net.partition(&[vec![old], rest.clone()])?;
    let mut majority = admin(&addr(rest[0]), &token).map_err(|e| e.to_string())?;
    w.invoke(1, Function::Write, "reg-0", json!(2))
        .map_err(rec_err)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout(Duration::from_secs(3), write(&mut majority, 2)).await {
            Ok(Ok(_)) => break,
            _ if Instant::now() > deadline => {
                return Err("the majority never accepted the write".into())
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    w.complete(1, EventType::Ok, Function::Write, "reg-0", json!(2))
        .map_err(rec_err)?;

    // Read from the old leader, which has not heard of 2.
    w.invoke(2, Function::Read, "reg-0", Value::Null)
        .map_err(rec_err)?;
    let r = tokio::time::timeout(
        Duration::from_secs(8),
        leader_client.get(pb::GetRequest {
            kind: "Service".into(),
            namespace: String::new(),
            name: "reg-0".into(),
            stale: false,
        }),
    )
    .await;
    match r {
        Ok(Ok(g)) => {
            let v = g
                .into_inner()
                .resource
                .and_then(|r| raftmesh_api::Resource::try_from(r).ok())
                .and_then(|r| match r.spec {
                    raftmesh_api::Spec::Service(s) => s.ports.first().map(|p| u64::from(p.port)),
                    _ => None,
                });
            w.complete(2, EventType::Ok, Function::Read, "reg-0", json!(v))
                .map_err(rec_err)?;
        }
        _ => w
            .complete(2, EventType::Fail, Function::Read, "reg-0", Value::Null)
            .map_err(rec_err)?,
    }
    drop(w);
    cluster.net.heal()?;
    let history = History::from_path(&path).map_err(|e| e.to_string())?;
    Ok(check_history(&history, &CheckOptions::default()))
}
