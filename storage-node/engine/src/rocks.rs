//! RocksDB engine: one database, one column family per [`Cf`].

use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IngestExternalFileOptions, IteratorMode, Options, ReadOptions,
    SstFileWriter, WriteOptions, DB,
};

use super::{Cf, Engine, EngineError, EngineSnapshot, Result, ScanRange, WriteBatch, WriteOp};

/// An [`Engine`] on a RocksDB database in one directory.
pub struct RocksEngine {
    db: DB,
    path: PathBuf,
    /// The options the database was opened with: they hold its statistics.
    opts: Options,
}

fn err(e: rocksdb::Error) -> EngineError {
    EngineError(e.into_string())
}

impl RocksEngine {
    /// Opens (creating if missing) the database at `path` with every column family.
    pub fn open(path: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Tickers only (block cache hits and misses for metrics): no
        // histograms or timers, which would cost on every operation.
        opts.enable_statistics();
        opts.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers);
        let cfs = Cf::ALL.iter().map(|cf| ColumnFamilyDescriptor::new(cf.name(), Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(err)?;
        Ok(RocksEngine { db, path: path.to_path_buf(), opts })
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(cf.name()).expect("every column family is opened at start")
    }
}

/// `ops` in the order to hand them to RocksDB: each run of point writes
/// (puts, deletes) between range deletions sorted by column family and key,
/// stably (two writes of one key keep their order; a range deletion stays
/// between the writes it came between), so the result is the same. Sorted,
/// each memtable insert starts where the previous one ended instead of
/// searching the skip list from the top: a round's batch holds the writes
/// of many regions in no particular order, and those searches were the
/// largest single cost of a many-region write load.
fn sorted_runs(ops: &[WriteOp]) -> Vec<&WriteOp> {
    fn point_key(op: &WriteOp) -> Option<(Cf, &[u8])> {
        match op {
            WriteOp::Put { cf, key, .. } | WriteOp::Delete { cf, key } => Some((*cf, key)),
            WriteOp::DeleteRange { .. } => None,
        }
    }
    let mut out: Vec<&WriteOp> = ops.iter().collect();
    for run in out.split_mut(|op| point_key(op).is_none()) {
        run.sort_by(|a, b| point_key(a).cmp(&point_key(b)));
    }
    out
}

/// Read options bounding an iterator to `range`, and where it starts.
fn scan_options<'a>(range: &ScanRange<'a>) -> (ReadOptions, IteratorMode<'a>) {
    let mut ro = ReadOptions::default();
    ro.set_iterate_lower_bound(range.start.to_vec());
    if !range.end.is_empty() {
        ro.set_iterate_upper_bound(range.end.to_vec());
    }
    // Reverse: from the upper bound down; forward: from the start key up.
    let mode =
        if range.reverse { IteratorMode::End } else { IteratorMode::From(range.start, Direction::Forward) };
    (ro, mode)
}

/// Feeds an iterator's pairs to `visit` until it returns false.
fn visit_all(
    iter: impl Iterator<Item = std::result::Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<()> {
    for item in iter {
        let (k, v) = item.map_err(err)?;
        if !visit(&k, &v) {
            break;
        }
    }
    Ok(())
}

/// A RocksDB snapshot (sequence-number pinned view), released on drop.
struct RocksSnapshot<'a> {
    engine: &'a RocksEngine,
    snap: rocksdb::Snapshot<'a>,
}

impl EngineSnapshot for RocksSnapshot<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.snap.get_cf(self.engine.cf(cf), key).map_err(err)
    }

    fn scan(&self, cf: Cf, range: ScanRange<'_>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let (ro, mode) = scan_options(&range);
        visit_all(self.snap.iterator_cf_opt(self.engine.cf(cf), ro, mode), visit)
    }
}

impl Engine for RocksEngine {
    fn snapshot(&self) -> Box<dyn EngineSnapshot + '_> {
        Box::new(RocksSnapshot { engine: self, snap: self.db.snapshot() })
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf), key).map_err(err)
    }

    /// Writes `batch` with its point writes in key order (see [`sorted_runs`]).
    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in sorted_runs(batch.ops()) {
            match op {
                WriteOp::Put { cf, key, value } => wb.put_cf(self.cf(*cf), key, value),
                WriteOp::Delete { cf, key } => wb.delete_cf(self.cf(*cf), key),
                WriteOp::DeleteRange { cf, start, end } => wb.delete_range_cf(self.cf(*cf), start, end),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(err)
    }

    fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(err)
    }

    fn scan(&self, cf: Cf, range: ScanRange<'_>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let (ro, mode) = scan_options(&range);
        visit_all(self.db.iterator_cf_opt(self.cf(cf), ro, mode), visit)
    }

    fn ingest_range(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        kvs: &mut dyn Iterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<()> {
        // Clear the range first (synced); the ingested file then lands above
        // the range tombstone with a newer sequence number.
        let mut clear = WriteBatch::new();
        clear.delete_range(cf, start.to_vec(), end.to_vec());
        self.write(&clear, true)?;
        let mut kvs = kvs.peekable();
        if kvs.peek().is_none() {
            return Ok(());
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = self.path.join(format!("ingest-{}.sst", NEXT.fetch_add(1, Ordering::Relaxed)));
        let result = (|| {
            let opts = Options::default();
            let mut writer = SstFileWriter::create(&opts);
            writer.open(&path).map_err(err)?;
            for (k, v) in kvs {
                writer.put(k, v).map_err(err)?;
            }
            writer.finish().map_err(err)?;
            let mut io = IngestExternalFileOptions::default();
            io.set_move_files(true);
            self.db.ingest_external_file_cf_opts(self.cf(cf), &io, vec![&path]).map_err(err)
        })();
        let _ = std::fs::remove_file(&path);
        result
    }

    fn used_bytes(&self) -> u64 {
        fn dir_size(p: &Path) -> u64 {
            std::fs::read_dir(p)
                .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
                .unwrap_or(0)
        }
        dir_size(&self.path)
    }

    fn stats(&self) -> crate::EngineStats {
        let property = |cf: Cf, name: &str| {
            self.db.property_int_value_cf(self.cf(cf), name).ok().flatten().map(|v| (cf, v))
        };
        let ticker = |t| self.opts.get_ticker_count(t);
        crate::EngineStats {
            memtable_bytes: Cf::ALL
                .iter()
                .filter_map(|cf| property(*cf, "rocksdb.cur-size-all-mem-tables"))
                .collect(),
            pending_compaction_bytes: Cf::ALL
                .iter()
                .filter_map(|cf| property(*cf, "rocksdb.estimate-pending-compaction-bytes"))
                .collect(),
            block_cache: Some((
                ticker(rocksdb::statistics::Ticker::BlockCacheHit),
                ticker(rocksdb::statistics::Ticker::BlockCacheMiss),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_written_in_key_order_ends_as_written_in_its_own_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = RocksEngine::open(dir.path()).unwrap();
        let mut wb = WriteBatch::new();
        wb.put(Cf::Default, b"m".to_vec(), b"1".to_vec());
        wb.put(Cf::Meta, b"a".to_vec(), b"meta".to_vec());
        wb.put(Cf::Default, b"c".to_vec(), b"1".to_vec());
        wb.delete(Cf::Default, b"c".to_vec()); // the same key: after its put
        wb.delete_range(Cf::Default, b"l".to_vec(), b"n".to_vec()); // covers m=1 only
        wb.put(Cf::Default, b"m".to_vec(), b"2".to_vec());
        wb.put(Cf::Default, b"b".to_vec(), b"1".to_vec());
        wb.put(Cf::Default, b"b".to_vec(), b"2".to_vec());
        let order: Vec<String> = sorted_runs(wb.ops())
            .iter()
            .map(|op| match op {
                WriteOp::Put { cf, key, value } => {
                    format!(
                        "{}:{}={}",
                        cf.name(),
                        String::from_utf8_lossy(key),
                        String::from_utf8_lossy(value)
                    )
                }
                WriteOp::Delete { key, .. } => format!("del {}", String::from_utf8_lossy(key)),
                WriteOp::DeleteRange { .. } => "range".into(),
            })
            .collect();
        assert_eq!(
            order,
            [
                "default:c=1",
                "del c",
                "default:m=1",
                "meta:a=meta",
                "range",
                "default:b=1",
                "default:b=2",
                "default:m=2"
            ]
        );
        db.write(&wb, true).unwrap();
        assert_eq!(db.get(Cf::Default, b"m").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(db.get(Cf::Default, b"b").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(db.get(Cf::Default, b"c").unwrap(), None);
        assert_eq!(db.get(Cf::Meta, b"a").unwrap().as_deref(), Some(&b"meta"[..]));
    }
}
