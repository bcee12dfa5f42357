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
//! | `MoveAll`         | each `Move` in turn (a leaving leader hands over to the wanted voter if there is one), then [TransferLeader] |
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
    /// Replace several replicas, one `Move` after another (each planned on
    /// the region as the ones before leave it), then hand leadership to the
    /// replica on store `leader`, if given (`transfer-region`,
    /// `scatter-region`).
    MoveAll {
        /// (replica to replace, store receiving its successor), in order.
        moves: Vec<(Peer, StoreId)>,
        /// The store whose replica should lead at the end.
        leader: Option<StoreId>,
    },
}

impl Plan {
    /// How many fresh peer ids building the plan takes.
    pub fn peer_ids_needed(&self) -> usize {
        match self {
            Plan::AddReplica { .. } | Plan::Move { .. } => 1,
            Plan::MoveAll { moves, .. } => moves.len(),
            _ => 0,
        }
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
/// that needs new peers takes their ids from `new_peers` (too few: building
/// fails). Fails, with the reason, when the plan cannot be carried out as
/// it stands.
pub fn build(
    p: &Proposal,
    info: &RegionInfo,
    ctx: &Ctx<'_>,
    new_peers: &[PeerId],
) -> Result<Operator, String> {
    let steps = steps(p, info, ctx, new_peers)?;
    let sends_snapshot = steps.iter().any(|s| matches!(s, Step::AddLearner(_)));
    let moves = steps.iter().filter(|s| matches!(s, Step::AddLearner(_))).count().max(1);
    let timeout = match p.kind {
        OpKind::Leader => ctx.settings.operator_timeout.min(LEADER_OPERATOR_TIMEOUT),
        // One snapshot after another.
        _ if sends_snapshot => ctx.settings.snapshot_timeout(info) * u32::try_from(moves).unwrap_or(u32::MAX),
        _ => ctx.settings.operator_timeout,
    };
    Ok(Operator::new(&info.region, p.kind, p.desc, steps, ctx.snap.now, timeout))
}

/// The steps of `p` on `info`.
fn steps(p: &Proposal, info: &RegionInfo, ctx: &Ctx<'_>, new_peers: &[PeerId]) -> Result<Vec<Step>, String> {
    let leader = info.leader().ok_or("the region's leader is unknown")?;
    let learner_on = |store| {
        new_peers
            .first()
            .map(|&id| Peer { id, store_id: store, role: PeerRole::Learner })
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
        Plan::MoveAll { moves, leader: want } => {
            if new_peers.len() < moves.len() {
                return Err("no peer id available".to_owned());
            }
            // Each move is planned on the region as the moves before it
            // leave it.
            let mut sim = info.clone();
            let mut steps = Vec::new();
            for (&(from, to), id) in moves.iter().zip(new_peers) {
                let current = sim.region.peers.iter().find(|p| p.id == from.id).copied();
                let from = current.ok_or_else(|| format!("peer {} is not in the region", from.id))?;
                // Leadership leaving `from` goes straight to the wanted
                // store's voter, if it has one already: one transfer, not two.
                let wanted = want.and_then(|s| sim.region.peer_on_store(s).copied());
                if let Some(w) = wanted.filter(|w| w.id != from.id && ctx.can_lead(w, &sim)) {
                    if sim.leader().is_some_and(|l| l.id == from.id) {
                        let step = Step::TransferLeader { from, to: w };
                        simulate(&mut sim, &step);
                        steps.push(step);
                    }
                }
                let one = Proposal { plan: Plan::Move { from, to }, ..p.clone() };
                let move_steps = self::steps(&one, &sim, ctx, std::slice::from_ref(id))?;
                for step in move_steps {
                    simulate(&mut sim, &step);
                    steps.push(step);
                }
            }
            let now = sim.leader().ok_or("the region's leader is unknown")?;
            if let Some(to) = want.and_then(|s| sim.region.peer_on_store(s).copied()) {
                if to.id != now.id {
                    steps.push(Step::TransferLeader { from: now, to });
                }
            }
            steps
        }
    };
    Ok(steps)
}

/// Changes `sim` as `step` will change the region once done.
fn simulate(sim: &mut RegionInfo, step: &Step) {
    let peers = &mut sim.region.peers;
    let set_role = |peers: &mut Vec<Peer>, p: &Peer, role| {
        if let Some(q) = peers.iter_mut().find(|q| q.id == p.id) {
            q.role = role;
        }
    };
    match step {
        Step::AddLearner(l) => peers.push(*l),
        Step::PromoteLearner(v) => set_role(peers, v, PeerRole::Voter),
        Step::RemovePeer(r) => peers.retain(|q| q.id != r.id),
        Step::ChangePeerV2(changes) => {
            for c in changes {
                match c {
                    PeerChange::AddLearner(_) => peers.push(c.peer()),
                    PeerChange::Promote(v) => set_role(peers, v, PeerRole::Voter),
                    PeerChange::Remove(r) => peers.retain(|q| q.id != r.id),
                }
            }
        }
        Step::TransferLeader { to, .. } => sim.runtime.leader = Some(*to),
        Step::SplitRegion(_) => {}
    }
}
