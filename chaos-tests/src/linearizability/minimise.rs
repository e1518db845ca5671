//! Explaining a violation: where the search got stuck and why each
//! candidate cannot come next, then shrinking the key's history to a small
//! witness that still cannot be linearized.

use std::time::Instant;

use super::model::{Interner, KOp, Step, MAX_CACHE_ENTRIES};
use super::search::{search, Limits, SearchOutcome, SearchStats};
use super::{Explanation, StuckOp};
use crate::history::Operation;

/// Describes the longest prefix of a violation and why nothing can follow it.
pub(super) fn explain(
    kops: &[KOp],
    ops: &[&Operation],
    values: &Interner,
    prefix: &[usize],
    state: u32,
) -> Explanation {
    let mut in_prefix = vec![false; kops.len()];
    for &i in prefix {
        in_prefix[i] = true;
    }
    let rest: Vec<usize> = (0..kops.len()).filter(|&i| !in_prefix[i]).collect();
    let blocking = rest
        .iter()
        .copied()
        .filter(|&i| kops[i].complete.is_some())
        .min_by_key(|&i| kops[i].complete);
    let horizon = blocking
        .and_then(|i| kops[i].complete)
        .unwrap_or(usize::MAX);
    let shown = |v: u32| values.value(v).to_string();
    let stuck = rest
        .iter()
        .copied()
        .filter(|&i| kops[i].invoke < horizon)
        .map(|i| {
            let k = kops[i];
            let reason = match (k.step, k.step.apply(state)) {
                (Step::Read { seen }, None) => {
                    format!("it read {} but the register holds {}", shown(seen), shown(state))
                }
                (Step::Cas { expected, .. }, None) => format!(
                    "it succeeded, so the register held {}, but it holds {}",
                    shown(expected),
                    shown(state)
                ),
                (Step::CasFailed { expected }, None) => format!(
                    "it failed, so the register did not hold {}, but it does",
                    shown(expected)
                ),
                (_, None) => "the register model rejects it here".to_string(),
                (_, Some(after)) if after == state && k.complete.is_none() => {
                    "its outcome is unknown and it would change nothing here (it may take effect later, or never)"
                        .to_string()
                }
                (_, Some(after)) => format!(
                    "it fits here (the register would then hold {}), but no order of the remaining operations does after it",
                    shown(after)
                ),
            };
            StuckOp {
                op: ops[k.origin].clone(),
                reason,
            }
        })
        .collect();
    Explanation {
        total_ops: kops.len(),
        prefix: prefix
            .iter()
            .map(|&i| ops[kops[i].origin].clone())
            .collect(),
        state: values.value(state).clone(),
        blocking: blocking.map(|i| ops[kops[i].origin].clone()),
        stuck,
        witness: None,
    }
}

/// Search steps (and time) the minimisation may spend.
pub(super) struct Budget {
    pub(super) steps: u64,
    pub(super) deadline: Option<Instant>,
    pub(super) spent: u64,
}

impl Budget {
    pub(super) fn exhausted(&self) -> bool {
        self.spent >= self.steps || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Accounts for work outside the search (about one step an operation).
    pub(super) fn charge(&mut self, work: usize) {
        self.spent = self.spent.saturating_add(work as u64);
    }

    /// Whether `ops` is not linearizable: `None` when the budget ran out.
    pub(super) fn violates(&mut self, ops: &[KOp]) -> Option<bool> {
        self.charge(ops.len());
        if self.exhausted() {
            return None;
        }
        let limits = Limits {
            max_steps: self.steps.saturating_sub(self.spent),
            max_states: MAX_CACHE_ENTRIES,
            deadline: self.deadline,
        };
        let mut stats = SearchStats::default();
        let outcome = search(ops, &limits, &mut stats);
        self.spent += stats.steps;
        match outcome {
            SearchOutcome::Linearizable => Some(false),
            SearchOutcome::Violation { .. } => Some(true),
            SearchOutcome::GaveUp(_) => None,
        }
    }
}

pub(super) struct MinimalWitness {
    pub(super) ops: Vec<KOp>,
    pub(super) cut: Option<usize>,
    pub(super) minimal: bool,
}

/// The history cut just after line `cut`: operations invoked later are
/// dropped, and those completing later become indeterminate (mutations) or
/// are dropped (observers). A linearizable history stays linearizable.
pub(super) fn cut_after(ops: &[KOp], cut: usize) -> Vec<KOp> {
    ops.iter()
        .filter(|o| o.invoke < cut)
        .filter_map(|o| match o.complete {
            Some(done) if done > cut => {
                let step = match o.step {
                    Step::Read { .. } | Step::CasFailed { .. } => return None,
                    Step::Cas { expected, new } => Step::CasUnknown { expected, new },
                    other => other,
                };
                Some(KOp {
                    step,
                    complete: None,
                    weakened: true,
                    ..*o
                })
            }
            _ => Some(*o),
        })
        .collect()
}

/// Whether dropping `ops[i]` keeps every linearizable history linearizable
/// and the witness readable.
///
/// Observers can always go. Dropping a mutation that sets `v` is sound
/// unless some operation that could be linearized while the register holds
/// that `v` depends on it: a read of `v`, a cas expecting `v`, or a failed
/// cas (which might then see the previous value). Such an operation must be
/// able to come after the mutation and before the first definite write or
/// cas invoked after the mutation completes. On top of that, the latest
/// mutation setting a value that a remaining operation reads or expects,
/// invoked before that operation completes, is kept even when dropping it
/// would be sound: without it a witness would show a read of a value nobody
/// wrote, hiding that the value was written and then overwritten.
pub(super) fn removable(ops: &[KOp], i: usize) -> bool {
    let m = ops[i];
    let v = match m.step {
        Step::Read { .. } | Step::CasFailed { .. } => return true,
        Step::Write { value } => value,
        Step::Cas { new, .. } | Step::CasUnknown { new, .. } => new,
    };
    let sets_v = |o: &KOp| match o.step {
        Step::Write { value } => value == v,
        Step::Cas { new, .. } | Step::CasUnknown { new, .. } => new == v,
        Step::Read { .. } | Step::CasFailed { .. } => false,
    };
    let observes_v = |o: &KOp| match o.step {
        Step::Read { seen } => seen == v,
        Step::Cas { expected, .. } | Step::CasUnknown { expected, .. } => expected == v,
        Step::Write { .. } | Step::CasFailed { .. } => false,
    };
    let others = || {
        ops.iter()
            .enumerate()
            .filter(move |&(j, _)| j != i)
            .map(|(_, o)| o)
    };
    // Keep the latest mutation setting `v` invoked before the completion of
    // a remaining operation that reads or expects `v`.
    // That is: no other setter of `v` is invoked after `m` and before the
    // observer completes.
    let next_setter = others()
        .filter(|s| sets_v(s) && s.invoke > m.invoke)
        .map(|s| s.invoke)
        .min()
        .unwrap_or(usize::MAX);
    let latest_source = others().filter(|o| observes_v(o)).any(|o| {
        let horizon = o.complete.unwrap_or(usize::MAX);
        m.invoke < horizon && horizon <= next_setter
    });
    if latest_source {
        return false;
    }
    let window_end = m.complete.map_or(usize::MAX, |done| {
        ops.iter()
            .filter(|o| matches!(o.step, Step::Write { .. } | Step::Cas { .. }) && o.invoke > done)
            .filter_map(|o| o.complete)
            .min()
            .unwrap_or(usize::MAX)
    });
    !others().any(|o| {
        let depends = match o.step {
            Step::CasFailed { expected } => expected != v,
            _ => observes_v(o),
        };
        depends && o.complete.is_none_or(|c| c > m.invoke) && o.invoke < window_end
    })
}

/// Shrinks a non-linearizable key history to a small witness.
pub(super) fn minimise(ops: &[KOp], budget: &mut Budget) -> Option<MinimalWitness> {
    // 1. The earliest cut that is already not linearizable (monotone in the
    //    cut, so binary search). Cutting after the last definite completion
    //    only drops trailing indeterminate operations: still a violation.
    let mut cuts: Vec<usize> = ops.iter().filter_map(|o| o.complete).collect();
    cuts.sort_unstable();
    let last = cuts.len().checked_sub(1)?;
    let (mut lo, mut hi) = (0, last);
    while lo < hi {
        let mid = (lo + hi) / 2;
        budget.charge(ops.len());
        match budget.violates(&cut_after(ops, cuts[mid])) {
            Some(true) => hi = mid,
            Some(false) => lo = mid + 1,
            None if budget.exhausted() => break,
            None => lo = mid + 1,
        }
    }
    let cut = cuts[hi];
    let mut current = cut_after(ops, cut);

    // 2. Drop operations while the rest stays a violation: observers (latest
    //    first), then mutations (earliest first, so the latest write of a
    //    value read later is the one kept). The first pass tries halves,
    //    quarters, ... of the candidates at once (as in delta debugging),
    //    later passes single operations, until a pass changes nothing.
    let universe = ops.iter().map(|o| o.origin + 1).max().unwrap_or(0);
    let mut in_chunk = vec![false; universe];
    let mut minimal = false;
    let mut first_pass = true;
    'passes: loop {
        let mut changed = false;
        let mut conclusive = true;
        for observers in [true, false] {
            let mut candidates: Vec<usize> = current
                .iter()
                .filter(|o| o.step.is_observer() == observers)
                .map(|o| o.origin)
                .collect();
            if observers {
                candidates.reverse();
            }
            let mut size = if first_pass {
                candidates.len().div_ceil(2).max(1)
            } else {
                1
            };
            loop {
                for chunk in candidates.chunks(size) {
                    let trial = if observers {
                        // Observers can always go: drop the chunk at once.
                        budget.charge(current.len());
                        chunk.iter().for_each(|&c| in_chunk[c] = true);
                        let trial: Vec<KOp> = current
                            .iter()
                            .filter(|o| !in_chunk[o.origin])
                            .copied()
                            .collect();
                        chunk.iter().for_each(|&c| in_chunk[c] = false);
                        trial
                    } else {
                        // Mutations one after the other, each checked against
                        // what is left; chunk and history are in invoke order.
                        let mut trial = current.clone();
                        let mut at = 0;
                        for &origin in chunk {
                            while at < trial.len() && trial[at].origin != origin {
                                at += 1;
                            }
                            if at == trial.len() {
                                break;
                            }
                            budget.charge(trial.len());
                            if removable(&trial, at) {
                                trial.remove(at);
                            } else {
                                at += 1;
                            }
                        }
                        trial
                    };
                    if trial.len() == current.len() {
                        continue;
                    }
                    match budget.violates(&trial) {
                        Some(true) => {
                            current = trial;
                            changed = true;
                        }
                        Some(false) => {}
                        None if budget.exhausted() => break 'passes,
                        None => conclusive = false,
                    }
                }
                if size == 1 {
                    break;
                }
                size = size.div_ceil(2);
                current.iter().for_each(|o| in_chunk[o.origin] = true);
                candidates.retain(|&c| in_chunk[c]);
                current.iter().for_each(|o| in_chunk[o.origin] = false);
            }
        }
        if !changed {
            minimal = conclusive;
            break;
        }
        first_pass = false;
    }
    current.sort_by_key(|o| o.invoke);
    Some(MinimalWitness {
        ops: current,
        cut: (hi < last).then_some(cut),
        minimal,
    })
}
