//! Plans — what a checker or scheduler wants done to one region — and how a
//! plan becomes an operator's steps.
//!
//! | plan              | steps                                                         |
//! |-------------------|---------------------------------------------------------------|
//! | `AddReplica`      | AddLearner(new) → PromoteLearner(new)                          |
//! | `Promote`         | PromoteLearner                                                |
//! | `Swap`            | [TransferLeader] → ChangePeerV2{promote learner, remove voter} |
//! | `Move`            | [TransferLeader] → AddLearner(new) → ChangePeerV2{promote new, remove old} |
//! | `Remove`          | [TransferLeader] → RemovePeer                                 |
//! | `TransferLeader`  | TransferLeader                                                |
//! | `Split`           | SplitRegion                                                   |
//!
//! `[TransferLeader]` is there only when the peer to remove leads: a leader
//! never removes itself. It goes to the caught-up voter with the fewest
//! leaders. When no other voter can lead (a one-replica region), a move
//! instead adds and promotes the new peer, hands it leadership, then removes
//! the old one — single changes, as joint consensus needs no help there.

use mnemo_proto::types::{Peer, PeerId, PeerRole, RegionId, StoreId};

use super::context::Ctx;
use super::operator::{OpKind, Operator};
use super::settings::LEADER_OPERATOR_TIMEOUT;
use super::step::{PeerChange, SplitPolicy, Step};
use crate::region_map::RegionInfo;

/// What should happen to a region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// A new replica on `store` (a learner, then promoted).
    AddReplica {
        /// The target store.
        store: StoreId,
    },
    /// Make this caught-up learner a voter.
    Promote(Peer),
    /// Promote the learner and remove the voter in one joint change.
    Swap {
        /// A caught-up learner.
        promote: Peer,
        /// The voter it replaces.
        remove: Peer,
    },
    /// Replace the replica `from` with a new one on store `to`.
    Move {
        /// The replica to replace.
        from: Peer,
        /// The store receiving the new replica.
        to: StoreId,
    },
    /// Remove this peer.
    Remove(Peer),
    /// Hand leadership to this voter.
    TransferLeader {
        /// The voter that should lead.
        to: Peer,
    },
    /// Split the region.
    Split(SplitPolicy),
}

impl Plan {
    /// True if building the plan takes a fresh peer id.
    pub fn needs_peer_id(&self) -> bool {
        matches!(self, Plan::AddReplica { .. } | Plan::Move { .. })
    }
}

/// A plan with its purpose: which limit it counts against, and a
/// description for logs and the API (e.g. `replace-down-replica`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The region.
    pub region: RegionId,
    /// The limit it counts against.
    pub kind: OpKind,
    /// Why.
    pub desc: &'static str,
    /// What.
    pub plan: Plan,
}

/// Turns `p` into an operator on `info` (the region's latest state). A plan
/// that needs a new peer takes `new_peer` (`None`: building fails). Fails,
/// with the reason, when the plan cannot be carried out as it stands.
pub fn build(
    p: &Proposal,
    info: &RegionInfo,
    ctx: &Ctx<'_>,
    new_peer: Option<PeerId>,
) -> Result<Operator, String> {
    let leader = info.leader().ok_or("the region's leader is unknown")?;
    let learner_on = |store| {
        new_peer
            .map(|id| Peer { id, store_id: store, role: PeerRole::Learner })
            .ok_or_else(|| "no peer id available".to_owned())
    };
    let as_voter = |p: Peer| Peer { role: PeerRole::Voter, ..p };
    // Leadership off `from` first, if it leads.
    let hand_over = |from: Peer| -> Result<Vec<Step>, String> {
        if from.id != leader.id {
            return Ok(Vec::new());
        }
        let to = ctx.leader_target(info, from).ok_or("no other voter can take leadership")?;
        Ok(vec![Step::TransferLeader { from, to }])
    };
    let steps = match &p.plan {
        Plan::AddReplica { store } => {
            let l = learner_on(*store)?;
            vec![Step::AddLearner(l), Step::PromoteLearner(as_voter(l))]
        }
        Plan::Promote(l) => vec![Step::PromoteLearner(as_voter(*l))],
        Plan::Swap { promote, remove } => {
            let mut steps = hand_over(*remove)?;
            steps.push(Step::ChangePeerV2(vec![PeerChange::Promote(*promote), PeerChange::Remove(*remove)]));
            steps
        }
        Plan::Move { from, to } => {
            let l = learner_on(*to)?;
            match hand_over(*from) {
                Ok(mut steps) => {
                    steps.push(Step::AddLearner(l));
                    steps.push(Step::ChangePeerV2(vec![PeerChange::Promote(l), PeerChange::Remove(*from)]));
                    steps
                }
                Err(_) => vec![
                    Step::AddLearner(l),
                    Step::PromoteLearner(as_voter(l)),
                    Step::TransferLeader { from: *from, to: as_voter(l) },
                    Step::RemovePeer(*from),
                ],
            }
        }
        Plan::Remove(peer) => {
            let mut steps = hand_over(*peer)?;
            steps.push(Step::RemovePeer(*peer));
            steps
        }
        Plan::TransferLeader { to } => {
            if to.id == leader.id {
                return Err(format!("peer {} already leads", to.id));
            }
            vec![Step::TransferLeader { from: leader, to: *to }]
        }
        Plan::Split(policy) => vec![Step::SplitRegion(policy.clone())],
    };
    let sends_snapshot = steps.iter().any(|s| matches!(s, Step::AddLearner(_)));
    let timeout = match p.kind {
        OpKind::Leader => ctx.settings.operator_timeout.min(LEADER_OPERATOR_TIMEOUT),
        _ if sends_snapshot => ctx.settings.snapshot_timeout(info),
        _ => ctx.settings.operator_timeout,
    };
    Ok(Operator::new(&info.region, p.kind, p.desc, steps, ctx.snap.now, timeout))
}
