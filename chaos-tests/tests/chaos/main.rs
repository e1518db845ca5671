//! The quick chaos suite (part of `cargo test --workspace`): a few seeded
//! runs against real meshd processes under faults, and the proof that the
//! suite catches a deliberately broken build. `CHAOS_RUNS=N` runs N seeds
//! here instead (soak); the `chaos` binary does the same with a table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use raftmesh_chaos_tests::linearizability::Verdict;
use raftmesh_chaos_tests::nemesis::Fault;
use raftmesh_chaos_tests::runner::{run, stale_read_probe, RunConfig};

fn out_dir() -> PathBuf {
    raftmesh_client::bins::workspace_root()
        .join("target")
        .join("chaos")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_runs_under_every_fault_kind_find_no_violation() {
    let runs: u64 = std::env::var("CHAOS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let first: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut failures = Vec::new();
    for k in 0..runs {
        let seed = first + k;
        let mut cfg = RunConfig::new(seed, out_dir());
        cfg.duration = Duration::from_secs(15);
        // From the seed, so a replay gets the same cluster size.
        cfg.nodes = if seed.is_multiple_of(4) { 5 } else { 3 };
        cfg.faults = Fault::available();
        eprintln!(
            "chaos: seed {seed}, {} nodes (replay with CHAOS_SEED={seed} CHAOS_RUNS=1)",
            cfg.nodes
        );
        let s = run(&cfg)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: the run failed: {e}"));
        eprintln!("chaos: {}", serde_json::to_string(&s).unwrap());
        assert!(
            s.ops > 50,
            "seed {seed}: too few operations to mean anything: {}",
            s.ops
        );
        if !s.passed() {
            failures.push(format!(
                "seed {seed}: {:?} (history {})",
                s.violations, s.history
            ));
        }
    }
    assert!(failures.is_empty(), "violations: {failures:#?}");
}

/// Power cuts: every node killed and every write it had not synced lost
/// (the data directories on lazyfs), then restarted. Nothing acknowledged
/// may be lost and the histories must stay linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_lose_no_acknowledged_write() {
    if let Err(why) = raftmesh_chaos_tests::cluster::power_loss_available() {
        eprintln!("SKIPPED power_cuts_lose_no_acknowledged_write: {why}");
        return;
    }
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(101);
    let mut cfg = RunConfig::new(seed, out_dir());
    cfg.duration = Duration::from_secs(15);
    cfg.faults = vec![Fault::PowerLoss];
    let s = run(&cfg)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: the run failed: {e}"));
    eprintln!("chaos: {}", serde_json::to_string(&s).unwrap());
    assert!(
        s.faults.iter().any(|f| f.starts_with("power-loss")),
        "no power cut happened: {:?}",
        s.faults
    );
    assert!(s.set_acked > 0, "nothing was acknowledged: {s:?}");
    assert!(
        s.passed(),
        "seed {seed}: {:?} (history {})",
        s.violations,
        s.history
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_skips_the_read_index_is_caught_serving_a_stale_read() {
    let dir = out_dir();
    let broken = stale_read_probe(true, &dir).await.unwrap();
    assert!(
        matches!(broken, Verdict::NotLinearizable { .. }),
        "the broken build was not caught: {}",
        broken.label()
    );
    let correct = stale_read_probe(false, &dir).await.unwrap();
    assert!(
        matches!(correct, Verdict::Linearizable),
        "the correct build failed: {}",
        correct.label()
    );
}
