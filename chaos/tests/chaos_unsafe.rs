//! The checker has teeth: with the deliberately unsafe stale follower reads
//! on, a short default-schedule run must be found non-linearizable.

use std::time::Duration;

use mnemo_chaos::checker::{AnomalyKind, Validity};
use mnemo_chaos::nemesis::Fault;
use mnemo_chaos::run::{run, RunOptions};
use mnemo_chaos::workload::Workloads;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_stale_reads_are_caught() {
    let dir = tempfile::Builder::new().prefix("mnemo-chaos-unsafe-").tempdir().unwrap();
    let opts = RunOptions {
        duration: Duration::from_secs(30),
        seed: 1,
        faults: Fault::parse_list("all").unwrap(),
        nemesis_name: "all".into(),
        workloads: Workloads::parse("register").unwrap(),
        nodes: 5,
        clients: 6,
        unsafe_mode: true,
        out_dir: dir.path().join("run"),
        netns: mnemo_chaos::net::available(),
        check_budget: Duration::from_secs(60),
    };
    let outcome = run(opts).await.expect("the harness runs");
    let report = &outcome.report;
    assert_eq!(report.validity, Validity::Invalid, "stale reads went unnoticed: {:?}", report.counts);
    assert!(report.anomalies.iter().any(|a| a.kind == AnomalyKind::NotLinearizable));
}
