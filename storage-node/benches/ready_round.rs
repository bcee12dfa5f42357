//! One store-loop round with one client write in each of N regions
//! (N = 1, 64, 1,024): queue the writes, then `Store::round` (propose,
//! collect the readies, persist, advance, apply, answer). Every region has
//! one voter, on this store, so the round commits by itself; the engines
//! are in memory, so this is the CPU the loop spends per region per round,
//! the cost that grows with regions touched (the disk's share is
//! `engine.rs`). `cargo bench -p mnemo-node --bench ready_round`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mnemo_node::engine::{Engine, Engines, MemEngine, WriteBatch};
use mnemo_node::raftstore::storage::write_initial_state;
use mnemo_node::raftstore::{router, Store, StoreConfig, StoreMsg, StoreRouter, Transport};
use mnemo_proto::raft_serverpb::{Mutation, MutationOp, RaftCommand, RaftMessage, RaftRequestHeader};
use mnemo_proto::types::{Peer, PeerId, PeerRole, Region, RegionEpoch, RegionId, StoreId};

/// Single-voter regions send nothing; anything sent is dropped.
struct Nowhere;

impl Transport for Nowhere {
    fn send(&self, _store: StoreId, _msgs: Vec<RaftMessage>) {}
}

const EPOCH: RegionEpoch = RegionEpoch { conf_ver: 1, version: 1 };

fn start_key(i: usize) -> Vec<u8> {
    if i == 0 {
        Vec::new()
    } else {
        format!("r{i:06}").into_bytes()
    }
}

/// A write's answer, once its round applied it.
type Answer = tokio::sync::oneshot::Receiver<mnemo_node::error::Result<mnemo_node::raftstore::WriteOutcome>>;

/// A store leading `n` regions that split the key space between them.
struct Bench {
    store: Store,
    router: StoreRouter,
    regions: Vec<Region>,
    _pd: tokio::sync::mpsc::UnboundedReceiver<mnemo_node::raftstore::PdTask>,
}

impl Bench {
    fn new(n: usize) -> Bench {
        let (kv, raft) = (Arc::new(MemEngine::new()), Arc::new(MemEngine::new()));
        let me = StoreId(1);
        let regions: Vec<Region> = (0..n)
            .map(|i| Region {
                id: RegionId(100 + i as u64),
                start_key: start_key(i),
                end_key: if i + 1 == n { Vec::new() } else { start_key(i + 1) },
                epoch: EPOCH,
                peers: vec![Peer { id: PeerId(10_000 + i as u64), store_id: me, role: PeerRole::Voter }],
            })
            .collect();
        let (mut kv_wb, mut raft_wb) = (WriteBatch::new(), WriteBatch::new());
        for r in &regions {
            write_initial_state(r, &mut kv_wb, &mut raft_wb);
        }
        kv.write(&kv_wb, true).unwrap();
        raft.write(&raft_wb, true).unwrap();
        let (tx, rx) = router::channel(1 << 16);
        let (pd_tx, pd) = tokio::sync::mpsc::unbounded_channel();
        let engines = Engines { kv, raft };
        let mut store = Store::load(
            me,
            StoreConfig::driven_by_hand(),
            engines,
            (tx.clone(), rx),
            Arc::new(Nowhere),
            pd_tx,
            Arc::default(),
        )
        .unwrap();
        store.campaign_all().unwrap();
        for _ in 0..100 {
            store.round(Duration::ZERO).unwrap();
            if store.leaders() == n {
                break;
            }
        }
        assert_eq!(store.leaders(), n, "every region elected its only voter");
        let mut b = Bench { store, router: tx, regions, _pd: pd };
        // The first write of a new leader's term waits for its no-op entry.
        let answers = write_everywhere(&b.router, &b.regions, 0);
        b.store.round(Duration::ZERO).unwrap();
        b.store.round(Duration::ZERO).unwrap();
        for mut rx in answers {
            assert!(rx.try_recv().unwrap().is_ok(), "the warm-up write was applied");
        }
        b
    }
}

/// Queues one put into each of `regions`; returns the answers to come.
fn write_everywhere(router: &StoreRouter, regions: &[Region], round: u64) -> Vec<Answer> {
    let value = vec![b'v'; 256];
    regions
        .iter()
        .map(|r| {
            let mut key = r.start_key.clone();
            key.extend_from_slice(format!("k{round:010}").as_bytes());
            let cmd = RaftCommand {
                header: Some(RaftRequestHeader {
                    region_id: r.id.0,
                    region_epoch: Some(r.epoch.into()),
                    ..Default::default()
                }),
                mutations: vec![Mutation {
                    op: MutationOp::Put as i32,
                    key,
                    value: value.clone(),
                    expire_at_ms: 0,
                }],
                ..Default::default()
            };
            let (cb, rx) = tokio::sync::oneshot::channel();
            assert!(router.send(StoreMsg::Write { region_id: r.id, cmd, cb: cb.into() }).is_ok(), "queued");
            rx
        })
        .collect()
}

fn ready_round(c: &mut Criterion) {
    let mut group = c.benchmark_group("ready_round");
    for n in [1usize, 64, 1024] {
        let Bench { mut store, router, regions, _pd } = Bench::new(n);
        let mut round = 1u64;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("{n}_regions_one_write_each"), |bench| {
            bench.iter_batched(
                || {
                    round += 1;
                    write_everywhere(&router, &regions, round)
                },
                |answers| {
                    store.round(Duration::ZERO).unwrap();
                    answers
                },
                BatchSize::PerIteration,
            )
        });
        // Every write of the last iteration was answered within its round.
        let answers = write_everywhere(&router, &regions, u64::MAX);
        store.round(Duration::ZERO).unwrap();
        assert!(answers.into_iter().all(|mut rx| rx.try_recv().is_ok_and(|r| r.is_ok())));
    }
    group.finish();
}

criterion_group!(benches, ready_round);
criterion_main!(benches);
