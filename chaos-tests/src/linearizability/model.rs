//! The model: one key's operations as register steps (reads, writes,
//! compare-and-sets, with unknown outcomes), values interned as small
//! integers, in the real-time order the search walks.

use serde_json::Value;
use std::collections::HashMap;

use super::FailedCas;
use crate::history::{Call, Operation, Outcome};

/// Cache entries are addressed with `u32` indices.
pub(super) const MAX_CACHE_ENTRIES: usize = (u32::MAX - 1) as usize;

/// Register values interned as small integers; `null` (unset) is 0.
#[derive(Debug)]
pub(super) struct Interner {
    pub(super) ids: HashMap<String, u32>,
    pub(super) values: Vec<Value>,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            ids: HashMap::from([(Value::Null.to_string(), 0)]),
            values: vec![Value::Null],
        }
    }
}

impl Interner {
    pub(super) fn id(&mut self, value: &Value) -> u32 {
        // serde_json prints a Value canonically (object keys sorted), so equal
        // values print equally.
        let next = self.values.len() as u32;
        let id = *self.ids.entry(value.to_string()).or_insert(next);
        if id == next {
            self.values.push(value.clone());
        }
        id
    }

    pub(super) fn value(&self, id: u32) -> &Value {
        &self.values[id as usize]
    }
}

/// A model step of the compare-and-set register (values interned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Step {
    /// A read that saw `seen`.
    Read { seen: u32 },
    /// A write (known or unknown outcome: it always may take effect).
    Write { value: u32 },
    /// A cas that succeeded.
    Cas { expected: u32, new: u32 },
    /// A cas that failed: the register did not hold `expected`.
    CasFailed { expected: u32 },
    /// A cas with unknown outcome.
    CasUnknown { expected: u32, new: u32 },
}

impl Step {
    /// The register after the step from `state`, or `None` if the step's
    /// observation contradicts `state`.
    #[inline]
    pub(super) fn apply(self, state: u32) -> Option<u32> {
        match self {
            Step::Read { seen } => (seen == state).then_some(state),
            Step::Write { value } => Some(value),
            Step::Cas { expected, new } => (expected == state).then_some(new),
            Step::CasFailed { expected } => (expected != state).then_some(state),
            Step::CasUnknown { expected, new } => Some(if expected == state { new } else { state }),
        }
    }

    /// Reads and failed cas observe the register without changing it.
    pub(super) fn is_observer(self) -> bool {
        matches!(self, Step::Read { .. } | Step::CasFailed { .. })
    }
}

/// An operation of one key as the search sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KOp {
    pub(super) step: Step,
    /// Invoke position (line).
    pub(super) invoke: usize,
    /// Completion position (line); `None` for an unknown outcome.
    pub(super) complete: Option<usize>,
    /// Index into the key's operations.
    pub(super) origin: usize,
    /// Made indeterminate by a cut of the minimisation.
    pub(super) weakened: bool,
}

/// Maps a key's operations onto model steps, dropping those that neither
/// take effect nor observe anything.
pub(super) fn prepare(
    ops: &[&Operation],
    values: &mut Interner,
    failed_cas: FailedCas,
) -> Vec<KOp> {
    let mut kops = Vec::with_capacity(ops.len());
    for (origin, op) in ops.iter().enumerate() {
        let step = match (&op.call, op.outcome) {
            (Call::Read, Outcome::Ok) => Step::Read {
                seen: values.id(&op.result),
            },
            (Call::Read, _) | (Call::Write(_), Outcome::Fail) => continue,
            (Call::Write(v), _) => Step::Write {
                value: values.id(v),
            },
            (Call::Cas { expected, new }, Outcome::Ok) => Step::Cas {
                expected: values.id(expected),
                new: values.id(new),
            },
            (Call::Cas { expected, .. }, Outcome::Fail) => match failed_cas {
                FailedCas::Check => Step::CasFailed {
                    expected: values.id(expected),
                },
                FailedCas::Ignore => continue,
            },
            (Call::Cas { expected, new }, Outcome::Info | Outcome::Pending) => Step::CasUnknown {
                expected: values.id(expected),
                new: values.id(new),
            },
        };
        let complete = if op.outcome.is_indeterminate() {
            None
        } else {
            op.complete_line
        };
        kops.push(KOp {
            step,
            invoke: op.invoke_line,
            complete,
            origin,
            weakened: false,
        });
    }
    kops
}
