//! In-memory engine for unit tests: one ordered map per column family.
//!
//! It also models what survives a power loss, as RocksDB with its
//! write-ahead log behaves: a write with `sync` is durable together with
//! every write before it; writes without `sync` after the last synced one
//! are lost. [`MemEngine::after_power_loss`] returns the engine a restart
//! would find.

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::RwLock;

use super::{Cf, Engine, EngineSnapshot, Result, ScanRange, WriteBatch, WriteOp};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// An [`Engine`] held in memory. Lost on drop.
#[derive(Default)]
pub struct MemEngine {
    cfs: RwLock<BTreeMap<Cf, Map>>,
    /// What a power loss would leave: the state as of the last synced write,
    /// and the unsynced batches written since.
    durable: parking_lot::Mutex<(BTreeMap<Cf, Map>, Vec<WriteBatch>)>,
}

impl MemEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    /// The engine as a restart after a power loss now would find it: every
    /// write up to the last synced one, none after.
    pub fn after_power_loss(&self) -> MemEngine {
        let durable = self.durable.lock().0.clone();
        MemEngine {
            cfs: RwLock::new(durable.clone()),
            durable: parking_lot::Mutex::new((durable, Vec::new())),
        }
    }
}

fn apply(cfs: &mut BTreeMap<Cf, Map>, batch: &WriteBatch) {
    for op in batch.ops() {
        match op {
            WriteOp::Put { cf, key, value } => {
                cfs.entry(*cf).or_default().insert(key.clone(), value.clone());
            }
            WriteOp::Delete { cf, key } => {
                cfs.entry(*cf).or_default().remove(key);
            }
            WriteOp::DeleteRange { cf, start, end } => {
                let m = cfs.entry(*cf).or_default();
                let doomed: Vec<Vec<u8>> = m
                    .range::<[u8], _>((Bound::Included(start.as_slice()), Bound::Excluded(end.as_slice())))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    m.remove(&k);
                }
            }
        }
    }
}

fn bounds<'a>(range: &ScanRange<'a>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    let end = if range.end.is_empty() { Bound::Unbounded } else { Bound::Excluded(range.end) };
    (Bound::Included(range.start), end)
}

/// A copy of the maps (tests only: small).
struct MemSnapshot(BTreeMap<Cf, Map>);

fn scan_maps(
    cfs: &BTreeMap<Cf, Map>,
    cf: Cf,
    range: ScanRange<'_>,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<()> {
    let Some(m) = cfs.get(&cf) else { return Ok(()) };
    let it = m.range::<[u8], _>(bounds(&range));
    if range.reverse {
        for (k, v) in it.rev() {
            if !visit(k, v) {
                break;
            }
        }
    } else {
        for (k, v) in it {
            if !visit(k, v) {
                break;
            }
        }
    }
    Ok(())
}

impl EngineSnapshot for MemSnapshot {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(&cf).and_then(|m| m.get(key).cloned()))
    }

    fn scan(&self, cf: Cf, range: ScanRange<'_>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        scan_maps(&self.0, cf, range, visit)
    }
}

impl Engine for MemEngine {
    fn snapshot(&self) -> Box<dyn EngineSnapshot + '_> {
        Box::new(MemSnapshot(self.cfs.read().clone()))
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.cfs.read().get(&cf).and_then(|m| m.get(key).cloned()))
    }

    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<()> {
        let mut cfs = self.cfs.write();
        apply(&mut cfs, batch);
        let mut durable = self.durable.lock();
        if sync {
            let (state, unsynced) = &mut *durable;
            for b in unsynced.drain(..) {
                apply(state, &b);
            }
            apply(state, batch);
        } else {
            durable.1.push(batch.clone());
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let (state, unsynced) = &mut *self.durable.lock();
        for b in unsynced.drain(..) {
            apply(state, &b);
        }
        Ok(())
    }

    fn scan(&self, cf: Cf, range: ScanRange<'_>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        scan_maps(&self.cfs.read(), cf, range, visit)
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
        self.cfs.read().values().flat_map(|m| m.iter()).map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }
}
