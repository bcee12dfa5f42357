//! The cluster: PD's request handling, transport-free.
//!
//! [`Cluster`] owns the metadata [`StateMachine`] (behind a [`Replicator`]),
//! the id and TSO allocators and the operators, all under one mutex: every
//! request decides and proposes atomically, so racing `Bootstrap` calls have
//! exactly one winner and two `PutStore`s cannot both claim an address.
//! Proposals write the engine with fsync while holding the lock; PD's write
//! rate (new windows every 1,000 ids or ~2 s of TSO, region changes) keeps
//! that cheap.
//!
//! Scheduling decisions are made by `schedule` (sans-IO) under the same
//! lock: on each region heartbeat, and on [`Cluster::patrol`], which the
//! server calls every `schedule.patrol-region-interval`. Which schedulers
//! run is persisted metadata like the config changed at run time
//! ([`Cluster::add_scheduler`], [`Cluster::remove_scheduler`]).
//!
//! The gRPC and HTTP layers (`server/`) convert wire types, call these
//! methods and convert back; nothing here knows about tonic or axum.

mod heartbeat;
mod scheduling;
mod stores;

use std::time::SystemTime;

use mnemo_node::engine::EngineRef;
use mnemo_proto::types::{Region, RegionId, StoreId};
use parking_lot::Mutex;
use tracing::{info, warn};

pub use crate::schedule::ScheduleOrder;
pub use heartbeat::{RegionHeartbeat, SplitIds};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::id::IdAllocator;
use crate::member::Member;
use crate::meta::{Command, LocalReplicator, MetaState, Replicator, StateMachine};
use crate::region_map::RegionInfo;
use crate::schedule::{ClusterSnapshot, Coordinator, OperatorController, Settings};
use crate::store::{StoreMeta, StoreState};
use crate::tso::{Timestamp, TsoAllocator, TsoStep, MAX_LOGICAL};

/// PD's state and request handling.
pub struct Cluster {
    member: Member,
    cluster_id: u64,
    alive_since: SystemTime,
    /// The timestamp oracle, under its own lock: a timestamp never waits
    /// for heartbeats, scheduling or HTTP work on `inner`, except for the
    /// write of a new window bound (about every 2 s), which goes through
    /// `inner` like any metadata change. Lock order: `tso`, then `inner`.
    tso: Mutex<TsoAllocator>,
    inner: Mutex<Inner>,
}

struct Inner {
    sm: StateMachine,
    replicator: Box<dyn Replicator>,
    ids: IdAllocator,
    operators: OperatorController,
    coordinator: Coordinator,
    /// The effective config: file and flags, then run-time changes.
    config: Config,
    /// The scheduling knobs of `config`.
    settings: Settings,
}

/// Fresh peer ids kept at hand before scheduling runs, so that decisions,
/// which borrow the state, never have to persist an id window midway.
const IDS_AT_HAND: u64 = 64;

impl Inner {
    fn propose(&mut self, cmd: Command) -> Result<()> {
        self.replicator.replicate(&mut self.sm, cmd)
    }

    fn state(&self) -> &MetaState {
        self.sm.state()
    }

    fn alloc_id(&mut self) -> Result<u64> {
        loop {
            if let Some(id) = self.ids.try_alloc() {
                return Ok(id);
            }
            let end = self.ids.next_window_end();
            self.propose(Command::AllocIdWindow { end })?;
            self.ids.extend(end);
        }
    }

    /// Makes sure [`IDS_AT_HAND`] ids can be handed out without a write.
    fn ensure_ids(&mut self) -> Result<()> {
        if self.ids.remaining() < IDS_AT_HAND {
            let end = self.ids.next_window_end();
            self.propose(Command::AllocIdWindow { end })?;
            self.ids.extend(end);
        }
        Ok(())
    }

    /// The scheduling inputs at `now`, and everything scheduling changes.
    fn scheduling(
        &mut self,
        now: SystemTime,
        alive_since: SystemTime,
    ) -> (ClusterSnapshot<'_>, &Settings, &mut OperatorController, &mut Coordinator, &mut IdAllocator) {
        let state = self.sm.state();
        let snap = ClusterSnapshot { stores: state.stores(), regions: state.regions(), now, alive_since };
        (snap, &self.settings, &mut self.operators, &mut self.coordinator, &mut self.ids)
    }

    fn ensure_bootstrapped(&self) -> Result<()> {
        if self.state().is_bootstrapped() {
            Ok(())
        } else {
            Err(Error::NotBootstrapped)
        }
    }
}

/// A read-only look at the whole cluster, for the HTTP API.
pub struct ClusterView<'a> {
    /// Metadata and runtime.
    pub state: &'a MetaState,
    /// Operators in flight.
    pub operators: &'a OperatorController,
    /// The instant of the view.
    pub now: SystemTime,
    /// When this PD started serving (grace for silent stores).
    pub alive_since: SystemTime,
    /// The effective configuration.
    pub config: &'a Config,
}

impl Cluster {
    /// Loads the metadata from `engine` and, on a first start, creates the
    /// cluster id. Applies commands directly (one member).
    pub fn open(config: Config, member: Member, engine: EngineRef) -> Result<Cluster> {
        Cluster::open_with(config, member, engine, Box::new(LocalReplicator))
    }

    /// [`Cluster::open`] with another replicator.
    pub fn open_with(
        config: Config,
        member: Member,
        engine: EngineRef,
        replicator: Box<dyn Replicator>,
    ) -> Result<Cluster> {
        let sm = StateMachine::open(engine)?;
        let state = sm.state();
        let ids = IdAllocator::new(state.id_window_end());
        let tso = TsoAllocator::new(state.tso_bound_ms());
        let config = with_overrides(config, state.config_overrides());
        let settings = Settings::from_config(&config);
        let mut coordinator = Coordinator::new(rand::random());
        if let Some(names) = state.schedulers() {
            coordinator.set_schedulers(scheduling::parse_persisted_schedulers(names));
        }
        let mut inner = Inner {
            sm,
            replicator,
            ids,
            operators: OperatorController::default(),
            coordinator,
            config,
            settings,
        };
        if inner.state().cluster_id() == 0 {
            let cluster_id = new_cluster_id();
            inner.propose(Command::InitCluster { cluster_id })?;
            info!(cluster_id, "created a new cluster id");
        }
        let cluster_id = inner.state().cluster_id();
        info!(
            cluster_id,
            bootstrapped = inner.state().is_bootstrapped(),
            stores = inner.state().stores().len(),
            regions = inner.state().regions().len(),
            schedulers = %inner.coordinator.schedulers().iter().map(|s| s.name()).collect::<Vec<_>>().join(","),
            "metadata loaded"
        );
        Ok(Cluster {
            member,
            cluster_id,
            alive_since: SystemTime::now(),
            tso: Mutex::new(tso),
            inner: Mutex::new(inner),
        })
    }

    /// The cluster id (nonzero, fixed for the cluster's life).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// This member.
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// The effective configuration (file and flags, then run-time changes).
    pub fn config(&self) -> Config {
        self.inner.lock().config.clone()
    }

    /// `Ok` if a request header's cluster id is this cluster's.
    pub fn check_cluster_id(&self, got: u64) -> Result<()> {
        if got == self.cluster_id {
            Ok(())
        } else {
            Err(Error::ClusterIdMismatch { need: self.cluster_id, got })
        }
    }

    /// Runs `f` on a consistent view of everything.
    pub fn read<R>(&self, f: impl FnOnce(ClusterView<'_>) -> R) -> R {
        let inner = self.inner.lock();
        f(ClusterView {
            state: inner.state(),
            operators: &inner.operators,
            now: SystemTime::now(),
            alive_since: self.alive_since,
            config: &inner.config,
        })
    }

    /// True once the first store and region were recorded.
    pub fn is_bootstrapped(&self) -> bool {
        self.inner.lock().state().is_bootstrapped()
    }

    /// Records the first store and the region covering the whole key space.
    /// Of racing callers exactly one succeeds; the others get
    /// [`Error::AlreadyBootstrapped`].
    pub fn bootstrap(&self, mut store: StoreMeta, region: Region) -> Result<()> {
        validate_store(&store)?;
        let invalid = |m: &str| Err(Error::InvalidArgument(m.into()));
        if region.id.0 == 0 {
            return invalid("bootstrap region id must not be 0");
        }
        if !region.start_key.is_empty() || !region.end_key.is_empty() {
            return invalid("the bootstrap region must cover the whole key space");
        }
        if region.peers.is_empty() || region.peers.iter().any(|p| p.id.0 == 0 || p.store_id != store.id) {
            return invalid("the bootstrap region needs peers with nonzero ids, all on the bootstrap store");
        }
        store.state = StoreState::Up;
        let mut inner = self.inner.lock();
        if inner.state().is_bootstrapped() {
            return Err(Error::AlreadyBootstrapped);
        }
        let (store_id, region_id) = (store.id, region.id);
        inner.propose(Command::Bootstrap { store, region })?;
        info!(%store_id, %region_id, "cluster bootstrapped");
        Ok(())
    }

    /// A fresh id (stores, regions, peers). Works before bootstrap: nodes
    /// allocate their store id first.
    pub fn alloc_id(&self) -> Result<u64> {
        self.inner.lock().alloc_id()
    }

    /// Allocates `count` timestamps; returns the last of them.
    pub fn tso(&self, count: u32) -> Result<Timestamp> {
        if count == 0 || u64::from(count) > MAX_LOGICAL {
            return Err(Error::InvalidArgument(format!("tso count {count} must be in 1..={MAX_LOGICAL}")));
        }
        let mut tso = self.tso.lock();
        loop {
            let now_ms = crate::time::unix_ms(SystemTime::now());
            match tso.alloc(count, now_ms) {
                TsoStep::Ready(ts) => return Ok(ts),
                TsoStep::NeedSave { bound_ms } => {
                    self.inner.lock().propose(Command::TsoWindow { physical_ms: bound_ms })?;
                    tso.saved(bound_ms);
                }
            }
        }
    }

    /// The region containing `key` (with its leader, if known).
    pub fn get_region(&self, key: &[u8]) -> Result<Option<RegionInfo>> {
        let inner = self.inner.lock();
        inner.ensure_bootstrapped()?;
        Ok(inner.state().regions().get_by_key(key).cloned())
    }

    /// The region before the one containing `key`.
    pub fn get_prev_region(&self, key: &[u8]) -> Result<Option<RegionInfo>> {
        let inner = self.inner.lock();
        inner.ensure_bootstrapped()?;
        Ok(inner.state().regions().prev_of_key(key).cloned())
    }

    /// Region `id`.
    pub fn get_region_by_id(&self, id: RegionId) -> Result<Option<RegionInfo>> {
        let inner = self.inner.lock();
        inner.ensure_bootstrapped()?;
        Ok(inner.state().regions().get(id).cloned())
    }

    /// Regions intersecting `[start, end)` (empty end = +inf), at most `limit`
    /// (0 = all).
    pub fn scan_regions(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<RegionInfo>> {
        let inner = self.inner.lock();
        inner.ensure_bootstrapped()?;
        Ok(inner.state().regions().scan(start, end, limit).into_iter().cloned().collect())
    }
}

/// `config` with the run-time changes persisted in `overrides` replayed over
/// it. A change that no longer applies (a key this version does not know)
/// is skipped with a warning rather than keeping PD from starting.
fn with_overrides(config: Config, overrides: &std::collections::BTreeMap<String, String>) -> Config {
    let mut config = config;
    for (key, text) in overrides {
        let applied = serde_json::from_str(text)
            .map_err(|e| Error::Config(e.to_string()))
            .and_then(|value| config.with_changes(&[(key.clone(), value)]));
        match applied {
            Ok((c, _)) => {
                info!(key = %key, value = %text, "config changed at run time earlier: applied over the file");
                config = c;
            }
            Err(e) => warn!(key = %key, value = %text, error = %e, "ignoring a persisted config change"),
        }
    }
    config
}

fn validate_store(store: &StoreMeta) -> Result<()> {
    if store.id == StoreId(0) {
        return Err(Error::InvalidArgument("store id must not be 0".into()));
    }
    if store.address.is_empty() {
        return Err(Error::InvalidArgument(format!("store {} has no address", store.id)));
    }
    Ok(())
}

/// A new cluster id: seconds since the epoch in the high half (ids of
/// clusters created later sort later, like PD's), random low half; never 0.
fn new_cluster_id() -> u64 {
    let secs = crate::time::unix_ms(SystemTime::now()) / 1000;
    ((secs << 32) | u64::from(rand::random::<u32>())).max(1)
}

#[cfg(test)]
mod tests;
