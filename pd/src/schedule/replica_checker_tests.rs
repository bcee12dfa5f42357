//! Decisions of the replica checker, one scenario per test.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use mnemo_proto::types::{Peer, PeerId, PeerRole, Region, RegionEpoch, RegionId, StoreId};

use super::*;
use crate::region_map::{DownPeer, RegionInfo, RegionRuntime};
use crate::store::{StoreInfo, StoreMeta, StoreState};

/// A cluster at one instant: stores with labels, heartbeats and region counts.
struct World {
    stores: BTreeMap<StoreId, StoreInfo>,
    counts: HashMap<StoreId, usize>,
    now: SystemTime,
    cfg: CheckerConfig,
}

impl World {
    fn new() -> Self {
        World {
            stores: BTreeMap::new(),
            counts: HashMap::new(),
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            cfg: CheckerConfig {
                max_replicas: 3,
                location_labels: vec![],
                max_store_down_time: Duration::from_secs(1800),
            },
        }
    }

    /// An Up store that heartbeated a second ago.
    fn store(mut self, id: u64, labels: &[(&str, &str)]) -> Self {
        let meta = StoreMeta {
            id: StoreId(id),
            address: format!("n{id}:20160"),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        let hb = self.now - Duration::from_secs(1);
        self.stores.insert(StoreId(id), StoreInfo { meta, stats: None, last_heartbeat: Some(hb) });
        self
    }

    fn silent_for(mut self, id: u64, secs: u64) -> Self {
        self.stores.get_mut(&StoreId(id)).unwrap().last_heartbeat =
            Some(self.now - Duration::from_secs(secs));
        self
    }

    fn state(mut self, id: u64, state: StoreState) -> Self {
        self.stores.get_mut(&StoreId(id)).unwrap().meta.state = state;
        self
    }

    fn regions_on(mut self, id: u64, n: usize) -> Self {
        self.counts.insert(StoreId(id), n);
        self
    }

    fn check(&self, region: &RegionInfo) -> Option<Decision> {
        let counts = |s: StoreId| self.counts.get(&s).copied().unwrap_or(0);
        let stores = Stores {
            infos: &self.stores,
            region_count: &counts,
            alive_since: self.now - Duration::from_secs(3600),
        };
        check(region, &stores, &self.cfg, self.now)
    }
}

fn voter(id: u64, store: u64) -> Peer {
    Peer { id: PeerId(id), store_id: StoreId(store), role: PeerRole::Voter }
}

fn learner(id: u64, store: u64) -> Peer {
    Peer { id: PeerId(id), store_id: StoreId(store), role: PeerRole::Learner }
}

/// Region 1 with `peers`, led by the first one.
fn region(peers: Vec<Peer>) -> RegionInfo {
    let leader = peers[0];
    RegionInfo {
        region: Region {
            id: RegionId(1),
            epoch: RegionEpoch { conf_ver: 1, version: 1 },
            peers,
            ..Default::default()
        },
        runtime: RegionRuntime { leader: Some(leader), ..Default::default() },
    }
}

#[test]
fn a_fresh_region_grows_on_the_emptiest_store() {
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).regions_on(2, 5).regions_on(3, 1);
    assert_eq!(w.check(&region(vec![voter(10, 1)])), Some(Decision::AddLearner { store: StoreId(3) }));
}

#[test]
fn a_caught_up_learner_is_promoted_and_a_pending_one_waits() {
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]);
    let mut r = region(vec![voter(10, 1), learner(11, 2)]);
    assert_eq!(w.check(&r), Some(Decision::PromoteLearner(learner(11, 2))));
    r.runtime.pending_peers = vec![learner(11, 2)];
    assert_eq!(w.check(&r), None);
}

#[test]
fn a_fully_replicated_region_is_left_alone() {
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).store(4, &[]);
    assert_eq!(w.check(&region(vec![voter(10, 1), voter(11, 2), voter(12, 3)])), None);
}

#[test]
fn a_peer_on_a_down_store_is_replaced_then_removed() {
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).store(4, &[]).silent_for(3, 31 * 60);
    // Step one: a replacement on the only healthy store without a peer.
    let r = region(vec![voter(10, 1), voter(11, 2), voter(12, 3)]);
    assert_eq!(w.check(&r), Some(Decision::AddLearner { store: StoreId(4) }));
    // Step two, once the replacement is a voter: the down peer goes.
    let r = region(vec![voter(10, 1), voter(11, 2), voter(12, 3), voter(13, 4)]);
    assert_eq!(w.check(&r), Some(Decision::RemovePeer { peer: voter(12, 3), reason: "remove-down-replica" }));
}

#[test]
fn a_disconnected_store_is_neither_replaced_nor_a_target() {
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).silent_for(3, 25);
    // Store 3 is only disconnected: its peer still counts.
    assert_eq!(w.check(&region(vec![voter(10, 1), voter(11, 2), voter(12, 3)])), None);
    // And it receives no new replica.
    assert_eq!(w.check(&region(vec![voter(10, 1), voter(11, 2)])), None);
}

#[test]
fn without_a_spare_store_a_down_peer_is_kept() {
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).silent_for(3, 31 * 60);
    assert_eq!(w.check(&region(vec![voter(10, 1), voter(11, 2), voter(12, 3)])), None);
}

#[test]
fn the_leader_report_of_a_down_peer_counts_too() {
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).store(4, &[]);
    let mut r = region(vec![voter(10, 1), voter(11, 2), voter(12, 3)]);
    r.runtime.down_peers = vec![DownPeer { peer: voter(12, 3), down_seconds: 1800 }];
    assert_eq!(w.check(&r), Some(Decision::AddLearner { store: StoreId(4) }));
}

#[test]
fn offline_stores_are_drained() {
    let w =
        World::new().store(1, &[]).store(2, &[]).store(3, &[]).store(4, &[]).state(2, StoreState::Offline);
    let r = region(vec![voter(10, 1), voter(11, 2), voter(12, 3)]);
    assert_eq!(w.check(&r), Some(Decision::AddLearner { store: StoreId(4) }));
}

#[test]
fn the_leader_is_never_removed() {
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).store(4, &[]).regions_on(1, 100);
    let r = region(vec![voter(10, 1), voter(11, 2), voter(12, 3), voter(13, 4)]);
    let Some(Decision::RemovePeer { peer, reason }) = w.check(&r) else { panic!("expected a removal") };
    assert_ne!(peer.store_id, StoreId(1), "store 1 holds the leader");
    assert_eq!(reason, "remove-extra-replica");
}

#[test]
fn two_replicas_never_share_a_host() {
    let w = World::new()
        .store(1, &[("host", "h1")])
        .store(2, &[("host", "h1")])
        .store(3, &[("host", "h2")])
        .regions_on(3, 50);
    // Store 2 is empty but on the leader's host; store 3 is busy but elsewhere.
    assert_eq!(w.check(&region(vec![voter(10, 1)])), Some(Decision::AddLearner { store: StoreId(3) }));
}

#[test]
fn replicas_spread_over_the_widest_label_level() {
    let mut w = World::new()
        .store(1, &[("zone", "z1"), ("host", "a")])
        .store(2, &[("zone", "z1"), ("host", "b")])
        .store(3, &[("zone", "z2"), ("host", "c")])
        .regions_on(3, 50);
    w.cfg.location_labels = vec!["zone".into(), "host".into()];
    // Store 2 is emptier, but store 3 is in another zone than the leader's.
    assert_eq!(w.check(&region(vec![voter(10, 1)])), Some(Decision::AddLearner { store: StoreId(3) }));
    // With too many voters, one of the two sharing zone z1 goes first.
    let w = w.store(4, &[("zone", "z3"), ("host", "d")]);
    let r = region(vec![voter(10, 3), voter(11, 1), voter(12, 2), voter(13, 4)]);
    let Some(Decision::RemovePeer { peer, .. }) = w.check(&r) else { panic!("expected a removal") };
    assert!(peer.store_id == StoreId(1) || peer.store_id == StoreId(2), "removed {peer:?}");
}

#[test]
fn an_extra_learner_is_removed() {
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).store(4, &[]);
    let r = region(vec![voter(10, 1), voter(11, 2), voter(12, 3), learner(13, 4)]);
    assert_eq!(
        w.check(&r),
        Some(Decision::RemovePeer { peer: learner(13, 4), reason: "remove-extra-learner" })
    );
}
