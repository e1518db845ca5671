//! Tests of the sled store: openraft's conformance suite, durability across
//! reopen, apply semantics, the change window and snapshots.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apply;
mod conformance;
mod durability;
mod snapshot;
mod support;
