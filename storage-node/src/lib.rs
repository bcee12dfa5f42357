//! The Mnemosyne storage node (`mnemo-node`).
//!
//! A node stores replicas ("peers") of many regions in one RocksDB kv engine
//! and keeps their raft logs in `raft-engine` (or, configured so, a second
//! RocksDB). Data flows like this:
//!
//! ```text
//! client ──gRPC tikvpb──▶ service ──StoreMsg──▶ raftstore (one thread, all peers)
//!                                                 │  ready: append (1 fsync), apply
//!            other nodes ◀──BatchRaft/Snapshot── transport ◀──┘
//!                     PD ◀──heartbeats / operators── pd_worker
//! ```
//!
//! Where to look:
//! - [`engine`] (crate `mnemo-engine`): the storage trait, RocksDB, raft-engine and in-memory engines;
//! - [`keys`]: how keys, values and raft state are laid out;
//! - [`raftstore`]: multi-raft — peers, the store loop, apply, snapshots;
//! - [`service`]: the RawKV gRPC API and its limits ([`batch_commands`]: many on one stream);
//! - [`transport`]: node-to-node raft messages;
//! - [`pd_worker`]: heartbeats to PD and operators from it;
//! - [`node`]: start-up, identity and cluster bootstrap;
//! - [`config`], [`status`], [`metrics`]: operating the node;
//! - [`failpoints`]: crash points for tests, and the panic policy (any panic ends the process).
//!
//! What can go wrong and what happens: a crash at any point loses no
//! acknowledged write (the raft log is fsynced before a write is
//! acknowledged and replayed from the last applied index at start); a lost
//! leader is replaced within about one election timeout (≈1 s); a storage
//! error in the store loop stops the process rather than risk divergence.

pub mod batch_commands;
pub mod config;
pub mod error;
pub mod failpoints;
pub mod flow;
pub mod keys;
pub mod metrics;
pub mod node;
pub mod pd_worker;
pub mod raftstore;
pub mod service;
pub mod status;
pub mod transport;

// Building blocks shared with PD, in crates of their own beside this one.
pub use mnemo_engine as engine;
pub use mnemo_raft_driver::{duration, logging};
