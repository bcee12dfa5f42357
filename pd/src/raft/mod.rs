//! PD's metadata on its own raft group: the members, their leader, its lease.
//!
//! Every PD member runs one raft-rs group member (id = its member id) on a
//! thread of its own, driven by the ready round the storage node uses
//! (`mnemo_raft_driver::round`):
//!
//! ```text
//!  Cluster ──Replicator::replicate(cmd)──► RaftReplicator ──Input::Propose──► raft thread
//!     ▲                                        (waits)                         │ append, replicate
//!     └──────────── result of applying cmd ◄─── answered after the round ◄─────┤ commit
//!                                                                               ▼
//!                                  StateMachine::stage(cmd) on every member, in log order,
//!                                  written with the applied index (one batch)
//! peers ◄──── pd_raftpb.PdRaft/Raft streams on the peer URLs ────► peers (transport.rs)
//! ```
//!
//! - **Storage** (`storage.rs`): log, hard state, apply and conf state in
//!   PD's one RocksDB; snapshots are the metadata records at the applied
//!   index, sent when a member is behind a compacted log.
//! - **Leadership**: the raft leader is the PD leader. It *serves* only
//!   while [`GroupStatus::serving_term`] says so: it leads, has applied the
//!   empty entry of its own term (so everything committed before is in its
//!   state), no leader transfer is under way, and its **lease** holds. The
//!   lease is renewed by a ReadIndex round every tick: when a quorum
//!   answered a round sent at `t`, no other member can win an election
//!   before `t + election-interval` (raft-rs' check-quorum makes followers
//!   that heard from a leader within the election timeout refuse votes), so
//!   the leader serves until `t + election-interval - 2 ticks`. A deposed or
//!   cut-off leader therefore stops serving, and stops handing out
//!   timestamps, before anyone else can be elected.
//! - **Apply**: deterministic, on the raft thread, into the shared state
//!   machine; rejections (a second `Bootstrap`, a duplicate store address)
//!   are answered to the proposer and change nothing anywhere. An engine
//!   failure ends the process (the panic policy): a member must not go on
//!   with a state its peers do not have.

mod node;
mod storage;
mod transport;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::member::Member;
use crate::meta::{Command, Replicator};

pub(crate) use node::start;
pub use node::RaftSettings;
pub(crate) use storage::has_raft_state;
pub use storage::INIT_INDEX;
pub(crate) use transport::serve_peers;
pub use transport::PeerTransport;

/// Leadership as the raft thread last saw it.
#[derive(Clone, Debug, Default)]
pub struct GroupStatus {
    /// Current raft term.
    pub term: u64,
    /// The leader's member id (0: none known).
    pub leader_id: u64,
    /// This member leads.
    pub is_leader: bool,
    /// This member (a leader) has applied its term's first entry.
    pub caught_up: bool,
    /// A leader transfer is under way: stop serving now.
    pub transferring: bool,
    /// The leader may serve until then (see the module docs).
    pub lease_until: Option<Instant>,
    /// Voting members (member ids).
    pub voters: Vec<u64>,
    /// Voters this member heard from within an election interval (itself
    /// included): on the leader, those that would answer a vote now.
    pub active_voters: Vec<u64>,
    /// Applied index of the metadata.
    pub applied_index: u64,
    /// First index still in the log (older ones were compacted away).
    pub first_index: u64,
    /// Raft message batches dropped because their sender belongs to another
    /// cluster (its cluster id differs from ours).
    pub foreign_dropped: u64,
}

impl GroupStatus {
    /// The term this member serves as PD leader at `now`, if it does.
    pub fn serving_term(&self, now: Instant) -> Option<u64> {
        let lease = self.lease_until.is_some_and(|t| now < t);
        (self.is_leader && self.caught_up && !self.transferring && lease).then_some(self.term)
    }
}

/// A change of the PD group's membership.
#[derive(Clone, Debug)]
pub enum MemberChange {
    /// A new voting member (its name and peer URL; its client URL is
    /// published once it talks).
    Add(Member),
    /// The member with this id leaves.
    Remove(u64),
}

/// Who leads the PD group, shared by the raft thread and the servers.
pub trait Leadership: Send + Sync + 'static {
    /// The leadership state now.
    fn status(&self) -> GroupStatus;
    /// Asks the group to move leadership to `member_id`.
    fn transfer_leader(&self, member_id: u64) -> Result<()>;
    /// Member info learned from peers' messages (name and URLs), by id.
    fn peer_infos(&self) -> BTreeMap<u64, Member>;
    /// Changes the group's membership (leader only), waiting until applied.
    fn change_member(&self, change: MemberChange) -> Result<()>;

    /// True if the members vote (a raft group): a membership change must
    /// leave a quorum of them live. False where membership is only who
    /// runs (the etcd backend, whose quorum is etcd's).
    fn members_vote(&self) -> bool {
        true
    }
}

/// A single member that always leads (tests of the cluster logic, which
/// apply commands directly).
pub struct SoleLeader;

impl Leadership for SoleLeader {
    fn status(&self) -> GroupStatus {
        GroupStatus {
            term: 1,
            is_leader: true,
            caught_up: true,
            lease_until: Some(Instant::now() + Duration::from_secs(3600)),
            ..GroupStatus::default()
        }
    }

    fn transfer_leader(&self, _member_id: u64) -> Result<()> {
        Ok(())
    }

    fn peer_infos(&self) -> BTreeMap<u64, Member> {
        BTreeMap::new()
    }

    fn change_member(&self, _change: MemberChange) -> Result<()> {
        Err(Error::InvalidArgument("this PD runs without raft: it has no members to change".into()))
    }
}

/// What the raft thread is asked to do.
pub(crate) enum Input {
    /// Raft messages from a peer, what the peer says about itself, and its
    /// cluster id (0: none yet).
    Raft(Vec<raft::eraftpb::Message>, Member, u64),
    /// Append a command; answer with the result of applying it.
    Propose { data: Vec<u8>, done: mpsc::SyncSender<Result<()>> },
    /// Move leadership to this member.
    TransferLeader(u64),
    /// Propose a membership change; answer with the result of applying it.
    ChangeMember { change: MemberChange, done: mpsc::SyncSender<Result<()>> },
    /// A snapshot sent to this member was handed over or lost.
    SnapshotStatus(u64, raft::SnapshotStatus),
    /// The connection to this member failed.
    Unreachable(u64),
    /// Stop the thread.
    Stop,
}

/// The handle the rest of PD holds on the raft thread.
#[derive(Clone)]
pub struct RaftHandle {
    tx: mpsc::Sender<Input>,
    status: Arc<Mutex<GroupStatus>>,
    infos: Arc<Mutex<BTreeMap<u64, Member>>>,
    propose_timeout: Duration,
}

impl RaftHandle {
    /// Stops the raft thread (it finishes its round first).
    pub fn stop(&self) {
        let _ = self.tx.send(Input::Stop);
    }
}

impl Leadership for RaftHandle {
    fn status(&self) -> GroupStatus {
        self.status.lock().clone()
    }

    fn transfer_leader(&self, member_id: u64) -> Result<()> {
        self.tx.send(Input::TransferLeader(member_id)).map_err(|_| Error::NotLeader("PD raft stopped".into()))
    }

    fn peer_infos(&self) -> BTreeMap<u64, Member> {
        self.infos.lock().clone()
    }

    fn change_member(&self, change: MemberChange) -> Result<()> {
        if matches!(change, MemberChange::Add(_)) && self.status().first_index <= INIT_INDEX {
            // A log that starts at 1 (a data dir from before founders
            // started after INIT_INDEX) would be replayed by the newcomer
            // instead of sending it a snapshot with the configuration.
            return Err(Error::InvalidArgument(
                "this PD group's log predates member changes; it cannot add members".into(),
            ));
        }
        self.submit("membership change", |done| Input::ChangeMember { change, done })
    }
}

impl RaftHandle {
    /// Hands the raft thread a proposal and waits (on the calling thread)
    /// until it is applied here, or fails with [`Error::NotLeader`] when
    /// this member cannot get it committed in time.
    fn submit(&self, what: &str, input: impl FnOnce(mpsc::SyncSender<Result<()>>) -> Input) -> Result<()> {
        let (done, wait) = mpsc::sync_channel(1);
        self.tx.send(input(done)).map_err(|_| Error::NotLeader("PD raft stopped".into()))?;
        match blocking(|| wait.recv_timeout(self.propose_timeout)) {
            Ok(r) => r,
            Err(_) => Err(Error::NotLeader(format!(
                "{what} not applied within {:?} (leadership lost or no quorum)",
                self.propose_timeout
            ))),
        }
    }
}

/// Runs `f`, which blocks, telling a multi-threaded tokio runtime first so
/// that the worker's other tasks move elsewhere meanwhile (request handlers
/// wait for proposals on worker threads).
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Replicates through the raft thread (see [`RaftHandle::submit`]). On
/// [`Error::NotLeader`] the command may still commit later (a proposal's
/// fate is unknown); every PD command is safe to apply whether or not its
/// proposer learned of it.
impl Replicator for RaftHandle {
    fn replicate(&mut self, cmd: Command) -> Result<()> {
        if !self.status.lock().is_leader {
            return Err(Error::NotLeader("this PD member does not lead".into()));
        }
        self.submit("proposal", |done| Input::Propose { data: cmd.encode(), done })
    }

    fn another(&self) -> Box<dyn Replicator> {
        Box::new(self.clone())
    }
}
