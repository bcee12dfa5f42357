//! Many regions: splits under load, and traffic that never sees them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mnemo_chaos::cluster::{wait_for, Cluster, ClusterConfig};
use mnemo_client::RawClient;
use parking_lot::Mutex;

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:08}").into_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(40)).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_splits_into_64_regions_that_tile_the_key_space() {
    // Three nodes whose regions split every ~100 keys.
    let cluster = Cluster::start(ClusterConfig::small_regions(3));
    cluster.wait_replicated(3, Duration::from_secs(60));
    let client = RawClient::new(vec![cluster.pd_endpoint()]).await.unwrap();

    // Load keys in batches until PD knows at least 64 regions.
    let mut loaded = 0u32;
    let deadline = Instant::now() + Duration::from_secs(120);
    while cluster.regions().len() < 64 {
        assert!(
            Instant::now() < deadline,
            "only {} regions after loading {loaded} keys",
            cluster.regions().len()
        );
        let batch: Vec<_> = (loaded..loaded + 500).map(|i| (key(i), value(i))).collect();
        client.batch_put(batch).await.unwrap();
        loaded += 500;
    }
    eprintln!("{} regions after {loaded} keys", cluster.regions().len());

    // Every region ends up with 3 voters on 3 distinct nodes, and they tile the key space.
    let regions = cluster.wait_replicated(3, Duration::from_secs(60));
    assert!(regions.len() >= 64);
    Cluster::check_tiling(&regions).unwrap();

    // Every key is readable, point by point (batched) and by one scan across all regions.
    let keys: Vec<_> = (0..loaded).map(key).collect();
    for chunk in keys.chunks(1000) {
        let got = client.batch_get(chunk.to_vec()).await.unwrap();
        assert_eq!(got.len(), chunk.len());
    }
    let all = client.scan(key(0), Vec::new(), loaded + 10).await.unwrap();
    assert_eq!(all.len() as u32, loaded);
    assert!(all.iter().enumerate().all(|(i, (k, v))| *k == key(i as u32) && *v == value(i as u32)));
    let rev = client.scan_reverse(key(0), Vec::new(), 250).await.unwrap();
    assert_eq!(rev.first().map(|(k, _)| k.clone()), Some(key(loaded - 1)));
    assert_eq!(rev.len(), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_while_regions_split_sees_no_error_and_loses_nothing() {
    let cluster = Cluster::start(ClusterConfig::small_regions(3));
    cluster.wait_replicated(3, Duration::from_secs(60));
    let client = Arc::new(RawClient::new(vec![cluster.pd_endpoint()]).await.unwrap());

    // Writers insert distinct keys while readers scan everything, until 30 regions exist.
    let acked: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4u32 {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<_> = (0..20).map(|j| (key(w * 10_000_000 + i + j), value(i + j))).collect();
                client.batch_put(batch.clone()).await.expect("no client-visible error while splitting");
                acked.lock().extend(batch);
                i += 20;
            }
        }));
    }
    let scanner = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut scans = 0;
            while !stop.load(Ordering::Relaxed) {
                let all = client.scan(Vec::new(), Vec::new(), 10_000).await.expect("scan during splits");
                // Keys come back sorted and unique.
                assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "scan out of order or duplicated");
                scans += 1;
            }
            scans
        })
    };
    wait_for("30 regions", Duration::from_secs(120), || (cluster.regions().len() >= 30).then_some(()));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let scans = scanner.await.unwrap();
    eprintln!("{} regions; {} keys written; {scans} full scans", cluster.regions().len(), acked.lock().len());

    // Everything acknowledged is there exactly once.
    let expected = acked.lock().clone();
    let all = client.scan(Vec::new(), Vec::new(), expected.len() as u32 + 100).await.unwrap();
    let got: BTreeMap<_, _> = all.iter().cloned().collect();
    assert_eq!(got.len(), all.len(), "duplicate keys in scan");
    assert_eq!(got, expected);
}
