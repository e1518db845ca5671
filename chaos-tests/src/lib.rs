//! Jepsen-style chaos tests for Raftmesh: history recording, checkers, and (later) a harness that drives real meshd processes.
//!
//! - [`history`]: the JSONL history format (one operation event a line), its
//!   parser and a writer the harness records with.
//! - [`linearizability`]: a Wing–Gong–Lowe linearizability checker for
//!   compare-and-set registers, one register per key.
//!
//! - [`client`]: admin API clients for the harness and simulators.
//!
//! Binaries: `check-history` runs the checker over history files; `fleet`
//! simulates thousands of proxies against a real cluster.

pub mod binaries;
pub mod client;
pub mod cluster;
pub mod history;
pub mod linearizability;
pub mod nemesis;
pub mod net;
pub mod procs;
pub mod runner;
pub mod streams;
pub mod workload;

pub use history::{Event, EventType, Function, History, HistoryWriter, Operation, Outcome};
pub use linearizability::{
    check_history, check_history_with_stats, CheckOptions, Explanation, FailedCas, Verdict,
};
