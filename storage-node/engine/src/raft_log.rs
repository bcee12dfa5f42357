//! The raft log store on `raft-engine`, behind [`Engine`].
//!
//! `raft-engine` (the log store TiKV uses) keeps every raft group's entries
//! in append-only files with an in-memory index per group — no memtable
//! skip list, no compaction — and small per-group key-values fully in memory.
//! A node's raft log store holds just two kinds of records, and
//! [`RaftLogEngine`] maps [`Engine`]'s operations onto them:
//!
//! - **entries**: keys that the [`LogKeys`] layout recognises as
//!   `(group, index)`. A run of puts of consecutive indexes of one group
//!   becomes one `add_entries`; an append starting inside the group's log
//!   replaces what follows, as raft requires. A range delete of one group's
//!   entries must start at its first index (log GC, a reset: a compaction) or
//!   lie past its last one once the batch's appends are counted (the tail a
//!   shorter conflicting append already dropped) — the only deletes raft
//!   logs make; any other is refused with an error, nothing written.
//! - **everything else** (hard states, the pending snapshot, peer ids): one
//!   key-value space per column family, each a reserved `raft-engine` group.
//!   A delete is written as a tombstone value, never as a `raft-engine`
//!   delete: when `raft-engine` purges old files it rewrites the live
//!   key-values of a group but not the deletes that followed older
//!   rewritten values, so a deleted key could come back after a restart.
//!
//! A [`WriteBatch`] becomes one `LogBatch`, which `raft-engine` writes
//! atomically (one record, checksummed; a torn tail is dropped at recovery);
//! `sync` fsyncs it. Reads of one group's entry range go to the group's index;
//! scans wider than that (tests, tools) merge the key-values with every
//! group's entries, and [`Engine::snapshot`] copies what it covers into memory
//! — neither is on a node's hot path. Old log files are purged by a
//! background thread every [`PURGE_INTERVAL`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::Entry;
use raft_engine::{Command, LogBatch, MessageExt, ReadableSize};

use crate::{Cf, Engine, EngineError, EngineSnapshot, MemEngine, Result, ScanRange, WriteBatch, WriteOp};

/// How the raft log store's keys name entries.
pub trait LogKeys: Send + Sync + 'static {
    /// `(group, index)` if `key` is the key of a raft log entry.
    fn entry(&self, key: &[u8]) -> Option<(u64, u64)>;
    /// The key of entry `index` of `group`.
    fn entry_key(&self, group: u64, index: u64) -> Vec<u8>;
}

/// A layout for tests and tools: entry `i` of group `g` at `L`, `g` (u64
/// BE), `i` (u64 BE); any other key is a key-value.
pub struct PlainLogKeys;

impl LogKeys for PlainLogKeys {
    fn entry(&self, key: &[u8]) -> Option<(u64, u64)> {
        let rest = key.strip_prefix(b"L").filter(|r| r.len() == 16)?;
        Some((u64::from_be_bytes(rest[..8].try_into().ok()?), u64::from_be_bytes(rest[8..].try_into().ok()?)))
    }

    fn entry_key(&self, group: u64, index: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(17);
        k.push(b'L');
        k.extend_from_slice(&group.to_be_bytes());
        k.extend_from_slice(&index.to_be_bytes());
        k
    }
}

/// How often old log files are purged.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(10);

/// First byte of a stored key-value: a live value follows, or the key is deleted.
const LIVE: u8 = 1;
const DELETED: u8 = 0;

/// Key of the record a synced write of nothing writes, so that it fsyncs
/// (`raft-engine` returns at once from an empty batch).
const SYNC_KEY: &[u8] = b"sync";

/// The live value of a stored key-value (`None`: a tombstone).
fn live(stored: &[u8]) -> Option<&[u8]> {
    match stored.split_first() {
        Some((&LIVE, v)) => Some(v),
        _ => None,
    }
}

fn stored(value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + 1);
    v.push(LIVE);
    v.extend_from_slice(value);
    v
}

/// The `raft-engine` groups holding the non-entry key-values, one per
/// column family (raft group ids are region ids, allocated from 1 up).
fn kv_group(cf: Cf) -> u64 {
    match cf {
        Cf::Default => u64::MAX,
        Cf::Meta => u64::MAX - 1,
    }
}

struct Entries;

impl MessageExt for Entries {
    type Entry = Entry;

    fn index(e: &Entry) -> u64 {
        e.index
    }
}

fn err(e: impl std::fmt::Display) -> EngineError {
    EngineError(format!("raft-engine: {e}"))
}

/// The raft log store on `raft-engine`.
pub struct RaftLogEngine {
    log: Arc<raft_engine::Engine>,
    keys: Box<dyn LogKeys>,
    /// Stops the purge thread (dropped: the thread sees the channel close).
    stop: Mutex<Option<mpsc::Sender<()>>>,
    purger: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for RaftLogEngine {
    fn drop(&mut self) {
        drop(self.stop.lock().expect("stop lock").take());
        if let Some(t) = self.purger.lock().expect("purger lock").take() {
            let _ = t.join();
        }
    }
}

/// The span `(first, last)` of a group's entries as a batch being built
/// leaves it (`None`: no entries).
type Span = Option<(u64, u64)>;

impl RaftLogEngine {
    /// Opens (or creates) the store in `dir`, recovering what its files hold.
    pub fn open(dir: &Path, keys: impl LogKeys) -> Result<RaftLogEngine> {
        Self::open_sized(dir, keys, ReadableSize::mb(64), ReadableSize::mb(512))
    }

    /// [`RaftLogEngine::open`] with log files of `file_size`, purged once
    /// they hold more than `purge_threshold`.
    fn open_sized(
        dir: &Path,
        keys: impl LogKeys,
        file_size: ReadableSize,
        purge_threshold: ReadableSize,
    ) -> Result<RaftLogEngine> {
        let cfg = raft_engine::Config {
            dir: dir.to_string_lossy().into_owned(),
            // One recovery thread: nodes share small machines.
            recovery_threads: 1,
            target_file_size: file_size,
            purge_threshold,
            // No lz4 on the store loop's thread: CPU, not disk, is what
            // writes run out of.
            batch_compression_threshold: ReadableSize(0),
            ..Default::default()
        };
        let log = Arc::new(raft_engine::Engine::open(cfg).map_err(err)?);
        let (stop, stopped) = mpsc::channel::<()>();
        let purging = log.clone();
        let purger = std::thread::Builder::new()
            .name("raft-log-purge".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(PURGE_INTERVAL) {
                    // Groups holding back the oldest file are compacted by
                    // the node's own log GC; nothing to force here.
                    if let Err(e) = purging.purge_expired_files() {
                        eprintln!("raft-engine purge failed: {e}");
                    }
                }
            })
            .map_err(err)?;
        Ok(RaftLogEngine {
            log,
            keys: Box::new(keys),
            stop: Mutex::new(Some(stop)),
            purger: Mutex::new(Some(purger)),
        })
    }

    fn span(&self, group: u64) -> Span {
        Some((self.log.first_index(group)?, self.log.last_index(group)?))
    }

    /// Translates `batch` into one `LogBatch`.
    fn log_batch(&self, batch: &WriteBatch) -> Result<LogBatch> {
        let mut lb = LogBatch::default();
        let mut spans: HashMap<u64, Span> = HashMap::new();
        // Key-values this batch puts (a range delete later in it must see them).
        let mut put: Vec<(Cf, &[u8])> = Vec::new();
        // A run of consecutive entries of one group, not yet added.
        let mut run: Option<(u64, Vec<Entry>)> = None;
        let flush = |lb: &mut LogBatch, run: &mut Option<(u64, Vec<Entry>)>| -> Result<()> {
            if let Some((group, entries)) = run.take() {
                lb.add_entries::<Entries>(group, &entries).map_err(err)?;
            }
            Ok(())
        };
        for op in batch.ops() {
            match op {
                WriteOp::Put { cf, key, value } => match (cf, self.keys.entry(key)) {
                    (Cf::Default, Some((group, index))) => {
                        if group >= kv_group(Cf::Meta) {
                            return Err(err(format!("group {group} is reserved for key-values")));
                        }
                        let e =
                            Entry::parse_from_bytes(value).map_err(|e| err(format!("entry {index}: {e}")))?;
                        if e.index != index {
                            return Err(err(format!("entry {} stored under index {index}", e.index)));
                        }
                        let span = *spans.entry(group).or_insert_with(|| self.span(group));
                        if let Some((first, last)) = span {
                            if index < first || index > last + 1 {
                                return Err(err(format!(
                                    "entry {index} of group {group} outside its log [{first}, {}]",
                                    last + 1
                                )));
                            }
                        }
                        let first = span.map_or(index, |(first, _)| first);
                        spans.insert(group, Some((first, index)));
                        match &mut run {
                            Some((g, entries))
                                if *g == group && entries.last().map(|l| l.index + 1) == Some(index) =>
                            {
                                entries.push(e)
                            }
                            _ => {
                                flush(&mut lb, &mut run)?;
                                run = Some((group, vec![e]));
                            }
                        }
                    }
                    _ => {
                        flush(&mut lb, &mut run)?;
                        lb.put(kv_group(*cf), key.clone(), stored(value)).map_err(err)?;
                        put.push((*cf, key));
                    }
                },
                WriteOp::Delete { cf, key } => {
                    flush(&mut lb, &mut run)?;
                    if *cf == Cf::Default && self.keys.entry(key).is_some() {
                        return Err(err("single entry deletes are not supported: delete a range"));
                    }
                    lb.put(kv_group(*cf), key.clone(), vec![DELETED]).map_err(err)?;
                }
                WriteOp::DeleteRange { cf, start, end } => {
                    flush(&mut lb, &mut run)?;
                    let inside = |k: &[u8]| k >= start.as_slice() && (end.is_empty() || k < end.as_slice());
                    let staged = put.iter().filter(|(c, k)| c == cf && inside(k)).map(|(_, k)| k.to_vec());
                    let mut keys: Vec<Vec<u8>> =
                        self.kv_keys(*cf, start, end)?.into_iter().chain(staged).collect();
                    keys.sort_unstable();
                    keys.dedup();
                    for key in keys {
                        lb.put(kv_group(*cf), key, vec![DELETED]).map_err(err)?;
                    }
                    if *cf == Cf::Default {
                        self.delete_entries(&mut lb, &mut spans, start, end)?;
                    }
                }
            }
        }
        flush(&mut lb, &mut run)?;
        Ok(lb)
    }

    /// Stages the removal of the entries with keys in `[start, end)`.
    ///
    /// The node's log GC deletes `[key(g, 0), key(g, to + 1))` from its own
    /// thread while the store loop appends: that is a `Compact { to + 1 }`,
    /// which removes only what lies below `to + 1` whatever was appended
    /// meanwhile, never a `Clean` judged from a span that may be stale.
    fn delete_entries(
        &self,
        lb: &mut LogBatch,
        spans: &mut HashMap<u64, Span>,
        start: &[u8],
        end: &[u8],
    ) -> Result<()> {
        if let (Some((g, a)), Some((h, b))) = (self.keys.entry(start), self.keys.entry(end)) {
            if g == h {
                return self.delete_indexes(lb, spans, g, a, b);
            }
        }
        // Wider ranges (tests, tools): every group's entries inside.
        let mut groups: Vec<u64> = self.log.raft_groups();
        groups.extend(spans.keys());
        groups.retain(|g| *g < kv_group(Cf::Meta));
        groups.sort_unstable();
        groups.dedup();
        for g in groups {
            let span = *spans.entry(g).or_insert_with(|| self.span(g));
            let range = ScanRange { start, end, reverse: false };
            if let Some((lo, hi)) = span.and_then(|span| self.indexes_in(g, span, &range)) {
                self.delete_indexes(lb, spans, g, lo, hi + 1)?;
            }
        }
        Ok(())
    }

    /// Stages the removal of entries `[a, b)` of `group`: a compaction
    /// (`a` at or below the first index), the whole log (`[0, MAX)`), or
    /// nothing (past the last index); a hole in the middle is refused.
    fn delete_indexes(
        &self,
        lb: &mut LogBatch,
        spans: &mut HashMap<u64, Span>,
        group: u64,
        a: u64,
        b: u64,
    ) -> Result<()> {
        if a >= b {
            return Ok(());
        }
        let span = *spans.entry(group).or_insert_with(|| self.span(group));
        if a == 0 && b == u64::MAX {
            lb.add_command(group, Command::Clean);
            spans.insert(group, None);
            return Ok(());
        }
        match span {
            Some((_, last)) if a > last => Ok(()),
            Some((first, _)) if a > first => Err(err(format!(
                "cannot delete entries [{a}, {b}) of group {group}: its log starts at {first}"
            ))),
            _ => {
                lb.add_command(group, Command::Compact { index: b });
                spans.insert(group, span.filter(|&(_, last)| b <= last).map(|(_, last)| (b, last)));
                Ok(())
            }
        }
    }

    /// The keys of the live key-values of `cf` in `[start, end)`.
    fn kv_keys(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut keys = Vec::new();
        self.log
            .scan_raw_messages(kv_group(cf), Some(start), (!end.is_empty()).then_some(end), false, |k, v| {
                if live(v).is_some() {
                    keys.push(k.to_vec());
                }
                true
            })
            .map_err(err)?;
        Ok(keys)
    }

    /// Entries `[lo, hi]` of `group`, encoded, visited in order (or reverse).
    fn visit_entries(
        &self,
        group: u64,
        lo: u64,
        hi: u64,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        // Chunks of 1, 2, 4, ... 256 entries: a reader that wants only the
        // first (the last entry, at open) or a few (a size limit) reads
        // little more than that.
        let mut chunk = 1u64;
        let mut out = Vec::new();
        let mut next = if reverse { hi } else { lo };
        loop {
            let (a, b) = if reverse {
                (next.saturating_sub(chunk - 1).max(lo), next)
            } else {
                (next, next.saturating_add(chunk - 1).min(hi))
            };
            chunk = (chunk * 2).min(256);
            out.clear();
            self.log.fetch_entries_to::<Entries>(group, a, b + 1, None, &mut out).map_err(err)?;
            let chunk: Box<dyn Iterator<Item = &Entry>> =
                if reverse { Box::new(out.iter().rev()) } else { Box::new(out.iter()) };
            for e in chunk {
                let v = e.write_to_bytes().map_err(err)?;
                if !visit(&self.keys.entry_key(group, e.index), &v) {
                    return Ok(());
                }
            }
            if reverse {
                if a == lo {
                    return Ok(());
                }
                next = a - 1;
            } else {
                if b == hi {
                    return Ok(());
                }
                next = b + 1;
            }
        }
    }

    /// The indexes `[lo, hi]` of `group`'s `span` whose keys lie in `range`.
    fn indexes_in(&self, group: u64, (first, last): (u64, u64), range: &ScanRange<'_>) -> Option<(u64, u64)> {
        // Keys grow with the index: the first index at or past a bound.
        let first_not = |below: &dyn Fn(&[u8]) -> bool| {
            let (mut a, mut b) = (first, last + 1);
            while a < b {
                let mid = a + (b - a) / 2;
                if below(&self.keys.entry_key(group, mid)) {
                    a = mid + 1;
                } else {
                    b = mid;
                }
            }
            a
        };
        let lo = first_not(&|k| k < range.start);
        let end = first_not(&|k| range.end.is_empty() || k < range.end);
        (lo < end).then(|| (lo, end - 1))
    }
}

impl Engine for RaftLogEngine {
    fn snapshot(&self) -> Box<dyn EngineSnapshot + '_> {
        // A copy: raft-engine has no snapshots, and no hot path takes one.
        let copy = || -> Result<MemEngine> {
            let copy = MemEngine::new();
            let mut wb = WriteBatch::new();
            let all = ScanRange { start: b"", end: b"", reverse: false };
            for cf in Cf::ALL {
                self.scan(cf, all, &mut |k, v| {
                    wb.put(cf, k.to_vec(), v.to_vec());
                    true
                })?;
            }
            copy.write(&wb, false)?;
            Ok(copy)
        };
        Box::new(OwnedSnapshot(copy()))
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let (Cf::Default, Some((group, index))) = (cf, self.keys.entry(key)) {
            let e = self.log.get_entry::<Entries>(group, index).map_err(err)?;
            return e.map(|e| e.write_to_bytes().map_err(err)).transpose();
        }
        Ok(self.log.get(kv_group(cf), key).and_then(|v| live(&v).map(<[u8]>::to_vec)))
    }

    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<()> {
        let mut lb = self.log_batch(batch)?;
        if lb.is_empty() {
            if !sync {
                return Ok(());
            }
            lb.put(kv_group(Cf::Meta), SYNC_KEY.to_vec(), vec![DELETED]).map_err(err)?;
        }
        self.log.write(&mut lb, sync).map_err(err)?;
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.write(&WriteBatch::new(), true)
    }

    fn scan(&self, cf: Cf, range: ScanRange<'_>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        // One group's entries (how raft logs read): straight from its index.
        if cf == Cf::Default {
            if let (Some((g, _)), Some((h, _))) = (self.keys.entry(range.start), self.keys.entry(range.end)) {
                if g == h {
                    return match self.span(g).and_then(|span| self.indexes_in(g, span, &range)) {
                        Some((lo, hi)) => self.visit_entries(g, lo, hi, range.reverse, visit),
                        None => Ok(()),
                    };
                }
            }
        }
        // Anything wider: key-values and every group's entries, merged.
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let end = (!range.end.is_empty()).then_some(range.end);
        self.log
            .scan_raw_messages(kv_group(cf), Some(range.start), end, false, |k, v| {
                if let Some(v) = live(v) {
                    pairs.push((k.to_vec(), v.to_vec()));
                }
                true
            })
            .map_err(err)?;
        if cf == Cf::Default {
            for g in self.log.raft_groups().into_iter().filter(|g| *g < kv_group(Cf::Meta)) {
                if let Some((lo, hi)) = self.span(g).and_then(|span| self.indexes_in(g, span, &range)) {
                    self.visit_entries(g, lo, hi, false, &mut |k, v| {
                        pairs.push((k.to_vec(), v.to_vec()));
                        true
                    })?;
                }
            }
        }
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if range.reverse {
            pairs.reverse();
        }
        for (k, v) in &pairs {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn ingest_range(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        kvs: &mut dyn Iterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<()> {
        crate::ingest_as_batch(self, cf, start, end, kvs)
    }

    fn used_bytes(&self) -> u64 {
        self.log.get_used_size() as u64
    }
}

/// A snapshot that owns its copy (or the error that stopped the copy,
/// returned by every read).
struct OwnedSnapshot(Result<MemEngine>);

impl EngineSnapshot for OwnedSnapshot {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.0.as_ref().map_err(Clone::clone)?.get(cf, key)
    }

    fn scan(&self, cf: Cf, range: ScanRange<'_>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        self.0.as_ref().map_err(Clone::clone)?.scan(cf, range, visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan_collect;

    use PlainLogKeys as TestKeys;

    fn put_entries(wb: &mut WriteBatch, group: u64, indexes: std::ops::RangeInclusive<u64>, term: u64) {
        for i in indexes {
            let e = Entry { index: i, term, data: vec![i as u8; 20].into(), ..Default::default() };
            wb.put(Cf::Default, TestKeys.entry_key(group, i), e.write_to_bytes().unwrap());
        }
    }

    fn all(e: &dyn Engine, cf: Cf) -> Vec<(Vec<u8>, Vec<u8>)> {
        scan_collect(e, cf, ScanRange { start: b"", end: b"", reverse: false }, 0).unwrap()
    }

    #[test]
    fn raft_log_engine_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        crate::tests::check_engine_contract(&RaftLogEngine::open(dir.path(), TestKeys).unwrap());
    }

    /// Every kind of write a raft log store gets (appends, conflicting
    /// shorter appends, compactions, resets, hard states), applied to the
    /// in-memory engine and to raft-engine: both hold the same, before and
    /// after a reopen, read whole and as one group's entry range.
    #[test]
    fn raft_log_engine_agrees_with_the_model_through_appends_conflicts_compactions_and_resets() {
        let dir = tempfile::tempdir().unwrap();
        let model = MemEngine::new();
        let mut engine = RaftLogEngine::open(dir.path(), TestKeys).unwrap();
        let key = |g, i| TestKeys.entry_key(g, i);
        let mut batches = Vec::new();
        // Two groups appending, with hard states beside.
        let mut wb = WriteBatch::new();
        put_entries(&mut wb, 1, 1..=10, 1);
        put_entries(&mut wb, 2, 6..=8, 1);
        wb.put(Cf::Default, b"hs/1".to_vec(), b"term 1".to_vec());
        batches.push(wb);
        // A new leader overwrites group 1 from 7 on, shorter: the old tail goes.
        let mut wb = WriteBatch::new();
        put_entries(&mut wb, 1, 7..=8, 2);
        wb.delete_range(Cf::Default, key(1, 9), key(1, 11));
        wb.put(Cf::Default, b"hs/1".to_vec(), b"term 2".to_vec());
        batches.push(wb);
        // Log GC of group 1 through 4; group 2 appends on.
        let mut wb = WriteBatch::new();
        wb.delete_range(Cf::Default, key(1, 0), key(1, 5));
        put_entries(&mut wb, 2, 9..=12, 1);
        batches.push(wb);
        // Group 2 takes a snapshot at 20: its log is reset, then appended past it.
        let mut wb = WriteBatch::new();
        wb.delete_range(Cf::Default, key(2, 0), key(2, u64::MAX));
        put_entries(&mut wb, 2, 21..=23, 3);
        wb.delete(Cf::Default, b"hs/1".to_vec());
        wb.put(Cf::Meta, b"meta".to_vec(), b"m".to_vec());
        batches.push(wb);
        // GC past everything group 1 holds, then it appends on.
        let mut wb = WriteBatch::new();
        wb.delete_range(Cf::Default, key(1, 0), key(1, 9));
        batches.push(wb);
        let mut wb = WriteBatch::new();
        put_entries(&mut wb, 1, 9..=9, 2);
        batches.push(wb);
        // A key put and deleted by a range in one batch is gone, as in RocksDB.
        let mut wb = WriteBatch::new();
        wb.put(Cf::Meta, b"x1".to_vec(), b"v".to_vec());
        wb.delete_range(Cf::Meta, b"x".to_vec(), b"y".to_vec());
        wb.put(Cf::Meta, b"x2".to_vec(), b"v".to_vec());
        batches.push(wb);
        for (n, wb) in batches.iter().enumerate() {
            model.write(wb, true).unwrap();
            engine.write(wb, n % 2 == 0).unwrap();
            for cf in Cf::ALL {
                assert_eq!(all(&engine, cf), all(&model, cf), "after batch {n}, {cf:?}");
            }
        }
        engine.sync().unwrap();
        drop(engine);
        engine = RaftLogEngine::open(dir.path(), TestKeys).unwrap();
        for cf in Cf::ALL {
            assert_eq!(all(&engine, cf), all(&model, cf), "after reopening, {cf:?}");
        }
        // One group's range, both ways, and the last entry as the log finds it.
        for reverse in [false, true] {
            let r = ScanRange { start: &key(2, 0), end: &key(2, 23), reverse };
            let got = scan_collect(&engine, Cf::Default, r, 0).unwrap();
            assert_eq!(got, scan_collect(&model, Cf::Default, r, 0).unwrap(), "reverse {reverse}");
            assert_eq!(got.len(), 2);
        }
        let last = scan_collect(
            &engine,
            Cf::Default,
            ScanRange { start: &key(1, 0), end: &key(1, u64::MAX), reverse: true },
            1,
        )
        .unwrap();
        assert_eq!(Entry::parse_from_bytes(&last[0].1).unwrap().index, 9);
        assert_eq!(engine.get(Cf::Default, &key(1, 8)).unwrap(), model.get(Cf::Default, &key(1, 8)).unwrap());
        assert_eq!(engine.get(Cf::Default, &key(1, 4)).unwrap(), None, "compacted");
    }

    #[test]
    fn deletes_raft_logs_never_make_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let engine = RaftLogEngine::open(dir.path(), TestKeys).unwrap();
        let mut wb = WriteBatch::new();
        put_entries(&mut wb, 1, 1..=10, 1);
        engine.write(&wb, true).unwrap();
        let before = all(&engine, Cf::Default);
        let mut hole = WriteBatch::new();
        hole.put(Cf::Default, b"hs".to_vec(), b"x".to_vec());
        hole.delete_range(Cf::Default, TestKeys.entry_key(1, 4), TestKeys.entry_key(1, 6));
        assert!(engine.write(&hole, true).is_err(), "a hole in the middle of a log");
        let mut gap = WriteBatch::new();
        put_entries(&mut gap, 1, 12..=12, 1);
        assert!(engine.write(&gap, true).is_err(), "an append leaving a gap");
        let mut one = WriteBatch::new();
        one.delete(Cf::Default, TestKeys.entry_key(1, 10));
        assert!(engine.write(&one, true).is_err(), "one entry deleted");
        assert_eq!(all(&engine, Cf::Default), before);
    }

    /// raft-engine's purge rewrites a group's live key-values into its
    /// rewrite files and drops old files, deletes and all: a delete must
    /// still hold after that and a restart.
    #[test]
    fn a_deleted_key_stays_deleted_after_its_value_was_rewritten_by_a_purge_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            RaftLogEngine::open_sized(dir.path(), TestKeys, ReadableSize::kb(4), ReadableSize::kb(8)).unwrap()
        };
        let engine = open();
        let kv = |k: &[u8], v: Option<&[u8]>| {
            let mut wb = WriteBatch::new();
            match v {
                Some(v) => wb.put(Cf::Default, k.to_vec(), v.to_vec()),
                None => wb.delete(Cf::Default, k.to_vec()),
            }
            wb
        };
        // Entries through several files, compacted, then purged: the old
        // files go and the key-values in them are rewritten.
        let roll_and_purge = |from: u64| {
            for i in from..from + 100 {
                let mut wb = WriteBatch::new();
                let e = Entry { index: i, term: 1, data: vec![7; 300].into(), ..Default::default() };
                wb.put(Cf::Default, TestKeys.entry_key(1, i), e.write_to_bytes().unwrap());
                engine.write(&wb, false).unwrap();
            }
            let mut wb = WriteBatch::new();
            wb.delete_range(Cf::Default, TestKeys.entry_key(1, 0), TestKeys.entry_key(1, from + 99));
            engine.write(&wb, true).unwrap();
            engine.log.purge_expired_files().unwrap();
        };
        engine.write(&kv(b"hs/1", Some(b"term 1")), true).unwrap();
        engine.write(&kv(b"hs/2", Some(b"term 1")), true).unwrap();
        roll_and_purge(1);
        engine.write(&kv(b"hs/1", None), true).unwrap();
        roll_and_purge(101);
        roll_and_purge(201);
        assert_eq!(engine.get(Cf::Default, b"hs/1").unwrap(), None);
        drop(engine);
        let engine = open();
        assert_eq!(engine.get(Cf::Default, b"hs/1").unwrap(), None, "the deleted key came back");
        assert_eq!(engine.get(Cf::Default, b"hs/2").unwrap(), Some(b"term 1".to_vec()));
        let last = TestKeys.entry_key(1, 300);
        assert!(engine.get(Cf::Default, &last).unwrap().is_some());
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files < 20, "old files purged ({files} left)");
    }
}
