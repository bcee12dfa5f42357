//! Store registration, heartbeats and lifecycle.

use std::collections::BTreeMap;
use std::time::SystemTime;

use mnemo_proto::types::StoreId;
use tracing::{info, warn};

use super::{validate_store, Cluster};
use crate::error::{Error, Result};
use crate::meta::Command;
use crate::schedule;
use crate::store::{StoreInfo, StoreMeta, StoreState, StoreStats};

impl Cluster {
    /// Registers a store or updates its address, labels and version. The
    /// store keeps its lifecycle state; a tombstone store is refused, and so
    /// is an address another live store already uses.
    pub fn put_store(&self, mut store: StoreMeta) -> Result<()> {
        validate_store(&store)?;
        let mut inner = self.inner.lock();
        inner.ensure_bootstrapped()?;
        {
            let state = inner.state();
            if let Some(other) = state.stores().values().find(|s| {
                s.meta.id != store.id
                    && s.meta.address == store.address
                    && s.meta.state != StoreState::Tombstone
            }) {
                return Err(Error::DuplicateStoreAddress { address: store.address, existing: other.meta.id });
            }
            match state.store(store.id) {
                Some(cur) if cur.meta.state == StoreState::Tombstone => {
                    return Err(Error::StoreTombstone(store.id))
                }
                Some(cur) => {
                    store.state = cur.meta.state;
                    // Labels set through the API (`pd-ctl store label`)
                    // stay; the node's own (`--labels`) win for the keys
                    // it sets.
                    let mut labels = cur.meta.labels.clone();
                    labels.extend(std::mem::take(&mut store.labels));
                    store.labels = labels;
                    if cur.meta == store {
                        return Ok(());
                    }
                }
                None if state.is_removed_store(store.id) => return Err(Error::StoreTombstone(store.id)),
                None => store.state = StoreState::Up,
            }
        }
        let (id, address) = (store.id, store.address.clone());
        inner.propose(Command::PutStore { store })?;
        info!(store_id = %id, %address, "store registered");
        Ok(())
    }

    /// Store `id`, with its latest heartbeat.
    pub fn get_store(&self, id: StoreId) -> Result<StoreInfo> {
        self.read_state(|s| s.store(id).cloned())?.ok_or(Error::StoreNotFound(id))
    }

    /// Sets labels of store `id` (`pd-ctl store label`): each key given
    /// takes its value, an empty value removes the key, other labels stay.
    /// Kept across the node's restarts, except for keys the node sets with
    /// `--labels` itself, which take the node's value again when it
    /// re-registers.
    pub fn set_store_labels(&self, id: StoreId, labels: BTreeMap<String, String>) -> Result<()> {
        if labels.is_empty() {
            return Err(Error::InvalidArgument("no label given (key=value ...)".into()));
        }
        if let Some(k) = labels.keys().find(|k| k.is_empty()) {
            return Err(Error::InvalidArgument(format!("label key {k:?} is empty")));
        }
        let mut inner = self.inner.lock();
        inner.ensure_bootstrapped()?;
        let mut meta = inner.state().store(id).ok_or(Error::StoreNotFound(id))?.meta.clone();
        if meta.state == StoreState::Tombstone {
            return Err(Error::StoreTombstone(id));
        }
        for (k, v) in labels {
            if v.is_empty() {
                meta.labels.remove(&k);
            } else {
                meta.labels.insert(k, v);
            }
        }
        validate_store(&meta)?;
        info!(store_id = %id, labels = ?meta.labels, "store labels set through the API");
        inner.propose(Command::PutStore { store: meta })
    }

    /// Forgets every Tombstone store (`pd-ctl store remove-tombstone`);
    /// answers their ids. Their ids stay refused: a node that comes back
    /// with one (restarted on its old data) is turned away as a tombstone.
    pub fn remove_tombstones(&self) -> Result<Vec<StoreId>> {
        let mut inner = self.inner.lock();
        inner.ensure_bootstrapped()?;
        let gone: Vec<StoreId> = inner
            .state()
            .stores()
            .values()
            .filter(|s| s.meta.state == StoreState::Tombstone)
            .map(|s| s.meta.id)
            .collect();
        if !gone.is_empty() {
            inner.propose(Command::RemoveTombstones)?;
            warn!(stores = ?gone, "tombstone stores removed");
        }
        Ok(gone)
    }

    /// Every store, optionally without tombstones.
    pub fn all_stores(&self, exclude_tombstone: bool) -> Result<Vec<StoreInfo>> {
        self.read_state(|s| {
            s.stores()
                .values()
                .filter(|s| !(exclude_tombstone && s.meta.state == StoreState::Tombstone))
                .cloned()
                .collect()
        })
    }

    /// Records a store heartbeat. An Offline store that no longer holds any
    /// region, by PD's map and by its own report, becomes Tombstone here.
    pub fn store_heartbeat(&self, id: StoreId, stats: StoreStats) -> Result<()> {
        let now = SystemTime::now();
        let mut inner = self.inner.lock();
        inner.ensure_bootstrapped()?;
        let state = match inner.state().store(id) {
            None => return Err(Error::StoreNotFound(id)),
            Some(s) => s.meta.state,
        };
        if state == StoreState::Tombstone {
            return Err(Error::StoreTombstone(id));
        }
        let drained = {
            let mut state = inner.state();
            state.record_store_heartbeat(id, stats, now);
            state.store(id).is_some_and(|s| schedule::is_drained(s, state.regions(), now))
        };
        if drained {
            inner.propose(Command::SetStoreState { store: id, state: StoreState::Tombstone })?;
            info!(store_id = %id, "offline store holds no region any more: now tombstone");
        }
        Ok(())
    }

    /// Changes a store's lifecycle state: Up ⇄ Offline (Offline only while
    /// `max-replicas` other stores are Up to take its replicas), and Offline
    /// → Tombstone once PD's map shows it holds no region (an operator's
    /// word that it is gone; PD itself waits for the store's own report of
    /// zero regions, see [`schedule::is_drained`]). Tombstone is final.
    pub fn set_store_state(&self, id: StoreId, new: StoreState) -> Result<()> {
        let mut inner = self.inner.lock();
        inner.ensure_bootstrapped()?;
        let cur = inner.state().store(id).ok_or(Error::StoreNotFound(id))?.meta.state;
        if cur == new {
            return Ok(());
        }
        match (cur, new) {
            (StoreState::Tombstone, _) => return Err(Error::StoreTombstone(id)),
            (StoreState::Up, StoreState::Tombstone) => {
                return Err(Error::InvalidArgument(format!("store {id} is Up; set it Offline first")))
            }
            (StoreState::Up, StoreState::Offline) => {
                // Its replicas need somewhere to go: max-replicas other
                // stores that are Up and not Down.
                let (up, max_replicas) = inner.scheduling(
                    SystemTime::now(),
                    Box::new(|snap, settings, _, _, _| {
                        let up = snap
                            .stores
                            .keys()
                            .filter(|s| **s != id && snap.is_up(**s, settings.max_store_down_time))
                            .count();
                        (up, settings.max_replicas)
                    }),
                );
                if up < max_replicas {
                    return Err(Error::InvalidArgument(format!(
                        "store {id} cannot go Offline: only {up} other stores are Up, fewer than \
                         max-replicas ({max_replicas})"
                    )));
                }
            }
            (StoreState::Offline, StoreState::Tombstone) => {
                let n = inner.state().regions().store_region_count(id);
                if n > 0 {
                    return Err(Error::InvalidArgument(format!("store {id} still holds {n} regions")));
                }
            }
            _ => {}
        }
        inner.propose(Command::SetStoreState { store: id, state: new })?;
        warn!(store_id = %id, from = cur.name(), to = new.name(), "store state changed");
        Ok(())
    }
}
