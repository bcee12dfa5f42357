//! `PeerStorage`: one region peer's raft state on disk, behind raft-rs' `Storage`.
//!
//! Where each piece lives (see `keys`):
//! - entries and the hard state: raft log store;
//! - region meta (`RegionLocalState`) and `RaftApplyState` (applied index,
//!   truncated index/term): kv engine `meta` CF, written in the same batch as
//!   the data they describe, so data and applied index never disagree.
//!
//! The log is `(truncated_index, last_index]`; `truncated_index/term` stand
//! for everything before (a snapshot, or the bootstrap's initial state at
//! index `INIT_INDEX`). The conf state raft-rs starts from is derived from the
//! region meta at the applied index.

use mnemo_proto::raft_serverpb::{
    PeerState, PendingSnapshot, RaftApplyState, RegionLocalState, SnapshotData, SnapshotKv,
};
use mnemo_proto::types::{PeerRole, Region, RegionId};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState};

use crate::engine::{Cf, EngineRef, ScanRange, WriteBatch};
use crate::error::{Error, Result};
use crate::keys;
use mnemo_raft_driver::log::{RaftLog, Truncated};

/// Index and term a freshly bootstrapped region's log starts after. Peers
/// created empty (index 0) are always behind it, so they get a snapshot.
pub const INIT_INDEX: u64 = 5;
/// Term of [`INIT_INDEX`].
pub const INIT_TERM: u64 = 5;

/// The raft state of one peer: in memory, mirrored on disk.
pub struct PeerStorage {
    region_id: RegionId,
    kv: EngineRef,
    raft: EngineRef,
    /// The region as of the applied index.
    pub region: Region,
    /// Normal, or Tombstone once the peer is removed.
    pub peer_state: PeerState,
    /// The raft configuration at the applied index (joint states included).
    pub conf_state: ConfState,
    /// Last persisted hard state.
    pub hard_state: HardState,
    /// Last applied index and truncation point.
    pub apply_state: RaftApplyState,
    /// The log entries (`mnemo_raft_driver::log`, shared with PD).
    log: RaftLog,
}

use mnemo_raft_driver::log::storage_err as engine_err;

fn truncated(a: &RaftApplyState) -> Truncated {
    Truncated { index: a.truncated_index, term: a.truncated_term }
}

/// The conf state matching a region's peers.
pub fn conf_state_of(region: &Region) -> ConfState {
    let mut cs = ConfState::default();
    for p in &region.peers {
        match p.role {
            PeerRole::Voter => cs.voters.push(p.id.0),
            PeerRole::Learner => cs.learners.push(p.id.0),
        }
    }
    cs
}

/// Writes the initial state of a new region (bootstrapped, or born from a
/// split) into `kv_wb`/`raft_wb`: log empty after `INIT_INDEX`.
pub fn write_initial_state(region: &Region, kv_wb: &mut WriteBatch, raft_wb: &mut WriteBatch) {
    write_initial_kv_state(region, kv_wb);
    write_initial_hard_state(region.id, raft_wb);
}

/// The kv-engine half of [`write_initial_state`].
pub fn write_initial_kv_state(region: &Region, kv_wb: &mut WriteBatch) {
    let local = RegionLocalState {
        state: PeerState::Normal as i32,
        region: Some(region.into()),
        conf_state: Vec::new(),
    };
    kv_wb.put(Cf::Meta, keys::region_state_key(region.id), local.encode_to_vec());
    let apply =
        RaftApplyState { applied_index: INIT_INDEX, truncated_index: INIT_INDEX, truncated_term: INIT_TERM };
    kv_wb.put(Cf::Meta, keys::apply_state_key(region.id), apply.encode_to_vec());
}

/// The region a snapshot's data describes, read without decoding its pairs
/// (the pairs' field is skipped, not copied).
pub fn snapshot_region(data: &[u8]) -> Result<Region> {
    /// `SnapshotData` with only its first field: prost skips the rest.
    #[derive(Clone, PartialEq, prost::Message)]
    struct RegionOnly {
        #[prost(message, optional, tag = "1")]
        region: Option<mnemo_proto::metapb::Region>,
    }
    let r = RegionOnly::decode(data).map_err(|e| Error::Other(format!("bad snapshot: {e}")))?;
    Ok(Region::from(&r.region.unwrap_or_default()))
}

/// Stages the removal of a region's whole raft state from the raft log
/// store: entries, hard state, pending snapshot (not the peer marker).
pub fn clear_raft_state(region: RegionId, raft_wb: &mut WriteBatch) {
    clear_raft_log(region, raft_wb);
    raft_wb.delete(Cf::Default, keys::raft_state_key(region));
    raft_wb.delete(Cf::Default, keys::pending_snapshot_key(region));
}

/// Stages the removal of every raft log entry of `region`.
fn clear_raft_log(region: RegionId, raft_wb: &mut WriteBatch) {
    raft_wb.delete_range(Cf::Default, keys::raft_log_key(region, 0), keys::raft_log_key(region, u64::MAX));
}

/// The raft-log half of [`write_initial_state`].
pub fn write_initial_hard_state(region: RegionId, raft_wb: &mut WriteBatch) {
    let hs = HardState { term: INIT_TERM, commit: INIT_INDEX, ..Default::default() };
    raft_wb.put(Cf::Default, keys::raft_state_key(region), hs.write_to_bytes().expect("encode hard state"));
}

impl PeerStorage {
    /// Loads a peer's state. `region` is used when the node has no record of
    /// it yet (a peer created by a message from its leader: empty, index 0).
    pub fn open(kv: EngineRef, raft: EngineRef, region: Region) -> Result<PeerStorage> {
        let region_id = region.id;
        let stored = match kv.get(Cf::Meta, &keys::region_state_key(region_id))? {
            Some(b) => Some(RegionLocalState::decode(b.as_slice()).map_err(|e| Error::Other(e.to_string()))?),
            None => None,
        };
        // A Tombstone record belongs to a destroyed earlier peer of this
        // region; a new peer starts empty. (Taking the old record's range for
        // its own would make the first snapshot wipe whatever other regions
        // now hold that range.)
        let stored = stored.filter(|s| s.state() != PeerState::Tombstone);
        let (region, peer_state, conf_state) = match stored {
            Some(s) => {
                let region = Region::from(&s.region.clone().unwrap_or_default());
                let cs = if s.conf_state.is_empty() {
                    conf_state_of(&region)
                } else {
                    ConfState::parse_from_bytes(&s.conf_state).map_err(|e| Error::Other(e.to_string()))?
                };
                (region, s.state(), cs)
            }
            None => {
                let cs = conf_state_of(&region);
                (region, PeerState::Normal, cs)
            }
        };
        let apply_state = match kv.get(Cf::Meta, &keys::apply_state_key(region_id))? {
            Some(b) => RaftApplyState::decode(b.as_slice()).map_err(|e| Error::Other(e.to_string()))?,
            None => RaftApplyState::default(),
        };
        let hard_state = match raft.get(Cf::Default, &keys::raft_state_key(region_id))? {
            Some(b) => HardState::parse_from_bytes(&b).map_err(|e| Error::Other(e.to_string()))?,
            None => HardState::default(),
        };
        let log = RaftLog::open(raft.clone(), keys::raft_log_prefix(region_id), truncated(&apply_state))?;
        let mut s =
            PeerStorage { region_id, kv, raft, region, peer_state, conf_state, hard_state, apply_state, log };
        // A crash between writing a received snapshot to the kv engine and
        // resetting the raft log leaves a hard state behind the snapshot; the
        // snapshot was committed, so its index is committed too.
        if s.hard_state.commit < s.apply_state.truncated_index {
            s.hard_state.commit = s.apply_state.truncated_index;
            s.hard_state.term = s.hard_state.term.max(s.apply_state.truncated_term);
        }
        // The kv batch (data + applied index) and the raft batch (hard state
        // with the commit index) are two writes; a kill between them leaves
        // the applied index ahead of the stored commit, and raft-rs refuses
        // to start a peer whose applied index is above its commit. Only
        // committed entries are applied, and they were in the log before
        // they were applied, so the applied index is committed: raise the
        // commit to it. (Found by the chaos harness: kill -9 under load.)
        if s.hard_state.commit < s.apply_state.applied_index {
            s.hard_state.commit = s.apply_state.applied_index;
        }
        Ok(s)
    }

    /// True once the peer holds the region's data (bootstrapped or from a snapshot).
    pub fn is_initialized(&self) -> bool {
        !self.region.peers.is_empty()
    }

    /// The applied index.
    pub fn applied_index(&self) -> u64 {
        self.apply_state.applied_index
    }

    /// The last index in the log.
    pub fn last_index_now(&self) -> u64 {
        self.log.last_index()
    }

    /// Stages `entries` (a contiguous run) into `wb`, replacing any
    /// conflicting suffix of the log.
    pub fn append(&mut self, entries: &[Entry], wb: &mut WriteBatch) {
        self.log.append(entries, wb);
    }

    /// Stages a new hard state into `wb`.
    pub fn set_hard_state(&mut self, hs: &HardState, wb: &mut WriteBatch) {
        self.hard_state = hs.clone();
        wb.put(Cf::Default, keys::raft_state_key(self.region_id), hs.write_to_bytes().expect("encode"));
    }

    /// Drops cached log entries this group applied (see `RaftLog`'s entry cache).
    pub fn evict_applied_entries(&mut self) {
        self.log.evict_cache_through(self.apply_state.applied_index);
    }

    /// Stages the apply state into the kv batch.
    pub fn stage_apply_state(&self, wb: &mut WriteBatch) {
        wb.put(Cf::Meta, keys::apply_state_key(self.region_id), self.apply_state.encode_to_vec());
    }

    /// Stages the region meta into the kv batch.
    pub fn stage_region_state(&self, wb: &mut WriteBatch) {
        let local = RegionLocalState {
            state: self.peer_state as i32,
            region: Some((&self.region).into()),
            conf_state: self.conf_state.write_to_bytes().expect("encode conf state"),
        };
        wb.put(Cf::Meta, keys::region_state_key(self.region_id), local.encode_to_vec());
    }

    /// Builds a snapshot of the region from one view of the kv engine, at
    /// the applied index written in that view: an apply worker may have
    /// written data and applied index past what the store loop took in
    /// (see `super::apply_pool`), never one without the other.
    pub fn generate_snapshot(&self) -> raft::Result<Snapshot> {
        fail::fail_point!("snapshot_generate");
        let store_err = |e: String| raft::Error::Store(raft::StorageError::Other(e.into()));
        let view = self.kv.snapshot();
        let index = match view.get(Cf::Meta, &keys::apply_state_key(self.region_id)).map_err(engine_err)? {
            Some(raw) => {
                RaftApplyState::decode(raw.as_slice()).map_err(|e| store_err(e.to_string()))?.applied_index
            }
            None => self.apply_state.applied_index,
        };
        // The range and membership at that index, from the same view (the
        // store loop's may already be a change applied later in its round).
        let (region, conf_state) =
            match view.get(Cf::Meta, &keys::region_state_key(self.region_id)).map_err(engine_err)? {
                Some(raw) => {
                    let state =
                        RegionLocalState::decode(raw.as_slice()).map_err(|e| store_err(e.to_string()))?;
                    let region = Region::from(&state.region.clone().unwrap_or_default());
                    let conf_state = match state.conf_state.is_empty() {
                        true => conf_state_of(&region),
                        false => ConfState::parse_from_bytes(&state.conf_state)
                            .map_err(|e| store_err(e.to_string()))?,
                    };
                    (region, conf_state)
                }
                None => (self.region.clone(), self.conf_state.clone()),
            };
        let term = self.term_of(index)?;
        let start = keys::data_key(&region.start_key);
        let end = keys::data_end_key(&region.end_key);
        let mut kvs = Vec::new();
        view.scan(Cf::Default, ScanRange { start: &start, end: &end, reverse: false }, &mut |k, v| {
            kvs.push(SnapshotKv { key: keys::origin_key(k).to_vec(), value: v.to_vec() });
            true
        })
        .map_err(engine_err)?;
        let data = SnapshotData { region: Some((&region).into()), kvs };
        let mut snap = Snapshot { data: data.encode_to_vec().into(), ..Default::default() };
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state);
        Ok(snap)
    }

    /// Replaces this peer's data and log with a received snapshot, durably,
    /// before returning. Crash-safe at every step:
    ///
    /// 1. the snapshot (and the peer's old region) goes to the raft log
    ///    store as a `PendingSnapshot`, then the region record is marked
    ///    `Applying` (both synced): from here on a restart finishes the apply
    ///    ([`PeerStorage::resume_interrupted_snapshot`]) instead of starting
    ///    a peer on half-replaced data;
    /// 2. [`PeerStorage::finish_snapshot`]: the data is replaced (SST
    ///    ingest), the log reset and the commit raised to the snapshot
    ///    (raft, synced), then the region record and apply state written
    ///    (kv, synced), then the pending snapshot dropped.
    ///
    /// Redoing an interrupted apply matters: the leader already counts this
    /// peer as holding everything up to its old match index, and will send
    /// a commit index that high; a peer restarted empty would be asked to
    /// commit entries it does not have (raft-rs panics).
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        let region = snapshot_region(snap.get_data())?;
        let pending = PendingSnapshot {
            snapshot: snap.write_to_bytes().map_err(|e| Error::Other(e.to_string()))?,
            previous: self.is_initialized().then(|| (&self.region).into()),
        };
        let mut raft_wb = WriteBatch::new();
        raft_wb.put(Cf::Default, keys::pending_snapshot_key(self.region_id), pending.encode_to_vec());
        self.raft.write(&raft_wb, true)?;
        let applying = RegionLocalState {
            state: PeerState::Applying as i32,
            region: Some((&region).into()),
            conf_state: Vec::new(),
        };
        let mut mark = WriteBatch::new();
        mark.put(Cf::Meta, keys::region_state_key(self.region_id), applying.encode_to_vec());
        self.kv.write(&mark, true)?;
        fail::fail_point!("snapshot_apply_after_mark");
        let previous = self.is_initialized().then(|| self.region.clone());
        self.finish_snapshot(snap, previous.as_ref())
    }

    /// Step 2 of [`PeerStorage::apply_snapshot`]; also run at restart for a
    /// peer found `Applying`. Idempotent: every write sets, none adds.
    fn finish_snapshot(&mut self, snap: &Snapshot, previous: Option<&Region>) -> Result<()> {
        let data =
            SnapshotData::decode(snap.get_data()).map_err(|e| Error::Other(format!("bad snapshot: {e}")))?;
        let region = Region::from(&data.region.unwrap_or_default());
        let meta = snap.get_metadata();
        // The data: this peer's old range if it had one (an uninitialized
        // peer has no range — its empty keys do not mean "everything"),
        // then the snapshot's range, ingested as an SST file.
        if let Some(old) = previous.filter(|o| o.start_key != region.start_key || o.end_key != region.end_key)
        {
            let (s, e) = (keys::data_key(&old.start_key), keys::data_end_key(&old.end_key));
            self.kv.ingest_range(Cf::Default, &s, &e, &mut std::iter::empty())?;
        }
        let (s, e) = (keys::data_key(&region.start_key), keys::data_end_key(&region.end_key));
        let mut pairs = data.kvs.into_iter().map(|kv| (keys::data_key(&kv.key), kv.value));
        self.kv.ingest_range(Cf::Default, &s, &e, &mut pairs)?;
        fail::fail_point!("snapshot_apply_after_ingest");
        // The log: everything before the snapshot is gone, its index committed.
        let mut raft_wb = WriteBatch::new();
        self.log.reset(Truncated { index: meta.index, term: meta.term }, &mut raft_wb);
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.set_hard_state(&hs, &mut raft_wb);
        self.raft.write(&raft_wb, true)?;
        // The region record and apply state: the peer is whole again.
        self.region = region;
        self.peer_state = PeerState::Normal;
        self.conf_state = meta.get_conf_state().clone();
        self.apply_state = RaftApplyState {
            applied_index: meta.index,
            truncated_index: meta.index,
            truncated_term: meta.term,
        };
        let mut kv_wb = WriteBatch::new();
        self.stage_region_state(&mut kv_wb);
        self.stage_apply_state(&mut kv_wb);
        self.kv.write(&kv_wb, true)?;
        let mut raft_wb = WriteBatch::new();
        raft_wb.delete(Cf::Default, keys::pending_snapshot_key(self.region_id));
        self.raft.write(&raft_wb, false)?;
        Ok(())
    }

    /// Finishes the snapshot apply a crash interrupted (region record left
    /// `Applying`): the snapshot kept in the raft log store is applied again
    /// from the start. Returns the peer's region once whole.
    ///
    /// A record marked `Applying` by a version that did not keep the
    /// snapshot has nothing to finish with: that peer is reset to an empty
    /// one (term and vote kept, log and commit dropped) for its leader to
    /// send a snapshot again, as that version did.
    pub fn resume_interrupted_snapshot(
        kv: &EngineRef,
        raft: &EngineRef,
        region_id: RegionId,
    ) -> Result<Region> {
        let Some(raw) = raft.get(Cf::Default, &keys::pending_snapshot_key(region_id))? else {
            tracing::warn!(region = %region_id, "interrupted snapshot apply left no snapshot; peer reset to empty");
            let empty = Region { id: region_id, ..Default::default() };
            let local = RegionLocalState {
                state: PeerState::Normal as i32,
                region: Some((&empty).into()),
                conf_state: vec![],
            };
            let mut kv_wb = WriteBatch::new();
            kv_wb.put(Cf::Meta, keys::region_state_key(region_id), local.encode_to_vec());
            kv_wb.delete(Cf::Meta, keys::apply_state_key(region_id));
            kv.write(&kv_wb, true)?;
            let mut raft_wb = WriteBatch::new();
            clear_raft_log(region_id, &mut raft_wb);
            if let Some(b) = raft.get(Cf::Default, &keys::raft_state_key(region_id))? {
                let mut hs = HardState::parse_from_bytes(&b).map_err(|e| Error::Other(e.to_string()))?;
                hs.commit = 0;
                raft_wb.put(
                    Cf::Default,
                    keys::raft_state_key(region_id),
                    hs.write_to_bytes().expect("encode"),
                );
            }
            raft.write(&raft_wb, true)?;
            return Ok(empty);
        };
        let pending = PendingSnapshot::decode(raw.as_slice()).map_err(|e| Error::Other(e.to_string()))?;
        let snap = Snapshot::parse_from_bytes(&pending.snapshot).map_err(|e| Error::Other(e.to_string()))?;
        let previous = pending.previous.as_ref().map(Region::from);
        let mut storage =
            PeerStorage::open(kv.clone(), raft.clone(), Region { id: region_id, ..Default::default() })?;
        storage.finish_snapshot(&snap, previous.as_ref())?;
        Ok(storage.region.clone())
    }

    /// Moves the truncation point to `index` (≤ applied): in memory, and
    /// staged into `kv_wb`. The entries stay in the raft engine until the
    /// log GC worker deletes the returned key range, after syncing the kv
    /// engine (see [`super::log_gc`]): data applied up to the new point must
    /// be durable before the entries that could rebuild it are gone.
    pub fn compact_to(&mut self, index: u64, kv_wb: &mut WriteBatch) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let first = self.apply_state.truncated_index + 1;
        if index < first || index > self.apply_state.applied_index {
            return Ok(None);
        }
        let term = self.term_of(index).map_err(|e| Error::Other(format!("compact: {e}")))?;
        self.apply_state.truncated_index = index;
        self.apply_state.truncated_term = term;
        self.stage_apply_state(kv_wb);
        self.log.forget_through(index);
        Ok(Some(self.log.keys_through(index)))
    }

    /// Deletes every trace of peer `me`: data, meta, log. Leaves a
    /// Tombstone record naming `me` (even for an empty peer, whose region
    /// lists no peers), so neither it nor an older peer of the region can
    /// be recreated by a stale message, also after a restart.
    pub fn destroy(
        &mut self,
        me: mnemo_proto::types::Peer,
        kv_wb: &mut WriteBatch,
        raft_wb: &mut WriteBatch,
    ) {
        if self.is_initialized() {
            kv_wb.delete_range(
                Cf::Default,
                keys::data_key(&self.region.start_key),
                keys::data_end_key(&self.region.end_key),
            );
        }
        self.peer_state = PeerState::Tombstone;
        if self.region.peer(me.id).is_none() {
            self.region.peers.push(me);
        }
        self.stage_region_state(kv_wb);
        kv_wb.delete(Cf::Meta, keys::apply_state_key(self.region_id));
        clear_raft_state(self.region_id, raft_wb);
    }

    fn term_of(&self, idx: u64) -> raft::Result<u64> {
        self.log.term(idx, truncated(&self.apply_state))
    }
}

impl raft::Storage for PeerStorage {
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
        self.log.entries(low, high, max_size.into(), truncated(&self.apply_state))
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.term_of(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.apply_state.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.log.last_index())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let started = std::time::Instant::now();
        let snap = self.generate_snapshot();
        crate::metrics::RAFTSTORE.snapshot_done("generate", snap.is_ok());
        let took = started.elapsed().as_secs_f64();
        crate::metrics::RAFTSTORE.snapshot_duration.with_label_values(&["generate"]).observe(took);
        snap
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mnemo_proto::types::{Peer, PeerId, StoreId};

    use super::*;
    use crate::engine::{scan_collect, MemEngine};

    fn region(id: u64, start: &[u8], end: &[u8]) -> Region {
        Region {
            id: RegionId(id),
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            peers: vec![Peer { id: PeerId(id * 10), store_id: StoreId(1), role: PeerRole::Voter }],
            ..Default::default()
        }
    }

    /// Every user key in the kv engine, in order.
    fn user_keys(kv: &EngineRef) -> Vec<Vec<u8>> {
        let range = ScanRange { start: b"z", end: keys::DATA_MAX, reverse: false };
        let all = scan_collect(kv.as_ref(), Cf::Default, range, 0).unwrap();
        all.iter().map(|(k, _)| keys::origin_key(k).to_vec()).collect()
    }

    #[test]
    fn snapshot_into_a_new_peer_replaces_only_its_own_range() {
        let kv: EngineRef = Arc::new(MemEngine::new());
        let raft: EngineRef = Arc::new(MemEngine::new());
        // This node already holds another region's data: a..m.
        let mut wb = WriteBatch::new();
        for k in [b"a", b"c", b"x"] {
            wb.put(Cf::Default, keys::data_key(k), keys::encode_value(b"old", 0));
        }
        kv.write(&wb, true).unwrap();

        // A leader's snapshot of region 2 = [m, +inf) with one key.
        let data = SnapshotData {
            region: Some((&region(2, b"m", b"")).into()),
            kvs: vec![SnapshotKv { key: b"y".to_vec(), value: keys::encode_value(b"new", 0) }],
        };
        let mut snap = Snapshot { data: data.encode_to_vec().into(), ..Default::default() };
        snap.mut_metadata().index = 9;
        snap.mut_metadata().term = 6;

        // An uninitialized peer (no range yet) applies it.
        let mut ps =
            PeerStorage::open(kv.clone(), raft.clone(), Region { id: RegionId(2), ..Default::default() })
                .unwrap();
        assert!(!ps.is_initialized());
        ps.apply_snapshot(&snap).unwrap();

        // The other region's keys survive; the snapshot's range holds exactly its data.
        let keys = user_keys(&kv);
        assert_eq!(keys, vec![b"a".to_vec(), b"c".to_vec(), b"y".to_vec()]);
        assert_eq!(ps.applied_index(), 9);
        assert!(ps.is_initialized());

        // Reopened from disk it is the same.
        let ps = PeerStorage::open(kv, raft, Region { id: RegionId(2), ..Default::default() }).unwrap();
        assert_eq!((ps.region.start_key.as_slice(), ps.apply_state.truncated_index), (&b"m"[..], 9));
        assert_eq!(ps.hard_state.commit, 9);
    }

    #[test]
    fn an_applied_index_ahead_of_the_stored_commit_is_committed_on_reopen() {
        let kv: EngineRef = Arc::new(MemEngine::new());
        let raft: EngineRef = Arc::new(MemEngine::new());
        let r = region(4, b"", b"");
        let (mut kv_wb, mut raft_wb) = (WriteBatch::new(), WriteBatch::new());
        write_initial_state(&r, &mut kv_wb, &mut raft_wb);
        kv.write(&kv_wb, true).unwrap();
        raft.write(&raft_wb, true).unwrap();
        let mut ps = PeerStorage::open(kv.clone(), raft.clone(), r.clone()).unwrap();
        // Entries 6..=8 in the log, commit 7 stored...
        let entries: Vec<Entry> = (INIT_INDEX + 1..=INIT_INDEX + 3)
            .map(|index| Entry { index, term: INIT_TERM, ..Default::default() })
            .collect();
        let mut raft_wb = WriteBatch::new();
        ps.append(&entries, &mut raft_wb);
        let hs = HardState { term: INIT_TERM, commit: INIT_INDEX + 2, ..Default::default() };
        ps.set_hard_state(&hs, &mut raft_wb);
        raft.write(&raft_wb, true).unwrap();
        // ...and 8 applied: the kv write landed, the raft write with commit 8 did not.
        ps.apply_state.applied_index = INIT_INDEX + 3;
        let mut kv_wb = WriteBatch::new();
        ps.stage_apply_state(&mut kv_wb);
        kv.write(&kv_wb, true).unwrap();

        let ps = PeerStorage::open(kv, raft, r).unwrap();
        assert_eq!(ps.applied_index(), INIT_INDEX + 3);
        assert_eq!(ps.hard_state.commit, INIT_INDEX + 3);
        assert_eq!(ps.last_index_now(), INIT_INDEX + 3);
    }

    #[test]
    fn a_snapshot_names_the_applied_index_written_with_its_data() {
        let kv: EngineRef = Arc::new(MemEngine::new());
        let raft: EngineRef = Arc::new(MemEngine::new());
        let r = region(5, b"", b"");
        let (mut kv_wb, mut raft_wb) = (WriteBatch::new(), WriteBatch::new());
        write_initial_state(&r, &mut kv_wb, &mut raft_wb);
        kv.write(&kv_wb, true).unwrap();
        raft.write(&raft_wb, true).unwrap();
        let mut ps = PeerStorage::open(kv.clone(), raft.clone(), r).unwrap();
        let entries: Vec<Entry> = (INIT_INDEX + 1..=INIT_INDEX + 2)
            .map(|index| Entry { index, term: INIT_TERM + 1, ..Default::default() })
            .collect();
        let mut raft_wb = WriteBatch::new();
        ps.append(&entries, &mut raft_wb);
        raft.write(&raft_wb, true).unwrap();
        // An apply worker wrote entry 7's data with applied index 7; the
        // store loop has not taken it in (it still says 5).
        let mut state = ps.apply_state;
        state.applied_index = INIT_INDEX + 2;
        let mut kv_wb = WriteBatch::new();
        kv_wb.put(Cf::Default, keys::data_key(b"k"), keys::encode_value(b"v", 0));
        kv_wb.put(Cf::Meta, keys::apply_state_key(RegionId(5)), state.encode_to_vec());
        kv.write(&kv_wb, false).unwrap();
        assert_eq!(ps.applied_index(), INIT_INDEX);
        // The snapshot holds the key, so it must say index 7, not 5: a
        // follower would apply entries 6 and 7 again on top of it.
        let snap = ps.generate_snapshot().unwrap();
        assert_eq!((snap.get_metadata().index, snap.get_metadata().term), (INIT_INDEX + 2, INIT_TERM + 1));
        let data = SnapshotData::decode(snap.get_data()).unwrap();
        assert_eq!(data.kvs.iter().map(|kv| kv.key.as_slice()).collect::<Vec<_>>(), vec![&b"k"[..]]);
    }

    #[test]
    fn a_peer_recreated_after_tombstone_starts_empty() {
        let kv: EngineRef = Arc::new(MemEngine::new());
        let raft: EngineRef = Arc::new(MemEngine::new());
        let old = region(3, b"a", b"z");
        let (mut kv_wb, mut raft_wb) = (WriteBatch::new(), WriteBatch::new());
        write_initial_state(&old, &mut kv_wb, &mut raft_wb);
        kv.write(&kv_wb, true).unwrap();
        raft.write(&raft_wb, true).unwrap();
        let mut ps = PeerStorage::open(kv.clone(), raft.clone(), old.clone()).unwrap();
        let (mut kv_wb, mut raft_wb) = (WriteBatch::new(), WriteBatch::new());
        ps.destroy(old.peers[0], &mut kv_wb, &mut raft_wb);
        kv.write(&kv_wb, true).unwrap();
        raft.write(&raft_wb, true).unwrap();

        // The region's leader adds this store again: the new peer knows no range.
        let fresh = PeerStorage::open(kv, raft, Region { id: RegionId(3), ..Default::default() }).unwrap();
        assert!(!fresh.is_initialized());
        assert_eq!(fresh.peer_state, PeerState::Normal);
    }

    #[test]
    fn an_interrupted_snapshot_apply_is_finished_at_restart() {
        let kv: EngineRef = Arc::new(MemEngine::new());
        let raft: EngineRef = Arc::new(MemEngine::new());
        // An initialized peer of region 4 = [c, x) with a voted hard state
        // and some old data, some of it outside the snapshot's range.
        let old = region(4, b"c", b"x");
        let (mut kv_wb, mut raft_wb) = (WriteBatch::new(), WriteBatch::new());
        write_initial_state(&old, &mut kv_wb, &mut raft_wb);
        for k in [&b"d"[..], b"r"] {
            kv_wb.put(Cf::Default, keys::data_key(k), keys::encode_value(b"old", 0));
        }
        kv.write(&kv_wb, true).unwrap();
        let hs = HardState { term: 9, vote: 40, commit: INIT_INDEX, ..Default::default() };
        raft_wb.put(Cf::Default, keys::raft_state_key(old.id), hs.write_to_bytes().unwrap());
        raft.write(&raft_wb, true).unwrap();
        // A snapshot of the region, now [c, m) after a split, at index 30.
        let data = SnapshotData {
            region: Some((&region(4, b"c", b"m")).into()),
            kvs: vec![SnapshotKv { key: b"e".to_vec(), value: keys::encode_value(b"new", 0) }],
        };
        let mut snap = Snapshot { data: data.encode_to_vec().into(), ..Default::default() };
        (snap.mut_metadata().index, snap.mut_metadata().term) = (30, 9);
        // The crash came right after step 1 (snapshot kept, record marked
        // Applying): nothing of the data or log was replaced yet.
        let pending =
            PendingSnapshot { snapshot: snap.write_to_bytes().unwrap(), previous: Some((&old).into()) };
        let mut wb = WriteBatch::new();
        wb.put(Cf::Default, keys::pending_snapshot_key(old.id), pending.encode_to_vec());
        raft.write(&wb, true).unwrap();
        let applying = RegionLocalState {
            state: PeerState::Applying as i32,
            region: Some((&region(4, b"c", b"m")).into()),
            conf_state: Vec::new(),
        };
        let mut wb = WriteBatch::new();
        wb.put(Cf::Meta, keys::region_state_key(old.id), applying.encode_to_vec());
        kv.write(&wb, true).unwrap();

        // Restart: the apply is finished.
        let r = PeerStorage::resume_interrupted_snapshot(&kv, &raft, old.id).unwrap();
        assert_eq!(r.end_key, b"m".to_vec());
        // Finishing is idempotent (a crash during the redo redoes it again).
        let mut ps =
            PeerStorage::open(kv.clone(), raft.clone(), Region { id: old.id, ..Default::default() }).unwrap();
        ps.finish_snapshot(&snap, Some(&old)).unwrap();
        let ps =
            PeerStorage::open(kv.clone(), raft.clone(), Region { id: old.id, ..Default::default() }).unwrap();
        assert_eq!(ps.peer_state, PeerState::Normal);
        assert_eq!((ps.applied_index(), ps.last_index_now()), (30, 30));
        // The log the leader counts on is there: committed up to the snapshot,
        // term and vote kept.
        assert_eq!((ps.hard_state.term, ps.hard_state.vote, ps.hard_state.commit), (9, 40, 30));
        let keys = user_keys(&kv);
        assert_eq!(keys, vec![b"e".to_vec()], "old range cleared, snapshot data in");
        assert!(raft.get(Cf::Default, &keys::pending_snapshot_key(old.id)).unwrap().is_none());
    }
}
