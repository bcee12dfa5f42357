//! PD's region-heartbeat handling on one thread: 10,000 regions of 3
//! peers on 3 stores, each heartbeat bringing no metadata news (the steady
//! state: runtime update, stale/deposed checks, scheduling). Issue 10's
//! target is 300,000 heartbeats per second on one core.
//! `cargo bench -p mnemo-pd --bench heartbeat`.

mod common;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mnemo_engine::MemEngine;

const REGIONS: u64 = 10_000;

fn heartbeat(c: &mut Criterion) {
    let cluster = common::cluster(Arc::new(MemEngine::new()));
    common::load(&cluster, REGIONS);
    let mut group = c.benchmark_group("pd");
    group.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    group.bench_function("region_heartbeat_10k_regions", |b| {
        b.iter_batched(
            || {
                i = (i + 7919) % REGIONS;
                common::heartbeat(i, REGIONS)
            },
            |hb| cluster.region_heartbeat(hb).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, heartbeat);
criterion_main!(benches);
