//! The balance schedulers: balance-region spreads replicas, balance-leader
//! spreads leaders, each one operator per call.
//!
//! Scores include the influence of operators in flight (see `controller`),
//! so calling a scheduler again right after it proposed something sees the
//! stores as they will be, and picks the next best move rather than the same
//! one. Only stores that are Up and heartbeating take part; only regions
//! that are fully healthy and have no operator move ([`Ctx::is_balanceable`]).
//!
//! **balance-region.** Region score = sum of region weights (approximate size
//! in MiB, at least 1: regions of a few KiB balance by count). Take the
//! highest-scoring store, look at a few of its regions (random start;
//! followers before leaders, since moving a leader costs a transfer first),
//! and move one to the lowest-scoring store that can take it: no peer of the
//! region there, no shared `host`, isolation not worse. Worth it only if the
//! source still scores more than the target once the move is done
//! ([`Ctx::region_move`]; the move cannot overshoot) and their gap exceeds 5 %
//! of the mean score (no flapping over noise). No move from the top store:
//! try the next one.
//!
//! **balance-leader.** Leader score = leader count. Transfer a leader from
//! the store with the most to the follower store with the fewest; if none
//! of its regions can, pull a leader onto the store with the fewest from a
//! region it follows. Worth it when the source scores at least as much as
//! the target once the transfer is done ([`Ctx::leader_move`]; between stores
//! of weight 1, a gap of at least 2 leaders) and the gap is above 5 % of the
//! mean.

use mnemo_proto::types::{Peer, StoreId};
use rand::Rng;

use super::context::{worth_moving, Ctx};
use super::controller::LimitType;
use super::operator::OpKind;
use super::plan::{Plan, Proposal};
use crate::region_map::RegionInfo;

/// Balanceable regions of one store considered per call before trying the
/// next store.
pub const CANDIDATES_PER_STORE: usize = 32;

/// Regions of one store looked at per call at most, balanceable or not, so
/// that a call stays cheap while most regions are busy (e.g. being repaired).
pub const SCAN_PER_STORE: usize = 256;

/// One balance-region move, if one is worth it.
pub fn balance_region(ctx: &Ctx<'_>, rng: &mut impl Rng) -> Option<Proposal> {
    let (mut stores, mean) = ctx.active_stores(|s| ctx.region_score(s));
    stores.sort_by_key(|&(s, score)| (std::cmp::Reverse(score), s));
    let &(lowest_store, lowest) = stores.last()?;
    for &(src, src_score) in &stores {
        if !worth_moving(src_score, lowest, ctx.region_move(src, lowest_store, 1), false, mean) {
            continue; // not even the smallest region is worth moving from it
        }
        if !ctx.ops.store_limit_allows(src, LimitType::RemovePeer, ctx.settings, ctx.snap.now) {
            continue; // its store limit has no removal left: try the next source
        }
        let mut candidates = sample(ctx, ctx.snap.regions.regions_on_store(src, rng.gen()));
        candidates.sort_by_key(|info| info.leader().is_some_and(|l| l.store_id == src));
        for info in candidates {
            if let Some(to) = region_target(ctx, info, src, src_score, &stores, mean) {
                let from = *info.region.peer_on_store(src)?;
                let plan = Plan::Move { from, to };
                return Some(Proposal {
                    region: info.region.id,
                    kind: OpKind::Region,
                    desc: "balance-region",
                    plan,
                });
            }
        }
    }
    None
}

/// The lowest-scoring store that may take `info`'s replica on `src`.
fn region_target(
    ctx: &Ctx<'_>,
    info: &RegionInfo,
    src: StoreId,
    src_score: i64,
    by_score_desc: &[(StoreId, i64)],
    mean: f64,
) -> Option<StoreId> {
    let weight = i64::try_from(info.weight()).unwrap_or(i64::MAX);
    for &(dst, dst_score) in by_score_desc.iter().rev() {
        if !worth_moving(src_score, dst_score, ctx.region_move(src, dst, weight), false, mean) {
            continue; // this target would overshoot (or is too close)
        }
        if ctx.can_move(info, src, dst) {
            return Some(dst);
        }
    }
    None
}

/// One balance-leader transfer, if one is worth it.
pub fn balance_leader(ctx: &Ctx<'_>, rng: &mut impl Rng) -> Option<Proposal> {
    let (mut stores, mean) = ctx.active_stores(|s| ctx.leader_score(s));
    stores.sort_by_key(|&(s, score)| (std::cmp::Reverse(score), s));
    let (&(highest_store, highest), &(lowest_store, lowest)) = (stores.first()?, stores.last()?);
    let propose = |info: &RegionInfo, to: Peer| {
        let plan = Plan::TransferLeader { to };
        Some(Proposal { region: info.region.id, kind: OpKind::Leader, desc: "balance-leader", plan })
    };
    // Out of the stores with the most leaders...
    for &(src, src_score) in &stores {
        if !worth_moving(src_score, lowest, ctx.leader_move(src, lowest_store), true, mean) {
            continue;
        }
        for info in sample(ctx, ctx.snap.regions.regions_led_by(src, rng.gen())) {
            let Some(leader) = info.leader() else { continue };
            let Some(to) = ctx.leader_target(info, leader) else { continue };
            let after = ctx.leader_move(src, to.store_id);
            if worth_moving(src_score, ctx.leader_score(to.store_id), after, true, mean) {
                return propose(info, to);
            }
        }
    }
    // ...or into the stores with the fewest, from regions they follow.
    for &(dst, dst_score) in stores.iter().rev() {
        if !worth_moving(highest, dst_score, ctx.leader_move(highest_store, dst), true, mean) {
            continue;
        }
        let regions = ctx.snap.regions.regions_on_store(dst, rng.gen());
        for info in sample(ctx, regions.filter(|i| i.leader().is_some_and(|l| l.store_id != dst))) {
            let (Some(leader), Some(&to)) = (info.leader(), info.region.peer_on_store(dst)) else { continue };
            if ctx.can_lead(&to, info)
                && worth_moving(
                    ctx.leader_score(leader.store_id),
                    dst_score,
                    ctx.leader_move(leader.store_id, dst),
                    true,
                    mean,
                )
            {
                return propose(info, to);
            }
        }
    }
    None
}

/// Up to [`CANDIDATES_PER_STORE`] balanceable regions among the first
/// [`SCAN_PER_STORE`] of `regions`.
pub(super) fn sample<'a>(
    ctx: &Ctx<'_>,
    regions: impl Iterator<Item = &'a RegionInfo>,
) -> Vec<&'a RegionInfo> {
    regions.take(SCAN_PER_STORE).filter(|info| ctx.is_balanceable(info)).take(CANDIDATES_PER_STORE).collect()
}
