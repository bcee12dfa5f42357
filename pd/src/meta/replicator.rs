//! The seam between deciding a change and applying it.
//!
//! Today PD has one member, so [`LocalReplicator`] applies each command at
//! once. A raft-backed replicator will append `cmd.encode()` to the PD raft
//! log, wait for commit, and apply committed entries in log order to the same
//! [`StateMachine`]; callers do not change.

use super::{Command, StateMachine};
use crate::error::Result;

/// Orders commands and applies them to the state machine.
pub trait Replicator: Send + 'static {
    /// Makes `cmd` durable (on a quorum, once replicated), applies it to
    /// `sm`, and returns the result of applying it. On error nothing was applied.
    fn replicate(&mut self, sm: &mut StateMachine, cmd: Command) -> Result<()>;
}

/// A single member: apply directly (the state machine syncs its writes).
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalReplicator;

impl Replicator for LocalReplicator {
    fn replicate(&mut self, sm: &mut StateMachine, cmd: Command) -> Result<()> {
        sm.apply(&cmd)
    }
}
