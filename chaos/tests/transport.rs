//! Node-to-node connections: a peer that stops answering is noticed by
//! keep-alive pings, and the link comes back without PD's help.

use std::time::Duration;

use mnemo_chaos::cluster::{wait_for, Cluster, ClusterConfig};
use mnemo_client::{Config, RawClient};

const FAILURES: &str = "mnemo_raft_connection_failures_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_link_is_found_by_keepalive_and_reconnected_while_pd_is_down() {
    let mut config = ClusterConfig::default();
    config
        .node_toml
        .push_str("[server]\ngrpc-keepalive-time = \"500ms\"\ngrpc-keepalive-timeout = \"500ms\"\n");
    let mut cluster = Cluster::start(config);
    cluster.wait_replicated(3, Duration::from_secs(60));
    let client = RawClient::with_config(
        vec![cluster.pd_endpoint()],
        Config { timeout: Duration::from_secs(20), ..Config::default() },
    )
    .await
    .unwrap();
    // The client learns the region and its leader while PD is up.
    client.put(b"k1".to_vec(), b"v1".to_vec()).await.unwrap();
    let a = cluster.leader_node_of(b"k1").expect("a leader");
    let (b, c) = ((a + 1) % 3, (a + 2) % 3);

    // PD goes away for the rest of the test.
    cluster.kill_pd();
    // b freezes: its TCP connections stay open, but nothing answers the
    // leader's keep-alive pings, so the leader drops its link to b.
    let before = cluster.node_metric(a, FAILURES).unwrap_or(0.0);
    cluster.pause_node(b);
    wait_for("the leader to notice the frozen peer", Duration::from_secs(20), || {
        (cluster.node_metric(a, FAILURES).unwrap_or(0.0) > before).then_some(())
    });
    cluster.resume_node(b);
    // c goes away: every write now needs b, which the leader must reach
    // again at the address it knew, with no PD to ask.
    cluster.kill_node(c);
    client.put(b"k2".to_vec(), b"v2".to_vec()).await.unwrap();
    assert_eq!(client.get(b"k1".to_vec()).await.unwrap(), Some(b"v1".to_vec()));
}
