//! Operators asked for by a human (`POST /pd/api/v1/operators`, pd-ctl
//! `operator add ...`), validated against the region's current state.
//!
//! They are manual ([`OpKind::Admin`], or [`OpKind::Split`] for splits): no
//! limit, and they replace a scheduler's operator on the same region. The checkers keep working afterwards, so an
//! `add-peer` beyond `max-replicas` is followed by the replica checker
//! removing the worst-placed voter, and a `remove-peer` by a new replica
//! elsewhere — as in PD.

use std::collections::{BTreeMap, BTreeSet};

use mnemo_proto::types::{Peer, PeerRole, RegionId, StoreId};
use rand::Rng;

use super::context::{ClusterSnapshot, Ctx};
use super::controller::OperatorController;
use super::coordinator::{try_create, NewPeerId, ScheduleOrder};
use super::operator::OpKind;
use super::plan::{Plan, Proposal};
use super::settings::Settings;
use super::step::SplitPolicy;
use crate::region_map::RegionInfo;

/// What a human can ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminRequest {
    /// `transfer-leader`: make the region's voter on `to_store` its leader.
    TransferLeader {
        /// Store of the voter that should lead.
        to_store: StoreId,
    },
    /// `add-peer`: a new voter on `store` (learner, then promoted).
    AddPeer {
        /// The store; must be Up and heartbeating, without a peer of the region.
        store: StoreId,
    },
    /// `remove-peer`: remove the region's peer on `store` (after moving
    /// leadership away if it leads).
    RemovePeer {
        /// The store.
        store: StoreId,
    },
    /// `transfer-peer`: move the region's peer on `from_store` to `to_store`.
    TransferPeer {
        /// Where the replica is.
        from_store: StoreId,
        /// Where it should be.
        to_store: StoreId,
    },
    /// `split-region`: split at the given keys, or at the middle.
    Split(SplitPolicy),
    /// `transfer-region`: the region's replicas on exactly these stores
    /// (one per store, as many as it has replicas); replicas elsewhere move
    /// there one at a time.
    TransferRegion {
        /// The stores.
        to_stores: Vec<StoreId>,
    },
    /// `scatter-region`: the region's replicas (and leader) on the stores
    /// [`ScatterPicks::choose`] picks.
    Scatter {
        /// The stores for its replicas.
        to_stores: Vec<StoreId>,
        /// The store whose replica should lead, if any can.
        leader: Option<StoreId>,
    },
}

/// What a scatter (`POST /regions/scatter`) has handed out so far: replicas
/// and leaders per store. Each region goes to the stores with the fewest,
/// so a range scattered region by region ends spread evenly.
#[derive(Clone, Debug, Default)]
pub struct ScatterPicks {
    peers: BTreeMap<StoreId, u64>,
    leaders: BTreeMap<StoreId, u64>,
}

impl ScatterPicks {
    /// Stores for `info`'s replicas: as many as it has replicas, of
    /// distinct hosts, each an active store holding a replica already or a
    /// store able to take one ([`Ctx::is_target`]). Slot by slot, the store
    /// that keeps the replicas best isolated (`location-labels`) wins, then
    /// the fewest picks, then one holding a replica (nothing to copy), then
    /// chance; should the result still isolate worse than the current
    /// placement, the replicas stay. And the store to lead: of those whose
    /// replica could lead (not draining leaders, up, and, for a replica
    /// already there, caught up), fewest leader picks, the current leader's
    /// store first, then chance; `None` if none could. Counts no pick
    /// ([`ScatterPicks::count`] does once the scatter is under way).
    pub fn choose(
        &mut self,
        info: &RegionInfo,
        ctx: &Ctx<'_>,
        rng: &mut impl Rng,
    ) -> Result<(Vec<StoreId>, Option<StoreId>), String> {
        let r = &info.region;
        let here: Vec<StoreId> = r.peers.iter().map(|p| p.store_id).collect();
        let mut candidates: Vec<(StoreId, u64)> = ctx
            .snap
            .stores
            .keys()
            .filter(|s| (here.contains(s) && ctx.is_active(**s)) || ctx.is_target(**s))
            .map(|&s| (s, rng.gen()))
            .collect();
        self.admit(candidates.iter().map(|(s, _)| *s));
        let mut chosen: Vec<StoreId> = Vec::new();
        while chosen.len() < r.peers.len() {
            let best = candidates
                .iter()
                .enumerate()
                .filter(|(_, (s, _))| !ctx.shares_host(*s, &chosen))
                .min_by_key(|(_, &(s, luck))| {
                    let with: Vec<StoreId> = chosen.iter().copied().chain([s]).collect();
                    (ctx.isolation(&with), self.peer_picks(s), !here.contains(&s), luck)
                })
                .map(|(i, _)| i);
            let Some(i) = best else {
                return Err(format!(
                    "region {} has {} replicas and only {} stores of distinct hosts can hold them",
                    r.id,
                    r.peers.len(),
                    chosen.len()
                ));
            };
            chosen.push(candidates.swap_remove(i).0);
        }
        // Isolation counts replicas sharing a failure domain: more is worse.
        if ctx.isolation(&chosen) > ctx.isolation(&here) {
            chosen = here;
        }
        let could_lead = |s: &StoreId| match r.peer_on_store(*s) {
            Some(p) => ctx.can_lead(p, info),
            None => ctx.is_active(*s) && !ctx.settings.evict_leader_stores.contains(s),
        };
        let current = info.leader().map(|l| l.store_id);
        let leader = chosen
            .iter()
            .filter(|s| could_lead(s))
            .min_by_key(|s| (self.leader_picks(**s), Some(**s) != current, rng.gen::<u64>()))
            .copied();
        Ok((chosen, leader))
    }

    /// True if `info` already sits where a scatter to `stores` led from
    /// `leader` would put it: nothing to do.
    pub fn in_place(info: &RegionInfo, stores: &[StoreId], leader: Option<StoreId>) -> bool {
        let here: BTreeSet<StoreId> = info.region.peers.iter().map(|p| p.store_id).collect();
        let leads = info.leader().map(|l| l.store_id);
        here == stores.iter().copied().collect() && leader.is_none_or(|l| leads == Some(l))
    }

    /// Counts a scatter's stores and leader.
    pub fn count(&mut self, stores: &[StoreId], leader: Option<StoreId>) {
        for s in stores {
            *self.peers.entry(*s).or_default() += 1;
        }
        if let Some(l) = leader {
            *self.leaders.entry(l).or_default() += 1;
        }
    }

    /// Starts the count of each store seen for the first time at the
    /// lowest count so far: a store that joins late is not handed every
    /// replica (and leader) until it caught up with the others' counts.
    fn admit(&mut self, stores: impl Iterator<Item = StoreId>) {
        let floor = |m: &BTreeMap<StoreId, u64>| m.values().min().copied().unwrap_or(0);
        let (peers, leaders) = (floor(&self.peers), floor(&self.leaders));
        for s in stores {
            self.peers.entry(s).or_insert(peers);
            self.leaders.entry(s).or_insert(leaders);
        }
    }

    fn peer_picks(&self, store: StoreId) -> u64 {
        self.peers.get(&store).copied().unwrap_or(0)
    }

    fn leader_picks(&self, store: StoreId) -> u64 {
        self.leaders.get(&store).copied().unwrap_or(0)
    }
}

impl AdminRequest {
    /// PD's operator name, e.g. `transfer-leader`.
    pub fn name(&self) -> &'static str {
        match self {
            AdminRequest::TransferLeader { .. } => "transfer-leader",
            AdminRequest::AddPeer { .. } => "add-peer",
            AdminRequest::RemovePeer { .. } => "remove-peer",
            AdminRequest::TransferPeer { .. } => "transfer-peer",
            AdminRequest::Split(_) => "split-region",
            AdminRequest::TransferRegion { .. } => "transfer-region",
            AdminRequest::Scatter { .. } => "scatter-region",
        }
    }
}

/// Validates `req` against region `info` and turns it into a proposal.
pub fn plan(req: &AdminRequest, info: &RegionInfo, ctx: &Ctx<'_>) -> Result<Proposal, String> {
    let r = &info.region;
    let peer_on = |store: StoreId| {
        r.peer_on_store(store).copied().ok_or_else(|| format!("region {} has no peer on store {store}", r.id))
    };
    let usable = |store: StoreId| {
        if r.peer_on_store(store).is_some() {
            Err(format!("region {} already has a peer on store {store}", r.id))
        } else if !ctx.is_active(store) {
            Err(format!("store {store} is not Up and heartbeating"))
        } else {
            Ok(())
        }
    };
    let plan = match req {
        AdminRequest::TransferLeader { to_store } => {
            let to = peer_on(*to_store)?;
            if to.role != PeerRole::Voter {
                return Err(format!("peer {} on store {to_store} is a learner", to.id));
            }
            // evict-leader would move it straight back.
            if ctx.settings.evict_leader_stores.contains(to_store) {
                return Err(format!(
                    "store {to_store} is draining its leaders (evict-leader-scheduler-{to_store}); remove that \
                     scheduler first"
                ));
            }
            Plan::TransferLeader { to }
        }
        AdminRequest::AddPeer { store } => {
            usable(*store)?;
            Plan::AddReplica { store: *store }
        }
        AdminRequest::RemovePeer { store } => {
            let peer = peer_on(*store)?;
            if peer.role == PeerRole::Voter && r.voters().count() == 1 {
                return Err(format!("peer {} is the region's only voter", peer.id));
            }
            // The voters left must still form a quorum of voters that can
            // vote now, or the region stops (e.g. removing B from {A, B, C
            // whose store went silent}).
            let left: Vec<&Peer> = r.voters().filter(|v| v.id != peer.id).collect();
            let live = left.iter().filter(|v| ctx.can_vote_now(v, info)).count();
            if peer.role == PeerRole::Voter && live < left.len() / 2 + 1 {
                return Err(format!(
                    "removing peer {} would leave {live} live of {} voters: no quorum",
                    peer.id,
                    left.len()
                ));
            }
            Plan::Remove(peer)
        }
        AdminRequest::TransferPeer { from_store, to_store } => {
            let from = peer_on(*from_store)?;
            usable(*to_store)?;
            Plan::Move { from, to: *to_store }
        }
        AdminRequest::Split(policy) => Plan::Split(validate_split(info, policy)?),
        AdminRequest::TransferRegion { to_stores } => {
            let moves = moves_onto(info, ctx, to_stores)?;
            if moves.is_empty() {
                return Err(format!("region {} is on those stores already", r.id));
            }
            Plan::MoveAll { moves, leader: None }
        }
        AdminRequest::Scatter { to_stores, leader } => {
            let moves = moves_onto(info, ctx, to_stores)?;
            let leads = info.leader().map(|l| l.store_id);
            if moves.is_empty() && leader.is_none_or(|l| leads == Some(l)) {
                return Err(format!("region {} is where the scatter would put it already", r.id));
            }
            Plan::MoveAll { moves, leader: *leader }
        }
    };
    let kind = if matches!(req, AdminRequest::Split(_)) { OpKind::Split } else { OpKind::Admin };
    Ok(Proposal { region: r.id, kind, desc: req.name(), plan })
}

/// The moves that put `info`'s replicas on exactly `to_stores`: each
/// replica on a store not listed goes to a listed store without one;
/// followers first, the leader last (it hands over once, at its turn).
fn moves_onto(
    info: &RegionInfo,
    ctx: &Ctx<'_>,
    to_stores: &[StoreId],
) -> Result<Vec<(Peer, StoreId)>, String> {
    let r = &info.region;
    let mut unique = to_stores.to_vec();
    unique.sort();
    unique.dedup();
    if unique.len() != to_stores.len() {
        return Err("a store is named twice".to_string());
    }
    if to_stores.len() != r.peers.len() {
        return Err(format!(
            "region {} has {} replicas: name {} stores, one for each",
            r.id,
            r.peers.len(),
            r.peers.len()
        ));
    }
    if let Some(l) = r.peers.iter().find(|p| p.role != PeerRole::Voter) {
        return Err(format!("region {} has a learner (peer {}): let it finish first", r.id, l.id));
    }
    let fresh: Vec<StoreId> = to_stores.iter().copied().filter(|s| r.peer_on_store(*s).is_none()).collect();
    if let Some(s) = fresh.iter().find(|s| !ctx.is_active(**s)) {
        return Err(format!("store {s} is not Up and heartbeating"));
    }
    // The replica checker would undo it at once.
    if let Some(s) = to_stores.iter().find(|s| ctx.shares_host(**s, to_stores)) {
        return Err(format!("store {s} shares a host with another of the stores: two replicas on one host"));
    }
    let leader = info.leader().map(|l| l.id);
    let mut leaving: Vec<Peer> =
        r.peers.iter().copied().filter(|p| !to_stores.contains(&p.store_id)).collect();
    leaving.sort_by_key(|p| Some(p.id) == leader);
    Ok(leaving.into_iter().zip(fresh).collect())
}

/// Keys sorted and deduplicated, each strictly inside the region (a key equal
/// to the start key splits nothing).
fn validate_split(info: &RegionInfo, policy: &SplitPolicy) -> Result<SplitPolicy, String> {
    let SplitPolicy::UseKeys(keys) = policy else { return Ok(SplitPolicy::Approximate) };
    if keys.is_empty() {
        return Ok(SplitPolicy::Approximate);
    }
    let mut keys = keys.clone();
    keys.sort();
    keys.dedup();
    let r = &info.region;
    if let Some(k) = keys.iter().find(|k| !r.contains(k) || **k == r.start_key) {
        return Err(format!("split key {} is not inside region {}", hex::encode_upper(k), r.id));
    }
    Ok(SplitPolicy::UseKeys(keys))
}

/// Creates the operator `req` asks for on `region`; returns the first step
/// to push to the leader (`None`: nothing to send yet).
pub fn add(
    snap: &ClusterSnapshot<'_>,
    settings: &Settings,
    ops: &mut OperatorController,
    region: RegionId,
    req: &AdminRequest,
    new_peer: NewPeerId<'_>,
) -> Result<Option<ScheduleOrder>, String> {
    let info = snap.regions.get(region).ok_or_else(|| format!("region {region} not found"))?;
    let leader = info.leader().ok_or_else(|| format!("region {region} has no known leader yet"))?;
    let proposal = plan(req, info, &Ctx { snap, settings, ops })?;
    let step = try_create(snap, settings, ops, info, &proposal, new_peer)?;
    Ok(step.map(|(step, epoch)| ScheduleOrder { region_id: region, epoch, leader, step }))
}
