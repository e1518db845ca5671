//! Generated histories with known answers: simulated atomic registers (linearizable by construction), provably broken mutations of them, and small random histories checked against a brute-force oracle.

use proptest::prelude::*;
use raftmesh_chaos_tests::history::{Event, EventType, Function, History, Outcome};
use raftmesh_chaos_tests::linearizability::{check_history, CheckOptions, FailedCas, Verdict};
use serde_json::{json, Value};

use crate::support::{oracle, simulate, Builder, Sim};

fn options() -> CheckOptions {
    CheckOptions::default()
}

fn assert_linearizable(history: &History, what: &str) {
    let verdict = check_history(history, &options());
    assert!(verdict.is_linearizable(), "{what}: {verdict:?}");
}

fn assert_violation(history: &History, what: &str) -> String {
    match check_history(history, &options()) {
        Verdict::NotLinearizable { key, explanation } => {
            let witness = explanation.witness.as_ref().expect("minimised");
            assert!(!witness.ops.is_empty());
            format!("{key}: {explanation}")
        }
        other => panic!("{what}: expected a violation, got {other:?}"),
    }
}

#[test]
fn sequential_histories_are_linearizable() {
    for seed in 0..20 {
        let sim = simulate(
            seed,
            Sim {
                processes: 1,
                ops: 300,
                keys: 3,
                ..Sim::default()
            },
        );
        assert_linearizable(&sim.builder.history(), &format!("sequential seed {seed}"));
    }
}

#[test]
fn simulated_atomic_registers_are_linearizable() {
    let mut outcomes = std::collections::BTreeMap::new();
    for seed in 0..30 {
        let sim = simulate(
            seed,
            Sim {
                processes: 6,
                ops: 300,
                keys: 1 + (seed as usize % 3),
                crash: 0.01,
                reject: 0.05,
                ..Sim::default()
            },
        );
        let history = sim.builder.history();
        assert!(history.ops.len() >= 300);
        for op in &history.ops {
            *outcomes
                .entry((op.call.function().to_string(), op.outcome.to_string()))
                .or_insert(0) += 1;
        }
        assert_linearizable(&history, &format!("concurrent seed {seed}"));
    }
    // The simulation exercised unknown and failed outcomes.
    for kind in [
        ("write", "info"),
        ("cas", "info"),
        ("write", "fail"),
        ("cas", "fail"),
        ("cas", "ok"),
    ] {
        let count = outcomes
            .get(&(kind.0.to_string(), kind.1.to_string()))
            .copied()
            .unwrap_or(0);
        assert!(count >= 10, "{kind:?}: {count}");
    }
}

#[test]
fn a_read_of_a_value_never_written_is_caught() {
    for seed in 0..20 {
        let mut sim = simulate(seed, Sim::default());
        let events = &mut sim.builder.events;
        let reads: Vec<usize> = (0..events.len())
            .filter(|&i| events[i].kind == EventType::Ok && events[i].f == Function::Read)
            .collect();
        let victim = reads[seed as usize % reads.len()];
        events[victim].value = json!(1000);
        let text = assert_violation(&sim.builder.history(), &format!("seed {seed}"));
        assert!(text.contains("-> 1000"), "{text}");
    }
}

#[test]
fn a_stale_read_after_a_later_write_is_caught() {
    let mut checked = 0;
    for seed in 0..40 {
        let mut sim = simulate(seed, Sim::default());
        let history = sim.builder.history();
        let ok_writes: Vec<_> = history
            .ops
            .iter()
            .filter(|o| o.call.function() == Function::Write && o.outcome == Outcome::Ok)
            .collect();
        // w, then a write w2 invoked after w completes, then a read invoked
        // after w2 completes: make w write a fresh value and the read see it.
        let found = ok_writes.iter().find_map(|w| {
            let w_done = w.complete_line?;
            let w2 = ok_writes.iter().find(|o| o.invoke_line > w_done)?;
            let w2_done = w2.complete_line?;
            let r = history.ops.iter().find(|o| {
                o.call.function() == Function::Read
                    && o.invoke_line > w2_done
                    && o.complete_line.is_some()
            })?;
            Some((w.invoke_line, w_done, r.complete_line?))
        });
        let Some((w_invoke, w_done, r_done)) = found else {
            continue;
        };
        let events = &mut sim.builder.events;
        events[w_invoke - 1].value = json!(1001);
        events[w_done - 1].value = json!(1001);
        events[r_done - 1].value = json!(1001);
        assert_violation(&sim.builder.history(), &format!("seed {seed}"));
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} histories had the shape");
}

#[test]
fn a_lost_acknowledged_write_is_caught() {
    for seed in 0..20 {
        // Longer than the bitset limit: exercises the sparse encoding too.
        let sim = Sim {
            ops: 400,
            ..Sim::default()
        };
        let mut sim = simulate(seed, sim);
        let before = sim.finals.get("k0").cloned().unwrap_or(Value::Null);
        // Every operation has completed: the write is acknowledged, then a
        // read by another client still sees the value before it.
        sim.builder.write(100, "k0", 1002);
        sim.builder.invoke_read(101, "k0").complete(
            101,
            EventType::Ok,
            Function::Read,
            "k0",
            before,
        );
        let text = assert_violation(&sim.builder.history(), &format!("seed {seed}"));
        assert!(text.contains("write 1002"), "{text}");
    }
}

#[test]
fn a_failed_cas_on_the_current_value_is_caught() {
    for seed in 0..10 {
        let mut sim = simulate(seed, Sim::default());
        sim.builder
            .write(100, "k0", 1003)
            .cas(101, "k0", 1003, 1, false);
        let history = sim.builder.history();
        assert_violation(&history, &format!("seed {seed}"));
        let ignoring = CheckOptions {
            failed_cas: FailedCas::Ignore,
            ..options()
        };
        assert!(check_history(&history, &ignoring).is_linearizable());
    }
}

/// Small histories: half fully random, half simulated and then mutated once
/// (near the boundary between linearizable and not).
fn small_history() -> impl Strategy<Value = Builder> {
    prop_oneof![random_history(), mutated_simulation()]
}

/// A simulated atomic register (a few operations, crashes, rejections) with
/// one change: a read's result, or a cas/write outcome flipped, or a failed
/// cas inserted.
fn mutated_simulation() -> impl Strategy<Value = Builder> {
    (
        any::<u64>(),
        2..4usize,
        2..8usize,
        any::<usize>(),
        -1..3i64,
        any::<bool>(),
    )
        .prop_map(|(seed, processes, ops, victim, value, insert)| {
            let sim = Sim {
                processes,
                ops,
                keys: 1,
                values: 3,
                crash: 0.1,
                reject: 0.1,
            };
            let mut builder = simulate(seed, sim).builder;
            let completions: Vec<usize> = (0..builder.events.len())
                .filter(|&i| matches!(builder.events[i].kind, EventType::Ok | EventType::Fail))
                .collect();
            if insert {
                let at = victim % (builder.events.len() + 1);
                let cas = json!([value.max(0), 2]);
                let invoke = Event::new(99, EventType::Invoke, Function::Cas, "k0", cas.clone());
                let fail = Event::new(99, EventType::Fail, Function::Cas, "k0", cas);
                builder.events.splice(at..at, [invoke, fail]);
            } else if !completions.is_empty() {
                let event = &mut builder.events[completions[victim % completions.len()]];
                match (event.f, event.kind) {
                    (Function::Read, _) => {
                        event.value = if value < 0 { Value::Null } else { json!(value) }
                    }
                    (_, EventType::Ok) => event.kind = EventType::Fail,
                    (_, _) => event.kind = EventType::Ok,
                }
            }
            builder
        })
}

/// A small random history: up to 3 processes, random calls, outcomes and
/// read results, random interleaving.
fn random_history() -> impl Strategy<Value = Builder> {
    let op = (0..3u64, 0..3u8, -1..3i64, 0..3i64, 0..8u8);
    (
        proptest::collection::vec(op, 1..8),
        proptest::collection::vec(any::<u16>(), 16),
    )
        .prop_map(|(ops, choices)| {
            // Per process: its events, in order; nothing after an unknown outcome.
            let mut queues: Vec<Vec<(EventType, Function, Value)>> = vec![Vec::new(); 3];
            let mut stopped = [false; 3];
            for (p, f, a, b, outcome) in ops {
                let p = p as usize;
                if stopped[p] {
                    continue;
                }
                let (f, invoke, done) = match f {
                    0 => (
                        Function::Read,
                        Value::Null,
                        if a < 0 { Value::Null } else { json!(a) },
                    ),
                    1 => (Function::Write, json!(a.max(0)), json!(a.max(0))),
                    _ => (Function::Cas, json!([a.max(0), b]), json!([a.max(0), b])),
                };
                queues[p].push((EventType::Invoke, f, invoke));
                match outcome {
                    0..=3 => queues[p].push((EventType::Ok, f, done)),
                    4 | 5 => queues[p].push((EventType::Fail, f, done)),
                    6 => {
                        queues[p].push((EventType::Info, f, Value::Null));
                        stopped[p] = true;
                    }
                    _ => stopped[p] = true,
                }
            }
            let mut builder = Builder::new();
            let mut choice = choices.into_iter().cycle();
            loop {
                let live: Vec<usize> = (0..3).filter(|&p| !queues[p].is_empty()).collect();
                if live.is_empty() {
                    break;
                }
                let p = live[usize::from(choice.next().unwrap_or(0)) % live.len()];
                let (kind, f, value) = queues[p].remove(0);
                builder.complete(p as u64, kind, f, "r", value);
            }
            builder
        })
}

#[test]
fn small_random_histories_cover_both_verdicts() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = small_history();
    let (mut linearizable, mut failed_cas_matters) = (0, 0);
    let samples = 1000;
    for _ in 0..samples {
        let history = strategy.new_tree(&mut runner).unwrap().current().history();
        let checked = oracle(&history, true);
        linearizable += usize::from(checked);
        failed_cas_matters += usize::from(checked != oracle(&history, false));
    }
    assert!(
        (samples / 5..samples * 4 / 5).contains(&linearizable),
        "{linearizable} of {samples} linearizable"
    );
    assert!(
        failed_cas_matters >= samples / 100,
        "failed cas decided only {failed_cas_matters}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn small_random_histories_agree_with_brute_force(builder in small_history()) {
        let history = builder.history();
        for (failed_cas, checked) in [(FailedCas::Check, true), (FailedCas::Ignore, false)] {
            let options = CheckOptions { failed_cas, ..CheckOptions::default() };
            let verdict = check_history(&history, &options);
            let undecided = matches!(verdict, Verdict::Unknown { .. });
            prop_assert!(!undecided);
            prop_assert_eq!(
                verdict.is_linearizable(),
                oracle(&history, checked),
                "history:\n{}verdict: {:?}", builder.jsonl(), verdict
            );
            if let Verdict::NotLinearizable { explanation, .. } = &verdict {
                // The witness is a violation on its own.
                let witness = explanation.witness.as_ref().unwrap();
                let ops: Vec<_> = witness.ops.iter().map(|w| (w.op.clone(), w.indeterminate)).collect();
                prop_assert!(!oracle(&crate::support::sub_history(&ops), checked));
            }
        }
    }
}
