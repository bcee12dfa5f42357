//! Scheduling: deciding membership changes and handing them out as operators.
//!
//! Sans-IO like the rest of PD's logic. [`replica_checker::check`] looks at one
//! region, the stores and the config at a given instant and returns a
//! [`Decision`]; [`Operator`] turns a decision into steps and follows their
//! progress in later heartbeats. The cluster (`cluster/heartbeat.rs`) does
//! the I/O: it allocates peer ids, keeps at most one operator per region in
//! the [`OperatorController`], and sends the current step back on the
//! heartbeat stream.
//!
//! Protocol with the region leader (kvproto `RegionHeartbeatResponse`):
//! - One step per response, `change_peer` with `AddLearnerNode` (peer role
//!   Learner), `AddNode` (promote a learner; role Voter) or `RemoveNode`.
//! - The same step is re-sent on every heartbeat until the region's peers
//!   show it applied, so the leader must treat a step that is already in
//!   effect (or already proposed) as a no-op, and ignore a response whose
//!   `region_epoch` differs from its own.
//! - A learner is promoted only once it is absent from the heartbeat's
//!   `pending_peers`: the leader must list peers that have not caught up.
//!   Meanwhile PD sends nothing for the region.
//! - An operator not finished within `schedule.operator-timeout` is dropped;
//!   one whose region split or merged (epoch `version` changed) is cancelled.

mod operator;
pub mod replica_checker;

pub use operator::{Operator, OperatorController, Progress, Step};
pub use replica_checker::{CheckerConfig, Decision, Stores};
