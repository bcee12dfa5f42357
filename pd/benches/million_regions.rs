//! Memory of a PD holding 1,000,000 regions (issue 10: at most 1 GiB RSS).
//! One member without raft (`Cluster::open`) on a RocksDB engine in a
//! temporary directory (on tmpfs if there is one), fed the first heartbeat of every region (each a new
//! record, persisted), then one more round of heartbeats (runtime only).
//! Prints the resident set size after each step.
//! `cargo bench -p mnemo-pd --bench million_regions` (`REGIONS=…` to change
//! the count). Not a criterion benchmark: it measures memory, once.

mod common;

use std::sync::Arc;
use std::time::Instant;

use mnemo_engine::RocksEngine;

/// Resident set size of this process, MiB.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    kib / 1024
}

fn main() {
    let n: u64 = std::env::var("REGIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    // On tmpfs when there is one: each new region record is a synced write,
    // and a million fsyncs would measure the disk, not PD's memory (tmpfs
    // pages are not part of the process's RSS).
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
    let engine = Arc::new(RocksEngine::open(&dir.path().join("meta")).unwrap());
    let cluster = common::cluster(engine);
    println!("pd million_regions: {n} regions, {} stores", common::STORES);
    println!("  empty cluster: RSS {} MiB", rss_mib());
    let t = Instant::now();
    common::load(&cluster, n);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "  first heartbeats (new records): {:.1} s, {:.0}/s; RSS {} MiB",
        secs,
        n as f64 / secs,
        rss_mib()
    );
    let t = Instant::now();
    for i in 0..n {
        cluster.region_heartbeat(common::heartbeat(i, n)).unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!("  steady heartbeats (no news): {:.1} s, {:.0}/s; RSS {} MiB", secs, n as f64 / secs, rss_mib());
}
