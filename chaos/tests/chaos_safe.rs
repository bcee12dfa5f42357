//! The short chaos run of `make test`: every nemesis at least once, all three
//! workloads, 5 nodes (in network namespaces when run as root), and the
//! history must be valid. `make chaos` runs the long one through the
//! `mnemo-chaos` binary. `CHAOS_SEED` picks another schedule.

use std::time::Duration;

use mnemo_chaos::checker::Validity;
use mnemo_chaos::nemesis::Fault;
use mnemo_chaos::run::{run, RunOptions};
use mnemo_chaos::workload::Workloads;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_run_under_every_nemesis_is_valid() {
    let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let netns = mnemo_chaos::net::available();
    // Kept unless the run passes: the history, report and logs are the evidence.
    let dir = tempfile::Builder::new().prefix("mnemo-chaos-").tempdir().unwrap().keep();
    let faults = Fault::parse_list("all").unwrap();
    let opts = RunOptions {
        duration: Duration::from_secs(100),
        seed,
        faults: faults.clone(),
        nemesis_name: "all".into(),
        workloads: Workloads::parse("all").unwrap(),
        nodes: 5,
        clients: 6,
        unsafe_mode: false,
        out_dir: dir.join("run"),
        netns,
        check_budget: Duration::from_secs(120),
    };
    let outcome = run(opts).await.expect("the harness runs");
    let report = &outcome.report;
    let kept = dir;
    eprintln!("seed {seed}: {} operations, results in {}", outcome.operations, kept.display());
    assert_eq!(report.validity, Validity::Valid, "anomalies: {:#?}", report.anomalies);
    for f in faults.iter().filter(|f| netns || !f.is_partition()) {
        assert!(outcome.nemesis.faults.contains(f), "{} never ran: {:?}", f.name(), outcome.nemesis.faults);
    }
    let ok: u64 = report.counts.values().map(|c| c.ok).sum();
    assert!(ok > 1000, "too few successful operations ({ok}) to mean anything");
    assert!(kept.join("run/results.json").exists() && kept.join("run/report.html").exists());
    std::fs::remove_dir_all(&kept).unwrap();
}
