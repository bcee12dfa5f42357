//! The commands that change PD's metadata, and their byte encoding (what a
//! raft log entry will carry once PD replicates).

use mnemo_proto::metapb;
use mnemo_proto::types::{Region, StoreId};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::member::Member;
use crate::store::{StoreMeta, StoreState};

/// One change to PD's replicated metadata. Values that are not
/// deterministic (random ids, clock readings) are chosen by the proposer and
/// carried here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Sets the cluster id, once, at the first start of the first member.
    InitCluster {
        /// Random nonzero id chosen by the proposer.
        cluster_id: u64,
    },
    /// Records the first store and the first region; marks the cluster
    /// bootstrapped. Rejected with `AlreadyBootstrapped` the second time.
    Bootstrap {
        /// The bootstrapping store.
        store: StoreMeta,
        /// The region covering the whole key space.
        region: Region,
    },
    /// Registers or updates a store. Rejected for a tombstone store.
    PutStore {
        /// The full record to store.
        store: StoreMeta,
    },
    /// Changes a store's lifecycle state (Up ⇄ Offline → Tombstone).
    SetStoreState {
        /// The store.
        store: StoreId,
        /// Its new state.
        state: StoreState,
    },
    /// Forgets every store in state Tombstone (`pd-ctl store
    /// remove-tombstone`).
    RemoveTombstones,
    /// Records a region (new or newer epoch) and drops the regions it
    /// overlaps. A stale or unchanged record is a no-op.
    PutRegion {
        /// The region's metadata.
        region: Region,
    },
    /// Makes ids below `end` available to the allocator. Never lowers it.
    AllocIdWindow {
        /// Exclusive end of the window.
        end: u64,
    },
    /// Raises the TSO bound: no timestamp at or above this physical time
    /// has been handed out. Never lowers it.
    TsoWindow {
        /// Milliseconds since the Unix epoch.
        physical_ms: u64,
    },
    /// Records run-time config changes (`POST /pd/api/v1/config`), which win
    /// over the config file from now on, key by key.
    UpdateConfig {
        /// Canonical dotted key (`schedule.max-store-down-time`) → the value
        /// as JSON text (`"\"5s\""`), validated by the proposer.
        changes: Vec<(String, String)>,
    },
    /// Records the schedulers that run (`POST`/`DELETE
    /// /pd/api/v1/schedulers`): the whole active set, replacing the previous
    /// one. Until the first such command the defaults run.
    SetSchedulers {
        /// PD's scheduler names (`shuffle-leader-scheduler`), validated by
        /// the proposer.
        names: Vec<String>,
    },
    /// Publishes a PD member's name and URLs (what `GetMembers` lists),
    /// replacing what was known of it.
    PutMember {
        /// The member.
        member: Member,
    },
    /// Forgets a PD member that left the group.
    RemoveMember {
        /// Its id.
        member_id: u64,
    },
}

/// The encoded form: JSON, with stores and regions as hex of their protobuf
/// encoding (the kvproto records PD persists anyway).
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Repr {
    InitCluster { cluster_id: u64 },
    Bootstrap { store: String, region: String },
    PutStore { store: String },
    SetStoreState { store: u64, state: String },
    RemoveTombstones,
    PutRegion { region: String },
    AllocIdWindow { end: u64 },
    TsoWindow { physical_ms: u64 },
    UpdateConfig { changes: Vec<(String, String)> },
    SetSchedulers { names: Vec<String> },
    PutMember { member: Member },
    RemoveMember { member_id: u64 },
}

impl Command {
    /// The bytes a log entry carries.
    pub fn encode(&self) -> Vec<u8> {
        let store_hex = |s: &StoreMeta| hex::encode(metapb::Store::from(s).encode_to_vec());
        let region_hex = |r: &Region| hex::encode(metapb::Region::from(r).encode_to_vec());
        let repr = match self {
            Command::InitCluster { cluster_id } => Repr::InitCluster { cluster_id: *cluster_id },
            Command::Bootstrap { store, region } => {
                Repr::Bootstrap { store: store_hex(store), region: region_hex(region) }
            }
            Command::PutStore { store } => Repr::PutStore { store: store_hex(store) },
            Command::SetStoreState { store, state } => {
                Repr::SetStoreState { store: store.0, state: state.name().to_owned() }
            }
            Command::RemoveTombstones => Repr::RemoveTombstones,
            Command::PutRegion { region } => Repr::PutRegion { region: region_hex(region) },
            Command::AllocIdWindow { end } => Repr::AllocIdWindow { end: *end },
            Command::TsoWindow { physical_ms } => Repr::TsoWindow { physical_ms: *physical_ms },
            Command::UpdateConfig { changes } => Repr::UpdateConfig { changes: changes.clone() },
            Command::SetSchedulers { names } => Repr::SetSchedulers { names: names.clone() },
            Command::PutMember { member } => Repr::PutMember { member: member.clone() },
            Command::RemoveMember { member_id } => Repr::RemoveMember { member_id: *member_id },
        };
        serde_json::to_vec(&repr).expect("command repr always serializes")
    }

    /// Parses [`Command::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Command> {
        let corrupt = |reason: String| Error::Corrupt { key: "command".into(), reason };
        let repr: Repr = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let proto = |h: &str| hex::decode(h).map_err(|e| corrupt(e.to_string()));
        let store = |h: &str| -> Result<StoreMeta> {
            let s = metapb::Store::decode(proto(h)?.as_slice()).map_err(|e| corrupt(e.to_string()))?;
            Ok(StoreMeta::from(&s))
        };
        let region = |h: &str| -> Result<Region> {
            let r = metapb::Region::decode(proto(h)?.as_slice()).map_err(|e| corrupt(e.to_string()))?;
            Ok(Region::from(&r))
        };
        Ok(match repr {
            Repr::InitCluster { cluster_id } => Command::InitCluster { cluster_id },
            Repr::Bootstrap { store: s, region: r } => {
                Command::Bootstrap { store: store(&s)?, region: region(&r)? }
            }
            Repr::PutStore { store: s } => Command::PutStore { store: store(&s)? },
            Repr::SetStoreState { store, state } => Command::SetStoreState {
                store: StoreId(store),
                state: StoreState::parse(&state).ok_or_else(|| corrupt(format!("store state {state:?}")))?,
            },
            Repr::RemoveTombstones => Command::RemoveTombstones,
            Repr::PutRegion { region: r } => Command::PutRegion { region: region(&r)? },
            Repr::AllocIdWindow { end } => Command::AllocIdWindow { end },
            Repr::TsoWindow { physical_ms } => Command::TsoWindow { physical_ms },
            Repr::UpdateConfig { changes } => Command::UpdateConfig { changes },
            Repr::SetSchedulers { names } => Command::SetSchedulers { names },
            Repr::PutMember { member } => Command::PutMember { member },
            Repr::RemoveMember { member_id } => Command::RemoveMember { member_id },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnemo_proto::types::{Peer, PeerId, PeerRole, RegionEpoch, RegionId};

    #[test]
    fn commands_round_trip_through_bytes() {
        let store = StoreMeta { id: StoreId(1), address: "n1:20160".into(), ..Default::default() };
        let region = Region {
            id: RegionId(2),
            start_key: vec![],
            end_key: b"\xff".to_vec(),
            epoch: RegionEpoch { conf_ver: 1, version: 1 },
            peers: vec![Peer { id: PeerId(3), store_id: StoreId(1), role: PeerRole::Voter }],
        };
        let cmds = [
            Command::InitCluster { cluster_id: 42 },
            Command::Bootstrap { store: store.clone(), region: region.clone() },
            Command::PutStore { store },
            Command::SetStoreState { store: StoreId(1), state: StoreState::Offline },
            Command::RemoveTombstones,
            Command::PutRegion { region },
            Command::AllocIdWindow { end: 1001 },
            Command::TsoWindow { physical_ms: 1_700_000_003_000 },
            Command::UpdateConfig { changes: vec![("schedule.max-store-down-time".into(), "\"5s\"".into())] },
            Command::SetSchedulers { names: vec!["shuffle-leader-scheduler".into()] },
            Command::PutMember {
                member: Member {
                    name: "pd2".into(),
                    member_id: 9,
                    client_url: "http://b:2379".into(),
                    peer_url: "http://b:2380".into(),
                },
            },
            Command::RemoveMember { member_id: 9 },
        ];
        for cmd in cmds {
            assert_eq!(Command::decode(&cmd.encode()).unwrap(), cmd);
        }
    }
}
