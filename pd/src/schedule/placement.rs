//! Placement by store labels: how well a region's replicas are isolated
//! from each other's failures.
//!
//! `replication.location-labels` lists label keys from the widest failure
//! domain to the narrowest, e.g. `["zone", "rack", "host"]`. Two replicas
//! *share* a level when their stores have equal values for that label and
//! every wider one. The [`Isolation`] of a set of stores counts, level by
//! level, the pairs of replicas that share it; fewer is better, and a wider
//! level matters more than any narrower one (lexicographic order): losing a
//! zone is worse than losing a host.
//!
//! Before every level comes the hard rule: pairs on the same `host` label
//! value (whatever `location-labels` says). The replica checker never adds a
//! replica that breaks it, and fixes a region whose isolation is worse than
//! the stores allow; balance-region never makes a region's isolation worse.
//! A store without a label at some level is taken to differ from every other
//! store there (nothing is known to be shared).

use std::cmp::Ordering;

use crate::store::StoreMeta;

/// The label that must never repeat among a region's replicas.
pub const HOST_LABEL: &str = "host";

/// How badly a set of replicas shares failure domains; lower is better,
/// all zeros is perfect. Entry 0 counts pairs on one `host`; entry `1 + i`
/// counts pairs sharing location levels `0..=i`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isolation(Vec<usize>);

impl Isolation {
    /// The isolation of replicas on `stores` under `labels` (widest first).
    pub fn of(stores: &[&StoreMeta], labels: &[String]) -> Isolation {
        let mut counts = vec![0; labels.len() + 1];
        for (i, a) in stores.iter().enumerate() {
            for b in &stores[i + 1..] {
                if same_host(a, b) {
                    counts[0] += 1;
                }
                for level in 0..shared_levels(a, b, labels) {
                    counts[level + 1] += 1;
                }
            }
        }
        Isolation(counts)
    }

    /// True if no two replicas share anything.
    pub fn is_perfect(&self) -> bool {
        self.0.iter().all(|&n| n == 0)
    }

    /// Pairs of replicas on the same host.
    pub fn same_host_pairs(&self) -> usize {
        self.0[0]
    }
}

impl PartialOrd for Isolation {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Isolation {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

/// True if both stores carry the same non-empty `host` label value.
pub fn same_host(a: &StoreMeta, b: &StoreMeta) -> bool {
    matches!((a.label(HOST_LABEL), b.label(HOST_LABEL)), (Some(x), Some(y)) if !x.is_empty() && x == y)
}

/// How many leading levels of `labels` the two stores share.
fn shared_levels(a: &StoreMeta, b: &StoreMeta, labels: &[String]) -> usize {
    labels
        .iter()
        .take_while(|k| matches!((a.label(k), b.label(k)), (Some(x), Some(y)) if !x.is_empty() && x == y))
        .count()
}

#[cfg(test)]
mod tests {
    use mnemo_proto::types::StoreId;

    use super::*;

    fn store(id: u64, zone: &str, host: &str) -> StoreMeta {
        StoreMeta {
            id: StoreId(id),
            labels: [("zone".to_owned(), zone.to_owned()), ("host".to_owned(), host.to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn wider_levels_weigh_more_than_narrower_ones() {
        let labels = vec!["zone".to_owned(), "host".to_owned()];
        let iso = |stores: &[StoreMeta]| Isolation::of(&stores.iter().collect::<Vec<_>>(), &labels);
        let three_zones = iso(&[store(1, "z1", "a"), store(2, "z2", "b"), store(3, "z3", "c")]);
        let two_zones = iso(&[store(1, "z1", "a"), store(2, "z1", "b"), store(3, "z3", "c")]);
        let shared_host = iso(&[store(1, "z1", "a"), store(2, "z1", "a"), store(3, "z3", "c")]);
        assert!(three_zones.is_perfect());
        assert!(three_zones < two_zones && two_zones < shared_host);
        assert_eq!(shared_host.same_host_pairs(), 1);
    }

    #[test]
    fn without_location_labels_only_hosts_matter() {
        let (a, b) = (store(1, "z1", "a"), store(2, "z1", "b"));
        assert!(Isolation::of(&[&a, &b], &[]).is_perfect());
        assert!(!Isolation::of(&[&a, &store(3, "z2", "a")], &[]).is_perfect());
    }
}
