//! PD's one error type, and how each error reaches a caller.
//!
//! Most failures travel in the response header (`header.error` with a
//! [`pdpb::ErrorType`]), the way real PD answers: callers such as the TiKV
//! client treat any header error as "PD trouble: reconnect and retry". The one
//! exception is a cluster id mismatch, which is a gRPC `FailedPrecondition`
//! status, exactly as PD sends it.

use mnemo_engine::EngineError;
use mnemo_proto::pdpb;
use mnemo_proto::types::{RegionId, StoreId};

/// Result of PD operations.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong inside PD.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request header names another cluster (or none). Sent as gRPC
    /// `FailedPrecondition` with PD's exact message.
    #[error("mismatch cluster id, need {need} but got {got}")]
    ClusterIdMismatch {
        /// This PD's cluster id.
        need: u64,
        /// The id in the request header.
        got: u64,
    },
    /// The call needs a bootstrapped cluster; `Bootstrap` has not happened yet.
    #[error("cluster is not bootstrapped")]
    NotBootstrapped,
    /// `Bootstrap` was called on a cluster that already has its first region.
    #[error("cluster is already bootstrapped")]
    AlreadyBootstrapped,
    /// The region named by the request is unknown to PD.
    #[error("region {0} not found")]
    RegionNotFound(RegionId),
    /// The store named by the request was never registered.
    #[error("invalid store ID {0}, not found")]
    StoreNotFound(StoreId),
    /// The store was removed for good; it may not register or heartbeat again.
    #[error("store {0} is tombstone")]
    StoreTombstone(StoreId),
    /// Another live store already registered this address.
    #[error("duplicated store address {address}: already used by store {existing}")]
    DuplicateStoreAddress {
        /// The contested address.
        address: String,
        /// The store that owns it.
        existing: StoreId,
    },
    /// The request is malformed (zero ids, missing region, bad count, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// `POST /schedulers` named a scheduler that already runs (PD:
    /// "scheduler existed"). Answered with HTTP 409.
    #[error("scheduler {0} already exists")]
    SchedulerExists(String),
    /// `DELETE /schedulers/{name}` named a scheduler that does not run, or
    /// no scheduler at all. Answered with HTTP 404.
    #[error("scheduler {0} not found")]
    SchedulerNotFound(String),
    /// The configuration is unusable; the message names the key and the fix.
    #[error("config: {0}")]
    Config(String),
    /// The metadata engine failed. PD cannot keep its promises (ids, TSO)
    /// without durable writes, so the request fails; memory is left untouched.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A persisted record could not be decoded: the data directory is damaged
    /// or was written by an incompatible version.
    #[error("corrupt metadata at {key}: {reason}")]
    Corrupt {
        /// The engine key of the record.
        key: String,
        /// What failed to decode.
        reason: String,
    },
    /// Binding or serving the listener failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// No PD member has this name. Answered with HTTP 404.
    #[error("not found, pd: {0}")]
    MemberNotFound(String),
    /// This member does not lead the PD group (or lost its lease, or a
    /// proposal's fate is unknown after leadership moved). gRPC answers
    /// `UNAVAILABLE` with these words, which clients match to look for the
    /// leader again.
    #[error("not leader: {0}")]
    NotLeader(String),
}

impl Error {
    /// The `pdpb.ErrorType` that goes into a response header.
    pub fn error_type(&self) -> pdpb::ErrorType {
        match self {
            Error::NotBootstrapped => pdpb::ErrorType::NotBootstrapped,
            Error::AlreadyBootstrapped => pdpb::ErrorType::AlreadyBootstrapped,
            Error::RegionNotFound(_) => pdpb::ErrorType::RegionNotFound,
            Error::StoreTombstone(_) => pdpb::ErrorType::StoreTombstone,
            Error::InvalidArgument(_) => pdpb::ErrorType::InvalidValue,
            Error::ClusterIdMismatch { .. }
            | Error::StoreNotFound(_)
            | Error::DuplicateStoreAddress { .. }
            | Error::SchedulerExists(_)
            | Error::SchedulerNotFound(_)
            | Error::Config(_)
            | Error::Engine(_)
            | Error::Corrupt { .. }
            | Error::Io(_)
            | Error::NotLeader(_)
            | Error::MemberNotFound(_) => pdpb::ErrorType::Unknown,
        }
    }

    /// The header error for a response.
    pub fn to_header_error(&self) -> pdpb::Error {
        pdpb::Error { r#type: self.error_type() as i32, message: self.to_string() }
    }

    /// True if the same call may succeed later without the caller changing
    /// it (the engine recovered, the cluster got bootstrapped).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::NotBootstrapped | Error::Engine(_) | Error::Io(_) | Error::NotLeader(_))
    }

    /// True if applying a command failed for a reason every replica would hit
    /// the same way (a rejected command). False for I/O failures, after which
    /// a replicated PD must stop rather than diverge from its peers.
    pub fn is_deterministic(&self) -> bool {
        !matches!(self, Error::Engine(_) | Error::Io(_) | Error::Corrupt { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_message_matches_pd() {
        let e = Error::ClusterIdMismatch { need: 7, got: 0 };
        assert_eq!(e.to_string(), "mismatch cluster id, need 7 but got 0");
    }

    #[test]
    fn header_types() {
        assert_eq!(Error::AlreadyBootstrapped.error_type(), pdpb::ErrorType::AlreadyBootstrapped);
        assert_eq!(Error::StoreTombstone(StoreId(3)).error_type(), pdpb::ErrorType::StoreTombstone);
        assert!(!Error::Engine(EngineError("disk".into())).is_deterministic());
        assert!(Error::AlreadyBootstrapped.is_deterministic());
    }
}
