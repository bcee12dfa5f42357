//! # Mnemosyne placement driver (`mnemo-pd`)
//!
//! PD is the cluster's brain. Storage nodes and clients ask it three kinds
//! of questions, and it answers each from one place:
//!
//! - **Where is a key?** PD keeps the *region map*: every region's range,
//!   epoch, peers and (from heartbeats) its leader. Clients look keys up
//!   (`GetRegion`, `GetRegionByID`, `ScanRegions`) and cache the answers;
//!   nodes keep the map current with region heartbeats and split reports.
//! - **What is unique?** The *id allocator* (store, region and peer ids) and
//!   the *timestamp oracle* (TSO) hand out values that never repeat, not even
//!   across restarts.
//! - **What should move?** The [`schedule`] module: the *replica checker*
//!   keeps every region at `replication.max-replicas` healthy voters placed
//!   by store labels (replacing peers on Down or Offline stores), and the
//!   *balancers* spread replicas (balance-region) and leaders
//!   (balance-leader) evenly over the stores; for chaos testing,
//!   shuffle-leader and shuffle-region can be added at run time to keep
//!   leaders and replicas moving. Their decisions become
//!   *operators* — steps such as add a learner, swap it in for a voter by
//!   joint consensus, transfer leadership, split — handed to the region's
//!   leader one step at a time in heartbeat responses.
//!
//! ## State
//!
//! | what                        | persisted | source of truth                     |
//! |-----------------------------|-----------|-------------------------------------|
//! | cluster id, bootstrapped    | yes       | first start / `Bootstrap`           |
//! | stores (address, labels, state) | yes   | `PutStore`, store state changes     |
//! | region metadata (range, epoch, peers) | yes | heartbeats, `ReportBatchSplit`  |
//! | id window end, TSO bound    | yes       | the allocators, ahead of use        |
//! | config changed at run time  | yes       | `POST /pd/api/v1/config` (wins over the file) |
//! | active schedulers           | yes       | `POST`/`DELETE /pd/api/v1/schedulers` (default: the balancers) |
//! | leaders, store stats, heartbeat times | no | heartbeats (rebuilt after restart) |
//! | operators                   | no        | checkers, balancers, `POST /pd/api/v1/operators` |
//!
//! Persisted state changes only through [`meta::Command`]s applied by
//! [`meta::StateMachine::stage`], behind a [`meta::Replicator`]: the PD raft
//! group ([`raft`]), whose log every member applies in order (one member in
//! development, three in production), and whose leader alone serves. The
//! engine is [`mnemo_engine::RocksEngine`] (`Cf::Meta`, under
//! `<data-dir>/meta`), which also holds the group's raft log.
//!
//! ## Invariants
//!
//! - An id or timestamp is handed out only below a bound already on disk
//!   (`id.rs`, `tso.rs`); a restart resumes above that bound.
//! - Regions in the map never overlap; a record older than what PD holds
//!   (`RegionEpoch::is_stale_against`, or overlapping a region with a newer
//!   `version`) is ignored ([`region_map`]).
//! - At most one operator per region, within per-kind limits; steps are
//!   re-sent until the region shows them done, and dropped on timeout
//!   ([`schedule`]).
//! - Every request except `GetMembers` must carry this cluster's id.
//!
//! ## Data flow
//!
//! ```text
//!  gRPC (tonic) ─┐                       ┌─ meta::StateMachine ── RocksEngine
//!                ├─► server ─► Cluster ──┤   (via Replicator)
//!  HTTP (axum) ──┘   convert    (lock)   ├─ IdAllocator, TsoAllocator
//!  patrol timer ─┘   wire↔domain         └─ schedule: checkers, balancers, operators
//!        ▲                                        │ steps
//!        └── heartbeat streams (one per store) ◄──┘
//! ```
//!
//! The state machine's commands become durable through a
//! [`meta::Replicator`], and who serves is a [`raft::Leadership`]: the
//! members' own raft group ([`raft`], the default) or an external etcd
//! ([`etcd`], `--backend etcd`).
//!
//! Decisions are sans-IO: the region map, allocators, checkers, balancers
//! and operators take their inputs (including `now`) and return results;
//! [`cluster::Cluster`] wires them to the state machine; [`server`] wires the
//! cluster to the network and runs the patrol every
//! `schedule.patrol-region-interval`.
//!
//! ## What can go wrong
//!
//! - The engine fails to write: the request fails and memory is unchanged;
//!   ids and timestamps stay safe because nothing was handed out.
//! - PD restarts: leaders and store liveness are unknown until the next
//!   heartbeats; stores get a grace period from PD's start before they can
//!   count as Down, so a restart does not trigger mass re-replication.
//! - A node ignores an operator step: the operator times out after
//!   `schedule.operator-timeout` and the checker tries again.
//! - A store dies: after `schedule.max-store-down-time` its peers are
//!   replaced elsewhere, and operators moving data onto it are dropped.
//!
//! ## Running it
//!
//! `mnemo-pd` (flags as PD's, see [`config::Flags`]) and `pd-ctl` are in
//! `src/bin/`. In-process, for tests: [`server::start`] with
//! [`config::Config::for_tests`], then [`server::PdHandle::shutdown`].

#![warn(missing_docs)]

pub mod cluster;
pub mod config;
// The command-line types document themselves through clap's help texts.
#[allow(missing_docs)]
pub mod ctl;
pub mod error;
pub mod etcd;
pub mod id;
pub mod member;
pub mod meta;
pub mod metrics;
pub mod raft;
pub mod region_map;
pub mod schedule;
pub mod server;
pub mod store;
pub mod time;
pub mod tso;

pub use config::Config;
pub use error::{Error, Result};
pub use server::{start, start_with_listener, PdHandle};
