//! Tests of the sled store: openraft's conformance suite, durability across
//! reopen, apply semantics, the change window and snapshots.

mod apply;
mod conformance;
mod durability;
mod snapshot;
mod support;
