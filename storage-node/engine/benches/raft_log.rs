//! One store-loop round's raft log write on each raft log store: for 1 and
//! 64 regions, one new entry (a 256 B put's command) and a hard state per
//! region in one batch, unsynced (the CPU of the write) and fsynced; logs
//! compacted every 1,000 rounds as the log GC would.
//! `cargo bench -p mnemo-engine --bench raft_log`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mnemo_engine::{Cf, Engine, LogKeys, PlainLogKeys as Keys, RaftLogEngine, RocksEngine, WriteBatch};
use protobuf::Message as _;
use raft::eraftpb::Entry;

fn round(regions: u64, index: u64) -> WriteBatch {
    let mut wb = WriteBatch::new();
    for r in 1..=regions {
        let e = Entry { index, term: 1, data: vec![b'c'; 300].into(), ..Default::default() };
        wb.put(Cf::Default, Keys.entry_key(r, index), e.write_to_bytes().unwrap());
        let mut hs = b"hs".to_vec();
        hs.extend_from_slice(&r.to_be_bytes());
        wb.put(Cf::Default, hs, index.to_be_bytes().to_vec());
    }
    if index.is_multiple_of(1_000) {
        for r in 1..=regions {
            wb.delete_range(Cf::Default, Keys.entry_key(r, 0), Keys.entry_key(r, index - 100));
        }
    }
    wb
}

fn raft_log(c: &mut Criterion) {
    let mut group = c.benchmark_group("raft_log");
    for store in ["rocksdb", "raft-engine"] {
        for regions in [1u64, 64] {
            for sync in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let engine: Box<dyn Engine> = match store {
                    "rocksdb" => Box::new(RocksEngine::open(dir.path()).unwrap()),
                    _ => Box::new(RaftLogEngine::open(dir.path(), Keys).unwrap()),
                };
                let mut index = 0;
                let name = format!("{store}/{regions}_regions/{}", if sync { "fsync" } else { "no_sync" });
                group.throughput(Throughput::Elements(regions));
                group.bench_function(name, |b| {
                    b.iter(|| {
                        index += 1;
                        engine.write(&round(regions, index), sync).unwrap();
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, raft_log);
criterion_main!(benches);
