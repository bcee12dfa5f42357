//! A raft group's log entries in an engine, for raft-rs' `Storage`.
//!
//! Entry `i` of a group lives at `prefix ++ i (u64 big-endian)` in
//! `Cf::Default` of the engine holding raft logs, encoded with raft-rs' own
//! codec; the prefix keeps groups apart (the node: one per region, PD: one).
//! The log holds `(truncated, last]`: everything up to the truncation point
//! is covered by the applied state (a snapshot, or a group's initial state).
//! The truncation point itself is the owner's to persist (with its applied
//! state), so it is passed in rather than kept here.

use mnemo_engine::{Cf, EngineError, EngineRef, ScanRange, WriteBatch};
use protobuf::Message as _;
use raft::eraftpb::Entry;
use raft::StorageError;

/// The index and term everything up to which the log no longer holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Truncated {
    /// Last index covered by the applied state.
    pub index: u64,
    /// Its term.
    pub term: u64,
}

/// One group's log: where its entries are, and its last index and term.
pub struct RaftLog {
    engine: EngineRef,
    prefix: Vec<u8>,
    last_index: u64,
    last_term: u64,
}

/// An engine or decoding failure as raft-rs wants it.
pub fn storage_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl RaftLog {
    /// Opens the log under `prefix`, finding its last entry after `truncated`.
    pub fn open(engine: EngineRef, prefix: Vec<u8>, truncated: Truncated) -> Result<RaftLog, EngineError> {
        let mut log = RaftLog { engine, prefix, last_index: truncated.index, last_term: truncated.term };
        let start = log.key(truncated.index + 1);
        let end = log.key(u64::MAX);
        let mut last = None;
        log.engine.scan(
            Cf::Default,
            ScanRange { start: &start, end: &end, reverse: true },
            &mut |_, v| {
                last = Some(v.to_vec());
                false
            },
        )?;
        if let Some(v) = last {
            let e = Entry::parse_from_bytes(&v).map_err(|e| EngineError(format!("raft log entry: {e}")))?;
            log.last_index = e.index;
            log.last_term = e.term;
        }
        Ok(log)
    }

    /// The engine key of entry `index`.
    pub fn key(&self, index: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 8);
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(&index.to_be_bytes());
        k
    }

    /// The last index in the log (the truncation point if it is empty).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Stages `entries` (a contiguous run) into `wb`, replacing any
    /// conflicting suffix of the log.
    pub fn append(&mut self, entries: &[Entry], wb: &mut WriteBatch) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return };
        for e in entries {
            wb.put(Cf::Default, self.key(e.index), e.write_to_bytes().expect("an entry encodes"));
        }
        if last.index < self.last_index {
            // Entries past the new tail came from an older leader; remove them.
            wb.delete_range(Cf::Default, self.key(last.index + 1), self.key(self.last_index + 1));
        }
        debug_assert!(first.index <= self.last_index + 1);
        self.last_index = last.index;
        self.last_term = last.term;
    }

    /// Stages the removal of entries `[from, to]` into `wb`.
    pub fn stage_delete(&self, from: u64, to: u64, wb: &mut WriteBatch) {
        if from <= to {
            wb.delete_range(Cf::Default, self.key(from), self.key(to + 1));
        }
    }

    /// Stages the removal of every entry into `wb` and starts the log over
    /// after `truncated` (a snapshot was installed).
    pub fn reset(&mut self, truncated: Truncated, wb: &mut WriteBatch) {
        wb.delete_range(Cf::Default, self.key(0), self.key(u64::MAX));
        self.last_index = truncated.index;
        self.last_term = truncated.term;
    }

    /// raft-rs' `Storage::term`.
    pub fn term(&self, idx: u64, truncated: Truncated) -> raft::Result<u64> {
        if idx == truncated.index {
            return Ok(truncated.term);
        }
        if idx < truncated.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if idx == self.last_index {
            return Ok(self.last_term);
        }
        let b = self
            .engine
            .get(Cf::Default, &self.key(idx))
            .map_err(storage_err)?
            .ok_or(raft::Error::Store(StorageError::Unavailable))?;
        Ok(Entry::parse_from_bytes(&b).map_err(storage_err)?.term)
    }

    /// raft-rs' `Storage::entries`: `[low, high)`, at least one entry even
    /// over `max_size`.
    pub fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
        truncated: Truncated,
    ) -> raft::Result<Vec<Entry>> {
        if low <= truncated.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let (start, end) = (self.key(low), self.key(high));
        let mut bad = None;
        self.engine
            .scan(Cf::Default, ScanRange { start: &start, end: &end, reverse: false }, &mut |_, v| {
                match Entry::parse_from_bytes(v) {
                    Ok(e) => {
                        size += u64::from(e.compute_size());
                        if !out.is_empty() && size > max {
                            return false;
                        }
                        out.push(e);
                        true
                    }
                    Err(e) => {
                        bad = Some(e);
                        false
                    }
                }
            })
            .map_err(storage_err)?;
        if let Some(e) = bad {
            return Err(storage_err(e));
        }
        if out.is_empty() || out[0].index != low {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnemo_engine::MemEngine;
    use std::sync::Arc;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: vec![index as u8; 10].into(), ..Default::default() }
    }

    fn write(engine: &EngineRef, wb: WriteBatch) {
        engine.write(&wb, true).unwrap();
    }

    #[test]
    fn a_shorter_conflicting_append_drops_the_old_tail_and_reopen_finds_the_end() {
        let engine: EngineRef = Arc::new(MemEngine::new());
        let t = Truncated { index: 5, term: 5 };
        let mut log = RaftLog::open(engine.clone(), b"g/1/".to_vec(), t).unwrap();
        let mut wb = WriteBatch::new();
        log.append(&(6..=9).map(|i| entry(i, 6)).collect::<Vec<_>>(), &mut wb);
        write(&engine, wb);
        let mut wb = WriteBatch::new();
        log.append(&[entry(7, 7)], &mut wb);
        write(&engine, wb);
        assert_eq!(log.last_index(), 7);
        assert_eq!(log.term(7, t).unwrap(), 7);
        assert_eq!(log.term(5, t).unwrap(), 5);
        assert!(log.term(4, t).is_err());
        let reopened = RaftLog::open(engine.clone(), b"g/1/".to_vec(), t).unwrap();
        assert_eq!(reopened.last_index(), 7);
        assert_eq!(reopened.entries(6, 8, None, t).unwrap().len(), 2);
        assert_eq!(reopened.entries(6, 8, Some(1), t).unwrap().len(), 1, "at least one entry over the limit");
        // Another group's prefix sees nothing.
        assert_eq!(RaftLog::open(engine, b"g/2/".to_vec(), t).unwrap().last_index(), 5);
    }
}
