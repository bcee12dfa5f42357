//! The replica check: after the run, every two replicas of a region that
//! applied the same log index must hold exactly the same data.
//!
//! Apply is deterministic (it depends only on the log and the state it
//! applies to), so replicas that diverge show a bug even when no client read
//! happened to see it — the kind of bug a history check can miss, such as a
//! replica applying a command by its own clock. Each node reports, from
//! inside its store loop, a hash of every region's data at its applied
//! index (`GET /debug/region-hashes`, a test control); the check polls all
//! nodes until each region's replicas report the same applied index (or a
//! deadline passes) and compares every group of replicas at the same index.
//! A difference is a [`AnomalyKind::Divergence`]; a region whose replicas
//! never met at one index is counted, not judged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::checker::{Anomaly, AnomalyKind, Validity};
use crate::cluster::Cluster;

/// The verdict of the replica check.
#[derive(Clone, Debug)]
pub struct ReplicaCheck {
    /// Invalid on any divergence; Unknown if no region could be compared.
    pub validity: Validity,
    /// One per diverged region.
    pub anomalies: Vec<Anomaly>,
    /// `{"regions_compared", "replicas_compared", "regions_unsettled"}`.
    pub details: Value,
}

/// One replica's report: (node, applied index, hash, keys).
type Replica = (usize, u64, u64, u64);

/// Compares the replicas of every region (see the module doc), polling for
/// up to `timeout`.
pub fn compare(cluster: &Cluster, timeout: Duration) -> ReplicaCheck {
    let deadline = Instant::now() + timeout;
    let mut diverged: BTreeMap<u64, String> = BTreeMap::new();
    let (mut compared, mut replicas_compared, mut unsettled);
    let mut silent: Vec<usize>;
    loop {
        let by_region;
        (by_region, silent) = collect(cluster);
        (compared, replicas_compared, unsettled) = (0, 0, 0);
        for (region, replicas) in &by_region {
            let mut by_index: BTreeMap<u64, Vec<&Replica>> = BTreeMap::new();
            for r in replicas {
                by_index.entry(r.1).or_default().push(r);
            }
            if by_index.len() > 1 {
                unsettled += 1;
            }
            for (index, group) in by_index.iter().filter(|(_, g)| g.len() > 1) {
                compared += 1;
                replicas_compared += group.len();
                if group.iter().any(|r| r.2 != group[0].2) {
                    let who: Vec<String> = group
                        .iter()
                        .map(|r| format!("n{}: hash {:016x}, {} keys", r.0 + 1, r.2, r.3))
                        .collect();
                    diverged.entry(*region).or_insert_with(|| {
                        format!(
                            "region {region}: replicas at applied index {index} differ ({})",
                            who.join("; ")
                        )
                    });
                }
            }
        }
        if (unsettled == 0 && silent.is_empty()) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let anomalies: Vec<Anomaly> = diverged
        .values()
        .map(|m| Anomaly { kind: AnomalyKind::Divergence, key: None, message: m.clone(), ops: Vec::new() })
        .collect();
    let mut anomalies = anomalies;
    for i in &silent {
        anomalies.push(Anomaly {
            kind: AnomalyKind::Unknown,
            key: None,
            message: format!("replicas: n{} never reported its region hashes", i + 1),
            ops: Vec::new(),
        });
    }
    let validity = if !diverged.is_empty() {
        Validity::Invalid
    } else if compared == 0 || !silent.is_empty() {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    ReplicaCheck {
        validity,
        anomalies,
        details: json!({
            "regions_compared": compared,
            "replicas_compared": replicas_compared,
            "regions_unsettled": unsettled,
            "regions_diverged": diverged.len(),
            "nodes_silent": silent.len(),
        }),
    }
}

/// Every node's region hashes, grouped by region, and the nodes that did
/// not answer.
fn collect(cluster: &Cluster) -> (BTreeMap<u64, Vec<Replica>>, Vec<usize>) {
    let mut by_region: BTreeMap<u64, Vec<Replica>> = BTreeMap::new();
    let mut silent = Vec::new();
    for i in 0..cluster.node_count() {
        let Some(hashes) = cluster.node_region_hashes(i) else {
            silent.push(i);
            continue;
        };
        for h in hashes {
            let field = |name: &str| h[name].as_u64().unwrap_or(0);
            by_region.entry(field("region_id")).or_default().push((
                i,
                field("applied_index"),
                field("hash"),
                field("keys"),
            ));
        }
    }
    (by_region, silent)
}
