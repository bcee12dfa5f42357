//! `mnemo-chaos`: a Jepsen-style run against a fresh local cluster.
//!
//! ```text
//! mnemo-chaos --duration 1800 --seed 7 --nemesis all,crash-point,compound --workload all
//! mnemo-chaos --duration 60 --plant ack-before-commit     # must come out invalid
//! mnemo-chaos --plant list
//! ```
//!
//! Starts PD and `--nodes` storage nodes from the binaries next to this one
//! (or in `MNEMO_BIN_DIR`), each node and PD member in its own network
//! namespace when run as root, runs the workloads under the nemesis, and writes
//! `history.jsonl`, `results.json`, `report.html` and the cluster's data
//! directory to `--out`. Exit status: 0 valid, 1 invalid, 2 unknown, 3 the
//! harness itself failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mnemo_chaos::checker::Validity;
use mnemo_chaos::nemesis::Fault;
use mnemo_chaos::run::{self, Plant, RunOptions};
use mnemo_chaos::workload::Workloads;

#[derive(Parser, Debug)]
#[command(about = "Jepsen-style chaos run: workloads under faults, history checked for linearizability")]
struct Args {
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 1800)]
    duration: u64,
    /// Seed of the fault schedule and the workloads.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// `all` (alias `mixed`: the classic faults), `compound`, `crash-point`,
    /// `everything`, `none`, or a comma list of faults and groups
    /// (`partition`, `kill`, `churn`, `partition-one`, `kill-leader`,
    /// `pause`, `clock-skew`, `delay`, ...).
    #[arg(long, default_value = "all,crash-point,compound")]
    nemesis: String,
    /// `all` or a comma list of `register`, `set`, `counter`, `tso`.
    #[arg(long, default_value = "all")]
    workload: String,
    /// Storage nodes.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// PD members (one raft group; the `pd` faults need 3).
    #[arg(long, default_value_t = 3)]
    pd_members: usize,
    /// Where PD keeps its metadata: `raft` (its members' group) or `etcd`
    /// (a three-member etcd started with the cluster, Debian's etcd-server).
    #[arg(long, default_value = "raft", value_parser = ["raft", "etcd"])]
    pd_backend: String,
    /// Concurrent register clients (set and counter get a third as many).
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Results directory (default `chaos-results/<seed>-<unix time>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// `netns` (own address per node and PD member, partitions possible;
    /// needs root) or
    /// `loopback` (partitions skipped). Default: netns when possible.
    #[arg(long)]
    net: Option<String>,
    /// DELIBERATELY UNSAFE: plant a known bug to show the checkers catch it
    /// (the run must come out invalid); `list` prints the bugs.
    #[arg(long)]
    plant: Option<String>,
    /// Half the register workers send gets and puts on BatchCommands
    /// streams (the others one call each).
    #[arg(long)]
    batch_commands: bool,
    /// Same as `--plant stale-follower-reads`.
    #[arg(long = "unsafe")]
    unsafe_mode: bool,
    /// Run without network faults when nodes cannot have namespaces (not
    /// root); without this flag such a run is refused.
    #[arg(long)]
    no_partitions: bool,
    /// Seconds the linearizability checker may search before answering unknown.
    #[arg(long, default_value_t = 300)]
    check_budget: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    if args.plant.as_deref() == Some("list") {
        for p in Plant::ALL {
            println!("{:<24} {}", p.name(), p.description());
        }
        return ExitCode::SUCCESS;
    }
    let plant = match (args.plant.as_deref(), args.unsafe_mode) {
        (Some(name), _) => match Plant::parse(name) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("error: --plant: {e}");
                return ExitCode::from(3);
            }
        },
        (None, true) => Some(Plant::StaleFollowerReads),
        (None, false) => None,
    };
    let (mut faults, workloads) = match (Fault::parse_list(&args.nemesis), Workloads::parse(&args.workload)) {
        (Ok(f), Ok(w)) => (f, w),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(3);
        }
    };
    let netns = match args.net.as_deref() {
        None => mnemo_chaos::net::available(),
        Some("netns") => true,
        Some("loopback") => false,
        Some(other) => {
            eprintln!("error: --net {other:?}: netns or loopback");
            return ExitCode::from(3);
        }
    };
    if !netns && faults.iter().any(|f| f.is_partition()) {
        if !args.no_partitions {
            eprintln!(
                "error: network faults need the nodes in network namespaces (root, ip, iptables); \
                 run as root, or pass --no-partitions to run without them"
            );
            return ExitCode::from(3);
        }
        eprintln!("warning: --no-partitions: network faults skipped");
        faults.retain(|f| !f.is_partition());
    }
    let out = args.out.unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        PathBuf::from(format!("chaos-results/{}-{}", args.seed, now.as_secs()))
    });
    let opts = RunOptions {
        duration: Duration::from_secs(args.duration),
        seed: args.seed,
        faults,
        nemesis_name: args.nemesis.clone(),
        workloads,
        nodes: args.nodes,
        pd_members: args.pd_members,
        pd_etcd: args.pd_backend == "etcd",
        clients: args.clients,
        plant,
        out_dir: out.clone(),
        netns,
        check_budget: Duration::from_secs(args.check_budget),
        batch_commands: args.batch_commands,
    };
    let outcome = match run::run(opts).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: the harness failed: {e}");
            return ExitCode::from(3);
        }
    };
    let r = &outcome.report;
    println!("operations: {}", outcome.operations);
    for (op, c) in &r.counts {
        println!("  {:<12} ok {:>7}  fail {:>6}  info {:>5}", op.as_str(), c.ok, c.fail, c.info);
    }
    for a in &r.anomalies {
        println!("anomaly: {:?}: {}", a.kind, a.message);
    }
    let kills = &outcome.nemesis.leader_kill_recovery;
    if !kills.is_empty() {
        let ms: Vec<String> =
            kills.iter().map(|k| k.map_or("none".into(), |d| d.as_millis().to_string())).collect();
        println!("leader kills → first write ok (ms): {}", ms.join(" "));
    }
    if let Some(s) = outcome.ok_share_during_minority_partitions {
        println!("ok share during minority partitions: {:.1}%", s * 100.0);
    }
    println!("cluster events: {:?}", outcome.cluster_events);
    println!("verdict: {:?}", r.validity);
    println!("results: {}/results.json, report: {}/report.html", out.display(), out.display());
    match r.validity {
        Validity::Valid => ExitCode::SUCCESS,
        Validity::Invalid => ExitCode::from(1),
        Validity::Unknown => ExitCode::from(2),
    }
}
