//! The TSO workload's check: timestamps are unique, and they respect real
//! time — a timestamp asked for after another was handed out is above it.
//!
//! Each TSO worker asks for one timestamp at a time and records every call
//! that got one, with when it was sent and answered (failed calls record
//! nothing: a failure hands nothing out). Three properties:
//!
//! - per client, timestamps strictly increase;
//! - no timestamp goes to two clients (two leaders handing out one range);
//! - across clients, a call sent after another was answered gets a larger
//!   timestamp (a new leader that started below its predecessor, or a
//!   deposed leader still serving, breaks this even without a collision).

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{Anomaly, AnomalyKind, Validity};

/// One call that got a timestamp, on the history's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TsoCall {
    /// When the request was sent.
    pub invoke_ns: u64,
    /// When the answer arrived.
    pub complete_ns: u64,
    /// The timestamp.
    pub ts: u64,
}

/// What the check found.
pub struct TsoVerdict {
    /// Valid, or Invalid with anomalies.
    pub validity: Validity,
    /// One per violation (at most a few of each kind).
    pub anomalies: Vec<Anomaly>,
    /// Counts, for the report.
    pub details: Value,
}

/// Most anomalies reported of each kind (the first ones tell the story).
const MAX_REPORTED: usize = 5;

fn anomaly(kind: AnomalyKind, message: String) -> Anomaly {
    Anomaly { kind, key: None, message, ops: Vec::new() }
}

/// Checks every client's calls (each client's in the order it made them).
pub fn check(per_client: &[Vec<TsoCall>]) -> TsoVerdict {
    let mut anomalies = Vec::new();
    let mut backwards = 0usize;
    for (client, calls) in per_client.iter().enumerate() {
        for w in calls.windows(2) {
            if w[1].ts <= w[0].ts {
                backwards += 1;
                if backwards <= MAX_REPORTED {
                    let msg = format!(
                        "TSO client {client}: {} after {} (not strictly increasing)",
                        w[1].ts, w[0].ts
                    );
                    anomalies.push(anomaly(AnomalyKind::TsoNotIncreasing, msg));
                }
            }
        }
    }
    let mut owner: HashMap<u64, usize> = HashMap::new();
    let mut duplicates = 0usize;
    for (client, calls) in per_client.iter().enumerate() {
        for c in calls {
            if let Some(other) = owner.insert(c.ts, client) {
                if other != client {
                    duplicates += 1;
                    if duplicates <= MAX_REPORTED {
                        let msg = format!("timestamp {} handed to TSO clients {other} and {client}", c.ts);
                        anomalies.push(anomaly(AnomalyKind::TsoDuplicate, msg));
                    }
                }
            }
        }
    }
    // Real time: sweep the answers and the sends in time order; every send
    // must get more than the largest timestamp already answered (answers
    // at the very same instant as a send do not count as before it).
    let mut events: Vec<(u64, u8, u64, usize)> = Vec::new();
    for (client, calls) in per_client.iter().enumerate() {
        for c in calls {
            events.push((c.invoke_ns, 0, c.ts, client));
            events.push((c.complete_ns, 1, c.ts, client));
        }
    }
    events.sort_unstable();
    let mut max_answered: Option<(u64, usize)> = None;
    let mut stale = 0usize;
    for (at, kind, ts, client) in events {
        if kind == 1 {
            if max_answered.is_none_or(|(m, _)| ts > m) {
                max_answered = Some((ts, client));
            }
        } else if let Some((m, by)) = max_answered.filter(|(m, _)| ts <= *m) {
            stale += 1;
            if stale <= MAX_REPORTED {
                let msg = format!(
                    "TSO client {client} asked at {:.3} s and got {ts}, not above {m} already handed to client {by}",
                    at as f64 / 1e9
                );
                anomalies.push(anomaly(AnomalyKind::TsoNotIncreasing, msg));
            }
        }
    }
    let total: usize = per_client.iter().map(Vec::len).sum();
    let validity = if backwards + duplicates + stale > 0 { Validity::Invalid } else { Validity::Valid };
    TsoVerdict {
        validity,
        anomalies,
        details: json!({
            "clients": per_client.len(),
            "timestamps": total,
            "not_increasing": backwards,
            "duplicates": duplicates,
            "behind_real_time": stale,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(invoke_ns: u64, complete_ns: u64, ts: u64) -> TsoCall {
        TsoCall { invoke_ns, complete_ns, ts }
    }

    #[test]
    fn increasing_unique_and_in_real_time_order_is_valid() {
        // Overlapping calls may come back in either order.
        let v = check(&[vec![call(0, 10, 1), call(20, 30, 5)], vec![call(5, 25, 3), call(31, 40, 6)]]);
        assert_eq!(v.validity, Validity::Valid, "{:?}", v.anomalies);
        assert_eq!(v.details["timestamps"], 4);
    }

    #[test]
    fn a_step_back_a_shared_timestamp_or_a_stale_answer_is_invalid() {
        let back = check(&[vec![call(0, 1, 1), call(2, 3, 5), call(4, 5, 4)]]);
        assert_eq!(back.validity, Validity::Invalid);
        assert_eq!(back.anomalies[0].kind, AnomalyKind::TsoNotIncreasing);
        let shared = check(&[vec![call(0, 1, 1), call(2, 3, 5)], vec![call(0, 4, 5)]]);
        assert_eq!(shared.validity, Validity::Invalid);
        assert!(shared.anomalies.iter().any(|a| a.kind == AnomalyKind::TsoDuplicate));
        // Client 1 asks after client 0 got 9 and gets 7: a stale leader.
        let stale = check(&[vec![call(0, 10, 9)], vec![call(11, 12, 7)]]);
        assert_eq!(stale.validity, Validity::Invalid);
        assert_eq!(stale.details["behind_real_time"], 1);
    }
}
