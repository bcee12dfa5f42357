//! The raftstore: multi-raft replication of regions on one node.
//!
//! Every region this node holds a replica of is a [`peer::Peer`]: a raft-rs
//! `RawNode` over a [`storage::PeerStorage`]. One thread, the
//! [`store::Store`] loop, owns all peers; everything else talks to it through
//! [`StoreMsg`]s sent by a [`router::StoreRouter`] (gRPC handlers, the
//! transport, the PD worker) and hears back through oneshot callbacks. The
//! router's data queue is bounded: an overloaded loop answers `ServerIsBusy`
//! rather than queueing without end. The store writes all peers' log
//! appends of a round in one batch with one fsync, and hands outgoing raft
//! messages to a [`Transport`] grouped by target store. Committed plain
//! writes are applied by the [`apply_pool`] (one writer of a region's apply
//! state at a time: the store waits for it before writing any itself).
//!
//! Invariants:
//! - a write's callback fires only after its entry is committed, applied and
//!   written to the kv engine;
//! - data and the applied index are written in the same kv batch;
//! - a read is answered only by a leader holding a lease (measured on the
//!   [`lease_clock::LeaseClock`]) or after ReadIndex; the one exception is
//!   [`ReadPolicy::UnsafeStale`], reachable only through a test-only flag;
//! - a storage error inside the loop stops the process (replicas must never
//!   diverge silently).

pub mod apply;
pub mod apply_pool;
pub mod lease_clock;
pub mod local_reader;
pub mod log_gc;
pub mod peer;
pub mod router;
pub mod split_check;
pub mod storage;
pub mod store;
#[cfg(test)]
mod test_engine;

use mnemo_proto::raft_serverpb::{BatchSplit, RaftCommand, RaftMessage};
use mnemo_proto::types::{Peer as PeerMeta, PeerId, Region, RegionEpoch, RegionId, StoreId};
use raft::eraftpb::ConfChangeType;

pub use apply::WriteOutcome;
pub use lease_clock::{LeaseClock, LeaseInstant};
pub use local_reader::LocalReader;
pub use peer::{Now, PeerConfig, PlantedBugs, ReadCallback, ReadGrant, WriteCallback};
pub use router::{SendError, StoreInbox, StoreRouter};
pub use store::{Store, StoreConfig};

/// An input of the store loop.
pub enum StoreMsg {
    /// A raft message from another store.
    Raft(RaftMessage),
    /// A client read: answered with the region once it may be read under `policy`.
    Read { region_id: RegionId, epoch: RegionEpoch, policy: ReadPolicy, cb: ReadCallback },
    /// A client write: answered once applied.
    Write { region_id: RegionId, cmd: RaftCommand, cb: WriteCallback },
    /// An operator step from PD for a region this node leads.
    Operator { region_id: RegionId, epoch: RegionEpoch, op: Operator },
    /// PD allocated ids for a split the leader asked for: propose it.
    ProposeSplit { region_id: RegionId, epoch: RegionEpoch, split: BatchSplit },
    /// The split checker measured a region.
    SplitCheckResult { region_id: RegionId, epoch: RegionEpoch, outcome: split_check::SplitCheckOutcome },
    /// Outcome of sending a snapshot.
    SnapshotStatus { region_id: RegionId, to: PeerId, ok: bool },
    /// A message to `to` could not be delivered.
    Unreachable { region_id: RegionId, to: PeerId },
    /// The PD worker reached a (possibly new) PD leader on a fresh stream:
    /// every leader reports at once, so a new PD leader learns leaders and
    /// sizes (and passes its prepare check) without waiting a heartbeat
    /// interval (TiKV's `HeartbeatPd` on reconnect).
    HeartbeatPd,
    /// Test-only (`--enable-test-controls`): a digest of every initialized
    /// peer's data at its applied index, to compare replicas.
    RegionHashes { cb: tokio::sync::oneshot::Sender<Vec<RegionHash>> },
    /// Stop the loop.
    Shutdown,
}

/// A digest of one replica's data: two replicas of a region that applied
/// the same index must have the same hash (apply is deterministic).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RegionHash {
    pub region_id: u64,
    pub applied_index: u64,
    pub version: u64,
    pub conf_ver: u64,
    /// 64-bit hash (std's fixed-key SipHash) of every key and stored value
    /// in the region's range, in key order.
    pub hash: u64,
    /// Number of keys hashed.
    pub keys: u64,
}

/// What a read must wait for before it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPolicy {
    /// Linearizable: this peer leads and holds a lease, or a ReadIndex round
    /// confirmed it and it applied up to the read index. Every normal read.
    Linearizable,
    /// **Unsafe, test-only**: any peer (leader, follower, learner, deposed
    /// leader) answers from its applied state at once; only the epoch is
    /// checked. Reads may be arbitrarily stale. Used only when the node runs
    /// with `--unsafe-stale-reads` and the request asks for `replica_read`,
    /// so the chaos checker can prove it catches stale reads.
    UnsafeStale,
}

/// One scheduling step PD asks a region leader to take.
#[derive(Clone, Debug)]
pub enum Operator {
    /// Membership changes: add a learner, promote a learner (AddNode), remove
    /// a peer; several at once use joint consensus.
    ChangePeers { changes: Vec<(ConfChangeType, PeerMeta)> },
    /// Hand leadership to `peer`.
    TransferLeader { peer: PeerMeta },
    /// Split at `keys` (sorted), or in the middle if `keys` is empty.
    Split { keys: Vec<Vec<u8>> },
}

/// What the store tells the PD worker.
#[derive(Clone, Debug)]
pub enum PdTask {
    /// A leader's report of its region.
    RegionHeartbeat(RegionReport),
    /// Ask PD for ids to split `region` at `split_keys`, then propose it.
    AskSplit { region: Region, split_keys: Vec<Vec<u8>> },
    /// Tell PD about the regions a split produced.
    ReportSplit { regions: Vec<Region> },
}

/// What a leader tells PD about its region.
#[derive(Clone, Debug)]
pub struct RegionReport {
    pub region: Region,
    pub leader: PeerMeta,
    /// Peers that need a snapshot or are far behind.
    pub pending_peers: Vec<PeerMeta>,
    /// Peers whose store has been silent for `max-peer-down-duration`, with
    /// the seconds of silence.
    pub down_peers: Vec<(PeerMeta, u64)>,
    pub term: u64,
    /// Bytes and keys at the last split check (0 before the first).
    pub approximate_size: u64,
    pub approximate_keys: u64,
}

/// Delivers raft messages to other stores.
pub trait Transport: Send + Sync {
    /// Sends one batch of messages to `store` (best effort; losses are
    /// reported back as `StoreMsg::Unreachable`/`SnapshotStatus`).
    fn send(&self, store: StoreId, msgs: Vec<RaftMessage>);
}
