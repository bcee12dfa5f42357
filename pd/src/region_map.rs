//! The region map: every region PD knows, by start key and by id.
//!
//! Invariant: regions in the map never overlap. [`RegionMap::put`] keeps it by
//! removing every other region that overlaps the one being put; the caller
//! decides beforehand, with [`RegionMap::check`], whether the new record is
//! newer than what the map holds (a stale record is dropped).
//!
//! The map does not promise to tile the key space: between a split being
//! reported piecewise or a stale region being replaced there may be a hole,
//! which closes when the other half reports. Lookups in a hole find nothing.
//!
//! Each entry carries the region's metadata (range, epoch, peers: persisted,
//! changed only by the state machine) and its runtime (leader, pending and
//! down peers, sizes: from heartbeats, memory only).
//!
//! Per-store indexes (the regions with a peer on a store, the regions led
//! from it, the sum of their [`RegionInfo::weight`]s) are kept up to date on
//! every change, so the schedulers read store scores in O(1) and pick regions
//! of one store without scanning the whole map.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::time::SystemTime;

use mnemo_proto::types::{Peer, PeerId, Region, RegionId, StoreId};

/// A peer the leader reports as unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DownPeer {
    /// The peer.
    pub peer: Peer,
    /// Seconds since the leader last heard from it.
    pub down_seconds: u64,
}

/// What the latest heartbeat said about a region, beyond its metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionRuntime {
    /// The peer that sent the latest heartbeat; `None` until one arrives.
    pub leader: Option<Peer>,
    /// Peers still catching up (their log is behind; a learner here is not
    /// promoted yet).
    pub pending_peers: Vec<Peer>,
    /// Since when each of `pending_peers` has been reported pending without
    /// a break (PD's own bookkeeping across heartbeats; empty until a
    /// heartbeat with a time arrives).
    pub pending_since: BTreeMap<PeerId, SystemTime>,
    /// Peers the leader cannot reach.
    pub down_peers: Vec<DownPeer>,
    /// Approximate data size, bytes.
    pub approximate_size: u64,
    /// Approximate number of keys.
    pub approximate_keys: u64,
    /// Bytes written during the last heartbeat interval.
    pub bytes_written: u64,
    /// Bytes read during the last heartbeat interval.
    pub bytes_read: u64,
    /// Keys written during the last heartbeat interval.
    pub keys_written: u64,
    /// Keys read during the last heartbeat interval.
    pub keys_read: u64,
    /// Length of that interval, seconds (0: not reported).
    pub interval_secs: u64,
    /// The leader's raft term.
    pub term: u64,
    /// When the latest heartbeat arrived.
    pub last_heartbeat: Option<SystemTime>,
}

/// One region: metadata plus runtime.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// Range, epoch, peers.
    pub region: Region,
    /// Leader and heartbeat statistics.
    pub runtime: RegionRuntime,
}

/// Regions smaller than this weigh as much as one of this size.
pub const MIN_REGION_WEIGHT_MIB: u64 = 1;

impl RegionInfo {
    /// The current leader, if known and still a peer.
    pub fn leader(&self) -> Option<Peer> {
        self.runtime.leader
    }

    /// What the region weighs in store scores: its approximate size in MiB,
    /// at least [`MIN_REGION_WEIGHT_MIB`] (as PD counts an empty region).
    /// Regions of a few KiB (tests) or not measured yet all weigh 1, so
    /// balancing them balances their count.
    pub fn weight(&self) -> u64 {
        (self.runtime.approximate_size >> 20).max(MIN_REGION_WEIGHT_MIB)
    }

    /// Read and write flow per second over the leader's last heartbeat
    /// interval.
    pub fn flow_rates(&self) -> crate::store::FlowRates {
        let rt = &self.runtime;
        crate::store::FlowRates::over(
            [rt.bytes_read, rt.keys_read, rt.bytes_written, rt.keys_written],
            rt.interval_secs,
        )
    }
}

/// How a reported region record compares with the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Older than what the map holds: ignore it.
    Stale(String),
    /// Same metadata as the map's: nothing to persist.
    Unchanged,
    /// New or newer: persist it (replacing overlapping regions).
    Changed,
}

/// All known regions; see the module docs for the invariant.
#[derive(Clone, Debug, Default)]
pub struct RegionMap {
    by_key: BTreeMap<Vec<u8>, RegionId>,
    by_id: HashMap<RegionId, RegionInfo>,
    /// Regions with a peer (voter or learner) on the store.
    store_regions: HashMap<StoreId, BTreeSet<RegionId>>,
    /// Regions whose known leader is on the store.
    store_leaders: HashMap<StoreId, BTreeSet<RegionId>>,
    /// Sum of the weights of `store_regions`.
    store_weight: HashMap<StoreId, u64>,
}

impl RegionMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True if the map holds no region.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Compares a reported record with the map (PD's rules): older epoch than
    /// the same region's → stale; overlapping a region with a higher
    /// `version` (a split or merge happened since) → stale; identical → unchanged.
    pub fn check(&self, region: &Region) -> Verdict {
        if let Some(cur) = self.by_id.get(&region.id) {
            if region.epoch.is_stale_against(&cur.region.epoch) {
                return Verdict::Stale(format!(
                    "region {} epoch {:?} is older than {:?}",
                    region.id, region.epoch, cur.region.epoch
                ));
            }
            if cur.region == *region {
                return Verdict::Unchanged;
            }
        }
        for id in self.overlaps(region) {
            let other = &self.by_id[&id].region;
            if other.epoch.version > region.epoch.version {
                return Verdict::Stale(format!(
                    "region {} version {} overlaps region {} with newer version {}",
                    region.id, region.epoch.version, other.id, other.epoch.version
                ));
            }
        }
        Verdict::Changed
    }

    /// Ids of the other regions whose range intersects `region`'s.
    pub fn overlaps(&self, region: &Region) -> Vec<RegionId> {
        let upper = if region.end_key.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(region.end_key.clone())
        };
        let mut out = Vec::new();
        for (_, id) in self.by_key.range((Bound::Unbounded, upper)).rev() {
            let other = &self.by_id[id].region;
            // Regions in the map do not overlap, so once one ends at or before
            // our start, every earlier one does too.
            if !other.end_key.is_empty() && other.end_key <= region.start_key {
                break;
            }
            if other.id != region.id {
                out.push(other.id);
            }
        }
        out
    }

    /// Inserts or replaces `region`, removing every other region overlapping
    /// it; returns the removed regions. Runtime of the same id is kept (its
    /// leader only while still a peer). Callers check staleness first.
    pub fn put(&mut self, region: Region) -> Vec<Region> {
        let removed: Vec<Region> =
            self.overlaps(&region).into_iter().filter_map(|id| self.remove(id)).map(|i| i.region).collect();
        let mut runtime = match self.detach(region.id) {
            Some(old) => old.runtime,
            None => RegionRuntime::default(),
        };
        let is_peer = |p: &Peer| region.peer(p.id).is_some();
        runtime.leader = runtime.leader.filter(|l| is_peer(l));
        runtime.pending_peers.retain(|p| is_peer(p));
        runtime.pending_since.retain(|id, _| region.peer(*id).is_some());
        runtime.down_peers.retain(|d| is_peer(&d.peer));
        self.attach(RegionInfo { region, runtime });
        removed
    }

    /// Removes region `id`; returns it.
    pub fn remove(&mut self, id: RegionId) -> Option<RegionInfo> {
        self.detach(id)
    }

    /// Replaces the runtime of region `id` (no-op if unknown). A leader that
    /// is not a peer is dropped.
    pub fn set_runtime(&mut self, id: RegionId, mut runtime: RegionRuntime) {
        let Some(info) = self.by_id.get_mut(&id) else { return };
        runtime.leader = runtime.leader.filter(|l| info.region.peer(l.id).is_some());
        // No size (0): the reporting leader has not measured the region yet
        // (it just took over); the last known size still holds.
        if runtime.approximate_size == 0 && runtime.approximate_keys == 0 {
            runtime.approximate_size = info.runtime.approximate_size;
            runtime.approximate_keys = info.runtime.approximate_keys;
        }
        if let Some(at) = runtime.last_heartbeat {
            let before = &info.runtime.pending_since;
            runtime.pending_since = runtime
                .pending_peers
                .iter()
                .map(|p| (p.id, before.get(&p.id).copied().unwrap_or(at)))
                .collect();
        }
        let (old_weight, old_leader) = (info.weight(), info.runtime.leader);
        info.runtime = runtime;
        let (new_weight, new_leader) = (info.weight(), info.runtime.leader);
        if old_weight != new_weight {
            for p in &info.region.peers {
                let w = self.store_weight.entry(p.store_id).or_default();
                *w = (*w + new_weight).saturating_sub(old_weight);
            }
        }
        if old_leader.map(|l| l.store_id) != new_leader.map(|l| l.store_id) {
            if let Some(old) = old_leader {
                remove_from(&mut self.store_leaders, old.store_id, id);
            }
            if let Some(new) = new_leader {
                self.store_leaders.entry(new.store_id).or_default().insert(id);
            }
        }
    }

    /// Region `id`.
    pub fn get(&self, id: RegionId) -> Option<&RegionInfo> {
        self.by_id.get(&id)
    }

    /// The region containing `key`.
    pub fn get_by_key(&self, key: &[u8]) -> Option<&RegionInfo> {
        let (_, id) = self.by_key.range::<[u8], _>((Bound::Unbounded, Bound::Included(key))).next_back()?;
        let info = &self.by_id[id];
        info.region.contains(key).then_some(info)
    }

    /// The region just before the one containing `key` (by start key); `None`
    /// if no region contains `key` or it is the first region.
    pub fn prev_of_key(&self, key: &[u8]) -> Option<&RegionInfo> {
        let cur = self.get_by_key(key)?;
        let start = cur.region.start_key.as_slice();
        let (_, id) = self.by_key.range::<[u8], _>((Bound::Unbounded, Bound::Excluded(start))).next_back()?;
        self.by_id.get(id)
    }

    /// Regions intersecting `[start, end)` (empty `end` = +infinity) in key
    /// order, at most `limit` of them (0 = no limit).
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Vec<&RegionInfo> {
        let first =
            self.get_by_key(start).map(|i| i.region.start_key.clone()).unwrap_or_else(|| start.to_vec());
        let mut out = Vec::new();
        for (key, id) in self.by_key.range(first..) {
            if !end.is_empty() && key.as_slice() >= end {
                break;
            }
            if limit > 0 && out.len() >= limit {
                break;
            }
            out.push(&self.by_id[id]);
        }
        out
    }

    /// Every region in key order.
    pub fn iter(&self) -> impl Iterator<Item = &RegionInfo> {
        self.by_key.values().map(|id| &self.by_id[id])
    }

    /// Regions with a peer on `store`.
    pub fn store_region_count(&self, store: StoreId) -> usize {
        self.store_regions.get(&store).map_or(0, BTreeSet::len)
    }

    /// Regions whose known leader is on `store`.
    pub fn store_leader_count(&self, store: StoreId) -> usize {
        self.store_leaders.get(&store).map_or(0, BTreeSet::len)
    }

    /// Sum of [`RegionInfo::weight`] over the regions with a peer on `store`
    /// (MiB; the region score of balance-region).
    pub fn store_region_weight(&self, store: StoreId) -> u64 {
        self.store_weight.get(&store).copied().unwrap_or(0)
    }

    /// Regions with a peer on `store`, by id, starting somewhere in their id
    /// range chosen by `seed` and wrapping around: a random seed gives the
    /// schedulers a cheap, spread-out starting point.
    pub fn regions_on_store(&self, store: StoreId, seed: u64) -> impl Iterator<Item = &RegionInfo> {
        self.wrapped(self.store_regions.get(&store), seed)
    }

    /// Regions led from `store`, in the same manner as [`RegionMap::regions_on_store`].
    pub fn regions_led_by(&self, store: StoreId, seed: u64) -> impl Iterator<Item = &RegionInfo> {
        self.wrapped(self.store_leaders.get(&store), seed)
    }

    fn wrapped<'a>(
        &'a self,
        set: Option<&'a BTreeSet<RegionId>>,
        seed: u64,
    ) -> impl Iterator<Item = &'a RegionInfo> {
        set.into_iter()
            .flat_map(move |s| {
                let (lo, hi) = match (s.first(), s.last()) {
                    (Some(lo), Some(hi)) => (lo.0, hi.0),
                    _ => (0, 0),
                };
                let from = RegionId(lo + seed % (hi - lo).saturating_add(1).max(1));
                s.range(from..).chain(s.range(..from))
            })
            .filter_map(|id| self.by_id.get(id))
    }

    fn attach(&mut self, info: RegionInfo) {
        let (id, weight) = (info.region.id, info.weight());
        for p in &info.region.peers {
            self.store_regions.entry(p.store_id).or_default().insert(id);
            *self.store_weight.entry(p.store_id).or_default() += weight;
        }
        if let Some(l) = info.runtime.leader {
            self.store_leaders.entry(l.store_id).or_default().insert(id);
        }
        self.by_key.insert(info.region.start_key.clone(), id);
        self.by_id.insert(id, info);
    }

    fn detach(&mut self, id: RegionId) -> Option<RegionInfo> {
        let info = self.by_id.remove(&id)?;
        if self.by_key.get(&info.region.start_key) == Some(&id) {
            self.by_key.remove(&info.region.start_key);
        }
        let weight = info.weight();
        for p in &info.region.peers {
            remove_from(&mut self.store_regions, p.store_id, id);
            if let Some(w) = self.store_weight.get_mut(&p.store_id) {
                *w = w.saturating_sub(weight);
            }
        }
        if let Some(l) = info.runtime.leader {
            remove_from(&mut self.store_leaders, l.store_id, id);
        }
        Some(info)
    }
}

fn remove_from(index: &mut HashMap<StoreId, BTreeSet<RegionId>>, store: StoreId, id: RegionId) {
    if let Some(set) = index.get_mut(&store) {
        set.remove(&id);
        if set.is_empty() {
            index.remove(&store);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnemo_proto::types::{PeerId, PeerRole, RegionEpoch};

    fn region(id: u64, start: &str, end: &str, conf_ver: u64, version: u64) -> Region {
        Region {
            id: RegionId(id),
            start_key: start.as_bytes().to_vec(),
            end_key: end.as_bytes().to_vec(),
            epoch: RegionEpoch { conf_ver, version },
            peers: vec![Peer { id: PeerId(id * 10), store_id: StoreId(1), role: PeerRole::Voter }],
        }
    }

    fn ids(map: &RegionMap) -> Vec<u64> {
        map.iter().map(|i| i.region.id.0).collect()
    }

    #[test]
    fn a_heartbeat_with_an_older_epoch_is_ignored() {
        let mut map = RegionMap::new();
        map.put(region(1, "", "", 2, 3));
        assert!(matches!(map.check(&region(1, "", "", 1, 3)), Verdict::Stale(_)));
        assert!(matches!(map.check(&region(1, "", "", 2, 2)), Verdict::Stale(_)));
        assert_eq!(map.check(&region(1, "", "", 2, 3)), Verdict::Unchanged);
        assert_eq!(map.check(&region(1, "", "", 3, 3)), Verdict::Changed);
    }

    #[test]
    fn a_split_replaces_the_overlapped_parent() {
        let mut map = RegionMap::new();
        map.put(region(1, "", "", 1, 1));
        // The left half (a new region) reports first: the parent record, which
        // overlaps it with an older version, goes away.
        let left = region(2, "", "m", 1, 2);
        assert_eq!(map.check(&left), Verdict::Changed);
        let removed = map.put(left);
        assert_eq!(removed.iter().map(|r| r.id.0).collect::<Vec<_>>(), vec![1]);
        assert!(map.get_by_key(b"x").is_none(), "hole until the right half reports");
        // Then the parent, now the right half.
        map.put(region(1, "m", "", 1, 2));
        assert_eq!(ids(&map), vec![2, 1]);
        assert_eq!(map.get_by_key(b"x").unwrap().region.id, RegionId(1));
        assert_eq!(map.get_by_key(b"").unwrap().region.id, RegionId(2));
        // A late heartbeat of the parent from before the split is stale.
        assert!(matches!(map.check(&region(1, "", "", 1, 1)), Verdict::Stale(_)));
    }

    #[test]
    fn a_stale_region_overlapping_a_newer_one_is_refused() {
        let mut map = RegionMap::new();
        map.put(region(2, "", "m", 1, 5));
        map.put(region(1, "m", "", 1, 5));
        // Region 3 was merged away long ago; its old record must not punch a hole.
        assert!(matches!(map.check(&region(3, "a", "z", 1, 4)), Verdict::Stale(_)));
    }

    #[test]
    fn overlap_with_several_regions_removes_them_all() {
        let mut map = RegionMap::new();
        map.put(region(1, "", "c", 1, 1));
        map.put(region(2, "c", "f", 1, 1));
        map.put(region(3, "f", "k", 1, 1));
        map.put(region(4, "k", "", 1, 1));
        let removed = map.put(region(5, "d", "g", 1, 2));
        let mut removed: Vec<u64> = removed.iter().map(|r| r.id.0).collect();
        removed.sort();
        assert_eq!(removed, vec![2, 3]);
        assert_eq!(ids(&map), vec![1, 5, 4]);
        assert_eq!(map.store_region_count(StoreId(1)), 3);
    }

    #[test]
    fn prev_region_and_scan() {
        let mut map = RegionMap::new();
        map.put(region(1, "", "c", 1, 1));
        map.put(region(2, "c", "f", 1, 1));
        map.put(region(3, "f", "", 1, 1));
        assert_eq!(map.prev_of_key(b"d").unwrap().region.id, RegionId(1));
        assert_eq!(map.prev_of_key(b"f").unwrap().region.id, RegionId(2));
        assert!(map.prev_of_key(b"a").is_none());
        let scan = |s: &str, e: &str, l| -> Vec<u64> {
            map.scan(s.as_bytes(), e.as_bytes(), l).iter().map(|i| i.region.id.0).collect()
        };
        assert_eq!(scan("d", "", 0), vec![2, 3]);
        assert_eq!(scan("", "f", 0), vec![1, 2]);
        assert_eq!(scan("", "", 2), vec![1, 2]);
        assert_eq!(scan("b", "c", 0), vec![1]);
    }

    #[test]
    fn store_indexes_follow_sizes_and_leaders() {
        let mut map = RegionMap::new();
        for id in 1..=4 {
            map.put(region(id, &format!("{id}"), &format!("{id}~"), 1, 1));
        }
        // Unmeasured regions weigh 1 each; a 64 MiB one weighs 64.
        assert_eq!(map.store_region_weight(StoreId(1)), 4);
        let big = RegionRuntime {
            approximate_size: 64 << 20,
            leader: Some(region(3, "", "", 1, 1).peers[0]),
            ..Default::default()
        };
        map.set_runtime(RegionId(3), big);
        assert_eq!(map.store_region_weight(StoreId(1)), 67);
        assert_eq!(map.store_leader_count(StoreId(1)), 1);
        // Iteration by store starts where the seed says and wraps around.
        let from = |seed| map.regions_on_store(StoreId(1), seed).map(|i| i.region.id.0).collect::<Vec<_>>();
        assert_eq!(from(0), vec![1, 2, 3, 4]);
        assert_eq!(from(2), vec![3, 4, 1, 2]);
        assert_eq!(map.regions_led_by(StoreId(1), 9).map(|i| i.region.id.0).collect::<Vec<_>>(), vec![3]);
        map.remove(RegionId(3));
        assert_eq!((map.store_region_weight(StoreId(1)), map.store_leader_count(StoreId(1))), (3, 0));
    }

    #[test]
    fn leaders_follow_membership() {
        let mut map = RegionMap::new();
        let mut r = region(1, "", "", 1, 1);
        map.put(r.clone());
        let leader = r.peers[0];
        map.set_runtime(r.id, RegionRuntime { leader: Some(leader), ..Default::default() });
        assert_eq!(map.store_leader_count(StoreId(1)), 1);
        // The leader's peer leaves the region: the leader is forgotten.
        r.peers = vec![Peer { id: PeerId(99), store_id: StoreId(2), role: PeerRole::Voter }];
        r.epoch.conf_ver += 1;
        map.put(r);
        assert_eq!(map.get(RegionId(1)).unwrap().leader(), None);
        assert_eq!(map.store_leader_count(StoreId(1)), 0);
        assert_eq!(map.store_region_count(StoreId(2)), 1);
    }
}
