//! The client's picture of the region map: which region holds a key, which
//! peer leads it, and where each store listens.
//!
//! Regions are kept in an ordered map by start key. The cache never holds two
//! overlapping regions: inserting a region first evicts every cached region
//! whose range intersects it, so a split or merge learned from PD or from an
//! `EpochNotMatch` replaces the stale pieces at once. The cache may be stale
//! (a region split or moved since); that is safe, because every request
//! carries the cached epoch and a node answers a stale one with
//! `EpochNotMatch` rather than serving it.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Excluded, Included, Unbounded};

use mnemo_proto::types::{Peer, Region, RegionId, StoreId};
use parking_lot::RwLock;

/// A cached region and the peer believed to lead it (`None`: unknown, the
/// client then tries the first voter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedRegion {
    /// The region as last learned.
    pub region: Region,
    /// The leader as last learned, if any.
    pub leader: Option<Peer>,
}

#[derive(Default)]
struct Inner {
    /// start key → region; ranges never overlap.
    by_start: BTreeMap<Vec<u8>, CachedRegion>,
    /// region id → start key in `by_start`.
    by_id: HashMap<RegionId, Vec<u8>>,
    /// store id → gRPC address.
    stores: HashMap<StoreId, String>,
}

/// Thread-safe region and store cache. All methods take `&self` and never
/// block on I/O.
#[derive(Default)]
pub struct RegionCache {
    inner: RwLock<Inner>,
}

/// True if `[a_start, a_end)` and `[b_start, b_end)` intersect (empty end: +inf).
fn overlaps(a_start: &[u8], a_end: &[u8], b_start: &[u8], b_end: &[u8]) -> bool {
    (a_end.is_empty() || b_start < a_end) && (b_end.is_empty() || a_start < b_end)
}

impl Inner {
    fn remove(&mut self, id: RegionId) -> Option<CachedRegion> {
        let start = self.by_id.remove(&id)?;
        self.by_start.remove(&start)
    }

    /// True if a cached region overlapping `region` has a newer `version`
    /// (it was split or merged after `region` was described).
    fn has_newer_overlap(&self, region: &Region) -> bool {
        let (start, end) = (&region.start_key, &region.end_key);
        let before = self.by_start.range(..=start.clone()).next_back().map(|(_, c)| c);
        let inside = self
            .by_start
            .range(start.clone()..)
            .take_while(|(s, _)| end.is_empty() || s.as_slice() < end.as_slice())
            .map(|(_, c)| c);
        before
            .into_iter()
            .chain(inside)
            .filter(|c| overlaps(&c.region.start_key, &c.region.end_key, start, end))
            .any(|c| c.region.epoch.version > region.epoch.version)
    }

    fn insert(&mut self, entry: CachedRegion) {
        let (start, end) = (entry.region.start_key.clone(), entry.region.end_key.clone());
        // Candidates: the region starting at or before `start`, and all
        // regions starting inside `[start, end)`.
        let mut stale: Vec<RegionId> = Vec::new();
        if let Some((_, before)) = self.by_start.range(..=start.clone()).next_back() {
            if overlaps(&before.region.start_key, &before.region.end_key, &start, &end) {
                stale.push(before.region.id);
            }
        }
        for (s, c) in self.by_start.range(start.clone()..) {
            if !end.is_empty() && s.as_slice() >= end.as_slice() {
                break;
            }
            stale.push(c.region.id);
        }
        stale.push(entry.region.id);
        for id in stale {
            self.remove(id);
        }
        self.by_id.insert(entry.region.id, start.clone());
        self.by_start.insert(start, entry);
    }
}

impl RegionCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached regions.
    pub fn len(&self) -> usize {
        self.inner.read().by_start.len()
    }

    /// True if no region is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached region containing `key`, if any.
    pub fn get_by_key(&self, key: &[u8]) -> Option<CachedRegion> {
        let inner = self.inner.read();
        let (_, c) = inner.by_start.range::<[u8], _>((Unbounded, Included(key))).next_back()?;
        c.region.contains(key).then(|| c.clone())
    }

    /// The cached region containing the keys just below `upper` (the region
    /// with `start < upper <= end`), if any. An empty `upper` means +infinity:
    /// the last region (empty end key). Used by reverse scans.
    pub fn get_before(&self, upper: &[u8]) -> Option<CachedRegion> {
        let inner = self.inner.read();
        let c = if upper.is_empty() {
            inner.by_start.values().next_back()?
        } else {
            inner.by_start.range::<[u8], _>((Unbounded, Excluded(upper))).next_back()?.1
        };
        let end = &c.region.end_key;
        let covers = end.is_empty() || (!upper.is_empty() && end.as_slice() >= upper);
        covers.then(|| c.clone())
    }

    /// The cached region with id `id`, if any.
    pub fn get_by_id(&self, id: RegionId) -> Option<CachedRegion> {
        let inner = self.inner.read();
        let start = inner.by_id.get(&id)?;
        inner.by_start.get(start).cloned()
    }

    /// Caches `region` with `leader`, evicting every cached region that
    /// overlaps it (and any older copy of the same id).
    pub fn insert(&self, region: Region, leader: Option<Peer>) {
        self.inner.write().insert(CachedRegion { region, leader });
    }

    /// Forgets region `id`; the next lookup in its range goes to PD.
    pub fn invalidate(&self, id: RegionId) {
        self.inner.write().remove(id);
    }

    /// Records `leader` as the leader of region `id`. Returns false if the
    /// region is not cached (the caller should reload it from PD).
    pub fn update_leader(&self, id: RegionId, leader: Peer) -> bool {
        let mut inner = self.inner.write();
        let Some(start) = inner.by_id.get(&id).cloned() else {
            return false;
        };
        match inner.by_start.get_mut(&start) {
            Some(c) => {
                c.leader = Some(leader);
                true
            }
            None => false,
        }
    }

    /// Applies an `EpochNotMatch`: forgets `stale`, then caches each of
    /// `current` (the regions a node says now cover the stale range).
    ///
    /// Leaders are guessed from the stale entry: after a split every new
    /// region's peers sit on the same stores and the old leader's store
    /// usually leads them all, so the peer on that store is a good first try
    /// (a wrong guess costs one `NotLeader` with a hint).
    pub fn on_epoch_not_match(&self, stale: RegionId, current: Vec<Region>) {
        let mut inner = self.inner.write();
        let old = inner.remove(stale);
        let old_epoch = old.as_ref().map(|c| c.region.epoch);
        let old_leader_store = old.and_then(|c| c.leader).map(|p| p.store_id);
        for region in current {
            // A node that has not applied a split yet (a fresh leader) answers
            // with an epoch older than ours: never go back to it.
            if region.id == stale && old_epoch.is_some_and(|e| region.epoch.is_stale_against(&e)) {
                continue;
            }
            // Neighbours the node added (regions it believes were split off)
            // must not evict what the cache learned later.
            if region.id != stale && inner.has_newer_overlap(&region) {
                continue;
            }
            let leader = old_leader_store.and_then(|s| region.peer_on_store(s).copied());
            inner.insert(CachedRegion { region, leader });
        }
    }

    /// The cached address of `store`, if any.
    pub fn store_addr(&self, store: StoreId) -> Option<String> {
        self.inner.read().stores.get(&store).cloned()
    }

    /// Caches `addr` as the address of `store`.
    pub fn put_store(&self, store: StoreId, addr: String) {
        self.inner.write().stores.insert(store, addr);
    }

    /// Forgets the address of `store` (it may have moved or gone).
    pub fn invalidate_store(&self, store: StoreId) {
        self.inner.write().stores.remove(&store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnemo_proto::types::{PeerId, PeerRole, RegionEpoch};

    fn peer(id: u64, store: u64) -> Peer {
        Peer { id: PeerId(id), store_id: StoreId(store), role: PeerRole::Voter }
    }

    fn region(id: u64, start: &str, end: &str, version: u64) -> Region {
        Region {
            id: RegionId(id),
            start_key: start.as_bytes().to_vec(),
            end_key: end.as_bytes().to_vec(),
            epoch: RegionEpoch { conf_ver: 1, version },
            peers: vec![peer(id * 10 + 1, 1), peer(id * 10 + 2, 2), peer(id * 10 + 3, 3)],
        }
    }

    fn ids(cache: &RegionCache) -> Vec<u64> {
        cache.inner.read().by_start.values().map(|c| c.region.id.0).collect()
    }

    /// Three regions tiling the key space: ["", "g"), ["g", "p"), ["p", +inf).
    fn tiled() -> RegionCache {
        let cache = RegionCache::new();
        cache.insert(region(1, "", "g", 1), None);
        cache.insert(region(2, "g", "p", 1), Some(peer(22, 2)));
        cache.insert(region(3, "p", "", 1), None);
        cache
    }

    #[test]
    fn lookup_by_key_honours_bounds() {
        let cache = tiled();
        assert_eq!(cache.get_by_key(b"").unwrap().region.id, RegionId(1));
        assert_eq!(cache.get_by_key(b"f").unwrap().region.id, RegionId(1));
        assert_eq!(cache.get_by_key(b"g").unwrap().region.id, RegionId(2));
        assert_eq!(cache.get_by_key(b"zzz").unwrap().region.id, RegionId(3));
        assert_eq!(cache.get_by_key(b"g").unwrap().leader, Some(peer(22, 2)));
    }

    #[test]
    fn lookup_misses_holes() {
        let cache = RegionCache::new();
        cache.insert(region(2, "g", "p", 1), None);
        assert!(cache.get_by_key(b"a").is_none());
        assert!(cache.get_by_key(b"p").is_none());
        assert!(cache.get_before(b"g").is_none());
        assert!(cache.get_before(b"").is_none());
    }

    #[test]
    fn lookup_before_an_upper_bound() {
        let cache = tiled();
        // Keys just below "g" live in region 1, even though "g" starts region 2.
        assert_eq!(cache.get_before(b"g").unwrap().region.id, RegionId(1));
        assert_eq!(cache.get_before(b"h").unwrap().region.id, RegionId(2));
        assert_eq!(cache.get_before(b"p").unwrap().region.id, RegionId(2));
        assert_eq!(cache.get_before(b"").unwrap().region.id, RegionId(3));
        assert_eq!(cache.get_before(b"\0").unwrap().region.id, RegionId(1));
    }

    #[test]
    fn split_replaces_the_parent() {
        let cache = tiled();
        // Region 2 splits at "k" into 2 ["g","k") and 4 ["k","p").
        cache.insert(region(2, "g", "k", 2), None);
        cache.insert(region(4, "k", "p", 2), None);
        assert_eq!(ids(&cache), vec![1, 2, 4, 3]);
        assert_eq!(cache.get_by_key(b"m").unwrap().region.id, RegionId(4));
    }

    #[test]
    fn merge_evicts_every_overlapped_region() {
        let cache = tiled();
        // Regions 1 and 2 merge into 2 ["", "p").
        cache.insert(region(2, "", "p", 3), None);
        assert_eq!(ids(&cache), vec![2, 3]);
        assert_eq!(cache.get_by_id(RegionId(2)).unwrap().region.start_key, b"".to_vec());
        assert!(cache.get_by_id(RegionId(1)).is_none());
    }

    #[test]
    fn stale_wide_region_evicts_the_narrow_ones() {
        let cache = tiled();
        cache.insert(region(9, "a", "", 1), None);
        assert_eq!(ids(&cache), vec![9]);
    }

    #[test]
    fn invalidate_and_leader_updates() {
        let cache = tiled();
        assert!(cache.update_leader(RegionId(3), peer(33, 3)));
        assert_eq!(cache.get_by_key(b"x").unwrap().leader, Some(peer(33, 3)));
        cache.invalidate(RegionId(3));
        assert!(cache.get_by_key(b"x").is_none());
        assert!(!cache.update_leader(RegionId(3), peer(33, 3)));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn epoch_not_match_never_evicts_newer_regions_with_an_older_sibling() {
        let cache = RegionCache::new();
        cache.insert(region(2, "g", "p", 1), None);
        // Known already, and newer than the node's view: [p, t) at version 4.
        cache.insert(region(7, "p", "t", 4), None);
        // The node answers for region 2 with its split child [k, t) at version 2.
        cache.on_epoch_not_match(RegionId(2), vec![region(2, "g", "k", 2), region(5, "k", "t", 2)]);
        assert_eq!(cache.get_by_key(b"q").unwrap().region.id, RegionId(7), "newer entry kept");
        assert_eq!(cache.get_by_key(b"h").unwrap().region.id, RegionId(2));
    }

    #[test]
    fn epoch_not_match_installs_current_regions_with_guessed_leaders() {
        let cache = tiled();
        // Region 2 (leader on store 2) split into 2 ["g","k") and 5 ["k","p").
        cache.on_epoch_not_match(RegionId(2), vec![region(2, "g", "k", 2), region(5, "k", "p", 2)]);
        assert_eq!(ids(&cache), vec![1, 2, 5, 3]);
        assert_eq!(cache.get_by_key(b"h").unwrap().leader, Some(peer(22, 2)));
        assert_eq!(cache.get_by_key(b"m").unwrap().leader, Some(peer(52, 2)));
        assert_eq!(cache.get_by_key(b"m").unwrap().region.epoch.version, 2);
    }

    #[test]
    fn store_addresses() {
        let cache = RegionCache::new();
        assert_eq!(cache.store_addr(StoreId(1)), None);
        cache.put_store(StoreId(1), "127.0.0.1:20160".into());
        assert_eq!(cache.store_addr(StoreId(1)).as_deref(), Some("127.0.0.1:20160"));
        cache.invalidate_store(StoreId(1));
        assert_eq!(cache.store_addr(StoreId(1)), None);
    }
}
