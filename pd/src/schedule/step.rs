//! Operator steps: what PD asks a region leader to do, and how PD tells from
//! a heartbeat that it happened.
//!
//! Every step is judged only from what the region's leader reports (peers and
//! their roles, leader, pending peers, epoch); PD never assumes a step worked
//! because it was sent.

use mnemo_proto::types::{Peer, PeerRole, Region, RegionEpoch};

use crate::region_map::RegionInfo;

/// One membership change inside a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerChange {
    /// Add `peer` as a learner (`AddLearnerNode`).
    AddLearner(Peer),
    /// Make the learner `peer` a voter (`AddNode`, role Voter).
    Promote(Peer),
    /// Remove `peer`, voter or learner (`RemoveNode`).
    Remove(Peer),
}

impl PeerChange {
    /// The peer the change is about (for `Promote`, with role Voter).
    pub fn peer(&self) -> Peer {
        match *self {
            PeerChange::AddLearner(p) => Peer { role: PeerRole::Learner, ..p },
            PeerChange::Promote(p) => Peer { role: PeerRole::Voter, ..p },
            PeerChange::Remove(p) => p,
        }
    }

    /// True once the region's peers show the change.
    pub fn is_applied(&self, region: &Region) -> bool {
        match self {
            PeerChange::AddLearner(p) => region.peer(p.id).is_some(),
            PeerChange::Promote(p) => region.peer(p.id).is_some_and(|q| q.role == PeerRole::Voter),
            PeerChange::Remove(p) => region.peer(p.id).is_none(),
        }
    }

    /// Why the change can no longer be made, if so.
    fn blocked(&self, region: &Region, leader: Option<Peer>) -> Option<String> {
        match self {
            PeerChange::AddLearner(p) => region
                .peer_on_store(p.store_id)
                .filter(|q| q.id != p.id)
                .map(|q| format!("store {} already has peer {} of the region", p.store_id, q.id)),
            PeerChange::Promote(p) => {
                region.peer(p.id).is_none().then(|| format!("learner {} is no longer a peer", p.id))
            }
            PeerChange::Remove(p) => {
                leader.filter(|l| l.id == p.id).map(|_| format!("peer {} to remove is the leader", p.id))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            PeerChange::AddLearner(p) => format!("add learner {} on store {}", p.id, p.store_id),
            PeerChange::Promote(p) => format!("promote learner {} on store {}", p.id, p.store_id),
            PeerChange::Remove(p) => format!("remove peer {} on store {}", p.id, p.store_id),
        }
    }
}

/// How the leader picks split keys (kvproto `CheckPolicy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitPolicy {
    /// The node picks the middle key from its size estimate (`APPROXIMATE`).
    Approximate,
    /// Split exactly at these keys, sorted, inside the region (`USEKEY`).
    UseKeys(Vec<Vec<u8>>),
}

/// One step of an operator; sent as one `RegionHeartbeatResponse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `change_peer` AddLearnerNode. Done once the learner is a peer *and*
    /// has caught up (absent from `pending_peers`), so a promotion that
    /// follows never makes a voter of a peer that lacks the log.
    AddLearner(Peer),
    /// `change_peer` AddNode of an existing learner (role Voter).
    PromoteLearner(Peer),
    /// `change_peer` RemoveNode. Never the leader (blocked).
    RemovePeer(Peer),
    /// `change_peer_v2`: several changes in one raft ConfChangeV2, i.e. joint
    /// consensus when two voters change (promote one, remove another). Done
    /// when all show; while only some show (the joint state) PD waits.
    ChangePeerV2(Vec<PeerChange>),
    /// `transfer_leader` to `to`. Its purpose is to take leadership off
    /// `from` (before that peer is removed, or to balance leaders): done once
    /// a leader other than `from` reports.
    TransferLeader {
        /// The current leader.
        from: Peer,
        /// The voter that should lead.
        to: Peer,
    },
    /// `split_region`. Done once the region's epoch `version` passed the one
    /// the operator was created at.
    SplitRegion(SplitPolicy),
}

impl Step {
    /// The changes of a membership step, as a list.
    pub fn changes(&self) -> Vec<PeerChange> {
        match self {
            Step::AddLearner(p) => vec![PeerChange::AddLearner(*p)],
            Step::PromoteLearner(p) => vec![PeerChange::Promote(*p)],
            Step::RemovePeer(p) => vec![PeerChange::Remove(*p)],
            Step::ChangePeerV2(changes) => changes.clone(),
            Step::TransferLeader { .. } | Step::SplitRegion(_) => Vec::new(),
        }
    }

    /// True once the region shows the step's effect. `origin` is the epoch
    /// the operator was created at.
    pub fn is_applied(&self, info: &RegionInfo, origin: RegionEpoch) -> bool {
        match self {
            Step::TransferLeader { from, .. } => info.leader().is_some_and(|l| l.id != from.id),
            Step::SplitRegion(_) => info.region.epoch.version > origin.version,
            _ => self.changes().iter().all(|c| c.is_applied(&info.region)),
        }
    }

    /// True once part of the step shows (a joint state, a learner still
    /// catching up): the step must not be sent again, PD waits.
    pub fn is_started(&self, info: &RegionInfo, origin: RegionEpoch) -> bool {
        match self {
            Step::ChangePeerV2(changes) => changes.iter().any(|c| c.is_applied(&info.region)),
            _ => self.is_applied(info, origin),
        }
    }

    /// How much the step moves the region's `conf_ver` once carried out:
    /// one per raft membership change, i.e. one for a single change and two
    /// for a joint one (entering, then raft's own leaving); none for a
    /// leader transfer or a split.
    pub fn conf_ver_delta(&self) -> u64 {
        match self {
            Step::ChangePeerV2(changes) if changes.len() > 1 => 2,
            Step::TransferLeader { .. } | Step::SplitRegion(_) => 0,
            _ => 1,
        }
    }

    /// How much of [`Step::conf_ver_delta`] `info` shows: all of it once
    /// applied, one while a joint change is in its joint state.
    pub fn conf_ver_shown(&self, info: &RegionInfo, origin: RegionEpoch) -> u64 {
        if self.conf_ver_delta() == 0 {
            0
        } else if self.is_applied(info, origin) {
            self.conf_ver_delta()
        } else if self.is_started(info, origin) {
            1
        } else {
            0
        }
    }

    /// True once the step is applied and, for an added learner, caught up.
    pub fn is_done(&self, info: &RegionInfo, origin: RegionEpoch) -> bool {
        match self {
            Step::AddLearner(p) => {
                self.is_applied(info, origin) && !info.runtime.pending_peers.iter().any(|q| q.id == p.id)
            }
            _ => self.is_applied(info, origin),
        }
    }

    /// Why the step can no longer be carried out, if so.
    pub fn blocked(&self, info: &RegionInfo) -> Option<String> {
        let (region, leader) = (&info.region, info.leader());
        match self {
            Step::TransferLeader { to, .. } => match region.peer(to.id) {
                Some(p) if p.role == PeerRole::Voter => None,
                _ => Some(format!("peer {} is no longer a voter of the region", to.id)),
            },
            Step::SplitRegion(_) => None,
            _ => self.changes().iter().find_map(|c| c.blocked(region, leader)),
        }
    }

    /// A short description, e.g. `add learner 12 on store 3`.
    pub fn describe(&self) -> String {
        match self {
            Step::AddLearner(p) => PeerChange::AddLearner(*p).describe(),
            Step::PromoteLearner(p) => PeerChange::Promote(*p).describe(),
            Step::RemovePeer(p) => PeerChange::Remove(*p).describe(),
            Step::ChangePeerV2(changes) => format!(
                "joint change: {}",
                changes.iter().map(PeerChange::describe).collect::<Vec<_>>().join(", ")
            ),
            Step::TransferLeader { from, to } => format!(
                "transfer leader from peer {} on store {} to peer {} on store {}",
                from.id, from.store_id, to.id, to.store_id
            ),
            Step::SplitRegion(SplitPolicy::Approximate) => "split region at its middle key".to_owned(),
            Step::SplitRegion(SplitPolicy::UseKeys(keys)) => format!(
                "split region at {}",
                keys.iter().map(hex::encode_upper).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region_map::RegionRuntime;
    use mnemo_proto::types::{PeerId, RegionId, StoreId};

    fn peer(id: u64, store: u64, role: PeerRole) -> Peer {
        Peer { id: PeerId(id), store_id: StoreId(store), role }
    }

    fn info(peers: Vec<Peer>, leader: Peer) -> RegionInfo {
        RegionInfo {
            region: Region {
                id: RegionId(1),
                epoch: RegionEpoch { conf_ver: 5, version: 1 },
                peers,
                ..Default::default()
            },
            runtime: RegionRuntime { leader: Some(leader), ..Default::default() },
        }
    }

    #[test]
    fn a_joint_change_waits_in_the_joint_state_and_is_done_when_all_show() {
        let origin = RegionEpoch { conf_ver: 5, version: 1 };
        let (a, b) = (peer(1, 1, PeerRole::Voter), peer(2, 2, PeerRole::Voter));
        let (old, new) = (peer(3, 3, PeerRole::Voter), peer(4, 4, PeerRole::Learner));
        let swap = Step::ChangePeerV2(vec![PeerChange::Promote(new), PeerChange::Remove(old)]);
        let before = info(vec![a, b, old, new], a);
        assert!(!swap.is_started(&before, origin));
        // Joint state: the learner is an (incoming) voter, the old voter still listed.
        let joint = info(vec![a, b, old, Peer { role: PeerRole::Voter, ..new }], a);
        assert!(swap.is_started(&joint, origin) && !swap.is_done(&joint, origin));
        let after = info(vec![a, b, Peer { role: PeerRole::Voter, ..new }], a);
        assert!(swap.is_done(&after, origin));
        // Removing the leader that way is refused.
        let led_by_old = info(vec![a, b, old, new], old);
        assert!(swap.blocked(&led_by_old).is_some());
    }

    #[test]
    fn a_leader_transfer_is_done_once_someone_else_leads() {
        let origin = RegionEpoch::default();
        let (a, b, c) =
            (peer(1, 1, PeerRole::Voter), peer(2, 2, PeerRole::Voter), peer(3, 3, PeerRole::Voter));
        let step = Step::TransferLeader { from: a, to: b };
        assert!(!step.is_done(&info(vec![a, b, c], a), origin));
        assert!(step.is_done(&info(vec![a, b, c], b), origin));
        assert!(step.is_done(&info(vec![a, b, c], c), origin), "off `from` is what counts");
        assert!(step.blocked(&info(vec![a, c], a)).is_some(), "the target left the region");
    }

    #[test]
    fn a_split_is_done_when_the_version_moves() {
        let origin = RegionEpoch { conf_ver: 5, version: 1 };
        let a = peer(1, 1, PeerRole::Voter);
        let mut r = info(vec![a], a);
        let step = Step::SplitRegion(SplitPolicy::Approximate);
        assert!(!step.is_done(&r, origin));
        r.region.epoch.version = 2;
        assert!(step.is_done(&r, origin));
    }
}
