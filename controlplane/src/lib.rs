//! meshd, the Raftmesh control-plane node, and the library behind meshctl.
//!
//! A node is an openraft `Raft` over the sled store of `raftmesh-storage`,
//! reached through one gRPC port that serves the Raft RPCs, the admin API
//! and (later) discovery. Long-lived stateful components are actix actors
//! ([`admin::AdminFront`], [`watcher::ClusterWatcher`]); openraft's `Raft`
//! handle is used directly. Wiring lives in [`node`], so tests start nodes
//! in-process; `src/bin/*` only parse flags and call into it.
//!
//! Must not be linked by the proxy (`dataplane-proxy` depends on `api` only).

pub mod admin;
pub mod auth;
pub mod batcher;
pub mod ca;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod discovery;
pub mod faults;
pub mod http;
pub mod network;
pub mod node;
pub mod procinfo;
pub mod rpc;
pub mod server_tls;
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
