//! The cluster: PD's request handling, transport-free.
//!
//! [`Cluster`] holds the metadata [`StateMachine`] (shared with the PD raft
//! thread, which applies committed commands to it), and, under one mutex,
//! what the leader derives from it: the id allocator, the operators, the
//! effective config and the schedulers. Requests decide under that mutex and
//! propose through the [`Replicator`]; the rules a command must obey (one
//! `Bootstrap`, one store per address, tombstone only when empty) are checked
//! again when it applies, so a race between two proposals is settled by the
//! log order every member sees. The state machine's own lock is never held
//! across a proposal. Two kinds of writes wait for no decision and hold up
//! none: timestamps (`tso`, their own lock and replicator handle) and region
//! records from heartbeats and split reports (`region_writes`, taken without
//! the decision mutex; a region is written only when its epoch is news; on
//! the etcd backend all writes still take turns for etcd).
//!
//! Only the PD leader serves ([`Cluster::check_serving`]): when this member
//! starts serving a term, [`Cluster::promote`] rebuilds everything derived
//! from the applied metadata (allocators from their persisted windows,
//! config and schedulers from their persisted changes; operators start
//! empty) and creates the cluster id on a brand-new cluster. Scheduling waits
//! until the stores have reported to the new leader ([`Inner::prepared`]).
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mnemo_engine::EngineRef;
use mnemo_proto::types::{Region, RegionId, StoreId};
use parking_lot::{MappedMutexGuard, Mutex, MutexGuard};
use tracing::{info, warn};

pub use crate::schedule::ScheduleOrder;
pub use heartbeat::{RegionHeartbeat, SplitIds};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::id::IdAllocator;
use crate::member::member_id;
use crate::member::Member;
use crate::meta::{Command, LocalReplicator, MetaState, Replicator, SharedMeta, StateMachine};
use crate::raft::{Leadership, MemberChange, SoleLeader};
use crate::region_map::RegionInfo;
use crate::schedule::{ClusterSnapshot, Coordinator, OperatorController, Settings};
use crate::store::{StoreMeta, StoreState};
use crate::tso::{Timestamp, TsoAllocator, TsoStep, MAX_LOGICAL};

/// PD's state and request handling.
pub struct Cluster {
    member: Member,
    /// The cluster id once known (0 before); it never changes after.
    cluster_id: AtomicU64,
    /// Who leads the PD group.
    leadership: Arc<dyn Leadership>,
    /// The term [`Cluster::promote`] last prepared this member for.
    promoted_term: AtomicU64,
    /// The configuration from the file and flags; run-time changes replay
    /// over it.
    base_config: Config,
    sm: SharedMeta,
    /// The timestamp oracle, under its own lock with its own handle on
    /// the replicator: a timestamp never waits for heartbeats, scheduling or
    /// HTTP work on `inner`, only (about every 2 s) for its next window
    /// bound to commit. Lock order: `tso`, then `inner`, then the state
    /// machine.
    tso: Mutex<Tso>,
    /// The replicator handle region records are written through (region
    /// heartbeats, split reports), one write at a time so that each is
    /// checked against the map with every earlier one applied; never taken
    /// while `inner` is held. Lock order: `region_writes`, then the state
    /// machine.
    region_writes: Mutex<Box<dyn Replicator>>,
    inner: Mutex<Inner>,
    /// What scatters handed out since this member started (PD keeps such
    /// counts per scatter group too): a region scattered later goes where
    /// earlier ones did not. Lock order: `scatter_picks`, then `inner`.
    scatter_picks: Mutex<crate::schedule::ScatterPicks>,
    counters: Counters,
}

/// What this member handled since it started, for `GET /pd/api/v1/raft`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Region heartbeats received.
    pub region_heartbeats: AtomicU64,
    /// Region records proposed to the log (new or changed metadata).
    pub region_changes: AtomicU64,
}

/// The timestamp oracle and how it persists its window bound.
struct Tso {
    alloc: TsoAllocator,
    replicator: Box<dyn Replicator>,
}

struct Inner {
    sm: SharedMeta,
    replicator: Box<dyn Replicator>,
    /// When this member started serving: the grace period of stores that
    /// have not reported yet, and the start of the prepare check.
    alive_since: SystemTime,
    /// Whether a new leader waits for the stores (a member of a replicated
    /// PD; a lone member without raft starts with nothing to distrust).
    prepare_check: bool,
    /// Regions heard from since `alive_since` (counted as their first
    /// heartbeat since then arrives), and whether the prepare check passed:
    /// once passed it stays passed until `alive_since` moves. Kept so that a
    /// heartbeat costs O(1) here, not a walk over every region.
    heard_since_alive: usize,
    prepared: bool,
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

/// Everything scheduling reads and changes, for [`Inner::scheduling`].
type SchedulingFn<'a, R> = dyn FnOnce(&ClusterSnapshot<'_>, &Settings, &mut OperatorController, &mut Coordinator, &mut IdAllocator) -> R
    + 'a;

/// How long a new leader waits at most for the stores to report before it
/// schedules anyway (PD waits 5 minutes).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(300);

impl Inner {
    fn propose(&mut self, cmd: Command) -> Result<()> {
        self.replicator.replicate(cmd)
    }

    /// The metadata and runtime, locked until the guard is dropped. Never
    /// hold it across [`Inner::propose`] (the borrow checker refuses), nor
    /// take it twice in one expression (it is not reentrant).
    fn state(&self) -> MappedMutexGuard<'_, MetaState> {
        MutexGuard::map(self.sm.lock(), StateMachine::state_mut)
    }

    fn alloc_id(&mut self) -> Result<u64> {
        loop {
            if let Some(id) = self.ids.try_alloc() {
                return Ok(id);
            }
            self.extend_ids()?;
        }
    }

    /// Makes sure [`IDS_AT_HAND`] ids can be handed out without a write.
    fn ensure_ids(&mut self) -> Result<()> {
        if self.ids.remaining() < IDS_AT_HAND {
            self.extend_ids()?;
        }
        Ok(())
    }

    /// Persists the next id window; the allocator then follows the window
    /// as applied (not as proposed).
    fn extend_ids(&mut self) -> Result<()> {
        let end = self.ids.next_window_end();
        self.propose(Command::AllocIdWindow { end })?;
        let applied = self.state().id_window_end();
        self.ids.extend(applied);
        Ok(())
    }

    /// Runs `f` on the scheduling inputs at `now` and everything scheduling
    /// changes (the state stays locked meanwhile: `f` must not propose).
    fn scheduling<R>(&mut self, now: SystemTime, f: Box<SchedulingFn<'_, R>>) -> R {
        let guard = self.sm.lock();
        let state = guard.state();
        let snap = ClusterSnapshot {
            stores: state.stores(),
            regions: state.regions(),
            now,
            alive_since: self.alive_since,
        };
        f(&snap, &self.settings, &mut self.operators, &mut self.coordinator, &mut self.ids)
    }

    /// PD's prepare check: a new leader schedules only once 90% of the
    /// regions were heard from since it started serving (or
    /// [`PREPARE_TIMEOUT`] passed): until then its view of leaders, sizes
    /// and down peers is its predecessor's or none, and acting on it could
    /// undo work in flight.
    fn prepared(&mut self, now: SystemTime) -> bool {
        if !self.prepared {
            self.prepared = !self.prepare_check
                || now.duration_since(self.alive_since).unwrap_or_default() >= PREPARE_TIMEOUT
                || self.heard_since_alive * 10 >= self.state().regions().len() * 9;
        }
        self.prepared
    }

    /// Serving starts (again) at `now`: the prepare check starts over.
    fn restart_prepare_check(&mut self, now: SystemTime) {
        self.alive_since = now;
        self.heard_since_alive = 0;
        self.prepared = false;
    }

    /// Counts region `id` as heard from now, if it is its first heartbeat
    /// since serving started (call before recording the heartbeat).
    fn note_heard(&mut self, id: RegionId) {
        let since = self.alive_since;
        let first =
            self.state().regions().get(id).is_none_or(|r| r.runtime.last_heartbeat.is_none_or(|t| t < since));
        if first {
            self.heard_since_alive += 1;
        }
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
    /// A single member without raft, serving at once: loads the metadata
    /// from `engine`, applies commands directly, and on a first start
    /// creates the cluster id. (The cluster logic's tests.)
    pub fn open(config: Config, member: Member, engine: EngineRef) -> Result<Cluster> {
        let sm: SharedMeta = Arc::new(Mutex::new(StateMachine::open(engine)?));
        let replicator = Box::new(LocalReplicator::new(sm.clone()));
        let cluster = Cluster::with_replicator(config, member, sm, replicator, Arc::new(SoleLeader));
        cluster.inner.lock().prepare_check = false;
        cluster.promote(1)?;
        Ok(cluster)
    }

    /// A member of a replicated PD: `sm` is the state machine the raft
    /// thread applies to, `replicator` and `leadership` its handle. Serves
    /// once [`Cluster::promote`] ran for a term the group says it leads.
    pub fn with_replicator(
        config: Config,
        member: Member,
        sm: SharedMeta,
        replicator: Box<dyn Replicator>,
        leadership: Arc<dyn Leadership>,
    ) -> Cluster {
        let (cluster_id, window_end, tso_bound) = {
            let sm = sm.lock();
            let s = sm.state();
            info!(
                cluster_id = s.cluster_id(),
                bootstrapped = s.is_bootstrapped(),
                stores = s.stores().len(),
                regions = s.regions().len(),
                "metadata loaded"
            );
            (s.cluster_id(), s.id_window_end(), s.tso_bound_ms())
        };
        let settings = Settings::from_config(&config);
        let tso_replicator = replicator.another();
        let region_replicator = replicator.another();
        let inner = Inner {
            sm: sm.clone(),
            replicator,
            alive_since: SystemTime::now(),
            prepare_check: true,
            heard_since_alive: 0,
            prepared: false,
            ids: IdAllocator::new(window_end),
            operators: OperatorController::default(),
            coordinator: Coordinator::new(rand::random()),
            config: config.clone(),
            settings,
        };
        Cluster {
            member,
            cluster_id: AtomicU64::new(cluster_id),
            leadership,
            promoted_term: AtomicU64::new(0),
            base_config: config,
            sm,
            tso: Mutex::new(Tso { alloc: TsoAllocator::new(tso_bound), replicator: tso_replicator }),
            region_writes: Mutex::new(region_replicator),
            inner: Mutex::new(inner),
            scatter_picks: Mutex::new(Default::default()),
            counters: Counters::default(),
        }
    }

    /// Prepares this member to serve `term` as PD leader: everything derived
    /// from the metadata is rebuilt from what is applied (allocators start
    /// above their persisted windows, so nothing a predecessor handed out is
    /// handed out again), operators in flight are dropped (the nodes finish
    /// or abandon their current step; the replica checker re-plans), and a
    /// brand-new cluster gets its id. Idempotent per term.
    pub fn promote(&self, term: u64) -> Result<()> {
        let mut tso = self.tso.lock();
        let mut inner = self.inner.lock();
        if self.promoted_term.load(Ordering::SeqCst) == term {
            return Ok(());
        }
        // `[schedule]` and `[replication]` come from the metadata, not
        // this member's file: keys never persisted (a new cluster, a key
        // this version adds) are persisted from the file first.
        let missing: Vec<(String, String)> = {
            let s = inner.state();
            crate::config::update::runtime_values(&self.base_config)
                .into_iter()
                .filter(|(key, _)| !s.config_overrides().contains_key(key))
                .collect()
        };
        if !missing.is_empty() {
            info!(
                keys = missing.len(),
                "persisting the schedule and replication config from this member's file"
            );
            inner.propose(Command::UpdateConfig { changes: missing })?;
        }
        let (cluster_id, window_end, tso_bound, overrides, schedulers) = {
            let s = inner.state();
            (
                s.cluster_id(),
                s.id_window_end(),
                s.tso_bound_ms(),
                s.config_overrides().clone(),
                s.schedulers().map(<[String]>::to_vec),
            )
        };
        inner.ids = IdAllocator::new(window_end);
        tso.alloc = TsoAllocator::new(tso_bound);
        inner.config = with_overrides(self.base_config.clone(), &overrides, true);
        inner.settings = Settings::from_config(&inner.config);
        inner.coordinator = Coordinator::new(rand::random());
        if let Some(names) = schedulers {
            inner.coordinator.set_schedulers(scheduling::parse_persisted_schedulers(&names));
        }
        inner.settings.evict_leader_stores = inner.coordinator.evict_leader_stores();
        inner.operators = OperatorController::default();
        inner.restart_prepare_check(SystemTime::now());
        if cluster_id == 0 {
            let cluster_id = new_cluster_id();
            inner.propose(Command::InitCluster { cluster_id })?;
            info!(cluster_id, "created a new cluster id");
        }
        let id = inner.state().cluster_id();
        self.cluster_id.store(id, Ordering::SeqCst);
        self.promoted_term.store(term, Ordering::SeqCst);
        info!(
            term,
            cluster_id = id,
            schedulers = %inner.coordinator.schedulers().iter().map(|s| s.name()).collect::<Vec<_>>().join(","),
            "serving as PD leader"
        );
        Ok(())
    }

    /// `Ok` if this member serves as PD leader now; [`Error::NotLeader`]
    /// otherwise (a follower, a leader without its lease or not yet
    /// prepared, a leader handing over).
    pub fn check_serving(&self) -> Result<()> {
        let status = self.leadership.status();
        match status.serving_term(Instant::now()) {
            Some(term) if term == self.promoted_term.load(Ordering::SeqCst) => Ok(()),
            _ => Err(Error::NotLeader(match status.leader_id {
                0 => "no PD leader elected".into(),
                id => format!("PD leader is member {id:x}"),
            })),
        }
    }

    /// Hands out `orders` (steps for the nodes) only if this member still
    /// serves: a decision waits for `inner`, which another request may hold
    /// across a proposal for seconds, and the serving check made before
    /// that wait may no longer hold. Called with `inner` still locked, so
    /// no newer decision of this member can slip in between; what is
    /// pushed after this check lands within the lease's safety margin.
    fn still_serving<T>(&self, orders: T) -> Result<T> {
        self.check_serving().map(|()| orders)
    }

    /// Who leads the PD group.
    pub fn leadership(&self) -> &Arc<dyn Leadership> {
        &self.leadership
    }

    /// What this member handled since it started.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// True once [`Cluster::promote`] prepared this member for `term`.
    pub fn is_promoted(&self, term: u64) -> bool {
        self.promoted_term.load(Ordering::SeqCst) == term
    }

    /// Every member of the PD group with what is known of it (this member
    /// always; the others once published), and the leader if known.
    pub fn member_list(&self) -> (Vec<Member>, Option<Member>) {
        let status = self.leadership.status();
        let mut members = self.members();
        members.insert(self.member.member_id, self.member.clone());
        if !status.voters.is_empty() {
            members.retain(|id, _| status.voters.contains(id));
        }
        // As PD reports the holder of the leader key: this member only
        // once it serves; another member as soon as raft elected it.
        let me = self.member.member_id;
        let leader = match status.leader_id {
            _ if self.check_serving().is_ok() => Some(self.member.clone()),
            id if id == me || id == 0 => None,
            id => members.get(&id).cloned(),
        };
        (members.into_values().collect(), leader)
    }

    /// Leader only: adds a voting member called `name` at `peer_url` (it
    /// must then start with `--join`); returns the members afterwards.
    pub fn add_member(&self, name: &str, peer_url: &str) -> Result<Vec<Member>> {
        self.check_serving()?;
        let url = crate::config::HttpUrl::parse("peer_urls", peer_url)?.to_string();
        if name.is_empty() || name.contains([',', '=', ' ']) {
            return Err(Error::InvalidArgument(format!(
                "member name {name:?} must be non-empty without ',', '=' or spaces"
            )));
        }
        let (members, _) = self.member_list();
        if let Some(m) = members.iter().find(|m| m.name == name || m.peer_url == url) {
            return Err(Error::InvalidArgument(format!(
                "member {} at {} already exists: a name and a peer URL belong to one member",
                m.name, m.peer_url
            )));
        }
        // As etcd does: the group must keep a quorum of live voters with
        // the new one counted but not yet running.
        let status = self.leadership.status();
        let size_after = status.voters.len() + 1;
        // etcd's rule, with its exception: one member may always add a second.
        let need = if status.voters.len() == 1 { 1 } else { size_after / 2 + 1 };
        if status.active_voters.len() < need {
            return Err(Error::InvalidArgument(format!(
                "only {} of {} members are live: adding one would need {need} live to keep a quorum",
                status.active_voters.len(),
                status.voters.len()
            )));
        }
        let member = Member {
            name: name.to_owned(),
            member_id: member_id(name, &url),
            client_url: String::new(),
            peer_url: url,
        };
        self.leadership.change_member(MemberChange::Add(member.clone()))?;
        info!(member = %member.name, peer_url = %member.peer_url, "PD member added");
        let (mut members, _) = self.member_list();
        if !members.iter().any(|m| m.member_id == member.member_id) {
            members.push(member);
        }
        Ok(members)
    }

    /// Leader only: removes the member called `name` from the group. The
    /// leader itself is refused (resign first).
    pub fn remove_member(&self, name: &str) -> Result<()> {
        self.check_serving()?;
        let (members, _) = self.member_list();
        let m =
            members.iter().find(|m| m.name == name).ok_or_else(|| Error::MemberNotFound(name.to_owned()))?;
        if m.member_id == self.member.member_id {
            return Err(Error::InvalidArgument(format!(
                "{name} is the leader: `member leader resign` first"
            )));
        }
        let status = self.leadership.status();
        let left = status.voters.len().saturating_sub(1);
        let live_left = status.active_voters.iter().filter(|id| **id != m.member_id).count();
        if self.leadership.members_vote() && live_left < left / 2 + 1 {
            return Err(Error::InvalidArgument(format!(
                "removing {name} would leave {live_left} live of {left} members, fewer than a quorum"
            )));
        }
        self.leadership.change_member(MemberChange::Remove(m.member_id))?;
        warn!(member = %name, "PD member removed");
        Ok(())
    }

    /// Leader only: hands leadership to another member (PD's "resign");
    /// a no-op for a lone member.
    pub fn resign_leader(&self) -> Result<()> {
        self.check_serving()?;
        let status = self.leadership.status();
        // A live member if there is one: a transfer to a dead one only
        // delays the next leader.
        let others = |ids: &[u64]| ids.iter().copied().find(|id| *id != self.member.member_id);
        match others(&status.active_voters).or_else(|| others(&status.voters)).as_ref() {
            Some(to) => self.leadership.transfer_leader(*to),
            None => Ok(()),
        }
    }

    /// Leader only: hands leadership to the member called `name`.
    pub fn transfer_leader_to(&self, name: &str) -> Result<()> {
        self.check_serving()?;
        let (members, _) = self.member_list();
        let target = members
            .iter()
            .find(|m| m.name == name && m.member_id != self.member.member_id)
            .ok_or_else(|| Error::InvalidArgument("no valid pd to transfer etcd leader".into()))?;
        self.leadership.transfer_leader(target.member_id)
    }

    /// Leader only: publishes the name and URLs of every member the group
    /// has (learned from their raft messages) and forgets members it no
    /// longer has.
    pub fn publish_members(&self) -> Result<()> {
        self.check_serving()?;
        let status = self.leadership.status();
        let mut wanted = self.leadership.peer_infos();
        wanted.retain(|id, _| status.voters.contains(id));
        wanted.insert(self.member.member_id, self.member.clone());
        let known = self.members();
        let mut inner = self.inner.lock();
        for (id, m) in &wanted {
            if known.get(id) != Some(m) {
                inner.propose(Command::PutMember { member: m.clone() })?;
                info!(member = %m.name, client_url = %m.client_url, "PD member published");
            }
        }
        if !status.voters.is_empty() {
            for id in known.keys().filter(|id| !status.voters.contains(id)) {
                inner.propose(Command::RemoveMember { member_id: *id })?;
            }
        }
        Ok(())
    }

    /// The cluster id (nonzero once created, fixed for the cluster's life;
    /// 0 on a member that has not yet applied it).
    pub fn cluster_id(&self) -> u64 {
        let id = self.cluster_id.load(Ordering::Relaxed);
        if id != 0 {
            return id;
        }
        let id = self.sm.lock().state().cluster_id();
        self.cluster_id.store(id, Ordering::Relaxed);
        id
    }

    /// The published PD members (name and URLs), by member id.
    pub fn members(&self) -> std::collections::BTreeMap<u64, Member> {
        self.sm.lock().state().members().clone()
    }

    /// This member.
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// The effective configuration (file and flags, then run-time changes).
    pub fn config(&self) -> Config {
        if self.check_serving().is_ok() {
            return self.inner.lock().config.clone();
        }
        // A follower (which answers `GET /config` itself) replays the
        // applied run-time changes: its own derived copy is rebuilt only
        // when it is promoted.
        let overrides = self.sm.lock().state().config_overrides().clone();
        with_overrides(self.base_config.clone(), &overrides, false)
    }

    /// `Ok` if a request header's cluster id is this cluster's.
    pub fn check_cluster_id(&self, got: u64) -> Result<()> {
        let need = self.cluster_id();
        if got == need {
            Ok(())
        } else {
            Err(Error::ClusterIdMismatch { need, got })
        }
    }

    /// Runs `f` on a consistent view of everything.
    pub fn read<R>(&self, f: impl FnOnce(ClusterView<'_>) -> R) -> R {
        let inner = self.inner.lock();
        let state = inner.state();
        f(ClusterView {
            state: &state,
            operators: &inner.operators,
            now: SystemTime::now(),
            alive_since: inner.alive_since,
            config: &inner.config,
        })
    }

    /// Visits every region in key order, `page` regions per hold of the
    /// metadata lock (which heartbeats and the raft thread's apply also
    /// take), so a listing of a large map never holds it for long. Not one
    /// snapshot: a region that changes between pages is seen as it is when
    /// its page is read.
    pub fn for_each_region_page(&self, page: usize, mut f: impl FnMut(&[&RegionInfo])) {
        let page = page.max(1);
        let mut start = Some(Vec::new());
        while let Some(from) = start.take() {
            let sm = self.sm.lock();
            let regions = sm.state().regions().scan(&from, b"", page);
            f(&regions);
            if regions.len() == page {
                start = regions.last().map(|r| r.region.end_key.clone()).filter(|end| !end.is_empty());
            }
        }
    }

    /// True once the first store and region were recorded.
    pub fn is_bootstrapped(&self) -> bool {
        self.sm.lock().state().is_bootstrapped()
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
        self.check_serving()?;
        let mut tso = self.tso.lock();
        loop {
            let now_ms = crate::time::unix_ms(SystemTime::now());
            match tso.alloc.alloc(count, now_ms) {
                TsoStep::Ready(ts) => {
                    // Leadership may have moved while this waited for the
                    // lock or a save: only a leader still serving answers.
                    self.check_serving()?;
                    crate::metrics::PD.tso_total.inc_by(u64::from(count));
                    return Ok(ts);
                }
                TsoStep::NeedSave { bound_ms } => {
                    tso.replicator.replicate(Command::TsoWindow { physical_ms: bound_ms })?;
                    let applied = self.sm.lock().state().tso_bound_ms();
                    tso.alloc.saved(applied);
                }
            }
        }
    }

    /// The region containing `key` (with its leader, if known).
    pub fn get_region(&self, key: &[u8]) -> Result<Option<RegionInfo>> {
        self.read_state(|s| s.regions().get_by_key(key).cloned())
    }

    /// Runs `f` on the state of a bootstrapped cluster, without waiting for
    /// request handling (only for the state machine's own lock).
    fn read_state<R>(&self, f: impl FnOnce(&MetaState) -> R) -> Result<R> {
        let sm = self.sm.lock();
        if !sm.state().is_bootstrapped() {
            return Err(Error::NotBootstrapped);
        }
        Ok(f(sm.state()))
    }

    /// The region before the one containing `key`.
    pub fn get_prev_region(&self, key: &[u8]) -> Result<Option<RegionInfo>> {
        self.read_state(|s| s.regions().prev_of_key(key).cloned())
    }

    /// Region `id`.
    pub fn get_region_by_id(&self, id: RegionId) -> Result<Option<RegionInfo>> {
        self.read_state(|s| s.regions().get(id).cloned())
    }

    /// Regions intersecting `[start, end)` (empty end = +inf), at most `limit`
    /// (0 = all).
    pub fn scan_regions(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<RegionInfo>> {
        self.read_state(|s| s.regions().scan(start, end, limit).into_iter().cloned().collect())
    }
}

/// `config` with the run-time changes persisted in `overrides` replayed over
/// it. A change that no longer applies (a key this version does not know)
/// is skipped with a warning rather than keeping PD from starting.
fn with_overrides(
    config: Config,
    overrides: &std::collections::BTreeMap<String, String>,
    log: bool,
) -> Config {
    let mut config = config;
    let file: std::collections::BTreeMap<String, String> =
        crate::config::update::runtime_values(&config).into_iter().collect();
    for (key, text) in overrides {
        let applied = serde_json::from_str(text)
            .map_err(|e| Error::Config(e.to_string()))
            .and_then(|value| config.with_changes(&[(key.clone(), value)]));
        match applied {
            Ok((c, _)) => {
                if log && file.get(key) != Some(text) {
                    info!(key = %key, value = %text, file = ?file.get(key), "config from the metadata, not the file");
                }
                config = c;
            }
            Err(e) if log => {
                warn!(key = %key, value = %text, error = %e, "ignoring a persisted config change")
            }
            Err(_) => {}
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
