//! The split checker: measures regions and picks split keys, off the store loop.
//!
//! The store loop sends a [`SplitCheckTask`] for a leader region that grew by
//! about 1/16 of the split size since its last check (or when PD asks for a
//! split without keys). A worker thread scans the region's data in the kv
//! engine, counting bytes (key + stored value) and keys, and answers with a
//! `StoreMsg::SplitCheckResult`: the region's size, and the keys to split at
//! — one every `split_size` bytes or `split_keys` keys — if the region is
//! over `max_size` / `max_keys`, or the middle key if asked to halve it.
//! The result names the epoch it measured; the store ignores it if the
//! region changed meanwhile.

use crossbeam_channel::{Receiver, Sender};
use mnemo_proto::types::Region;

use super::{StoreMsg, StoreRouter};
use crate::engine::{Cf, EngineRef, ScanRange};
use crate::keys;

/// At most this many keys are split off in one batch split.
pub const MAX_SPLIT_KEYS: usize = 10;

/// Size thresholds (`[coprocessor]` config).
#[derive(Clone, Copy, Debug)]
pub struct SplitLimits {
    /// Bytes per region after a split (`region-split-size`).
    pub split_size: u64,
    /// Keys per region after a split (`region-split-keys`).
    pub split_keys: u64,
    /// A region is split once over this many bytes (`region-max-size`).
    pub max_size: u64,
    /// ... or over this many keys (`region-max-keys`).
    pub max_keys: u64,
}

/// A region to measure.
pub struct SplitCheckTask {
    /// The region as the leader saw it.
    pub region: Region,
    /// Split into halves regardless of size (a split requested by PD without keys).
    pub halve: bool,
}

/// What a check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SplitCheckOutcome {
    /// Bytes of the region's data.
    pub size: u64,
    /// Number of keys.
    pub keys: u64,
    /// Where to split, sorted, each strictly inside the region.
    pub split_keys: Vec<Vec<u8>>,
}

/// Starts the worker thread; it stops when the returned sender is dropped.
pub fn spawn(kv: EngineRef, limits: SplitLimits, store_tx: StoreRouter) -> Sender<SplitCheckTask> {
    let (tx, rx): (Sender<SplitCheckTask>, Receiver<SplitCheckTask>) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("split-check".into())
        .spawn(move || {
            for task in rx {
                match check(&kv, &task.region, limits, task.halve) {
                    Ok(outcome) => {
                        let msg = StoreMsg::SplitCheckResult {
                            region_id: task.region.id,
                            epoch: task.region.epoch,
                            outcome,
                        };
                        if store_tx.send(msg).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(region = %task.region.id, "split check failed: {e}"),
                }
            }
        })
        .expect("spawn split-check thread");
    tx
}

/// Measures `region` and picks its split keys.
pub fn check(
    kv: &EngineRef,
    region: &Region,
    limits: SplitLimits,
    halve: bool,
) -> crate::engine::Result<SplitCheckOutcome> {
    let start = keys::data_key(&region.start_key);
    let end = keys::data_end_key(&region.end_key);
    let mut out = SplitCheckOutcome::default();
    let (mut cur_size, mut cur_keys) = (0u64, 0u64);
    let mut candidates = Vec::new();
    let mut sizes = Vec::new();
    kv.scan(Cf::Default, ScanRange { start: &start, end: &end, reverse: false }, &mut |k, v| {
        let size = (k.len() + v.len()) as u64;
        if cur_keys > 0 && (cur_size + size > limits.split_size || cur_keys + 1 > limits.split_keys) {
            if candidates.len() < MAX_SPLIT_KEYS {
                candidates.push(keys::origin_key(k).to_vec());
            }
            cur_size = 0;
            cur_keys = 0;
        }
        cur_size += size;
        cur_keys += 1;
        out.size += size;
        out.keys += 1;
        if halve {
            sizes.push((keys::origin_key(k).to_vec(), size));
        }
        true
    })?;
    if halve {
        let mut acc = 0;
        for (i, (k, s)) in sizes.iter().enumerate() {
            acc += s;
            if acc * 2 >= out.size && i > 0 {
                out.split_keys = vec![k.clone()];
                break;
            }
        }
    } else if out.size > limits.max_size || out.keys > limits.max_keys {
        out.split_keys = candidates;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::{Engine, MemEngine, WriteBatch};

    fn engine_with(n: usize) -> EngineRef {
        let e = MemEngine::new();
        let mut wb = WriteBatch::new();
        for i in 0..n {
            wb.put(Cf::Default, keys::data_key(format!("k{i:03}").as_bytes()), vec![0u8; 96]);
        }
        e.write(&wb, false).unwrap();
        Arc::new(e)
    }

    const LIMITS: SplitLimits =
        SplitLimits { split_size: 1000, split_keys: 1000, max_size: 1500, max_keys: 1500 };

    #[test]
    fn small_region_is_not_split() {
        let kv = engine_with(10);
        let out = check(&kv, &Region::default(), LIMITS, false).unwrap();
        assert_eq!((out.keys, out.split_keys.len()), (10, 0));
        assert_eq!(out.size, 10 * (5 + 96));
    }

    #[test]
    fn big_region_splits_every_split_size() {
        // 40 keys of ~101 bytes: ~4 KiB, split every ~1000 bytes (9 keys).
        let kv = engine_with(40);
        let out = check(&kv, &Region::default(), LIMITS, false).unwrap();
        assert_eq!(
            out.split_keys,
            vec![b"k009".to_vec(), b"k018".to_vec(), b"k027".to_vec(), b"k036".to_vec()]
        );
    }

    #[test]
    fn halving_picks_the_middle_key() {
        let kv = engine_with(10);
        let out = check(&kv, &Region::default(), LIMITS, true).unwrap();
        assert_eq!(out.split_keys, vec![b"k004".to_vec()]);
    }

    #[test]
    fn split_keys_stay_inside_the_region() {
        let kv = engine_with(40);
        let region = Region { start_key: b"k010".to_vec(), end_key: b"k020".to_vec(), ..Default::default() };
        let out = check(
            &kv,
            &region,
            SplitLimits { split_size: 300, split_keys: 100, max_size: 400, max_keys: 100 },
            false,
        )
        .unwrap();
        assert_eq!(out.keys, 10);
        assert!(out
            .split_keys
            .iter()
            .all(|k| region.contains(k) && k.as_slice() > region.start_key.as_slice()));
        assert!(!out.split_keys.is_empty());
    }
}
