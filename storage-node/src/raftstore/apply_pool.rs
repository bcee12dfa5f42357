//! The apply pool: plain writes applied off the store loop.
//!
//! With `raftstore.apply-pool-size = N > 0` the store loop hands a region's
//! committed entries to one of N apply workers when every one of them is a
//! plain write (puts, deletes, range deletes) or an empty entry, instead of
//! applying them itself. A worker writes the entries' data **and** the
//! region's apply state (applied index) in one kv batch, answers the
//! clients whose proposals came with the entries, and reports back; the
//! store loop takes the report in ([`super::peer::Peer::on_applied`]): its
//! applied index and applied term move only then. (The region's read
//! delegate learns the writes' stamp from the worker, before any client
//! hears: no read after an answer is judged below the write it answers.)
//!
//! Invariants (each one is what keeps replicas from diverging):
//! - **log order per region**: a region always goes to the same worker
//!   (`region id mod N`) and a worker applies its queue in order;
//! - **one writer of a region's apply state at a time**: whatever else the
//!   store loop writes for a region — a CAS, split or membership change
//!   applied inline, a log GC truncation, a received snapshot, a destroy —
//!   it writes only once the region has nothing in flight
//!   ([`ApplyPool::wait_for`], the barrier), and a region that applied
//!   anything inline in a round hands nothing over for the rest of that
//!   round (the round's kv batch, holding the inline apply state, is
//!   written at the end of the round);
//! - **reads**: a write handed over still counts as pending for the read
//!   stamps until it is taken in (reads are judged at or below its stamp),
//!   and read-index waiters wait for the taken-in applied index; a
//!   snapshot is built from one engine view, naming the applied index,
//!   range and membership found in that view;
//! - apply reads no clock, randomness or local config, on the worker as
//!   inline (the same `apply::apply_write`).
//!
//! Crash point `apply_pool_after_write`: after a worker's kv write, before
//! its clients and the store hear of it (a restart finds the higher applied
//! index on disk and applies from there).

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use mnemo_proto::raft_serverpb::{RaftApplyState, RaftCommand};
use mnemo_proto::types::{Region, RegionId};
use prost::Message as _;

use super::apply::{self, WriteOutcome};
use super::local_reader::ReadDelegate;
use super::peer::{Reply, WriteCallback};
use super::store::deliver;
use crate::engine::{Cf, EngineRef, WriteBatch};
use crate::error::Result;
use crate::keys;
use crate::metrics::RAFTSTORE;

/// Most tasks a worker applies in one kv write.
const MAX_TASKS_PER_WRITE: usize = 256;

/// One committed entry handed to a worker.
pub struct TaskEntry {
    pub index: u64,
    /// The write (None: an empty entry, e.g. a new leader's first).
    pub cmd: Option<RaftCommand>,
    /// Clients whose proposal is this entry.
    pub cbs: Vec<WriteCallback>,
}

/// A run of a region's committed entries, all plain writes or empty.
pub struct ApplyTask {
    /// The region as of these entries (plain writes never change it).
    pub region: Region,
    /// The apply state to write with the data: the store's, with
    /// `applied_index` at the last entry.
    pub apply_state: RaftApplyState,
    /// Term of the last entry.
    pub applied_term: u64,
    /// Largest time stamp of the entries' commands (0 if none).
    pub stamp_ms: u64,
    pub entries: Vec<TaskEntry>,
    /// The region's read delegate: raised to `stamp_ms` before any client
    /// hears, so no read after an answer is judged below the write.
    pub delegate: Arc<ReadDelegate>,
}

/// A worker's report of one task, written to the kv engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyResult {
    pub region_id: RegionId,
    pub applied_index: u64,
    pub applied_term: u64,
    pub stamp_ms: u64,
}

/// The store loop's handle on the workers.
pub struct ApplyPool {
    senders: Vec<Sender<ApplyTask>>,
    results: Receiver<ApplyResult>,
    /// Results received while waiting for another region (a barrier),
    /// in arrival order: taken in before anything newer.
    stash: Vec<ApplyResult>,
    workers: Vec<JoinHandle<()>>,
}

impl ApplyPool {
    /// Starts `size` workers (at least one) writing to `kv`.
    pub fn spawn(size: usize, kv: EngineRef) -> ApplyPool {
        let (result_tx, results) = crossbeam_channel::unbounded();
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for i in 0..size.max(1) {
            let (tx, rx) = crossbeam_channel::unbounded::<ApplyTask>();
            let (kv, result_tx) = (kv.clone(), result_tx.clone());
            let handle = std::thread::Builder::new()
                .name(format!("apply-{i}"))
                .spawn(move || {
                    // The store loop may be waiting for this worker (a
                    // barrier): a panic must end the process, not hang it
                    // (the node's panic hook does so before unwinding; this
                    // covers processes without it, such as tests).
                    let run = std::panic::AssertUnwindSafe(|| worker(rx, kv, result_tx));
                    if std::panic::catch_unwind(run).is_err() {
                        tracing::error!("apply worker panicked");
                        std::process::exit(2);
                    }
                })
                .expect("spawn apply worker");
            senders.push(tx);
            workers.push(handle);
        }
        ApplyPool { senders, results, stash: Vec::new(), workers }
    }

    /// Hands `task` to its region's worker.
    pub fn send(&self, task: ApplyTask) {
        let i = (task.region.id.0 % self.senders.len() as u64) as usize;
        // A worker only stops when the pool is dropped, or the process
        // exits on a storage error: a failed send cannot happen here.
        self.senders[i].send(task).expect("apply worker alive");
    }

    /// The channel reports arrive on (for the store loop to wait on).
    pub fn results(&self) -> &Receiver<ApplyResult> {
        &self.results
    }

    /// True if reports received during a barrier wait to be taken in.
    pub fn has_stashed(&self) -> bool {
        !self.stash.is_empty()
    }

    /// Every report received so far, oldest first, without waiting:
    /// those a barrier kept, then `first` (one the caller received from
    /// [`ApplyPool::results`] itself), then those still queued.
    pub fn drain(&mut self, first: Option<ApplyResult>) -> Vec<ApplyResult> {
        let mut out = std::mem::take(&mut self.stash);
        out.extend(first);
        out.extend(self.results.try_iter());
        out
    }

    /// The barrier: waits until `count` more reports of `region` arrived
    /// and returns them (oldest first); reports of other regions received
    /// meanwhile are kept for [`ApplyPool::drain`]. Workers never wait on
    /// the store loop, so this always ends.
    pub fn wait_for(&mut self, region: RegionId, count: usize) -> Vec<ApplyResult> {
        let mut mine = Vec::with_capacity(count);
        let mut kept = Vec::with_capacity(self.stash.len());
        for r in std::mem::take(&mut self.stash) {
            if r.region_id == region && mine.len() < count {
                mine.push(r);
            } else {
                kept.push(r);
            }
        }
        self.stash = kept;
        while mine.len() < count {
            let r = self.results.recv().expect("apply workers alive while the store holds the pool");
            if r.region_id == region {
                mine.push(r);
            } else {
                self.stash.push(r);
            }
        }
        mine
    }
}

impl Drop for ApplyPool {
    fn drop(&mut self) {
        self.senders.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A worker: applies whatever is queued in one kv write, then answers and
/// reports. A storage error ends the process, as in the store loop.
fn worker(rx: Receiver<ApplyTask>, kv: EngineRef, results: Sender<ApplyResult>) {
    while let Ok(first) = rx.recv() {
        let mut tasks = vec![first];
        tasks.extend(rx.try_iter().take(MAX_TASKS_PER_WRITE - 1));
        let started = std::time::Instant::now();
        match apply_tasks(&kv, tasks) {
            Ok((replies, reports)) => {
                RAFTSTORE.apply_log.observe(started.elapsed().as_secs_f64());
                fail::fail_point!("apply_pool_after_write");
                deliver(replies);
                for r in reports {
                    // The store loop gone means the node is stopping.
                    let _ = results.send(r);
                }
            }
            Err(e) => {
                tracing::error!("fatal storage error in apply worker: {e}");
                std::process::exit(2);
            }
        }
    }
}

/// Applies `tasks` into one kv batch with each region's apply state and
/// writes it (unsynced: the raft log holds the entries durably). Returns
/// the clients' answers and the reports, in task order.
fn apply_tasks(kv: &EngineRef, tasks: Vec<ApplyTask>) -> Result<(Vec<Reply>, Vec<ApplyResult>)> {
    let mut wb = WriteBatch::new();
    let mut replies = Vec::new();
    let mut reports = Vec::with_capacity(tasks.len());
    // A region's later task in the same write carries the later apply state.
    let mut states: HashMap<RegionId, Vec<u8>> = HashMap::new();
    let mut delegates = Vec::with_capacity(tasks.len());
    for task in tasks {
        for e in task.entries {
            let outcome = match &e.cmd {
                None => Ok(WriteOutcome::Done),
                Some(cmd) => match apply::apply_write(kv.as_ref(), &task.region, cmd, &mut wb) {
                    Err(err) if !err.is_deterministic() => return Err(err),
                    other => other,
                },
            };
            replies.extend(e.cbs.into_iter().map(|cb| Reply::Write(cb, outcome.clone())));
        }
        states.insert(task.region.id, task.apply_state.encode_to_vec());
        delegates.push((task.delegate, task.stamp_ms));
        reports.push(ApplyResult {
            region_id: task.region.id,
            applied_index: task.apply_state.applied_index,
            applied_term: task.applied_term,
            stamp_ms: task.stamp_ms,
        });
    }
    for (region, state) in states {
        wb.put(Cf::Meta, keys::apply_state_key(region), state);
    }
    kv.write(&wb, false)?;
    for (delegate, stamp_ms) in delegates {
        delegate.note_applied(stamp_ms);
    }
    Ok((replies, reports))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mnemo_proto::raft_serverpb::{Mutation, MutationOp, RaftRequestHeader};
    use mnemo_proto::types::RegionEpoch;

    use super::*;
    use crate::engine::{Engine, MemEngine};

    fn region(id: u64) -> Region {
        Region { id: RegionId(id), epoch: RegionEpoch { conf_ver: 1, version: 1 }, ..Default::default() }
    }

    fn put(key: &[u8], value: &[u8], version: u64) -> RaftCommand {
        RaftCommand {
            header: Some(RaftRequestHeader {
                region_epoch: Some(mnemo_proto::metapb::RegionEpoch { conf_ver: 1, version }),
                ..Default::default()
            }),
            mutations: vec![Mutation {
                op: MutationOp::Put as i32,
                key: key.to_vec(),
                value: value.to_vec(),
                expire_at_ms: 0,
            }],
            proposed_at_ms: 7,
            ..Default::default()
        }
    }

    fn task(
        region_id: u64,
        index: u64,
        cmd: RaftCommand,
        cb: tokio::sync::oneshot::Sender<crate::error::Result<WriteOutcome>>,
    ) -> ApplyTask {
        ApplyTask {
            region: region(region_id),
            apply_state: RaftApplyState { applied_index: index, truncated_index: 5, truncated_term: 5 },
            applied_term: 6,
            stamp_ms: cmd.proposed_at_ms,
            entries: vec![TaskEntry { index, cmd: Some(cmd), cbs: vec![cb.into()] }],
            delegate: ReadDelegate::new(region(region_id)),
        }
    }

    fn stored_apply_state(kv: &MemEngine, region: u64) -> RaftApplyState {
        let raw = kv.get(Cf::Meta, &keys::apply_state_key(RegionId(region))).unwrap().unwrap();
        RaftApplyState::decode(raw.as_slice()).unwrap()
    }

    #[test]
    fn a_worker_writes_data_with_the_applied_index_then_answers_and_reports() {
        let kv = Arc::new(MemEngine::new());
        let mut pool = ApplyPool::spawn(2, kv.clone());
        let (tx1, rx1) = tokio::sync::oneshot::channel();
        let (tx2, rx2) = tokio::sync::oneshot::channel();
        let first = task(1, 10, put(b"a", b"1", 1), tx1);
        let delegate = first.delegate.clone();
        pool.send(first);
        // A command of a stale epoch is refused at apply: its client hears
        // why, and the applied index still moves past the entry.
        pool.send(task(1, 11, put(b"b", b"2", 0), tx2));
        let reports = pool.wait_for(RegionId(1), 2);
        assert_eq!(reports.iter().map(|r| r.applied_index).collect::<Vec<_>>(), vec![10, 11]);
        assert_eq!(
            reports[1],
            ApplyResult { region_id: RegionId(1), applied_index: 11, applied_term: 6, stamp_ms: 7 }
        );
        assert!(matches!(rx1.blocking_recv().unwrap(), Ok(WriteOutcome::Done)));
        // Before the client heard, reads were raised to the write's stamp.
        assert_eq!(delegate.applied_stamp_ms(), 7);
        assert!(matches!(rx2.blocking_recv().unwrap(), Err(crate::error::Error::EpochNotMatch { .. })));
        assert_eq!(apply::read_live(kv.as_ref(), b"a", 0).unwrap(), Some(b"1".to_vec()));
        assert_eq!(apply::read_live(kv.as_ref(), b"b", 0).unwrap(), None);
        assert_eq!(
            stored_apply_state(&kv, 1),
            RaftApplyState { applied_index: 11, truncated_index: 5, truncated_term: 5 }
        );
    }

    #[test]
    fn a_barrier_keeps_other_regions_reports_for_later_in_order() {
        let kv = Arc::new(MemEngine::new());
        // One worker: region 2's tasks queue ahead of region 1's.
        let mut pool = ApplyPool::spawn(1, kv.clone());
        let mut answers = Vec::new();
        for (region, index) in [(2, 20), (2, 21), (1, 10)] {
            let (tx, rx) = tokio::sync::oneshot::channel();
            answers.push(rx);
            pool.send(task(region, index, put(format!("k{index}").as_bytes(), b"v", 1), tx));
        }
        let mine = pool.wait_for(RegionId(1), 1);
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].applied_index, 10);
        assert!(pool.has_stashed());
        let rest: Vec<u64> = pool.drain(None).iter().map(|r| r.applied_index).collect();
        assert_eq!(rest, vec![20, 21]);
        assert!(!pool.has_stashed());
        for rx in answers {
            assert!(matches!(rx.blocking_recv().unwrap(), Ok(WriteOutcome::Done)));
        }
        assert_eq!(stored_apply_state(&kv, 2).applied_index, 21);
    }
}
