//! Domain types shared by every part of Mnemosyne, and their conversions
//! from and to the generated wire types.
//!
//! Business logic works on these types; prost's `Option` fields and raw
//! `u64`s stay at the edge. Conversions from the wire are total: a missing
//! epoch becomes the zero epoch, which every real region is newer than, so a
//! malformed request fails the epoch check instead of panicking.

use std::fmt;

use crate::metapb;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                $name(v)
            }
        }
    };
}

id_type!(
    /// A storage node's id, allocated by PD, never reused. 0 means "none".
    StoreId
);
id_type!(
    /// A region's id, allocated by PD, never reused. 0 means "none".
    RegionId
);
id_type!(
    /// A region peer's id (one replica of one region), allocated by PD, never reused.
    PeerId
);

/// A region's version pair. A request or heartbeat whose epoch is older than
/// the region's is stale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegionEpoch {
    /// +1 on every membership change.
    pub conf_ver: u64,
    /// +1 on every split or merge.
    pub version: u64,
}

impl RegionEpoch {
    /// True if `self` is older than `other` in either component.
    pub fn is_stale_against(&self, other: &RegionEpoch) -> bool {
        self.conf_ver < other.conf_ver || self.version < other.version
    }
}

/// A peer's raft role as PD and the nodes record it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PeerRole {
    /// Votes and may lead.
    #[default]
    Voter,
    /// Receives the log but neither votes nor counts for commit.
    Learner,
}

/// One replica of a region on one store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub id: PeerId,
    pub store_id: StoreId,
    pub role: PeerRole,
}

/// A contiguous key range `[start_key, end_key)` replicated by one raft group.
/// An empty `end_key` means +infinity; an empty `start_key` means -infinity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Region {
    pub id: RegionId,
    pub start_key: Vec<u8>,
    pub end_key: Vec<u8>,
    pub epoch: RegionEpoch,
    pub peers: Vec<Peer>,
}

impl Region {
    /// True if `key` lies in `[start_key, end_key)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start_key.as_slice() && (self.end_key.is_empty() || key < self.end_key.as_slice())
    }

    /// The peer of this region on `store`, if any.
    pub fn peer_on_store(&self, store: StoreId) -> Option<&Peer> {
        self.peers.iter().find(|p| p.store_id == store)
    }

    /// The peer with id `id`, if any.
    pub fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.iter().find(|p| p.id == id)
    }

    /// Voters only.
    pub fn voters(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(|p| p.role == PeerRole::Voter)
    }

    /// Learners only.
    pub fn learners(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(|p| p.role == PeerRole::Learner)
    }
}

/// Clamps `[start, end)` (empty end = +inf) to the region's range.
pub fn clamp_range(region: &Region, start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let s = if start < region.start_key.as_slice() { region.start_key.clone() } else { start.to_vec() };
    let e = match (end.is_empty(), region.end_key.is_empty()) {
        (true, _) => region.end_key.clone(),
        (false, true) => end.to_vec(),
        (false, false) => end.min(region.end_key.as_slice()).to_vec(),
    };
    (s, e)
}

// ---- conversions ----

impl From<&metapb::RegionEpoch> for RegionEpoch {
    fn from(e: &metapb::RegionEpoch) -> Self {
        RegionEpoch { conf_ver: e.conf_ver, version: e.version }
    }
}

impl From<RegionEpoch> for metapb::RegionEpoch {
    fn from(e: RegionEpoch) -> Self {
        metapb::RegionEpoch { conf_ver: e.conf_ver, version: e.version }
    }
}

/// Reads an optional wire epoch; absent means the zero epoch.
pub fn epoch_of(e: Option<&metapb::RegionEpoch>) -> RegionEpoch {
    e.map(RegionEpoch::from).unwrap_or_default()
}

impl From<&metapb::Peer> for Peer {
    fn from(p: &metapb::Peer) -> Self {
        let role = match metapb::PeerRole::try_from(p.role) {
            Ok(metapb::PeerRole::Learner) => PeerRole::Learner,
            _ => PeerRole::Voter,
        };
        Peer { id: PeerId(p.id), store_id: StoreId(p.store_id), role }
    }
}

impl From<Peer> for metapb::Peer {
    fn from(p: Peer) -> Self {
        let role = match p.role {
            PeerRole::Voter => metapb::PeerRole::Voter,
            PeerRole::Learner => metapb::PeerRole::Learner,
        };
        metapb::Peer { id: p.id.0, store_id: p.store_id.0, role: role as i32, is_witness: false }
    }
}

impl From<&metapb::Region> for Region {
    fn from(r: &metapb::Region) -> Self {
        Region {
            id: RegionId(r.id),
            start_key: r.start_key.clone(),
            end_key: r.end_key.clone(),
            epoch: epoch_of(r.region_epoch.as_ref()),
            peers: r.peers.iter().map(Peer::from).collect(),
        }
    }
}

impl From<&Region> for metapb::Region {
    fn from(r: &Region) -> Self {
        metapb::Region {
            id: r.id.0,
            start_key: r.start_key.clone(),
            end_key: r.end_key.clone(),
            region_epoch: Some(r.epoch.into()),
            peers: r.peers.iter().map(|p| (*p).into()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: &[u8], end: &[u8]) -> Region {
        Region { start_key: start.to_vec(), end_key: end.to_vec(), ..Default::default() }
    }

    #[test]
    fn contains_honours_open_ends() {
        assert!(region(b"", b"").contains(b""));
        assert!(region(b"b", b"").contains(b"zzz"));
        assert!(!region(b"b", b"d").contains(b"d"));
        assert!(region(b"b", b"d").contains(b"b"));
        assert!(!region(b"b", b"d").contains(b"a"));
    }

    #[test]
    fn clamp_range_keeps_inside_region() {
        let r = region(b"b", b"d");
        assert_eq!(clamp_range(&r, b"a", b""), (b"b".to_vec(), b"d".to_vec()));
        assert_eq!(clamp_range(&r, b"c", b"cc"), (b"c".to_vec(), b"cc".to_vec()));
        let open = region(b"", b"");
        assert_eq!(clamp_range(&open, b"a", b""), (b"a".to_vec(), b"".to_vec()));
    }

    #[test]
    fn epoch_staleness() {
        let cur = RegionEpoch { conf_ver: 2, version: 3 };
        assert!(RegionEpoch { conf_ver: 1, version: 3 }.is_stale_against(&cur));
        assert!(!RegionEpoch { conf_ver: 2, version: 3 }.is_stale_against(&cur));
    }

    #[test]
    fn region_round_trips_through_wire() {
        let r = Region {
            id: RegionId(7),
            start_key: b"a".to_vec(),
            end_key: vec![],
            epoch: RegionEpoch { conf_ver: 3, version: 1 },
            peers: vec![Peer { id: PeerId(8), store_id: StoreId(1), role: PeerRole::Learner }],
        };
        let wire = metapb::Region::from(&r);
        assert_eq!(Region::from(&wire), r);
    }
}
