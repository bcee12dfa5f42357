//! Scenario tests of the store loop: one [`Store`] on in-memory engines,
//! driven round by round, with raft messages from other stores written by
//! hand and what it sends captured.

use std::sync::Arc;

use mnemo_proto::raft_serverpb::{
    BatchSplit, Mutation, MutationOp, RaftCommand, RaftRequestHeader, SnapshotData, SnapshotKv, SplitRequest,
};
use mnemo_proto::types::PeerRole;
use parking_lot::Mutex;
use raft::eraftpb::{HardState, Snapshot};
use tokio::sync::oneshot;

use super::*;
use crate::engine::{Engine, MemEngine};
use crate::raftstore::apply::WriteOutcome;
use crate::raftstore::log_gc;
use crate::raftstore::test_engine::{OnWrite, WatchedEngine};

/// Keeps what the store sends.
#[derive(Default)]
struct Captured(Mutex<Vec<(StoreId, RaftMessage)>>);

impl Transport for Captured {
    fn send(&self, store: StoreId, msgs: Vec<RaftMessage>) {
        self.0.lock().extend(msgs.into_iter().map(|m| (store, m)));
    }
}

/// Store 1 on in-memory engines.
struct TestStore {
    store: Store,
    tx: StoreRouter,
    kv: Arc<MemEngine>,
    raft: Arc<MemEngine>,
    pd: tokio::sync::mpsc::UnboundedReceiver<PdTask>,
    /// What the store sent.
    sent: Arc<Captured>,
}

const ME: StoreId = StoreId(1);

impl TestStore {
    /// Loads store 1 from `kv`/`raft` (fresh engines: no regions).
    fn open(kv: Arc<MemEngine>, raft: Arc<MemEngine>) -> TestStore {
        TestStore::open_as(kv, raft.clone(), raft, Arc::default())
    }

    /// Loads store 1 with `raft_engine` as its raft engine (`raft`, or a
    /// wrapper of it), sending into `sent`.
    fn open_as(
        kv: Arc<MemEngine>,
        raft: Arc<MemEngine>,
        raft_engine: EngineRef,
        sent: Arc<Captured>,
    ) -> TestStore {
        TestStore::open_with(kv, raft, raft_engine, sent, StoreConfig::driven_by_hand())
    }

    /// [`TestStore::open_as`] with settings `cfg`.
    fn open_with(
        kv: Arc<MemEngine>,
        raft: Arc<MemEngine>,
        raft_engine: EngineRef,
        sent: Arc<Captured>,
        cfg: StoreConfig,
    ) -> TestStore {
        let (tx, rx) = super::super::router::channel(1024);
        let (pd_tx, pd) = tokio::sync::mpsc::unbounded_channel();
        let engines = Engines { kv: kv.clone(), raft: raft_engine };
        let store = Store::load(
            ME,
            cfg,
            engines,
            (tx.clone(), rx),
            sent.clone(),
            pd_tx,
            Arc::new(Metrics::default()),
        )
        .unwrap();
        TestStore { store, tx, kv, raft, pd, sent }
    }

    fn new() -> TestStore {
        TestStore::open(Arc::new(MemEngine::new()), Arc::new(MemEngine::new()))
    }

    /// A store holding the only voter (peer 11) of region 1 = everything, elected.
    fn with_leader() -> TestStore {
        TestStore::leading(vec![PeerMeta { id: PeerId(11), store_id: ME, role: PeerRole::Voter }])
    }

    /// A store whose peer 11 (the only voter, listed first) leads region 1
    /// = everything, of `peers`, elected.
    fn leading(peers: Vec<PeerMeta>) -> TestStore {
        TestStore::leading_watched(peers, None, Arc::default())
    }

    /// [`TestStore::leading`], with `watch` seeing every raft engine write
    /// and the store sending into `sent`.
    fn leading_watched(peers: Vec<PeerMeta>, watch: Option<OnWrite>, sent: Arc<Captured>) -> TestStore {
        TestStore::leading_with(peers, watch, sent, StoreConfig::driven_by_hand())
    }

    /// The only voter of region 1, elected, applying with `pool` workers
    /// (0: on the store loop, as [`TestStore::with_leader`]).
    fn leading_with_apply_pool(pool: usize) -> TestStore {
        let me = PeerMeta { id: PeerId(11), store_id: ME, role: PeerRole::Voter };
        let cfg = StoreConfig { apply_pool_size: pool, ..StoreConfig::driven_by_hand() };
        TestStore::leading_with(vec![me], None, Arc::default(), cfg)
    }

    fn leading_with(
        peers: Vec<PeerMeta>,
        watch: Option<OnWrite>,
        sent: Arc<Captured>,
        cfg: StoreConfig,
    ) -> TestStore {
        let (kv, raft) = (Arc::new(MemEngine::new()), Arc::new(MemEngine::new()));
        let region = Region {
            id: RegionId(1),
            epoch: RegionEpoch { conf_ver: 1, version: 1 },
            peers,
            ..Default::default()
        };
        let (mut kv_wb, mut raft_wb) = (WriteBatch::new(), WriteBatch::new());
        storage::write_initial_state(&region, &mut kv_wb, &mut raft_wb);
        kv.write(&kv_wb, true).unwrap();
        raft.write(&raft_wb, true).unwrap();
        let raft_engine: EngineRef = match watch {
            None => raft.clone(),
            Some(w) => Arc::new(WatchedEngine::new(raft.clone(), w)),
        };
        let mut s = TestStore::open_with(kv, raft, raft_engine, sent, cfg);
        s.store.peers.get_mut(&RegionId(1)).unwrap().raw.campaign().unwrap();
        s.settle();
        assert!(s.store.peers[&RegionId(1)].is_leader());
        s
    }

    /// Runs rounds until no peer has anything left to do (nor anything in
    /// the apply pool: a round waits up to a second for its reports).
    fn settle(&mut self) {
        for _ in 0..100 {
            let applying = self.store.peers.values().any(|p| p.applying() > 0);
            let wait = if applying { Duration::from_secs(1) } else { Duration::ZERO };
            assert!(self.store.round(wait).unwrap());
            let busy = self.store.peers.values_mut().any(|p| p.raw.has_ready() || p.applying() > 0);
            if self.tx.pending() == 0 && !busy {
                return;
            }
        }
        panic!("the store does not settle");
    }

    fn send(&self, msg: StoreMsg) {
        self.tx.send(msg).unwrap();
    }

    fn region(&self, id: u64) -> Region {
        self.store.peers[&RegionId(id)].region().clone()
    }

    /// Splits region 1 at `key` into a new region 2 (peer 21) and waits for it.
    fn split_at(&mut self, key: &[u8]) {
        let split = BatchSplit {
            requests: vec![SplitRequest {
                split_key: key.to_vec(),
                new_region_id: 2,
                new_peer_ids: vec![21],
            }],
        };
        let epoch = self.region(1).epoch;
        self.send(StoreMsg::ProposeSplit { region_id: RegionId(1), epoch, split });
        self.settle();
        assert!(self.store.peers.contains_key(&RegionId(2)), "split applied and its peer created");
    }

    fn hard_state(&self, region: u64) -> HardState {
        let raw = self.raft.get(Cf::Default, &keys::raft_state_key(RegionId(region))).unwrap().unwrap();
        HardState::parse_from_bytes(&raw).unwrap()
    }
}

/// A raft message from peer `from` on store 2 to peer `to` here, for a
/// region with range `[start, end)` at `version`.
fn message(region: u64, from: u64, to: u64, version: u64, range: (&[u8], &[u8]), msg: RaftMsg) -> StoreMsg {
    StoreMsg::Raft(RaftMessage {
        region_id: region,
        from_peer: Some(PeerMeta { id: PeerId(from), store_id: StoreId(2), role: PeerRole::Voter }.into()),
        to_peer: Some(PeerMeta { id: PeerId(to), store_id: ME, role: PeerRole::Voter }.into()),
        message: msg.write_to_bytes().unwrap(),
        region_epoch: Some(RegionEpoch { conf_ver: 1, version }.into()),
        start_key: range.0.to_vec(),
        end_key: range.1.to_vec(),
        ..Default::default()
    })
}

fn heartbeat(from: u64, to: u64) -> RaftMsg {
    let mut m = RaftMsg::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    (m.from, m.to, m.term) = (from, to, 6);
    m
}

/// A snapshot of region `region` = `[start, end)` at `version`, led by peer
/// `region*10 + 2` on store 2, for our peer `region*10 + 1`, holding `kvs`.
fn snapshot(region: u64, version: u64, range: (&[u8], &[u8]), kvs: &[(&[u8], &[u8])]) -> StoreMsg {
    let (ours, leader) = (region * 10 + 1, region * 10 + 2);
    let r = Region {
        id: RegionId(region),
        start_key: range.0.to_vec(),
        end_key: range.1.to_vec(),
        epoch: RegionEpoch { conf_ver: 1, version },
        peers: vec![
            PeerMeta { id: PeerId(ours), store_id: ME, role: PeerRole::Voter },
            PeerMeta { id: PeerId(leader), store_id: StoreId(2), role: PeerRole::Voter },
        ],
    };
    let data = SnapshotData {
        region: Some((&r).into()),
        kvs: kvs
            .iter()
            .map(|(k, v)| SnapshotKv { key: k.to_vec(), value: keys::encode_value(v, 0) })
            .collect(),
    };
    let mut snap = Snapshot { data: data.encode_to_vec().into(), ..Default::default() };
    snap.mut_metadata().index = 10;
    snap.mut_metadata().term = 6;
    snap.mut_metadata().set_conf_state(storage::conf_state_of(&r));
    let mut m = RaftMsg::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    (m.from, m.to, m.term) = (leader, ours, 6);
    m.set_snapshot(snap);
    message(region, leader, ours, version, range, m)
}

#[test]
fn two_overlapping_snapshots_in_one_round_never_both_land() {
    let mut s = TestStore::new();
    // In one batch: a stale snapshot of the parent region 2 = [a, z) taken
    // before it split, and one of its child region 3 = [m, z), newer. Applied
    // in either order, one would overwrite the other's data.
    s.send(snapshot(2, 1, (b"a", b"z"), &[(b"b", b"parent"), (b"n", b"old")]));
    s.send(snapshot(3, 2, (b"m", b"z"), &[(b"n", b"new")]));
    s.settle();
    let initialized: Vec<Region> = s
        .store
        .peers
        .values()
        .filter(|p| p.raw.store().is_initialized())
        .map(|p| p.region().clone())
        .collect();
    assert_eq!(initialized.len(), 1, "the second snapshot overlaps the first, pending one: dropped");
    let kept = &initialized[0];
    let n = crate::raftstore::apply::read_live(s.kv.as_ref(), b"n", 0).unwrap().unwrap();
    let expect: &[u8] = if kept.id == RegionId(2) { b"old" } else { b"new" };
    assert_eq!(n, expect, "the data is exactly the kept snapshot's");
}

#[test]
fn a_message_for_a_newer_peer_replaces_a_leftover_empty_peer() {
    let mut s = TestStore::new();
    // Region 5's leader (52, store 2) talks to our peer 51: it is created empty.
    s.send(message(5, 52, 51, 1, (b"", b""), heartbeat(52, 51)));
    s.settle();
    assert_eq!(s.store.peers[&RegionId(5)].meta.id, PeerId(51));
    // 51 was removed before it got a snapshot, and the region re-adds this
    // store as peer 55: the leftover must go, or 55 never exists here.
    s.send(message(5, 52, 55, 1, (b"", b""), heartbeat(52, 55)));
    s.settle();
    assert_eq!(s.store.peers[&RegionId(5)].meta.id, PeerId(55));
    // Messages to the old peer no longer create anything.
    s.send(message(5, 52, 51, 1, (b"", b""), heartbeat(52, 51)));
    s.settle();
    assert_eq!(s.store.peers[&RegionId(5)].meta.id, PeerId(55));
}

#[test]
fn a_peer_whose_store_stays_silent_is_reported_down_to_pd() {
    // Region 1: our voter 11 leads; learner 12 lives on store 2, which never
    // says a word (cut off from us, while perhaps still heartbeating PD).
    let learner = PeerMeta { id: PeerId(12), store_id: StoreId(2), role: PeerRole::Learner };
    let mut s =
        TestStore::leading(vec![PeerMeta { id: PeerId(11), store_id: ME, role: PeerRole::Voter }, learner]);
    let reports = |s: &mut TestStore, at: Instant| {
        s.store.report_to_pd(at, true);
        let mut out = Vec::new();
        while let Ok(PdTask::RegionHeartbeat(r)) = s.pd.try_recv() {
            out.push(r.down_peers);
        }
        out
    };
    let started = s.store.started;
    let at = |secs| started + Duration::from_secs(secs);
    // The leader counts the learner from its first report on (+60 s here).
    s.store.peers.get_mut(&RegionId(1)).unwrap().counted_since.clear();
    let early = reports(&mut s, at(60));
    assert!(early.iter().all(Vec::is_empty), "{early:?}");
    // Store 2 has been silent since the start, but counted only for 580 s:
    // a peer just added (or found on taking over) is not down at once.
    s.store.peers.get_mut(&RegionId(1)).unwrap().heartbeat_due = true;
    assert_eq!(reports(&mut s, at(640)), vec![vec![]]);
    // Past max-peer-down-duration of counted silence: reported down, with
    // the seconds of silence, at once.
    assert_eq!(reports(&mut s, at(661)), vec![vec![(learner, 601)]]);
    // Heard from again: no longer down.
    s.store.last_heard.insert(StoreId(2), at(665));
    assert_eq!(reports(&mut s, at(670)), vec![vec![]]);
}

#[test]
fn the_region_count_reported_to_pd_leaves_out_peers_without_data() {
    // Region 1 is ours; region 5's leader creates an empty peer here that
    // never gets its snapshot (a learner removed before it caught up). PD
    // tombstones a drained store only when this count reaches zero.
    let mut s = TestStore::with_leader();
    s.send(message(5, 52, 51, 1, (b"", b""), heartbeat(52, 51)));
    s.settle();
    assert_eq!(s.store.peers.len(), 2);
    s.store.report_to_pd(Instant::now(), true);
    assert_eq!(s.store.metrics.region_count.get(), 1);
}

#[test]
fn a_power_loss_after_a_split_never_rewrites_the_new_peers_vote() {
    let mut s = TestStore::with_leader();
    s.split_at(b"m");
    // The new region's peer campaigned at once (its parent led here): it
    // voted for itself in a new term, synced to the raft engine.
    s.settle();
    let voted = s.hard_state(2);
    assert!(voted.term > storage::INIT_TERM && voted.vote == 21, "{voted:?}");
    // Power loss: each engine keeps what it synced.
    let (kv, raft) = (Arc::new(s.kv.after_power_loss()), Arc::new(s.raft.after_power_loss()));
    drop(s);
    let mut s = TestStore::open(kv, raft);
    s.settle();
    let after = s.hard_state(2);
    assert!(
        after.term > voted.term || (after.term == voted.term && after.vote == voted.vote),
        "term/vote went backwards: {voted:?} -> {after:?}"
    );
}

/// A raft message of `kind` from peer 52 (store 2, term 6) to our peer 51
/// of region 5 = everything, version 1.
fn from_leader_52(
    kind: MessageType,
    index: u64,
    entries: Vec<raft::eraftpb::Entry>,
    commit: u64,
) -> StoreMsg {
    let mut m = RaftMsg::default();
    m.set_msg_type(kind);
    (m.from, m.to, m.term, m.index, m.log_term, m.commit) = (52, 51, 6, index, 6, commit);
    m.set_entries(entries.into());
    message(5, 52, 51, 1, (b"", b""), m)
}

#[test]
fn learning_only_a_commit_index_costs_no_fsync_and_survives_a_power_loss() {
    // Our follower 51 of region 5 (leader 52 on store 2), installed by a
    // snapshot at index 10.
    let mut s = TestStore::new();
    s.send(snapshot(5, 1, (b"", b""), &[]));
    s.settle();
    // Entry 11, a put of x: appended and synced before it is acknowledged.
    let mut put = raft::eraftpb::Entry::default();
    (put.term, put.index) = (6, 11);
    put.set_data(put_x(5, RegionEpoch { conf_ver: 1, version: 1 }).encode_to_vec().into());
    let fsyncs = s.store.metrics.raft_fsyncs.get();
    s.send(from_leader_52(MessageType::MsgAppend, 10, vec![put], 10));
    s.settle();
    assert_eq!(s.store.metrics.raft_fsyncs.get(), fsyncs + 1, "new entries are synced");
    // The leader's heartbeat says 11 is committed: applied, without an fsync.
    s.send(from_leader_52(MessageType::MsgHeartbeat, 0, vec![], 11));
    s.settle();
    assert_eq!(s.store.metrics.raft_fsyncs.get(), fsyncs + 1, "a commit index alone is not synced");
    assert_eq!(s.store.peers[&RegionId(5)].raw.store().applied_index(), 11);
    // Power loss: the commit index and the apply are gone, the entry is not.
    let (kv, raft) = (Arc::new(s.kv.after_power_loss()), Arc::new(s.raft.after_power_loss()));
    drop(s);
    let mut s = TestStore::open(kv, raft);
    s.settle();
    assert_eq!(s.store.peers[&RegionId(5)].raw.store().last_index_now(), 11, "the synced entry is kept");
    // The leader says it again; the follower applies x from its own log.
    s.send(from_leader_52(MessageType::MsgHeartbeat, 0, vec![], 11));
    s.settle();
    assert_eq!(s.store.peers[&RegionId(5)].raw.store().applied_index(), 11);
    let x = crate::raftstore::apply::read_live(s.kv.as_ref(), b"x", 0).unwrap();
    assert_eq!(x.as_deref(), Some(&b"v"[..]));
}

/// A write of `puts` (or a CAS) for region `region` at `epoch`.
fn write_cmd(
    region: u64,
    epoch: RegionEpoch,
    puts: &[(&[u8], &[u8])],
    cas: Option<(&[u8], &[u8], &[u8])>,
) -> RaftCommand {
    RaftCommand {
        header: Some(RaftRequestHeader {
            region_id: region,
            region_epoch: Some(epoch.into()),
            ..Default::default()
        }),
        mutations: puts
            .iter()
            .map(|(k, v)| Mutation {
                op: MutationOp::Put as i32,
                key: k.to_vec(),
                value: v.to_vec(),
                expire_at_ms: 0,
            })
            .collect(),
        cas: cas.map(|(key, expect, new)| mnemo_proto::raft_serverpb::CompareAndSwap {
            key: key.to_vec(),
            previous_not_exist: false,
            previous_value: expect.to_vec(),
            value: new.to_vec(),
            expire_at_ms: 0,
        }),
        ..Default::default()
    }
}

/// One round: two puts, a CAS that needs the first, then a put over it;
/// every write is answered with its own outcome, in order.
fn writes_around_a_cas(s: &mut TestStore) {
    let epoch = s.region(1).epoch;
    let cmds = [
        write_cmd(1, epoch, &[(b"a", b"1")], None),
        write_cmd(1, epoch, &[(b"b", b"2")], None),
        write_cmd(1, epoch, &[], Some((b"a", b"1", b"3"))),
        write_cmd(1, epoch, &[(b"a", b"4")], None),
    ];
    let answers: Vec<_> = cmds
        .into_iter()
        .map(|cmd| {
            let (cb, rx) = oneshot::channel();
            s.send(StoreMsg::Write { region_id: RegionId(1), cmd, cb: cb.into() });
            rx
        })
        .collect();
    s.settle();
    let outcomes: Vec<WriteOutcome> =
        answers.into_iter().map(|mut rx| rx.try_recv().unwrap().unwrap()).collect();
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::Done,
            WriteOutcome::Done,
            WriteOutcome::Cas { succeed: true, previous: Some(b"1".to_vec()) },
            WriteOutcome::Done,
        ]
    );
}

#[test]
fn plain_writes_of_one_round_share_an_entry_and_keep_their_order_around_a_cas() {
    let mut s = TestStore::with_leader();
    let before = s.store.peers[&RegionId(1)].raw.store().last_index_now();
    writes_around_a_cas(&mut s);
    // Three entries: [put a, put b], the CAS, [put a].
    assert_eq!(s.store.peers[&RegionId(1)].raw.store().last_index_now(), before + 3);
    let read = |k: &[u8]| crate::raftstore::apply::read_live(s.kv.as_ref(), k, 0).unwrap();
    assert_eq!(read(b"a").as_deref(), Some(&b"4"[..]));
    assert_eq!(read(b"b").as_deref(), Some(&b"2"[..]));
}

#[test]
fn a_batch_refused_at_apply_fails_every_write_in_it() {
    batch_refused_at_apply(0);
}

#[test]
fn a_batch_refused_at_apply_fails_every_write_in_it_with_the_apply_pool() {
    batch_refused_at_apply(1);
}

fn batch_refused_at_apply(apply_pool: usize) {
    let mut s = TestStore::leading_with_apply_pool(apply_pool);
    let epoch = s.region(1).epoch;
    // One round: a split at m, then puts above m made at the old epoch.
    // They pass the checks on arrival (the split is not applied yet); in
    // the log after the split, they no longer fit region 1.
    let split = BatchSplit {
        requests: vec![SplitRequest { split_key: b"m".to_vec(), new_region_id: 2, new_peer_ids: vec![21] }],
    };
    s.send(StoreMsg::ProposeSplit { region_id: RegionId(1), epoch, split });
    let answers: Vec<_> = [&b"x"[..], b"y", b"z"]
        .into_iter()
        .map(|k| {
            let (cb, rx) = oneshot::channel();
            s.send(StoreMsg::Write {
                region_id: RegionId(1),
                cmd: write_cmd(1, epoch, &[(k, b"v")], None),
                cb: cb.into(),
            });
            (k, rx)
        })
        .collect();
    s.settle();
    let mut refused = 0;
    for (k, mut rx) in answers {
        let value = crate::raftstore::apply::read_live(s.kv.as_ref(), k, 0).unwrap();
        match rx.try_recv().unwrap() {
            Ok(WriteOutcome::Done) => {
                assert_eq!(value.as_deref(), Some(&b"v"[..]), "{k:?} acknowledged, not written")
            }
            Ok(other) => panic!("unexpected outcome {other:?}"),
            Err(_) => {
                assert_eq!(value, None, "{k:?} refused, yet written");
                refused += 1;
            }
        }
    }
    // The split is proposed before the writes that arrived after it, or
    // after the first of them (if that came first): at least two batched
    // writes landed after the split and were refused.
    assert!(refused >= 2, "{refused} refused");
}

#[test]
fn a_batch_is_not_proposed_once_its_leader_stepped_down() {
    // Repeated: the round handles the write and the new leader's message in
    // either order; the bug needs the write first.
    for _ in 0..16 {
        let peer = |id: u64, store: u64, role| PeerMeta { id: PeerId(id), store_id: StoreId(store), role };
        let mut s = TestStore::leading(vec![peer(11, 1, PeerRole::Voter), peer(12, 2, PeerRole::Learner)]);
        let term = s.store.peers[&RegionId(1)].raw.raft.term;
        s.sent.0.lock().clear();
        // One round: a write, and a heartbeat of peer 12 leading a newer term.
        let (cb, mut rx) = oneshot::channel();
        s.send(StoreMsg::Write { region_id: RegionId(1), cmd: put_x(1, s.region(1).epoch), cb: cb.into() });
        let mut hb = heartbeat(12, 11);
        hb.term = term + 1;
        s.send(message(1, 12, 11, 1, (b"", b""), hb));
        s.settle();
        assert!(!s.store.peers[&RegionId(1)].is_leader());
        assert!(matches!(rx.try_recv().unwrap(), Err(Error::NotLeader { .. })));
        let forwarded = s.sent.0.lock().iter().any(|(_, m)| {
            RaftMsg::parse_from_bytes(&m.message).is_ok_and(|m| m.get_msg_type() == MessageType::MsgPropose)
        });
        assert!(!forwarded, "a write answered NotLeader was forwarded to the new leader");
    }
}

/// A put of key `x` for region `region` made at `epoch`.
fn put_x(region: u64, epoch: RegionEpoch) -> RaftCommand {
    write_cmd(region, epoch, &[(&b"x"[..], &b"v"[..])], None)
}

#[test]
fn epoch_not_match_carries_the_regions_a_split_made() {
    let mut s = TestStore::with_leader();
    let old = s.region(1).epoch;
    s.split_at(b"m");
    // A write for region 1 made before the split: the answer names region
    // 1's new range and the region cut from it.
    let (cb, mut rx) = oneshot::channel();
    s.send(StoreMsg::Write { region_id: RegionId(1), cmd: put_x(1, old), cb: cb.into() });
    s.settle();
    match rx.try_recv().unwrap() {
        Err(Error::EpochNotMatch { current }) => {
            let ranges: Vec<(u64, &[u8], &[u8])> =
                current.iter().map(|r| (r.id.0, r.start_key.as_slice(), r.end_key.as_slice())).collect();
            assert_eq!(ranges, vec![(1, &b""[..], &b"m"[..]), (2, &b"m"[..], &b""[..])]);
        }
        other => panic!("expected EpochNotMatch, got {other:?}"),
    }
    // With the current epoch the write goes through.
    let (cb, mut rx) = oneshot::channel();
    s.send(StoreMsg::Write { region_id: RegionId(2), cmd: put_x(2, s.region(2).epoch), cb: cb.into() });
    s.settle();
    assert!(matches!(rx.try_recv().unwrap(), Ok(WriteOutcome::Done)));
}

/// Puts `k{i}` = `v{i}` for each i of `keys` into region 1 (led here), one
/// round each.
fn put_each(s: &mut TestStore, keys: std::ops::Range<u32>) {
    for i in keys {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        let (cb, mut rx) = oneshot::channel();
        let cmd = write_cmd(1, s.region(1).epoch, &[(k.as_bytes(), v.as_bytes())], None);
        s.send(StoreMsg::Write { region_id: RegionId(1), cmd, cb: cb.into() });
        s.settle();
        assert_eq!(rx.try_recv().unwrap().unwrap(), WriteOutcome::Done);
    }
}

/// Indexes of region 1's entries the raft engine holds.
fn logged_indexes(raft: &MemEngine) -> Vec<u64> {
    let (start, end) = (keys::raft_log_key(RegionId(1), 0), keys::raft_log_key(RegionId(1), u64::MAX));
    let range = ScanRange { start: &start, end: &end, reverse: false };
    crate::engine::scan_collect(raft, Cf::Default, range, 0)
        .unwrap()
        .iter()
        .map(|(k, _)| u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap()))
        .collect()
}

#[test]
fn compacted_entries_go_only_once_the_kv_engine_synced_their_truncation_point() {
    compaction_survives_power_losses(0);
}

/// The same with an apply worker writing the data (unsynced, as inline).
#[test]
fn compacted_entries_go_only_once_the_kv_engine_synced_their_truncation_point_with_the_apply_pool() {
    compaction_survives_power_losses(1);
}

fn compaction_survives_power_losses(apply_pool: usize) {
    let mut s = TestStore::leading_with_apply_pool(apply_pool);
    let (worker, tasks) = LogGcWorker::detached();
    s.store.log_gc = worker;
    s.store.cfg.raft_log_gc_threshold = 1;
    put_each(&mut s, 0..20);
    let applied = s.store.peers[&RegionId(1)].raw.store().applied_index();
    let logged = logged_indexes(&s.raft);
    // The loop moves the truncation point; the entries are still there.
    s.store.compact_logs().unwrap();
    assert_eq!(s.store.peers[&RegionId(1)].raw.store().apply_state.truncated_index, applied);
    assert_eq!(logged_indexes(&s.raft), logged, "nothing deleted before the worker ran");
    let task = tasks.try_recv().expect("the compaction went to the worker");
    // A power loss before the worker ran: the truncation point may be the
    // old one, and every entry after it is there to apply again.
    let early = (Arc::new(s.kv.after_power_loss()), Arc::new(s.raft.after_power_loss()));
    // The worker syncs the kv engine, then deletes the entries.
    log_gc::run(s.kv.as_ref(), s.raft.as_ref(), task).unwrap();
    assert!(logged_indexes(&s.raft).iter().all(|&i| i > applied));
    // A power loss after it: the new truncation point is durable (the
    // deletion, unsynced, may be lost: those entries are never read).
    let late = (Arc::new(s.kv.after_power_loss()), Arc::new(s.raft.after_power_loss()));
    drop(s);
    for ((kv, raft), truncated) in [(early, storage::INIT_INDEX), (late, applied)] {
        let mut s = TestStore::open(kv, raft);
        let (worker, tasks) = LogGcWorker::detached();
        s.store.log_gc = worker;
        s.store.cfg.raft_log_gc_threshold = 1;
        assert_eq!(s.store.peers[&RegionId(1)].raw.store().apply_state.truncated_index, truncated);
        s.store.peers.get_mut(&RegionId(1)).unwrap().raw.campaign().unwrap();
        s.settle();
        put_each(&mut s, 20..22);
        for i in 0..22 {
            let v = crate::raftstore::apply::read_live(s.kv.as_ref(), format!("k{i}").as_bytes(), 0).unwrap();
            assert_eq!(
                v,
                Some(format!("v{i}").into_bytes()),
                "k{i} after a restart truncated at {truncated}"
            );
        }
        // The next compaction deletes from index 0: leftovers go too.
        s.store.compact_logs().unwrap();
        log_gc::run(s.kv.as_ref(), s.raft.as_ref(), tasks.try_recv().unwrap()).unwrap();
        let now_truncated = s.store.peers[&RegionId(1)].raw.store().apply_state.truncated_index;
        assert!(logged_indexes(&s.raft).iter().all(|&i| i > now_truncated));
    }
}

/// Entry indexes of region 1 in the appends `sent` holds for store 2.
fn appended_to_store_2(sent: &Captured) -> Vec<u64> {
    let sent = sent.0.lock();
    let appends = sent.iter().filter(|(to, _)| *to == StoreId(2)).filter_map(|(_, m)| {
        let msg = RaftMsg::parse_from_bytes(&m.message).ok()?;
        (msg.get_msg_type() == MessageType::MsgAppend).then_some(msg)
    });
    appends.flat_map(|m| m.get_entries().iter().map(|e| e.index).collect::<Vec<_>>()).collect()
}

#[test]
fn a_leaders_appends_leave_before_its_own_fsync_unless_they_carry_a_new_term() {
    // Leader 11 here, learner 12 on store 2 (it gets appends, casts no
    // vote). At every synced write of the raft log, note which entries
    // were already on their way to store 2.
    // (entries being fsynced, entries already sent), per synced write.
    type SentAtFsync = Vec<(Vec<u64>, Vec<u64>)>;
    let sent_early: Arc<Mutex<SentAtFsync>> = Arc::default();
    let sent = Arc::new(Captured::default());
    let (watch_sent, record) = (sent.clone(), sent_early.clone());
    let on_write = move |batch: &WriteBatch, sync: bool| {
        let prefix = keys::raft_log_prefix(RegionId(1));
        let persisting: Vec<u64> = batch
            .ops()
            .iter()
            .filter_map(|op| match op {
                crate::engine::WriteOp::Put { key, .. } if sync && key.starts_with(&prefix) => {
                    Some(u64::from_be_bytes(key[prefix.len()..].try_into().ok()?))
                }
                _ => None,
            })
            .collect();
        if !persisting.is_empty() {
            record.lock().push((persisting, appended_to_store_2(&watch_sent)));
        }
    };
    let sent_when_persisted = |index: u64| {
        let rounds = sent_early.lock();
        let (_, sent) = rounds.iter().find(|(persisting, _)| persisting.contains(&index)).expect("fsynced");
        sent.contains(&index)
    };
    let peers = vec![
        PeerMeta { id: PeerId(11), store_id: ME, role: PeerRole::Voter },
        PeerMeta { id: PeerId(12), store_id: StoreId(2), role: PeerRole::Learner },
    ];
    let mut s = TestStore::leading_watched(peers, Some(Box::new(on_write)), sent);
    // 11, the only voter, won its term within one ready: the append of its
    // first entry carries a term not yet on disk, so it waited for the fsync.
    let leader = &s.store.peers[&RegionId(1)];
    let (first, term, epoch) =
        (leader.raw.raft.raft_log.last_index(), leader.raw.raft.term, leader.region().epoch);
    assert!(!sent_when_persisted(first), "an append of a term not yet durable left before the fsync");
    // 12 has everything so far...
    let mut ack = RaftMsg::default();
    ack.set_msg_type(MessageType::MsgAppendResponse);
    (ack.from, ack.to, ack.term, ack.index) = (12, 11, term, first);
    s.send(message(1, 12, 11, 1, (b"", b""), ack));
    s.settle();
    // ...so a write in that term goes to it while 11 fsyncs the entry.
    let (cb, _rx) = oneshot::channel();
    s.send(StoreMsg::Write {
        region_id: RegionId(1),
        cmd: write_cmd(1, epoch, &[(b"k", b"v")], None),
        cb: cb.into(),
    });
    s.settle();
    let second = s.store.peers[&RegionId(1)].raw.raft.raft_log.last_index();
    assert!(second > first);
    assert!(sent_when_persisted(second), "the append waited for the leader's own fsync");
}

#[test]
fn a_sleeping_region_costs_its_store_no_visits_until_something_arrives() {
    let mut s = TestStore::with_leader();
    s.store.peers.get_mut(&RegionId(1)).unwrap().cfg_mut().hibernate = true;
    // Idle for two election timeouts: the only voter needs nobody's
    // agreement, so it falls asleep, and the store stops visiting it.
    let now = Instant::now();
    for _ in 0..40 {
        s.store.tick(now, &mut Vec::new()).unwrap();
        s.settle();
    }
    assert!(s.store.peers[&RegionId(1)].asleep());
    assert!(!s.store.awake.contains(&RegionId(1)));
    // A write wakes it, and is served.
    let (cb, mut rx) = oneshot::channel();
    s.send(StoreMsg::Write { region_id: RegionId(1), cmd: put_x(1, s.region(1).epoch), cb: cb.into() });
    s.settle();
    assert!(matches!(rx.try_recv(), Ok(Ok(WriteOutcome::Done))));
    assert!(s.store.awake.contains(&RegionId(1)));
    assert!(!s.store.peers[&RegionId(1)].hibernating);
}

#[test]
fn a_sleeping_follower_told_it_was_removed_is_destroyed() {
    // Our follower 51 of region 5 (leader 52 on store 2), installed by a
    // snapshot, is asked by its leader to hibernate: it stops ticking, and
    // the store stops visiting it.
    let mut s = TestStore::new();
    s.send(snapshot(5, 1, (b"", b""), &[]));
    s.settle();
    let StoreMsg::Raft(mut ask) = from_leader_52(MessageType::MsgHeartbeat, 0, vec![], 10) else {
        unreachable!()
    };
    ask.hibernate = true;
    s.send(StoreMsg::Raft(ask));
    s.settle();
    assert!(s.store.peers[&RegionId(5)].asleep());
    s.store.tick(Instant::now(), &mut Vec::new()).unwrap();
    assert!(!s.store.awake.contains(&RegionId(5)));
    // Store 2 says 51 was removed (a newer membership), in a round that
    // also ticks: the removal is work, so the store destroys the peer.
    let tombstone = RaftMessage {
        region_id: 5,
        from_peer: Some(PeerMeta { id: PeerId(52), store_id: StoreId(2), role: PeerRole::Voter }.into()),
        to_peer: Some(PeerMeta { id: PeerId(51), store_id: ME, role: PeerRole::Voter }.into()),
        region_epoch: Some(RegionEpoch { conf_ver: 2, version: 1 }.into()),
        is_tombstone: true,
        ..Default::default()
    };
    s.send(StoreMsg::Raft(tombstone));
    s.store.next_tick = Instant::now();
    assert!(s.store.round(Duration::ZERO).unwrap());
    assert!(!s.store.peers.contains_key(&RegionId(5)), "the removed peer lingers");
}

/// Region 1's apply state as written in the kv engine.
fn stored_apply_state(kv: &MemEngine) -> mnemo_proto::raft_serverpb::RaftApplyState {
    use prost::Message as _;
    let raw = kv.get(Cf::Meta, &keys::apply_state_key(RegionId(1))).unwrap().expect("apply state");
    mnemo_proto::raft_serverpb::RaftApplyState::decode(raw.as_slice()).unwrap()
}

#[test]
fn with_the_apply_pool_plain_writes_and_a_cas_apply_in_log_order() {
    let mut s = TestStore::leading_with_apply_pool(1);
    // A CAS among a round's entries keeps them all on the store loop.
    writes_around_a_cas(&mut s);
    // Later rounds' writes go to the worker; everything is taken back in.
    put_each(&mut s, 0..5);
    let p = &s.store.peers[&RegionId(1)];
    assert_eq!(p.applying(), 0);
    let applied = p.raw.store().applied_index();
    assert_eq!(applied, p.raw.store().last_index_now());
    assert_eq!(stored_apply_state(&s.kv).applied_index, applied);
    let read = |k: &[u8]| crate::raftstore::apply::read_live(s.kv.as_ref(), k, 0).unwrap();
    assert_eq!(read(b"a").as_deref(), Some(&b"4"[..]));
    assert_eq!(read(b"b").as_deref(), Some(&b"2"[..]));
    assert_eq!(read(b"k4").as_deref(), Some(&b"v4"[..]));
}

#[test]
fn a_log_compaction_waits_for_the_apply_pool_so_the_stored_apply_state_never_goes_back() {
    let mut s = TestStore::leading_with_apply_pool(1);
    let (worker, _tasks) = LogGcWorker::detached();
    s.store.log_gc = worker;
    s.store.cfg.raft_log_gc_threshold = 1;
    put_each(&mut s, 0..20);
    // One more write, handed to the worker in this round; its report is
    // taken in no earlier than the next round.
    let (cb, mut rx) = oneshot::channel();
    let cmd = write_cmd(1, s.region(1).epoch, &[(b"late", b"v")], None);
    s.send(StoreMsg::Write { region_id: RegionId(1), cmd, cb: cb.into() });
    assert!(s.store.round(Duration::ZERO).unwrap());
    assert_eq!(s.store.peers[&RegionId(1)].applying(), 1, "the write is with the worker");
    let last = s.store.peers[&RegionId(1)].raw.store().last_index_now();
    // The compaction writes the apply state with its new truncation point:
    // only once the worker's own write of it is done and taken in.
    s.store.compact_logs().unwrap();
    let p = &s.store.peers[&RegionId(1)];
    let truncated = p.raw.store().apply_state.truncated_index;
    assert!(truncated > storage::INIT_INDEX);
    let stored = stored_apply_state(&s.kv);
    assert_eq!((stored.applied_index, stored.truncated_index), (last, truncated));
    assert_eq!(p.applying(), 0);
    assert_eq!(rx.try_recv().unwrap().unwrap(), WriteOutcome::Done);
}

#[test]
fn a_store_waiting_for_input_wakes_for_its_apply_workers_report() {
    let mut s = TestStore::leading_with_apply_pool(1);
    let (cb, mut rx) = oneshot::channel();
    let cmd = write_cmd(1, s.region(1).epoch, &[(b"k", b"v")], None);
    s.send(StoreMsg::Write { region_id: RegionId(1), cmd, cb: cb.into() });
    assert!(s.store.round(Duration::ZERO).unwrap());
    assert_eq!(s.store.peers[&RegionId(1)].applying(), 1, "the write is with the worker");
    // Nothing else arrives: the worker's report alone ends the wait (a
    // store that slept through it would leave reads and the applied index
    // behind until the next tick, an hour away here).
    let started = std::time::Instant::now();
    assert!(s.store.round(Duration::from_secs(60)).unwrap());
    assert!(started.elapsed() < Duration::from_secs(60), "woken by the report");
    assert_eq!(s.store.peers[&RegionId(1)].applying(), 0);
    assert_eq!(rx.try_recv().unwrap().unwrap(), WriteOutcome::Done);
}
