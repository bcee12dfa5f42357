//! How the rest of the node reaches the store loop: three queues.
//!
//! - **requests** (bounded, `raftstore.notify-capacity`): client reads and
//!   writes. When full, the sender learns at once ([`SendError::Full`]) and
//!   the client is answered `ServerIsBusy`.
//! - **raft** (bounded, `raftstore.notify-capacity`): raft messages from
//!   other stores; when full they are dropped (raft resends). A queue of
//!   their own, so a client flood can never crowd out the heartbeats, votes
//!   and append responses that keep leaders and leases alive.
//! - Nothing waits and nothing grows without bound.
//! - **control** (unbounded, low volume, never dropped): PD operators,
//!   split-check results, snapshot outcomes, unreachable reports, shutdown.
//!   Dropping one could leave raft waiting for ever (a snapshot whose
//!   outcome is never reported), so they always get in; their volume is
//!   bounded by the node's own activity, not by clients.
//!
//! Each round the store takes every control message and at most
//! `raftstore.messages-per-tick` raft messages and as many requests, so one
//! burst of traffic cannot starve ticks (elections, leases) of the other
//! regions.

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::StoreMsg;

/// Why a message did not reach the store loop.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The request or raft queue is full: the store loop is overloaded.
    Full,
    /// The store loop stopped.
    Stopped,
}

/// The sending side, cloned into every part of the node.
#[derive(Clone)]
pub struct StoreRouter {
    requests: Sender<StoreMsg>,
    raft: Sender<StoreMsg>,
    control: Sender<StoreMsg>,
}

/// The store loop's side.
pub struct StoreInbox {
    pub(crate) requests: Receiver<StoreMsg>,
    pub(crate) raft: Receiver<StoreMsg>,
    pub(crate) control: Receiver<StoreMsg>,
}

/// A router and inbox whose request and raft queues hold `capacity`
/// messages each.
pub fn channel(capacity: usize) -> (StoreRouter, StoreInbox) {
    let (requests, requests_rx) = crossbeam_channel::bounded(capacity.max(1));
    let (raft, raft_rx) = crossbeam_channel::bounded(capacity.max(1));
    let (control, control_rx) = crossbeam_channel::unbounded();
    (
        StoreRouter { requests, raft, control },
        StoreInbox { requests: requests_rx, raft: raft_rx, control: control_rx },
    )
}

impl StoreRouter {
    /// Hands `msg` to the store loop: a request or raft message only if
    /// its queue has room, a control message always.
    pub fn send(&self, msg: StoreMsg) -> Result<(), SendError> {
        let queue = match msg {
            StoreMsg::Raft(_) => &self.raft,
            StoreMsg::Read { .. } | StoreMsg::Write { .. } => &self.requests,
            _ => return self.control.send(msg).map_err(|_| SendError::Stopped),
        };
        queue.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) => SendError::Full,
            TrySendError::Disconnected(_) => SendError::Stopped,
        })
    }

    /// Messages waiting in all queues.
    pub fn pending(&self) -> usize {
        self.requests.len() + self.raft.len() + self.control.len()
    }
}
