//! The replica checker: keeps every region at `max-replicas` healthy voters,
//! as well isolated as the stores' labels allow.
//!
//! A peer is *healthy* as [`Ctx::is_healthy`] says: its store is Up or only
//! Disconnected, and its leader does not report it down for
//! `max-store-down-time`. A Down store sends nothing; its peers are found
//! through the store's silence, not through the region's heartbeat (which
//! may list them as pending, or not at all). For one region, in order:
//!
//! 1. an unhealthy learner is removed, and so is one still catching up on a
//!    store that stopped heartbeating (it would block the region until the
//!    store is declared Down) or for twice the time an operator adding it
//!    gets (`operator-timeout` plus 1 s per MiB of region: what added it
//!    gave up, and it still has not caught up, e.g. a dropped snapshot);
//! 2. a caught-up learner is promoted if healthy voters are missing —
//!    swapped in for an unhealthy voter in one joint change when the region
//!    already has `max-replicas` voters — else removed as extra; a learner
//!    still catching up (in `pending_peers`) makes the checker wait, unless
//!    a voter must be replaced (rule 4 goes ahead beside it);
//! 3. fewer voters than `max-replicas`: add a replica on the best store;
//! 4. exactly `max-replicas` voters, one on a Down or Offline store (or
//!    reported down): *move* it — learner on the best store, then one joint
//!    change promoting it and removing the unhealthy voter (this is how
//!    Offline stores drain and Down stores are healed);
//! 5. more voters than `max-replicas`: remove one — unhealthy first (the
//!    leader too: it hands leadership over first), then the one whose
//!    departure leaves the best isolation, then a follower rather than the
//!    leader, then the one on the fullest store;
//! 6. isolation worse than the stores allow (two replicas in one zone while
//!    a zone has none of them): move the replica whose move improves it most.
//!
//! The *best store* for a new replica accepts new replicas
//! ([`Ctx::is_target`]), holds no peer of the region, shares no `host` with
//! the replicas kept, and among those gives the best isolation, then has the
//! lowest region score, then the lowest id. No such store: the checker
//! leaves the region as it is (e.g. a Down peer stays when no spare store
//! exists).

use mnemo_proto::types::{Peer, PeerId, StoreId};

use super::context::Ctx;
use super::operator::OpKind;
use super::plan::{Plan, Proposal};
use crate::region_map::RegionInfo;

/// Looks at one region; see the module docs for the rules.
pub fn check(info: &RegionInfo, ctx: &Ctx<'_>) -> Option<Proposal> {
    let propose = |desc, plan| Some(Proposal { region: info.region.id, kind: OpKind::Replica, desc, plan });
    let r = &info.region;
    let max = ctx.settings.max_replicas;
    let healthy = |p: &Peer| ctx.is_healthy(p, info);
    let voters: Vec<Peer> = r.voters().copied().collect();
    let healthy_voters = voters.iter().filter(|p| healthy(p)).count();
    let leader = info.leader().map(|l| l.id);
    // An unhealthy voter to replace; the leader last (it must hand over first).
    let unhealthy_voter = voters.iter().filter(|p| !healthy(p)).min_by_key(|p| Some(p.id) == leader).copied();

    let stuck = |l: &Peer| {
        ctx.is_pending(l, info) && (!ctx.is_active(l.store_id) || ctx.is_pending_too_long(l, info))
    };
    if let Some(&l) = r.learners().find(|l| !healthy(l) || stuck(l)) {
        return propose("remove-unhealthy-learner", Plan::Remove(l));
    }
    let must_replace = voters.len() == max && unhealthy_voter.is_some();
    if r.learners().next().is_some() && r.learners().all(|l| ctx.is_pending(l, info)) && !must_replace {
        return None;
    }
    if let Some(&l) = r.learners().find(|l| !ctx.is_pending(l, info)) {
        return if healthy_voters >= max {
            propose("remove-extra-learner", Plan::Remove(l))
        } else if let (true, Some(u)) = (voters.len() >= max, unhealthy_voter) {
            propose("replace-unhealthy-replica", Plan::Swap { promote: l, remove: u })
        } else {
            propose("promote-learner", Plan::Promote(l))
        };
    }
    let stores_of = |peers: &mut dyn Iterator<Item = &Peer>| peers.map(|p| p.store_id).collect::<Vec<_>>();
    if voters.len() < max {
        let keep = stores_of(&mut voters.iter().filter(|p| healthy(p)));
        return best_target(info, &keep, ctx)
            .and_then(|store| propose("add-replica", Plan::AddReplica { store }));
    }
    if let (true, Some(victim)) = (voters.len() == max && healthy_voters < max, unhealthy_voter.as_ref()) {
        let keep = stores_of(&mut voters.iter().filter(|p| healthy(p)));
        let desc = match ctx.status(victim.store_id) {
            Some(crate::store::StoreStatus::Offline) => "move-offline-replica",
            _ => "replace-down-replica",
        };
        if let Some(to) = best_target(info, &keep, ctx) {
            return propose(desc, Plan::Move { from: *victim, to });
        }
    }
    if voters.len() > max {
        let remaining = |p: &Peer| stores_of(&mut voters.iter().filter(|q| q.id != p.id));
        // Every voter is a candidate, the leader too (an Offline or Down
        // leader must go before any healthy follower: the plan hands its
        // leadership over first); among equals a follower goes.
        let victim = voters.iter().min_by_key(|p| {
            (
                healthy(p),
                ctx.isolation(&remaining(p)),
                Some(p.id) == leader,
                std::cmp::Reverse(ctx.region_score(p.store_id)),
                std::cmp::Reverse(p.store_id),
            )
        })?;
        let desc = if healthy(victim) { "remove-extra-replica" } else { "remove-down-replica" };
        return propose(desc, Plan::Remove(*victim));
    }
    if healthy_voters == voters.len() {
        return improve_isolation(info, &voters, leader, ctx)
            .and_then(|(from, to)| propose("improve-isolation", Plan::Move { from, to }));
    }
    None
}

/// The best store for a new replica next to replicas on `keep`.
pub fn best_target(info: &RegionInfo, keep: &[StoreId], ctx: &Ctx<'_>) -> Option<StoreId> {
    ctx.snap
        .stores
        .keys()
        .copied()
        .filter(|s| info.region.peer_on_store(*s).is_none())
        .filter(|s| ctx.is_repair_target(*s) && !ctx.shares_host(*s, keep))
        .min_by_key(|s| {
            let with: Vec<StoreId> = keep.iter().copied().chain([*s]).collect();
            // A store low on space only when no other will do (stores that
            // share one nearly full disk are still repaired).
            (ctx.is_low_on_space(*s), ctx.isolation(&with), ctx.region_score(*s), *s)
        })
}

/// A replica to move, and where, that makes the region's isolation
/// strictly better; the best such pair.
fn improve_isolation(
    info: &RegionInfo,
    voters: &[Peer],
    leader: Option<PeerId>,
    ctx: &Ctx<'_>,
) -> Option<(Peer, StoreId)> {
    let all: Vec<StoreId> = voters.iter().map(|p| p.store_id).collect();
    let now = ctx.isolation(&all);
    if now.is_perfect() {
        return None;
    }
    voters
        .iter()
        .filter_map(|from| {
            let keep: Vec<StoreId> = all.iter().copied().filter(|s| *s != from.store_id).collect();
            let to = best_target(info, &keep, ctx)?;
            let with: Vec<StoreId> = keep.into_iter().chain([to]).collect();
            let better = ctx.isolation(&with);
            // Among equal gains, move a follower rather than the leader.
            (better < now).then_some(((better, Some(from.id) == leader, from.store_id), *from, to))
        })
        .min_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, from, to)| (from, to))
}

#[cfg(test)]
#[path = "replica_checker_tests.rs"]
mod tests;
