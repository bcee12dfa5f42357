//! Crashes at chosen points (crash points, `mnemo_node::failpoints`), in
//! real processes: the node must die there, and come back whole.

use std::sync::Arc;
use std::time::Duration;

use mnemo_chaos::cluster::{wait_for, Cluster, ClusterConfig};
use mnemo_client::RawClient;

/// Exit code of a node that died at a crash point.
const CRASH_POINT_EXIT_CODE: i32 = 86;

/// Waits until node `i` exits on its own; returns its exit code.
fn wait_exit(cluster: &mut Cluster, i: usize, what: &str) -> Option<i32> {
    wait_for(what, Duration::from_secs(60), || {
        cluster.reap_crashed_nodes().into_iter().find(|(n, _)| *n == i).map(|(_, status)| status.code())
    })
}

/// A replicated 3-node cluster with test controls whose raft logs are
/// compacted every 200 ms once 10 entries can go, and a client of it;
/// `node_args` go to every node (`--raft-engine false`: raft logs in RocksDB).
async fn replicated_with_fast_log_gc(node_args: &[&str]) -> (Cluster, Arc<RawClient>) {
    let mut node_args: Vec<String> = node_args.iter().map(|a| a.to_string()).collect();
    node_args.push("--enable-test-controls".into());
    let mut config = ClusterConfig { node_args, ..Default::default() };
    config.node_toml.push_str(
        "raft-log-gc-tick-interval = \"200ms\"\nraft-log-gc-threshold = 10\nraft-log-gc-count-limit = 20\n",
    );
    let cluster = Cluster::start(config);
    cluster.wait_replicated(3, Duration::from_secs(60));
    let client = Arc::new(RawClient::new(vec![cluster.pd_endpoint()]).await.unwrap());
    (cluster, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_store_loop_ends_the_process_and_pd_marks_the_store_down() {
    let mut cluster = Cluster::start(ClusterConfig {
        pd_toml: "[schedule]\nmax-store-down-time = \"3s\"\n".into(),
        node_args: vec!["--enable-test-controls".into()],
        ..Default::default()
    });
    cluster.wait_replicated(3, Duration::from_secs(60));
    let store = cluster.store_id_of(0).expect("node 1 registered");
    // A panic inside the store loop (raft-rs `fatal!` would be one): the
    // whole process must go, not just the thread.
    cluster.arm_crash_point(0, "store_loop_round", "panic").unwrap();
    let code = wait_exit(&mut cluster, 0, "node 1 to exit after the panic");
    assert_eq!(code, Some(CRASH_POINT_EXIT_CODE));
    // Nothing answers heartbeats for it any more: PD sees it Down.
    wait_for("PD to mark the store Down", Duration::from_secs(60), || {
        let s = cluster.pd_get(&format!("/pd/api/v1/store/{store}"))?;
        (s["status"]["state_name"].as_str() == Some("Down")
            || s["store"]["state_name"].as_str() == Some("Down"))
        .then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_snapshot_apply_is_finished_at_restart() {
    crash_during_snapshot_apply(&[]).await;
}

/// The same with raft logs in RocksDB (the default is raft-engine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_snapshot_apply_is_finished_at_restart_with_rocksdb_raft_logs() {
    crash_during_snapshot_apply(&["--raft-engine", "false"]).await;
}

async fn crash_during_snapshot_apply(node_args: &[&str]) {
    // Raft logs are cut short quickly, so a node that was down needs a snapshot.
    let (mut cluster, client) = replicated_with_fast_log_gc(node_args).await;
    let mut acked = Vec::new();
    let mut put = |i: u32| {
        let (k, v) = (format!("k{i:05}").into_bytes(), format!("v{i}").into_bytes());
        acked.push((k.clone(), v.clone()));
        let client = client.clone();
        async move { client.put(k, v).await.unwrap() }
    };
    for i in 0..20 {
        put(i).await;
    }
    // A follower goes down while the log moves on and is compacted past it.
    let leader = cluster.leader_node_of(b"k").unwrap();
    let lagging = (leader + 1) % 3;
    cluster.kill_node(lagging);
    for i in 20..300 {
        put(i).await;
    }
    // It comes back, receives a snapshot and dies in the middle of applying
    // it: data replaced, region state not yet final.
    cluster.restart_node_with_failpoints(lagging, "snapshot_apply_after_ingest=panic");
    let code = wait_exit(&mut cluster, lagging, "the lagging node to die applying the snapshot");
    assert_eq!(code, Some(CRASH_POINT_EXIT_CODE));
    // Restarted, it finishes the apply and serves: no crash loop.
    cluster.restart_node(lagging);
    cluster.wait_replicated(3, Duration::from_secs(60));
    // It must be part of every quorum now: stop the third node.
    let third = (0..3).find(|&n| n != leader && n != lagging).unwrap();
    cluster.kill_node(third);
    for i in 300..310 {
        put(i).await;
    }
    for (k, v) in &acked {
        assert_eq!(client.get(k.clone()).await.unwrap().as_ref(), Some(v));
    }
    assert!(cluster.reap_crashed_nodes().is_empty(), "a node crashed after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_log_gc_sync_and_its_deletion_loses_nothing() {
    // Node 1's log GC worker dies after syncing the kv engine, before it
    // deletes the compacted entries.
    crash_under_writes(&[], "raft_log_gc_after_kv_sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_log_gc_sync_and_its_deletion_loses_nothing_with_rocksdb_raft_logs() {
    crash_under_writes(&["--raft-engine", "false"], "raft_log_gc_after_kv_sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_an_apply_workers_write_loses_nothing() {
    // Node 1's apply worker dies after writing entries and their applied
    // index, before its clients or its store loop hear of it: restarted,
    // the node applies on from the index on disk.
    crash_under_writes(&["--apply-pool-size", "1"], "apply_pool_after_write").await;
}

/// Node 1 dies at crash point `point` under a stream of writes; restarted,
/// it must serve every acknowledged write and hold node 3's data.
async fn crash_under_writes(node_args: &[&str], point: &str) {
    let (mut cluster, client) = replicated_with_fast_log_gc(node_args).await;
    let mut acked = Vec::new();
    cluster.arm_crash_point(0, point, "panic").unwrap();
    let mut i = 0u32;
    let code = loop {
        let (k, v) = (format!("k{i:05}").into_bytes(), format!("v{i}").into_bytes());
        // A put in flight when node 1 dies may fail: only acknowledged ones count.
        if client.put(k.clone(), v.clone()).await.is_ok() {
            acked.push((k, v));
        }
        i += 1;
        if let Some((_, status)) = cluster.reap_crashed_nodes().into_iter().find(|(n, _)| *n == 0) {
            break status.code();
        }
        assert!(i < 5_000, "crash point {point} never fired");
    };
    assert_eq!(code, Some(CRASH_POINT_EXIT_CODE));
    // Restarted, it serves with the new truncation point and the entries
    // the deletion did not get to; it must be in every quorum now.
    cluster.restart_node(0);
    cluster.wait_replicated(3, Duration::from_secs(60));
    cluster.kill_node(1);
    for j in i..i + 50 {
        let (k, v) = (format!("k{j:05}").into_bytes(), format!("v{j}").into_bytes());
        // The first put may go to node 2 as it dies (if it led): such a
        // write is `Undetermined`, and writing the same value again is safe.
        let mut attempts = 0;
        while let Err(e) = client.put(k.clone(), v.clone()).await {
            attempts += 1;
            assert!(matches!(e, mnemo_client::Error::Undetermined(_)) && attempts < 3, "put {j}: {e:?}");
        }
        acked.push((k, v));
    }
    for (k, v) in &acked {
        assert_eq!(client.get(k.clone()).await.unwrap().as_ref(), Some(v));
    }
    // Node 1's own replica holds the same data as node 3's, whoever leads.
    let sorted_hashes = |i: usize| {
        let mut h: Vec<String> = cluster.node_region_hashes(i)?.iter().map(|r| r.to_string()).collect();
        h.sort();
        Some(h)
    };
    wait_for("node 1 and node 3 to hold the same data", Duration::from_secs(30), || {
        let (a, b) = (sorted_hashes(0)?, sorted_hashes(2)?);
        (!a.is_empty() && a == b).then_some(())
    });
    assert!(cluster.reap_crashed_nodes().is_empty(), "a node crashed after the restart");
}
