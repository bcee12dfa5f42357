//! The raftstore: multi-raft replication of regions on one node.
//!
//! Every region this node holds a replica of is a [`peer::Peer`]: a raft-rs
//! `RawNode` over a [`storage::PeerStorage`]. One thread, the
//! [`store::Store`] loop, owns all peers; everything else talks to it through
//! [`StoreMsg`]s on a channel (gRPC handlers, the transport, the PD worker)
//! and hears back through oneshot callbacks. The store writes all peers' log
//! appends of a round in one batch with one fsync, and hands outgoing raft
//! messages to a [`Transport`] grouped by target store.
//!
//! Invariants:
//! - a write's callback fires only after its entry is committed, applied and
//!   written to the kv engine;
//! - data and the applied index are written in the same kv batch;
//! - a read is answered only by a leader holding a lease or after ReadIndex;
//! - a storage error inside the loop stops the process (replicas must never
//!   diverge silently).

pub mod apply;
pub mod peer;
pub mod storage;
pub mod store;

use mnemo_proto::raft_serverpb::{RaftMessage, WriteCommand};
use mnemo_proto::types::{Peer as PeerMeta, PeerId, Region, RegionEpoch, RegionId, StoreId};
use raft::eraftpb::ConfChangeType;

pub use apply::WriteOutcome;
pub use peer::{PeerConfig, ReadCallback, WriteCallback};
pub use store::{Store, StoreConfig};

/// An input of the store loop.
pub enum StoreMsg {
    /// A raft message from another store.
    Raft(RaftMessage),
    /// A client read: answered with the region once it is safe to read.
    Read { region_id: RegionId, epoch: RegionEpoch, cb: ReadCallback },
    /// A client write: answered once applied.
    Write { region_id: RegionId, cmd: WriteCommand, cb: WriteCallback },
    /// An operator step from PD for a region this node leads.
    Operator { region_id: RegionId, epoch: RegionEpoch, op: Operator },
    /// Outcome of sending a snapshot.
    SnapshotStatus { region_id: RegionId, to: PeerId, ok: bool },
    /// A message to `to` could not be delivered.
    Unreachable { region_id: RegionId, to: PeerId },
    /// Stop the loop.
    Shutdown,
}

/// One scheduling step PD asks a region leader to take.
#[derive(Clone, Debug)]
pub enum Operator {
    /// Add a learner, promote a learner (AddNode), or remove a peer.
    ChangePeer { kind: ConfChangeType, peer: PeerMeta },
    /// Hand leadership to `peer`.
    TransferLeader { peer: PeerMeta },
}

/// What the store tells the PD worker.
#[derive(Clone, Debug)]
pub enum PdTask {
    /// A leader's report of its region.
    RegionHeartbeat { region: Region, leader: PeerMeta, pending_peers: Vec<PeerMeta>, term: u64 },
}

/// Delivers raft messages to other stores.
pub trait Transport: Send + Sync {
    /// Sends one batch of messages to `store` (best effort; losses are
    /// reported back as `StoreMsg::Unreachable`/`SnapshotStatus`).
    fn send(&self, store: StoreId, msgs: Vec<RaftMessage>);
}
