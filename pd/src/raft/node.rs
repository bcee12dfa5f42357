//! The raft thread of a PD member: ticks, steps messages, proposes, and
//! drives one ready round at a time (`mnemo_raft_driver::round`).

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mnemo_engine::{EngineRef, WriteBatch};
use mnemo_raft_driver::round::{Group, Round};
use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, HardState, Message, MessageType, Snapshot,
};
use raft::{RawNode, ReadState, SoftState, StateRole};
use tracing::{debug, error, info, warn};

use super::storage::PdRaftStorage;
use super::{GroupStatus, Input, MemberChange, PeerTransport, RaftHandle};
use crate::error::{Error, Result};
use crate::member::Member;
use crate::meta::{Command, SharedMeta, StateMachine};

/// How the PD group runs (PD's config keys `tick-interval`,
/// `election-interval`, and how much log a member keeps).
#[derive(Clone, Debug)]
pub struct RaftSettings {
    /// One raft tick (heartbeats go out every tick).
    pub tick: Duration,
    /// Election timeout: a follower that heard nothing from a leader for
    /// this long (randomized up to twice) campaigns.
    pub election: Duration,
    /// Applied entries kept in the log before it is compacted; a member
    /// further behind gets a snapshot.
    pub log_keep: u64,
    /// How long a proposer waits for its command to be applied.
    pub propose_timeout: Duration,
}

impl RaftSettings {
    fn election_ticks(&self) -> usize {
        ((self.election.as_millis() / self.tick.as_millis().max(1)) as usize).max(3)
    }

    /// How long after a quorum answered a lease probe the leader may serve.
    fn lease(&self) -> Duration {
        (self.tick * self.election_ticks() as u32).saturating_sub(self.tick * 2)
    }
}

/// Starts the raft thread of member `me` over `engine` (which holds the
/// metadata `sm` was loaded from). `voters` is the initial group, used only
/// on the very first start.
pub(crate) fn start(
    me: Member,
    voters: &[u64],
    engine: EngineRef,
    sm: SharedMeta,
    transport: PeerTransport,
    settings: RaftSettings,
) -> Result<(RaftHandle, mpsc::Sender<Input>, std::thread::JoinHandle<()>)> {
    let storage = PdRaftStorage::open(engine.clone(), voters)?;
    let applied = storage.apply_state.applied_index;
    let cfg = raft::Config {
        id: me.member_id,
        election_tick: settings.election_ticks(),
        heartbeat_tick: 1,
        applied,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..Default::default()
    };
    cfg.validate().map_err(|e| Error::Config(format!("PD raft: {e}")))?;
    let raw = RawNode::new(&cfg, storage, &mnemo_raft_driver::logging::raft_logger())
        .map_err(|e| Error::Config(format!("PD raft: {e}")))?;
    let status = Arc::new(Mutex::new(GroupStatus::default()));
    let infos = Arc::new(Mutex::new(BTreeMap::new()));
    let (tx, rx) = mpsc::channel();
    let handle = RaftHandle {
        tx: tx.clone(),
        status: status.clone(),
        infos: infos.clone(),
        propose_timeout: settings.propose_timeout,
    };
    let mut group = PdGroup {
        raw,
        me: me.member_id,
        sm,
        engine,
        transport,
        status,
        infos,
        pending: HashMap::new(),
        next_proposal: 1,
        boot: rand::random::<u64>() | 1,
        started: Instant::now(),
        last_heard: HashMap::new(),
        removed: std::collections::HashSet::new(),
        cluster_id: 0,
        foreign_dropped: 0,
        foreign_warned: None,
        probe: None,
        probe_seq: 0,
        lease_until: None,
        term_start: u64::MAX,
        settings,
    };
    // A lone voter need not wait an election timeout to lead.
    if group.raw.store().conf_state.voters == [me.member_id] {
        let _ = group.raw.campaign();
    }
    group.learn_cluster_id();
    group.publish();
    let thread = std::thread::Builder::new()
        .name("pd-raft".into())
        .spawn(move || {
            if let Err(e) = group.run(rx) {
                // A member that cannot write its log or metadata must not go
                // on (see the module docs): the panic policy ends the process.
                error!(error = %e, "PD raft thread failed");
                panic!("PD raft thread failed: {e}");
            }
        })
        .map_err(Error::Io)?;
    Ok((handle, tx, thread))
}

struct PdGroup {
    raw: RawNode<PdRaftStorage>,
    me: u64,
    sm: SharedMeta,
    engine: EngineRef,
    transport: PeerTransport,
    status: Arc<Mutex<GroupStatus>>,
    infos: Arc<Mutex<BTreeMap<u64, Member>>>,
    /// Proposals of this member waiting for their entry to apply, by the
    /// sequence number their entry's context carries.
    pending: HashMap<u64, mpsc::SyncSender<Result<()>>>,
    next_proposal: u64,
    /// Random per start: an entry proposed before a restart never answers
    /// a proposal made after it with the same sequence number.
    boot: u64,
    started: Instant,
    /// When each member's raft messages last arrived.
    last_heard: HashMap<u64, Instant>,
    /// Members this one applied the removal of (since it started; an id
    /// added again leaves the set).
    removed: std::collections::HashSet<u64>,
    /// Our applied cluster id once known (it never changes after), as the
    /// transport stamps it on what we send.
    cluster_id: u64,
    /// Batches from members of another cluster dropped, and when that was
    /// last logged.
    foreign_dropped: u64,
    foreign_warned: Option<Instant>,
    /// The lease probe in flight: its sequence number and when it was sent.
    probe: Option<(u64, Instant)>,
    probe_seq: u64,
    lease_until: Option<Instant>,
    /// Index of the first entry of this leader's term.
    term_start: u64,
    settings: RaftSettings,
}

/// Answers to send once the round is durable.
#[derive(Default)]
struct RoundCx {
    answers: Vec<(mpsc::SyncSender<Result<()>>, Result<()>)>,
}

/// Entry context of a proposal: proposer member id, its start's random
/// number, then its sequence number. (Not part of what is applied.)
fn proposal_context(member: u64, boot: u64, seq: u64) -> Vec<u8> {
    [member.to_be_bytes(), boot.to_be_bytes(), seq.to_be_bytes()].concat()
}

fn parse_context(ctx: &[u8]) -> Option<(u64, u64, u64)> {
    if ctx.len() != 24 {
        return None;
    }
    let word = |i: usize| ctx[i * 8..(i + 1) * 8].try_into().ok().map(u64::from_be_bytes);
    Some((word(0)?, word(1)?, word(2)?))
}

impl PdGroup {
    fn run(&mut self, rx: mpsc::Receiver<Input>) -> Result<()> {
        let mut next_tick = Instant::now() + self.settings.tick;
        // A lone voter campaigned at start: become leader without waiting.
        self.handle_ready()?;
        self.publish();
        loop {
            let now = Instant::now();
            let wait = next_tick.saturating_duration_since(now);
            let mut inputs = Vec::new();
            match rx.recv_timeout(wait) {
                Ok(i) => inputs.push(i),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
            while let Ok(i) = rx.try_recv() {
                inputs.push(i);
            }
            for input in inputs {
                match input {
                    Input::Stop => {
                        self.fail_pending("PD member stopping");
                        return Ok(());
                    }
                    Input::Raft(msgs, from, their_cluster) => {
                        if self.is_foreign(&from, their_cluster) {
                            continue;
                        }
                        if self.removed.contains(&from.member_id) {
                            // A removed member that keeps running must not
                            // disturb the group (etcd refuses it too). Only
                            // removed ids: a member not yet applying an add
                            // must still hear the new member (it may lead).
                            debug!(from = %from.name, "raft messages from a removed member dropped");
                            continue;
                        }
                        if from.member_id != 0 {
                            self.last_heard.insert(from.member_id, Instant::now());
                            self.infos.lock().insert(from.member_id, from);
                        }
                        for m in msgs {
                            if self.fresh_from_restart(&m) {
                                continue;
                            }
                            if let Err(e) = self.raw.step(m) {
                                warn!(error = %e, "PD raft message refused");
                            }
                        }
                    }
                    Input::Propose { data, done } => self.propose(data, done),
                    Input::ChangeMember { change, done } => self.propose_member_change(change, done),
                    Input::SnapshotStatus(to, status) => self.raw.report_snapshot(to, status),
                    Input::Unreachable(to) => self.raw.report_unreachable(to),
                    Input::TransferLeader(to) => {
                        if self.raw.raft.state == StateRole::Leader && to != self.me {
                            info!(to, "transferring PD leadership");
                            self.raw.transfer_leader(to);
                            // The target may be elected at once, lease or not:
                            // stop serving before anything is sent to it.
                            self.drop_lease_if_transferring();
                            self.publish();
                        }
                    }
                }
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + self.settings.tick;
                self.raw.tick();
                self.probe_lease();
            }
            self.drop_lease_if_transferring();
            self.handle_ready()?;
            if self.lease_until.is_none() && self.probe.is_none() && self.caught_up() {
                // A new leader need not wait a tick for its first lease.
                self.probe_lease();
                self.handle_ready()?;
            }
            self.maybe_compact()?;
            self.publish();
        }
    }

    fn propose(&mut self, data: Vec<u8>, done: mpsc::SyncSender<Result<()>>) {
        self.submit(done, |raw, ctx| {
            raw.propose(ctx, data).map_err(|e| Error::NotLeader(format!("proposal dropped: {e}")))
        });
    }

    /// Proposes with `propose` (given the entry context) on a leader, and
    /// keeps `done` to answer once the entry applies; answers at once if
    /// this member does not lead or raft refuses.
    fn submit(
        &mut self,
        done: mpsc::SyncSender<Result<()>>,
        propose: impl FnOnce(&mut RawNode<PdRaftStorage>, Vec<u8>) -> Result<()>,
    ) {
        if self.raw.raft.state != StateRole::Leader || self.raw.raft.lead_transferee.is_some() {
            let _ = done.send(Err(Error::NotLeader("this PD member does not lead".into())));
            return;
        }
        let seq = self.next_proposal;
        self.next_proposal += 1;
        match propose(&mut self.raw, proposal_context(self.me, self.boot, seq)) {
            Ok(()) => {
                self.pending.insert(seq, done);
            }
            Err(e) => {
                let _ = done.send(Err(e));
            }
        }
    }

    /// A leader renews its lease with a ReadIndex round each tick (one in
    /// flight at a time; a round unanswered for an election timeout is
    /// given up).
    fn probe_lease(&mut self) {
        // raft-rs ignores ReadIndex before the leader committed an entry of
        // its term; until then there is nothing to serve anyway. During a
        // leader transfer the target may win without the lease running out:
        // no lease is held or renewed then, and only a probe sent after the
        // transfer ended (succeeded or was given up) counts.
        if !self.caught_up() || self.raw.raft.lead_transferee.is_some() {
            return;
        }
        let now = Instant::now();
        if let Some((_, sent)) = self.probe {
            if now.duration_since(sent) < self.settings.election {
                return;
            }
        }
        self.probe_seq += 1;
        self.probe = Some((self.probe_seq, now));
        self.raw.read_index(self.probe_seq.to_be_bytes().to_vec());
    }

    fn handle_ready(&mut self) -> Result<()> {
        let mut round = Round::new();
        let mut cx = RoundCx::default();
        round.collect((), self, &mut cx)?;
        let engine = self.engine.clone();
        let (readies, _) = round.persist(engine.as_ref(), engine.as_ref())?;
        for ((), ready) in readies {
            round.advance(self, ready, &mut cx)?;
        }
        round.finish(engine.as_ref(), engine.as_ref())?;
        for (done, r) in cx.answers {
            let _ = done.send(r);
        }
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<()> {
        let st = self.raw.store().apply_state;
        let keep = self.settings.log_keep.max(1);
        if st.applied_index > st.truncated_index + 2 * keep {
            let to = st.applied_index - keep;
            self.raw.mut_store().compact_to(to)?;
        }
        Ok(())
    }

    /// While a leader transfer is under way this member holds no lease and
    /// no probe in flight counts.
    fn drop_lease_if_transferring(&mut self) {
        if self.raw.raft.lead_transferee.is_some() {
            self.lease_until = None;
            self.probe = None;
        }
    }

    /// True for a vote request within one election interval of this
    /// member's start, which is dropped: before the restart it may have
    /// answered the leader's lease probe, and that leader may serve for up
    /// to an election interval on it; raft's own vote refusal (check-quorum)
    /// is forgotten with the restart.
    fn fresh_from_restart(&self, m: &Message) -> bool {
        let vote = matches!(m.get_msg_type(), MessageType::MsgRequestVote | MessageType::MsgRequestPreVote);
        vote && self.started.elapsed() < self.settings.election
    }

    /// Queues the answer to this member's proposal of `e`, if it made it
    /// since its start and still waits.
    fn answer(&mut self, e: &Entry, r: Result<()>, cx: &mut RoundCx) {
        let Some((member, boot, seq)) = parse_context(&e.context) else { return };
        if member == self.me && boot == self.boot {
            if let Some(done) = self.pending.remove(&seq) {
                cx.answers.push((done, r));
            }
        }
    }

    /// Voters heard from within an election interval (this member always).
    fn active_voters(&self) -> Vec<u64> {
        let now = Instant::now();
        let heard = |id: &u64| {
            *id == self.me
                || self.last_heard.get(id).is_some_and(|t| now.duration_since(*t) < self.settings.election)
        };
        self.raw.store().conf_state.voters.iter().copied().filter(heard).collect()
    }

    /// A leader that applied its own term's first entry.
    fn caught_up(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
            && self.raw.store().apply_state.applied_index >= self.term_start
    }

    fn fail_pending(&mut self, why: &str) {
        for (_, done) in self.pending.drain() {
            let _ = done.send(Err(Error::NotLeader(why.into())));
        }
    }

    /// True (counted, and logged at most every 10 s) if `from` belongs to
    /// another cluster: both sides know their cluster id and they differ.
    /// Such a member (e.g. one restarted on a data directory left from an
    /// earlier cluster, whose log may well carry a higher term) must not
    /// win an election here and overwrite this cluster's metadata with its
    /// own; it drops our messages the same way.
    fn is_foreign(&mut self, from: &Member, theirs: u64) -> bool {
        self.learn_cluster_id();
        if theirs == 0 || self.cluster_id == 0 || theirs == self.cluster_id {
            return false;
        }
        self.foreign_dropped += 1;
        if self.foreign_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            warn!(
                from = %from.name,
                their_cluster_id = theirs,
                cluster_id = self.cluster_id,
                "raft messages from a member of another cluster dropped: one of the two data directories \
                 belongs to another cluster (remove it and let the member join again)"
            );
            self.foreign_warned = Some(Instant::now());
        }
        true
    }

    /// Learns our cluster id once it is applied (it never changes after)
    /// and stamps it on what we send.
    fn learn_cluster_id(&mut self) {
        if self.cluster_id == 0 {
            let id = self.sm.lock().state().cluster_id();
            if id != 0 {
                self.cluster_id = id;
                self.transport.set_cluster_id(id);
            }
        }
    }

    fn publish(&self) {
        let raft = &self.raw.raft;
        let is_leader = raft.state == StateRole::Leader;
        let st = GroupStatus {
            term: raft.term,
            leader_id: raft.leader_id,
            is_leader,
            caught_up: self.caught_up(),
            transferring: raft.lead_transferee.is_some(),
            lease_until: if is_leader { self.lease_until } else { None },
            voters: self.raw.store().conf_state.voters.clone(),
            active_voters: self.active_voters(),
            applied_index: self.raw.store().apply_state.applied_index,
            first_index: self.raw.store().apply_state.truncated_index + 1,
            foreign_dropped: self.foreign_dropped,
        };
        *self.status.lock() = st;
    }

    /// Applies a membership change: raft's configuration, and the member
    /// list the change carries in its context (name and peer URL of a new
    /// member). The outer result is fatal; the inner one is the proposer's
    /// answer (a change raft refuses is a no-op everywhere).
    fn apply_conf_change(&mut self, e: &Entry, kv_wb: &mut WriteBatch) -> Result<Result<()>> {
        let cc = if e.get_entry_type() == EntryType::EntryConfChangeV2 {
            ConfChangeV2::parse_from_bytes(&e.data).map_err(|err| corrupt_entry(e.index, err))?
        } else {
            // Only v2 changes are proposed; a single v1 change is read as one.
            let v1 = ConfChange::parse_from_bytes(&e.data).map_err(|err| corrupt_entry(e.index, err))?;
            let mut single = raft::eraftpb::ConfChangeSingle::default();
            single.set_change_type(v1.get_change_type());
            single.node_id = v1.node_id;
            let mut v2 = ConfChangeV2::default();
            v2.mut_changes().push(single);
            v2
        };
        let cs = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(err) => {
                // Refused the same way by every member: a no-op.
                warn!(index = e.index, error = %err, "PD membership change refused");
                return Ok(Err(Error::InvalidArgument(format!("membership change refused: {err}"))));
            }
        };
        info!(index = e.index, voters = ?cs.voters, "PD membership changed");
        self.raw.mut_store().stage_conf_state(cs, kv_wb);
        for change in cc.get_changes() {
            let cmd = match change.get_change_type() {
                ConfChangeType::AddNode => match serde_json::from_slice::<Member>(cc.get_context()) {
                    Ok(member) if member.member_id == change.node_id => {
                        self.removed.remove(&member.member_id);
                        self.transport.add_peer(member.member_id, &member.peer_url);
                        Command::PutMember { member }
                    }
                    _ => continue,
                },
                ConfChangeType::RemoveNode => {
                    if change.node_id == self.me {
                        warn!("this member was removed from the PD group: it serves nothing; stop it");
                    }
                    self.removed.insert(change.node_id);
                    Command::RemoveMember { member_id: change.node_id }
                }
                ConfChangeType::AddLearnerNode => continue,
            };
            let r = self.sm.lock().stage(&cmd, kv_wb);
            if let Err(err) = r {
                if !err.is_deterministic() {
                    return Err(err);
                }
            }
        }
        Ok(Ok(()))
    }

    fn propose_member_change(&mut self, change: MemberChange, done: mpsc::SyncSender<Result<()>>) {
        if self.raw.raft.has_pending_conf() {
            // raft-rs would turn a second one into an empty entry.
            let busy = "another membership change is still being applied; retry when it is done";
            let _ = done.send(Err(Error::InvalidArgument(busy.into())));
            return;
        }
        let mut single = raft::eraftpb::ConfChangeSingle::default();
        let mut cc = ConfChangeV2::default();
        match change {
            MemberChange::Add(member) => {
                single.set_change_type(ConfChangeType::AddNode);
                single.node_id = member.member_id;
                cc.context = serde_json::to_vec(&member).expect("a member serializes").into();
            }
            MemberChange::Remove(id) => {
                single.set_change_type(ConfChangeType::RemoveNode);
                single.node_id = id;
            }
        }
        cc.mut_changes().push(single);
        // raft-rs takes one membership change at a time.
        self.submit(done, |raw, ctx| {
            raw.propose_conf_change(ctx, cc)
                .map_err(|e| Error::InvalidArgument(format!("membership change not proposed: {e}")))
        });
    }
}

fn corrupt_entry(index: u64, e: impl std::fmt::Display) -> Error {
    Error::Corrupt { key: format!("PD raft entry {index}"), reason: e.to_string() }
}

impl Group<RoundCx> for PdGroup {
    type Storage = PdRaftStorage;
    type Error = Error;

    fn raw_node(&mut self) -> &mut RawNode<PdRaftStorage> {
        &mut self.raw
    }

    fn on_soft_state(&mut self, ss: &SoftState, _cx: &mut RoundCx) {
        info!(role = ?ss.raft_state, leader = ss.leader_id, term = self.raw.raft.term, "PD raft state changed");
        if ss.raft_state == StateRole::Leader {
            // raft-rs appended this term's empty entry on election.
            self.term_start = self.raw.raft.raft_log.last_index();
        } else {
            self.term_start = u64::MAX;
            self.lease_until = None;
            self.probe = None;
            self.fail_pending("PD leadership lost");
        }
    }

    fn send(&mut self, msgs: Vec<Message>, _cx: &mut RoundCx) {
        self.transport.send(msgs);
    }

    fn apply_snapshot(&mut self, snap: &Snapshot, _cx: &mut RoundCx) -> Result<()> {
        self.raw.mut_store().install_snapshot(snap)?;
        // Entries after the snapshot apply to the state it holds.
        let fresh = StateMachine::open(self.engine.clone())?;
        // A member that joined knows the others only from here on.
        for m in fresh.state().members().values() {
            self.transport.add_peer(m.member_id, &m.peer_url);
        }
        *self.sm.lock() = fresh;
        info!(index = snap.get_metadata().index, "PD snapshot installed: metadata replaced");
        Ok(())
    }

    fn on_read_states(&mut self, states: &[ReadState], _cx: &mut RoundCx) {
        for rs in states {
            let Ok(bytes) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else { continue };
            let seq = u64::from_be_bytes(bytes);
            if let Some((probe, sent)) = self.probe {
                if probe == seq && self.raw.raft.lead_transferee.is_none() {
                    self.lease_until = Some(sent + self.settings.lease());
                    self.probe = None;
                }
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>, kv_wb: &mut WriteBatch, cx: &mut RoundCx) -> Result<bool> {
        if entries.is_empty() {
            return Ok(false);
        }
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {}
                EntryType::EntryNormal => {
                    let cmd = Command::decode(&e.data)?;
                    let r = self.sm.lock().stage(&cmd, kv_wb);
                    if let Err(err) = &r {
                        if !err.is_deterministic() {
                            return Err(r.unwrap_err());
                        }
                    }
                    self.answer(&e, r, cx);
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let r = self.apply_conf_change(&e, kv_wb)?;
                    self.answer(&e, r, cx);
                }
            }
            self.raw.mut_store().apply_state.applied_index = e.index;
        }
        self.raw.store().stage_apply_state(kv_wb);
        self.raw.mut_store().evict_applied_entries();
        // Answers go out only after the batch is synced.
        Ok(true)
    }

    fn stage_entries(&mut self, entries: &[Entry], raft_wb: &mut WriteBatch) {
        self.raw.mut_store().append(entries, raft_wb);
    }

    fn stage_hard_state(&mut self, hs: &HardState, raft_wb: &mut WriteBatch) {
        self.raw.mut_store().set_hard_state(hs, raft_wb);
    }

    fn keep_commit(&mut self, commit: u64) {
        self.raw.mut_store().hard_state.commit = commit;
    }

    fn hard_state(&self) -> HardState {
        self.raw.store().hard_state.clone()
    }

    fn round_done(&mut self, _cx: &mut RoundCx) {
        self.learn_cluster_id();
    }
}
