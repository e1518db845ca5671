//! Unit tests of the linearizability search internals.

use super::minimise::*;
use super::model::*;
use super::search::*;
use super::*;

fn op(step: Step, invoke: usize, complete: Option<usize>, origin: usize) -> KOp {
    KOp {
        step,
        invoke,
        complete,
        origin,
        weakened: false,
    }
}

fn write(value: u32, invoke: usize, complete: usize, origin: usize) -> KOp {
    op(Step::Write { value }, invoke, Some(complete), origin)
}

fn read(seen: u32, invoke: usize, complete: usize, origin: usize) -> KOp {
    op(Step::Read { seen }, invoke, Some(complete), origin)
}

fn unbounded() -> Limits {
    Limits {
        max_steps: u64::MAX,
        max_states: MAX_CACHE_ENTRIES,
        deadline: None,
    }
}

fn run(ops: &[KOp]) -> SearchOutcome {
    search(ops, &unbounded(), &mut SearchStats::default())
}

#[test]
fn model_steps() {
    assert_eq!(Step::Read { seen: 1 }.apply(1), Some(1));
    assert_eq!(Step::Read { seen: 1 }.apply(0), None);
    assert_eq!(Step::Write { value: 4 }.apply(0), Some(4));
    assert_eq!(
        Step::Cas {
            expected: 1,
            new: 2
        }
        .apply(1),
        Some(2)
    );
    assert_eq!(
        Step::Cas {
            expected: 1,
            new: 2
        }
        .apply(3),
        None
    );
    assert_eq!(Step::CasFailed { expected: 1 }.apply(1), None);
    assert_eq!(Step::CasFailed { expected: 1 }.apply(3), Some(3));
    assert_eq!(
        Step::CasUnknown {
            expected: 1,
            new: 2
        }
        .apply(1),
        Some(2)
    );
    assert_eq!(
        Step::CasUnknown {
            expected: 1,
            new: 2
        }
        .apply(3),
        Some(3)
    );
}

#[test]
fn interner_maps_equal_values_to_one_id() {
    let mut values = Interner::default();
    assert_eq!(values.id(&Value::Null), 0);
    let a = values.id(&serde_json::json!(5));
    assert_eq!(values.id(&serde_json::json!(5)), a);
    assert_ne!(values.id(&serde_json::json!("5")), a);
    assert_eq!(
        values.id(&serde_json::json!({"b": 1, "a": 2})),
        values.id(&serde_json::json!({"a": 2, "b": 1}))
    );
    assert_eq!(values.value(a), &serde_json::json!(5));
}

#[test]
fn linearized_sets_encode_as_count_and_difference() {
    let mut set = LinearizedSet::default();
    set.insert(0);
    set.insert(2);
    assert_eq!((set.count, set.diff.clone()), (2, vec![1, 2]));
    set.insert(1);
    assert_eq!((set.count, set.diff.clone()), (3, vec![]));
    set.insert(7);
    assert_eq!((set.count, set.diff.clone()), (4, vec![3, 7]));
    set.remove(7);
    set.remove(1);
    assert_eq!((set.count, set.diff.clone()), (2, vec![1, 2]));
    // The same set reached in another order encodes the same.
    let mut other = LinearizedSet::default();
    other.insert(2);
    other.insert(0);
    assert_eq!((other.count, other.diff), (set.count, set.diff));
}

#[test]
fn state_cache_deduplicates_and_grows() {
    let mut cache = StateCache::new();
    let sets: Vec<Linearized> = (0..10_000u32)
        .map(|i| {
            let mut set = Linearized::Sparse(LinearizedSet::default());
            for op in [i % 7, 10 + i % 13, 30 + i % 5, 100 + i] {
                set.insert(op);
            }
            set
        })
        .collect();
    for (i, set) in sets.iter().enumerate() {
        assert!(cache.insert(set, 1), "{i}");
    }
    for set in &sets {
        assert!(!cache.insert(set, 1));
        assert!(cache.insert(set, 2));
    }
    let mut bits = Linearized::new(100);
    assert!(matches!(bits, Linearized::Bits(_)));
    assert!(cache.insert(&bits, 1));
    assert!(!cache.insert(&bits, 1));
    bits.insert(40);
    assert_eq!(bits.key(), (0, &[0, 1 << 8, 0, 0][..]));
    assert!(cache.insert(&bits, 1));
    bits.remove(40);
    assert!(!cache.insert(&bits, 1));
    assert_eq!(cache.len(), 20_002);
}

#[test]
fn search_finds_orders_and_violations() {
    // write 1 overlapping read 1: fine.
    assert!(matches!(
        run(&[write(1, 1, 3, 0), read(1, 2, 4, 1)]),
        SearchOutcome::Linearizable
    ));
    // read 1 strictly before write 1: not.
    match run(&[read(1, 1, 2, 0), write(1, 3, 4, 1)]) {
        SearchOutcome::Violation { prefix, state } => {
            assert!(prefix.is_empty());
            assert_eq!(state, 0);
        }
        other => panic!("{other:?}"),
    }
    // An unknown write may take effect after everything else.
    let late = op(Step::Write { value: 1 }, 1, None, 0);
    assert!(matches!(
        run(&[late, read(0, 2, 3, 1), read(1, 4, 5, 2)]),
        SearchOutcome::Linearizable
    ));
    // Only unknown operations: trivially linearizable.
    assert!(matches!(run(&[late]), SearchOutcome::Linearizable));
    assert!(matches!(run(&[]), SearchOutcome::Linearizable));
}

#[test]
fn search_reports_the_longest_prefix() {
    let ops = [write(1, 1, 2, 0), write(2, 3, 4, 1), read(1, 5, 6, 2)];
    match run(&ops) {
        SearchOutcome::Violation { prefix, state } => {
            assert_eq!(prefix, vec![0, 1]);
            assert_eq!(state, 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn search_gives_up_at_its_bounds() {
    let ops: Vec<KOp> = (0..50)
        .map(|i| write(i, 2 * i as usize + 1, 2 * i as usize + 200, i as usize))
        .collect();
    let limits = Limits {
        max_steps: 10,
        ..unbounded()
    };
    assert!(matches!(
        search(&ops, &limits, &mut SearchStats::default()),
        SearchOutcome::GaveUp(reason) if reason.contains("step limit")
    ));
    let limits = Limits {
        max_states: 3,
        ..unbounded()
    };
    assert!(matches!(
        search(&ops, &limits, &mut SearchStats::default()),
        SearchOutcome::GaveUp(reason) if reason.contains("state cache limit")
    ));
}

#[test]
fn cut_drops_later_invokes_and_weakens_open_operations() {
    let ops = [
        write(1, 1, 2, 0),
        op(
            Step::Cas {
                expected: 1,
                new: 2,
            },
            3,
            Some(9),
            1,
        ),
        read(1, 4, 8, 2),
        op(Step::CasFailed { expected: 3 }, 5, Some(6), 3),
        write(3, 7, 10, 4),
    ];
    let cut = cut_after(&ops, 6);
    assert_eq!(cut.len(), 3);
    assert_eq!(cut[0], ops[0]);
    assert_eq!(
        cut[1].step,
        Step::CasUnknown {
            expected: 1,
            new: 2
        }
    );
    assert_eq!((cut[1].complete, cut[1].weakened), (None, true));
    assert_eq!(cut[2], ops[3]);
}

#[test]
fn removability_of_mutations() {
    // w1 [1,2], w2 [3,4], r1 [5,6]: dropping w2 would hide the violation's
    // cause but is sound; w1 is the latest source of the read's value.
    let ops = [write(1, 1, 2, 0), write(2, 3, 4, 1), read(1, 5, 6, 2)];
    assert!(!removable(&ops, 0), "latest source of a read value");
    assert!(removable(&ops, 1));
    assert!(removable(&ops, 2), "observers always");
    // An older write of the same value may go: the read still has a source.
    let ops = [write(1, 1, 2, 0), write(1, 3, 4, 1), read(1, 5, 6, 2)];
    assert!(removable(&ops, 0));
    assert!(!removable(&ops, 1));
    // A failed cas that might run while w5 is current depends on it.
    let ops = [
        write(5, 1, 2, 0),
        op(Step::CasFailed { expected: 0 }, 3, Some(4), 1),
    ];
    assert!(!removable(&ops, 0));
    // ... unless a definite write strictly between closes w5's window.
    let ops = [
        write(5, 1, 2, 0),
        write(6, 3, 4, 1),
        op(Step::CasFailed { expected: 0 }, 5, Some(6), 2),
    ];
    assert!(removable(&ops, 0));
    assert!(!removable(&ops, 1));
}

#[test]
fn minimise_finds_a_stale_read() {
    // Noise, then w7 [10,11], w8 [12,13], r7 [14,15] and more noise.
    let mut ops = vec![
        write(1, 1, 3, 0),
        read(1, 2, 4, 1),
        write(2, 5, 6, 2),
        read(2, 7, 8, 3),
        write(7, 10, 11, 4),
        write(8, 12, 13, 5),
        read(7, 14, 15, 6),
        write(3, 16, 17, 7),
        read(3, 18, 19, 8),
    ];
    ops.sort_by_key(|o| o.invoke);
    assert!(matches!(run(&ops), SearchOutcome::Violation { .. }));
    let mut budget = Budget {
        steps: 1_000_000,
        deadline: None,
        spent: 0,
    };
    let witness = minimise(&ops, &mut budget).unwrap();
    let origins: Vec<usize> = witness.ops.iter().map(|o| o.origin).collect();
    assert_eq!(origins, vec![4, 5, 6]);
    assert_eq!(witness.cut, Some(15));
    assert!(witness.minimal);
    assert!(budget.spent > 0);
}

#[test]
fn minimise_stops_when_the_budget_is_spent() {
    let ops = [
        write(1, 1, 2, 0),
        write(2, 3, 4, 1),
        read(1, 5, 6, 2),
        read(9, 7, 8, 3),
    ];
    let mut budget = Budget {
        steps: 0,
        deadline: None,
        spent: 0,
    };
    let witness = minimise(&ops, &mut budget).unwrap();
    assert!(!witness.minimal);
    assert_eq!(witness.ops.len(), 4);
}
