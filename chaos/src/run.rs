//! One chaos run, start to verdict:
//!
//! 1. start PD + N nodes (each node and PD member in its own network
//!    namespace when possible)
//!    with a fresh data directory `<out>/data`, kept with the results; the
//!    nodes run with small regions and short raft logs, so splits, log GC
//!    and snapshots to lagging followers all happen during the run;
//! 2. split the workload keys apart, so they live in several regions;
//! 3. run the workloads through the real client while the nemesis injects
//!    faults, for the run's duration;
//! 4. heal everything, wait until every region has a leader again, do the
//!    final reads (set, counters);
//! 5. compare the replicas: every two replicas of a region that applied the
//!    same log index must hold the same data (`/debug/region-hashes`);
//! 6. check the history and write `<out>/history.jsonl`, `results.json` and
//!    `report.html`.
//!
//! A run can plant a known bug ([`Plant`]) to prove the checkers catch it:
//! `stale-follower-reads` starts the nodes with `--unsafe-stale-reads` and
//! sends each get first to a random replica with `replica_read`; the others
//! start the nodes with `--plant NAME`. Such a run must come out invalid.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mnemo_client::{Config, RawClient};
use serde_json::json;

use crate::checker::{self, Anomaly, AnomalyKind, Report, Validity};
use crate::cluster::{Cluster, ClusterConfig};
use crate::history::{History, Key, OpName, Outcome};
use crate::nemesis::{Fault, Nemesis, NemesisLog};
use crate::report::{self, RunInfo};
use crate::workload::{self, Shared, Workloads};

/// A known bug a run can plant, to show the harness catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    /// Followers answer reads from their own state (`--unsafe-stale-reads`).
    StaleFollowerReads,
    /// Apply judges TTL expiry by the local clock.
    ApplyLocalClock,
    /// The leader lease survives leader transfers.
    LeaseIgnoresTransfer,
    /// Writes are acknowledged when proposed, before commit.
    AckBeforeCommit,
    /// Apply skips the epoch and key-range check.
    SkipApplyEpochCheck,
}

impl Plant {
    /// Every plantable bug.
    pub const ALL: [Plant; 5] = [
        Plant::StaleFollowerReads,
        Plant::ApplyLocalClock,
        Plant::LeaseIgnoresTransfer,
        Plant::AckBeforeCommit,
        Plant::SkipApplyEpochCheck,
    ];

    /// The name (`--plant NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Plant::StaleFollowerReads => "stale-follower-reads",
            Plant::ApplyLocalClock => "apply-local-clock",
            Plant::LeaseIgnoresTransfer => "lease-ignores-transfer",
            Plant::AckBeforeCommit => "ack-before-commit",
            Plant::SkipApplyEpochCheck => "skip-apply-epoch-check",
        }
    }

    /// What it breaks.
    pub fn description(self) -> &'static str {
        match self {
            Plant::StaleFollowerReads => "any replica answers gets from its own state (stale reads)",
            Plant::ApplyLocalClock => "apply judges TTL expiry by the local clock (replicas diverge)",
            Plant::LeaseIgnoresTransfer => "the lease stays valid across leader transfers (stale reads)",
            Plant::AckBeforeCommit => "writes acknowledged when proposed (acknowledged writes lost)",
            Plant::SkipApplyEpochCheck => "apply skips the epoch check (writes land in the wrong region)",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Result<Plant, String> {
        Plant::ALL.iter().copied().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Plant::ALL.iter().map(|p| p.name()).collect();
            format!("unknown bug {s:?}: {}", names.join(", "))
        })
    }
}

/// What a run does.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// How long the workloads run under faults.
    pub duration: Duration,
    /// Seeds the nemesis schedule and the workloads' choices.
    pub seed: u64,
    /// Faults the nemesis picks from (empty: none).
    pub faults: Vec<Fault>,
    /// `--nemesis` as given (for the report).
    pub nemesis_name: String,
    /// Which workloads run.
    pub workloads: Workloads,
    /// Storage nodes.
    pub nodes: usize,
    /// PD members (a raft group; the PD faults need three).
    pub pd_members: usize,
    /// PD's metadata in a three-member etcd started with the cluster
    /// (`--backend etcd`) instead of the PD members' raft group.
    pub pd_etcd: bool,
    /// Concurrent register clients (set and counter get a third each, ≥ 1).
    pub clients: usize,
    /// A bug planted on purpose (the run must come out invalid).
    pub plant: Option<Plant>,
    /// Results directory (created; the cluster's data goes to `data/`).
    pub out_dir: PathBuf,
    /// Nodes and PD members in network namespaces (needed for partitions;
    /// needs root).
    pub netns: bool,
    /// Time budget of the linearizability checker.
    pub check_budget: Duration,
    /// Odd-numbered register workers send their gets and puts on
    /// `BatchCommands` streams (the client's `batch_commands`), the others
    /// one call each: both paths in one checked history.
    pub batch_commands: bool,
}

/// What a run found.
pub struct RunOutcome {
    /// The checkers' verdict.
    pub report: Report,
    /// Operations in the history.
    pub operations: usize,
    /// Fault windows and leader-kill recoveries.
    pub nemesis: NemesisLog,
    /// Share of operations that succeeded among those invoked while a
    /// minority partition (one node, the leaders' node, or a minority half)
    /// was in place: the clients reach every node, so this is what the
    /// majority side served (None: no such partition).
    pub ok_share_during_minority_partitions: Option<f64>,
    /// `ok` operations per (operation kind, key) — the workloads' coverage.
    pub ok_per_key: BTreeMap<(OpName, Key), u64>,
    /// What happened in the cluster (node counters summed, crash points fired).
    pub cluster_events: BTreeMap<String, u64>,
}

/// Node settings for chaos runs: regions split after ~500 keys, so the set
/// workload's range keeps splitting while the run goes on; quick PD reports;
/// raft logs cut short (a follower that misses ~30 entries needs a snapshot).
const CHAOS_NODE_TOML: &str = "[raftstore]\npd-heartbeat-tick-interval = \"1s\"\n\
pd-store-heartbeat-tick-interval = \"1s\"\nraft-log-gc-tick-interval = \"1s\"\n\
raft-log-gc-threshold = 10\nraft-log-gc-count-limit = 30\n\
[coprocessor]\nregion-split-size = \"64KiB\"\nregion-split-keys = 500\n\
split-region-check-tick-interval = \"1s\"\n";

/// PD settings of a chaos run: a fast PD raft group, so PD faults heal
/// (elections) within a fault window.
const CHAOS_PD_TOML: &str = "tick-interval = \"100ms\"\nelection-interval = \"1s\"\n";

/// Runs one chaos run. Errors are about the harness (cluster would not
/// start, results not writable), not about the verdict.
pub async fn run(opts: RunOptions) -> Result<RunOutcome, String> {
    // One run, one fresh data directory: never start on an earlier run's data.
    if opts.out_dir.join("data").exists() {
        return Err(format!("{} already holds a run; choose another --out", opts.out_dir.display()));
    }
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| format!("{}: {e}", opts.out_dir.display()))?;
    let mut node_args = vec!["--enable-test-controls".to_string()];
    match opts.plant {
        Some(Plant::StaleFollowerReads) => node_args.push("--unsafe-stale-reads".into()),
        Some(p) => node_args.extend(["--plant".to_string(), p.name().to_string()]),
        None => {}
    }
    let cfg = ClusterConfig {
        nodes: opts.nodes,
        node_toml: CHAOS_NODE_TOML.into(),
        pd_members: opts.pd_members,
        pd_etcd: opts.pd_etcd,
        pd_toml: CHAOS_PD_TOML.into(),
        node_args,
        netns: opts.netns,
        root: Some(opts.out_dir.join("data")),
        ..Default::default()
    };
    let cluster = tokio::task::spawn_blocking(move || {
        let cluster = Cluster::start(cfg);
        cluster.wait_replicated(3, Duration::from_secs(60));
        split_workload_keys(&cluster);
        cluster
    })
    .await
    .map_err(|e| format!("cluster start failed: {e}"))?;

    // Short per-call deadlines keep operations (and so the history) moving through faults.
    let stale_reads = opts.plant == Some(Plant::StaleFollowerReads);
    let config = Config {
        timeout: Duration::from_secs(3),
        rpc_timeout: Duration::from_secs(1),
        replica_read: stale_reads,
        batch_commands: false,
    };
    let endpoints = cluster.pd_endpoints();
    let probe = RawClient::with_config(endpoints.clone(), Config { replica_read: false, ..config.clone() })
        .await
        .map_err(|e| e.to_string())?;
    // The final reads may scan hundreds of regions: a long deadline.
    let final_config = Config { timeout: Duration::from_secs(60), replica_read: false, ..config.clone() };
    let final_client =
        RawClient::with_config(endpoints.clone(), final_config).await.map_err(|e| e.to_string())?;
    let recorder = crate::history::Recorder::new();
    let shared = Shared {
        endpoints,
        config,
        recorder: recorder.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        next_element: Arc::new(AtomicU64::new(0)),
        started: Instant::now(),
    };
    let w = opts.workloads;
    let mut workers = Vec::new();
    let side = (opts.clients / 3).max(1);
    for i in 0..opts.clients {
        if w.register {
            let seed = worker_seed(opts.seed, i);
            let mut s = shared.clone();
            s.config.batch_commands = opts.batch_commands && i % 2 == 1;
            workers.push(tokio::spawn(workload::register_worker(s, i as u64, seed)));
        }
    }
    for i in 0..side {
        if w.set {
            workers.push(tokio::spawn(workload::set_worker(shared.clone(), i == 0)));
        }
        if w.counter {
            let seed = worker_seed(opts.seed, 500 + i);
            workers.push(tokio::spawn(workload::counter_worker(shared.clone(), seed)));
        }
    }
    let tso_workers: Vec<_> = (0..if w.tso { workload::TSO_WORKERS } else { 0 })
        .map(|_| tokio::spawn(workload::tso_worker(shared.clone())))
        .collect();

    let nemesis_stop = Arc::new(AtomicBool::new(false));
    let nemesis = Nemesis::new(
        cluster,
        opts.faults.clone(),
        opts.seed,
        recorder.clone(),
        workload::interesting_keys(w),
        shared.started,
        Arc::new(probe),
    );
    let stop = nemesis_stop.clone();
    let mut nemesis = tokio::task::spawn_blocking(move || nemesis.run(stop));
    // The nemesis returns early only if it failed (it owns the cluster).
    let early = tokio::select! {
        _ = tokio::time::sleep(opts.duration) => None,
        r = &mut nemesis => Some(r),
    };
    shared.stop.store(true, Ordering::Relaxed);
    nemesis_stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.map_err(|e| format!("worker panicked: {e}"))?;
    }
    let mut timestamps = Vec::new();
    for t in tso_workers {
        timestamps.push(t.await.map_err(|e| format!("TSO worker panicked: {e}"))?);
    }
    let (cluster, log) = match early {
        Some(r) => r,
        None => nemesis.await,
    }
    .map_err(|e| format!("nemesis failed: {e}"))?;

    // Healed: wait for leaders again, then the final reads.
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_replicated(3, Duration::from_secs(60));
        cluster
    })
    .await
    .map_err(|e| format!("cluster did not recover after the heal: {e}"))?;
    let missing =
        workload::final_reads(&final_client, &shared, w, Instant::now() + Duration::from_secs(120)).await;
    let (mut cluster, replicas) = tokio::task::spawn_blocking(move || {
        let replicas = crate::replicas::compare(&cluster, Duration::from_secs(30));
        (cluster, replicas)
    })
    .await
    .map_err(|e| format!("replica comparison failed: {e}"))?;

    let history = recorder.history();
    history.save(&opts.out_dir.join("history.jsonl")).map_err(|e| e.to_string())?;
    let budget = opts.check_budget;
    let h = history.clone();
    let mut report = tokio::task::spawn_blocking(move || checker::check(&h, budget))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("history is malformed: {e}"))?;
    if w.tso {
        let tso = checker::tso::check(&timestamps);
        report.validity = report.validity.and(tso.validity);
        report.checkers.insert("tso".into(), tso.validity);
        report.anomalies.extend(tso.anomalies);
        report.details.insert("tso".into(), tso.details);
    }
    report.validity = report.validity.and(replicas.validity);
    report.checkers.insert("replicas".into(), replicas.validity);
    report.anomalies.extend(replicas.anomalies.clone());
    report.details.insert("replicas".into(), replicas.details.clone());
    // Anything that died after the nemesis stopped watching is a crash too.
    let mut crashes = log.crashes.clone();
    if let Some(status) = cluster.reap_crashed_pd() {
        crashes.push(format!("PD exited on its own ({status}) after the heal; see pd1.log"));
    }
    for (v, status) in cluster.reap_crashed_nodes() {
        crashes.push(format!("n{0} exited on its own ({status}) after the heal; see n{0}.log", v + 1));
    }
    for crash in &crashes {
        report.validity = report.validity.and(Validity::Invalid);
        report.anomalies.push(Anomaly {
            kind: AnomalyKind::Crash,
            key: None,
            message: crash.clone(),
            ops: Vec::new(),
        });
    }
    // What was never read at the end was never checked: not valid.
    for what in missing {
        report.validity = report.validity.and(Validity::Unknown);
        report.anomalies.push(Anomaly {
            kind: AnomalyKind::Unknown,
            key: None,
            message: format!("{what} never succeeded"),
            ops: Vec::new(),
        });
    }
    let ok_share = ok_share_during_minority_partitions(&history, &log);
    let mut cluster_events: BTreeMap<String, u64> =
        log.events.totals().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    cluster_events.insert("crash_points_fired".into(), log.crash_points_fired.values().sum());
    let ok_per_key = ok_per_key(&history);
    let info = RunInfo {
        seed: opts.seed,
        duration_s: opts.duration.as_secs(),
        nemesis: opts.nemesis_name.clone(),
        workload: w.names(),
        nodes: opts.nodes,
        unsafe_mode: opts.plant.is_some(),
        data_dir: cluster.root().display().to_string(),
        extra: json!({
            "planted_bug": opts.plant.map(|p| p.name()),
            "faults": opts.faults.iter().map(|f| f.name()).collect::<Vec<_>>(),
            "fault_tally": log.tally,
            "cluster_events": cluster_events,
            "crash_points_fired": log.crash_points_fired,
            "network": if cluster.can_partition() { "namespaces" } else { "loopback (no partitions)" },
            "leader_kill_recovery_ms": recovery_summary(&log),
            "ok_share_during_minority_partitions": ok_share,
        }),
    };
    report::write(&opts.out_dir, &info, &history, &report, &log.windows).map_err(|e| e.to_string())?;
    drop(cluster);
    let operations = history.operations().map(|o| o.len()).unwrap_or(0);
    Ok(RunOutcome {
        report,
        operations,
        nemesis: log,
        ok_share_during_minority_partitions: ok_share,
        ok_per_key,
        cluster_events,
    })
}

/// `ok` operations per (kind, key), for keyed operations.
fn ok_per_key(history: &History) -> BTreeMap<(OpName, Key), u64> {
    let mut out = BTreeMap::new();
    for o in history.operations().unwrap_or_default() {
        if let (Some(key), Outcome::Ok(_)) = (o.op.key(), &o.outcome) {
            *out.entry((o.op.name(), key)).or_default() += 1;
        }
    }
    out
}

/// Splits the workload keys into their own regions: asks PD (again, while
/// some split is missing: a split can be lost to a leader change) until
/// every split key starts a region.
fn split_workload_keys(cluster: &Cluster) {
    let keys = workload::split_keys();
    let mut asked: Option<Instant> = None;
    crate::cluster::wait_for("the workload keys' regions", Duration::from_secs(60), || {
        let starts = cluster.region_starts();
        let missing: Vec<Vec<u8>> = keys.iter().filter(|k| !starts.contains(*k)).cloned().collect();
        if missing.is_empty() {
            return Some(());
        }
        if asked.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
            let _ = cluster.split_at(&missing);
            asked = Some(Instant::now());
        }
        None
    });
}

/// The seed of worker `i` of a run seeded `seed`.
fn worker_seed(seed: u64, i: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(i as u64)
}

/// p50 / p99 / max of the leader-kill recoveries, in ms.
fn recovery_summary(log: &NemesisLog) -> serde_json::Value {
    let mut ms: Vec<u64> = log.leader_kill_recovery.iter().flatten().map(|d| d.as_millis() as u64).collect();
    ms.sort_unstable();
    let pick = |q: f64| (!ms.is_empty()).then(|| report::quantile(&ms, q));
    json!({
        "kills": log.leader_kill_recovery.len(),
        "not_recovered_within_20s": log.leader_kill_recovery.iter().filter(|r| r.is_none()).count(),
        "p50": pick(0.5), "p99": pick(0.99), "max": ms.last(),
        "all": ms,
    })
}

/// Share of `ok` among operations invoked inside minority-partition windows.
fn ok_share_during_minority_partitions(history: &History, log: &NemesisLog) -> Option<f64> {
    let windows: Vec<(u64, u64)> = log
        .windows
        .iter()
        .zip(&log.faults)
        .filter(|(_, f)| f.is_minority_partition())
        .map(|(w, _)| (w.start_ns, w.end_ns))
        .collect();
    let ops = history.operations().ok()?;
    let inside: Vec<_> =
        ops.iter().filter(|o| windows.iter().any(|(s, e)| o.call_ns >= *s && o.call_ns < *e)).collect();
    if inside.is_empty() {
        return None;
    }
    let ok = inside.iter().filter(|o| matches!(o.outcome, Outcome::Ok(_))).count();
    Some(ok as f64 / inside.len() as f64)
}
