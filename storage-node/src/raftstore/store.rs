//! The store loop: one thread driving every region peer of this node.
//!
//! Each round: take all queued messages (raft messages from other stores,
//! client reads and writes, PD operators), tick peers when the tick interval
//! passed, then handle the readies of all peers together in one ready round
//! (`mnemo_raft_driver::round`, shared with PD: apply committed entries into
//! one kv batch, stage **all** peers' entries and hard states into one raft
//! batch, write them with **one fsync**, advance), then answer clients (only
//! now is their write applied and durable) and flush outgoing messages: one
//! batch per target store. How a peer takes part in the round is
//! [`RoundCx`] and the `Group` impl at the end of this file.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mnemo_proto::raft_serverpb::{PeerState, RaftMessage, RegionLocalState};
use mnemo_proto::types::{epoch_of, Peer as PeerMeta, PeerId, Region, RegionEpoch, RegionId, StoreId};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeType, Message as RaftMsg, MessageType};
use raft::SnapshotStatus;

use super::apply_pool::{ApplyPool, ApplyResult};
use super::lease_clock::LeaseClock;
use super::local_reader::LocalReader;
use super::log_gc::{LogGcTask, LogGcWorker};
use super::peer::{Now, Peer, PeerConfig, Reply};
use super::router::{StoreInbox, StoreRouter};
use super::split_check::{self, SplitCheckTask, SplitLimits};
use super::storage::{self, PeerStorage};
use super::{Operator, PdTask, ReadPolicy, RegionHash, RegionReport, StoreMsg, Transport};
use crate::engine::{Cf, EngineRef, Engines, ScanRange, WriteBatch};
use crate::error::{Error, Result};
use crate::keys;
use crate::metrics::{Metrics, RAFTSTORE};
use mnemo_raft_driver::round::{Group, Round};

/// Settings of the store loop.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Settings every peer gets.
    pub peer: PeerConfig,
    /// Raft tick (default 100 ms).
    pub tick_interval: Duration,
    /// How often a leader reports its region to PD even if nothing changed.
    pub pd_heartbeat_interval: Duration,
    /// Silence of a peer's store after which its leader reports it down.
    pub max_peer_down_duration: Duration,
    /// Split thresholds.
    pub split: SplitLimits,
    /// How often leaders consider a split check (`split-region-check-tick-interval`).
    pub split_check_interval: Duration,
    /// How often peers consider compacting their raft log (`raft-log-gc-tick-interval`).
    pub raft_log_gc_interval: Duration,
    /// Compact once this many applied entries are in the log (`raft-log-gc-threshold`).
    pub raft_log_gc_threshold: u64,
    /// Compact past lagging followers (they get a snapshot) once the log
    /// holds this many entries (`raft-log-gc-count-limit`).
    pub raft_log_gc_count_limit: u64,
    /// The clock leader leases are measured on: real time, unless the node
    /// runs with `--enable-test-controls` and a test skews it.
    pub lease_clock: LeaseClock,
    /// Data messages (client requests, raft messages) taken per round
    /// (`messages-per-tick`).
    pub messages_per_tick: usize,
    /// Apply workers (`apply-pool-size`; 0: apply on the store loop).
    pub apply_pool_size: usize,
}

impl StoreConfig {
    /// Settings for a store driven round by round ([`Store::round`]: tests,
    /// benchmarks): an hour between ticks, PD reports, split checks and log
    /// GC, so none comes due on its own; splits never asked for.
    pub fn driven_by_hand() -> StoreConfig {
        let hour = Duration::from_secs(3600);
        StoreConfig {
            peer: PeerConfig {
                election_tick: 10,
                heartbeat_tick: 2,
                lease: Duration::from_millis(800),
                raft_entry_max_size: 8 << 20,
                max_uncommitted_size: 128 << 20,
                hibernate: false,
                plants: Default::default(),
            },
            tick_interval: hour,
            pd_heartbeat_interval: hour,
            max_peer_down_duration: Duration::from_secs(600),
            split: SplitLimits {
                split_size: 1 << 30,
                split_keys: 1 << 30,
                max_size: 1 << 30,
                max_keys: 1 << 30,
            },
            split_check_interval: hour,
            raft_log_gc_interval: hour,
            raft_log_gc_threshold: 50,
            raft_log_gc_count_limit: 10_000,
            lease_clock: LeaseClock::real(),
            messages_per_tick: 4096,
            apply_pool_size: 0,
        }
    }
}

/// The multi-raft store: owns every peer of this node.
pub struct Store {
    store_id: StoreId,
    cfg: StoreConfig,
    kv: EngineRef,
    raft: EngineRef,
    peers: HashMap<RegionId, Peer>,
    /// Regions whose peer here was destroyed, with the largest peer id it had.
    tombstones: HashMap<RegionId, PeerId>,
    rx: StoreInbox,
    transport: Arc<dyn Transport>,
    pd: tokio::sync::mpsc::UnboundedSender<PdTask>,
    logger: slog::Logger,
    metrics: Arc<Metrics>,
    /// Per led region: when it was last reported to PD, and its pending
    /// and down peers then (a change is reported at once).
    last_reported: HashMap<RegionId, (Instant, Vec<PeerId>, Vec<PeerId>)>,
    split_checker: crossbeam_channel::Sender<SplitCheckTask>,
    /// Deletes compacted raft log entries (after syncing the kv engine).
    log_gc: LogGcWorker,
    next_split_check: Instant,
    next_log_gc: Instant,
    /// When each other store last sent us anything (store-level liveness,
    /// which wakes hibernating followers whose leader's store went silent).
    last_heard: HashMap<StoreId, Instant>,
    /// When the store loop started (a store never heard from is silent
    /// since then).
    started: Instant,
    /// When the next base tick is due, and how many ticked so far.
    next_tick: Instant,
    tick_no: u64,
    /// Regions whose leader batched plain writes this round (proposed as
    /// one entry each once the round's messages are handled).
    batched: Vec<RegionId>,
    /// Regions that took writes or operators this round: their read
    /// delegates are republished at its end (peers with a ready are anyway).
    touched: Vec<RegionId>,
    /// Lease reads served on gRPC threads (see [`super::local_reader`]).
    local_reader: Arc<LocalReader>,
    /// The peers the loop visits each tick and round: all but those asleep
    /// (`Peer::asleep`), so an idle node with many hibernating regions
    /// costs per tick what its awake ones do. A peer joins when created or
    /// when anything addressed to it arrives, and leaves on the tick that
    /// finds it asleep with nothing left to do; every
    /// [`FULL_WALK_TICKS`] ticks a walk over all peers re-adds any that
    /// should not be out.
    awake: HashSet<RegionId>,
    /// Stores this node shares a region with (from the last full walk; none
    /// before the first): the targets of store pings.
    peer_stores: Option<HashSet<StoreId>>,
    /// Stores silent at the last ping tick: sleeping followers are looked
    /// at only when a store newly falls silent.
    silent_stores: HashSet<StoreId>,
    /// The next tick walks every peer, whatever its number.
    full_walk_due: bool,
    /// Workers applying plain writes off this loop (`apply-pool-size` > 0).
    apply_pool: Option<ApplyPool>,
    /// Their reports (a channel that never delivers without a pool): the
    /// loop wakes for them as for messages.
    apply_results: crossbeam_channel::Receiver<ApplyResult>,
}

impl Store {
    /// Loads every region peer this node holds.
    pub fn load(
        store_id: StoreId,
        cfg: StoreConfig,
        engines: Engines,
        (router, rx): (StoreRouter, StoreInbox),
        transport: Arc<dyn Transport>,
        pd: tokio::sync::mpsc::UnboundedSender<PdTask>,
        metrics: Arc<Metrics>,
    ) -> Result<Store> {
        let logger = crate::logging::raft_logger();
        // The split checker answers through the store's own channel.
        let split_checker = split_check::spawn(engines.kv.clone(), cfg.split, router);
        let log_gc = LogGcWorker::spawn(engines.kv.clone(), engines.raft.clone());
        let local_reader = LocalReader::new(cfg.lease_clock.clone());
        let apply_pool =
            (cfg.apply_pool_size > 0).then(|| ApplyPool::spawn(cfg.apply_pool_size, engines.kv.clone()));
        let apply_results =
            apply_pool.as_ref().map_or_else(crossbeam_channel::never, |p| p.results().clone());
        let now = Instant::now();
        let mut store = Store {
            next_split_check: now + cfg.split_check_interval,
            next_log_gc: now + cfg.raft_log_gc_interval,
            next_tick: now + cfg.tick_interval,
            tick_no: 0,
            batched: Vec::new(),
            last_heard: HashMap::new(),
            started: now,
            split_checker,
            log_gc,
            store_id,
            cfg,
            kv: engines.kv,
            raft: engines.raft,
            peers: HashMap::new(),
            tombstones: HashMap::new(),
            rx,
            transport,
            pd,
            logger,
            metrics,
            last_reported: HashMap::new(),
            touched: Vec::new(),
            local_reader,
            awake: HashSet::new(),
            peer_stores: None,
            silent_stores: HashSet::new(),
            full_walk_due: false,
            apply_pool,
            apply_results,
        };
        let mut states = Vec::new();
        store.kv.scan(
            Cf::Meta,
            ScanRange { start: keys::REGION_META_MIN, end: keys::REGION_META_MAX, reverse: false },
            &mut |k, v| {
                if let Some((_, true)) = keys::decode_region_meta_key(k) {
                    states.push(v.to_vec());
                }
                true
            },
        )?;
        for raw in states {
            let state = RegionLocalState::decode(raw.as_slice()).map_err(|e| Error::Other(e.to_string()))?;
            let mut region = Region::from(&state.region.clone().unwrap_or_default());
            if state.state() == PeerState::Tombstone {
                let max = region.peers.iter().map(|p| p.id).max().unwrap_or_default();
                store.tombstones.insert(region.id, max);
                continue;
            }
            if state.state() == PeerState::Applying {
                tracing::warn!(region = %region.id, "snapshot apply was interrupted; finishing it");
                region = PeerStorage::resume_interrupted_snapshot(&store.kv, &store.raft, region.id)?;
            }
            let Some(me) = region.peer_on_store(store_id).copied() else {
                tracing::warn!(region = %region.id, "region state without a local peer; skipping");
                continue;
            };
            store.create_peer(me, region)?;
        }
        tracing::info!(store = %store_id, regions = store.peers.len(), "store loaded");
        Ok(store)
    }

    /// One round of the loop: waits up to `wait` for input, handles
    /// everything queued, ticks if a tick is due, handles the readies and
    /// answers clients. False once the loop should stop. [`Store::run`]
    /// loops over it; tests and benchmarks drive a store round by round.
    pub fn round(&mut self, wait: Duration) -> Result<bool> {
        fail::fail_point!("store_loop_round");
        let mut replies = Vec::new();
        let mut go_on = true;
        // Every router holds all three senders: one queue disconnected
        // means every router is gone, and the loop has nothing left to do.
        // Reports kept by a barrier wake nothing: take them in at once.
        let wait = match self.apply_pool.as_ref().is_some_and(|p| p.has_stashed()) {
            true => Duration::ZERO,
            false => wait,
        };
        let mut applied_first = None;
        let first = crossbeam_channel::select! {
            recv(self.rx.control) -> m => m.map(Some),
            recv(self.rx.raft) -> m => m.map(Some),
            recv(self.rx.requests) -> m => m.map(Some),
            recv(self.apply_results) -> r => {
                applied_first = r.ok();
                Ok(None)
            }
            default(wait) => Ok(None),
        };
        let Ok(first) = first else { return Ok(false) };
        let queued = self.rx.control.len() + self.rx.raft.len() + self.rx.requests.len();
        RAFTSTORE.msg_queue.set(i64::try_from(queued).unwrap_or(i64::MAX));
        self.take_in_applied(applied_first, &mut replies);
        let per_tick = self.cfg.messages_per_tick;
        let control: Vec<StoreMsg> = self.rx.control.try_iter().collect();
        let raft: Vec<StoreMsg> = self.rx.raft.try_iter().take(per_tick).collect();
        let requests: Vec<StoreMsg> = self.rx.requests.try_iter().take(per_tick).collect();
        for msg in first.into_iter().chain(control).chain(raft).chain(requests) {
            match msg {
                StoreMsg::Shutdown => go_on = false,
                msg => self.handle(msg, &mut replies),
            }
        }
        self.propose_write_batches(&mut replies);
        // Lease reads granted and requests refused need nothing from this
        // round's writes: answer them before its fsync.
        deliver(std::mem::take(&mut replies));
        let now = Instant::now();
        if now >= self.next_tick {
            self.tick(now, &mut replies)?;
        }
        self.handle_readies(&mut replies)?;
        self.destroy_removed_peers(&mut replies)?;
        self.publish_touched();
        deliver(replies);
        Ok(go_on)
    }

    /// Takes in what the apply workers wrote (see [`super::apply_pool`]):
    /// `first` is a report the loop woke for, newer than any kept by a
    /// barrier and older than any still queued.
    fn take_in_applied(&mut self, first: Option<ApplyResult>, replies: &mut Vec<Reply>) {
        let Some(pool) = self.apply_pool.as_mut() else { return };
        let reports = pool.drain(first);
        if reports.is_empty() {
            return;
        }
        let mut applied = Vec::new();
        for r in reports {
            // A destroyed peer waited for its reports first (`destroy_peer`).
            if let Some(p) = self.peers.get_mut(&r.region_id) {
                p.on_applied(r);
                applied.push(r.region_id);
            }
        }
        applied.sort_unstable();
        applied.dedup();
        self.after_taken_in(applied, replies);
    }

    /// Regions whose applied index moved outside a ready round: tell
    /// raft-rs, answer the reads (and proposals) that waited for it,
    /// republish their delegates.
    fn after_taken_in(&mut self, regions: Vec<RegionId>, replies: &mut Vec<Reply>) {
        if regions.is_empty() {
            return;
        }
        let now = self.now();
        for id in regions {
            if let Some(p) = self.peers.get_mut(&id) {
                p.advance_raft_apply();
                p.answer_ready_reads(now, replies);
                self.awake.insert(id);
                self.touched.push(id);
            }
        }
    }

    /// The barrier for one region (see [`Peer::wait_applied`]), outside a
    /// ready round.
    fn wait_applied(&mut self, id: RegionId, replies: &mut Vec<Reply>) {
        let Some(pool) = self.apply_pool.as_mut() else { return };
        let Some(p) = self.peers.get_mut(&id) else { return };
        if p.applying() == 0 {
            return;
        }
        p.wait_applied(pool);
        self.after_taken_in(vec![id], replies);
    }

    /// One base tick: raft time, read expiry, store pings, PD reports,
    /// split checks and log GC when their intervals passed.
    fn tick(&mut self, now: Instant, replies: &mut Vec<Reply>) -> Result<()> {
        let read_timeout = self.cfg.tick_interval * self.cfg.peer.election_tick as u32;
        self.tick_no += 1;
        // Off the ticks that ping (multiples of 5) and that stretched
        // hibernating leaders tick on (multiples of 10): one heavy tick less.
        let due = std::mem::take(&mut self.full_walk_due);
        let full = self.tick_no % FULL_WALK_TICKS == FULL_WALK_OFFSET || due;
        if full {
            self.full_walk();
        }
        let mut asleep = Vec::new();
        for id in &self.awake {
            let Some(p) = self.peers.get_mut(id) else {
                asleep.push(*id);
                continue;
            };
            p.on_base_tick(self.tick_no);
            p.expire_reads(now, read_timeout, replies);
            if p.asleep() && !has_work(p) {
                asleep.push(*id);
            }
        }
        for id in asleep {
            self.awake.remove(&id);
        }
        if self.tick_no.is_multiple_of(STORE_PING_TICKS) {
            // Two election timeouts: a store loop stalled for one (a slow
            // fsync) must not wake every sleeping region it leads.
            self.ping_stores_and_wake(now, 2 * read_timeout);
        }
        // After a stall, tick once and restart the clock: catch-up
        // ticks in a burst would shorten elections and void leases.
        self.next_tick = now + self.cfg.tick_interval;
        self.report_to_pd(now, full);
        if now >= self.next_split_check {
            self.next_split_check = now + self.cfg.split_check_interval;
            self.schedule_split_checks();
        }
        if now >= self.next_log_gc {
            self.next_log_gc = now + self.cfg.raft_log_gc_interval;
            self.compact_logs()?;
        }
        Ok(())
    }

    fn create_peer(&mut self, me: PeerMeta, region: Region) -> Result<()> {
        let id = region.id;
        let storage = PeerStorage::open(self.kv.clone(), self.raft.clone(), region)?;
        let peer = Peer::new(me, storage, self.cfg.peer.clone(), &self.logger)?;
        self.local_reader.register(id, peer.reads_delegate());
        self.peers.insert(id, peer);
        self.awake.insert(id);
        Ok(())
    }

    /// Makes every peer start an election now (a store driven by hand,
    /// whose regions have a single voter here: benchmarks).
    pub fn campaign_all(&mut self) -> Result<()> {
        for p in self.peers.values_mut() {
            p.raw.campaign().map_err(|e| Error::Other(e.to_string()))?;
        }
        Ok(())
    }

    /// Number of peers on this store that lead their region.
    pub fn leaders(&self) -> usize {
        self.peers.values().filter(|p| p.is_leader()).count()
    }

    /// Runs until a `Shutdown` message arrives or every sender is gone.
    pub fn run(mut self) {
        loop {
            let wait = self.next_tick.saturating_duration_since(Instant::now());
            match self.round(wait) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    // Losing a raft or kv write means losing promises: stop the node.
                    tracing::error!("fatal storage error in store loop: {e}");
                    std::process::exit(2);
                }
            }
        }
        let mut replies = Vec::new();
        for p in self.peers.values_mut() {
            p.fail_all(&mut replies);
        }
        deliver(replies);
        tracing::info!("store loop stopped");
    }

    /// The time now on every clock; with an untouched lease clock `real`
    /// and `lease` are the same instant.
    fn now(&self) -> Now {
        let real = Instant::now();
        Now { real, lease: self.cfg.lease_clock.at(real), wall_ms: keys::now_unix_ms() }
    }

    /// The walk over every peer, every [`FULL_WALK_TICKS`] ticks: notes the
    /// stores to ping, and puts back among the awake any peer with work
    /// (a safety net: whatever gives a peer work also wakes it).
    fn full_walk(&mut self) {
        let mut stores = HashSet::new();
        for (id, p) in self.peers.iter_mut() {
            for q in &p.region().peers {
                if q.store_id != self.store_id {
                    stores.insert(q.store_id);
                }
            }
            if p.hibernating && !p.is_leader() && p.leader().is_none() {
                p.wake();
            }
            if (!p.asleep() || has_work(p)) && self.awake.insert(*id) {
                tracing::debug!(region = %id, "a peer with work was not awake");
            }
        }
        self.peer_stores = Some(stores);
    }

    /// The local reader's view of the peers this round touched outside
    /// their ready (proposals refused, batches started).
    fn publish_touched(&mut self) {
        self.touched.sort_unstable();
        self.touched.dedup();
        for id in self.touched.drain(..) {
            if let Some(p) = self.peers.get(&id) {
                p.publish_reads();
            }
        }
    }

    /// The local reader every gRPC thread of this node checks before
    /// asking the store loop for a read.
    pub fn local_reader(&self) -> Arc<LocalReader> {
        self.local_reader.clone()
    }

    fn handle(&mut self, msg: StoreMsg, replies: &mut Vec<Reply>) {
        let now = self.now();
        match &msg {
            StoreMsg::Write { region_id, .. }
            | StoreMsg::Operator { region_id, .. }
            | StoreMsg::ProposeSplit { region_id, .. } => self.touched.push(*region_id),
            _ => {}
        }
        if let Some(id) = addressed_region(&msg) {
            self.awake.insert(id);
        }
        match msg {
            StoreMsg::Raft(m) => {
                if let Err(e) = self.on_raft_message(m, replies) {
                    // Destroying a stale peer failed to write: as fatal as any lost write.
                    tracing::error!("fatal storage error handling a raft message: {e}");
                    std::process::exit(2);
                }
            }
            StoreMsg::Read { region_id, epoch, policy, cb } => {
                if let Some(e) = self.stale_epoch(region_id, epoch) {
                    return replies.push(Reply::Read(cb, Err(e)));
                }
                match self.peers.get_mut(&region_id) {
                    Some(p) if p.raw.store().is_initialized() => match policy {
                        ReadPolicy::Linearizable => p.read(epoch, now, cb, replies),
                        ReadPolicy::UnsafeStale => p.stale_read(epoch, now, cb, replies),
                    },
                    _ => replies.push(Reply::Read(cb, Err(Error::RegionNotFound(region_id)))),
                }
            }
            StoreMsg::Write { region_id, cmd, cb } => {
                let epoch = epoch_of(cmd.header.as_ref().and_then(|h| h.region_epoch.as_ref()));
                if let Some(e) = self.stale_epoch(region_id, epoch) {
                    return replies.push(Reply::Write(cb, Err(e)));
                }
                match self.peers.get_mut(&region_id) {
                    Some(p) if p.raw.store().is_initialized() => {
                        let had_batch = p.has_write_batch();
                        p.propose_write(cmd, now, cb, replies);
                        if !had_batch && p.has_write_batch() {
                            self.batched.push(region_id);
                        }
                    }
                    _ => replies.push(Reply::Write(cb, Err(Error::RegionNotFound(region_id)))),
                }
            }
            StoreMsg::Operator { region_id, epoch, op } => {
                let Some(p) = self.peers.get_mut(&region_id) else { return };
                // Writes that arrived first go into the log first.
                p.propose_write_batch(now, replies);
                match op {
                    Operator::ChangePeers { changes } => {
                        if p.propose_conf_change(epoch, &changes) {
                            RAFTSTORE.proposed("conf_change");
                            tracing::info!(region = %region_id, ?changes, "proposed conf change");
                        }
                    }
                    Operator::TransferLeader { peer } => {
                        if p.is_leader() && peer.id != p.meta.id {
                            RAFTSTORE.proposed("transfer_leader");
                            p.transfer_leader(peer.id);
                        }
                    }
                    Operator::Split { keys } => {
                        if !p.is_leader() || epoch != p.region().epoch {
                            return;
                        }
                        let region = p.region().clone();
                        if keys.is_empty() {
                            let _ = self.split_checker.send(SplitCheckTask { region, halve: true });
                        } else {
                            let _ = self.pd.send(PdTask::AskSplit { region, split_keys: keys });
                        }
                    }
                }
            }
            StoreMsg::ProposeSplit { region_id, epoch, split } => {
                if let Some(p) = self.peers.get_mut(&region_id) {
                    p.propose_write_batch(now, replies);
                    if p.propose_split(epoch, split) {
                        RAFTSTORE.proposed("split");
                        tracing::info!(region = %region_id, "proposed split");
                    }
                }
            }
            StoreMsg::SplitCheckResult { region_id, epoch, outcome } => {
                let Some(p) = self.peers.get_mut(&region_id) else { return };
                if p.region().epoch != epoch {
                    return;
                }
                p.approximate = Some((outcome.size, outcome.keys));
                if !outcome.split_keys.is_empty() && p.is_leader() {
                    tracing::info!(region = %region_id, size = outcome.size, keys = outcome.keys, at = outcome.split_keys.len(), "region needs a split");
                    let _ = self.pd.send(PdTask::AskSplit {
                        region: p.region().clone(),
                        split_keys: outcome.split_keys,
                    });
                }
            }
            StoreMsg::SnapshotStatus { region_id, to, ok } => {
                if let Some(p) = self.peers.get_mut(&region_id) {
                    let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                    p.raw.report_snapshot(to.0, status);
                    if !ok {
                        p.raw.report_unreachable(to.0);
                    }
                }
            }
            StoreMsg::Unreachable { region_id, to } => {
                if let Some(p) = self.peers.get_mut(&region_id) {
                    p.raw.report_unreachable(to.0);
                }
            }
            StoreMsg::RegionHashes { cb } => {
                let busy: Vec<RegionId> =
                    self.peers.iter().filter(|(_, p)| p.applying() > 0).map(|(id, _)| *id).collect();
                for id in busy {
                    self.wait_applied(id, replies);
                }
                let _ = cb.send(self.region_hashes());
            }
            // With nothing reported, every leader's report is due.
            StoreMsg::HeartbeatPd => {
                // Every leader, sleeping ones too, at the next tick.
                self.last_reported.clear();
                self.full_walk_due = true;
            }
            StoreMsg::Shutdown => {}
        }
    }

    /// Proposes each batch of plain writes this round's messages built.
    fn propose_write_batches(&mut self, replies: &mut Vec<Reply>) {
        if self.batched.is_empty() {
            return;
        }
        let now = self.now();
        for id in std::mem::take(&mut self.batched) {
            if let Some(p) = self.peers.get_mut(&id) {
                p.propose_write_batch(now, replies);
            }
        }
    }

    /// The [`RegionHash`] of every initialized peer. Runs in the loop with
    /// nothing in the apply pool, so each hash matches its applied index
    /// exactly (nothing applies meanwhile); it scans all data, so it is for
    /// tests only.
    fn region_hashes(&self) -> Vec<RegionHash> {
        use std::hash::{Hash, Hasher};
        let mut out = Vec::new();
        for p in self.peers.values().filter(|p| p.raw.store().is_initialized()) {
            let region = p.region();
            let (start, end) = (keys::data_key(&region.start_key), keys::data_end_key(&region.end_key));
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            let mut count = 0u64;
            let scanned = self.kv.scan(
                Cf::Default,
                ScanRange { start: &start, end: &end, reverse: false },
                &mut |k, v| {
                    (k, v).hash(&mut hasher);
                    count += 1;
                    true
                },
            );
            if scanned.is_err() {
                continue;
            }
            out.push(RegionHash {
                region_id: region.id.0,
                applied_index: p.raw.store().applied_index(),
                version: region.epoch.version,
                conf_ver: region.epoch.conf_ver,
                hash: hasher.finish(),
                keys: count,
            });
        }
        out.sort_by_key(|h| h.region_id);
        out
    }

    /// `EpochNotMatch` if this store leads `region_id` and the request was
    /// made for another range of it (`version`). It carries the region and
    /// the local regions to its right that a split may have cut from it
    /// (ours keeps the left part), so the client fixes its cache without
    /// asking PD. A neighbour that was not split from it does no harm: the
    /// client installs only what is newer than what it has.
    fn stale_epoch(&self, region_id: RegionId, epoch: RegionEpoch) -> Option<Error> {
        let p = self.peers.get(&region_id).filter(|p| p.raw.store().is_initialized() && p.is_leader())?;
        if p.region().epoch.version == epoch.version {
            return None;
        }
        let by_start: HashMap<&[u8], &Region> = self
            .peers
            .values()
            .filter(|q| q.raw.store().is_initialized())
            .map(|q| (q.region().start_key.as_slice(), q.region()))
            .collect();
        let mut current = vec![p.region().clone()];
        while current.len() < MAX_SIBLINGS_IN_EPOCH_ERROR {
            let end = &current.last().expect("non-empty").end_key;
            match by_start.get(end.as_slice()) {
                Some(next) if !end.is_empty() => current.push((*next).clone()),
                _ => break,
            }
        }
        Some(Error::EpochNotMatch { current })
    }

    fn on_raft_message(&mut self, m: RaftMessage, replies: &mut Vec<Reply>) -> Result<()> {
        let region_id = RegionId(m.region_id);
        let (Some(from), Some(to)) = (m.from_peer.as_ref(), m.to_peer.as_ref()) else { return Ok(()) };
        let (from, to) = (PeerMeta::from(from), PeerMeta::from(to));
        if to.store_id != self.store_id {
            tracing::warn!(region = %region_id, to = %to.store_id, "raft message for another store; dropped");
            return Ok(());
        }
        self.last_heard.insert(from.store_id, Instant::now());
        if m.region_id == 0 {
            return Ok(()); // a store-level ping
        }
        if m.is_tombstone {
            // The sender's region no longer has our peer: if its epoch is
            // newer than ours, we were removed while away; destroy ourselves.
            if let Some(p) = self.peers.get_mut(&region_id) {
                let theirs = epoch_of(m.region_epoch.as_ref());
                if p.meta.id == to.id && theirs.conf_ver > p.region().epoch.conf_ver {
                    tracing::info!(region = %region_id, peer = %to.id, "told we were removed; destroying");
                    p.pending_remove = true;
                }
            }
            return Ok(());
        }
        let msg = match RaftMsg::parse_from_bytes(&m.message) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(region = %region_id, "undecodable raft message: {e}");
                return Ok(());
            }
        };
        if let Some(local) = self.peers.get(&region_id).map(|p| p.meta.id) {
            if to.id > local {
                // The region removed our peer and added a new one on this
                // store while ours was away: ours is stale and would block
                // the new one for ever. Destroy it; the new one starts
                // empty below (if this message may create it).
                tracing::info!(region = %region_id, stale = %local, new = %to.id, "message for a newer peer of the region; destroying the stale one");
                self.destroy_peer(region_id, replies)?;
            }
        }
        if !self.peers.contains_key(&region_id) {
            if self.tombstones.get(&region_id).is_some_and(|max| to.id <= *max)
                || !Peer::may_create_peer(&msg)
                || !self.claim_raft_state(region_id, to.id)?
            {
                return Ok(());
            }
            // A leader talks to a peer we do not have yet: it was just added.
            let region =
                Region { id: region_id, epoch: epoch_of(m.region_epoch.as_ref()), ..Default::default() };
            if let Err(e) = self.create_peer(to, region) {
                tracing::error!(region = %region_id, "cannot create peer: {e}");
                return Ok(());
            }
            self.tombstones.remove(&region_id);
            tracing::info!(region = %region_id, peer = %to.id, "created peer from leader message");
        }
        let peer = self.peers.get(&region_id).expect("present");
        let epoch = epoch_of(m.region_epoch.as_ref());
        if peer.raw.store().is_initialized()
            && peer.region().peer(from.id).is_none()
            && epoch.conf_ver < peer.region().epoch.conf_ver
        {
            // A removed peer still talks to us: tell it it is gone.
            let tombstone = RaftMessage {
                region_id: region_id.0,
                from_peer: Some(peer.meta.into()),
                to_peer: Some(from.into()),
                region_epoch: Some(peer.region().epoch.into()),
                is_tombstone: true,
                ..Default::default()
            };
            self.transport.send(from.store_id, vec![tombstone]);
            return Ok(());
        }
        if peer.meta.id != to.id {
            tracing::debug!(region = %region_id, local = %peer.meta.id, to = %to.id, "message for an older peer id; dropped");
            return Ok(());
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            // A snapshot may not cover data another local region owns or is
            // about to own (e.g. a new region's snapshot arriving before our
            // parent applied the split, or a stale parent's snapshot next to
            // a child's snapshot received in the same round): drop it, the
            // leader retries.
            let range = match storage::snapshot_region(msg.get_snapshot().get_data()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(region = %region_id, "undecodable snapshot: {e}");
                    return Ok(());
                }
            };
            if let Some(other) = self.region_owning_any_of(region_id, &range.start_key, &range.end_key) {
                tracing::info!(region = %region_id, %other, "snapshot overlaps a local region; dropped");
                return Ok(());
            }
            tracing::info!(region = %region_id, index = msg.get_snapshot().get_metadata().index, "received snapshot");
        }
        let peer = self.peers.get_mut(&region_id).expect("present");
        peer.remember_peer(from);
        peer.observe_hibernation(from.id, m.hibernate);
        if let Err(e) = peer.step(msg) {
            tracing::debug!(region = %region_id, "step failed: {e}");
        }
        Ok(())
    }

    /// Makes the region's raft state on disk peer `id`'s before a message
    /// creates that (empty) peer. The raft state is kept per region, and an
    /// empty peer has no region record, so the raft log store remembers
    /// whose it is (`keys::raft_peer_key`): a newer peer must not inherit an
    /// older one's log or vote (left by a crash halfway through destroying
    /// it), and an older peer must never be re-created over a newer one's
    /// vote after a restart (it could vote twice in a term). False: `id` is
    /// older than the peer the state belongs to; drop the message.
    fn claim_raft_state(&mut self, region: RegionId, id: PeerId) -> Result<bool> {
        let owner = self
            .raft
            .get(Cf::Default, &keys::raft_peer_key(region))?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(|b| PeerId(u64::from_be_bytes(b)));
        match owner {
            Some(owner) if owner > id => Ok(false),
            Some(owner) if owner == id => Ok(true),
            _ => {
                let mut wb = WriteBatch::new();
                storage::clear_raft_state(region, &mut wb);
                wb.put(Cf::Default, keys::raft_peer_key(region), id.0.to_be_bytes().to_vec());
                self.raft.write(&wb, true)?;
                Ok(true)
            }
        }
    }

    /// A local region other than `except` that owns a key of `[start, end)`:
    /// by its applied range, or by the range of a snapshot it accepted and
    /// has not applied yet (pending snapshots own their range too).
    fn region_owning_any_of(&self, except: RegionId, start: &[u8], end: &[u8]) -> Option<RegionId> {
        self.peers.values().filter(|q| q.region_id() != except).find_map(|q| {
            let applied = q.raw.store().is_initialized()
                && ranges_overlap(&q.region().start_key, &q.region().end_key, start, end);
            let pending = q.raw.raft.raft_log.unstable.snapshot.as_ref().is_some_and(|snap| {
                storage::snapshot_region(snap.get_data())
                    .is_ok_and(|r| ranges_overlap(&r.start_key, &r.end_key, start, end))
            });
            (applied || pending).then(|| q.region_id())
        })
    }

    fn handle_readies(&mut self, replies: &mut Vec<Reply>) -> Result<()> {
        // Lent to the round's context; back before anything else can use it
        // (inside the round, `Store::wait_applied` and `take_in_applied`
        // would find no pool: barriers there go through `RoundCx::pool`).
        let mut pool = self.apply_pool.take();
        let handled = self.ready_round(pool.as_mut(), replies);
        self.apply_pool = pool;
        if handled? {
            self.create_split_peers()?;
            self.flush_outbox();
        }
        Ok(())
    }

    /// The ready round of every awake peer; false if none had a ready.
    fn ready_round(&mut self, pool: Option<&mut ApplyPool>, replies: &mut Vec<Reply>) -> Result<bool> {
        let started = Instant::now();
        let mut round = Round::new();
        let mut cx = RoundCx { kv: &self.kv, metrics: &self.metrics, replies, now: None, pool };
        // A leader's appends leave before its own fsync (raft-rs puts only
        // messages that need no local persistence in `Ready::messages`), so
        // followers persist the entries while the leader does.
        let mut early = HashMap::new();
        for id in &self.awake {
            let Some(p) = self.peers.get_mut(id) else { continue };
            round.collect(*id, p, &mut cx)?;
            take_outbox(p, &mut early);
        }
        self.send_batches(early);
        let persisting = Instant::now();
        let (readies, synced) = round.persist(self.kv.as_ref(), self.raft.as_ref())?;
        if readies.is_empty() {
            return Ok(false);
        }
        if synced {
            self.metrics.raft_fsyncs.inc();
            RAFTSTORE.append_log.observe(persisting.elapsed().as_secs_f64());
        }
        self.metrics.ready_rounds.inc();
        // Taken once, before any of the reads below is started: a ReadIndex
        // round stamped a little early only shortens the lease it confirms.
        cx.now = Some(self.now());
        let advanced: Vec<RegionId> = readies.iter().map(|(id, _)| *id).collect();
        for (id, ready) in readies {
            let p = self.peers.get_mut(&id).expect("peer with ready exists");
            round.advance(p, ready, &mut cx)?;
        }
        round.finish(self.kv.as_ref(), self.raft.as_ref())?;
        // Only now is everything the round applied in the kv engine, where
        // local reads look: a lease or stamp published earlier could let a
        // read miss a write it must see.
        for id in advanced {
            self.peers[&id].publish_reads();
        }
        RAFTSTORE.process_ready.observe(started.elapsed().as_secs_f64());
        Ok(true)
    }

    /// Pings every store we share a region with, and wakes hibernating
    /// followers whose leader's store has been silent for `silence`: a
    /// hibernating follower does not tick, so it never times out alone.
    fn ping_stores_and_wake(&mut self, now: Instant, silence: Duration) {
        if self.peer_stores.is_none() {
            self.full_walk();
        }
        let stores = self.peer_stores.as_ref().expect("walked");
        let (last_heard, started) = (&self.last_heard, self.started);
        let silent: HashSet<StoreId> = stores
            .iter()
            .filter(|s| now.duration_since(last_heard.get(s).copied().unwrap_or(started)) > silence)
            .copied()
            .collect();
        // A follower falls asleep only on a message from its leader's store,
        // so one whose leader's store was already silent last time is awake.
        let newly_silent = silent.iter().any(|s| !self.silent_stores.contains(s));
        if newly_silent {
            for (id, p) in self.peers.iter_mut() {
                let leader_silent = p.leader().is_none_or(|l| silent.contains(&l.store_id));
                if p.hibernating && !p.is_leader() && leader_silent {
                    p.wake_and_poke_leader();
                    self.awake.insert(*id);
                }
            }
        }
        self.silent_stores = silent;
        let me = PeerMeta { id: PeerId(0), store_id: self.store_id, role: Default::default() };
        for s in self.peer_stores.iter().flatten().copied() {
            let to = PeerMeta { id: PeerId(0), store_id: s, role: Default::default() };
            let ping =
                RaftMessage { from_peer: Some(me.into()), to_peer: Some(to.into()), ..Default::default() };
            self.transport.send(s, vec![ping]);
        }
    }

    /// Creates the peers of regions born from splits applied this round.
    /// A new region may already have an uninitialized peer here (its leader,
    /// on a faster store, talked to us first): it is replaced, keeping its
    /// raft hard state (it may have voted).
    fn create_split_peers(&mut self) -> Result<()> {
        let mut splits = Vec::new();
        for id in &self.awake {
            let Some(p) = self.peers.get_mut(id) else { continue };
            let leader = p.is_leader();
            for s in p.applied_splits.drain(..) {
                splits.push((*id, leader, s));
            }
        }
        if !splits.is_empty() {
            fail::fail_point!("split_after_apply");
        }
        for (parent, was_leader, (derived, new_regions)) in splits {
            self.metrics.splits_applied.inc();
            let mut raft_wb = WriteBatch::new();
            let mut to_create = Vec::new();
            for r in new_regions {
                match self.peers.get(&r.id) {
                    Some(existing) if existing.raw.store().is_initialized() => {
                        tracing::warn!(region = %r.id, "split target already initialized here; keeping it");
                        continue;
                    }
                    Some(_) => {
                        self.peers.remove(&r.id);
                    }
                    // A raft state on disk without a live peer: this split is
                    // being replayed, or a message created the peer before a
                    // restart. It may hold a vote: never rewrite it.
                    None if self.raft.get(Cf::Default, &keys::raft_state_key(r.id))?.is_some() => {}
                    None => storage::write_initial_hard_state(r.id, &mut raft_wb),
                }
                to_create.push(r);
            }
            self.raft.write(&raft_wb, true)?;
            let mut all = vec![derived];
            for r in to_create {
                let Some(me) = r.peer_on_store(self.store_id).copied() else { continue };
                self.create_peer(me, r.clone())?;
                let peer = self.peers.get_mut(&r.id).expect("just created");
                if was_leader {
                    // Elect at once where the parent led, rather than after an election timeout.
                    let _ = peer.raw.campaign();
                }
                all.push(r);
            }
            if was_leader {
                let _ = self.pd.send(PdTask::ReportSplit { regions: all });
            }
            tracing::info!(region = %parent, "split peers created");
        }
        Ok(())
    }

    /// Sends leaders that grew enough since their last check to the split checker.
    fn schedule_split_checks(&mut self) {
        let threshold = self.cfg.split.split_size / 16;
        for p in self.peers.values_mut() {
            if !p.is_leader() || !p.raw.store().is_initialized() {
                continue;
            }
            if p.approximate.is_none() || p.size_diff_hint >= threshold {
                p.size_diff_hint = 0;
                let _ = self.split_checker.send(SplitCheckTask { region: p.region().clone(), halve: false });
            }
        }
    }

    /// Drops applied raft log entries no peer should need any more.
    /// Moves the truncation point of every log that has enough applied
    /// entries (keeping what followers of a leader still need, unless the
    /// log grew too long), writes the new points (unsynced) and hands the
    /// compacted entries to the log GC worker.
    fn compact_logs(&mut self) -> Result<()> {
        let mut kv_wb = WriteBatch::new();
        let mut task = LogGcTask::default();
        let mut taken_in = Vec::new();
        for p in self.peers.values_mut() {
            let store = p.raw.store();
            if !store.is_initialized() {
                continue;
            }
            let applied = store.applied_index();
            let first = store.apply_state.truncated_index + 1;
            let mut target = applied;
            if p.is_leader() && applied.saturating_sub(first) < self.cfg.raft_log_gc_count_limit {
                for (id, pr) in p.raw.raft.prs().iter() {
                    if *id != p.meta.id.0 {
                        target = target.min(pr.matched);
                    }
                }
            }
            if target >= first && target - first + 1 >= self.cfg.raft_log_gc_threshold {
                // The new truncation point goes into the apply state, which
                // an apply worker would otherwise overwrite with the old one.
                if let Some(pool) = self.apply_pool.as_mut().filter(|_| p.applying() > 0) {
                    p.wait_applied(pool);
                    taken_in.push(p.region_id());
                }
                if let Some(range) = p.raw.mut_store().compact_to(target, &mut kv_wb)? {
                    task.ranges.push(range);
                    self.metrics.raft_log_gcs.inc();
                }
            }
        }
        if !task.ranges.is_empty() {
            self.kv.write(&kv_wb, false)?;
            self.log_gc.schedule(task);
        }
        let mut replies = Vec::new();
        self.after_taken_in(taken_in, &mut replies);
        deliver(replies);
        Ok(())
    }

    fn destroy_removed_peers(&mut self, replies: &mut Vec<Reply>) -> Result<()> {
        // A peer to remove has work, so it stays awake (`has_work`).
        let doomed: Vec<RegionId> = self
            .awake
            .iter()
            .filter(|id| self.peers.get(id).is_some_and(|p| p.pending_remove))
            .copied()
            .collect();
        for id in doomed {
            self.destroy_peer(id, replies)?;
        }
        Ok(())
    }

    /// Destroys this store's peer of `id` (data, meta, log), leaving a
    /// tombstone so messages to it or older peers cannot recreate it.
    fn destroy_peer(&mut self, id: RegionId, replies: &mut Vec<Reply>) -> Result<()> {
        // Nothing of it may be written after its data is gone.
        self.wait_applied(id, replies);
        let Some(mut p) = self.peers.remove(&id) else { return Ok(()) };
        // No local read may start on data about to be deleted.
        self.local_reader.unregister(id);
        let (mut kv_wb, mut raft_wb) = (WriteBatch::new(), WriteBatch::new());
        p.fail_all(replies);
        let max = p.region().peers.iter().map(|q| q.id).max().unwrap_or(p.meta.id).max(p.meta.id);
        p.raw.mut_store().destroy(p.meta, &mut kv_wb, &mut raft_wb);
        self.kv.write(&kv_wb, true)?;
        self.raft.write(&raft_wb, true)?;
        self.tombstones.insert(id, max);
        tracing::info!(region = %id, peer = %p.meta.id, "peer destroyed");
        Ok(())
    }

    fn flush_outbox(&mut self) {
        let mut by_store = HashMap::new();
        for id in &self.awake {
            if let Some(p) = self.peers.get_mut(id) {
                take_outbox(p, &mut by_store);
            }
        }
        self.send_batches(by_store);
    }

    fn send_batches(&self, by_store: HashMap<StoreId, Vec<RaftMessage>>) {
        for (store, msgs) in by_store {
            self.metrics.raft_messages_sent.add(msgs.len() as u64);
            self.transport.send(store, msgs);
        }
    }

    /// Reports leaders' regions to PD when due: the awake ones every tick
    /// (a new leader, pending or down peers are news), all of them on a
    /// `full` tick (a sleeping leader's peers can go down too, and every
    /// leader reports every `pd-heartbeat-tick-interval`).
    fn report_to_pd(&mut self, now: Instant, full: bool) {
        let mut leaders = 0;
        let ids: Vec<RegionId> = match full {
            true => self.peers.keys().copied().collect(),
            false => self.awake.iter().copied().collect(),
        };
        for id in &ids {
            let Some(p) = self.peers.get_mut(id) else { continue };
            if !p.is_leader() || !p.raw.store().is_initialized() {
                continue;
            }
            leaders += 1;
            let pending_peers = p.pending_peers();
            let pending: Vec<PeerId> = pending_peers.iter().map(|q| q.id).collect();
            // Down: nothing heard from the peer's store for
            // max-peer-down-duration (store pings keep this fresh even while
            // the region hibernates).
            let (last_heard, started) = (&self.last_heard, self.started);
            let down_peers = p.down_peers(now, self.cfg.max_peer_down_duration, |store| {
                last_heard.get(&store).copied().unwrap_or(started)
            });
            let down: Vec<PeerId> = down_peers.iter().map(|(q, _)| q.id).collect();
            let due = match self.last_reported.get(id) {
                None => true,
                Some((at, last_pending, last_down)) => {
                    p.heartbeat_due
                        || *last_pending != pending
                        || *last_down != down
                        || now.duration_since(*at) >= self.cfg.pd_heartbeat_interval
                }
            };
            if !due {
                continue;
            }
            p.heartbeat_due = false;
            self.last_reported.insert(*id, (now, pending, down));
            let (approximate_size, approximate_keys) = p.approximate.unwrap_or_default();
            let _ = self.pd.send(PdTask::RegionHeartbeat(RegionReport {
                region: p.region().clone(),
                leader: p.meta,
                pending_peers,
                down_peers,
                term: p.raw.raft.term,
                approximate_size,
                approximate_keys,
            }));
        }
        if !full {
            return;
        }
        self.last_reported.retain(|id, _| self.peers.contains_key(id));
        // Regions whose data this store holds: a peer still waiting for its
        // first snapshot holds none (and may be left over from a learner
        // removed before it caught up); PD tombstones a drained store only
        // once this reaches zero.
        let initialized = self.peers.values().filter(|p| p.raw.store().is_initialized()).count();
        self.metrics.region_count.set(initialized as u64);
        self.metrics.leader_count.set(leaders);
    }
}

/// Most regions an `EpochNotMatch` carries (the region and its right neighbours).
const MAX_SIBLINGS_IN_EPOCH_ERROR: usize = 16;

/// Stores ping each other every this many base ticks (500 ms by default).
const STORE_PING_TICKS: u64 = 5;

/// The store loop walks every peer, asleep or not, every this many base
/// ticks (1 s by default): PD reports of sleeping leaders, the stores to
/// ping, region and leader counts.
const FULL_WALK_TICKS: u64 = 10;
/// Which tick of each [`FULL_WALK_TICKS`] the walk happens on.
const FULL_WALK_OFFSET: u64 = 7;

/// True if the store must keep visiting `p` whether or not it ticks:
/// messages to send, a ready to handle, a removal to carry out.
fn has_work(p: &mut Peer) -> bool {
    !p.outbox.is_empty() || p.pending_remove || p.applying() > 0 || p.raw.has_ready()
}

/// The region a store message is about, if any (store pings have none).
fn addressed_region(msg: &StoreMsg) -> Option<RegionId> {
    let id = match msg {
        StoreMsg::Raft(m) => RegionId(m.region_id),
        StoreMsg::Read { region_id, .. }
        | StoreMsg::Write { region_id, .. }
        | StoreMsg::Operator { region_id, .. }
        | StoreMsg::ProposeSplit { region_id, .. }
        | StoreMsg::SplitCheckResult { region_id, .. }
        | StoreMsg::SnapshotStatus { region_id, .. }
        | StoreMsg::Unreachable { region_id, .. } => *region_id,
        StoreMsg::HeartbeatPd | StoreMsg::RegionHashes { .. } | StoreMsg::Shutdown => return None,
    };
    (id.0 != 0).then_some(id)
}

/// Moves `p`'s outgoing messages, encoded for the wire, into per-store batches.
fn take_outbox(p: &mut Peer, by_store: &mut HashMap<StoreId, Vec<RaftMessage>>) {
    if p.outbox.is_empty() {
        return;
    }
    let region = p.region().clone();
    let from = p.meta;
    // A leader's flag asks its followers to hibernate; a follower's agrees.
    let hibernate = p.hibernating;
    for (to, msg) in p.outbox.drain(..) {
        let wire = RaftMessage {
            region_id: region.id.0,
            from_peer: Some(from.into()),
            to_peer: Some(to.into()),
            message: msg.write_to_bytes().expect("encode raft message"),
            region_epoch: Some(region.epoch.into()),
            is_tombstone: false,
            start_key: region.start_key.clone(),
            end_key: region.end_key.clone(),
            hibernate,
        };
        by_store.entry(to.store_id).or_default().push(wire);
    }
}

/// True if `[s1, e1)` and `[s2, e2)` share a key (empty end = +infinity).
fn ranges_overlap(s1: &[u8], e1: &[u8], s2: &[u8], e2: &[u8]) -> bool {
    (e2.is_empty() || s1 < e2) && (e1.is_empty() || s2 < e1)
}

/// Answers clients (after the round's writes are durable).
pub(super) fn deliver(replies: Vec<Reply>) {
    for r in replies {
        match r {
            Reply::Write(cb, res) => {
                let _ = cb.send(res);
            }
            Reply::Read(cb, res) => {
                let _ = cb.send(res);
            }
        }
    }
}

/// Parses PD's conf change kind.
pub fn conf_change_kind(v: i32) -> Option<ConfChangeType> {
    match v {
        0 => Some(ConfChangeType::AddNode),
        1 => Some(ConfChangeType::RemoveNode),
        2 => Some(ConfChangeType::AddLearnerNode),
        _ => None,
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;

/// What the store loop hands its peers during a ready round.
pub(super) struct RoundCx<'a> {
    pub(super) kv: &'a EngineRef,
    pub(super) metrics: &'a Metrics,
    pub(super) replies: &'a mut Vec<Reply>,
    /// Set once the round's raft batch is durable, before any peer advances.
    pub(super) now: Option<Now>,
    /// The apply pool, if the store has one.
    pub(super) pool: Option<&'a mut ApplyPool>,
}

impl Group<RoundCx<'_>> for Peer {
    type Storage = PeerStorage;
    type Error = Error;

    fn raw_node(&mut self) -> &mut raft::RawNode<PeerStorage> {
        &mut self.raw
    }

    fn on_soft_state(&mut self, ss: &raft::SoftState, cx: &mut RoundCx<'_>) {
        tracing::info!(region = %self.region_id(), role = ?ss.raft_state, leader = ss.leader_id, term = self.raw.raft.term, "raft state changed");
        if ss.raft_state == raft::StateRole::Leader {
            cx.metrics.leader_changes.inc();
        }
        self.on_soft_state_change(cx.replies);
    }

    fn send(&mut self, msgs: Vec<RaftMsg>, _cx: &mut RoundCx<'_>) {
        self.queue_messages(msgs);
    }

    fn apply_snapshot(&mut self, snap: &raft::eraftpb::Snapshot, cx: &mut RoundCx<'_>) -> Result<()> {
        // The snapshot replaces data and apply state: no worker may write after it.
        if let Some(pool) = cx.pool.as_deref_mut() {
            self.wait_applied(pool);
        }
        // Durable when it returns (its own synced writes).
        let started = Instant::now();
        let applied = self.raw.mut_store().apply_snapshot(snap);
        RAFTSTORE.snapshot_done("apply", applied.is_ok());
        applied?;
        RAFTSTORE.snapshot_duration.with_label_values(&["apply"]).observe(started.elapsed().as_secs_f64());
        cx.metrics.snapshots_applied.inc();
        for peer in self.region().peers.clone() {
            self.remember_peer(peer);
        }
        self.heartbeat_due = true;
        tracing::info!(region = %self.region_id(), index = snap.get_metadata().index, "applied snapshot");
        Ok(())
    }

    fn on_read_states(&mut self, states: &[raft::ReadState], _cx: &mut RoundCx<'_>) {
        for rs in states {
            self.on_read_state(&rs.request_ctx, rs.index);
        }
    }

    fn apply(
        &mut self,
        entries: Vec<raft::eraftpb::Entry>,
        kv_wb: &mut WriteBatch,
        cx: &mut RoundCx<'_>,
    ) -> Result<bool> {
        match cx.pool.as_deref_mut() {
            Some(pool) => self.apply_entries_pooled(entries, pool, cx.kv, kv_wb, cx.replies)?,
            None => self.apply_entries(entries, cx.kv, kv_wb, cx.replies)?,
        }
        cx.metrics.conf_changes_applied.add(std::mem::take(&mut self.conf_changes_applied));
        Ok(std::mem::take(&mut self.region_state_changed))
    }

    fn stage_entries(&mut self, entries: &[raft::eraftpb::Entry], raft_wb: &mut WriteBatch) {
        self.raw.mut_store().append(entries, raft_wb);
    }

    fn stage_hard_state(&mut self, hs: &raft::eraftpb::HardState, raft_wb: &mut WriteBatch) {
        self.raw.mut_store().set_hard_state(hs, raft_wb);
    }

    fn keep_commit(&mut self, commit: u64) {
        self.raw.mut_store().hard_state.commit = commit;
    }

    fn hard_state(&self) -> raft::eraftpb::HardState {
        self.raw.store().hard_state.clone()
    }

    fn advance_apply(&mut self) {
        self.advance_raft_apply();
    }

    fn round_done(&mut self, cx: &mut RoundCx<'_>) {
        let now = cx.now.expect("set before peers advance");
        self.answer_ready_reads(now, cx.replies);
        self.end_round();
    }
}
