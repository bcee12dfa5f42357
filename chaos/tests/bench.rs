//! `mnemo-bench` against a real cluster: every workload runs, its operations
//! succeed, and the JSON it prints says so. (Speed is measured by running
//! the benchmark, never asserted here.)

use std::process::Command;

use mnemo_chaos::cluster::{bin_dir, Cluster, ClusterConfig};
use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(bin_dir().join("mnemo-bench"))
        .args(args)
        .arg("--quiet")
        .output()
        .expect("run mnemo-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mnemo-bench {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The last stdout line is the result as JSON.
    serde_json::from_str(stdout.lines().last().expect("output")).expect("a JSON result line")
}

/// PD keeps its metadata in etcd here, so the same etcd serves as the
/// etcd target (PD's keys live under `/mnemosyne`, the benchmark's are digits).
#[test]
fn every_workload_runs_against_mnemosyne_etcd_and_rocksdb() {
    let cluster = Cluster::start(ClusterConfig { pd_etcd: true, ..Default::default() });
    cluster.wait_replicated(3, std::time::Duration::from_secs(60));
    let pd = cluster.pd_endpoints().join(",");
    let common = ["--clients", "4", "--keys", "500", "--ops", "200", "--duration", "60"];
    for (workload, kinds) in [
        ("put", &["put"][..]),
        ("get", &["get"]),
        ("batch_get", &["batch_get"]),
        ("scan", &["scan"]),
        ("cas", &["cas"]),
        ("ycsb-a", &["get", "put"]),
        ("ycsb-e", &["scan", "insert"]),
    ] {
        let mut args = vec!["--pd", &pd, "--workload", workload, "--distribution", "zipfian"];
        args.extend(common);
        let r = bench(&args);
        assert_eq!(r["target"], "mnemosyne");
        assert_eq!(r["options"]["workload"], workload);
        // 200 operations, split over 4 clients, all succeeded.
        assert_eq!(r["total"]["ops"], 200, "{workload}: {r}");
        assert_eq!(r["total"]["errors"], 0, "{workload}: {r}");
        assert!(r["total"]["p99_us"].as_u64().unwrap() >= r["total"]["p50_us"].as_u64().unwrap());
        for kind in kinds {
            assert!(r["per_kind"][kind]["ops"].as_u64().unwrap_or(0) > 0, "{workload}: no {kind} in {r}");
        }
    }
    // etcd: linearizable gets, a CAS transaction, batch gets in one transaction.
    let etcd = cluster.etcd_endpoints().join(",");
    for workload in ["put", "get", "batch_get", "scan", "cas", "ycsb-b"] {
        let mut args = vec!["--target", "etcd", "--etcd-endpoints", &etcd, "--workload", workload];
        args.extend(common);
        let r = bench(&args);
        assert_eq!((r["target"].as_str(), r["total"]["ops"].as_u64()), (Some("etcd"), Some(200)), "{r}");
        assert_eq!(r["total"]["errors"], 0, "{workload}: {r}");
    }
    // The in-process ceiling: same workload, RocksDB with fsync.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db").display().to_string();
    let mut args = vec!["--target", "rocksdb", "--rocksdb-dir", &db, "--workload", "ycsb-b"];
    args.extend(common);
    let r = bench(&args);
    assert_eq!((r["target"].as_str(), r["total"]["ops"].as_u64()), (Some("rocksdb"), Some(200)));
    assert_eq!(r["total"]["errors"], 0);
}

/// `--rate` issues operations on a schedule: a 2-second run at 100 ops/s
/// never exceeds the schedule (each of the 4 clients issues at most one
/// operation per 40 ms), and latencies are recorded from the schedule.
#[test]
fn a_rate_limited_run_keeps_to_its_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db").display().to_string();
    let args = [
        "--target",
        "rocksdb",
        "--rocksdb-dir",
        &db,
        "--workload",
        "put",
        "--keys",
        "100",
        "--clients",
        "4",
        "--duration",
        "2",
        "--rate",
        "100",
    ];
    let r = bench(&args);
    let ops = r["total"]["ops"].as_u64().unwrap();
    assert!(ops <= 204, "{ops} operations in 2 s at 100/s: {r}");
    assert!(ops > 0, "{r}");
    assert_eq!(r["options"]["rate"].as_f64(), Some(100.0));
}
