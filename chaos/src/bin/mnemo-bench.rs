//! `mnemo-bench`: a closed-loop load generator for Mnemosyne, etcd, and
//! RocksDB in process (the ceiling), with the same workloads on each.
//!
//! ```text
//! mnemo-bench --pd 127.0.0.1:2379 --workload put --clients 64 --duration 10
//! mnemo-bench --target etcd --etcd-endpoints http://127.0.0.1:2379 --workload ycsb-b --distribution zipfian
//! mnemo-bench --target rocksdb --rocksdb-dir /tmp/ceiling --workload put
//! ```
//!
//! See [`mnemo_chaos::bench`] for the workloads and how a run goes. Output:
//! a table on stdout (a header, the run's totals, then one line per
//! operation kind when the workload mixes several), then one JSON line
//! with everything (latencies in microseconds); `--json PATH` writes the
//! same JSON to a file. Only successful operations count towards ops/s and
//! latency; failures are counted apart, writes of unknown outcome separately.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mnemo_chaos::bench::{self, BenchOptions, BenchResult, Distribution, KindSummary, Target, Workload};
use mnemo_client::Config;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    /// A Mnemosyne cluster, through `mnemo-client` (`--pd`).
    Mnemosyne,
    /// An etcd cluster, through `etcd-client` (`--etcd-endpoints`).
    Etcd,
    /// RocksDB in this process, every write fsynced (`--rocksdb-dir`).
    Rocksdb,
}

#[derive(Parser, Debug)]
#[command(name = "mnemo-bench", version, about = "Load generator: Mnemosyne, etcd, RocksDB")]
struct Args {
    /// What to load.
    #[arg(long, value_enum, default_value_t = TargetKind::Mnemosyne)]
    target: TargetKind,
    /// PD endpoints, comma separated (target mnemosyne).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    pd: Vec<String>,
    /// etcd client URLs, comma separated (target etcd).
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Database directory (target rocksdb); default a temporary one,
    /// removed at the end.
    #[arg(long)]
    rocksdb_dir: Option<PathBuf>,
    /// Workload to run.
    #[arg(long, alias = "op", value_enum, default_value_t = Workload::Put)]
    workload: Workload,
    /// How keys are chosen.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    distribution: Distribution,
    /// Concurrent clients (closed loop: each waits for its answer).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Operations in all; ends the run before `--duration` if set.
    #[arg(long)]
    ops: Option<u64>,
    /// Seconds of warm-up before measuring (numbers discarded).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Key length in bytes (zero-padded decimal key index).
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Value length in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Keys per batch_get.
    #[arg(long, default_value_t = 10)]
    batch_size: usize,
    /// Pairs per scan.
    #[arg(long, default_value_t = 10)]
    scan_length: usize,
    /// Pairs per request while loading the key set.
    #[arg(long, default_value_t = 1000)]
    load_batch: usize,
    /// Skip loading the key set (it is there from an earlier run).
    #[arg(long)]
    no_load: bool,
    /// Deadline of one operation in milliseconds (Mnemosyne's total timeout).
    #[arg(long, default_value_t = 5000)]
    op_timeout_ms: u64,
    /// Send gets and puts on one BatchCommands stream per node (target
    /// mnemosyne; the client's `batch_commands`).
    #[arg(long)]
    batch_commands: bool,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
    /// Issue this many operations per second over all clients, on a fixed
    /// schedule (latency counted from the scheduled time); default: closed
    /// loop, as fast as the target answers.
    #[arg(long)]
    rate: Option<f64>,
}

fn print_line(name: &str, clients: usize, elapsed: f64, s: &KindSummary) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "{:<9} {:>7} {:>9.2} {:>10} {:>11.1} {:>7} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
        name,
        clients,
        elapsed,
        s.ops,
        s.ops_per_sec,
        s.errors,
        s.undetermined,
        ms(s.p50_us),
        ms(s.p99_us),
        ms(s.p999_us),
        ms(s.max_us)
    );
}

fn print_table(r: &BenchResult) {
    println!(
        "{:<9} {:>7} {:>9} {:>10} {:>11} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "workload",
        "clients",
        "elapsed_s",
        "ops",
        "ops/s",
        "errors",
        "undet",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "max_ms"
    );
    print_line(r.options.workload.name(), r.options.clients, r.elapsed_s, &r.total);
    if r.per_kind.len() > 1 {
        for (kind, s) in &r.per_kind {
            print_line(&format!("  {kind}"), r.options.clients, r.elapsed_s, s);
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let opts = BenchOptions {
        workload: args.workload,
        distribution: args.distribution,
        keys: args.keys,
        key_size: args.key_size,
        value_size: args.value_size,
        clients: args.clients,
        duration: Duration::from_secs(args.duration),
        ops: args.ops,
        warmup: Duration::from_secs(args.warmup),
        batch_size: args.batch_size,
        scan_length: args.scan_length,
        load_batch: args.load_batch,
        progress: !args.quiet,
        rate: args.rate,
    };
    opts.validate()?;
    // A temporary RocksDB directory lives until the run is over.
    let mut _tmp = None;
    let (target, name): (Arc<dyn Target>, &str) = match args.target {
        TargetKind::Mnemosyne => {
            let config = Config {
                timeout: Duration::from_millis(args.op_timeout_ms.max(1)),
                batch_commands: args.batch_commands,
                ..Config::default()
            };
            (Arc::new(bench::Mnemosyne::connect(args.pd.clone(), config).await?), "mnemosyne")
        }
        TargetKind::Etcd => (Arc::new(bench::Etcd::connect(args.etcd_endpoints.clone()).await?), "etcd"),
        TargetKind::Rocksdb => {
            let dir = match &args.rocksdb_dir {
                Some(d) => d.clone(),
                None => {
                    let t = tempfile::Builder::new()
                        .prefix("mnemo-bench-rocksdb-")
                        .tempdir()
                        .map_err(|e| e.to_string())?;
                    let p = t.path().to_path_buf();
                    _tmp = Some(t);
                    p
                }
            };
            (Arc::new(bench::Rocks::open(&dir)?), "rocksdb")
        }
    };
    let result = bench::run(target, name, &opts, !args.no_load).await?;
    print_table(&result);
    let json = serde_json::to_string(&result).map_err(|e| e.to_string())?;
    println!("{json}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
