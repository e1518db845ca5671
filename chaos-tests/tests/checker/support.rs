//! Test helpers: a history builder, a simulated atomic register that produces linearizable histories, and a brute-force oracle.

use std::collections::BTreeMap;

use raftmesh_chaos_tests::history::{
    Call, Event, EventType, Function, History, Operation, Outcome,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Builds histories event by event (one event = one line).
#[derive(Debug, Default, Clone)]
pub struct Builder {
    pub events: Vec<Event>,
}

impl Builder {
    pub fn new() -> Self {
        Builder::default()
    }

    fn push(
        &mut self,
        process: u64,
        kind: EventType,
        f: Function,
        key: &str,
        value: Value,
    ) -> &mut Self {
        let time = self.events.len() as u64;
        self.events
            .push(Event::new(process, kind, f, key, value).at(time));
        self
    }

    pub fn invoke_read(&mut self, p: u64, key: &str) -> &mut Self {
        self.push(p, EventType::Invoke, Function::Read, key, Value::Null)
    }

    pub fn invoke_write(&mut self, p: u64, key: &str, v: i64) -> &mut Self {
        self.push(p, EventType::Invoke, Function::Write, key, json!(v))
    }

    pub fn invoke_cas(&mut self, p: u64, key: &str, expected: i64, new: i64) -> &mut Self {
        self.push(
            p,
            EventType::Invoke,
            Function::Cas,
            key,
            json!([expected, new]),
        )
    }

    /// A completion; `value` as in the format (`null` for info).
    pub fn complete(
        &mut self,
        p: u64,
        kind: EventType,
        f: Function,
        key: &str,
        value: Value,
    ) -> &mut Self {
        self.push(p, kind, f, key, value)
    }

    pub fn read_ok(&mut self, p: u64, key: &str, seen: Option<i64>) -> &mut Self {
        self.complete(p, EventType::Ok, Function::Read, key, json!(seen))
    }

    pub fn write_ok(&mut self, p: u64, key: &str, v: i64) -> &mut Self {
        self.complete(p, EventType::Ok, Function::Write, key, json!(v))
    }

    pub fn info(&mut self, p: u64, f: Function, key: &str) -> &mut Self {
        self.complete(p, EventType::Info, f, key, Value::Null)
    }

    /// A whole read seeing `seen`, with no other event in between.
    pub fn read(&mut self, p: u64, key: &str, seen: Option<i64>) -> &mut Self {
        self.invoke_read(p, key).read_ok(p, key, seen)
    }

    /// A whole acknowledged write.
    pub fn write(&mut self, p: u64, key: &str, v: i64) -> &mut Self {
        self.invoke_write(p, key, v).write_ok(p, key, v)
    }

    /// A whole cas, ok or failed.
    pub fn cas(&mut self, p: u64, key: &str, expected: i64, new: i64, ok: bool) -> &mut Self {
        let kind = if ok { EventType::Ok } else { EventType::Fail };
        self.invoke_cas(p, key, expected, new).complete(
            p,
            kind,
            Function::Cas,
            key,
            json!([expected, new]),
        )
    }

    pub fn history(&self) -> History {
        History::from_events(&self.events).expect("builder histories are well formed")
    }

    pub fn jsonl(&self) -> String {
        self.events
            .iter()
            .map(|e| serde_json::to_string(e).expect("events serialize") + "\n")
            .collect()
    }
}

/// Parameters of [`simulate`].
#[derive(Debug, Clone, Copy)]
pub struct Sim {
    pub processes: usize,
    pub ops: usize,
    pub keys: usize,
    /// Values written are drawn from `0..values`.
    pub values: i64,
    /// Probability that an in-flight operation's client crashes (`info`);
    /// a crashed operation that had not yet taken effect may take effect
    /// later, or never.
    pub crash: f64,
    /// Probability that a write is rejected (`fail`) without taking effect.
    pub reject: f64,
}

impl Default for Sim {
    fn default() -> Self {
        Sim {
            processes: 5,
            ops: 200,
            keys: 1,
            values: 5,
            crash: 0.0,
            reject: 0.0,
        }
    }
}

#[derive(Debug, Clone)]
struct SimOp {
    key: String,
    call: Call,
}

#[derive(Debug, Clone)]
enum Slot {
    Idle,
    Invoked(SimOp),
    /// Took effect; the completion is `ok` with `result` (or `fail` for a
    /// failed cas).
    Applied(SimOp, Value, bool),
}

/// The result of a simulation: events and each key's final value.
pub struct Simulated {
    pub builder: Builder,
    pub finals: BTreeMap<String, Value>,
}

fn apply(registers: &mut BTreeMap<String, Value>, op: &SimOp) -> (Value, bool) {
    let register = registers.entry(op.key.clone()).or_insert(Value::Null);
    match &op.call {
        Call::Read => (register.clone(), true),
        Call::Write(v) => {
            *register = v.clone();
            (Value::Null, true)
        }
        Call::Cas { expected, new } => {
            if register == expected {
                *register = new.clone();
                (Value::Null, true)
            } else {
                (Value::Null, false)
            }
        }
    }
}

/// Clients of an atomic register per key: every operation takes effect at
/// one instant between its invoke and its completion, so the history is
/// linearizable by construction.
pub fn simulate(seed: u64, sim: Sim) -> Simulated {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut registers: BTreeMap<String, Value> = BTreeMap::new();
    let mut slots: Vec<(u64, Slot)> = (0..sim.processes).map(|p| (p as u64, Slot::Idle)).collect();
    let mut next_pid = sim.processes as u64;
    let mut zombies: Vec<SimOp> = Vec::new();
    let mut issued = 0;
    let mut builder = Builder::new();
    loop {
        let busy = slots.iter().any(|(_, s)| !matches!(s, Slot::Idle));
        if issued >= sim.ops && !busy {
            break;
        }
        if !zombies.is_empty() && rng.random_bool(0.05) {
            let zombie = zombies.swap_remove(rng.random_range(0..zombies.len()));
            apply(&mut registers, &zombie);
        }
        let i = rng.random_range(0..slots.len());
        let (pid, slot) = slots[i].clone();
        let crash = rng.random_bool(sim.crash);
        let next = match slot {
            Slot::Idle if issued < sim.ops => {
                issued += 1;
                let key = format!("k{}", rng.random_range(0..sim.keys));
                let call = match rng.random_range(0..3) {
                    0 => Call::Read,
                    1 => Call::Write(json!(rng.random_range(0..sim.values))),
                    _ => Call::Cas {
                        expected: json!(rng.random_range(0..sim.values)),
                        new: json!(rng.random_range(0..sim.values)),
                    },
                };
                let value = match &call {
                    Call::Read => Value::Null,
                    Call::Write(v) => v.clone(),
                    Call::Cas { expected, new } => json!([expected, new]),
                };
                builder.push(pid, EventType::Invoke, call.function(), &key, value);
                Slot::Invoked(SimOp { key, call })
            }
            Slot::Idle => Slot::Idle,
            Slot::Invoked(op) if crash => {
                builder.info(pid, op.call.function(), &op.key);
                if !matches!(op.call, Call::Read) {
                    zombies.push(op);
                }
                slots[i].0 = next_pid;
                next_pid += 1;
                Slot::Idle
            }
            Slot::Invoked(op)
                if matches!(op.call, Call::Write(_)) && rng.random_bool(sim.reject) =>
            {
                let Call::Write(v) = &op.call else {
                    unreachable!()
                };
                builder.complete(pid, EventType::Fail, Function::Write, &op.key, v.clone());
                Slot::Idle
            }
            Slot::Invoked(op) => {
                let (result, ok) = apply(&mut registers, &op);
                Slot::Applied(op, result, ok)
            }
            Slot::Applied(op, _, _) if crash => {
                builder.info(pid, op.call.function(), &op.key);
                slots[i].0 = next_pid;
                next_pid += 1;
                Slot::Idle
            }
            Slot::Applied(op, result, ok) => {
                let (kind, value) = match &op.call {
                    Call::Read => (EventType::Ok, result),
                    Call::Write(v) => (EventType::Ok, v.clone()),
                    Call::Cas { expected, new } => (
                        if ok { EventType::Ok } else { EventType::Fail },
                        json!([expected, new]),
                    ),
                };
                builder.complete(pid, kind, op.call.function(), &op.key, value);
                Slot::Idle
            }
        };
        slots[i].1 = next;
    }
    Simulated {
        builder,
        finals: registers,
    }
}

/// An operation as the oracle sees it.
#[derive(Debug, Clone)]
struct OracleOp {
    call: Call,
    outcome: Outcome,
    result: Value,
    invoke: usize,
    /// `None`: unknown outcome, no upper bound, may be left out.
    complete: Option<usize>,
}

/// Brute-force linearizability of one key's operations: tries every order
/// consistent with real time (exponential; for small histories only).
fn oracle_key(ops: &[OracleOp], failed_cas_checked: bool) -> bool {
    fn go(
        ops: &[OracleOp],
        placed: &mut Vec<bool>,
        state: &Value,
        failed_cas_checked: bool,
    ) -> bool {
        let definite_left = (0..ops.len()).any(|i| !placed[i] && ops[i].complete.is_some());
        if !definite_left {
            return true;
        }
        // Earliest completion among the unplaced: only operations invoked
        // before it may come next.
        let horizon = (0..ops.len())
            .filter(|&i| !placed[i])
            .filter_map(|i| ops[i].complete)
            .min()
            .unwrap_or(usize::MAX);
        for i in 0..ops.len() {
            if placed[i] || ops[i].invoke > horizon {
                continue;
            }
            let op = &ops[i];
            let next = match (&op.call, op.outcome) {
                (Call::Read, Outcome::Ok) => (op.result == *state).then(|| state.clone()),
                (Call::Read, _) => Some(state.clone()),
                (Call::Write(_), Outcome::Fail) => Some(state.clone()),
                (Call::Write(v), _) => Some(v.clone()),
                (Call::Cas { expected, new }, Outcome::Ok) => {
                    (expected == state).then(|| new.clone())
                }
                (Call::Cas { expected, .. }, Outcome::Fail) => {
                    (!failed_cas_checked || expected != state).then(|| state.clone())
                }
                (Call::Cas { expected, new }, _) => Some(if expected == state {
                    new.clone()
                } else {
                    state.clone()
                }),
            };
            let Some(next) = next else { continue };
            placed[i] = true;
            let found = go(ops, placed, &next, failed_cas_checked);
            placed[i] = false;
            if found {
                return true;
            }
        }
        false
    }
    let mut placed = vec![false; ops.len()];
    go(ops, &mut placed, &Value::Null, failed_cas_checked)
}

/// Brute-force verdict of a whole history (every key).
pub fn oracle(history: &History, failed_cas_checked: bool) -> bool {
    history.by_key().values().all(|ops| {
        let ops: Vec<OracleOp> = ops
            .iter()
            .filter(|op| !(matches!(op.call, Call::Write(_)) && op.outcome == Outcome::Fail))
            .map(|op: &&Operation| OracleOp {
                call: op.call.clone(),
                outcome: op.outcome,
                result: op.result.clone(),
                invoke: op.invoke_line,
                complete: if op.outcome.is_indeterminate() {
                    None
                } else {
                    op.complete_line
                },
            })
            .collect();
        oracle_key(&ops, failed_cas_checked)
    })
}

/// A history of the given operations alone (`true` = treat as never
/// completed), keeping their relative line order.
pub fn sub_history(ops: &[(Operation, bool)]) -> History {
    let mut lines: Vec<(usize, Event)> = Vec::new();
    for (op, open) in ops {
        let (f, value) = match &op.call {
            Call::Read => (Function::Read, Value::Null),
            Call::Write(v) => (Function::Write, v.clone()),
            Call::Cas { expected, new } => (Function::Cas, json!([expected, new])),
        };
        lines.push((
            op.invoke_line,
            Event::new(
                op.process,
                EventType::Invoke,
                f,
                op.key.clone(),
                value.clone(),
            ),
        ));
        if let (Some(line), false) = (op.complete_line, open) {
            let kind = match op.outcome {
                Outcome::Ok => EventType::Ok,
                Outcome::Fail => EventType::Fail,
                _ => EventType::Info,
            };
            let value = if f == Function::Read {
                op.result.clone()
            } else {
                value
            };
            lines.push((line, Event::new(op.process, kind, f, op.key.clone(), value)));
        }
    }
    lines.sort_by_key(|(line, _)| *line);
    let events: Vec<Event> = lines.into_iter().map(|(_, e)| e).collect();
    History::from_events(&events).expect("a sub-history of a well-formed history is well formed")
}
