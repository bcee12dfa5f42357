//! PD's replicated metadata: a deterministic state machine fed by commands.
//!
//! Every change to what PD must remember across restarts — cluster id,
//! bootstrap, stores, region records, the id window, the TSO bound, config
//! changed at run time, the active schedulers — is a [`Command`]. Commands reach the
//! [`StateMachine`] only through a [`Replicator`]:
//!
//! ```text
//!   request ──► Cluster (decides, under one lock) ──► Replicator::replicate(cmd)
//!                                                        │  today: apply at once
//!                                                        │  later: raft log → commit
//!                                                        ▼
//!                                   StateMachine::apply(cmd): engine write (sync)
//!                                                             then memory update
//! ```
//!
//! Invariants:
//! - `apply` is deterministic: its result depends only on the command and the
//!   state, never on the clock or randomness (commands carry such values, e.g.
//!   the generated cluster id or the TSO bound). Rejections (`Bootstrap` twice,
//!   a stale region) are deterministic no-ops or errors every replica agrees on.
//! - Disk before memory: the engine write is synced before memory changes, so
//!   nothing observable is lost on a crash; if the write fails, memory is
//!   unchanged and the error is not deterministic (a replica must stop).
//! - Runtime facts (region leaders, store heartbeats) are not commands: they
//!   live beside the metadata in memory and are rebuilt from heartbeats.
//!
//! On start, [`StateMachine::open`] loads every record from `Cf::Meta` under
//! the `pd/` prefix (layout in `storage.rs`).

mod command;
mod replicator;
mod state;
mod storage;

pub use command::Command;
pub use replicator::{LocalReplicator, Replicator};
pub use state::{MetaState, StateMachine};
