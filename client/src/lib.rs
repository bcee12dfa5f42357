//! The Mnemosyne Rust client: a "smart" raw key-value client in the manner
//! of TiKV's.
//!
//! # What it does
//!
//! The key space is cut into regions, each a raft group of peers on several
//! storage nodes; only a region's leader serves reads and writes. The client
//! asks the placement driver (PD) which region holds a key and where its
//! leader lives, then talks to that node directly. [`RawClient`] offers
//! get/put/delete, their batch forms, range delete, forward and reverse
//! scans, compare-and-swap and TTLs.
//!
//! # Data flow
//!
//! ```text
//! RawClient ──▶ Executor ──▶ RegionCache ──miss──▶ PdClient (GetRegion, GetStore)
//!                  │
//!                  └──▶ one tonic channel per store ──▶ node (Raw* RPCs)
//! ```
//!
//! - [`pd`]: finds the PD leader through `GetMembers`, follows it when it
//!   moves, stamps every request with the cluster id.
//! - [`region_cache`]: an ordered map start key → (region, leader), plus store
//!   addresses. It may be stale; nodes reject stale epochs, so staleness costs
//!   a retry, never a wrong answer.
//! - `executor`: routes one attempt (region → leader peer → store address →
//!   channel) and runs the retry loops; `batch` cuts multi-key requests along
//!   region boundaries (groups are sent in parallel, answers put back in
//!   request order); `scan` walks regions forwards or backwards.
//!
//! # Retries
//!
//! Every call has a deadline (`Config::timeout`, default 20 s) and every RPC a
//! timeout (`Config::rpc_timeout`, default 2 s). Failed attempts are retried
//! with exponential backoff and full jitter ([`backoff`]: 2 ms doubling to
//! 500 ms) following the region-error table of DESIGN §3: a `NotLeader` hint
//! is followed at once, `EpochNotMatch` installs the regions the node sent,
//! `RegionNotFound`/`KeyNotInRegion`/`StoreNotMatch` reload from PD,
//! `ServerIsBusy` waits at least the node's hint, `RaftEntryTooLarge` fails.
//! Nothing retries forever: when the deadline passes the call fails with
//! [`Error::DeadlineExceeded`].
//!
//! # Undetermined outcomes
//!
//! A write is retried **only** when the failure proves it was not applied:
//! the region errors above, a refused connection, a failed lookup. After a
//! timeout, a connection that broke once the request was out, or
//! `StaleCommand`, the write may have been applied, may be applied later, or
//! not at all. Retrying it could apply it twice, the second time after
//! someone else's write, which breaks linearizability; calling it failed or
//! successful would be a lie. Such a call ends with
//! [`Error::Undetermined`], and the caller decides (usually: read back). The
//! same holds for a multi-region batch write that was applied in some regions
//! and failed in others. Conversely, any other error from a write means it
//! was not applied.
//!
//! Plain writes are sent with `for_cas = true`, asking the node to serialise
//! them with compare-and-swap on the same key.

#![warn(missing_docs)]

pub mod backoff;
mod batch;
mod batch_commands;
pub mod error;
mod executor;
pub mod pd;
pub mod raw;
pub mod region_cache;
mod retry;
mod scan;
mod transport;

pub use batch::KvPair;
pub use error::{Error, RegionError, Result};
pub use pd::PdClient;
pub use raw::{Config, RawClient};
pub use region_cache::{CachedRegion, RegionCache};
