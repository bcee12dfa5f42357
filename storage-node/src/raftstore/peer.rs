//! `Peer`: one replica of one region, wrapping a raft-rs `RawNode`.
//!
//! The peer is sans-IO in the sense that matters: it never touches the
//! network and never blocks. The store loop (`raftstore::store`) feeds it
//! messages, ticks and requests; it stages engine writes into the round's
//! batches and queues outgoing raft messages for the store to send.
//!
//! Reads: a read is served when this peer leads the region and either holds
//! a valid **lease** (see [`Peer::lease_valid`]) or a ReadIndex round
//! confirmed leadership and the peer applied up to the read index. The lease
//! is measured on the store's lease clock ([`super::lease_clock`]), every
//! other timeout on real time; both come in as inputs ([`Now`]). The one
//! exception, [`Peer::stale_read`], exists only for a test-only mode. Writes are
//! proposed; the callback fires when the entry is applied here (never
//! earlier), with `StaleCommand` if the entry was lost to a newer term.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use mnemo_proto::raft_serverpb::{BatchSplit, ConfChangeContext, RaftCommand, RaftRequestHeader};
use mnemo_proto::types::{Peer as PeerMeta, PeerId, PeerRole, Region, RegionEpoch, RegionId};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, Entry, EntryType, Message as RaftMsg, MessageType};
use raft::{RawNode, StateRole};
use tokio::sync::oneshot;

use super::apply::{self, WriteOutcome};
use super::lease_clock::LeaseInstant;
use super::storage::{self, PeerStorage};
use crate::engine::{EngineRef, WriteBatch};
use crate::error::{Error, Result};
use crate::keys;

/// A hibernating peer ticks once per this many base ticks: an idle region's
/// leader heartbeats every 2 s and its followers wait 10 s before an election.
pub const HIBERNATE_TICK_STRETCH: u64 = 10;

/// Answer to a write: its outcome once applied, or an error.
pub type WriteCallback = oneshot::Sender<Result<WriteOutcome>>;
/// Answer to a read: the region it may be served from (checked), or an error.
pub type ReadCallback = oneshot::Sender<Result<Region>>;

/// The time of a store-loop step on both clocks a peer uses.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Real (monotonic) time: raft ticks, read expiry.
    pub real: Instant,
    /// The lease clock: lease decisions only.
    pub lease: LeaseInstant,
}

struct Proposal {
    index: u64,
    term: u64,
    /// On the lease clock: a committed proposal extends the lease from here.
    proposed_at: LeaseInstant,
    cb: WriteCallback,
}

struct PendingRead {
    id: u64,
    /// When the ReadIndex round started (None: not started yet, waiting for
    /// the leader to commit an entry of its term): real time for expiry,
    /// lease time for the lease the round confirms.
    issued_at: Option<Now>,
    term: u64,
    read_index: Option<u64>,
    /// The epoch the request was made for; checked again when answering,
    /// since a split may be applied while the read waits.
    epoch: RegionEpoch,
    cb: ReadCallback,
}

/// A response to deliver after the round's writes are on disk.
pub enum Reply {
    Write(WriteCallback, Result<WriteOutcome>),
    Read(ReadCallback, Result<Region>),
}

/// Settings of one peer (copied from the node config).
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Ticks without leader contact before an election (raft-rs `election_tick`).
    pub election_tick: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_tick: usize,
    /// How long a confirmed leader may serve reads without a new quorum round.
    /// Must be shorter than the election timeout (checked by config validation).
    pub lease: Duration,
    /// Largest encoded command accepted (bytes).
    pub raft_entry_max_size: u64,
    /// Let idle regions tick slowly (see [`HIBERNATE_TICK_STRETCH`]).
    pub hibernate: bool,
}

/// One region replica.
pub struct Peer {
    /// This replica.
    pub meta: PeerMeta,
    /// The raft node and its storage.
    pub raw: RawNode<PeerStorage>,
    proposals: VecDeque<Proposal>,
    reads: VecDeque<PendingRead>,
    next_read_id: u64,
    /// End of the lease, on the lease clock.
    lease_until: Option<LeaseInstant>,
    applied_term: u64,
    /// Peers of this region (or formerly of it) by id, to address messages.
    peer_cache: HashMap<PeerId, PeerMeta>,
    /// Outgoing raft messages: (target peer, message).
    pub outbox: Vec<(PeerMeta, RaftMsg)>,
    /// Set when this peer applied its own removal; the store destroys it.
    pub pending_remove: bool,
    /// Something PD should hear about changed (leader, epoch, peers).
    pub heartbeat_due: bool,
    /// Bytes written since the last split check (a hint, not exact).
    pub size_diff_hint: u64,
    /// (bytes, keys) of the region at the last split check.
    pub approximate: Option<(u64, u64)>,
    /// Splits applied this round: (the parent's new range, the new regions),
    /// for the store to create their peers.
    pub applied_splits: Vec<(Region, Vec<Region>)>,
    /// Idle region: this peer ticks only every `HIBERNATE_TICK_STRETCH`-th
    /// tick. A leader decides it (and tells followers in its messages);
    /// any activity wakes it.
    pub hibernating: bool,
    idle_ticks: usize,
    cfg: PeerConfig,
}

impl Peer {
    /// Wraps a loaded storage into a raft node.
    pub fn new(meta: PeerMeta, storage: PeerStorage, cfg: PeerConfig, logger: &slog::Logger) -> Result<Peer> {
        let applied = storage.applied_index();
        let rc = raft::Config {
            id: meta.id.0,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let mut peer_cache = HashMap::new();
        for p in &storage.region.peers {
            peer_cache.insert(p.id, *p);
        }
        let raw = RawNode::new(&rc, storage, &logger.new(slog::o!("peer" => meta.id.0)))
            .map_err(|e| Error::Other(format!("raft init: {e}")))?;
        Ok(Peer {
            meta,
            raw,
            proposals: VecDeque::new(),
            reads: VecDeque::new(),
            next_read_id: 1,
            lease_until: None,
            applied_term: 0,
            peer_cache,
            outbox: Vec::new(),
            pending_remove: false,
            heartbeat_due: true,
            size_diff_hint: 0,
            approximate: None,
            applied_splits: Vec::new(),
            hibernating: false,
            idle_ticks: 0,
            cfg,
        })
    }

    /// The region as of the applied index.
    pub fn region(&self) -> &Region {
        &self.raw.store().region
    }

    /// The region id.
    pub fn region_id(&self) -> RegionId {
        self.raw.store().region.id
    }

    /// True if this peer currently leads its region.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this peer knows of, if it is in the region.
    pub fn leader(&self) -> Option<PeerMeta> {
        let id = self.raw.raft.leader_id;
        if id == raft::INVALID_ID {
            return None;
        }
        self.peer_cache.get(&PeerId(id)).copied()
    }

    /// Learns a peer's store (from an incoming message or the region).
    pub fn remember_peer(&mut self, p: PeerMeta) {
        self.peer_cache.insert(p.id, p);
    }

    /// Peers that need a snapshot or are far behind (PD must not promote them).
    pub fn pending_peers(&self) -> Vec<PeerMeta> {
        let first = self.raw.store().apply_state.truncated_index + 1;
        let mut out = Vec::new();
        for (id, pr) in self.raw.raft.prs().iter() {
            let behind =
                pr.state == raft::ProgressState::Snapshot || pr.matched + 1 < first || pr.matched == 0;
            if behind {
                if let Some(p) = self.region().peer(PeerId(*id)) {
                    out.push(*p);
                }
            }
        }
        out
    }

    /// Checks that a client request may be served by this peer.
    pub fn check_request(&self, epoch: RegionEpoch) -> Result<()> {
        if !self.is_leader() {
            return Err(Error::NotLeader { region: self.region_id(), leader: self.leader() });
        }
        self.check_epoch(epoch)
    }

    /// Checks that a request was made for the region's current range (its
    /// `version`; membership changes do not move keys).
    fn check_epoch(&self, epoch: RegionEpoch) -> Result<()> {
        if epoch.version != self.region().epoch.version {
            return Err(Error::EpochNotMatch { current: vec![self.region().clone()] });
        }
        Ok(())
    }

    /// True if the leader may answer reads from its state without a quorum round.
    ///
    /// The lease starts when a quorum round (ReadIndex or a committed write)
    /// was *issued*, so every follower that answered heard from this leader
    /// after that instant and, with check_quorum + pre_vote, refuses votes for
    /// a full election timeout from then; the lease is shorter than that. It
    /// also requires an applied entry of the current term, so the state
    /// includes everything earlier leaders committed.
    ///
    /// `now` is on the lease clock, as is every instant the lease was
    /// extended from; a test may skew that clock to break this argument on
    /// purpose (see [`super::lease_clock`]).
    pub fn lease_valid(&self, now: LeaseInstant) -> bool {
        self.is_leader()
            // A transfer target may be elected at once (MsgTimeoutNow skips
            // the followers' lease check), so a transferring leader has no lease.
            && self.raw.raft.lead_transferee.is_none()
            && self.applied_term == self.raw.raft.term
            && self.lease_until.is_some_and(|t| now < t)
    }

    fn extend_lease(&mut self, issued_at: LeaseInstant) {
        let until = issued_at + self.cfg.lease;
        if self.lease_until.is_none_or(|t| t < until) {
            self.lease_until = Some(until);
        }
    }

    /// Starts (or answers at once) a linearizable read.
    pub fn read(&mut self, epoch: RegionEpoch, now: Now, cb: ReadCallback, replies: &mut Vec<Reply>) {
        self.wake();
        if let Err(e) = self.check_request(epoch) {
            replies.push(Reply::Read(cb, Err(e)));
            return;
        }
        if self.lease_valid(now.lease) {
            replies.push(Reply::Read(cb, Ok(self.region().clone())));
            return;
        }
        let id = self.next_read_id;
        self.next_read_id += 1;
        let term = self.raw.raft.term;
        self.reads.push_back(PendingRead { id, issued_at: None, term, read_index: None, epoch, cb });
        self.issue_reads(now);
    }

    /// **Unsafe, test-only** (`--unsafe-stale-reads`): answers a read from
    /// this peer's applied state whatever its role, with no lease and no
    /// ReadIndex. A follower or a deposed leader may answer with data that
    /// is arbitrarily old, which is the point: the chaos checker must catch
    /// it. The epoch is still checked (the caller checks the key range).
    pub fn stale_read(&self, epoch: RegionEpoch, cb: ReadCallback, replies: &mut Vec<Reply>) {
        let answer = self.check_epoch(epoch).map(|_| self.region().clone());
        replies.push(Reply::Read(cb, answer));
    }

    /// Starts the ReadIndex rounds of waiting reads. raft-rs silently drops a
    /// ReadIndex request before the leader committed an entry of its term, so
    /// reads wait for that first.
    fn issue_reads(&mut self, now: Now) {
        if !self.raw.raft.commit_to_current_term() {
            return;
        }
        for r in self.reads.iter_mut().filter(|r| r.issued_at.is_none()) {
            r.issued_at = Some(now);
            self.raw.read_index(r.id.to_be_bytes().to_vec());
        }
    }

    /// Fails reads whose ReadIndex round did not complete within `timeout`
    /// (a message lost, leadership in doubt): the client retries.
    pub fn expire_reads(&mut self, now: Instant, timeout: Duration, replies: &mut Vec<Reply>) {
        let region = self.region_id();
        let (expired, kept): (VecDeque<_>, VecDeque<_>) = self.reads.drain(..).partition(|r| {
            r.read_index.is_none() && r.issued_at.is_some_and(|t| now.duration_since(t.real) > timeout)
        });
        self.reads = kept;
        for r in expired {
            replies.push(Reply::Read(r.cb, Err(Error::NotLeader { region, leader: None })));
        }
    }

    /// Proposes a write (`now` on the lease clock). The callback fires when
    /// the entry is applied.
    pub fn propose_write(
        &mut self,
        cmd: RaftCommand,
        now: LeaseInstant,
        cb: WriteCallback,
        replies: &mut Vec<Reply>,
    ) {
        self.wake();
        let epoch = mnemo_proto::types::epoch_of(cmd.header.as_ref().and_then(|h| h.region_epoch.as_ref()));
        if let Err(e) = self.check_request(epoch).and_then(|_| apply::check_command(self.region(), &cmd)) {
            replies.push(Reply::Write(cb, Err(e)));
            return;
        }
        let data = cmd.encode_to_vec();
        if data.len() as u64 > self.cfg.raft_entry_max_size {
            let e = Error::RaftEntryTooLarge { region: self.region_id(), size: data.len() as u64 };
            replies.push(Reply::Write(cb, Err(e)));
            return;
        }
        let index = self.raw.raft.raft_log.last_index() + 1;
        let term = self.raw.raft.term;
        if self.raw.propose(vec![], data).is_err() || self.raw.raft.raft_log.last_index() < index {
            let e = Error::NotLeader { region: self.region_id(), leader: self.leader() };
            replies.push(Reply::Write(cb, Err(e)));
            return;
        }
        self.proposals.push_back(Proposal { index, term, proposed_at: now, cb });
    }

    /// Proposes a membership change from PD: one change, or several at once
    /// (raft joint consensus, left automatically). Changes already in effect
    /// are dropped. Returns false if nothing was proposed (not leader, stale
    /// epoch, a change already pending, nothing left to do, or removing the
    /// leader itself).
    pub fn propose_conf_change(
        &mut self,
        epoch: RegionEpoch,
        changes: &[(ConfChangeType, PeerMeta)],
    ) -> bool {
        self.wake();
        if !self.is_leader() || epoch != self.region().epoch || self.raw.raft.has_pending_conf() {
            return false;
        }
        let todo: Vec<(ConfChangeType, PeerMeta)> = changes
            .iter()
            .copied()
            .filter(|(kind, target)| {
                let existing = self.region().peer(target.id).copied();
                match kind {
                    ConfChangeType::AddNode => !existing.is_some_and(|p| p.role == PeerRole::Voter),
                    ConfChangeType::AddLearnerNode => existing.is_none(),
                    ConfChangeType::RemoveNode => existing.is_some(),
                }
            })
            .collect();
        if todo.is_empty()
            || todo.iter().any(|(k, t)| *k == ConfChangeType::RemoveNode && t.id == self.meta.id)
        {
            return false;
        }
        let mut cc = ConfChangeV2::default();
        for (kind, target) in &todo {
            let mut single = raft::eraftpb::ConfChangeSingle::default();
            single.set_change_type(*kind);
            single.node_id = target.id.0;
            cc.mut_changes().push(single);
        }
        let ctx = ConfChangeContext { peers: todo.iter().map(|(_, p)| (*p).into()).collect() };
        cc.context = ctx.encode_to_vec().into();
        // The proposer's conf_ver travels in the entry context so apply can reject a stale change.
        let conf_ver = self.region().epoch.conf_ver.to_be_bytes().to_vec();
        self.raw.propose_conf_change(conf_ver, cc).is_ok()
    }

    /// Proposes a batch split prepared with ids from PD (leader only).
    pub fn propose_split(&mut self, epoch: RegionEpoch, split: BatchSplit) -> bool {
        if !self.is_leader() || epoch != self.region().epoch {
            return false;
        }
        let header = RaftRequestHeader {
            region_id: self.region_id().0,
            peer: Some(self.meta.into()),
            region_epoch: Some(epoch.into()),
        };
        let cmd = RaftCommand { header: Some(header), split: Some(split), ..Default::default() };
        self.raw.propose(vec![], cmd.encode_to_vec()).is_ok()
    }

    /// Leaves hibernation (activity on the leader).
    pub fn wake(&mut self) {
        self.hibernating = false;
        self.idle_ticks = 0;
    }

    /// Advances raft time by one base tick, honouring hibernation; a leader
    /// whose region stayed idle for two election timeouts starts hibernating.
    pub fn on_base_tick(&mut self, tick_no: u64) {
        if self.hibernating && !tick_no.is_multiple_of(HIBERNATE_TICK_STRETCH) {
            return;
        }
        self.raw.tick();
        if !self.is_leader() {
            return;
        }
        let raft = &self.raw.raft;
        let last = raft.raft_log.last_index();
        let idle = self.proposals.is_empty()
            && self.reads.is_empty()
            && raft.raft_log.committed == last
            && raft.lead_transferee.is_none()
            && !raft.has_pending_conf()
            && raft.prs().iter().all(|(_, pr)| pr.matched == last);
        if !idle {
            self.wake();
        } else if !self.hibernating && self.cfg.hibernate {
            self.idle_ticks += 1;
            if self.idle_ticks >= 2 * self.cfg.election_tick {
                self.hibernating = true;
            }
        }
    }

    /// Follows the leader's hibernation flag on a message it sent.
    pub fn observe_leader_hibernation(&mut self, from: PeerId, hibernate: bool) {
        if !self.is_leader() && self.raw.raft.leader_id == from.0 {
            self.hibernating = hibernate;
        }
    }

    /// Steps an incoming raft message.
    pub fn step(&mut self, msg: RaftMsg) -> Result<()> {
        self.raw.step(msg).map_err(|e| Error::Other(format!("step: {e}")))
    }

    /// Handles a role or term change: pending work from the old term fails.
    pub fn on_soft_state_change(&mut self, replies: &mut Vec<Reply>) {
        self.heartbeat_due = true;
        self.lease_until = None;
        if !self.is_leader() {
            let leader = self.leader();
            let region = self.region_id();
            for r in self.reads.drain(..) {
                replies.push(Reply::Read(r.cb, Err(Error::NotLeader { region, leader })));
            }
            for p in self.proposals.drain(..) {
                replies.push(Reply::Write(p.cb, Err(Error::StaleCommand)));
            }
        }
    }

    /// Records the read index a ReadIndex round confirmed.
    pub fn on_read_state(&mut self, ctx: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 8]>::try_from(ctx) else { return };
        let id = u64::from_be_bytes(bytes);
        let term = self.raw.raft.term;
        let mut confirmed = None;
        for r in self.reads.iter_mut().filter(|r| r.id == id) {
            r.read_index = Some(index);
            if r.term == term {
                confirmed = r.issued_at;
            }
        }
        if let Some(at) = confirmed {
            self.extend_lease(at.lease);
        }
    }

    /// Starts reads that waited for a commit in this term and answers every
    /// read whose read index is applied (in any order: each was confirmed on
    /// its own). Reads whose round never completes are failed by `expire_reads`.
    pub fn answer_ready_reads(&mut self, now: Now, replies: &mut Vec<Reply>) {
        self.issue_reads(now);
        let applied = self.raw.store().applied_index();
        let (ready, waiting): (VecDeque<_>, VecDeque<_>) =
            self.reads.drain(..).partition(|r| r.read_index.is_some_and(|idx| idx <= applied));
        self.reads = waiting;
        for r in ready {
            let answer = self.check_epoch(r.epoch).map(|_| self.region().clone());
            replies.push(Reply::Read(r.cb, answer));
        }
    }

    /// Applies committed entries into `kv_wb`; CAS flushes `kv_wb` first (with the apply state).
    pub fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        kv: &EngineRef,
        kv_wb: &mut WriteBatch,
        replies: &mut Vec<Reply>,
    ) -> Result<()> {
        let now_ms = keys::now_unix_ms();
        for e in entries {
            let outcome = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => None,
                EntryType::EntryNormal => {
                    let cmd = RaftCommand::decode(e.data.as_ref())
                        .map_err(|err| Error::Other(format!("corrupt entry {}: {err}", e.index)))?;
                    if cmd.cas.is_some() && !kv_wb.is_empty() {
                        self.raw.mut_store().stage_apply_state(kv_wb);
                        kv.write(kv_wb, false)?;
                        *kv_wb = WriteBatch::new();
                    }
                    let region = self.region().clone();
                    let result = match &cmd.split {
                        Some(split) => {
                            self.apply_split(&region, &cmd, split, kv_wb).map(|_| WriteOutcome::Done)
                        }
                        None => {
                            self.size_diff_hint += apply::written_bytes(&cmd);
                            apply::apply_write(kv.as_ref(), &region, &cmd, kv_wb, now_ms)
                        }
                    };
                    match result {
                        Ok(o) => Some(Ok(o)),
                        Err(err) if err.is_deterministic() => {
                            if cmd.split.is_some() {
                                tracing::info!(region = %region.id, "split at index {} rejected: {err}", e.index);
                            }
                            Some(Err(err))
                        }
                        Err(err) => return Err(err),
                    }
                }
                EntryType::EntryConfChangeV2 | EntryType::EntryConfChange => {
                    self.apply_conf_change(&e, kv_wb)?;
                    None
                }
            };
            let store = self.raw.mut_store();
            store.apply_state.applied_index = e.index;
            self.applied_term = e.term;
            self.finish_proposals(e.index, e.term, outcome, replies);
        }
        self.raw.mut_store().stage_apply_state(kv_wb);
        Ok(())
    }

    fn finish_proposals(
        &mut self,
        index: u64,
        term: u64,
        outcome: Option<Result<WriteOutcome>>,
        replies: &mut Vec<Reply>,
    ) {
        let mut outcome = outcome;
        while let Some(p) = self.proposals.front() {
            if p.index > index {
                break;
            }
            let p = self.proposals.pop_front().expect("front exists");
            if p.index == index && p.term == term {
                if term == self.raw.raft.term {
                    self.extend_lease(p.proposed_at);
                }
                let result = outcome.take().unwrap_or(Ok(WriteOutcome::Done));
                replies.push(Reply::Write(p.cb, result));
            } else {
                replies.push(Reply::Write(p.cb, Err(Error::StaleCommand)));
            }
        }
    }

    fn apply_split(
        &mut self,
        region: &Region,
        cmd: &RaftCommand,
        split: &BatchSplit,
        kv_wb: &mut WriteBatch,
    ) -> Result<()> {
        let (derived, new_regions) = apply::split_regions(region, cmd, split)?;
        for r in &new_regions {
            storage::write_initial_kv_state(r, kv_wb);
            for p in &r.peers {
                self.peer_cache.insert(p.id, *p);
            }
        }
        tracing::info!(region = %region.id, new = ?new_regions.iter().map(|r| r.id.0).collect::<Vec<_>>(), "applied split");
        let store = self.raw.mut_store();
        store.region = derived.clone();
        store.stage_region_state(kv_wb);
        self.size_diff_hint = 0;
        self.approximate = None;
        self.heartbeat_due = true;
        self.applied_splits.push((derived, new_regions));
        Ok(())
    }

    fn apply_conf_change(&mut self, e: &Entry, kv_wb: &mut WriteBatch) -> Result<()> {
        let (conf_ver, cc) = decode_conf_change(e)?;
        let ctx = ConfChangeContext::decode(cc.context.as_ref()).unwrap_or_default();
        let mut region = self.region().clone();
        if conf_ver.is_some_and(|v| v != region.epoch.conf_ver) {
            tracing::info!(region = %region.id, "skipping stale conf change at index {}", e.index);
            return Ok(());
        }
        for p in &ctx.peers {
            let p = PeerMeta::from(p);
            self.peer_cache.insert(p.id, p);
        }
        let cs = self
            .raw
            .apply_conf_change(&cc)
            .map_err(|err| Error::Other(format!("apply conf change: {err}")))?;
        // The region's peers follow raft's configuration; during a joint
        // change outgoing voters still count as voters.
        let mut peers = Vec::new();
        let voters = cs.voters.iter().chain(cs.voters_outgoing.iter());
        let learners = cs.learners.iter().chain(cs.learners_next.iter());
        for (id, role) in
            voters.map(|id| (*id, PeerRole::Voter)).chain(learners.map(|id| (*id, PeerRole::Learner)))
        {
            if peers.iter().any(|p: &PeerMeta| p.id.0 == id) {
                continue;
            }
            let store_id = self.peer_cache.get(&PeerId(id)).map(|p| p.store_id).unwrap_or_default();
            peers.push(PeerMeta { id: PeerId(id), store_id, role });
        }
        peers.sort_by_key(|p| p.id);
        region.peers = peers;
        region.epoch.conf_ver += 1;
        if region.peer(self.meta.id).is_none() {
            self.pending_remove = true;
        }
        tracing::info!(region = %region.id, peers = ?region.peers, joint = !cs.voters_outgoing.is_empty(), "applied conf change");
        let store = self.raw.mut_store();
        store.region = region;
        store.conf_state = cs;
        store.stage_region_state(kv_wb);
        self.heartbeat_due = true;
        Ok(())
    }

    /// Fails everything pending (the peer is being destroyed or the node stops).
    pub fn fail_all(&mut self, replies: &mut Vec<Reply>) {
        let region = self.region_id();
        for r in self.reads.drain(..) {
            replies.push(Reply::Read(r.cb, Err(Error::RegionNotFound(region))));
        }
        for p in self.proposals.drain(..) {
            replies.push(Reply::Write(p.cb, Err(Error::StaleCommand)));
        }
    }

    /// Queues raft messages for sending, resolving each target's store.
    pub fn queue_messages(&mut self, msgs: Vec<RaftMsg>) {
        for m in msgs {
            match self.peer_cache.get(&PeerId(m.to)) {
                Some(p) => self.outbox.push((*p, m)),
                None => {
                    tracing::warn!(region = %self.region_id(), to = m.to, "no store known for peer; dropping")
                }
            }
        }
    }

    /// True for messages that only a leader sends, which may create a new peer.
    pub fn may_create_peer(msg: &RaftMsg) -> bool {
        matches!(
            msg.get_msg_type(),
            MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
        )
    }
}

/// Splits a conf-change entry into the proposer's `conf_ver` (none for
/// raft's own leave-joint entry) and the change.
fn decode_conf_change(e: &Entry) -> Result<(Option<u64>, ConfChangeV2)> {
    let corrupt = |what: &str| Error::Other(format!("corrupt conf change at {}: {what}", e.index));
    if e.get_entry_type() == EntryType::EntryConfChange {
        // raft-rs itself never emits v1 changes for us; treat as corrupt.
        return Err(corrupt("v1 conf change"));
    }
    // raft-rs proposes the "leave joint" change itself, with no context.
    let conf_ver = match e.context.len() {
        0 => None,
        _ => Some(u64::from_be_bytes(
            <[u8; 8]>::try_from(e.context.as_ref()).map_err(|_| corrupt("bad context"))?,
        )),
    };
    let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(|err| corrupt(&err.to_string()))?;
    Ok((conf_ver, cc))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mnemo_proto::types::StoreId;

    use super::*;
    use crate::engine::MemEngine;
    use crate::raftstore::lease_clock::LeaseClock;

    const LEASE: Duration = Duration::from_millis(800);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The store's ready loop for one peer that needs no messages.
    fn drive(p: &mut Peer, kv: &EngineRef, raft: &EngineRef, now: Now, replies: &mut Vec<Reply>) {
        while p.raw.has_ready() {
            let mut rd = p.raw.ready();
            if rd.ss().is_some() {
                p.on_soft_state_change(replies);
            }
            for rs in rd.read_states() {
                p.on_read_state(&rs.request_ctx, rs.index);
            }
            let (mut kv_wb, mut raft_wb) = (WriteBatch::new(), WriteBatch::new());
            p.apply_entries(rd.take_committed_entries(), kv, &mut kv_wb, replies).unwrap();
            p.raw.mut_store().append(rd.entries(), &mut raft_wb);
            if let Some(hs) = rd.hs() {
                p.raw.mut_store().set_hard_state(hs, &mut raft_wb);
            }
            kv.write(&kv_wb, true).unwrap();
            raft.write(&raft_wb, true).unwrap();
            let mut light = p.raw.advance(rd);
            let mut kv_wb = WriteBatch::new();
            p.apply_entries(light.take_committed_entries(), kv, &mut kv_wb, replies).unwrap();
            kv.write(&kv_wb, true).unwrap();
            p.raw.advance_apply();
            p.answer_ready_reads(now, replies);
        }
    }

    /// The only voter of its region, elected, with its first entry applied.
    fn leader(now: Now) -> (Peer, EngineRef, EngineRef) {
        let (kv, raft): (EngineRef, EngineRef) = (Arc::new(MemEngine::new()), Arc::new(MemEngine::new()));
        let me = PeerMeta { id: PeerId(11), store_id: StoreId(1), role: PeerRole::Voter };
        let region = Region {
            id: RegionId(1),
            epoch: RegionEpoch { conf_ver: 1, version: 1 },
            peers: vec![me],
            ..Default::default()
        };
        let (mut kv_wb, mut raft_wb) = (WriteBatch::new(), WriteBatch::new());
        storage::write_initial_state(&region, &mut kv_wb, &mut raft_wb);
        kv.write(&kv_wb, true).unwrap();
        raft.write(&raft_wb, true).unwrap();
        let storage = PeerStorage::open(kv.clone(), raft.clone(), region).unwrap();
        let cfg = PeerConfig {
            election_tick: 10,
            heartbeat_tick: 2,
            lease: LEASE,
            raft_entry_max_size: 8 << 20,
            hibernate: false,
        };
        let mut p = Peer::new(me, storage, cfg, &crate::logging::raft_logger()).unwrap();
        p.raw.campaign().unwrap();
        drive(&mut p, &kv, &raft, now, &mut Vec::new());
        assert!(p.is_leader());
        (p, kv, raft)
    }

    /// Sends a read; true if it was answered (successfully) without waiting.
    fn read_at_once(p: &mut Peer, now: Now) -> bool {
        let (cb, mut rx) = oneshot::channel();
        let mut replies = Vec::new();
        p.read(p.region().epoch, now, cb, &mut replies);
        crate::raftstore::store::deliver(replies);
        matches!(rx.try_recv(), Ok(Ok(_)))
    }

    fn now_on(clock: &LeaseClock, real: Instant) -> Now {
        Now { real, lease: clock.at(real) }
    }

    #[test]
    fn a_forward_jump_past_the_lease_ends_it() {
        let clock = LeaseClock::adjustable();
        let t0 = now_on(&clock, Instant::now());
        let (mut p, kv, raft) = leader(t0);
        // No lease yet: the first read needs a ReadIndex round, which starts one.
        assert!(!read_at_once(&mut p, t0));
        let mut replies = Vec::new();
        drive(&mut p, &kv, &raft, t0, &mut replies);
        assert!(matches!(replies.as_slice(), [Reply::Read(_, Ok(_))]));
        assert!(p.lease_valid(t0.lease));
        // Reads within the lease are answered at once.
        let t1 = now_on(&clock, t0.real + ms(100));
        assert!(read_at_once(&mut p, t1));
        // The lease clock jumps past the lease's end: reads need a quorum again.
        clock.adjust_at(t1.real, None, Some(LEASE)).unwrap();
        let t2 = now_on(&clock, t1.real);
        assert!(!p.lease_valid(t2.lease));
        assert!(!read_at_once(&mut p, t2));
    }

    #[test]
    fn a_slow_lease_clock_stretches_the_lease_in_real_time() {
        let clock = LeaseClock::adjustable();
        let t0 = now_on(&clock, Instant::now());
        let (mut p, kv, raft) = leader(t0);
        assert!(!read_at_once(&mut p, t0));
        drive(&mut p, &kv, &raft, t0, &mut Vec::new());
        // At normal speed the 800 ms lease is over 1.2 s later...
        assert!(!p.lease_valid(clock.at(t0.real + ms(1200))));
        // ...but at half speed it still holds then, past a 1 s election
        // timeout measured on real time: the unsafe case the harness shows.
        clock.adjust_at(t0.real, Some(0.5), None).unwrap();
        assert!(p.lease_valid(clock.at(t0.real + ms(1200))));
        assert!(!p.lease_valid(clock.at(t0.real + ms(1700))));
    }

    #[test]
    fn stale_reads_skip_leadership_but_not_the_epoch() {
        let t0 = now_on(&LeaseClock::real(), Instant::now());
        let (mut p, _kv, _raft) = leader(t0);
        p.raw.raft.become_follower(p.raw.raft.term + 1, raft::INVALID_ID);
        let mut replies = Vec::new();
        let (cb, mut rx) = oneshot::channel();
        p.read(p.region().epoch, t0, cb, &mut replies);
        let (stale_cb, mut stale_rx) = oneshot::channel();
        p.stale_read(p.region().epoch, stale_cb, &mut replies);
        let old = RegionEpoch { version: 0, ..p.region().epoch };
        let (old_cb, mut old_rx) = oneshot::channel();
        p.stale_read(old, old_cb, &mut replies);
        crate::raftstore::store::deliver(replies);
        assert!(matches!(rx.try_recv(), Ok(Err(Error::NotLeader { .. }))));
        assert!(matches!(stale_rx.try_recv(), Ok(Ok(r)) if r.id == RegionId(1)));
        assert!(matches!(old_rx.try_recv(), Ok(Err(Error::EpochNotMatch { .. }))));
    }
}
