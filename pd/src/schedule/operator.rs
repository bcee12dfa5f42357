//! Operators: a short sequence of steps for one region, followed until done,
//! cancelled or timed out.

use std::time::{Duration, SystemTime};

use mnemo_proto::types::{Region, RegionEpoch, RegionId, StoreId};

use super::step::{PeerChange, Step};
use crate::region_map::RegionInfo;

/// What an operator is for; each kind has its own concurrency limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// Leader transfers of balance-leader and shuffle-leader
    /// (`schedule.leader-schedule-limit`).
    Leader,
    /// Replica moves of balance-region and shuffle-region
    /// (`schedule.region-schedule-limit`).
    Region,
    /// Repairs of the replica checker: missing, extra, down or offline
    /// replicas, placement fixes (`schedule.replica-schedule-limit`).
    Replica,
    /// Splits asked for through the API (no limit; like `Admin`, replaces a
    /// scheduler's operator on the same region).
    Split,
    /// Anything else asked for through `POST /operators` (no limit; replaces
    /// a scheduler's operator on the same region).
    Admin,
}

impl OpKind {
    /// True for operators a human asked for (`Split`, `Admin`).
    pub fn is_manual(self) -> bool {
        matches!(self, OpKind::Split | OpKind::Admin)
    }

    /// Lower-case name as the HTTP API shows it.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Leader => "leader",
            OpKind::Region => "region",
            OpKind::Replica => "replica",
            OpKind::Split => "split",
            OpKind::Admin => "admin",
        }
    }
}

/// Where an operator stands after looking at the region's latest state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Send this step (again).
    Run(Step),
    /// The step has started (e.g. a learner is catching up, a joint state is
    /// being left); wait, sending nothing.
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
    /// The region's epoch when the operator was created. A split or merge
    /// since (another `version`) cancels the operator, unless its step was
    /// that split.
    pub epoch: RegionEpoch,
    /// Which limit it counts against.
    pub kind: OpKind,
    /// What it is for, e.g. `balance-region`, `replace-down-replica`.
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
        kind: OpKind,
        desc: &'static str,
        steps: Vec<Step>,
        now: SystemTime,
        timeout: Duration,
    ) -> Self {
        Operator {
            region_id: region.id,
            epoch: region.epoch,
            kind,
            desc,
            steps,
            current: 0,
            created: now,
            timeout,
        }
    }

    /// Advances past the steps the region shows done and says what to do now.
    pub fn check(&mut self, info: &RegionInfo, now: SystemTime) -> Progress {
        while self.current < self.steps.len() && self.steps[self.current].is_done(info, self.epoch) {
            self.current += 1;
        }
        let Some(step) = self.steps.get(self.current) else {
            return Progress::Finished;
        };
        if info.region.epoch.version != self.epoch.version {
            return Progress::Cancelled(format!(
                "region version changed from {} to {} (split or merge)",
                self.epoch.version, info.region.epoch.version
            ));
        }
        if self.is_expired(now) {
            return Progress::TimedOut;
        }
        if let Some(why) = step.blocked(info) {
            return Progress::Cancelled(why);
        }
        if step.is_started(info, self.epoch) {
            Progress::Wait
        } else {
            Progress::Run(step.clone())
        }
    }

    /// True once `timeout` has passed since creation.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now.duration_since(self.created).unwrap_or_default() >= self.timeout
    }

    /// The step being worked on, if any.
    pub fn current_step(&self) -> Option<&Step> {
        self.steps.get(self.current)
    }

    /// The steps not done yet.
    pub fn remaining(&self) -> &[Step] {
        &self.steps[self.current.min(self.steps.len())..]
    }

    /// Stores that the remaining steps give a peer, a vote or leadership.
    pub fn target_stores(&self) -> Vec<StoreId> {
        let mut out = Vec::new();
        for step in self.remaining() {
            if let Step::TransferLeader { to, .. } = step {
                out.push(to.store_id);
            }
            for change in step.changes() {
                if let PeerChange::AddLearner(p) | PeerChange::Promote(p) = change {
                    out.push(p.store_id);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region_map::RegionRuntime;
    use crate::schedule::step::SplitPolicy;
    use mnemo_proto::types::{Peer, PeerId, PeerRole, StoreId};

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

    const T0: SystemTime = SystemTime::UNIX_EPOCH;
    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_move_adds_a_learner_waits_for_it_then_swaps_in_one_joint_change() {
        let (a, b) = (peer(10, 1, PeerRole::Voter), peer(11, 2, PeerRole::Voter));
        let (old, new) = (peer(12, 3, PeerRole::Voter), peer(20, 4, PeerRole::Learner));
        let swap = Step::ChangePeerV2(vec![PeerChange::Promote(new), PeerChange::Remove(old)]);
        let r0 = region(vec![a, b, old], 1, 1);
        let steps = vec![Step::AddLearner(new), swap.clone()];
        let mut op = Operator::new(&r0.region, OpKind::Region, "balance-region", steps, T0, MINUTE);
        // Re-sent until the region shows the learner.
        assert_eq!(op.check(&r0, T0), Progress::Run(Step::AddLearner(new)));
        assert_eq!(op.check(&r0, T0), Progress::Run(Step::AddLearner(new)));
        // The learner is there but still catching up: wait, sending nothing.
        let mut r1 = region(vec![a, b, old, new], 2, 1);
        r1.runtime.pending_peers = vec![new];
        assert_eq!(op.check(&r1, T0), Progress::Wait);
        // Caught up: promote it and remove the old voter at once.
        r1.runtime.pending_peers.clear();
        assert_eq!(op.check(&r1, T0), Progress::Run(swap));
        // The node entered the joint state: wait for it to leave.
        let voter = Peer { role: PeerRole::Voter, ..new };
        assert_eq!(op.check(&region(vec![a, b, old, voter], 3, 1), T0), Progress::Wait);
        assert_eq!(op.check(&region(vec![a, b, voter], 4, 1), T0), Progress::Finished);
    }

    #[test]
    fn times_out_and_cancels() {
        let leader = peer(10, 1, PeerRole::Voter);
        let other = peer(11, 2, PeerRole::Voter);
        let r = region(vec![leader, other], 1, 1);
        let remove =
            Operator::new(&r.region, OpKind::Replica, "x", vec![Step::RemovePeer(other)], T0, MINUTE);
        assert_eq!(remove.clone().check(&r, T0 + Duration::from_secs(61)), Progress::TimedOut);

        // The peer to remove became leader: cannot remove it.
        let led_by_other = region(vec![other, leader], 1, 1);
        assert!(matches!(remove.clone().check(&led_by_other, T0), Progress::Cancelled(_)));

        // The region split meanwhile: the operator's view is outdated.
        let split = region(vec![leader, other], 1, 2);
        assert!(matches!(remove.clone().check(&split, T0), Progress::Cancelled(_)));
    }

    #[test]
    fn a_split_operator_finishes_when_the_version_moves() {
        let leader = peer(10, 1, PeerRole::Voter);
        let r = region(vec![leader], 1, 1);
        let steps = vec![Step::SplitRegion(SplitPolicy::Approximate)];
        let mut op = Operator::new(&r.region, OpKind::Split, "split-region", steps, T0, MINUTE);
        assert!(matches!(op.check(&r, T0), Progress::Run(Step::SplitRegion(_))));
        assert_eq!(op.check(&region(vec![leader], 1, 2), T0), Progress::Finished);
    }
}
