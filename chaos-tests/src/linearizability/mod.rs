//! Linearizability checking of compare-and-set register histories: Wing–Gong–Lowe search with memoisation.
//!
//! # Model
//!
//! Every key is an independent compare-and-set register, unset (`null`)
//! initially. Linearizability is compositional (P-compositionality): a
//! history is linearizable iff the sub-history of every key is, so each key
//! is checked on its own.
//!
//! Operations are mapped onto the model as follows:
//!
//! | operation            | model step                                             |
//! |----------------------|--------------------------------------------------------|
//! | `read` ok → v        | allowed iff the register holds v                       |
//! | `write v` ok         | register := v                                          |
//! | `cas [e, n]` ok      | allowed iff the register holds e; register := n        |
//! | `cas [e, n]` fail    | allowed iff the register does *not* hold e (an observation, see [`FailedCas`]) |
//! | `write`/`cas` info   | may take effect at any moment after its invoke, or never |
//! | `read` fail/info     | dropped: no effect, nothing observed                   |
//! | `write` fail         | dropped: it did not take effect                        |
//!
//! An operation with an unknown outcome (`info`, or no completion) has no
//! completion in the search: it may be linearized anywhere after its invoke,
//! including after every other operation, which is how "it never took
//! effect" is represented. An `info` line itself carries no information.
//!
//! # Search
//!
//! The search is Lowe's variant of the Wing & Gong algorithm, as used by the
//! Porcupine checker: invoke and completion events sit in a doubly linked
//! list in real-time order. The search walks the list from its head; at an
//! invoke it tries to linearize that operation next (if the model allows it
//! and the pair *(set of linearized operations, register value)* has not been
//! seen before, the operation is lifted out of the list and the walk
//! restarts at the head); reaching a completion means the operation it
//! completes should have been linearized already, so the search backtracks
//! the last choice. The cache of visited pairs (a bitset and the register
//! value) makes the search polynomial in the number of distinct configurations
//! rather than exponential in the number of interleavings. The search
//! succeeds as soon as every operation with a known outcome is linearized
//! (the remaining `info` operations can then all be placed at the end).
//!
//! Two prunings keep unknown operations from multiplying the configurations,
//! both sound because an unknown operation may be left out or moved later:
//! an unknown operation is only linearized where it changes the register
//! (never as a no-op), and of unknown operations with identical calls the
//! earlier invoked one is always used first.
//!
//! A linearized set is cached as a bitset for keys of up to 256 operations
//! and otherwise as its size `c` plus its symmetric difference with the
//! first `c` operations in invoke order (only the concurrency window and
//! pending unknown operations), which keeps an entry at a few dozen bytes
//! however long the history.
//!
//! Proving a violation needs every configuration before it explored, so the
//! cost grows with concurrency and with the position of the violation:
//! histories with ~10 concurrent clients and a violation thousands of
//! operations in can take tens of millions of configurations.
//!
//! # Bounds
//!
//! [`CheckOptions`] bounds the number of search steps and cached
//! configurations per key, and the wall time of a whole check; hitting a
//! bound gives [`Verdict::Unknown`] rather than a wrong answer or a hang.
//!
//! # Explanations
//!
//! For a violation, [`Explanation`] reports the longest linearizable prefix
//! the search reached and, for each operation that could come next there, why
//! it cannot. Then (within a step budget) a minimisation shrinks the history
//! of the offending key to a small set of operations that still cannot be
//! linearized, using only transformations that keep every linearizable
//! history linearizable, so the small set is a genuine witness: cutting the
//! history at the earliest completion that already makes it
//! non-linearizable, and removing operations one at a time (reads and failed
//! cas always; writes and cas only when no remaining operation could have
//! observed the value they set).
//!
//! # Code
//!
//! This file is the API: options, verdicts, explanations, and the check of
//! a whole history key by key. `model.rs` turns one key's operations into
//! register steps; `search.rs` is the search and its cache; `minimise.rs`
//! explains a violation and shrinks it to a witness.

use std::fmt;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::history::{History, Operation};

mod minimise;
mod model;
mod search;

use minimise::{explain, minimise, Budget};
use model::{prepare, Interner, MAX_CACHE_ENTRIES};
use search::{search, Limits, SearchOutcome, SearchStats};

/// How a failed `cas` is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailedCas {
    /// A failed cas observed that, at some moment between its invoke and its
    /// completion, the register did not hold the expected value (Jepsen and
    /// Porcupine semantics). This is what the Jepsen etcd verdicts require.
    #[default]
    Check,
    /// Failed cas operations are dropped like failed writes (weaker: they
    /// are then never evidence of a violation).
    Ignore,
}

/// Bounds and switches of a check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Search steps allowed per key (one step visits one list entry).
    pub max_steps: u64,
    /// Cached (linearized set, register value) configurations allowed per
    /// key; bounds memory: an entry takes about 30 bytes plus 4 per
    /// operation that is out of invoke order in it (concurrent or pending
    /// unknown operations).
    pub max_states: usize,
    /// Wall-time bound of the whole check, minimisation included.
    pub timeout: Option<Duration>,
    /// How failed cas operations are treated.
    pub failed_cas: FailedCas,
    /// Whether to minimise the operations of a violation.
    pub minimise: bool,
    /// Total search steps the minimisation may spend.
    pub minimise_steps: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_steps: 200_000_000,
            max_states: 20_000_000,
            timeout: None,
            failed_cas: FailedCas::Check,
            minimise: true,
            minimise_steps: 5_000_000,
        }
    }
}

/// The result of a check.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every key's sub-history is linearizable.
    Linearizable,
    /// The sub-history of `key` is not linearizable.
    NotLinearizable {
        /// The offending key.
        key: String,
        /// Which operations cannot be ordered, and why.
        explanation: Box<Explanation>,
    },
    /// A bound was hit before an answer was found.
    Unknown {
        /// Which bound, for which key.
        reason: String,
    },
}

impl Verdict {
    /// `linearizable`, `not-linearizable` or `unknown`.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Linearizable => "linearizable",
            Verdict::NotLinearizable { .. } => "not-linearizable",
            Verdict::Unknown { .. } => "unknown",
        }
    }

    /// Whether the verdict is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Operations of the key that the search considered (dropped ones,
    /// such as failed writes and unanswered reads, excluded).
    pub total_ops: usize,
    /// The longest linearizable prefix the search reached, in linearization
    /// order.
    pub prefix: Vec<Operation>,
    /// The register value after that prefix.
    pub state: Value,
    /// The first operation to complete among those not in the prefix: it,
    /// or an operation invoked before its completion, must come next.
    pub blocking: Option<Operation>,
    /// The operations that could come next after the prefix, each with the
    /// reason it cannot.
    pub stuck: Vec<StuckOp>,
    /// A small sub-history that is already not linearizable, if the
    /// minimisation ran.
    pub witness: Option<Witness>,
}

/// An operation that could not be linearized after the longest prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct StuckOp {
    /// The operation.
    pub op: Operation,
    /// Why it cannot come next.
    pub reason: String,
}

/// A minimised set of operations that cannot be linearized together.
#[derive(Debug, Clone, PartialEq)]
pub struct Witness {
    /// The operations, in invoke order.
    pub ops: Vec<WitnessOp>,
    /// The history was cut just after this line: later invokes are dropped.
    pub cut_line: Option<usize>,
    /// Whether removing any single removable operation was tried and each
    /// made the rest linearizable (false when the budget ran out first).
    pub minimal: bool,
}

/// An operation of a [`Witness`].
#[derive(Debug, Clone, PartialEq)]
pub struct WitnessOp {
    /// The operation.
    pub op: Operation,
    /// Its completion lies after the cut, so it counts as indeterminate.
    pub indeterminate: bool,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(witness) = &self.witness {
            write!(
                f,
                "{} cannot be linearized together{}",
                plural(witness.ops.len(), "operation"),
                if witness.minimal {
                    " (dropping any one that can soundly be dropped makes the rest linearizable)"
                } else {
                    " (minimisation budget exhausted: maybe not minimal)"
                }
            )?;
            if let Some(cut) = witness.cut_line {
                write!(f, "; history cut after line {cut}")?;
            }
            writeln!(f, ":")?;
            for w in witness.ops.iter().take(MAX_SHOWN) {
                write!(f, "  {}", w.op)?;
                if w.indeterminate {
                    write!(f, " [completes after the cut: outcome treated as unknown]")?;
                }
                writeln!(f)?;
            }
            if witness.ops.len() > MAX_SHOWN {
                writeln!(f, "  ... and {} more", witness.ops.len() - MAX_SHOWN)?;
            }
        }
        writeln!(
            f,
            "longest linearizable prefix: {} of {} operations, after which the register holds {}",
            self.prefix.len(),
            self.total_ops,
            self.state
        )?;
        if let Some(last) = self.prefix.last() {
            writeln!(f, "  last linearized: {last}")?;
        }
        if !self.prefix.is_empty() {
            let skip = self.prefix.len().saturating_sub(MAX_SHOWN);
            let lines: Vec<String> = self.prefix[skip..]
                .iter()
                .map(|op| op.invoke_line.to_string())
                .collect();
            let elided = if skip > 0 {
                format!("... ({skip} earlier) ")
            } else {
                String::new()
            };
            writeln!(
                f,
                "  prefix order (invoke lines): {elided}{}",
                lines.join(" ")
            )?;
        }
        if let Some(blocking) = &self.blocking {
            writeln!(
                f,
                "then {blocking} must be linearized before its completion, but none of the {} that could come next can:",
                plural(self.stuck.len(), "operation")
            )?;
        }
        for stuck in self.stuck.iter().take(MAX_SHOWN) {
            writeln!(f, "  {}: {}", stuck.op, stuck.reason)?;
        }
        if self.stuck.len() > MAX_SHOWN {
            writeln!(f, "  ... and {} more", self.stuck.len() - MAX_SHOWN)?;
        }
        Ok(())
    }
}

/// Longest list of operations an explanation prints.
const MAX_SHOWN: usize = 50;

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Counters of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Keys checked.
    pub keys: usize,
    /// Operations given to the search (all keys).
    pub ops: usize,
    /// Search steps (all keys, minimisation excluded).
    pub steps: u64,
    /// Configurations cached (all keys, minimisation excluded).
    pub states: usize,
    /// Search steps spent minimising a violation.
    pub minimise_steps: u64,
}

/// Checks every key of `history`.
pub fn check_history(history: &History, options: &CheckOptions) -> Verdict {
    check_history_with_stats(history, options).0
}

/// Checks every key of `history`, with counters.
pub fn check_history_with_stats(
    history: &History,
    options: &CheckOptions,
) -> (Verdict, CheckStats) {
    // A timeout too large to represent is no timeout.
    let deadline = options.timeout.and_then(|t| Instant::now().checked_add(t));
    let limits = Limits {
        max_steps: options.max_steps,
        max_states: options.max_states.min(MAX_CACHE_ENTRIES),
        deadline,
    };
    let mut stats = CheckStats::default();
    let mut unknown = Vec::new();
    for (key, ops) in history.by_key() {
        let mut values = Interner::default();
        let kops = prepare(&ops, &mut values, options.failed_cas);
        stats.keys += 1;
        stats.ops += kops.len();
        let mut run = SearchStats::default();
        let outcome = search(&kops, &limits, &mut run);
        stats.steps += run.steps;
        stats.states += run.states;
        match outcome {
            SearchOutcome::Linearizable => {}
            SearchOutcome::Violation { prefix, state } => {
                let mut explanation = explain(&kops, &ops, &values, &prefix, state);
                if options.minimise {
                    let mut budget = Budget {
                        steps: options.minimise_steps,
                        deadline,
                        spent: 0,
                    };
                    explanation.witness = minimise(&kops, &mut budget).map(|w| Witness {
                        ops: w
                            .ops
                            .iter()
                            .map(|k| WitnessOp {
                                op: ops[k.origin].clone(),
                                indeterminate: k.weakened,
                            })
                            .collect(),
                        cut_line: w.cut,
                        minimal: w.minimal,
                    });
                    stats.minimise_steps += budget.spent;
                }
                let verdict = Verdict::NotLinearizable {
                    key: key.to_string(),
                    explanation: Box::new(explanation),
                };
                return (verdict, stats);
            }
            SearchOutcome::GaveUp(reason) => unknown.push(format!(
                "key {key:?}: {reason} ({} steps, {} states cached, {} operations)",
                run.steps,
                run.states,
                kops.len()
            )),
        }
    }
    if unknown.is_empty() {
        (Verdict::Linearizable, stats)
    } else {
        (
            Verdict::Unknown {
                reason: unknown.join("; "),
            },
            stats,
        )
    }
}

#[cfg(test)]
mod tests;
