//! The seam between deciding a change and applying it.
//!
//! [`LocalReplicator`] applies each command at once (one member, no raft:
//! the cluster logic's unit tests). The raft-backed replicator
//! (`crate::raft::RaftHandle`) appends `cmd.encode()` to the PD raft log,
//! and every member applies committed entries in log order to its own
//! [`StateMachine`]; callers do not change.

use std::sync::Arc;

use parking_lot::Mutex;

use super::{Command, StateMachine};
use crate::error::Result;

/// The state machine, shared by whoever applies commands (the raft thread)
/// and whoever reads the state (requests). Never held while waiting for a
/// command to replicate: the raft thread needs it to apply.
pub type SharedMeta = Arc<Mutex<StateMachine>>;

/// Orders commands and applies them to the state machine.
pub trait Replicator: Send + 'static {
    /// Makes `cmd` durable (on a quorum, once replicated), applies it, and
    /// returns the result of applying it. On error the command was refused,
    /// or (`Error::NotLeader`) its fate is unknown.
    fn replicate(&mut self, cmd: Command) -> Result<()>;

    /// Another handle on the same replicator (the TSO proposes through its
    /// own, so it never waits for another proposer's lock).
    fn another(&self) -> Box<dyn Replicator>;
}

/// A single member without raft: apply directly (the state machine syncs
/// its writes).
#[derive(Clone)]
pub struct LocalReplicator {
    sm: SharedMeta,
}

impl LocalReplicator {
    /// Applies to `sm`.
    pub fn new(sm: SharedMeta) -> Self {
        LocalReplicator { sm }
    }
}

impl Replicator for LocalReplicator {
    fn replicate(&mut self, cmd: Command) -> Result<()> {
        self.sm.lock().apply(&cmd)
    }

    fn another(&self) -> Box<dyn Replicator> {
        Box::new(self.clone())
    }
}
