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

/// A scheduler that can be added and removed at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheduler {
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

    /// PD's name, e.g. `shuffle-leader-scheduler`.
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::BalanceLeader => "balance-leader-scheduler",
            Scheduler::BalanceRegion => "balance-region-scheduler",
            Scheduler::ShuffleLeader => "shuffle-leader-scheduler",
            Scheduler::ShuffleRegion => "shuffle-region-scheduler",
        }
    }

    /// The scheduler called `name` (PD's full name), if any.
    pub fn parse(name: &str) -> Option<Scheduler> {
        Scheduler::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Every name, comma-separated, for error messages.
    pub fn known_names() -> String {
        Scheduler::ALL.map(Scheduler::name).join(", ")
    }

    /// The kind of its operators, i.e. the limit they count against.
    pub fn kind(self) -> OpKind {
        match self {
            Scheduler::BalanceLeader | Scheduler::ShuffleLeader => OpKind::Leader,
            Scheduler::BalanceRegion | Scheduler::ShuffleRegion => OpKind::Region,
        }
    }

    /// Most operators it creates per patrol tick.
    pub fn per_round(self) -> usize {
        match self {
            Scheduler::BalanceLeader | Scheduler::BalanceRegion => BALANCE_BATCH,
            Scheduler::ShuffleLeader | Scheduler::ShuffleRegion => SHUFFLE_BATCH,
        }
    }

    /// One operator's worth of work, if it sees any.
    pub fn propose(self, ctx: &Ctx<'_>, rng: &mut impl Rng) -> Option<Proposal> {
        match self {
            Scheduler::BalanceLeader => balance_leader(ctx, rng),
            Scheduler::BalanceRegion => balance_region(ctx, rng),
            Scheduler::ShuffleLeader => shuffle_leader(ctx, rng),
            Scheduler::ShuffleRegion => shuffle_region(ctx, rng),
        }
    }
}

impl std::fmt::Display for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_the_balancers_are_on_by_default() {
        for s in Scheduler::ALL {
            assert_eq!(Scheduler::parse(s.name()), Some(s));
        }
        assert_eq!(Scheduler::parse("shuffle-leader"), None, "PD's full names only");
        assert!(!Scheduler::DEFAULT.contains(&Scheduler::ShuffleLeader));
        assert!(!Scheduler::DEFAULT.contains(&Scheduler::ShuffleRegion));
    }
}
