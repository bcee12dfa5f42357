//! A PD follower partitioned from the other members (each member in its own
//! network namespace) while the group commits more than its log keeps:
//! healed, it catches up by snapshot, and the leader never changed. Needs
//! root (network namespaces); skipped otherwise.

use std::time::Duration;

use mnemo_chaos::cluster::{wait_for, Cluster, ClusterConfig};
use serde_json::{json, Value};

/// What member `i` says of its raft group (`GET /pd/api/v1/raft`).
fn raft(cluster: &Cluster, i: usize) -> Option<Value> {
    cluster.pd_member_raft(i, Duration::from_secs(2))
}

/// A run-time config change posted to member `i` itself (one log entry).
fn set_limit(cluster: &Cluster, i: usize, limit: u64) -> bool {
    let url = format!("http://{}/pd/api/v1/config", cluster.pd_endpoints()[i]);
    ureq::post(&url)
        .timeout(Duration::from_secs(5))
        .send_json(json!({ "leader-schedule-limit": limit }))
        .is_ok()
}

#[test]
fn a_partitioned_pd_follower_catches_up_by_snapshot_after_the_heal() {
    if !mnemo_chaos::net::available() {
        eprintln!("skipped: needs root, ip and iptables for network namespaces");
        return;
    }
    let cluster = Cluster::start(ClusterConfig {
        nodes: 1,
        pd_members: 3,
        netns: true,
        pd_toml: "tick-interval = \"100ms\"\nelection-interval = \"1s\"\nraft-log-keep-entries = 5\n".into(),
        ..Default::default()
    });
    let leader = cluster.pd_leader().expect("a leader");
    let away = (leader + 1) % 3;
    let term = raft(&cluster, leader).unwrap()["term"].as_u64().unwrap();
    let left_at = raft(&cluster, away).unwrap()["applied_index"].as_u64().unwrap();
    cluster.cut_pd_member(away).unwrap();

    // The other two commit on until the leader's log no longer holds what
    // the follower lacks.
    let mut limit = 100;
    wait_for("the leader's log to be compacted past the cut-off follower", Duration::from_secs(60), || {
        limit += 1;
        assert!(set_limit(&cluster, leader, limit), "a config change on the leader failed");
        let first = raft(&cluster, leader)?["first_index"].as_u64()?;
        (first > left_at + 1).then_some(())
    });
    let applied = raft(&cluster, leader).unwrap()["applied_index"].as_u64().unwrap();
    // Cut off, the follower saw none of it.
    let stuck = raft(&cluster, away).unwrap();
    assert!(stuck["applied_index"].as_u64().unwrap() < applied, "{stuck}");

    cluster.heal_network().unwrap();
    wait_for("the follower to catch up", Duration::from_secs(60), || {
        (raft(&cluster, away)?["applied_index"].as_u64()? >= applied).then_some(())
    });
    // It holds the latest config (a follower answers GET /config itself).
    let url = format!("http://{}/pd/api/v1/config", cluster.pd_endpoints()[away]);
    let config: Value = ureq::get(&url).call().unwrap().into_json().unwrap();
    assert_eq!(config["schedule"]["leader-schedule-limit"], limit, "{config}");
    // The leader was never deposed: a cut-off follower cannot disturb it
    // (pre-vote), and rejoins as a follower.
    assert_eq!(cluster.pd_leader(), Some(leader));
    assert_eq!(raft(&cluster, leader).unwrap()["term"].as_u64(), Some(term));
}
