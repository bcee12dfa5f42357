//! Node configuration: defaults → TOML file (`--config`) → command-line flags.
//!
//! Key names follow TiKV (`raftstore.raft-base-tick-interval`, ...), so an
//! operator's habits carry over. Durations are strings like `"100ms"`,
//! `"5s"`, `"1h30m"` (see [`crate::duration`]); sizes like `"8MiB"`. See `deploy/config/node.toml` for a
//! commented template.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::duration::ReadableDuration;

/// A byte size read from a human string (`"96MiB"`, `"8KiB"`, `"512"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadableSize(pub u64);

/// Parses `"<number>[unit]"` with unit `B`, `KiB`, `MiB`, `GiB` (or `KB`/`MB`/`GB` as binary too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}: expected e.g. \"96MiB\""))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        _ => return Err(format!("invalid size unit in {s:?}: use B, KiB, MiB or GiB")),
    };
    Ok(n * mult)
}

impl fmt::Display for ReadableSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl Serialize for ReadableSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ReadableSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_size(&s).map(ReadableSize).map_err(serde::de::Error::custom)
    }
}

/// The whole node configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeConfig {
    /// PD endpoints (`host:port`), flag `--pd`. Required.
    pub pd_endpoints: Vec<String>,
    /// Address the gRPC server listens on, flag `--addr`. Default `127.0.0.1:20160`.
    pub addr: String,
    /// Address other nodes and clients use to reach this node, flag
    /// `--advertise-addr`. Default: `addr`. Must not be `0.0.0.0`.
    pub advertise_addr: String,
    /// Address of the HTTP status server (`/metrics`, `/status`, `/config`),
    /// flag `--status-addr`. Default `127.0.0.1:20180`.
    pub status_addr: String,
    /// Status address given to PD (its stores' `status_address`: where
    /// tools and dashboards find `/metrics`), flag `--advertise-status-addr`.
    /// Default: the address the status server listens on. Must not be
    /// `0.0.0.0`.
    pub advertise_status_addr: String,
    /// Directory holding the kv engine (`db/`) and raft log store (`raft/`),
    /// flag `--data-dir`. Default `./data/node`.
    pub data_dir: PathBuf,
    /// Store labels (`zone`, `rack`, `host`), flag `--labels zone=z1,host=h1`.
    pub labels: Vec<(String, String)>,
    /// `text` (default) or `json`, flag `--log-format`.
    pub log_format: String,
    /// OTLP/gRPC collector to export traces to (`http://host:4317`), flag
    /// `--otlp-endpoint`. Default empty: no traces exported.
    pub otlp_endpoint: String,
    /// Share (0 to 1) of the traces this node starts that are exported,
    /// flag `--otlp-sample-ratio`. Requests arriving with a trace context
    /// follow its sampled flag. Default 0.01.
    pub otlp_sample_ratio: f64,
    /// Raft settings.
    pub raftstore: RaftstoreConfig,
    /// Request limits.
    pub server: ServerConfig,
    /// Region split thresholds.
    pub coprocessor: CoprocessorConfig,
    /// Flow control of writes.
    pub storage: StorageConfig,
    /// Which store holds the raft logs.
    pub raft_engine: RaftEngineConfig,
    /// Test-only controls for the chaos harness; all off. Set only by
    /// command-line flags: a config file naming them is rejected (unknown
    /// key), so a copied production file can never switch them on. Shown by
    /// `/config` and `/status`.
    #[serde(skip_deserializing)]
    pub test_controls: TestControls,
}

/// Test-only controls (**never in production**). Each one lets a test break
/// a guarantee on purpose, to prove the chaos checker notices. The node logs
/// a warning at start-up for every control that is on.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TestControls {
    /// Flag `--enable-test-controls`: the status server serves
    /// `GET`/`POST /debug/lease-clock`, which slows down, speeds up or jumps
    /// the clock this node's leader leases are measured on
    /// (see [`crate::raftstore::lease_clock`]). Off: those paths are 404 and
    /// leases use real time. Default false.
    pub enable_test_controls: bool,
    /// Flag `--unsafe-stale-reads`: a `RawGet` whose context sets
    /// `replica_read` is answered by whichever peer receives it, from its
    /// applied state, with no lease or ReadIndex check (epoch and key range
    /// still checked): reads may be stale. Off: `replica_read` is ignored and
    /// only the leader answers. Default false.
    pub unsafe_stale_reads: bool,
    /// Flag `--plant NAME` (repeatable): plants a known bug in this node, so
    /// the chaos harness can prove its checkers catch it (names:
    /// [`PLANTABLE_BUGS`]). Default none.
    pub plant: Vec<String>,
}

/// The bugs `--plant` can plant, each a defect this store once had or could
/// have, and what it breaks.
pub const PLANTABLE_BUGS: &[(&str, &str)] = &[
    ("apply-local-clock", "apply judges TTL expiry by the applying node's clock, not the proposer's stamp"),
    ("lease-ignores-transfer", "the leader lease stays valid during and after a leader transfer"),
    ("ack-before-commit", "a leader acknowledges a write when it proposes it, before it is committed"),
    ("skip-apply-epoch-check", "apply does not check the command's epoch and key range against the region"),
];

impl TestControls {
    /// True if any control is on.
    pub fn any(&self) -> bool {
        self.enable_test_controls || self.unsafe_stale_reads || !self.plant.is_empty()
    }

    /// True if bug `name` is planted.
    pub fn planted(&self, name: &str) -> bool {
        self.plant.iter().any(|p| p == name)
    }
}

/// Region split settings (`[coprocessor]`), named as in TiKV.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct CoprocessorConfig {
    /// Size of each part when a region splits. Default `96MiB`.
    pub region_split_size: ReadableSize,
    /// A region splits once larger than this. Default: 1.5 × split size.
    pub region_max_size: Option<ReadableSize>,
    /// Keys of each part when a region splits. Default 960,000.
    pub region_split_keys: u64,
    /// A region splits once it has more keys than this. Default: 1.5 × split keys.
    pub region_max_keys: Option<u64>,
    /// How often leaders that grew by 1/16 of the split size are measured. Default `10s`.
    pub split_region_check_tick_interval: ReadableDuration,
}

impl Default for CoprocessorConfig {
    fn default() -> Self {
        CoprocessorConfig {
            region_split_size: ReadableSize(96 << 20),
            region_max_size: None,
            region_split_keys: 960_000,
            region_max_keys: None,
            split_region_check_tick_interval: ReadableDuration(Duration::from_secs(10)),
        }
    }
}

impl CoprocessorConfig {
    /// The effective `region-max-size` in bytes.
    pub fn max_size(&self) -> u64 {
        self.region_max_size.map(|s| s.0).unwrap_or(self.region_split_size.0 / 2 * 3)
    }

    /// The effective `region-max-keys`.
    pub fn max_keys(&self) -> u64 {
        self.region_max_keys.unwrap_or(self.region_split_keys / 2 * 3)
    }
}

/// Raft settings (`[raftstore]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct RaftstoreConfig {
    /// One raft tick. Default `100ms`.
    pub raft_base_tick_interval: ReadableDuration,
    /// Ticks between leader heartbeats. Default 2.
    pub raft_heartbeat_ticks: usize,
    /// Ticks without a leader before an election. Default 10 (≈1 s).
    pub raft_election_timeout_ticks: usize,
    /// Leader lease: reads without a quorum round for this long after one.
    /// Must fit inside the shortest time a follower waits before it may
    /// elect another leader, `(raft-election-timeout-ticks − 1) × tick` (the
    /// first tick after a reset can come at once), less a margin of
    /// [`LEASE_CLOCK_DRIFT_MARGIN`] for clocks that run at different speeds:
    /// at most 810 ms with the defaults; a longer lease is rejected. Default:
    /// election timeout minus two ticks (800 ms with the defaults), or that
    /// bound if it is shorter (long election timeouts).
    pub raft_store_max_leader_lease: Option<ReadableDuration>,
    /// Largest raft entry (an encoded write command). Default `8MiB`.
    pub raft_entry_max_size: ReadableSize,
    /// How often a leader reports an unchanged region to PD. Default `5s`.
    /// Changes (new leader, membership, catching-up peers) are reported at the next tick.
    pub pd_heartbeat_tick_interval: ReadableDuration,
    /// How often the node reports its store statistics to PD. Default `10s`.
    pub pd_store_heartbeat_tick_interval: ReadableDuration,
    /// A leader reports a peer down (`down_peers` in its region heartbeat,
    /// with the seconds of silence) once nothing has been heard from the
    /// peer's store for this long; PD replaces it after
    /// `max-store-down-time`. Default `10m`.
    pub max_peer_down_duration: ReadableDuration,
    /// Idle regions tick 10× slower (leader heartbeat every 2 s, election
    /// after 10–20 s without one), so thousands of idle regions cost little;
    /// the price is a slower failover for regions that were idle. Default true.
    pub hibernate_regions: bool,
    /// How often peers consider compacting their raft log. Default `10s`.
    pub raft_log_gc_tick_interval: ReadableDuration,
    /// Compact once this many applied entries sit in the log. Default 50.
    pub raft_log_gc_threshold: u64,
    /// Compact even past lagging followers (they will need a snapshot) once
    /// the log holds this many entries. Default 10,000.
    pub raft_log_gc_count_limit: u64,
    /// Capacity of the store loop's queue of client requests and raft
    /// messages. When full, client requests get `ServerIsBusy` and raft
    /// messages are dropped (raft resends). Default 40,960.
    pub notify_capacity: usize,
    /// Most queued requests and raft messages the store loop takes per
    /// round, so a burst cannot delay ticks. Default 4,096.
    pub messages_per_tick: usize,
    /// Bytes a region's leader may have proposed but not yet committed;
    /// past it proposals get `ServerIsBusy` (raft-rs `max_uncommitted_size`).
    /// Default `128MiB`; must be at least `raft-entry-max-size` and `1MiB`
    /// (the largest message raft sends).
    pub raft_max_uncommitted_size: ReadableSize,
    /// The store's capacity as reported to PD (TiKV's `raftstore.capacity`):
    /// `0` = the size of the file system holding the data directory. With
    /// a limit, the available space reported is the smaller of the file
    /// system's free space and `capacity − used`. PD stops placing new
    /// replicas on a store whose used share is above its `low-space-ratio`
    /// (0.8): on a shared disk, a limit keeps others' files out of that
    /// share. Default `0`.
    pub capacity: ReadableSize,
    /// Threads applying committed plain writes off the store loop (TiKV's
    /// `raftstore.apply-pool-size`; see `raftstore::apply_pool`). `0`: the
    /// store loop applies everything itself. Writes judged at apply (CAS),
    /// splits and membership changes always apply on the store loop.
    /// Default 1.
    pub apply_pool_size: usize,
}

/// Flow control (`[storage]`), named as in TiKV.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct StorageConfig {
    /// Bytes of writes in flight on this node (received, not yet answered)
    /// past which new writes get `ServerIsBusy` at once. Default `100MiB`.
    pub scheduler_pending_write_threshold: ReadableSize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { scheduler_pending_write_threshold: ReadableSize(100 << 20) }
    }
}

/// The raft log store (`[raft-engine]`, named as in TiKV).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct RaftEngineConfig {
    /// `true`: raft logs in `raft-engine` (append-only log files with an
    /// in-memory index, `<data-dir>/raft-engine/`); `false`: in a second
    /// RocksDB (`<data-dir>/raft/`). Flag `--raft-engine true|false`.
    /// Unset (the default): raft-engine for a new data dir, otherwise the
    /// store the data dir already holds. A data dir keeps the store it was
    /// created with: setting the other is refused at start-up.
    pub enable: Option<bool>,
}

/// Request limits (`[server]`). Over a limit: `InvalidArgument`, nothing written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerConfig {
    /// Largest key. Default `8KiB`.
    pub max_key_size: ReadableSize,
    /// Largest value. Default `8MiB`.
    pub max_value_size: ReadableSize,
    /// Most keys (or pairs, or ranges) in one batch request. Default 10,000.
    pub max_batch_keys: usize,
    /// Most pairs one scan may ask for. Default 10,240.
    pub max_scan_limit: u32,
    /// Node-to-node connections send an HTTP/2 keep-alive ping this often,
    /// even when idle. Default `10s`.
    pub grpc_keepalive_time: ReadableDuration,
    /// A connection whose ping is not answered within this is closed and
    /// re-opened. Default `3s`.
    pub grpc_keepalive_timeout: ReadableDuration,
    /// Message batches (one per store-loop round) queued for one other store
    /// before new ones are dropped (raft resends). Default 4,096.
    pub raft_client_queue_size: usize,
    /// Threads running gRPC (clients and other nodes) and the node's other
    /// async work (TiKV's `server.grpc-concurrency`). Default 0: one per
    /// CPU core. Nodes sharing a machine (tests, benchmarks on one box)
    /// do better with fewer: every thread more is more context switches.
    pub grpc_concurrency: usize,
    /// A client request taking at least this long is logged (warning "slow
    /// request", with its trace id when it is traced). Default `1s`; `0s`
    /// logs every request.
    pub slow_log_threshold: ReadableDuration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            pd_endpoints: Vec::new(),
            addr: "127.0.0.1:20160".into(),
            advertise_addr: String::new(),
            status_addr: "127.0.0.1:20180".into(),
            advertise_status_addr: String::new(),
            data_dir: PathBuf::from("./data/node"),
            labels: Vec::new(),
            log_format: "text".into(),
            otlp_endpoint: String::new(),
            otlp_sample_ratio: mnemo_telemetry::DEFAULT_SAMPLE_RATIO,
            raftstore: RaftstoreConfig::default(),
            server: ServerConfig::default(),
            coprocessor: CoprocessorConfig::default(),
            storage: StorageConfig::default(),
            raft_engine: RaftEngineConfig::default(),
            test_controls: TestControls::default(),
        }
    }
}

impl Default for RaftstoreConfig {
    fn default() -> Self {
        RaftstoreConfig {
            raft_base_tick_interval: ReadableDuration(Duration::from_millis(100)),
            raft_heartbeat_ticks: 2,
            raft_election_timeout_ticks: 10,
            raft_store_max_leader_lease: None,
            raft_entry_max_size: ReadableSize(8 << 20),
            pd_heartbeat_tick_interval: ReadableDuration(Duration::from_secs(5)),
            pd_store_heartbeat_tick_interval: ReadableDuration(Duration::from_secs(10)),
            max_peer_down_duration: ReadableDuration(Duration::from_secs(600)),
            hibernate_regions: true,
            apply_pool_size: 1,
            raft_log_gc_tick_interval: ReadableDuration(Duration::from_secs(10)),
            raft_log_gc_threshold: 50,
            raft_log_gc_count_limit: 10_000,
            notify_capacity: 40_960,
            messages_per_tick: 4_096,
            raft_max_uncommitted_size: ReadableSize(128 << 20),
            capacity: ReadableSize(0),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_key_size: ReadableSize(8 << 10),
            max_value_size: ReadableSize(8 << 20),
            max_batch_keys: 10_000,
            max_scan_limit: 10_240,
            grpc_keepalive_time: ReadableDuration(Duration::from_secs(10)),
            grpc_keepalive_timeout: ReadableDuration(Duration::from_secs(3)),
            raft_client_queue_size: 4_096,
            grpc_concurrency: 0,
            slow_log_threshold: ReadableDuration(Duration::from_secs(1)),
        }
    }
}

/// Share of the shortest election wait a leader lease may not use: leases
/// stay safe while the leader's clock runs no more than this much slower
/// than its followers' (10%).
pub const LEASE_CLOCK_DRIFT_MARGIN: f64 = 0.1;

impl RaftstoreConfig {
    /// The longest safe leader lease: `(election ticks − 1) × tick` less
    /// [`LEASE_CLOCK_DRIFT_MARGIN`].
    pub fn max_safe_lease(&self) -> Duration {
        let min_election_wait =
            self.raft_base_tick_interval.0 * (self.raft_election_timeout_ticks.saturating_sub(1) as u32);
        min_election_wait.mul_f64(1.0 - LEASE_CLOCK_DRIFT_MARGIN)
    }

    /// The election timeout (ticks × tick interval).
    pub fn election_timeout(&self) -> Duration {
        self.raft_base_tick_interval.0 * self.raft_election_timeout_ticks as u32
    }

    /// The leader lease actually used.
    pub fn leader_lease(&self) -> Duration {
        self.raft_store_max_leader_lease.map(|d| d.0).unwrap_or_else(|| {
            let two_ticks_short = self.election_timeout().saturating_sub(self.raft_base_tick_interval.0 * 2);
            two_ticks_short.min(self.max_safe_lease())
        })
    }
}

impl NodeConfig {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &std::path::Path) -> Result<NodeConfig, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))
    }

    /// The address advertised to PD.
    pub fn advertised(&self) -> &str {
        if self.advertise_addr.is_empty() {
            &self.addr
        } else {
            &self.advertise_addr
        }
    }

    /// Where traces go (see `mnemo_telemetry`).
    pub fn trace(&self) -> mnemo_telemetry::TraceConfig {
        mnemo_telemetry::TraceConfig {
            otlp_endpoint: Some(self.otlp_endpoint.clone()),
            sample_ratio: self.otlp_sample_ratio,
        }
    }

    /// Checks the configuration; the message says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        self.trace().validate()?;
        if self.pd_endpoints.is_empty() {
            return Err("no PD endpoint: pass --pd 127.0.0.1:2379".into());
        }
        if self.advertised().starts_with("0.0.0.0") {
            return Err("the advertised address must be reachable: set --advertise-addr".into());
        }
        if self.advertise_status_addr.starts_with("0.0.0.0") {
            return Err("the advertised status address must be reachable: not 0.0.0.0".into());
        }
        let r = &self.raftstore;
        if r.raft_heartbeat_ticks == 0 || r.raft_election_timeout_ticks <= r.raft_heartbeat_ticks {
            return Err("raftstore.raft-election-timeout-ticks must exceed raft-heartbeat-ticks (> 0)".into());
        }
        if r.raft_base_tick_interval.0.is_zero() {
            return Err("raftstore.raft-base-tick-interval must be positive".into());
        }
        let election = r.raft_base_tick_interval.0 * r.raft_election_timeout_ticks as u32;
        if r.max_peer_down_duration.0 < 2 * election {
            return Err(format!(
                "raftstore.max-peer-down-duration ({:?}) must be at least twice the election timeout \
                 ({:?}): stores ping each other about that often",
                r.max_peer_down_duration.0, election
            ));
        }
        if r.leader_lease() > r.max_safe_lease() {
            return Err(format!(
                "raftstore.raft-store-max-leader-lease ({} ms) must not exceed {} ms: the shortest \
                 election wait, (raft-election-timeout-ticks − 1) × raft-base-tick-interval = {} ms, \
                 less {}% for clock drift",
                r.leader_lease().as_millis(),
                r.max_safe_lease().as_millis(),
                (r.raft_base_tick_interval.0 * (r.raft_election_timeout_ticks as u32 - 1)).as_millis(),
                (LEASE_CLOCK_DRIFT_MARGIN * 100.0) as u32,
            ));
        }
        let c = &self.coprocessor;
        if c.region_split_size.0 == 0 || c.region_split_keys == 0 {
            return Err("coprocessor.region-split-size and region-split-keys must be positive".into());
        }
        if c.max_size() < c.region_split_size.0 || c.max_keys() < c.region_split_keys {
            return Err("coprocessor.region-max-size/keys must be at least region-split-size/keys".into());
        }
        if r.raft_log_gc_threshold == 0 {
            return Err("raftstore.raft-log-gc-threshold must be positive".into());
        }
        if r.notify_capacity == 0 || r.messages_per_tick == 0 {
            return Err("raftstore.notify-capacity and messages-per-tick must be positive".into());
        }
        if r.raft_max_uncommitted_size < r.raft_entry_max_size || r.raft_max_uncommitted_size.0 < 1 << 20 {
            return Err(format!(
                "raftstore.raft-max-uncommitted-size ({}) must be at least raft-entry-max-size ({}) and 1MiB",
                r.raft_max_uncommitted_size, r.raft_entry_max_size
            ));
        }
        if self.storage.scheduler_pending_write_threshold.0 == 0 {
            return Err("storage.scheduler-pending-write-threshold must be positive".into());
        }
        if self.server.max_batch_keys == 0 || self.server.max_key_size.0 == 0 {
            return Err("server limits must be positive".into());
        }
        if self.server.grpc_keepalive_time.0.is_zero()
            || self.server.grpc_keepalive_timeout.0.is_zero()
            || self.server.raft_client_queue_size == 0
        {
            return Err(
                "server.grpc-keepalive-time/-timeout and raft-client-queue-size must be positive".into()
            );
        }
        for (k, v) in &self.labels {
            if k.is_empty() || v.is_empty() {
                return Err(format!("invalid label {k:?}={v:?}: expected key=value"));
            }
        }
        for p in &self.test_controls.plant {
            if !PLANTABLE_BUGS.iter().any(|(name, _)| name == p) {
                let names: Vec<&str> = PLANTABLE_BUGS.iter().map(|(n, _)| *n).collect();
                return Err(format!("unknown bug to plant {p:?}: one of {}", names.join(", ")));
            }
        }
        Ok(())
    }
}

/// Parses `zone=z1,host=h1`.
pub fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(format!("invalid label {p:?}: expected key=value")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!("100ms".parse::<ReadableDuration>().unwrap().0, Duration::from_millis(100));
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("96KiB").unwrap(), 96 << 10);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn advertised_addresses_must_be_reachable() {
        let ok = NodeConfig { pd_endpoints: vec!["127.0.0.1:2379".into()], ..NodeConfig::default() };
        assert_eq!(ok.validate(), Ok(()));
        let status = NodeConfig { advertise_status_addr: "0.0.0.0:20180".into(), ..ok.clone() };
        assert!(status.validate().unwrap_err().contains("status address"));
        let named = NodeConfig { advertise_status_addr: "node1:20180".into(), ..ok };
        assert_eq!(named.validate(), Ok(()));
    }

    #[test]
    fn toml_overrides_defaults() {
        let c: NodeConfig = toml::from_str(
            "pd-endpoints = [\"127.0.0.1:2379\"]\n[raftstore]\nraft-base-tick-interval = \"50ms\"\n",
        )
        .unwrap();
        assert_eq!(c.raftstore.raft_base_tick_interval.0, Duration::from_millis(50));
        assert_eq!(c.raftstore.raft_election_timeout_ticks, 10);
        c.validate().unwrap();
        assert_eq!(c.raftstore.leader_lease(), Duration::from_millis(400));
        assert_eq!(c.server.grpc_concurrency, 0, "one thread per core unless set");
        let c: NodeConfig = toml::from_str("[server]\ngrpc-concurrency = 1\n").unwrap();
        assert_eq!(c.server.grpc_concurrency, 1);
        assert_eq!(c.raft_engine.enable, None, "the data dir's store, raft-engine for a new one");
        let c: NodeConfig = toml::from_str("[raft-engine]\nenable = false\n").unwrap();
        assert_eq!(c.raft_engine.enable, Some(false));
    }

    #[test]
    fn lease_longer_than_election_is_rejected() {
        let mut c = NodeConfig { pd_endpoints: vec!["x:1".into()], ..Default::default() };
        c.raftstore.raft_store_max_leader_lease = Some(ReadableDuration(Duration::from_secs(2)));
        assert!(c.validate().unwrap_err().contains("must not exceed 810 ms"));
    }

    #[test]
    fn a_peer_down_duration_shorter_than_store_pings_can_refresh_is_rejected() {
        let mut c = NodeConfig { pd_endpoints: vec!["x:1".into()], ..Default::default() };
        c.raftstore.max_peer_down_duration = ReadableDuration(Duration::from_millis(500));
        assert!(c.validate().unwrap_err().contains("max-peer-down-duration"));
        c.raftstore.max_peer_down_duration = ReadableDuration(Duration::from_secs(2));
        c.validate().unwrap();
    }

    #[test]
    fn lease_must_leave_a_drift_margin_below_the_shortest_election_wait() {
        let mut c = NodeConfig { pd_endpoints: vec!["x:1".into()], ..Default::default() };
        // 950 ms is shorter than the 1 s election timeout, but a follower may
        // elect after (10 − 1) × 100 ms = 900 ms: unsafe.
        c.raftstore.raft_store_max_leader_lease = Some(ReadableDuration(Duration::from_millis(950)));
        assert!(c.validate().is_err());
        // 890 ms fits in 900 ms but leaves no room for a slow clock.
        c.raftstore.raft_store_max_leader_lease = Some(ReadableDuration(Duration::from_millis(890)));
        assert!(c.validate().is_err());
        c.raftstore.raft_store_max_leader_lease = Some(ReadableDuration(Duration::from_millis(810)));
        c.validate().unwrap();
        // The default lease always passes.
        c.raftstore.raft_store_max_leader_lease = None;
        c.validate().unwrap();
    }

    #[test]
    fn test_controls_cannot_come_from_a_config_file() {
        let e = toml::from_str::<NodeConfig>(
            "pd-endpoints = [\"x:1\"]\n[test-controls]\nunsafe-stale-reads = true\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("test-controls"), "{e}");
        let e =
            toml::from_str::<NodeConfig>("test-controls = { enable-test-controls = true }\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        assert!(!NodeConfig::default().test_controls.any());
    }

    #[test]
    fn labels_parse() {
        assert_eq!(
            parse_labels("zone=z1, host=h1").unwrap(),
            vec![("zone".into(), "z1".into()), ("host".into(), "h1".into())]
        );
        assert!(parse_labels("zone").is_err());
    }
}
