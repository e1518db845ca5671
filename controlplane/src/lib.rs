//! meshd, the Raftmesh control-plane node.
//!
//! A node is an openraft `Raft` over the sled store of `raftmesh-storage`,
//! reached through one gRPC port that serves the node-to-node RPCs
//! ([`rpc`]), the admin API ([`admin`]) and discovery ([`discovery`]).
//! The code is organised by concept: [`cluster`] (the write path, reads,
//! membership), [`tokens`], [`ca`], [`discovery`]. Actors exist where a
//! component owns state and a mailbox: the discovery hub, the lease keeper,
//! the cluster watcher; openraft's `Raft` handle is used directly. Wiring
//! lives in [`node`], so tests start nodes in-process; `src/bin/meshd.rs`
//! only parses flags and calls into it.
//!
//! Must not be linked by the proxy (`dataplane-proxy` depends on `api` and
//! `api/client` only), and must not link the proxy: `meshd demo` starts
//! `mesh-proxy` as a program (`.ci/run` checks both with `cargo tree`).

pub mod admin;
pub mod ca;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod discovery;
pub mod federation;
pub mod http;
pub mod livestats;
pub mod meshconfig;
pub mod metrics;
pub mod node;
pub mod procinfo;
pub mod revocation;
pub mod rpc;
pub mod server_tls;
pub mod tap;
pub mod tokens;
pub mod watcher;

pub use raftmesh_storage::{NodeId, TypeConfig};

/// The openraft handle of a node.
pub type Raft = openraft::Raft<TypeConfig>;

/// Runs `fut` inside an actix `System` on a multi-threaded tokio runtime:
/// actors run on the calling thread, `tokio::spawn`ed work (tonic, openraft)
/// on the worker pool. `main` and tests both start here.
pub fn run_system<F, T>(fut: F) -> T
where
    F: std::future::Future<Output = T>,
{
    actix::System::with_tokio_rt(|| {
        // Building a runtime fails only when the OS refuses threads; nothing
        // can run without one.
        #[allow(clippy::expect_used)]
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("cannot build the tokio runtime")
    })
    .block_on(fut)
}
