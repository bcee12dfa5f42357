//! The schedulers an operator switches on and off at run time, by PD's names
//! (`GET/POST /pd/api/v1/schedulers`, `DELETE /pd/api/v1/schedulers/{name}`,
//! `pd-ctl scheduler show|add|remove`).
//!
//! | name                         | default | makes                      | limit                   |
//! |------------------------------|---------|----------------------------|-------------------------|
//! | `balance-leader-scheduler`   | on      | leader transfers ([`balance`]) | `leader-schedule-limit` |
//! | `balance-region-scheduler`   | on      | replica moves ([`balance`])    | `region-schedule-limit` |
//! | `shuffle-leader-scheduler`   | off     | random leader transfers ([`shuffle`]) | `leader-schedule-limit` |
//! | `shuffle-region-scheduler`   | off     | random replica moves ([`shuffle`])    | `region-schedule-limit` |
//! | `evict-leader-scheduler-{store}` | off | moves every leader off the store ([`evict_leader`]) | `leader-schedule-limit` |
//!
//! `evict-leader-scheduler` is added for one store at a time (`pd-ctl
//! scheduler add evict-leader-scheduler 4`): it drains the store's leaders
//! before maintenance, and while it runs no scheduler or checker hands a
//! leader to that store ([`Settings::evict_leader_stores`]). Removing it
//! (`scheduler remove evict-leader-scheduler-4`) lets balance-leader bring
//! leaders back.
//!
//! A scheduler can be paused for a while (`pd-ctl scheduler pause NAME
//! SECONDS`, `resume NAME`): it stays active but proposes nothing until then
//! ([`super::Coordinator::pause`]); pauses are not persisted.
//!
//! On every patrol tick the coordinator runs the active schedulers in the
//! order above, each proposing up to [`Scheduler::per_round`] operators while
//! its kind has room under its limit. The replica checker is no scheduler:
//! it always runs (`replica-schedule-limit` 0 stops it).
//!
//! The active set is persisted with PD's metadata (`cluster::scheduling`),
//! so schedulers added or removed at run time stay so after a restart, as in
//! PD.
//!
//! [`balance`]: super::balance
//! [`shuffle`]: super::shuffle
//! [`Settings::evict_leader_stores`]: super::settings::Settings::evict_leader_stores

use mnemo_proto::types::{Peer, StoreId};
use rand::Rng;

use super::balance::{balance_leader, balance_region};
use super::context::Ctx;
use super::operator::OpKind;
use super::plan::Proposal;
use super::shuffle::{shuffle_leader, shuffle_region};

/// Operators each balance scheduler may create per patrol tick.
pub const BALANCE_BATCH: usize = 4;

/// Operators each shuffle scheduler may create per patrol tick: churn at a
/// pace set by `schedule.patrol-region-interval` (10 per second by default),
/// never a burst.
pub const SHUFFLE_BATCH: usize = 1;

/// Leader transfers evict-leader may create per patrol tick (per store).
pub const EVICT_BATCH: usize = 8;

/// The name evict-leader is added under; it runs as `{this}-{store}`.
pub const EVICT_LEADER: &str = "evict-leader-scheduler";

/// A scheduler that can be added and removed at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheduler {
    /// Moves every leader off the store (off by default; first in the
    /// patrol order, so a drain is not starved by balancing).
    EvictLeader(StoreId),
    /// Spreads leaders evenly (on by default).
    BalanceLeader,
    /// Spreads replicas evenly (on by default).
    BalanceRegion,
    /// Moves leadership of a random region to a random follower (testing; off by default).
    ShuffleLeader,
    /// Moves a random replica to a random store, placement permitting
    /// (testing; off by default).
    ShuffleRegion,
}

impl Scheduler {
    /// Every scheduler, in the order the coordinator runs them.
    pub const ALL: [Scheduler; 4] = [
        Scheduler::BalanceLeader,
        Scheduler::BalanceRegion,
        Scheduler::ShuffleLeader,
        Scheduler::ShuffleRegion,
    ];

    /// The schedulers active when nothing was changed at run time.
    pub const DEFAULT: [Scheduler; 2] = [Scheduler::BalanceLeader, Scheduler::BalanceRegion];

    /// PD's name, e.g. `shuffle-leader-scheduler`, `evict-leader-scheduler-4`.
    pub fn name(self) -> String {
        match self {
            Scheduler::EvictLeader(store) => format!("{EVICT_LEADER}-{store}"),
            other => other.fixed_name().to_owned(),
        }
    }

    fn fixed_name(self) -> &'static str {
        match self {
            Scheduler::EvictLeader(_) => EVICT_LEADER,
            Scheduler::BalanceLeader => "balance-leader-scheduler",
            Scheduler::BalanceRegion => "balance-region-scheduler",
            Scheduler::ShuffleLeader => "shuffle-leader-scheduler",
            Scheduler::ShuffleRegion => "shuffle-region-scheduler",
        }
    }

    /// The scheduler called `name` (PD's full name, with the store for
    /// evict-leader: `evict-leader-scheduler-4`), if any.
    pub fn parse(name: &str) -> Option<Scheduler> {
        if let Some(store) = name.strip_prefix(EVICT_LEADER).and_then(|s| s.strip_prefix('-')) {
            return store.parse().ok().filter(|id| *id > 0).map(|id| Scheduler::EvictLeader(StoreId(id)));
        }
        Scheduler::ALL.into_iter().find(|s| s.fixed_name() == name)
    }

    /// Every name, comma-separated, for error messages.
    pub fn known_names() -> String {
        let mut names = Scheduler::ALL.map(Scheduler::fixed_name).to_vec();
        names.push("evict-leader-scheduler (with a store id)");
        names.join(", ")
    }

    /// The kind of its operators, i.e. the limit they count against.
    pub fn kind(self) -> OpKind {
        match self {
            Scheduler::BalanceLeader | Scheduler::ShuffleLeader | Scheduler::EvictLeader(_) => OpKind::Leader,
            Scheduler::BalanceRegion | Scheduler::ShuffleRegion => OpKind::Region,
        }
    }

    /// Most operators it creates per patrol tick.
    pub fn per_round(self) -> usize {
        match self {
            Scheduler::BalanceLeader | Scheduler::BalanceRegion => BALANCE_BATCH,
            Scheduler::ShuffleLeader | Scheduler::ShuffleRegion => SHUFFLE_BATCH,
            Scheduler::EvictLeader(_) => EVICT_BATCH,
        }
    }

    /// One operator's worth of work, if it sees any.
    pub fn propose(self, ctx: &Ctx<'_>, rng: &mut impl Rng) -> Option<Proposal> {
        match self {
            Scheduler::BalanceLeader => balance_leader(ctx, rng),
            Scheduler::BalanceRegion => balance_region(ctx, rng),
            Scheduler::ShuffleLeader => shuffle_leader(ctx, rng),
            Scheduler::ShuffleRegion => shuffle_region(ctx, rng),
            Scheduler::EvictLeader(store) => evict_leader(ctx, store, rng),
        }
    }
}

/// One leader transfer off `store`, for a region without an operator
/// whose leader is there and that has a voter elsewhere able to lead (not
/// on a store whose leaders are evicted too).
pub fn evict_leader(ctx: &Ctx<'_>, store: StoreId, rng: &mut impl Rng) -> Option<Proposal> {
    ctx.snap.regions.regions_led_by(store, rng.gen()).take(super::balance::SCAN_PER_STORE).find_map(|info| {
        if ctx.ops.has(info.region.id) {
            return None;
        }
        let leader: Peer = info.leader()?;
        let to = ctx.leader_target(info, leader)?;
        Some(Proposal {
            region: info.region.id,
            kind: OpKind::Leader,
            desc: "evict-leader",
            plan: super::plan::Plan::TransferLeader { to },
        })
    })
}

impl std::fmt::Display for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_the_balancers_are_on_by_default() {
        for s in Scheduler::ALL {
            assert_eq!(Scheduler::parse(&s.name()), Some(s));
        }
        assert_eq!(Scheduler::parse("shuffle-leader"), None, "PD's full names only");
        let evict = Scheduler::EvictLeader(StoreId(4));
        assert_eq!(evict.name(), "evict-leader-scheduler-4");
        assert_eq!(Scheduler::parse(&evict.name()), Some(evict));
        assert_eq!(Scheduler::parse("evict-leader-scheduler"), None, "evict-leader needs its store");
        assert_eq!(Scheduler::parse("evict-leader-scheduler-0"), None);
        assert!(!Scheduler::DEFAULT.contains(&Scheduler::ShuffleLeader));
        assert!(!Scheduler::DEFAULT.contains(&Scheduler::ShuffleRegion));
    }
}
