//! The three workloads, run through the real client ([`RawClient`]) and
//! recorded into one [`Recorder`]:
//!
//! - **register**: random get / put / CAS on [`REGISTER_KEYS`] keys at a
//!   time, `reg/<slot>/<generation>`; every [`REGISTER_GENERATION`] the
//!   clients move on to fresh keys (as Jepsen's independent keys do), so an
//!   operation of unknown outcome stays open in one short sub-history, not
//!   in the whole run's. Checked for linearizability per key.
//! - **set**: unique inserts `set/<element>`; at the end one `read_all`
//!   (a scan of the `set/` range) must hold every acknowledged insert.
//! - **counter**: [`COUNTER_KEYS`] counters `ctr/000`…, each incremented by
//!   read v → CAS v → v+1, read now and then and once at the end; no
//!   increment may be lost or doubled.
//!
//! Keys are spread over several regions: [`split_keys`] are split off at the
//! start (two registers per region, counters apart from registers, the set's
//! range apart), the set's range keeps splitting as it grows (the harness
//! runs with small regions), and the split nemesis adds more splits.
//!
//! How client errors map to outcomes: a read that failed changed nothing
//! (`fail`); a write fails only on errors that prove it was not applied
//! (`DeadlineExceeded`, `InvalidArgument`); any other error leaves it
//! unknown (`info`), and the process id is retired.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mnemo_client::{Error, RawClient};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{Key, Op, Output, Pending, Process, Recorder};

/// Number of register keys in use at a time (slots).
pub const REGISTER_KEYS: u64 = 8;
/// How long the register clients use one generation of keys.
pub const REGISTER_GENERATION: Duration = Duration::from_secs(20);
/// Number of counter keys.
pub const COUNTER_KEYS: u64 = 4;
/// Values written to registers are drawn from `0..REGISTER_VALUES`.
const REGISTER_VALUES: u64 = 5;

/// Which workloads a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workloads {
    /// Linearizable register.
    pub register: bool,
    /// Unique-insert set.
    pub set: bool,
    /// CAS counters.
    pub counter: bool,
}

impl Workloads {
    /// Parses `all` or a comma list of `register`, `set`, `counter`.
    pub fn parse(s: &str) -> Result<Workloads, String> {
        if s == "all" {
            return Ok(Workloads { register: true, set: true, counter: true });
        }
        let mut w = Workloads { register: false, set: false, counter: false };
        for part in s.split(',').map(str::trim) {
            match part {
                "register" => w.register = true,
                "set" => w.set = true,
                "counter" => w.counter = true,
                other => return Err(format!("unknown workload {other:?} (register, set, counter, all)")),
            }
        }
        Ok(w)
    }

    /// The names, comma-separated.
    pub fn names(&self) -> String {
        let names: Vec<&str> = [(self.register, "register"), (self.set, "set"), (self.counter, "counter")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        names.join(",")
    }
}

/// The store key of register `k`: slot `k % REGISTER_KEYS`, generation
/// `k / REGISTER_KEYS`. A slot's keys of every generation are neighbours
/// (`reg/003/00000`, `reg/003/00001`, ...), so they share a region.
pub fn register_key(k: Key) -> Vec<u8> {
    format!("reg/{:03}/{:05}", k.0 % REGISTER_KEYS, k.0 / REGISTER_KEYS).into_bytes()
}

/// The key prefix of register slot `slot` (the split and probe targets).
fn register_slot(slot: u64) -> Vec<u8> {
    format!("reg/{slot:03}").into_bytes()
}

/// The store key of counter `k`.
pub fn counter_key(k: Key) -> Vec<u8> {
    format!("ctr/{:03}", k.0).into_bytes()
}

/// The store key of set element `e`.
fn set_key(e: u64) -> Vec<u8> {
    format!("set/{e:016}").into_bytes()
}

/// Suffix of the nemesis's probe keys: `key + "\0probe"` sorts right after
/// `key` and before every key the split nemesis splits at (`key + "/…"`),
/// so it stays in `key`'s region; it is never a workload key itself.
pub const PROBE_SUFFIX: &[u8] = b"\0probe";

const SET_START: &[u8] = b"set/";
const SET_END: &[u8] = b"set0";

/// Keys to split at before the run, so the workloads span several regions.
pub fn split_keys() -> Vec<Vec<u8>> {
    let mut keys = vec![b"ctr/".to_vec(), counter_key(Key(COUNTER_KEYS / 2)), b"reg/".to_vec()];
    keys.extend((2..REGISTER_KEYS).step_by(2).map(register_slot));
    keys.push(SET_START.to_vec());
    keys
}

/// Every workload key whose region the nemeses may split or whose leader
/// they may kill.
pub fn interesting_keys(w: Workloads) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    if w.register {
        keys.extend((0..REGISTER_KEYS).map(register_slot));
    }
    if w.counter {
        keys.extend((0..COUNTER_KEYS).map(|k| counter_key(Key(k))));
    }
    if w.set {
        keys.push(set_key(0));
    }
    keys
}

/// A value the workloads never write: what an unparseable value read from
/// the store is recorded as, so the checkers flag it instead of the
/// harness crashing on it.
pub const GARBAGE: u64 = u64::MAX;

/// Decodes a decimal value the workloads wrote; anything else is [`GARBAGE`].
fn decode(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()).unwrap_or(GARBAGE)
}

/// Errors the client reports only when a write was never applied.
fn definitely_not_applied(e: &Error) -> bool {
    matches!(e, Error::DeadlineExceeded { .. } | Error::InvalidArgument(_))
}

/// Completes a write-like operation from the client's answer.
fn complete_write(pending: Pending, r: Result<(), Error>) -> Process {
    match r {
        Ok(()) => pending.ok(Output::Done),
        Err(e) if definitely_not_applied(&e) => pending.fail(),
        Err(_) => pending.info(),
    }
}

/// What every worker shares.
#[derive(Clone)]
pub struct Shared {
    /// The client all workers use (one region cache, as an application would).
    pub client: Arc<RawClient>,
    /// Where operations are recorded.
    pub recorder: Recorder,
    /// Set when the run is over.
    pub stop: Arc<AtomicBool>,
    /// Next set element (unique per run).
    pub next_element: Arc<AtomicU64>,
    /// When the workloads started (register generations count from here).
    pub started: Instant,
}

/// One register client until `stop`.
pub async fn register_worker(s: Shared, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = s.recorder.process();
    while !s.stop.load(Ordering::Relaxed) {
        let generation = (s.started.elapsed().as_secs() / REGISTER_GENERATION.as_secs()).min(99_999);
        let key = Key(generation * REGISTER_KEYS + rng.gen_range(0..REGISTER_KEYS));
        let op = match rng.gen_range(0..3) {
            0 => Op::Read { key },
            1 => Op::Write { key, value: rng.gen_range(0..REGISTER_VALUES) },
            _ => Op::Cas {
                key,
                from: Some(rng.gen_range(0..REGISTER_VALUES)).filter(|_| rng.gen_bool(0.8)),
                to: rng.gen_range(0..REGISTER_VALUES),
            },
        };
        let pending = s.recorder.invoke(process, op.clone());
        process = match op {
            Op::Read { key } => match s.client.get(register_key(key)).await {
                Ok(v) => pending.ok(Output::Read(v.as_deref().map(decode))),
                Err(_) => pending.fail(),
            },
            Op::Write { key, value } => {
                complete_write(pending, s.client.put(register_key(key), value.to_string()).await)
            }
            Op::Cas { key, from, to } => {
                let expect = from.map(|f| f.to_string().into_bytes());
                match s.client.compare_and_swap(register_key(key), expect, to.to_string()).await {
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

/// One set client: unique inserts until `stop`.
pub async fn set_worker(s: Shared) {
    let mut process = s.recorder.process();
    while !s.stop.load(Ordering::Relaxed) {
        let element = s.next_element.fetch_add(1, Ordering::Relaxed);
        let pending = s.recorder.invoke(process, Op::Add { element });
        process = complete_write(pending, s.client.put(set_key(element), "1").await);
    }
}

/// One counter client: increments, and a read every tenth operation.
pub async fn counter_worker(s: Shared, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = s.recorder.process();
    while !s.stop.load(Ordering::Relaxed) {
        let key = Key(rng.gen_range(0..COUNTER_KEYS));
        process = if rng.gen_bool(0.1) {
            read_counter(&s, process, key).await.0
        } else {
            increment(&s, process, key).await
        };
    }
}

async fn read_counter(s: &Shared, process: Process, key: Key) -> (Process, bool) {
    let pending = s.recorder.invoke(process, Op::ReadCounter { key });
    match s.client.get(counter_key(key)).await {
        Ok(v) => (pending.ok(Output::ReadCounter(v.as_deref().map_or(0, decode))), true),
        Err(_) => (pending.fail(), false),
    }
}

async fn increment(s: &Shared, process: Process, key: Key) -> Process {
    let pending = s.recorder.invoke(process, Op::Increment { key });
    let current = match s.client.get(counter_key(key)).await {
        Ok(v) => v,
        Err(_) => return pending.fail(),
    };
    let old = current.as_deref().map_or(0, decode);
    let new = old + 1;
    match s.client.compare_and_swap(counter_key(key), current, new.to_string()).await {
        Ok((_, true)) => pending.ok(Output::Increment { old, new }),
        Ok((_, false)) => pending.fail(),
        Err(e) if definitely_not_applied(&e) => pending.fail(),
        Err(_) => pending.info(),
    }
}

/// The final reads after the cluster healed: every counter, and the whole
/// set. `s.client` should have a long deadline (the set may span hundreds
/// of regions). Each read is retried until it succeeds or `deadline`
/// passes; returns what could not be read, which the run reports as
/// Unknown (never valid).
pub async fn final_reads(s: &Shared, w: Workloads, deadline: Instant) -> Vec<String> {
    let mut missing = Vec::new();
    let mut process = s.recorder.process();
    if w.counter {
        for k in 0..COUNTER_KEYS {
            loop {
                let (p, ok) = read_counter(s, process, Key(k)).await;
                process = p;
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    missing.push(format!("final read of counter {k}"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    if w.set {
        loop {
            let pending = s.recorder.invoke(process, Op::ReadAll);
            match s.client.scan(SET_START, SET_END, u32::MAX).await {
                Ok(pairs) => {
                    let mut elements: Vec<u64> = pairs
                        .iter()
                        .filter(|p| !p.0.ends_with(PROBE_SUFFIX))
                        .map(|p| decode(&p.0[SET_START.len()..]))
                        .collect();
                    elements.sort_unstable();
                    elements.dedup();
                    pending.ok(Output::ReadAll(elements));
                    break;
                }
                Err(_) => process = pending.fail(),
            }
            if Instant::now() > deadline {
                missing.push("final read of the set".into());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_generations_stay_next_to_their_slot() {
        assert_eq!(register_key(Key(3)), b"reg/003/00000".to_vec());
        assert_eq!(register_key(Key(2 * REGISTER_KEYS + 3)), b"reg/003/00002".to_vec());
        // Every generation of slot 3 lies in [reg/002, reg/004), the region the
        // initial splits give slots 2 and 3; the probe key sorts before any
        // split point `slot + "/…"` the split fault picks.
        let probe = [register_slot(3), PROBE_SUFFIX.to_vec()].concat();
        assert!(probe > register_slot(3) && probe < b"reg/003/".to_vec());
        assert!(split_keys().contains(&register_slot(2)) && split_keys().contains(&register_slot(4)));
    }

    #[test]
    fn garbage_values_decode_to_an_impossible_value() {
        assert_eq!(decode(b"42"), 42);
        assert_eq!(decode(b"probe"), GARBAGE);
        assert_eq!(decode(&[0xff, 0x00]), GARBAGE);
    }

    #[test]
    fn workload_names_parse() {
        let w = Workloads::parse("set,counter").unwrap();
        assert!(!w.register && w.set && w.counter);
        assert_eq!(Workloads::parse("all").unwrap().names(), "register,set,counter");
        assert!(Workloads::parse("bank").is_err());
    }
}
