//! The Raft log and vote, on sled.
//!
//! An append is reported to openraft only after sled has flushed it.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::db::Trees;
use crate::{NodeId, TypeConfig};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

type SResult<T> = Result<T, StorageError<NodeId>>;

fn io(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn logs_err(verb: ErrorVerb) -> impl Fn(crate::StoreError) -> StorageError<NodeId> {
    move |e| io(ErrorSubject::Logs, verb, e)
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The log half of the store. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    trees: Arc<Trees>,
}

impl LogStore {
    pub(crate) fn new(trees: Arc<Trees>) -> Self {
        Self { trees }
    }

    /// Makes everything written so far durable (used at shutdown).
    pub async fn flush(&self) -> Result<(), crate::StoreError> {
        self.trees.flush("flushing at shutdown").await
    }

    fn get_meta<T: DeserializeOwned>(
        &self,
        key: &str,
        subject: ErrorSubject<NodeId>,
    ) -> SResult<Option<T>> {
        let Some(bytes) = self
            .trees
            .raft
            .get(key)
            .map_err(|e| io(subject.clone(), ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io(subject, ErrorVerb::Read, e))
    }

    fn put_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> SResult<()> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| io(subject.clone(), ErrorVerb::Write, e))?;
        self.trees
            .raft
            .insert(key, bytes)
            .map_err(|e| io(subject, ErrorVerb::Write, e))?;
        Ok(())
    }

    fn decode_entry(bytes: &[u8]) -> SResult<Entry<TypeConfig>> {
        serde_json::from_slice(bytes).map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    fn remove_range(&self, from: u64, to_inclusive: u64) -> SResult<()> {
        let mut batch = sled::Batch::default();
        for item in self
            .trees
            .log
            .range(index_key(from)..=index_key(to_inclusive))
        {
            let (k, _) = item.map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
            batch.remove(k);
        }
        self.trees
            .log
            .apply_batch(batch)
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in self.trees.log.range(index_key(start)..) {
            let (k, v) = item.map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let idx = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| {
                io(
                    ErrorSubject::Logs,
                    ErrorVerb::Read,
                    std::io::Error::other("log key is not 8 bytes"),
                )
            })?);
            if !range.contains(&idx) {
                break;
            }
            out.push(Self::decode_entry(&v)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> SResult<LogState<TypeConfig>> {
        let last = match self
            .trees
            .log
            .last()
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, e))?
        {
            Some((_, v)) => Some(Self::decode_entry(&v)?.log_id),
            None => None,
        };
        let last_purged: Option<LogId<NodeId>> = self.get_meta(LAST_PURGED, ErrorSubject::Store)?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> SResult<()> {
        self.put_meta(VOTE, vote, ErrorSubject::Vote)?;
        self.trees
            .flush("saving the vote")
            .await
            .map_err(logs_err(ErrorVerb::Write))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<NodeId>>> {
        self.get_meta(VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> SResult<()> {
        // Not flushed: losing it only means re-learning the commit index
        // from the leader; openraft treats it as a hint.
        self.put_meta(COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId<NodeId>>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>(COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut count = 0usize;
        let t0 = std::time::Instant::now();
        for entry in entries {
            count += 1;
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        self.trees
            .log
            .apply_batch(batch)
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // Durable before acknowledged: openraft counts this entry towards a
        // quorum as soon as the callback fires.
        let t1 = std::time::Instant::now();
        let flushed = self.trees.flush("appending log entries").await;
        tracing::debug!(
            entries = count,
            encode_us = (t1 - t0).as_micros() as u64,
            flush_us = t1.elapsed().as_micros() as u64,
            "appended"
        );
        match flushed {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(msg)));
                Err(logs_err(ErrorVerb::Write)(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        tracing::debug!(%log_id, "truncating the log from this entry on");
        self.remove_range(log_id.index, u64::MAX)?;
        self.trees
            .flush("truncating the log")
            .await
            .map_err(logs_err(ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        tracing::debug!(%log_id, "purging the log up to this entry");
        // Record the purge point first: entries at or before it are ignored
        // from then on, so a crash half-way through deleting is harmless.
        // The flush also makes the state machine durable up to what it has
        // applied, which is at or past the purge point.
        self.put_meta(LAST_PURGED, &log_id, ErrorSubject::Store)?;
        self.trees
            .flush("purging the log")
            .await
            .map_err(logs_err(ErrorVerb::Delete))?;
        self.remove_range(0, log_id.index)
    }
}
