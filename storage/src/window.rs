//! The bounded window of recent change events, from which a stream resumes.

use std::collections::VecDeque;
use std::sync::Arc;

use raftmesh_api::{Resource, ResourceKey};

/// One change to the mesh state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The revision (log index) of the write.
    pub revision: u64,
    /// Which resource (its kind is `key.kind`).
    pub key: ResourceKey,
    /// The new value, or `None` when the resource was deleted.
    pub value: Option<Arc<Resource>>,
    /// The value before, if there was one (a consumer that filters by
    /// content, e.g. by service, needs it to route a deletion or a move).
    pub previous: Option<Arc<Resource>>,
}

/// Why the window cannot answer "everything after revision r".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Events at or before `oldest` are gone: the caller needs a full state.
    #[error("revision {requested} is older than the change window, which starts after revision {oldest}")]
    TooOld {
        /// The revision asked for.
        requested: u64,
        /// The window answers for revisions >= this.
        oldest: u64,
    },
    /// The revision has not been applied here yet.
    #[error("revision {requested} is ahead of this node, which has applied up to {applied}")]
    Ahead {
        /// The revision asked for.
        requested: u64,
        /// This node's applied revision.
        applied: u64,
    },
}

/// Events with revision > `start`, in revision order, at most `capacity`
/// of them (whole revisions are dropped together from the front).
#[derive(Debug)]
pub(crate) struct ChangeWindow {
    events: VecDeque<ChangeEvent>,
    start: u64,
    capacity: usize,
}

impl ChangeWindow {
    pub(crate) fn new(start: u64, capacity: usize) -> Self {
        Self {
            events: VecDeque::new(),
            start,
            capacity: capacity.max(1),
        }
    }

    /// Forgets everything: the window now answers only from `start`.
    pub(crate) fn reset(&mut self, start: u64) {
        self.events.clear();
        self.start = start;
    }

    /// Appends an event; revisions must not decrease.
    pub(crate) fn push(&mut self, event: ChangeEvent) {
        debug_assert!(self
            .events
            .back()
            .is_none_or(|e| e.revision <= event.revision));
        self.events.push_back(event);
        while self.events.len() > self.capacity {
            // Drop the oldest revision entirely so no revision is half-known.
            let Some(rev) = self.events.front().map(|e| e.revision) else {
                break;
            };
            while self.events.front().is_some_and(|e| e.revision == rev) {
                self.events.pop_front();
            }
            self.start = rev;
        }
    }

    /// The smallest revision a caller may resume from.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// Every event with revision > `after`, given the node has applied up
    /// to `applied`.
    pub(crate) fn since(&self, after: u64, applied: u64) -> Result<Vec<ChangeEvent>, WindowError> {
        if after > applied {
            return Err(WindowError::Ahead {
                requested: after,
                applied,
            });
        }
        if after < self.start {
            return Err(WindowError::TooOld {
                requested: after,
                oldest: self.start,
            });
        }
        let first = self.events.partition_point(|e| e.revision <= after);
        Ok(self.events.range(first..).cloned().collect())
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmesh_api::Kind;

    fn ev(revision: u64, name: &str) -> ChangeEvent {
        ChangeEvent {
            revision,
            key: ResourceKey::new(Kind::Service, "default", name),
            value: None,
            previous: None,
        }
    }

    #[test]
    fn resume_from_every_revision_returns_exactly_the_later_events() {
        let mut w = ChangeWindow::new(0, 1000);
        // Revisions with gaps (blank/membership entries write nothing) and a
        // batch writing two keys at revision 7.
        let revs = [1u64, 2, 4, 7, 7, 9, 12];
        for (i, r) in revs.iter().enumerate() {
            w.push(ev(*r, &format!("s{i}")));
        }
        for after in 0..=12 {
            let got: Vec<u64> = w
                .since(after, 12)
                .unwrap()
                .iter()
                .map(|e| e.revision)
                .collect();
            let want: Vec<u64> = revs.iter().copied().filter(|r| *r > after).collect();
            assert_eq!(got, want, "after {after}");
        }
    }

    #[test]
    fn too_old_is_reported_never_a_silent_gap() {
        let mut w = ChangeWindow::new(0, 3);
        for r in 1..=5 {
            w.push(ev(r, "a"));
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.start(), 2);
        assert_eq!(
            w.since(1, 5).unwrap_err(),
            WindowError::TooOld {
                requested: 1,
                oldest: 2
            }
        );
        assert_eq!(w.since(2, 5).unwrap().len(), 3);
        assert!(w.since(5, 5).unwrap().is_empty());
        assert_eq!(
            w.since(6, 5).unwrap_err(),
            WindowError::Ahead {
                requested: 6,
                applied: 5
            }
        );
    }

    #[test]
    fn trimming_drops_whole_revisions() {
        let mut w = ChangeWindow::new(0, 3);
        w.push(ev(1, "a"));
        w.push(ev(1, "b"));
        w.push(ev(2, "a"));
        w.push(ev(3, "a")); // 4 events > 3: revision 1 (two events) goes
        assert_eq!(w.len(), 2);
        assert_eq!(w.start(), 1);
        assert_eq!(w.since(1, 3).unwrap().len(), 2);
        assert!(w.since(0, 3).is_err());
    }
}
