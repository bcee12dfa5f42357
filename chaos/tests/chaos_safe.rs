//! The short chaos run of `make test`: every fault kind (classic,
//! compound, PD, crash points), all four workloads (register, set,
//! counter, TSO), 5 nodes in network namespaces when run as root and three
//! PD members. The history must be valid, every fault kind
//! must have taken effect, the rare paths must have run (snapshots applied,
//! log GCs, splits, conf changes, leader changes, crash points fired), and
//! every counter and most register keys must have seen real traffic.
//! `make chaos` runs the long one through the `mnemo-chaos` binary.
//! `CHAOS_SEED` picks another schedule.

use std::time::Duration;

use mnemo_chaos::checker::Validity;
use mnemo_chaos::history::OpName;
use mnemo_chaos::nemesis::Fault;
use mnemo_chaos::run::{run, RunOptions};
use mnemo_chaos::workload::{is_edge_key, Workloads};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_run_under_every_nemesis_is_valid() {
    let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let netns = mnemo_chaos::net::available();
    // Kept unless the run passes: the history, report and logs are the evidence.
    let dir = tempfile::Builder::new().prefix("mnemo-chaos-").tempdir().unwrap().keep();
    let faults: Vec<Fault> =
        Fault::parse_list("everything").unwrap().into_iter().filter(|f| netns || !f.is_partition()).collect();
    let opts = RunOptions {
        duration: Duration::from_secs(180),
        seed,
        faults: faults.clone(),
        nemesis_name: "everything".into(),
        workloads: Workloads::parse("all").unwrap(),
        nodes: 5,
        pd_members: 3,
        pd_etcd: false,
        clients: 6,
        plant: None,
        out_dir: dir.join("run"),
        netns,
        check_budget: Duration::from_secs(120),
        batch_commands: true,
    };
    let outcome = run(opts).await.expect("the harness runs");
    let report = &outcome.report;
    let kept = dir;
    eprintln!("seed {seed}: {} operations, results in {}", outcome.operations, kept.display());
    eprintln!("cluster events: {:?}", outcome.cluster_events);
    eprintln!("faults: {:?}", outcome.nemesis.tally);
    assert_eq!(report.validity, Validity::Valid, "anomalies: {:#?}", report.anomalies);
    // Every fault kind ran and took effect at least once.
    for f in &faults {
        let t = outcome.nemesis.tally.get(f.name()).copied().unwrap_or_default();
        assert!(
            t.effective > 0,
            "{} never took effect ({} runs): {:?}",
            f.name(),
            t.runs,
            outcome.nemesis.tally
        );
    }
    // The rare paths ran.
    for event in [
        "snapshots_applied",
        "raft_log_gcs",
        "splits_applied",
        "conf_changes_applied",
        "leader_changes",
        "crash_points_fired",
    ] {
        let n = outcome.cluster_events.get(event).copied().unwrap_or(0);
        assert!(n > 0, "{event} never happened: {:?}", outcome.cluster_events);
    }
    // Real traffic on every key: each counter, and most register keys.
    let per_key = &outcome.ok_per_key;
    for ((op, key), n) in per_key.iter().filter(|((op, _), _)| *op == OpName::Increment) {
        assert!(*n >= 10, "counter {key:?} had only {n} {op:?}s");
    }
    // Shared register keys only: each TTL-edge key is written once.
    let mut register: Vec<u64> = per_key
        .iter()
        .filter(|((op, key), _)| {
            matches!(op, OpName::Read | OpName::Write | OpName::Cas) && !is_edge_key(*key)
        })
        .map(|(_, n)| *n)
        .collect();
    register.sort_unstable();
    let median = register.get(register.len() / 2).copied().unwrap_or(0);
    assert!(median >= 10, "register keys saw too little traffic (median {median} ok ops per key and kind)");
    // PD's timestamps were checked, and there were plenty of them.
    assert_eq!(report.checkers.get("tso"), Some(&Validity::Valid));
    let stamps = report.details["tso"]["timestamps"].as_u64().unwrap_or(0);
    assert!(stamps >= 1000, "only {stamps} timestamps were handed out");
    assert!(kept.join("run/results.json").exists() && kept.join("run/report.html").exists());
    std::fs::remove_dir_all(&kept).unwrap();
}
