//! The replica checker: keeps every region at `max-replicas` healthy voters.
//!
//! A peer is *healthy* when its store is Up or merely Disconnected (not yet
//! Down, Offline or Tombstone) and its leader does not report it down for
//! longer than `max-store-down-time`. For one region, in order:
//!
//! 1. an unhealthy learner is removed;
//! 2. a healthy learner that has caught up (not in `pending_peers`) is
//!    promoted if voters are missing, else removed as extra; one still
//!    catching up makes the checker wait;
//! 3. fewer healthy voters than `max-replicas`: add a learner on the best
//!    store (the operator then promotes it) — this is also how a peer on a
//!    Down or Offline store gets replaced;
//! 4. more voters than `max-replicas`: remove one, never the leader,
//!    unhealthy ones first, then the one sharing the most location labels
//!    with the others, then the one on the fullest store.
//!
//! The best store for a new replica is Up, heartbeating within 20 s, has no
//! peer of the region, does not share a `host` label value with a healthy
//! peer's store, and among those shares the fewest leading location labels
//! with the healthy peers' stores (spread over the widest level), then has
//! the fewest regions, then the lowest id.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use mnemo_proto::types::{Peer, PeerRole, StoreId};

use crate::region_map::RegionInfo;
use crate::store::{StoreInfo, StoreState, StoreStatus};

/// The label that must never repeat among a region's healthy replicas.
pub const HOST_LABEL: &str = "host";

/// The checker's knobs (from `[replication]` and `[schedule]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckerConfig {
    /// Voters per region (`replication.max-replicas`).
    pub max_replicas: usize,
    /// Label keys, widest first (`replication.location-labels`).
    pub location_labels: Vec<String>,
    /// When a silent store counts as Down (`schedule.max-store-down-time`).
    pub max_store_down_time: Duration,
}

/// The stores as the checker sees them.
pub struct Stores<'a> {
    /// Every registered store.
    pub infos: &'a BTreeMap<StoreId, StoreInfo>,
    /// Regions with a peer on a store (PD's region map count).
    pub region_count: &'a dyn Fn(StoreId) -> usize,
    /// When this PD started serving (grace for stores not heard from since).
    pub alive_since: SystemTime,
}

/// What the checker wants done to a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Promote this learner to voter.
    PromoteLearner(Peer),
    /// Add a new replica (learner first, then promoted) on this store.
    AddLearner {
        /// The target store.
        store: StoreId,
    },
    /// Remove this peer.
    RemovePeer {
        /// The peer to remove.
        peer: Peer,
        /// Why, e.g. `remove-down-replica`.
        reason: &'static str,
    },
}

/// Looks at one region at `now`; see the module docs for the rules.
pub fn check(
    region: &RegionInfo,
    stores: &Stores<'_>,
    cfg: &CheckerConfig,
    now: SystemTime,
) -> Option<Decision> {
    let r = &region.region;
    let healthy = |p: &Peer| is_healthy(p, region, stores, cfg, now);
    let pending = |p: &Peer| region.runtime.pending_peers.iter().any(|q| q.id == p.id);
    let healthy_voters = r.voters().filter(|p| healthy(p)).count();

    if let Some(&l) = r.learners().find(|l| !healthy(l)) {
        return Some(Decision::RemovePeer { peer: l, reason: "remove-unhealthy-learner" });
    }
    if let Some(&l) = r.learners().next() {
        return if pending(&l) {
            None
        } else if healthy_voters < cfg.max_replicas {
            Some(Decision::PromoteLearner(l))
        } else {
            Some(Decision::RemovePeer { peer: l, reason: "remove-extra-learner" })
        };
    }
    if healthy_voters < cfg.max_replicas {
        if let Some(store) = pick_target(region, stores, cfg, now) {
            return Some(Decision::AddLearner { store });
        }
    }
    if r.voters().count() > cfg.max_replicas {
        let leader = region.leader().map(|l| l.id);
        let others = |p: &Peer| r.voters().filter(|q| q.id != p.id).map(|q| q.store_id).collect::<Vec<_>>();
        let victim = r.voters().filter(|p| Some(p.id) != leader).max_by_key(|p| {
            (
                !healthy(p),
                shared_levels_max(p.store_id, &others(p), stores, cfg),
                (stores.region_count)(p.store_id),
                p.store_id,
            )
        })?;
        let reason = if healthy(victim) { "remove-extra-replica" } else { "remove-down-replica" };
        return Some(Decision::RemovePeer { peer: *victim, reason });
    }
    None
}

fn is_healthy(
    peer: &Peer,
    region: &RegionInfo,
    stores: &Stores<'_>,
    cfg: &CheckerConfig,
    now: SystemTime,
) -> bool {
    let Some(store) = stores.infos.get(&peer.store_id) else { return false };
    match store.status(now, stores.alive_since, cfg.max_store_down_time) {
        StoreStatus::Up | StoreStatus::Disconnected => {}
        StoreStatus::Down | StoreStatus::Offline | StoreStatus::Tombstone => return false,
    }
    let down_limit = cfg.max_store_down_time.as_secs();
    !region.runtime.down_peers.iter().any(|d| d.peer.id == peer.id && d.down_seconds >= down_limit)
}

fn pick_target(
    region: &RegionInfo,
    stores: &Stores<'_>,
    cfg: &CheckerConfig,
    now: SystemTime,
) -> Option<StoreId> {
    let r = &region.region;
    let keep: Vec<StoreId> =
        r.peers.iter().filter(|p| is_healthy(p, region, stores, cfg, now)).map(|p| p.store_id).collect();
    stores
        .infos
        .values()
        .filter(|s| s.meta.state == StoreState::Up)
        .filter(|s| s.status(now, stores.alive_since, cfg.max_store_down_time) == StoreStatus::Up)
        .filter(|s| s.recently_heartbeated(now))
        .filter(|s| r.peer_on_store(s.meta.id).is_none())
        .filter(|s| !keep.iter().any(|k| same_host(s, stores.infos.get(k))))
        .min_by_key(|s| {
            let id = s.meta.id;
            (shared_levels_max(id, &keep, stores, cfg), (stores.region_count)(id), id)
        })
        .map(|s| s.meta.id)
}

fn same_host(a: &StoreInfo, b: Option<&StoreInfo>) -> bool {
    match (a.meta.label(HOST_LABEL), b.and_then(|b| b.meta.label(HOST_LABEL))) {
        (Some(x), Some(y)) => !x.is_empty() && x == y,
        _ => false,
    }
}

/// The most leading location labels `store` shares with any of `others`
/// (0 = different at the widest level). Without `location-labels`, the
/// `host` label is the only level.
fn shared_levels_max(store: StoreId, others: &[StoreId], stores: &Stores<'_>, cfg: &CheckerConfig) -> usize {
    let Some(a) = stores.infos.get(&store) else { return 0 };
    let default_levels = [HOST_LABEL.to_owned()];
    let levels: &[String] =
        if cfg.location_labels.is_empty() { &default_levels } else { &cfg.location_labels };
    others
        .iter()
        .filter(|o| **o != store)
        .filter_map(|o| stores.infos.get(o))
        .map(|b| {
            levels
                .iter()
                .take_while(|k| matches!((a.meta.label(k), b.meta.label(k)), (Some(x), Some(y)) if x == y))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// The learner `p` as the voter a promotion step expects to see.
pub fn promoted(p: Peer) -> Peer {
    Peer { role: PeerRole::Voter, ..p }
}

#[cfg(test)]
#[path = "replica_checker_tests.rs"]
mod tests;
