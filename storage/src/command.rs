//! Commands the state machine applies, and their results.

use raftmesh_api::{Resource, ResourceKey};
use serde::{Deserialize, Serialize};

/// A write to the mesh state, carried in one Raft log entry.
// A command is made once per write and serialized into the log at once; a
// `Put` holding its resource inline costs nothing that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create or replace a resource.
    Put {
        /// The new value; its `metadata.revision` is ignored.
        resource: Resource,
        /// Compare-and-set: apply only if the stored revision is this one
        /// (0 = the resource must not exist). `None`: unconditional.
        expected_revision: Option<u64>,
    },
    /// Remove a resource.
    Delete {
        /// Which resource.
        key: ResourceKey,
        /// Compare-and-set as for `Put`.
        expected_revision: Option<u64>,
    },
    /// Writes nothing; fails with [`OpResult::Conflict`] unless the
    /// resource is at `revision` (0 = absent). In a [`Command::Batch`] it
    /// makes the whole batch conditional on a resource the batch does not
    /// write (an admin write carries one for its caller's token, so a token
    /// revoked before the write is applied stops it).
    Expect {
        /// Which resource.
        key: ResourceKey,
        /// The revision it must be at.
        revision: u64,
    },
    /// Several commands, applied all or none: if one fails, none is applied
    /// and the others report [`OpResult::Aborted`]. Nested batches are
    /// flattened.
    Batch(Vec<Command>),
    /// Independent commands sharing one log entry (group commit): each is
    /// applied, or fails, on its own, as if it had its own entry; their
    /// results follow each other in order. They share the entry's revision.
    Group(Vec<Command>),
}

/// The most bytes one command may take in a Raft log entry. openraft 0.9
/// gives an AppendEntries call one heartbeat interval (100 ms) and then
/// sends it again, without end: an entry a follower cannot receive, decode
/// and sync in that time stops every later write of the cluster (seen: one
/// apply of 30,000 Services, about 4.5 MB). 1 MiB (about 6,500 small
/// Services) stays far inside it; the leader's groups keep to it too.
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;

impl Command {
    /// The bytes this command takes in a log entry (its JSON encoding).
    pub fn encoded_len(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0 += b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut c = Count(0);
        // Serializing these types into a sink that never fails cannot fail.
        let _ = serde_json::to_writer(&mut c, self);
        c.0
    }

    /// The leaf commands, batches flattened, in order.
    pub fn leaves(&self) -> Vec<Leaf<'_>> {
        let mut out = Vec::new();
        fn walk<'a>(c: &'a Command, out: &mut Vec<Leaf<'a>>) {
            match c {
                Command::Batch(cs) | Command::Group(cs) => cs.iter().for_each(|c| walk(c, out)),
                Command::Put {
                    resource,
                    expected_revision,
                } => out.push(Leaf::Put(resource, *expected_revision)),
                Command::Delete {
                    key,
                    expected_revision,
                } => out.push(Leaf::Delete(key, *expected_revision)),
                Command::Expect { key, revision } => out.push(Leaf::Expect(key, *revision)),
            }
        }
        walk(self, &mut out);
        out
    }
}

/// One write of a command, batches flattened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Leaf<'a> {
    /// Put a resource, with an optional expected revision.
    Put(&'a Resource, Option<u64>),
    /// Delete a resource, with an optional expected revision.
    Delete(&'a ResourceKey, Option<u64>),
    /// Expect a resource at a revision, writing nothing.
    Expect(&'a ResourceKey, u64),
}

impl Leaf<'_> {
    /// The resource written.
    pub fn key(&self) -> ResourceKey {
        match self {
            Leaf::Put(r, _) => r.key(),
            Leaf::Delete(k, _) | Leaf::Expect(k, _) => (*k).clone(),
        }
    }

    /// The expected revision, if any.
    pub fn expected_revision(&self) -> Option<u64> {
        match self {
            Leaf::Put(_, e) | Leaf::Delete(_, e) => *e,
            Leaf::Expect(_, r) => Some(*r),
        }
    }
}

/// The outcome of one leaf command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// Applied. `revision` is the resource's revision after the command
    /// (for a delete, the revision of the deletion); `unchanged` when a put
    /// wrote the value already stored, which keeps its old revision.
    Ok {
        /// Revision after the command.
        revision: u64,
        /// The put changed nothing.
        unchanged: bool,
    },
    /// The expected revision did not match; `current` is the stored
    /// revision (0 = absent).
    Conflict {
        /// The revision actually stored.
        current: u64,
    },
    /// Delete of a resource that does not exist.
    NotFound,
    /// Not applied because another command of the batch failed.
    Aborted,
}

impl OpResult {
    /// Whether the command took effect.
    pub fn is_ok(&self) -> bool {
        matches!(self, OpResult::Ok { .. })
    }
}

/// The answer to one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The entry's log index: the revision of everything it wrote.
    pub revision: u64,
    /// One result per leaf command (empty for blank and membership entries).
    pub results: Vec<OpResult>,
}
