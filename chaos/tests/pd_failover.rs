//! Three PD members (real processes) and three nodes, a client load running:
//! the PD leader is killed with SIGKILL over and over (and restarted each
//! time). Clients whose region cache is warm never notice; timestamps keep
//! increasing across every change of leader; the cluster ends healthy. On
//! both PD backends: the members' own raft group, and a real etcd.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mnemo_chaos::cluster::{wait_for, Cluster, ClusterConfig};
use mnemo_client::pd::PdClient;
use mnemo_client::RawClient;
use parking_lot::Mutex;

const KILLS: usize = 20;
/// Fewer on etcd: each failover waits out a lease of at least etcd's
/// minimum TTL (about 2 s).
const ETCD_KILLS: usize = 8;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_pd_leader_again_and_again_fails_no_warm_client_operation() {
    kill_the_pd_leader_again_and_again(false, KILLS).await;
}

/// The same with PD's metadata and election in a real three-member etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_killing_the_pd_leader_again_and_again_fails_no_warm_client_operation() {
    kill_the_pd_leader_again_and_again(true, ETCD_KILLS).await;
}

async fn kill_the_pd_leader_again_and_again(pd_etcd: bool, kills: usize) {
    let cfg = ClusterConfig {
        pd_members: 3,
        pd_etcd,
        pd_toml: "tick-interval = \"100ms\"\nelection-interval = \"1s\"\n".into(),
        ..ClusterConfig::default()
    };
    let mut cluster = Cluster::start(cfg);
    cluster.wait_replicated(3, Duration::from_secs(60));
    let endpoints = cluster.pd_endpoints();

    // Warm the region cache, then keep writing and reading from two tasks.
    let client = Arc::new(RawClient::new(endpoints.clone()).await.unwrap());
    for i in 0..50u32 {
        client.put(format!("k{i:03}").into_bytes(), b"0".to_vec()).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(Vec::new())));
    let mut load = Vec::new();
    for t in 0..2u32 {
        let (client, stop, ok, failed) = (client.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{:03}", (n * 7 + t) % 50).into_bytes();
                let r = if n.is_multiple_of(2) {
                    client.put(key, n.to_string().into_bytes()).await.map(|_| ())
                } else {
                    client.get(key).await.map(|_| ())
                };
                match r {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failed.lock().push(e.to_string());
                        0
                    }
                };
                n += 1;
            }
        }));
    }

    // Timestamps from their own PD client, all along.
    let tso_pd = Arc::new(PdClient::connect(endpoints.clone()).await.unwrap());
    let stamps = Arc::new(Mutex::new(Vec::new()));
    let tso_task = {
        let (pd, stop, stamps) = (tso_pd.clone(), stop.clone(), stamps.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // Failures are expected while no leader serves.
                if let Ok(ts) = pd.get_ts(1).await {
                    stamps.lock().push(ts);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Kill the leader, time until a new one answers, restart the old one.
    let probe = PdClient::connect(endpoints.clone()).await.unwrap();
    let mut failovers = Vec::new();
    for round in 0..kills {
        let leader = wait_for("a PD leader", Duration::from_secs(30), || cluster.pd_leader());
        let killed = Instant::now();
        cluster.kill_pd_member(leader);
        let deadline = killed + Duration::from_secs(30);
        loop {
            let region = probe.get_region(b"").await;
            if region.is_ok() && probe.get_ts(1).await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: no PD leader answered within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        failovers.push(killed.elapsed());
        cluster.restart_pd_member(leader);
        // Every leader hands out timestamps before it is killed in turn.
        let before = stamps.lock().len();
        wait_for("timestamps from the new leader", Duration::from_secs(30), || {
            (stamps.lock().len() >= before + 5).then_some(())
        });
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    tso_task.await.unwrap();

    let failed = failed.lock().clone();
    assert!(
        failed.is_empty(),
        "{} client operations failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let ok = ok.load(Ordering::Relaxed);
    assert!(ok > 100, "only {ok} operations ran");
    let stamps = stamps.lock().clone();
    assert!(stamps.len() >= 5 * kills, "only {} timestamps", stamps.len());
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "timestamps went back or repeated");
    cluster.wait_replicated(3, Duration::from_secs(60));

    failovers.sort();
    eprintln!(
        "PD failover ({}, kill -9 of the leader → GetRegion and Tso answered), {kills} kills: p50 {:?}, p99 {:?}, \
         max {:?}; {ok} client operations, {} timestamps",
        if pd_etcd { "etcd backend" } else { "raft backend" },
        percentile(&failovers, 0.5),
        percentile(&failovers, 0.99),
        failovers[failovers.len() - 1],
        stamps.len()
    );
}

/// Region heartbeats every minute: a new PD leader still learns every
/// region's leader at once, because the nodes report everything when their
/// heartbeat stream moves to it (else: up to a minute without leaders, and
/// no scheduling, since the prepare check waits for the reports).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pd_leader_hears_every_region_leader_without_waiting_for_the_heartbeat_tick() {
    let cfg = ClusterConfig {
        pd_members: 3,
        pd_toml: "tick-interval = \"100ms\"\nelection-interval = \"1s\"\n".into(),
        node_toml:
            "[raftstore]\npd-heartbeat-tick-interval = \"60s\"\npd-store-heartbeat-tick-interval = \"1s\"\n"
                .into(),
        ..ClusterConfig::default()
    };
    let mut cluster = Cluster::start(cfg);
    cluster.wait_replicated(3, Duration::from_secs(60));
    let leader = wait_for("a PD leader", Duration::from_secs(30), || cluster.pd_leader());
    cluster.kill_pd_member(leader);
    wait_for("another PD leader", Duration::from_secs(30), || cluster.pd_leader());
    // The new leader knew the regions (the log) but none of their leaders.
    cluster.wait_replicated(3, Duration::from_secs(20));
    cluster.restart_pd_member(leader);
}
