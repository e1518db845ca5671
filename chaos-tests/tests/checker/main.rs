//! Integration tests of the linearizability checker: the Jepsen etcd histories, generated histories, semantics, bounds and the CLI.

// Test helpers outside #[test] functions may panic on broken fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod generated;
mod jepsen;
mod semantics;
mod support;
