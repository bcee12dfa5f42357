//! Set workload checker: unique `add`s, then a final `read_all`.
//!
//! Against the final read (the `ok` `read_all` invoked last):
//! - an `add` acknowledged before the read was invoked must be present,
//!   else it is *lost*;
//! - an element present must have been attempted by an `add` that did not
//!   certainly fail, else it is *unexpected*;
//! - an `info` add (or one still running when the read began) may or may not
//!   be present; present ones are counted as *recovered*.
//!
//! No final read means nothing was proven: the verdict is `Unknown`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Anomaly, AnomalyKind, Validity};
use crate::history::{Op, Operation, Outcome, Output};

/// Element counts of the set check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SetCounts {
    /// Distinct elements whose add was attempted.
    pub attempted: usize,
    /// Acknowledged adds present in the final read.
    pub ok: usize,
    /// Acknowledged adds missing from the final read.
    pub lost: usize,
    /// Elements read that were never added, or whose adds all failed.
    pub unexpected: usize,
    /// Adds of unknown outcome that turned out present.
    pub recovered_info: usize,
    /// Adds of unknown outcome that are absent (allowed).
    pub absent_info: usize,
}

/// Result of the set check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SetCheck {
    /// Invalid if anything is lost or unexpected; Unknown without a final read.
    pub validity: Validity,
    /// The numbers.
    pub counts: SetCounts,
    /// Lost acknowledged elements, sorted.
    pub lost: Vec<u64>,
    /// Unexpected elements, sorted.
    pub unexpected: Vec<u64>,
    /// One anomaly per lost or unexpected element (or the Unknown reason).
    pub anomalies: Vec<Anomaly>,
}

/// How sure we are an element was added, before the final read.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Failed,
    Maybe,
    Acked,
}

/// Checks the set workload's operations (others are ignored).
pub fn check_set(ops: &[Operation]) -> SetCheck {
    let final_read = ops
        .iter()
        .filter(|o| matches!(o.op, Op::ReadAll))
        .filter_map(|o| match &o.outcome {
            Outcome::Ok(Output::ReadAll(v)) => Some((o, v)),
            _ => None,
        })
        .max_by_key(|(o, _)| o.call_ns);
    let Some((read, elements)) = final_read else {
        return SetCheck {
            validity: Validity::Unknown,
            counts: SetCounts::default(),
            lost: Vec::new(),
            unexpected: Vec::new(),
            anomalies: vec![Anomaly {
                kind: AnomalyKind::Unknown,
                key: None,
                message: "set: no successful final read_all".into(),
                ops: Vec::new(),
            }],
        };
    };
    // Best status per element, with the operation that gives it.
    let mut adds: BTreeMap<u64, (Status, &Operation)> = BTreeMap::new();
    for o in ops {
        let Op::Add { element } = o.op else { continue };
        let status = match o.outcome {
            Outcome::Ok(_) if o.ret_ns.is_some_and(|r| r < read.call_ns) => Status::Acked,
            Outcome::Fail => Status::Failed,
            _ => Status::Maybe, // info, or acknowledged only after the read began
        };
        let e = adds.entry(element).or_insert((status, o));
        if status > e.0 {
            *e = (status, o);
        }
    }
    let present: BTreeSet<u64> = elements.iter().copied().collect();
    let mut check = SetCheck {
        validity: Validity::Valid,
        counts: SetCounts { attempted: adds.len(), ..SetCounts::default() },
        lost: Vec::new(),
        unexpected: Vec::new(),
        anomalies: Vec::new(),
    };
    for (&element, &(status, add)) in &adds {
        match (status, present.contains(&element)) {
            (Status::Acked, true) => check.counts.ok += 1,
            (Status::Acked, false) => {
                check.lost.push(element);
                check.anomalies.push(Anomaly {
                    kind: AnomalyKind::LostAdd,
                    key: None,
                    message: format!("acknowledged element {element} missing from the final read"),
                    ops: vec![add.clone(), read.clone()],
                });
            }
            (Status::Maybe, true) => check.counts.recovered_info += 1,
            (Status::Maybe, false) => check.counts.absent_info += 1,
            (Status::Failed, _) => {}
        }
    }
    for &element in &present {
        let status = adds.get(&element).map(|(s, _)| *s);
        if status.is_none() || status == Some(Status::Failed) {
            check.unexpected.push(element);
            let why = if status.is_none() { "never added" } else { "whose add failed" };
            check.anomalies.push(Anomaly {
                kind: AnomalyKind::UnexpectedElement,
                key: None,
                message: format!("final read holds element {element}, {why}"),
                ops: adds
                    .get(&element)
                    .map(|(_, o)| (*o).clone())
                    .into_iter()
                    .chain([read.clone()])
                    .collect(),
            });
        }
    }
    check.counts.lost = check.lost.len();
    check.counts.unexpected = check.unexpected.len();
    if !check.anomalies.is_empty() {
        check.validity = Validity::Invalid;
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Output, ProcessId};

    fn op(call: u64, ret: Option<u64>, op: Op, outcome: Outcome) -> Operation {
        Operation { process: ProcessId(0), op, call_ns: call, ret_ns: ret, outcome }
    }
    fn add(t: u64, element: u64, outcome: Outcome) -> Operation {
        let ret = (outcome != Outcome::Info).then_some(t + 5);
        op(t, ret, Op::Add { element }, outcome)
    }
    fn read_all(t: u64, elements: &[u64]) -> Operation {
        op(t, Some(t + 5), Op::ReadAll, Outcome::Ok(Output::ReadAll(elements.to_vec())))
    }
    const OK: Outcome = Outcome::Ok(Output::Done);

    #[test]
    fn all_acknowledged_present_with_info_either_way() {
        let h = [
            add(0, 1, OK),
            add(10, 2, OK),
            add(20, 3, Outcome::Info),
            add(30, 4, Outcome::Info),
            add(40, 5, Outcome::Fail),
            read_all(100, &[1, 2, 3]),
        ];
        let c = check_set(&h);
        assert_eq!(c.validity, Validity::Valid, "{c:?}");
        let expected =
            SetCounts { attempted: 5, ok: 2, lost: 0, unexpected: 0, recovered_info: 1, absent_info: 1 };
        assert_eq!(c.counts, expected);
    }

    #[test]
    fn lost_and_unexpected_elements_are_invalid() {
        let h = [add(0, 1, OK), add(10, 2, OK), add(20, 3, Outcome::Fail), read_all(100, &[1, 3, 9])];
        let c = check_set(&h);
        assert_eq!(c.validity, Validity::Invalid);
        assert_eq!((c.lost.clone(), c.unexpected.clone()), (vec![2], vec![3, 9]));
        assert_eq!((c.counts.ok, c.counts.lost, c.counts.unexpected), (1, 1, 2));
        let kinds: Vec<_> = c.anomalies.iter().map(|a| a.kind).collect();
        assert_eq!(
            kinds,
            [AnomalyKind::LostAdd, AnomalyKind::UnexpectedElement, AnomalyKind::UnexpectedElement]
        );
    }

    #[test]
    fn adds_concurrent_with_the_final_read_may_be_missing() {
        // Acknowledged only after the read began: may or may not be seen.
        let h = [add(0, 1, OK), op(90, Some(120), Op::Add { element: 2 }, OK), read_all(100, &[1])];
        assert_eq!(check_set(&h).validity, Validity::Valid);
        // The last read is the final one; an earlier partial read is ignored.
        let h = [add(0, 1, OK), read_all(3, &[]), add(10, 2, OK), read_all(100, &[1, 2])];
        assert_eq!(check_set(&h).validity, Validity::Valid);
    }

    #[test]
    fn no_final_read_is_unknown() {
        let h = [add(0, 1, OK), op(10, None, Op::ReadAll, Outcome::Info)];
        let c = check_set(&h);
        assert_eq!(c.validity, Validity::Unknown);
        assert_eq!(c.anomalies[0].kind, AnomalyKind::Unknown);
    }
}
