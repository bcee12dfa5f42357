//! Read and write flow: bytes and keys each region served since its last
//! heartbeat, and the store's since its last store heartbeat, for PD's
//! `region topread|topwrite` and the store's rates.
//!
//! The gRPC handlers record what they served once it succeeded (a read:
//! the keys and values returned; a write: the keys and values of its
//! mutations, once applied); the PD worker takes the counts when it sends a
//! heartbeat, with the interval they cover. Counters are atomics behind a
//! read-mostly map, so recording costs a shared lock and four relaxed adds;
//! a region's entry is created on its first request. Statistics only: a
//! count that races with a heartbeat's take lands in the next interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use mnemo_proto::types::RegionId;
use parking_lot::RwLock;

/// Bytes and keys read and written over an interval of Unix seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub read_bytes: u64,
    pub read_keys: u64,
    pub written_bytes: u64,
    pub written_keys: u64,
    /// Start of the interval, Unix seconds.
    pub start: u64,
    /// End of the interval, Unix seconds.
    pub end: u64,
}

#[derive(Default)]
struct Counters {
    read_bytes: AtomicU64,
    read_keys: AtomicU64,
    written_bytes: AtomicU64,
    written_keys: AtomicU64,
    /// Unix seconds the counts run from.
    since: AtomicU64,
}

impl Counters {
    fn starting_now() -> Counters {
        let c = Counters::default();
        c.since.store(now_secs(), Relaxed);
        c
    }

    fn take(&self) -> Flow {
        let end = now_secs();
        Flow {
            read_bytes: self.read_bytes.swap(0, Relaxed),
            read_keys: self.read_keys.swap(0, Relaxed),
            written_bytes: self.written_bytes.swap(0, Relaxed),
            written_keys: self.written_keys.swap(0, Relaxed),
            start: self.since.swap(end, Relaxed),
            end,
        }
    }
}

/// The node's flow counters (one per node, shared by the gRPC handlers and
/// the PD worker).
pub struct FlowStats {
    regions: RwLock<HashMap<RegionId, Arc<Counters>>>,
    store: Counters,
}

impl Default for FlowStats {
    fn default() -> Self {
        FlowStats { regions: RwLock::new(HashMap::new()), store: Counters::starting_now() }
    }
}

impl FlowStats {
    /// Counts a read of `keys` keys, `bytes` bytes of keys and values, in `region`.
    pub fn record_read(&self, region: RegionId, keys: u64, bytes: u64) {
        let c = self.counters(region);
        c.read_keys.fetch_add(keys, Relaxed);
        c.read_bytes.fetch_add(bytes, Relaxed);
        self.store.read_keys.fetch_add(keys, Relaxed);
        self.store.read_bytes.fetch_add(bytes, Relaxed);
    }

    /// Counts a write of `keys` keys, `bytes` bytes of keys and values, in `region`.
    pub fn record_write(&self, region: RegionId, keys: u64, bytes: u64) {
        let c = self.counters(region);
        c.written_keys.fetch_add(keys, Relaxed);
        c.written_bytes.fetch_add(bytes, Relaxed);
        self.store.written_keys.fetch_add(keys, Relaxed);
        self.store.written_bytes.fetch_add(bytes, Relaxed);
    }

    fn counters(&self, region: RegionId) -> Arc<Counters> {
        if let Some(c) = self.regions.read().get(&region) {
            return c.clone();
        }
        self.regions.write().entry(region).or_insert_with(|| Arc::new(Counters::starting_now())).clone()
    }

    /// The region's counts since its last take, reset. A region that
    /// served nothing since is forgotten (so regions that left this store
    /// or went idle hold no entry); its next request starts a new interval.
    pub fn take_region(&self, region: RegionId) -> Flow {
        let taken = self.regions.read().get(&region).map(|c| c.take());
        match taken {
            Some(flow) => {
                if flow.read_keys == 0 && flow.written_keys == 0 {
                    self.regions.write().remove(&region);
                }
                flow
            }
            None => {
                let now = now_secs();
                Flow { start: now, end: now, ..Flow::default() }
            }
        }
    }

    /// The store's counts since the last take, reset.
    pub fn take_store(&self) -> Flow {
        self.store.take()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_region_and_store_and_reset_when_taken() {
        let f = FlowStats::default();
        f.record_read(RegionId(1), 2, 100);
        f.record_read(RegionId(1), 1, 10);
        f.record_write(RegionId(2), 3, 300);
        let r1 = f.take_region(RegionId(1));
        assert_eq!((r1.read_keys, r1.read_bytes, r1.written_keys, r1.written_bytes), (3, 110, 0, 0));
        assert!(r1.start <= r1.end);
        let r2 = f.take_region(RegionId(2));
        assert_eq!((r2.read_keys, r2.written_keys, r2.written_bytes), (0, 3, 300));
        let s = f.take_store();
        assert_eq!((s.read_keys, s.read_bytes, s.written_keys, s.written_bytes), (3, 110, 3, 300));
        // Taken: the next interval starts empty.
        assert_eq!(f.take_region(RegionId(1)).read_bytes, 0);
        assert_eq!(f.take_store().written_bytes, 0);
        assert_eq!(f.take_region(RegionId(9)).read_bytes, 0, "a region never served reads nothing");
        assert_eq!(f.take_region(RegionId(2)).written_keys, 0);
        assert!(f.regions.read().is_empty(), "idle regions are forgotten");
    }
}
