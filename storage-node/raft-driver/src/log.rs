//! A raft group's log entries in an engine, for raft-rs' `Storage`.
//!
//! Entry `i` of a group lives at `prefix ++ i (u64 big-endian)` in
//! `Cf::Default` of the engine holding raft logs, encoded with raft-rs' own
//! codec; the prefix keeps groups apart (the node: one per region, PD: one).
//! The log holds `(truncated, last]`: everything up to the truncation point
//! is covered by the applied state (a snapshot, or a group's initial state).
//! The truncation point itself is the owner's to persist (with its applied
//! state), so it is passed in rather than kept here.
//!
//! Two things are kept in memory so the hot path never reads the engine:
//! - the **terms** of every entry appended since the log was opened, as runs
//!   (a term changes only at an election, so a log is a few runs): raft-rs
//!   asks a leader for the term of its commit candidate on every advance;
//! - an **entry cache**: the latest entries appended, until the owner
//!   applied them ([`RaftLog::evict_cache_through`]). Committed entries are
//!   handed to apply from here (raft-rs asks its storage for them once they
//!   are persisted). Entries outside the cache are read from the engine.
//!   The cache never holds what the engine will not: it follows every
//!   append, conflict and reset. It is bounded per log
//!   ([`ENTRY_CACHE_BYTES`], oldest dropped first) and per process
//!   ([`PROCESS_ENTRY_CACHE_BYTES`]: past it, a log caches nothing until
//!   others evicted theirs), so regions that cannot commit (quorum lost)
//!   cannot fill memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// `(first index, term)` of each run of equal terms, in index order,
    /// covering every index from the first run's up to `last_index`
    /// (empty: none known in memory).
    terms: Vec<(u64, u64)>,
    /// The latest entries, contiguous, ending at `last_index` (or empty).
    cache: VecDeque<Entry>,
    /// Encoded bytes of `cache`.
    cache_bytes: u64,
}

/// Most bytes of entries one log keeps cached; older ones are dropped first.
pub const ENTRY_CACHE_BYTES: u64 = 4 << 20;

/// Most bytes of entries all logs of a process keep cached together.
pub const PROCESS_ENTRY_CACHE_BYTES: u64 = 256 << 20;

/// Bytes cached by every log of this process.
static PROCESS_CACHED: AtomicU64 = AtomicU64::new(0);

impl Drop for RaftLog {
    fn drop(&mut self) {
        self.clear_cache();
    }
}

/// An engine or decoding failure as raft-rs wants it.
pub fn storage_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl RaftLog {
    /// Opens the log under `prefix`, finding its last entry after `truncated`.
    pub fn open(engine: EngineRef, prefix: Vec<u8>, truncated: Truncated) -> Result<RaftLog, EngineError> {
        let mut log = RaftLog {
            engine,
            prefix,
            last_index: truncated.index,
            last_term: truncated.term,
            terms: Vec::new(),
            cache: VecDeque::new(),
            cache_bytes: 0,
        };
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
            log.terms.push((e.index, e.term));
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
        // Runs from `first` on are replaced; what is left still reaches
        // `first - 1`, so the runs stay contiguous.
        let kept = self.terms.partition_point(|&(start, _)| start < first.index);
        self.terms.truncate(kept);
        for e in entries {
            if self.terms.last().is_none_or(|&(_, term)| term != e.term) {
                self.terms.push((e.index, e.term));
            }
        }
        // The cache: drop what the append replaces, then add it (the cache
        // stays contiguous: an append starts at most one past its end).
        while self.cache.back().is_some_and(|e| e.index >= first.index) {
            let gone = self.cache.pop_back().expect("non-empty");
            self.uncount(u64::from(gone.compute_size()));
        }
        if self.cache.back().is_some_and(|e| e.index + 1 != first.index) {
            self.clear_cache();
        }
        let size: u64 = entries.iter().map(|e| u64::from(e.compute_size())).sum();
        if PROCESS_CACHED.load(Ordering::Relaxed) + size > PROCESS_ENTRY_CACHE_BYTES {
            // Over the process's budget: cache nothing (the cache must end
            // at the last index, so what it held goes too).
            self.clear_cache();
            return;
        }
        self.cache.extend(entries.iter().cloned());
        self.cache_bytes += size;
        PROCESS_CACHED.fetch_add(size, Ordering::Relaxed);
        while self.cache_bytes > ENTRY_CACHE_BYTES && self.cache.len() > 1 {
            self.pop_cached();
        }
    }

    /// Drops cached entries up to `index` (the owner applied them; a
    /// follower that still needs them gets them from the engine).
    pub fn evict_cache_through(&mut self, index: u64) {
        while self.cache.front().is_some_and(|e| e.index <= index) {
            self.pop_cached();
        }
    }

    fn pop_cached(&mut self) {
        if let Some(e) = self.cache.pop_front() {
            self.uncount(u64::from(e.compute_size()));
        }
    }

    fn clear_cache(&mut self) {
        self.cache.clear();
        self.uncount(self.cache_bytes);
    }

    fn uncount(&mut self, bytes: u64) {
        self.cache_bytes -= bytes;
        PROCESS_CACHED.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Number of entries cached (tests, metrics).
    pub fn cached_entries(&self) -> usize {
        self.cache.len()
    }

    /// Stages the removal of entries `[from, to]` (compacted away) into `wb`.
    pub fn stage_delete(&mut self, from: u64, to: u64, wb: &mut WriteBatch) {
        if from <= to {
            wb.delete_range(Cf::Default, self.key(from), self.key(to + 1));
        }
        self.forget_through(to);
    }

    /// Forgets what memory holds of entries up to `to` (term runs, cache),
    /// once the truncation point moved past them; deleting them from the
    /// engine is the caller's (see [`RaftLog::keys_through`]).
    pub fn forget_through(&mut self, to: u64) {
        // Forget the runs wholly before `to + 1`, keeping the one covering it.
        let covering = self.terms.partition_point(|&(start, _)| start <= to + 1);
        if covering > 1 {
            self.terms.drain(..covering - 1);
        }
        self.evict_cache_through(to);
    }

    /// The engine key range `[start, end)` of every entry up to `to`,
    /// from index 0: deleting it also removes entries an earlier deletion
    /// left behind (one lost in a crash).
    pub fn keys_through(&self, to: u64) -> (Vec<u8>, Vec<u8>) {
        (self.key(0), self.key(to + 1))
    }

    /// Stages the removal of every entry into `wb` and starts the log over
    /// after `truncated` (a snapshot was installed).
    pub fn reset(&mut self, truncated: Truncated, wb: &mut WriteBatch) {
        wb.delete_range(Cf::Default, self.key(0), self.key(u64::MAX));
        self.last_index = truncated.index;
        self.last_term = truncated.term;
        self.terms.clear();
        self.clear_cache();
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
        if self.terms.first().is_some_and(|&(start, _)| start <= idx) {
            let run = self.terms.partition_point(|&(start, _)| start <= idx) - 1;
            return Ok(self.terms[run].1);
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
        if let Some(first) = self.cache.front().map(|e| e.index).filter(|&first| first <= low) {
            for e in self.cache.range((low - first) as usize..(high - first) as usize) {
                size += u64::from(e.compute_size());
                if !out.is_empty() && size > max {
                    break;
                }
                out.push(e.clone());
            }
            return Ok(out);
        }
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

    #[test]
    fn terms_kept_in_memory_agree_with_the_engine_through_conflicts_and_compaction() {
        let engine: EngineRef = Arc::new(MemEngine::new());
        let t = Truncated { index: 5, term: 5 };
        let mut log = RaftLog::open(engine.clone(), b"g/1/".to_vec(), t).unwrap();
        let check = |log: &RaftLog, t: Truncated| {
            // A reopened log knows only its last term in memory: it reads the engine.
            let fresh = RaftLog::open(engine.clone(), b"g/1/".to_vec(), t).unwrap();
            for i in t.index..=log.last_index() {
                assert_eq!(log.term(i, t).unwrap(), fresh.term(i, t).unwrap(), "term of {i}");
            }
        };
        let mut wb = WriteBatch::new();
        let run = |from: u64, to: u64, term: u64| (from..=to).map(|i| entry(i, term)).collect::<Vec<_>>();
        log.append(&run(6, 9, 6), &mut wb);
        log.append(&run(10, 12, 7), &mut wb);
        write(&engine, wb);
        check(&log, t);
        // A new leader overwrites from 11 on, shorter than before.
        let mut wb = WriteBatch::new();
        log.append(&run(11, 11, 9), &mut wb);
        write(&engine, wb);
        assert_eq!(log.term(11, t).unwrap(), 9);
        assert_eq!(log.term(10, t).unwrap(), 7);
        check(&log, t);
        let mut wb = WriteBatch::new();
        log.append(&run(12, 14, 9), &mut wb);
        write(&engine, wb);
        check(&log, t);
        // Compacted through 10: the runs before 11 are forgotten, the rest answer.
        let mut wb = WriteBatch::new();
        log.stage_delete(6, 10, &mut wb);
        write(&engine, wb);
        let t = Truncated { index: 10, term: 7 };
        assert!(log.term(9, t).is_err());
        check(&log, t);
        assert_eq!(log.terms, vec![(11, 9)]);
    }

    #[test]
    fn the_entry_cache_serves_what_the_engine_holds_until_applied() {
        let engine: EngineRef = Arc::new(MemEngine::new());
        let t = Truncated { index: 5, term: 5 };
        let mut log = RaftLog::open(engine.clone(), b"g/1/".to_vec(), t).unwrap();
        let run = |from: u64, to: u64, term: u64| (from..=to).map(|i| entry(i, term)).collect::<Vec<_>>();
        let mut wb = WriteBatch::new();
        log.append(&run(6, 12, 6), &mut wb);
        write(&engine, wb);
        // A conflicting append replaces the cached tail too.
        let mut wb = WriteBatch::new();
        log.append(&run(10, 11, 7), &mut wb);
        write(&engine, wb);
        assert_eq!(log.cached_entries(), 6);
        let from_engine = RaftLog::open(engine.clone(), b"g/1/".to_vec(), t).unwrap();
        assert_eq!(from_engine.cached_entries(), 0);
        for (low, high, max) in [(6, 12, None), (8, 11, None), (6, 12, Some(1)), (7, 12, Some(30))] {
            assert_eq!(
                log.entries(low, high, max, t).unwrap(),
                from_engine.entries(low, high, max, t).unwrap()
            );
        }
        // Applied through 8: those leave the cache, and are read from the engine.
        log.evict_cache_through(8);
        assert_eq!(log.cached_entries(), 3);
        assert_eq!(log.entries(6, 12, None, t).unwrap(), from_engine.entries(6, 12, None, t).unwrap());
        // A snapshot reset empties it.
        let mut wb = WriteBatch::new();
        log.reset(Truncated { index: 20, term: 8 }, &mut wb);
        assert_eq!(log.cached_entries(), 0);
    }
}
