//! openraft storage on sled: the Raft log, the vote, and the state machine
//! that *is* the mesh state.
//!
//! This crate knows nothing of networking and must not depend on actix,
//! tonic's transport (hyper, h2, axum) or the control plane (`.ci/run`
//! checks it with `cargo tree`). Every sled type stays inside it: callers see
//! [`LogStore`], [`StateMachine`] and [`StateReader`].
//!
//! Layout on disk, key encoding and the durability rules are described in
//! `docs/adr/0001-storage-layout.md`.

mod command;
mod db;
mod durable;
mod error;
mod log_store;
mod restore;
mod snapshot;
mod state;
mod state_machine;
mod window;

pub use command::{Command, Leaf, OpResult, Response, MAX_ENTRY_BYTES};
pub use db::{open, StoreConfig};
pub use error::StoreError;
pub use log_store::LogStore;
pub use restore::restore;
pub use snapshot::SnapshotData;
pub use state::{SnapshotStats, StateReader, StateView};
pub use state_machine::StateMachine;
pub use window::{ChangeEvent, WindowError};

/// openraft's node id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft type configuration of a Raftmesh cluster.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);
