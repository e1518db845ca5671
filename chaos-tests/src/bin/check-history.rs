//! `check-history`: checks JSONL register histories for linearizability, printing one verdict line per file.
//!
//! stdout gets exactly one line per file, `FILE linearizable`,
//! `FILE not-linearizable` or `FILE unknown`; explanations, parse errors and
//! statistics go to stderr. Exit status: 0 when every file is linearizable,
//! 1 when some file is not, 3 when none is shown non-linearizable but some
//! could not be decided (a bound was hit, or the file could not be read or
//! parsed), 2 for a usage error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use raftmesh_chaos_tests::history::History;
use raftmesh_chaos_tests::linearizability::{
    check_history_with_stats, CheckOptions, FailedCas, Verdict,
};

/// Checks Jepsen-style JSONL histories of compare-and-set registers (one
/// register per key) for linearizability.
#[derive(Debug, Parser)]
#[command(name = "check-history", version)]
struct Args {
    /// History files, one JSON event a line.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Wall-time bound per file, minimisation included (e.g. 60s, 5m); 0s
    /// for none.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Search steps allowed per key.
    #[arg(long, default_value_t = CheckOptions::default().max_steps)]
    max_steps: u64,
    /// Cached search configurations allowed per key (bounds memory).
    #[arg(long, default_value_t = CheckOptions::default().max_states)]
    max_states: usize,
    /// Drop failed cas operations instead of checking that the register did
    /// not hold the expected value.
    #[arg(long)]
    ignore_failed_cas: bool,
    /// Do not minimise the operations of a violation.
    #[arg(long)]
    no_minimise: bool,
    /// Search steps the minimisation of a violation may spend.
    #[arg(long, default_value_t = CheckOptions::default().minimise_steps)]
    minimise_steps: u64,
    /// Print search statistics for each file on stderr.
    #[arg(short, long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = CheckOptions {
        max_steps: args.max_steps,
        max_states: args.max_states,
        timeout: (!args.timeout.is_zero()).then_some(args.timeout),
        failed_cas: if args.ignore_failed_cas {
            FailedCas::Ignore
        } else {
            FailedCas::Check
        },
        minimise: !args.no_minimise,
        minimise_steps: args.minimise_steps,
    };
    let mut any_violation = false;
    let mut any_unknown = false;
    let stdout = std::io::stdout();
    for file in &args.files {
        let name = file.display();
        let started = Instant::now();
        let label = match History::from_path(file) {
            Err(err) => {
                eprintln!("{name}: cannot check: {err}");
                any_unknown = true;
                "unknown"
            }
            Ok(history) => {
                let (verdict, stats) = check_history_with_stats(&history, &options);
                if args.verbose {
                    eprintln!(
                        "{name}: {} keys, {} operations, {} steps, {} states, {} minimisation steps, {:.1?}",
                        stats.keys,
                        stats.ops,
                        stats.steps,
                        stats.states,
                        stats.minimise_steps,
                        started.elapsed()
                    );
                }
                match &verdict {
                    Verdict::Linearizable => {}
                    Verdict::NotLinearizable { key, explanation } => {
                        any_violation = true;
                        eprint!("{name}: key {key:?} is not linearizable: {explanation}");
                    }
                    Verdict::Unknown { reason } => {
                        any_unknown = true;
                        eprintln!("{name}: no verdict: {reason}");
                    }
                }
                verdict.label()
            }
        };
        let mut out = stdout.lock();
        if writeln!(out, "{name} {label}")
            .and_then(|()| out.flush())
            .is_err()
        {
            // stdout is gone (e.g. a closed pipe): nobody gets the verdicts.
            return ExitCode::from(2);
        }
    }
    if any_violation {
        ExitCode::from(1)
    } else if any_unknown {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}
