//! The raft log GC worker: deletes compacted log entries off the store loop.
//!
//! Compacting a peer's log moves its truncation point (`RaftApplyState`, in
//! the kv engine) and deletes the entries up to it (raft engine). The
//! entries may only go once the new truncation point, and the data applied
//! up to it, are durable in the kv engine. The store loop writes the kv
//! engine unsynced, so that takes a sync of the kv WAL: under load, the
//! whole WAL written since the last sync, tens of milliseconds. Done on the
//! store loop, it stalled every region of the node at each GC tick (put p99
//! at half load 10× etcd's; `docs/performance.md`).
//!
//! So the store loop only moves the truncation point (in memory, and into
//! its kv write, unsynced) and sends the key ranges of the compacted
//! entries here. The worker syncs the kv engine, then deletes the ranges
//! from the raft engine (unsynced: a deletion lost in a crash leaves
//! entries below the truncation point, which nothing reads, and the next
//! deletion of the region removes them too, as every range starts at
//! index 0).
//!
//! Between tasks the worker syncs the kv WAL every
//! [`KV_WAL_SYNC_INTERVAL`], so a task's sync has little left to write:
//! one fsync of ten seconds of kv WAL held up the raft log's fsyncs.
//!
//! A crash before the sync may bring the kv engine back with the old
//! truncation point: the entries after it are all still there. A crash
//! after it finds the new one, with or without the entries below it. The
//! crash point `raft_log_gc_after_kv_sync` sits between the two steps.

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::engine::{Cf, Engine, EngineRef, WriteBatch};
use crate::error::Result;

/// How often the worker syncs the kv WAL while no task comes. The store
/// loop writes the kv engine unsynced; a task's sync then had to write
/// everything since the last one (tens of MB every GC tick under load),
/// and that one large fsync delayed the raft log's fsyncs on the same disk:
/// put p99 at ~11 k puts/s was 32–36 ms, 8–17 ms with the GC off
/// (`docs/performance.md`).
pub const KV_WAL_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// The compacted entries of some peers: one engine key range per peer.
#[derive(Debug, Default)]
pub struct LogGcTask {
    pub ranges: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Syncs `kv` (where the truncation points were written), then deletes
/// the task's ranges from `raft`.
pub fn run(kv: &dyn Engine, raft: &dyn Engine, task: LogGcTask) -> Result<()> {
    kv.sync()?;
    if task.ranges.is_empty() {
        return Ok(());
    }
    fail::fail_point!("raft_log_gc_after_kv_sync");
    let mut wb = WriteBatch::new();
    for (start, end) in task.ranges {
        wb.delete_range(Cf::Default, start, end);
    }
    raft.write(&wb, false)?;
    Ok(())
}

/// Handle of the worker thread; dropping it stops the thread once the
/// tasks sent so far are done.
pub struct LogGcWorker {
    tx: Option<Sender<LogGcTask>>,
    thread: Option<JoinHandle<()>>,
}

impl LogGcWorker {
    /// Starts the worker thread.
    pub fn spawn(kv: EngineRef, raft: EngineRef) -> LogGcWorker {
        let (tx, rx): (Sender<LogGcTask>, Receiver<LogGcTask>) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("raft-log-gc".into())
            .spawn(move || {
                loop {
                    let mut task = match rx.recv_timeout(KV_WAL_SYNC_INTERVAL) {
                        Ok(task) => task,
                        // Between tasks, sync the kv WAL a little at a time, so
                        // the next task's sync has little left to write.
                        Err(RecvTimeoutError::Timeout) => LogGcTask::default(),
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    // Whatever queued meanwhile shares the one sync.
                    while let Ok(more) = rx.try_recv() {
                        task.ranges.extend(more.ranges);
                    }
                    if let Err(e) = run(kv.as_ref(), raft.as_ref(), task) {
                        // A failed fsync may have dropped dirty pages: a
                        // retry that "succeeds" proves nothing, and the
                        // entries must outlive unsynced data. As fatal as a
                        // lost write on the store loop.
                        tracing::error!("fatal storage error in raft log GC: {e}");
                        std::process::exit(2);
                    }
                }
            })
            .expect("spawn the raft log GC thread");
        LogGcWorker { tx: Some(tx), thread: Some(thread) }
    }

    /// A worker with no thread: the tasks wait in the returned receiver
    /// (tests run them by hand, at the moment they choose).
    #[cfg(test)]
    pub fn detached() -> (LogGcWorker, Receiver<LogGcTask>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (LogGcWorker { tx: Some(tx), thread: None }, rx)
    }

    /// Hands `task` to the worker.
    pub fn schedule(&self, task: LogGcTask) {
        // The thread ends only when `tx` is dropped (or the process exits).
        if let Some(Err(e)) = self.tx.as_ref().map(|tx| tx.send(task)) {
            tracing::error!("raft log GC worker gone: {e}");
        }
    }
}

impl Drop for LogGcWorker {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::engine::{MemEngine, ScanRange, WriteOp};
    use crate::raftstore::test_engine::WatchedEngine;

    #[test]
    fn the_kv_engine_is_synced_before_any_entry_is_deleted() {
        // The store loop wrote the new truncation point unsynced.
        let kv = Arc::new(MemEngine::new());
        let mut wb = WriteBatch::new();
        wb.put(Cf::Meta, b"truncated".to_vec(), b"9".to_vec());
        kv.write(&wb, false).unwrap();
        assert_eq!(kv.after_power_loss().get(Cf::Meta, b"truncated").unwrap(), None);
        // When a deletion reaches the raft engine, what would a power loss
        // at that moment leave of the kv engine?
        let deletions = Arc::new(AtomicUsize::new(0));
        let (watched_kv, counted) = (kv.clone(), deletions.clone());
        let on_write = move |batch: &WriteBatch, _sync: bool| {
            if batch.ops().iter().any(|op| matches!(op, WriteOp::DeleteRange { .. })) {
                let durable = watched_kv.after_power_loss();
                assert_eq!(durable.get(Cf::Meta, b"truncated").unwrap().as_deref(), Some(&b"9"[..]));
                counted.fetch_add(1, Ordering::SeqCst);
            }
        };
        let raft = WatchedEngine::new(Arc::new(MemEngine::new()), Box::new(on_write));
        let mut wb = WriteBatch::new();
        for i in 1u8..=12 {
            wb.put(Cf::Default, vec![b'e', i], vec![i]);
        }
        raft.write(&wb, true).unwrap();
        run(kv.as_ref(), &raft, LogGcTask { ranges: vec![(vec![b'e', 0], vec![b'e', 10])] }).unwrap();
        assert_eq!(deletions.load(Ordering::SeqCst), 1);
        let left = crate::engine::scan_collect(
            &raft,
            Cf::Default,
            ScanRange { start: b"", end: b"", reverse: false },
            0,
        )
        .unwrap();
        assert_eq!(left.iter().map(|(k, _)| k[1]).collect::<Vec<_>>(), vec![10, 11, 12]);
    }
}
