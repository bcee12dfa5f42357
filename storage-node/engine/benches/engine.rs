//! The engine's hot paths on RocksDB in a temporary directory: a one-put
//! batch with and without fsync (the raft log's and the kv engine's writes),
//! a 64-put batch (one ready round's entries), and point gets of present
//! keys (a read served under the lease). `cargo bench -p mnemo-engine`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mnemo_engine::{Cf, Engine, RocksEngine, WriteBatch};

const KEYS: u64 = 100_000;

fn key(i: u64) -> Vec<u8> {
    format!("zk{:014}", i % KEYS).into_bytes()
}

fn engine(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = RocksEngine::open(dir.path()).unwrap();
    let value = vec![b'v'; 256];
    let mut load = WriteBatch::new();
    for i in 0..KEYS {
        load.put(Cf::Default, key(i), value.clone());
    }
    db.write(&load, true).unwrap();

    let mut group = c.benchmark_group("engine");
    let mut i = 0u64;
    for (name, sync) in [("put_one_no_sync", false), ("put_one_fsync", true)] {
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| {
            b.iter(|| {
                i += 7919;
                let mut wb = WriteBatch::new();
                wb.put(Cf::Default, key(i), value.clone());
                db.write(&wb, sync).unwrap();
            })
        });
    }
    group.throughput(Throughput::Elements(64));
    group.bench_function("put_batch_of_64_fsync", |b| {
        b.iter(|| {
            let mut wb = WriteBatch::new();
            for _ in 0..64 {
                i += 7919;
                wb.put(Cf::Default, key(i), value.clone());
            }
            db.write(&wb, true).unwrap();
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("get_present", |b| {
        b.iter(|| {
            i += 7919;
            assert!(db.get(Cf::Default, &key(i)).unwrap().is_some());
        })
    });
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
