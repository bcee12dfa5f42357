//! Counter workload checker: per-key counters incremented by CAS
//! (read v, cas v → v+1), starting at 0 (absent).
//!
//! For every `ok` read of a key, with `lower` = increments acknowledged
//! before the read was invoked and `upper` = increments not certainly failed
//! that were invoked before the read returned: `lower <= value <= upper`.
//! Below is a *lost* increment, above a *phantom* (doubled) one. For the
//! final read, after all increments, this is exactly "acknowledged plus some
//! subset of the `info` ones". Besides, every successful CAS of a key must
//! have observed a distinct old value and stored old + 1: two CASes from the
//! same value both succeeding is a doubled increment even if the count hides it.
//!
//! A key with increments but no successful read is `Unknown`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Anomaly, AnomalyKind, Validity};
use crate::history::{Key, Op, Operation, Outcome, Output};

/// Per-key numbers of the counter check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CounterKey {
    /// Acknowledged increments.
    pub ok: u64,
    /// Increments that certainly did not happen.
    pub fail: u64,
    /// Increments of unknown outcome.
    pub info: u64,
    /// Successful reads checked.
    pub reads: u64,
    /// Value of the last-invoked successful read, if any.
    pub final_value: Option<u64>,
    /// Allowed `[lower, upper]` for that read.
    pub final_bounds: Option<(u64, u64)>,
}

/// Result of the counter check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CounterCheck {
    /// Invalid on any anomaly; Unknown if some key was never read.
    pub validity: Validity,
    /// Per-key numbers.
    pub keys: BTreeMap<Key, CounterKey>,
    /// Lost, phantom and doubled increments (and Unknown reasons).
    pub anomalies: Vec<Anomaly>,
}

/// Checks the counter workload's operations (others are ignored).
pub fn check_counter(ops: &[Operation]) -> CounterCheck {
    let mut incs: BTreeMap<Key, Vec<&Operation>> = BTreeMap::new();
    let mut reads: BTreeMap<Key, Vec<(&Operation, u64)>> = BTreeMap::new();
    for o in ops {
        match (&o.op, &o.outcome) {
            (Op::Increment { key }, _) => incs.entry(*key).or_default().push(o),
            (Op::ReadCounter { key }, Outcome::Ok(Output::ReadCounter(v))) => {
                reads.entry(*key).or_default().push((o, *v))
            }
            (Op::ReadCounter { key }, _) => {
                incs.entry(*key).or_default();
            }
            _ => {}
        }
    }
    let mut check = CounterCheck { validity: Validity::Valid, keys: BTreeMap::new(), anomalies: Vec::new() };
    let mut anomaly = |kind, key, message: String, ops: Vec<Operation>| {
        check.anomalies.push(Anomaly { kind, key: Some(key), message, ops });
    };
    for key in incs.keys().chain(reads.keys()).copied().collect::<std::collections::BTreeSet<_>>() {
        let key_incs = incs.get(&key).map(Vec::as_slice).unwrap_or_default();
        let key_reads = reads.get(&key).map(Vec::as_slice).unwrap_or_default();
        let mut stats = CounterKey::default();
        let mut by_old: BTreeMap<u64, &Operation> = BTreeMap::new();
        for &o in key_incs {
            match &o.outcome {
                Outcome::Ok(Output::Increment { old, new }) => {
                    stats.ok += 1;
                    if *new != old + 1 {
                        let msg = format!("increment of key {} stored {new} after seeing {old}", key.0);
                        anomaly(AnomalyKind::DoubledIncrement, key, msg, vec![o.clone()]);
                    }
                    if let Some(prev) = by_old.insert(*old, o) {
                        let msg = format!("two successful increments of key {} both saw {old}", key.0);
                        anomaly(AnomalyKind::DoubledIncrement, key, msg, vec![prev.clone(), o.clone()]);
                    }
                }
                Outcome::Fail => stats.fail += 1,
                _ => stats.info += 1,
            }
        }
        for &(r, value) in key_reads {
            let r_ret = r.ret_ns.unwrap_or(u64::MAX);
            let lower = key_incs
                .iter()
                .filter(|o| matches!(o.outcome, Outcome::Ok(_)) && o.ret_ns.is_some_and(|t| t < r.call_ns))
                .count() as u64;
            let upper =
                key_incs.iter().filter(|o| o.outcome != Outcome::Fail && o.call_ns <= r_ret).count() as u64;
            stats.reads += 1;
            if stats.final_value.is_none() || key_reads.iter().all(|(o, _)| o.call_ns <= r.call_ns) {
                stats.final_value = Some(value);
                stats.final_bounds = Some((lower, upper));
            }
            if value < lower || value > upper {
                let (kind, what) = if value < lower {
                    (AnomalyKind::LostIncrement, "acknowledged before it")
                } else {
                    (AnomalyKind::PhantomIncrement, "possibly done before it")
                };
                let msg = format!(
                    "key {} read {value}, outside [{lower}, {upper}] ({} increments {what})",
                    key.0,
                    if value < lower { lower } else { upper }
                );
                anomaly(kind, key, msg, vec![r.clone()]);
            }
        }
        if key_reads.is_empty() {
            let msg = format!("counter key {} has no successful read", key.0);
            anomaly(AnomalyKind::Unknown, key, msg, Vec::new());
        }
        check.keys.insert(key, stats);
    }
    check.validity = check.anomalies.iter().fold(Validity::Valid, |v, a| {
        v.and(if a.kind == AnomalyKind::Unknown { Validity::Unknown } else { Validity::Invalid })
    });
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ProcessId;

    fn inc(t: u64, key: u64, outcome: Outcome) -> Operation {
        let ret = (outcome != Outcome::Info).then_some(t + 5);
        Operation {
            process: ProcessId(0),
            op: Op::Increment { key: Key(key) },
            call_ns: t,
            ret_ns: ret,
            outcome,
        }
    }
    fn ok_inc(t: u64, key: u64, old: u64) -> Operation {
        inc(t, key, Outcome::Ok(Output::Increment { old, new: old + 1 }))
    }
    fn read(t: u64, key: u64, v: u64) -> Operation {
        Operation {
            process: ProcessId(0),
            op: Op::ReadCounter { key: Key(key) },
            call_ns: t,
            ret_ns: Some(t + 5),
            outcome: Outcome::Ok(Output::ReadCounter(v)),
        }
    }

    #[test]
    fn exact_count_with_info_in_range_is_valid() {
        let h = [
            ok_inc(0, 0, 0),
            ok_inc(10, 0, 1),
            inc(20, 0, Outcome::Fail),
            inc(30, 0, Outcome::Info),
            read(35, 0, 2),  // the info one may not have happened yet…
            read(100, 0, 3), // …and then did
            ok_inc(0, 1, 0),
            read(100, 1, 1),
        ];
        let c = check_counter(&h);
        assert_eq!(c.validity, Validity::Valid, "{c:?}");
        let k0 = &c.keys[&Key(0)];
        assert_eq!((k0.ok, k0.fail, k0.info, k0.reads), (2, 1, 1, 2));
        assert_eq!((k0.final_value, k0.final_bounds), (Some(3), Some((2, 3))));
    }

    #[test]
    fn lost_increment_is_invalid() {
        let h = [ok_inc(0, 0, 0), ok_inc(10, 0, 1), ok_inc(20, 0, 2), read(100, 0, 2)];
        let c = check_counter(&h);
        assert_eq!(c.validity, Validity::Invalid);
        assert_eq!(c.anomalies[0].kind, AnomalyKind::LostIncrement);
    }

    #[test]
    fn doubled_increments_are_invalid() {
        // More than acknowledged plus info.
        let h = [ok_inc(0, 0, 0), inc(10, 0, Outcome::Info), read(100, 0, 3)];
        assert_eq!(check_counter(&h).anomalies[0].kind, AnomalyKind::PhantomIncrement);
        // Two CASes succeeded from the same value (count alone would pass:
        // the store kept 1, the workload thinks it counted 2 — also lost).
        let h = [ok_inc(0, 0, 0), ok_inc(10, 0, 0), read(100, 0, 2)];
        let c = check_counter(&h);
        assert_eq!(c.validity, Validity::Invalid);
        assert_eq!(c.anomalies[0].kind, AnomalyKind::DoubledIncrement);
        // A failed increment that took effect anyway.
        let h = [ok_inc(0, 0, 0), inc(10, 0, Outcome::Fail), read(100, 0, 2)];
        assert_eq!(check_counter(&h).validity, Validity::Invalid);
    }

    #[test]
    fn unread_key_is_unknown() {
        let c = check_counter(&[ok_inc(0, 7, 0)]);
        assert_eq!(c.validity, Validity::Unknown);
        assert_eq!(c.anomalies[0].key, Some(Key(7)));
    }
}
