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
    /// Requests answered with a region error.
    pub region_errors: Counter,
    /// Region peers on this node.
    pub region_count: Gauge,
    /// Regions this node leads.
    pub leader_count: Gauge,
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut emit = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        emit(
            "mnemo_ready_rounds_total",
            "counter",
            "Store loop rounds with ready work.",
            self.ready_rounds.get(),
        );
        emit("mnemo_raft_fsyncs_total", "counter", "fsyncs of the raft log store.", self.raft_fsyncs.get());
        emit(
            "mnemo_raft_messages_sent_total",
            "counter",
            "Raft messages sent.",
            self.raft_messages_sent.get(),
        );
        emit(
            "mnemo_raft_messages_received_total",
            "counter",
            "Raft messages received.",
            self.raft_messages_received.get(),
        );
        emit("mnemo_snapshots_sent_total", "counter", "Snapshots sent.", self.snapshots_sent.get());
        emit(
            "mnemo_snapshots_received_total",
            "counter",
            "Snapshots received.",
            self.snapshots_received.get(),
        );
        emit("mnemo_reads_total", "counter", "Client read requests.", self.reads.get());
        emit("mnemo_writes_total", "counter", "Client write requests.", self.writes.get());
        emit(
            "mnemo_unsafe_stale_reads_total",
            "counter",
            "Reads served without any leadership check (test-only --unsafe-stale-reads).",
            self.unsafe_stale_reads.get(),
        );
        emit(
            "mnemo_region_errors_total",
            "counter",
            "Requests answered with a region error.",
            self.region_errors.get(),
        );
        emit("mnemo_region_count", "gauge", "Region peers on this node.", self.region_count.get());
        emit("mnemo_leader_count", "gauge", "Regions led by this node.", self.leader_count.get());
        out
    }
}
