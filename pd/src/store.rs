//! Stores (storage nodes) as PD sees them: the registered record, which is
//! replicated metadata, and the heartbeat-fed runtime view, which is not.
//!
//! A store's *state* (`Up`, `Offline`, `Tombstone`) is set by operators and
//! persisted. Its *status* adds liveness derived from heartbeats: an `Up`
//! store silent for [`DISCONNECTED_AFTER`] is `Disconnected` (no new
//! replicas go there) and after `schedule.max-store-down-time` it is `Down`
//! (its replicas are rebuilt elsewhere).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mnemo_proto::metapb;
use mnemo_proto::pdpb;
use mnemo_proto::types::StoreId;

/// A store silent for this long is `Disconnected`: still a member, but no
/// target for new replicas. Fixed, like PD's.
pub const DISCONNECTED_AFTER: Duration = Duration::from_secs(20);

/// The persisted lifecycle state of a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreState {
    /// Serving.
    #[default]
    Up,
    /// Being drained: its replicas move away, then it becomes `Tombstone`.
    Offline,
    /// Removed for good; may never register or heartbeat again.
    Tombstone,
}

impl StoreState {
    /// PD's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            StoreState::Up => "Up",
            StoreState::Offline => "Offline",
            StoreState::Tombstone => "Tombstone",
        }
    }

    /// Parses PD's name (case-insensitive).
    pub fn parse(s: &str) -> Option<StoreState> {
        [StoreState::Up, StoreState::Offline, StoreState::Tombstone]
            .into_iter()
            .find(|st| st.name().eq_ignore_ascii_case(s))
    }
}

/// A registered store: what `PutStore` and state changes write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreMeta {
    /// PD-allocated id.
    pub id: StoreId,
    /// gRPC address clients and peers dial (`host:port`).
    pub address: String,
    /// Lifecycle state.
    pub state: StoreState,
    /// Labels such as `zone`, `rack`, `host` (key → value).
    pub labels: BTreeMap<String, String>,
    /// The node's version string.
    pub version: String,
    /// Address of raft peer traffic if different from `address` (may be empty).
    pub peer_address: String,
    /// Address of the node's HTTP status server (may be empty).
    pub status_address: String,
    /// Git hash of the node binary (may be empty).
    pub git_hash: String,
    /// When the node process started, seconds since the Unix epoch.
    pub start_timestamp: i64,
    /// The node's deploy directory (may be empty).
    pub deploy_path: String,
}

impl StoreMeta {
    /// The value of label `key`, if set.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// Statistics from the latest store heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Disk capacity, bytes.
    pub capacity: u64,
    /// Free disk space, bytes.
    pub available: u64,
    /// Bytes used by the node's data.
    pub used_size: u64,
    /// Regions the node hosts (its own count; PD's map has another).
    pub region_count: u32,
    /// Snapshots being sent.
    pub sending_snap_count: u32,
    /// Snapshots being received.
    pub receiving_snap_count: u32,
    /// Snapshots being applied.
    pub applying_snap_count: u32,
    /// The node reports itself overloaded.
    pub is_busy: bool,
    /// Process start, seconds since the Unix epoch.
    pub start_time: u32,
    /// Bytes written during the last interval.
    pub bytes_written: u64,
    /// Keys written during the last interval.
    pub keys_written: u64,
    /// Bytes read during the last interval.
    pub bytes_read: u64,
    /// Keys read during the last interval.
    pub keys_read: u64,
    /// Length of that interval, seconds (0: not reported).
    pub interval_secs: u64,
}

impl StoreStats {
    /// Read and write flow per second over the last interval.
    pub fn flow_rates(&self) -> FlowRates {
        FlowRates::over(
            [self.bytes_read, self.keys_read, self.bytes_written, self.keys_written],
            self.interval_secs,
        )
    }
}

/// Read and write flow per second, from the counts of one heartbeat
/// interval (a store's or a region's).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct FlowRates {
    /// Bytes read per second.
    pub read_bytes_per_sec: f64,
    /// Keys read per second.
    pub read_keys_per_sec: f64,
    /// Bytes written per second.
    pub written_bytes_per_sec: f64,
    /// Keys written per second.
    pub written_keys_per_sec: f64,
}

impl FlowRates {
    /// `[bytes read, keys read, bytes written, keys written]` over
    /// `interval_secs` (an unreported interval counts as 1 s).
    pub fn over(counts: [u64; 4], interval_secs: u64) -> FlowRates {
        let secs = interval_secs.max(1) as f64;
        let [rb, rk, wb, wk] = counts.map(|c| c as f64 / secs);
        FlowRates {
            read_bytes_per_sec: rb,
            read_keys_per_sec: rk,
            written_bytes_per_sec: wb,
            written_keys_per_sec: wk,
        }
    }
}

/// Seconds covered by a heartbeat's `interval` (0 when absent or inverted).
pub fn interval_secs(i: Option<&pdpb::TimeInterval>) -> u64 {
    i.map_or(0, |i| i.end_timestamp.saturating_sub(i.start_timestamp))
}

/// Liveness and lifecycle combined, as shown by the HTTP API (`state_name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreStatus {
    /// Up and heartbeating.
    Up,
    /// Up, but no heartbeat for [`DISCONNECTED_AFTER`].
    Disconnected,
    /// Up, but no heartbeat for `max-store-down-time`: replicas are rebuilt.
    Down,
    /// Being drained.
    Offline,
    /// Gone for good.
    Tombstone,
}

impl StoreStatus {
    /// PD's display name.
    pub fn name(self) -> &'static str {
        match self {
            StoreStatus::Up => "Up",
            StoreStatus::Disconnected => "Disconnected",
            StoreStatus::Down => "Down",
            StoreStatus::Offline => "Offline",
            StoreStatus::Tombstone => "Tombstone",
        }
    }
}

/// A store: persisted record plus heartbeat runtime.
#[derive(Clone, Debug, Default)]
pub struct StoreInfo {
    /// The registered record (replicated).
    pub meta: StoreMeta,
    /// Latest heartbeat statistics; `None` until the first heartbeat since
    /// this PD started.
    pub stats: Option<StoreStats>,
    /// When the latest heartbeat arrived; `None` as for `stats`.
    pub last_heartbeat: Option<SystemTime>,
}

impl StoreInfo {
    /// Status at `now`. `alive_since` is when this PD started serving: a
    /// store not heard from since then is given that much grace, so a PD
    /// restart does not declare every store Down.
    pub fn status(&self, now: SystemTime, alive_since: SystemTime, max_down: Duration) -> StoreStatus {
        match self.meta.state {
            StoreState::Tombstone => return StoreStatus::Tombstone,
            StoreState::Offline => return StoreStatus::Offline,
            StoreState::Up => {}
        }
        let silent = self.silent_for(now, alive_since);
        if silent >= max_down {
            StoreStatus::Down
        } else if silent >= DISCONNECTED_AFTER {
            StoreStatus::Disconnected
        } else {
            StoreStatus::Up
        }
    }

    /// Time since the last sign of life (heartbeat or `alive_since`).
    pub fn silent_for(&self, now: SystemTime, alive_since: SystemTime) -> Duration {
        let last = self.last_heartbeat.map_or(alive_since, |hb| hb.max(alive_since));
        now.duration_since(last).unwrap_or_default()
    }

    /// True if a heartbeat arrived within [`DISCONNECTED_AFTER`] of `now`.
    pub fn recently_heartbeated(&self, now: SystemTime) -> bool {
        self.last_heartbeat.is_some_and(|hb| now.duration_since(hb).unwrap_or_default() < DISCONNECTED_AFTER)
    }
}

// ---- conversions at the edge ----

impl From<&metapb::Store> for StoreMeta {
    fn from(s: &metapb::Store) -> Self {
        let state = match metapb::StoreState::try_from(s.state) {
            Ok(metapb::StoreState::Offline) => StoreState::Offline,
            Ok(metapb::StoreState::Tombstone) => StoreState::Tombstone,
            _ => StoreState::Up,
        };
        StoreMeta {
            id: StoreId(s.id),
            address: s.address.clone(),
            state,
            labels: s.labels.iter().map(|l| (l.key.clone(), l.value.clone())).collect(),
            version: s.version.clone(),
            peer_address: s.peer_address.clone(),
            status_address: s.status_address.clone(),
            git_hash: s.git_hash.clone(),
            start_timestamp: s.start_timestamp,
            deploy_path: s.deploy_path.clone(),
        }
    }
}

impl From<&StoreMeta> for metapb::Store {
    fn from(s: &StoreMeta) -> Self {
        let state = match s.state {
            StoreState::Up => metapb::StoreState::Up,
            StoreState::Offline => metapb::StoreState::Offline,
            StoreState::Tombstone => metapb::StoreState::Tombstone,
        };
        metapb::Store {
            id: s.id.0,
            address: s.address.clone(),
            state: state as i32,
            labels: s
                .labels
                .iter()
                .map(|(k, v)| metapb::StoreLabel { key: k.clone(), value: v.clone() })
                .collect(),
            version: s.version.clone(),
            peer_address: s.peer_address.clone(),
            status_address: s.status_address.clone(),
            git_hash: s.git_hash.clone(),
            start_timestamp: s.start_timestamp,
            deploy_path: s.deploy_path.clone(),
            ..Default::default()
        }
    }
}

impl StoreInfo {
    /// The wire record, with `last_heartbeat` in Unix nanoseconds as PD sends it.
    pub fn to_wire(&self) -> metapb::Store {
        let mut s = metapb::Store::from(&self.meta);
        s.last_heartbeat = self.last_heartbeat.map_or(0, unix_nanos);
        s
    }
}

/// Nanoseconds since the Unix epoch (0 before it).
pub fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

impl From<&pdpb::StoreStats> for StoreStats {
    fn from(s: &pdpb::StoreStats) -> Self {
        StoreStats {
            capacity: s.capacity,
            available: s.available,
            used_size: s.used_size,
            region_count: s.region_count,
            sending_snap_count: s.sending_snap_count,
            receiving_snap_count: s.receiving_snap_count,
            applying_snap_count: s.applying_snap_count,
            is_busy: s.is_busy,
            start_time: s.start_time,
            bytes_written: s.bytes_written,
            keys_written: s.keys_written,
            bytes_read: s.bytes_read,
            keys_read: s.keys_read,
            interval_secs: interval_secs(s.interval.as_ref()),
        }
    }
}

impl StoreStats {
    /// The wire form for `GetStore`.
    pub fn to_wire(&self, store: StoreId) -> pdpb::StoreStats {
        pdpb::StoreStats {
            store_id: store.0,
            capacity: self.capacity,
            available: self.available,
            used_size: self.used_size,
            region_count: self.region_count,
            sending_snap_count: self.sending_snap_count,
            receiving_snap_count: self.receiving_snap_count,
            applying_snap_count: self.applying_snap_count,
            is_busy: self.is_busy,
            start_time: self.start_time,
            bytes_written: self.bytes_written,
            keys_written: self.keys_written,
            bytes_read: self.bytes_read,
            keys_read: self.keys_read,
            interval: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_heartbeats() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let max_down = Duration::from_secs(60);
        let mut s = StoreInfo { last_heartbeat: Some(t0), ..Default::default() };
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(s.status(at(5), t0, max_down), StoreStatus::Up);
        assert_eq!(s.status(at(25), t0, max_down), StoreStatus::Disconnected);
        assert_eq!(s.status(at(61), t0, max_down), StoreStatus::Down);
        s.meta.state = StoreState::Offline;
        assert_eq!(s.status(at(61), t0, max_down), StoreStatus::Offline);
    }

    #[test]
    fn a_restarted_pd_gives_silent_stores_grace() {
        let started = UNIX_EPOCH + Duration::from_secs(5_000);
        let s = StoreInfo::default();
        let status = s.status(started + Duration::from_secs(10), started, Duration::from_secs(60));
        assert_eq!(status, StoreStatus::Up);
        assert!(!s.recently_heartbeated(started));
    }

    #[test]
    fn store_round_trips_through_wire() {
        let meta = StoreMeta {
            id: StoreId(4),
            address: "n4:20160".into(),
            state: StoreState::Offline,
            labels: [("host".to_owned(), "h1".to_owned())].into(),
            ..Default::default()
        };
        assert_eq!(StoreMeta::from(&metapb::Store::from(&meta)), meta);
    }
}
