//! The knobs scheduling reads, taken from `[schedule]` and `[replication]`
//! (file or run time; see `config`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mnemo_proto::types::StoreId;

use crate::config::Config;
use crate::region_map::RegionInfo;

/// Scheduling configuration, one flat struct.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Voters per region (`replication.max-replicas`).
    pub max_replicas: usize,
    /// Label keys, widest first (`replication.location-labels`).
    pub location_labels: Vec<String>,
    /// When a silent store counts as Down (`schedule.max-store-down-time`).
    pub max_store_down_time: Duration,
    /// Life of an operator (`schedule.operator-timeout`); leader transfers get
    /// at most [`LEADER_OPERATOR_TIMEOUT`].
    pub operator_timeout: Duration,
    /// Leader operators (balance-leader, shuffle-leader) in flight
    /// (`schedule.leader-schedule-limit`).
    pub leader_limit: usize,
    /// Region operators (balance-region, shuffle-region) in flight
    /// (`schedule.region-schedule-limit`).
    pub region_limit: usize,
    /// Replica-checker operators in flight (`schedule.replica-schedule-limit`).
    pub replica_limit: usize,
    /// Operators adding a peer to one store at once (`schedule.max-snapshot-count`).
    pub max_snapshot_count: usize,
    /// Peers added to / removed from a store per minute, by default
    /// (`schedule.store-limit-add-peer`, `-remove-peer`).
    pub store_limit: StoreLimit,
    /// Per-store overrides (`schedule.store-limit`).
    pub store_limits: BTreeMap<StoreId, StoreLimit>,
    /// Disk fuller than this is low on space (`schedule.low-space-ratio`).
    pub low_space_ratio: f64,
    /// Per-store weights (`schedule.store-weight`); others weigh 1 and 1.
    pub store_weights: BTreeMap<StoreId, StoreWeight>,
    /// Stores an evict-leader scheduler drains: no leader is handed to
    /// them. Not config: follows the active schedulers (kept in step by the
    /// cluster whenever either changes).
    pub evict_leader_stores: BTreeSet<StoreId>,
}

/// Peers per minute a store may gain and lose through scheduling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StoreLimit {
    /// Peers added per minute.
    pub add_peer: f64,
    /// Peers removed per minute.
    pub remove_peer: f64,
}

/// What a store's scores are divided by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StoreWeight {
    /// Divides its leader count.
    pub leader: f64,
    /// Divides its region size.
    pub region: f64,
}

impl Default for StoreWeight {
    fn default() -> Self {
        StoreWeight { leader: 1.0, region: 1.0 }
    }
}

/// A leader transfer that has not happened after this long will not: the
/// target lags or is gone. Dropping it frees a `leader-schedule-limit` slot.
pub const LEADER_OPERATOR_TIMEOUT: Duration = Duration::from_secs(10);

/// Extra time an operator that sends a snapshot gets per MiB of region: a
/// snapshot is assumed to move at 1 MiB/s or better, even on a busy store.
pub const SNAPSHOT_SECS_PER_MIB: u64 = 1;

impl Settings {
    /// Life of an operator that adds a peer to `info`'s region (the new
    /// peer needs a snapshot of it): `operator-timeout` plus
    /// [`SNAPSHOT_SECS_PER_MIB`] per MiB of region, so a big region's
    /// snapshot is not cut short and started again for ever.
    pub fn snapshot_timeout(&self, info: &RegionInfo) -> Duration {
        self.operator_timeout + Duration::from_secs(info.weight().saturating_mul(SNAPSHOT_SECS_PER_MIB))
    }

    /// The settings of `config`.
    pub fn from_config(config: &Config) -> Settings {
        let (s, r) = (&config.schedule, &config.replication);
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Settings {
            max_replicas: n(r.max_replicas),
            location_labels: r.location_labels.clone(),
            max_store_down_time: s.max_store_down_time.0,
            operator_timeout: s.operator_timeout.0,
            leader_limit: n(s.leader_schedule_limit),
            region_limit: n(s.region_schedule_limit),
            replica_limit: n(s.replica_schedule_limit),
            max_snapshot_count: n(s.max_snapshot_count),
            store_limit: StoreLimit {
                add_peer: s.store_limit_add_peer,
                remove_peer: s.store_limit_remove_peer,
            },
            store_limits: s
                .store_limit
                .iter()
                .filter_map(|(id, l)| {
                    let limit = StoreLimit {
                        add_peer: l.add_peer.unwrap_or(s.store_limit_add_peer),
                        remove_peer: l.remove_peer.unwrap_or(s.store_limit_remove_peer),
                    };
                    Some((StoreId(id.parse().ok()?), limit))
                })
                .collect(),
            low_space_ratio: s.low_space_ratio,
            store_weights: s
                .store_weight
                .iter()
                .filter_map(|(id, w)| {
                    Some((StoreId(id.parse().ok()?), StoreWeight { leader: w.leader, region: w.region }))
                })
                .collect(),
            evict_leader_stores: BTreeSet::new(),
        }
    }

    /// The weights of `store`.
    pub fn store_weight(&self, store: StoreId) -> StoreWeight {
        self.store_weights.get(&store).copied().unwrap_or_default()
    }

    /// The limits of `store`.
    pub fn store_limit(&self, store: StoreId) -> StoreLimit {
        self.store_limits.get(&store).copied().unwrap_or(self.store_limit)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_config(&Config::default())
    }
}
