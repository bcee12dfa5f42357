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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mnemo_proto::raft_serverpb::{BatchSplit, ConfChangeContext, RaftCommand, RaftRequestHeader};
use mnemo_proto::types::{Peer as PeerMeta, PeerId, PeerRole, Region, RegionEpoch, RegionId, StoreId};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, Entry, EntryType, Message as RaftMsg, MessageType};
use raft::{RawNode, StateRole};
use tokio::sync::oneshot;

use super::apply::{self, WriteOutcome};
use super::apply_pool::{ApplyPool, ApplyResult, ApplyTask, TaskEntry};
use super::lease_clock::LeaseInstant;
use super::local_reader::{LeaseView, ReadDelegate};
use super::storage::{self, PeerStorage};
use crate::engine::{EngineRef, WriteBatch};
use crate::error::{Error, Result};
use crate::metrics::RAFTSTORE;

/// A hibernating leader whose followers have not all agreed yet ticks once
/// per this many base ticks (with 100 ms ticks: a heartbeat carrying the
/// request every 2 s).
pub const HIBERNATE_TICK_STRETCH: u64 = 10;

/// Answer to a write: its outcome once applied, or an error.
///
/// It carries the write's trace (see `mnemo_telemetry`): the span of the
/// client request, and a child span for the raft stage the write is in,
/// closed when the next one starts — `raft_propose` (queued for the store
/// loop until proposed), `raft_commit` (proposed until committed and taken
/// to apply), `raft_apply` (applied and made durable until answered). All
/// are disabled, and cost nothing, for a write nobody traces.
pub struct WriteCallback {
    tx: oneshot::Sender<Result<WriteOutcome>>,
    request: tracing::Span,
    stage: tracing::Span,
}

/// The raft stages a traced write goes through (see [`WriteCallback`]).
#[derive(Clone, Copy, Debug)]
pub enum Stage {
    Propose,
    Commit,
    Apply,
}

impl WriteCallback {
    /// A callback for a write made under `request` (its stages become
    /// children of it, if its trace is sampled: stages of a trace nobody
    /// keeps would only cost the store loop), starting in
    /// [`Stage::Propose`].
    pub fn traced(tx: oneshot::Sender<Result<WriteOutcome>>, request: tracing::Span) -> Self {
        let request = if mnemo_telemetry::is_sampled(&request) { request } else { tracing::Span::none() };
        let mut cb = WriteCallback { tx, request, stage: tracing::Span::none() };
        cb.enter(Stage::Propose);
        cb
    }

    /// Ends the current stage's span and starts `stage`'s.
    pub fn enter(&mut self, stage: Stage) {
        if self.request.is_disabled() {
            return;
        }
        let parent = &self.request;
        self.stage = match stage {
            Stage::Propose => tracing::debug_span!(parent: parent, "raft_propose"),
            Stage::Commit => tracing::debug_span!(parent: parent, "raft_commit"),
            Stage::Apply => tracing::debug_span!(parent: parent, "raft_apply"),
        };
    }

    /// Answers the write (its spans end); the outcome comes back if nobody
    /// waits any more.
    pub fn send(self, outcome: Result<WriteOutcome>) -> std::result::Result<(), Result<WriteOutcome>> {
        self.tx.send(outcome)
    }
}

impl From<oneshot::Sender<Result<WriteOutcome>>> for WriteCallback {
    /// An untraced callback.
    fn from(tx: oneshot::Sender<Result<WriteOutcome>>) -> Self {
        WriteCallback { tx, request: tracing::Span::none(), stage: tracing::Span::none() }
    }
}
/// Answer to a read: permission to serve it, or an error.
pub type ReadCallback = oneshot::Sender<Result<ReadGrant>>;

/// Permission to serve a read from the kv engine.
#[derive(Clone, Debug)]
pub struct ReadGrant {
    /// The region as of the read (epoch checked; the caller checks keys).
    pub region: Region,
    /// The wall-clock time (Unix ms) the read judges TTL expiry at: the
    /// reader's clock, but never below a stamp already applied nor at or
    /// above the stamp of a write still in flight, so reads and writes
    /// judge expiry in the order they take effect (a CAS stamped before a
    /// value expired, applied after, must not follow a read that already
    /// found the value gone).
    pub now_ms: u64,
    /// The delegate of the peer that granted it: the read must find it
    /// still registered once it holds its engine snapshot (see
    /// [`super::local_reader::LocalReader::still_serves`]). `None` only
    /// for grants made up by tests.
    pub holder: Option<Arc<ReadDelegate>>,
}

/// The time of a store-loop step on every clock a peer uses.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Real (monotonic) time: raft ticks, read expiry.
    pub real: Instant,
    /// The lease clock: lease decisions only.
    pub lease: LeaseInstant,
    /// Wall-clock Unix ms: stamped into proposed commands (TTL decisions at
    /// apply use the stamp, never the applying node's clock).
    pub wall_ms: u64,
}

struct Proposal {
    index: u64,
    term: u64,
    /// When it was proposed (for the commit-duration histogram).
    queued: Instant,
    /// The time stamped into the command (`proposed_at_ms`).
    stamp_ms: u64,
    /// On the lease clock: a committed proposal extends the lease from here.
    proposed_at: LeaseInstant,
    /// [`Peer::lease_fence`] when proposed: only a round started after the
    /// last leader transfer began or ended may extend the lease.
    fence: u64,
    cb: WriteCallback,
}

/// Entries handed to the apply pool and not yet taken back in.
struct InFlight {
    /// The last entry's index.
    index: u64,
    /// The smallest time stamp of their commands: reads are judged below
    /// it until they are taken in (see [`Peer::oldest_pending_stamp`]).
    min_stamp_ms: Option<u64>,
}

struct PendingRead {
    id: u64,
    /// When the ReadIndex round started (None: not started yet, waiting for
    /// the leader to commit an entry of its term): real time for expiry,
    /// lease time for the lease the round confirms.
    issued_at: Option<Now>,
    /// [`Peer::lease_fence`] when the round started.
    fence: u64,
    term: u64,
    read_index: Option<u64>,
    /// The epoch the request was made for; checked again when answering,
    /// since a split may be applied while the read waits.
    epoch: RegionEpoch,
    cb: ReadCallback,
}

/// Plain writes of one round waiting to be proposed as one entry (see
/// [`Peer::propose_write`]).
struct WriteBatchProposal {
    /// The first write's command, with every later write's mutations appended.
    cmd: RaftCommand,
    cbs: Vec<WriteCallback>,
    /// Encoded size so far (an estimate: the sum of the commands').
    size: u64,
    /// The stamp reserved when the batch was started: reads granted while it
    /// waits judge expiry below it, as for a write already proposed.
    stamp_ms: u64,
    /// The term this peer led in when the batch was started: proposed only
    /// if it still leads in that term (a peer that stepped down meanwhile
    /// would forward the proposal to the new leader, behind the client's
    /// back, after answering it `NotLeader`).
    term: u64,
}

/// Largest raft entry a batch of plain writes grows to (smaller than
/// `raft-entry-max-size`, which a single write may still reach).
const MAX_BATCH_ENTRY: u64 = 256 << 10;

/// A response to deliver after the round's writes are on disk.
pub enum Reply {
    Write(WriteCallback, Result<WriteOutcome>),
    Read(ReadCallback, Result<ReadGrant>),
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
    /// Bytes proposed but not committed past which proposals are refused
    /// with `ServerIsBusy` (raft-rs `max_uncommitted_size`).
    pub max_uncommitted_size: u64,
    /// Let idle regions tick slowly (see [`HIBERNATE_TICK_STRETCH`]).
    pub hibernate: bool,
    /// Bugs planted on purpose (test-only `--plant`); none by default.
    pub plants: PlantedBugs,
}

/// Known bugs a test can plant (`--plant`, test-only), so the chaos harness
/// can prove its checkers catch each. All off by default; each field names
/// the guarantee it breaks (see `config::PLANTABLE_BUGS`).
#[derive(Clone, Copy, Debug, Default)]
pub struct PlantedBugs {
    /// Apply judges TTL expiry by the local clock (replicas diverge).
    pub apply_local_clock: bool,
    /// The lease survives leader transfers (stale reads).
    pub lease_ignores_transfer: bool,
    /// Writes are acknowledged when proposed (acknowledged writes lost).
    pub ack_before_commit: bool,
    /// Apply skips the epoch and key-range check (writes land in the wrong region).
    pub skip_apply_epoch_check: bool,
}

impl PlantedBugs {
    /// The bugs the node's test controls plant.
    pub fn from_controls(t: &crate::config::TestControls) -> PlantedBugs {
        PlantedBugs {
            apply_local_clock: t.planted("apply-local-clock"),
            lease_ignores_transfer: t.planted("lease-ignores-transfer"),
            ack_before_commit: t.planted("ack-before-commit"),
            skip_apply_epoch_check: t.planted("skip-apply-epoch-check"),
        }
    }
}

/// One region replica.
pub struct Peer {
    /// This replica.
    pub meta: PeerMeta,
    /// The raft node and its storage.
    pub raw: RawNode<PeerStorage>,
    proposals: VecDeque<Proposal>,
    /// Writes received before this leader applied an entry of its term.
    waiting_writes: VecDeque<(RaftCommand, WriteCallback)>,
    /// Plain writes of this round, proposed together as one entry by
    /// [`Peer::propose_write_batch`] before the round's ready.
    write_batch: Option<WriteBatchProposal>,
    reads: VecDeque<PendingRead>,
    next_read_id: u64,
    /// End of the lease, on the lease clock.
    lease_until: Option<LeaseInstant>,
    /// Bumped whenever a leader transfer starts or ends (completes or is
    /// aborted). A quorum round (ReadIndex or write) extends the lease only
    /// if no transfer began or ended since it started: during a transfer the
    /// target may be elected at once (MsgTimeoutNow skips the followers'
    /// lease check), so a round that overlapped one proves nothing about the
    /// time after it, even once raft-rs aborts the transfer.
    lease_fence: u64,
    /// Whether a transfer was in progress when last looked at.
    transferring: bool,
    /// Ticks left after a transfer ended during which no round may extend
    /// the lease: a MsgTimeoutNow delayed in a queue can still reach the
    /// target and elect it at once, for up to about an election timeout.
    transfer_cooldown: usize,
    applied_term: u64,
    /// The largest time stamp proposed or applied here: stamps never go
    /// backwards within a region's log, even across leaders whose wall
    /// clocks disagree.
    last_stamp_ms: u64,
    /// The largest time stamp applied here.
    applied_stamp_ms: u64,
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
    /// This round applied a split or a membership change: its kv batch
    /// (region states) must be synced before the round's raft writes, so a
    /// new peer's term and vote are never on disk without the region state
    /// that created it (a replay would re-create the peer and rewrite them).
    pub region_state_changed: bool,
    /// Membership changes applied since the store last looked (a metric).
    pub conf_changes_applied: u64,
    /// Idle region (see [`Peer::on_base_tick`]): a leader decides it and
    /// says so in every message it sends; a follower follows its leader's
    /// flag and says so in its replies, which is its agreement. Any
    /// activity wakes the peer that sees it.
    pub hibernating: bool,
    /// As a hibernating leader: the peers whose messages carried the flag
    /// since it decided. Once every other peer is in, it stops ticking too.
    hibernate_acks: HashSet<PeerId>,
    /// As leader: when it first counted each other peer of the region (a
    /// peer it has just added, or found on taking over, is not down for a
    /// silence that began before; see [`Peer::counted_since`]).
    pub(super) counted_since: HashMap<PeerId, Instant>,
    idle_ticks: usize,
    /// What this peer lends the local reader (see [`super::local_reader`]).
    reads_delegate: Arc<ReadDelegate>,
    /// Index of the last split this leader proposed, until applied: while
    /// one is in flight, every commit is broadcast at once (see
    /// `skip_bcast_commit`), so followers apply the split, and create the
    /// new regions' peers, without waiting for a heartbeat.
    split_in_flight: Option<u64>,
    /// Runs of entries handed to the apply pool, oldest first; each leaves
    /// when its worker's report is taken in ([`Peer::on_applied`]).
    in_flight: VecDeque<InFlight>,
    /// Something was applied on the store loop this round (its writes and
    /// apply state sit in the round's kv batch until the round ends): the
    /// rest of the round applies there too.
    applied_inline: bool,
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
            max_uncommitted_size: cfg.max_uncommitted_size,
            check_quorum: true,
            pre_vote: true,
            // A new commit index reaches followers with the next append or
            // heartbeat, not in an append of its own: under load that halves
            // the messages (and follower rounds) per write of every region.
            // Nothing waits on a follower's apply (writes are answered by
            // the leader, reads served by it); membership changes (raft-rs,
            // while one is pending) and splits (`split_in_flight`) still
            // broadcast their commit at once.
            skip_bcast_commit: true,
            ..Default::default()
        };
        let mut peer_cache = HashMap::new();
        for p in &storage.region.peers {
            peer_cache.insert(p.id, *p);
        }
        let reads_delegate = ReadDelegate::new(storage.region.clone());
        let raw = RawNode::new(&rc, storage, &logger.new(slog::o!("peer" => meta.id.0)))
            .map_err(|e| Error::Other(format!("raft init: {e}")))?;
        Ok(Peer {
            meta,
            raw,
            proposals: VecDeque::new(),
            waiting_writes: VecDeque::new(),
            write_batch: None,
            reads: VecDeque::new(),
            next_read_id: 1,
            lease_until: None,
            lease_fence: 0,
            transferring: false,
            transfer_cooldown: 0,
            applied_term: 0,
            last_stamp_ms: 0,
            applied_stamp_ms: 0,
            peer_cache,
            outbox: Vec::new(),
            pending_remove: false,
            heartbeat_due: true,
            size_diff_hint: 0,
            approximate: None,
            applied_splits: Vec::new(),
            region_state_changed: false,
            conf_changes_applied: 0,
            hibernating: false,
            hibernate_acks: HashSet::new(),
            counted_since: HashMap::new(),
            idle_ticks: 0,
            reads_delegate,
            split_in_flight: None,
            in_flight: VecDeque::new(),
            applied_inline: false,
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
        self.lendable_lease().is_some_and(|t| now < t)
    }

    /// The end of the lease if this peer may serve lease reads until then:
    /// everything [`Peer::lease_valid`] asks but the time.
    fn lendable_lease(&self) -> Option<LeaseInstant> {
        let holder = self.is_leader()
            // A transfer target may be elected at once (MsgTimeoutNow skips
            // the followers' lease check), so a transferring leader has no lease.
            && (self.raw.raft.lead_transferee.is_none() || self.cfg.plants.lease_ignores_transfer)
            && self.applied_term == self.raw.raft.term;
        self.lease_until.filter(|_| holder)
    }

    /// The peer's settings, to change in a test.
    #[cfg(test)]
    pub(super) fn cfg_mut(&mut self) -> &mut PeerConfig {
        &mut self.cfg
    }

    /// The delegate the store registers with the local reader.
    pub fn reads_delegate(&self) -> Arc<ReadDelegate> {
        self.reads_delegate.clone()
    }

    /// Publishes what the local reader needs (the store calls it at the end
    /// of every round that touched this peer; revocations go at once).
    pub fn publish_reads(&self) {
        self.reads_delegate.publish(LeaseView {
            region: self.region(),
            lease_until: self.lendable_lease(),
            applied_stamp_ms: self.applied_stamp_ms,
            oldest_pending_ms: self.oldest_pending_stamp(),
        });
    }

    /// The smallest stamp of a write handed to the apply pool, proposed or
    /// batched, and not yet applied: stamps only grow along the log, the
    /// pool's entries come before any proposal still waiting, and a batch
    /// is proposed before anything proposed after it.
    fn oldest_pending_stamp(&self) -> Option<u64> {
        let applying = self.in_flight.iter().find_map(|f| f.min_stamp_ms);
        let batched = self.write_batch.as_ref().map(|b| b.stamp_ms);
        applying.or(self.proposals.front().map(|p| p.stamp_ms)).or(batched)
    }

    /// The stamp for a write proposed or batched now: never below one
    /// already proposed or applied here, nor at or below the time any read
    /// of the region was judged at (see [`ReadDelegate::stamp_write`]).
    fn stamp(&mut self, now: Now) -> u64 {
        self.last_stamp_ms = self.reads_delegate.stamp_write(self.last_stamp_ms.max(now.wall_ms));
        self.last_stamp_ms
    }

    /// Extends the lease from the start of a quorum round that began under
    /// `fence` (see [`Peer::lease_fence`]).
    fn extend_lease(&mut self, issued_at: LeaseInstant, fence: u64) {
        self.observe_transfer();
        let fenced = self.transferring || self.transfer_cooldown > 0 || fence != self.lease_fence;
        if fenced && !self.cfg.plants.lease_ignores_transfer {
            return;
        }
        let until = issued_at + self.cfg.lease;
        if self.lease_until.is_none_or(|t| t < until) {
            self.lease_until = Some(until);
        }
    }

    /// Ends the lease here and in the local reader at once.
    fn drop_lease(&mut self) {
        self.lease_until = None;
        self.reads_delegate.revoke();
    }

    /// Notices a leader transfer starting or ending (raft-rs starts one on
    /// `transfer_leader` and ends it when it completes, when the target is
    /// removed, or after an election timeout): either way the lease is void
    /// and every round started before is fenced off from extending it.
    /// Called after every input that can move raft's transfer state.
    fn observe_transfer(&mut self) {
        let transferring = self.raw.raft.lead_transferee.is_some();
        if transferring != self.transferring {
            self.transferring = transferring;
            self.lease_fence += 1;
            self.drop_lease();
            if !transferring {
                self.transfer_cooldown = self.cfg.election_tick;
            }
        }
    }

    /// Asks raft to hand leadership to `to` (leader only).
    pub fn transfer_leader(&mut self, to: PeerId) {
        self.wake();
        self.raw.transfer_leader(to.0);
        self.observe_transfer();
    }

    /// Starts (or answers at once) a linearizable read.
    pub fn read(&mut self, epoch: RegionEpoch, now: Now, cb: ReadCallback, replies: &mut Vec<Reply>) {
        self.wake();
        if let Err(e) = self.check_request(epoch) {
            replies.push(Reply::Read(cb, Err(e)));
            return;
        }
        if self.lease_valid(now.lease) {
            replies.push(Reply::Read(cb, Ok(self.grant(now))));
            return;
        }
        let id = self.next_read_id;
        self.next_read_id += 1;
        let term = self.raw.raft.term;
        self.reads.push_back(PendingRead {
            id,
            issued_at: None,
            fence: self.lease_fence,
            term,
            read_index: None,
            epoch,
            cb,
        });
        self.issue_reads(now);
    }

    /// **Unsafe, test-only** (`--unsafe-stale-reads`): answers a read from
    /// this peer's applied state whatever its role, with no lease and no
    /// ReadIndex. A follower or a deposed leader may answer with data that
    /// is arbitrarily old, which is the point: the chaos checker must catch
    /// it. The epoch is still checked (the caller checks the key range).
    pub fn stale_read(&self, epoch: RegionEpoch, now: Now, cb: ReadCallback, replies: &mut Vec<Reply>) {
        let answer = self.check_epoch(epoch).map(|_| self.grant(now));
        replies.push(Reply::Read(cb, answer));
    }

    /// Permission to read the region now (see [`ReadGrant::now_ms`]).
    fn grant(&self, now: Now) -> ReadGrant {
        // An apply worker raises the delegate's before answering its clients.
        let applied = self.applied_stamp_ms.max(self.reads_delegate.applied_stamp_ms());
        let mut at = now.wall_ms.max(applied);
        if let Some(oldest) = self.oldest_pending_stamp() {
            at = at.min(oldest.saturating_sub(1)).max(applied);
        }
        // Never below a read already judged (on either path); writes
        // proposed from now on are stamped above it.
        let at = self.reads_delegate.judge_read(at);
        ReadGrant { region: self.region().clone(), now_ms: at, holder: Some(self.reads_delegate.clone()) }
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
            r.fence = self.lease_fence;
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

    /// Proposes a write, stamped with the time apply will judge TTLs by.
    /// The callback fires when the entry is applied.
    ///
    /// Plain writes (puts and deletes: nothing judged at apply) are not
    /// proposed at once: they join this round's batch, which the store
    /// proposes as **one entry** once every message of the round is handled
    /// ([`Peer::propose_write_batch`]): with many clients on one region a
    /// round's writes cost raft one entry, not one each. The batch keeps
    /// their order; a write of another kind, or any other proposal, first
    /// proposes the batch, so the log order is the arrival order.
    ///
    /// A new leader holds writes back until it applied an entry of its own
    /// term: only then has it applied every stamp its predecessors
    /// committed, so its own stamps (at least the largest applied) never go
    /// backwards in the log, even if its wall clock is behind theirs.
    pub fn propose_write(
        &mut self,
        cmd: RaftCommand,
        now: Now,
        cb: impl Into<WriteCallback>,
        replies: &mut Vec<Reply>,
    ) {
        let cb = cb.into();
        self.wake();
        let epoch = mnemo_proto::types::epoch_of(cmd.header.as_ref().and_then(|h| h.region_epoch.as_ref()));
        if let Err(e) = self.check_request(epoch).and_then(|_| apply::check_command(self.region(), &cmd)) {
            replies.push(Reply::Write(cb, Err(e)));
            return;
        }
        if self.applied_term != self.raw.raft.term {
            self.waiting_writes.push_back((cmd, cb));
            return;
        }
        if is_batchable(&cmd) {
            self.batch_write(cmd, now, cb, replies);
        } else {
            self.propose_write_batch(now, replies);
            self.propose_checked(cmd, now, vec![cb], replies);
        }
    }

    /// Adds a plain write to this round's batch (proposing the batch first
    /// if the write does not fit or was made for another epoch).
    fn batch_write(&mut self, cmd: RaftCommand, now: Now, cb: WriteCallback, replies: &mut Vec<Reply>) {
        let size = cmd.encoded_len() as u64;
        let limit = MAX_BATCH_ENTRY.min(self.cfg.raft_entry_max_size);
        let fits = self.write_batch.as_ref().is_some_and(|b| {
            b.size + size <= limit
                && b.cmd.header.as_ref().map(|h| &h.region_epoch)
                    == cmd.header.as_ref().map(|h| &h.region_epoch)
        });
        if !fits {
            self.propose_write_batch(now, replies);
        }
        match &mut self.write_batch {
            Some(b) => {
                b.cmd.mutations.extend(cmd.mutations);
                b.cbs.push(cb);
                b.size += size;
            }
            None => {
                let (stamp_ms, term) = (self.stamp(now), self.raw.raft.term);
                self.write_batch = Some(WriteBatchProposal { cmd, cbs: vec![cb], size, stamp_ms, term });
            }
        }
    }

    /// True if a batch of plain writes waits to be proposed.
    pub fn has_write_batch(&self) -> bool {
        self.write_batch.is_some()
    }

    /// Proposes this round's batch of plain writes as one entry (a no-op
    /// without one). The store calls it after the round's messages, and
    /// before any other proposal of this peer.
    pub fn propose_write_batch(&mut self, now: Now, replies: &mut Vec<Reply>) {
        let Some(b) = self.write_batch.take() else { return };
        if !self.is_leader() || self.raw.raft.term != b.term {
            let (region, leader) = (self.region_id(), self.leader());
            replies.extend(
                b.cbs.into_iter().map(|cb| Reply::Write(cb, Err(Error::NotLeader { region, leader }))),
            );
            return;
        }
        self.propose_checked(b.cmd, now, b.cbs, replies);
    }

    /// Proposes the writes held back until this leader applied an entry of
    /// its term (see [`Peer::propose_write`]).
    fn propose_waiting_writes(&mut self, now: Now, replies: &mut Vec<Reply>) {
        if self.waiting_writes.is_empty() || !self.is_leader() || self.applied_term != self.raw.raft.term {
            return;
        }
        for (cmd, cb) in std::mem::take(&mut self.waiting_writes) {
            // The region may have split meanwhile: check again.
            let checked = apply::check_command(self.region(), &cmd);
            match checked {
                Ok(()) => self.propose_checked(cmd, now, vec![cb], replies),
                Err(e) => replies.push(Reply::Write(cb, Err(e))),
            }
        }
    }

    /// Stamps and proposes a write (or a batch of plain writes, one callback
    /// each) that passed the leader and epoch checks.
    fn propose_checked(
        &mut self,
        mut cmd: RaftCommand,
        now: Now,
        cbs: Vec<WriteCallback>,
        replies: &mut Vec<Reply>,
    ) {
        cmd.proposed_at_ms = self.stamp(now);
        let cmd_is_plain_write = cmd.cas.is_none() && cmd.split.is_none();
        let data = cmd.encode_to_vec();
        if data.len() as u64 > self.cfg.raft_entry_max_size {
            let (region, size) = (self.region_id(), data.len() as u64);
            let e = || Error::RaftEntryTooLarge { region, size };
            replies.extend(cbs.into_iter().map(|cb| Reply::Write(cb, Err(e()))));
            return;
        }
        let index = self.raw.raft.raft_log.last_index() + 1;
        let term = self.raw.raft.term;
        if self.raw.propose(vec![], data).is_err() || self.raw.raft.raft_log.last_index() < index {
            // A leader drops proposals while it hands leadership over, and
            // when too much it proposed is not committed yet (followers slow
            // or gone): the latter is flow control, not lost leadership.
            let in_config = self.raw.raft.prs().get(self.meta.id.0).is_some();
            let busy = self.is_leader() && self.raw.raft.lead_transferee.is_none() && in_config;
            // While handing over, point the client at the peer taking over.
            let transferee =
                self.raw.raft.lead_transferee.and_then(|id| self.peer_cache.get(&PeerId(id)).copied());
            let (region, leader) = (self.region_id(), transferee.or_else(|| self.leader()));
            let e = || match busy {
                true => Error::ServerIsBusy(format!(
                    "region {region}: too many uncommitted proposals (raftstore.raft-max-uncommitted-size)"
                )),
                false => Error::NotLeader { region, leader },
            };
            replies.extend(cbs.into_iter().map(|cb| Reply::Write(cb, Err(e()))));
            return;
        }
        // One proposal per callback, all at the entry's index: each is
        // answered when it applies (a batch is plain writes: all `Done`).
        for mut cb in cbs {
            let cb = if self.cfg.plants.ack_before_commit && cmd_is_plain_write {
                // Planted bug: the client hears "done" now; the entry may yet be lost.
                replies.push(Reply::Write(cb, Ok(WriteOutcome::Done)));
                oneshot::channel().0.into()
            } else {
                cb.enter(Stage::Commit);
                cb
            };
            self.proposals.push_back(Proposal {
                index,
                term,
                queued: Instant::now(),
                stamp_ms: self.last_stamp_ms,
                proposed_at: now.lease,
                fence: self.lease_fence,
                cb,
            });
        }
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
        if let Err(err) = validate_conf_change(self.raw.raft.prs(), &cc) {
            tracing::warn!(region = %self.region_id(), ?changes, "conf change refused: {err}");
            return false;
        }
        let ctx = ConfChangeContext { peers: todo.iter().map(|(_, p)| (*p).into()).collect() };
        cc.context = ctx.encode_to_vec().into();
        // The proposer's conf_ver travels in the entry context so apply can reject a stale change.
        let conf_ver = self.region().epoch.conf_ver.to_be_bytes().to_vec();
        self.raw.propose_conf_change(conf_ver, cc).is_ok()
    }

    /// Proposes a batch split prepared with ids from PD (leader only).
    pub fn propose_split(&mut self, epoch: RegionEpoch, split: BatchSplit) -> bool {
        self.wake();
        if !self.is_leader() || epoch != self.region().epoch {
            return false;
        }
        let header = RaftRequestHeader {
            region_id: self.region_id().0,
            peer: Some(self.meta.into()),
            region_epoch: Some(epoch.into()),
        };
        let cmd = RaftCommand { header: Some(header), split: Some(split), ..Default::default() };
        let index = self.raw.raft.raft_log.last_index() + 1;
        if self.raw.propose(vec![], cmd.encode_to_vec()).is_err()
            || self.raw.raft.raft_log.last_index() < index
        {
            return false;
        }
        self.split_in_flight = Some(index);
        self.raw.raft.skip_bcast_commit(false);
        true
    }

    /// Leaves hibernation (activity seen here).
    pub fn wake(&mut self) {
        self.hibernating = false;
        self.hibernate_acks.clear();
        self.idle_ticks = 0;
    }

    /// True if this peer does not tick at all: a hibernating follower, or a
    /// hibernating leader all of whose peers agreed.
    pub fn asleep(&self) -> bool {
        self.hibernating
            && (!self.is_leader()
                || (self.idle()
                    && self
                        .region()
                        .peers
                        .iter()
                        .all(|q| q.id == self.meta.id || self.hibernate_acks.contains(&q.id))))
    }

    /// As leader: nothing in flight, every peer has every entry.
    fn idle(&self) -> bool {
        let raft = &self.raw.raft;
        let last = raft.raft_log.last_index();
        self.proposals.is_empty()
            && self.in_flight.is_empty()
            && self.waiting_writes.is_empty()
            && self.reads.is_empty()
            && raft.raft_log.committed == last
            && raft.lead_transferee.is_none()
            && !raft.has_pending_conf()
            && raft.prs().iter().all(|(_, pr)| pr.matched == last)
    }

    /// Advances raft time by one base tick, honouring hibernation.
    ///
    /// A leader whose region stayed idle for two election timeouts starts
    /// hibernating: it ticks only every [`HIBERNATE_TICK_STRETCH`]-th base
    /// tick, so its heartbeats (which carry the flag) go out rarely, until
    /// every other peer answered with the flag; then it stops ticking. A
    /// hibernating follower does not tick at all: it cannot time out its
    /// leader, so the store wakes it when the leader's *store* falls silent
    /// (store-level pings, [`super::store::Store`]). A follower woken alone
    /// (its leader's store only looked silent) campaigns with pre-vote,
    /// which the others refuse (they still count the leader as alive, their
    /// election clock stopped) and which wakes the leader, whose heartbeats
    /// then bring the follower back: no term changes.
    pub fn on_base_tick(&mut self, tick_no: u64) {
        if self.hibernating && (self.asleep() || !tick_no.is_multiple_of(HIBERNATE_TICK_STRETCH)) {
            return;
        }
        self.raw.tick();
        self.observe_transfer();
        if self.transfer_cooldown > 0 {
            self.transfer_cooldown -= 1;
            if self.transfer_cooldown == 0 {
                // Rounds started during the cool-down do not count either.
                self.lease_fence += 1;
            }
        }
        if !self.is_leader() {
            return;
        }
        if !self.idle() {
            self.wake();
        } else if !self.hibernating && self.cfg.hibernate {
            self.idle_ticks += 1;
            if self.idle_ticks >= 2 * self.cfg.election_tick {
                self.hibernating = true;
                // Ask at once: followers that have not seen the flag still
                // tick, and would time out before a stretched heartbeat.
                self.raw.raft.bcast_heartbeat();
            }
        }
    }

    /// Notes the hibernation flag of a message from peer `from`, before it
    /// is stepped. A follower follows its leader's flag. A hibernating
    /// leader counts a flagged message as that peer's agreement, and wakes
    /// on any other: a peer that is awake (a follower that timed out, a
    /// restarted one) needs its heartbeats.
    pub fn observe_hibernation(&mut self, from: PeerId, hibernate: bool) {
        if !self.is_leader() {
            if self.raw.raft.leader_id == from.0 {
                self.hibernating = hibernate;
            }
        } else if self.hibernating && hibernate {
            self.hibernate_acks.insert(from);
        } else if self.hibernating {
            self.wake();
        }
    }

    /// Steps an incoming raft message.
    pub fn step(&mut self, msg: RaftMsg) -> Result<()> {
        let res = self.raw.step(msg).map_err(|e| Error::Other(format!("step: {e}")));
        self.observe_transfer();
        if self.lease_until.is_some() && !self.is_leader() {
            // Deposed: lend nothing more, even before the round notices.
            self.drop_lease();
        }
        res
    }

    /// Wakes a hibernating follower whose leader's store fell silent, and
    /// tells the leader so (a heartbeat response, which any leader takes
    /// quietly): if the leader is alive after all, the unflagged message
    /// wakes it and its heartbeats put this peer back in step — a learner
    /// never campaigns, so it would otherwise tick alone forever.
    pub fn wake_and_poke_leader(&mut self) {
        self.wake();
        if let Some(leader) = self.leader() {
            let mut poke = RaftMsg::default();
            poke.set_msg_type(MessageType::MsgHeartbeatResponse);
            poke.from = self.meta.id.0;
            poke.to = leader.id.0;
            poke.term = self.raw.raft.term;
            self.outbox.push((leader, poke));
        }
    }

    /// As leader: the other peers silent for `limit` or longer, with the
    /// seconds of silence. A peer is silent since its store was last heard
    /// from (`heard`), but never longer than this leader has counted it (a
    /// peer it just added, or found on taking over, starts at `now`).
    pub fn down_peers(
        &mut self,
        now: Instant,
        limit: Duration,
        heard: impl Fn(StoreId) -> Instant,
    ) -> Vec<(PeerMeta, u64)> {
        let (region, counted) = (&self.raw.store().region, &mut self.counted_since);
        counted.retain(|id, _| region.peer(*id).is_some());
        let mut down = Vec::new();
        for q in region.peers.iter().filter(|q| q.id != self.meta.id) {
            let since = heard(q.store_id).max(*counted.entry(q.id).or_insert(now));
            let silent = now.saturating_duration_since(since);
            if silent >= limit {
                down.push((*q, silent.as_secs()));
            }
        }
        down
    }

    /// Handles a role or term change: pending work from the old term fails.
    pub fn on_soft_state_change(&mut self, replies: &mut Vec<Reply>) {
        self.heartbeat_due = true;
        self.counted_since.clear();
        self.observe_transfer();
        self.drop_lease();
        if !self.is_leader() {
            let leader = self.leader();
            let region = self.region_id();
            for r in self.reads.drain(..) {
                replies.push(Reply::Read(r.cb, Err(Error::NotLeader { region, leader })));
            }
            for p in self.proposals.drain(..) {
                replies.push(Reply::Write(p.cb, Err(Error::StaleCommand)));
            }
            // Never proposed: certainly not applied.
            for (_, cb) in self.waiting_writes.drain(..) {
                replies.push(Reply::Write(cb, Err(Error::NotLeader { region, leader })));
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
                confirmed = r.issued_at.map(|at| (at, r.fence));
            }
        }
        if let Some((at, fence)) = confirmed {
            self.extend_lease(at.lease, fence);
        }
    }

    /// Starts reads that waited for a commit in this term and answers every
    /// read whose read index is applied (in any order: each was confirmed on
    /// its own). Reads whose round never completes are failed by `expire_reads`.
    pub fn answer_ready_reads(&mut self, now: Now, replies: &mut Vec<Reply>) {
        self.propose_waiting_writes(now, replies);
        self.issue_reads(now);
        let applied = self.raw.store().applied_index();
        let (ready, waiting): (VecDeque<_>, VecDeque<_>) =
            self.reads.drain(..).partition(|r| r.read_index.is_some_and(|idx| idx <= applied));
        self.reads = waiting;
        for r in ready {
            let answer = self.check_epoch(r.epoch).map(|_| self.grant(now));
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
        let timed = !entries.is_empty();
        let started = Instant::now();
        let applied = self.apply_entries_inline(entries, kv, kv_wb, replies);
        if timed {
            RAFTSTORE.apply_log.observe(started.elapsed().as_secs_f64());
        }
        applied
    }

    fn apply_entries_inline(
        &mut self,
        entries: Vec<Entry>,
        kv: &EngineRef,
        kv_wb: &mut WriteBatch,
        replies: &mut Vec<Reply>,
    ) -> Result<()> {
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
                            self.last_stamp_ms = self.last_stamp_ms.max(cmd.proposed_at_ms);
                            self.applied_stamp_ms = self.applied_stamp_ms.max(cmd.proposed_at_ms);
                            let plants = self.cfg.plants;
                            if plants.apply_local_clock {
                                // Planted bug: each replica judges by its own clock.
                                let mut local = cmd.clone();
                                local.proposed_at_ms = crate::keys::now_unix_ms();
                                apply::apply_write(kv.as_ref(), &region, &local, kv_wb)
                            } else if plants.skip_apply_epoch_check {
                                // Planted bug: no epoch or key-range check.
                                if let Err(e) = apply::check_command(&region, &cmd) {
                                    tracing::warn!(region = %region.id, "PLANTED BUG: applying a command the epoch check refuses ({e})");
                                }
                                apply::stage_write(kv.as_ref(), &region, &cmd, kv_wb)
                            } else {
                                apply::apply_write(kv.as_ref(), &region, &cmd, kv_wb)
                            }
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
        self.after_apply();
        Ok(())
    }

    /// What follows any move of the applied index.
    fn after_apply(&mut self) {
        self.raw.mut_store().evict_applied_entries();
        if self.split_in_flight.is_some_and(|i| self.raw.store().applied_index() >= i) {
            self.split_in_flight = None;
            self.raw.raft.skip_bcast_commit(true);
        }
    }

    /// Applies committed entries with the apply pool (see
    /// [`super::apply_pool`]): if all are plain writes (or empty) and this
    /// round applied nothing here yet, a worker applies them; otherwise
    /// (a CAS, split or membership change among them) the store loop
    /// applies them all into `kv_wb`, once nothing is in flight.
    pub fn apply_entries_pooled(
        &mut self,
        entries: Vec<Entry>,
        pool: &mut ApplyPool,
        kv: &EngineRef,
        kv_wb: &mut WriteBatch,
        replies: &mut Vec<Reply>,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let plants = self.cfg.plants;
        // Planted apply bugs live on the store loop's path.
        if !self.applied_inline && !plants.apply_local_clock && !plants.skip_apply_epoch_check {
            let mut run = Vec::with_capacity(entries.len());
            for e in &entries {
                match plain_write(e)? {
                    Some(cmd) => run.push(cmd),
                    None => break,
                }
            }
            if run.len() == entries.len() {
                self.hand_over(entries.into_iter().zip(run).collect(), pool, replies);
                return Ok(());
            }
        }
        // Something here must apply on the store loop: all of it does, once
        // what is already in flight is in the engine.
        self.wait_applied(pool);
        self.applied_inline = true;
        self.apply_entries(entries, kv, kv_wb, replies)
    }

    /// Hands a run of committed plain writes (or empty entries) to the
    /// pool, with the callbacks of the proposals they answer. Their round
    /// committed, so the lease extends now, as it would at apply.
    fn hand_over(
        &mut self,
        run: Vec<(Entry, Option<RaftCommand>)>,
        pool: &ApplyPool,
        replies: &mut Vec<Reply>,
    ) {
        let mut entries = Vec::with_capacity(run.len());
        let (mut stamp_ms, mut min_stamp_ms, mut last) = (0, None::<u64>, (0, 0));
        for (e, cmd) in run {
            if let Some(cmd) = &cmd {
                self.size_diff_hint += apply::written_bytes(cmd);
                self.last_stamp_ms = self.last_stamp_ms.max(cmd.proposed_at_ms);
                stamp_ms = stamp_ms.max(cmd.proposed_at_ms);
                min_stamp_ms = Some(min_stamp_ms.map_or(cmd.proposed_at_ms, |m| m.min(cmd.proposed_at_ms)));
            }
            let cbs = self.take_proposals(e.index, e.term, replies);
            entries.push(TaskEntry { index: e.index, cmd, cbs });
            last = (e.index, e.term);
        }
        let mut apply_state = self.raw.store().apply_state;
        apply_state.applied_index = last.0;
        pool.send(ApplyTask {
            region: self.region().clone(),
            apply_state,
            applied_term: last.1,
            stamp_ms,
            entries,
            delegate: self.reads_delegate.clone(),
        });
        self.in_flight.push_back(InFlight { index: last.0, min_stamp_ms });
    }

    /// Runs handed to the apply pool and not yet taken in.
    pub fn applying(&self) -> usize {
        self.in_flight.len()
    }

    /// The barrier before the store loop writes anything of this region's
    /// apply state or data itself: waits until the pool applied everything
    /// handed over, and takes it in. raft-rs hears of it from the caller
    /// ([`Peer::advance_raft_apply`], or the round's own advance): never
    /// between a `ready()` and its advance.
    pub fn wait_applied(&mut self, pool: &mut ApplyPool) {
        if self.in_flight.is_empty() {
            return;
        }
        for r in pool.wait_for(self.region_id(), self.in_flight.len()) {
            self.on_applied(r);
        }
    }

    /// Takes in a worker's report: the entries up to `r.applied_index` are
    /// in the kv engine, with that applied index. The caller tells raft-rs
    /// ([`Peer::advance_raft_apply`]; inside a ready round, the round's
    /// advance does: raft-rs may append an entry when told, e.g. to leave a
    /// joint configuration, which it must not between `ready()` and
    /// `advance`), answers the reads this lets through
    /// ([`Peer::answer_ready_reads`]) and republishes the read delegate.
    pub fn on_applied(&mut self, r: ApplyResult) {
        let f = self.in_flight.pop_front().expect("a report answers a run handed over");
        assert_eq!(f.index, r.applied_index, "reports arrive in hand-over order");
        self.raw.mut_store().apply_state.applied_index = r.applied_index;
        self.applied_term = r.applied_term;
        self.applied_stamp_ms = self.applied_stamp_ms.max(r.stamp_ms);
        self.after_apply();
    }

    /// Tells raft-rs what this peer has applied (taken in, with the pool).
    pub fn advance_raft_apply(&mut self) {
        let applied = self.raw.store().applied_index();
        self.raw.advance_apply_to(applied);
    }

    /// A round of this peer is over (see `Group::round_done`).
    pub fn end_round(&mut self) {
        self.applied_inline = false;
    }

    fn finish_proposals(
        &mut self,
        index: u64,
        term: u64,
        outcome: Option<Result<WriteOutcome>>,
        replies: &mut Vec<Reply>,
    ) {
        // Every write of a batch shares its entry's outcome (a batch
        // refused at apply fails every one of its writes).
        let result = outcome.unwrap_or(Ok(WriteOutcome::Done));
        for cb in self.take_proposals(index, term, replies) {
            replies.push(Reply::Write(cb, result.clone()));
        }
    }

    /// Takes the proposals up to entry `index`: those this entry is (same
    /// term) are returned, and their round extends the lease; older ones,
    /// overwritten by another leader's entries, are answered `StaleCommand`.
    fn take_proposals(&mut self, index: u64, term: u64, replies: &mut Vec<Reply>) -> Vec<WriteCallback> {
        let mut mine = Vec::new();
        while let Some(p) = self.proposals.front() {
            if p.index > index {
                break;
            }
            let mut p = self.proposals.pop_front().expect("front exists");
            if p.index == index && p.term == term {
                RAFTSTORE.commit_log.observe(p.queued.elapsed().as_secs_f64());
                if term == self.raw.raft.term {
                    self.extend_lease(p.proposed_at, p.fence);
                }
                p.cb.enter(Stage::Apply);
                mine.push(p.cb);
            } else {
                replies.push(Reply::Write(p.cb, Err(Error::StaleCommand)));
            }
        }
        mine
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
        self.region_state_changed = true;
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
        // A change raft-rs refuses (it would remove every voter, enter a
        // joint state twice, ...) is refused identically by every replica,
        // since all hold the same configuration at this index: it is a no-op,
        // never a reason to stop the node (which would stop every replica,
        // and again after each restart, replaying the same entry).
        fail::fail_point!("conf_change_apply");
        let applied = self.raw.apply_conf_change(&cc);
        // Removing a transfer's target ends the transfer.
        self.observe_transfer();
        let cs = match applied {
            Ok(cs) => cs,
            Err(err) => {
                tracing::warn!(region = %region.id, "conf change at index {} refused, skipped: {err}", e.index);
                return Ok(());
            }
        };
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
        self.region_state_changed = true;
        self.conf_changes_applied += 1;
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
        for (_, cb) in self.waiting_writes.drain(..) {
            replies.push(Reply::Write(cb, Err(Error::RegionNotFound(region))));
        }
        for cb in self.write_batch.take().into_iter().flat_map(|b| b.cbs) {
            replies.push(Reply::Write(cb, Err(Error::RegionNotFound(region))));
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

/// True for a write that may join a batch: puts and deletes only (a CAS,
/// a range delete or a split is judged or shaped at apply on its own).
fn is_batchable(cmd: &RaftCommand) -> bool {
    cmd.cas.is_none() && cmd.split.is_none() && cmd.delete_range.is_none() && !cmd.mutations.is_empty()
}

/// What the apply pool may apply of a committed entry: `Some(None)` for an
/// empty entry, `Some(Some(cmd))` for a plain write (puts, deletes, range
/// deletes: nothing read or judged at apply), `None` for anything the store
/// loop must apply itself (a CAS, a split, a membership change).
fn plain_write(e: &Entry) -> Result<Option<Option<RaftCommand>>> {
    if e.get_entry_type() != EntryType::EntryNormal {
        return Ok(None);
    }
    if e.data.is_empty() {
        return Ok(Some(None));
    }
    let cmd = RaftCommand::decode(e.data.as_ref())
        .map_err(|err| Error::Other(format!("corrupt entry {}: {err}", e.index)))?;
    Ok((cmd.cas.is_none() && cmd.split.is_none()).then_some(Some(cmd)))
}

/// Checks a membership change against the current configuration exactly as
/// raft-rs will at apply (e.g. it must leave a voter, and a joint change may
/// not start while another is in progress), so an invalid change is refused
/// at propose time instead of reaching the log.
fn validate_conf_change(prs: &raft::ProgressTracker, cc: &ConfChangeV2) -> raft::Result<()> {
    let mut changer = raft::Changer::new(prs);
    if cc.leave_joint() {
        changer.leave_joint()?;
    } else if let Some(auto_leave) = cc.enter_joint() {
        changer.enter_joint(auto_leave, &cc.changes)?;
    } else {
        changer.simple(&cc.changes)?;
    }
    Ok(())
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

    use super::*;
    use crate::engine::{Cf, MemEngine, ScanRange};
    use crate::raftstore::lease_clock::LeaseClock;
    use crate::raftstore::local_reader::LocalReader;
    use crate::raftstore::store::RoundCx;
    use mnemo_raft_driver::round::Round;

    const LEASE: Duration = Duration::from_millis(800);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The store's ready round (`mnemo_raft_driver::round`) for one peer,
    /// until it has nothing left; returns the messages it sends.
    fn drive(
        p: &mut Peer,
        kv: &EngineRef,
        raft: &EngineRef,
        now: Now,
        replies: &mut Vec<Reply>,
    ) -> Vec<RaftMsg> {
        let metrics = crate::metrics::Metrics::default();
        while p.raw.has_ready() {
            let mut cx = RoundCx { kv, metrics: &metrics, replies, now: Some(now), pool: None };
            let mut round = Round::new();
            round.collect((), p, &mut cx).unwrap();
            let (readies, _) = round.persist(kv.as_ref(), raft.as_ref()).unwrap();
            for ((), ready) in readies {
                round.advance(p, ready, &mut cx).unwrap();
            }
            round.finish(kv.as_ref(), raft.as_ref()).unwrap();
            // As the store does once the round's writes are in.
            p.publish_reads();
        }
        p.outbox.drain(..).map(|(_, m)| m).collect()
    }

    /// The only voter of its region, elected, with its first entry applied.
    fn leader(now: Now) -> (Peer, EngineRef, EngineRef) {
        let me = PeerMeta { id: PeerId(11), store_id: StoreId(1), role: PeerRole::Voter };
        let (mut p, kv, raft) = replica(me, vec![me]);
        p.raw.campaign().unwrap();
        drive(&mut p, &kv, &raft, now, &mut Vec::new());
        assert!(p.is_leader());
        (p, kv, raft)
    }

    /// Peer `me` of region 1 (voters `peers`), bootstrapped on fresh engines.
    fn replica(me: PeerMeta, peers: Vec<PeerMeta>) -> (Peer, EngineRef, EngineRef) {
        let (kv, raft): (EngineRef, EngineRef) = (Arc::new(MemEngine::new()), Arc::new(MemEngine::new()));
        let region = Region {
            id: RegionId(1),
            epoch: RegionEpoch { conf_ver: 1, version: 1 },
            peers,
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
            max_uncommitted_size: 128 << 20,
            hibernate: false,
            plants: Default::default(),
        };
        let p = Peer::new(me, storage, cfg, &crate::logging::raft_logger()).unwrap();
        (p, kv, raft)
    }

    /// Three replicas of one region, wired by hand: `cut(from, to)` drops a message.
    struct Trio {
        peers: Vec<(Peer, EngineRef, EngineRef)>,
    }

    impl Trio {
        fn new() -> Trio {
            let metas: Vec<PeerMeta> = (1..=3)
                .map(|i| PeerMeta { id: PeerId(10 + i), store_id: StoreId(i), role: PeerRole::Voter })
                .collect();
            Trio { peers: metas.iter().map(|m| replica(*m, metas.clone())).collect() }
        }

        fn peer(&mut self, id: u64) -> &mut Peer {
            &mut self.peers[(id - 11) as usize].0
        }

        /// Runs readies and delivers messages (with the sender's
        /// hibernation flag, as the store does) until everything is quiet.
        /// Returns the number of messages sent.
        fn settle(&mut self, now: Now, cut: &dyn Fn(u64, u64) -> bool, replies: &mut Vec<Reply>) -> usize {
            let mut sent = 0;
            loop {
                let mut msgs = Vec::new();
                for (p, kv, raft) in self.peers.iter_mut() {
                    let out = drive(p, kv, raft, now, replies);
                    msgs.extend(out.into_iter().map(|m| (m, p.hibernating)));
                }
                if msgs.is_empty() {
                    return sent;
                }
                sent += msgs.len();
                for (m, hibernate) in msgs {
                    if !cut(m.from, m.to) {
                        let to = self.peer(m.to);
                        to.observe_hibernation(PeerId(m.from), hibernate);
                        let _ = to.step(m);
                    }
                }
            }
        }

        /// Three replicas that hibernate when idle, 11 elected.
        fn hibernating(now: Now) -> Trio {
            let mut trio = Trio::new();
            for (p, _, _) in trio.peers.iter_mut() {
                p.cfg.hibernate = true;
            }
            trio.peer(11).raw.campaign().unwrap();
            trio.settle(now, &|_, _| false, &mut Vec::new());
            assert!(trio.peer(11).is_leader());
            trio
        }

        /// Base ticks `ticks` for the peers `who`, settling after each;
        /// returns the messages sent.
        fn tick(
            &mut self,
            ticks: std::ops::Range<u64>,
            who: &[u64],
            now: Now,
            cut: &dyn Fn(u64, u64) -> bool,
        ) -> usize {
            let mut sent = 0;
            for t in ticks {
                for id in who {
                    self.peer(*id).on_base_tick(t);
                }
                sent += self.settle(now, cut, &mut Vec::new());
            }
            sent
        }

        fn terms(&mut self) -> Vec<u64> {
            (11..=13).map(|id| self.peer(id).raw.raft.term).collect()
        }

        fn leaders(&mut self) -> Vec<u64> {
            (11..=13).filter(|id| self.peer(*id).is_leader()).collect()
        }
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
        Now { real, lease: clock.at(real), wall_ms: crate::keys::now_unix_ms() }
    }

    fn put_with_ttl(p: &Peer, key: &[u8], value: &[u8], expire_at_ms: u64) -> RaftCommand {
        use mnemo_proto::raft_serverpb::{Mutation, MutationOp};
        RaftCommand {
            header: Some(RaftRequestHeader {
                region_epoch: Some(p.region().epoch.into()),
                ..Default::default()
            }),
            mutations: vec![Mutation {
                op: MutationOp::Put as i32,
                key: key.to_vec(),
                value: value.to_vec(),
                expire_at_ms,
            }],
            ..Default::default()
        }
    }

    fn cas_cmd(p: &Peer, key: &[u8], expect: &[u8], new: &[u8]) -> RaftCommand {
        use mnemo_proto::raft_serverpb::CompareAndSwap;
        RaftCommand {
            header: Some(RaftRequestHeader {
                region_epoch: Some(p.region().epoch.into()),
                ..Default::default()
            }),
            cas: Some(CompareAndSwap {
                key: key.to_vec(),
                previous_not_exist: false,
                previous_value: expect.to_vec(),
                value: new.to_vec(),
                expire_at_ms: 0,
            }),
            ..Default::default()
        }
    }

    /// Proposes `cmd` at `now`, drives the peer, returns the write's outcome.
    fn write(p: &mut Peer, kv: &EngineRef, raft: &EngineRef, cmd: RaftCommand, now: Now) -> WriteOutcome {
        let (cb, mut rx) = oneshot::channel();
        let mut replies = Vec::new();
        p.propose_write(cmd, now, cb, &mut replies);
        p.propose_write_batch(now, &mut replies);
        drive(p, kv, raft, now, &mut replies);
        crate::raftstore::store::deliver(replies);
        rx.try_recv().expect("answered").expect("applied")
    }

    fn dump(e: &EngineRef) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for cf in Cf::ALL {
            e.scan(cf, ScanRange { start: b"", end: b"", reverse: false }, &mut |k, v| {
                out.push((cf, k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn apply_judges_ttls_by_the_proposers_stamp_so_replicas_never_diverge() {
        // The leader proposes at a wall time long past (as if this log were
        // replayed years later, or applied by a follower whose clock runs
        // far ahead): a value with a TTL, then a CAS before it expires.
        let mut now = now_on(&LeaseClock::real(), Instant::now());
        now.wall_ms = 1_600_000_000_000;
        let (mut p, kv, raft) = leader(now);
        let put = put_with_ttl(&p, b"k", b"live", now.wall_ms + 1_000);
        assert_eq!(write(&mut p, &kv, &raft, put, now), WriteOutcome::Done);
        now.wall_ms += 500;
        let cas = cas_cmd(&p, b"k", b"live", b"swapped");
        // At the stamp the value is live: the CAS swaps, whatever the clock
        // of the node applying it says.
        assert_eq!(
            write(&mut p, &kv, &raft, cas, now),
            WriteOutcome::Cas { succeed: true, previous: Some(b"live".to_vec()) }
        );

        // Replay the same log on a second replica, now: byte-identical state.
        let entries = {
            let s = p.raw.store();
            raft::Storage::entries(
                s,
                s.apply_state.truncated_index + 1,
                s.last_index_now() + 1,
                None,
                raft::GetEntriesContext::empty(false),
            )
            .unwrap()
        };
        let (kv2, raft2): (EngineRef, EngineRef) = (Arc::new(MemEngine::new()), Arc::new(MemEngine::new()));
        let region = Region { peers: vec![p.meta], ..p.region().clone() };
        let (mut kv_wb, mut raft_wb) = (WriteBatch::new(), WriteBatch::new());
        storage::write_initial_state(&region, &mut kv_wb, &mut raft_wb);
        kv2.write(&kv_wb, true).unwrap();
        raft2.write(&raft_wb, true).unwrap();
        let storage = PeerStorage::open(kv2.clone(), raft2.clone(), region).unwrap();
        let mut replica = Peer::new(p.meta, storage, p.cfg.clone(), &crate::logging::raft_logger()).unwrap();
        let mut kv_wb = WriteBatch::new();
        replica.apply_entries(entries, &kv2, &mut kv_wb, &mut Vec::new()).unwrap();
        kv2.write(&kv_wb, true).unwrap();
        assert_eq!(dump(&kv), dump(&kv2));
        assert_eq!(
            crate::raftstore::apply::read_live(kv2.as_ref(), b"k", now.wall_ms).unwrap(),
            Some(b"swapped".to_vec())
        );
    }

    fn remove_node(id: PeerId) -> ConfChangeV2 {
        let mut single = raft::eraftpb::ConfChangeSingle::default();
        single.set_change_type(ConfChangeType::RemoveNode);
        single.node_id = id.0;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        cc
    }

    /// A lease read now: the time it judges expiry at.
    fn read_time(p: &mut Peer, now: Now) -> u64 {
        let (cb, mut rx) = oneshot::channel();
        let mut replies = Vec::new();
        p.read(p.region().epoch, now, cb, &mut replies);
        crate::raftstore::store::deliver(replies);
        rx.try_recv().expect("answered at once").expect("granted").now_ms
    }

    #[test]
    fn reads_judge_expiry_in_the_order_writes_take_effect() {
        let mut now = now_on(&LeaseClock::real(), Instant::now());
        now.wall_ms = 1_000;
        let (mut p, kv, raft) = leader(now);
        // A value expiring at 1,500, and a lease (from this write's round).
        let put = put_with_ttl(&p, b"k", b"v", 1_500);
        assert_eq!(write(&mut p, &kv, &raft, put, now), WriteOutcome::Done);
        // A CAS stamped 1,400 (the value is live then) is proposed, and not
        // yet applied when a read arrives at 2,000.
        now.wall_ms = 1_400;
        let (cb, _rx) = oneshot::channel();
        p.propose_write(cas_cmd(&p, b"k", b"v", b"w"), now, cb, &mut Vec::new());
        now.wall_ms = 2_000;
        // The read judges expiry before the CAS's stamp: it may not find the
        // value gone, which the CAS, applied after it, will not.
        let at = read_time(&mut p, now);
        assert!((1_000..1_400).contains(&at), "read judged at {at}");
        // Once the CAS applied, reads judge by the clock again.
        drive(&mut p, &kv, &raft, now, &mut Vec::new());
        assert_eq!(read_time(&mut p, now), 2_000);
    }

    #[test]
    fn a_conf_change_raft_refuses_is_a_no_op_at_apply_and_refused_at_propose() {
        let now = now_on(&LeaseClock::real(), Instant::now());
        let (mut p, kv, raft) = leader(now);
        let before = p.region().clone();
        // Removing the only voter: raft-rs refuses it. At propose time the
        // same check refuses it before it reaches the log...
        let cc = remove_node(p.meta.id);
        assert!(validate_conf_change(p.raw.raft.prs(), &cc).is_err());
        // ...and should one be in the log anyway (proposed by an older
        // version, or raw), every replica skips it alike instead of stopping.
        let ctx = before.epoch.conf_ver.to_be_bytes().to_vec();
        p.raw.propose_conf_change(ctx, cc).unwrap();
        drive(&mut p, &kv, &raft, now, &mut Vec::new());
        assert_eq!(p.region(), &before, "a refused change leaves the region as it was");
        assert!(!p.pending_remove);
        assert!(p.is_leader());
        // The region still takes writes.
        let put = put_with_ttl(&p, b"k", b"v", 0);
        assert_eq!(write(&mut p, &kv, &raft, put, now), WriteOutcome::Done);
    }

    #[test]
    fn a_round_that_overlapped_an_aborted_transfer_does_not_revive_the_lease() {
        let clock = LeaseClock::real();
        let t0 = now_on(&clock, Instant::now());
        let none = |_: u64, _: u64| false;
        // 11 leads 12 and 13, with its first entry applied.
        let mut trio = Trio::new();
        trio.peer(11).raw.campaign().unwrap();
        trio.settle(t0, &none, &mut Vec::new());
        assert!(trio.peer(11).is_leader());
        // 11 loses its link to 12 and starts handing leadership to it: the
        // MsgTimeoutNow is lost, the transfer hangs.
        let cut = |a: u64, b: u64| (a == 11 && b == 12) || (a == 12 && b == 11);
        trio.peer(11).transfer_leader(PeerId(12));
        assert!(trio.peer(11).raw.raft.lead_transferee.is_some());
        // A read during the transfer: its ReadIndex round completes through
        // 13 (the read itself is fine: 13 confirmed 11 at that moment)...
        let t1 = now_on(&clock, t0.real + ms(10));
        let (cb, mut rx) = oneshot::channel();
        let mut replies = Vec::new();
        let epoch = trio.peer(11).region().epoch;
        trio.peer(11).read(epoch, t1, cb, &mut replies);
        trio.settle(t1, &cut, &mut replies);
        crate::raftstore::store::deliver(replies);
        assert!(matches!(rx.try_recv(), Ok(Ok(_))), "the read was served by ReadIndex");
        assert!(!trio.peer(11).lease_valid(t1.lease), "no lease during a transfer");
        // ...but after raft-rs aborts the transfer (an election timeout
        // later) that round must not count as a lease: the target may have
        // been elected meanwhile.
        for tick in 1..=10 {
            trio.peer(11).on_base_tick(tick);
            trio.settle(t1, &cut, &mut Vec::new());
        }
        assert!(trio.peer(11).raw.raft.lead_transferee.is_none(), "transfer aborted");
        assert!(trio.peer(11).is_leader());
        let t2 = now_on(&clock, t1.real + ms(20));
        assert!(!trio.peer(11).lease_valid(t2.lease), "a round from the transfer revived the lease");
        // Nor does a round completed within an election timeout of the abort
        // (a late MsgTimeoutNow may still elect the target)...
        let read = |trio: &mut Trio, at: Now| {
            let (cb, mut rx) = oneshot::channel();
            let mut replies = Vec::new();
            trio.peer(11).read(epoch, at, cb, &mut replies);
            trio.settle(at, &cut, &mut replies);
            crate::raftstore::store::deliver(replies);
            assert!(matches!(rx.try_recv(), Ok(Ok(_))), "served by ReadIndex");
        };
        read(&mut trio, t2);
        assert!(!trio.peer(11).lease_valid(t2.lease));
        for tick in 11..=20 {
            trio.peer(11).on_base_tick(tick);
            trio.settle(t2, &cut, &mut Vec::new());
        }
        // ...but a round started after that gives a lease again.
        let t3 = now_on(&clock, t2.real + ms(20));
        read(&mut trio, t3);
        assert!(trio.peer(11).lease_valid(t3.lease));
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
        p.stale_read(p.region().epoch, t0, stale_cb, &mut replies);
        let old = RegionEpoch { version: 0, ..p.region().epoch };
        let (old_cb, mut old_rx) = oneshot::channel();
        p.stale_read(old, t0, old_cb, &mut replies);
        crate::raftstore::store::deliver(replies);
        assert!(matches!(rx.try_recv(), Ok(Err(Error::NotLeader { .. }))));
        assert!(matches!(stale_rx.try_recv(), Ok(Ok(g)) if g.region.id == RegionId(1)));
        assert!(matches!(old_rx.try_recv(), Ok(Err(Error::EpochNotMatch { .. }))));
    }

    /// A Now an hour ahead: a lease a quorum round confirms then covers the
    /// whole test on the real lease clock, however slow the machine.
    fn an_hour_ahead(clock: &LeaseClock) -> Now {
        now_on(clock, Instant::now() + Duration::from_secs(3600))
    }

    /// Starts a read at `at` and runs the peer: the round confirms a lease.
    fn confirm_lease(p: &mut Peer, kv: &EngineRef, raft: &EngineRef, at: Now) {
        let (cb, _rx) = oneshot::channel();
        let mut replies = Vec::new();
        p.read(p.region().epoch, at, cb, &mut replies);
        drive(p, kv, raft, at, &mut replies);
        assert!(p.lease_valid(at.lease));
    }

    #[test]
    fn the_local_reader_lends_the_lease_until_a_transfer_starts() {
        let clock = LeaseClock::real();
        let later = an_hour_ahead(&clock);
        let none = |_: u64, _: u64| false;
        let mut trio = Trio::new();
        trio.peer(11).raw.campaign().unwrap();
        trio.settle(later, &none, &mut Vec::new());
        let reader = LocalReader::new(clock.clone());
        reader.register(RegionId(1), trio.peer(11).reads_delegate());
        let epoch = trio.peer(11).region().epoch;
        // Elected, but no quorum round yet: no lease to lend.
        assert!(reader.read(RegionId(1), epoch).is_none());
        // A ReadIndex round confirms one, and the reader lends it.
        let (cb, _rx) = oneshot::channel();
        let mut replies = Vec::new();
        trio.peer(11).read(epoch, later, cb, &mut replies);
        trio.settle(later, &none, &mut replies);
        assert!(trio.peer(11).lease_valid(later.lease));
        assert!(reader.read(RegionId(1), epoch).is_some());
        // A read for another range version is the store loop's to refuse.
        assert!(reader.read(RegionId(1), RegionEpoch { version: 2, ..epoch }).is_none());
        // A transfer starts: the lease is gone at once, before the round
        // that sends anything to the target.
        trio.peer(11).transfer_leader(PeerId(12));
        assert!(reader.read(RegionId(1), epoch).is_none());
    }

    #[test]
    fn writes_are_stamped_above_local_reads_and_a_deposed_leader_lends_nothing() {
        let clock = LeaseClock::real();
        let mut later = an_hour_ahead(&clock);
        // The store loop's wall clock is far behind the reader's.
        later.wall_ms = 1_000;
        let (mut p, kv, raft) = leader(later);
        let reader = LocalReader::new(clock.clone());
        reader.register(RegionId(1), p.reads_delegate());
        confirm_lease(&mut p, &kv, &raft, later);
        let epoch = p.region().epoch;
        let first = reader.read(RegionId(1), epoch).expect("lease lent");
        // A read on the store loop's path, whose clock is far behind, is
        // judged no earlier than that one.
        let (cb, mut rx) = oneshot::channel();
        let mut replies = Vec::new();
        p.read(epoch, later, cb, &mut replies);
        crate::raftstore::store::deliver(replies);
        let on_loop = rx.try_recv().expect("answered at once").expect("granted");
        assert!(on_loop.now_ms >= first.now_ms);
        // A write proposed after that read is stamped above it, whatever
        // the proposer's clock says...
        let (cb, _rx) = oneshot::channel();
        let mut replies = Vec::new();
        p.propose_write(put_with_ttl(&p, b"k", b"v", 0), later, cb, &mut replies);
        p.propose_write_batch(later, &mut replies);
        let stamp = p.last_stamp_ms;
        assert!(stamp > first.now_ms);
        // ...and while it is in flight, reads are judged below it, but
        // never below an earlier read.
        let during = reader.read(RegionId(1), epoch).expect("lease lent");
        assert!(first.now_ms <= during.now_ms && during.now_ms < stamp);
        // Applied: judged at or above its stamp.
        drive(&mut p, &kv, &raft, later, &mut replies);
        assert!(reader.read(RegionId(1), epoch).expect("lease lent").now_ms >= stamp);
        // Deposed: nothing lent, although its lease has not run out.
        p.raw.raft.become_follower(p.raw.raft.term + 1, raft::INVALID_ID);
        drive(&mut p, &kv, &raft, later, &mut Vec::new());
        assert!(reader.read(RegionId(1), epoch).is_none());
    }

    /// Puts a hibernating trio to sleep: two election timeouts idle, then
    /// stretched heartbeats until both followers agreed.
    fn asleep_trio(now: Now) -> Trio {
        let mut trio = Trio::hibernating(now);
        let none = |_: u64, _: u64| false;
        trio.tick(1..100, &[11, 12, 13], now, &none);
        for id in 11..=13 {
            assert!(trio.peer(id).asleep(), "peer {id} still ticks");
        }
        trio
    }

    #[test]
    fn an_idle_region_falls_silent_once_both_followers_agreed_and_a_write_wakes_it() {
        let now = now_on(&LeaseClock::real(), Instant::now());
        let none = |_: u64, _: u64| false;
        let mut trio = asleep_trio(now);
        // Asleep: ten seconds of ticks, not one message.
        assert_eq!(trio.tick(100..200, &[11, 12, 13], now, &none), 0);
        // A write wakes the leader, and its append the followers.
        let put = put_with_ttl(trio.peer(11), b"k", b"v", 0);
        let (cb, mut rx) = oneshot::channel();
        let mut replies = Vec::new();
        trio.peer(11).propose_write(put, now, cb, &mut replies);
        trio.peer(11).propose_write_batch(now, &mut replies);
        trio.settle(now, &none, &mut replies);
        crate::raftstore::store::deliver(replies);
        assert!(matches!(rx.try_recv(), Ok(Ok(WriteOutcome::Done))));
        for id in 11..=13 {
            assert!(!trio.peer(id).hibernating, "peer {id} still hibernates");
        }
    }

    #[test]
    fn a_follower_woken_alone_changes_no_term() {
        let now = now_on(&LeaseClock::real(), Instant::now());
        let none = |_: u64, _: u64| false;
        let mut trio = asleep_trio(now);
        let terms = trio.terms();
        // 12's store missed 11's store's pings for a while: the store wakes
        // 12 alone, which tells 11; the unflagged message wakes 11.
        trio.peer(12).wake_and_poke_leader();
        trio.settle(now, &none, &mut Vec::new());
        assert!(!trio.peer(11).hibernating, "the poke did not wake the leader");
        // Even had the poke been lost: 12, hearing nothing from a sleeping
        // leader, campaigns; 13 refuses (its leader is alive as far as it
        // knows), and 11's heartbeats bring 12 back. Nothing changed...
        trio.peer(11).hibernating = true;
        trio.tick(200..400, &[11, 12, 13], now, &none);
        assert_eq!(trio.terms(), terms);
        assert_eq!(trio.leaders(), vec![11]);
        assert_eq!(trio.peer(12).raw.raft.leader_id, 11);
        // ...and the idle region went back to sleep.
        assert_eq!(trio.tick(400..500, &[11, 12, 13], now, &none), 0);
    }

    #[test]
    fn followers_woken_by_their_leaders_silence_elect_a_new_leader() {
        let now = now_on(&LeaseClock::real(), Instant::now());
        let mut trio = asleep_trio(now);
        let term = trio.peer(11).raw.raft.term;
        // 11's store is gone: the store wakes 12 and 13 (its pings stopped).
        let gone = |a: u64, b: u64| a == 11 || b == 11;
        trio.peer(12).wake();
        trio.peer(13).wake();
        trio.tick(200..400, &[12, 13], now, &gone);
        let new_leader: Vec<u64> = [12, 13].into_iter().filter(|id| trio.peer(*id).is_leader()).collect();
        assert_eq!(new_leader.len(), 1, "no leader among 12 and 13");
        assert!(trio.peer(new_leader[0]).raw.raft.term > term);
    }

    #[test]
    fn a_restarted_leader_and_its_sleeping_followers_elect_a_leader() {
        let now = now_on(&LeaseClock::real(), Instant::now());
        let none = |_: u64, _: u64| false;
        let mut trio = asleep_trio(now);
        let term = trio.peer(11).raw.raft.term;
        // 11's node restarts at once (its store never looked silent): its
        // peer comes back a follower with no leader, the others sleep on.
        let (old, kv, raft) = &trio.peers[0];
        let (me, region, cfg) = (old.meta, old.region().clone(), old.cfg.clone());
        let storage = PeerStorage::open(kv.clone(), raft.clone(), region).unwrap();
        trio.peers[0].0 = Peer::new(me, storage, cfg, &crate::logging::raft_logger()).unwrap();
        // 11 campaigns; its first message wakes 12 and 13 (it comes from
        // their leader, unflagged), and within a few election timeouts one
        // of the three leads in a newer term.
        trio.tick(200..300, &[11, 12, 13], now, &none);
        assert_eq!(trio.leaders().len(), 1, "no leader");
        assert!(trio.terms().iter().all(|t| *t > term));
    }
}
