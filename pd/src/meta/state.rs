//! The metadata state and the one function that changes it, [`StateMachine::apply`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use mnemo_engine::{Cf, Engine, EngineRef, MemEngine, WriteBatch};
use mnemo_proto::types::{RegionId, StoreId};

use super::storage::{self, Record};
use super::Command;
use crate::error::{Error, Result};
use crate::member::Member;
use crate::region_map::{RegionMap, RegionRuntime, Verdict};
use crate::store::{StoreInfo, StoreState, StoreStats};

/// Everything PD knows: persisted metadata plus the runtime that heartbeats
/// attach to it. Metadata changes only through [`StateMachine::apply`]; the
/// public mutators here touch runtime only.
#[derive(Clone, Debug, Default)]
pub struct MetaState {
    cluster_id: u64,
    bootstrapped: bool,
    stores: BTreeMap<StoreId, StoreInfo>,
    regions: RegionMap,
    id_window_end: u64,
    tso_bound_ms: u64,
    config_overrides: BTreeMap<String, String>,
    schedulers: Option<Vec<String>>,
    /// Tombstone stores forgotten (`RemoveTombstones`): they may never
    /// register again.
    removed_stores: BTreeSet<StoreId>,
    members: BTreeMap<u64, Member>,
}

impl MetaState {
    /// The cluster id; 0 before `InitCluster`.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// True once `Bootstrap` succeeded.
    pub fn is_bootstrapped(&self) -> bool {
        self.bootstrapped
    }

    /// Every registered store, tombstones included.
    pub fn stores(&self) -> &BTreeMap<StoreId, StoreInfo> {
        &self.stores
    }

    /// True if store `id` was a Tombstone and has been forgotten: it may
    /// never come back.
    pub fn is_removed_store(&self, id: StoreId) -> bool {
        self.removed_stores.contains(&id)
    }

    /// Store `id`.
    pub fn store(&self, id: StoreId) -> Option<&StoreInfo> {
        self.stores.get(&id)
    }

    /// The region map.
    pub fn regions(&self) -> &RegionMap {
        &self.regions
    }

    /// Exclusive end of the durable id window.
    pub fn id_window_end(&self) -> u64 {
        self.id_window_end
    }

    /// The durable TSO bound, Unix milliseconds.
    pub fn tso_bound_ms(&self) -> u64 {
        self.tso_bound_ms
    }

    /// Config keys changed at run time: dotted key → value as JSON text.
    pub fn config_overrides(&self) -> &BTreeMap<String, String> {
        &self.config_overrides
    }

    /// Active scheduler names as last set at run time; `None` if never set
    /// (the defaults run).
    pub fn schedulers(&self) -> Option<&[String]> {
        self.schedulers.as_deref()
    }

    /// The PD members as last published (name and URLs), by member id.
    pub fn members(&self) -> &BTreeMap<u64, Member> {
        &self.members
    }

    /// Runtime: the latest heartbeat of region `id` (no-op if unknown).
    pub fn set_region_runtime(&mut self, id: RegionId, runtime: RegionRuntime) {
        self.regions.set_runtime(id, runtime);
    }

    /// Runtime: a store heartbeat arrived at `now` (no-op if unknown).
    pub fn record_store_heartbeat(&mut self, id: StoreId, stats: StoreStats, now: SystemTime) {
        if let Some(store) = self.stores.get_mut(&id) {
            store.stats = Some(stats);
            store.last_heartbeat = Some(now);
        }
    }
}

/// The metadata state bound to its engine.
pub struct StateMachine {
    engine: EngineRef,
    state: MetaState,
}

impl StateMachine {
    /// Loads every persisted record from `engine`.
    pub fn open(engine: EngineRef) -> Result<StateMachine> {
        let e = engine.as_ref();
        let mut state = MetaState {
            cluster_id: storage::get_u64(e, storage::CLUSTER_ID)?.unwrap_or(0),
            bootstrapped: storage::is_set(e, storage::BOOTSTRAPPED)?,
            id_window_end: storage::get_u64(e, storage::ID_WINDOW_END)?.unwrap_or(0),
            tso_bound_ms: storage::get_u64(e, storage::TSO_BOUND)?.unwrap_or(0),
            config_overrides: storage::get_overrides(e)?,
            schedulers: storage::get_schedulers(e)?,
            removed_stores: storage::get_removed_stores(e)?,
            ..MetaState::default()
        };
        for member in storage::load_members(e)? {
            state.members.insert(member.member_id, member);
        }
        for meta in storage::load_stores(e)? {
            state.stores.insert(meta.id, StoreInfo { meta, ..Default::default() });
        }
        for region in storage::load_regions(e)? {
            state.regions.put(region);
        }
        Ok(StateMachine { engine, state })
    }

    /// The state held by `records` (record key → value, the layout in
    /// `storage.rs`) as an external store keeps them (`--backend etcd`); the
    /// state machine's own engine is then an in-memory copy.
    pub fn from_records(records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Result<StateMachine> {
        let engine = Arc::new(MemEngine::new());
        let mut wb = WriteBatch::new();
        for (k, v) in records {
            wb.put(Cf::Meta, k, v);
        }
        engine.write(&wb, false)?;
        StateMachine::open(engine)
    }

    /// Follows a record another member wrote to the external store (`value`
    /// `None`: deleted), keeping the runtime attached to stores and regions.
    /// Records are whole values, so following them in the store's order
    /// ends in the writer's state.
    pub fn apply_record(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let s = &mut self.state;
        match storage::decode_record(key, value)? {
            Record::ClusterId(id) => s.cluster_id = id,
            Record::Bootstrapped(b) => s.bootstrapped = b,
            Record::IdWindowEnd(end) => s.id_window_end = end,
            Record::TsoBound(ms) => s.tso_bound_ms = ms,
            Record::ConfigOverrides(o) => s.config_overrides = o,
            Record::Schedulers(names) => s.schedulers = names,
            Record::RemovedStores(ids) => s.removed_stores = ids,
            Record::Member(id, Some(m)) => {
                s.members.insert(id, m);
            }
            Record::Member(id, None) => {
                s.members.remove(&id);
            }
            Record::Store(id, Some(meta)) => s.stores.entry(id).or_default().meta = meta,
            Record::Store(id, None) => {
                s.stores.remove(&id);
            }
            Record::Region(_, Some(region)) => {
                s.regions.put(region);
            }
            Record::Region(id, None) => {
                s.regions.remove(id);
            }
            Record::Unknown => return Ok(()),
        }
        let mut wb = WriteBatch::new();
        match value {
            Some(v) => wb.put(Cf::Meta, key, v),
            None => wb.delete(Cf::Meta, key),
        }
        self.engine.write(&wb, false)?;
        Ok(())
    }

    /// The record at `key` as last written or followed (the layout in
    /// `storage.rs`), `None` if absent.
    pub fn record(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.engine.get(Cf::Meta, key)?)
    }

    /// The current state.
    pub fn state(&self) -> &MetaState {
        &self.state
    }

    /// The current state, for runtime updates.
    pub fn state_mut(&mut self) -> &mut MetaState {
        &mut self.state
    }

    /// Applies one command and writes it (synced): [`StateMachine::stage`]
    /// with a batch of its own. A failed write panics (the process ends, see
    /// the module docs): memory already holds the change.
    pub fn apply(&mut self, cmd: &Command) -> Result<()> {
        let mut wb = WriteBatch::new();
        self.stage(cmd, &mut wb)?;
        if !wb.is_empty() {
            if let Err(e) = self.engine.write(&wb, true) {
                panic!("PD metadata write failed after the change was applied in memory: {e}");
            }
        }
        Ok(())
    }

    /// Applies one command: validates it against the state, stages its
    /// writes into `wb`, and updates memory. A refused command (an `Err`)
    /// changes nothing; the caller writes `wb` before telling anyone the
    /// command took effect. See the module docs for the invariants.
    pub fn stage(&mut self, cmd: &Command, wb: &mut WriteBatch) -> Result<()> {
        match cmd {
            Command::InitCluster { cluster_id } => {
                if *cluster_id == 0 {
                    return Err(Error::InvalidArgument("cluster id must not be 0".into()));
                }
                if self.state.cluster_id != 0 {
                    return Err(Error::InvalidArgument(format!(
                        "cluster id is already {}",
                        self.state.cluster_id
                    )));
                }
                storage::put_u64(wb, storage::CLUSTER_ID, *cluster_id);
                self.state.cluster_id = *cluster_id;
            }
            Command::Bootstrap { store, region } => {
                if self.state.bootstrapped {
                    return Err(Error::AlreadyBootstrapped);
                }
                storage::put_store(wb, store);
                storage::put_region(wb, region);
                wb.put(Cf::Meta, storage::BOOTSTRAPPED, [1u8]);
                self.state.stores.insert(store.id, StoreInfo { meta: store.clone(), ..Default::default() });
                self.state.regions.put(region.clone());
                self.state.bootstrapped = true;
            }
            Command::PutStore { store } => {
                if self.state.removed_stores.contains(&store.id) {
                    return Err(Error::StoreTombstone(store.id));
                }
                if let Some(cur) = self.state.stores.get(&store.id) {
                    if cur.meta.state == StoreState::Tombstone {
                        return Err(Error::StoreTombstone(store.id));
                    }
                }
                // Checked by the proposer too, but only here against the
                // state every member applies to: two racing registrations
                // of one address are both valid when proposed.
                if let Some(other) = self.state.stores.values().find(|s| {
                    s.meta.id != store.id
                        && s.meta.address == store.address
                        && s.meta.state != StoreState::Tombstone
                }) {
                    return Err(Error::DuplicateStoreAddress {
                        address: store.address.clone(),
                        existing: other.meta.id,
                    });
                }
                storage::put_store(wb, store);
                let entry = self.state.stores.entry(store.id).or_default();
                entry.meta = store.clone();
            }
            Command::SetStoreState { store, state } => {
                let cur = self.state.stores.get(store).ok_or(Error::StoreNotFound(*store))?;
                if cur.meta.state == StoreState::Tombstone && *state != StoreState::Tombstone {
                    return Err(Error::StoreTombstone(*store));
                }
                if *state == StoreState::Tombstone {
                    let n = self.state.regions.store_region_count(*store);
                    if n > 0 {
                        return Err(Error::InvalidArgument(format!("store {store} still holds {n} regions")));
                    }
                }
                let mut meta = cur.meta.clone();
                meta.state = *state;
                storage::put_store(wb, &meta);
                self.state.stores.get_mut(store).expect("checked above").meta = meta;
            }
            Command::RemoveTombstones => {
                let gone: Vec<StoreId> = self
                    .state
                    .stores
                    .values()
                    .filter(|s| s.meta.state == StoreState::Tombstone)
                    .map(|s| s.meta.id)
                    .collect();
                for id in gone {
                    storage::delete_store(wb, id);
                    self.state.stores.remove(&id);
                    self.state.removed_stores.insert(id);
                }
                storage::put_removed_stores(wb, &self.state.removed_stores);
            }
            Command::PutRegion { region } => {
                if self.state.regions.check(region) != Verdict::Changed {
                    return Ok(());
                }
                storage::put_region(wb, region);
                for id in self.state.regions.overlaps(region) {
                    storage::delete_region(wb, id);
                }
                self.state.regions.put(region.clone());
            }
            Command::AllocIdWindow { end } => {
                if *end > self.state.id_window_end {
                    storage::put_u64(wb, storage::ID_WINDOW_END, *end);
                    self.state.id_window_end = *end;
                }
            }
            Command::TsoWindow { physical_ms } => {
                if *physical_ms > self.state.tso_bound_ms {
                    storage::put_u64(wb, storage::TSO_BOUND, *physical_ms);
                    self.state.tso_bound_ms = *physical_ms;
                }
            }
            Command::UpdateConfig { changes } => {
                let mut overrides = self.state.config_overrides.clone();
                overrides.extend(changes.iter().cloned());
                storage::put_overrides(wb, &overrides);
                self.state.config_overrides = overrides;
            }
            Command::SetSchedulers { names } => {
                storage::put_schedulers(wb, names);
                self.state.schedulers = Some(names.clone());
            }
            Command::PutMember { member } => {
                if member.member_id == 0 || member.name.is_empty() {
                    return Err(Error::InvalidArgument("a member needs an id and a name".into()));
                }
                if self.state.members.get(&member.member_id) != Some(member) {
                    storage::put_member(wb, member);
                    self.state.members.insert(member.member_id, member.clone());
                }
            }
            Command::RemoveMember { member_id } => {
                if self.state.members.remove(member_id).is_some() {
                    storage::delete_member(wb, *member_id);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use mnemo_engine::RocksEngine;
    use mnemo_proto::types::{Peer, PeerId, PeerRole, Region, RegionEpoch};

    use super::*;
    use crate::store::StoreMeta;

    fn store(id: u64) -> StoreMeta {
        StoreMeta { id: StoreId(id), address: format!("n{id}:20160"), ..Default::default() }
    }

    fn region(id: u64, start: &str, end: &str, version: u64) -> Region {
        Region {
            id: RegionId(id),
            start_key: start.as_bytes().to_vec(),
            end_key: end.as_bytes().to_vec(),
            epoch: RegionEpoch { conf_ver: 1, version },
            peers: vec![Peer { id: PeerId(id + 100), store_id: StoreId(1), role: PeerRole::Voter }],
        }
    }

    #[test]
    fn bootstrap_is_accepted_once() {
        let mut sm = StateMachine::open(Arc::new(MemEngine::new())).unwrap();
        let cmd = Command::Bootstrap { store: store(1), region: region(2, "", "", 1) };
        sm.apply(&cmd).unwrap();
        assert!(matches!(sm.apply(&cmd), Err(Error::AlreadyBootstrapped)));
        assert!(sm.state().is_bootstrapped());
    }

    #[test]
    fn a_tombstone_store_stays_dead() {
        let mut sm = StateMachine::open(Arc::new(MemEngine::new())).unwrap();
        sm.apply(&Command::PutStore { store: store(1) }).unwrap();
        sm.apply(&Command::SetStoreState { store: StoreId(1), state: StoreState::Tombstone }).unwrap();
        assert!(matches!(sm.apply(&Command::PutStore { store: store(1) }), Err(Error::StoreTombstone(_))));
        let up = Command::SetStoreState { store: StoreId(1), state: StoreState::Up };
        assert!(matches!(sm.apply(&up), Err(Error::StoreTombstone(_))));
    }

    #[test]
    fn everything_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = Arc::new(RocksEngine::open(dir.path()).unwrap());
            let mut sm = StateMachine::open(engine).unwrap();
            sm.apply(&Command::InitCluster { cluster_id: 77 }).unwrap();
            sm.apply(&Command::Bootstrap { store: store(1), region: region(2, "", "", 1) }).unwrap();
            sm.apply(&Command::PutStore { store: store(3) }).unwrap();
            // A split: the new left half replaces the parent, then the parent
            // comes back as the right half. The deleted record must stay deleted.
            sm.apply(&Command::PutRegion { region: region(4, "", "m", 2) }).unwrap();
            sm.apply(&Command::PutRegion { region: region(2, "m", "", 2) }).unwrap();
            sm.apply(&Command::PutRegion { region: region(5, "a", "b", 1) }).unwrap(); // stale: no-op
            sm.apply(&Command::AllocIdWindow { end: 2000 }).unwrap();
            sm.apply(&Command::AllocIdWindow { end: 1000 }).unwrap(); // never lowers
            sm.apply(&Command::TsoWindow { physical_ms: 123_456 }).unwrap();
            let change = |k: &str, v: &str| Command::UpdateConfig { changes: vec![(k.into(), v.into())] };
            sm.apply(&change("schedule.max-store-down-time", "\"5s\"")).unwrap();
            sm.apply(&change("schedule.max-store-down-time", "\"7s\"")).unwrap();
            // the latest wins
            let schedulers = |names: &[&str]| Command::SetSchedulers {
                names: names.iter().map(|n| n.to_string()).collect(),
            };
            sm.apply(&schedulers(&["balance-leader-scheduler", "shuffle-leader-scheduler"])).unwrap();
            sm.apply(&schedulers(&["shuffle-leader-scheduler"])).unwrap(); // the whole set, replaced
        }
        let engine = Arc::new(RocksEngine::open(dir.path()).unwrap());
        let sm = StateMachine::open(engine).unwrap();
        let s = sm.state();
        assert_eq!(s.cluster_id(), 77);
        assert!(s.is_bootstrapped());
        assert_eq!(s.stores().keys().map(|id| id.0).collect::<Vec<_>>(), vec![1, 3]);
        let ids: Vec<u64> = s.regions().iter().map(|i| i.region.id.0).collect();
        assert_eq!(ids, vec![4, 2]);
        assert_eq!(s.id_window_end(), 2000);
        assert_eq!(s.tso_bound_ms(), 123_456);
        assert_eq!(s.config_overrides()["schedule.max-store-down-time"], "\"7s\"");
        assert_eq!(s.schedulers(), Some(&["shuffle-leader-scheduler".to_owned()][..]));
    }

    /// What a follower of an external store sees: the records each command
    /// wrote, applied one by one, and all records loaded at once, both end
    /// in the writer's state.
    #[test]
    fn followed_records_rebuild_the_writers_state() {
        let mut writer = StateMachine::open(Arc::new(MemEngine::new())).unwrap();
        let mut follower = StateMachine::from_records(Vec::new()).unwrap();
        let member = Member { name: "pd1".into(), member_id: 9, ..Default::default() };
        let change = |k: &str, v: &str| Command::UpdateConfig { changes: vec![(k.into(), v.into())] };
        let commands = [
            Command::InitCluster { cluster_id: 77 },
            Command::Bootstrap { store: store(1), region: region(2, "", "", 1) },
            Command::PutStore { store: store(3) },
            Command::PutRegion { region: region(4, "", "m", 2) },
            Command::PutRegion { region: region(2, "m", "", 2) },
            Command::PutRegion { region: region(6, "", "z", 3) }, // swallows 4 and 2
            Command::AllocIdWindow { end: 2000 },
            Command::TsoWindow { physical_ms: 123_456 },
            change("schedule.max-store-down-time", "\"5s\""),
            Command::SetSchedulers { names: vec!["shuffle-leader-scheduler".into()] },
            Command::PutMember { member: member.clone() },
            Command::RemoveMember { member_id: 9 },
            Command::PutMember { member },
            Command::SetStoreState { store: StoreId(3), state: StoreState::Tombstone },
            Command::RemoveTombstones,
        ];
        for cmd in &commands {
            let mut wb = WriteBatch::new();
            writer.stage(cmd, &mut wb).unwrap();
            for op in wb.ops() {
                match op {
                    mnemo_engine::WriteOp::Put { key, value, .. } => follower.apply_record(key, Some(value)),
                    mnemo_engine::WriteOp::Delete { key, .. } => follower.apply_record(key, None),
                    other => panic!("a state machine write the external store cannot hold: {other:?}"),
                }
                .unwrap();
            }
        }
        // Everything the follower holds, loaded at once (a member that
        // becomes leader, or starts, loads the store this way).
        let everything = mnemo_engine::ScanRange { start: b"", end: b"", reverse: false };
        let loaded_records =
            mnemo_engine::scan_collect(follower.engine.as_ref(), Cf::Meta, everything, 0).unwrap();
        let loaded = StateMachine::from_records(loaded_records).unwrap();
        for sm in [&follower, &loaded] {
            let (a, b) = (writer.state(), sm.state());
            assert_eq!(a.cluster_id(), b.cluster_id());
            assert_eq!(a.is_bootstrapped(), b.is_bootstrapped());
            assert_eq!(a.id_window_end(), b.id_window_end());
            assert_eq!(a.tso_bound_ms(), b.tso_bound_ms());
            assert_eq!(a.config_overrides(), b.config_overrides());
            assert_eq!(a.schedulers(), b.schedulers());
            assert!(b.is_removed_store(StoreId(3)) && b.store(StoreId(3)).is_none());
            assert_eq!(a.members(), b.members());
            let stores = |s: &MetaState| s.stores().values().map(|i| i.meta.clone()).collect::<Vec<_>>();
            assert_eq!(stores(a), stores(b));
            let regions = |s: &MetaState| s.regions().iter().map(|i| i.region.clone()).collect::<Vec<_>>();
            assert_eq!(regions(a), regions(b));
            assert_eq!(regions(b).len(), 1);
        }
    }
}
