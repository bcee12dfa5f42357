//! PD's configuration: one serde struct, filled from defaults, then the TOML
//! file given by `--config`, then command-line flags (later wins).
//!
//! Keys are kebab-case like PD's (`max-store-down-time`, `max-replicas`);
//! unknown keys are rejected so a typo does not silently keep a default.
//! [`Config::validate`] runs after the merge and explains every refusal.
//! The commented template lives in `deploy/config/pd.toml`.
//!
//! The `[schedule]` and `[replication]` sections can also be changed while
//! PD runs (`POST /pd/api/v1/config`, see [`update`]). Both are taken from
//! the file only once: the cluster's first leader persists them, and from
//! then on the persisted values (the same on every member) are in effect.

pub mod update;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use mnemo_raft_driver::duration::ReadableDuration;

/// Everything a PD member needs to start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// This member's name, unique in the PD cluster. Default `"pd"`.
    pub name: String,
    /// Directory of PD's metadata database (created if missing; must not be
    /// shared with another PD). Default `"default.pd"`.
    pub data_dir: PathBuf,
    /// URL the gRPC + HTTP listener binds, e.g. `http://127.0.0.1:2379`.
    /// Exactly one for now; port 0 picks a free port. Default
    /// `"http://127.0.0.1:2379"`.
    pub client_urls: String,
    /// URL clients are told to use (GetMembers, health). Empty means the same
    /// as `client-urls`; required when `client-urls` binds `0.0.0.0`/`::`.
    /// Default empty.
    pub advertise_client_urls: String,
    /// URL the PD-to-PD listener (raft messages of the PD group) binds; port
    /// 0 picks a free port (one-member tests). Default
    /// `"http://127.0.0.1:2380"`.
    pub peer_urls: String,
    /// Peer URL other members are told to use. Empty means `peer-urls`.
    /// Default empty.
    pub advertise_peer_urls: String,
    /// Initial members as `name=peer-url,...`, this member among them with
    /// its advertised peer URL; used on the first start only (the members
    /// are in the metadata afterwards). Empty means a one-member PD,
    /// `<name>=<advertise peer url>`. Default empty.
    pub initial_cluster: String,
    /// Client URLs of a running PD cluster, `http://host:port,...`: on its
    /// first start this member asks that cluster to add it (by name and
    /// advertised peer URL) and catches up from the leader. Ignored once the
    /// data dir holds PD raft state; not combined with `initial-cluster`.
    /// Default empty.
    pub join: String,
    /// One tick of the PD raft group; the leader heartbeats every tick.
    /// Default `"500ms"` (embedded etcd's default in PD).
    pub tick_interval: ReadableDuration,
    /// Election timeout of the PD raft group: a follower that heard nothing
    /// from the leader for this long (randomized up to twice) campaigns; a
    /// leader cut off from a quorum stops serving within it. At least 3
    /// ticks. Default `"3s"`.
    pub election_interval: ReadableDuration,
    /// Applied PD raft log entries kept before the log is compacted; a
    /// member further behind catches up by snapshot. Default 10000.
    pub raft_log_keep_entries: u64,
    /// Where the metadata lives and how the leader is elected: `"raft"`
    /// (the members' own raft group, metadata in each `data-dir`) or
    /// `"etcd"` (an existing etcd cluster at `etcd-endpoints` holds the
    /// metadata; the leader holds an etcd lease on a leader key; the peer
    /// URLs, `initial-cluster` and `join` are not used). Default `"raft"`.
    pub backend: Backend,
    /// `--backend etcd`: client URLs of the etcd cluster,
    /// `http://host:2379,...`. Default empty.
    pub etcd_endpoints: String,
    /// `--backend etcd`: key prefix of this PD cluster in etcd (several
    /// clusters may share one etcd under different prefixes). Default
    /// `"/mnemosyne"`.
    pub etcd_prefix: String,
    /// OTLP/gRPC collector to export traces to (`http://host:4317`), flag
    /// `--otlp-endpoint`. Default empty: no traces exported.
    pub otlp_endpoint: String,
    /// Share (0 to 1) of the traces this member starts that are exported,
    /// flag `--otlp-sample-ratio`; requests arriving with a trace context
    /// follow its sampled flag. Default 0.01.
    pub otlp_sample_ratio: f64,
    /// Logging.
    pub log: LogConfig,
    /// Scheduling: store liveness and operators.
    pub schedule: ScheduleConfig,
    /// Replica placement.
    pub replication: ReplicationConfig,
}

/// Where PD keeps its metadata (see [`Config::backend`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The members' own raft group.
    #[default]
    Raft,
    /// An external etcd cluster.
    Etcd,
}

/// `[log]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `"info"` or `"info,mnemo_pd=debug"`;
    /// `RUST_LOG` overrides it. Default `"info"`.
    pub level: String,
    /// `"text"` (human) or `"json"` (one object per line). Default `"text"`.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[schedule]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ScheduleConfig {
    /// A store without heartbeat for this long is Down and its replicas are
    /// rebuilt elsewhere. Duration string; at least `1s`. Default `"30m"`.
    /// Tests use seconds; in production a short value moves data on every
    /// restart.
    pub max_store_down_time: ReadableDuration,
    /// An operator not finished after this long is dropped (and may be
    /// created again by the checker). Covers adding a learner, i.e. one
    /// snapshot; at least `1s`. Leader transfers give up after at most 10 s.
    /// Default `"60s"`.
    pub operator_timeout: ReadableDuration,
    /// Most leader transfers of balance-leader and shuffle-leader in flight
    /// at once. 0 disables both. Default 4.
    pub leader_schedule_limit: u64,
    /// Most replica moves of balance-region and shuffle-region in flight at
    /// once. 0 disables both. Default 2048.
    pub region_schedule_limit: u64,
    /// Most replica-checker operators (add missing, remove extra, replace
    /// down or offline replicas, fix placement) in flight at once. 0
    /// disables the replica checker: nothing is repaired. Default 64.
    pub replica_schedule_limit: u64,
    /// Most new replicas being sent to one store at once: learners of PD's
    /// own operators not yet caught up (no new replica at all beyond), or
    /// snapshots the store reports receiving (no balancing move beyond).
    /// Default 64.
    pub max_snapshot_count: u64,
    /// Operators adding a peer to one store, per minute (PD's `store
    /// limit`, type `add-peer`): a token bucket per store holding up to a
    /// minute's worth. Scheduler and checker operators only; hand-made
    /// operators are not limited. 0 sends no new replica anywhere.
    /// `store-limit` overrides it per store. Default 15.0.
    pub store_limit_add_peer: f64,
    /// Operators removing a peer from one store, per minute (type
    /// `remove-peer`), as for `store-limit-add-peer`. Default 15.0.
    pub store_limit_remove_peer: f64,
    /// Per-store overrides of the two limits above, by store id:
    /// `[schedule.store-limit.4]` with `add-peer = 30.0`, `remove-peer =
    /// 30.0` (`pd-ctl store limit 4 30`). Default empty.
    pub store_limit: BTreeMap<String, StoreLimitConfig>,
    /// Per-store weights, by store id: `[schedule.store-weight.4]` with
    /// `leader = 2.0`, `region = 1.0` (`pd-ctl store weight 4 2 1`). A
    /// store's leader count and region size are divided by its weights
    /// before balancing compares stores, so weight 2 holds about twice as
    /// much. Weights are > 0; a store left out weighs 1 and 1. Default empty.
    pub store_weight: BTreeMap<String, StoreWeightConfig>,
    /// A store whose disk is fuller than this (1 - available / capacity)
    /// receives no replica from balancing, and one from a repair only when
    /// no other store will do (PD's `low-space-ratio`). In (0, 1]. Default
    /// 0.8.
    pub low_space_ratio: f64,
    /// How often the patrol runs: it drops expired operators, runs the
    /// replica checker over the next 128 regions and lets the active
    /// schedulers propose operators (balance-leader and balance-region up to
    /// 4 each, shuffle-leader and shuffle-region 1 each). At least `10ms`.
    /// Default `"100ms"`. (PD's default is 10 ms, for checkers only.)
    pub patrol_region_interval: ReadableDuration,
}

/// One store's limits (see [`ScheduleConfig::store_limit`]); a type left
/// out follows the default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct StoreLimitConfig {
    /// Peers added per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_peer: Option<f64>,
    /// Peers removed per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remove_peer: Option<f64>,
}

/// One store's weights (see [`ScheduleConfig::store_weight`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct StoreWeightConfig {
    /// Divides the store's leader count.
    pub leader: f64,
    /// Divides the store's region size.
    pub region: f64,
}

impl Default for StoreWeightConfig {
    fn default() -> Self {
        StoreWeightConfig { leader: 1.0, region: 1.0 }
    }
}

/// Smallest store weight accepted: a score is counts × 1000 / weight, and
/// weights this far apart already mean a 10^6 to 1 share.
pub const MIN_STORE_WEIGHT: f64 = 0.001;
/// Largest store weight accepted.
pub const MAX_STORE_WEIGHT: f64 = 1000.0;

/// `[replication]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Voters per region. 1..=9; odd numbers tolerate the most failures per
    /// replica. Default 3.
    pub max_replicas: u64,
    /// Store label keys from the widest failure domain to the narrowest, e.g.
    /// `["zone", "rack", "host"]`; replicas spread over the widest level
    /// possible. Default empty (labels ignored except `host`: two replicas
    /// never share a `host` value).
    pub location_labels: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "pd".into(),
            data_dir: PathBuf::from("default.pd"),
            client_urls: "http://127.0.0.1:2379".into(),
            advertise_client_urls: String::new(),
            peer_urls: "http://127.0.0.1:2380".into(),
            advertise_peer_urls: String::new(),
            initial_cluster: String::new(),
            join: String::new(),
            tick_interval: ReadableDuration(Duration::from_millis(500)),
            election_interval: ReadableDuration::secs(3),
            raft_log_keep_entries: 10_000,
            backend: Backend::Raft,
            etcd_endpoints: String::new(),
            etcd_prefix: "/mnemosyne".into(),
            otlp_endpoint: String::new(),
            otlp_sample_ratio: mnemo_telemetry::DEFAULT_SAMPLE_RATIO,
            log: LogConfig::default(),
            schedule: ScheduleConfig::default(),
            replication: ReplicationConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            max_store_down_time: ReadableDuration::minutes(30),
            operator_timeout: ReadableDuration::secs(60),
            leader_schedule_limit: 4,
            region_schedule_limit: 2048,
            replica_schedule_limit: 64,
            max_snapshot_count: 64,
            store_limit_add_peer: 15.0,
            store_limit_remove_peer: 15.0,
            store_limit: BTreeMap::new(),
            store_weight: BTreeMap::new(),
            low_space_ratio: 0.8,
            patrol_region_interval: ReadableDuration(Duration::from_millis(100)),
        }
    }
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig { max_replicas: 3, location_labels: Vec::new() }
    }
}

/// Command-line flags of `mnemo-pd` (PD's names). Every flag overrides the
/// config file.
#[derive(Clone, Debug, Default, clap::Parser)]
#[command(name = "mnemo-pd", version, about = "Mnemosyne placement driver")]
pub struct Flags {
    /// TOML config file (see deploy/config/pd.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Member name (`name`).
    #[arg(long)]
    pub name: Option<String>,
    /// Metadata directory (`data-dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Listen URL for gRPC and HTTP (`client-urls`).
    #[arg(long)]
    pub client_urls: Option<String>,
    /// URL given to clients (`advertise-client-urls`).
    #[arg(long)]
    pub advertise_client_urls: Option<String>,
    /// PD-to-PD URL (`peer-urls`).
    #[arg(long)]
    pub peer_urls: Option<String>,
    /// Peer URL given to other members (`advertise-peer-urls`).
    #[arg(long)]
    pub advertise_peer_urls: Option<String>,
    /// `name=peer-url,...` (`initial-cluster`).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Client URLs of a running PD cluster to join (`join`).
    #[arg(long)]
    pub join: Option<String>,
    /// Metadata backend (`backend`): raft or etcd.
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// etcd client URLs for `--backend etcd` (`etcd-endpoints`).
    #[arg(long)]
    pub etcd_endpoints: Option<String>,
    /// Key prefix in etcd (`etcd-prefix`).
    #[arg(long)]
    pub etcd_prefix: Option<String>,
    /// Log format (`log.format`).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Export traces to this OTLP/gRPC collector (`otlp-endpoint`).
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// Share of the traces this member starts that are exported (`otlp-sample-ratio`).
    #[arg(long)]
    pub otlp_sample_ratio: Option<f64>,
}

impl Config {
    /// Defaults, then the file named by `flags.config`, then the flags;
    /// validated.
    pub fn load(flags: &Flags) -> Result<Config> {
        let mut config = match &flags.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply_flags(flags);
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML file (missing keys keep their defaults). Not validated.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Overrides fields with the flags that were given.
    pub fn apply_flags(&mut self, flags: &Flags) {
        fn set<T: Clone>(field: &mut T, flag: &Option<T>) {
            if let Some(v) = flag {
                *field = v.clone();
            }
        }
        set(&mut self.name, &flags.name);
        set(&mut self.data_dir, &flags.data_dir);
        set(&mut self.client_urls, &flags.client_urls);
        set(&mut self.advertise_client_urls, &flags.advertise_client_urls);
        set(&mut self.peer_urls, &flags.peer_urls);
        set(&mut self.advertise_peer_urls, &flags.advertise_peer_urls);
        set(&mut self.initial_cluster, &flags.initial_cluster);
        set(&mut self.join, &flags.join);
        set(&mut self.backend, &flags.backend);
        set(&mut self.etcd_endpoints, &flags.etcd_endpoints);
        set(&mut self.etcd_prefix, &flags.etcd_prefix);
        set(&mut self.log.format, &flags.log_format);
        set(&mut self.otlp_endpoint, &flags.otlp_endpoint);
        set(&mut self.otlp_sample_ratio, &flags.otlp_sample_ratio);
    }

    /// Where traces go (see `mnemo_telemetry`).
    pub fn trace(&self) -> mnemo_telemetry::TraceConfig {
        mnemo_telemetry::TraceConfig {
            otlp_endpoint: Some(self.otlp_endpoint.clone()),
            sample_ratio: self.otlp_sample_ratio,
        }
    }

    /// A config for tests: data in `data_dir`, listening on a free loopback
    /// port, everything else default.
    pub fn for_tests(data_dir: &Path) -> Config {
        Config {
            data_dir: data_dir.to_path_buf(),
            client_urls: "http://127.0.0.1:0".into(),
            peer_urls: "http://127.0.0.1:0".into(),
            tick_interval: ReadableDuration(Duration::from_millis(100)),
            election_interval: ReadableDuration::secs(1),
            ..Config::default()
        }
    }

    /// Checks every field; the error names the key and what to do.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        self.trace().validate().map_err(Error::Config)?;
        if self.name.is_empty() || self.name.contains([',', '=', ' ']) {
            return bad(format!("name {:?} must be non-empty without ',', '=' or spaces", self.name));
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data-dir must not be empty".into());
        }
        let client = self.listen_url()?;
        let advertised = self.advertise_client_url()?;
        if advertised.is_unspecified() {
            return bad(if self.advertise_client_urls.is_empty() {
                format!(
                    "client-urls {client} binds every interface; set advertise-client-urls to an \
                     address clients can reach"
                )
            } else {
                format!("advertise-client-urls {advertised} is not an address clients can reach")
            });
        }
        let peer = self.advertise_peer_url()?;
        if self.backend == Backend::Etcd {
            if self.etcd_endpoints().is_empty() {
                return bad("backend etcd needs etcd-endpoints (http://host:2379,...)".into());
            }
            if !self.join.trim().is_empty() || !self.initial_cluster.trim().is_empty() {
                return bad(
                    "join and initial-cluster belong to the raft backend: with backend etcd, members \
                     find each other in etcd"
                        .into(),
                );
            }
            if !self.etcd_prefix.starts_with('/') || self.etcd_prefix.ends_with('/') {
                return bad(format!(
                    "etcd-prefix {:?} must start with '/' and not end with one",
                    self.etcd_prefix
                ));
            }
        }
        if !self.join.trim().is_empty() && !self.initial_cluster.trim().is_empty() {
            return bad("join and initial-cluster exclude each other: give one".into());
        }
        if !self.join.trim().is_empty() && self.advertise_peer_url()?.port == 0 {
            return bad(
                "a joining member needs a fixed peer port (its identity derives from it), not 0".into()
            );
        }
        let members = self.initial_members()?;
        for (i, (name, url)) in members.iter().enumerate() {
            if members[..i].iter().any(|(n, u)| n == name || u == url) {
                return bad(format!("initial-cluster lists {name} or {url} twice"));
            }
        }
        match members.iter().find(|(name, _)| name == &self.name) {
            None => return bad(format!("initial-cluster does not list this member, {:?}", self.name)),
            Some((name, url)) if url != &peer => {
                return bad(format!(
                    "initial-cluster gives {name} the peer URL {url}, but its peer URL is {peer}"
                ))
            }
            Some(_) => {}
        }
        if self.tick_interval.0 < Duration::from_millis(10) {
            return bad("tick-interval must be at least 10ms".into());
        }
        if self.election_interval.0 < self.tick_interval.0 * 3 {
            return bad("election-interval must be at least 3 tick-intervals".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return bad(format!("log.level {:?} is not a valid filter (try \"info\")", self.log.level));
        }
        if self.schedule.max_store_down_time.0 < Duration::from_secs(1) {
            return bad("schedule.max-store-down-time must be at least 1s".into());
        }
        if self.schedule.operator_timeout.0 < Duration::from_secs(1) {
            return bad("schedule.operator-timeout must be at least 1s".into());
        }
        if self.schedule.patrol_region_interval.0 < Duration::from_millis(10) {
            return bad("schedule.patrol-region-interval must be at least 10ms".into());
        }
        let rate_ok = |r: f64| r.is_finite() && r >= 0.0;
        let s = &self.schedule;
        if !rate_ok(s.store_limit_add_peer) || !rate_ok(s.store_limit_remove_peer) {
            return bad(
                "schedule.store-limit-add-peer and -remove-peer must be rates >= 0 (per minute)".into()
            );
        }
        for (store, l) in &s.store_limit {
            let ok = |r: Option<f64>| r.is_none_or(rate_ok);
            if store.parse::<u64>().is_err() || !ok(l.add_peer) || !ok(l.remove_peer) {
                return bad(format!(
                    "schedule.store-limit.{store}: keys are store ids, add-peer and remove-peer rates >= 0"
                ));
            }
        }
        for (store, w) in &s.store_weight {
            let ok = |v: f64| (MIN_STORE_WEIGHT..=MAX_STORE_WEIGHT).contains(&v);
            if store.parse::<u64>().is_err() || !ok(w.leader) || !ok(w.region) {
                return bad(format!(
                    "schedule.store-weight.{store}: keys are store ids, leader and region weights in \
                     [{MIN_STORE_WEIGHT}, {MAX_STORE_WEIGHT}]"
                ));
            }
        }
        if !(s.low_space_ratio > 0.0 && s.low_space_ratio <= 1.0) {
            return bad(format!("schedule.low-space-ratio {} must be in (0, 1]", s.low_space_ratio));
        }
        if !(1..=9).contains(&self.replication.max_replicas) {
            return bad(format!(
                "replication.max-replicas {} must be in 1..=9",
                self.replication.max_replicas
            ));
        }
        let labels = &self.replication.location_labels;
        for (i, l) in labels.iter().enumerate() {
            if l.is_empty() || labels[..i].contains(l) {
                return bad(format!(
                    "replication.location-labels {labels:?}: labels must be non-empty and unique"
                ));
            }
        }
        Ok(())
    }

    /// The URL the listener binds.
    pub fn listen_url(&self) -> Result<HttpUrl> {
        one_url("client-urls", &self.client_urls)
    }

    /// The client URL this member advertises.
    pub fn advertise_client_url(&self) -> Result<HttpUrl> {
        if self.advertise_client_urls.is_empty() {
            self.listen_url()
        } else {
            one_url("advertise-client-urls", &self.advertise_client_urls)
        }
    }

    /// The URL the peer listener binds.
    pub fn peer_listen_url(&self) -> Result<HttpUrl> {
        one_url("peer-urls", &self.peer_urls)
    }

    /// The peer URL this member advertises.
    pub fn advertise_peer_url(&self) -> Result<HttpUrl> {
        if self.advertise_peer_urls.is_empty() {
            one_url("peer-urls", &self.peer_urls)
        } else {
            one_url("advertise-peer-urls", &self.advertise_peer_urls)
        }
    }

    /// `etcd-endpoints` as a list (`http://` added where missing).
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd_endpoints
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| if u.contains("://") { u.to_owned() } else { format!("http://{u}") })
            .collect()
    }

    /// `initial-cluster` as (name, peer URL) pairs.
    pub fn initial_members(&self) -> Result<Vec<(String, HttpUrl)>> {
        if self.initial_cluster.trim().is_empty() {
            return Ok(vec![(self.name.clone(), self.advertise_peer_url()?)]);
        }
        self.initial_cluster
            .split(',')
            .map(|entry| {
                let (name, url) = entry.trim().split_once('=').ok_or_else(|| {
                    Error::Config(format!("initial-cluster entry {entry:?} is not name=url"))
                })?;
                Ok((name.to_owned(), HttpUrl::parse("initial-cluster", url)?))
            })
            .collect()
    }
}

fn one_url(key: &str, value: &str) -> Result<HttpUrl> {
    let urls: Vec<&str> = value.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    match urls.as_slice() {
        [one] => HttpUrl::parse(key, one),
        [] => Err(Error::Config(format!("{key} must not be empty"))),
        _ => Err(Error::Config(format!("{key} {value:?}: only one URL is supported for now"))),
    }
}

/// A plain `http://host:port` URL (no TLS yet, no path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// TCP port; 0 means "any free port" when binding.
    pub port: u16,
}

impl HttpUrl {
    /// Parses `http://host:port` or `host:port`; `key` names the config key
    /// in errors.
    pub fn parse(key: &str, s: &str) -> Result<HttpUrl> {
        let err = |why: &str| Error::Config(format!("{key}: {s:?} {why}"));
        if s.starts_with("https://") {
            return Err(err("uses https, which is not supported yet"));
        }
        let rest = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
        if rest.contains('/') {
            return Err(err("must not have a path"));
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("needs a port (http://host:port)"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(err("needs a host"));
        }
        let port = port.parse().map_err(|_| err("has an invalid port"))?;
        Ok(HttpUrl { host: host.to_owned(), port })
    }

    /// True for `0.0.0.0` and `::`, which clients cannot dial.
    pub fn is_unspecified(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified())
    }

    /// `host:port` for binding or dialing (IPv6 in brackets).
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.host_port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        use clap::Parser;
        Flags::parse_from(std::iter::once("mnemo-pd").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::default().schedule.max_store_down_time.0, Duration::from_secs(1800));
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pd.toml");
        std::fs::write(
            &path,
            "name = \"a\"\ninitial-cluster = \"pd1=http://127.0.0.1:2380\"\n\
             [schedule]\nmax-store-down-time = \"5s\"\n[replication]\nmax-replicas = 5\n",
        )
        .unwrap();
        let c = Config::load(&flags(&["--config", path.to_str().unwrap(), "--name", "pd1"])).unwrap();
        assert_eq!(c.name, "pd1");
        assert_eq!(c.schedule.max_store_down_time.0, Duration::from_secs(5));
        assert_eq!(c.replication.max_replicas, 5);
    }

    #[test]
    fn the_deploy_template_holds_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/pd.toml");
        assert_eq!(Config::from_file(&path).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Config>("[replication]\nmax-replica = 3\n").unwrap_err();
        assert!(err.to_string().contains("max-replica"), "{err}");
    }

    #[test]
    fn refuses_unreachable_advertise_and_clusters_without_this_member() {
        let wildcard = Config { client_urls: "http://0.0.0.0:2379".into(), ..Config::default() };
        assert!(wildcard.validate().unwrap_err().to_string().contains("advertise-client-urls"));
        let ok = Config { advertise_client_urls: "http://10.0.0.1:2379".into(), ..wildcard };
        ok.validate().unwrap();

        let three = Config {
            name: "pd1".into(),
            initial_cluster: "pd1=http://127.0.0.1:2380,pd2=http://127.0.0.1:2381,pd3=http://127.0.0.1:2382"
                .into(),
            ..Config::default()
        };
        three.validate().unwrap();
        let stranger = Config { name: "pd4".into(), ..three.clone() };
        assert!(stranger.validate().unwrap_err().to_string().contains("does not list"));
        let moved = Config { peer_urls: "http://127.0.0.1:2390".into(), ..three };
        assert!(moved.validate().unwrap_err().to_string().contains("peer URL"));
    }

    #[test]
    fn urls_parse() {
        let u = HttpUrl::parse("k", "http://[::1]:2379").unwrap();
        assert_eq!(u.host_port(), "[::1]:2379");
        assert_eq!(HttpUrl::parse("k", "pd:2379").unwrap().to_string(), "http://pd:2379");
        assert!(HttpUrl::parse("k", "http://pd").is_err());
        assert!(HttpUrl::parse("k", "https://pd:1").is_err());
    }
}
