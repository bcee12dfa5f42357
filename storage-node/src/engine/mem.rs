//! In-memory engine for unit tests: one ordered map per column family.

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::RwLock;

use super::{Cf, Engine, Result, ScanRange, WriteBatch, WriteOp};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// An [`Engine`] held in memory; `sync` is a no-op. Lost on drop.
#[derive(Default)]
pub struct MemEngine {
    cfs: RwLock<BTreeMap<Cf, Map>>,
}

impl MemEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }
}

fn bounds<'a>(range: &ScanRange<'a>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    let end = if range.end.is_empty() { Bound::Unbounded } else { Bound::Excluded(range.end) };
    (Bound::Included(range.start), end)
}

impl Engine for MemEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.cfs.read().get(&cf).and_then(|m| m.get(key).cloned()))
    }

    fn write(&self, batch: &WriteBatch, _sync: bool) -> Result<()> {
        let mut cfs = self.cfs.write();
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
                        .range::<[u8], _>((
                            Bound::Included(start.as_slice()),
                            Bound::Excluded(end.as_slice()),
                        ))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        m.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn scan(&self, cf: Cf, range: ScanRange<'_>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let cfs = self.cfs.read();
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

    fn ingest_range(
        &self,
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
        self.write(&wb, true)
    }

    fn used_bytes(&self) -> u64 {
        self.cfs.read().values().flat_map(|m| m.iter()).map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }
}
