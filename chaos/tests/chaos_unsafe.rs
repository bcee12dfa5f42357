//! The checker has teeth: with the deliberately unsafe stale follower reads
//! on, a short run must be found non-linearizable. Partitions that cut off
//! a follower (or the leaders' node) guarantee followers that fall behind
//! yet still answer; `scripts/chaos-sensitivity.sh` measures the detection
//! rate on the default schedule.

use std::time::Duration;

use mnemo_chaos::checker::{AnomalyKind, Validity};
use mnemo_chaos::nemesis::Fault;
use mnemo_chaos::run::{run, Plant, RunOptions};
use mnemo_chaos::workload::Workloads;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_stale_reads_are_caught() {
    // Kept unless the run passes: the history, report and logs are the evidence.
    let dir = tempfile::Builder::new().prefix("mnemo-chaos-unsafe-").tempdir().unwrap().keep();
    let netns = mnemo_chaos::net::available();
    let nemesis = if netns { "partition-one,partition-leader" } else { "kill-one,pause" };
    let opts = RunOptions {
        duration: Duration::from_secs(30),
        seed: 1,
        faults: Fault::parse_list(nemesis).unwrap(),
        nemesis_name: nemesis.into(),
        workloads: Workloads::parse("register").unwrap(),
        nodes: 5,
        pd_members: 1,
        pd_etcd: false,
        clients: 6,
        plant: Some(Plant::StaleFollowerReads),
        out_dir: dir.join("run"),
        netns,
        check_budget: Duration::from_secs(60),
        batch_commands: false,
    };
    let outcome = run(opts).await.expect("the harness runs");
    let report = &outcome.report;
    assert_eq!(report.validity, Validity::Invalid, "stale reads went unnoticed: {:?}", report.counts);
    assert!(report.anomalies.iter().any(|a| a.kind == AnomalyKind::NotLinearizable));
    std::fs::remove_dir_all(&dir).unwrap();
}
