//! What the storage node and PD share to drive raft-rs groups.
//!
//! Both processes run raft-rs groups persisted to a RocksDB engine: the node
//! one group per region peer, PD one group for its metadata. This crate holds
//! the parts they share, written once:
//!
//! - [`duration`]: TiKV-style durations (`"10s"`, `"1h30m"`) for config files;
//! - [`logging`]: `tracing` set-up, and raft-rs' `slog` records routed to it;
//! - [`failpoints`]: arming crash points, and the panic policy (any panic ends
//!   the process);
//! - [`round`]: the ready round every process drives its raft groups with;
//! - [`log`]: a group's log entries in an engine, for raft-rs' `Storage`.

pub mod duration;
pub mod failpoints;
pub mod log;
pub mod logging;
pub mod round;
