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

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::history::{Call, History, Operation, Outcome};

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

/// Cache entries are addressed with `u32` indices.
const MAX_CACHE_ENTRIES: usize = (u32::MAX - 1) as usize;

/// Register values interned as small integers; `null` (unset) is 0.
#[derive(Debug)]
struct Interner {
    ids: HashMap<String, u32>,
    values: Vec<Value>,
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
    fn id(&mut self, value: &Value) -> u32 {
        // serde_json prints a Value canonically (object keys sorted), so equal
        // values print equally.
        let next = self.values.len() as u32;
        let id = *self.ids.entry(value.to_string()).or_insert(next);
        if id == next {
            self.values.push(value.clone());
        }
        id
    }

    fn value(&self, id: u32) -> &Value {
        &self.values[id as usize]
    }
}

/// A model step of the compare-and-set register (values interned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Step {
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
    fn apply(self, state: u32) -> Option<u32> {
        match self {
            Step::Read { seen } => (seen == state).then_some(state),
            Step::Write { value } => Some(value),
            Step::Cas { expected, new } => (expected == state).then_some(new),
            Step::CasFailed { expected } => (expected != state).then_some(state),
            Step::CasUnknown { expected, new } => Some(if expected == state { new } else { state }),
        }
    }

    /// Reads and failed cas observe the register without changing it.
    fn is_observer(self) -> bool {
        matches!(self, Step::Read { .. } | Step::CasFailed { .. })
    }
}

/// An operation of one key as the search sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KOp {
    step: Step,
    /// Invoke position (line).
    invoke: usize,
    /// Completion position (line); `None` for an unknown outcome.
    complete: Option<usize>,
    /// Index into the key's operations.
    origin: usize,
    /// Made indeterminate by a cut of the minimisation.
    weakened: bool,
}

/// Maps a key's operations onto model steps, dropping those that neither
/// take effect nor observe anything.
fn prepare(ops: &[&Operation], values: &mut Interner, failed_cas: FailedCas) -> Vec<KOp> {
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

/// Bounds of one search.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_steps: u64,
    max_states: usize,
    deadline: Option<Instant>,
}

#[derive(Debug, Default)]
struct SearchStats {
    steps: u64,
    states: usize,
}

#[derive(Debug)]
enum SearchOutcome {
    Linearizable,
    /// No linearization exists; `prefix` (indices into the search's
    /// operations, in order) is the longest linearizable prefix found and
    /// `state` the register after it.
    Violation {
        prefix: Vec<usize>,
        state: u32,
    },
    GaveUp(String),
}

/// The set of linearized operations of a configuration, encoded compactly
/// for long histories: operations are numbered in invoke order, so the set
/// is nearly the prefix `0..count` of the first `count` operations. It is
/// stored as `count` and the symmetric difference with that prefix (`diff`,
/// sorted), which holds only the operations of the current concurrency
/// window and the unknown ones still pending: a few words instead of a
/// bitset of the whole history.
#[derive(Debug, Default)]
struct LinearizedSet {
    count: u32,
    diff: Vec<u32>,
}

impl LinearizedSet {
    fn toggle(&mut self, x: u32) {
        match self.diff.binary_search(&x) {
            Ok(at) => {
                self.diff.remove(at);
            }
            Err(at) => self.diff.insert(at, x),
        }
    }

    /// Adds operation `op` (not in the set).
    fn insert(&mut self, op: u32) {
        self.toggle(op);
        self.toggle(self.count);
        self.count += 1;
    }

    /// Removes operation `op` (in the set).
    fn remove(&mut self, op: u32) {
        self.count -= 1;
        self.toggle(self.count);
        self.toggle(op);
    }
}

/// Histories of a key up to this many operations use a plain bitset for
/// the linearized set (cheaper to update and hash than [`LinearizedSet`]).
const BITSET_MAX_OPS: usize = 256;

/// The linearized set of the current configuration.
#[derive(Debug)]
enum Linearized {
    /// One bit an operation.
    Bits(Vec<u32>),
    /// Count and difference with the prefix.
    Sparse(LinearizedSet),
}

impl Linearized {
    fn new(ops: usize) -> Self {
        if ops <= BITSET_MAX_OPS {
            Linearized::Bits(vec![0; ops.div_ceil(32)])
        } else {
            Linearized::Sparse(LinearizedSet::default())
        }
    }

    #[inline]
    fn insert(&mut self, op: u32) {
        match self {
            Linearized::Bits(bits) => bits[(op / 32) as usize] |= 1 << (op % 32),
            Linearized::Sparse(set) => set.insert(op),
        }
    }

    #[inline]
    fn remove(&mut self, op: u32) {
        match self {
            Linearized::Bits(bits) => bits[(op / 32) as usize] &= !(1 << (op % 32)),
            Linearized::Sparse(set) => set.remove(op),
        }
    }

    /// The cache key: a count and a word sequence.
    #[inline]
    fn key(&self) -> (u32, &[u32]) {
        match self {
            Linearized::Bits(bits) => (0, bits),
            Linearized::Sparse(set) => (set.count, &set.diff),
        }
    }
}

/// A set of (linearized set, register value) configurations: open
/// addressing over an arena holding, per entry, `[state, count, words.len(),
/// words...]` (see [`Linearized::key`]).
struct StateCache {
    arena: Vec<u32>,
    len: usize,
    /// 0 = empty, otherwise the entry's arena offset + 1.
    slots: Vec<usize>,
}

impl StateCache {
    fn new() -> Self {
        StateCache {
            arena: Vec::new(),
            len: 0,
            slots: vec![0; 1 << 12],
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn hash(state: u32, count: u32, diff: &[u32]) -> usize {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut h = (u64::from(state) << 32 | u64::from(count)).wrapping_mul(K);
        for &x in diff {
            h = (h.rotate_left(23) ^ u64::from(x)).wrapping_mul(K);
        }
        h ^= h >> 31;
        h = h.wrapping_mul(0xd6e8_feb8_6659_fd93);
        (h ^ (h >> 32)) as usize
    }

    fn entry(&self, offset: usize) -> (u32, u32, &[u32]) {
        let len = self.arena[offset + 2] as usize;
        (
            self.arena[offset],
            self.arena[offset + 1],
            &self.arena[offset + 3..offset + 3 + len],
        )
    }

    /// Inserts a configuration; false if it was present already.
    fn insert(&mut self, set: &Linearized, state: u32) -> bool {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let (count, words) = set.key();
        let mask = self.slots.len() - 1;
        let mut i = Self::hash(state, count, words) & mask;
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                self.slots[i] = self.arena.len() + 1;
                // words.len() <= operations of a key, which fit in u32
                // (they are numbered with u32).
                self.arena
                    .extend_from_slice(&[state, count, words.len() as u32]);
                self.arena.extend_from_slice(words);
                self.len += 1;
                return true;
            }
            if self.entry(slot - 1) == (state, count, words) {
                return false;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let size = self.slots.len() * 2;
        let mask = size - 1;
        let mut slots = vec![0usize; size];
        let mut offset = 0;
        while offset < self.arena.len() {
            let (state, count, diff) = self.entry(offset);
            let mut i = Self::hash(state, count, diff) & mask;
            while slots[i] != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = offset + 1;
            offset += 3 + diff.len();
        }
        self.slots = slots;
    }
}

/// Wing–Gong–Lowe search over one key's operations.
fn search(ops: &[KOp], limits: &Limits, stats: &mut SearchStats) -> SearchOutcome {
    let n = ops.len();
    let mut remaining_definite = ops.iter().filter(|o| o.complete.is_some()).count();
    if remaining_definite == 0 {
        return SearchOutcome::Linearizable;
    }
    debug_assert!(
        ops.windows(2).all(|w| w[0].invoke < w[1].invoke),
        "ops in invoke order"
    );
    if u32::try_from(n).is_err() {
        return SearchOutcome::GaveUp(format!("{n} operations on one key are too many"));
    }

    // The event list: node 0 is the head, nodes 1..=2n the events in
    // real-time order, node 2n+1 the tail. Unknown completions sort last.
    let mut events: Vec<(usize, usize, usize, bool)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke, 0, i, true));
        events.push((op.complete.unwrap_or(usize::MAX), i + 1, i, false));
    }
    events.sort_unstable();
    let tail = 2 * n + 1;
    let mut next: Vec<usize> = (1..=tail + 1).collect();
    let mut prev: Vec<usize> = (0..=tail).map(|i| i.saturating_sub(1)).collect();
    let mut node_op = vec![0usize; tail + 1];
    let mut node_is_call = vec![false; tail + 1];
    let mut return_node = vec![0usize; n];
    for (pos, &(_, _, op, is_call)) in events.iter().enumerate() {
        let node = pos + 1;
        node_op[node] = op;
        node_is_call[node] = is_call;
        if !is_call {
            return_node[op] = node;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = nx;
        prev[nx] = p;
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = x;
        prev[nx] = x;
    };

    let mut linearized = Linearized::new(n);
    let mut cache = StateCache::new();
    // (call node, register before) of each linearized operation.
    let mut stack: Vec<(usize, u32)> = Vec::with_capacity(n);
    // Whether each operation is linearized, and for an unknown operation
    // the previous unknown operation with the same step (see below).
    let mut done = vec![false; n];
    let mut twin_before: Vec<Option<usize>> = vec![None; n];
    let mut last_twin: HashMap<Step, usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate().filter(|(_, o)| o.complete.is_none()) {
        twin_before[i] = last_twin.insert(op.step, i);
    }
    let mut best: Vec<usize> = Vec::new();
    let mut best_state = 0u32;
    let mut state = 0u32;
    let mut entry = next[0];
    let mut steps = 0u64;

    let outcome = loop {
        if remaining_definite == 0 {
            break SearchOutcome::Linearizable;
        }
        steps += 1;
        if steps > limits.max_steps {
            break SearchOutcome::GaveUp(format!("step limit of {} reached", limits.max_steps));
        }
        if steps & 0x3ff == 0 {
            if let Some(deadline) = limits.deadline {
                if Instant::now() >= deadline {
                    break SearchOutcome::GaveUp("time limit reached".to_string());
                }
            }
        }
        if entry != tail && node_is_call[entry] {
            let op = node_op[entry];
            let useful = match ops[op].complete {
                Some(_) => true,
                // An unknown operation that would change nothing here can as
                // well be left out; of identical unknown operations, the
                // earlier invoked ones are used first.
                None => {
                    twin_before[op].is_none_or(|twin| done[twin])
                        && ops[op].step.apply(state).is_some_and(|s| s != state)
                }
            };
            if let Some(new_state) = ops[op].step.apply(state).filter(|_| useful) {
                if cache.len() >= limits.max_states {
                    break SearchOutcome::GaveUp(format!(
                        "state cache limit of {} entries reached",
                        limits.max_states
                    ));
                }
                // Operations of a key are numbered with u32 (checked on entry).
                linearized.insert(op as u32);
                if cache.insert(&linearized, new_state) {
                    done[op] = true;
                    stack.push((entry, state));
                    state = new_state;
                    unlink(&mut next, &mut prev, entry);
                    unlink(&mut next, &mut prev, return_node[op]);
                    if ops[op].complete.is_some() {
                        remaining_definite -= 1;
                    }
                    if stack.len() > best.len() {
                        best = stack.iter().map(|&(node, _)| node_op[node]).collect();
                        best_state = state;
                    }
                    entry = next[0];
                    continue;
                }
                linearized.remove(op as u32);
            }
            entry = next[entry];
        } else {
            // A completion (or the tail): the last choice leads nowhere.
            let Some((call, before)) = stack.pop() else {
                break SearchOutcome::Violation {
                    prefix: best,
                    state: best_state,
                };
            };
            let op = node_op[call];
            relink(&mut next, &mut prev, return_node[op]);
            relink(&mut next, &mut prev, call);
            linearized.remove(op as u32);
            done[op] = false;
            if ops[op].complete.is_some() {
                remaining_definite += 1;
            }
            state = before;
            entry = next[call];
        }
    };
    stats.steps += steps;
    stats.states += cache.len();
    outcome
}

/// Describes the longest prefix of a violation and why nothing can follow it.
fn explain(
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
struct Budget {
    steps: u64,
    deadline: Option<Instant>,
    spent: u64,
}

impl Budget {
    fn exhausted(&self) -> bool {
        self.spent >= self.steps || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Accounts for work outside the search (about one step an operation).
    fn charge(&mut self, work: usize) {
        self.spent = self.spent.saturating_add(work as u64);
    }

    /// Whether `ops` is not linearizable: `None` when the budget ran out.
    fn violates(&mut self, ops: &[KOp]) -> Option<bool> {
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

struct MinimalWitness {
    ops: Vec<KOp>,
    cut: Option<usize>,
    minimal: bool,
}

/// The history cut just after line `cut`: operations invoked later are
/// dropped, and those completing later become indeterminate (mutations) or
/// are dropped (observers). A linearizable history stays linearizable.
fn cut_after(ops: &[KOp], cut: usize) -> Vec<KOp> {
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
fn removable(ops: &[KOp], i: usize) -> bool {
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
fn minimise(ops: &[KOp], budget: &mut Budget) -> Option<MinimalWitness> {
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

#[cfg(test)]
mod tests;
