//! Wire types of Mnemosyne.
//!
//! The client-facing packages (`metapb`, `errorpb`, `kvrpcpb`, `tikvpb`,
//! `pdpb`) are a subset of TiKV's public kvproto with the same package,
//! service and method names and the same field numbers, so an unmodified TiKV
//! client can talk to Mnemosyne. `raft_serverpb` is our own node-to-node
//! protocol, `pd_raftpb` our own PD-member-to-PD-member one. Generated types
//! stay in this crate's users' edges: business logic converts them into
//! domain types (see [`types`]).

#[allow(clippy::all)]
pub mod metapb {
    tonic::include_proto!("metapb");
}
#[allow(clippy::all)]
pub mod errorpb {
    tonic::include_proto!("errorpb");
}
#[allow(clippy::all)]
pub mod kvrpcpb {
    tonic::include_proto!("kvrpcpb");
}
#[allow(clippy::all)]
pub mod tikvpb {
    tonic::include_proto!("tikvpb");
}
#[allow(clippy::all)]
pub mod eraftpb {
    tonic::include_proto!("eraftpb");
}
#[allow(clippy::all)]
pub mod pdpb {
    tonic::include_proto!("pdpb");
}
#[allow(clippy::all)]
pub mod raft_serverpb {
    tonic::include_proto!("raft_serverpb");
}
#[allow(clippy::all)]
pub mod pd_raftpb {
    tonic::include_proto!("pd_raftpb");
}

pub mod types;
