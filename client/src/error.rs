//! The client's one error type.
//!
//! Every failure a caller can see is one [`Error`] variant, and the variants
//! are chosen so that the caller knows what happened to its data:
//!
//! - a read that fails did nothing;
//! - a write that fails with anything but [`Error::Undetermined`] was **not**
//!   applied (the client only gives up on a write after errors that prove it
//!   was not applied, or when the deadline passes between attempts);
//! - a write that fails with [`Error::Undetermined`] may or may not have been
//!   applied, now or later. The client never turns such an outcome into a
//!   success or a plain failure, because either lie breaks linearizability
//!   checks and user invariants alike.

use mnemo_proto::errorpb;
use mnemo_proto::types::{Peer, Region, RegionId, StoreId};

/// The result type of every fallible client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong with a client call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A region error a node answered with (see [`RegionError`]). The client
    /// handles these internally; a caller only sees the ones that cannot be
    /// retried, such as [`RegionError::RaftEntryTooLarge`].
    #[error("region error: {0}")]
    Region(RegionError),

    /// A write whose outcome is unknown: the request may have been applied
    /// or not, and may still be applied later. Caused by a gRPC timeout or a
    /// connection broken after the request was sent, by `StaleCommand` (the
    /// proposal was dropped after being proposed), or by a multi-region batch
    /// that was applied in some regions but failed in others. Never retried
    /// by the client; the caller must read back to learn the outcome.
    #[error("write outcome undetermined: {0}")]
    Undetermined(String),

    /// The call's total deadline (`Config::timeout`, default 20 s) passed
    /// while retrying. For a write this means it was not applied: every
    /// attempt failed with an error proving so. `last` describes the last
    /// failure seen.
    #[error("deadline exceeded; last error: {last}")]
    DeadlineExceeded {
        /// The last failure before the deadline passed.
        last: String,
    },

    /// The request is invalid (key or value over a limit, TTL not enabled,
    /// bad range, ...): gRPC status `INVALID_ARGUMENT`, a non-empty `error`
    /// string in a response, or a check in the client. Nothing was written.
    /// Not retried.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The placement driver failed: unreachable, no leader, an error in a
    /// response header, or a missing region or store.
    #[error("pd error: {0}")]
    Pd(String),

    /// A transport problem that is neither a timeout nor a refused
    /// connection: a bad address, or an RPC the server does not implement.
    #[error("transport error: {0}")]
    Transport(String),
}

impl Error {
    /// True if the same call may succeed when tried again later.
    ///
    /// `Undetermined` is not retryable: repeating a write whose first attempt
    /// may still apply can apply it twice. `InvalidArgument` and
    /// `RaftEntryTooLarge` fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Region(e) => e.is_retryable(),
            Error::Undetermined(_) | Error::InvalidArgument(_) => false,
            Error::DeadlineExceeded { .. } | Error::Pd(_) | Error::Transport(_) => true,
        }
    }

    /// True if this is a write whose outcome is unknown.
    pub fn is_undetermined(&self) -> bool {
        matches!(self, Error::Undetermined(_))
    }
}

impl From<RegionError> for Error {
    fn from(e: RegionError) -> Self {
        Error::Region(e)
    }
}

/// A region error a node sends in a response's `region_error` field, in
/// domain types. What the client does with each is in DESIGN §3.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// The addressed peer does not lead `region`. `leader` is the peer the
    /// node believes leads it, if it knows one.
    #[error("region {region}: not leader (hint: {leader:?})")]
    NotLeader {
        /// The region the request was for.
        region: RegionId,
        /// The known leader, if any.
        leader: Option<Peer>,
    },

    /// The request's region epoch is stale: a split, merge or conf change
    /// happened. `current` holds the regions now covering the old range
    /// (possibly empty).
    #[error("epoch not match ({} current regions)", current.len())]
    EpochNotMatch {
        /// The regions now covering the requested range.
        current: Vec<Region>,
    },

    /// The node has no peer of `region`.
    #[error("region {region} not found on the node")]
    RegionNotFound {
        /// The region the request was for.
        region: RegionId,
    },

    /// The key lies outside the addressed region's range.
    #[error("key not in region {region}")]
    KeyNotInRegion {
        /// The region the request was for.
        region: RegionId,
    },

    /// The node is overloaded; retry after at least `backoff_ms`
    /// milliseconds (0: no hint).
    #[error("server is busy: {reason} (backoff {backoff_ms} ms)")]
    ServerIsBusy {
        /// Why the node refused.
        reason: String,
        /// The node's suggested wait, milliseconds.
        backoff_ms: u64,
    },

    /// The proposal was dropped (the raft term changed). A write may or may
    /// not have been applied.
    #[error("stale command")]
    StaleCommand,

    /// The request was addressed to another store id than the one that got it.
    #[error("store not match: request for {request_store}, got {actual_store}")]
    StoreNotMatch {
        /// The store the request named.
        request_store: StoreId,
        /// The store that received it.
        actual_store: StoreId,
    },

    /// The write is larger than the node's raft entry limit
    /// (`raft-entry-max-size`, 8 MiB by default). Retrying cannot help;
    /// split the batch.
    #[error("raft entry too large: {entry_size} bytes in region {region}")]
    RaftEntryTooLarge {
        /// The region the request was for.
        region: RegionId,
        /// The size of the rejected entry, bytes.
        entry_size: u64,
    },

    /// Any other region error, with the node's message.
    #[error("{0}")]
    Other(String),
}

impl RegionError {
    /// True unless retrying cannot succeed (`RaftEntryTooLarge`). Says
    /// nothing about whether a *write* may be retried: see the crate essay.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, RegionError::RaftEntryTooLarge { .. })
    }
}

/// Wire peers with id 0 are "no peer".
fn peer_of(p: Option<&mnemo_proto::metapb::Peer>) -> Option<Peer> {
    p.filter(|p| p.id != 0).map(Peer::from)
}

impl From<errorpb::Error> for RegionError {
    fn from(e: errorpb::Error) -> Self {
        if let Some(nl) = e.not_leader {
            RegionError::NotLeader { region: RegionId(nl.region_id), leader: peer_of(nl.leader.as_ref()) }
        } else if let Some(enm) = e.epoch_not_match {
            RegionError::EpochNotMatch { current: enm.current_regions.iter().map(Region::from).collect() }
        } else if let Some(rnf) = e.region_not_found {
            RegionError::RegionNotFound { region: RegionId(rnf.region_id) }
        } else if let Some(knir) = e.key_not_in_region {
            RegionError::KeyNotInRegion { region: RegionId(knir.region_id) }
        } else if let Some(busy) = e.server_is_busy {
            RegionError::ServerIsBusy { reason: busy.reason, backoff_ms: busy.backoff_ms }
        } else if e.stale_command.is_some() {
            RegionError::StaleCommand
        } else if let Some(snm) = e.store_not_match {
            RegionError::StoreNotMatch {
                request_store: StoreId(snm.request_store_id),
                actual_store: StoreId(snm.actual_store_id),
            }
        } else if let Some(big) = e.raft_entry_too_large {
            RegionError::RaftEntryTooLarge { region: RegionId(big.region_id), entry_size: big.entry_size }
        } else {
            RegionError::Other(e.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnemo_proto::metapb;

    #[test]
    fn not_leader_without_hint_has_no_leader() {
        let wire = errorpb::Error {
            not_leader: Some(errorpb::NotLeader { region_id: 4, leader: None }),
            ..Default::default()
        };
        assert_eq!(RegionError::from(wire), RegionError::NotLeader { region: RegionId(4), leader: None });

        // A zeroed peer is "no hint" too.
        let wire = errorpb::Error {
            not_leader: Some(errorpb::NotLeader { region_id: 4, leader: Some(metapb::Peer::default()) }),
            ..Default::default()
        };
        assert_eq!(RegionError::from(wire), RegionError::NotLeader { region: RegionId(4), leader: None });
    }

    #[test]
    fn not_leader_hint_is_kept() {
        let wire = errorpb::Error {
            not_leader: Some(errorpb::NotLeader {
                region_id: 4,
                leader: Some(metapb::Peer { id: 9, store_id: 2, ..Default::default() }),
            }),
            ..Default::default()
        };
        match RegionError::from(wire) {
            RegionError::NotLeader { leader: Some(p), .. } => {
                assert_eq!((p.id.0, p.store_id.0), (9, 2));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn message_only_error_is_other() {
        let wire = errorpb::Error { message: "weird".into(), ..Default::default() };
        assert_eq!(RegionError::from(wire), RegionError::Other("weird".into()));
    }

    #[test]
    fn retryability() {
        assert!(!Error::Undetermined("x".into()).is_retryable());
        assert!(!Error::InvalidArgument("x".into()).is_retryable());
        assert!(Error::DeadlineExceeded { last: "x".into() }.is_retryable());
        assert!(Error::Region(RegionError::StaleCommand).is_retryable());
        assert!(!Error::Region(RegionError::RaftEntryTooLarge { region: RegionId(1), entry_size: 9 })
            .is_retryable());
    }
}
