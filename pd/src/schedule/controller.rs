//! The operators in flight (at most one per region, per-kind limits), and
//! their *influence*: what the stores' scores will be once they finish.
//!
//! Schedulers compare stores by score plus influence. Without it, a
//! scheduler running every 100 ms would see the same most-loaded store ten
//! times a second and pile moves onto the same least-loaded one until the
//! first of them finished, overshooting.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use mnemo_proto::types::{RegionId, StoreId};

use super::operator::{OpKind, Operator, Progress};
use super::settings::Settings;
use super::step::{PeerChange, Step};
use crate::region_map::RegionInfo;

/// Why an operator was not added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The region already has an operator (of this kind).
    Busy(OpKind),
    /// The kind's limit of operators in flight is reached.
    Limit(OpKind),
    /// A store's limit of peers added or removed per minute is used up.
    StoreLimit(StoreId, LimitType),
}

/// Which way a store limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitType {
    /// Peers added to the store (each needs a snapshot).
    AddPeer,
    /// Peers removed from the store.
    RemovePeer,
}

/// PD's store limit: per store and type, a token bucket refilled at the
/// configured rate per minute and holding at most a minute's worth (at
/// least one token when the rate is not 0). Time is the caller's `now`, so
/// decisions stay reproducible.
#[derive(Clone, Debug, Default)]
pub struct StoreLimiter {
    /// Tokens left, and when they were counted.
    buckets: HashMap<(StoreId, LimitType), (f64, SystemTime)>,
}

impl StoreLimiter {
    /// Tokens `store` has for `ty` at `now` under `per_minute`.
    pub fn available(&self, store: StoreId, ty: LimitType, per_minute: f64, now: SystemTime) -> f64 {
        let cap = if per_minute > 0.0 { per_minute.max(1.0) } else { 0.0 };
        match self.buckets.get(&(store, ty)) {
            None => cap,
            Some((tokens, at)) => {
                let minutes = now.duration_since(*at).unwrap_or_default().as_secs_f64() / 60.0;
                (tokens + per_minute * minutes).min(cap)
            }
        }
    }

    fn take(&mut self, store: StoreId, ty: LimitType, n: f64, per_minute: f64, now: SystemTime) {
        let left = self.available(store, ty, per_minute, now) - n;
        // A clock that stepped back does not move the count's instant back
        // (which would refill the same span twice).
        let at = self.buckets.get(&(store, ty)).map_or(now, |(_, at)| now.max(*at));
        self.buckets.insert((store, ty), (left, at));
    }
}

/// What `op` takes from the store limits: (store, type) → count. Removing
/// a peer the leader reports down costs its store nothing (the store does
/// no work, and charging it would pace the repair of a dead store's
/// regions by that store's limit).
fn limit_needs(op: &Operator, info: &RegionInfo) -> HashMap<(StoreId, LimitType), f64> {
    let mut needs = HashMap::new();
    let down = |p: &mnemo_proto::types::Peer| info.runtime.down_peers.iter().any(|d| d.peer.id == p.id);
    for change in op.steps.iter().flat_map(Step::changes) {
        let key = match change {
            PeerChange::AddLearner(p) => (p.store_id, LimitType::AddPeer),
            PeerChange::Remove(p) if !down(&p) => (p.store_id, LimitType::RemovePeer),
            PeerChange::Remove(_) | PeerChange::Promote(_) => continue,
        };
        *needs.entry(key).or_insert(0.0) += 1.0;
    }
    needs
}

/// The operators in flight: at most one per region, with their influence.
#[derive(Clone, Debug, Default)]
pub struct OperatorController {
    ops: BTreeMap<RegionId, (Operator, Vec<Effect>)>,
    counts: HashMap<OpKind, usize>,
    influence: Influence,
    limiter: StoreLimiter,
}

impl OperatorController {
    /// The operator of `region`, if any.
    pub fn get(&self, region: RegionId) -> Option<&Operator> {
        self.ops.get(&region).map(|(op, _)| op)
    }

    /// True if `region` has an operator.
    pub fn has(&self, region: RegionId) -> bool {
        self.ops.contains_key(&region)
    }

    /// Operators of `kind` in flight.
    pub fn count(&self, kind: OpKind) -> usize {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// True if another operator of `kind` may start under `settings`.
    pub fn has_room(&self, kind: OpKind, settings: &Settings) -> bool {
        let limit = match kind {
            OpKind::Leader => settings.leader_limit,
            OpKind::Region => settings.region_limit,
            OpKind::Replica => settings.replica_limit,
            OpKind::Split | OpKind::Admin => usize::MAX,
        };
        self.count(kind) < limit
    }

    /// True if `store` may gain (or lose) one more peer at `now` under its
    /// store limit.
    pub fn store_limit_allows(
        &self,
        store: StoreId,
        ty: LimitType,
        settings: &Settings,
        now: SystemTime,
    ) -> bool {
        self.limiter.available(store, ty, rate(settings, store, ty), now) >= 1.0
    }

    /// Adds `op` for its region `info`, if its kind has room, the region
    /// has no operator and (unless it is manual) the store limits of the
    /// stores it adds peers to or removes peers from allow it (counted at
    /// `op.created`). A manual operator ([`OpKind::is_manual`]) replaces a
    /// scheduler's operator (the checker tidies up what it leaves half done)
    /// but not another manual one.
    pub fn add(&mut self, op: Operator, info: &RegionInfo, settings: &Settings) -> Result<(), Refusal> {
        if let Some(cur) = self.get(op.region_id) {
            if !op.kind.is_manual() || cur.kind.is_manual() {
                return Err(Refusal::Busy(cur.kind));
            }
        }
        if !self.has_room(op.kind, settings) {
            return Err(Refusal::Limit(op.kind));
        }
        if !op.kind.is_manual() {
            let needs = limit_needs(&op, info);
            let now = op.created;
            for (&(store, ty), &n) in &needs {
                if self.limiter.available(store, ty, rate(settings, store, ty), now) < n {
                    return Err(Refusal::StoreLimit(store, ty));
                }
            }
            for ((store, ty), n) in needs {
                self.limiter.take(store, ty, n, rate(settings, store, ty), now);
            }
        }
        self.remove(op.region_id);
        *self.counts.entry(op.kind).or_default() += 1;
        let effects = effects(&op, info);
        self.influence.apply(&effects, 1);
        self.ops.insert(op.region_id, (op, effects));
        Ok(())
    }

    /// Checks the operator of `info`'s region against the region's latest
    /// state (see [`Operator::check`]) and refreshes its influence. A
    /// finished, cancelled or timed-out operator is removed and returned
    /// with its outcome.
    pub fn check(&mut self, info: &RegionInfo, now: SystemTime) -> Option<(Progress, Option<Operator>)> {
        let id = info.region.id;
        let (op, old) = self.ops.get_mut(&id)?;
        let progress = op.check(info, now);
        let new = effects(op, info);
        self.influence.apply(old, -1);
        self.influence.apply(&new, 1);
        *old = new;
        match progress {
            Progress::Run(..) | Progress::Wait => Some((progress, None)),
            _ => Some((progress, self.remove(id))),
        }
    }

    /// Removes the operator of `region`.
    pub fn remove(&mut self, region: RegionId) -> Option<Operator> {
        let (op, effects) = self.ops.remove(&region)?;
        if let Some(n) = self.counts.get_mut(&op.kind) {
            *n -= 1;
        }
        self.influence.apply(&effects, -1);
        Some(op)
    }

    /// Number of operators in flight.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if none is in flight.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Every operator, by region id.
    pub fn iter(&self) -> impl Iterator<Item = &Operator> {
        self.ops.values().map(|(op, _)| op)
    }

    /// What the operators in flight will change, as of their regions' state
    /// when each was last added or checked.
    pub fn influence(&self) -> &Influence {
        &self.influence
    }
}

/// The per-minute rate of `store`'s limit of type `ty`.
fn rate(settings: &Settings, store: StoreId, ty: LimitType) -> f64 {
    let limit = settings.store_limit(store);
    match ty {
        LimitType::AddPeer => limit.add_peer,
        LimitType::RemovePeer => limit.remove_peer,
    }
}

/// One expected change to a store's scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Weight(StoreId, i64),
    Leaders(StoreId, i64),
    Receiving(StoreId),
    /// A learner queued behind another of the same operator.
    Queued(StoreId),
}

/// What `op`'s steps not yet visible on `info` will change.
fn effects(op: &Operator, info: &RegionInfo) -> Vec<Effect> {
    let w = i64::try_from(info.weight()).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    // The operator's next snapshot only: a learner queued behind another
    // (a multi-move operator) gets nothing before that one caught up.
    let mut next_snapshot = true;
    for step in op.remaining() {
        if let Step::AddLearner(p) = step {
            // A snapshot is in flight until the learner caught up.
            if !step.is_done(info, op.epoch) {
                if next_snapshot || step.is_applied(info, op.epoch) {
                    out.push(Effect::Receiving(p.store_id));
                } else {
                    out.push(Effect::Queued(p.store_id));
                }
                next_snapshot = false;
            }
        }
        if step.is_applied(info, op.epoch) {
            continue; // the region map counts it already
        }
        if let Step::TransferLeader { from, to } = step {
            out.push(Effect::Leaders(from.store_id, -1));
            out.push(Effect::Leaders(to.store_id, 1));
        }
        for change in step.changes() {
            match change {
                PeerChange::AddLearner(p) if !change.is_applied(&info.region) => {
                    out.push(Effect::Weight(p.store_id, w))
                }
                PeerChange::Remove(p) if !change.is_applied(&info.region) => {
                    out.push(Effect::Weight(p.store_id, -w))
                }
                _ => {}
            }
        }
    }
    out
}

/// The expected effect of the operators in flight on store scores: what
/// their steps not yet visible in the region map will add or take away.
#[derive(Clone, Debug, Default)]
pub struct Influence {
    weight: HashMap<StoreId, i64>,
    leaders: HashMap<StoreId, i64>,
    receiving: HashMap<StoreId, i64>,
    queued: HashMap<StoreId, i64>,
}

impl Influence {
    fn apply(&mut self, effects: &[Effect], sign: i64) {
        for e in effects {
            let (map, store, delta) = match *e {
                Effect::Weight(s, d) => (&mut self.weight, s, d),
                Effect::Leaders(s, d) => (&mut self.leaders, s, d),
                Effect::Receiving(s) => (&mut self.receiving, s, 1),
                Effect::Queued(s) => (&mut self.queued, s, 1),
            };
            let v = map.entry(store).or_default();
            *v += sign * delta;
            if *v == 0 {
                map.remove(&store);
            }
        }
    }

    /// Change of `store`'s region weight once the operators finish.
    pub fn weight(&self, store: StoreId) -> i64 {
        self.weight.get(&store).copied().unwrap_or(0)
    }

    /// Change of `store`'s leader count once the operators finish.
    pub fn leaders(&self, store: StoreId) -> i64 {
        self.leaders.get(&store).copied().unwrap_or(0)
    }

    /// Learners being added to `store` that have not caught up yet: the
    /// snapshots it is receiving or about to.
    pub fn receiving(&self, store: StoreId) -> usize {
        usize::try_from(self.receiving.get(&store).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// Snapshots `store` is due to receive once earlier moves of the same
    /// operators are done (see [`super::Ctx::is_target`]).
    pub fn queued(&self, store: StoreId) -> usize {
        usize::try_from(self.queued.get(&store).copied().unwrap_or(0)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use mnemo_proto::types::{Peer, PeerId, PeerRole, Region, RegionEpoch};

    use super::*;
    use crate::region_map::RegionRuntime;

    fn voter(id: u64, store: u64) -> Peer {
        Peer { id: PeerId(id), store_id: StoreId(store), role: PeerRole::Voter }
    }

    fn region(id: u64) -> RegionInfo {
        RegionInfo {
            region: Region {
                id: RegionId(id),
                epoch: RegionEpoch { conf_ver: 1, version: 1 },
                peers: vec![voter(id * 10, 1), voter(id * 10 + 1, 2), voter(id * 10 + 2, 3)],
                ..Default::default()
            },
            runtime: RegionRuntime { leader: Some(voter(id * 10, 1)), ..Default::default() },
        }
    }

    fn op(id: u64, kind: OpKind, steps: Vec<Step>) -> Operator {
        let r = region(id).region;
        Operator::new(&r, kind, "test", steps, SystemTime::UNIX_EPOCH, Duration::from_secs(60))
    }

    #[test]
    fn limits_are_per_kind_and_one_operator_per_region() {
        let settings = Settings { leader_limit: 1, ..Settings::default() };
        let mut ops = OperatorController::default();
        let transfer = |id: u64| Step::TransferLeader { from: voter(id * 10, 1), to: voter(id * 10 + 1, 2) };
        let remove = Step::RemovePeer(voter(22, 3));
        ops.add(op(1, OpKind::Leader, vec![transfer(1)]), &region(1), &settings).unwrap();
        // A second leader operator waits for the first to finish...
        let second = op(2, OpKind::Leader, vec![transfer(2)]);
        assert_eq!(ops.add(second, &region(2), &settings), Err(Refusal::Limit(OpKind::Leader)));
        // ...but other kinds are not held up by it.
        ops.add(op(2, OpKind::Replica, vec![remove.clone()]), &region(2), &settings).unwrap();
        // One operator per region; an admin one takes over a scheduler's.
        let other = op(2, OpKind::Region, vec![remove]);
        assert_eq!(ops.add(other, &region(2), &settings), Err(Refusal::Busy(OpKind::Replica)));
        ops.add(op(2, OpKind::Admin, vec![transfer(2)]), &region(2), &settings).unwrap();
        assert_eq!((ops.count(OpKind::Replica), ops.count(OpKind::Admin), ops.len()), (0, 1, 2));
        ops.remove(RegionId(1));
        assert_eq!(ops.count(OpKind::Leader), 0);
    }

    #[test]
    fn influence_counts_only_what_the_map_does_not_show_yet() {
        let learner = Peer { id: PeerId(99), store_id: StoreId(4), role: PeerRole::Learner };
        let mv = op(
            1,
            OpKind::Region,
            vec![
                Step::TransferLeader { from: voter(10, 1), to: voter(11, 2) },
                Step::AddLearner(learner),
                Step::ChangePeerV2(vec![PeerChange::Promote(learner), PeerChange::Remove(voter(10, 1))]),
            ],
        );
        let mut ops = OperatorController::default();
        ops.add(mv, &region(1), &Settings::default()).unwrap();
        let inf = ops.influence();
        assert_eq!((inf.weight(StoreId(4)), inf.weight(StoreId(1)), inf.receiving(StoreId(4))), (1, -1, 1));
        assert_eq!((inf.leaders(StoreId(1)), inf.leaders(StoreId(2))), (-1, 1));

        // Leadership moved and the learner shows up, still catching up: the
        // map counts both now, but the snapshot is still in flight.
        let mut r = region(1);
        r.region.peers.push(learner);
        r.region.epoch.conf_ver = 2;
        r.runtime =
            RegionRuntime { leader: Some(voter(11, 2)), pending_peers: vec![learner], ..Default::default() };
        let (progress, _) = ops.check(&r, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(progress, Progress::Wait);
        let inf = ops.influence();
        assert_eq!((inf.weight(StoreId(4)), inf.weight(StoreId(1)), inf.receiving(StoreId(4))), (0, -1, 1));
        assert_eq!(inf.leaders(StoreId(1)), 0);

        // Gone: no influence left.
        ops.remove(RegionId(1));
        assert_eq!((ops.influence().weight(StoreId(1)), ops.influence().receiving(StoreId(4))), (0, 0));

        // Two moves in one operator: only the first learner's snapshot is
        // on its way; the second store is free for other work until then.
        let second = Peer { id: PeerId(98), store_id: StoreId(5), role: PeerRole::Learner };
        let both = op(
            1,
            OpKind::Admin,
            vec![
                Step::AddLearner(learner),
                Step::ChangePeerV2(vec![PeerChange::Promote(learner), PeerChange::Remove(voter(12, 3))]),
                Step::AddLearner(second),
                Step::ChangePeerV2(vec![PeerChange::Promote(second), PeerChange::Remove(voter(11, 2))]),
            ],
        );
        ops.add(both, &region(1), &Settings::default()).unwrap();
        let inf = ops.influence();
        assert_eq!((inf.receiving(StoreId(4)), inf.receiving(StoreId(5)), inf.queued(StoreId(5))), (1, 0, 1));
    }
}
