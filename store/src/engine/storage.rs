//! Raft's view of the log: the entries since the last compaction, kept in memory (they
//! are already durable in the WAL when they get here), the hard and configuration
//! state, and snapshots made on demand from the applied state machine.

use super::{Shared, encode_state};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::sync::Arc;

/// The in-memory Raft log of one member.
pub(super) struct LogStore {
    pub hard: HardState,
    pub conf: ConfState,
    /// Index and term just before `entries[0]` (the last compacted entry).
    start_index: u64,
    start_term: u64,
    entries: Vec<Entry>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("start_index", &self.start_index)
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl LogStore {
    pub fn new(
        shared: Arc<Shared>,
        start_index: u64,
        start_term: u64,
        conf: ConfState,
        hard: HardState,
    ) -> Self {
        LogStore {
            hard,
            conf,
            start_index,
            start_term,
            entries: Vec::new(),
            shared,
        }
    }

    fn first(&self) -> u64 {
        self.start_index + 1
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.start_index, |e| e.index)
    }

    /// Append entries that are durable; entries from the first one's index on are
    /// replaced.
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else {
            return;
        };
        let keep = first.index.saturating_sub(self.first()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
    }

    /// The whole log is replaced by a snapshot at `meta`.
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata) {
        self.entries.clear();
        self.start_index = meta.index;
        self.start_term = meta.term;
        self.conf = meta.get_conf_state().clone();
        self.hard.commit = self.hard.commit.max(meta.index);
        self.hard.term = self.hard.term.max(meta.term);
    }

    /// Forget entries up to and including `index` (they are in a durable snapshot).
    pub fn compact(&mut self, index: u64) {
        if index <= self.start_index || index > self.last() {
            return;
        }
        let Ok(term) = raft::Storage::term(self, index) else {
            return;
        };
        let n = (index - self.start_index) as usize;
        self.entries.drain(..n);
        self.start_index = index;
        self.start_term = term;
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard.clone(), self.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let from = (low - self.first()) as usize;
        let to = (high - self.first()) as usize;
        let mut out = self.entries[from..to].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.start_index {
            return Ok(self.start_term);
        }
        if idx < self.start_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.entries.get((idx - self.first()) as usize) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// A snapshot of the applied state, made now (the leader sends it to a member that
    /// is too far behind for the entries still in the log).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let state = self
            .shared
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = state.applied_index;
        if index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let term = self.term(index)?;
        let data = encode_state(&state, &self.conf)
            .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf.clone());
        Ok(snap)
    }
}
