//! Set workload checker: unique `add`s, `read_all`s during the run, and a
//! final `read_all`.
//!
//! Every successful `read_all` is checked as the store returned it:
//! - it must be strictly increasing (a scan returns keys in order, once
//!   each): a duplicate or out-of-order element is *malformed*;
//! - an `add` acknowledged before the read was invoked must be present, else
//!   it is *lost*;
//! - an element present in a read that ended before this one began must
//!   still be present (nothing is ever removed), else it is *lost* too;
//! - an element present must come from an `add` invoked before the read
//!   ended that did not certainly fail, else it is *unexpected*.
//!
//! An `info` add (or one running during a read) may or may not be present.
//! The counts describe the final read (the `ok` `read_all` invoked last);
//! without one nothing was proven and the verdict is `Unknown`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Anomaly, AnomalyKind, Validity};
use crate::history::{Op, Operation, Outcome, Output};

/// At most this many anomalies are listed (the counts say how many in all).
const MAX_ANOMALIES: usize = 50;

/// Element counts of the set check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SetCounts {
    /// Distinct elements whose add was attempted.
    pub attempted: usize,
    /// Successful reads checked (during the run and the final one).
    pub reads: usize,
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
    /// Violations found in reads before the final one (lost, vanished,
    /// unexpected, malformed).
    pub earlier_violations: usize,
}

/// Result of the set check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SetCheck {
    /// Invalid if anything is lost, unexpected or malformed; Unknown without a final read.
    pub validity: Validity,
    /// The numbers.
    pub counts: SetCounts,
    /// Lost acknowledged elements (final read), sorted.
    pub lost: Vec<u64>,
    /// Unexpected elements (final read), sorted.
    pub unexpected: Vec<u64>,
    /// One anomaly per violation (at most [`MAX_ANOMALIES`]), or the Unknown reason.
    pub anomalies: Vec<Anomaly>,
}

/// How sure we are an element was added, before a read.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Failed,
    Maybe,
    Acked,
}

/// One successful read: the operation and its elements.
struct Read<'a> {
    op: &'a Operation,
    elements: &'a [u64],
}

/// Checks the set workload's operations (others are ignored).
pub fn check_set(ops: &[Operation]) -> SetCheck {
    let mut reads: Vec<Read> = ops
        .iter()
        .filter(|o| matches!(o.op, Op::ReadAll))
        .filter_map(|o| match &o.outcome {
            Outcome::Ok(Output::ReadAll(v)) => Some(Read { op: o, elements: v }),
            _ => None,
        })
        .collect();
    reads.sort_by_key(|r| r.op.call_ns);
    let adds: Vec<(u64, &Operation)> = ops
        .iter()
        .filter_map(|o| if let Op::Add { element } = o.op { Some((element, o)) } else { None })
        .collect();
    let mut check = SetCheck {
        validity: Validity::Valid,
        counts: SetCounts {
            attempted: adds.iter().map(|(e, _)| *e).collect::<BTreeSet<_>>().len(),
            reads: reads.len(),
            ..SetCounts::default()
        },
        lost: Vec::new(),
        unexpected: Vec::new(),
        anomalies: Vec::new(),
    };
    let Some(last) = reads.len().checked_sub(1) else {
        check.validity = Validity::Unknown;
        check.anomalies.push(Anomaly {
            kind: AnomalyKind::Unknown,
            key: None,
            message: "set: no successful final read_all".into(),
            ops: Vec::new(),
        });
        return check;
    };
    let mut violations = 0usize;
    let mut report = |check: &mut SetCheck, kind: AnomalyKind, message: String, ops: Vec<Operation>| {
        violations += 1;
        if check.anomalies.len() < MAX_ANOMALIES {
            check.anomalies.push(Anomaly { kind, key: None, message, ops });
        }
    };
    for (i, read) in reads.iter().enumerate() {
        let is_final = i == last;
        let (call, ret) = (read.op.call_ns, read.op.ret_ns.unwrap_or(u64::MAX));
        if let Some(w) = read.elements.windows(2).find(|w| w[0] >= w[1]) {
            let what = if w[0] == w[1] { "duplicate" } else { "out-of-order" };
            let message = format!("read_all returned {what} element {} after {}", w[1], w[0]);
            report(&mut check, AnomalyKind::MalformedRead, message, vec![read.op.clone()]);
        }
        // Best status per element as of this read, with the operation giving it.
        let mut status: BTreeMap<u64, (Status, &Operation)> = BTreeMap::new();
        for &(element, o) in &adds {
            if o.call_ns > ret {
                continue; // invoked after the read: cannot be in it
            }
            let s = match o.outcome {
                Outcome::Ok(_) if o.ret_ns.is_some_and(|r| r < call) => Status::Acked,
                Outcome::Fail => Status::Failed,
                _ => Status::Maybe, // info, or acknowledged only after the read began
            };
            let e = status.entry(element).or_insert((s, o));
            if s > e.0 {
                *e = (s, o);
            }
        }
        let present: BTreeSet<u64> = read.elements.iter().copied().collect();
        for (&element, &(s, add)) in &status {
            match (s, present.contains(&element)) {
                (Status::Acked, false) => {
                    if is_final {
                        check.lost.push(element);
                    }
                    let message = format!("acknowledged element {element} missing from a read_all");
                    report(&mut check, AnomalyKind::LostAdd, message, vec![add.clone(), read.op.clone()]);
                }
                (Status::Acked, true) if is_final => check.counts.ok += 1,
                (Status::Maybe, true) if is_final => check.counts.recovered_info += 1,
                (Status::Maybe, false) if is_final => check.counts.absent_info += 1,
                _ => {}
            }
        }
        for &element in &present {
            let s = status.get(&element).map(|(s, _)| *s);
            if s.is_none() || s == Some(Status::Failed) {
                if is_final {
                    check.unexpected.push(element);
                }
                let why = if s.is_none() { "never added" } else { "whose add failed" };
                let mut evidence: Vec<Operation> =
                    status.get(&element).map(|(_, o)| (*o).clone()).into_iter().collect();
                evidence.push(read.op.clone());
                report(
                    &mut check,
                    AnomalyKind::UnexpectedElement,
                    format!("read_all holds element {element}, {why}"),
                    evidence,
                );
            }
        }
        // Nothing seen by an earlier, finished read may vanish.
        if let Some(earlier) =
            reads[..i].iter().filter(|r| r.op.ret_ns.is_some_and(|t| t < call)).max_by_key(|r| r.op.ret_ns)
        {
            for &element in earlier.elements {
                if !present.contains(&element) {
                    let message = format!("element {element}, seen by an earlier read_all, vanished");
                    report(
                        &mut check,
                        AnomalyKind::LostAdd,
                        message,
                        vec![earlier.op.clone(), read.op.clone()],
                    );
                }
            }
        }
    }
    check.lost.sort_unstable();
    check.lost.dedup();
    check.unexpected.sort_unstable();
    check.unexpected.dedup();
    check.counts.lost = check.lost.len();
    check.counts.unexpected = check.unexpected.len();
    check.counts.earlier_violations = violations.saturating_sub(check.counts.lost + check.counts.unexpected);
    if violations > 0 {
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
        let expected = SetCounts {
            attempted: 5,
            reads: 1,
            ok: 2,
            lost: 0,
            unexpected: 0,
            recovered_info: 1,
            absent_info: 1,
            earlier_violations: 0,
        };
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
        // An earlier read that ended before an add was acknowledged need not have it.
        let h = [add(0, 1, OK), read_all(6, &[1]), add(10, 2, OK), read_all(100, &[1, 2])];
        assert_eq!(check_set(&h).validity, Validity::Valid);
    }

    #[test]
    fn reads_during_the_run_are_checked_too() {
        // An acknowledged add missing from a read during the run.
        let h = [add(0, 1, OK), read_all(10, &[]), read_all(100, &[1])];
        assert_eq!(check_set(&h).validity, Validity::Invalid);
        // An element seen once, then gone (its add's outcome was unknown).
        let h = [add(0, 1, Outcome::Info), read_all(10, &[1]), read_all(100, &[])];
        let c = check_set(&h);
        assert_eq!(c.validity, Validity::Invalid);
        assert!(c.anomalies[0].message.contains("vanished"), "{:?}", c.anomalies);
    }

    #[test]
    fn a_read_must_come_back_in_order_without_duplicates() {
        for bad in [&[1, 1, 2][..], &[2, 1]] {
            let h = [add(0, 1, OK), add(0, 2, OK), read_all(100, bad)];
            let c = check_set(&h);
            assert_eq!(c.validity, Validity::Invalid);
            assert!(c.anomalies.iter().any(|a| a.kind == AnomalyKind::MalformedRead), "{:?}", c.anomalies);
        }
    }

    #[test]
    fn no_final_read_is_unknown() {
        let h = [add(0, 1, OK), op(10, None, Op::ReadAll, Outcome::Info)];
        let c = check_set(&h);
        assert_eq!(c.validity, Validity::Unknown);
        assert_eq!(c.anomalies[0].kind, AnomalyKind::Unknown);
    }
}
