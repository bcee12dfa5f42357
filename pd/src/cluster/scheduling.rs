//! The patrol tick, operators asked for through the API, config changes and
//! schedulers added or removed at run time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use mnemo_proto::types::{PeerId, RegionId, StoreId};
use serde_json::Value;
use tracing::{info, warn};

use super::Cluster;
use crate::config::update::parse_changes;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::meta::Command;
use crate::schedule::schedulers::EVICT_LEADER;
use crate::schedule::{
    self, admin, AdminRequest, LimitType, ScheduleOrder, Scheduler, Settings, SplitPolicy, StoreLimit,
};
use crate::store::StoreState;

impl Cluster {
    /// One patrol tick (see `schedule::Coordinator::patrol`): drained
    /// Offline stores become Tombstone, operators are expired, checked and
    /// created. Returns the first steps of new operators, to be pushed to
    /// their leaders at once.
    pub fn patrol(&self) -> Result<Vec<ScheduleOrder>> {
        let now = SystemTime::now();
        let mut inner = self.inner.lock();
        if !inner.state().is_bootstrapped() {
            return Ok(Vec::new());
        }
        let drained = inner.scheduling(now, Box::new(|snap, _, _, _, _| schedule::drained_stores(snap)));
        for store in drained {
            inner.propose(Command::SetStoreState { store, state: StoreState::Tombstone })?;
            warn!(store_id = %store, "offline store holds no region any more: now Tombstone");
        }
        if !inner.prepared(now) {
            return Ok(Vec::new());
        }
        inner.ensure_ids()?;
        let orders = inner.scheduling(
            now,
            Box::new(|snap, settings, ops, coordinator, ids| {
                coordinator.patrol(snap, settings, ops, &mut || ids.try_alloc().map(PeerId))
            }),
        );
        self.still_serving(orders)
    }

    /// How often [`Cluster::patrol`] should run (`schedule.patrol-region-interval`).
    pub fn patrol_interval(&self) -> Duration {
        self.inner.lock().config.schedule.patrol_region_interval.0
    }

    /// Creates the operator `req` on `region` (replacing a scheduler's, not
    /// another admin one). Returns its first step to push to the leader.
    pub fn add_operator(&self, region: RegionId, req: &AdminRequest) -> Result<Option<ScheduleOrder>> {
        let now = SystemTime::now();
        let mut inner = self.inner.lock();
        inner.ensure_bootstrapped()?;
        if inner.state().regions().get(region).is_none() {
            return Err(Error::RegionNotFound(region));
        }
        inner.ensure_ids()?;
        let order = inner
            .scheduling(
                now,
                Box::new(|snap, settings, ops, _, ids| {
                    admin::add(snap, settings, ops, region, req, &mut || ids.try_alloc().map(PeerId))
                }),
            )
            .map_err(Error::InvalidArgument)?;
        info!(region_id = %region, operator = req.name(), "operator added through the API");
        self.still_serving(order)
    }

    /// Splits the regions containing `keys` at those keys, one split
    /// operator per region (`POST /regions/split`). Returns the first steps
    /// to push, and the regions being split; regions that refuse (one
    /// manual operator at a time) are left out, and only if every region
    /// refuses is it an error.
    pub fn split_at_keys(&self, keys: &[Vec<u8>]) -> Result<(Vec<ScheduleOrder>, Vec<RegionId>)> {
        let mut by_region: std::collections::BTreeMap<RegionId, Vec<Vec<u8>>> = Default::default();
        {
            let inner = self.inner.lock();
            inner.ensure_bootstrapped()?;
            let state = inner.state();
            for key in keys {
                let region = state.regions().get_by_key(key).ok_or_else(|| {
                    Error::InvalidArgument(format!("no region contains key {}", hex::encode_upper(key)))
                })?;
                if region.region.start_key != *key {
                    by_region.entry(region.region.id).or_default().push(key.clone());
                }
            }
        }
        // Each region on its own: one that refuses (it already has a manual
        // operator) does not stop the others, whose first steps must still
        // be pushed. Only if none takes the split is it an error.
        let (mut orders, mut split, mut refusal) = (Vec::new(), Vec::new(), None);
        for (region, keys) in by_region {
            let req = AdminRequest::Split(SplitPolicy::UseKeys(keys));
            match self.add_operator(region, &req) {
                Ok(order) => {
                    orders.extend(order);
                    split.push(region);
                }
                Err(e) => {
                    warn!(region_id = %region, "split refused: {e}");
                    refusal.get_or_insert(e);
                }
            }
        }
        match refusal {
            Some(e) if split.is_empty() => Err(e),
            _ => Ok((orders, split)),
        }
    }

    /// Scatters `regions` (`POST /regions/scatter`, pd-ctl `operator add
    /// scatter-region(s)`): one scatter-region operator each, to the stores
    /// [`ScatterPicks`] chooses, picks counted across this call and the
    /// calls before it (on this member) so the regions end spread evenly. Returns the first steps to push, the
    /// regions scattered (given an operator, or where the scatter would put
    /// them already), and the others with the reason (a manual operator in
    /// flight, too few stores, ...).
    #[allow(clippy::type_complexity)]
    pub fn scatter_regions(
        &self,
        regions: &[RegionId],
    ) -> Result<(Vec<ScheduleOrder>, Vec<RegionId>, Vec<(RegionId, String)>)> {
        self.inner.lock().ensure_bootstrapped()?;
        // Held for the whole call (always taken before `inner`): scatters
        // run one after another, each seeing the picks of those before.
        let mut picks = self.scatter_picks.lock();
        let mut rng = rand::thread_rng();
        let (mut orders, mut scattered, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        // One region at a time, each under its own lock: heartbeats go on
        // between two regions of a long range.
        for (i, &region) in regions.iter().enumerate() {
            let mut inner = self.inner.lock();
            if let Err(e) = inner.ensure_ids() {
                // The operators created so far stand (their regions'
                // heartbeats carry their steps); the rest is not tried.
                failed.extend(regions[i..].iter().map(|r| (*r, format!("no peer ids: {e}"))));
                break;
            }
            let outcome = inner.scheduling(
                SystemTime::now(),
                Box::new(|snap, settings, ops, _, ids| {
                    let info =
                        snap.regions.get(region).ok_or_else(|| format!("region {region} not found"))?;
                    let ctx = crate::schedule::Ctx { snap, settings, ops };
                    let (to_stores, leader) = picks.choose(info, &ctx, &mut rng)?;
                    let order = if crate::schedule::ScatterPicks::in_place(info, &to_stores, leader) {
                        None // where the scatter would put it already
                    } else {
                        let req = AdminRequest::Scatter { to_stores: to_stores.clone(), leader };
                        admin::add(snap, settings, ops, region, &req, &mut || ids.try_alloc().map(PeerId))?
                    };
                    picks.count(&to_stores, leader);
                    Ok(order)
                }),
            );
            match outcome {
                Ok(order) => {
                    orders.extend(order);
                    scattered.push(region);
                }
                Err(e) => failed.push((region, e)),
            }
        }
        drop(picks);
        info!(scattered = scattered.len(), failed = failed.len(), "regions scattered through the API");
        let orders = self.still_serving(orders)?;
        Ok((orders, scattered, failed))
    }

    /// Cancels the operator of `region`; false if it had none.
    pub fn remove_operator(&self, region: RegionId) -> bool {
        let removed = self.inner.lock().operators.remove(region);
        if let Some(op) = &removed {
            crate::metrics::PD.operator(op.desc, "cancel");
            warn!(region_id = %region, desc = op.desc, "operator cancelled through the API");
        }
        removed.is_some()
    }

    /// Applies run-time config changes (see `config::update` for the body's
    /// shape), persisted like other metadata; returns the new effective config.
    pub fn update_config(&self, body: &Value) -> Result<Config> {
        self.inner.lock().change_config(body)
    }

    /// Every store's limit (PD's `store limit`), tombstones left out:
    /// store id → peers added and removed per minute.
    pub fn store_limits(&self) -> BTreeMap<u64, StoreLimit> {
        let inner = self.inner.lock();
        let ids: Vec<StoreId> = inner
            .state()
            .stores()
            .values()
            .filter(|s| s.meta.state != StoreState::Tombstone)
            .map(|s| s.meta.id)
            .collect();
        ids.into_iter().map(|id| (id.0, inner.settings.store_limit(id))).collect()
    }

    /// Sets the limit of `store` to `rate` peers per minute, for `ty`
    /// (`None`: adding and removing alike); `store` `None` sets the default
    /// every store without its own setting follows (those with one follow
    /// it again for `ty`). Persisted as `[schedule]` config; the read and
    /// the change happen under one lock, so concurrent calls do not undo
    /// each other.
    pub fn set_store_limit(&self, store: Option<u64>, rate: f64, ty: Option<LimitType>) -> Result<Config> {
        if !(rate.is_finite() && rate >= 0.0) {
            return Err(Error::InvalidArgument(format!("store limit rate {rate} must be a number >= 0")));
        }
        if let Some(id) = store {
            if !self.read(|v| v.state.store(StoreId(id)).is_some()) {
                return Err(Error::StoreNotFound(StoreId(id)));
            }
        }
        let (add, remove) = (ty != Some(LimitType::RemovePeer), ty != Some(LimitType::AddPeer));
        let mut inner = self.inner.lock();
        let mut overrides = inner.config.schedule.store_limit.clone();
        let mut body = serde_json::Map::new();
        match store {
            None => {
                for (key, on) in
                    [("schedule.store-limit-add-peer", add), ("schedule.store-limit-remove-peer", remove)]
                {
                    if on {
                        body.insert(key.into(), rate.into());
                    }
                }
                for l in overrides.values_mut() {
                    if add {
                        l.add_peer = None;
                    }
                    if remove {
                        l.remove_peer = None;
                    }
                }
                overrides.retain(|_, l| l.add_peer.is_some() || l.remove_peer.is_some());
            }
            Some(id) => {
                let l = overrides.entry(id.to_string()).or_default();
                if add {
                    l.add_peer = Some(rate);
                }
                if remove {
                    l.remove_peer = Some(rate);
                }
            }
        }
        body.insert(
            "schedule.store-limit".into(),
            serde_json::to_value(overrides).expect("limits serialize"),
        );
        inner.change_config(&Value::Object(body))
    }

    /// Sets the leader and region weights of `store` (`pd-ctl store
    /// weight`), persisted as `schedule.store-weight`; 1 and 1 drop the
    /// store's entry.
    pub fn set_store_weight(&self, store: StoreId, leader: f64, region: f64) -> Result<Config> {
        use crate::config::{MAX_STORE_WEIGHT, MIN_STORE_WEIGHT};
        let ok = |w: f64| (MIN_STORE_WEIGHT..=MAX_STORE_WEIGHT).contains(&w);
        if !ok(leader) || !ok(region) {
            return Err(Error::InvalidArgument(format!(
                "weights {leader} and {region} must be in [{MIN_STORE_WEIGHT}, {MAX_STORE_WEIGHT}]"
            )));
        }
        if !self.read(|v| v.state.store(store).is_some()) {
            return Err(Error::StoreNotFound(store));
        }
        let mut inner = self.inner.lock();
        let mut weights = inner.config.schedule.store_weight.clone();
        if leader == 1.0 && region == 1.0 {
            weights.remove(&store.0.to_string());
        } else {
            weights.insert(store.0.to_string(), crate::config::StoreWeightConfig { leader, region });
        }
        let body = serde_json::json!({ "schedule.store-weight": weights });
        inner.change_config(&body)
    }

    /// The schedulers that run on each patrol tick, in the order they run.
    pub fn schedulers(&self) -> Vec<Scheduler> {
        self.inner.lock().coordinator.schedulers().iter().copied().collect()
    }

    /// Starts the scheduler called `name` (PD's name, e.g.
    /// `shuffle-leader-scheduler`; `evict-leader-scheduler` takes `store`)
    /// from the next patrol tick on, and persists the active set.
    /// [`Error::InvalidArgument`] for an unknown name or store,
    /// [`Error::SchedulerExists`] if it already runs (PD refuses a second
    /// add too).
    pub fn add_scheduler(&self, name: &str, store: Option<u64>) -> Result<Scheduler> {
        let unknown = || {
            Error::InvalidArgument(format!(
                "unknown scheduler {name:?} (known: {})",
                Scheduler::known_names()
            ))
        };
        let scheduler = match (name, store) {
            (EVICT_LEADER, Some(id)) => {
                let store = StoreId(id);
                let known = self
                    .read(|v| v.state.store(store).is_some_and(|s| s.meta.state != StoreState::Tombstone));
                if !known {
                    return Err(Error::StoreNotFound(store));
                }
                Scheduler::EvictLeader(store)
            }
            (EVICT_LEADER, None) => {
                return Err(Error::InvalidArgument("evict-leader-scheduler needs a store id".into()))
            }
            (_, Some(_)) => {
                return Err(Error::InvalidArgument(format!("scheduler {name:?} takes no store id")))
            }
            (_, None) => Scheduler::parse(name).ok_or_else(unknown)?,
        };
        let mut inner = self.inner.lock();
        let mut active = inner.coordinator.schedulers().clone();
        if !active.insert(scheduler) {
            return Err(Error::SchedulerExists(scheduler.name()));
        }
        inner.set_schedulers(active)?;
        warn!(%scheduler, "scheduler added at run time");
        Ok(scheduler)
    }

    /// Stops the scheduler called `name` and persists the active set;
    /// operators it already created finish as usual.
    /// [`Error::SchedulerNotFound`] if no such scheduler runs.
    pub fn remove_scheduler(&self, name: &str) -> Result<Scheduler> {
        let not_found = || Error::SchedulerNotFound(name.to_owned());
        let scheduler = Scheduler::parse(name).ok_or_else(not_found)?;
        let mut inner = self.inner.lock();
        let mut active = inner.coordinator.schedulers().clone();
        if !active.remove(&scheduler) {
            return Err(not_found());
        }
        inner.set_schedulers(active)?;
        warn!(%scheduler, "scheduler removed at run time");
        Ok(scheduler)
    }

    /// Pauses the active scheduler `name` for `delay` (zero: resumes it).
    /// In memory only: a restart or a new PD leader runs it again.
    pub fn pause_scheduler(&self, name: &str, delay: Duration) -> Result<Scheduler> {
        let not_found = || Error::SchedulerNotFound(name.to_owned());
        let scheduler = Scheduler::parse(name).ok_or_else(not_found)?;
        let until = match delay.is_zero() {
            true => None,
            false => Some(SystemTime::now().checked_add(delay).ok_or_else(|| {
                Error::InvalidArgument(format!("a pause of {} s is too long", delay.as_secs()))
            })?),
        };
        if !self.inner.lock().coordinator.pause(scheduler, until) {
            return Err(not_found());
        }
        warn!(%scheduler, ?delay, "scheduler paused (zero: resumed)");
        Ok(scheduler)
    }

    /// Active schedulers paused now, with when each resumes.
    pub fn paused_schedulers(&self) -> Vec<(Scheduler, SystemTime)> {
        self.inner.lock().coordinator.paused(SystemTime::now())
    }
}

impl super::Inner {
    /// Persists `active` as the schedulers that run, then runs them.
    fn set_schedulers(&mut self, active: BTreeSet<Scheduler>) -> Result<()> {
        let names = active.iter().map(|s| s.name()).collect();
        self.propose(Command::SetSchedulers { names })?;
        self.coordinator.set_schedulers(active);
        self.settings.evict_leader_stores = self.coordinator.evict_leader_stores();
        Ok(())
    }
}

/// The schedulers named in the persisted metadata. A name this version does
/// not know is skipped with a warning rather than keeping PD from starting.
pub(super) fn parse_persisted_schedulers(names: &[String]) -> BTreeSet<Scheduler> {
    names
        .iter()
        .filter_map(|name| {
            let parsed = Scheduler::parse(name);
            if parsed.is_none() {
                warn!(scheduler = %name, "ignoring an unknown persisted scheduler");
            }
            parsed
        })
        .collect()
}

impl super::Inner {
    /// Applies and persists a config change (see [`Cluster::update_config`]).
    fn change_config(&mut self, body: &Value) -> Result<Config> {
        let changes = parse_changes(body)?;
        let (config, canonical) = self.config.with_changes(&changes)?;
        let persisted = canonical.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        self.propose(Command::UpdateConfig { changes: persisted })?;
        for (key, value) in &canonical {
            warn!(%key, %value, "config changed at run time");
        }
        self.settings = Settings::from_config(&config);
        self.settings.evict_leader_stores = self.coordinator.evict_leader_stores();
        self.config = config.clone();
        Ok(config)
    }
}
