//! The three workloads, run through the real client ([`RawClient`]) and
//! recorded into one [`Recorder`]. Every worker has a client of its own (its
//! own connections and region cache, as separate application processes
//! would), and every value written is unique in the run, so a read names
//! exactly which write it saw.
//!
//! - **register**: [`REGISTER_KEYS`] keys at a time, `reg/<slot>/<generation>`;
//!   every [`REGISTER_GENERATION`] the clients move on to fresh keys (as
//!   Jepsen's independent keys do), so an operation of unknown outcome stays
//!   open in one short sub-history. Each worker picks a key and one of: read,
//!   write, write with a TTL of one second ([`TTL_SECS`]), CAS from the
//!   value it last saw (a CAS stores without TTL), delete, or a batch write
//!   of two keys. Each worker also writes, again and again, a value with a
//!   TTL to a fresh key of its own (`reg/ttl/<worker>/<cycle>`, nobody else
//!   writes it) and CASes that value away right at its expiry (one second
//!   later, ± 10 ms), so the CAS is decided at the edge — where replicas
//!   judging expiry by different clocks, or at different times, would
//!   disagree — and now and then reads it back. The key is never written
//!   again, so what each replica decided stays to be compared at the end.
//!   Checked for linearizability per key, with expiring values in the
//!   model.
//! - **set**: unique inserts `set/<element>`; one worker also reads the whole
//!   set every [`SET_READ_EVERY`] during the run, and one final `read_all`
//!   (a scan of the `set/` range) ends it. Every read must hold every
//!   acknowledged insert, in key order, once each.
//! - **counter**: [`COUNTER_KEYS`] counters `ctr/000`…, each incremented by
//!   read v → CAS v → v+1, read now and then and once at the end; no
//!   increment may be lost or doubled.
//! - **tso**: [`TSO_WORKERS`] clients, each with a PD client of its own, ask
//!   PD for one timestamp after another; each client's timestamps must
//!   strictly increase and no timestamp may go to two clients, across every
//!   change of PD leader (`checker::tso`).
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mnemo_client::{Config, Error, RawClient};
use rand::rngs::StdRng;
use rand::seq::IteratorRandom;
use rand::{Rng, SeedableRng};

use crate::history::{Key, Op, Output, Pending, Process, Recorder};

/// Number of register keys in use at a time (slots).
pub const REGISTER_KEYS: u64 = 8;
/// How long the register clients use one generation of keys.
pub const REGISTER_GENERATION: Duration = Duration::from_secs(20);
/// Number of counter keys.
pub const COUNTER_KEYS: u64 = 4;
/// Time to live of the register workload's expiring writes (seconds; the
/// smallest RawKV allows).
pub const TTL_SECS: u64 = 1;
/// Concurrent TSO clients.
pub const TSO_WORKERS: usize = 3;
/// How often one set worker reads the whole set during the run.
pub const SET_READ_EVERY: Duration = Duration::from_secs(5);

/// Which workloads a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workloads {
    /// Linearizable register.
    pub register: bool,
    /// Unique-insert set.
    pub set: bool,
    /// CAS counters.
    pub counter: bool,
    /// Timestamps from PD's TSO (checked by `checker::tso`).
    pub tso: bool,
}

impl Workloads {
    /// Parses `all` or a comma list of `register`, `set`, `counter`, `tso`.
    pub fn parse(s: &str) -> Result<Workloads, String> {
        if s == "all" {
            return Ok(Workloads { register: true, set: true, counter: true, tso: true });
        }
        let mut w = Workloads { register: false, set: false, counter: false, tso: false };
        for part in s.split(',').map(str::trim) {
            match part {
                "register" => w.register = true,
                "set" => w.set = true,
                "counter" => w.counter = true,
                "tso" => w.tso = true,
                other => {
                    return Err(format!("unknown workload {other:?} (register, set, counter, tso, all)"))
                }
            }
        }
        Ok(w)
    }

    /// The names, comma-separated.
    pub fn names(&self) -> String {
        let names: Vec<&str> =
            [(self.register, "register"), (self.set, "set"), (self.counter, "counter"), (self.tso, "tso")]
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
    if is_edge_key(k) {
        let (worker, cycle) = ((k.0 - EDGE_KEYS) / 1_000_000, (k.0 - EDGE_KEYS) % 1_000_000);
        return [EDGE_PREFIX, format!("{worker:03}/{cycle:06}").as_bytes()].concat();
    }
    format!("reg/{:03}/{:05}", k.0 % REGISTER_KEYS, k.0 / REGISTER_KEYS).into_bytes()
}

/// Where the workers' own TTL-edge keys live (`reg/ttl/<worker>/<cycle>`).
pub const EDGE_PREFIX: &[u8] = b"reg/ttl/";

/// Key ids from here on are the workers' own TTL-edge keys.
const EDGE_KEYS: u64 = 1 << 40;

/// Whether `k` is one of the workers' own TTL-edge keys (each sees only a
/// write, a CAS and a read or two), not a shared register key.
pub fn is_edge_key(k: Key) -> bool {
    k.0 >= EDGE_KEYS
}

/// Worker `worker`'s own key of its `cycle`-th edge CAS (see the module doc).
fn edge_key(worker: u64, cycle: u64) -> Key {
    Key(EDGE_KEYS + worker * 1_000_000 + cycle % 1_000_000)
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

/// The live key (current generation) of the register slot whose prefix is
/// `key` (`reg/<slot>`), or None for any other key.
pub fn live_key_of(key: &[u8], started: Instant) -> Option<Vec<u8>> {
    let slot: u64 = std::str::from_utf8(key.strip_prefix(b"reg/")?).ok()?.parse().ok()?;
    Some(register_key(Key(generation_at(started) * REGISTER_KEYS + slot)))
}

/// A split point that moves every key of register slot `slot` (all its
/// generations, the live one included) into a new region: `reg/<slot>//<n>`
/// sorts after the slot's previous split points (for a larger `n`) and
/// before all its keys. A write in flight when such a split applies must be
/// refused by apply's epoch check, not land in the wrong region.
pub fn live_split_point(slot: u64, n: u64) -> Vec<u8> {
    format!("reg/{slot:03}//{n:010}").into_bytes()
}

fn generation_at(started: Instant) -> u64 {
    (started.elapsed().as_secs() / REGISTER_GENERATION.as_secs()).min(99_999)
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
    /// PD endpoints; each worker opens its own client.
    pub endpoints: Vec<String>,
    /// The workers' client settings.
    pub config: Config,
    /// Where operations are recorded.
    pub recorder: Recorder,
    /// Set when the run is over.
    pub stop: Arc<AtomicBool>,
    /// Next set element (unique per run).
    pub next_element: Arc<AtomicU64>,
    /// When the workloads started (register generations count from here).
    pub started: Instant,
}

impl Shared {
    /// A client of the worker's own, retried until PD answers (or the run ends).
    pub async fn client(&self) -> Option<RawClient> {
        while !self.stop.load(Ordering::Relaxed) {
            match RawClient::with_config(self.endpoints.clone(), self.config.clone()).await {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!("workload client cannot start yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        None
    }
}

/// Unique values of worker `worker`: `(worker + 1) · 10⁹ + n`.
struct Values {
    next: u64,
}

impl Values {
    fn new(worker: u64) -> Values {
        Values { next: (worker + 1) * 1_000_000_000 }
    }

    fn next(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

/// One register client until `stop`.
pub async fn register_worker(s: Shared, worker: u64, seed: u64) {
    let Some(client) = s.client().await else { return };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut values = Values::new(worker);
    // The value this worker last saw for each key: its CASes expect it.
    let mut last_seen: HashMap<Key, Option<u64>> = HashMap::new();
    // The value written with a TTL on this worker's own key, to CAS away at
    // its expiry: (key, value, when). Each cycle uses a fresh key, so what
    // the CAS decided is never overwritten: replicas that decided
    // differently stay different until the end-of-run comparison.
    let mut at_expiry: Option<(Key, u64, Instant)> = None;
    let mut edge_cycle = 0u64;
    // A key to read next: right after a range delete, to see that it took.
    let mut read_next: Option<Key> = None;
    let mut process = s.recorder.process();
    while !s.stop.load(Ordering::Relaxed) {
        let generation = generation_at(s.started);
        let key_at = |slot: u64| Key(generation * REGISTER_KEYS + slot);
        let key = key_at(rng.gen_range(0..REGISTER_KEYS));
        let due = at_expiry.filter(|(_, _, when)| Instant::now() >= *when);
        let follow_up = read_next.take();
        let edge = edge_key(worker, edge_cycle);
        // Every third worker is a reader (80% reads), as most of a feature
        // store's clients are: it keeps asking the leader it knows.
        let reader = worker.is_multiple_of(3) && rng.gen_bool(0.8);
        let op = match rng.gen_range(0..100) {
            _ if follow_up.is_some() => Op::Read { key: follow_up.expect("checked") },
            _ if due.is_some() => {
                let (key, value, _) = due.expect("checked");
                at_expiry = None;
                edge_cycle += 1;
                Op::Cas { key, from: Some(value), to: values.next() }
            }
            _ if reader => Op::Read { key },
            0..5 if at_expiry.is_none() => Op::WriteTtl { key: edge, value: values.next() },
            5..8 => Op::Read { key: edge_key(worker, edge_cycle.saturating_sub(1)) },
            0..30 => Op::Read { key },
            30..45 => Op::Write { key, value: values.next() },
            45..55 => Op::WriteTtl { key, value: values.next() },
            55..80 => Op::Cas { key, from: last_seen.get(&key).copied().flatten(), to: values.next() },
            80..92 => {
                // Delete a key this worker last saw holding a value, where it
                // knows one: a delete of nothing proves nothing.
                let held =
                    (0..REGISTER_KEYS).map(key_at).filter(|k| matches!(last_seen.get(k), Some(Some(_))));
                Op::Delete { key: held.choose(&mut rng).unwrap_or(key) }
            }
            _ => {
                let other = key_at(rng.gen_range(0..REGISTER_KEYS));
                let mut writes = vec![(key, values.next())];
                if other != key {
                    writes.push((other, values.next()));
                }
                Op::BatchWrite { writes }
            }
        };
        let pending = s.recorder.invoke(process, op.clone());
        process = match op {
            Op::Read { key } => match client.get(register_key(key)).await {
                Ok(v) => {
                    let v = v.as_deref().map(decode);
                    last_seen.insert(key, v);
                    pending.ok(Output::Read(v))
                }
                Err(_) => pending.fail(),
            },
            Op::Write { key, value } => {
                let r = client.put(register_key(key), value.to_string()).await;
                if r.is_ok() {
                    last_seen.insert(key, Some(value));
                }
                complete_write(pending, r)
            }
            Op::WriteTtl { key, value } => {
                // The expiry is set from the node's clock when the write
                // arrives: time the CAS from when it was sent.
                let sent = Instant::now();
                let r = client.put_with_ttl(register_key(key), value.to_string(), TTL_SECS).await;
                if r.is_ok() {
                    last_seen.insert(key, Some(value));
                    if is_edge_key(key) {
                        let edge = Duration::from_millis(rng.gen_range(990..1010));
                        at_expiry = Some((key, value, sent + edge));
                    }
                }
                complete_write(pending, r)
            }
            Op::Delete { key } => {
                // Most deletes as a range delete of exactly the key, read
                // back at once: its effect depends on the region's range at
                // apply time, so one that raced a split must still delete.
                let k = register_key(key);
                let r = if rng.gen_bool(0.75) {
                    let mut end = k.clone();
                    end.push(0);
                    read_next = Some(key);
                    client.delete_range(k, end).await
                } else {
                    client.delete(k).await
                };
                complete_write(pending, r)
            }
            Op::BatchWrite { ref writes } => {
                let pairs: Vec<(Vec<u8>, String)> =
                    writes.iter().map(|(k, v)| (register_key(*k), v.to_string())).collect();
                complete_write(pending, client.batch_put(pairs).await)
            }
            Op::Cas { key, from, to } => {
                let expect = from.map(|f| f.to_string().into_bytes());
                match client.compare_and_swap(register_key(key), expect, to.to_string()).await {
                    Ok((_, true)) => {
                        last_seen.insert(key, Some(to));
                        pending.ok(Output::Done)
                    }
                    Ok((previous, false)) => {
                        last_seen.insert(key, previous.as_deref().map(decode));
                        pending.fail()
                    }
                    Err(e) if definitely_not_applied(&e) => pending.fail(),
                    Err(_) => pending.info(),
                }
            }
            _ => unreachable!("register workload"),
        };
    }
}

/// One set client: unique inserts until `stop`; with `reads`, also a read of
/// the whole set every [`SET_READ_EVERY`].
pub async fn set_worker(s: Shared, reads: bool) {
    let Some(client) = s.client().await else { return };
    let mut process = s.recorder.process();
    let mut next_read = Instant::now() + SET_READ_EVERY;
    while !s.stop.load(Ordering::Relaxed) {
        if reads && Instant::now() >= next_read {
            next_read = Instant::now() + SET_READ_EVERY;
            process = read_set(&client, &s, process).await.0;
            continue;
        }
        let element = s.next_element.fetch_add(1, Ordering::Relaxed);
        let pending = s.recorder.invoke(process, Op::Add { element });
        process = complete_write(pending, client.put(set_key(element), "1").await);
    }
}

/// One read of the whole set, recorded exactly as the scan returned it.
async fn read_set(client: &RawClient, s: &Shared, process: Process) -> (Process, bool) {
    let pending = s.recorder.invoke(process, Op::ReadAll);
    match client.scan(SET_START, SET_END, u32::MAX).await {
        Ok(pairs) => {
            let elements: Vec<u64> = pairs
                .iter()
                .filter(|p| !p.0.ends_with(PROBE_SUFFIX))
                .map(|p| decode(&p.0[SET_START.len()..]))
                .collect();
            (pending.ok(Output::ReadAll(elements)), true)
        }
        Err(_) => (pending.fail(), false),
    }
}

/// One counter client: increments, and a read every tenth operation.
pub async fn counter_worker(s: Shared, seed: u64) {
    let Some(client) = s.client().await else { return };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = s.recorder.process();
    while !s.stop.load(Ordering::Relaxed) {
        let key = Key(rng.gen_range(0..COUNTER_KEYS));
        process = if rng.gen_bool(0.1) {
            read_counter(&client, &s, process, key).await.0
        } else {
            increment(&client, &s, process, key).await
        };
    }
}

async fn read_counter(client: &RawClient, s: &Shared, process: Process, key: Key) -> (Process, bool) {
    let pending = s.recorder.invoke(process, Op::ReadCounter { key });
    match client.get(counter_key(key)).await {
        Ok(v) => (pending.ok(Output::ReadCounter(v.as_deref().map_or(0, decode))), true),
        Err(_) => (pending.fail(), false),
    }
}

async fn increment(client: &RawClient, s: &Shared, process: Process, key: Key) -> Process {
    let pending = s.recorder.invoke(process, Op::Increment { key });
    let current = match client.get(counter_key(key)).await {
        Ok(v) => v,
        Err(_) => return pending.fail(),
    };
    let old = current.as_deref().map_or(0, decode);
    let new = old + 1;
    match client.compare_and_swap(counter_key(key), current, new.to_string()).await {
        Ok((_, true)) => pending.ok(Output::Increment { old, new }),
        Ok((_, false)) => pending.fail(),
        Err(e) if definitely_not_applied(&e) => pending.fail(),
        Err(_) => pending.info(),
    }
}

/// The final reads after the cluster healed, through `client` (give it a
/// long deadline: the set may span hundreds of regions): every counter, and
/// the whole set. Each read is retried until it succeeds or `deadline`
/// passes; returns what could not be read, which the run reports as
/// Unknown (never valid).
pub async fn final_reads(client: &RawClient, s: &Shared, w: Workloads, deadline: Instant) -> Vec<String> {
    let mut missing = Vec::new();
    let mut process = s.recorder.process();
    if w.counter {
        for k in 0..COUNTER_KEYS {
            loop {
                let (p, ok) = read_counter(client, s, process, Key(k)).await;
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
            let (p, ok) = read_set(client, s, process).await;
            process = p;
            if ok {
                break;
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

/// One TSO client: asks PD for a timestamp again and again until the run
/// ends, and returns the calls that got one, in order, with when each was
/// sent and answered on the history's clock (failed calls hand nothing out).
pub async fn tso_worker(s: Shared) -> Vec<crate::checker::tso::TsoCall> {
    let mut got = Vec::new();
    let mut pd = None;
    while !s.stop.load(Ordering::Relaxed) {
        let client = match &pd {
            Some(c) => c,
            None => match mnemo_client::pd::PdClient::connect_with_timeout(
                s.endpoints.clone(),
                s.config.rpc_timeout,
            )
            .await
            {
                Ok(c) => pd.insert(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let invoke_ns = s.recorder.now_ns();
        match client.get_ts(1).await {
            Ok(ts) => {
                got.push(crate::checker::tso::TsoCall { invoke_ns, complete_ns: s.recorder.now_ns(), ts })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    got
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
        assert_eq!(Workloads::parse("all").unwrap().names(), "register,set,counter,tso");
        assert!(Workloads::parse("bank").is_err());
    }
}
