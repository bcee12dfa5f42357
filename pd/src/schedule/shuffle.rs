//! The shuffle schedulers: churn on purpose, for testing (PD's
//! shuffle-leader-scheduler and shuffle-region-scheduler). Off by default;
//! a chaos run adds them so that leadership and replicas keep moving while a
//! workload checks that nothing is lost or read stale.
//!
//! **shuffle-leader.** Take the active stores in random order; on the first
//! that has one, pick a region (random start) whose voter there could lead
//! but does not ([`Ctx::can_lead`]), and hand that voter leadership.
//!
//! **shuffle-region.** Take the active stores in random order as sources; for
//! a region with a replica on the source (random start), move that replica to
//! the first store, in random order, that may take it under the rules
//! balance-region follows ([`Ctx::can_move`]): it accepts new replicas, holds
//! none of the region, shares no `host` with the replicas that stay, and the
//! region's isolation by `location-labels` does not get worse. A region with
//! one replica per zone keeps one per zone; its replica count never drops
//! (the move adds a learner first, then swaps it in by joint consensus).
//!
//! Both touch only balanceable regions ([`Ctx::is_balanceable`]: healthy,
//! fully replicated, no operator), count against `leader-schedule-limit` and
//! `region-schedule-limit`, and create at most one operator per patrol tick
//! (see `schedulers`). The balancers, if still active, undo part of the
//! churn; remove them to shuffle freely.

use mnemo_proto::types::StoreId;
use rand::seq::SliceRandom;
use rand::Rng;

use super::balance::sample;
use super::context::Ctx;
use super::operator::OpKind;
use super::plan::{Plan, Proposal};

/// One leader transfer to a random follower, if any region has one that can lead.
pub fn shuffle_leader(ctx: &Ctx<'_>, rng: &mut impl Rng) -> Option<Proposal> {
    for store in active_stores_shuffled(ctx, rng) {
        let regions = ctx.snap.regions.regions_on_store(store, rng.gen());
        let followed = regions.filter(|info| info.leader().is_some_and(|l| l.store_id != store));
        for info in sample(ctx, followed) {
            let Some(&to) = info.region.peer_on_store(store) else { continue };
            if ctx.can_lead(&to, info) {
                let plan = Plan::TransferLeader { to };
                return Some(Proposal {
                    region: info.region.id,
                    kind: OpKind::Leader,
                    desc: "shuffle-leader",
                    plan,
                });
            }
        }
    }
    None
}

/// One replica moved to a random store that may take it, if any.
pub fn shuffle_region(ctx: &Ctx<'_>, rng: &mut impl Rng) -> Option<Proposal> {
    let stores = active_stores_shuffled(ctx, rng);
    for &src in &stores {
        for info in sample(ctx, ctx.snap.regions.regions_on_store(src, rng.gen())) {
            let Some(&from) = info.region.peer_on_store(src) else { continue };
            let mut targets = stores.clone();
            targets.shuffle(rng);
            if let Some(to) = targets.into_iter().find(|&dst| ctx.can_move(info, src, dst)) {
                let plan = Plan::Move { from, to };
                return Some(Proposal {
                    region: info.region.id,
                    kind: OpKind::Region,
                    desc: "shuffle-region",
                    plan,
                });
            }
        }
    }
    None
}

/// The active stores ([`Ctx::is_active`]), in random order.
fn active_stores_shuffled(ctx: &Ctx<'_>, rng: &mut impl Rng) -> Vec<StoreId> {
    let (stores, _) = ctx.active_stores(|_| 0);
    let mut stores: Vec<StoreId> = stores.into_iter().map(|(s, _)| s).collect();
    stores.shuffle(rng);
    stores
}
