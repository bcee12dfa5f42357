//! Region heartbeats and splits: keeping the region map current, and
//! answering with operator steps (see `schedule` for the protocol).

use std::time::SystemTime;

use mnemo_proto::types::{Peer, PeerId, PeerRole, Region, RegionEpoch, RegionId, StoreId};
use tracing::{debug, info, warn};

use super::{Cluster, Inner};
use crate::error::{Error, Result};
use crate::meta::Command;
use crate::region_map::{RegionRuntime, Verdict};
use crate::schedule::replica_checker::{self, promoted};
use crate::schedule::{Decision, Operator, Progress, Step, Stores};

/// One region heartbeat, converted from the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionHeartbeat {
    /// The region as its leader sees it.
    pub region: Region,
    /// The leader (the sender) and statistics; `last_heartbeat` is set by PD.
    pub runtime: RegionRuntime,
}

/// An operator step for a region leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleOrder {
    /// The region.
    pub region_id: RegionId,
    /// The region's epoch as the heartbeat reported it; the leader ignores
    /// the order if its epoch differs.
    pub epoch: RegionEpoch,
    /// The leader the order is for (its store's heartbeat stream carries it).
    pub leader: Peer,
    /// What to do.
    pub step: Step,
}

/// Ids for one new region of a batch split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitIds {
    /// The new region's id.
    pub region_id: RegionId,
    /// One new peer id per peer of the region being split, in its peer order.
    pub peer_ids: Vec<PeerId>,
}

/// Most regions one `AskBatchSplit` may ask for.
pub const MAX_SPLIT_COUNT: u32 = 1000;

impl Cluster {
    /// Updates the region map from a heartbeat (a stale one is ignored) and
    /// returns the step its leader should carry out, if any.
    pub fn region_heartbeat(&self, hb: RegionHeartbeat) -> Result<Option<ScheduleOrder>> {
        let now = SystemTime::now();
        let id = hb.region.id;
        if id.0 == 0 {
            return Err(Error::InvalidArgument("heartbeat without a region".into()));
        }
        let Some(leader) = hb.runtime.leader else {
            return Err(Error::InvalidArgument(format!("heartbeat of region {id} without a leader")));
        };
        let mut inner = self.inner.lock();
        inner.ensure_bootstrapped()?;
        match inner.state().regions().check(&hb.region) {
            Verdict::Stale(why) => {
                debug!(region_id = %id, %why, "stale region heartbeat ignored");
                return Ok(None);
            }
            Verdict::Unchanged => {}
            Verdict::Changed => {
                debug!(region_id = %id, epoch = ?hb.region.epoch, "region changed");
                inner.propose(Command::PutRegion { region: hb.region })?;
            }
        }
        let runtime = RegionRuntime { last_heartbeat: Some(now), ..hb.runtime };
        inner.sm.state_mut().set_region_runtime(id, runtime);
        if inner.state().regions().get(id).and_then(|r| r.leader()) != Some(leader) {
            return Ok(None); // the sender is not a peer of the region we know
        }
        self.dispatch(&mut inner, id, now)
    }

    /// Allocates ids for `count` new regions split off `region`.
    pub fn ask_batch_split(&self, region: &Region, count: u32) -> Result<Vec<SplitIds>> {
        if count == 0 || count > MAX_SPLIT_COUNT {
            return Err(Error::InvalidArgument(format!(
                "split count {count} must be in 1..={MAX_SPLIT_COUNT}"
            )));
        }
        let mut inner = self.inner.lock();
        inner.ensure_bootstrapped()?;
        if inner.state().regions().get(region.id).is_none() {
            return Err(Error::RegionNotFound(region.id));
        }
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let region_id = RegionId(inner.alloc_id()?);
            let peer_ids =
                region.peers.iter().map(|_| inner.alloc_id().map(PeerId)).collect::<Result<_>>()?;
            out.push(SplitIds { region_id, peer_ids });
        }
        Ok(out)
    }

    /// Records the regions resulting from a split. New regions whose leader
    /// PD does not know yet are assumed led by their peer on the store that
    /// led the split region: that is where raft elects them first, and it
    /// spares clients a leaderless lookup until their first heartbeat.
    pub fn report_batch_split(&self, regions: &[Region]) -> Result<()> {
        let mut inner = self.inner.lock();
        inner.ensure_bootstrapped()?;
        let leader_store: Option<StoreId> = regions
            .iter()
            .filter_map(|r| inner.state().regions().get(r.id).and_then(|i| i.leader()))
            .map(|l| l.store_id)
            .next();
        for region in regions {
            if inner.state().regions().check(region) == Verdict::Changed {
                inner.propose(Command::PutRegion { region: region.clone() })?;
            }
        }
        for region in regions {
            let known = inner.state().regions().get(region.id).map(|i| i.leader().is_some());
            if let (Some(false), Some(store)) = (known, leader_store) {
                if let Some(&peer) = region.peer_on_store(store) {
                    let runtime = RegionRuntime { leader: Some(peer), ..Default::default() };
                    inner.sm.state_mut().set_region_runtime(region.id, runtime);
                }
            }
        }
        info!(regions = ?regions.iter().map(|r| r.id.0).collect::<Vec<_>>(), "batch split reported");
        Ok(())
    }

    /// Follows the region's operator, or asks the replica checker for a new one.
    fn dispatch(&self, inner: &mut Inner, id: RegionId, now: SystemTime) -> Result<Option<ScheduleOrder>> {
        let Some(info) = inner.state().regions().get(id).cloned() else { return Ok(None) };
        let Some(leader) = info.leader() else { return Ok(None) };
        let order = |step| ScheduleOrder { region_id: id, epoch: info.region.epoch, leader, step };
        if let Some(op) = inner.operators.get_mut(id) {
            match op.check(&info, now) {
                Progress::Run(step) => return Ok(Some(order(step))),
                Progress::Wait => return Ok(None),
                Progress::Finished => info!(region_id = %id, desc = op.desc, "operator finished"),
                Progress::TimedOut => warn!(region_id = %id, desc = op.desc, "operator timed out"),
                Progress::Cancelled(why) => {
                    warn!(region_id = %id, desc = op.desc, %why, "operator cancelled")
                }
            }
            inner.operators.remove(id);
        }
        let limit = self.config.schedule.replica_schedule_limit as usize;
        if inner.operators.len() >= limit {
            return Ok(None);
        }
        let decision = {
            let state = inner.state();
            let regions = state.regions();
            let count = |s| regions.store_region_count(s);
            let stores =
                Stores { infos: state.stores(), region_count: &count, alive_since: self.alive_since };
            replica_checker::check(&info, &stores, &self.checker_config(), now)
        };
        let Some(decision) = decision else { return Ok(None) };
        let (desc, steps) = match decision {
            Decision::PromoteLearner(p) => ("promote-learner", vec![Step::PromoteLearner(promoted(p))]),
            Decision::AddLearner { store } => {
                let learner =
                    Peer { id: PeerId(inner.alloc_id()?), store_id: store, role: PeerRole::Learner };
                ("add-replica", vec![Step::AddLearner(learner), Step::PromoteLearner(promoted(learner))])
            }
            Decision::RemovePeer { peer, reason } => (reason, vec![Step::RemovePeer(peer)]),
        };
        let mut op = Operator::new(&info.region, desc, steps, now, self.config.schedule.operator_timeout.0);
        let progress = op.check(&info, now);
        let step = match progress {
            Progress::Run(step) => Some(step),
            Progress::Wait => None,
            Progress::Finished | Progress::TimedOut | Progress::Cancelled(_) => {
                debug!(region_id = %id, desc, ?progress, "new operator has nothing to do");
                return Ok(None);
            }
        };
        info!(region_id = %id, desc, steps = ?op.steps.iter().map(Step::describe).collect::<Vec<_>>(), "operator created");
        inner.operators.insert(op);
        Ok(step.map(order))
    }
}
