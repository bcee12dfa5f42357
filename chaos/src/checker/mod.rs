//! Checkers: decide from a [`History`] alone whether the store kept its
//! promises. They trust nothing the store says about itself.
//!
//! - [`linearizable`]: per-key registers (read/write/cas) must be
//!   linearizable. Wing–Gong–Lowe search per key (keys are independent
//!   objects, so a history is linearizable iff every key's sub-history is),
//!   with a cache of (linearized set, state) pairs so equivalent branches are
//!   explored once. The search has a time budget; running out gives
//!   [`Validity::Unknown`], never valid. A violation comes with a small
//!   sub-history that is itself non-linearizable.
//! - [`set`]: every acknowledged `add` is in every later `read_all` (during
//!   the run and the final one), nothing appears that was never added (or
//!   whose add certainly failed), nothing seen vanishes, and each read comes
//!   back in key order without duplicates.
//! - [`counter`]: counters incremented by CAS lose no increment and double
//!   none: every read lies between the increments certainly done and those
//!   possibly done, and no two successful CASes saw the same old value.
//!
//! How the three outcomes are treated everywhere: `ok` happened, `fail` did
//! not happen (its effects must be absent), `info` may or may not have
//! happened, at any time after its invocation (its return is +infinity).
//!
//! [`check`] runs whichever checkers the history's operations call for and
//! merges their verdicts into one [`Report`], the body of `results.json`.

pub mod counter;
pub mod linearizable;
pub mod set;
pub mod tso;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::history::{History, HistoryError, Key, OpName, Operation, Outcome};

/// The answer of a checker. Ordered: `Valid < Unknown < Invalid`, and a
/// merged verdict is the worst of its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Validity {
    /// No anomaly, and every check completed.
    Valid,
    /// Some check could not complete (time budget, missing final read); no
    /// anomaly found. Never to be reported as a pass.
    Unknown,
    /// At least one anomaly.
    Invalid,
}

impl Validity {
    /// The worse of two verdicts.
    pub fn and(self, other: Validity) -> Validity {
        self.max(other)
    }
}

/// What kind of promise an anomaly breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// A key's register operations have no linearization.
    NotLinearizable,
    /// An acknowledged `add` is missing from the final read.
    LostAdd,
    /// The final read holds an element never added, or whose add failed.
    UnexpectedElement,
    /// A counter read is below the increments acknowledged before it.
    LostIncrement,
    /// A counter read is above the increments possibly done before it.
    PhantomIncrement,
    /// Two successful increment CASes on a key observed the same old value
    /// (or one stored something other than old + 1).
    DoubledIncrement,
    /// A `read_all` returned an element twice or out of key order.
    MalformedRead,
    /// Two replicas of a region that applied the same log index hold
    /// different data (replicas diverged).
    Divergence,
    /// A storage node or PD process exited on its own (crashed): not a
    /// broken promise about data, but a bug the run must not pass with.
    Crash,
    /// A TSO client got a timestamp not above its previous one.
    TsoNotIncreasing,
    /// Two TSO clients got the same timestamp.
    TsoDuplicate,
    /// A check could not decide (see `message`).
    Unknown,
}

/// One thing that went wrong, with the operations that show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// What promise it breaks.
    pub kind: AnomalyKind,
    /// The key concerned, if any.
    pub key: Option<Key>,
    /// Human-readable explanation.
    pub message: String,
    /// Evidence: the operations involved (for linearizability, a
    /// non-linearizable sub-history).
    pub ops: Vec<Operation>,
}

/// Number of operations of one kind by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    /// Completed `ok`.
    pub ok: u64,
    /// Completed `fail`.
    pub fail: u64,
    /// Completed `info`, or never completed.
    pub info: u64,
}

/// Counts `ok`/`fail`/`info` per operation kind.
pub fn count_outcomes(ops: &[Operation]) -> BTreeMap<OpName, OutcomeCounts> {
    let mut counts: BTreeMap<OpName, OutcomeCounts> = BTreeMap::new();
    for o in ops {
        let c = counts.entry(o.op.name()).or_default();
        match o.outcome {
            Outcome::Ok(_) => c.ok += 1,
            Outcome::Fail => c.fail += 1,
            Outcome::Info => c.info += 1,
        }
    }
    counts
}

/// The merged verdict of all checkers (serialised as `results.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Worst verdict of the checkers that ran.
    pub validity: Validity,
    /// Per-checker verdict (`"linearizable"`, `"set"`, `"counter"`).
    pub checkers: BTreeMap<String, Validity>,
    /// Outcomes per operation kind.
    pub counts: BTreeMap<OpName, OutcomeCounts>,
    /// Every anomaly found, including `Unknown` reasons.
    pub anomalies: Vec<Anomaly>,
    /// Checker-specific numbers (set: ok/lost/unexpected/recovered; counter:
    /// per-key bounds), as JSON.
    pub details: BTreeMap<String, serde_json::Value>,
}

impl Report {
    /// Serialises the report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises")
    }
}

/// Pairs the history and runs every checker whose operations appear in it.
/// `budget` bounds the linearizability search (the other checkers are
/// linear). A history with no operations is `Unknown`: nothing was proven.
pub fn check(history: &History, budget: Duration) -> Result<Report, HistoryError> {
    let ops = history.operations()?;
    let counts = count_outcomes(&ops);
    let has = |names: &[OpName]| names.iter().any(|n| counts.contains_key(n));
    let mut report = Report {
        validity: Validity::Valid,
        checkers: BTreeMap::new(),
        counts: counts.clone(),
        anomalies: Vec::new(),
        details: BTreeMap::new(),
    };
    let mut add = |name: &str, validity: Validity, anomalies: Vec<Anomaly>, details: serde_json::Value| {
        report.validity = report.validity.and(validity);
        report.checkers.insert(name.to_string(), validity);
        report.anomalies.extend(anomalies);
        report.details.insert(name.to_string(), details);
    };
    if has(&[OpName::Read, OpName::Write, OpName::Cas]) {
        let r = linearizable::check_register(&ops, budget);
        add("linearizable", r.validity(), r.anomalies(), serde_json::to_value(&r).expect("serialises"));
    }
    if has(&[OpName::Add, OpName::ReadAll]) {
        let s = set::check_set(&ops);
        add("set", s.validity, s.anomalies.clone(), serde_json::to_value(&s.counts).expect("serialises"));
    }
    if has(&[OpName::Increment, OpName::ReadCounter]) {
        let c = counter::check_counter(&ops);
        add("counter", c.validity, c.anomalies.clone(), serde_json::to_value(&c.keys).expect("serialises"));
    }
    if report.checkers.is_empty() {
        report.validity = Validity::Unknown;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, Output, Recorder};

    #[test]
    fn report_merges_checkers_and_serialises() {
        let rec = Recorder::new();
        let p = rec.process();
        let p = rec.invoke(p, Op::Write { key: Key(0), value: 1 }).ok(Output::Done);
        let p = rec.invoke(p, Op::Read { key: Key(0) }).ok(Output::Read(Some(2)));
        let p = rec.invoke(p, Op::Add { element: 1 }).ok(Output::Done);
        let p = rec.invoke(p, Op::Add { element: 2 }).fail();
        let _ = rec.invoke(p, Op::ReadAll).ok(Output::ReadAll(vec![1]));
        let report = check(&rec.history(), Duration::from_secs(1)).unwrap();
        assert_eq!(report.validity, Validity::Invalid);
        assert_eq!(report.checkers["linearizable"], Validity::Invalid);
        assert_eq!(report.checkers["set"], Validity::Valid);
        assert_eq!(report.counts[&OpName::Add], OutcomeCounts { ok: 1, fail: 1, info: 0 });
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["validity"], "invalid");
        assert_eq!(json["anomalies"][0]["kind"], "not_linearizable");
        assert_eq!(json["counts"]["read_all"]["ok"], 1);
    }

    #[test]
    fn empty_history_is_unknown() {
        let report = check(&History::default(), Duration::from_secs(1)).unwrap();
        assert_eq!(report.validity, Validity::Unknown);
    }
}
