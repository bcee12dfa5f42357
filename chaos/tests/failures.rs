//! Crashes: kill -9 of the leader's node under load, and a restart of every
//! process. Nothing acknowledged may be lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mnemo_chaos::cluster::{Cluster, ClusterConfig};
use mnemo_client::RawClient;
use parking_lot::Mutex;

type Acked = Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>;

/// Writes `prefix-N` keys until `stop`; records every acknowledged write.
fn spawn_writers(
    client: Arc<RawClient>,
    tasks: usize,
    acked: Acked,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..tasks)
        .map(|t| {
            let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("w{t}-{n:06}").into_bytes();
                    let value = format!("v{n}").into_bytes();
                    // Errors (including undetermined outcomes) are allowed
                    // during the failover; only acknowledged writes count.
                    if client.put(key.clone(), value.clone()).await.is_ok() {
                        acked.lock().insert(key, value);
                    }
                    n += 1;
                }
            })
        })
        .collect()
}

async fn assert_all_readable(client: &RawClient, acked: &Acked) {
    let expected = acked.lock().clone();
    assert!(!expected.is_empty(), "no write was acknowledged at all");
    for (k, v) in &expected {
        let got = client.get(k.clone()).await.unwrap();
        assert_eq!(got.as_ref(), Some(v), "acknowledged key {} lost", String::from_utf8_lossy(k));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_writes_resume_and_restarted_node_catches_up() {
    let mut cluster = Cluster::start(ClusterConfig::default());
    cluster.wait_replicated(3, Duration::from_secs(60));
    let client = Arc::new(RawClient::new(vec![cluster.pd_endpoint()]).await.unwrap());
    client.put(b"hello".to_vec(), b"world".to_vec()).await.unwrap();

    // A write load of 4 tasks.
    let acked: Acked = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = spawn_writers(client.clone(), 4, acked.clone(), stop.clone());
    let wait_progress = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while acked.lock().len() < n {
                assert!(Instant::now() < deadline, "writes made no progress");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_progress(50).await;

    // Kill -9 the leader's node.
    let leader = cluster.leader_node_of(b"hello").expect("a leader");
    let before = acked.lock().len();
    let killed_at = Instant::now();
    cluster.kill_node(leader);

    // Writes resume on a new leader.
    wait_progress(before + 50).await;
    eprintln!("writes resumed {:?} after kill -9 of the leader", killed_at.elapsed());
    assert_eq!(client.get(b"hello".to_vec()).await.unwrap(), Some(b"world".to_vec()));

    // Restart it on its data dir; the load goes on meanwhile.
    cluster.restart_node(leader);
    let n = acked.lock().len();
    wait_progress(n + 50).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    // The restarted node catches up: kill another node so that it must be
    // part of every quorum, then read every acknowledged write.
    cluster.wait_replicated(3, Duration::from_secs(30));
    let other = (leader + 1) % cluster.node_count();
    cluster.kill_node(other);
    assert_all_readable(&client, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_of_every_process_keeps_all_acknowledged_data() {
    let mut cluster = Cluster::start(ClusterConfig::default());
    cluster.wait_replicated(3, Duration::from_secs(60));
    let acked: Acked = Arc::default();
    {
        let client = RawClient::new(vec![cluster.pd_endpoint()]).await.unwrap();
        for i in 0..200u32 {
            let (k, v) = (format!("k{i:04}").into_bytes(), format!("v{i}").into_bytes());
            client.put(k.clone(), v.clone()).await.unwrap();
            acked.lock().insert(k, v);
        }
    }

    // Kill everything with SIGKILL, then start PD and the nodes again.
    for i in 0..cluster.node_count() {
        cluster.kill_node(i);
    }
    cluster.kill_pd();
    cluster.restart_pd();
    for i in 0..cluster.node_count() {
        cluster.restart_node(i);
    }
    cluster.wait_replicated(3, Duration::from_secs(60));

    let client = RawClient::new(vec![cluster.pd_endpoint()]).await.unwrap();
    assert_all_readable(&client, &acked).await;
    let all = client.scan(b"k".to_vec(), b"l".to_vec(), 1000).await.unwrap();
    assert_eq!(all.len(), 200);
}
