//! Node counters the harness sums over a run (nodes restart, and their
//! counters with them).

use std::collections::{BTreeMap, HashMap};

use crate::cluster::Cluster;

/// Node counters the harness tallies over a run (summed over nodes and
/// over restarts of each node), as `results.json`'s `cluster_events`.
pub const EVENT_METRICS: [(&str, &str); 6] = [
    ("snapshots_sent", "mnemo_snapshots_sent_total"),
    ("snapshots_applied", "mnemo_snapshots_applied_total"),
    ("raft_log_gcs", "mnemo_raft_log_gc_total"),
    ("splits_applied", "mnemo_splits_applied_total"),
    ("conf_changes_applied", "mnemo_conf_changes_applied_total"),
    ("leader_changes", "mnemo_leader_changes_total"),
];

/// Sums node counters across a run in which nodes restart (a restarted
/// node's counters start again from zero).
#[derive(Debug, Default)]
pub struct EventTally {
    /// Per node and metric: (total of earlier incarnations, last value seen).
    seen: HashMap<(usize, &'static str), (f64, f64)>,
}

impl EventTally {
    /// Reads node `i`'s counters.
    pub(super) fn scrape(&mut self, cluster: &Cluster, i: usize) {
        for (_, metric) in EVENT_METRICS {
            let Some(v) = cluster.node_metric(i, metric) else { continue };
            let e = self.seen.entry((i, metric)).or_insert((0.0, 0.0));
            if v < e.1 {
                e.0 += e.1; // the node restarted since the last look
            }
            e.1 = v;
        }
    }

    /// Totals by short name.
    pub fn totals(&self) -> BTreeMap<&'static str, u64> {
        EVENT_METRICS
            .iter()
            .map(|(name, metric)| {
                let sum: f64 = self
                    .seen
                    .iter()
                    .filter(|((_, m), _)| m == metric)
                    .map(|(_, (base, last))| base + last)
                    .sum();
                (*name, sum as u64)
            })
            .collect()
    }
}
