//! chaos: the soak mode of the chaos suite — many seeded runs across every
//! fault kind, a summary line per run, a table at the end.
//!
//! ```sh
//! cargo run --release -p raftmesh-chaos-tests --bin chaos -- --runs 50
//! ```
//! Each run prints its seed first; `--seed-start S --runs 1` replays it.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use raftmesh_chaos_tests::nemesis::Fault;
use raftmesh_chaos_tests::runner::{run, RunConfig};

#[derive(Parser)]
#[command(about = "Seeded chaos runs against real meshd processes")]
struct Args {
    /// Number of runs (or CHAOS_RUNS).
    #[arg(long, env = "CHAOS_RUNS", default_value_t = 10)]
    runs: u64,
    /// First seed; run k uses seed-start + k.
    #[arg(long, default_value_t = 1)]
    seed_start: u64,
    /// Time under faults per run.
    #[arg(long, default_value = "20s")]
    duration: humantime::Duration,
    /// Where histories and summaries go.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Run the deliberately broken build (reads without read index).
    #[arg(long)]
    unsafe_reads: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let summaries = args.out.join("summaries.jsonl");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&summaries)?;
    let mut rows = Vec::new();
    let mut failed = 0;
    for k in 0..args.runs {
        let seed = args.seed_start + k;
        let mut cfg = RunConfig::new(seed, args.out.clone());
        cfg.duration = Duration::from(args.duration);
        // Every fifth run uses five nodes (rings and bridges need them).
        cfg.nodes = if seed % 5 == 0 { 5 } else { 3 };
        cfg.faults = Fault::available();
        cfg.unsafe_reads = args.unsafe_reads;
        eprintln!(
            "chaos: run {}/{} seed {seed} ({} nodes)",
            k + 1,
            args.runs,
            cfg.nodes
        );
        match run(&cfg).await {
            Ok(s) => {
                writeln!(file, "{}", serde_json::to_string(&s)?)?;
                if !s.passed() {
                    failed += 1;
                    eprintln!(
                        "chaos: seed {seed} FAILED: {:?} (history {})",
                        s.violations, s.history
                    );
                }
                rows.push(s);
            }
            Err(e) => {
                failed += 1;
                eprintln!("chaos: seed {seed}: the run itself failed: {e}");
            }
        }
    }
    println!("| seed | nodes | net | faults | ops (ok/fail/info) | linearizable | set acked / lost | stream deltas (full) | converged | violations |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for s in &rows {
        let kinds: Vec<String> = s
            .faults
            .iter()
            .map(|f| f.split(' ').next().unwrap_or("").to_string())
            .collect();
        println!(
            "| {} | {} | {} | {} | {} ({}/{}/{}) | {} | {} / {} | {} ({}) | {} | {} |",
            s.seed,
            s.nodes,
            s.net,
            kinds.join(", "),
            s.ops,
            s.ok,
            s.fail,
            s.info,
            s.linearizable,
            s.set_acked,
            s.set_lost,
            s.stream_deltas,
            s.stream_fulls,
            s.streams_converged,
            s.violations.len()
        );
    }
    eprintln!(
        "chaos: {} runs, {failed} with violations or errors; summaries in {}",
        args.runs,
        summaries.display()
    );
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
