//! The one compare-and-set loop: read a resource as the leader has it,
//! decide what it becomes, write that with the revision read, and start
//! over if another write got in between.
//!
//! Token uses and revocations, endpoint health, the workload CA's creation
//! and rotation, and the first admin token all change state this way, so
//! none of them can overwrite a change it did not see.

use std::sync::Arc;

use raftmesh_api::{Resource, ResourceKey};
use raftmesh_storage::{Command, OpResult};

use super::{ClusterError, ClusterOps};

/// What a resource becomes, decided from its current value (made once per
/// attempt and consumed at once, so its size does not matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Change<E> {
    /// Write this value (created if the resource does not exist).
    Put(Resource),
    /// Delete it.
    Delete,
    /// Leave it as it is.
    Keep,
    /// Give up with this error; nothing is written.
    Refuse(E),
}

/// What an update did.
#[derive(Debug, Clone, PartialEq)]
pub enum Updated {
    /// Written at this revision.
    Written(u64),
    /// Nothing to do: the current value (if any) stands.
    Kept(Option<Arc<Resource>>),
}

/// Why an update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E: std::error::Error + 'static> {
    /// Reading or writing through the cluster failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Another write got in first every time.
    #[error("{key} kept changing ({attempts} attempts); try again")]
    Conflict {
        /// The resource.
        key: ResourceKey,
        /// How many times it was tried.
        attempts: u32,
    },
    /// The decision refused the change.
    #[error(transparent)]
    Refused(E),
}

impl ClusterOps {
    /// Updates `key` by compare-and-set, at most `attempts` times: each
    /// attempt reads the current value after a read barrier and asks
    /// `decide` what it becomes.
    pub async fn update<E: std::error::Error + 'static>(
        &self,
        key: &ResourceKey,
        attempts: u32,
        decide: impl FnMut(Option<&Arc<Resource>>) -> Change<E>,
    ) -> Result<Updated, UpdateError<E>> {
        self.update_from(key, None, attempts, decide).await
    }

    /// [`update`](Self::update), but the first attempt decides on `current`
    /// (a value the caller just read) without a read barrier; later
    /// attempts read again.
    pub async fn update_from<E: std::error::Error + 'static>(
        &self,
        key: &ResourceKey,
        mut current: Option<Option<Arc<Resource>>>,
        attempts: u32,
        mut decide: impl FnMut(Option<&Arc<Resource>>) -> Change<E>,
    ) -> Result<Updated, UpdateError<E>> {
        for _ in 0..attempts {
            let now = match current.take() {
                Some(c) => c,
                None => {
                    self.read_barrier().await?;
                    self.reader.get(key).1
                }
            };
            // Absent: create-only (revision 0 means "must not exist").
            let expected_revision =
                Some(now.as_ref().and_then(|r| r.metadata.revision).unwrap_or(0));
            let cmd = match decide(now.as_ref()) {
                Change::Put(resource) => Command::Put {
                    resource,
                    expected_revision,
                },
                Change::Delete => Command::Delete {
                    key: key.clone(),
                    expected_revision,
                },
                Change::Keep => return Ok(Updated::Kept(now)),
                Change::Refuse(e) => return Err(UpdateError::Refused(e)),
            };
            let r = self.write(cmd).await?;
            match r.results.first() {
                Some(OpResult::Ok { revision, .. }) => return Ok(Updated::Written(*revision)),
                Some(OpResult::Conflict { .. }) => continue,
                // Deleting what another write removed meanwhile: it is gone.
                Some(OpResult::NotFound) => return Ok(Updated::Kept(None)),
                other => {
                    return Err(UpdateError::Cluster(ClusterError::Invalid(format!(
                        "{key}: the write was not applied ({other:?})"
                    ))))
                }
            }
        }
        Err(UpdateError::Conflict {
            key: key.clone(),
            attempts,
        })
    }
}
