//! Jepsen-style chaos tests for Raftmesh: a harness that drives real meshd
//! processes under faults, records a history and checks it.
//!
//! - [`cluster`], [`procs`], [`net`]: meshd nodes as processes, each in its
//!   own network namespace when root (loopback otherwise).
//! - [`nemesis`]: the faults (partitions, kills, pauses, clock jumps, ...).
//! - [`workload`], [`streams`]: clients that write and read registers and
//!   sets, and proxies' discovery streams, recording every operation.
//! - [`history`]: the JSONL history format (one operation event a line), its
//!   parser and a writer the harness records with.
//! - [`linearizability`]: a Wing–Gong–Lowe linearizability checker for
//!   compare-and-set registers, one register per key.
//! - [`runner`]: one seeded run: cluster, workload, nemesis, checks, summary.
//! - [`client`]: the harness's admin clients (`raftmesh-client` underneath).
//!
//! Binaries: `chaos` runs the suite, `check-history` runs the checker over
//! history files, `fleet` simulates thousands of proxies against a real
//! cluster. Black-box: the harness starts the built programs (found or
//! built by `raftmesh_client::bins`) and links no meshd code.

pub mod client;
pub mod cluster;
pub mod history;
pub mod lazyfs;
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
