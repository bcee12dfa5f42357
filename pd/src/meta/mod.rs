//! PD's replicated metadata: a deterministic state machine fed by commands.
//!
//! Every change to what PD must remember across restarts — cluster id,
//! bootstrap, stores, region records, the id window, the TSO bound, config
//! changed at run time, the active schedulers — is a [`Command`]. Commands reach the
//! [`StateMachine`] only through a [`Replicator`]:
//!
//! ```text
//!   request ──► Cluster (decides) ──► Replicator::replicate(cmd)
//!                                        │  PD raft log → commit (crate::raft),
//!                                        │  or at once (one member, tests)
//!                                        ▼
//!              StateMachine::stage(cmd, batch): validate, stage, update memory
//!              then the batch (with the applied index) is written, synced,
//!              before the proposer is answered
//! ```
//!
//! Invariants:
//! - `apply` is deterministic: its result depends only on the command and the
//!   state, never on the clock or randomness (commands carry such values, e.g.
//!   the generated cluster id or the TSO bound). Rejections (`Bootstrap` twice,
//!   a stale region) are deterministic no-ops or errors every replica agrees on.
//! - Nothing is answered before it is on disk: memory changes as a command
//!   is staged, and the batch is synced before the proposer hears of it
//!   (what readers may see in between is committed, so not lost). A failed
//!   write ends the process (the panic policy): memory would be ahead of
//!   disk, and a member must not diverge from its peers.
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
pub use replicator::{LocalReplicator, Replicator, SharedMeta};
pub use state::{MetaState, StateMachine};
