//! What scheduling decisions read: a snapshot of the cluster at one instant,
//! the settings, the operators in flight and their influence — and the
//! questions every checker and scheduler asks of them.

use std::collections::BTreeMap;
use std::time::SystemTime;

use mnemo_proto::types::{Peer, PeerRole, StoreId};

use super::controller::{Influence, LimitType, OperatorController};
use super::placement::{same_host, Isolation};
use super::settings::Settings;
use crate::region_map::{RegionInfo, RegionMap};
use crate::store::{StoreInfo, StoreMeta, StoreState, StoreStatus};

/// The cluster at one instant.
#[derive(Clone, Copy)]
pub struct ClusterSnapshot<'a> {
    /// Every registered store.
    pub stores: &'a BTreeMap<StoreId, StoreInfo>,
    /// Every region.
    pub regions: &'a RegionMap,
    /// The instant.
    pub now: SystemTime,
    /// When this PD started serving (grace for stores not heard from since).
    pub alive_since: SystemTime,
}

impl ClusterSnapshot<'_> {
    /// Liveness and lifecycle of `store` (Down after `max_down` of silence);
    /// `None` if unknown.
    pub fn status(&self, store: StoreId, max_down: std::time::Duration) -> Option<StoreStatus> {
        Some(self.stores.get(&store)?.status(self.now, self.alive_since, max_down))
    }

    /// True if `store` is Up, or only Disconnected (it may be restarting):
    /// still a place for the replicas it holds.
    pub fn is_up(&self, store: StoreId, max_down: std::time::Duration) -> bool {
        matches!(self.status(store, max_down), Some(StoreStatus::Up | StoreStatus::Disconnected))
    }
}

/// Everything a decision reads.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// The cluster.
    pub snap: &'a ClusterSnapshot<'a>,
    /// The knobs.
    pub settings: &'a Settings,
    /// Operators in flight (regions that have one are left alone) and their
    /// influence on scores.
    pub ops: &'a OperatorController,
}

impl<'a> Ctx<'a> {
    /// The registered record of `store`.
    pub fn meta(&self, store: StoreId) -> Option<&'a StoreMeta> {
        self.snap.stores.get(&store).map(|s| &s.meta)
    }

    /// Liveness and lifecycle of `store`; `None` if unknown.
    pub fn status(&self, store: StoreId) -> Option<StoreStatus> {
        self.snap.status(store, self.settings.max_store_down_time)
    }

    fn influence(&self) -> &'a Influence {
        self.ops.influence()
    }

    /// Up, and heard from within the disconnect window since PD started:
    /// may lead, and may give regions away.
    pub fn is_active(&self, store: StoreId) -> bool {
        self.snap.stores.get(&store).is_some_and(|s| {
            s.meta.state == StoreState::Up
                && self.status(store) == Some(StoreStatus::Up)
                && s.recently_heartbeated(self.snap.now)
        })
    }

    /// May receive a replica a *balancing* move brings (balance-region,
    /// shuffle-region): a [repair target](Ctx::is_repair_target) that
    /// also is not reporting itself busy, not receiving
    /// `max-snapshot-count` snapshots by its own count (a store also
    /// receives snapshots PD did not ask for: raft catching up a lagging
    /// peer), and not low on space.
    pub fn is_target(&self, store: StoreId) -> bool {
        let Some(info) = self.snap.stores.get(&store) else { return false };
        let reported = info.stats.as_ref().map_or(0, |s| {
            u64::from(s.receiving_snap_count).saturating_add(u64::from(s.applying_snap_count))
        });
        // Snapshots queued behind other moves count too: balancing and
        // scattering must not pile more onto a store than it can take once
        // they start (a repair may still use it, see `is_repair_target`).
        let queued = self.influence().receiving(store) + self.influence().queued(store);
        self.is_repair_target(store)
            && queued < self.settings.max_snapshot_count
            && reported < self.settings.max_snapshot_count as u64
            && !info.stats.as_ref().is_some_and(|s| s.is_busy)
            && !self.is_low_on_space(store)
    }

    /// May receive a replica that *repairs* a region (the replica
    /// checker): active, fewer than `max-snapshot-count` learners of PD's
    /// own operators catching up there, and its store limit has a peer to
    /// add left. Temporary states (busy, the store's own snapshot count,
    /// low space) do not stop a repair, as PD's replica checker allows
    /// them: a region short of replicas must not wait for a write flood to
    /// end. Low space only ranks the store last ([`Ctx::repair_rank`]).
    pub fn is_repair_target(&self, store: StoreId) -> bool {
        self.is_active(store)
            && self.influence().receiving(store) < self.settings.max_snapshot_count
            && self.ops.store_limit_allows(store, LimitType::AddPeer, self.settings, self.snap.now)
    }

    /// True if `store`'s disk is fuller than `low-space-ratio` (as last
    /// reported; unknown capacity is not low).
    pub fn is_low_on_space(&self, store: StoreId) -> bool {
        self.snap.stores.get(&store).and_then(|s| s.stats.as_ref()).is_some_and(|s| {
            s.capacity > 0
                && (s.capacity.saturating_sub(s.available) as f64)
                    > s.capacity as f64 * self.settings.low_space_ratio
        })
    }

    /// A peer counts towards `max-replicas` unless its store is Down,
    /// Offline or Tombstone, or the leader has reported it down for
    /// `max-store-down-time`. (A store that merely went quiet — Disconnected —
    /// may be restarting; moving its data would be premature.)
    pub fn is_healthy(&self, peer: &Peer, info: &RegionInfo) -> bool {
        if !self.snap.is_up(peer.store_id, self.settings.max_store_down_time) {
            return false;
        }
        let limit = self.settings.max_store_down_time.as_secs();
        !info.runtime.down_peers.iter().any(|d| d.peer.id == peer.id && d.down_seconds >= limit)
    }

    /// True if `peer` can take part in a vote right now, as far as PD can
    /// tell: its store (Up or Offline: a draining store still votes) sent a
    /// heartbeat within the disconnect window, and the leader reports it
    /// neither down nor catching up. Stricter than [`Ctx::is_healthy`],
    /// which waits for `max-store-down-time` before giving up on a store.
    pub fn can_vote_now(&self, peer: &Peer, info: &RegionInfo) -> bool {
        self.snap
            .stores
            .get(&peer.store_id)
            .is_some_and(|s| s.meta.state != StoreState::Tombstone && s.recently_heartbeated(self.snap.now))
            && !info.runtime.down_peers.iter().any(|d| d.peer.id == peer.id)
            && !self.is_pending(peer, info)
    }

    /// True if the leader lists `peer` as catching up.
    pub fn is_pending(&self, peer: &Peer, info: &RegionInfo) -> bool {
        info.runtime.pending_peers.iter().any(|p| p.id == peer.id)
    }

    /// True if `peer` has been catching up for twice as long as an operator
    /// adding it may take ([`Settings::snapshot_timeout`]: grows with the
    /// region's size): the operator that added it gave up, and a full
    /// operator's time later it has still not caught up (its snapshot was
    /// dropped); it will not on its own.
    pub fn is_pending_too_long(&self, peer: &Peer, info: &RegionInfo) -> bool {
        info.runtime.pending_since.get(&peer.id).is_some_and(|since| {
            self.snap.now.duration_since(*since).unwrap_or_default()
                >= 2 * self.settings.snapshot_timeout(info)
        })
    }

    /// Region score of `store` once the operators in flight finish: the sum
    /// of its regions' weights (MiB, at least 1 each), in
    /// [`SCORE_UNIT`]s per MiB divided by the store's region weight
    /// (`schedule.store-weight`, 1 by default).
    pub fn region_score(&self, store: StoreId) -> i64 {
        self.region_score_plus(store, 0)
    }

    /// [`Ctx::region_score`] with `mib` more (or, negative, less) on `store`.
    fn region_score_plus(&self, store: StoreId, mib: i64) -> i64 {
        let w = i64::try_from(self.snap.regions.store_region_weight(store)).unwrap_or(i64::MAX);
        let total = w.saturating_add(self.influence().weight(store)).saturating_add(mib);
        weighted(total, self.settings.store_weight(store).region)
    }

    /// Leader count of `store` once the operators in flight finish, in
    /// [`SCORE_UNIT`]s per leader divided by the store's leader weight.
    pub fn leader_score(&self, store: StoreId) -> i64 {
        self.leader_score_plus(store, 0)
    }

    /// [`Ctx::leader_score`] with `n` more (or, negative, fewer) leaders.
    fn leader_score_plus(&self, store: StoreId, n: i64) -> i64 {
        let count = i64::try_from(self.snap.regions.store_leader_count(store)).unwrap_or(i64::MAX);
        let total = count.saturating_add(self.influence().leaders(store)).saturating_add(n);
        weighted(total, self.settings.store_weight(store).leader)
    }

    /// The two leader scores moving one leader from `src` to `dst` leaves:
    /// (source's, target's).
    pub fn leader_move(&self, src: StoreId, dst: StoreId) -> (i64, i64) {
        (self.leader_score_plus(src, -1), self.leader_score_plus(dst, 1))
    }

    /// The two region scores moving a replica weighing `mib` from `src` to
    /// `dst` leaves: (source's, target's).
    pub fn region_move(&self, src: StoreId, dst: StoreId, mib: i64) -> (i64, i64) {
        (self.region_score_plus(src, -mib), self.region_score_plus(dst, mib))
    }

    /// The isolation of replicas on `stores` (unknown stores are skipped).
    pub fn isolation(&self, stores: &[StoreId]) -> Isolation {
        let metas: Vec<&StoreMeta> = stores.iter().filter_map(|s| self.meta(*s)).collect();
        Isolation::of(&metas, &self.settings.location_labels)
    }

    /// True if `store` shares a `host` with one of `others`.
    pub fn shares_host(&self, store: StoreId, others: &[StoreId]) -> bool {
        let Some(a) = self.meta(store) else { return false };
        others.iter().filter(|o| **o != store).filter_map(|o| self.meta(*o)).any(|b| same_host(a, b))
    }

    /// The regions balance may touch: a leader heard from since PD started,
    /// no operator, exactly `max-replicas` voters and no learner, nobody
    /// pending or down, every store active. Anything else is the replica
    /// checker's business first.
    pub fn is_balanceable(&self, info: &RegionInfo) -> bool {
        let r = &info.region;
        info.leader().is_some()
            && info.runtime.last_heartbeat.is_some()
            && !self.ops.has(r.id)
            && r.peers.len() == self.settings.max_replicas
            && r.learners().next().is_none()
            && info.runtime.pending_peers.is_empty()
            && info.runtime.down_peers.is_empty()
            && r.peers.iter().all(|p| self.is_active(p.store_id))
    }

    /// True if `peer` may take leadership of `info`: a voter, caught up,
    /// healthy, on an active store whose leaders are not being evicted.
    pub fn can_lead(&self, peer: &Peer, info: &RegionInfo) -> bool {
        peer.role == PeerRole::Voter
            && !self.settings.evict_leader_stores.contains(&peer.store_id)
            && !self.is_pending(peer, info)
            && self.is_active(peer.store_id)
            && self.is_healthy(peer, info)
    }

    /// The voter that should take leadership from `from`: one that
    /// [can lead](Ctx::can_lead), with the fewest leaders (then the lowest
    /// store id).
    pub fn leader_target(&self, info: &RegionInfo, from: Peer) -> Option<Peer> {
        info.region
            .voters()
            .filter(|p| p.id != from.id && self.can_lead(p, info))
            .min_by_key(|p| (self.leader_score(p.store_id), p.store_id))
            .copied()
    }

    /// True if `info`'s replica on `src` may move to `dst` without making the
    /// region's placement worse: `dst` accepts new replicas
    /// ([`Ctx::is_target`]), holds no peer of the region, shares no `host`
    /// with the replicas that stay, and the region's isolation is not worse
    /// with the replica on `dst` than it is now. The rule every move that is
    /// not a repair follows (balance-region, shuffle-region).
    pub fn can_move(&self, info: &RegionInfo, src: StoreId, dst: StoreId) -> bool {
        if info.region.peer_on_store(dst).is_some() || !self.is_target(dst) {
            return false;
        }
        let all: Vec<StoreId> = info.region.peers.iter().map(|p| p.store_id).collect();
        let keep: Vec<StoreId> = all.iter().copied().filter(|s| *s != src).collect();
        if self.shares_host(dst, &keep) {
            return false;
        }
        let with: Vec<StoreId> = keep.into_iter().chain([dst]).collect();
        self.isolation(&with) <= self.isolation(&all)
    }

    /// Stores eligible for balancing (active), with the mean of `score` over them.
    pub fn active_stores(&self, score: impl Fn(StoreId) -> i64) -> (Vec<(StoreId, i64)>, f64) {
        let stores: Vec<(StoreId, i64)> =
            self.snap.stores.keys().filter(|s| self.is_active(**s)).map(|s| (*s, score(*s))).collect();
        let mean = if stores.is_empty() {
            0.0
        } else {
            stores.iter().map(|(_, v)| *v as f64).sum::<f64>() / stores.len() as f64
        };
        (stores, mean)
    }
}

/// Score units per leader (or per MiB of region) on a store of weight 1.
/// Scores are integers; this many units per item keep a store weight's
/// effect (score = items × unit / weight) exact enough to compare.
pub const SCORE_UNIT: i64 = 1000;

/// `items` in score units on a store of `weight`.
fn weighted(items: i64, weight: f64) -> i64 {
    if weight == 1.0 {
        items.saturating_mul(SCORE_UNIT)
    } else {
        (items as f64 * SCORE_UNIT as f64 / weight).round() as i64
    }
}

/// Share of the mean score two stores may differ by without balancing
/// (besides the unit rule of each scheduler), against flapping.
pub const TOLERANCE_RATIO: f64 = 0.05;

/// True if a move from a store scoring `src` to one scoring `dst`, which
/// leaves them scoring `after` (see [`Ctx::leader_move`],
/// [`Ctx::region_move`]), is worth an operator: the source still scores
/// more than the target afterwards (or, `or_equal`, as much) — so the move
/// never turns the pair the other way round and the next one never undoes
/// it, whatever the store weights and however their units round — and the
/// gap is wider than [`TOLERANCE_RATIO`] of `mean`.
pub fn worth_moving(src: i64, dst: i64, after: (i64, i64), or_equal: bool, mean: f64) -> bool {
    let (src_after, dst_after) = after;
    let settles = if or_equal { src_after >= dst_after } else { src_after > dst_after };
    settles && src.saturating_sub(dst) as f64 > mean * TOLERANCE_RATIO
}
