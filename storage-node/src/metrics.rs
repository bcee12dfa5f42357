//! The node's metrics, on the `prometheus` crate (as TiKV's), rendered as
//! Prometheus text at `/metrics` on the status server. Names and labels
//! follow TiKV's where TiKV has the same thing (docs/metrics.md lists
//! them); the node's own counts keep the `mnemo_` prefix.
//!
//! Two kinds:
//! - [`Metrics`], one per store, holds the counts other code also reads
//!   (region and leader counts reported to PD, snapshots in flight, the
//!   tests' fsync count): each in its own registry, so two stores in one
//!   test process do not mix.
//! - [`RAFTSTORE`], process-wide like TiKV's: latency histograms and
//!   labelled counts recorded deep in the data path (gRPC handlers, the
//!   store loop, the apply workers), where threading a handle through would
//!   cost more than it says.
//!
//! Both are rendered together, with the engines' gauges refreshed first
//! ([`Metrics::render`]).

use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::engine::{Cf, EngineRef};

/// A monotonically increasing count.
pub struct Counter(IntCounter);

impl Counter {
    fn new(name: &str, help: &str) -> Counter {
        Counter(IntCounter::new(name, help).expect("a valid metric name"))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A value that goes up and down (never below zero here).
pub struct Gauge(IntGauge);

impl Gauge {
    fn new(name: &str, help: &str) -> Gauge {
        Gauge(IntGauge::new(name, help).expect("a valid metric name"))
    }

    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.set(i64::try_from(v).unwrap_or(i64::MAX));
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        u64::try_from(self.0.get()).unwrap_or(0)
    }

    /// Counts one more until the returned guard is dropped (work in
    /// progress: snapshots being sent or received).
    pub fn track(&self) -> GaugeGuard<'_> {
        self.0.inc();
        GaugeGuard(self)
    }
}

/// One unit of a [`Gauge`], given back on drop.
pub struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.dec();
    }
}

/// Declares [`Metrics`]: each field with its exported name and help.
macro_rules! store_metrics {
    ($($(#[$doc:meta])* $field:ident: $kind:ident = ($name:literal, $help:literal),)*) => {
        /// Every per-store metric (see the module docs).
        pub struct Metrics {
            registry: Registry,
            /// Engines whose gauges are refreshed at each render.
            engines: parking_lot::Mutex<Option<EngineRef>>,
            $($(#[$doc])* pub $field: $kind,)*
        }

        impl Default for Metrics {
            fn default() -> Self {
                let registry = Registry::new();
                $(
                    let $field = $kind::new($name, $help);
                    registry.register(Box::new($field.0.clone())).expect("metric names are unique");
                )*
                Metrics { registry, engines: parking_lot::Mutex::new(None), $($field,)* }
            }
        }
    };
}

store_metrics! {
    /// Ready rounds of the store loop that had work.
    ready_rounds: Counter = ("mnemo_ready_rounds_total", "Store loop rounds with ready work."),
    /// fsyncs of the raft log store (one per round with appends).
    raft_fsyncs: Counter = ("mnemo_raft_fsyncs_total", "fsyncs of the raft log store."),
    /// Raft messages handed to the transport.
    raft_messages_sent: Counter = ("tikv_raftstore_raft_sent_message_total", "Raft messages sent."),
    /// Raft messages received from other stores.
    raft_messages_received: Counter = ("tikv_server_raft_message_recv_total", "Raft messages received."),
    /// Snapshots sent.
    snapshots_sent: Counter = ("mnemo_snapshots_sent_total", "Snapshots generated and sent."),
    /// Snapshots received.
    snapshots_received: Counter = ("mnemo_snapshots_received_total", "Snapshots received."),
    /// Client read requests.
    reads: Counter = ("mnemo_reads_total", "Client read requests."),
    /// Client write requests.
    writes: Counter = ("mnemo_writes_total", "Client write requests."),
    /// Reads answered with no leadership check (test-only `--unsafe-stale-reads`).
    unsafe_stale_reads: Counter = (
        "mnemo_unsafe_stale_reads_total",
        "Reads served without any leadership check (test-only --unsafe-stale-reads)."
    ),
    /// Reads granted by the local reader under the leader's lease, without
    /// the store loop (a subset of `reads`).
    local_reads: Counter = (
        "mnemo_local_reads_total",
        "Reads granted under the leader's lease without the store loop."
    ),
    /// Requests answered with a region error.
    region_errors: Counter = ("mnemo_region_errors_total", "Requests answered with a region error."),
    /// Commands received on `BatchCommands` streams (each is also counted
    /// as the read or write it is).
    batched_commands: Counter = ("mnemo_batched_commands_total", "Commands received on BatchCommands streams."),
    /// Requests refused with `ServerIsBusy` (flow control).
    server_is_busy: Counter = ("mnemo_server_is_busy_total", "Requests refused with ServerIsBusy."),
    /// Of those, refused because the store loop's queue was full (the
    /// store itself overloaded, reported to PD as `is_busy`; write flow
    /// control is not).
    store_loop_full: Counter = (
        "mnemo_store_loop_full_total",
        "Requests refused because the store loop's queue was full."
    ),
    /// Raft messages received but dropped because the store loop was full.
    raft_messages_dropped: Counter = (
        "tikv_raftstore_raft_dropped_message_total",
        "Raft messages dropped on arrival because the store loop was full."
    ),
    /// Snapshots applied by peers of this node.
    snapshots_applied: Counter = ("mnemo_snapshots_applied_total", "Snapshots applied."),
    /// Raft log compactions (log GC) of peers of this node.
    raft_log_gcs: Counter = ("mnemo_raft_log_gc_total", "Raft log compactions."),
    /// Split commands applied (every replica counts its own).
    splits_applied: Counter = ("mnemo_splits_applied_total", "Split commands applied."),
    /// Membership changes applied (every replica counts its own).
    conf_changes_applied: Counter = ("mnemo_conf_changes_applied_total", "Membership changes applied."),
    /// Times a peer of this node became leader.
    leader_changes: Counter = ("mnemo_leader_changes_total", "Times a peer here became leader."),
    /// Connections to other stores that failed or broke.
    raft_connection_failures: Counter = (
        "mnemo_raft_connection_failures_total",
        "Connections to other stores that failed or broke."
    ),
    /// Region peers on this node (holding the region's data).
    region_count: Gauge = (
        "mnemo_region_count",
        "Initialized region peers on this node (holding the region's data)."
    ),
    /// Regions this node leads.
    leader_count: Gauge = ("mnemo_leader_count", "Regions led by this node."),
    /// Snapshots being sent (waiting for a send slot or streaming);
    /// reported to PD as `sending_snap_count`.
    snapshots_sending: Gauge = ("mnemo_snapshots_sending", "Snapshots being sent."),
    /// Snapshots being received; reported to PD as `receiving_snap_count`.
    snapshots_receiving: Gauge = ("mnemo_snapshots_receiving", "Snapshots being received."),
}

impl Metrics {
    /// Refreshes the engine gauges from `kv` at each render.
    pub fn watch_engine(&self, kv: EngineRef) {
        *self.engines.lock() = Some(kv);
    }

    /// Prometheus text exposition: this store's metrics and the process's.
    pub fn render(&self) -> String {
        if let Some(kv) = self.engines.lock().as_ref() {
            RAFTSTORE.observe_engine(kv.as_ref());
        }
        RAFTSTORE.region_count.with_label_values(&["region"]).set(self.region_count.0.get());
        RAFTSTORE.region_count.with_label_values(&["leader"]).set(self.leader_count.0.get());
        let mut families = self.registry.gather();
        families.extend(RAFTSTORE.registry.gather());
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Buckets from 50 µs doubling 22 times (to ~105 s), as TiKV's gRPC histogram.
fn grpc_buckets() -> Vec<f64> {
    exponential_buckets(0.00005, 2.0, 22).expect("valid buckets")
}

/// Buckets from 10 µs doubling 26 times (to ~335 s), for raft stages.
fn raft_buckets() -> Vec<f64> {
    exponential_buckets(0.00001, 2.0, 26).expect("valid buckets")
}

/// The process-wide metrics of the data path (see the module docs).
pub struct RaftstoreMetrics {
    registry: Registry,
    /// `tikv_grpc_msg_duration_seconds{type}`.
    pub grpc_duration: HistogramVec,
    /// `tikv_grpc_msg_fail_total{type}`.
    pub grpc_fail: IntCounterVec,
    /// `tikv_raftstore_proposal_total{type}`.
    pub proposal: IntCounterVec,
    /// `tikv_raftstore_commit_log_duration_seconds`: proposed → committed
    /// and handed to apply.
    pub commit_log: Histogram,
    /// `tikv_raftstore_apply_log_duration_seconds`: one apply task.
    pub apply_log: Histogram,
    /// `tikv_raftstore_append_log_duration_seconds`: a round's raft log write.
    pub append_log: Histogram,
    /// `tikv_raftstore_raft_process_duration_secs{type="ready"}`.
    pub process_ready: Histogram,
    /// `tikv_raftstore_store_msg_queue_size`.
    pub msg_queue: IntGauge,
    /// `tikv_raftstore_region_count{type}`.
    pub region_count: IntGaugeVec,
    /// `tikv_raftstore_snapshot_total{type,status}`.
    pub snapshot: IntCounterVec,
    /// `tikv_raftstore_snapshot_duration_seconds{type}`.
    pub snapshot_duration: HistogramVec,
    /// `tikv_engine_memory_bytes{db,cf,type}`.
    pub engine_memory: IntGaugeVec,
    /// `tikv_engine_pending_compaction_bytes{db,cf}`.
    pub engine_pending_compaction: IntGaugeVec,
    /// `tikv_engine_cache_efficiency{db,type}` (totals since start).
    pub engine_cache: IntGaugeVec,
    /// `tikv_store_size_bytes{type}`.
    pub store_size: IntGaugeVec,
}

/// The process's [`RaftstoreMetrics`].
pub static RAFTSTORE: LazyLock<RaftstoreMetrics> = LazyLock::new(RaftstoreMetrics::new);

impl RaftstoreMetrics {
    fn new() -> RaftstoreMetrics {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone())).expect("metric names are unique");
            m
        }
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            reg(
                &registry,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid"),
            )
        };
        let hist_vec = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let opts = HistogramOpts::new(name, help).buckets(buckets);
            reg(&registry, HistogramVec::new(opts, labels).expect("valid"))
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid"))
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid"))
        };
        let m = RaftstoreMetrics {
            grpc_duration: hist_vec(
                "tikv_grpc_msg_duration_seconds",
                "Time to answer one client request, by type.",
                &["type"],
                grpc_buckets(),
            ),
            grpc_fail: counter_vec(
                "tikv_grpc_msg_fail_total",
                "Client requests answered with an error or a region error, by type.",
                &["type"],
            ),
            proposal: counter_vec(
                "tikv_raftstore_proposal_total",
                "Reads and writes handed to the store loop, by how they were served.",
                &["type"],
            ),
            commit_log: hist(
                "tikv_raftstore_commit_log_duration_seconds",
                "A write's proposal to its entry committed and handed to apply.",
                raft_buckets(),
            ),
            apply_log: hist(
                "tikv_raftstore_apply_log_duration_seconds",
                "Applying one batch of committed entries (see docs/metrics.md).",
                raft_buckets(),
            ),
            append_log: hist(
                "tikv_raftstore_append_log_duration_seconds",
                "One store-loop round's synced write: raft log, and inline applies' kv writes.",
                raft_buckets(),
            ),
            process_ready: hist_vec(
                "tikv_raftstore_raft_process_duration_secs",
                "One store-loop round with work.",
                &["type"],
                raft_buckets(),
            )
            .with_label_values(&["ready"]),
            msg_queue: reg(
                &registry,
                IntGauge::new("tikv_raftstore_store_msg_queue_size", "Messages waiting for the store loop.")
                    .expect("valid"),
            ),
            region_count: gauge_vec(
                "tikv_raftstore_region_count",
                "Region peers on the node (type region) and those that lead (type leader).",
                &["type"],
            ),
            snapshot: counter_vec(
                "tikv_raftstore_snapshot_total",
                "Snapshots generated, sent, received and applied, by outcome.",
                &["type", "status"],
            ),
            snapshot_duration: hist_vec(
                "tikv_raftstore_snapshot_duration_seconds",
                "Time to generate or apply one snapshot.",
                &["type"],
                raft_buckets(),
            ),
            engine_memory: gauge_vec(
                "tikv_engine_memory_bytes",
                "Engine memory by kind (RocksDB memtables).",
                &["db", "cf", "type"],
            ),
            engine_pending_compaction: gauge_vec(
                "tikv_engine_pending_compaction_bytes",
                "Bytes RocksDB estimates compaction still has to rewrite.",
                &["db", "cf"],
            ),
            engine_cache: gauge_vec(
                "tikv_engine_cache_efficiency",
                "Block cache lookups since start (type block_cache_hit or block_cache_miss).",
                &["db", "type"],
            ),
            store_size: gauge_vec(
                "tikv_store_size_bytes",
                "The store's capacity, available and used bytes as reported to PD.",
                &["type"],
            ),
            registry,
        };
        // Series that exist before their first event, so dashboards and
        // alerts see zeros rather than nothing.
        for ty in ["local_read", "read_index", "normal", "conf_change", "transfer_leader", "split", "dropped"]
        {
            m.proposal.with_label_values(&[ty]);
        }
        for ty in ["generate", "send", "receive", "apply"] {
            for status in ["success", "fail"] {
                m.snapshot.with_label_values(&[ty, status]);
            }
        }
        for ty in ["generate", "apply"] {
            m.snapshot_duration.with_label_values(&[ty]);
        }
        m
    }

    /// Times a client request of `ty` (e.g. `raw_get`): observed when the
    /// returned timer is finished with the request's outcome.
    pub fn grpc_timer(&self, ty: &'static str) -> GrpcTimer {
        GrpcTimer { ty, started: Instant::now() }
    }

    /// Counts a proposal or read of `ty`.
    pub fn proposed(&self, ty: &str) {
        self.proposal.with_label_values(&[ty]).inc();
    }

    /// Counts a snapshot of `ty` (`generate`, `send`, `receive`, `apply`)
    /// that succeeded or failed.
    pub fn snapshot_done(&self, ty: &str, ok: bool) {
        self.snapshot.with_label_values(&[ty, if ok { "success" } else { "fail" }]).inc();
    }

    /// Refreshes the engine gauges from the kv engine's statistics.
    fn observe_engine(&self, kv: &dyn crate::engine::Engine) {
        let stats = kv.stats();
        for (cf, bytes) in &stats.memtable_bytes {
            self.engine_memory.with_label_values(&["kv", cf_name(*cf), "mem-tables"]).set(gauge(*bytes));
        }
        for (cf, bytes) in &stats.pending_compaction_bytes {
            self.engine_pending_compaction.with_label_values(&["kv", cf_name(*cf)]).set(gauge(*bytes));
        }
        if let Some((hit, miss)) = stats.block_cache {
            self.engine_cache.with_label_values(&["kv", "block_cache_hit"]).set(gauge(hit));
            self.engine_cache.with_label_values(&["kv", "block_cache_miss"]).set(gauge(miss));
        }
    }
}

fn cf_name(cf: Cf) -> &'static str {
    cf.name()
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A client request being timed ([`RaftstoreMetrics::grpc_timer`]).
pub struct GrpcTimer {
    ty: &'static str,
    started: Instant,
}

impl GrpcTimer {
    /// Observes the request's duration, and returns it; `failed` also
    /// counts it in `tikv_grpc_msg_fail_total`.
    pub fn finish(self, failed: bool) -> std::time::Duration {
        let took = self.started.elapsed();
        RAFTSTORE.grpc_duration.with_label_values(&[self.ty]).observe(took.as_secs_f64());
        if failed {
            RAFTSTORE.grpc_fail.with_label_values(&[self.ty]).inc();
        }
        took
    }

    /// The request type it times (`raw_get`, ...).
    pub fn request_type(&self) -> &'static str {
        self.ty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_carries_store_and_process_metrics_with_tikv_names() {
        let m = Metrics::default();
        m.region_count.set(3);
        m.raft_messages_sent.add(2);
        RAFTSTORE.grpc_timer("raw_get").finish(false);
        let text = m.render();
        for line in [
            "mnemo_region_count 3",
            "tikv_raftstore_raft_sent_message_total 2",
            "tikv_raftstore_region_count{type=\"region\"} 3",
            "tikv_raftstore_proposal_total{type=\"dropped\"}",
            "tikv_grpc_msg_duration_seconds_bucket{type=\"raw_get\",le=\"0.00005\"}",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // Two stores in one process keep their own counts.
        let other = Metrics::default();
        assert!(other.render().contains("mnemo_region_count 0"));
    }
}
