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
    /// Send this step (again), to be carried out only at this epoch: the
    /// one it was planned against (see [`Operator::step_epoch`]).
    Run(Step, RegionEpoch),
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
    /// that split; so does a membership change its own steps do not
    /// account for (`conf_ver` moved further than they explain).
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
    /// When a split step was last sent (each sending makes the leader ask
    /// for fresh region and peer ids, so it is not re-sent on every
    /// heartbeat; see [`SPLIT_RESEND_AFTER`]).
    pub split_sent: Option<SystemTime>,
}

/// A split step not done this long after it was sent (or half the
/// operator's timeout, if shorter) is sent again: the leader's proposal may
/// have been dropped. Sooner, PD waits.
pub const SPLIT_RESEND_AFTER: Duration = Duration::from_secs(5);

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
            split_sent: None,
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
        let (moved, own) =
            (info.region.epoch.conf_ver.saturating_sub(self.epoch.conf_ver), self.conf_ver_changed(info));
        if moved > own {
            return Progress::Cancelled(format!(
                "stale: conf_ver moved from {} to {}, {own} of that by its own steps",
                self.epoch.conf_ver, info.region.epoch.conf_ver
            ));
        }
        if self.is_expired(now) {
            return Progress::TimedOut;
        }
        if let Some(why) = step.blocked(info) {
            return Progress::Cancelled(why);
        }
        if step.is_started(info, self.epoch) {
            return Progress::Wait;
        }
        if let Step::SplitRegion(_) = step {
            let since = self.split_sent.map(|at| now.duration_since(at).unwrap_or_default());
            if since.is_some_and(|d| d < SPLIT_RESEND_AFTER.min(self.timeout / 2)) {
                return Progress::Wait;
            }
            self.split_sent = Some(now);
        }
        Progress::Run(step.clone(), self.step_epoch())
    }

    /// The epoch the current step was planned against: the creation epoch
    /// plus the membership changes of the steps before it. The leader
    /// carries a step out only at exactly this epoch, so an order that
    /// arrives late, twice, or after its operator was dropped can never
    /// act on a membership it was not planned for.
    pub fn step_epoch(&self) -> RegionEpoch {
        RegionEpoch {
            conf_ver: self.epoch.conf_ver + self.done_conf_ver_delta(),
            version: self.epoch.version,
        }
    }

    /// The `conf_ver` moves of the steps before the current one.
    fn done_conf_ver_delta(&self) -> u64 {
        self.steps[..self.current.min(self.steps.len())].iter().map(Step::conf_ver_delta).sum()
    }

    /// How much of the region's `conf_ver` move since creation its own
    /// steps explain, as `info` shows them: all of each step before the
    /// current one, and what of the current one is visible (it may have
    /// taken effect since it was sent).
    fn conf_ver_changed(&self, info: &RegionInfo) -> u64 {
        let current = self.steps.get(self.current).map_or(0, |step| step.conf_ver_shown(info, self.epoch));
        self.done_conf_ver_delta() + current
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

    fn epoch(conf_ver: u64, version: u64) -> RegionEpoch {
        RegionEpoch { conf_ver, version }
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
        assert_eq!(op.check(&r0, T0), Progress::Run(Step::AddLearner(new), epoch(1, 1)));
        assert_eq!(op.check(&r0, T0), Progress::Run(Step::AddLearner(new), epoch(1, 1)));
        // The learner is there but still catching up: wait, sending nothing.
        let mut r1 = region(vec![a, b, old, new], 2, 1);
        r1.runtime.pending_peers = vec![new];
        assert_eq!(op.check(&r1, T0), Progress::Wait);
        // Caught up: promote it and remove the old voter at once.
        r1.runtime.pending_peers.clear();
        // Planned against the epoch the learner's addition made (conf_ver 2).
        assert_eq!(op.check(&r1, T0), Progress::Run(swap, epoch(2, 1)));
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
        assert!(matches!(op.check(&r, T0), Progress::Run(Step::SplitRegion(_), _)));
        // Each sending costs the leader fresh ids: not again on every
        // heartbeat, only once the split seems lost.
        assert_eq!(op.check(&r, T0 + Duration::from_secs(1)), Progress::Wait);
        assert!(matches!(op.check(&r, T0 + SPLIT_RESEND_AFTER), Progress::Run(Step::SplitRegion(_), _)));
        assert_eq!(op.check(&region(vec![leader], 1, 2), T0), Progress::Finished);
    }

    #[test]
    fn a_membership_change_its_steps_do_not_explain_cancels_it() {
        // Region {a, b, c, d} at conf_ver 5. "remove d" took effect on the
        // node (conf_ver 6), but PD had not heard yet and planned "remove c"
        // on the old membership.
        let (a, b) = (peer(10, 1, PeerRole::Voter), peer(11, 2, PeerRole::Voter));
        let (c, d) = (peer(12, 3, PeerRole::Voter), peer(13, 4, PeerRole::Voter));
        let stale = region(vec![a, b, c, d], 5, 1);
        let mut remove_c =
            Operator::new(&stale.region, OpKind::Replica, "x", vec![Step::RemovePeer(c)], T0, MINUTE);
        // Sent (again and again) only for the membership it was planned on.
        assert_eq!(remove_c.check(&stale, T0), Progress::Run(Step::RemovePeer(c), epoch(5, 1)));
        // The heartbeat showing "remove d" cancels it: that change is not its own.
        let now = region(vec![a, b, c], 6, 1);
        assert!(matches!(remove_c.check(&now, T0), Progress::Cancelled(why) if why.contains("stale")));

        // Its own change does not: a joint swap in its joint state moved
        // conf_ver by one, then by two once left.
        let new = peer(20, 5, PeerRole::Learner);
        let swap = Step::ChangePeerV2(vec![PeerChange::Promote(new), PeerChange::Remove(d)]);
        let with_learner = region(vec![a, b, d, new], 7, 1);
        let mut op = Operator::new(&with_learner.region, OpKind::Region, "x", vec![swap], T0, MINUTE);
        let voter = Peer { role: PeerRole::Voter, ..new };
        assert_eq!(op.check(&region(vec![a, b, d, voter], 8, 1), T0), Progress::Wait);
        // One change more than its own: stale.
        assert!(matches!(op.clone().check(&region(vec![a, d, voter], 9, 1), T0), Progress::Cancelled(_)));
        assert_eq!(op.check(&region(vec![a, b, voter], 9, 1), T0), Progress::Finished);
    }
}
