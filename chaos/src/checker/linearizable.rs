//! Linearizability of per-key registers: Wing–Gong–Lowe search.
//!
//! Model (one register per key): state `None` (absent) or `(value,
//! expiring)`, initially `None`. `write v` sets `(v, false)`; `write_ttl v`
//! sets `(v, true)`: a value with a time to live, which may vanish at any
//! moment after it was written; `delete` sets `None`; a `batch_write` is a
//! write of each of its keys. `read` is legal iff it returns the value held,
//! or returns absent while the value held is expiring — the read then
//! witnesses the expiry, and the state becomes `None` (expired stays
//! expired). `cas(from, to)` is legal iff the value held is `from`, or
//! `from` is absent and the state is `None` or expiring; it sets
//! `(to, false)`. Without TTLs this is the plain register. `fail` operations
//! are dropped (they did not happen). `info` operations return at +infinity
//! and may or may not take effect; `info` reads are dropped since their
//! output is unknown.
//!
//! Search (per key): all call and return entries in one doubly linked list
//! sorted by time (calls before returns at equal times, which only adds
//! concurrency, never a false violation). Scan from the head: at a call,
//! try to linearize that op now — if the model allows it and the pair
//! (set of linearized ops, new state) was never seen, push it, *lift* its
//! call and return out of the list and restart at the head. At a return, the
//! op it closes must have been linearized already, so the last choice was
//! wrong: pop it, *unlift* (dancing links: re-insert in reverse order) and try
//! the next call after it. Success when every non-`info` op is linearized;
//! failure when a return is reached with nothing to pop. The cache of seen
//! (bitset, state) pairs is what makes this fast: two branches that
//! linearized the same ops and reached the same state have the same future.
//!
//! Witness: for an invalid key we report a small sub-history that is itself
//! non-linearizable, found soundly (any history containing it is also
//! non-linearizable): (1) the earliest *cut* time T such that the ops
//! invoked by T are non-linearizable when ops still running at T are treated
//! as `info` (running reads dropped) — a prefix of a linearizable history is
//! linearizable, so this is monotone in T and found by binary search; then
//! (2) drop reads one at a time while it stays non-linearizable (removing a
//! read only removes a constraint). Writes and CASes are never dropped: the
//! rest may depend on their effects. Ops cut at T appear in the witness as
//! `info` with no return time.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Anomaly, AnomalyKind, Validity};
use crate::history::{Key, Op, Operation, Outcome, Output};

/// Result of the register check over all keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Linearizability {
    /// Every key's history is linearizable.
    Valid,
    /// `key` has no linearization; `ops` is a non-linearizable sub-history of
    /// it (see the module doc for how it is shrunk).
    Invalid {
        /// The key.
        key: Key,
        /// A non-linearizable sub-history of the key, in call order.
        ops: Vec<Operation>,
    },
    /// No violation found, but `key` could not be decided.
    Unknown {
        /// The first undecided key.
        key: Key,
        /// Why (e.g. the time budget ran out).
        reason: String,
    },
}

/// The register check's answer with what it covered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegisterCheck {
    /// Keys with register operations.
    pub keys: usize,
    /// Register operations considered (after dropping `fail` and `info` reads).
    pub ops: usize,
    /// The verdict. Invalid wins over Unknown if both occur on different keys.
    pub result: Linearizability,
}

impl RegisterCheck {
    /// The verdict as a [`Validity`].
    pub fn validity(&self) -> Validity {
        match self.result {
            Linearizability::Valid => Validity::Valid,
            Linearizability::Invalid { .. } => Validity::Invalid,
            Linearizability::Unknown { .. } => Validity::Unknown,
        }
    }

    /// The verdict as anomalies for a [`super::Report`] (empty when valid).
    pub fn anomalies(&self) -> Vec<Anomaly> {
        match &self.result {
            Linearizability::Valid => Vec::new(),
            Linearizability::Invalid { key, ops } => vec![Anomaly {
                kind: AnomalyKind::NotLinearizable,
                key: Some(*key),
                message: format!("no linearization of key {}; {}-op witness", key.0, ops.len()),
                ops: ops.clone(),
            }],
            Linearizability::Unknown { key, reason } => vec![Anomaly {
                kind: AnomalyKind::Unknown,
                key: Some(*key),
                message: reason.clone(),
                ops: Vec::new(),
            }],
        }
    }
}

/// Checks every key's register operations (read/write/cas; other ops are
/// ignored) within `budget` of wall time in total, shrinking included.
pub fn check_register(ops: &[Operation], budget: Duration) -> RegisterCheck {
    let deadline = Instant::now() + budget;
    let mut by_key: BTreeMap<Key, Vec<RegOp>> = BTreeMap::new();
    for (src, o) in ops.iter().enumerate() {
        for (key, r) in RegOp::from_operation(o, src) {
            by_key.entry(key).or_default().push(r);
        }
    }
    let mut check = RegisterCheck {
        keys: by_key.len(),
        ops: by_key.values().map(Vec::len).sum(),
        result: Linearizability::Valid,
    };
    for (key, key_ops) in by_key {
        match search(&key_ops, deadline) {
            Search::Linearizable => {}
            Search::Timeout => {
                if check.result == Linearizability::Valid {
                    let reason = format!("time budget of {budget:?} ran out on key {}", key.0);
                    check.result = Linearizability::Unknown { key, reason };
                }
            }
            Search::NotLinearizable => {
                let witness = shrink(key_ops, deadline);
                let ops = witness.iter().map(|r| r.to_operation(&ops[r.src])).collect();
                check.result = Linearizability::Invalid { key, ops };
                return check;
            }
        }
    }
    check
}

/// A register's model state: absent, or a value and whether it may expire.
type State = Option<(u64, bool)>;

/// What a register op does to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Read(Option<u64>),
    /// A write; `true`: with a time to live.
    Write(u64, bool),
    Delete,
    Cas(Option<u64>, u64),
}

impl Step {
    /// The state after applying this op to `state`, or `None` if illegal.
    fn apply(self, state: State) -> Option<State> {
        let absent_or_expiring = matches!(state, None | Some((_, true)));
        match self {
            Step::Read(None) => absent_or_expiring.then_some(None),
            Step::Read(Some(v)) => (state.map(|s| s.0) == Some(v)).then_some(state),
            Step::Write(v, ttl) => Some(Some((v, ttl))),
            Step::Delete => Some(None),
            Step::Cas(None, to) => absent_or_expiring.then_some(Some((to, false))),
            Step::Cas(Some(from), to) => (state.map(|s| s.0) == Some(from)).then_some(Some((to, false))),
        }
    }
}

/// One register op prepared for the search.
#[derive(Clone, Debug)]
struct RegOp {
    step: Step,
    call: u64,
    /// `None`: +infinity (info, or running at the witness cut).
    ret: Option<u64>,
    /// Index into the caller's operations.
    src: usize,
}

impl RegOp {
    /// The register ops an operation is (several for a batch write).
    fn from_operation(o: &Operation, src: usize) -> Vec<(Key, RegOp)> {
        let steps = match (&o.op, &o.outcome) {
            (_, Outcome::Fail) => return Vec::new(),
            (Op::Read { key }, Outcome::Ok(Output::Read(v))) => vec![(*key, Step::Read(*v))],
            (Op::Write { key, value }, _) => vec![(*key, Step::Write(*value, false))],
            (Op::WriteTtl { key, value }, _) => vec![(*key, Step::Write(*value, true))],
            (Op::Delete { key }, _) => vec![(*key, Step::Delete)],
            (Op::BatchWrite { writes }, _) => {
                writes.iter().map(|(k, v)| (*k, Step::Write(*v, false))).collect()
            }
            (Op::Cas { key, from, to }, _) => vec![(*key, Step::Cas(*from, *to))],
            _ => return Vec::new(), // info reads, other workloads
        };
        let ret = if matches!(o.outcome, Outcome::Ok(_)) { o.ret_ns } else { None };
        steps.into_iter().map(|(key, step)| (key, RegOp { step, call: o.call_ns, ret, src })).collect()
    }

    fn to_operation(&self, original: &Operation) -> Operation {
        let mut o = original.clone();
        if self.ret.is_none() {
            o.ret_ns = None;
            o.outcome = Outcome::Info;
        }
        o
    }
}

enum Search {
    Linearizable,
    NotLinearizable,
    Timeout,
}

const NIL: usize = usize::MAX;

/// The call/return entry list: node 0 is the head sentinel, entries
/// 1..=2n follow in time order.
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Op index of each entry.
    op: Vec<usize>,
    /// For a call entry, its return entry; `NIL` for return entries.
    ret_of: Vec<usize>,
}

impl Entries {
    fn new(ops: &[RegOp]) -> Entries {
        // (infinite?, time, is_return, op): calls before returns at equal times.
        let mut order: Vec<(bool, u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, o) in ops.iter().enumerate() {
            order.push((false, o.call, false, i));
            order.push((o.ret.is_none(), o.ret.unwrap_or(u64::MAX), true, i));
        }
        order.sort_unstable();
        let n = order.len() + 1;
        let mut e =
            Entries { next: vec![NIL; n], prev: vec![NIL; n], op: vec![NIL; n], ret_of: vec![NIL; n] };
        let mut call_entry = vec![NIL; ops.len()];
        for (pos, &(_, _, is_ret, i)) in order.iter().enumerate() {
            let idx = pos + 1;
            e.prev[idx] = idx - 1;
            e.next[idx - 1] = idx;
            e.op[idx] = i;
            if is_ret {
                e.ret_of[call_entry[i]] = idx;
            } else {
                call_entry[i] = idx;
            }
        }
        e
    }

    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        if n != NIL {
            self.prev[n] = x;
        }
    }

    /// Removes a call entry and its return entry.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.ret_of[call]);
    }

    /// Undoes the matching `lift`; lifts must be undone in reverse order.
    fn unlift(&mut self, call: usize) {
        self.relink(self.ret_of[call]);
        self.relink(call);
    }
}

/// WGL search over one key's ops (see the module doc).
fn search(ops: &[RegOp], deadline: Instant) -> Search {
    let mut list = Entries::new(ops);
    let mut required = ops.iter().filter(|o| o.ret.is_some()).count();
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut entry = list.next[0];
    let mut steps: u64 = 0;
    loop {
        if required == 0 {
            return Search::Linearizable;
        }
        steps += 1;
        if steps.is_multiple_of(1024) && Instant::now() >= deadline {
            return Search::Timeout;
        }
        // While a required op is unlinearized, its finite return entry lies
        // before every +infinity one, so the scan stops at a return first.
        debug_assert!(entry != NIL);
        let i = list.op[entry];
        if list.ret_of[entry] != NIL {
            if let Some(next_state) = ops[i].step.apply(state) {
                linearized[i / 64] |= 1 << (i % 64);
                if seen.insert((linearized.clone(), next_state)) {
                    stack.push((entry, state));
                    state = next_state;
                    required -= usize::from(ops[i].ret.is_some());
                    list.lift(entry);
                    entry = list.next[0];
                    continue;
                }
                linearized[i / 64] &= !(1 << (i % 64));
            }
            entry = list.next[entry];
        } else {
            // A return: its op should have been linearized by now. Backtrack.
            let Some((call, old_state)) = stack.pop() else {
                return Search::NotLinearizable;
            };
            let j = list.op[call];
            linearized[j / 64] &= !(1 << (j % 64));
            required += usize::from(ops[j].ret.is_some());
            state = old_state;
            list.unlift(call);
            entry = list.next[call];
        }
    }
}

/// Shrinks a non-linearizable key history to a smaller non-linearizable one
/// (module doc), stopping early at the deadline with the best found so far.
fn shrink(ops: Vec<RegOp>, deadline: Instant) -> Vec<RegOp> {
    let invalid = |candidate: &[RegOp]| matches!(search(candidate, deadline), Search::NotLinearizable);
    let mut cuts: Vec<u64> = ops.iter().map(|o| o.call).collect();
    cuts.sort_unstable();
    cuts.dedup();
    // Binary search for the earliest invalid cut; `hi` = cuts.len() is the
    // whole history, known invalid.
    let (mut lo, mut hi) = (0, cuts.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        let candidate = prefix(&ops, cuts[mid]);
        match search(&candidate, deadline) {
            Search::NotLinearizable => hi = mid,
            Search::Linearizable => lo = mid + 1,
            Search::Timeout => break,
        }
    }
    let mut witness = if hi < cuts.len() { prefix(&ops, cuts[hi]) } else { ops };
    let mut i = witness.len();
    while i > 0 && Instant::now() < deadline {
        i -= 1;
        if matches!(witness[i].step, Step::Read(_)) {
            let removed = witness.remove(i);
            if !invalid(&witness) {
                witness.insert(i, removed);
            }
        }
    }
    witness.sort_by_key(|o| (o.call, o.src));
    witness
}

/// The ops invoked at or before `cut`; those still running then become
/// +infinity (`info`), and running reads are dropped.
fn prefix(ops: &[RegOp], cut: u64) -> Vec<RegOp> {
    ops.iter()
        .filter(|o| o.call <= cut)
        .filter_map(|o| match o.ret {
            Some(r) if r <= cut => Some(o.clone()),
            _ if matches!(o.step, Step::Read(_)) => None,
            _ => Some(RegOp { ret: None, ..o.clone() }),
        })
        .collect()
}

#[cfg(test)]
mod tests;
