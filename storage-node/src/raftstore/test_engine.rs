//! Test support: an in-memory engine that lets a test look at every write
//! as it reaches the engine (what else had happened by then).

use std::sync::Arc;

use crate::engine::{Cf, Engine, EngineSnapshot, MemEngine, Result, ScanRange, WriteBatch};

/// Called with each batch and its `sync` flag, before the batch is written.
pub type OnWrite = Box<dyn Fn(&WriteBatch, bool) + Send + Sync>;

/// A [`MemEngine`] that calls `on_write` before every write.
pub struct WatchedEngine {
    pub inner: Arc<MemEngine>,
    on_write: OnWrite,
}

impl WatchedEngine {
    pub fn new(inner: Arc<MemEngine>, on_write: OnWrite) -> WatchedEngine {
        WatchedEngine { inner, on_write }
    }
}

impl Engine for WatchedEngine {
    fn snapshot(&self) -> Box<dyn EngineSnapshot + '_> {
        self.inner.snapshot()
    }
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(cf, key)
    }
    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<()> {
        (self.on_write)(batch, sync);
        self.inner.write(batch, sync)
    }
    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }
    fn scan(&self, cf: Cf, r: ScanRange<'_>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        self.inner.scan(cf, r, visit)
    }
    fn ingest_range(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        kvs: &mut dyn Iterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<()> {
        self.inner.ingest_range(cf, start, end, kvs)
    }
    fn used_bytes(&self) -> u64 {
        self.inner.used_bytes()
    }
}
