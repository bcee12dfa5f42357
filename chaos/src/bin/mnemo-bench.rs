//! `mnemo-bench`: a closed-loop load generator for the raw API.
//!
//! ```text
//! mnemo-bench --pd 127.0.0.1:2379 --op put|get --clients 32 --duration 10 \
//!             --key-size 16 --value-size 256 --keys 10000
//! ```
//!
//! `--clients` tasks share one `RawClient`; each loops for `--duration`
//! seconds, issuing the operation on a uniformly random key out of `--keys`
//! and timing it. No new operation starts after the duration, and each one is
//! bounded by `--op-timeout-ms`, so the run ends within duration + op timeout.
//! For `get` the key set is loaded first with `batch_put` (not timed).
//!
//! Output: a short table on stdout, then one JSON line with the same numbers
//! (latencies in microseconds) for scripts. Only successful operations count
//! towards ops/s and latency; failures are counted apart (undetermined writes
//! separately).

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use mnemo_chaos::report::quantile;
use mnemo_client::{Config, RawClient};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Op {
    /// `RawClient::put` of a random value.
    Put,
    /// `RawClient::get` of a loaded key.
    Get,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

#[derive(Parser, Debug)]
#[command(name = "mnemo-bench", version, about = "Load generator for Mnemosyne's raw API")]
struct Args {
    /// PD endpoints, comma separated.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    pd: Vec<String>,
    /// Operation to run.
    #[arg(long, value_enum, default_value_t = Op::Put)]
    op: Op,
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Key length in bytes (zero-padded decimal key index).
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Value length in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Pairs per batch_put while loading keys for `get`.
    #[arg(long, default_value_t = 1000)]
    load_batch: usize,
    /// Deadline of one operation in milliseconds (the client's total timeout).
    #[arg(long, default_value_t = 5000)]
    op_timeout_ms: u64,
}

/// Key `i` as `key_size` bytes: the zero-padded decimal index.
fn key(i: u64, key_size: usize) -> Vec<u8> {
    format!("{i:0key_size$}").into_bytes()
}

/// What one task saw.
#[derive(Default)]
struct TaskStats {
    /// Latency of each successful operation, microseconds.
    latencies_us: Vec<u64>,
    errors: u64,
    undetermined: u64,
}

async fn load(client: &RawClient, args: &Args) -> Result<(), String> {
    let started = Instant::now();
    let mut rng = StdRng::from_entropy();
    let mut i = 0;
    while i < args.keys {
        let end = (i + args.load_batch.max(1) as u64).min(args.keys);
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (i..end)
            .map(|k| {
                let mut v = vec![0u8; args.value_size];
                rng.fill_bytes(&mut v);
                (key(k, args.key_size), v)
            })
            .collect();
        client.batch_put(pairs).await.map_err(|e| format!("loading keys {i}..{end}: {e}"))?;
        i = end;
    }
    eprintln!("loaded {} keys in {:.2} s", args.keys, started.elapsed().as_secs_f64());
    Ok(())
}

async fn worker(
    client: RawClient,
    op: Op,
    keys: u64,
    key_size: usize,
    value_size: usize,
    until: Instant,
) -> TaskStats {
    let mut rng = StdRng::from_entropy();
    let mut value = vec![0u8; value_size];
    rng.fill_bytes(&mut value);
    let mut stats = TaskStats::default();
    while Instant::now() < until {
        let k = key(rng.gen_range(0..keys), key_size);
        let started = Instant::now();
        let result = match op {
            Op::Put => {
                // Vary the value a little so writes are not all identical.
                if let Some(b) = value.first_mut() {
                    *b = rng.gen();
                }
                client.put(k, value.clone()).await
            }
            Op::Get => client.get(k).await.map(drop),
        };
        match result {
            Ok(()) => stats.latencies_us.push(started.elapsed().as_micros() as u64),
            Err(e) if e.is_undetermined() => stats.undetermined += 1,
            Err(e) => {
                if stats.errors == 0 {
                    eprintln!("first error in a task: {e}");
                }
                stats.errors += 1;
            }
        }
    }
    stats
}

async fn run(args: Args) -> Result<(), String> {
    if args.keys == 0 || args.clients == 0 {
        return Err("--keys and --clients must be positive".into());
    }
    let digits = (args.keys - 1).to_string().len();
    if args.key_size < digits {
        return Err(format!(
            "--key-size {} is too small for {} keys (need {digits})",
            args.key_size, args.keys
        ));
    }
    let config = Config { timeout: Duration::from_millis(args.op_timeout_ms.max(1)), ..Config::default() };
    let client = RawClient::with_config(args.pd.clone(), config).await.map_err(|e| e.to_string())?;
    if args.op == Op::Get {
        load(&client, &args).await?;
    }

    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration);
    let tasks: Vec<_> = (0..args.clients)
        .map(|_| {
            tokio::spawn(worker(client.clone(), args.op, args.keys, args.key_size, args.value_size, until))
        })
        .collect();
    let mut all = TaskStats::default();
    for t in tasks {
        let s = t.await.map_err(|e| format!("task failed: {e}"))?;
        all.latencies_us.extend(s.latencies_us);
        all.errors += s.errors;
        all.undetermined += s.undetermined;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let lat = &all.latencies_us;
    let ops = lat.len() as u64;
    let ops_per_sec = ops as f64 / elapsed.max(1e-9);
    let (p50, p99, p999) = (quantile(lat, 0.50), quantile(lat, 0.99), quantile(lat, 0.999));
    let max = lat.last().copied().unwrap_or(0);
    let ms = |us: u64| us as f64 / 1000.0;

    println!(
        "{:<4} {:>7} {:>9} {:>10} {:>11} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "op",
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
    println!(
        "{:<4} {:>7} {:>9.2} {:>10} {:>11.1} {:>7} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
        args.op.name(),
        args.clients,
        elapsed,
        ops,
        ops_per_sec,
        all.errors,
        all.undetermined,
        ms(p50),
        ms(p99),
        ms(p999),
        ms(max)
    );
    let json = serde_json::json!({
        "op": args.op.name(),
        "clients": args.clients,
        "duration_s": elapsed,
        "key_size": args.key_size,
        "value_size": args.value_size,
        "keys": args.keys,
        "ops": ops,
        "ops_per_sec": ops_per_sec,
        "errors": all.errors,
        "undetermined": all.undetermined,
        "p50_us": p50,
        "p99_us": p99,
        "p999_us": p999,
        "max_us": max,
    });
    println!("{json}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_width() {
        assert_eq!(key(42, 6), b"000042".to_vec());
        assert_eq!(key(0, 1), b"0".to_vec());
    }
}
