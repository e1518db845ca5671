//! openraft's storage conformance suite, against the sled store.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use raftmesh_storage::{LogStore, StateMachine, TypeConfig};
use tempfile::TempDir;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = super::support::open_in(&dir);
        Ok((dir, log, sm))
    }
}

// The suite builds its own runtime, so this is a plain #[test].
#[test]
fn sled_store_passes_openraft_conformance_suite() -> Result<(), StorageError<u64>> {
    Suite::test_all(SledBuilder)
}
