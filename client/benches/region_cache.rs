//! The client's region-cache lookup (every request does one) with 10,000
//! cached regions of 3 peers, keys spread over all of them; and the cache
//! taking in a region learned from PD. `cargo bench -p mnemo-client`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mnemo_client::region_cache::RegionCache;
use mnemo_proto::types::{Peer, PeerId, PeerRole, Region, RegionEpoch, RegionId, StoreId};

const REGIONS: u64 = 10_000;

fn start_key(i: u64) -> Vec<u8> {
    if i == 0 {
        Vec::new()
    } else {
        format!("k{i:08}").into_bytes()
    }
}

fn region(i: u64) -> Region {
    Region {
        id: RegionId(1_000 + i),
        start_key: start_key(i),
        end_key: if i + 1 == REGIONS { Vec::new() } else { start_key(i + 1) },
        epoch: RegionEpoch { conf_ver: 5, version: 10 },
        peers: (1..=3)
            .map(|s| Peer { id: PeerId(100_000 + i * 3 + s), store_id: StoreId(s), role: PeerRole::Voter })
            .collect(),
    }
}

fn region_cache(c: &mut Criterion) {
    let cache = RegionCache::new();
    for i in 0..REGIONS {
        let r = region(i);
        let leader = r.peers[(i % 3) as usize];
        cache.insert(r, Some(leader));
    }
    assert_eq!(cache.len(), REGIONS as usize);
    let mut group = c.benchmark_group("region_cache");
    group.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    group.bench_function("get_by_key_10k_regions", |b| {
        b.iter(|| {
            i = (i + 7919) % REGIONS;
            let key = format!("k{i:08}/user-key").into_bytes();
            let hit = cache.get_by_key(&key).expect("every key is cached");
            assert_eq!(hit.region.id, RegionId(1_000 + i));
        })
    });
    group.bench_function("insert_replacing_10k_regions", |b| {
        b.iter(|| {
            i = (i + 7919) % REGIONS;
            let r = region(i);
            let leader = r.peers[0];
            cache.insert(r, Some(leader));
        })
    });
    group.finish();
}

criterion_group!(benches, region_cache);
criterion_main!(benches);
