//! The cluster's request handling, without a network.

use std::sync::Arc;

use mnemo_engine::{MemEngine, RocksEngine};
use mnemo_proto::types::{Peer, PeerId, PeerRole, Region, RegionEpoch, RegionId, StoreId};

use super::*;
use crate::config::Config;
use crate::member::Member;
use crate::region_map::RegionRuntime;
use crate::schedule::Step;
use crate::store::{StoreMeta, StoreStats};

fn member(config: &Config) -> Member {
    Member::new(config, &config.advertise_client_url().unwrap()).unwrap()
}

fn open_mem(config: Config) -> Cluster {
    let m = member(&config);
    Cluster::open(config, m, Arc::new(MemEngine::new())).unwrap()
}

fn store(id: u64) -> StoreMeta {
    StoreMeta { id: StoreId(id), address: format!("n{id}:20160"), ..Default::default() }
}

fn voter(id: u64, store: u64) -> Peer {
    Peer { id: PeerId(id), store_id: StoreId(store), role: PeerRole::Voter }
}

fn first_region() -> Region {
    Region {
        id: RegionId(2),
        epoch: RegionEpoch { conf_ver: 1, version: 1 },
        peers: vec![voter(3, 1)],
        ..Default::default()
    }
}

fn heartbeat(region: &Region, leader: Peer) -> RegionHeartbeat {
    RegionHeartbeat {
        region: region.clone(),
        runtime: RegionRuntime { leader: Some(leader), ..Default::default() },
    }
}

#[test]
fn the_cluster_id_is_checked() {
    let c = open_mem(Config::default());
    assert_ne!(c.cluster_id(), 0);
    c.check_cluster_id(c.cluster_id()).unwrap();
    let err = c.check_cluster_id(0).unwrap_err();
    assert_eq!(err.to_string(), format!("mismatch cluster id, need {} but got 0", c.cluster_id()));
}

#[test]
fn ids_tso_and_cluster_id_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_tests(dir.path());
    let open = || {
        let engine = Arc::new(RocksEngine::open(&dir.path().join("meta")).unwrap());
        Cluster::open(config.clone(), member(&config), engine).unwrap()
    };
    let (cluster_id, last_id, last_ts, bound_ms) = {
        let c = open();
        let ids: Vec<u64> = (0..1500).map(|_| c.alloc_id().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let ts = (0..100).map(|_| c.tso(3).unwrap().compose()).max().unwrap();
        let bound_ms = c.read(|v| v.state.tso_bound_ms());
        (c.cluster_id(), *ids.last().unwrap(), ts, bound_ms)
    };
    let c = open();
    assert_eq!(c.cluster_id(), cluster_id, "a restarted PD keeps its cluster id");
    assert!(c.alloc_id().unwrap() > last_id, "ids are never re-issued");
    // The saved bound lies ~3 s ahead of the clock, so the wall clock alone
    // (the restart takes milliseconds) would hand out timestamps below what
    // the first life may have issued: only the durable bound keeps them above.
    assert!(bound_ms > crate::time::unix_ms(std::time::SystemTime::now()), "bound {bound_ms} is ahead");
    let first = c.tso(1).unwrap();
    assert!(first.physical_ms >= bound_ms, "{first:?} starts at the saved bound {bound_ms}");
    assert!(first.compose() > last_ts, "timestamps keep increasing");
}

#[test]
fn timestamps_never_wait_for_work_holding_the_metadata_lock() {
    let c = Arc::new(open_mem(Config::default()));
    c.tso(1).unwrap(); // the first window's bound is written
    let (tx, rx) = std::sync::mpsc::channel();
    // Held as long as a slow heartbeat, patrol or HTTP listing would.
    c.read(|_| {
        let c = c.clone();
        std::thread::spawn(move || tx.send(c.tso(1).map(|t| t.compose())).unwrap());
        let ts = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert!(matches!(ts, Ok(Ok(_))), "no timestamp while the metadata lock was held: {ts:?}");
    });
}

#[test]
fn racing_bootstraps_have_one_winner() {
    let c = Arc::new(open_mem(Config::default()));
    let results: Vec<_> = (1..=4)
        .map(|n| {
            let c = c.clone();
            std::thread::spawn(move || {
                let region = Region { peers: vec![voter(100 + n, n)], ..first_region() };
                c.bootstrap(store(n), region)
            })
        })
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, Error::AlreadyBootstrapped)));
    assert!(c.is_bootstrapped());
}

#[test]
fn requests_before_bootstrap_are_refused() {
    let c = open_mem(Config::default());
    assert!(matches!(c.get_region(b"a"), Err(Error::NotBootstrapped)));
    assert!(matches!(c.put_store(store(1)), Err(Error::NotBootstrapped)));
    c.alloc_id().unwrap(); // nodes allocate their store id before bootstrapping
}

#[test]
fn stores_register_and_tombstones_stay_out() {
    let c = open_mem(Config {
        replication: crate::config::ReplicationConfig { max_replicas: 1, ..Default::default() },
        ..Config::default()
    });
    c.bootstrap(store(1), first_region()).unwrap();
    c.put_store(store(4)).unwrap();
    let dup = StoreMeta { id: StoreId(5), ..store(4) };
    assert!(matches!(c.put_store(dup), Err(Error::DuplicateStoreAddress { .. })));
    c.set_store_state(StoreId(4), StoreState::Offline).unwrap();
    // Holding no region, the offline store becomes tombstone on its next heartbeat.
    c.store_heartbeat(StoreId(4), StoreStats::default()).unwrap();
    assert_eq!(c.get_store(StoreId(4)).unwrap().meta.state, StoreState::Tombstone);
    assert!(matches!(c.put_store(store(4)), Err(Error::StoreTombstone(_))));
    assert!(matches!(c.store_heartbeat(StoreId(4), StoreStats::default()), Err(Error::StoreTombstone(_))));
    assert_eq!(c.all_stores(true).unwrap().len(), 1);
    assert_eq!(c.all_stores(false).unwrap().len(), 2);
    // Forgotten, it stays refused.
    assert_eq!(c.remove_tombstones().unwrap(), [StoreId(4)]);
    assert_eq!(c.all_stores(false).unwrap().len(), 1);
    assert!(matches!(c.put_store(store(4)), Err(Error::StoreTombstone(_))));
    assert!(c.remove_tombstones().unwrap().is_empty());
}

#[test]
fn api_labels_stay_when_the_node_registers_again_with_its_own() {
    let c = open_mem(Config::default());
    c.bootstrap(store(1), first_region()).unwrap();
    let with = |pairs: &[(&str, &str)]| StoreMeta {
        labels: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..store(4)
    };
    c.put_store(with(&[("host", "h4")])).unwrap();
    c.set_store_labels(StoreId(4), [("zone".to_owned(), "z1".to_owned())].into()).unwrap();
    // The node restarts with `--labels host=h4b`: its key takes its value, zone stays.
    c.put_store(with(&[("host", "h4b")])).unwrap();
    let labels = c.get_store(StoreId(4)).unwrap().meta.labels;
    assert_eq!(labels, with(&[("host", "h4b"), ("zone", "z1")]).labels);
    // An empty value removes a key.
    c.set_store_labels(StoreId(4), [("zone".to_owned(), String::new())].into()).unwrap();
    assert_eq!(c.get_store(StoreId(4)).unwrap().meta.labels, with(&[("host", "h4b")]).labels);
}

#[test]
fn a_lone_region_is_replicated_step_by_step() {
    let c = lone_region(3);
    let leader = voter(3, 1);
    let mut region = first_region();

    // PD asks for a learner on another store and repeats itself until done.
    let order = c.region_heartbeat(heartbeat(&region, leader)).unwrap().expect("an order");
    let Step::AddLearner(learner) = order.step else { panic!("expected AddLearner, got {order:?}") };
    assert_ne!(learner.store_id, StoreId(1));
    assert_eq!(order.leader, leader);
    assert_eq!(c.region_heartbeat(heartbeat(&region, leader)).unwrap().unwrap().step, order.step);

    // The node added it; while it catches up PD waits, then promotes it.
    region.peers.push(learner);
    region.epoch.conf_ver += 1;
    let mut catching_up = heartbeat(&region, leader);
    catching_up.runtime.pending_peers = vec![learner];
    assert_eq!(c.region_heartbeat(catching_up).unwrap(), None);
    let order = c.region_heartbeat(heartbeat(&region, leader)).unwrap().unwrap();
    assert_eq!(order.step, Step::PromoteLearner(Peer { role: PeerRole::Voter, ..learner }));
    assert_eq!(order.epoch, region.epoch);

    // Promoted: the next operator adds the third replica on the last store.
    region.peers[1].role = PeerRole::Voter;
    region.epoch.conf_ver += 1;
    let order = c.region_heartbeat(heartbeat(&region, leader)).unwrap().unwrap();
    let Step::AddLearner(third) = order.step else { panic!("expected AddLearner, got {order:?}") };
    assert!(![StoreId(1), learner.store_id].contains(&third.store_id));
    c.read(|v| assert_eq!(v.operators.len(), 1));
}

#[test]
fn an_operator_that_sends_a_snapshot_gets_time_by_region_size() {
    let c = lone_region(3);
    // A lone 512 MiB replica: PD adds a learner, which needs a snapshot.
    let mut hb = heartbeat(&first_region(), voter(3, 1));
    hb.runtime.approximate_size = 512 << 20;
    let order = c.region_heartbeat(hb).unwrap().expect("an order");
    assert!(matches!(order.step, Step::AddLearner(_)), "{order:?}");
    let timeout = c.read(|v| v.operators.get(first_region().id).map(|op| op.timeout));
    assert_eq!(timeout, Some(std::time::Duration::from_secs(60 + 512)));
}

#[test]
fn heartbeats_update_the_map_and_stale_ones_are_ignored() {
    let c = open_mem(Config {
        replication: crate::config::ReplicationConfig { max_replicas: 1, ..Default::default() },
        ..Config::default()
    });
    c.bootstrap(store(1), first_region()).unwrap();
    let leader = voter(3, 1);
    assert_eq!(
        c.region_heartbeat(heartbeat(&first_region(), leader)).unwrap(),
        None,
        "one replica is enough"
    );
    // Split as the node splits: region 2 keeps [-inf, m), new region 10
    // takes [m, +inf).
    let ids = c.ask_batch_split(&first_region(), 1).unwrap();
    assert_eq!(ids[0].peer_ids.len(), 1);
    let new_id = ids[0].region_id;
    let left =
        Region { end_key: b"m".to_vec(), epoch: RegionEpoch { conf_ver: 1, version: 2 }, ..first_region() };
    let right = Region {
        id: new_id,
        start_key: b"m".to_vec(),
        end_key: vec![],
        peers: vec![voter(ids[0].peer_ids[0].0, 1)],
        ..left.clone()
    };
    c.report_batch_split(&[left.clone(), right.clone()]).unwrap();
    let found = c.get_region(b"x").unwrap().unwrap();
    assert_eq!(found.region.id, new_id);
    assert_eq!(
        found.leader().map(|l| l.store_id),
        Some(StoreId(1)),
        "leader assumed on the split leader's store"
    );
    assert_eq!(c.get_prev_region(b"x").unwrap().unwrap().region.id, first_region().id);

    // A heartbeat from before the split changes nothing.
    assert_eq!(c.region_heartbeat(heartbeat(&first_region(), leader)).unwrap(), None);
    assert_eq!(c.get_region(b"a").unwrap().unwrap().region, left);
    assert_eq!(c.scan_regions(b"", b"", 0).unwrap().len(), 2);
}

/// A cluster bootstrapped with stores 1..=n, all heartbeating, and region 2
/// with its one replica on store 1.
fn lone_region(n: u64) -> Cluster {
    let c = open_mem(Config::default());
    c.bootstrap(store(1), first_region()).unwrap();
    for id in 1..=n {
        c.put_store(store(id)).unwrap();
        c.store_heartbeat(StoreId(id), StoreStats::default()).unwrap();
    }
    c
}

/// A cluster bootstrapped with stores 1..=n, all heartbeating, and region 2
/// on stores 1..=3 led from store 1.
fn three_replicas(n: u64) -> (Cluster, Region) {
    let c = lone_region(n);
    let region = Region {
        epoch: RegionEpoch { conf_ver: 3, version: 1 },
        peers: vec![voter(3, 1), voter(4, 2), voter(5, 3)],
        ..first_region()
    };
    c.region_heartbeat(heartbeat(&region, voter(3, 1))).unwrap();
    (c, region)
}

#[test]
fn a_batch_split_reported_in_any_order_tiles_the_key_space() {
    let (c, parent) = three_replicas(3);
    // Region 2 splits at "g" and "p" as the node splits: the parent keeps
    // the left end, two new regions take the rest; the report lists the
    // right end first.
    let ids = c.ask_batch_split(&parent, 2).unwrap();
    let child = |i: usize, start: &str, end: &str| Region {
        id: ids[i].region_id,
        start_key: start.as_bytes().to_vec(),
        end_key: end.as_bytes().to_vec(),
        epoch: RegionEpoch { conf_ver: 3, version: 3 },
        peers: ids[i].peer_ids.iter().zip(1..).map(|(p, s)| voter(p.0, s)).collect(),
    };
    let left = Region { end_key: b"g".to_vec(), epoch: RegionEpoch { conf_ver: 3, version: 3 }, ..parent };
    c.report_batch_split(&[child(1, "p", ""), child(0, "g", "p"), left]).unwrap();

    let regions = c.scan_regions(b"", b"", 0).unwrap();
    let bounds: Vec<(Vec<u8>, Vec<u8>)> =
        regions.iter().map(|r| (r.region.start_key.clone(), r.region.end_key.clone())).collect();
    let b = |s: &str| s.as_bytes().to_vec();
    assert_eq!(bounds, vec![(b(""), b("g")), (b("g"), b("p")), (b("p"), b(""))]);
    // Every new region is assumed led from the split leader's store until it reports.
    assert!(regions.iter().all(|r| r.leader().map(|l| l.store_id) == Some(StoreId(1))));
}

#[test]
fn a_deposed_leader_cannot_take_leadership_back_in_pd() {
    let (c, region) = three_replicas(3);
    let with_term = |leader, term| {
        let mut hb = heartbeat(&region, leader);
        hb.runtime.term = term;
        hb
    };
    c.region_heartbeat(with_term(voter(4, 2), 7)).unwrap();
    // The old leader's report from term 6 arrives late.
    c.region_heartbeat(with_term(voter(3, 1), 6)).unwrap();
    let leader = c.get_region_by_id(region.id).unwrap().unwrap().leader();
    assert_eq!(leader, Some(voter(4, 2)));

    // Its late report of a newer epoch (a change committed in its term,
    // not yet applied by the new leader) updates the map, not the leader.
    let newer = Region { epoch: RegionEpoch { conf_ver: 4, version: 1 }, ..region.clone() };
    let mut late = heartbeat(&newer, voter(3, 1));
    late.runtime.term = 6;
    assert_eq!(c.region_heartbeat(late).unwrap(), None);
    let info = c.get_region_by_id(region.id).unwrap().unwrap();
    assert_eq!((info.region.epoch.conf_ver, info.leader(), info.runtime.term), (4, Some(voter(4, 2)), 7));
}

#[test]
fn a_split_asked_for_replaces_a_schedulers_operator() {
    let (c, region) = three_replicas(4);
    // max-replicas 2: the replica checker starts removing a replica.
    c.update_config(&serde_json::json!({"max-replicas": 2})).unwrap();
    let order = c.region_heartbeat(heartbeat(&region, voter(3, 1))).unwrap().expect("a removal");
    assert!(matches!(order.step, Step::RemovePeer(_)), "{order:?}");
    // A split asked for through the API takes its place.
    let (orders, _) = c.split_at_keys(&[b"m".to_vec()]).unwrap();
    assert!(matches!(&orders[..], [o] if matches!(o.step, Step::SplitRegion(_))), "{orders:?}");
}

#[test]
fn a_new_leader_that_has_not_measured_its_region_keeps_the_known_size() {
    let (c, region) = three_replicas(3);
    let mut sized = heartbeat(&region, voter(3, 1));
    (sized.runtime.approximate_size, sized.runtime.approximate_keys) = (96 << 20, 1000);
    c.region_heartbeat(sized).unwrap();
    // Leadership moved; the new leader's first report carries no size yet.
    c.region_heartbeat(heartbeat(&region, voter(4, 2))).unwrap();
    let info = c.get_region_by_id(region.id).unwrap().unwrap();
    assert_eq!(info.leader(), Some(voter(4, 2)));
    assert_eq!((info.runtime.approximate_size, info.runtime.approximate_keys), (96 << 20, 1000));
}

#[test]
fn config_persisted_at_first_start_and_changed_at_run_time_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = |config: Config| {
        let engine = Arc::new(RocksEngine::open(&dir.path().join("meta")).unwrap());
        Cluster::open(config.clone(), member(&config), engine).unwrap()
    };
    let file = Config::for_tests(dir.path());
    {
        let c = open(file.clone());
        let body =
            serde_json::json!({"schedule": {"max-store-down-time": "5s"}, "leader-schedule-limit": "8"});
        let config = c.update_config(&body).unwrap();
        assert_eq!(config.schedule.max_store_down_time.0, std::time::Duration::from_secs(5));
        // A bad value changes nothing.
        assert!(c.update_config(&serde_json::json!({"max-replicas": 0})).is_err());
        assert_eq!(c.config().replication.max_replicas, 3);
    }
    // Restarted with a file that sets other values (or another member
    // taking over, whose file differs): the schedule and replication
    // config come from the metadata, as persisted at the first start and
    // changed at run time since, never from this member's file.
    let mut edited = file.clone();
    edited.schedule.max_store_down_time = mnemo_raft_driver::duration::ReadableDuration::minutes(10);
    edited.schedule.region_schedule_limit = file.schedule.region_schedule_limit + 7;
    edited.replication.max_replicas = 5;
    let c = open(edited);
    let config = c.config();
    assert_eq!(config.schedule.max_store_down_time.0, std::time::Duration::from_secs(5));
    assert_eq!(config.schedule.leader_schedule_limit, 8);
    assert_eq!(config.schedule.region_schedule_limit, file.schedule.region_schedule_limit);
    assert_eq!(config.replication.max_replicas, 3);
}

#[test]
fn schedulers_added_or_removed_at_run_time_survive_a_restart() {
    use crate::schedule::Scheduler::{BalanceLeader, BalanceRegion, ShuffleLeader};
    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_tests(dir.path());
    let open = || {
        let engine = Arc::new(RocksEngine::open(&dir.path().join("meta")).unwrap());
        Cluster::open(config.clone(), member(&config), engine).unwrap()
    };
    {
        let c = open();
        // The balancers run by default; the shuffles are off.
        assert_eq!(c.schedulers(), vec![BalanceLeader, BalanceRegion]);
        assert_eq!(c.add_scheduler("shuffle-leader-scheduler", None).unwrap(), ShuffleLeader);
        // Twice is refused, as in PD; so is a name PD does not know.
        assert!(matches!(c.add_scheduler("shuffle-leader-scheduler", None), Err(Error::SchedulerExists(_))));
        let err = c.add_scheduler("shuffle-leader", None).unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("shuffle-leader-scheduler")), "{err}");
        // The balancers can be removed too; what does not run cannot be.
        c.remove_scheduler("balance-region-scheduler").unwrap();
        assert!(matches!(c.remove_scheduler("shuffle-region-scheduler"), Err(Error::SchedulerNotFound(_))));
        assert!(matches!(c.remove_scheduler("nonsense"), Err(Error::SchedulerNotFound(_))));
        assert_eq!(c.schedulers(), vec![BalanceLeader, ShuffleLeader]);
    }
    // After a restart the same set runs.
    assert_eq!(open().schedulers(), vec![BalanceLeader, ShuffleLeader]);
}

#[test]
fn an_offline_store_becomes_tombstone_only_once_it_reports_no_region_itself() {
    let (c, _) = three_replicas(4);
    // PD's map shows nothing on store 4, but the store says it holds two
    // region peers (a split whose report was lost): it stays Offline.
    let holding = StoreStats { region_count: 2, ..Default::default() };
    c.store_heartbeat(StoreId(4), holding).unwrap();
    c.set_store_state(StoreId(4), StoreState::Offline).unwrap();
    c.patrol().unwrap();
    assert_eq!(c.get_store(StoreId(4)).unwrap().meta.state, StoreState::Offline);
    // Its own report of zero regions buries it.
    c.store_heartbeat(StoreId(4), StoreStats::default()).unwrap();
    assert_eq!(c.get_store(StoreId(4)).unwrap().meta.state, StoreState::Tombstone);
    assert_eq!(c.get_store(StoreId(3)).unwrap().meta.state, StoreState::Up);
}

#[test]
fn a_store_goes_offline_only_while_max_replicas_others_are_up() {
    // Three stores, three replicas: the region's replicas would have
    // nowhere to go.
    let (c, _) = three_replicas(3);
    let err = c.set_store_state(StoreId(3), StoreState::Offline).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("max-replicas")), "{err}");
    assert_eq!(c.get_store(StoreId(3)).unwrap().meta.state, StoreState::Up);
    // A fourth store: now it can.
    c.put_store(store(4)).unwrap();
    c.store_heartbeat(StoreId(4), StoreStats::default()).unwrap();
    c.set_store_state(StoreId(3), StoreState::Offline).unwrap();
}

#[test]
fn operators_asked_through_the_api_are_checked_then_handed_out() {
    use crate::schedule::{AdminRequest, SplitPolicy};
    let (c, region) = three_replicas(4);
    let id = region.id;
    // Nonsense is refused with the reason.
    let err = c.add_operator(id, &AdminRequest::AddPeer { store: StoreId(2) }).unwrap_err();
    assert!(err.to_string().contains("already has a peer on store 2"), "{err}");
    let err = c.add_operator(id, &AdminRequest::TransferLeader { to_store: StoreId(4) }).unwrap_err();
    assert!(err.to_string().contains("no peer on store 4"), "{err}");
    let outside = AdminRequest::Split(SplitPolicy::UseKeys(vec![]));
    assert!(c.add_operator(RegionId(99), &outside).is_err());

    // A leader transfer is pushed at once and shown in the operator list.
    let order = c.add_operator(id, &AdminRequest::TransferLeader { to_store: StoreId(3) }).unwrap().unwrap();
    assert_eq!(order.step, Step::TransferLeader { from: voter(3, 1), to: voter(5, 3) });
    c.read(|v| assert_eq!(v.operators.get(id).map(|op| op.desc), Some("transfer-leader")));
    // Only one admin operator per region at a time; cancelling frees it.
    assert!(c.add_operator(id, &AdminRequest::RemovePeer { store: StoreId(2) }).is_err());
    assert!(c.remove_operator(id));

    // Split keys go to the leader as given, sorted.
    let (orders, regions) = c.split_at_keys(&[b"q".to_vec(), b"b".to_vec()]).unwrap();
    assert_eq!(regions, vec![id]);
    assert_eq!(orders[0].step, Step::SplitRegion(SplitPolicy::UseKeys(vec![b"b".to_vec(), b"q".to_vec()])));
}

#[test]
fn a_split_over_several_regions_goes_ahead_where_it_can() {
    use crate::schedule::{AdminRequest, SplitPolicy};
    let (c, parent) = three_replicas(3);
    let ids = c.ask_batch_split(&parent, 1).unwrap();
    let left = Region { end_key: b"m".to_vec(), epoch: RegionEpoch { conf_ver: 3, version: 2 }, ..parent };
    let right = Region {
        id: ids[0].region_id,
        start_key: b"m".to_vec(),
        end_key: vec![],
        peers: ids[0].peer_ids.iter().zip(1..).map(|(p, s)| voter(p.0, s)).collect(),
        ..left.clone()
    };
    c.report_batch_split(&[left.clone(), right.clone()]).unwrap();
    // The left region is busy with a manual operator; the right one splits.
    let split = AdminRequest::Split(SplitPolicy::UseKeys(vec![b"b".to_vec()]));
    assert!(c.add_operator(left.id, &split).unwrap().is_some());
    let (orders, regions) = c.split_at_keys(&[b"c".to_vec(), b"x".to_vec()]).unwrap();
    assert_eq!(regions, vec![right.id]);
    assert_eq!(orders.iter().map(|o| o.region_id).collect::<Vec<_>>(), vec![right.id]);
    // Where no region can, it is an error.
    assert!(c.split_at_keys(&[b"d".to_vec()]).is_err());
}

#[test]
fn an_admin_removal_that_would_lose_the_quorum_is_refused() {
    use crate::region_map::DownPeer;
    use crate::schedule::AdminRequest;
    let (c, region) = three_replicas(4);
    // The leader reports the voter on store 3 down for an hour.
    let mut hb = heartbeat(&region, voter(3, 1));
    hb.runtime.down_peers = vec![DownPeer { peer: voter(5, 3), down_seconds: 3600 }];
    c.region_heartbeat(hb).unwrap();
    // Removing store 2's voter would leave {1, 3 (down)}: one healthy of two.
    let err = c.add_operator(region.id, &AdminRequest::RemovePeer { store: StoreId(2) }).unwrap_err();
    assert!(err.to_string().contains("no quorum"), "{err}");
    // Removing the down one leaves two healthy voters of two.
    let order = c.add_operator(region.id, &AdminRequest::RemovePeer { store: StoreId(3) }).unwrap();
    assert_eq!(order.map(|o| o.step), Some(Step::RemovePeer(voter(5, 3))));

    // Long before a peer is reported down, a store that went silent cannot
    // vote: here store 3 never heartbeats at all.
    let c = open_mem(Config::default());
    c.bootstrap(store(1), first_region()).unwrap();
    for id in 1..=4 {
        c.put_store(store(id)).unwrap();
        if id != 3 {
            c.store_heartbeat(StoreId(id), StoreStats::default()).unwrap();
        }
    }
    c.region_heartbeat(heartbeat(&region, voter(3, 1))).unwrap();
    let err = c.add_operator(region.id, &AdminRequest::RemovePeer { store: StoreId(2) }).unwrap_err();
    assert!(err.to_string().contains("no quorum"), "{err}");
}

#[test]
fn listing_regions_page_by_page_sees_each_once_in_key_order() {
    let c = open_mem(Config::default());
    c.bootstrap(store(1), first_region()).unwrap();
    // Ten regions with boundaries k1..k9 (version 2 replaces the first).
    let bounds: Vec<Vec<u8>> = (1..10).map(|i| format!("k{i}").into_bytes()).collect();
    for i in 0..10u64 {
        let start = if i == 0 { Vec::new() } else { bounds[i as usize - 1].clone() };
        let end = bounds.get(i as usize).cloned().unwrap_or_default();
        let region = Region {
            id: RegionId(10 + i),
            start_key: start,
            end_key: end,
            epoch: RegionEpoch { conf_ver: 1, version: 2 },
            peers: vec![voter(100 + i, 1)],
        };
        c.region_heartbeat(heartbeat(&region, voter(100 + i, 1))).unwrap();
    }
    for page in [1, 3, 10, 11, 1000] {
        let mut seen = Vec::new();
        let mut pages = 0;
        c.for_each_region_page(page, |regions| {
            pages += 1;
            seen.extend(regions.iter().map(|r| r.region.id.0));
        });
        assert_eq!(seen, (10..20).collect::<Vec<_>>(), "page size {page}");
        assert_eq!(pages, 10usize.div_ceil(page), "page size {page}");
    }
}

/// A leadership whose lease the test can end.
struct Lapsing(std::sync::atomic::AtomicBool);

impl Leadership for Lapsing {
    fn status(&self) -> crate::raft::GroupStatus {
        let serving = self.0.load(Ordering::SeqCst);
        crate::raft::GroupStatus {
            term: 1,
            is_leader: true,
            caught_up: true,
            lease_until: serving.then(|| Instant::now() + Duration::from_secs(3600)),
            ..Default::default()
        }
    }
    fn transfer_leader(&self, _: u64) -> Result<()> {
        Ok(())
    }
    fn peer_infos(&self) -> std::collections::BTreeMap<u64, Member> {
        Default::default()
    }
    fn change_member(&self, _: MemberChange) -> Result<()> {
        Ok(())
    }
}

/// A member of a replicated PD serving term 1 through `replicator` and
/// `leadership`, bootstrapped, with stores 1..=3 heartbeating and region 2
/// on store 1 only (one replica short of three).
fn serving_member(
    sm: SharedMeta,
    replicator: Box<dyn Replicator>,
    leadership: Arc<dyn Leadership>,
) -> Cluster {
    let config = Config::default();
    let c = Cluster::with_replicator(config.clone(), member(&config), sm, replicator, leadership);
    c.inner.lock().prepare_check = false;
    c.promote(1).unwrap();
    c.bootstrap(store(1), first_region()).unwrap();
    for id in 1..=3 {
        c.put_store(store(id)).unwrap();
        c.store_heartbeat(StoreId(id), StoreStats::default()).unwrap();
    }
    c
}

#[test]
fn a_member_whose_lease_ran_out_while_it_decided_hands_out_no_steps() {
    let sm: SharedMeta = Arc::new(Mutex::new(StateMachine::open(Arc::new(MemEngine::new())).unwrap()));
    let lease = Arc::new(Lapsing(std::sync::atomic::AtomicBool::new(true)));
    let c = serving_member(sm.clone(), Box::new(LocalReplicator::new(sm)), lease.clone());
    // The lease runs out (another member may be elected by now): the
    // region, one replica short, gets no step from this member, whichever
    // path decides.
    lease.0.store(false, Ordering::SeqCst);
    let hb = heartbeat(&first_region(), voter(3, 1));
    assert!(matches!(c.region_heartbeat(hb.clone()), Err(Error::NotLeader(_))));
    assert!(matches!(c.patrol(), Err(Error::NotLeader(_))));
    let req = crate::schedule::AdminRequest::AddPeer { store: StoreId(2) };
    assert!(matches!(c.add_operator(RegionId(2), &req), Err(Error::NotLeader(_))));
    // Serving again, the replica checker's step goes out.
    lease.0.store(true, Ordering::SeqCst);
    let order = c.region_heartbeat(hb).unwrap().expect("a step for the missing replicas");
    assert_eq!(order.region_id, RegionId(2));
}

/// A replicator whose region writes wait until the test opens the gate
/// (a region record slow to commit: a slow disk, a PD follower away).
#[derive(Clone)]
struct Gated {
    local: LocalReplicator,
    gate: Gate,
}

/// Open?, and how many region writes came to the gate.
type Gate = Arc<(Mutex<(bool, usize)>, parking_lot::Condvar)>;

impl Replicator for Gated {
    fn replicate(&mut self, cmd: Command) -> Result<()> {
        if matches!(cmd, Command::PutRegion { .. }) {
            let (lock, cv) = &*self.gate;
            let mut g = lock.lock();
            g.1 += 1;
            cv.notify_all();
            while !g.0 {
                cv.wait(&mut g);
            }
        }
        self.local.replicate(cmd)
    }
    fn another(&self) -> Box<dyn Replicator> {
        Box::new(self.clone())
    }
}

/// A serving member (see [`serving_member`]) whose region writes pass a
/// gate, open for now.
fn gated_member() -> (Arc<Cluster>, Gate) {
    let sm: SharedMeta = Arc::new(Mutex::new(StateMachine::open(Arc::new(MemEngine::new())).unwrap()));
    let gate = Arc::new((Mutex::new((true, 0)), parking_lot::Condvar::new()));
    let replicator = Gated { local: LocalReplicator::new(sm.clone()), gate: gate.clone() };
    (Arc::new(serving_member(sm, Box::new(replicator), Arc::new(SoleLeader))), gate)
}

#[test]
fn a_region_write_waiting_to_commit_holds_up_no_decision() {
    let (c, gate) = gated_member();
    gate.0.lock().0 = false;
    // A heartbeat with news (the region grew a peer) waits for its record.
    let changed = Region {
        epoch: RegionEpoch { conf_ver: 2, version: 1 },
        peers: vec![voter(3, 1), voter(4, 2)],
        ..first_region()
    };
    let writer = {
        let c = c.clone();
        std::thread::spawn(move || c.region_heartbeat(heartbeat(&changed, voter(3, 1))))
    };
    {
        let (lock, cv) = &*gate;
        let mut g = lock.lock();
        while g.1 == 0 {
            cv.wait(&mut g);
        }
    }
    // Meanwhile decisions, other heartbeats and allocations go on.
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = {
        let c = c.clone();
        std::thread::spawn(move || {
            c.patrol().unwrap();
            c.store_heartbeat(StoreId(2), StoreStats::default()).unwrap();
            c.region_heartbeat(heartbeat(&first_region(), voter(3, 1))).unwrap();
            c.alloc_id().unwrap();
            tx.send(()).unwrap();
        })
    };
    let went_on = rx.recv_timeout(Duration::from_secs(20)).is_ok();
    {
        let (lock, cv) = &*gate;
        lock.lock().0 = true;
        cv.notify_all();
    }
    assert!(went_on, "a region write waiting to commit held up patrol, heartbeats and id allocation");
    worker.join().unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(c.get_region_by_id(RegionId(2)).unwrap().unwrap().region.epoch.conf_ver, 2);
}

#[test]
fn a_late_report_of_a_deposed_leader_is_judged_after_its_region_write() {
    let (c, gate) = gated_member();
    let (a, b) = (voter(3, 1), voter(4, 2));
    let two = Region { epoch: RegionEpoch { conf_ver: 2, version: 1 }, peers: vec![a, b], ..first_region() };
    let grown = Region {
        epoch: RegionEpoch { conf_ver: 3, version: 1 },
        peers: vec![a, b, voter(5, 3)],
        ..first_region()
    };
    let with_term = |region: &Region, leader: Peer, term: u64| RegionHeartbeat {
        region: region.clone(),
        runtime: RegionRuntime { leader: Some(leader), term, ..Default::default() },
    };
    c.region_heartbeat(with_term(&two, a, 5)).unwrap();
    // A, leader in term 5, reports the grown region; its record waits to
    // commit...
    let written = {
        let mut g = gate.0.lock();
        g.0 = false;
        g.1
    };
    let late = {
        let c = c.clone();
        std::thread::spawn(move || c.region_heartbeat(with_term(&grown, a, 5)))
    };
    {
        let (lock, cv) = &*gate;
        let mut g = lock.lock();
        while g.1 == written {
            cv.wait(&mut g);
        }
    }
    // ...while B's report of term 6 is handled (B now leads).
    let newer = RegionRuntime { leader: Some(b), term: 6, ..Default::default() };
    c.inner.lock().state().set_region_runtime(RegionId(2), newer);
    {
        let (lock, cv) = &*gate;
        lock.lock().0 = true;
        cv.notify_all();
    }
    late.join().unwrap().unwrap();
    // The record is A's (committed metadata), the leadership stays B's.
    let info = c.get_region_by_id(RegionId(2)).unwrap().unwrap();
    assert_eq!(info.region.epoch.conf_ver, 3);
    assert_eq!((info.runtime.leader, info.runtime.term), (Some(b), 6));
}

#[test]
fn the_prepare_check_counts_regions_heard_from_not_heartbeats() {
    // Region 2 split into ten: [,b) [b,c) ... [i,).
    let (c, parent) = three_replicas(3);
    let ids = c.ask_batch_split(&parent, 9).unwrap();
    let bound = |i: usize| if i == 0 || i == 10 { vec![] } else { vec![b'a' + i as u8] };
    let regions: Vec<Region> = (0..10)
        .map(|i| {
            let (id, peers) = match i {
                0 => (parent.id, parent.peers.clone()),
                _ => (
                    ids[i - 1].region_id,
                    ids[i - 1].peer_ids.iter().zip(1..).map(|(p, s)| voter(p.0, s)).collect(),
                ),
            };
            Region {
                id,
                start_key: bound(i),
                end_key: bound(i + 1),
                epoch: RegionEpoch { conf_ver: 3, version: 10 },
                peers,
            }
        })
        .collect();
    c.report_batch_split(&regions).unwrap();
    // A new leader starts serving: scheduling waits for 90% of the regions.
    {
        let mut inner = c.inner.lock();
        inner.prepare_check = true;
        inner.restart_prepare_check(SystemTime::now());
    }
    let prepared = || c.inner.lock().prepared(SystemTime::now());
    let beat = |r: &Region| {
        c.region_heartbeat(heartbeat(r, r.peers[0])).unwrap();
    };
    for _ in 0..20 {
        beat(&regions[0]);
    }
    assert!(!prepared(), "one region heard twenty times is one region");
    regions[1..8].iter().for_each(beat);
    assert!(!prepared(), "8 of 10 regions heard");
    beat(&regions[8]);
    assert!(prepared(), "9 of 10 regions heard");
    // Passed once, it stays passed while this leader serves.
    c.inner.lock().heard_since_alive = 0;
    assert!(prepared());
}

#[test]
fn evict_leader_moves_the_stores_leaders_away_and_refuses_a_transfer_back() {
    let (c, region) = three_replicas(3);
    c.add_scheduler("evict-leader-scheduler", Some(1)).unwrap();
    assert!(c.schedulers().contains(&crate::schedule::Scheduler::EvictLeader(StoreId(1))));
    let orders = c.patrol().unwrap();
    let order =
        orders.iter().find(|o| o.region_id == region.id).expect("a step for the region led from store 1");
    assert!(matches!(order.step, Step::TransferLeader { to, .. } if to.store_id != StoreId(1)), "{order:?}");
    // By hand, onto the draining store: refused with the reason.
    c.remove_operator(region.id);
    let back = crate::schedule::AdminRequest::TransferLeader { to_store: StoreId(1) };
    let err = c.add_operator(region.id, &back).unwrap_err().to_string();
    assert!(err.contains("draining its leaders"), "{err}");
    assert!(matches!(c.add_scheduler("evict-leader-scheduler", None), Err(Error::InvalidArgument(_))));
    assert!(matches!(c.add_scheduler("evict-leader-scheduler", Some(99)), Err(Error::StoreNotFound(_))));
    c.remove_scheduler("evict-leader-scheduler-1").unwrap();
    assert!(c.pause_scheduler("evict-leader-scheduler-1", std::time::Duration::from_secs(5)).is_err());
}
