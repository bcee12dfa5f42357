//! PD's metrics, on the `prometheus` crate, with PD's names and labels
//! (docs/metrics.md), served at `/metrics` on the client URL.
//!
//! Counters and histograms are process-wide ([`PD`]), recorded where the
//! work happens (heartbeat handlers, TSO, the coordinator). The cluster
//! gauges — store states, region health, the member's role — are computed
//! from the cluster's state when scraped ([`render`]); only the leader,
//! which schedules, reports store and region gauges.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::cluster::Cluster;
use crate::region_map::RegionInfo;
use crate::store::{StoreState, StoreStatus};
use mnemo_proto::types::{PeerRole, StoreId};

/// PD's metrics.
pub struct PdMetrics {
    registry: Registry,
    /// `pd_scheduler_region_heartbeat{store,type,status}`.
    pub region_heartbeat: IntCounterVec,
    /// `pd_scheduler_handle_region_heartbeat_duration_seconds`.
    pub handle_region_heartbeat: Histogram,
    /// `pd_scheduler_handle_store_heartbeat_duration_seconds`.
    pub handle_store_heartbeat: Histogram,
    /// `pd_schedule_operators_count{type,event}`.
    pub operators: IntCounterVec,
    /// `pd_scheduler_event_count{type,name}`.
    pub scheduler_events: IntCounterVec,
    /// `pd_regions_status{type}`.
    pub regions_status: IntGaugeVec,
    /// `pd_cluster_status{type}`.
    pub cluster_status: IntGaugeVec,
    /// `pd_server_handle_tso_duration_seconds`.
    pub tso_duration: Histogram,
    /// `pd_server_tso_total`: timestamps handed out.
    pub tso_total: IntCounter,
    /// `service_member_role{service="PD"}`.
    pub member_role: IntGaugeVec,
}

/// The process's [`PdMetrics`].
pub static PD: LazyLock<PdMetrics> = LazyLock::new(PdMetrics::new);

/// The region states of `pd_regions_status`, hyphenated as PD's.
pub const REGION_STATES: [&str; 7] = [
    "miss-peer-region-count",
    "extra-peer-region-count",
    "down-peer-region-count",
    "pending-peer-region-count",
    "learner-peer-region-count",
    "offline-peer-region-count",
    "empty-region-count",
];

impl PdMetrics {
    fn new() -> PdMetrics {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone())).expect("metric names are unique");
            m
        }
        // 50 µs doubling to ~105 s.
        let buckets = || exponential_buckets(0.00005, 2.0, 22).expect("valid buckets");
        let hist = |name: &str, help: &str| {
            reg(
                &registry,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets())).expect("valid"),
            )
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid"))
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid"))
        };
        PdMetrics {
            region_heartbeat: counter_vec(
                "pd_scheduler_region_heartbeat",
                "Region heartbeats received, by the reporting store and outcome.",
                &["store", "type", "status"],
            ),
            handle_region_heartbeat: hist(
                "pd_scheduler_handle_region_heartbeat_duration_seconds",
                "Handling one region heartbeat.",
            ),
            handle_store_heartbeat: hist(
                "pd_scheduler_handle_store_heartbeat_duration_seconds",
                "Handling one store heartbeat.",
            ),
            operators: counter_vec(
                "pd_schedule_operators_count",
                "Operators created, finished, timed out and cancelled, by description.",
                &["type", "event"],
            ),
            scheduler_events: counter_vec(
                "pd_scheduler_event_count",
                "Operators each scheduler created.",
                &["type", "name"],
            ),
            regions_status: gauge_vec("pd_regions_status", "Regions in each unhealthy state.", &["type"]),
            cluster_status: gauge_vec("pd_cluster_status", "Store states and cluster totals.", &["type"]),
            tso_duration: hist("pd_server_handle_tso_duration_seconds", "Handling one TSO request."),
            tso_total: reg(
                &registry,
                IntCounter::new("pd_server_tso_total", "Timestamps handed out.").expect("valid"),
            ),
            member_role: gauge_vec(
                "service_member_role",
                "1 on the PD leader, 0 on other members.",
                &["service"],
            ),
            registry,
        }
    }

    /// Counts one event of an operator described `desc` (`create`,
    /// `finish`, `timeout`, `cancel`).
    pub fn operator(&self, desc: &str, event: &str) {
        self.operators.with_label_values(&[desc, event]).inc();
    }
}

/// The text exposition, with the cluster gauges computed now.
pub fn render(cluster: &Cluster) -> String {
    let leader = cluster.check_serving().is_ok();
    PD.member_role.with_label_values(&["PD"]).set(i64::from(leader));
    if leader {
        observe_cluster(cluster);
    } else {
        // A former leader must not keep exporting what it last saw.
        PD.cluster_status.reset();
        PD.regions_status.reset();
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&PD.registry.gather(), &mut out).expect("text encoding cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// Sets `pd_cluster_status` and `pd_regions_status` from the cluster's state.
fn observe_cluster(cluster: &Cluster) {
    let max_replicas = usize::try_from(cluster.config().replication.max_replicas).unwrap_or(usize::MAX);
    let (stores, offline) = cluster.read(|view| {
        let max_down = view.config.schedule.max_store_down_time.0;
        let mut counts = [0i64; 5];
        let mut offline: Vec<StoreId> = Vec::new();
        let (mut size, mut capacity) = (0u64, 0u64);
        for s in view.state.stores().values() {
            let i = match s.status(view.now, view.alive_since, max_down) {
                StoreStatus::Up => 0,
                StoreStatus::Disconnected => 1,
                StoreStatus::Down => 2,
                StoreStatus::Offline => 3,
                StoreStatus::Tombstone => 4,
            };
            counts[i] += 1;
            if s.meta.state == StoreState::Offline {
                offline.push(s.meta.id);
            }
            if let Some(st) = &s.stats {
                size = size.saturating_add(st.used_size);
                capacity = capacity.saturating_add(st.capacity);
            }
        }
        let totals = [
            ("store_up_count", counts[0]),
            ("store_disconnected_count", counts[1]),
            ("store_down_count", counts[2]),
            ("store_offline_count", counts[3]),
            ("store_tombstone_count", counts[4]),
            ("region_count", gauge(view.state.regions().len() as u64)),
            ("storage_size", gauge(size)),
            ("storage_capacity", gauge(capacity)),
        ];
        (totals, offline)
    });
    for (ty, v) in stores {
        PD.cluster_status.with_label_values(&[ty]).set(v);
    }
    // Regions are walked a page at a time, off the metadata lock between
    // pages: a scrape of a large map never holds up heartbeats for long.
    let mut health = [0i64; REGION_STATES.len()];
    let mut leaders = 0i64;
    cluster.for_each_region_page(1024, |page| {
        for r in page {
            leaders += i64::from(r.leader().is_some());
            for (i, bad) in region_health(r, max_replicas, &offline).into_iter().enumerate() {
                health[i] += i64::from(bad);
            }
        }
    });
    PD.cluster_status.with_label_values(&["leader_count"]).set(leaders);
    for (ty, n) in REGION_STATES.iter().zip(health) {
        PD.regions_status.with_label_values(&[ty]).set(n);
    }
}

/// Which of [`REGION_STATES`] `r` is in (a page boundary may show a region
/// twice: a rare overcount of one, for a gauge).
pub fn region_health(r: &RegionInfo, max_replicas: usize, offline: &[StoreId]) -> [bool; 7] {
    [
        r.region.voters().count() < max_replicas,
        r.region.peers.len() > max_replicas,
        !r.runtime.down_peers.is_empty(),
        !r.runtime.pending_peers.is_empty(),
        r.region.peers.iter().any(|p| p.role == PeerRole::Learner),
        r.region.peers.iter().any(|p| offline.contains(&p.store_id)),
        r.runtime.last_heartbeat.is_some() && r.runtime.approximate_keys == 0,
    ]
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use mnemo_proto::types::{Peer, PeerId, Region, RegionId};

    use super::*;

    #[test]
    fn region_health_names_each_unhealthy_state() {
        let peer = |id: u64, store: u64, role| Peer { id: PeerId(id), store_id: StoreId(store), role };
        let mut r = RegionInfo {
            region: Region {
                id: RegionId(1),
                peers: vec![
                    peer(1, 1, PeerRole::Voter),
                    peer(2, 2, PeerRole::Voter),
                    peer(3, 3, PeerRole::Learner),
                ],
                ..Default::default()
            },
            ..Default::default()
        };
        let states = |r: &RegionInfo, offline: &[StoreId]| -> Vec<&str> {
            let h = region_health(r, 3, offline);
            REGION_STATES.iter().zip(h).filter(|(_, bad)| *bad).map(|(s, _)| *s).collect()
        };
        assert_eq!(states(&r, &[]), ["miss-peer-region-count", "learner-peer-region-count"]);
        assert_eq!(states(&r, &[StoreId(2)]).last(), Some(&"offline-peer-region-count"));
        r.region.peers[2].role = PeerRole::Voter;
        r.runtime.last_heartbeat = Some(std::time::SystemTime::now());
        r.runtime.approximate_keys = 5;
        assert!(states(&r, &[]).is_empty());
    }

    #[test]
    fn operator_events_are_counted_by_description_and_event() {
        PD.operator("test-operator", "create");
        PD.operator("test-operator", "create");
        assert_eq!(PD.operators.with_label_values(&["test-operator", "create"]).get(), 2);
        let mut text = Vec::new();
        TextEncoder::new().encode(&PD.registry.gather(), &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("pd_schedule_operators_count{event=\"create\",type=\"test-operator\"} 2"),
            "{text}"
        );
    }
}
