//! A PD cluster without network or raft (`Cluster::open`, one member that
//! applies its commands directly) holding synthetic regions, for the PD
//! benchmarks.

use mnemo_engine::EngineRef;
use mnemo_pd::cluster::{Cluster, RegionHeartbeat};
use mnemo_pd::member::Member;
use mnemo_pd::region_map::RegionRuntime;
use mnemo_pd::store::{StoreMeta, StoreStats};
use mnemo_pd::Config;
use mnemo_proto::types::{Peer, PeerId, PeerRole, Region, RegionEpoch, RegionId, StoreId};

/// Stores every region has a peer on.
pub const STORES: u64 = 3;

/// A bootstrapped cluster with [`STORES`] stores up, on `engine`.
pub fn cluster(engine: EngineRef) -> Cluster {
    let dir = std::env::temp_dir();
    let config = Config::for_tests(&dir);
    let member = Member::new(&config, &config.advertise_client_url().unwrap()).unwrap();
    let c = Cluster::open(config, member, engine).unwrap();
    let store =
        |id: u64| StoreMeta { id: StoreId(id), address: format!("n{id}:20160"), ..Default::default() };
    let first = Region {
        id: RegionId(2),
        epoch: RegionEpoch { conf_ver: 1, version: 1 },
        peers: vec![Peer { id: PeerId(3), store_id: StoreId(1), role: PeerRole::Voter }],
        ..Default::default()
    };
    c.bootstrap(store(1), first).unwrap();
    for id in 2..=STORES {
        c.put_store(store(id)).unwrap();
    }
    for id in 1..=STORES {
        c.store_heartbeat(StoreId(id), StoreStats::default()).unwrap();
    }
    c
}

fn start_key(i: u64) -> Vec<u8> {
    if i == 0 {
        Vec::new()
    } else {
        format!("t{i:010}").into_bytes()
    }
}

/// Region `i` of `n` cutting the key space (a split of the bootstrap
/// region: version 2), one voter on every store, led by the peer on store
/// `i % STORES + 1`.
pub fn heartbeat(i: u64, n: u64) -> RegionHeartbeat {
    let peers: Vec<Peer> = (1..=STORES)
        .map(|s| Peer {
            id: PeerId(1_000_000_000 + i * STORES + s),
            store_id: StoreId(s),
            role: PeerRole::Voter,
        })
        .collect();
    let leader = peers[(i % STORES) as usize];
    let region = Region {
        id: RegionId(10_000_000_000 + i),
        start_key: start_key(i),
        end_key: if i + 1 == n { Vec::new() } else { start_key(i + 1) },
        epoch: RegionEpoch { conf_ver: 3, version: 2 },
        peers,
    };
    RegionHeartbeat {
        region,
        runtime: RegionRuntime {
            leader: Some(leader),
            term: 6,
            approximate_size: 96 << 20,
            approximate_keys: 300_000,
            ..Default::default()
        },
    }
}

/// Feeds the first heartbeat of every region `0..n` (each a new record).
pub fn load(c: &Cluster, n: u64) {
    for i in 0..n {
        c.region_heartbeat(heartbeat(i, n)).unwrap();
    }
    assert_eq!(c.read(|v| v.state.regions().len()), n as usize);
}
