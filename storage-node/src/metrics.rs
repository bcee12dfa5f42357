//! The node's metrics, rendered as Prometheus text on the status server.
//!
//! Plain atomics: the hot paths only increment.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one more until the returned guard is dropped (work in
    /// progress: snapshots being sent or received).
    pub fn track(&self) -> GaugeGuard<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(self)
    }
}

/// One unit of a [`Gauge`], given back on drop.
pub struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every metric the node exports.
#[derive(Default)]
pub struct Metrics {
    /// Ready rounds of the store loop that had work.
    pub ready_rounds: Counter,
    /// fsyncs of the raft log store (one per round with appends).
    pub raft_fsyncs: Counter,
    /// Raft messages handed to the transport.
    pub raft_messages_sent: Counter,
    /// Raft messages received from other stores.
    pub raft_messages_received: Counter,
    /// Snapshots sent / received.
    pub snapshots_sent: Counter,
    pub snapshots_received: Counter,
    /// Client requests served, by kind.
    pub reads: Counter,
    pub writes: Counter,
    /// Reads answered with no leadership check (test-only `--unsafe-stale-reads`).
    pub unsafe_stale_reads: Counter,
    /// Reads granted by the local reader under the leader's lease, without
    /// the store loop (a subset of `reads`).
    pub local_reads: Counter,
    /// Requests answered with a region error.
    pub region_errors: Counter,
    /// Commands received on `BatchCommands` streams (each is also counted
    /// as the read or write it is).
    pub batched_commands: Counter,
    /// Requests refused with `ServerIsBusy` (flow control).
    pub server_is_busy: Counter,
    /// Of those, refused because the store loop's queue was full (the
    /// store itself overloaded, reported to PD as `is_busy`; write flow
    /// control is not).
    pub store_loop_full: Counter,
    /// Raft messages received but dropped because the store loop was full.
    pub raft_messages_dropped: Counter,
    /// Snapshots applied by peers of this node.
    pub snapshots_applied: Counter,
    /// Raft log compactions (log GC) of peers of this node.
    pub raft_log_gcs: Counter,
    /// Split commands applied (every replica counts its own).
    pub splits_applied: Counter,
    /// Membership changes applied (every replica counts its own).
    pub conf_changes_applied: Counter,
    /// Times a peer of this node became leader.
    pub leader_changes: Counter,
    /// Connections to other stores that failed or broke.
    pub raft_connection_failures: Counter,
    /// Region peers on this node.
    pub region_count: Gauge,
    /// Regions this node leads.
    pub leader_count: Gauge,
    /// Snapshots being sent (waiting for a send slot or streaming);
    /// reported to PD as `sending_snap_count`.
    pub snapshots_sending: Gauge,
    /// Snapshots being received; reported to PD as `receiving_snap_count`.
    pub snapshots_receiving: Gauge,
}

impl Metrics {
    /// Every metric: name, type, help, value.
    fn all(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        let c = "counter";
        vec![
            ("mnemo_ready_rounds_total", c, "Store loop rounds with ready work.", self.ready_rounds.get()),
            ("mnemo_raft_fsyncs_total", c, "fsyncs of the raft log store.", self.raft_fsyncs.get()),
            ("mnemo_raft_messages_sent_total", c, "Raft messages sent.", self.raft_messages_sent.get()),
            (
                "mnemo_raft_messages_received_total",
                c,
                "Raft messages received.",
                self.raft_messages_received.get(),
            ),
            (
                "mnemo_raft_messages_dropped_total",
                c,
                "Raft messages dropped because the store loop was full.",
                self.raft_messages_dropped.get(),
            ),
            ("mnemo_snapshots_sent_total", c, "Snapshots generated and sent.", self.snapshots_sent.get()),
            ("mnemo_snapshots_received_total", c, "Snapshots received.", self.snapshots_received.get()),
            ("mnemo_snapshots_applied_total", c, "Snapshots applied.", self.snapshots_applied.get()),
            ("mnemo_raft_log_gc_total", c, "Raft log compactions.", self.raft_log_gcs.get()),
            ("mnemo_splits_applied_total", c, "Split commands applied.", self.splits_applied.get()),
            (
                "mnemo_conf_changes_applied_total",
                c,
                "Membership changes applied.",
                self.conf_changes_applied.get(),
            ),
            ("mnemo_leader_changes_total", c, "Times a peer here became leader.", self.leader_changes.get()),
            (
                "mnemo_raft_connection_failures_total",
                c,
                "Connections to other stores that failed or broke.",
                self.raft_connection_failures.get(),
            ),
            ("mnemo_reads_total", c, "Client read requests.", self.reads.get()),
            (
                "mnemo_local_reads_total",
                c,
                "Reads granted under the leader's lease without the store loop.",
                self.local_reads.get(),
            ),
            ("mnemo_writes_total", c, "Client write requests.", self.writes.get()),
            (
                "mnemo_unsafe_stale_reads_total",
                c,
                "Reads served without any leadership check (test-only --unsafe-stale-reads).",
                self.unsafe_stale_reads.get(),
            ),
            (
                "mnemo_batched_commands_total",
                c,
                "Commands received on BatchCommands streams.",
                self.batched_commands.get(),
            ),
            (
                "mnemo_region_errors_total",
                c,
                "Requests answered with a region error.",
                self.region_errors.get(),
            ),
            (
                "mnemo_server_is_busy_total",
                c,
                "Requests refused with ServerIsBusy.",
                self.server_is_busy.get(),
            ),
            (
                "mnemo_store_loop_full_total",
                c,
                "Requests refused because the store loop's queue was full.",
                self.store_loop_full.get(),
            ),
            (
                "mnemo_region_count",
                "gauge",
                "Initialized region peers on this node (holding the region's data).",
                self.region_count.get(),
            ),
            ("mnemo_leader_count", "gauge", "Regions led by this node.", self.leader_count.get()),
            ("mnemo_snapshots_sending", "gauge", "Snapshots being sent.", self.snapshots_sending.get()),
            (
                "mnemo_snapshots_receiving",
                "gauge",
                "Snapshots being received.",
                self.snapshots_receiving.get(),
            ),
        ]
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, v) in self.all() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        out
    }
}
