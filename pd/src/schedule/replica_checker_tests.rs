//! Decisions of the replica checker, one scenario per test.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use mnemo_proto::types::{Peer, PeerId, PeerRole, Region, RegionEpoch, RegionId, StoreId};

use super::*;
use crate::region_map::{DownPeer, RegionInfo, RegionMap, RegionRuntime};
use crate::schedule::{ClusterSnapshot, OperatorController, Plan, Settings};
use crate::store::{StoreInfo, StoreMeta, StoreState, StoreStats};

/// A cluster at one instant: stores with labels and heartbeats, and filler
/// regions that give stores their region counts.
struct World {
    stores: BTreeMap<StoreId, StoreInfo>,
    regions: RegionMap,
    now: SystemTime,
    settings: Settings,
    ops: OperatorController,
}

impl World {
    fn new() -> Self {
        World {
            stores: BTreeMap::new(),
            regions: RegionMap::new(),
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            settings: Settings::default(),
            ops: OperatorController::default(),
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

    /// Store `id`'s latest heartbeat reported `stats`.
    fn stats(mut self, id: u64, stats: StoreStats) -> Self {
        self.stores.get_mut(&StoreId(id)).unwrap().stats = Some(stats);
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

    /// `n` one-replica filler regions on store `id`.
    fn regions_on(mut self, id: u64, n: u64) -> Self {
        for i in 0..n {
            let start = format!("filler-{id:03}-{i:05}").into_bytes();
            let end = [start.as_slice(), b"\0"].concat();
            let peers = vec![voter(1_000_000 + id * 1000 + i, id)];
            let region_id = RegionId(1_000_000 + id * 1000 + i);
            self.regions.put(Region {
                id: region_id,
                start_key: start,
                end_key: end,
                peers,
                ..Default::default()
            });
        }
        self
    }

    /// True if store `id` may receive a balancing move.
    fn is_target(&self, id: u64) -> bool {
        let snap = ClusterSnapshot {
            stores: &self.stores,
            regions: &self.regions,
            now: self.now,
            alive_since: self.now - Duration::from_secs(3600),
        };
        Ctx { snap: &snap, settings: &self.settings, ops: &self.ops }.is_target(StoreId(id))
    }

    fn check(&self, region: &RegionInfo) -> Option<Plan> {
        let snap = ClusterSnapshot {
            stores: &self.stores,
            regions: &self.regions,
            now: self.now,
            alive_since: self.now - Duration::from_secs(3600),
        };
        check(region, &Ctx { snap: &snap, settings: &self.settings, ops: &self.ops }).map(|p| p.plan)
    }

    fn desc(&self, region: &RegionInfo) -> &'static str {
        let snap = ClusterSnapshot {
            stores: &self.stores,
            regions: &self.regions,
            now: self.now,
            alive_since: self.now - Duration::from_secs(3600),
        };
        check(region, &Ctx { snap: &snap, settings: &self.settings, ops: &self.ops })
            .expect("a proposal")
            .desc
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

fn store(id: u64) -> StoreId {
    StoreId(id)
}

#[test]
fn a_fresh_region_grows_on_the_emptiest_store() {
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).regions_on(2, 5).regions_on(3, 1);
    assert_eq!(w.check(&region(vec![voter(10, 1)])), Some(Plan::AddReplica { store: store(3) }));
}

#[test]
fn balancing_avoids_busy_full_or_flooded_stores_and_repairs_do_not_wait_for_them() {
    // Store 3 is the emptiest, so a repair puts the replica there.
    let w = || World::new().store(1, &[]).store(2, &[]).store(3, &[]).regions_on(2, 5).regions_on(3, 1);
    let r = region(vec![voter(10, 1)]);
    let to = |store_id| Some(Plan::AddReplica { store: store(store_id) });
    assert_eq!(w().check(&r), to(3));
    assert!(w().is_target(3));
    let max = w().settings.max_snapshot_count as u32;
    let receiving =
        StoreStats { receiving_snap_count: max - 1, applying_snap_count: 1, ..Default::default() };
    let busy = StoreStats { is_busy: true, ..Default::default() };
    let full = StoreStats { capacity: 100 << 30, available: 10 << 30, ..Default::default() };
    let roomy = StoreStats { capacity: 100 << 30, available: 50 << 30, ..Default::default() };
    for (why, stats) in [("receiving", receiving), ("busy", busy), ("low on space", full.clone())] {
        // No balancing move goes there...
        assert!(!w().stats(3, stats.clone()).is_target(3), "{why}: still a balancing target");
        // ...but a repair is not held back by a temporary state.
        if why != "low on space" {
            assert_eq!(w().stats(3, stats).check(&r), to(3), "{why}: the repair waited");
        }
    }
    // Low space: a repair goes elsewhere when another store will do...
    assert_eq!(w().stats(3, full.clone()).stats(2, roomy).check(&r), to(2), "low on space");
    // ...and still happens when every store is low (one shared disk).
    assert_eq!(w().stats(3, full.clone()).stats(2, full).check(&r), to(3));
}

#[test]
fn removing_a_peer_reported_down_costs_its_store_no_limit() {
    let mut w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).store(4, &[]);
    w.settings.store_limit.remove_peer = 0.0;
    let mut info = region(vec![voter(10, 1), voter(11, 2), voter(12, 3)]);
    info.runtime.down_peers = vec![DownPeer { peer: voter(12, 3), down_seconds: 600 }];
    let remove = |peer: Peer| {
        crate::schedule::Operator::new(
            &info.region,
            crate::schedule::OpKind::Replica,
            "remove",
            vec![crate::schedule::Step::RemovePeer(peer)],
            w.now,
            Duration::from_secs(60),
        )
    };
    let (down, up) = (remove(voter(12, 3)), remove(voter(11, 2)));
    assert_eq!(
        w.ops.clone().add(up, &info, &w.settings),
        Err(crate::schedule::Refusal::StoreLimit(store(2), crate::schedule::LimitType::RemovePeer))
    );
    assert!(w.ops.add(down, &info, &w.settings).is_ok(), "the down peer's removal was limited");
}

#[test]
fn the_store_limit_caps_new_peers_per_store_and_minute() {
    let mut w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).regions_on(2, 5);
    w.settings.store_limit.add_peer = 2.0;
    let r = region(vec![voter(10, 1)]);
    let add_to_3 = |w: &mut World, region_id: u64, at: SystemTime| {
        let mut info = r.clone();
        info.region.id = RegionId(region_id);
        let op = crate::schedule::Operator::new(
            &info.region,
            crate::schedule::OpKind::Replica,
            "add-replica",
            vec![crate::schedule::Step::AddLearner(learner(100 + region_id, 3))],
            at,
            Duration::from_secs(60),
        );
        w.ops.add(op, &info, &w.settings)
    };
    let now = w.now;
    assert!(add_to_3(&mut w, 1, now).is_ok());
    assert!(add_to_3(&mut w, 2, now).is_ok());
    assert_eq!(
        add_to_3(&mut w, 3, now),
        Err(crate::schedule::Refusal::StoreLimit(store(3), crate::schedule::LimitType::AddPeer))
    );
    // Store 3 is no target while its bucket is empty: the checker picks 2.
    let mut other = region(vec![voter(20, 1)]);
    other.region.id = RegionId(50);
    assert_eq!(w.check(&other), Some(Plan::AddReplica { store: store(2) }));
    // Half a minute later one more peer (2 per minute) may go there.
    assert!(add_to_3(&mut w, 4, now + Duration::from_secs(30)).is_ok());
    assert!(add_to_3(&mut w, 5, now + Duration::from_secs(30)).is_err());
}

#[test]
fn a_caught_up_learner_is_promoted_and_a_pending_one_waits() {
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]);
    let mut r = region(vec![voter(10, 1), learner(11, 2)]);
    assert_eq!(w.check(&r), Some(Plan::Promote(learner(11, 2))));
    r.runtime.pending_peers = vec![learner(11, 2)];
    assert_eq!(w.check(&r), None);
}

#[test]
fn a_learner_catching_up_on_a_silent_store_is_given_up() {
    // Store 2 went quiet (Disconnected, not yet Down) while its learner was
    // receiving a snapshot: waiting for it would block the region.
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).silent_for(2, 25);
    let mut r = region(vec![voter(10, 1), voter(12, 3), learner(11, 2)]);
    r.runtime.pending_peers = vec![learner(11, 2)];
    assert_eq!(w.check(&r), Some(Plan::Remove(learner(11, 2))));
}

#[test]
fn a_learner_pending_longer_than_an_operator_may_take_is_given_up() {
    // The learner's snapshot was dropped and the operator that added it
    // timed out: it would never catch up, and the region would wait for ever.
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]);
    let mut r = region(vec![voter(10, 1), voter(12, 3), learner(11, 2)]);
    r.runtime.pending_peers = vec![learner(11, 2)];
    r.runtime.pending_since = BTreeMap::from([(PeerId(11), w.now - Duration::from_secs(10))]);
    assert_eq!(w.check(&r), None, "still within operator-timeout: wait");
    // Its operator timed out, yet its snapshot may still be on the way.
    r.runtime.pending_since = BTreeMap::from([(PeerId(11), w.now - w.settings.operator_timeout)]);
    assert_eq!(w.check(&r), None, "one operator-timeout: still waiting");
    let twice = 2 * w.settings.snapshot_timeout(&r);
    r.runtime.pending_since = BTreeMap::from([(PeerId(11), w.now - twice)]);
    assert_eq!(w.check(&r), Some(Plan::Remove(learner(11, 2))));
    // A 1 GiB region's snapshot takes longer: the same wait is not enough.
    r.runtime.approximate_size = 1 << 30;
    assert_eq!(w.check(&r), None, "a big region's learner gets more time");
    assert_eq!(w.settings.snapshot_timeout(&r), w.settings.operator_timeout + Duration::from_secs(1024));
}

#[test]
fn a_pending_learner_never_blocks_replacing_a_down_voter() {
    // Store 3 is Down; a learner on store 4 is still catching up. The down
    // voter is moved to store 5 at once rather than after the learner.
    let w = World::new()
        .store(1, &[])
        .store(2, &[])
        .store(3, &[])
        .store(4, &[])
        .store(5, &[])
        .silent_for(3, 31 * 60);
    let mut r = region(vec![voter(10, 1), voter(11, 2), voter(12, 3), learner(13, 4)]);
    r.runtime.pending_peers = vec![learner(13, 4)];
    assert_eq!(w.check(&r), Some(Plan::Move { from: voter(12, 3), to: store(5) }));
}

#[test]
fn a_fully_replicated_region_is_left_alone() {
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).store(4, &[]);
    assert_eq!(w.check(&region(vec![voter(10, 1), voter(11, 2), voter(12, 3)])), None);
}

#[test]
fn a_peer_on_a_down_store_is_moved_to_a_spare_store() {
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).store(4, &[]).silent_for(3, 31 * 60);
    // Store 3 holds a follower and has been silent past max-store-down-time:
    // one move (learner on store 4, then a joint swap) replaces it.
    let r = region(vec![voter(10, 1), voter(11, 2), voter(12, 3)]);
    assert_eq!(w.check(&r), Some(Plan::Move { from: voter(12, 3), to: store(4) }));
    assert_eq!(w.desc(&r), "replace-down-replica");
}

#[test]
fn a_caught_up_replacement_is_swapped_in_for_the_down_peer_at_once() {
    // A move timed out after its learner caught up: finish it in one joint change.
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).store(4, &[]).silent_for(3, 31 * 60);
    let r = region(vec![voter(10, 1), voter(11, 2), voter(12, 3), learner(13, 4)]);
    assert_eq!(w.check(&r), Some(Plan::Swap { promote: learner(13, 4), remove: voter(12, 3) }));
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
    assert_eq!(w.check(&r), Some(Plan::Move { from: voter(12, 3), to: store(4) }));
}

#[test]
fn offline_stores_are_drained_even_of_leaders() {
    let w =
        World::new().store(1, &[]).store(2, &[]).store(3, &[]).store(4, &[]).state(1, StoreState::Offline);
    // The leader's store is draining: its peer moves too (the operator hands
    // leadership over first).
    let r = region(vec![voter(10, 1), voter(11, 2), voter(12, 3)]);
    assert_eq!(w.check(&r), Some(Plan::Move { from: voter(10, 1), to: store(4) }));
    assert_eq!(w.desc(&r), "move-offline-replica");
}

#[test]
fn a_healthy_leader_is_not_removed_as_extra_while_a_follower_can_go() {
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).store(4, &[]).regions_on(1, 100);
    let r = region(vec![voter(10, 1), voter(11, 2), voter(12, 3), voter(13, 4)]);
    let Some(Plan::Remove(peer)) = w.check(&r) else { panic!("expected a removal") };
    assert_ne!(peer.store_id, store(1), "store 1 holds the leader");
    assert_eq!(w.desc(&r), "remove-extra-replica");
}

#[test]
fn an_unhealthy_leader_is_removed_as_extra_before_a_healthy_follower() {
    // Four voters, the leader's store is Offline: it is the one to go (the
    // operator transfers its leadership first), not a healthy follower.
    let w =
        World::new().store(1, &[]).store(2, &[]).store(3, &[]).store(4, &[]).state(1, StoreState::Offline);
    let r = region(vec![voter(10, 1), voter(11, 2), voter(12, 3), voter(13, 4)]);
    assert_eq!(w.check(&r), Some(Plan::Remove(voter(10, 1))));

    // One replica wanted: a move off an Offline leader that timed out after
    // promoting the new voter leaves two; the old leader goes, not the new
    // voter (which would only start the same move again, for ever).
    let mut w = World::new().store(1, &[]).store(2, &[]).state(1, StoreState::Offline);
    w.settings.max_replicas = 1;
    let r = region(vec![voter(10, 1), voter(11, 2)]);
    assert_eq!(w.check(&r), Some(Plan::Remove(voter(10, 1))));
}

#[test]
fn two_replicas_never_share_a_host() {
    let w = World::new()
        .store(1, &[("host", "h1")])
        .store(2, &[("host", "h1")])
        .store(3, &[("host", "h2")])
        .regions_on(3, 50);
    // Store 2 is empty but on the leader's host; store 3 is busy but elsewhere.
    assert_eq!(w.check(&region(vec![voter(10, 1)])), Some(Plan::AddReplica { store: store(3) }));
}

#[test]
fn replicas_spread_over_the_widest_label_level() {
    let mut w = World::new()
        .store(1, &[("zone", "z1"), ("host", "a")])
        .store(2, &[("zone", "z1"), ("host", "b")])
        .store(3, &[("zone", "z2"), ("host", "c")])
        .regions_on(3, 50);
    w.settings.location_labels = vec!["zone".into(), "host".into()];
    // Store 2 is emptier, but store 3 is in another zone than the leader's.
    assert_eq!(w.check(&region(vec![voter(10, 1)])), Some(Plan::AddReplica { store: store(3) }));
    // With too many voters, one of the two sharing zone z1 goes first.
    let w = w.store(4, &[("zone", "z3"), ("host", "d")]);
    let r = region(vec![voter(10, 3), voter(11, 1), voter(12, 2), voter(13, 4)]);
    let Some(Plan::Remove(peer)) = w.check(&r) else { panic!("expected a removal") };
    assert!(peer.store_id == store(1) || peer.store_id == store(2), "removed {peer:?}");
}

#[test]
fn a_region_placed_worse_than_possible_is_moved_to_an_empty_zone() {
    let mut w = World::new()
        .store(1, &[("zone", "z1"), ("host", "a")])
        .store(2, &[("zone", "z1"), ("host", "b")])
        .store(3, &[("zone", "z2"), ("host", "c")])
        .store(4, &[("zone", "z3"), ("host", "d")]);
    w.settings.location_labels = vec!["zone".into(), "host".into()];
    // Two replicas in z1, none in z3: the follower in z1 moves to z3.
    let r = region(vec![voter(10, 1), voter(11, 2), voter(12, 3)]);
    assert_eq!(w.check(&r), Some(Plan::Move { from: voter(11, 2), to: store(4) }));
    assert_eq!(w.desc(&r), "improve-isolation");
    // Once each zone has one, nothing more to do.
    assert_eq!(w.check(&region(vec![voter(10, 1), voter(12, 3), voter(13, 4)])), None);
}

#[test]
fn an_extra_learner_is_removed() {
    let w = World::new().store(1, &[]).store(2, &[]).store(3, &[]).store(4, &[]);
    let r = region(vec![voter(10, 1), voter(11, 2), voter(12, 3), learner(13, 4)]);
    assert_eq!(w.check(&r), Some(Plan::Remove(learner(13, 4))));
    assert_eq!(w.desc(&r), "remove-extra-learner");
}
