//! A short Jepsen-style run: a register workload through the real client
//! while nodes are killed (SIGKILL), restarted and paused (SIGSTOP/SIGCONT),
//! then the recorded history is checked for linearizability per key.
//! The full harness (network partitions, more nemeses, reports) is issue 4.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mnemo_chaos::checker::{self, Validity};
use mnemo_chaos::cluster::{Cluster, ClusterConfig};
use mnemo_chaos::history::{Key, Op, Output, Recorder};
use mnemo_client::{Config, Error, RawClient};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEYS: u64 = 5;

fn key_bytes(k: Key) -> Vec<u8> {
    format!("register-{}", k.0).into_bytes()
}

fn value_of(bytes: Option<Vec<u8>>) -> Option<u64> {
    bytes.map(|b| String::from_utf8_lossy(&b).parse().expect("registers hold numbers"))
}

/// One client process: random reads, writes and CASes until `stop`.
async fn worker(client: Arc<RawClient>, recorder: Recorder, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = recorder.process();
    while !stop.load(Ordering::Relaxed) {
        let key = Key(rng.gen_range(0..KEYS));
        let op = match rng.gen_range(0..3) {
            0 => Op::Read { key },
            1 => Op::Write { key, value: rng.gen_range(0..5) },
            _ => Op::Cas {
                key,
                from: Some(rng.gen_range(0..5)).filter(|_| rng.gen_bool(0.8)),
                to: rng.gen_range(0..5),
            },
        };
        let pending = recorder.invoke(process, op.clone());
        process = match op {
            Op::Read { key } => match client.get(key_bytes(key)).await {
                Ok(v) => pending.ok(Output::Read(value_of(v))),
                // A failed read changed nothing.
                Err(_) => pending.fail(),
            },
            Op::Write { key, value } => {
                match client.put(key_bytes(key), value.to_string().into_bytes()).await {
                    Ok(()) => pending.ok(Output::Done),
                    Err(e) if definitely_not_applied(&e) => pending.fail(),
                    Err(_) => pending.info(),
                }
            }
            Op::Cas { key, from, to } => {
                let expect = from.map(|f| f.to_string().into_bytes());
                match client.compare_and_swap(key_bytes(key), expect, to.to_string().into_bytes()).await {
                    Ok((_, true)) => pending.ok(Output::Done),
                    Ok((_, false)) => pending.fail(),
                    Err(e) if definitely_not_applied(&e) => pending.fail(),
                    Err(_) => pending.info(),
                }
            }
            _ => unreachable!("register workload"),
        };
    }
}

/// Errors the client reports only when a write was never applied.
fn definitely_not_applied(e: &Error) -> bool {
    matches!(e, Error::DeadlineExceeded { .. } | Error::InvalidArgument(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_stays_linearizable_under_kills_and_pauses() {
    // `make chaos` sets these; `make test` runs the short default.
    let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let duration: u64 = std::env::var("CHAOS_DURATION").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let mut cluster = Cluster::start(ClusterConfig::small_regions(3));
    cluster.wait_replicated(3, Duration::from_secs(60));
    // Short per-call deadlines keep operations (and so the history) moving through faults.
    let config = Config { timeout: Duration::from_secs(3), rpc_timeout: Duration::from_secs(1) };
    let client = Arc::new(RawClient::with_config(vec![cluster.pd_endpoint()], config).await.unwrap());

    let recorder = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|i| tokio::spawn(worker(client.clone(), recorder.clone(), seed * 100 + i, stop.clone())))
        .collect();

    // Nemesis: every ~1.5 s kill -9 and restart, or pause and resume, a random node.
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(duration) {
        let victim = rng.gen_range(0..cluster.node_count());
        if rng.gen_bool(0.5) {
            cluster.kill_node(victim);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
            cluster.restart_node(victim);
        } else {
            cluster.pause_node(victim);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
            cluster.resume_node(victim);
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let history = recorder.history();
    let path = cluster.root().join("history.jsonl");
    history.save(&path).unwrap();
    let report = checker::check(&history, Duration::from_secs(30 + duration)).unwrap();
    eprintln!("chaos seed {seed}: {}", report.to_json());
    assert_eq!(
        report.validity,
        Validity::Valid,
        "history {} is not linearizable: {:?}",
        path.display(),
        report.anomalies
    );
    let ok_ops: u64 = report.counts.values().map(|c| c.ok).sum();
    assert!(ok_ops > 100, "too few successful operations ({ok_ops}) to mean anything");
}
