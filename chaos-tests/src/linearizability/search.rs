//! The Wing–Gong–Lowe search with its cache of visited configurations
//! (see the module doc of `linearizability` for the algorithm).

use std::collections::HashMap;
use std::time::Instant;

use super::model::{KOp, Step};

/// Bounds of one search.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_steps: u64,
    pub(super) max_states: usize,
    pub(super) deadline: Option<Instant>,
}

#[derive(Debug, Default)]
pub(super) struct SearchStats {
    pub(super) steps: u64,
    pub(super) states: usize,
}

#[derive(Debug)]
pub(super) enum SearchOutcome {
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
pub(super) struct LinearizedSet {
    pub(super) count: u32,
    pub(super) diff: Vec<u32>,
}

impl LinearizedSet {
    pub(super) fn toggle(&mut self, x: u32) {
        match self.diff.binary_search(&x) {
            Ok(at) => {
                self.diff.remove(at);
            }
            Err(at) => self.diff.insert(at, x),
        }
    }

    /// Adds operation `op` (not in the set).
    pub(super) fn insert(&mut self, op: u32) {
        self.toggle(op);
        self.toggle(self.count);
        self.count += 1;
    }

    /// Removes operation `op` (in the set).
    pub(super) fn remove(&mut self, op: u32) {
        self.count -= 1;
        self.toggle(self.count);
        self.toggle(op);
    }
}

/// Histories of a key up to this many operations use a plain bitset for
/// the linearized set (cheaper to update and hash than [`LinearizedSet`]).
pub(super) const BITSET_MAX_OPS: usize = 256;

/// The linearized set of the current configuration.
#[derive(Debug)]
pub(super) enum Linearized {
    /// One bit an operation.
    Bits(Vec<u32>),
    /// Count and difference with the prefix.
    Sparse(LinearizedSet),
}

impl Linearized {
    pub(super) fn new(ops: usize) -> Self {
        if ops <= BITSET_MAX_OPS {
            Linearized::Bits(vec![0; ops.div_ceil(32)])
        } else {
            Linearized::Sparse(LinearizedSet::default())
        }
    }

    #[inline]
    pub(super) fn insert(&mut self, op: u32) {
        match self {
            Linearized::Bits(bits) => bits[(op / 32) as usize] |= 1 << (op % 32),
            Linearized::Sparse(set) => set.insert(op),
        }
    }

    #[inline]
    pub(super) fn remove(&mut self, op: u32) {
        match self {
            Linearized::Bits(bits) => bits[(op / 32) as usize] &= !(1 << (op % 32)),
            Linearized::Sparse(set) => set.remove(op),
        }
    }

    /// The cache key: a count and a word sequence.
    #[inline]
    pub(super) fn key(&self) -> (u32, &[u32]) {
        match self {
            Linearized::Bits(bits) => (0, bits),
            Linearized::Sparse(set) => (set.count, &set.diff),
        }
    }
}

/// A set of (linearized set, register value) configurations: open
/// addressing over an arena holding, per entry, `[state, count, words.len(),
/// words...]` (see [`Linearized::key`]).
pub(super) struct StateCache {
    pub(super) arena: Vec<u32>,
    pub(super) len: usize,
    /// 0 = empty, otherwise the entry's arena offset + 1.
    pub(super) slots: Vec<usize>,
}

impl StateCache {
    pub(super) fn new() -> Self {
        StateCache {
            arena: Vec::new(),
            len: 0,
            slots: vec![0; 1 << 12],
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(super) fn hash(state: u32, count: u32, diff: &[u32]) -> usize {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut h = (u64::from(state) << 32 | u64::from(count)).wrapping_mul(K);
        for &x in diff {
            h = (h.rotate_left(23) ^ u64::from(x)).wrapping_mul(K);
        }
        h ^= h >> 31;
        h = h.wrapping_mul(0xd6e8_feb8_6659_fd93);
        (h ^ (h >> 32)) as usize
    }

    pub(super) fn entry(&self, offset: usize) -> (u32, u32, &[u32]) {
        let len = self.arena[offset + 2] as usize;
        (
            self.arena[offset],
            self.arena[offset + 1],
            &self.arena[offset + 3..offset + 3 + len],
        )
    }

    /// Inserts a configuration; false if it was present already.
    pub(super) fn insert(&mut self, set: &Linearized, state: u32) -> bool {
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

    pub(super) fn grow(&mut self) {
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
pub(super) fn search(ops: &[KOp], limits: &Limits, stats: &mut SearchStats) -> SearchOutcome {
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
