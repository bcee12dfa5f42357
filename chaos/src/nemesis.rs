//! Nemeses: faults injected from outside the processes on a seeded random
//! schedule, each healed before the next starts, and everything healed at
//! the end.
//!
//! One round: pick a fault (from a shuffled deck of the enabled kinds, so a
//! short run still sees every kind), start it, hold it 2–5 s, heal it, let
//! the cluster run quietly 1.5–3 s. Every round is a [`NemesisWindow`] on
//! the history's clock, shaded in the report.
//!
//! | name | fault |
//! |------|-------|
//! | `partition-one` | one random node cut from every other node |
//! | `partition-halves` | random minority / majority halves |
//! | `partition-leader` | the node holding the most region leaders cut off |
//! | `partition-bridge` | two halves that only one bridge node sees both of |
//! | `partition-ring` | each node sees only its ring neighbours (overlapping majorities) |
//! | `kill-one` / `kill-minority` | SIGKILL one node / a minority, restart at the heal |
//! | `kill-leader` | SIGKILL the node of a workload key's region leader; measures kill → first successful write to that region |
//! | `pause` | SIGSTOP one node, SIGCONT at the heal |
//! | `shuffle-leader` / `shuffle-region` | PD's shuffle schedulers on for the window |
//! | `split` | forced splits (through PD) near workload keys, every ~300 ms |
//! | `clock-skew` | one or two nodes' lease clocks run at 0.95–1.5× and jump ahead ≤ 1 s |
//!
//! Partitions cut node–node links only; PD and clients reach every node.
//! Clock skew stays inside the lease's safety margin (see the node's
//! `--enable-test-controls`): a lease of 0.8 s on a clock running at 0.95×
//! lasts 0.84 s of real time, below the ~0.9 s a follower must wait before
//! it may elect a new leader (10 ticks of 100 ms, the first one possibly
//! short).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mnemo_client::RawClient;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::cluster::{wait_for, Cluster};
use crate::history::Recorder;
use crate::report::NemesisWindow;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// One node isolated.
    PartitionOne,
    /// Random minority/majority halves.
    PartitionHalves,
    /// The node with the most leaders isolated.
    PartitionLeader,
    /// Two halves joined by one node.
    PartitionBridge,
    /// Ring of overlapping majorities.
    PartitionRing,
    /// SIGKILL one node.
    KillOne,
    /// SIGKILL a minority of nodes.
    KillMinority,
    /// SIGKILL the node of a region leader.
    KillLeader,
    /// SIGSTOP one node.
    Pause,
    /// PD's shuffle-leader scheduler.
    ShuffleLeader,
    /// PD's shuffle-region scheduler.
    ShuffleRegion,
    /// Forced splits.
    Split,
    /// Lease clock skew.
    ClockSkew,
}

const ALL: [Fault; 13] = [
    Fault::PartitionOne,
    Fault::PartitionHalves,
    Fault::PartitionLeader,
    Fault::PartitionBridge,
    Fault::PartitionRing,
    Fault::KillOne,
    Fault::KillMinority,
    Fault::KillLeader,
    Fault::Pause,
    Fault::ShuffleLeader,
    Fault::ShuffleRegion,
    Fault::Split,
    Fault::ClockSkew,
];

impl Fault {
    /// The fault's name (as in `--nemesis` and the report).
    pub fn name(self) -> &'static str {
        match self {
            Fault::PartitionOne => "partition-one",
            Fault::PartitionHalves => "partition-halves",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionBridge => "partition-bridge",
            Fault::PartitionRing => "partition-ring",
            Fault::KillOne => "kill-one",
            Fault::KillMinority => "kill-minority",
            Fault::KillLeader => "kill-leader",
            Fault::Pause => "pause",
            Fault::ShuffleLeader => "shuffle-leader",
            Fault::ShuffleRegion => "shuffle-region",
            Fault::Split => "split",
            Fault::ClockSkew => "clock-skew",
        }
    }

    /// True for partitions that leave a majority connected (the report's
    /// "majority side" availability is measured during these).
    pub fn is_minority_partition(self) -> bool {
        matches!(self, Fault::PartitionOne | Fault::PartitionHalves | Fault::PartitionLeader)
    }

    /// True for the network partitions (they need namespaces).
    pub fn is_partition(self) -> bool {
        matches!(
            self,
            Fault::PartitionOne
                | Fault::PartitionHalves
                | Fault::PartitionLeader
                | Fault::PartitionBridge
                | Fault::PartitionRing
        )
    }

    /// Parses `--nemesis`: `all` (alias `mixed`), `none`, or a comma list of
    /// fault names and groups (`partition`, `kill`, `churn`).
    pub fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let group: Vec<Fault> = match part {
                "all" | "mixed" => ALL.to_vec(),
                "none" => Vec::new(),
                "partition" => ALL.iter().copied().filter(|f| f.is_partition()).collect(),
                "kill" => vec![Fault::KillOne, Fault::KillMinority, Fault::KillLeader],
                "churn" => vec![Fault::ShuffleLeader, Fault::ShuffleRegion, Fault::Split],
                name => vec![*ALL.iter().find(|f| f.name() == name).ok_or_else(|| {
                    let names: Vec<&str> = ALL.iter().map(|f| f.name()).collect();
                    format!(
                        "unknown nemesis {name:?}: all, mixed, none, partition, kill, churn, {}",
                        names.join(", ")
                    )
                })?],
            };
            for f in group {
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        }
        Ok(out)
    }
}

/// What the nemesis measured besides the windows.
#[derive(Debug, Default)]
pub struct NemesisLog {
    /// Every fault window, in order.
    pub windows: Vec<NemesisWindow>,
    /// The fault of each window.
    pub faults: Vec<Fault>,
    /// For each `kill-leader`: time from the kill to the first successful
    /// write to the killed leader's region (None: not within 20 s).
    pub leader_kill_recovery: Vec<Option<Duration>>,
    /// Nodes that exited on their own (crashed), described; each was
    /// restarted so the run could go on.
    pub crashes: Vec<String>,
}

/// The nemesis: owns the cluster while the run lasts.
pub struct Nemesis {
    /// The cluster under test (given back by [`Nemesis::run`]).
    pub cluster: Cluster,
    faults: Vec<Fault>,
    rng: StdRng,
    recorder: Recorder,
    /// Keys whose regions the faults aim at.
    keys: Vec<Vec<u8>>,
    /// A client of its own, for the kill-leader recovery probe.
    probe: Arc<RawClient>,
    runtime: tokio::runtime::Handle,
    log: NemesisLog,
    killed: Vec<usize>,
    paused: Vec<usize>,
    skewed: Vec<usize>,
}

impl Nemesis {
    /// A nemesis over `cluster` injecting `faults` (partitions are dropped
    /// if the cluster cannot cut links).
    pub fn new(
        cluster: Cluster,
        faults: Vec<Fault>,
        seed: u64,
        recorder: Recorder,
        keys: Vec<Vec<u8>>,
        probe: Arc<RawClient>,
    ) -> Nemesis {
        let can_partition = cluster.can_partition();
        let faults = faults.into_iter().filter(|f| can_partition || !f.is_partition()).collect();
        Nemesis {
            cluster,
            faults,
            rng: StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973),
            recorder,
            keys,
            probe,
            runtime: tokio::runtime::Handle::current(),
            log: NemesisLog::default(),
            killed: Vec::new(),
            paused: Vec::new(),
            skewed: Vec::new(),
        }
    }

    /// Injects faults until `stop` is set, then heals everything. Blocking:
    /// run it on its own thread (`spawn_blocking`). Returns before `stop`
    /// only by panicking (a fault it could not inject or heal).
    pub fn run(mut self, stop: Arc<AtomicBool>) -> (Cluster, NemesisLog) {
        let mut deck: Vec<Fault> = Vec::new();
        sleep_until(Instant::now() + Duration::from_secs(2), &stop);
        while !stop.load(Ordering::Relaxed) {
            if self.faults.is_empty() {
                // No faults: only watch for crashes until the run ends.
                sleep_until(Instant::now() + Duration::from_millis(500), &stop);
                self.restart_crashed();
                continue;
            }
            if deck.is_empty() {
                deck = self.faults.clone();
                deck.shuffle(&mut self.rng);
            }
            let fault = deck.pop().expect("refilled");
            let start_ns = self.recorder.now_ns();
            let hold = Duration::from_millis(self.rng.gen_range(2000..5000));
            let desc = self.start(fault, hold, &stop);
            self.restart_crashed();
            let end_ns = self.recorder.now_ns();
            tracing::info!(fault = fault.name(), %desc, "fault healed");
            self.log.windows.push(NemesisWindow {
                name: format!("{} {desc}", fault.name()),
                start_ns,
                end_ns,
            });
            self.log.faults.push(fault);
            sleep_until(Instant::now() + Duration::from_millis(self.rng.gen_range(1500..3000)), &stop);
        }
        self.heal_all();
        (self.cluster, self.log)
    }

    /// Starts `fault`, holds it for `hold` (or until `stop`), heals it.
    /// Returns a short description (which nodes) for the report.
    fn start(&mut self, fault: Fault, hold: Duration, stop: &AtomicBool) -> String {
        let n = self.cluster.node_count();
        let hold_until = Instant::now() + hold;
        let wait = |stop: &AtomicBool| sleep_until(hold_until, stop);
        let desc = match fault {
            Fault::PartitionOne | Fault::PartitionLeader => {
                let leaders =
                    if fault == Fault::PartitionLeader { self.node_with_most_leaders() } else { None };
                let v = leaders.unwrap_or_else(|| self.rng.gen_range(0..n));
                self.cut(&[v], &(0..n).filter(|&i| i != v).collect::<Vec<_>>());
                wait(stop);
                format!("n{}", v + 1)
            }
            Fault::PartitionHalves => {
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut self.rng);
                let (minority, majority) = order.split_at(n / 2);
                self.cut(minority, majority);
                wait(stop);
                format!("{} | {}", names(minority), names(majority))
            }
            Fault::PartitionBridge => {
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut self.rng);
                let bridge = order[n / 2];
                let (left, right) = (&order[..n / 2], &order[n / 2 + 1..]);
                self.cut(left, right);
                wait(stop);
                format!("{} | n{} | {}", names(left), bridge + 1, names(right))
            }
            Fault::PartitionRing => {
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut self.rng);
                self.partition(&ring_grudge(&order));
                wait(stop);
                format!("ring {}", names(&order))
            }
            Fault::KillOne | Fault::KillMinority => {
                let count = if fault == Fault::KillOne { 1 } else { (n - 1) / 2 };
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut self.rng);
                for &v in &order[..count] {
                    self.kill(v);
                }
                wait(stop);
                let desc = names(&order[..count]);
                self.restart_killed();
                desc
            }
            Fault::KillLeader => {
                let key = self.keys[self.rng.gen_range(0..self.keys.len())].clone();
                let Some(v) = self.cluster.leader_node_of(&key) else {
                    wait(stop);
                    return "no leader known".into();
                };
                self.kill(v);
                let killed_at = Instant::now();
                let recovery = self.probe_write(&key, killed_at, stop);
                self.log.leader_kill_recovery.push(recovery);
                wait(stop);
                self.restart_killed();
                match recovery {
                    Some(d) => format!("n{} ({}: write ok after {} ms)", v + 1, show(&key), d.as_millis()),
                    None => format!("n{} ({}: no write within 20 s)", v + 1, show(&key)),
                }
            }
            Fault::Pause => {
                let v = self.rng.gen_range(0..n);
                self.cluster.pause_node(v);
                self.paused.push(v);
                wait(stop);
                self.resume_paused();
                format!("n{}", v + 1)
            }
            Fault::ShuffleLeader | Fault::ShuffleRegion => {
                let name = format!("{}-scheduler", fault.name());
                if let Err(e) = self.cluster.pd_post("/pd/api/v1/schedulers", json!({ "name": name })) {
                    tracing::warn!(%e, "cannot add {name}");
                }
                wait(stop);
                self.remove_scheduler(&name);
                String::new()
            }
            Fault::Split => {
                let mut splits = 0;
                while Instant::now() < hold_until && !stop.load(Ordering::Relaxed) {
                    let mut at = self.keys[self.rng.gen_range(0..self.keys.len())].clone();
                    at.extend(format!("/{:04}", self.rng.gen_range(0..10_000)).bytes());
                    if self.cluster.split_at(&[at]).is_ok() {
                        splits += 1;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
                format!("{splits} splits asked")
            }
            Fault::ClockSkew => {
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut self.rng);
                let count = self.rng.gen_range(1..=2.min(n));
                let mut parts = Vec::new();
                for &v in &order[..count] {
                    let rate: f64 = self.rng.gen_range(0.95..1.5);
                    let jump_ms: u64 = self.rng.gen_range(0..1000);
                    self.skewed.push(v);
                    if let Err(e) = self.skew(v, json!({ "rate": rate, "jump_ms": jump_ms })) {
                        tracing::warn!(%e, node = v + 1, "cannot skew the lease clock");
                    }
                    parts.push(format!("n{} ×{rate:.2} +{jump_ms}ms", v + 1));
                }
                wait(stop);
                self.unskew();
                parts.join(", ")
            }
        };
        if fault.is_partition() {
            self.heal_network();
        }
        desc
    }

    /// Cuts every link between `a` and `b` (both directions).
    fn cut(&self, a: &[usize], b: &[usize]) {
        self.partition(&cut_grudge(self.cluster.node_count(), a, b));
    }

    fn partition(&self, grudge: &[Vec<usize>]) {
        if let Err(e) = self.cluster.partition(grudge) {
            panic!("cannot partition the network: {e}");
        }
    }

    fn heal_network(&self) {
        if let Err(e) = self.cluster.heal_network() {
            panic!("cannot heal the network: {e}");
        }
    }

    fn kill(&mut self, v: usize) {
        self.cluster.kill_node(v);
        self.killed.push(v);
    }

    fn restart_killed(&mut self) {
        for v in std::mem::take(&mut self.killed) {
            self.cluster.restart_node(v);
        }
    }

    fn resume_paused(&mut self) {
        for v in std::mem::take(&mut self.paused) {
            self.cluster.resume_node(v);
        }
    }

    fn remove_scheduler(&self, name: &str) {
        let _ = self.cluster.pd_delete(&format!("/pd/api/v1/schedulers/{name}"));
    }

    fn skew(&self, v: usize, body: serde_json::Value) -> Result<(), String> {
        let url = format!("http://{}/debug/lease-clock", self.cluster.node_status_addr(v));
        ureq::post(&url)
            .timeout(Duration::from_secs(2))
            .send_json(body)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Puts skewed clocks back to real speed; a clock left slow could
    /// stretch a later lease past an election, so this must not fail.
    fn unskew(&mut self) {
        self.restart_crashed();
        for v in std::mem::take(&mut self.skewed) {
            wait_for(&format!("n{}'s lease clock back to rate 1", v + 1), Duration::from_secs(10), || {
                self.skew(v, json!({ "rate": 1.0 })).ok()
            });
        }
    }

    /// Records and restarts nodes that exited on their own (a crash is a
    /// finding of the run; the restart lets the run go on and heal).
    fn restart_crashed(&mut self) {
        for (v, status) in self.cluster.reap_crashed_nodes() {
            let at = self.recorder.now_ns() as f64 / 1e9;
            tracing::error!(node = v + 1, %status, "node crashed; restarting it");
            self.log
                .crashes
                .push(format!("n{0} exited on its own ({status}) by {at:.1} s; see n{0}.log", v + 1));
            // A fresh process has a true clock and is not stopped.
            self.skewed.retain(|&s| s != v);
            self.paused.retain(|&p| p != v);
            self.cluster.restart_node(v);
        }
    }

    /// Heals whatever is still broken (the run is ending).
    fn heal_all(&mut self) {
        self.restart_crashed();
        self.heal_network();
        self.resume_paused();
        self.restart_killed();
        self.unskew();
        for name in ["shuffle-leader-scheduler", "shuffle-region-scheduler"] {
            self.remove_scheduler(name);
        }
    }

    /// Index of the node holding the most region leaders, per PD.
    fn node_with_most_leaders(&self) -> Option<usize> {
        let mut counts = vec![0usize; self.cluster.node_count()];
        let node_of_store: std::collections::HashMap<u64, usize> =
            (0..counts.len()).filter_map(|i| Some((self.cluster.store_id_of(i)?, i))).collect();
        for r in self.cluster.regions() {
            if let Some(&i) = r["leader"]["store_id"].as_u64().and_then(|s| node_of_store.get(&s)) {
                counts[i] += 1;
            }
        }
        counts.iter().enumerate().max_by_key(|(_, c)| **c).filter(|(_, c)| **c > 0).map(|(i, _)| i)
    }

    /// Writes to a probe key next to `key` (same region) until one write
    /// succeeds; the time from `since` to that success.
    fn probe_write(&self, key: &[u8], since: Instant, stop: &AtomicBool) -> Option<Duration> {
        let mut probe = key.to_vec();
        probe.extend_from_slice(crate::workload::PROBE_SUFFIX);
        let client = self.probe.clone();
        while since.elapsed() < Duration::from_secs(20) && !stop.load(Ordering::Relaxed) {
            let (c, k) = (client.clone(), probe.clone());
            if self.runtime.block_on(async move { c.put(k, "probe").await }).is_ok() {
                return Some(since.elapsed());
            }
        }
        None
    }
}

fn names(nodes: &[usize]) -> String {
    let v: Vec<String> = nodes.iter().map(|i| format!("n{}", i + 1)).collect();
    v.join(",")
}

/// The grudge (node → nodes it drops) cutting every link between `a` and `b`.
fn cut_grudge(n: usize, a: &[usize], b: &[usize]) -> Vec<Vec<usize>> {
    let mut grudge = vec![Vec::new(); n];
    for &x in a {
        grudge[x].extend_from_slice(b);
    }
    for &y in b {
        grudge[y].extend_from_slice(a);
    }
    grudge
}

/// The grudge of a ring of overlapping majorities: with the nodes placed
/// on a ring in `order`, each node hears only the nodes within `reach` ring
/// steps: itself plus 2·reach others, at least a majority (n/2 + 1), and
/// each node's majority is a different one.
fn ring_grudge(order: &[usize]) -> Vec<Vec<usize>> {
    let n = order.len();
    let reach = (n / 2).div_ceil(2).max(1);
    let mut grudge = vec![Vec::new(); n];
    for (pos, &node) in order.iter().enumerate() {
        for (other_pos, &other) in order.iter().enumerate() {
            let d = pos.abs_diff(other_pos);
            if d.min(n - d) > reach {
                grudge[node].push(other);
            }
        }
    }
    grudge
}

/// Sleeps until `until` or until `stop` is set, whichever comes first.
fn sleep_until(until: Instant, stop: &AtomicBool) {
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn hears(grudge: &[Vec<usize>], i: usize) -> HashSet<usize> {
        (0..grudge.len()).filter(|j| !grudge[i].contains(j)).collect()
    }

    #[test]
    fn ring_gives_every_node_a_different_majority() {
        for n in [5, 7] {
            let order: Vec<usize> = (0..n).rev().collect();
            let grudge = ring_grudge(&order);
            let mut seen = HashSet::new();
            for i in 0..n {
                let h = hears(&grudge, i);
                assert!(h.contains(&i) && h.len() > n / 2, "n{i} hears {h:?} of {n}");
                assert!(h.len() < n, "n{i} hears everyone: no cut");
                let mut key: Vec<usize> = h.into_iter().collect();
                key.sort_unstable();
                seen.insert(key);
                // Symmetric: a cut link is cut both ways.
                for &j in &grudge[i] {
                    assert!(grudge[j].contains(&i));
                }
            }
            assert_eq!(seen.len(), n, "majorities must differ");
        }
    }

    #[test]
    fn cut_separates_the_sides_and_a_bridge_hears_both() {
        // Bridge layout: {0,1} | 2 | {3,4}.
        let grudge = cut_grudge(5, &[0, 1], &[3, 4]);
        assert_eq!(hears(&grudge, 2).len(), 5);
        assert_eq!(hears(&grudge, 0), HashSet::from([0, 1, 2]));
        assert_eq!(hears(&grudge, 4), HashSet::from([2, 3, 4]));
    }

    #[test]
    fn nemesis_names_parse() {
        assert_eq!(Fault::parse_list("all").unwrap().len(), ALL.len());
        assert!(Fault::parse_list("none").unwrap().is_empty());
        let p = Fault::parse_list("partition,kill-leader,partition-one").unwrap();
        assert_eq!(p.len(), 6, "groups expand, duplicates collapse: {p:?}");
        assert!(p.iter().take(5).all(|f| f.is_partition()));
        assert!(Fault::parse_list("meteor").unwrap_err().contains("unknown nemesis"));
        for f in ALL {
            assert_eq!(Fault::parse_list(f.name()).unwrap(), vec![f]);
        }
    }
}
