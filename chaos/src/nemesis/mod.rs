//! Nemeses: faults injected on a seeded random schedule, each healed before
//! the next starts, and everything healed at the end.
//!
//! One round: pick a fault (from a shuffled deck of the enabled kinds, so a
//! short run still sees every kind), start it, hold it 1.5–4 s, heal it, let
//! the cluster run quietly 1–2 s. Every round is a [`NemesisWindow`] on the
//! history's clock, shaded in the report, and records whether the fault
//! *took effect* (a leader was found and killed, the iptables rules went in,
//! the crash point fired, ...): a fault that did nothing proves nothing, and
//! the short chaos test requires every kind to have taken effect.
//!
//! Classic faults (`all`):
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
//! | `split` | forced splits (through PD) at and near live workload keys, every ~300 ms |
//! | `clock-skew` | one or two nodes' lease clocks run at 0.95–1.5× and jump ahead ≤ 1 s |
//!
//! `crash-point`: arms a random crash point (`mnemo_node::failpoints`) on a
//! node with `panic`; the node dies exactly there (exit 86) and is
//! restarted. Points on rare paths are armed where the path will run:
//! snapshot points on a node restarted after missing writes (apply) or on
//! the leaders' node while another node is down (generate, send), the split
//! point while splits are asked, the conf-change point while shuffle-region
//! moves peers. A point whose path did not run within two thirds of the
//! window gives way to `raft_before_save`, which fires at once.
//!
//! Compound faults (`compound`):
//!
//! | name | fault |
//! |------|-------|
//! | `partition-kill` | one node cut off while another is killed |
//! | `skew-partition-leader` | the leaders' node cut off with its lease clock slowed (≥ 0.95×) |
//! | `kill-shuffle` / `kill-split` | a node killed during shuffle-region / the leader during forced splits |
//! | `kill-majority` / `kill-all` | a majority / every node killed, restarted at the heal |
//! | `partition-oneway` | nobody hears one node's raft messages, it hears everybody (dropped in-process: TCP cannot be cut one way) |
//! | `pd-cut` | one or two nodes cannot reach PD |
//! | `client-cut` | clients cannot reach one or two nodes |
//! | `delay` | raft messages of one to three nodes delayed 20–300 ms (in-process: no netem here); half the time one of them leads a live key's region |
//! | `delay-transfer` | messages to a region's leader delayed 450 ms while PD moves its leadership away |
//! | `delay-split` | every node's raft messages delayed 100–250 ms while, every 150 ms, splits move every register slot's live keys: writes proposed before a split commits apply after it |
//!
//! PD faults (`pd`; they need three PD members, `--pd-members`):
//!
//! | name | fault |
//! |------|-------|
//! | `pd-kill-leader` | SIGKILL the PD leader; measures kill → another member serving; restart at the heal |
//! | `pd-pause-leader` | SIGSTOP the PD leader (its lease must run out before another serves) |
//! | `pd-partition-leader` | the PD leader partitioned from the other members (and etcd), both ways |
//! | `pd-kill-majority` | SIGKILL the PD leader and a majority with it: no PD at all until the heal |
//!
//! `everything` = the three lists and `crash-point`. Network faults need the
//! nodes in namespaces (root); the harness refuses them otherwise unless
//! told to skip them. Node partitions cut node–node links only; PD and
//! clients reach every node unless a fault says otherwise. Clock skew stays inside
//! the lease's safety margin (see the node's `--enable-test-controls`): a
//! lease of 0.8 s on a clock running at 0.95× lasts 0.84 s of real time,
//! below the ~0.9 s a follower must wait before it may elect a new leader.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mnemo_client::RawClient;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;

use crate::cluster::{wait_for, Cluster};
use crate::history::Recorder;
use crate::report::NemesisWindow;

mod events;
mod fault;
mod pd;

pub use events::{EventTally, EVENT_METRICS};
pub use fault::{every_fault, Fault};

/// The crash points the nemesis arms: `mnemo-node`'s (see
/// `mnemo_node::failpoints::CRASH_POINTS`) and PD's region-heartbeat handler.
pub const CRASH_POINTS: [&str; 13] = [
    "pd_region_heartbeat",
    "raft_before_save",
    "raft_after_save",
    "raft_between_kv_and_raft_write",
    "snapshot_generate",
    "snapshot_send",
    "snapshot_apply_after_mark",
    "snapshot_apply_after_ingest",
    "split_after_apply",
    "conf_change_apply",
    "raft_log_gc_after_kv_sync",
    "apply_pool_after_write",
    "store_loop_round",
];

/// Exit code of a node that died at a crash point.
const CRASH_POINT_EXIT_CODE: i32 = 86;

/// How often a fault kind ran and how often it took effect.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct FaultTally {
    /// Windows of this kind.
    pub runs: u64,
    /// Windows in which it took effect.
    pub effective: u64,
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
    /// Nodes that exited on their own (crashed) other than at an armed
    /// crash point, described; each was restarted so the run could go on.
    pub crashes: Vec<String>,
    /// Crash points that fired, by name.
    pub crash_points_fired: BTreeMap<String, u64>,
    /// Runs and effective runs per fault kind.
    pub tally: BTreeMap<&'static str, FaultTally>,
    /// Node counters over the run.
    pub events: EventTally,
}

/// A fault's account of itself: what it did, and whether it took effect.
struct Done {
    desc: String,
    effective: bool,
}

/// A region's leader and one of its followers, as PD last saw them.
struct LeaderLink {
    region_id: u64,
    /// The leader's node index.
    leader: usize,
    leader_store: u64,
    follower_store: u64,
}

fn done(desc: impl Into<String>, effective: bool) -> Done {
    Done { desc: desc.into(), effective }
}

/// The nemesis: owns the cluster while the run lasts.
pub struct Nemesis {
    /// The cluster under test (given back by [`Nemesis::run`]).
    pub cluster: Cluster,
    faults: Vec<Fault>,
    rng: StdRng,
    recorder: Recorder,
    /// Keys whose regions the faults aim at (register slots stand for the
    /// slot's live key, see [`Nemesis::random_key`]).
    keys: Vec<Vec<u8>>,
    /// When the workloads started (the live register keys follow from it).
    started: Instant,
    /// Splits of live keys asked so far (makes each split point new).
    splits_asked: u64,
    /// A client of its own, for the kill-leader recovery probe.
    probe: Arc<RawClient>,
    runtime: tokio::runtime::Handle,
    log: NemesisLog,
    killed: Vec<usize>,
    paused: Vec<usize>,
    /// PD members killed or stopped by the current fault.
    killed_pds: Vec<usize>,
    paused_pds: Vec<usize>,
    skewed: Vec<usize>,
    delayed: Vec<usize>,
    /// Nodes with an armed crash point, and which.
    armed: HashMap<usize, &'static str>,
    /// PD died at its crash point since `pd_crash_point` armed it.
    pd_point_fired: bool,
    /// Nodes that died at their armed crash point since the fault began.
    fired: HashMap<usize, &'static str>,
    next_scrape: Instant,
}

impl Nemesis {
    /// A nemesis over `cluster` injecting `faults` (network faults must be
    /// dropped by the caller if the cluster cannot cut links).
    pub fn new(
        cluster: Cluster,
        faults: Vec<Fault>,
        seed: u64,
        recorder: Recorder,
        keys: Vec<Vec<u8>>,
        started: Instant,
        probe: Arc<RawClient>,
    ) -> Nemesis {
        let can_partition = cluster.can_partition();
        let pd_group = cluster.pd_member_count() >= 3;
        let faults = faults
            .into_iter()
            .filter(|f| (can_partition || !f.is_partition()) && (pd_group || !f.is_pd()))
            .collect();
        Nemesis {
            cluster,
            faults,
            rng: StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973),
            recorder,
            keys,
            started,
            splits_asked: 0,
            probe,
            runtime: tokio::runtime::Handle::current(),
            log: NemesisLog::default(),
            killed: Vec::new(),
            paused: Vec::new(),
            killed_pds: Vec::new(),
            paused_pds: Vec::new(),
            skewed: Vec::new(),
            delayed: Vec::new(),
            armed: HashMap::new(),
            pd_point_fired: false,
            fired: HashMap::new(),
            next_scrape: Instant::now(),
        }
    }

    /// Injects faults until `stop` is set, then heals everything. Blocking:
    /// run it on its own thread (`spawn_blocking`). Returns before `stop`
    /// only by panicking (a fault it could not inject or heal).
    pub fn run(mut self, stop: Arc<AtomicBool>) -> (Cluster, NemesisLog) {
        let mut deck: Vec<Fault> = Vec::new();
        self.sleep_until(Instant::now() + Duration::from_secs(2), &stop);
        while !stop.load(Ordering::Relaxed) {
            if self.faults.is_empty() {
                // No faults: only watch for crashes until the run ends.
                self.sleep_until(Instant::now() + Duration::from_millis(500), &stop);
                self.restart_crashed();
                continue;
            }
            if deck.is_empty() {
                deck = self.faults.clone();
                deck.shuffle(&mut self.rng);
            }
            let fault = deck.pop().expect("refilled");
            let start_ns = self.recorder.now_ns();
            let hold = Duration::from_millis(self.rng.gen_range(1500..4000));
            let outcome = self.start(fault, hold, &stop);
            self.restart_crashed();
            let end_ns = self.recorder.now_ns();
            tracing::info!(fault = fault.name(), desc = %outcome.desc, effective = outcome.effective, "fault healed");
            let t = self.log.tally.entry(fault.name()).or_default();
            t.runs += 1;
            t.effective += outcome.effective as u64;
            // A fault that did not take effect is dealt again soon (a few
            // times at most), so every kind gets its chance in a short run.
            if t.effective == 0 && t.runs < 3 {
                let at = deck.len().saturating_sub(self.rng.gen_range(1..=3));
                deck.insert(at, fault);
            }
            self.log.windows.push(NemesisWindow {
                name: format!("{} {}", fault.name(), outcome.desc),
                kind: fault.name().to_string(),
                effective: outcome.effective,
                start_ns,
                end_ns,
            });
            self.log.faults.push(fault);
            let quiet = Duration::from_millis(self.rng.gen_range(1000..2000));
            self.sleep_until(Instant::now() + quiet, &stop);
        }
        self.heal_all();
        for i in 0..self.cluster.node_count() {
            self.log.events.scrape(&self.cluster, i);
        }
        (self.cluster, self.log)
    }

    /// Starts `fault`, holds it for `hold` (or until `stop`), heals it.
    fn start(&mut self, fault: Fault, hold: Duration, stop: &AtomicBool) -> Done {
        let n = self.cluster.node_count();
        let hold_until = Instant::now() + hold;
        match fault {
            Fault::PartitionOne | Fault::PartitionLeader => {
                let leaders =
                    if fault == Fault::PartitionLeader { self.node_with_most_leaders() } else { None };
                let v = leaders.unwrap_or_else(|| self.rng.gen_range(0..n));
                let ok = self.cut(&[v], &others(n, &[v]));
                self.hold(hold_until, stop);
                self.heal_network();
                done(format!("n{}", v + 1), ok && (fault == Fault::PartitionOne || leaders.is_some()))
            }
            Fault::PartitionHalves => {
                let order = self.shuffled(n);
                let (minority, majority) = order.split_at(n / 2);
                let ok = self.cut(minority, majority);
                self.hold(hold_until, stop);
                self.heal_network();
                done(format!("{} | {}", names(minority), names(majority)), ok)
            }
            Fault::PartitionBridge => {
                let order = self.shuffled(n);
                let bridge = order[n / 2];
                let (left, right) = (&order[..n / 2], &order[n / 2 + 1..]);
                let ok = self.cut(left, right);
                self.hold(hold_until, stop);
                self.heal_network();
                done(format!("{} | n{} | {}", names(left), bridge + 1, names(right)), ok)
            }
            Fault::PartitionRing => {
                let order = self.shuffled(n);
                let ok = self.partition(&ring_grudge(&order));
                self.hold(hold_until, stop);
                self.heal_network();
                done(format!("ring {}", names(&order)), ok)
            }
            Fault::PartitionOneWay => {
                // Raft messages only (TCP cannot be cut one way: its ACKs go
                // back): v's are dropped on the way out, it still hears all.
                let v = self.rng.gen_range(0..n);
                let stores: Vec<u64> =
                    others(n, &[v]).iter().filter_map(|&i| self.cluster.store_id_of(i)).collect();
                self.delayed.push(v);
                let body = json!({ "ms": 0, "to_stores": stores, "drop": true });
                let ok = self.status_post(v, "/debug/transport-delay", body).is_ok();
                self.hold(hold_until, stop);
                self.undelay();
                done(format!("nobody hears n{}", v + 1), ok)
            }
            Fault::KillOne | Fault::KillMinority | Fault::KillMajority | Fault::KillAll => {
                let count = match fault {
                    Fault::KillOne => 1,
                    Fault::KillMinority => (n - 1) / 2,
                    Fault::KillMajority => n / 2 + 1,
                    _ => n,
                };
                let order = self.shuffled(n);
                let victims = &order[..count];
                let ok = victims.iter().all(|&v| self.kill(v));
                self.hold(hold_until, stop);
                self.restart_killed();
                done(names(victims), ok)
            }
            Fault::KillLeader => {
                let key = self.random_key();
                let Some(v) = self.cluster.leader_node_of(&key) else {
                    self.hold(hold_until, stop);
                    return done("no leader known", false);
                };
                let ok = self.kill(v);
                let killed_at = Instant::now();
                let recovery = self.probe_write(&key, killed_at, stop);
                self.log.leader_kill_recovery.push(recovery);
                self.hold(hold_until, stop);
                self.restart_killed();
                let desc = match recovery {
                    Some(d) => format!("n{} ({}: write ok after {} ms)", v + 1, show(&key), d.as_millis()),
                    None => format!("n{} ({}: no write within 20 s)", v + 1, show(&key)),
                };
                done(desc, ok)
            }
            Fault::Pause => {
                let v = self.rng.gen_range(0..n);
                let ok = self.cluster.node_running(v);
                self.cluster.pause_node(v);
                self.paused.push(v);
                self.hold(hold_until, stop);
                self.resume_paused();
                done(format!("n{}", v + 1), ok)
            }
            Fault::ShuffleLeader | Fault::ShuffleRegion => {
                // Took effect if leaders moved / membership changed meanwhile.
                let event =
                    if fault == Fault::ShuffleLeader { "leader_changes" } else { "conf_changes_applied" };
                let before = self.event_count(event);
                let name = format!("{}-scheduler", fault.name());
                let ok = self.add_scheduler(&name);
                self.hold(hold_until, stop);
                self.remove_scheduler(&name);
                let moved = self.event_count(event).saturating_sub(before);
                done(format!("{moved} {event}"), ok && moved > 0)
            }
            Fault::Split => {
                let splits = self.split_until(hold_until, stop);
                done(format!("{splits} splits asked"), splits > 0)
            }
            Fault::ClockSkew => {
                let order = self.shuffled(n);
                let count = self.rng.gen_range(1..=2.min(n));
                let mut parts = Vec::new();
                let mut ok = true;
                for &v in &order[..count] {
                    let rate: f64 = self.rng.gen_range(0.95..1.5);
                    let jump_ms: u64 = self.rng.gen_range(0..1000);
                    ok &= self.skew(v, rate, jump_ms);
                    parts.push(format!("n{} ×{rate:.2} +{jump_ms}ms", v + 1));
                }
                self.hold(hold_until, stop);
                self.unskew();
                done(parts.join(", "), ok)
            }
            Fault::CrashPoint => self.crash_point(hold_until, stop),
            Fault::PartitionKill => {
                let order = self.shuffled(n);
                let (cut, dead) = (order[0], order[1]);
                let ok = self.cut(&[cut], &others(n, &[cut])) & self.kill(dead);
                self.hold(hold_until, stop);
                self.heal_network();
                self.restart_killed();
                done(format!("n{} cut, n{} killed", cut + 1, dead + 1), ok)
            }
            Fault::SkewPartitionLeader => {
                let Some(v) = self.node_with_most_leaders() else {
                    self.hold(hold_until, stop);
                    return done("no leader known", false);
                };
                let rate: f64 = self.rng.gen_range(0.95..1.0);
                let ok = self.skew(v, rate, 0) & self.cut(&[v], &others(n, &[v]));
                self.hold(hold_until, stop);
                self.heal_network();
                self.unskew();
                done(format!("n{} ×{rate:.2}", v + 1), ok)
            }
            Fault::KillShuffle => {
                let before = self.event_count("conf_changes_applied");
                let ok = self.add_scheduler("shuffle-region-scheduler");
                let v = self.rng.gen_range(0..n);
                let killed = self.kill(v);
                self.hold(hold_until, stop);
                self.restart_killed();
                self.remove_scheduler("shuffle-region-scheduler");
                let moved = self.event_count("conf_changes_applied").saturating_sub(before);
                done(format!("n{}, {moved} conf changes", v + 1), ok && killed && moved > 0)
            }
            Fault::KillSplit => {
                let key = self.random_key();
                let leader = self.cluster.leader_node_of(&key);
                let half = Instant::now() + hold / 2;
                let mut splits = self.split_until(half, stop);
                let killed = leader.is_some_and(|v| self.kill(v));
                splits += self.split_until(hold_until, stop);
                self.restart_killed();
                let who = leader.map_or("no leader".into(), |v| format!("n{}", v + 1));
                done(format!("{who} killed, {splits} splits asked"), killed && splits > 0)
            }
            Fault::PdKillLeader | Fault::PdPauseLeader | Fault::PdPartitionLeader | Fault::PdKillMajority => {
                self.pd_fault(fault, hold_until, stop)
            }
            Fault::PdCut | Fault::ClientCut => {
                let order = self.shuffled(n);
                let victims = &order[..self.rng.gen_range(1..=2.min(n))];
                let mut ok = true;
                for &v in victims {
                    let r = if fault == Fault::PdCut {
                        self.cluster.cut_from_pd(v)
                    } else {
                        self.cluster.cut_from_clients(v)
                    };
                    if let Err(e) = r {
                        panic!("cannot cut n{}: {e}", v + 1);
                    }
                    ok &= self.cluster.node_running(v);
                }
                self.hold(hold_until, stop);
                self.heal_network();
                done(names(victims), ok)
            }
            Fault::Delay => {
                let order = self.shuffled(n);
                let mut victims = order[..self.rng.gen_range(1..=3.min(n))].to_vec();
                // Three times in four the leader of a live key's region (the
                // TTL edge keys' three times in four of those) is delayed
                // towards one of its followers only: it commits on time with
                // the other, and the delayed follower applies what it
                // decided late.
                let mut slow_link = None;
                if self.rng.gen_bool(0.75) {
                    let key = if self.rng.gen_bool(0.75) {
                        crate::workload::EDGE_PREFIX.to_vec()
                    } else {
                        self.random_key()
                    };
                    slow_link = self.leader_and_a_follower(&key);
                }
                let ms: u64 = self.rng.gen_range(20..300);
                let mut ok = true;
                if let Some(link) = &slow_link {
                    victims.retain(|&v| v != link.leader);
                    ok &= self.delay(link.leader, ms, Some(link.follower_store));
                }
                ok = victims.iter().fold(ok, |ok, &v| ok & self.delay(v, ms, None));
                self.hold(hold_until, stop);
                self.undelay();
                let link = slow_link
                    .map(|l| format!(" n{}→store {}", l.leader + 1, l.follower_store))
                    .unwrap_or_default();
                done(format!("{}{link} +{ms}ms", names(&victims)), ok)
            }
            Fault::DelayTransfer => self.delay_transfer(hold_until, stop),
            Fault::DelaySplit => {
                let ms: u64 = self.rng.gen_range(100..250);
                let ok = (0..n).fold(true, |ok, v| ok & self.delay(v, ms, None));
                let splits = self.split_until_every(hold_until, stop, Duration::from_millis(150), true);
                self.undelay();
                done(format!("+{ms}ms, {splits} splits asked"), ok && splits > 0)
            }
        }
    }

    /// `crash-point`: see the module doc.
    fn crash_point(&mut self, hold_until: Instant, stop: &AtomicBool) -> Done {
        let n = self.cluster.node_count();
        let point = CRASH_POINTS[self.rng.gen_range(0..CRASH_POINTS.len())];
        let v = self.rng.gen_range(0..n);
        let mut target = v;
        self.fired.clear();
        let mut scheduler = None;
        match point {
            "pd_region_heartbeat" => return self.pd_crash_point(hold_until, stop),
            "snapshot_apply_after_mark" | "snapshot_apply_after_ingest" => {
                // v misses writes while down, then needs a snapshot at restart.
                self.kill(v);
                let back_at = Instant::now() + (hold_until - Instant::now()) / 3;
                self.hold(back_at, stop);
                self.killed.retain(|&k| k != v);
                self.cluster.restart_node_with_failpoints(v, &format!("{point}=panic"));
                self.armed.insert(v, point);
            }
            "snapshot_generate" | "snapshot_send" => {
                // The leaders' node sends snapshots to a node that was down.
                target = self.node_with_most_leaders().unwrap_or(v);
                let w = (target + 1 + self.rng.gen_range(0..n - 1)) % n;
                if self.arm(target, point) {
                    self.kill(w);
                    let back_at = Instant::now() + (hold_until - Instant::now()) / 3;
                    self.hold(back_at, stop);
                    self.killed.retain(|&k| k != w);
                    self.cluster.restart_node(w);
                }
            }
            "conf_change_apply" => {
                // Membership changes happen while shuffle-region runs.
                self.arm(v, point);
                let name = "shuffle-region-scheduler";
                if self.add_scheduler(name) {
                    scheduler = Some(name);
                }
            }
            _ => {
                self.arm(v, point);
            }
        }
        // Wait for it to fire (driving splits for the split point). A point
        // whose path did not run by two thirds of the window gives way to
        // one that fires at once (the next raft save on that node), so the
        // fault always kills somewhere; the description says which fired.
        let fallback_at = Instant::now() + (hold_until.saturating_duration_since(Instant::now())) * 2 / 3;
        let mut fired_point = None;
        let mut fell_back = false;
        while Instant::now() < hold_until && !stop.load(Ordering::Relaxed) {
            if point == "split_after_apply" {
                let until = Instant::now() + Duration::from_millis(300);
                self.split_until(until, stop);
            } else {
                self.hold(Instant::now() + Duration::from_millis(100), stop);
            }
            if let Some(p) = self.fired.remove(&target) {
                fired_point = Some(p);
                break;
            }
            if !fell_back && Instant::now() >= fallback_at && self.armed.contains_key(&target) {
                fell_back = true;
                self.cluster.disarm_crash_point(target, point);
                self.armed.remove(&target);
                self.arm(target, "raft_before_save");
            }
        }
        for (node, name) in std::mem::take(&mut self.armed) {
            self.cluster.disarm_crash_point(node, name);
        }
        if let Some(name) = scheduler {
            self.remove_scheduler(name);
        }
        self.restart_killed();
        let desc = match fired_point {
            Some(p) => format!("{p} fired on n{}", target + 1),
            None => format!("{point} armed on n{}, did not fire", target + 1),
        };
        done(desc, fired_point.is_some())
    }

    /// `delay-transfer`: messages to a region's leader are delayed on every
    /// other node, and PD moves the leadership away; the old leader learns
    /// of its successor only after the delay.
    fn delay_transfer(&mut self, hold_until: Instant, stop: &AtomicBool) -> Done {
        let n = self.cluster.node_count();
        let key = self.random_key();
        let Some(LeaderLink { region_id, leader: l, leader_store, follower_store: to }) =
            self.leader_and_a_follower(&key)
        else {
            self.hold(hold_until, stop);
            return done("no leader and follower known", false);
        };
        let mut ok = true;
        // 450 ms: the old leader hears of its successor ~900 ms after the
        // transfer began, well after its lease (0.8 s from the last write it
        // proposed) should have been given up.
        for i in others(n, &[l]) {
            ok &= self.delay(i, 450, Some(leader_store));
        }
        // Asked again while it has not moved: the balancers keep running, and
        // a membership change they make meanwhile cancels the operator as
        // stale (its epoch moved), as a refused or timed-out request ends it.
        let op = json!({ "name": "transfer-leader", "region_id": region_id, "to_store_id": to });
        let leader_now = |n: &Nemesis| n.region_of(&key).and_then(|r| r["leader"]["store_id"].as_u64());
        let mut asked = false;
        while Instant::now() < hold_until && !stop.load(Ordering::Relaxed) {
            if leader_now(self).is_some_and(|s| s != leader_store) {
                break;
            }
            asked |= self.cluster.pd_post("/pd/api/v1/operators", op.clone()).is_ok();
            self.hold((Instant::now() + Duration::from_millis(700)).min(hold_until), stop);
        }
        ok &= asked;
        self.hold(hold_until, stop);
        self.undelay();
        // Took effect if the leadership actually moved.
        let moved = leader_now(self).is_some_and(|s| s != leader_store);
        done(
            format!("n{} ({}) → store {to}{}", l + 1, show(&key), if moved { "" } else { ", did not move" }),
            ok && moved,
        )
    }

    /// Asks PD for splits that move live register keys into a new region,
    /// and near workload keys, every 300 ms until `until`.
    fn split_until(&mut self, until: Instant, stop: &AtomicBool) -> u64 {
        self.split_until_every(until, stop, Duration::from_millis(300), false)
    }

    /// [`Nemesis::split_until`] every `every`; with `every_slot`, each round
    /// moves every register slot's live keys into a new region at once, so
    /// that while the splits are in flight any write to a live register key
    /// races one (what `delay-split` is for).
    fn split_until_every(
        &mut self,
        until: Instant,
        stop: &AtomicBool,
        every: Duration,
        every_slot: bool,
    ) -> u64 {
        let mut splits = 0;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            self.splits_asked += 1;
            let at = if every_slot {
                let n = self.splits_asked;
                (0..crate::workload::REGISTER_KEYS)
                    .map(|slot| crate::workload::live_split_point(slot, n))
                    .collect()
            } else if self.rng.gen_bool(0.5) {
                let slot = self.rng.gen_range(0..crate::workload::REGISTER_KEYS);
                vec![crate::workload::live_split_point(slot, self.splits_asked)]
            } else {
                let mut at = self.random_key();
                at.extend(format!("/{:04}", self.rng.gen_range(0..10_000)).bytes());
                vec![at]
            };
            if self.cluster.split_at(&at).is_ok() {
                splits += at.len() as u64;
            }
            self.hold(Instant::now() + every, stop);
        }
        splits
    }

    /// A workload key to aim at: a counter, the set, or the live key of a
    /// register slot (live splits move a slot's keys away from its prefix).
    fn random_key(&mut self) -> Vec<u8> {
        let key = self.keys[self.rng.gen_range(0..self.keys.len())].clone();
        crate::workload::live_key_of(&key, self.started).unwrap_or(key)
    }

    fn shuffled(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.rng);
        order
    }

    /// Where `key`'s region leads from, and one of its followers chosen at
    /// random.
    fn leader_and_a_follower(&mut self, key: &[u8]) -> Option<LeaderLink> {
        let region = self.region_of(key)?;
        let leader_store = region["leader"]["store_id"].as_u64()?;
        let leader = self.cluster.node_index(&self.cluster.store_address(leader_store)?)?;
        let followers: Vec<u64> = region["peers"]
            .as_array()?
            .iter()
            .filter_map(|p| p["store_id"].as_u64())
            .filter(|s| *s != leader_store)
            .collect();
        let follower_store = *followers.choose(&mut self.rng)?;
        Some(LeaderLink { region_id: region["id"].as_u64()?, leader, leader_store, follower_store })
    }

    /// The region containing `key`, as PD lists it.
    fn region_of(&self, key: &[u8]) -> Option<serde_json::Value> {
        self.cluster.regions().into_iter().find(|r| {
            let start = crate::cluster::unhex(r["start_key"].as_str().unwrap_or(""));
            let end = crate::cluster::unhex(r["end_key"].as_str().unwrap_or(""));
            key >= start.as_slice() && (end.is_empty() || key < end.as_slice())
        })
    }

    /// Cuts every link between `a` and `b` (both directions).
    fn cut(&self, a: &[usize], b: &[usize]) -> bool {
        self.partition(&cut_grudge(self.cluster.node_count(), a, b))
    }

    /// Applies a grudge; true once the rules are in place.
    fn partition(&self, grudge: &[Vec<usize>]) -> bool {
        if let Err(e) = self.cluster.partition(grudge) {
            panic!("cannot partition the network: {e}");
        }
        true
    }

    fn heal_network(&self) {
        if let Err(e) = self.cluster.heal_network() {
            panic!("cannot heal the network: {e}");
        }
    }

    /// SIGKILLs node `v`; true if it was running.
    fn kill(&mut self, v: usize) -> bool {
        // A node that died on its own must be seen as such, not killed over.
        self.restart_crashed();
        let was_running = self.cluster.node_running(v);
        self.log.events.scrape(&self.cluster, v);
        self.cluster.kill_node(v);
        self.armed.remove(&v);
        if !self.killed.contains(&v) {
            self.killed.push(v);
        }
        was_running
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

    fn add_scheduler(&self, name: &str) -> bool {
        match self.cluster.pd_post("/pd/api/v1/schedulers", json!({ "name": name })) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(%e, "cannot add {name}");
                false
            }
        }
    }

    /// Stops scheduler `name`; retried, since a shuffler left on would
    /// keep churning after its window (a 404 means it is already gone).
    fn remove_scheduler(&self, name: &str) {
        let path = format!("/pd/api/v1/schedulers/{name}");
        wait_for(&format!("{name} removed"), Duration::from_secs(30), || {
            match self.cluster.pd_delete(&path) {
                Ok(()) => Some(()),
                Err(e) if e.contains("404") => Some(()),
                Err(_) => None,
            }
        });
    }

    /// Arms crash point `name` on node `v` (`panic`); true if armed.
    fn arm(&mut self, v: usize, name: &'static str) -> bool {
        match self.cluster.arm_crash_point(v, name, "panic") {
            Ok(()) => {
                self.armed.insert(v, name);
                true
            }
            Err(e) => {
                tracing::warn!(%e, node = v + 1, "cannot arm crash point {name}");
                false
            }
        }
    }

    fn status_post(&self, v: usize, path: &str, body: serde_json::Value) -> Result<(), String> {
        let url = format!("http://{}{path}", self.cluster.node_status_addr(v));
        ureq::post(&url)
            .timeout(Duration::from_secs(2))
            .send_json(body)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Skews node `v`'s lease clock; true if the node took it.
    fn skew(&mut self, v: usize, rate: f64, jump_ms: u64) -> bool {
        self.skewed.push(v);
        match self.status_post(v, "/debug/lease-clock", json!({ "rate": rate, "jump_ms": jump_ms })) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(%e, node = v + 1, "cannot skew the lease clock");
                false
            }
        }
    }

    /// Puts skewed clocks back to real speed; a clock left slow could
    /// stretch a later lease past an election, so this must not fail.
    fn unskew(&mut self) {
        self.restart_crashed();
        for v in std::mem::take(&mut self.skewed) {
            wait_for(&format!("n{}'s lease clock back to rate 1", v + 1), Duration::from_secs(10), || {
                self.status_post(v, "/debug/lease-clock", json!({ "rate": 1.0 })).ok()
            });
        }
    }

    /// Delays node `v`'s raft messages (to `store`, or to all) by `ms`.
    fn delay(&mut self, v: usize, ms: u64, store: Option<u64>) -> bool {
        self.delayed.push(v);
        let body = match store {
            Some(s) => json!({ "ms": ms, "to_stores": [s] }),
            None => json!({ "ms": ms }),
        };
        match self.status_post(v, "/debug/transport-delay", body) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(%e, node = v + 1, "cannot delay raft messages");
                false
            }
        }
    }

    /// Removes every delay (a restarted node has none).
    fn undelay(&mut self) {
        self.restart_crashed();
        let mut delayed = std::mem::take(&mut self.delayed);
        delayed.sort_unstable();
        delayed.dedup();
        for v in delayed {
            wait_for(&format!("n{}'s raft delay cleared", v + 1), Duration::from_secs(10), || {
                self.status_post(v, "/debug/transport-delay", json!({ "ms": 0 })).ok()
            });
        }
    }

    /// Records and restarts nodes that exited on their own. A node that died
    /// at the crash point armed on it is what the fault wanted (counted);
    /// any other exit is a crash, a finding of the run; the restart lets
    /// the run go on and heal.
    fn restart_crashed(&mut self) {
        if let Some(status) = self.cluster.reap_crashed_pd() {
            let at = self.recorder.now_ns() as f64 / 1e9;
            if status.code() == Some(CRASH_POINT_EXIT_CODE) {
                // Only `pd_crash_point` arms PD's crash point: expected.
                tracing::info!("PD died at its crash point; restarting it");
                *self.log.crash_points_fired.entry("pd_region_heartbeat".into()).or_default() += 1;
                self.pd_point_fired = true;
            } else {
                tracing::error!(%status, "PD crashed; restarting it");
                self.log.crashes.push(format!("PD exited on its own ({status}) by {at:.1} s; see pd1.log"));
            }
            self.cluster.restart_pd();
        }
        for (v, status) in self.cluster.reap_crashed_nodes() {
            let at = self.recorder.now_ns() as f64 / 1e9;
            // Exit 86 comes only from a crash point's panic, and only the
            // nemesis arms crash points: expected, even if it fired after a
            // disarm that did not reach the node.
            let armed = self.armed.remove(&v);
            match armed {
                _ if status.code() == Some(CRASH_POINT_EXIT_CODE) => {
                    let point = armed.unwrap_or("a crash point armed earlier");
                    tracing::info!(node = v + 1, point, "node died at its crash point; restarting it");
                    *self.log.crash_points_fired.entry(point.to_string()).or_default() += 1;
                    self.fired.insert(v, point);
                }
                _ => {
                    tracing::error!(node = v + 1, %status, "node crashed; restarting it");
                    self.log
                        .crashes
                        .push(format!("n{0} exited on its own ({status}) by {at:.1} s; see n{0}.log", v + 1));
                }
            }
            // A fresh process has a true clock, no delays and is not stopped.
            self.skewed.retain(|&s| s != v);
            self.delayed.retain(|&d| d != v);
            self.paused.retain(|&p| p != v);
            self.cluster.restart_node(v);
        }
    }

    /// Heals whatever is still broken (the run is ending).
    fn heal_all(&mut self) {
        self.restart_crashed();
        self.heal_pd();
        for (node, name) in std::mem::take(&mut self.armed) {
            self.cluster.disarm_crash_point(node, name);
        }
        self.heal_network();
        self.resume_paused();
        self.restart_killed();
        self.unskew();
        self.undelay();
        for name in ["shuffle-leader-scheduler", "shuffle-region-scheduler"] {
            self.remove_scheduler(name);
        }
    }

    /// Index of the node holding the most region leaders, per PD.
    fn node_with_most_leaders(&self) -> Option<usize> {
        let mut counts = vec![0usize; self.cluster.node_count()];
        let node_of_store: HashMap<u64, usize> =
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

    /// The cluster's count of `event` so far (see [`EVENT_METRICS`]), read now.
    fn event_count(&mut self, event: &str) -> u64 {
        for i in 0..self.cluster.node_count() {
            if self.cluster.node_running(i) && !self.paused.contains(&i) {
                self.log.events.scrape(&self.cluster, i);
            }
        }
        self.log.events.totals().get(event).copied().unwrap_or(0)
    }

    /// Holds a fault until `until` (or `stop`), restarting crashed nodes
    /// and reading node counters along the way.
    fn hold(&mut self, until: Instant, stop: &AtomicBool) {
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            self.restart_crashed();
            self.scrape_now_and_then();
        }
    }

    /// Like [`Nemesis::hold`], between faults.
    fn sleep_until(&mut self, until: Instant, stop: &AtomicBool) {
        self.hold(until, stop);
    }

    fn scrape_now_and_then(&mut self) {
        if Instant::now() < self.next_scrape {
            return;
        }
        self.next_scrape = Instant::now() + Duration::from_secs(1);
        for i in 0..self.cluster.node_count() {
            if self.cluster.node_running(i) && !self.paused.contains(&i) {
                self.log.events.scrape(&self.cluster, i);
            }
        }
    }
}

/// Every node but `except`.
fn others(n: usize, except: &[usize]) -> Vec<usize> {
    (0..n).filter(|i| !except.contains(i)).collect()
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
}
