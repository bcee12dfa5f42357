//! Known-good and known-bad register histories, and a brute-force
//! cross-check of the WGL search on small random histories.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::history::ProcessId;

const BUDGET: Duration = Duration::from_secs(5);

fn ok(call: u64, ret: u64, op: Op, out: Output) -> Operation {
    Operation { process: ProcessId(0), op, call_ns: call, ret_ns: Some(ret), outcome: Outcome::Ok(out) }
}
fn info(call: u64, op: Op) -> Operation {
    Operation { process: ProcessId(0), op, call_ns: call, ret_ns: None, outcome: Outcome::Info }
}
fn fail(call: u64, ret: u64, op: Op) -> Operation {
    Operation { process: ProcessId(0), op, call_ns: call, ret_ns: Some(ret), outcome: Outcome::Fail }
}
fn w(key: u64, value: u64) -> Op {
    Op::Write { key: Key(key), value }
}
fn cas(key: u64, from: Option<u64>, to: u64) -> Op {
    Op::Cas { key: Key(key), from, to }
}
fn read(call: u64, ret: u64, key: u64, v: Option<u64>) -> Operation {
    ok(call, ret, Op::Read { key: Key(key) }, Output::Read(v))
}
fn done(call: u64, ret: u64, op: Op) -> Operation {
    ok(call, ret, op, Output::Done)
}
fn verdict(ops: &[Operation]) -> Validity {
    check_register(ops, BUDGET).validity()
}

#[test]
fn sequential_and_concurrent_good_histories() {
    // write 1; read 1; cas 1→2; read 2.
    let h = [
        done(0, 10, w(0, 1)),
        read(20, 30, 0, Some(1)),
        done(40, 50, cas(0, Some(1), 2)),
        read(60, 70, 0, Some(2)),
    ];
    assert_eq!(verdict(&h), Validity::Valid);
    // A read concurrent with a write may see the old or the new value.
    for seen in [None, Some(1)] {
        assert_eq!(verdict(&[done(0, 100, w(0, 1)), read(10, 20, 0, seen)]), Validity::Valid);
    }
    // The empty history and a read of an absent key are fine.
    assert_eq!(verdict(&[]), Validity::Valid);
    assert_eq!(verdict(&[read(0, 1, 0, None)]), Validity::Valid);
}

#[test]
fn values_with_a_ttl_may_vanish_but_never_come_back() {
    let wt = |v| Op::WriteTtl { key: Key(0), value: v };
    // An expiring value may be read, then found gone.
    let h = [done(0, 10, wt(1)), read(20, 30, 0, Some(1)), read(40, 50, 0, None)];
    assert_eq!(verdict(&h), Validity::Valid);
    // Once gone it stays gone.
    let h = [done(0, 10, wt(1)), read(20, 30, 0, None), read(40, 50, 0, Some(1))];
    assert_eq!(verdict(&h), Validity::Invalid);
    // A CAS may find it expired (absent) and succeed...
    let h = [done(0, 10, wt(1)), done(20, 30, cas(0, None, 2)), read(40, 50, 0, Some(2))];
    assert_eq!(verdict(&h), Validity::Valid);
    // ...and what a CAS stores has no TTL: it cannot vanish. (Replicas that
    // judged the expiry differently would show exactly this.)
    let h = [done(0, 10, wt(1)), done(20, 30, cas(0, Some(1), 2)), read(40, 50, 0, None)];
    assert_eq!(verdict(&h), Validity::Invalid);
    // A value without TTL never vanishes.
    assert_eq!(verdict(&[done(0, 10, w(0, 1)), read(20, 30, 0, None)]), Validity::Invalid);
}

#[test]
fn deletes_and_batch_writes() {
    let del = Op::Delete { key: Key(0) };
    let h = [done(0, 10, w(0, 1)), done(20, 30, del.clone()), read(40, 50, 0, None)];
    assert_eq!(verdict(&h), Validity::Valid);
    let h = [done(0, 10, w(0, 1)), done(20, 30, del), read(40, 50, 0, Some(1))];
    assert_eq!(verdict(&h), Validity::Invalid);
    // A batch write sets each of its keys.
    let batch = Op::BatchWrite { writes: vec![(Key(0), 5), (Key(1), 6)] };
    let h = [done(0, 10, batch.clone()), read(20, 30, 0, Some(5)), read(20, 30, 1, Some(6))];
    assert_eq!(verdict(&h), Validity::Valid);
    let h = [done(0, 10, batch), read(20, 30, 1, None)];
    assert_eq!(verdict(&h), Validity::Invalid);
}

#[test]
fn stale_read_is_invalid() {
    // write 1, then write 2, then a read still sees 1.
    let h = [done(0, 10, w(0, 1)), done(20, 30, w(0, 2)), read(40, 50, 0, Some(1))];
    let check = check_register(&h, BUDGET);
    let Linearizability::Invalid { key, ops } = check.result else { panic!("{check:?}") };
    assert_eq!(key, Key(0));
    assert_eq!(ops.len(), 3);
}

#[test]
fn lost_write_is_invalid() {
    // An acknowledged write, then a read of the absent key.
    assert_eq!(verdict(&[done(0, 10, w(0, 1)), read(20, 30, 0, None)]), Validity::Invalid);
}

#[test]
fn cas_anomalies() {
    // Two sequential CASes from absent both succeed: one is a lost update.
    let h = [done(0, 10, cas(0, None, 1)), done(20, 30, cas(0, None, 2))];
    assert_eq!(verdict(&h), Validity::Invalid);
    // Concurrent ones too: only one can find the key absent.
    let h = [done(0, 30, cas(0, None, 1)), done(5, 35, cas(0, None, 2))];
    assert_eq!(verdict(&h), Validity::Invalid);
    // CAS from a value never written.
    assert_eq!(verdict(&[done(0, 10, cas(0, Some(5), 1))]), Validity::Invalid);
    // A failed CAS did not happen: reading its value is invalid…
    let h = [done(0, 10, w(0, 1)), fail(20, 30, cas(0, Some(1), 7)), read(40, 50, 0, Some(7))];
    assert_eq!(verdict(&h), Validity::Invalid);
    // …and a read after it sees the old value.
    let h = [done(0, 10, w(0, 1)), fail(20, 30, cas(0, Some(1), 7)), read(40, 50, 0, Some(1))];
    assert_eq!(verdict(&h), Validity::Valid);
}

#[test]
fn info_ops_that_must_have_taken_effect() {
    // Only the timed-out write can explain the read of 1.
    assert_eq!(verdict(&[info(0, w(0, 1)), read(10, 20, 0, Some(1))]), Validity::Valid);
    // It may take effect long after the client gave up (return = +inf).
    let h = [info(0, w(0, 1)), read(10, 20, 0, None), done(30, 40, w(0, 2)), read(50, 60, 0, Some(1))];
    assert_eq!(verdict(&h), Validity::Valid);
    // An info CAS takes effect only from its `from` value.
    let h = [done(0, 10, w(0, 3)), info(20, cas(0, Some(3), 4)), read(30, 40, 0, Some(4))];
    assert_eq!(verdict(&h), Validity::Valid);
}

#[test]
fn info_ops_that_must_not_have_taken_effect() {
    // An info write that did not happen is fine.
    let h = [done(0, 10, w(0, 1)), info(20, w(0, 2)), read(30, 40, 0, Some(1))];
    assert_eq!(verdict(&h), Validity::Valid);
    // It can take effect at most once: 1, 2, then 1 again is impossible.
    let h = [
        done(0, 10, w(0, 1)),
        info(5, w(0, 2)),
        read(20, 30, 0, Some(1)),
        read(40, 50, 0, Some(2)),
        read(60, 70, 0, Some(1)),
    ];
    assert_eq!(verdict(&h), Validity::Invalid);
    // An info CAS cannot take effect from the wrong value.
    let h = [done(0, 10, w(0, 1)), info(20, cas(0, Some(3), 4)), read(30, 40, 0, Some(4))];
    assert_eq!(verdict(&h), Validity::Invalid);
    // An info op cannot take effect before its invocation.
    let h = [read(0, 10, 0, Some(1)), info(20, w(0, 1))];
    assert_eq!(verdict(&h), Validity::Invalid);
}

#[test]
fn keys_are_checked_independently() {
    let h = [
        done(0, 10, w(0, 1)),
        done(0, 10, w(1, 1)),
        done(20, 30, w(1, 2)),
        read(40, 50, 0, Some(1)),
        read(40, 50, 1, Some(1)), // stale on key 1 only
    ];
    let check = check_register(&h, BUDGET);
    assert_eq!((check.keys, check.ops), (2, 5));
    assert!(matches!(check.result, Linearizability::Invalid { key: Key(1), .. }), "{check:?}");
    // The same value on another key does not satisfy a read.
    assert_eq!(verdict(&[done(0, 10, w(0, 1)), read(20, 30, 1, Some(1))]), Validity::Invalid);
}

#[test]
fn witness_is_cut_short_and_itself_invalid() {
    // 40 good ops, one stale read, 40 more good ops.
    let mut h = Vec::new();
    let mut t = 0;
    for v in 0..20 {
        h.push(done(t, t + 5, w(0, v)));
        h.push(read(t + 10, t + 15, 0, Some(v)));
        t += 20;
    }
    h.push(read(t, t + 5, 0, Some(3))); // stale
    t += 10;
    for v in 20..40 {
        h.push(done(t, t + 5, w(0, v)));
        h.push(read(t + 10, t + 15, 0, Some(v)));
        t += 20;
    }
    let check = check_register(&h, BUDGET);
    let Linearizability::Invalid { ops, .. } = check.result else { panic!("{check:?}") };
    // Cut right after the stale read; every other read dropped. Writes stay
    // (dropping them is unsound in general); the write running at the cut
    // shows as info.
    let reads: Vec<_> = ops.iter().filter(|o| matches!(o.op, Op::Read { .. })).collect();
    assert_eq!(reads, [&read(400, 405, 0, Some(3))]);
    assert!(ops.iter().all(|o| o.call_ns <= 410), "witness goes past the cut: {ops:?}");
    assert_eq!(ops.len(), 22);
    assert_eq!(ops[21].outcome, Outcome::Info);
    assert_eq!(verdict(&ops), Validity::Invalid);
    assert!(!brute_force_linearizable(&ops));
}

#[test]
fn budget_exhaustion_is_unknown_not_valid() {
    // 24 concurrent writes then an impossible read: the search must try
    // (nearly) every subset of writes before giving up.
    let mut h: Vec<Operation> = (0..24).map(|v| done(v, 1000, w(0, v))).collect();
    h.push(read(2000, 2001, 0, Some(999)));
    let start = Instant::now();
    let check = check_register(&h, Duration::from_millis(50));
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(check.result, Linearizability::Unknown { key: Key(0), .. }), "{check:?}");
    assert_eq!(check.validity(), Validity::Unknown);
}

// ---- brute force ---------------------------------------------------------

/// Independent oracle: is there an order of all `ok` ops plus any subset of
/// `info` ops, consistent with real time (a before b if a returns strictly
/// before b is invoked), that the register model accepts? Single key.
fn brute_force_linearizable(ops: &[Operation]) -> bool {
    struct B {
        step: Step,
        call: u64,
        ret: Option<u64>,
    }
    let bs: Vec<B> = ops
        .iter()
        .filter_map(|o| {
            let step = match (&o.op, &o.outcome) {
                (_, Outcome::Fail) => return None,
                (Op::Read { .. }, Outcome::Ok(Output::Read(v))) => Step::Read(*v),
                (Op::Read { .. }, _) => return None,
                (Op::Write { value, .. }, _) => Step::Write(*value, false),
                (Op::Cas { from, to, .. }, _) => Step::Cas(*from, *to),
                _ => unreachable!(),
            };
            let ret = if matches!(o.outcome, Outcome::Ok(_)) { o.ret_ns } else { None };
            Some(B { step, call: o.call_ns, ret })
        })
        .collect();
    fn dfs(bs: &[B], used: u32, state: State) -> bool {
        if (0..bs.len()).all(|i| used & (1 << i) != 0 || bs[i].ret.is_none()) {
            return true;
        }
        (0..bs.len()).any(|i| {
            used & (1 << i) == 0
                && (0..bs.len())
                    .all(|j| used & (1 << j) != 0 || j == i || bs[j].ret.is_none_or(|r| r >= bs[i].call))
                && bs[i].step.apply(state).is_some_and(|s| dfs(bs, used | (1 << i), s))
        })
    }
    dfs(&bs, 0, None)
}

/// A small random single-key history from a simulated linearizable register
/// (each op takes effect at a random point inside its interval; an `info` op
/// at a random later point or not at all); `mutate` then corrupts one op.
fn random_history(rng: &mut StdRng, mutate: bool) -> Vec<Operation> {
    let slots = rng.gen_range(2..=4usize);
    let n = rng.gen_range(1..=8usize);
    let mut cursor = vec![0u64; slots];
    let mut pid = (0..slots as u64).collect::<Vec<_>>();
    let mut next_pid = slots as u64;
    // (operation, linearization point or None if it never takes effect)
    let mut sim: Vec<(Operation, Option<u64>)> = Vec::new();
    for _ in 0..n {
        let s = rng.gen_range(0..slots);
        let call = cursor[s] + rng.gen_range(0..4);
        let ret = call + rng.gen_range(1..8);
        let op = match rng.gen_range(0..3) {
            0 => Op::Read { key: Key(0) },
            1 => w(0, rng.gen_range(0..3)),
            _ => {
                cas(0, if rng.gen_bool(0.3) { None } else { Some(rng.gen_range(0..3)) }, rng.gen_range(0..3))
            }
        };
        let is_info = rng.gen_bool(0.15);
        let lin = if is_info {
            rng.gen_bool(0.5).then(|| call + rng.gen_range(0..20))
        } else {
            Some(rng.gen_range(call..=ret))
        };
        let outcome = if is_info { Outcome::Info } else { Outcome::Ok(Output::Done) };
        let o = Operation {
            process: ProcessId(pid[s]),
            op,
            call_ns: call,
            ret_ns: (!is_info).then_some(ret),
            outcome,
        };
        sim.push((o, lin));
        cursor[s] = ret + 1;
        if is_info {
            pid[s] = next_pid;
            next_pid += 1;
        }
    }
    // Apply in linearization order to fill in outputs and CAS outcomes.
    let mut order: Vec<usize> = (0..sim.len()).filter(|&i| sim[i].1.is_some()).collect();
    order.sort_by_key(|&i| (sim[i].1, i));
    let mut state = None;
    for i in order {
        let o = &mut sim[i].0;
        let info = o.outcome == Outcome::Info;
        match o.op {
            Op::Read { .. } if !info => o.outcome = Outcome::Ok(Output::Read(state)),
            Op::Write { value, .. } => state = Some(value),
            Op::Cas { from, to, .. } if from == state => state = Some(to),
            Op::Cas { .. } if !info => o.outcome = Outcome::Fail,
            _ => {}
        }
    }
    let mut ops: Vec<Operation> = sim.into_iter().map(|(o, _)| o).collect();
    if mutate {
        let i = rng.gen_range(0..ops.len());
        let o = &mut ops[i];
        match (&mut o.op, &mut o.outcome) {
            (Op::Read { .. }, Outcome::Ok(Output::Read(v))) => {
                *v = if rng.gen_bool(0.2) { None } else { Some(rng.gen_range(0..3)) }
            }
            (Op::Write { value, .. }, _) => *value = rng.gen_range(0..3),
            (Op::Cas { .. }, Outcome::Fail) => o.outcome = Outcome::Ok(Output::Done),
            (Op::Cas { .. }, Outcome::Ok(_)) => o.outcome = Outcome::Fail,
            (Op::Cas { to, .. }, _) => *to = rng.gen_range(0..3),
            _ => o.ret_ns = o.ret_ns.map(|r| r + 100), // stretch it instead
        }
    }
    ops
}

#[test]
fn wgl_agrees_with_brute_force_on_random_histories() {
    let (mut valid, mut invalid) = (0, 0);
    for seed in 0..600u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mutate = seed % 2 == 1;
        let h = random_history(&mut rng, mutate);
        let expected = brute_force_linearizable(&h);
        if !mutate {
            assert!(expected, "seed {seed}: simulated register not linearizable? {h:#?}");
        }
        let check = check_register(&h, BUDGET);
        match &check.result {
            Linearizability::Valid => {
                assert!(expected, "seed {seed}: WGL valid, brute force invalid: {h:#?}");
                valid += 1;
            }
            Linearizability::Invalid { ops, .. } => {
                assert!(!expected, "seed {seed}: WGL invalid, brute force valid: {h:#?}");
                assert!(!brute_force_linearizable(ops), "seed {seed}: witness is linearizable: {ops:#?}");
                invalid += 1;
            }
            Linearizability::Unknown { .. } => panic!("seed {seed}: unknown on a tiny history"),
        }
    }
    // The generator must exercise both answers.
    assert!(valid > 300 && invalid > 60, "valid {valid}, invalid {invalid}");
}
