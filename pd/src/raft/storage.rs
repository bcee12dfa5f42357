//! The PD group's raft state in PD's one engine, behind raft-rs' `Storage`.
//!
//! ```text
//! Cf::Default  pd-raft/log/<index u64 BE>   entries (mnemo_raft_driver::log)
//! Cf::Default  pd-raft/hard_state           raft-rs HardState
//! Cf::Meta     pd/raft/apply_state          applied index, truncated index and term (JSON)
//! Cf::Meta     pd/raft/conf_state           raft-rs ConfState
//! ```
//!
//! The apply state and conf state sit in `Cf::Meta` beside the metadata and
//! are written in the same batch as the commands they follow, so metadata
//! and applied index never disagree. A snapshot is every `pd/` record but
//! the raft ones, read at the applied index; installing one replaces them
//! all in one batch, with the log reset and the apply state moved to it.

use mnemo_engine::{Cf, EngineRef, ScanRange, WriteBatch};
use mnemo_raft_driver::log::{storage_err, RaftLog, Truncated};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const LOG_PREFIX: &[u8] = b"pd-raft/log/";
const HARD_STATE: &[u8] = b"pd-raft/hard_state";
const APPLY_STATE: &[u8] = b"pd/raft/apply_state";
const CONF_STATE: &[u8] = b"pd/raft/conf_state";
/// Every metadata record starts with this; the raft records too, under
/// [`RAFT_META_PREFIX`], and are not part of a snapshot's data.
const META_PREFIX: &[u8] = b"pd/";
const RAFT_META_PREFIX: &[u8] = b"pd/raft/";

/// True once this engine holds PD raft state (a member that started before).
pub(crate) fn has_raft_state(engine: &EngineRef) -> Result<bool> {
    Ok(engine.get(Cf::Meta, CONF_STATE)?.is_some())
}

/// Where a founding member's log starts (index and term of its initial
/// state); a joining member starts at 0, behind it, and gets a snapshot.
pub const INIT_INDEX: u64 = 5;
/// Term of [`INIT_INDEX`].
pub const INIT_TERM: u64 = 5;

/// How far the group has applied, and where its log starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyState {
    /// Last log index applied to the metadata.
    pub applied_index: u64,
    /// Last index no longer in the log.
    pub truncated_index: u64,
    /// Its term.
    pub truncated_term: u64,
}

impl ApplyState {
    fn truncated(&self) -> Truncated {
        Truncated { index: self.truncated_index, term: self.truncated_term }
    }
}

/// A snapshot's data: the metadata records, as they were at its index.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    /// (key, value) pairs of `Cf::Meta`, hex-encoded.
    records: Vec<(String, String)>,
}

/// The PD group's raft storage.
pub struct PdRaftStorage {
    engine: EngineRef,
    log: RaftLog,
    /// Last hard state staged.
    pub hard_state: HardState,
    /// The configuration as of the applied index.
    pub conf_state: ConfState,
    /// Applied index and truncation point.
    pub apply_state: ApplyState,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupt { key: what.into(), reason: e.to_string() }
}

impl PdRaftStorage {
    /// Loads the group's state. A member starting for the first time (no
    /// conf state) with `initial_voters` is one of the group's founders: its
    /// log starts after [`INIT_INDEX`], as if a snapshot holding that
    /// configuration had been applied there. A member starting with none
    /// (`--join`) starts empty at index 0, so the leader must send it a
    /// snapshot — which carries the configuration; replaying the log from
    /// index 1 would not, since the founders' configuration is in no entry.
    pub fn open(engine: EngineRef, initial_voters: &[u64]) -> Result<PdRaftStorage> {
        let mut apply_state = match engine.get(Cf::Meta, APPLY_STATE)? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| corrupt("apply state", e))?,
            None => ApplyState::default(),
        };
        let mut hard_state = match engine.get(Cf::Default, HARD_STATE)? {
            Some(b) => HardState::parse_from_bytes(&b).map_err(|e| corrupt("hard state", e))?,
            None => HardState::default(),
        };
        let conf_state = match engine.get(Cf::Meta, CONF_STATE)? {
            Some(b) => ConfState::parse_from_bytes(&b).map_err(|e| corrupt("conf state", e))?,
            None if initial_voters.len() > 1 && engine.get(Cf::Meta, b"pd/cluster_id")?.is_some() => {
                // Metadata written by a lone PD before it ran raft is in no
                // log: members starting empty would never get it.
                return Err(Error::Config(
                    "this data dir holds a PD cluster's metadata from before PD replicated it; start it \
                     as a one-member PD (empty initial-cluster)"
                        .into(),
                ));
            }
            None => {
                let cs = ConfState { voters: initial_voters.to_vec(), ..Default::default() };
                let mut wb = WriteBatch::new();
                wb.put(Cf::Meta, CONF_STATE, cs.write_to_bytes().expect("a conf state encodes"));
                if !initial_voters.is_empty() {
                    apply_state = ApplyState {
                        applied_index: INIT_INDEX,
                        truncated_index: INIT_INDEX,
                        truncated_term: INIT_TERM,
                    };
                    hard_state = HardState { term: INIT_TERM, commit: INIT_INDEX, ..Default::default() };
                    wb.put(
                        Cf::Meta,
                        APPLY_STATE,
                        serde_json::to_vec(&apply_state).expect("apply state serializes"),
                    );
                    wb.put(
                        Cf::Default,
                        HARD_STATE,
                        hard_state.write_to_bytes().expect("a hard state encodes"),
                    );
                }
                engine.write(&wb, true)?;
                cs
            }
        };
        // The applied index was written with the metadata and the commit
        // index with the hard state, in two writes: only committed entries
        // are applied, so an applied index ahead is committed.
        hard_state.commit = hard_state.commit.max(apply_state.applied_index);
        let log = RaftLog::open(engine.clone(), LOG_PREFIX.to_vec(), apply_state.truncated())?;
        Ok(PdRaftStorage { engine, log, hard_state, conf_state, apply_state })
    }

    /// Stages new entries.
    pub fn append(&mut self, entries: &[Entry], wb: &mut WriteBatch) {
        self.log.append(entries, wb);
    }

    /// Stages a hard state.
    pub fn set_hard_state(&mut self, hs: &HardState, wb: &mut WriteBatch) {
        self.hard_state = hs.clone();
        wb.put(Cf::Default, HARD_STATE, hs.write_to_bytes().expect("a hard state encodes"));
    }

    /// Stages the apply state (with the metadata it describes).
    pub fn stage_apply_state(&self, wb: &mut WriteBatch) {
        wb.put(Cf::Meta, APPLY_STATE, serde_json::to_vec(&self.apply_state).expect("apply state serializes"));
    }

    /// Stages a new configuration (at the index of its entry).
    pub fn stage_conf_state(&mut self, cs: ConfState, wb: &mut WriteBatch) {
        wb.put(Cf::Meta, CONF_STATE, cs.write_to_bytes().expect("a conf state encodes"));
        self.conf_state = cs;
    }

    /// Drops cached log entries this group applied (see `RaftLog`'s entry cache).
    pub fn evict_applied_entries(&mut self) {
        self.log.evict_cache_through(self.apply_state.applied_index);
    }

    /// Drops log entries up to `index` (≤ applied), keeping the term of
    /// `index` as the truncation point. Written synced at once: the apply
    /// state that covers them goes first, in the same batch.
    pub fn compact_to(&mut self, index: u64) -> Result<()> {
        let first = self.apply_state.truncated_index + 1;
        if index < first || index > self.apply_state.applied_index {
            return Ok(());
        }
        let term = self.log.term(index, self.apply_state.truncated()).map_err(|e| corrupt("raft log", e))?;
        self.apply_state.truncated_index = index;
        self.apply_state.truncated_term = term;
        let mut wb = WriteBatch::new();
        self.stage_apply_state(&mut wb);
        self.log.stage_delete(first, index, &mut wb);
        self.engine.write(&wb, true)?;
        Ok(())
    }

    /// The metadata at the applied index, as a raft snapshot. Read from
    /// one point-in-time view of the engine, where the applied index, the
    /// conf state and the metadata were written together: raft-rs may ask
    /// in the middle of a round, when memory is ahead of the engine.
    fn build_snapshot(&self) -> raft::Result<Snapshot> {
        let view = self.engine.snapshot();
        let applied: ApplyState = match view.get(Cf::Meta, APPLY_STATE).map_err(storage_err)? {
            Some(b) => serde_json::from_slice(&b).map_err(storage_err)?,
            None => ApplyState::default(),
        };
        let conf_state = match view.get(Cf::Meta, CONF_STATE).map_err(storage_err)? {
            Some(b) => ConfState::parse_from_bytes(&b).map_err(storage_err)?,
            None => self.conf_state.clone(),
        };
        let index = applied.applied_index;
        let term = self.log.term(index, self.apply_state.truncated())?;
        let mut end = META_PREFIX.to_vec();
        *end.last_mut().expect("prefix is not empty") += 1;
        let mut records = Vec::new();
        view.scan(Cf::Meta, ScanRange { start: META_PREFIX, end: &end, reverse: false }, &mut |k, v| {
            if !k.starts_with(RAFT_META_PREFIX) {
                records.push((hex::encode(k), hex::encode(v)));
            }
            true
        })
        .map_err(storage_err)?;
        let data = serde_json::to_vec(&SnapshotData { records }).map_err(storage_err)?;
        let mut snap = Snapshot { data: data.into(), ..Default::default() };
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state);
        Ok(snap)
    }

    /// Replaces the metadata, the log and the apply state with `snap`'s, in
    /// one synced batch. The caller reloads the state machine afterwards.
    pub fn install_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        let data: SnapshotData =
            serde_json::from_slice(snap.get_data()).map_err(|e| corrupt("snapshot", e))?;
        let meta = snap.get_metadata();
        let mut wb = WriteBatch::new();
        let mut end = META_PREFIX.to_vec();
        *end.last_mut().expect("prefix is not empty") += 1;
        wb.delete_range(Cf::Meta, META_PREFIX, end);
        for (k, v) in &data.records {
            let k = hex::decode(k).map_err(|e| corrupt("snapshot key", e))?;
            let v = hex::decode(v).map_err(|e| corrupt("snapshot value", e))?;
            wb.put(Cf::Meta, k, v);
        }
        let truncated = Truncated { index: meta.index, term: meta.term };
        self.log.reset(truncated, &mut wb);
        self.apply_state =
            ApplyState { applied_index: meta.index, truncated_index: meta.index, truncated_term: meta.term };
        self.stage_apply_state(&mut wb);
        self.stage_conf_state(meta.get_conf_state().clone(), &mut wb);
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.set_hard_state(&hs, &mut wb);
        self.engine.write(&wb, true)?;
        Ok(())
    }
}

impl raft::Storage for PdRaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.log.entries(low, high, max_size.into(), self.apply_state.truncated())
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.log.term(idx, self.apply_state.truncated())
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.apply_state.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.log.last_index())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        self.build_snapshot()
    }
}
