//! The ready round: how every raft group of a process is driven, written once.
//!
//! A process drives its groups (the node: one per region peer; PD: one) in
//! rounds, on one thread. Each round handles the `Ready` of every group that
//! has one, and persists all of them together with **one fsync**:
//!
//! 1. [`Round::collect`], per group: send the ready's messages (a leader may
//!    send before it persists, raft-rs allows it — unless the ready changes
//!    the term or vote: see [`Collected`]), apply a received snapshot,
//!    note read states, apply committed entries into the round's kv batch,
//!    stage new entries and the hard state into the round's raft batch;
//! 2. [`Round::persist`]: write the kv batch, then the raft batch with one
//!    fsync — only if some group must sync (new entries, or a new term or
//!    vote: `Ready::must_sync`);
//! 3. [`Round::advance`], per group: send the messages that had to wait for
//!    the persist (a follower's append responses, votes), `advance`, apply
//!    what the light ready commits, then let the group queue its answers;
//! 4. [`Round::finish`]: write what step 3 staged.
//!
//! The commit index is not written when it alone moved: it is kept in the
//! group's in-memory hard state ([`Group::keep_commit`]) and reaches the
//! engine with the next hard state that must be written (a new term or
//! vote). A commit index lost in a crash is learned again from the leader,
//! and loading a group raises it to its applied index (only committed
//! entries are applied). Per round and region that is one or two engine
//! writes fewer on every replica (memtable inserts were the largest cost of
//! a many-region write load).
//!
//! What a group does at each step (what "apply" means, where entries live) is
//! its own business, behind [`Group`]; `Cx` is whatever context the process
//! hands its groups for the round (the node's replies and metrics, PD's
//! waiting proposers).
//!
//! Crash points (armed through [`crate::failpoints`]): `raft_before_save`,
//! `raft_between_kv_and_raft_write`, `raft_after_save`.

use mnemo_engine::{Engine, EngineError, WriteBatch};
use raft::eraftpb::{Entry, HardState, Message, Snapshot};
use raft::{RawNode, ReadState, Ready, SoftState};

/// One raft group as the round sees it.
pub trait Group<Cx> {
    /// The group's raft-rs storage.
    type Storage: raft::Storage;
    /// What the group's steps fail with; engine errors convert into it.
    type Error: From<EngineError>;

    /// The raft-rs node.
    fn raw_node(&mut self) -> &mut RawNode<Self::Storage>;
    /// The group's role or leader changed.
    fn on_soft_state(&mut self, ss: &SoftState, cx: &mut Cx);
    /// Messages to send to other members.
    fn send(&mut self, msgs: Vec<Message>, cx: &mut Cx);
    /// Installs a snapshot received from the leader; durable when it returns.
    fn apply_snapshot(&mut self, snap: &Snapshot, cx: &mut Cx) -> Result<(), Self::Error>;
    /// ReadIndex requests that completed.
    fn on_read_states(&mut self, states: &[ReadState], cx: &mut Cx);
    /// Applies committed entries, staging their writes (and the applied
    /// index) into `kv_wb`, or hands them to be applied elsewhere (then
    /// [`Group::advance_apply`] reports only what is done). Returns true if
    /// `kv_wb` must be synced.
    fn apply(
        &mut self,
        entries: Vec<Entry>,
        kv_wb: &mut WriteBatch,
        cx: &mut Cx,
    ) -> Result<bool, Self::Error>;
    /// Stages new log entries into `raft_wb` (and updates the storage's view).
    fn stage_entries(&mut self, entries: &[Entry], raft_wb: &mut WriteBatch);
    /// Stages a hard state into `raft_wb` (and updates the storage's view).
    fn stage_hard_state(&mut self, hs: &HardState, raft_wb: &mut WriteBatch);
    /// Only the commit index moved: update the storage's view, write nothing.
    fn keep_commit(&mut self, commit: u64);
    /// The last hard state staged.
    fn hard_state(&self) -> HardState;
    /// Tells raft-rs how far the group applied, at the end of its round.
    /// By default everything handed to [`Group::apply`]; a group that
    /// applies some entries elsewhere (the node's apply pool) reports only
    /// what it has taken back in, and the rest later.
    fn advance_apply(&mut self) {
        self.raw_node().advance_apply();
    }
    /// The group's part of the round is over. What it applied is durable
    /// only once [`Round::finish`] returned: queue answers in `cx` and send
    /// them after that.
    fn round_done(&mut self, cx: &mut Cx);
}

/// A group's ready collected in a round, waiting for [`Round::advance`].
///
/// A ready that changes the term or vote keeps its messages until it is
/// durable, although raft-rs lets a leader send before it persists: a peer
/// that is elected within the ready (a single voter campaigning, as a split's
/// new region does) would otherwise send appends of a term it can forget in
/// a crash, win that term again after the restart and send other entries
/// under the same term and indexes — which a follower that kept the first
/// ones would not notice.
pub struct Collected {
    ready: Ready,
    held: Vec<Message>,
}

/// One round over any number of groups, keyed by `K`.
pub struct Round<K> {
    readies: Vec<(K, Collected)>,
    kv_wb: WriteBatch,
    raft_wb: WriteBatch,
    sync_kv: bool,
    /// A collected ready must be durable before its persisted messages go
    /// out (`Ready::must_sync`).
    sync_raft: bool,
}

impl<K> Default for Round<K> {
    fn default() -> Self {
        Round {
            readies: Vec::new(),
            kv_wb: WriteBatch::new(),
            raft_wb: WriteBatch::new(),
            sync_kv: false,
            sync_raft: false,
        }
    }
}

impl<K> Round<K> {
    /// An empty round.
    pub fn new() -> Self {
        Self::default()
    }

    /// Step 1 for group `key`: a no-op if it has no ready.
    pub fn collect<Cx, G: Group<Cx>>(&mut self, key: K, g: &mut G, cx: &mut Cx) -> Result<(), G::Error> {
        if !g.raw_node().has_ready() {
            return Ok(());
        }
        let mut ready = g.raw_node().ready();
        self.sync_raft |= ready.must_sync();
        if let Some(ss) = ready.ss() {
            g.on_soft_state(ss, cx);
        }
        let known = g.hard_state();
        let new_term_or_vote = ready.hs().is_some_and(|hs| hs.term != known.term || hs.vote != known.vote);
        let mut held = ready.take_messages();
        if !new_term_or_vote {
            g.send(std::mem::take(&mut held), cx);
        }
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            g.apply_snapshot(&snap, cx)?;
        }
        if !ready.read_states().is_empty() {
            g.on_read_states(ready.read_states(), cx);
        }
        self.sync_kv |= g.apply(ready.take_committed_entries(), &mut self.kv_wb, cx)?;
        if !ready.entries().is_empty() {
            g.stage_entries(ready.entries(), &mut self.raft_wb);
        }
        if let Some(hs) = ready.hs() {
            let known = g.hard_state();
            if hs.term == known.term && hs.vote == known.vote {
                g.keep_commit(hs.commit);
            } else {
                g.stage_hard_state(hs, &mut self.raft_wb);
            }
        }
        self.readies.push((key, Collected { ready, held }));
        Ok(())
    }

    /// Step 2: writes the kv batch (synced if a group asked), then the raft
    /// batch, with one fsync if any ready must sync. Returns the collected
    /// readies for [`Round::advance`] (empty if no group had one: nothing
    /// was written) and whether the raft batch was fsynced.
    pub fn persist(
        &mut self,
        kv: &dyn Engine,
        raft: &dyn Engine,
    ) -> Result<(Vec<(K, Collected)>, bool), EngineError> {
        if self.readies.is_empty() {
            return Ok((Vec::new(), false));
        }
        fail::fail_point!("raft_before_save");
        let kv_wb = std::mem::take(&mut self.kv_wb);
        if !kv_wb.is_empty() {
            kv.write(&kv_wb, std::mem::take(&mut self.sync_kv))?;
        }
        fail::fail_point!("raft_between_kv_and_raft_write");
        let raft_wb = std::mem::take(&mut self.raft_wb);
        let synced = std::mem::take(&mut self.sync_raft) && !raft_wb.is_empty();
        if !raft_wb.is_empty() {
            raft.write(&raft_wb, synced)?;
        }
        fail::fail_point!("raft_after_save");
        Ok((std::mem::take(&mut self.readies), synced))
    }

    /// Step 3 for one group whose ready [`Round::persist`] returned.
    pub fn advance<Cx, G: Group<Cx>>(
        &mut self,
        g: &mut G,
        collected: Collected,
        cx: &mut Cx,
    ) -> Result<(), G::Error> {
        let Collected { mut ready, held } = collected;
        if !held.is_empty() {
            g.send(held, cx);
        }
        g.send(ready.take_persisted_messages(), cx);
        // `advance` would also mark everything handed out as applied:
        // apply progress is the group's to report (`Group::advance_apply`).
        let mut light = g.raw_node().advance_append(ready);
        if let Some(commit) = light.commit_index() {
            g.keep_commit(commit);
        }
        g.send(light.take_messages(), cx);
        self.sync_kv |= g.apply(light.take_committed_entries(), &mut self.kv_wb, cx)?;
        g.advance_apply();
        g.round_done(cx);
        Ok(())
    }

    /// Step 4: writes what the advances staged (applies of the light
    /// readies; the raft batch, if anything staged it, unsynced).
    pub fn finish(mut self, kv: &dyn Engine, raft: &dyn Engine) -> Result<(), EngineError> {
        if !self.kv_wb.is_empty() {
            kv.write(&self.kv_wb, self.sync_kv)?;
        }
        if !self.raft_wb.is_empty() {
            raft.write(&self.raft_wb, false)?;
        }
        self.readies.clear();
        Ok(())
    }
}
