//! `mnemo-node`: a Mnemosyne storage node.
//!
//! ```text
//! mnemo-node --pd 127.0.0.1:2379 --addr 127.0.0.1:20160 --status-addr 127.0.0.1:20180 \
//!            --data-dir ./data/n1 [--advertise-addr HOST:PORT] [--labels zone=z1,host=h1] \
//!            [--config node.toml] [--log-format text|json] [--otlp-endpoint http://HOST:4317]
//! ```
//! Flags override the config file, which overrides the defaults.
//!
//! Test-only flags for the chaos harness, **never in production** (the node
//! warns at start-up when one is on; `/status` lists them):
//! `--enable-test-controls` (the `/debug/lease-clock` and `/debug/fail`
//! endpoints) and `--unsafe-stale-reads` (any replica answers
//! `replica_read` gets). Crash points can also be armed at start with the
//! `FAILPOINTS` environment variable (see `mnemo_node::failpoints`).
//!
//! Any panic ends the process (crash points exit with code 86, other panics
//! abort).

use std::path::PathBuf;

use clap::Parser;
use mnemo_node::config::{parse_labels, NodeConfig};

#[derive(Parser, Debug)]
#[command(name = "mnemo-node", version, about = "Mnemosyne storage node")]
struct Args {
    /// PD endpoints, comma separated (host:port).
    #[arg(long, value_delimiter = ',')]
    pd: Vec<String>,
    /// gRPC listen address.
    #[arg(long)]
    addr: Option<String>,
    /// Address advertised to PD, other nodes and clients (default: --addr).
    #[arg(long)]
    advertise_addr: Option<String>,
    /// HTTP status server address (/metrics, /status, /config).
    #[arg(long)]
    status_addr: Option<String>,
    /// Status address given to PD (default: --status-addr as bound).
    #[arg(long)]
    advertise_status_addr: Option<String>,
    /// Data directory (kv engine in db/, raft logs in raft-engine/ or, with
    /// --raft-engine false, raft/).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Store labels: zone=z1,host=h1.
    #[arg(long)]
    labels: Option<String>,
    /// TOML config file (see deploy/config/node.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long)]
    log_format: Option<String>,
    /// Export traces to this OTLP/gRPC collector (http://host:4317).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Share (0 to 1) of the traces this node starts that are exported.
    #[arg(long)]
    otlp_sample_ratio: Option<f64>,
    /// Threads for gRPC and async work (`server.grpc-concurrency`; 0 = one
    /// per CPU core).
    #[arg(long)]
    grpc_concurrency: Option<usize>,
    /// Raft logs in raft-engine (true) or RocksDB (false)
    /// (`raft-engine.enable`; unset: the data dir's store, raft-engine for
    /// a new one).
    #[arg(long)]
    raft_engine: Option<bool>,
    /// Threads applying committed writes off the store loop
    /// (`raftstore.apply-pool-size`; 0 = on the store loop).
    #[arg(long)]
    apply_pool_size: Option<usize>,
    /// TEST ONLY, never in production: serve `/debug/lease-clock` on the
    /// status server, which skews the clock leader leases are measured on.
    #[arg(long)]
    enable_test_controls: bool,
    /// TEST ONLY, never in production: answer RawGet requests that set
    /// `replica_read` from any replica without leadership checks (stale reads).
    #[arg(long)]
    unsafe_stale_reads: bool,
    /// TEST ONLY, never in production: plant a known bug (repeatable):
    /// apply-local-clock, lease-ignores-transfer, ack-before-commit,
    /// skip-apply-epoch-check. The node then breaks its guarantees on purpose.
    #[arg(long)]
    plant: Vec<String>,
}

fn build_config(args: Args) -> Result<NodeConfig, String> {
    let mut cfg = match &args.config {
        Some(p) => NodeConfig::from_file(p)?,
        None => NodeConfig::default(),
    };
    if !args.pd.is_empty() {
        cfg.pd_endpoints = args.pd;
    }
    if let Some(v) = args.addr {
        cfg.addr = v;
    }
    if let Some(v) = args.advertise_addr {
        cfg.advertise_addr = v;
    }
    if let Some(v) = args.status_addr {
        cfg.status_addr = v;
    }
    if let Some(v) = args.advertise_status_addr {
        cfg.advertise_status_addr = v;
    }
    if let Some(v) = args.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = args.labels {
        cfg.labels = parse_labels(&v)?;
    }
    if let Some(v) = args.log_format {
        cfg.log_format = v;
    }
    if let Some(v) = args.otlp_endpoint {
        cfg.otlp_endpoint = v;
    }
    if let Some(v) = args.otlp_sample_ratio {
        cfg.otlp_sample_ratio = v;
    }
    if let Some(v) = args.grpc_concurrency {
        cfg.server.grpc_concurrency = v;
    }
    if let Some(v) = args.raft_engine {
        cfg.raft_engine.enable = Some(v);
    }
    if let Some(v) = args.apply_pool_size {
        cfg.raftstore.apply_pool_size = v;
    }
    cfg.test_controls.enable_test_controls = args.enable_test_controls;
    cfg.test_controls.unsafe_stale_reads = args.unsafe_stale_reads;
    cfg.test_controls.plant = args.plant;
    cfg.validate()?;
    Ok(cfg)
}

fn main() {
    let cfg = match build_config(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mnemo-node: {e}");
            std::process::exit(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if cfg.server.grpc_concurrency > 0 {
        runtime.worker_threads(cfg.server.grpc_concurrency);
    }
    match runtime.enable_all().build() {
        Ok(rt) => rt.block_on(run(cfg)),
        Err(e) => {
            eprintln!("mnemo-node: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    }
}

async fn run(cfg: NodeConfig) {
    let telemetry =
        match mnemo_telemetry::init("mnemo-node", "info,raft=warn", cfg.log_format == "json", &cfg.trace()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("mnemo-node: {e}");
                std::process::exit(2);
            }
        };
    // A panic on any thread ends the process: a store loop that died alone
    // would leave a node answering gRPC and heartbeating PD with nothing
    // behind it, and PD would never replace its replicas.
    mnemo_node::failpoints::install_panic_hook();
    // Crash points are a test control: armed only on a node that says so.
    let armed = match std::env::var_os("FAILPOINTS") {
        Some(_) if !cfg.test_controls.enable_test_controls => {
            Err("FAILPOINTS is set but --enable-test-controls is not: refusing to start".to_string())
        }
        _ => mnemo_node::failpoints::configure_from_env(),
    };
    if let Err(e) = armed {
        tracing::error!("{e}");
        std::process::exit(2);
    }
    let node = match mnemo_node::node::start(cfg).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            std::process::exit(1);
        }
    };
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    tokio::task::spawn_blocking(move || {
        node.stop();
        telemetry.shutdown();
    })
    .await
    .ok();
}
