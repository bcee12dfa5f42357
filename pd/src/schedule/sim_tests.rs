//! Whole-cluster scheduling stories on the simulator (`sim.rs`): one
//! scenario per test, simulated time, no sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mnemo_proto::types::{RegionId, StoreId};

use super::sim::{Sim, Unreliable};
use super::{drained_stores, AdminRequest, ClusterSnapshot, Scheduler, Settings, StoreLimit};
use crate::store::StoreState;

/// Fast failure detection, and no store limit (PD's 15 peers per store and
/// minute would stretch every scenario to many minutes; the limit has its
/// own scenario below).
fn settings() -> Settings {
    let unlimited = StoreLimit { add_peer: 1e9, remove_peer: 1e9 };
    Settings { max_store_down_time: Duration::from_secs(5), store_limit: unlimited, ..Settings::default() }
}

#[test]
fn the_store_limit_paces_how_fast_a_new_store_fills() {
    // PD's default store limit, 15 peers per store and minute. 64 regions
    // on stores 1-3; store 4 joins empty and its share (48 replicas) needs
    // more than a minute's worth.
    let mut sim = Sim::new(Settings { store_limit: Settings::default().store_limit, ..settings() });
    plain_stores(&mut sim, 1..=4);
    sim.regions(64, &[1, 2, 3]);
    sim.run(60);
    let first_minute = sim.region_count(4);
    // A full bucket (15), then 15 more over the minute.
    assert!((15..=31).contains(&first_minute), "{first_minute} replicas reached store 4 in the first minute");
    // It still gets there.
    let took = sim.run_until(300, |s| s.balanced(20.0, Sim::region_count) && s.healthy());
    assert!(took.is_some(), "not balanced: {:?}", counts(&sim, Sim::region_count));
}

fn plain_stores(sim: &mut Sim, ids: std::ops::RangeInclusive<u64>) {
    for id in ids {
        sim.store(id, &[]);
    }
}

fn stores_of(sim: &Sim) -> Vec<BTreeSet<u64>> {
    sim.truth().map(|r| r.peers.iter().map(|p| p.store_id.0).collect()).collect()
}

#[test]
fn two_new_stores_receive_their_share_of_regions_and_leaders() {
    // 64 regions live on stores 1-3, all led from store 1; stores 4 and 5 join empty.
    let mut sim = Sim::new(settings());
    plain_stores(&mut sim, 1..=5);
    sim.regions(64, &[1, 2, 3]);

    // Within a minute of simulated time (1 s heartbeats), every store holds
    // its share of replicas and of leaders, within ±20 %.
    let took = sim.run_until(60, |s| {
        s.balanced(20.0, Sim::region_count) && s.balanced(20.0, Sim::leader_count) && s.healthy()
    });
    assert!(
        took.is_some(),
        "not balanced: regions {:?}, leaders {:?}",
        counts(&sim, Sim::region_count),
        counts(&sim, Sim::leader_count)
    );

    // Then it stays put: no operator flaps regions back and forth.
    let settled = sim.created;
    sim.run(30);
    assert_eq!(sim.created, settled, "operators kept coming after balance");
    assert!(sim.balanced(10.0, Sim::region_count), "{:?}", counts(&sim, Sim::region_count));
    assert!(sim.healthy());
    // Leader transfers never exceeded leader-schedule-limit.
    assert!(sim.peak["leader"] <= settings().leader_limit);
}

/// `settings()` with every store of `ids` weighing `leader` and `region`.
fn weighted(ids: std::ops::RangeInclusive<u64>, leader: f64, region: f64) -> Settings {
    let weight = super::settings::StoreWeight { leader, region };
    Settings { store_weights: ids.map(|id| (StoreId(id), weight)).collect(), ..settings() }
}

#[test]
fn uniform_weights_below_one_balance_as_weight_one_and_then_hold_still() {
    // Weights 0.5 everywhere must mean what weight 1 means: a transfer is
    // worth it across a gap of two leaders, so 4/3/3 stays put.
    let mut sim = Sim::new(weighted(1..=3, 0.5, 0.5));
    plain_stores(&mut sim, 1..=3);
    sim.regions(10, &[1, 2, 3]);
    let took = sim.run_until(60, |s| s.balanced(40.0, Sim::leader_count) && s.healthy());
    assert!(took.is_some(), "leaders {:?}", counts(&sim, Sim::leader_count));
    let settled = sim.created;
    sim.run(30);
    assert_eq!(sim.created, settled, "operators kept coming: leaders {:?}", counts(&sim, Sim::leader_count));
}

#[test]
fn equal_weights_whose_unit_rounds_still_even_out_two_leaders() {
    // 1000/1.5 and 1000/0.7 round (667, 1429): two leaders on one store
    // score one unit less than twice one leader. Leaders 2/0/0 must still
    // become 1/1/0 and stay so.
    for w in [1.5, 0.7] {
        let mut sim = Sim::new(weighted(1..=3, w, w));
        plain_stores(&mut sim, 1..=3);
        sim.regions(2, &[1, 2, 3]);
        let even = |s: &Sim| counts(s, Sim::leader_count).iter().all(|&n| n <= 1) && s.healthy();
        let took = sim.run_until(60, even);
        assert!(took.is_some(), "weight {w}: leaders {:?}", counts(&sim, Sim::leader_count));
        let settled = sim.created;
        sim.run(30);
        assert_eq!(sim.created, settled, "weight {w}: operators kept coming");
    }
}

#[test]
fn a_store_of_weight_two_ends_with_about_twice_the_leaders_and_holds_still() {
    let mut settings = weighted(1..=1, 2.0, 1.0);
    settings.store_weights.extend(weighted(2..=4, 1.0, 1.0).store_weights);
    let mut sim = Sim::new(settings);
    plain_stores(&mut sim, 1..=4);
    sim.regions(60, &[2, 3, 4]);
    // 60 leaders over weights 2+1+1+1: about 24 on store 1, 12 elsewhere.
    let took = sim.run_until(120, |s| {
        let l = |id| s.leader_count(id) as i64;
        (20..=28).contains(&l(1)) && (2..=4).all(|id| (9..=15).contains(&l(id))) && s.healthy()
    });
    assert!(took.is_some(), "leaders {:?}", counts(&sim, Sim::leader_count));
    let settled = sim.created;
    sim.run(30);
    assert_eq!(sim.created, settled, "operators kept coming: leaders {:?}", counts(&sim, Sim::leader_count));
}

#[test]
fn a_thousand_regions_balance_too() {
    let mut sim = Sim::new(settings());
    plain_stores(&mut sim, 1..=5);
    sim.regions(1000, &[1, 2, 3]);
    let took = sim.run_until(300, |s| {
        s.balanced(20.0, Sim::region_count) && s.balanced(20.0, Sim::leader_count) && s.healthy()
    });
    assert!(
        took.is_some(),
        "regions {:?}, leaders {:?}",
        counts(&sim, Sim::region_count),
        counts(&sim, Sim::leader_count)
    );
}

#[test]
fn a_dead_follower_store_is_healed_on_the_remaining_stores() {
    // Store 2 holds a follower of every region and dies for good. (Balancing
    // is off, so that only repairs move replicas to the empty store 4.)
    let mut sim = Sim::new(Settings { leader_limit: 0, region_limit: 0, ..settings() });
    plain_stores(&mut sim, 1..=4);
    sim.regions(30, &[1, 2, 3]);
    sim.run(3);
    sim.kill(2);

    // Before max-store-down-time (5 s) nothing moves: it may come back.
    sim.run(4);
    assert_eq!(sim.region_count(2), 30, "replicas moved before the store was Down");

    // Once Down, every region gets a replica on store 4 and drops store 2's.
    assert!(sim.run_until(30, Sim::healthy).is_some(), "{:?}", stores_of(&sim));
    assert!(stores_of(&sim).iter().all(|s| s == &BTreeSet::from([1, 3, 4])));
}

#[test]
fn a_dead_leader_store_is_healed_after_new_leaders_are_elected() {
    let mut sim = Sim::new(settings());
    plain_stores(&mut sim, 1..=5);
    sim.regions(20, &[2, 1, 3]); // led from store 2
    sim.run(2);
    sim.kill(2);
    assert!(sim.run_until(40, Sim::healthy).is_some(), "{:?}", stores_of(&sim));
    assert_eq!(sim.region_count(2), 0);
    assert_eq!(sim.leader_count(2), 0);
}

#[test]
fn a_store_dying_while_regions_move_onto_it_ends_empty() {
    // Balance starts moving replicas onto the new stores 4 and 5...
    let mut sim = Sim::new(settings());
    plain_stores(&mut sim, 1..=5);
    sim.regions(64, &[1, 2, 3]);
    for _ in 0..6 {
        sim.tick();
    }
    assert!(sim.ops.iter().any(|op| op.target_stores().contains(&StoreId(4))));
    // ...when store 4 dies. Its half-made learners are given up, its
    // replicas replaced, and the rest is balanced over stores 1, 2, 3, 5.
    sim.kill(4);
    let took = sim.run_until(90, |s| s.healthy() && s.balanced(20.0, Sim::region_count));
    assert!(took.is_some(), "{:?} / {:?}", stores_of(&sim), counts(&sim, Sim::region_count));
    assert_eq!(sim.region_count(4), 0);
}

#[test]
fn an_offline_store_drains_and_can_become_tombstone() {
    // Store 3 leads every region, so each move starts with a leader transfer.
    let mut sim = Sim::new(settings());
    plain_stores(&mut sim, 1..=5);
    sim.regions(40, &[3, 1, 2]);
    sim.run(2);
    sim.set_state(3, StoreState::Offline);

    assert!(sim.run_until(60, |s| s.region_count(3) == 0 && s.healthy()).is_some(), "{:?}", stores_of(&sim));
    let snap =
        ClusterSnapshot { stores: &sim.stores, regions: &sim.regions, now: sim.now, alive_since: sim.now };
    assert_eq!(drained_stores(&snap), vec![StoreId(3)]);
    // The remaining four stores share the load.
    assert!(sim.run_until(60, |s| s.balanced(20.0, Sim::region_count)).is_some());
}

fn zoned(sim: &mut Sim) {
    for (id, zone) in [(1, "z1"), (2, "z1"), (3, "z2"), (4, "z2"), (5, "z3"), (6, "z3")] {
        sim.store(id, &[("zone", zone), ("host", &format!("h{id}"))]);
    }
}

fn one_replica_per_zone(sim: &Sim) -> bool {
    let zone = |s: u64| s.div_ceil(2);
    stores_of(sim).iter().all(|stores| stores.iter().map(|&s| zone(s)).collect::<BTreeSet<_>>().len() == 3)
}

#[test]
fn six_stores_in_three_zones_end_with_one_replica_per_zone() {
    // Every region starts with two replicas in zone z1 (stores 1 and 2).
    let mut sim = Sim::new(Settings { location_labels: vec!["zone".into(), "host".into()], ..settings() });
    zoned(&mut sim);
    sim.regions(48, &[1, 2, 3]);

    let took =
        sim.run_until(90, |s| one_replica_per_zone(s) && s.healthy() && s.balanced(20.0, Sim::region_count));
    assert!(took.is_some(), "{:?} / {:?}", stores_of(&sim), counts(&sim, Sim::region_count));
    // Balancing afterwards never undoes it.
    sim.run(20);
    assert!(one_replica_per_zone(&sim));
}

#[test]
fn lone_replicas_grow_one_per_zone() {
    let mut sim = Sim::new(Settings { location_labels: vec!["zone".into(), "host".into()], ..settings() });
    zoned(&mut sim);
    sim.regions(12, &[1]);
    assert!(sim.run_until(60, |s| one_replica_per_zone(s) && s.healthy()).is_some(), "{:?}", stores_of(&sim));
}

#[test]
fn two_stores_on_one_host_never_share_a_region() {
    // Stores 1 and 2 are on host h1; store 2 is empty and tempting.
    let mut sim = Sim::new(settings());
    sim.store(1, &[("host", "h1")]).store(2, &[("host", "h1")]);
    sim.store(3, &[("host", "h3")]).store(4, &[("host", "h4")]).store(5, &[("host", "h5")]);
    sim.regions(40, &[1, 3, 4]);
    // A replica may move from store 1 to store 2 (same host, briefly both),
    // but no settled region ever keeps replicas on both.
    let settled_on_both = |sim: &Sim| {
        sim.truth().any(|r| {
            r.peers.len() == 3
                && r.peer_on_store(StoreId(1)).is_some()
                && r.peer_on_store(StoreId(2)).is_some()
        })
    };
    for _ in 0..60 {
        sim.run(1);
        assert!(!settled_on_both(&sim), "{:?}", stores_of(&sim));
    }
    assert!(sim.region_count(2) > 0, "store 2 takes regions that have no replica on store 1");
}

#[test]
fn repairs_respect_the_replica_schedule_limit() {
    let mut sim = Sim::new(Settings { replica_limit: 2, ..settings() });
    plain_stores(&mut sim, 1..=4);
    sim.regions(20, &[1, 2, 3]);
    sim.run(1);
    sim.kill(3);
    assert!(sim.run_until(120, Sim::healthy).is_some());
    assert!(sim.peak["replica"] <= 2, "peak {}", sim.peak["replica"]);
}

#[test]
fn zero_limits_turn_balancing_and_shuffling_off() {
    let mut sim = Sim::new(Settings { leader_limit: 0, region_limit: 0, ..settings() });
    plain_stores(&mut sim, 1..=5);
    sim.regions(30, &[1, 2, 3]);
    sim.schedulers(&Scheduler::ALL);
    sim.run(30);
    assert_eq!(sim.created, 0);
    assert_eq!((sim.region_count(4), sim.leader_count(1)), (0, 30));
}

#[test]
fn shuffle_leader_keeps_leaders_moving_and_replicas_in_place() {
    // 20 regions on stores 1-3, all led from store 1; only shuffle-leader runs.
    let mut sim = Sim::new(settings());
    plain_stores(&mut sim, 1..=3);
    sim.regions(20, &[1, 2, 3]);
    sim.schedulers(&[Scheduler::ShuffleLeader]);
    let placement = stores_of(&sim);

    // For 30 s, note every store each region is led from.
    let mut led_from: BTreeMap<RegionId, BTreeSet<u64>> = BTreeMap::new();
    for _ in 0..300 {
        sim.tick();
        for info in sim.regions.iter() {
            let leader = info.leader().expect("every region has a live leader");
            led_from.entry(info.region.id).or_default().insert(leader.store_id.0);
        }
    }

    // Leadership wandered: every region was led from at least two stores,
    // and every store led regions at some point.
    assert!(led_from.values().all(|stores| stores.len() >= 2), "{led_from:?}");
    let leading: BTreeSet<u64> = led_from.values().flatten().copied().collect();
    assert_eq!(leading, BTreeSet::from([1, 2, 3]));
    // At the pace of one transfer per round at most, within leader-schedule-limit.
    assert!(sim.created_by["shuffle-leader"] >= 100, "{:?}", sim.created_by);
    assert_eq!(sim.burst["shuffle-leader"], 1);
    assert!(sim.peak["leader"] <= settings().leader_limit);
    // Only leadership moved.
    assert_eq!(stores_of(&sim), placement);
    assert_eq!(sim.created, sim.created_by["shuffle-leader"]);
    assert!(sim.healthy());
}

#[test]
fn shuffle_region_moves_replicas_within_their_zones_and_never_loses_one() {
    // Six stores in three zones; every region starts with one replica per
    // zone, on stores 1, 3 and 5. Only shuffle-region runs.
    let mut sim = Sim::new(Settings { location_labels: vec!["zone".into(), "host".into()], ..settings() });
    zoned(&mut sim);
    sim.regions(24, &[1, 3, 5]);
    sim.schedulers(&[Scheduler::ShuffleRegion]);
    let before = stores_of(&sim);

    // For 30 s, checked every second: no region ever has fewer than three
    // voters (a move adds a learner, then swaps it in by joint consensus),
    // and every region keeps a replica in each zone (a move to another zone
    // would make its isolation worse, so none happens).
    for _ in 0..30 {
        sim.run(1);
        assert!(sim.truth().all(|r| r.voters().count() >= 3), "{:?}", stores_of(&sim));
        assert!(one_replica_per_zone(&sim), "{:?}", stores_of(&sim));
    }

    // Replicas moved: most regions changed stores, and the stores that
    // started empty hold replicas now. One move per round at most.
    let moved = before.iter().zip(stores_of(&sim)).filter(|(a, b)| **a != *b).count();
    assert!(moved >= 12, "only {moved} of 24 regions moved");
    assert!([2, 4, 6].iter().all(|&s| sim.region_count(s) > 0), "{:?}", counts(&sim, Sim::region_count));
    assert_eq!(sim.burst["shuffle-region"], 1);
    assert_eq!(sim.created, sim.created_by["shuffle-region"], "{:?}", sim.created_by);

    // Removed, the scheduler's last moves finish: three voters per region,
    // one per zone, and nothing moves any more.
    sim.schedulers(&[]);
    assert!(sim.run_until(10, Sim::healthy).is_some(), "{:?}", stores_of(&sim));
    assert!(one_replica_per_zone(&sim));
    let settled = stores_of(&sim);
    sim.run(5);
    assert_eq!(stores_of(&sim), settled);
}

#[test]
fn late_duplicated_and_cancelled_steps_never_cost_a_region_a_voter() {
    // 24 regions start with four voters (one more than max-replicas) on
    // five stores, so PD removes extra replicas while shuffle-region and
    // shuffle-leader keep moving things. Heartbeats and orders arrive late
    // (up to 3 s), twice or never, operators are cancelled at random and
    // time out after 2 s: PD plans on stale views, and orders of dropped
    // operators are still in flight. Whatever the interleaving, every
    // change a region takes keeps it at max-replicas voters or more (far
    // from losing its quorum), then everything settles once the link heals.
    for seed in 1..=20 {
        let mut sim = Sim::new(Settings { operator_timeout: Duration::from_secs(2), ..settings() });
        plain_stores(&mut sim, 1..=5);
        sim.regions(24, &[1, 2, 3, 4]);
        sim.schedulers(&[Scheduler::ShuffleRegion, Scheduler::ShuffleLeader]);
        sim.unreliable = Some(Unreliable::new(seed));
        sim.run(120);
        assert!(
            sim.min_voters >= 3,
            "seed {seed}: a region fell to {} voters (quorum of 3 is 2): {:?}",
            sim.min_voters,
            stores_of(&sim)
        );
        let created = |desc| sim.created_by.get(desc).copied().unwrap_or(0);
        assert!(created("remove-extra-replica") > 0 && created("shuffle-region") > 0, "{:?}", sim.created_by);

        sim.unreliable = None;
        sim.schedulers(&[]);
        assert!(sim.run_until(60, Sim::healthy).is_some(), "seed {seed}: {:?}", stores_of(&sim));
    }
}

fn counts(sim: &Sim, count: fn(&Sim, u64) -> usize) -> Vec<usize> {
    sim.stores.keys().map(|s| count(sim, s.0)).collect()
}

fn peer_stores(sim: &Sim, region: u64) -> BTreeSet<u64> {
    sim.truth()
        .filter(|r| r.id == RegionId(region))
        .flat_map(|r| r.peers.iter().map(|p| p.store_id.0))
        .collect()
}

#[test]
fn transfer_region_moves_every_replica_one_at_a_time_and_keeps_a_quorum() {
    let mut sim = Sim::new(settings());
    sim.schedulers(&[]);
    plain_stores(&mut sim, 1..=5);
    sim.regions(1, &[1, 2, 3]);
    sim.run(2);
    let to = |stores: &[u64]| AdminRequest::TransferRegion {
        to_stores: stores.iter().map(|s| StoreId(*s)).collect(),
    };
    // Refused as it stands: wrong count, a store twice, already there.
    assert!(sim.admin(1, &to(&[4, 5])).unwrap_err().contains("3 replicas"));
    assert!(sim.admin(1, &to(&[4, 4, 5])).unwrap_err().contains("twice"));
    assert!(sim.admin(1, &to(&[3, 2, 1])).unwrap_err().contains("already"));
    // The leader's store (1) among those that go: it hands over on its turn.
    sim.admin(1, &to(&[3, 4, 5])).unwrap();
    let took = sim.run_until(120, |s| {
        peer_stores(s, 1) == BTreeSet::from([3, 4, 5]) && s.healthy() && s.ops.is_empty()
    });
    assert!(took.is_some(), "peers {:?}, ops {:?}", peer_stores(&sim, 1), sim.ops.iter().collect::<Vec<_>>());
    assert!(sim.min_voters >= 3, "a move left {} voters", sim.min_voters);
}

#[test]
fn scatter_spreads_a_range_evenly_over_every_store() {
    // 12 regions on stores 1-3, all led from 1; six stores in all.
    let mut sim = Sim::new(settings());
    sim.schedulers(&[]);
    plain_stores(&mut sim, 1..=6);
    sim.regions(12, &[1, 2, 3]);
    sim.run(2);
    let failed = sim.scatter(&(1..=12).collect::<Vec<_>>());
    assert!(failed.is_empty(), "{failed:?}");
    // Leadership moves at most twice per region: off a leaving leader
    // (straight to the wanted voter when it already has one), then onto the
    // wanted store's new voter.
    for op in sim.ops.iter() {
        let transfers = op.steps.iter().filter(|s| matches!(s, super::Step::TransferLeader { .. })).count();
        assert!(transfers <= 2, "{:?}", op.steps);
    }
    let took = sim.run_until(600, |s| s.healthy() && s.ops.is_empty());
    assert!(took.is_some(), "regions {:?}, ops left {}", counts(&sim, Sim::region_count), sim.ops.len());
    // Fewest picks first: 36 replicas over 6 stores, 12 leaders over 6.
    assert_eq!(counts(&sim, Sim::region_count), [6; 6]);
    assert_eq!(counts(&sim, Sim::leader_count), [2; 6]);
    assert!(sim.min_voters >= 3, "a move left {} voters", sim.min_voters);
}

#[test]
fn scatter_keeps_every_region_across_its_zones() {
    // Zone z1 has three stores, z2 and z3 one each: the least picked stores
    // are z1's, yet each region must keep one replica per zone.
    let mut sim = Sim::new(Settings { location_labels: vec!["zone".into(), "host".into()], ..settings() });
    sim.schedulers(&[]);
    for (id, zone) in [(1, "z1"), (2, "z1"), (3, "z1"), (4, "z2"), (5, "z3")] {
        sim.store(id, &[("zone", zone), ("host", &format!("h{id}"))]);
    }
    sim.regions(6, &[1, 4, 5]);
    sim.run(2);
    let failed = sim.scatter(&(1..=6).collect::<Vec<_>>());
    assert!(failed.is_empty(), "{failed:?}");
    let took = sim.run_until(600, |s| s.healthy() && s.ops.is_empty());
    assert!(took.is_some(), "ops left {}", sim.ops.len());
    for stores in stores_of(&sim) {
        assert!(stores.contains(&4) && stores.contains(&5), "a region left a zone: {stores:?}");
    }
    // z1's replicas spread over its three stores.
    assert_eq!(counts(&sim, Sim::region_count), [2, 2, 2, 6, 6]);
}
