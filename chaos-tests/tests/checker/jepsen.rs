//! The 102 Jepsen etcd histories must get the verdicts of `verdicts.tsv`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use raftmesh_chaos_tests::history::History;
use raftmesh_chaos_tests::linearizability::{check_history, CheckOptions, Verdict};

use crate::support::sub_history;

/// `/work/shared/testdata/jepsen-etcd` seen from this crate.
pub fn jepsen_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/jepsen-etcd");
    // Skip only when the folder is absent; a folder with missing or broken
    // files fails the tests.
    if dir.exists() {
        Some(dir)
    } else {
        eprintln!(
            "\n==================== SKIPPED ====================\n\
             Jepsen etcd histories not found at {}\n\
             (expected verdicts.tsv and etcd_*.jsonl there)\n\
             =================================================\n",
            dir.display()
        );
        None
    }
}

fn expected_verdicts(dir: &std::path::Path) -> BTreeMap<String, bool> {
    let text = std::fs::read_to_string(dir.join("verdicts.tsv")).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (file, verdict) = l.split_once('\t').unwrap();
            (file.to_string(), verdict.trim().parse::<bool>().unwrap())
        })
        .collect()
}

#[test]
fn all_jepsen_etcd_verdicts_match() {
    let Some(dir) = jepsen_dir() else { return };
    let expected = expected_verdicts(&dir);
    assert_eq!(expected.len(), 102, "verdicts.tsv lists 102 histories");
    let options = CheckOptions::default();
    let started = Instant::now();
    let mut mismatches = Vec::new();
    let mut witnesses = 0;
    for (file, linearizable) in &expected {
        let history = History::from_path(dir.join(file)).unwrap();
        let verdict = check_history(&history, &options);
        match (&verdict, linearizable) {
            (Verdict::Linearizable, true) => {}
            (Verdict::NotLinearizable { key, explanation }, false) => {
                assert_eq!(key, "r");
                assert!(
                    !explanation.stuck.is_empty(),
                    "{file}: no stuck operation reported"
                );
                // The witness alone must already be a violation.
                let witness = explanation
                    .witness
                    .as_ref()
                    .expect("minimisation is on by default");
                assert!(
                    witness.minimal,
                    "{file}: witness not minimised within the default budget"
                );
                let ops: Vec<_> = witness
                    .ops
                    .iter()
                    .map(|w| (w.op.clone(), w.indeterminate))
                    .collect();
                let sub = sub_history(&ops);
                let quick = CheckOptions {
                    minimise: false,
                    ..CheckOptions::default()
                };
                assert!(
                    matches!(check_history(&sub, &quick), Verdict::NotLinearizable { .. }),
                    "{file}: witness is linearizable:\n{explanation}"
                );
                witnesses += 1;
            }
            _ => mismatches.push(format!(
                "{file}: expected linearizable={linearizable}, got {verdict:?}"
            )),
        }
    }
    eprintln!(
        "checked {} Jepsen etcd histories ({witnesses} witnesses verified) in {:.2?}",
        expected.len(),
        started.elapsed()
    );
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert_eq!(witnesses, 79);
}
