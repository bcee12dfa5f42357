//! Mnemosyne's test harness.
//!
//! - [`cluster`]: starts PD and storage nodes as real processes (on
//!   loopback, or each node and PD member in its own network namespace via
//!   [`net`]),
//!   kills (SIGKILL), restarts, pauses them and cuts their links; used by
//!   the process tests in `chaos/tests/` and by the chaos harness.
//! - `mnemo-bench` (`src/bin/mnemo-bench.rs`, [`bench`]): closed-loop
//!   clients running put/get/batch_get/scan/cas or a YCSB mix against
//!   Mnemosyne, etcd or RocksDB in process, with HDR latency histograms.
//! - The Jepsen-style chaos harness, `mnemo-chaos` (`src/bin/mnemo-chaos.rs`):
//!   [`run`] drives one run: [`workload`]s (register, set, counter) through
//!   the real client, recorded as a [`history`], while the [`nemesis`]
//!   injects faults; then the [`checker`]s judge the history, [`replicas`]
//!   compares the replicas' data, and [`report`] writes `results.json` and
//!   `report.html`.

pub mod bench;
pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod replicas;
pub mod report;
pub mod run;
pub mod workload;
