//! Scheduling: deciding what should change in the cluster, and handing it
//! out as operators.
//!
//! ## Pieces
//!
//! - **Checkers and schedulers** look at a [`ClusterSnapshot`] (stores,
//!   region map, now) through a [`Ctx`] (plus [`Settings`] and the
//!   operators in flight) and return a [`Proposal`]: a [`Plan`] for one
//!   region, with its kind and purpose. [`replica_checker`] keeps regions at
//!   `max-replicas` healthy, well-placed voters (missing, extra, down,
//!   offline replicas, isolation by labels — see [`placement`]);
//!   [`balance`] spreads replicas (balance-region) and leaders
//!   (balance-leader); [`shuffle`] moves random leaders and replicas
//!   (shuffle-leader, shuffle-region: churn for testing, off by default);
//!   [`schedulers`] names them and says which run; [`admin`] validates what
//!   a human asks for.
//! - [`plan::build`] turns a plan into an [`Operator`]: steps
//!   ([`Step`]) for the region's leader, the region epoch and time of
//!   creation, a timeout and a kind ([`OpKind`]) with its own limit.
//! - The [`OperatorController`] holds at most one operator per region,
//!   enforces the per-kind limits and keeps their *influence* on store
//!   scores, so that a scheduler running again before its operators finish
//!   does not pile onto the same stores.
//! - The [`Coordinator`] decides when all of this runs: on every region
//!   heartbeat (follow the region's operator, or run the replica checker)
//!   and on a patrol tick (expire operators, check a batch of regions, run
//!   the active schedulers).
//!
//! Everything here is sans-IO: inputs are the snapshot, settings, `now`, a
//! source of peer ids and a seeded random generator; outputs are operators
//! and the steps to send. `cluster/` supplies the inputs under its lock and
//! `server/` sends the steps. `sim.rs` (tests) runs whole clusters of fake
//! nodes against it.
//!
//! ## Protocol with the region leader (kvproto `RegionHeartbeatResponse`)
//!
//! - One step per response, with `region_id`, `region_epoch` (the epoch the
//!   step was planned against: the operator's creation epoch plus the
//!   `conf_ver` moves of its earlier steps) and `target_peer` (the leader):
//!   `change_peer{AddLearnerNode | AddNode | RemoveNode}`,
//!   `change_peer_v2{changes}` (several changes as one raft ConfChangeV2:
//!   joint consensus, left automatically), `transfer_leader{peer}`,
//!   `split_region{policy: USEKEY keys | APPROXIMATE}`.
//! - The same step is re-sent on every heartbeat until the region shows it
//!   done, so the leader treats a step already in effect or in progress as a
//!   no-op, and ignores one whose `region_epoch` differs from its own: a
//!   step late, duplicated, or from an operator since dropped can only act
//!   on the membership it was planned for.
//! - A learner is promoted only once it is absent from `pending_peers`;
//!   meanwhile, and while a joint state is being left, PD sends nothing.
//! - An operator not finished within its timeout is dropped (leader
//!   transfers after at most 10 s); one whose region split or merged (epoch
//!   `version` changed) is cancelled, unless that split was its step; so is
//!   one whose region's `conf_ver` moved further than its own steps explain
//!   (a membership change it did not plan: it was planned on a stale view).
//!
//! ## What can go wrong
//!
//! - A node ignores or cannot carry out a step: the operator times out and
//!   the checker or balancer proposes again from the region's new state.
//! - A step half done when its operator is dropped (a learner added, never
//!   promoted): the replica checker sees an extra or missing peer and fixes it.
//! - PD restarts: operators are lost (memory only); regions are scheduled
//!   again once they heartbeat.

pub mod admin;
pub mod balance;
mod context;
mod controller;
mod coordinator;
mod operator;
pub mod placement;
pub mod plan;
pub mod replica_checker;
pub mod schedulers;
mod settings;
pub mod shuffle;
mod step;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_tests;

pub use admin::{AdminRequest, ScatterPicks};
pub use context::{worth_moving, ClusterSnapshot, Ctx, TOLERANCE_RATIO};
pub use controller::{Influence, LimitType, OperatorController, Refusal, StoreLimiter};
pub use coordinator::{Coordinator, NewPeerId, ScheduleOrder, PATROL_BATCH};
pub use operator::{OpKind, Operator, Progress};
pub use plan::{Plan, Proposal};
pub use schedulers::{Scheduler, BALANCE_BATCH, SHUFFLE_BATCH};
pub use settings::{Settings, StoreLimit, LEADER_OPERATOR_TIMEOUT};
pub use step::{PeerChange, SplitPolicy, Step};

use std::time::SystemTime;

use mnemo_proto::types::StoreId;

use crate::region_map::RegionMap;
use crate::store::{StoreInfo, StoreState};

/// Offline stores that hold no region any more: ready to become Tombstone.
pub fn drained_stores(snap: &ClusterSnapshot<'_>) -> Vec<StoreId> {
    snap.stores.values().filter(|s| is_drained(s, snap.regions, snap.now)).map(|s| s.meta.id).collect()
}

/// True if `store` is Offline and holds no region peer, by PD's map *and*
/// by the store's own report, a recent one. The map alone can have holes (a
/// split whose report was lost leaves a region PD never heard of), so a
/// store that is silent, or still reports peers, stays Offline (an operator
/// who knows it is gone sets it Tombstone through the API).
pub fn is_drained(store: &StoreInfo, regions: &RegionMap, now: SystemTime) -> bool {
    store.meta.state == StoreState::Offline
        && regions.store_region_count(store.meta.id) == 0
        && store.recently_heartbeated(now)
        && store.stats.as_ref().is_some_and(|s| s.region_count == 0)
}
