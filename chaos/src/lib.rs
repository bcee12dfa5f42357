//! Mnemosyne's test harness.
//!
//! - [`cluster`]: starts PD and storage nodes as real processes on loopback,
//!   kills (SIGKILL) and restarts them; used by the process tests in
//!   `chaos/tests/` and later by the Jepsen-style chaos harness.
//! - `mnemo-bench` (`src/bin/mnemo-bench.rs`): N concurrent clients doing
//!   put or get for T seconds, printing ops/s and p50/p99/p999 latency.
//! - [`history`]: operation histories (invoke, then ok/fail/info) recorded
//!   concurrently by workloads and stored as JSONL.
//! - [`checker`]: judges a history: per-key linearizability (WGL search with
//!   a time budget), the set and the counter checkers, and `results.json`.

pub mod checker;
pub mod cluster;
pub mod history;
