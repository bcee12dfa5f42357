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

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::time::SystemTime;

use mnemo_proto::types::{Peer, Region, RegionId, StoreId};

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

impl RegionInfo {
    /// The current leader, if known and still a peer.
    pub fn leader(&self) -> Option<Peer> {
        self.runtime.leader
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
    peers_per_store: HashMap<StoreId, usize>,
    leaders_per_store: HashMap<StoreId, usize>,
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
        if let Some(old) = info.runtime.leader {
            dec(&mut self.leaders_per_store, old.store_id);
        }
        if let Some(new) = runtime.leader {
            *self.leaders_per_store.entry(new.store_id).or_default() += 1;
        }
        info.runtime = runtime;
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
        self.peers_per_store.get(&store).copied().unwrap_or(0)
    }

    /// Regions whose known leader is on `store`.
    pub fn store_leader_count(&self, store: StoreId) -> usize {
        self.leaders_per_store.get(&store).copied().unwrap_or(0)
    }

    fn attach(&mut self, info: RegionInfo) {
        for p in &info.region.peers {
            *self.peers_per_store.entry(p.store_id).or_default() += 1;
        }
        if let Some(l) = info.runtime.leader {
            *self.leaders_per_store.entry(l.store_id).or_default() += 1;
        }
        self.by_key.insert(info.region.start_key.clone(), info.region.id);
        self.by_id.insert(info.region.id, info);
    }

    fn detach(&mut self, id: RegionId) -> Option<RegionInfo> {
        let info = self.by_id.remove(&id)?;
        if self.by_key.get(&info.region.start_key) == Some(&id) {
            self.by_key.remove(&info.region.start_key);
        }
        for p in &info.region.peers {
            dec(&mut self.peers_per_store, p.store_id);
        }
        if let Some(l) = info.runtime.leader {
            dec(&mut self.leaders_per_store, l.store_id);
        }
        Some(info)
    }
}

fn dec(counts: &mut HashMap<StoreId, usize>, store: StoreId) {
    if let Some(n) = counts.get_mut(&store) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&store);
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
