//! The coordinator: when checkers and schedulers run, and how their
//! proposals become operators and steps.
//!
//! - On a **region heartbeat**, the region's operator (if any) is checked
//!   against the new state and its current step is (re)sent; without an
//!   operator the replica checker looks at the region.
//! - On a **patrol tick** (every `schedule.patrol-region-interval`):
//!   operators that cannot finish are dropped (expired — their region may
//!   have stopped heartbeating — or moving a peer or leadership onto a store
//!   that went Down or Offline meanwhile), the
//!   replica checker visits the next [`PATROL_BATCH`] regions in key order
//!   (so a region that heartbeats rarely is still repaired), then the
//!   active schedulers ([`Scheduler`]: balance-leader and balance-region by
//!   default, shuffle-leader and shuffle-region when added) each propose up
//!   to [`Scheduler::per_round`] operators while their kind has room. The
//!   first step of every new operator is returned as an
//!   [`ScheduleOrder`], to be pushed to the leader at once rather than on
//!   its next heartbeat.
//!
//! Sans-IO: inputs are the cluster snapshot, settings, the operator
//! controller and a source of fresh peer ids; outputs are operators (in the
//! controller) and orders. The set of active schedulers is the
//! coordinator's own state, set by its owner ([`Coordinator::set_schedulers`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use mnemo_proto::types::{Peer, PeerId, RegionEpoch, RegionId, StoreId};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tracing::{debug, info, warn};

use super::context::{ClusterSnapshot, Ctx};
use super::controller::OperatorController;
use super::operator::{OpKind, Operator, Progress};
use super::plan::{build, Proposal};
use super::replica_checker;
use super::schedulers::Scheduler;
use super::settings::Settings;
use super::step::Step;
use crate::metrics::PD;
use crate::region_map::RegionInfo;
use crate::store::StoreStatus;

/// Regions the replica checker visits per patrol tick.
pub const PATROL_BATCH: usize = 128;

/// A step for a region leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleOrder {
    /// The region.
    pub region_id: RegionId,
    /// The region's epoch the step was planned against; the leader ignores
    /// the order if its epoch differs.
    pub epoch: RegionEpoch,
    /// The leader the order is for (its store's heartbeat stream carries it).
    pub leader: Peer,
    /// What to do.
    pub step: Step,
}

/// Where patrol stands, which schedulers run, and their randomness.
pub struct Coordinator {
    cursor: Vec<u8>,
    rng: StdRng,
    schedulers: BTreeSet<Scheduler>,
    /// Active schedulers paused until then (`pd-ctl scheduler pause`).
    paused: BTreeMap<Scheduler, SystemTime>,
}

/// A source of fresh peer ids; `None` when none is at hand right now.
pub type NewPeerId<'a> = &'a mut dyn FnMut() -> Option<PeerId>;

impl Coordinator {
    /// A coordinator whose random choices follow `seed`, running the
    /// default schedulers ([`Scheduler::DEFAULT`]).
    pub fn new(seed: u64) -> Self {
        Coordinator {
            cursor: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            schedulers: Scheduler::DEFAULT.into(),
            paused: BTreeMap::new(),
        }
    }

    /// The schedulers that run on each patrol tick.
    pub fn schedulers(&self) -> &BTreeSet<Scheduler> {
        &self.schedulers
    }

    /// Runs exactly `schedulers` from the next patrol tick on. Operators
    /// they already created finish (or time out) as usual.
    pub fn set_schedulers(&mut self, schedulers: BTreeSet<Scheduler>) {
        self.paused.retain(|s, _| schedulers.contains(s));
        self.schedulers = schedulers;
    }

    /// The stores whose leaders an active evict-leader scheduler drains.
    pub fn evict_leader_stores(&self) -> BTreeSet<StoreId> {
        self.schedulers
            .iter()
            .filter_map(|s| match s {
                Scheduler::EvictLeader(store) => Some(*store),
                _ => None,
            })
            .collect()
    }

    /// Pauses active `scheduler` until `until` (`None`: resumes it now).
    /// False if it is not active.
    pub fn pause(&mut self, scheduler: Scheduler, until: Option<SystemTime>) -> bool {
        if !self.schedulers.contains(&scheduler) {
            return false;
        }
        match until {
            Some(t) => self.paused.insert(scheduler, t),
            None => self.paused.remove(&scheduler),
        };
        true
    }

    /// Active schedulers paused at `now`, with when they resume.
    pub fn paused(&self, now: SystemTime) -> Vec<(Scheduler, SystemTime)> {
        self.paused.iter().filter(|(_, t)| **t > now).map(|(s, t)| (*s, *t)).collect()
    }

    /// A region heartbeat arrived (the map already holds its new state):
    /// the step its leader should carry out now, if any.
    pub fn on_heartbeat(
        &mut self,
        snap: &ClusterSnapshot<'_>,
        settings: &Settings,
        ops: &mut OperatorController,
        region: RegionId,
        new_peer: NewPeerId<'_>,
    ) -> Option<ScheduleOrder> {
        let info = snap.regions.get(region)?;
        let leader = info.leader()?;
        let order = |(step, epoch)| ScheduleOrder { region_id: region, epoch, leader, step };
        match ops.check(info, snap.now) {
            Some((Progress::Run(step, epoch), _)) => return Some(order((step, epoch))),
            Some((Progress::Wait, _)) => return None,
            Some((progress, Some(op))) => log_end(&op, &progress),
            _ => {}
        }
        let proposal = replica_checker::check(info, &Ctx { snap, settings, ops })?;
        create(snap, settings, ops, info, &proposal, new_peer)?.map(order)
    }

    /// One patrol tick; see the module docs.
    pub fn patrol(
        &mut self,
        snap: &ClusterSnapshot<'_>,
        settings: &Settings,
        ops: &mut OperatorController,
        new_peer: NewPeerId<'_>,
    ) -> Vec<ScheduleOrder> {
        // Operators that can no longer finish: expired, region gone, or
        // moving something onto a store that went Down or Offline meanwhile.
        let unusable = |store| !snap.is_up(store, settings.max_store_down_time);
        let doomed: Vec<(RegionId, &'static str)> = ops
            .iter()
            .filter_map(|op| {
                let why = if op.is_expired(snap.now) {
                    "operator timed out"
                } else if snap.regions.get(op.region_id).is_none() {
                    "operator's region is gone"
                } else if op.target_stores().into_iter().any(unusable) {
                    "operator's target store is down or offline"
                } else {
                    return None;
                };
                Some((op.region_id, why))
            })
            .collect();
        for (id, why) in doomed {
            if let Some(op) = ops.remove(id) {
                let event = if op.is_expired(snap.now) { "timeout" } else { "cancel" };
                PD.operator(op.desc, event);
                warn!(region_id = %id, desc = op.desc, step = ?op.current_step(), "{why}");
            }
        }
        let mut orders = Vec::new();
        let mut emit = |ops: &mut OperatorController, p: Option<Proposal>| {
            let Some(p) = p else { return false };
            let Some(info) = snap.regions.get(p.region) else { return false };
            match create(snap, settings, ops, info, &p, &mut *new_peer) {
                Some(step) => {
                    if let (Some((step, epoch)), Some(leader)) = (step, info.leader()) {
                        orders.push(ScheduleOrder { region_id: p.region, epoch, leader, step });
                    }
                    true
                }
                None => false,
            }
        };

        // The replica checker, over the next batch of regions.
        let batch = snap.regions.scan(&self.cursor, b"", PATROL_BATCH);
        self.cursor = match batch.last() {
            Some(last) if batch.len() == PATROL_BATCH => last.region.end_key.clone(),
            _ => Vec::new(),
        };
        for info in batch {
            if !ops.has_room(OpKind::Replica, settings) {
                break;
            }
            if ops.has(info.region.id) || !is_reachable(snap, settings, info) {
                continue;
            }
            let proposal = replica_checker::check(info, &Ctx { snap, settings, ops });
            emit(ops, proposal);
        }

        // The active schedulers, a few operators each, in the enum's order:
        // evict-leader (by store) first, then Scheduler::ALL's; paused ones
        // are skipped.
        for &scheduler in &self.schedulers {
            if self.paused.get(&scheduler).is_some_and(|until| snap.now < *until) {
                continue;
            }
            for _ in 0..scheduler.per_round() {
                if !ops.has_room(scheduler.kind(), settings) {
                    break;
                }
                let proposal = scheduler.propose(&Ctx { snap, settings, ops }, &mut self.rng);
                if !emit(ops, proposal) {
                    break;
                }
                PD.scheduler_events.with_label_values(&[scheduler.name().as_str(), "schedule"]).inc();
            }
        }
        orders
    }
}

/// True if the region's leader is worth talking to: heard from since PD
/// started, on a store that is not Down or gone.
fn is_reachable(snap: &ClusterSnapshot<'_>, settings: &Settings, info: &RegionInfo) -> bool {
    let Some(leader) = info.leader() else { return false };
    info.runtime.last_heartbeat.is_some()
        && matches!(
            snap.status(leader.store_id, settings.max_store_down_time),
            Some(StoreStatus::Up | StoreStatus::Disconnected | StoreStatus::Offline)
        )
}

fn log_end(op: &Operator, progress: &Progress) {
    let (region_id, desc) = (op.region_id, op.desc);
    match progress {
        Progress::Finished => {
            PD.operator(desc, "finish");
            info!(%region_id, desc, "operator finished")
        }
        Progress::TimedOut => {
            PD.operator(desc, "timeout");
            warn!(%region_id, desc, step = ?op.current_step(), "operator timed out")
        }
        Progress::Cancelled(why) => {
            PD.operator(desc, "cancel");
            warn!(%region_id, desc, %why, "operator cancelled")
        }
        Progress::Run(..) | Progress::Wait => {}
    }
}

/// Builds `p` into an operator and adds it to `ops`, if its kind has room
/// and it has something to do. Returns the step to send now and the epoch
/// it was planned against (`None`: wait).
fn create(
    snap: &ClusterSnapshot<'_>,
    settings: &Settings,
    ops: &mut OperatorController,
    info: &RegionInfo,
    p: &Proposal,
    new_peer: NewPeerId<'_>,
) -> Option<Option<(Step, RegionEpoch)>> {
    match try_create(snap, settings, ops, info, p, new_peer) {
        Ok(step) => Some(step),
        Err(why) => {
            debug!(region_id = %info.region.id, desc = p.desc, %why, "proposal dropped");
            None
        }
    }
}

/// [`create`], saying why not.
pub(super) fn try_create(
    snap: &ClusterSnapshot<'_>,
    settings: &Settings,
    ops: &mut OperatorController,
    info: &RegionInfo,
    p: &Proposal,
    new_peer: NewPeerId<'_>,
) -> Result<Option<(Step, RegionEpoch)>, String> {
    if !ops.has_room(p.kind, settings) {
        return Err(format!("{} operators are at their limit", p.kind.name()));
    }
    // A manual operator (split or admin) replaces a scheduler's, not another manual one.
    if let Some(cur) = ops.get(info.region.id).filter(|cur| !p.kind.is_manual() || cur.kind.is_manual()) {
        return Err(format!("region {} already has operator {}", info.region.id, cur.desc));
    }
    let peer_ids = (0..p.plan.peer_ids_needed())
        .map(|_| new_peer().ok_or("no peer id available"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut op = build(p, info, &Ctx { snap, settings, ops }, &peer_ids)?;
    let step = match op.check(info, snap.now) {
        Progress::Run(step, epoch) => Some((step, epoch)),
        Progress::Wait => None,
        progress => return Err(format!("the operator has nothing to do ({progress:?})")),
    };
    info!(
        region_id = %info.region.id,
        kind = p.kind.name(),
        desc = p.desc,
        steps = ?op.steps.iter().map(Step::describe).collect::<Vec<_>>(),
        "operator created"
    );
    // A manual operator may replace a scheduler's (see `OperatorController::add`).
    let replaced = ops.get(info.region.id).map(|cur| cur.desc);
    ops.add(op, info, settings).map_err(|refusal| format!("{refusal:?}"))?;
    if let Some(desc) = replaced {
        PD.operator(desc, "replace");
    }
    PD.operator(p.desc, "create");
    Ok(step)
}
