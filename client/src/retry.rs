//! The retry policy: what one failed attempt means and what to do next.
//!
//! [`decide`] is the whole policy as a pure function of the failure and of
//! whether the request writes. It encodes DESIGN §3's table plus one rule
//! that matters more than any other: **a write is retried only when the
//! failure proves it was not applied** (`NotLeader`, `EpochNotMatch`,
//! `RegionNotFound`, `KeyNotInRegion`, `ServerIsBusy`, `StoreNotMatch`, a
//! refused connection, a failed region lookup). Anything else that can follow
//! the request leaving this process (timeout, broken connection, unexpected
//! status, `StaleCommand`) ends a write with [`Error::Undetermined`]: a
//! retried put that the first attempt also applies, later, after someone
//! else's write, breaks linearizability.
//!
//! [`RetryState`] carries one call's budget: it applies each decision's cache
//! fix, remembers how long to wait, and turns an exhausted deadline into
//! [`Error::DeadlineExceeded`].

use std::fmt;
use std::time::Duration;

use mnemo_proto::types::{Peer, Region, RegionId, StoreId};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::{Error, RegionError};
use crate::region_cache::RegionCache;
use crate::transport::is_connect_failure;

/// Immediate retries (no sleep) allowed in a row before the client backs off
/// anyway; stops a wrong `NotLeader` hint or a lagging PD from turning into a
/// tight loop.
pub(crate) const MAX_FAST_RETRIES: u32 = 4;

/// Whether a request changes data; decides what a lost answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Reads can always be retried.
    Read,
    /// Writes are retried only when the failure proves they did not happen.
    Write,
}

/// Why one attempt against one region failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The node answered with a region error.
    Region(RegionError),
    /// The node refused the request: a non-empty `error` string in the
    /// response or status `INVALID_ARGUMENT`. Nothing was applied.
    Rejected(String),
    /// No connection could be made: the request never left this process.
    NotConnected(String),
    /// Any other gRPC status; the request may have been processed.
    Status { code: tonic::Code, message: String },
    /// No answer within the per-RPC timeout; the request may have been processed.
    Timeout(Duration),
    /// Finding the region or the store failed (PD); nothing was sent.
    Locate(String),
}

impl Failure {
    /// Classifies a gRPC status.
    pub(crate) fn from_status(status: &tonic::Status) -> Failure {
        if is_connect_failure(status) {
            Failure::NotConnected(status.message().to_string())
        } else if status.code() == tonic::Code::InvalidArgument {
            Failure::Rejected(status.message().to_string())
        } else {
            Failure::Status { code: status.code(), message: status.message().to_string() }
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Region(e) => write!(f, "region error: {e}"),
            Failure::Rejected(m) => write!(f, "rejected: {m}"),
            Failure::NotConnected(m) => write!(f, "connect failed: {m}"),
            Failure::Status { code, message } => write!(f, "grpc {code:?}: {message}"),
            Failure::Timeout(d) => write!(f, "no answer within {d:?}"),
            Failure::Locate(m) => write!(f, "locate failed: {m}"),
        }
    }
}

/// What to change in the region cache after a failure. Fixes apply to the
/// region and store the failed attempt was sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CacheFix {
    /// The cache is fine.
    Keep,
    /// The region's leader is this peer.
    SetLeader(Peer),
    /// The region entry is stale; reload it from PD.
    DropRegion,
    /// The region was split or merged into these.
    ReplaceRegion(Vec<Region>),
    /// The store may have moved or died: reload the store address and the region.
    DropRegionAndStore,
}

/// When to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// At once (the cache now points somewhere better).
    Now,
    /// After a backoff of at least this long.
    Backoff(Duration),
    /// Never: the call ends with this error.
    Fail(Error),
}

/// A failure's consequences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) fix: CacheFix,
    pub(crate) next: Next,
}

fn decision(fix: CacheFix, next: Next) -> Decision {
    Decision { fix, next }
}

/// The retry policy (see the module doc).
pub(crate) fn decide(failure: &Failure, kind: Kind) -> Decision {
    use CacheFix::*;
    let backoff = Next::Backoff(Duration::ZERO);
    let undetermined = |why: String| Next::Fail(Error::Undetermined(why));
    match failure {
        Failure::Region(e) => match e {
            RegionError::NotLeader { leader: Some(p), .. } => decision(SetLeader(*p), Next::Now),
            RegionError::NotLeader { leader: None, .. } => decision(DropRegion, backoff),
            RegionError::EpochNotMatch { current } if current.is_empty() => decision(DropRegion, Next::Now),
            RegionError::EpochNotMatch { current } => decision(ReplaceRegion(current.clone()), Next::Now),
            RegionError::RegionNotFound { .. } | RegionError::KeyNotInRegion { .. } => {
                decision(DropRegion, backoff)
            }
            RegionError::StoreNotMatch { .. } => decision(DropRegionAndStore, backoff),
            RegionError::ServerIsBusy { backoff_ms, .. } => {
                decision(Keep, Next::Backoff(Duration::from_millis(*backoff_ms)))
            }
            RegionError::StaleCommand => match kind {
                Kind::Read => decision(Keep, backoff),
                Kind::Write => decision(Keep, undetermined("stale command: the proposal was dropped".into())),
            },
            RegionError::RaftEntryTooLarge { .. } => decision(Keep, Next::Fail(Error::Region(e.clone()))),
            RegionError::Other(m) => match kind {
                Kind::Read => decision(DropRegion, backoff),
                Kind::Write => decision(DropRegion, undetermined(format!("unrecognised region error: {m}"))),
            },
        },
        Failure::Rejected(m) => decision(Keep, Next::Fail(Error::InvalidArgument(m.clone()))),
        Failure::NotConnected(_) => decision(DropRegionAndStore, backoff),
        Failure::Status { code: tonic::Code::Unimplemented, message } => {
            decision(Keep, Next::Fail(Error::Transport(format!("not implemented by the node: {message}"))))
        }
        Failure::Status { .. } | Failure::Timeout(_) => match kind {
            Kind::Read => decision(DropRegionAndStore, backoff),
            Kind::Write => decision(DropRegionAndStore, undetermined(failure.to_string())),
        },
        Failure::Locate(_) => decision(Keep, backoff),
    }
}

/// Where a failed attempt was sent: its region and the store of the peer.
pub(crate) type SentTo = Option<(RegionId, StoreId)>;

/// One call's retry budget and pending wait.
pub(crate) struct RetryState {
    kind: Kind,
    backoff: Backoff,
    /// Longest wait asked for since the last pause; `None`: retry at once.
    wait: Option<Duration>,
    fast_streak: u32,
    last: String,
}

impl RetryState {
    /// A fresh budget ending at `deadline`.
    pub(crate) fn new(kind: Kind, deadline: Instant) -> Self {
        RetryState { kind, backoff: Backoff::new(deadline), wait: None, fast_streak: 0, last: String::new() }
    }

    /// Time left before the deadline.
    pub(crate) fn time_left(&self) -> Duration {
        self.backoff.remaining()
    }

    /// The error to end the call with once the deadline has passed.
    pub(crate) fn deadline_error(&self) -> Error {
        let last = if self.last.is_empty() { "none".to_string() } else { self.last.clone() };
        Error::DeadlineExceeded { last }
    }

    /// Fails if the deadline has passed; call before every attempt.
    pub(crate) fn check_deadline(&self) -> Result<(), Error> {
        if self.time_left().is_zero() {
            Err(self.deadline_error())
        } else {
            Ok(())
        }
    }

    /// Takes in one failure: applies its cache fix and records its wait.
    /// Returns the error that ends the call, if the failure is final.
    pub(crate) fn absorb(
        &mut self,
        cache: &RegionCache,
        sent_to: SentTo,
        failure: Failure,
    ) -> Result<(), Error> {
        let d = decide(&failure, self.kind);
        tracing::debug!(%failure, ?sent_to, next = ?d.next, "attempt failed");
        self.last = failure.to_string();
        if let Some((region, store)) = sent_to {
            match d.fix {
                CacheFix::Keep => {}
                CacheFix::SetLeader(p) => {
                    // Not cached any more: the next lookup reloads it anyway.
                    cache.update_leader(region, p);
                }
                CacheFix::DropRegion => cache.invalidate(region),
                CacheFix::ReplaceRegion(current) => cache.on_epoch_not_match(region, current),
                CacheFix::DropRegionAndStore => {
                    cache.invalidate(region);
                    cache.invalidate_store(store);
                }
            }
        }
        match d.next {
            Next::Now => Ok(()),
            Next::Backoff(at_least) => {
                self.wait = Some(self.wait.map_or(at_least, |w| w.max(at_least)));
                Ok(())
            }
            Next::Fail(e) => Err(e),
        }
    }

    /// Waits as the absorbed failures asked (not at all if they all asked for
    /// an immediate retry, up to [`MAX_FAST_RETRIES`] in a row), or fails with
    /// `DeadlineExceeded`.
    pub(crate) async fn pause(&mut self) -> Result<(), Error> {
        let wait = match self.wait.take() {
            None if self.fast_streak < MAX_FAST_RETRIES => {
                self.fast_streak += 1;
                return self.check_deadline();
            }
            None => Duration::ZERO,
            Some(w) => w,
        };
        self.fast_streak = 0;
        match self.backoff.wait(wait).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.deadline_error()),
        }
    }
}

/// Of two errors ending a call, the one to report: an undetermined outcome
/// wins, since reporting anything else would claim knowledge we lack.
pub(crate) fn worse(a: Option<Error>, b: Error) -> Error {
    match a {
        Some(a) if a.is_undetermined() || !b.is_undetermined() => a,
        _ => b,
    }
}

/// The error a write call ends with. If some part of a multi-region write was
/// already applied, the call as a whole neither happened nor failed: report
/// it as undetermined, keeping the cause in the message.
pub(crate) fn finish_error(kind: Kind, applied_some: bool, e: Error) -> Error {
    if kind == Kind::Write && applied_some && !e.is_undetermined() {
        Error::Undetermined(format!("applied in some regions only, then: {e}"))
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnemo_proto::types::{PeerId, PeerRole};

    fn peer(id: u64, store: u64) -> Peer {
        Peer { id: PeerId(id), store_id: StoreId(store), role: PeerRole::Voter }
    }

    fn region_failure(e: RegionError) -> Failure {
        Failure::Region(e)
    }

    /// Failures that prove a write was not applied, so both kinds retry.
    #[test]
    fn writes_retry_only_on_proof_of_no_effect() {
        let retried = [
            region_failure(RegionError::NotLeader { region: RegionId(1), leader: Some(peer(2, 2)) }),
            region_failure(RegionError::NotLeader { region: RegionId(1), leader: None }),
            region_failure(RegionError::EpochNotMatch { current: vec![] }),
            region_failure(RegionError::RegionNotFound { region: RegionId(1) }),
            region_failure(RegionError::KeyNotInRegion { region: RegionId(1) }),
            region_failure(RegionError::ServerIsBusy { reason: "busy".into(), backoff_ms: 5 }),
            region_failure(RegionError::StoreNotMatch {
                request_store: StoreId(1),
                actual_store: StoreId(2),
            }),
            Failure::NotConnected("refused".into()),
            Failure::Locate("pd down".into()),
        ];
        for f in &retried {
            for kind in [Kind::Read, Kind::Write] {
                assert!(!matches!(decide(f, kind).next, Next::Fail(_)), "{f} should retry for {kind:?}");
            }
        }
    }

    #[test]
    fn lost_answers_make_writes_undetermined_and_reads_retry() {
        let lost = [
            Failure::Timeout(Duration::from_secs(2)),
            Failure::Status { code: tonic::Code::Unavailable, message: "reset".into() },
            Failure::Status { code: tonic::Code::Cancelled, message: "x".into() },
            Failure::Status { code: tonic::Code::Internal, message: "x".into() },
            region_failure(RegionError::StaleCommand),
            region_failure(RegionError::Other("weird".into())),
        ];
        for f in &lost {
            match decide(f, Kind::Write).next {
                Next::Fail(e) => assert!(e.is_undetermined(), "{f} → {e}"),
                other => panic!("{f} must not retry a write, got {other:?}"),
            }
            assert!(matches!(decide(f, Kind::Read).next, Next::Backoff(_)), "{f} should retry a read");
        }
    }

    #[test]
    fn deterministic_failures_end_the_call() {
        for kind in [Kind::Read, Kind::Write] {
            let d = decide(&Failure::Rejected("value too large".into()), kind);
            assert_eq!(d.next, Next::Fail(Error::InvalidArgument("value too large".into())));
            let big = RegionError::RaftEntryTooLarge { region: RegionId(1), entry_size: 9 << 20 };
            assert_eq!(decide(&region_failure(big.clone()), kind).next, Next::Fail(Error::Region(big)));
            let unimpl = Failure::Status { code: tonic::Code::Unimplemented, message: "RawFoo".into() };
            assert!(matches!(decide(&unimpl, kind).next, Next::Fail(Error::Transport(_))));
        }
    }

    #[test]
    fn invalid_argument_status_is_a_rejection() {
        let f = Failure::from_status(&tonic::Status::invalid_argument("key too large"));
        assert_eq!(f, Failure::Rejected("key too large".into()));
    }

    #[test]
    fn leader_hints_retry_at_once_and_busy_servers_set_the_wait() {
        let hint = region_failure(RegionError::NotLeader { region: RegionId(1), leader: Some(peer(7, 3)) });
        assert_eq!(decide(&hint, Kind::Write), decision(CacheFix::SetLeader(peer(7, 3)), Next::Now));
        let busy = region_failure(RegionError::ServerIsBusy { reason: "q".into(), backoff_ms: 40 });
        assert_eq!(decide(&busy, Kind::Read).next, Next::Backoff(Duration::from_millis(40)));
    }

    #[test]
    fn absorb_applies_fixes_to_the_cache() {
        let cache = RegionCache::new();
        let r = Region { id: RegionId(1), peers: vec![peer(11, 1), peer(12, 2)], ..Default::default() };
        cache.insert(r, None);
        cache.put_store(StoreId(1), "a:1".into());
        let mut st = RetryState::new(Kind::Read, Instant::now() + Duration::from_secs(10));
        let sent = Some((RegionId(1), StoreId(1)));

        let hint = region_failure(RegionError::NotLeader { region: RegionId(1), leader: Some(peer(12, 2)) });
        st.absorb(&cache, sent, hint).unwrap();
        assert_eq!(cache.get_by_key(b"k").unwrap().leader, Some(peer(12, 2)));

        st.absorb(&cache, sent, Failure::NotConnected("refused".into())).unwrap();
        assert!(cache.get_by_key(b"k").is_none());
        assert_eq!(cache.store_addr(StoreId(1)), None);
    }

    #[test]
    fn partial_writes_are_undetermined() {
        let e = Error::InvalidArgument("too big".into());
        assert!(finish_error(Kind::Write, true, e.clone()).is_undetermined());
        assert_eq!(finish_error(Kind::Write, false, e.clone()), e);
        assert_eq!(finish_error(Kind::Read, true, e.clone()), e);
        assert!(worse(Some(Error::Undetermined("a".into())), e.clone()).is_undetermined());
        assert!(worse(Some(e.clone()), Error::Undetermined("b".into())).is_undetermined());
        assert_eq!(worse(None, e.clone()), e);
    }

    #[tokio::test]
    async fn the_budget_runs_out() {
        let mut st = RetryState::new(Kind::Read, Instant::now() + Duration::from_millis(30));
        let cache = RegionCache::new();
        let mut rounds = 0;
        loop {
            st.absorb(&cache, None, Failure::Locate("pd down".into())).unwrap();
            match st.pause().await {
                Ok(()) => rounds += 1,
                Err(e) => {
                    assert!(matches!(e, Error::DeadlineExceeded { ref last } if last.contains("pd down")));
                    break;
                }
            }
            assert!(rounds < 10_000, "backoff never ended");
        }
    }
}
