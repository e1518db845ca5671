//! Hand-written histories pinning down the semantics: unknown outcomes, failed operations, keys, explanations and bounds.

use std::time::Duration;

use raftmesh_chaos_tests::history::{EventType, Function, History};
use raftmesh_chaos_tests::linearizability::{check_history, CheckOptions, FailedCas, Verdict};
use serde_json::json;

use crate::support::{simulate, Builder, Sim};

fn verdict(history: &History) -> Verdict {
    check_history(history, &CheckOptions::default())
}

fn linearizable(b: &Builder) -> bool {
    match verdict(&b.history()) {
        Verdict::Linearizable => true,
        Verdict::NotLinearizable { .. } => false,
        Verdict::Unknown { reason } => panic!("unknown: {reason}"),
    }
}

#[test]
fn an_info_write_may_take_effect_after_its_info_line() {
    let mut b = Builder::new();
    b.invoke_write(0, "r", 1).info(0, Function::Write, "r");
    b.read(1, "r", None)
        .read(1, "r", Some(1))
        .read(1, "r", Some(1));
    assert!(linearizable(&b));
    // ... but once seen it stays (nothing else writes).
    b.read(1, "r", None);
    assert!(!linearizable(&b));
}

#[test]
fn an_info_write_may_never_take_effect() {
    let mut b = Builder::new();
    b.write(0, "r", 1)
        .invoke_write(1, "r", 2)
        .info(1, Function::Write, "r");
    b.read(2, "r", Some(1)).read(2, "r", Some(1));
    assert!(linearizable(&b));
}

#[test]
fn an_info_write_cannot_take_effect_before_its_invoke() {
    let mut b = Builder::new();
    b.read(1, "r", Some(1));
    b.invoke_write(0, "r", 1).info(0, Function::Write, "r");
    assert!(!linearizable(&b));
}

#[test]
fn an_invoke_without_completion_counts_as_info() {
    let mut b = Builder::new();
    b.write(0, "r", 1).invoke_cas(1, "r", 1, 2);
    b.read(2, "r", Some(1)).read(2, "r", Some(2));
    assert!(linearizable(&b));
    let mut b = Builder::new();
    b.write(0, "r", 1).invoke_cas(1, "r", 3, 2);
    b.read(2, "r", Some(2));
    assert!(
        !linearizable(&b),
        "the cas cannot succeed: the register never holds 3"
    );
}

#[test]
fn an_info_cas_takes_effect_only_if_it_matches() {
    let mut b = Builder::new();
    b.write(0, "r", 1)
        .invoke_cas(1, "r", 1, 2)
        .info(1, Function::Cas, "r");
    b.read(2, "r", Some(2));
    assert!(linearizable(&b));
    let mut b = Builder::new();
    b.write(0, "r", 5)
        .invoke_cas(1, "r", 1, 2)
        .info(1, Function::Cas, "r");
    b.read(2, "r", Some(2));
    assert!(!linearizable(&b));
}

#[test]
fn info_and_failed_reads_observe_nothing() {
    let mut b = Builder::new();
    b.write(0, "r", 1);
    b.invoke_read(1, "r")
        .complete(1, EventType::Info, Function::Read, "r", json!(7));
    b.invoke_read(2, "r")
        .complete(2, EventType::Fail, Function::Read, "r", json!(8));
    b.read(3, "r", Some(1));
    assert!(linearizable(&b));
}

#[test]
fn a_failed_write_has_no_effect() {
    let mut b = Builder::new();
    b.write(0, "r", 1);
    b.invoke_write(1, "r", 2)
        .complete(1, EventType::Fail, Function::Write, "r", json!(2));
    let mut ok = b.clone();
    ok.read(2, "r", Some(1));
    assert!(linearizable(&ok));
    b.read(2, "r", Some(2));
    assert!(!linearizable(&b));
}

#[test]
fn a_failed_cas_observes_a_different_value() {
    // Sequential: the register holds 1, so cas 1->2 cannot fail.
    let mut b = Builder::new();
    b.write(0, "r", 1).cas(1, "r", 1, 2, false);
    assert!(!linearizable(&b));
    let ignoring = CheckOptions {
        failed_cas: FailedCas::Ignore,
        ..CheckOptions::default()
    };
    assert!(check_history(&b.history(), &ignoring).is_linearizable());
    // It has no effect.
    let mut b = Builder::new();
    b.write(0, "r", 3)
        .cas(1, "r", 1, 2, false)
        .read(2, "r", Some(3));
    assert!(linearizable(&b));
    // Concurrent with a write that changes the value: it may come after it.
    let mut b = Builder::new();
    b.write(0, "r", 1).invoke_cas(1, "r", 1, 2).write(2, "r", 5);
    b.complete(1, EventType::Fail, Function::Cas, "r", json!([1, 2]));
    assert!(linearizable(&b));
}

#[test]
fn a_successful_cas_needs_the_expected_value() {
    let mut b = Builder::new();
    b.write(0, "r", 1).cas(1, "r", 1, 2, true);
    let mut good = b.clone();
    good.read(2, "r", Some(2));
    assert!(linearizable(&good));
    let mut stale = b.clone();
    stale.read(2, "r", Some(1));
    assert!(!linearizable(&stale));
    let mut wrong = Builder::new();
    wrong.write(0, "r", 1).cas(1, "r", 2, 3, true);
    assert!(!linearizable(&wrong));
    let mut unset = Builder::new();
    unset.read(0, "r", None).cas(1, "r", 0, 3, true);
    assert!(!linearizable(&unset), "null (unset) is not 0");
}

#[test]
fn concurrent_reads_may_see_either_side_of_a_write() {
    let mut b = Builder::new();
    b.write(0, "r", 1).invoke_write(0, "r", 2);
    b.read(1, "r", Some(1))
        .read(2, "r", Some(2))
        .read(3, "r", Some(2));
    b.write_ok(0, "r", 2);
    assert!(linearizable(&b));
    // But not back again.
    b.read(1, "r", Some(1));
    assert!(!linearizable(&b));
}

#[test]
fn keys_are_independent_registers() {
    let mut b = Builder::new();
    b.write(0, "a", 1)
        .write(1, "b", 2)
        .read(2, "a", Some(1))
        .read(3, "b", Some(2));
    b.read(4, "c", None);
    assert!(
        linearizable(&b),
        "as one register the read of a=1 would be stale"
    );
    b.read(2, "b", Some(1));
    match verdict(&b.history()) {
        Verdict::NotLinearizable { key, explanation } => {
            assert_eq!(key, "b");
            assert!(explanation.prefix.iter().all(|op| op.key == "b"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn integer_keys_and_non_integer_values_work() {
    let text = r#"{"process":0,"type":"invoke","f":"write","key":3,"value":{"x":[1,"a"]},"time":1}
{"process":0,"type":"ok","f":"write","key":3,"value":{"x":[1,"a"]},"time":2}
{"process":1,"type":"invoke","f":"cas","key":3,"value":[{"x":[1,"a"]},"b"],"time":3}
{"process":1,"type":"ok","f":"cas","key":3,"value":[{"x":[1,"a"]},"b"],"time":4}
{"process":2,"type":"invoke","f":"read","key":3,"value":null}
{"process":2,"type":"ok","f":"read","key":3,"value":"b"}
"#;
    let history = History::parse_str(text).unwrap();
    assert!(verdict(&history).is_linearizable());
    let broken = text.replace(r#""value":"b"}"#, r#""value":{"x":[1,"a"]}}"#);
    assert!(matches!(
        verdict(&History::parse_str(&broken).unwrap()),
        Verdict::NotLinearizable { key, .. } if key == "3"
    ));
}

#[test]
fn the_explanation_names_the_operations_that_cannot_be_ordered() {
    let mut b = Builder::new();
    b.write(0, "r", 0); // lines 1-2
    b.read(1, "r", Some(0)); // 3-4
    b.write(0, "r", 1); // 5-6
    b.write(2, "r", 2); // 7-8
    b.read(1, "r", Some(1)); // 9-10: stale
    b.write(0, "r", 3); // 11-12
    b.read(1, "r", Some(3)); // 13-14
    let Verdict::NotLinearizable { key, explanation } = verdict(&b.history()) else {
        panic!("expected a violation")
    };
    assert_eq!(key, "r");
    assert_eq!(explanation.total_ops, 7);
    assert_eq!(explanation.prefix.len(), 4);
    assert_eq!(explanation.state, json!(2));
    assert_eq!(explanation.blocking.as_ref().unwrap().invoke_line, 9);
    assert_eq!(explanation.stuck.len(), 1);
    assert!(explanation.stuck[0]
        .reason
        .contains("read 1 but the register holds 2"));
    let witness = explanation.witness.as_ref().unwrap();
    let lines: Vec<(usize, Option<usize>)> = witness
        .ops
        .iter()
        .map(|w| (w.op.invoke_line, w.op.complete_line))
        .collect();
    assert_eq!(lines, vec![(5, Some(6)), (7, Some(8)), (9, Some(10))]);
    assert!(witness.minimal);
    assert_eq!(witness.cut_line, Some(10));
    let text = explanation.to_string();
    assert!(
        text.contains("3 operations cannot be linearized together"),
        "{text}"
    );
    assert!(
        text.contains("process 1 read -> 1 ok (lines 9-10)"),
        "{text}"
    );
    assert!(text.contains("process 2 write 2 ok (lines 7-8)"), "{text}");
    // Without minimisation there is no witness, the rest stays.
    let plain = CheckOptions {
        minimise: false,
        ..CheckOptions::default()
    };
    let Verdict::NotLinearizable { explanation, .. } = check_history(&b.history(), &plain) else {
        panic!("expected a violation")
    };
    assert!(explanation.witness.is_none());
    assert_eq!(explanation.stuck.len(), 1);
}

fn big_concurrent_history() -> History {
    simulate(
        7,
        Sim {
            processes: 8,
            ops: 2000,
            keys: 1,
            crash: 0.01,
            ..Sim::default()
        },
    )
    .builder
    .history()
}

#[test]
fn the_step_bound_gives_unknown() {
    let history = big_concurrent_history();
    let options = CheckOptions {
        max_steps: 1,
        ..CheckOptions::default()
    };
    match check_history(&history, &options) {
        Verdict::Unknown { reason } => assert!(reason.contains("step limit of 1"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(
        verdict(&history).is_linearizable(),
        "unbounded it is linearizable"
    );
}

#[test]
fn the_state_bound_gives_unknown() {
    let options = CheckOptions {
        max_states: 10,
        ..CheckOptions::default()
    };
    match check_history(&big_concurrent_history(), &options) {
        Verdict::Unknown { reason } => {
            assert!(reason.contains("state cache limit of 10"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_time_bound_gives_unknown() {
    let options = CheckOptions {
        timeout: Some(Duration::ZERO),
        ..CheckOptions::default()
    };
    match check_history(&big_concurrent_history(), &options) {
        Verdict::Unknown { reason } => assert!(reason.contains("time limit"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_violation_is_reported_even_if_another_key_is_undecided() {
    let mut b = simulate(
        3,
        Sim {
            processes: 8,
            ops: 2000,
            keys: 1,
            ..Sim::default()
        },
    )
    .builder;
    b.write(100, "z", 1).read(101, "z", Some(2));
    let options = CheckOptions {
        max_steps: 100,
        ..CheckOptions::default()
    };
    assert!(matches!(
        check_history(&b.history(), &options),
        Verdict::NotLinearizable { key, .. } if key == "z"
    ));
}

#[test]
fn an_empty_history_is_linearizable() {
    assert!(verdict(&History::default()).is_linearizable());
}
