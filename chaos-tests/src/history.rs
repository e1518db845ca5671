//! Jepsen-style operation histories: the JSONL format, its parser and a writer.
//!
//! A history is a sequence of events, one JSON object a line, in real-time
//! order:
//!
//! ```text
//! {"process":2,"type":"invoke","f":"cas","key":"r","value":[3,0]}
//! {"process":2,"type":"ok","f":"cas","key":"r","value":[3,0]}
//! ```
//!
//! - `type` is `invoke` (a call starts) or one completion of the same
//!   process's pending call: `ok` (it took effect; a read carries the value
//!   seen, `null` when the key was unset), `fail` (it did not take effect) or
//!   `info` (unknown: it may take effect at any moment after its invoke, even
//!   after the `info` line). An invoke with no completion counts as `info`.
//! - `f` is `read` (value `null` on invoke), `write` (the value written) or
//!   `cas` (value `[expected, new]`).
//! - `key` names the register (a string or an integer); each key is an
//!   independent register, unset (`null`) initially. A missing key is the
//!   empty string.
//! - `time` (optional, nanoseconds) is recorded by [`HistoryWriter`]; the
//!   checker orders events by line, not by time.
//!
//! [`History::parse_str`] pairs invokes with completions into [`Operation`]s
//! and rejects malformed lines with an error naming the line number.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The `type` of a history line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// A call starts.
    Invoke,
    /// The call completed and took effect.
    Ok,
    /// The call completed and did not take effect.
    Fail,
    /// The call's outcome is unknown (for example it timed out).
    Info,
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventType::Invoke => "invoke",
            EventType::Ok => "ok",
            EventType::Fail => "fail",
            EventType::Info => "info",
        })
    }
}

/// The `f` of a history line: which register function is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// Read the register.
    Read,
    /// Overwrite the register.
    Write,
    /// Compare-and-set: `[expected, new]`.
    Cas,
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Function::Read => "read",
            Function::Write => "write",
            Function::Cas => "cas",
        })
    }
}

/// One line of a history file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The client process; a process has at most one pending call.
    pub process: u64,
    /// Invoke or one of the completions.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The register function.
    pub f: Function,
    /// The register (key) the call is about.
    #[serde(default, deserialize_with = "key_from_json")]
    pub key: String,
    /// The call's argument (on invoke) or result (on completion).
    #[serde(default)]
    pub value: Value,
    /// When the event happened, in nanoseconds since the recording started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
}

impl Event {
    /// An event without a time stamp.
    pub fn new(
        process: u64,
        kind: EventType,
        f: Function,
        key: impl Into<String>,
        value: Value,
    ) -> Self {
        Event {
            process,
            kind,
            f,
            key: key.into(),
            value,
            time: None,
        }
    }

    /// The same event stamped with `time` (nanoseconds).
    #[must_use]
    pub fn at(mut self, time: u64) -> Self {
        self.time = Some(time);
        self
    }
}

/// Accepts a key given as a JSON string or integer.
fn key_from_json<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Value::Null => Ok(String::new()),
        other => Err(D::Error::custom(format!(
            "key must be a string or an integer, got {other}"
        ))),
    }
}

/// What an operation calls, with its arguments (from its invoke line).
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// Read the register.
    Read,
    /// Write a value.
    Write(Value),
    /// Set the register to `new` if it holds `expected`.
    Cas {
        /// The value the register must hold.
        expected: Value,
        /// The value it is set to.
        new: Value,
    },
}

impl Call {
    /// The register function called.
    pub fn function(&self) -> Function {
        match self {
            Call::Read => Function::Read,
            Call::Write(_) => Function::Write,
            Call::Cas { .. } => Function::Cas,
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Read => f.write_str("read"),
            Call::Write(v) => write!(f, "write {v}"),
            Call::Cas { expected, new } => write!(f, "cas {expected}->{new}"),
        }
    }
}

/// How an operation completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect (`ok`).
    Ok,
    /// It did not take effect (`fail`).
    Fail,
    /// Unknown (`info`): it may take effect at any moment after its invoke.
    Info,
    /// No completion line: treated like [`Outcome::Info`].
    Pending,
}

impl Outcome {
    /// Whether the outcome is unknown (`info` or no completion).
    pub fn is_indeterminate(self) -> bool {
        matches!(self, Outcome::Info | Outcome::Pending)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
            Outcome::Pending => "pending",
        })
    }
}

/// An invoke paired with its completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// Position in [`History::ops`] (operations are in invoke order).
    pub index: usize,
    /// The client process.
    pub process: u64,
    /// The register.
    pub key: String,
    /// What was called.
    pub call: Call,
    /// How it completed.
    pub outcome: Outcome,
    /// The completion's value: for an `ok` read the value seen (`null` = unset).
    pub result: Value,
    /// 1-based line number of the invoke.
    pub invoke_line: usize,
    /// 1-based line number of the completion, if any.
    pub complete_line: Option<usize>,
    /// The invoke's `time`, if recorded.
    pub invoke_time: Option<u64>,
    /// The completion's `time`, if recorded.
    pub complete_time: Option<u64>,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "process {} {}", self.process, self.call)?;
        if self.call == Call::Read && self.outcome == Outcome::Ok {
            write!(f, " -> {}", self.result)?;
        }
        write!(f, " {}", self.outcome)?;
        match self.complete_line {
            Some(c) => write!(f, " (lines {}-{})", self.invoke_line, c),
            None => write!(f, " (line {}, never completed)", self.invoke_line),
        }
    }
}

/// A malformed history.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// A line that is not a valid event or breaks the invoke/complete pairing.
    #[error("line {line}: {message}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The history could not be read.
    #[error("cannot read history: {0}")]
    Io(#[from] io::Error),
}

fn malformed(line: usize, message: impl Into<String>) -> ParseError {
    ParseError::Malformed {
        line,
        message: message.into(),
    }
}

/// A parsed history: operations in invoke order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Every operation, in the order of its invoke line.
    pub ops: Vec<Operation>,
}

impl History {
    /// Parses JSONL text. Blank lines are skipped (but still counted).
    pub fn parse_str(text: &str) -> Result<History, ParseError> {
        let mut parser = Parser::default();
        for (i, line) in text.lines().enumerate() {
            parser.line(i + 1, line)?;
        }
        Ok(parser.finish())
    }

    /// Parses JSONL from a reader.
    pub fn from_reader(reader: impl BufRead) -> Result<History, ParseError> {
        let mut parser = Parser::default();
        for (i, line) in reader.lines().enumerate() {
            parser.line(i + 1, &line?)?;
        }
        Ok(parser.finish())
    }

    /// Reads and parses a history file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<History, ParseError> {
        History::from_reader(BufReader::new(File::open(path)?))
    }

    /// Builds a history from events; event `i` counts as line `i + 1`.
    pub fn from_events<'a>(
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<History, ParseError> {
        let mut parser = Parser::default();
        for (i, event) in events.into_iter().enumerate() {
            parser.event(i + 1, event.clone())?;
        }
        Ok(parser.finish())
    }

    /// The operations of each key, in invoke order.
    pub fn by_key(&self) -> BTreeMap<&str, Vec<&Operation>> {
        let mut keys: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
        for op in &self.ops {
            keys.entry(op.key.as_str()).or_default().push(op);
        }
        keys
    }
}

/// Incremental pairing of invokes and completions.
#[derive(Default)]
struct Parser {
    ops: Vec<Operation>,
    /// Process → index of its pending operation.
    pending: HashMap<u64, usize>,
}

impl Parser {
    fn line(&mut self, line: usize, text: &str) -> Result<(), ParseError> {
        if text.trim().is_empty() {
            return Ok(());
        }
        let event: Event = serde_json::from_str(text)
            .map_err(|e| malformed(line, format!("invalid event: {e}")))?;
        self.event(line, event)
    }

    fn event(&mut self, line: usize, event: Event) -> Result<(), ParseError> {
        let process = event.process;
        match event.kind {
            EventType::Invoke => {
                if let Some(&open) = self.pending.get(&process) {
                    let open = &self.ops[open];
                    return Err(malformed(
                        line,
                        format!(
                            "process {process} invokes again while its {} invoked at line {} has not completed",
                            open.call.function(),
                            open.invoke_line
                        ),
                    ));
                }
                let call = match event.f {
                    Function::Read => Call::Read,
                    Function::Write => Call::Write(event.value),
                    Function::Cas => match event.value {
                        Value::Array(mut pair) if pair.len() == 2 => {
                            let new = pair.pop().unwrap_or(Value::Null);
                            let expected = pair.pop().unwrap_or(Value::Null);
                            Call::Cas { expected, new }
                        }
                        other => {
                            return Err(malformed(
                                line,
                                format!("cas value must be [expected, new], got {other}"),
                            ))
                        }
                    },
                };
                self.pending.insert(process, self.ops.len());
                self.ops.push(Operation {
                    index: self.ops.len(),
                    process,
                    key: event.key,
                    call,
                    outcome: Outcome::Pending,
                    result: Value::Null,
                    invoke_line: line,
                    complete_line: None,
                    invoke_time: event.time,
                    complete_time: None,
                });
            }
            kind @ (EventType::Ok | EventType::Fail | EventType::Info) => {
                let Some(index) = self.pending.remove(&process) else {
                    return Err(malformed(
                        line,
                        format!(
                            "{kind} completion for process {process}, which has no pending invoke"
                        ),
                    ));
                };
                let op = &mut self.ops[index];
                if op.call.function() != event.f {
                    return Err(malformed(
                        line,
                        format!(
                            "{kind} completion of a {} for process {process}, whose call invoked at line {} is a {}",
                            event.f,
                            op.invoke_line,
                            op.call.function()
                        ),
                    ));
                }
                if op.key != event.key {
                    return Err(malformed(
                        line,
                        format!(
                            "completion for key {:?}, but process {process} invoked at line {} on key {:?}",
                            event.key, op.invoke_line, op.key
                        ),
                    ));
                }
                op.outcome = match kind {
                    EventType::Ok => Outcome::Ok,
                    EventType::Fail => Outcome::Fail,
                    _ => Outcome::Info,
                };
                op.result = event.value;
                op.complete_line = Some(line);
                op.complete_time = event.time;
            }
        }
        Ok(())
    }

    fn finish(self) -> History {
        History { ops: self.ops }
    }
}

/// Records a history as JSONL, stamping each event with the nanoseconds
/// elapsed since the writer's origin (unless the event carries a time).
///
/// Every event is written with one `write_all` and flushed, so a history
/// survives the recording process being killed. Share a writer between
/// client tasks behind a mutex: the order of lines is the real-time order
/// the checker relies on, so take the time stamp and write under one lock
/// (which [`HistoryWriter::record`] does).
#[derive(Debug)]
pub struct HistoryWriter<W: Write> {
    out: W,
    origin: Instant,
}

impl HistoryWriter<BufWriter<File>> {
    /// Opens `path` for appending (creating it if needed).
    pub fn append_to(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(HistoryWriter::new(BufWriter::new(file)))
    }
}

impl<W: Write> HistoryWriter<W> {
    /// A writer whose time origin is now.
    pub fn new(out: W) -> Self {
        HistoryWriter::with_origin(out, Instant::now())
    }

    /// A writer measuring time from `origin` (share one origin between
    /// writers whose histories are compared).
    pub fn with_origin(out: W, origin: Instant) -> Self {
        HistoryWriter { out, origin }
    }

    /// Nanoseconds since the origin (saturating at `u64::MAX`).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Appends one event as a JSON line and flushes; stamps it with the
    /// current time when it has none.
    pub fn record(&mut self, event: &Event) -> io::Result<()> {
        let mut event = event.clone();
        if event.time.is_none() {
            event.time = Some(self.now_ns());
        }
        let mut line = serde_json::to_vec(&event).map_err(io::Error::other)?;
        line.push(b'\n');
        self.out.write_all(&line)?;
        self.out.flush()
    }

    /// Records an invoke.
    pub fn invoke(&mut self, process: u64, f: Function, key: &str, value: Value) -> io::Result<()> {
        self.record(&Event::new(process, EventType::Invoke, f, key, value))
    }

    /// Records a completion (`kind` is `Ok`, `Fail` or `Info`).
    pub fn complete(
        &mut self,
        process: u64,
        kind: EventType,
        f: Function,
        key: &str,
        value: Value,
    ) -> io::Result<()> {
        self.record(&Event::new(process, kind, f, key, value))
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests;
