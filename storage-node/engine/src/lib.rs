//! Storage engines behind one small trait.
//!
//! A node keeps two engines: the **kv engine** (all regions' user data in
//! column family `default`, region and apply state in `meta`) and the **raft
//! log store** (raft entries and hard state of every region). Both implement
//! [`Engine`], which knows nothing of RocksDB: the node's logic is written
//! against the trait, RocksDB ([`RocksEngine`]) serves production and
//! [`MemEngine`] makes unit tests fast. The raft log store can also be
//! [`RaftLogEngine`], on `raft-engine`, made for many raft groups' logs.
//!
//! Invariants:
//! - A [`WriteBatch`] is applied atomically: all of it or none of it, even
//!   across a crash. `sync = true` returns only after the batch is durable
//!   (fsync of the write-ahead log).
//! - A scan sees one consistent point-in-time view of the engine; so does
//!   everything read through one [`EngineSnapshot`] (a batch get, several
//!   scans of one request: never half of a concurrent batch).
//! - Errors from the engine are not retryable by the caller: an I/O error
//!   while applying raft state means the node cannot keep its promises and
//!   must stop (see `Error::is_deterministic` in the raftstore).

mod mem;
mod raft_log;
mod rocks;

pub use mem::MemEngine;
pub use raft_log::{LogKeys, PlainLogKeys, RaftLogEngine};
pub use rocks::RocksEngine;

use std::sync::Arc;

/// A column family. Every engine has all of them (the raft log store uses
/// only `Default`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// User data (keys prefixed by `keys::DATA_PREFIX`).
    Default,
    /// Node-local records: store ident, region state, apply state.
    Meta,
}

impl Cf {
    /// Every column family, in a fixed order.
    pub const ALL: [Cf; 2] = [Cf::Default, Cf::Meta];

    /// The RocksDB name of the column family.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Default => "default",
            Cf::Meta => "meta",
        }
    }
}

/// An engine failure: I/O, corruption, or a closed database.
#[derive(Clone, Debug, thiserror::Error)]
#[error("engine: {0}")]
pub struct EngineError(pub String);

/// Result of engine operations.
pub type Result<T> = std::result::Result<T, EngineError>;

/// One change inside a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    Put {
        cf: Cf,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        cf: Cf,
        key: Vec<u8>,
    },
    /// Deletes `[start, end)`; `end` must be non-empty.
    DeleteRange {
        cf: Cf,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// Changes applied atomically by [`Engine::write`].
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
    bytes: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value` in `cf`.
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        let (key, value) = (key.into(), value.into());
        self.bytes += key.len() + value.len();
        self.ops.push(WriteOp::Put { cf, key, value });
    }

    /// Removes `key` from `cf`.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        let key = key.into();
        self.bytes += key.len();
        self.ops.push(WriteOp::Delete { cf, key });
    }

    /// Removes every key in `[start, end)` of `cf`.
    pub fn delete_range(&mut self, cf: Cf, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        let (start, end) = (start.into(), end.into());
        self.bytes += start.len() + end.len();
        self.ops.push(WriteOp::DeleteRange { cf, start, end });
    }

    /// True if the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Approximate payload size in bytes.
    pub fn size_bytes(&self) -> usize {
        self.bytes
    }

    /// Moves every change of `other` to the end of `self`.
    pub fn append(&mut self, other: WriteBatch) {
        self.bytes += other.bytes;
        self.ops.extend(other.ops);
    }

    /// The changes, in order.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }
}

/// Direction and bounds of a scan: `[start, end)`, empty `end` = +infinity.
#[derive(Clone, Copy, Debug)]
pub struct ScanRange<'a> {
    pub start: &'a [u8],
    pub end: &'a [u8],
    /// Visit keys from high to low.
    pub reverse: bool,
}

/// A point-in-time, read-only view of an engine: every read through it sees
/// the engine as it was when the view was taken.
pub trait EngineSnapshot {
    /// The value of `key` in `cf`.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Visits the pairs of `range` in order until `visit` returns false.
    fn scan(&self, cf: Cf, range: ScanRange<'_>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()>;
}

/// A key-value engine with column families, atomic batches and consistent scans.
pub trait Engine: Send + Sync + 'static {
    /// A consistent view of the engine as of now (cheap: no copy).
    fn snapshot(&self) -> Box<dyn EngineSnapshot + '_>;

    /// The value of `key` in `cf`.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Applies `batch` atomically; with `sync`, durably before returning.
    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<()>;

    /// Makes every write so far durable, synced or not (a WAL sync).
    fn sync(&self) -> Result<()>;

    /// Visits the pairs of `range` in order, from one point-in-time view,
    /// until `visit` returns false.
    fn scan(&self, cf: Cf, range: ScanRange<'_>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()>;

    /// Replaces every pair of `cf` in `[start, end)` with `kvs` (ascending,
    /// all inside the range), durably. RocksDB writes the pairs into an SST
    /// file and ingests it, which is how a received region snapshot lands.
    fn ingest_range(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        kvs: &mut dyn Iterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<()>;

    /// Approximate bytes used on disk (or in memory), for store heartbeats.
    fn used_bytes(&self) -> u64;

    /// Internal statistics for metrics; engines without any report none.
    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }
}

/// What an engine reports about itself for metrics (RocksDB's properties
/// and tickers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Bytes in memtables, by column family.
    pub memtable_bytes: Vec<(Cf, u64)>,
    /// Bytes compaction is estimated to still rewrite, by column family.
    pub pending_compaction_bytes: Vec<(Cf, u64)>,
    /// Block cache (hits, misses) since the engine opened.
    pub block_cache: Option<(u64, u64)>,
}

/// A shared engine handle.
pub type EngineRef = Arc<dyn Engine>;

/// The two engines of a node.
#[derive(Clone)]
pub struct Engines {
    /// User data and region meta.
    pub kv: EngineRef,
    /// Raft entries and hard states.
    pub raft: EngineRef,
}

/// [`Engine::ingest_range`] as one synced batch: a range delete, then the
/// pairs (for engines with no file ingestion of their own).
pub fn ingest_as_batch(
    engine: &dyn Engine,
    cf: Cf,
    start: &[u8],
    end: &[u8],
    kvs: &mut dyn Iterator<Item = (Vec<u8>, Vec<u8>)>,
) -> Result<()> {
    let mut wb = WriteBatch::new();
    wb.delete_range(cf, start.to_vec(), end.to_vec());
    for (k, v) in kvs {
        wb.put(cf, k, v);
    }
    engine.write(&wb, true)
}

/// Collects up to `limit` pairs of a scan (0 = no limit).
pub fn scan_collect(
    engine: &dyn Engine,
    cf: Cf,
    range: ScanRange<'_>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    engine.scan(cf, range, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        limit == 0 || out.len() < limit
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract every engine implementation must keep.
    pub(crate) fn check_engine_contract(e: &dyn Engine) {
        let mut b = WriteBatch::new();
        for k in [b"a", b"b", b"c", b"d"] {
            b.put(Cf::Default, k.to_vec(), k.to_vec());
        }
        b.put(Cf::Meta, b"a".to_vec(), b"meta".to_vec());
        e.write(&b, true).unwrap();
        assert_eq!(e.get(Cf::Default, b"b").unwrap(), Some(b"b".to_vec()));
        assert_eq!(e.get(Cf::Meta, b"a").unwrap(), Some(b"meta".to_vec()));
        assert_eq!(e.get(Cf::Meta, b"b").unwrap(), None);

        let fwd =
            scan_collect(e, Cf::Default, ScanRange { start: b"b", end: b"d", reverse: false }, 0).unwrap();
        assert_eq!(fwd.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), vec![b"b", b"c"]);
        let rev =
            scan_collect(e, Cf::Default, ScanRange { start: b"a", end: b"", reverse: true }, 3).unwrap();
        assert_eq!(rev.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), vec![b"d", b"c", b"b"]);

        let mut b = WriteBatch::new();
        b.delete_range(Cf::Default, b"b".to_vec(), b"d".to_vec());
        b.delete(Cf::Default, b"a".to_vec());
        e.write(&b, false).unwrap();
        let all =
            scan_collect(e, Cf::Default, ScanRange { start: b"", end: b"", reverse: false }, 0).unwrap();
        assert_eq!(all, vec![(b"d".to_vec(), b"d".to_vec())]);

        // Ingesting a range replaces exactly that range.
        let mut b = WriteBatch::new();
        for k in [b"a", b"b", b"c", b"x"] {
            b.put(Cf::Default, k.to_vec(), b"old".to_vec());
        }
        e.write(&b, false).unwrap();
        let mut kvs = vec![(b"b".to_vec(), b"new".to_vec()), (b"bb".to_vec(), b"new".to_vec())].into_iter();
        e.ingest_range(Cf::Default, b"b", b"d", &mut kvs).unwrap();
        let all =
            scan_collect(e, Cf::Default, ScanRange { start: b"", end: b"", reverse: false }, 0).unwrap();
        let keys: Vec<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![&b"a"[..], b"b", b"bb", b"d", b"x"]);
        assert_eq!(e.get(Cf::Default, b"b").unwrap(), Some(b"new".to_vec()));
        // An empty ingest just clears the range.
        e.ingest_range(Cf::Default, b"a", b"c", &mut std::iter::empty()).unwrap();
        assert_eq!(e.get(Cf::Default, b"b").unwrap(), None);
        assert_eq!(e.get(Cf::Default, b"x").unwrap(), Some(b"old".to_vec()));

        // A snapshot keeps its view while the engine changes.
        let snap = e.snapshot();
        let mut b = WriteBatch::new();
        b.put(Cf::Default, b"x".to_vec(), b"newer".to_vec());
        b.put(Cf::Default, b"y".to_vec(), b"newer".to_vec());
        e.write(&b, false).unwrap();
        assert_eq!(snap.get(Cf::Default, b"x").unwrap(), Some(b"old".to_vec()));
        assert_eq!(snap.get(Cf::Default, b"y").unwrap(), None);
        let mut seen = Vec::new();
        snap.scan(Cf::Default, ScanRange { start: b"w", end: b"", reverse: false }, &mut |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
        assert_eq!(seen, vec![(b"x".to_vec(), b"old".to_vec())]);
        assert_eq!(e.get(Cf::Default, b"y").unwrap(), Some(b"newer".to_vec()));
    }

    #[test]
    fn mem_engine_power_loss_keeps_exactly_the_synced_prefix() {
        let e = MemEngine::new();
        let put = |k: &[u8], sync: bool| {
            let mut b = WriteBatch::new();
            b.put(Cf::Default, k.to_vec(), b"v".to_vec());
            e.write(&b, sync).unwrap();
        };
        put(b"a", false);
        put(b"b", true); // makes a durable too, as a WAL sync does
        put(b"c", false);
        let after = e.after_power_loss();
        let keys: Vec<Vec<u8>> =
            scan_collect(&after, Cf::Default, ScanRange { start: b"", end: b"", reverse: false }, 0)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(e.get(Cf::Default, b"c").unwrap(), Some(b"v".to_vec()), "the live engine has everything");
    }

    #[test]
    fn mem_engine_keeps_the_contract() {
        check_engine_contract(&MemEngine::new());
    }

    #[test]
    fn rocks_engine_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        check_engine_contract(&RocksEngine::open(dir.path()).unwrap());
    }

    #[test]
    fn rocks_engine_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = RocksEngine::open(dir.path()).unwrap();
            let mut b = WriteBatch::new();
            b.put(Cf::Meta, b"k".to_vec(), b"v".to_vec());
            e.write(&b, true).unwrap();
        }
        let e = RocksEngine::open(dir.path()).unwrap();
        assert_eq!(e.get(Cf::Meta, b"k").unwrap(), Some(b"v".to_vec()));
    }
}
