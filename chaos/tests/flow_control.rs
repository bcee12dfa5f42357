//! Flow control: a write flood far beyond what the nodes can absorb is met
//! with `ServerIsBusy` (the client backs off), memory stays bounded, other
//! regions keep being served, and every acknowledged write is kept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mnemo_chaos::cluster::{wait_for, Cluster, ClusterConfig};
use mnemo_client::RawClient;
use parking_lot::Mutex;

const BUSY: &str = "mnemo_server_is_busy_total";
/// Each flood request: 400 pairs of 2 KiB, ~800 KiB.
const PAIRS: usize = 400;
const VALUE: usize = 2048;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_flood_gets_server_is_busy_and_loses_nothing() {
    let mut config = ClusterConfig::default();
    // At most 4 MiB of writes in flight per node: the flood below sends ~25.
    config.node_toml.push_str("[storage]\nscheduler-pending-write-threshold = \"4MiB\"\n");
    let cluster = Cluster::start(config);
    cluster.wait_replicated(3, Duration::from_secs(60));
    // The probe's keys get a region of their own.
    wait_for("the probe region", Duration::from_secs(30), || {
        if cluster.region_starts().contains(b"probe/".as_slice()) {
            return Some(());
        }
        let _ = cluster.split_at(&[b"probe/".to_vec()]);
        None
    });
    cluster.wait_replicated(3, Duration::from_secs(60));
    let endpoints = vec![cluster.pd_endpoint()];

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<u32>>> = Arc::default();
    let mut flood = Vec::new();
    // 32 clients, each its own connection and region cache, each with a
    // batch of ~800 KiB always in flight.
    for t in 0..32u32 {
        let (stop, acked, endpoints) = (stop.clone(), acked.clone(), endpoints.clone());
        flood.push(tokio::spawn(async move {
            let client = RawClient::new(endpoints).await.unwrap();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let batch = t * 100_000 + n;
                let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..PAIRS)
                    .map(|i| (format!("flood/{batch:08}/{i:04}").into_bytes(), vec![b'x'; VALUE]))
                    .collect();
                if client.batch_put(pairs).await.is_ok() {
                    acked.lock().push(batch);
                }
                n += 1;
            }
        }));
    }
    // Meanwhile another region's writes keep succeeding (the client backs
    // off on ServerIsBusy, within its deadline), and memory stays bounded.
    let probe = RawClient::new(endpoints.clone()).await.unwrap();
    let mut max_rss = 0;
    let mut probes = 0;
    let busy =
        |c: &Cluster| -> f64 { (0..c.node_count()).map(|i| c.node_metric(i, BUSY).unwrap_or(0.0)).sum() };
    while probes < 40 || busy(&cluster) == 0.0 {
        let key = format!("probe/{probes:04}").into_bytes();
        probe.put(key.clone(), b"p".to_vec()).await.expect("a probe write failed: another region stalled");
        probes += 1;
        for i in 0..cluster.node_count() {
            max_rss = max_rss.max(cluster.node_rss_bytes(i).unwrap_or(0));
        }
        assert!(probes < 2000, "the flood never met ServerIsBusy");
    }
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    let busy = busy(&cluster);
    eprintln!("{probes} probe writes, {busy} ServerIsBusy answers, max node RSS {} MiB", max_rss >> 20);
    assert!(busy > 0.0);
    assert!(max_rss < 1536 << 20, "a node grew to {} MiB", max_rss >> 20);

    // Every acknowledged batch is there, whole.
    let batches = acked.lock().clone();
    assert!(!batches.is_empty(), "no flood write was acknowledged at all");
    for batch in batches {
        let prefix = format!("flood/{batch:08}/");
        let end = format!("flood/{batch:08}0");
        let got = probe.scan(prefix.into_bytes(), end.into_bytes(), PAIRS as u32 + 1).await.unwrap();
        assert_eq!(got.len(), PAIRS, "acknowledged batch {batch} is incomplete");
    }
    for i in 0..probes {
        let key = format!("probe/{i:04}").into_bytes();
        assert_eq!(probe.get(key).await.unwrap(), Some(b"p".to_vec()));
    }
}
