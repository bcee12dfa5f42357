//! A simulated cluster for scheduling tests: fake nodes that carry out
//! steps the way the contract says real ones do, PD's region map fed only by
//! their heartbeats, and a clock that moves in 100 ms ticks.
//!
//! Fake node behaviour: a step whose epoch is not the region's is ignored;
//! a new learner is pending (catching up) for [`CATCH_UP`]; a
//! `ChangePeerV2` enters the joint state at once (promotions visible, the
//! removed voter still listed) and leaves it on the next tick; a leader
//! transfer to a live voter succeeds at once; a leader on a dead store is
//! replaced by the live voter with the lowest id on the next tick. Leaders
//! heartbeat every second and at once after a change; dead stores send
//! nothing and their peers show as pending.
//!
//! By default PD and the nodes talk instantly and reliably. [`Sim::unreliable`]
//! makes the link what it is in a real cluster: heartbeats and orders are
//! delayed by up to [`Unreliable::max_delay_ticks`], some are lost, orders
//! are sometimes delivered twice, and operators are cancelled at random (as
//! `DELETE /operators/{id}` does), so PD plans on a stale view and steps
//! arrive late, twice, or after their operator is gone. Whatever happens,
//! [`Sim::min_voters`] records the fewest voters any region ever had.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use mnemo_proto::types::{Peer, PeerId, PeerRole, Region, RegionEpoch, RegionId, StoreId};

use super::{ClusterSnapshot, Coordinator, OperatorController, ScheduleOrder, Scheduler, Settings, Step};
use crate::region_map::{RegionMap, RegionRuntime, Verdict};
use crate::store::{StoreInfo, StoreMeta, StoreState, StoreStats};

/// How long a new learner stays pending.
pub const CATCH_UP: Duration = Duration::from_millis(500);

/// Simulated time per tick (one patrol).
pub const TICK: Duration = Duration::from_millis(100);

/// One region as its nodes know it.
struct Truth {
    region: Region,
    leader: PeerId,
    pending_until: BTreeMap<PeerId, SystemTime>,
    /// Voters to drop when leaving the joint state.
    leaving: Vec<PeerId>,
    changed: bool,
}

/// How unreliable the link between PD and the nodes is.
pub struct Unreliable {
    rng: StdRng,
    /// Heartbeats and orders arrive within this many ticks.
    pub max_delay_ticks: u64,
    /// Chance that a heartbeat or an order is lost.
    pub loss: f64,
    /// Chance that an order is delivered twice (at two different times).
    pub duplicate: f64,
    /// Chance per tick that one operator in flight is cancelled.
    pub cancel: f64,
    reports: Vec<(u64, Region, RegionRuntime)>,
    orders: Vec<(u64, ScheduleOrder)>,
}

impl Unreliable {
    /// Delays of up to 3 s, 10 % loss, 30 % duplicates, a cancellation every
    /// second or so; random choices follow `seed`.
    pub fn new(seed: u64) -> Self {
        Unreliable {
            rng: StdRng::seed_from_u64(seed),
            max_delay_ticks: 30,
            loss: 0.1,
            duplicate: 0.3,
            cancel: 0.1,
            reports: Vec::new(),
            orders: Vec::new(),
        }
    }

    fn due(&mut self, now_tick: u64) -> u64 {
        now_tick + self.rng.gen_range(0..=self.max_delay_ticks)
    }
}

/// The cluster as PD sees it in `$sim` (a macro, so that it borrows only
/// the fields it reads and `ops` stays free to change).
macro_rules! snapshot {
    ($sim:expr) => {
        ClusterSnapshot {
            stores: &$sim.stores,
            regions: &$sim.regions,
            now: $sim.now,
            alive_since: $sim.alive_since,
        }
    };
}

/// A cluster of fake nodes and one PD coordinator.
pub struct Sim {
    pub stores: BTreeMap<StoreId, StoreInfo>,
    pub regions: RegionMap,
    pub ops: OperatorController,
    pub settings: Settings,
    pub now: SystemTime,
    pub dead: BTreeSet<StoreId>,
    /// Operators created so far.
    pub created: usize,
    /// Operators created so far, by description (`shuffle-leader`, ...).
    pub created_by: BTreeMap<&'static str, usize>,
    /// Most operators of one description created within one tick.
    pub burst: BTreeMap<&'static str, usize>,
    /// Most operators in flight of any one kind seen after a tick, by kind name.
    pub peak: BTreeMap<&'static str, usize>,
    /// The fewest voters any region had after any change (in a joint state,
    /// of the incoming configuration).
    pub min_voters: usize,
    /// `Some`: PD and the nodes talk over an unreliable link.
    pub unreliable: Option<Unreliable>,
    coordinator: Coordinator,
    truth: BTreeMap<RegionId, Truth>,
    alive_since: SystemTime,
    next_id: u64,
    ticks: u64,
}

impl Sim {
    /// An empty cluster with `settings`.
    pub fn new(settings: Settings) -> Sim {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        Sim {
            stores: BTreeMap::new(),
            regions: RegionMap::new(),
            ops: OperatorController::default(),
            settings,
            now,
            dead: BTreeSet::new(),
            created: 0,
            created_by: BTreeMap::new(),
            burst: BTreeMap::new(),
            peak: BTreeMap::new(),
            min_voters: usize::MAX,
            unreliable: None,
            coordinator: Coordinator::new(7),
            truth: BTreeMap::new(),
            alive_since: now,
            next_id: 10_000,
            ticks: 0,
        }
    }

    /// Adds an Up store with `labels` (e.g. `[("zone", "z1"), ("host", "h1")]`).
    pub fn store(&mut self, id: u64, labels: &[(&str, &str)]) -> &mut Self {
        let meta = StoreMeta {
            id: StoreId(id),
            address: format!("n{id}:20160"),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        self.stores.insert(StoreId(id), StoreInfo { meta, stats: None, last_heartbeat: Some(self.now) });
        self
    }

    /// `n` regions tiling the key space, each with voters on `stores`, led
    /// from the first.
    pub fn regions(&mut self, n: u64, stores: &[u64]) -> &mut Self {
        for i in 0..n {
            let key = |i: u64| if i == 0 || i == n { Vec::new() } else { format!("k{i:05}").into_bytes() };
            let peers: Vec<Peer> = stores
                .iter()
                .map(|&s| Peer { id: PeerId(self.alloc()), store_id: StoreId(s), role: PeerRole::Voter })
                .collect();
            let region = Region {
                id: RegionId(i + 1),
                start_key: key(i),
                end_key: key(i + 1),
                epoch: RegionEpoch { conf_ver: 1, version: 1 },
                peers,
            };
            let leader = region.peers[0].id;
            let truth =
                Truth { region, leader, pending_until: BTreeMap::new(), leaving: vec![], changed: true };
            self.truth.insert(RegionId(i + 1), truth);
        }
        self
    }

    /// Runs exactly these schedulers from the next tick on (the defaults,
    /// balance-leader and balance-region, until called).
    pub fn schedulers(&mut self, active: &[Scheduler]) -> &mut Self {
        self.coordinator.set_schedulers(active.iter().copied().collect());
        self
    }

    /// The store stops for good: no heartbeats, its peers fall behind.
    pub fn kill(&mut self, store: u64) {
        self.dead.insert(StoreId(store));
    }

    /// Sets a store's lifecycle state (as `DELETE /store/{id}` does).
    pub fn set_state(&mut self, store: u64, state: StoreState) {
        self.stores.get_mut(&StoreId(store)).expect("known store").meta.state = state;
    }

    /// Runs for `secs` simulated seconds.
    pub fn run(&mut self, secs: u64) {
        for _ in 0..secs * 10 {
            self.tick();
        }
    }

    /// Runs until `done` holds (checked every simulated second); returns the
    /// simulated seconds it took, or `None` after `limit_secs`.
    pub fn run_until(&mut self, limit_secs: u64, mut done: impl FnMut(&Sim) -> bool) -> Option<u64> {
        for sec in 0..limit_secs {
            if done(self) {
                return Some(sec);
            }
            self.run(1);
        }
        done(self).then_some(limit_secs)
    }

    /// Adds the operator a human asks for on `region`, as PD's API does,
    /// and sends its first step.
    pub fn admin(&mut self, region: u64, req: &super::AdminRequest) -> Result<(), String> {
        let snap = snapshot!(self);
        let mut next_id = self.next_id;
        let mut ids = || {
            next_id += 1;
            Some(PeerId(next_id))
        };
        let order = super::admin::add(&snap, &self.settings, &mut self.ops, RegionId(region), req, &mut ids)?;
        self.next_id = next_id;
        if let Some(order) = order {
            self.send(order);
        }
        Ok(())
    }

    /// Scatters `regions` as `POST /regions/scatter` does (one set of
    /// picks for all); returns the regions that refused, with why.
    pub fn scatter(&mut self, regions: &[u64]) -> Vec<(u64, String)> {
        let mut picks = super::ScatterPicks::default();
        let mut chosen = Vec::new();
        let mut rng = StdRng::seed_from_u64(7);
        let mut failed = Vec::new();
        for &region in regions {
            let snap = snapshot!(self);
            let ctx = super::Ctx { snap: &snap, settings: &self.settings, ops: &self.ops };
            let Some(info) = self.regions.get(RegionId(region)).cloned() else { continue };
            let outcome = picks.choose(&info, &ctx, &mut rng).and_then(|(to_stores, leader)| {
                chosen = to_stores.clone();
                if super::ScatterPicks::in_place(&info, &to_stores, leader) {
                    return Ok(leader); // where the scatter would put it already
                }
                self.admin(region, &super::AdminRequest::Scatter { to_stores, leader }).map(|()| leader)
            });
            let outcome = outcome.map(|leader| picks.count(&chosen, leader));
            if let Err(e) = outcome {
                failed.push((region, e));
            }
        }
        failed
    }

    /// One 100 ms tick: nodes progress, heartbeat when due or changed, PD
    /// patrols and its orders are carried out at once.
    pub fn tick(&mut self) {
        self.now += TICK;
        self.ticks += 1;
        let now = self.now;
        for (id, s) in self.stores.iter_mut() {
            if !self.dead.contains(id) {
                s.last_heartbeat = Some(now);
                let region_count =
                    self.truth.values().filter(|t| t.region.peer_on_store(*id).is_some()).count();
                s.stats = Some(StoreStats { region_count: region_count as u32, ..Default::default() });
            }
        }
        self.nodes_progress();
        self.deliver();
        let periodic = self.ticks.is_multiple_of(10);
        let ids: Vec<RegionId> = self.truth.keys().copied().collect();
        for id in ids {
            if periodic || self.truth[&id].changed {
                self.heartbeat(id);
            }
        }
        let snap = snapshot!(self);
        let mut next_id = self.next_id;
        let orders = self.coordinator.patrol(&snap, &self.settings, &mut self.ops, &mut || {
            next_id += 1;
            Some(PeerId(next_id))
        });
        self.next_id = next_id;
        for order in orders {
            self.send(order);
        }
        // Operators created this tick (on heartbeats or patrol) are all still
        // in flight: none can finish before its region heartbeats again.
        let mut new: BTreeMap<&'static str, usize> = BTreeMap::new();
        for op in self.ops.iter().filter(|op| op.created == now) {
            *new.entry(op.desc).or_default() += 1;
        }
        for (desc, n) in new {
            self.created += n;
            *self.created_by.entry(desc).or_default() += n;
            let burst = self.burst.entry(desc).or_default();
            *burst = (*burst).max(n);
        }
        for kind in [super::OpKind::Leader, super::OpKind::Region, super::OpKind::Replica] {
            let peak = self.peak.entry(kind.name()).or_default();
            *peak = (*peak).max(self.ops.count(kind));
        }
    }

    fn alloc(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Joint states are left, dead leaders replaced, learners catch up.
    fn nodes_progress(&mut self) {
        let now = self.now;
        for t in self.truth.values_mut() {
            if !t.leaving.is_empty() {
                let leaving = std::mem::take(&mut t.leaving);
                t.region.peers.retain(|p| !leaving.contains(&p.id));
                t.region.epoch.conf_ver += 1;
                t.changed = true;
            }
            let leader_store = t.region.peer(t.leader).map(|p| p.store_id);
            if leader_store.is_none_or(|s| self.dead.contains(&s)) {
                if let Some(p) = t.region.voters().find(|p| !self.dead.contains(&p.store_id)) {
                    t.leader = p.id;
                    t.changed = true;
                }
            }
            let before = t.pending_until.len();
            t.pending_until.retain(|_, until| *until > now);
            t.changed |= before != t.pending_until.len();
        }
    }

    /// The leader reports its region; PD answers with a step, carried out.
    fn heartbeat(&mut self, id: RegionId) {
        let t = self.truth.get_mut(&id).expect("known region");
        t.changed = false;
        let Some(leader) = t.region.peer(t.leader).copied() else { return };
        if self.dead.contains(&leader.store_id) {
            return;
        }
        let region = t.region.clone();
        let pending: Vec<Peer> = region
            .peers
            .iter()
            .filter(|p| t.pending_until.contains_key(&p.id) || self.dead.contains(&p.store_id))
            .copied()
            .collect();
        let runtime = RegionRuntime {
            leader: Some(leader),
            pending_peers: pending,
            last_heartbeat: Some(self.now),
            ..Default::default()
        };
        let ticks = self.ticks;
        match &mut self.unreliable {
            Some(u) => {
                if !u.rng.gen_bool(u.loss) {
                    let due = u.due(ticks);
                    u.reports.push((due, region, runtime));
                }
            }
            None => self.receive(region, runtime),
        }
    }

    /// PD takes in a region heartbeat (a stale one is ignored, as the real
    /// PD does) and answers with the step to carry out, if any.
    fn receive(&mut self, region: Region, runtime: RegionRuntime) {
        let id = region.id;
        match self.regions.check(&region) {
            Verdict::Stale(_) => return,
            Verdict::Changed => {
                self.regions.put(region);
            }
            Verdict::Unchanged => {}
        }
        self.regions.set_runtime(id, runtime);
        let snap = snapshot!(self);
        let mut next_id = self.next_id;
        let order = self.coordinator.on_heartbeat(&snap, &self.settings, &mut self.ops, id, &mut || {
            next_id += 1;
            Some(PeerId(next_id))
        });
        self.next_id = next_id;
        if let Some(order) = order {
            self.send(order);
        }
    }

    /// PD sends `order` to its leader: carried out at once over a reliable
    /// link, else later, perhaps twice, perhaps never.
    fn send(&mut self, order: ScheduleOrder) {
        let ticks = self.ticks;
        let Some(u) = &mut self.unreliable else { return self.execute(order) };
        if u.rng.gen_bool(u.loss) {
            return;
        }
        if u.rng.gen_bool(u.duplicate) {
            let due = u.due(ticks);
            u.orders.push((due, order.clone()));
        }
        let due = u.due(ticks);
        u.orders.push((due, order));
    }

    /// Over an unreliable link: delivers the heartbeats and orders due by
    /// now, and cancels an operator now and then.
    fn deliver(&mut self) {
        let ticks = self.ticks;
        let Some(u) = &mut self.unreliable else { return };
        let (due, later): (Vec<_>, Vec<_>) = u.reports.drain(..).partition(|(t, ..)| *t <= ticks);
        u.reports = later;
        let (due_orders, later): (Vec<_>, Vec<_>) = u.orders.drain(..).partition(|(t, _)| *t <= ticks);
        u.orders = later;
        let cancel = u.rng.gen_bool(u.cancel).then(|| u.rng.gen::<usize>());
        for (_, order) in due_orders {
            self.execute(order);
        }
        for (_, region, runtime) in due {
            self.receive(region, runtime);
        }
        let ids: Vec<RegionId> = self.ops.iter().map(|op| op.region_id).collect();
        if let Some(pick) = cancel.filter(|_| !ids.is_empty()) {
            self.ops.remove(ids[pick % ids.len()]);
        }
    }

    /// A leader carries out `order`, as the node contract says.
    fn execute(&mut self, order: ScheduleOrder) {
        let now = self.now;
        let Some(t) = self.truth.get_mut(&order.region_id) else { return };
        if order.epoch != t.region.epoch || order.leader.id != t.leader || !t.leaving.is_empty() {
            return; // stale, not the leader, or busy leaving a joint state
        }
        let r = &mut t.region;
        match order.step {
            Step::AddLearner(p) => {
                r.peers.push(Peer { role: PeerRole::Learner, ..p });
                t.pending_until.insert(p.id, now + CATCH_UP);
                r.epoch.conf_ver += 1;
            }
            Step::PromoteLearner(p) | Step::RemovePeer(p) => {
                if matches!(order.step, Step::RemovePeer(_)) {
                    r.peers.retain(|q| q.id != p.id);
                } else if let Some(q) = r.peers.iter_mut().find(|q| q.id == p.id) {
                    q.role = PeerRole::Voter;
                }
                r.epoch.conf_ver += 1;
            }
            Step::ChangePeerV2(changes) => {
                for change in changes {
                    match change {
                        super::PeerChange::Promote(p) => {
                            if let Some(q) = r.peers.iter_mut().find(|q| q.id == p.id) {
                                q.role = PeerRole::Voter;
                            }
                        }
                        super::PeerChange::Remove(p) => t.leaving.push(p.id),
                        super::PeerChange::AddLearner(p) => {
                            r.peers.push(Peer { role: PeerRole::Learner, ..p })
                        }
                    }
                }
                r.epoch.conf_ver += 1;
            }
            Step::TransferLeader { to, .. } => {
                if self.dead.contains(&to.store_id) || r.peer(to.id).is_none() {
                    return;
                }
                t.leader = to.id;
            }
            Step::SplitRegion(_) => return,
        }
        t.changed = true;
        let voters = t.region.voters().filter(|p| !t.leaving.contains(&p.id)).count();
        self.min_voters = self.min_voters.min(voters);
    }

    /// Regions PD's map shows with a peer on `store`.
    pub fn region_count(&self, store: u64) -> usize {
        self.regions.store_region_count(StoreId(store))
    }

    /// Regions PD's map shows led from `store`.
    pub fn leader_count(&self, store: u64) -> usize {
        self.regions.store_leader_count(StoreId(store))
    }

    /// Every region as the nodes know it.
    pub fn truth(&self) -> impl Iterator<Item = &Region> {
        self.truth.values().map(|t| &t.region)
    }

    /// True if every live store's `count` is within `pct` % of their mean.
    pub fn balanced(&self, pct: f64, count: impl Fn(&Sim, u64) -> usize) -> bool {
        let live: Vec<u64> = self
            .stores
            .values()
            .filter(|s| !self.dead.contains(&s.meta.id) && s.meta.state == StoreState::Up)
            .map(|s| s.meta.id.0)
            .collect();
        let counts: Vec<f64> = live.iter().map(|&s| count(self, s) as f64).collect();
        let mean = counts.iter().sum::<f64>() / counts.len() as f64;
        counts.iter().all(|c| (c - mean).abs() <= mean * pct / 100.0)
    }

    /// Regions whose nodes' state matches PD's map and have `max-replicas`
    /// voters, no learner, and no peer on a dead store.
    pub fn healthy(&self) -> bool {
        self.truth().all(|r| {
            r.voters().count() == self.settings.max_replicas
                && r.learners().next().is_none()
                && r.peers.iter().all(|p| !self.dead.contains(&p.store_id))
                && self.regions.get(r.id).is_some_and(|i| i.region == *r)
        })
    }
}
