//! JSON shapes of the HTTP API, modelled on PD's (`/pd/api/v1/...`).
//!
//! Differences from PD, on purpose: byte quantities (`capacity`,
//! `available`, `used_size`) are numbers of bytes, not strings like
//! `"1.8TiB"`; an unknown leader is `null` rather than an empty peer.
//! Keys are uppercase hex, as PD prints them; `approximate_size` is MiB,
//! as in PD.

use serde::Serialize;

use crate::cluster::ClusterView;
use crate::member::Member;
use crate::region_map::RegionInfo;
use crate::schedule::Operator;
use crate::store::{unix_nanos, FlowRates, StoreInfo};
use crate::time::format_rfc3339_ms;
use mnemo_proto::types::{Peer, PeerRole};
use mnemo_raft_driver::duration::ReadableDuration;

/// A key as PD's HTTP API prints it: uppercase hex.
pub fn hex_key(key: &[u8]) -> String {
    hex::encode_upper(key)
}

#[derive(Serialize)]
pub(super) struct Stores {
    pub(super) count: usize,
    pub(super) stores: Vec<Store>,
}

#[derive(Serialize)]
pub(super) struct Store {
    store: StoreMeta,
    status: StoreStatus,
}

#[derive(Serialize)]
struct StoreMeta {
    id: u64,
    address: String,
    state_name: &'static str,
    labels: Vec<Label>,
    version: String,
    peer_address: String,
    status_address: String,
    git_hash: String,
    start_timestamp: i64,
    deploy_path: String,
    /// Unix nanoseconds of the last heartbeat (0: none since PD started).
    last_heartbeat: i64,
}

#[derive(Serialize)]
struct Label {
    key: String,
    value: String,
}

#[derive(Serialize)]
struct StoreStatus {
    capacity: u64,
    available: u64,
    used_size: u64,
    leader_count: usize,
    /// Divides the leader count in balance-leader's score.
    leader_weight: f64,
    region_count: usize,
    /// Divides the region size in balance-region's score.
    region_weight: f64,
    /// Sum of the region weights (approximate size in MiB, at least 1 per
    /// region): balance-region's score.
    region_size: u64,
    sending_snap_count: u32,
    receiving_snap_count: u32,
    applying_snap_count: u32,
    is_busy: bool,
    /// Flow over the store's last heartbeat interval, per second.
    #[serde(flatten)]
    flow: FlowRates,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_ts: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_heartbeat_ts: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uptime: Option<String>,
}

pub(super) fn store(info: &StoreInfo, view: &ClusterView<'_>) -> Store {
    let id = info.meta.id;
    let regions = view.state.regions();
    let max_down = view.config.schedule.max_store_down_time.0;
    let stats = info.stats.clone().unwrap_or_default();
    let weight = view.config.schedule.store_weight.get(&id.0.to_string()).cloned().unwrap_or_default();
    let start = (stats.start_time > 0)
        .then(|| std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(stats.start_time)));
    Store {
        store: StoreMeta {
            id: id.0,
            address: info.meta.address.clone(),
            state_name: info.status(view.now, view.alive_since, max_down).name(),
            labels: info
                .meta
                .labels
                .iter()
                .map(|(k, v)| Label { key: k.clone(), value: v.clone() })
                .collect(),
            version: info.meta.version.clone(),
            peer_address: info.meta.peer_address.clone(),
            status_address: info.meta.status_address.clone(),
            git_hash: info.meta.git_hash.clone(),
            start_timestamp: info.meta.start_timestamp,
            deploy_path: info.meta.deploy_path.clone(),
            last_heartbeat: info.last_heartbeat.map_or(0, unix_nanos),
        },
        status: StoreStatus {
            capacity: stats.capacity,
            available: stats.available,
            used_size: stats.used_size,
            leader_count: regions.store_leader_count(id),
            leader_weight: weight.leader,
            region_count: regions.store_region_count(id),
            region_weight: weight.region,
            region_size: regions.store_region_weight(id),
            sending_snap_count: stats.sending_snap_count,
            receiving_snap_count: stats.receiving_snap_count,
            applying_snap_count: stats.applying_snap_count,
            is_busy: stats.is_busy,
            flow: stats.flow_rates(),
            start_ts: start.map(format_rfc3339_ms),
            last_heartbeat_ts: info.last_heartbeat.map(format_rfc3339_ms),
            uptime: start
                .and_then(|s| view.now.duration_since(s).ok())
                .map(|d| ReadableDuration(std::time::Duration::from_secs(d.as_secs())).to_string()),
        },
    }
}

#[derive(Serialize)]
pub(super) struct Regions {
    pub(super) count: usize,
    pub(super) regions: Vec<Region>,
}

#[derive(Serialize)]
pub(super) struct Region {
    id: u64,
    start_key: String,
    end_key: String,
    epoch: Epoch,
    peers: Vec<PeerJson>,
    leader: Option<PeerJson>,
    down_peers: Vec<DownPeer>,
    pending_peers: Vec<PeerJson>,
    written_bytes: u64,
    read_bytes: u64,
    written_keys: u64,
    read_keys: u64,
    /// MiB, as PD reports it.
    approximate_size: u64,
    approximate_keys: u64,
    /// Flow over the leader's last heartbeat interval, per second.
    #[serde(flatten)]
    flow: FlowRates,
}

#[derive(Serialize)]
struct Epoch {
    conf_ver: u64,
    version: u64,
}

#[derive(Serialize)]
struct PeerJson {
    id: u64,
    store_id: u64,
    role_name: &'static str,
}

#[derive(Serialize)]
struct DownPeer {
    peer: PeerJson,
    down_seconds: u64,
}

fn peer(p: &Peer) -> PeerJson {
    let role_name = match p.role {
        PeerRole::Voter => "Voter",
        PeerRole::Learner => "Learner",
    };
    PeerJson { id: p.id.0, store_id: p.store_id.0, role_name }
}

pub(super) fn region(info: &RegionInfo) -> Region {
    let (r, rt) = (&info.region, &info.runtime);
    Region {
        id: r.id.0,
        start_key: hex_key(&r.start_key),
        end_key: hex_key(&r.end_key),
        epoch: Epoch { conf_ver: r.epoch.conf_ver, version: r.epoch.version },
        peers: r.peers.iter().map(peer).collect(),
        leader: info.leader().as_ref().map(peer),
        down_peers: rt
            .down_peers
            .iter()
            .map(|d| DownPeer { peer: peer(&d.peer), down_seconds: d.down_seconds })
            .collect(),
        pending_peers: rt.pending_peers.iter().map(peer).collect(),
        written_bytes: rt.bytes_written,
        read_bytes: rt.bytes_read,
        written_keys: rt.keys_written,
        read_keys: rt.keys_read,
        approximate_size: rt.approximate_size / (1 << 20),
        approximate_keys: rt.approximate_keys,
        flow: info.flow_rates(),
    }
}

#[derive(Clone, Serialize)]
pub(super) struct MemberJson {
    name: String,
    member_id: u64,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
}

pub(super) fn member(m: &Member) -> MemberJson {
    MemberJson {
        name: m.name.clone(),
        member_id: m.member_id,
        peer_urls: vec![m.peer_url.clone()],
        // A member added but not heard from yet has no client URL to give.
        client_urls: [m.client_url.clone()].into_iter().filter(|u| !u.is_empty()).collect(),
    }
}

#[derive(Serialize)]
pub(super) struct Members {
    pub(super) header: Header,
    pub(super) members: Vec<MemberJson>,
    /// Left out when no leader is known, as PD does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) leader: Option<MemberJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) etcd_leader: Option<MemberJson>,
}

#[derive(Serialize)]
pub(super) struct Header {
    pub(super) cluster_id: u64,
}

#[derive(Serialize)]
pub(super) struct Health {
    pub(super) name: String,
    pub(super) member_id: u64,
    pub(super) client_urls: Vec<String>,
    pub(super) health: bool,
}

#[derive(Serialize)]
pub(super) struct OperatorJson {
    region_id: u64,
    /// Which limit it counts against: leader, region, replica, split, admin.
    kind: &'static str,
    /// What it is for, e.g. `balance-region`, `replace-down-replica`.
    desc: &'static str,
    steps: Vec<String>,
    /// Index into `steps` of the step in progress.
    current_step: usize,
    status: &'static str,
    /// The region epoch the operator was created at.
    epoch: Epoch,
    created_at: String,
    /// Time since creation, e.g. `1s250ms`.
    age: String,
    timeout: String,
}

pub(super) fn operator(op: &Operator, now: std::time::SystemTime) -> OperatorJson {
    let age = now.duration_since(op.created).unwrap_or_default();
    OperatorJson {
        region_id: op.region_id.0,
        kind: op.kind.name(),
        desc: op.desc,
        steps: op.steps.iter().map(|s| s.describe()).collect(),
        current_step: op.current,
        status: "RUNNING",
        epoch: Epoch { conf_ver: op.epoch.conf_ver, version: op.epoch.version },
        created_at: format_rfc3339_ms(op.created),
        age: ReadableDuration(age).to_string(),
        timeout: ReadableDuration(op.timeout).to_string(),
    }
}

#[derive(Serialize)]
pub(super) struct ClusterJson {
    pub(super) id: u64,
    pub(super) max_peer_count: u64,
}
