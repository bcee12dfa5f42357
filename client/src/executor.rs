//! Sending requests to the right node, and the two retry loops built on
//! [`RetryState`]: one for a request bound to a single region
//! ([`Executor::run_one`]), one for a batch cut along regions
//! ([`Executor::run_batch`]).
//!
//! An attempt goes: locate the region (cache, else PD) → pick the peer (the
//! cached leader, else the first voter; see [`Pick`] for the one test-only
//! exception) → find its store's address (cache,
//! else PD) → send with a per-RPC timeout of `min(rpc_timeout, time left)`
//! → read the response's `error` string, then its `region_error`. Any
//! failure goes to [`RetryState::absorb`], which fixes the cache and decides.

use std::future::Future;
use std::time::Duration;

use futures::future::join_all;
use mnemo_proto::errorpb;
use mnemo_proto::kvrpcpb;
use mnemo_proto::tikvpb::tikv_client::TikvClient;
use mnemo_proto::types::{Peer, Region};
use rand::seq::SliceRandom;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::batch::{Groups, Piece, MAX_BATCH_BYTES, MAX_BATCH_KEYS};
use crate::batch_commands::BatchConn;
use crate::error::{Error, Result};
use crate::pd::PdClient;
use crate::region_cache::{CachedRegion, RegionCache};
use crate::retry::{finish_error, worse, Failure, Kind, RetryState, SentTo};
use crate::transport::StoreClients;

/// Responses of the raw RPCs: a region error and, for most, an error string.
pub(crate) trait RawResponse {
    /// Takes the region error out, if any.
    fn take_region_error(&mut self) -> Option<errorpb::Error>;
    /// The `error` string (empty: none, or the message has no such field).
    fn error_message(&self) -> &str;
}

macro_rules! raw_response {
    (with_error: $($t:ty),*) => {$(
        impl RawResponse for $t {
            fn take_region_error(&mut self) -> Option<errorpb::Error> {
                self.region_error.take()
            }
            fn error_message(&self) -> &str {
                &self.error
            }
        }
    )*};
    (region_only: $($t:ty),*) => {$(
        impl RawResponse for $t {
            fn take_region_error(&mut self) -> Option<errorpb::Error> {
                self.region_error.take()
            }
            fn error_message(&self) -> &str {
                ""
            }
        }
    )*};
}

raw_response!(with_error:
    kvrpcpb::RawGetResponse, kvrpcpb::RawPutResponse, kvrpcpb::RawBatchPutResponse,
    kvrpcpb::RawDeleteResponse, kvrpcpb::RawBatchDeleteResponse, kvrpcpb::RawDeleteRangeResponse,
    kvrpcpb::RawGetKeyTtlResponse, kvrpcpb::RawCasResponse);
raw_response!(region_only:
    kvrpcpb::RawBatchGetResponse, kvrpcpb::RawScanResponse, kvrpcpb::RawBatchScanResponse);

/// Which peer of a region an attempt is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    /// The cached leader, else the first voter. Every request but one kind.
    Leader,
    /// Test-only (`Config::replica_read`): the first attempt goes to a random
    /// peer of the cached region with `replica_read` set, which a node
    /// running `--unsafe-stale-reads` answers from its possibly stale state;
    /// any failure falls back to [`Pick::Leader`] for the retries.
    AnyReplicaFirst,
}

/// Where one attempt goes: a region, the peer chosen (normally the one
/// believed to lead it), and a client for that peer's store.
pub(crate) struct Target {
    /// The region as cached when the attempt started.
    pub(crate) region: Region,
    /// The peer addressed.
    pub(crate) peer: Peer,
    /// Sent to a replica chosen at random, asking it to answer itself.
    replica_read: bool,
    client: TikvClient<Channel>,
    /// The node's batch stream, if gets and puts go on one.
    batch: Option<BatchConn>,
    rpc_timeout: Duration,
}

impl Target {
    /// The `Context` every request carries: region id, epoch and peer (and
    /// `replica_read` for a [`Pick::AnyReplicaFirst`] attempt).
    pub(crate) fn context(&self) -> kvrpcpb::Context {
        kvrpcpb::Context {
            region_id: self.region.id.0,
            region_epoch: Some(self.region.epoch.into()),
            peer: Some(self.peer.into()),
            replica_read: self.replica_read,
            ..Default::default()
        }
    }

    /// A client for the addressed store (cheap clone of a shared channel).
    pub(crate) fn client(&self) -> TikvClient<Channel> {
        self.client.clone()
    }

    /// A get, on the batch stream if there is one, else its own call.
    pub(crate) async fn raw_get(
        &self,
        req: tonic::Request<kvrpcpb::RawGetRequest>,
    ) -> std::result::Result<tonic::Response<kvrpcpb::RawGetResponse>, tonic::Status> {
        match &self.batch {
            Some(b) => b.raw_get(req.into_inner()).await,
            None => self.client().raw_get(req).await,
        }
    }

    /// A put, on the batch stream if there is one, else its own call.
    pub(crate) async fn raw_put(
        &self,
        req: tonic::Request<kvrpcpb::RawPutRequest>,
    ) -> std::result::Result<tonic::Response<kvrpcpb::RawPutResponse>, tonic::Status> {
        match &self.batch {
            Some(b) => b.raw_put(req.into_inner()).await,
            None => self.client().raw_put(req).await,
        }
    }

    /// Wraps `msg` with the per-RPC timeout as gRPC deadline, so the node
    /// can drop work nobody waits for, and with the trace context of the
    /// operation's span (W3C `traceparent`), so the node's spans join the
    /// caller's trace. (Requests sent on a `BatchCommands` stream carry no
    /// metadata of their own: their trace ends at the client.)
    pub(crate) fn request<M>(&self, msg: M) -> tonic::Request<M> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.rpc_timeout);
        mnemo_telemetry::inject(req.metadata_mut());
        req
    }

    /// Awaits one RPC under the per-RPC timeout and classifies the outcome.
    pub(crate) async fn call<R: RawResponse>(
        &self,
        rpc: impl Future<Output = std::result::Result<tonic::Response<R>, tonic::Status>>,
    ) -> std::result::Result<R, Failure> {
        let mut resp = match tokio::time::timeout(self.rpc_timeout, rpc).await {
            Err(_) => return Err(Failure::Timeout(self.rpc_timeout)),
            Ok(Err(status)) => return Err(Failure::from_status(&status)),
            Ok(Ok(resp)) => resp.into_inner(),
        };
        // The error string is read first, as TiKV's client does; a node never sets both.
        if !resp.error_message().is_empty() {
            return Err(Failure::Rejected(resp.error_message().to_string()));
        }
        match resp.take_region_error() {
            Some(e) => Err(Failure::Region(e.into())),
            None => Ok(resp),
        }
    }
}

/// How a single-region request finds its region.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Locate<'a> {
    /// The region containing this key.
    Key(&'a [u8]),
    /// The region containing the keys just below `upper` (empty: +infinity);
    /// `lower` is where the caller's range starts (a hint for PD lookups).
    Before { upper: &'a [u8], lower: &'a [u8] },
}

/// Shared state of a client: PD, the region cache and the node channels.
pub(crate) struct Executor {
    pub(crate) pd: PdClient,
    pub(crate) cache: RegionCache,
    stores: StoreClients,
    rpc_timeout: Duration,
}

/// Least time left for which an attempt is still sent (10 ms).
const MIN_RPC_BUDGET: Duration = Duration::from_millis(10);

/// A failure that happened before anything was sent.
fn unsent(f: Failure) -> (SentTo, Failure) {
    (None, f)
}

/// Cuts a lookup (PD calls, possibly a leader rediscovery) off at the call's
/// deadline; lookups change nothing, so abandoning one is harmless.
async fn by_deadline<T>(
    deadline: Instant,
    lookup: impl Future<Output = std::result::Result<T, Failure>>,
) -> std::result::Result<T, Failure> {
    match tokio::time::timeout_at(deadline, lookup).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Locate("the deadline passed during a region or store lookup".into())),
    }
}

/// The peer an attempt goes to: a random one for a replica read, else the
/// cached leader, else the first voter (else any peer). `None`: no peers.
fn choose_peer(cached: &CachedRegion, replica_read: bool) -> Option<Peer> {
    let region = &cached.region;
    let replica = if replica_read { region.peers.choose(&mut rand::thread_rng()).copied() } else { None };
    replica.or(cached.leader).or_else(|| region.voters().next().copied()).or(region.peers.first().copied())
}

fn locate_failure(e: Error) -> Failure {
    Failure::Locate(e.to_string())
}

impl Executor {
    /// An executor over `pd` whose RPCs (and connects) time out after `rpc_timeout`.
    pub(crate) fn new(pd: PdClient, rpc_timeout: Duration, batch_commands: bool) -> Self {
        // Connecting must give up before the RPC timeout fires: a refused or
        // timed-out connect proves a write unsent, an RPC timeout does not.
        let connect_timeout = rpc_timeout / 2;
        Executor {
            pd,
            cache: RegionCache::new(),
            stores: StoreClients::new(connect_timeout, batch_commands),
            rpc_timeout,
        }
    }

    /// The region containing `key`: from the cache, else from PD (and cached).
    async fn locate_key(&self, key: &[u8]) -> std::result::Result<CachedRegion, Failure> {
        if let Some(c) = self.cache.get_by_key(key) {
            return Ok(c);
        }
        let (region, leader) = self.pd.get_region(key).await.map_err(locate_failure)?;
        self.cache.insert(region.clone(), leader);
        Ok(CachedRegion { region, leader })
    }

    /// The region holding the keys just below `upper` (see [`Locate::Before`]).
    async fn locate_before(&self, upper: &[u8], lower: &[u8]) -> std::result::Result<CachedRegion, Failure> {
        if let Some(c) = self.cache.get_before(upper) {
            return Ok(c);
        }
        if upper.is_empty() {
            return self.locate_last(lower).await;
        }
        let (mut region, mut leader) = self.pd.get_region(upper).await.map_err(locate_failure)?;
        if region.start_key.as_slice() >= upper {
            // `upper` starts its region: the keys below it are in the previous one.
            (region, leader) = self.pd.get_prev_region(upper).await.map_err(locate_failure)?;
        }
        self.cache.insert(region.clone(), leader);
        Ok(CachedRegion { region, leader })
    }

    /// The last region (empty end key). PD has no call for it, so walk
    /// `ScanRegions` from `from`, caching every region on the way (a reverse
    /// scan visits them next anyway).
    async fn locate_last(&self, from: &[u8]) -> std::result::Result<CachedRegion, Failure> {
        const PAGE: i32 = 64;
        let mut cursor = from.to_vec();
        loop {
            let page = self.pd.scan_regions(&cursor, b"", PAGE).await.map_err(locate_failure)?;
            let Some((last, last_leader)) = page.last().cloned() else {
                return Err(Failure::Locate(format!("PD knows no region at or after {cursor:?}")));
            };
            for (region, leader) in page {
                self.cache.insert(region, leader);
            }
            if last.end_key.is_empty() {
                return Ok(CachedRegion { region: last, leader: last_leader });
            }
            if last.end_key <= cursor {
                return Err(Failure::Locate("PD region scan made no progress".into()));
            }
            cursor = last.end_key;
        }
    }

    async fn locate(&self, at: Locate<'_>) -> std::result::Result<CachedRegion, Failure> {
        match at {
            Locate::Key(key) => self.locate_key(key).await,
            Locate::Before { upper, lower } => self.locate_before(upper, lower).await,
        }
    }

    /// Resolves where to send a request for `cached`: to the leader, or with
    /// `replica_read` to a random peer.
    async fn target(
        &self,
        cached: &CachedRegion,
        deadline: Instant,
        replica_read: bool,
    ) -> std::result::Result<Target, Failure> {
        let region = &cached.region;
        let Some(peer) = choose_peer(cached, replica_read) else {
            self.cache.invalidate(region.id);
            return Err(Failure::Locate(format!("region {} has no peers", region.id)));
        };
        let addr = match self.cache.store_addr(peer.store_id) {
            Some(addr) => addr,
            None => {
                let addr = self.pd.get_store(peer.store_id).await.map_err(locate_failure)?;
                self.cache.put_store(peer.store_id, addr.clone());
                addr
            }
        };
        let (client, batch) = self.stores.get(&addr).map_err(|e| {
            self.cache.invalidate_store(peer.store_id);
            Failure::Locate(e)
        })?;
        // Sending with almost no time left would make a write time out, and
        // so become undetermined, when it could simply not have been sent.
        let time_left = deadline.saturating_duration_since(Instant::now());
        if time_left < MIN_RPC_BUDGET {
            return Err(Failure::Locate(format!("only {time_left:?} left before the deadline; not sent")));
        }
        let rpc_timeout = self.rpc_timeout.min(time_left);
        Ok(Target { region: region.clone(), peer, replica_read, client, batch, rpc_timeout })
    }

    /// Runs a request bound to one region until it succeeds, fails for good,
    /// or `deadline` passes. `send` builds and sends one attempt to the target
    /// it is given (clamping ranges to `target.region` if needed). Returns the
    /// region the successful attempt went to, with the answer.
    pub(crate) async fn run_one<T, F, Fut>(
        &self,
        kind: Kind,
        deadline: Instant,
        at: Locate<'_>,
        send: F,
    ) -> Result<(Region, T)>
    where
        F: Fn(Target) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        self.run_one_picking(kind, deadline, at, Pick::Leader, send).await
    }

    /// [`Executor::run_one`], choosing the first attempt's peer by `pick`.
    pub(crate) async fn run_one_picking<T, F, Fut>(
        &self,
        kind: Kind,
        deadline: Instant,
        at: Locate<'_>,
        pick: Pick,
        send: F,
    ) -> Result<(Region, T)>
    where
        F: Fn(Target) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let mut retry = RetryState::new(kind, deadline);
        let mut replica_read = pick == Pick::AnyReplicaFirst;
        loop {
            retry.check_deadline()?;
            let attempt = self.attempt_one(at, deadline, replica_read, &send).await;
            // Only the first attempt may go to a replica; retries take the normal path.
            replica_read = false;
            let (sent_to, failure) = match attempt {
                Ok(done) => return Ok(done),
                Err(failed) => failed,
            };
            retry.absorb(&self.cache, sent_to, failure)?;
            retry.pause().await?;
        }
    }

    /// One attempt of [`Executor::run_one`]; a failure says where it was sent.
    async fn attempt_one<T, F, Fut>(
        &self,
        at: Locate<'_>,
        deadline: Instant,
        replica_read: bool,
        send: &F,
    ) -> std::result::Result<(Region, T), (SentTo, Failure)>
    where
        F: Fn(Target) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let cached = by_deadline(deadline, self.locate(at)).await.map_err(unsent)?;
        let target =
            by_deadline(deadline, self.target(&cached, deadline, replica_read)).await.map_err(unsent)?;
        let sent_to: SentTo = Some((target.region.id, target.peer.store_id));
        let region = target.region.clone();
        match send(target).await {
            Ok(v) => Ok((region, v)),
            Err(f) => Err((sent_to, f)),
        }
    }

    /// Runs a batch: places `items` in regions, sends each region's chunks in
    /// parallel, and re-places the pieces of failed chunks for the next round,
    /// until all succeed, one fails for good, or `deadline` passes. Returns
    /// every chunk's answers, concatenated in no particular order.
    ///
    /// A multi-region write that fails after some chunks were applied ends
    /// with [`Error::Undetermined`] (see [`finish_error`]); after a final
    /// failure no further chunk is sent.
    pub(crate) async fn run_batch<I, T, F, Fut>(
        &self,
        kind: Kind,
        deadline: Instant,
        items: Vec<I>,
        send: F,
    ) -> Result<Vec<T>>
    where
        I: Piece,
        F: Fn(Target, Vec<I>) -> Fut,
        Fut: Future<Output = std::result::Result<Vec<T>, Failure>>,
    {
        let mut retry = RetryState::new(kind, deadline);
        let mut pending = items;
        let mut out = Vec::new();
        let mut applied = false;
        while !pending.is_empty() {
            retry.check_deadline().map_err(|e| finish_error(kind, applied, e))?;

            // Place what the cache knows; locate the rest through PD one
            // region at a time (each lookup usually places many pieces).
            let mut groups = Groups::new();
            let mut missing = groups.place(&self.cache, pending);
            let mut lookup_failure = None;
            while let Some(first) = missing.first() {
                if let Err(f) = by_deadline(deadline, self.locate_key(first.start())).await {
                    lookup_failure = Some(f);
                    break;
                }
                missing = groups.place(&self.cache, missing);
                if retry.time_left().is_zero() {
                    break;
                }
            }
            pending = missing;
            if let Some(f) = lookup_failure {
                retry.absorb(&self.cache, None, f).map_err(|e| finish_error(kind, applied, e))?;
            }

            let send = &send;
            let rounds = groups.into_chunks(MAX_BATCH_KEYS, MAX_BATCH_BYTES).into_iter().map(
                |(cached, chunk)| async move {
                    let target = match by_deadline(deadline, self.target(&cached, deadline, false)).await {
                        Ok(t) => t,
                        Err(f) => return (None, chunk, Err(f)),
                    };
                    let sent_to: SentTo = Some((target.region.id, target.peer.store_id));
                    let answer = send(target, chunk.clone()).await;
                    (sent_to, chunk, answer)
                },
            );
            let mut fatal: Option<Error> = None;
            for (sent_to, chunk, answer) in join_all(rounds).await {
                match answer {
                    Ok(values) => {
                        out.extend(values);
                        applied |= kind == Kind::Write;
                    }
                    Err(failure) => match retry.absorb(&self.cache, sent_to, failure) {
                        Ok(()) => pending.extend(chunk),
                        Err(e) => fatal = Some(worse(fatal, e)),
                    },
                }
            }
            if let Some(e) = fatal {
                return Err(finish_error(kind, applied, e));
            }
            if !pending.is_empty() {
                retry.pause().await.map_err(|e| finish_error(kind, applied, e))?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use mnemo_proto::types::{PeerId, PeerRole, RegionId, StoreId};

    use super::*;

    fn peer(id: u64, role: PeerRole) -> Peer {
        Peer { id: PeerId(id), store_id: StoreId(id), role }
    }

    #[test]
    fn normal_attempts_go_to_the_leader_and_replica_reads_anywhere() {
        let peers = vec![peer(1, PeerRole::Learner), peer(2, PeerRole::Voter), peer(3, PeerRole::Voter)];
        let region = Region { id: RegionId(9), peers, ..Default::default() };
        let led = CachedRegion { region: region.clone(), leader: Some(peer(3, PeerRole::Voter)) };
        let unled = CachedRegion { region, leader: None };
        assert_eq!(choose_peer(&led, false), Some(peer(3, PeerRole::Voter)));
        assert_eq!(choose_peer(&unled, false), Some(peer(2, PeerRole::Voter)), "first voter");
        // A replica read picks among all peers, learners and followers included.
        let seen: HashSet<u64> = (0..200).filter_map(|_| choose_peer(&led, true)).map(|p| p.id.0).collect();
        assert_eq!(seen, HashSet::from([1, 2, 3]));
        let empty = CachedRegion { region: Region::default(), leader: None };
        assert_eq!(choose_peer(&empty, true), None);
    }
}
