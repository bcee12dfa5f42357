//! `mnemo-bench`'s load generator: closed-loop clients running one
//! workload against one [`Target`] (Mnemosyne, etcd, or RocksDB in process),
//! with HDR latency histograms per operation kind.
//!
//! A run: load the key set (`keys` keys, value `value_for(i)`) unless told
//! not to; run the workload for `warmup` and throw those numbers away; run
//! it again for `duration` (or until `ops` operations), printing a progress
//! line each second; summarise. Each client is a task looping: pick an
//! operation from the workload's mix, pick keys from the distribution, issue
//! the call, record its latency (successes only; failures are counted apart,
//! writes of unknown outcome separately).
//!
//! Workloads (YCSB's core mixes where they have a name):
//!
//! | workload | operations |
//! |----------|------------|
//! | `put` | 100% put of a random value |
//! | `get` | 100% get |
//! | `batch_get` | 100% read of `batch_size` keys in one request |
//! | `scan` | 100% scan of `scan_length` pairs from a key (a bounded range) |
//! | `cas` | 100% compare-and-swap expecting the loaded value and writing it back |
//! | `ycsb-a` | 50% get, 50% put (update heavy) |
//! | `ycsb-b` | 95% get, 5% put (read mostly) |
//! | `ycsb-c` | 100% get (read only) |
//! | `ycsb-e` | 95% scan, 5% insert of a new key (short ranges) |
//!
//! Keys are the zero-padded decimal index, `key_size` bytes, chosen
//! uniformly or from YCSB's scrambled zipfian (θ = 0.99: a few keys hot,
//! spread over the key space rather than clustered at its start).

pub mod target;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

pub use target::{Etcd, Mnemosyne, OpError, Rocks, Target};

/// What the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Put,
    Get,
    #[value(name = "batch_get")]
    #[serde(rename = "batch_get")]
    BatchGet,
    Scan,
    Cas,
    YcsbA,
    YcsbB,
    YcsbC,
    YcsbE,
}

/// One kind of operation, as histograms are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Get,
    Put,
    BatchGet,
    Scan,
    Cas,
    Insert,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::BatchGet => "batch_get",
            OpKind::Scan => "scan",
            OpKind::Cas => "cas",
            OpKind::Insert => "insert",
        }
    }
}

impl Workload {
    /// The operation mix, as (kind, percent) summing to 100.
    pub fn mix(self) -> &'static [(OpKind, u32)] {
        match self {
            Workload::Put => &[(OpKind::Put, 100)],
            Workload::Get | Workload::YcsbC => &[(OpKind::Get, 100)],
            Workload::BatchGet => &[(OpKind::BatchGet, 100)],
            Workload::Scan => &[(OpKind::Scan, 100)],
            Workload::Cas => &[(OpKind::Cas, 100)],
            Workload::YcsbA => &[(OpKind::Get, 50), (OpKind::Put, 50)],
            Workload::YcsbB => &[(OpKind::Get, 95), (OpKind::Put, 5)],
            Workload::YcsbE => &[(OpKind::Scan, 95), (OpKind::Insert, 5)],
        }
    }

    /// True if the workload reads what the load phase wrote.
    pub fn reads(self) -> bool {
        self != Workload::Put
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::BatchGet => "batch_get",
            Workload::Scan => "scan",
            Workload::Cas => "cas",
            Workload::YcsbA => "ycsb-a",
            Workload::YcsbB => "ycsb-b",
            Workload::YcsbC => "ycsb-c",
            Workload::YcsbE => "ycsb-e",
        }
    }
}

/// How keys are picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    Uniform,
    Zipfian,
}

/// YCSB's zipfian constant.
const ZIPF_THETA: f64 = 0.99;

/// Picks key indexes in `[0, n)`.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform {
        n: u64,
    },
    /// Gray et al.'s zipfian generator (as YCSB's), its rank scrambled by
    /// a hash so the hot keys are spread over the key space.
    Zipfian {
        n: u64,
        zetan: f64,
        alpha: f64,
        eta: f64,
        half_pow_theta: f64,
    },
}

impl KeyChooser {
    pub fn new(distribution: Distribution, n: u64) -> Self {
        assert!(n > 0, "no keys to choose from");
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform { n },
            Distribution::Zipfian => {
                let zeta = |m: u64| (1..=m).map(|i| 1.0 / (i as f64).powf(ZIPF_THETA)).sum::<f64>();
                let (zetan, zeta2) = (zeta(n), zeta(2.min(n)));
                let eta = if n > 2 {
                    (1.0 - (2.0 / n as f64).powf(1.0 - ZIPF_THETA)) / (1.0 - zeta2 / zetan)
                } else {
                    1.0
                };
                KeyChooser::Zipfian {
                    n,
                    zetan,
                    alpha: 1.0 / (1.0 - ZIPF_THETA),
                    eta,
                    half_pow_theta: 0.5f64.powf(ZIPF_THETA),
                }
            }
        }
    }

    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match *self {
            KeyChooser::Uniform { n } => rng.gen_range(0..n),
            KeyChooser::Zipfian { n, zetan, alpha, eta, half_pow_theta } => {
                let u: f64 = rng.gen();
                let uz = u * zetan;
                let rank = if uz < 1.0 {
                    0
                } else if uz < 1.0 + half_pow_theta {
                    1
                } else {
                    ((n as f64) * (eta * u - eta + 1.0).powf(alpha)) as u64
                };
                fnv1a(rank.min(n - 1)) % n
            }
        }
    }
}

/// FNV-1a of the 8 bytes of `x` (YCSB scrambles zipfian ranks with FNV).
fn fnv1a(x: u64) -> u64 {
    x.to_le_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Key `i` as `size` bytes: the zero-padded decimal index.
pub fn key(i: u64, size: usize) -> Vec<u8> {
    format!("{i:0size$}").into_bytes()
}

/// The value the load phase writes for key `i` (what `cas` expects).
pub fn value_for(i: u64, size: usize) -> Vec<u8> {
    let seed = i.to_le_bytes();
    (0..size).map(|j| seed[j % 8] ^ (j as u8).wrapping_mul(31)).collect()
}

/// Settings of one run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchOptions {
    pub workload: Workload,
    pub distribution: Distribution,
    /// Keys loaded and chosen from.
    pub keys: u64,
    pub key_size: usize,
    pub value_size: usize,
    /// Concurrent closed-loop clients.
    pub clients: usize,
    /// Measured time (unless `ops` ends the run first).
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// Operations to run in all (split over the clients), if set.
    pub ops: Option<u64>,
    /// Time run before measuring, its numbers discarded.
    #[serde(serialize_with = "seconds")]
    pub warmup: Duration,
    /// Keys per `batch_get`.
    pub batch_size: usize,
    /// Pairs per `scan`.
    pub scan_length: usize,
    /// Pairs per request while loading.
    pub load_batch: usize,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// Target rate in operations per second over all clients (`None`:
    /// closed loop, as fast as answers come). Each client issues its share
    /// on a fixed schedule, and an operation's latency counts from when the
    /// schedule wanted it issued, so a server that falls behind shows the
    /// wait (no coordinated omission).
    pub rate: Option<f64>,
}

/// A duration as (fractional) seconds in JSON.
fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl BenchOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.keys == 0 || self.clients == 0 || self.batch_size == 0 || self.scan_length == 0 {
            return Err("--keys, --clients, --batch-size and --scan-length must be positive".into());
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err("--rate must be a positive number of operations per second".into());
        }
        // Inserts of ycsb-e go past the loaded keys: leave room for them.
        let digits = (self.keys * 2).to_string().len();
        if self.key_size < digits {
            return Err(format!(
                "--key-size {} is too small for {} keys (need {digits})",
                self.key_size, self.keys
            ));
        }
        Ok(())
    }
}

/// Latencies and counts of one operation kind.
#[derive(Clone, Debug, Serialize)]
pub struct KindSummary {
    pub ops: u64,
    pub ops_per_sec: f64,
    pub errors: u64,
    pub undetermined: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// What a run measured: all kinds together, then each.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub target: String,
    pub options: BenchOptions,
    pub elapsed_s: f64,
    pub total: KindSummary,
    pub per_kind: BTreeMap<String, KindSummary>,
}

/// Histograms and failure counts of one client (merged at the end).
struct Tally {
    hist: BTreeMap<OpKind, Histogram<u64>>,
    errors: BTreeMap<OpKind, u64>,
    undetermined: BTreeMap<OpKind, u64>,
    first_error: Option<String>,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Tally {
    fn new() -> Self {
        Tally {
            hist: BTreeMap::new(),
            errors: BTreeMap::new(),
            undetermined: BTreeMap::new(),
            first_error: None,
        }
    }

    fn merge(&mut self, other: Tally) {
        for (k, h) in other.hist {
            self.hist.entry(k).or_insert_with(new_histogram).add(&h).expect("same bounds");
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for (k, n) in other.undetermined {
            *self.undetermined.entry(k).or_default() += n;
        }
        self.first_error = self.first_error.take().or(other.first_error);
    }
}

fn summarize(hist: &Histogram<u64>, errors: u64, undetermined: u64, elapsed: f64) -> KindSummary {
    let ops = hist.len();
    KindSummary {
        ops,
        ops_per_sec: ops as f64 / elapsed.max(1e-9),
        errors,
        undetermined,
        p50_us: if ops == 0 { 0 } else { hist.value_at_quantile(0.50) },
        p99_us: if ops == 0 { 0 } else { hist.value_at_quantile(0.99) },
        p999_us: if ops == 0 { 0 } else { hist.value_at_quantile(0.999) },
        max_us: hist.max(),
        mean_us: hist.mean(),
    }
}

/// Writes the key set: `keys` keys with [`value_for`] values, `load_batch`
/// pairs per request, `clients` requests at a time.
pub async fn load(target: Arc<dyn Target>, opts: &BenchOptions) -> Result<(), String> {
    let started = Instant::now();
    let batch = opts.load_batch.max(1) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let loaders: Vec<_> = (0..opts.clients.clamp(1, 16))
        .map(|_| {
            let (target, next, opts) = (target.clone(), next.clone(), opts.clone());
            tokio::spawn(async move {
                loop {
                    let start = next.fetch_add(batch, Ordering::Relaxed);
                    if start >= opts.keys {
                        return Ok::<(), String>(());
                    }
                    let end = (start + batch).min(opts.keys);
                    let pairs = (start..end)
                        .map(|i| (key(i, opts.key_size), value_for(i, opts.value_size)))
                        .collect();
                    target
                        .load(pairs)
                        .await
                        .map_err(|e| format!("loading keys {start}..{end}: {}", e.message))?;
                }
            })
        })
        .collect();
    for l in loaders {
        l.await.map_err(|e| format!("loader failed: {e}"))??;
    }
    if opts.progress {
        eprintln!("loaded {} keys in {:.2} s", opts.keys, started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Shared between the clients of one phase.
struct Phase {
    until: Instant,
    /// Operations each client may still issue (`u64::MAX`: no limit).
    per_client: u64,
    done: AtomicU64,
    failed: AtomicU64,
    /// Keys inserted so far (ycsb-e's new keys follow the loaded ones).
    inserted: Arc<AtomicU64>,
}

async fn client(target: Arc<dyn Target>, opts: BenchOptions, phase: Arc<Phase>, seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let chooser = KeyChooser::new(opts.distribution, opts.keys);
    let mix = opts.workload.mix();
    let mut value = value_for(seed, opts.value_size);
    let mut tally = Tally::new();
    let mut issued = 0;
    // With a rate: this client's schedule, starting at a random offset so
    // the clients do not fire together.
    let interval = opts.rate.map(|r| Duration::from_secs_f64(opts.clients as f64 / r));
    let mut next = Instant::now() + interval.map_or(Duration::ZERO, |i| i.mul_f64(rng.gen::<f64>()));
    while issued < phase.per_client && Instant::now() < phase.until {
        let scheduled = match interval {
            Some(i) => {
                let at = next;
                next += i;
                tokio::time::sleep_until(at.into()).await;
                if Instant::now() >= phase.until {
                    break;
                }
                Some(at)
            }
            None => None,
        };
        issued += 1;
        let pick = rng.gen_range(0..100);
        let kind = mix
            .iter()
            .scan(0, |acc, (k, w)| {
                *acc += w;
                Some((*k, *acc))
            })
            .find(|(_, upto)| pick < *upto)
            .map_or(mix[0].0, |(k, _)| k);
        let i = chooser.next(&mut rng);
        let started = scheduled.unwrap_or_else(Instant::now);
        let result = match kind {
            OpKind::Get => target.get(key(i, opts.key_size)).await.map(drop),
            OpKind::Put => {
                // Vary the value so writes are not all identical.
                value[..8.min(opts.value_size)]
                    .copy_from_slice(&rng.gen::<u64>().to_le_bytes()[..8.min(opts.value_size)]);
                target.put(key(i, opts.key_size), value.clone()).await
            }
            OpKind::Insert => {
                let n = opts.keys + phase.inserted.fetch_add(1, Ordering::Relaxed);
                target.put(key(n, opts.key_size), value_for(n, opts.value_size)).await
            }
            OpKind::BatchGet => {
                let keys = (0..opts.batch_size).map(|_| key(chooser.next(&mut rng), opts.key_size)).collect();
                target.batch_get(keys).await.map(drop)
            }
            OpKind::Scan => {
                // The keys are dense: `[i, i + scan_length)` holds scan_length of them.
                let end = key(i + opts.scan_length as u64, opts.key_size);
                target.scan(key(i, opts.key_size), end, opts.scan_length).await.map(drop)
            }
            OpKind::Cas => {
                let v = value_for(i, opts.value_size);
                target.cas(key(i, opts.key_size), v.clone(), v).await.map(drop)
            }
        };
        match result {
            Ok(()) => {
                let us = started.elapsed().as_micros().max(1) as u64;
                tally.hist.entry(kind).or_insert_with(new_histogram).saturating_record(us);
                phase.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let counts = if e.undetermined { &mut tally.undetermined } else { &mut tally.errors };
                *counts.entry(kind).or_default() += 1;
                tally.first_error.get_or_insert(e.message);
                phase.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tally
}

/// Runs one phase (warm-up or measured) of `clients` clients; returns the
/// merged tally and how long it took.
async fn run_phase(
    target: &Arc<dyn Target>,
    opts: &BenchOptions,
    length: Duration,
    ops: Option<u64>,
    inserted: &Arc<AtomicU64>,
    seed: u64,
    label: &str,
) -> Result<(Tally, f64), String> {
    let started = Instant::now();
    let per_client = ops.map_or(u64::MAX, |n| n.div_ceil(opts.clients as u64));
    let phase = Arc::new(Phase {
        until: started + length,
        per_client,
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        inserted: inserted.clone(),
    });
    let clients: Vec<_> = (0..opts.clients)
        .map(|c| tokio::spawn(client(target.clone(), opts.clone(), phase.clone(), seed + c as u64)))
        .collect();
    let progress = opts.progress.then(|| {
        let (phase, label) = (phase.clone(), label.to_string());
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let done = phase.done.load(Ordering::Relaxed);
                eprintln!(
                    "[{label} {:>4}s] {:>9} ops/s {:>11} ops {:>7} failed",
                    started.elapsed().as_secs(),
                    done - last,
                    done,
                    phase.failed.load(Ordering::Relaxed)
                );
                last = done;
            }
        })
    });
    let mut tally = Tally::new();
    for c in clients {
        tally.merge(c.await.map_err(|e| format!("client task failed: {e}"))?);
    }
    if let Some(p) = progress {
        p.abort();
    }
    Ok((tally, started.elapsed().as_secs_f64()))
}

/// Loads (unless `load` is false), warms up, and measures one workload.
pub async fn run(
    target: Arc<dyn Target>,
    name: &str,
    opts: &BenchOptions,
    load_first: bool,
) -> Result<BenchResult, String> {
    opts.validate()?;
    if load_first && opts.workload.reads() {
        load(target.clone(), opts).await?;
    }
    let inserted = Arc::new(AtomicU64::new(0));
    let seed = rand::random::<u64>() >> 16;
    if !opts.warmup.is_zero() {
        run_phase(&target, opts, opts.warmup, None, &inserted, seed, "warm-up").await?;
    }
    let length = if opts.ops.is_some() { Duration::from_secs(24 * 3600) } else { opts.duration };
    let (tally, elapsed) =
        run_phase(&target, opts, length, opts.ops, &inserted, seed.wrapping_add(1 << 20), name).await?;
    if let Some(e) = &tally.first_error {
        eprintln!("first error: {e}");
    }
    let mut all = new_histogram();
    let mut per_kind = BTreeMap::new();
    let kinds: std::collections::BTreeSet<OpKind> =
        tally.hist.keys().chain(tally.errors.keys()).chain(tally.undetermined.keys()).copied().collect();
    for kind in kinds {
        let h = tally.hist.get(&kind).cloned().unwrap_or_else(new_histogram);
        all.add(&h).expect("same bounds");
        let errors = tally.errors.get(&kind).copied().unwrap_or(0);
        let undetermined = tally.undetermined.get(&kind).copied().unwrap_or(0);
        per_kind.insert(kind.name().to_string(), summarize(&h, errors, undetermined, elapsed));
    }
    let errors = tally.errors.values().sum();
    let undetermined = tally.undetermined.values().sum();
    Ok(BenchResult {
        target: name.to_string(),
        options: opts.clone(),
        elapsed_s: elapsed,
        total: summarize(&all, errors, undetermined, elapsed),
        per_kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_width() {
        assert_eq!(key(42, 6), b"000042".to_vec());
        assert_eq!(key(0, 1), b"0".to_vec());
    }

    #[test]
    fn every_mix_sums_to_one_hundred() {
        use clap::ValueEnum;
        for w in Workload::value_variants() {
            assert_eq!(w.mix().iter().map(|(_, p)| p).sum::<u32>(), 100, "{}", w.name());
        }
    }

    #[test]
    fn zipfian_keys_stay_in_range_and_a_few_are_hot() {
        let n = 10_000;
        let chooser = KeyChooser::new(Distribution::Zipfian, n);
        let mut rng = StdRng::seed_from_u64(1);
        let mut counts = vec![0u32; n as usize];
        for _ in 0..200_000 {
            counts[chooser.next(&mut rng) as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        // θ = 0.99 over 10,000 keys: the hottest 1% take about half the picks.
        let top: u32 = counts[..100].iter().sum();
        assert!(top > 80_000 && top < 140_000, "hottest 100 keys got {top} of 200,000");
        // Uniform: the hottest 1% take about 1%.
        let chooser = KeyChooser::new(Distribution::Uniform, n);
        let mut counts = vec![0u32; n as usize];
        for _ in 0..200_000 {
            counts[chooser.next(&mut rng) as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top: u32 = counts[..100].iter().sum();
        assert!(top < 6_000, "uniform: hottest 100 keys got {top}");
    }

    #[test]
    fn the_hot_zipfian_keys_are_scattered() {
        let chooser = KeyChooser::new(Distribution::Zipfian, 1_000_000);
        let mut rng = StdRng::seed_from_u64(2);
        let picks: Vec<u64> = (0..1000).map(|_| chooser.next(&mut rng)).collect();
        // Rank 0 is the hottest; scrambled, it is not key 0.
        assert!(picks.iter().filter(|&&k| k < 1000).count() < 100);
    }
}
