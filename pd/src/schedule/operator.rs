//! Operators: a short sequence of membership steps for one region, followed
//! until done, cancelled or timed out.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use mnemo_proto::types::{Peer, PeerRole, Region, RegionEpoch, RegionId};

use crate::region_map::RegionInfo;

/// One membership change, sent to the leader as a `ChangePeer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Add `peer` as a learner (`AddLearnerNode`).
    AddLearner(Peer),
    /// Make the learner `peer` a voter (`AddNode`).
    PromoteLearner(Peer),
    /// Remove `peer` (`RemoveNode`).
    RemovePeer(Peer),
}

impl Step {
    /// The peer the step is about.
    pub fn peer(&self) -> Peer {
        match *self {
            Step::AddLearner(p) | Step::PromoteLearner(p) | Step::RemovePeer(p) => p,
        }
    }

    /// True once the region's peers show the step's effect (the conf change
    /// was applied).
    pub fn is_applied(&self, region: &Region) -> bool {
        match self {
            Step::AddLearner(p) => region.peer(p.id).is_some(),
            Step::PromoteLearner(p) => region.peer(p.id).is_some_and(|q| q.role == PeerRole::Voter),
            Step::RemovePeer(p) => region.peer(p.id).is_none(),
        }
    }

    /// True once the step is applied and, for an added learner, it has caught
    /// up (is not pending), so the promotion that follows never makes a voter
    /// of a peer that lacks the log.
    pub fn is_done(&self, info: &RegionInfo) -> bool {
        let pending = |p: &Peer| info.runtime.pending_peers.iter().any(|q| q.id == p.id);
        match self {
            Step::AddLearner(p) => self.is_applied(&info.region) && !pending(p),
            _ => self.is_applied(&info.region),
        }
    }

    /// Why the step cannot be carried out on `region` led by `leader`, if so.
    fn blocked(&self, region: &Region, leader: Option<Peer>) -> Option<String> {
        match self {
            Step::AddLearner(p) => region
                .peer_on_store(p.store_id)
                .filter(|q| q.id != p.id)
                .map(|q| format!("store {} already has peer {} of the region", p.store_id, q.id)),
            Step::PromoteLearner(p) => {
                region.peer(p.id).is_none().then(|| format!("learner {} is no longer a peer", p.id))
            }
            Step::RemovePeer(p) => {
                leader.filter(|l| l.id == p.id).map(|_| format!("peer {} to remove is the leader", p.id))
            }
        }
    }

    /// A short description, e.g. `add learner 12 on store 3`.
    pub fn describe(&self) -> String {
        match self {
            Step::AddLearner(p) => format!("add learner {} on store {}", p.id, p.store_id),
            Step::PromoteLearner(p) => format!("promote learner {} on store {}", p.id, p.store_id),
            Step::RemovePeer(p) => format!("remove peer {} on store {}", p.id, p.store_id),
        }
    }
}

/// Where an operator stands after looking at the region's latest state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Send this step (again).
    Run(Step),
    /// The step is applied; wait (sending nothing) until it completes, e.g.
    /// until a new learner has caught up.
    Wait,
    /// Every step is done.
    Finished,
    /// The step can no longer happen (the reason says why).
    Cancelled(String),
    /// Not finished within the timeout.
    TimedOut,
}

/// Steps for one region, created at a given epoch and time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    /// The region.
    pub region_id: RegionId,
    /// The region's epoch when the operator was created.
    pub epoch: RegionEpoch,
    /// What the operator is for, e.g. `add-replica`.
    pub desc: &'static str,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Index of the first step not yet done.
    pub current: usize,
    /// When it was created.
    pub created: SystemTime,
    /// It is dropped if not finished this long after `created`.
    pub timeout: Duration,
}

impl Operator {
    /// A new operator for `region`.
    pub fn new(
        region: &Region,
        desc: &'static str,
        steps: Vec<Step>,
        now: SystemTime,
        timeout: Duration,
    ) -> Self {
        Operator { region_id: region.id, epoch: region.epoch, desc, steps, current: 0, created: now, timeout }
    }

    /// Advances past the steps the region shows done and says what to do now.
    pub fn check(&mut self, info: &RegionInfo, now: SystemTime) -> Progress {
        let (region, leader) = (&info.region, info.leader());
        if region.epoch.version != self.epoch.version {
            return Progress::Cancelled(format!(
                "region version changed from {} to {} (split or merge)",
                self.epoch.version, region.epoch.version
            ));
        }
        while self.current < self.steps.len() && self.steps[self.current].is_done(info) {
            self.current += 1;
        }
        let Some(step) = self.steps.get(self.current).copied() else {
            return Progress::Finished;
        };
        if now.duration_since(self.created).unwrap_or_default() >= self.timeout {
            return Progress::TimedOut;
        }
        if let Some(why) = step.blocked(region, leader) {
            return Progress::Cancelled(why);
        }
        if step.is_applied(region) {
            Progress::Wait
        } else {
            Progress::Run(step)
        }
    }

    /// The step being worked on, if any.
    pub fn current_step(&self) -> Option<&Step> {
        self.steps.get(self.current)
    }
}

/// The operators in flight: at most one per region.
#[derive(Clone, Debug, Default)]
pub struct OperatorController {
    ops: BTreeMap<RegionId, Operator>,
}

impl OperatorController {
    /// The operator of `region`, if any.
    pub fn get_mut(&mut self, region: RegionId) -> Option<&mut Operator> {
        self.ops.get_mut(&region)
    }

    /// Adds `op`, replacing any operator of the same region.
    pub fn insert(&mut self, op: Operator) {
        self.ops.insert(op.region_id, op);
    }

    /// Removes the operator of `region`.
    pub fn remove(&mut self, region: RegionId) -> Option<Operator> {
        self.ops.remove(&region)
    }

    /// Number of operators in flight.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if none is in flight.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Every operator, by region id.
    pub fn iter(&self) -> impl Iterator<Item = &Operator> {
        self.ops.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region_map::RegionRuntime;
    use mnemo_proto::types::{PeerId, StoreId};

    fn peer(id: u64, store: u64, role: PeerRole) -> Peer {
        Peer { id: PeerId(id), store_id: StoreId(store), role }
    }

    fn region(peers: Vec<Peer>, conf_ver: u64, version: u64) -> RegionInfo {
        let leader = peers[0];
        RegionInfo {
            region: Region {
                id: RegionId(1),
                epoch: RegionEpoch { conf_ver, version },
                peers,
                ..Default::default()
            },
            runtime: RegionRuntime { leader: Some(leader), ..Default::default() },
        }
    }

    #[test]
    fn add_then_promote_then_finish() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let leader = peer(10, 1, PeerRole::Voter);
        let new = peer(20, 2, PeerRole::Learner);
        let promoted = Peer { role: PeerRole::Voter, ..new };
        let r0 = region(vec![leader], 1, 1);
        let steps = vec![Step::AddLearner(new), Step::PromoteLearner(promoted)];
        let mut op = Operator::new(&r0.region, "add-replica", steps, t0, Duration::from_secs(60));
        // Re-sent until the region shows the learner.
        assert_eq!(op.check(&r0, t0), Progress::Run(Step::AddLearner(new)));
        assert_eq!(op.check(&r0, t0), Progress::Run(Step::AddLearner(new)));
        // The learner is there but still catching up: wait, sending nothing.
        let mut r1 = region(vec![leader, new], 2, 1);
        r1.runtime.pending_peers = vec![new];
        assert_eq!(op.check(&r1, t0), Progress::Wait);
        r1.runtime.pending_peers.clear();
        assert_eq!(op.check(&r1, t0), Progress::Run(Step::PromoteLearner(promoted)));
        let r2 = region(vec![leader, promoted], 3, 1);
        assert_eq!(op.check(&r2, t0), Progress::Finished);
    }

    #[test]
    fn times_out_and_cancels() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let leader = peer(10, 1, PeerRole::Voter);
        let other = peer(11, 2, PeerRole::Voter);
        let r = region(vec![leader, other], 1, 1);
        let remove =
            Operator::new(&r.region, "x", vec![Step::RemovePeer(other)], t0, Duration::from_secs(60));
        assert_eq!(remove.clone().check(&r, t0 + Duration::from_secs(61)), Progress::TimedOut);

        // The peer to remove became leader: cannot remove it.
        let led_by_other = region(vec![other, leader], 1, 1);
        assert!(matches!(remove.clone().check(&led_by_other, t0), Progress::Cancelled(_)));

        // The region split meanwhile: the operator's view is outdated.
        let split = region(vec![leader, other], 1, 2);
        assert!(matches!(remove.clone().check(&split, t0), Progress::Cancelled(_)));
    }
}
