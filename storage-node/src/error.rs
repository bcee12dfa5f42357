//! The node's error type.
//!
//! Region errors are answers, not failures: they travel to the client inside
//! the response's `region_error` (never as a gRPC status) and tell it how to
//! retry (DESIGN §3). `InvalidArgument` becomes gRPC `INVALID_ARGUMENT` and
//! is final. Engine errors are internal: if one happens while applying raft
//! state the node cannot keep its promises and stops (see
//! [`Error::is_deterministic`]).

use mnemo_proto::errorpb;
use mnemo_proto::types::{Peer, Region, RegionId, StoreId};

use crate::engine::EngineError;

/// Everything that can go wrong serving a request.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// This peer does not lead the region; `leader` is the leader this node
    /// knows of (only a peer that is known to lead, never a guess).
    #[error("region {region} is not led here (leader: {leader:?})")]
    NotLeader { region: RegionId, leader: Option<Peer> },
    /// The request's epoch differs from the region's: a split or membership
    /// change happened. `current` holds the regions the client should use.
    #[error("epoch not match")]
    EpochNotMatch { current: Vec<Region> },
    /// This node has no (initialized) peer of the region.
    #[error("region {0} not found")]
    RegionNotFound(RegionId),
    /// The key lies outside the region's range.
    #[error("key not in region {}", region.id)]
    KeyNotInRegion { key: Vec<u8>, region: Region },
    /// Flow control: try again after a backoff.
    #[error("server is busy: {0}")]
    ServerIsBusy(String),
    /// The proposal was dropped (term changed, leader lost); a write's outcome is unknown.
    #[error("stale command")]
    StaleCommand,
    /// The request was meant for another store.
    #[error("store not match: request for {request}, this is {actual}")]
    StoreNotMatch { request: StoreId, actual: StoreId },
    /// The encoded command exceeds `raft-entry-max-size`.
    #[error("raft entry of {size} bytes is too large for region {region}")]
    RaftEntryTooLarge { region: RegionId, size: u64 },
    /// Malformed request or a limit exceeded; nothing was written.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Storage failure.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Anything else (shutdown, internal channel closed).
    #[error("{0}")]
    Other(String),
}

/// Result of node operations.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// True if this error is the same on every replica applying the same
    /// entry (a region error or a bad argument). A non-deterministic error
    /// during apply (I/O) must stop the node instead of being answered,
    /// or replicas would diverge.
    pub fn is_deterministic(&self) -> bool {
        !matches!(self, Error::Engine(_) | Error::Other(_))
    }

    /// The wire region error, if this is one.
    pub fn to_region_error(&self) -> Option<errorpb::Error> {
        let mut e = errorpb::Error { message: self.to_string(), ..Default::default() };
        match self {
            Error::NotLeader { region, leader } => {
                e.not_leader =
                    Some(errorpb::NotLeader { region_id: region.0, leader: leader.map(Into::into) });
            }
            Error::EpochNotMatch { current } => {
                e.epoch_not_match = Some(errorpb::EpochNotMatch {
                    current_regions: current.iter().map(Into::into).collect(),
                });
            }
            Error::RegionNotFound(id) => {
                e.region_not_found = Some(errorpb::RegionNotFound { region_id: id.0 });
            }
            Error::KeyNotInRegion { key, region } => {
                e.key_not_in_region = Some(errorpb::KeyNotInRegion {
                    key: key.clone(),
                    region_id: region.id.0,
                    start_key: region.start_key.clone(),
                    end_key: region.end_key.clone(),
                });
            }
            Error::ServerIsBusy(reason) => {
                e.server_is_busy = Some(errorpb::ServerIsBusy {
                    reason: reason.clone(),
                    backoff_ms: 100,
                    ..Default::default()
                });
            }
            Error::StaleCommand => e.stale_command = Some(errorpb::StaleCommand {}),
            Error::StoreNotMatch { request, actual } => {
                e.store_not_match =
                    Some(errorpb::StoreNotMatch { request_store_id: request.0, actual_store_id: actual.0 });
            }
            Error::RaftEntryTooLarge { region, size } => {
                e.raft_entry_too_large =
                    Some(errorpb::RaftEntryTooLarge { region_id: region.0, entry_size: *size });
            }
            Error::InvalidArgument(_) | Error::Engine(_) | Error::Other(_) => return None,
        }
        Some(e)
    }
}
