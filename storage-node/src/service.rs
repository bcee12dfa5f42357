//! The client-facing `tikvpb.Tikv` gRPC service (RawKV).
//!
//! Each handler: check the request (limits, column family, empty keys) →
//! ask the store loop for permission to read (leader + lease/ReadIndex) or
//! propose the write → read the kv engine or wait for the apply → answer.
//! Region problems go back in `region_error`; bad input is gRPC
//! `INVALID_ARGUMENT` with the limit in the message, and nothing is written.
//!
//! One deliberate hole, closed unless the node runs with the test-only flag
//! `--unsafe-stale-reads`: a `RawGet` whose context sets `replica_read` is
//! then served by any replica under [`ReadPolicy::UnsafeStale`].

// Handlers return `tonic::Status` by the gRPC contract; its size is not ours to choose.
#![allow(clippy::result_large_err)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mnemo_proto::errorpb;
use mnemo_proto::kvrpcpb::{self, Context, KvPair};
use mnemo_proto::raft_serverpb::{
    CompareAndSwap, DeleteRange, Mutation, MutationOp, RaftCommand, RaftRequestHeader,
};
use mnemo_proto::tikvpb::tikv_server::Tikv;
use mnemo_proto::types::{clamp_range, epoch_of, Region, RegionId, StoreId};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::config::ServerConfig;
use crate::engine::{Cf, EngineRef, EngineSnapshot, ScanRange};
use crate::error::{Error, Result};
use crate::flow::FlowStats;
use crate::keys;
use crate::metrics::{GrpcTimer, Metrics, RAFTSTORE};
use crate::raftstore::{
    LocalReader, ReadGrant, ReadPolicy, SendError, StoreMsg, StoreRouter, WriteCallback, WriteOutcome,
};

/// How long a request waits for the store loop before answering.
/// A write still pending then has an unknown outcome (`StaleCommand`);
/// a read is told to retry elsewhere (`NotLeader` without a hint).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of one admitted write, released when it is answered (or dropped).
struct PendingWrite {
    counter: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The RawKV service of one node (cheap to clone: shared handles).
#[derive(Clone)]
pub struct KvService {
    store_id: StoreId,
    store_tx: StoreRouter,
    kv: EngineRef,
    limits: ServerConfig,
    metrics: Arc<Metrics>,
    /// Test-only `--unsafe-stale-reads`: honour `replica_read` on `RawGet`.
    unsafe_stale_reads: bool,
    /// Encoded bytes of writes proposed and not yet answered.
    pending_write_bytes: Arc<AtomicU64>,
    /// `storage.scheduler-pending-write-threshold` in bytes.
    pending_write_threshold: u64,
    /// Grants lease reads without the store loop (none: every read asks it).
    local_reader: Option<Arc<LocalReader>>,
    /// Bytes and keys served, per region, for PD's heartbeats.
    flow: Arc<FlowStats>,
}

type RpcResult<T> = std::result::Result<Response<T>, Status>;

/// Responses that carry a `region_error`.
trait HasRegionError: Default {
    fn set_region_error(&mut self, e: errorpb::Error);
}

macro_rules! has_region_error {
    ($($t:ty),*) => {$(
        impl HasRegionError for $t {
            fn set_region_error(&mut self, e: errorpb::Error) {
                self.region_error = Some(e);
            }
        }
    )*};
}
has_region_error!(
    kvrpcpb::RawGetResponse,
    kvrpcpb::RawBatchGetResponse,
    kvrpcpb::RawPutResponse,
    kvrpcpb::RawBatchPutResponse,
    kvrpcpb::RawDeleteResponse,
    kvrpcpb::RawBatchDeleteResponse,
    kvrpcpb::RawScanResponse,
    kvrpcpb::RawDeleteRangeResponse,
    kvrpcpb::RawBatchScanResponse,
    kvrpcpb::RawGetKeyTtlResponse,
    kvrpcpb::RawCasResponse
);

/// Most "slow request" lines one node writes per second: in an overload
/// (or with `slow-log-threshold = "0s"`) every request is slow, and
/// writing each line would slow them further.
const SLOW_LOG_PER_SEC: u64 = 100;

static SLOW_LOG: SlowLogLimit = SlowLogLimit { second: AtomicU64::new(0), count: AtomicU64::new(0) };

/// Admits [`SLOW_LOG_PER_SEC`] lines per wall-clock second; the first line
/// of a second says how many the seconds before it held back.
struct SlowLogLimit {
    second: AtomicU64,
    count: AtomicU64,
}

impl SlowLogLimit {
    fn admit(&self) -> bool {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.admit_at(now)
    }

    fn admit_at(&self, now: u64) -> bool {
        // Only the first thread to see a newer second starts it afresh (a
        // thread with an older reading never turns the clock back).
        let seen = self.second.load(Ordering::Relaxed);
        if now > seen && self.second.compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let before = self.count.swap(0, Ordering::Relaxed);
            if before > SLOW_LOG_PER_SEC {
                tracing::warn!(held_back = before - SLOW_LOG_PER_SEC, "slow request lines not written");
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed) < SLOW_LOG_PER_SEC
    }
}

/// One client request being served: its timer and its span.
struct Call {
    timer: GrpcTimer,
    /// The request's span (`mnemo_telemetry`): recorded when this node
    /// exports traces or the request carries a trace context, else disabled.
    span: tracing::Span,
    /// `server.slow-log-threshold`.
    slow: Duration,
}

/// Turns a handler result into the gRPC answer: region errors in the body,
/// bad input as `INVALID_ARGUMENT`, anything else as `INTERNAL`. A request
/// slower than `server.slow-log-threshold` is logged (in its span: a JSON
/// log line carries its trace id).
fn respond<T: HasRegionError>(metrics: &Metrics, call: Call, r: Result<T>) -> RpcResult<T> {
    let ty = call.timer.request_type();
    let took = call.timer.finish(r.is_err());
    if took >= call.slow && SLOW_LOG.admit() {
        let outcome = match &r {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        call.span.in_scope(|| {
            tracing::warn!(request = ty, took_ms = took.as_millis() as u64, outcome, "slow request");
        });
    }
    match r {
        Ok(resp) => Ok(Response::new(resp)),
        Err(e) => {
            if let Some(re) = e.to_region_error() {
                metrics.region_errors.inc();
                let mut resp = T::default();
                resp.set_region_error(re);
                return Ok(Response::new(resp));
            }
            match e {
                Error::InvalidArgument(m) => Err(Status::invalid_argument(m)),
                other => Err(Status::internal(other.to_string())),
            }
        }
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

fn expire_at(ttl_secs: u64) -> u64 {
    if ttl_secs == 0 {
        0
    } else {
        keys::now_unix_ms().saturating_add(ttl_secs.saturating_mul(1000))
    }
}

impl KvService {
    /// A service answering for store `store_id`.
    pub fn new(
        store_id: StoreId,
        store_tx: StoreRouter,
        kv: EngineRef,
        limits: ServerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        KvService {
            store_id,
            store_tx,
            kv,
            limits,
            metrics,
            unsafe_stale_reads: false,
            pending_write_bytes: Arc::default(),
            pending_write_threshold: u64::MAX,
            local_reader: None,
            flow: Arc::default(),
        }
    }

    /// Counts read and write flow into `flow` (shared with the PD worker,
    /// which reports it).
    pub fn with_flow(mut self, flow: Arc<FlowStats>) -> Self {
        self.flow = flow;
        self
    }

    /// Counts a read of `pairs` in `region` as flow.
    fn note_read<'a>(&self, region: RegionId, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
        let (mut keys, mut bytes) = (0u64, 0u64);
        for (k, v) in pairs {
            keys += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        self.flow.record_read(region, keys, bytes);
    }

    /// The node's metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Lets `reader` grant lease reads on the calling thread.
    pub fn with_local_reader(mut self, reader: Arc<LocalReader>) -> Self {
        self.local_reader = Some(reader);
        self
    }

    /// **Test-only** (`--unsafe-stale-reads`): when `on`, a `RawGet` asking
    /// for `replica_read` is answered by this node's replica whatever its
    /// role, possibly with stale data. Off by default.
    pub fn with_unsafe_stale_reads(mut self, on: bool) -> Self {
        self.unsafe_stale_reads = on;
        self
    }

    /// Limits the bytes of writes in flight (`storage.scheduler-pending-write-threshold`).
    pub fn with_pending_write_threshold(mut self, bytes: u64) -> Self {
        self.pending_write_threshold = bytes;
        self
    }

    /// How a `RawGet` with this context may be served.
    fn get_policy(&self, ctx: Option<&Context>) -> ReadPolicy {
        if self.unsafe_stale_reads && ctx.is_some_and(|c| c.replica_read) {
            ReadPolicy::UnsafeStale
        } else {
            ReadPolicy::Linearizable
        }
    }

    fn check_cf(cf: &str) -> Result<()> {
        match cf {
            "" | "default" => Ok(()),
            other => {
                Err(invalid(format!("column family {other:?} is not served by RawKV (use \"default\")")))
            }
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(invalid("key must not be empty"));
        }
        let max = self.limits.max_key_size.0;
        if key.len() as u64 > max {
            return Err(invalid(format!("key of {} bytes exceeds the limit of {max} bytes", key.len())));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        let max = self.limits.max_value_size.0;
        if value.len() as u64 > max {
            return Err(invalid(format!("value of {} bytes exceeds the limit of {max} bytes", value.len())));
        }
        Ok(())
    }

    fn check_batch(&self, n: usize) -> Result<()> {
        if n > self.limits.max_batch_keys {
            return Err(invalid(format!(
                "batch of {n} exceeds the limit of {} keys",
                self.limits.max_batch_keys
            )));
        }
        Ok(())
    }

    fn target(&self, ctx: Option<&Context>) -> Result<(RegionId, RaftRequestHeader)> {
        let ctx = ctx.ok_or_else(|| invalid("request has no context"))?;
        if let Some(peer) = &ctx.peer {
            if peer.store_id != 0 && peer.store_id != self.store_id.0 {
                return Err(Error::StoreNotMatch { request: StoreId(peer.store_id), actual: self.store_id });
            }
        }
        let header = RaftRequestHeader {
            region_id: ctx.region_id,
            peer: ctx.peer,
            region_epoch: Some(epoch_of(ctx.region_epoch.as_ref()).into()),
        };
        Ok((RegionId(ctx.region_id), header))
    }

    /// Waits until this node may serve a read of the region under `policy`
    /// (every read but the test-only stale one is linearizable).
    async fn read_permit(&self, ctx: Option<&Context>, policy: ReadPolicy) -> Result<ReadGrant> {
        let (region_id, header) = self.target(ctx)?;
        tracing::Span::current().record("region_id", region_id.0);
        self.metrics.reads.inc();
        if policy == ReadPolicy::UnsafeStale {
            self.metrics.unsafe_stale_reads.inc();
        }
        let epoch = epoch_of(header.region_epoch.as_ref());
        if policy == ReadPolicy::Linearizable {
            if let Some(grant) = self.local_reader.as_ref().and_then(|r| r.read(region_id, epoch)) {
                self.metrics.local_reads.inc();
                RAFTSTORE.proposed("local_read");
                return Ok(grant);
            }
        }
        let (cb, rx) = oneshot::channel();
        self.to_store(StoreMsg::Read { region_id, epoch, policy, cb })?;
        RAFTSTORE.proposed("read_index");
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::NotLeader { region: region_id, leader: None }),
            Err(_) => Err(Error::NotLeader { region: region_id, leader: None }),
        }
    }

    /// Starts serving a request of type `ty`: its timer and span.
    fn begin<T>(&self, req: Request<T>, ty: &'static str) -> (T, Call) {
        let span = mnemo_telemetry::server_span(ty, req.metadata());
        let timer = RAFTSTORE.grpc_timer(ty);
        (req.into_inner(), Call { timer, span, slow: self.limits.slow_log_threshold.0 })
    }

    /// Hands a request to the store loop; a full queue is `ServerIsBusy`.
    fn to_store(&self, msg: StoreMsg) -> Result<()> {
        match self.store_tx.send(msg) {
            Ok(()) => Ok(()),
            Err(SendError::Full) => {
                self.metrics.server_is_busy.inc();
                self.metrics.store_loop_full.inc();
                Err(Error::ServerIsBusy("store loop is busy (raftstore.notify-capacity reached)".into()))
            }
            Err(SendError::Stopped) => Err(Error::Other("store loop stopped".into())),
        }
    }

    /// Proposes a write and waits for it to be applied. Writes in flight
    /// are limited in bytes (`storage.scheduler-pending-write-threshold`):
    /// past it, new writes get `ServerIsBusy` and nothing is proposed.
    async fn write(&self, ctx: Option<&Context>, mut cmd: RaftCommand) -> Result<WriteOutcome> {
        let (region_id, header) = self.target(ctx)?;
        tracing::Span::current().record("region_id", region_id.0);
        self.metrics.writes.inc();
        cmd.header = Some(header);
        let _pending = self.admit_write(prost::Message::encoded_len(&cmd) as u64)?;
        let (keys, bytes) = written_size(&cmd);
        let (tx, rx) = oneshot::channel();
        let cb = WriteCallback::traced(tx, tracing::Span::current());
        self.to_store(StoreMsg::Write { region_id, cmd, cb })?;
        RAFTSTORE.proposed("normal");
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(outcome)) => {
                match &outcome {
                    // A compare-and-swap that did not swap wrote nothing.
                    Ok(WriteOutcome::Cas { succeed: false, .. }) => {}
                    Ok(_) => self.flow.record_write(region_id, keys, bytes),
                    // Refused by the region (not leader, stale epoch, ...):
                    // nothing was committed. A StaleCommand (the leader
                    // stepped down, the peer went) may still commit.
                    Err(Error::StaleCommand) => {}
                    Err(e) if e.to_region_error().is_some() => RAFTSTORE.proposed("dropped"),
                    Err(_) => {}
                }
                outcome
            }
            // Dropped or timed out after proposing: the outcome is unknown,
            // so it counts neither as written nor as dropped.
            Ok(Err(_)) | Err(_) => Err(Error::StaleCommand),
        }
    }

    /// Counts `bytes` as in flight until the returned guard drops, unless
    /// that would pass the threshold (a single write larger than the
    /// threshold is still let through when nothing else is pending).
    fn admit_write(&self, bytes: u64) -> Result<PendingWrite> {
        let limit = self.pending_write_threshold;
        let mut current = self.pending_write_bytes.load(Ordering::Relaxed);
        loop {
            if current > 0 && current.saturating_add(bytes) > limit {
                self.metrics.server_is_busy.inc();
                return Err(Error::ServerIsBusy(format!(
                    "{current} bytes of writes in flight (storage.scheduler-pending-write-threshold {limit})"
                )));
            }
            match self.pending_write_bytes.compare_exchange_weak(
                current,
                current + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(PendingWrite { counter: self.pending_write_bytes.clone(), bytes }),
                Err(now) => current = now,
            }
        }
    }

    fn check_in_region(region: &Region, key: &[u8]) -> Result<()> {
        if region.contains(key) {
            Ok(())
        } else {
            Err(Error::KeyNotInRegion { key: key.to_vec(), region: region.clone() })
        }
    }

    /// Runs `read` on one consistent snapshot of the kv engine, on a
    /// blocking thread (RocksDB reads never run on the reactor threads).
    /// Everything `read` sees is from the same instant: a batch get or a
    /// batch scan never shows half of a concurrent batch write.
    /// Runs `read` on a blocking thread against one engine snapshot, taken
    /// under `grant`: if the peer that granted it was destroyed before the
    /// snapshot was taken (its data may be gone from it), the read fails
    /// with `RegionNotFound` instead of answering from missing data.
    async fn read_snapshot<T: Send + 'static>(
        &self,
        grant: &ReadGrant,
        read: impl FnOnce(&dyn EngineSnapshot) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let kv = self.kv.clone();
        let region = grant.region.id;
        let check = self.local_reader.clone().zip(grant.holder.clone());
        tokio::task::spawn_blocking(move || {
            let snap = kv.snapshot();
            if let Some((reader, holder)) = check {
                if !reader.still_serves(region, &holder) {
                    return Err(Error::RegionNotFound(region));
                }
            }
            read(snap.as_ref())
        })
        .await
        .map_err(|e| Error::Other(format!("read task failed: {e}")))?
    }

    fn check_scan_limit(&self, limit: u32) -> Result<()> {
        if limit > self.limits.max_scan_limit {
            return Err(invalid(format!(
                "scan limit {limit} exceeds the maximum of {}",
                self.limits.max_scan_limit
            )));
        }
        Ok(())
    }

    /// Scan bounds as sent: forward `[start, end)`; reverse: start is the
    /// exclusive upper bound and end the inclusive lower bound.
    fn scan_bounds(region: &Region, start: &[u8], end: &[u8], reverse: bool) -> Result<(Vec<u8>, Vec<u8>)> {
        if !reverse {
            if !start.is_empty() && !region.contains(start) {
                return Err(Error::KeyNotInRegion { key: start.to_vec(), region: region.clone() });
            }
            if !end.is_empty() && end < start {
                return Err(invalid("scan end key is before its start key"));
            }
            Ok((start.to_vec(), end.to_vec()))
        } else {
            let upper_outside = if start.is_empty() {
                !region.end_key.is_empty()
            } else {
                start <= region.start_key.as_slice()
                    || (!region.end_key.is_empty() && start > region.end_key.as_slice())
            };
            if upper_outside {
                return Err(Error::KeyNotInRegion { key: start.to_vec(), region: region.clone() });
            }
            if !start.is_empty() && end > start {
                return Err(invalid(
                    "reverse scan lower bound (end_key) is above its upper bound (start_key)",
                ));
            }
            Ok((end.to_vec(), start.to_vec()))
        }
    }

    fn put_mutation(key: Vec<u8>, value: Vec<u8>, ttl: u64) -> Mutation {
        Mutation { op: MutationOp::Put as i32, key, value, expire_at_ms: expire_at(ttl) }
    }

    fn delete_mutation(key: Vec<u8>) -> Mutation {
        Mutation { op: MutationOp::Delete as i32, key, value: Vec::new(), expire_at_ms: 0 }
    }
}

/// Keys and bytes (keys plus values) a write command writes, as flow
/// counts it; a range delete counts as one key.
fn written_size(cmd: &RaftCommand) -> (u64, u64) {
    let mut keys = cmd.mutations.len() as u64;
    let mut bytes: u64 = cmd.mutations.iter().map(|m| (m.key.len() + m.value.len()) as u64).sum();
    if let Some(cas) = &cmd.cas {
        keys += 1;
        bytes += (cas.key.len() + cas.value.len()) as u64;
    }
    if let Some(range) = &cmd.delete_range {
        keys += 1;
        bytes += (range.start_key.len() + range.end_key.len()) as u64;
    }
    (keys, bytes)
}

/// The live (unexpired) value of user key `key` in `snap`.
fn get_live(snap: &dyn EngineSnapshot, key: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>> {
    Ok(crate::raftstore::apply::live_value(snap.get(Cf::Default, &keys::data_key(key))?, now_ms))
}

/// Scans `[lower, upper)` (empty upper = region end) of `region` in `snap`.
fn scan_region(
    snap: &dyn EngineSnapshot,
    grant: &ReadGrant,
    (lower, upper): (&[u8], &[u8]),
    reverse: bool,
    limit: u32,
    key_only: bool,
) -> Result<Vec<KvPair>> {
    let (region, now) = (&grant.region, grant.now_ms);
    let (lower, upper) = clamp_range(region, lower, upper);
    let (start, end) = (keys::data_key(&lower), keys::data_end_key(&upper));
    let mut out = Vec::new();
    if limit == 0 || start >= end {
        return Ok(out);
    }
    snap.scan(Cf::Default, ScanRange { start: &start, end: &end, reverse }, &mut |k, v| {
        let stored = keys::decode_value(v);
        if !stored.is_expired(now) {
            let value = if key_only { Vec::new() } else { stored.value.to_vec() };
            out.push(KvPair { error: None, key: keys::origin_key(k).to_vec(), value });
        }
        out.len() < limit as usize
    })?;
    Ok(out)
}

#[tonic::async_trait]
impl Tikv for KvService {
    async fn raw_get(&self, req: Request<kvrpcpb::RawGetRequest>) -> RpcResult<kvrpcpb::RawGetResponse> {
        let (req, call) = self.begin(req, "raw_get");
        let r = async {
            Self::check_cf(&req.cf)?;
            self.check_key(&req.key)?;
            let policy = self.get_policy(req.context.as_ref());
            let grant = self.read_permit(req.context.as_ref(), policy).await?;
            Self::check_in_region(&grant.region, &req.key)?;
            let mut resp = kvrpcpb::RawGetResponse::default();
            let (key, now) = (req.key, grant.now_ms);
            let key_len = key.len();
            match self.read_snapshot(&grant, move |snap| get_live(snap, &key, now)).await? {
                Some(v) => resp.value = v,
                None => resp.not_found = true,
            }
            self.flow.record_read(grant.region.id, 1, (key_len + resp.value.len()) as u64);
            Ok(resp)
        }
        .instrument(call.span.clone())
        .await;
        respond(&self.metrics, call, r)
    }

    async fn raw_batch_get(
        &self,
        req: Request<kvrpcpb::RawBatchGetRequest>,
    ) -> RpcResult<kvrpcpb::RawBatchGetResponse> {
        let (req, call) = self.begin(req, "raw_batch_get");
        let r = async {
            Self::check_cf(&req.cf)?;
            self.check_batch(req.keys.len())?;
            for k in &req.keys {
                self.check_key(k)?;
            }
            let grant = self.read_permit(req.context.as_ref(), ReadPolicy::Linearizable).await?;
            for k in &req.keys {
                Self::check_in_region(&grant.region, k)?;
            }
            let (keys, now) = (req.keys, grant.now_ms);
            let pairs = self
                .read_snapshot(&grant, move |snap| {
                    let mut pairs = Vec::new();
                    for k in keys {
                        if let Some(value) = get_live(snap, &k, now)? {
                            pairs.push(KvPair { error: None, key: k, value });
                        }
                        // Tests write here, between two keys of one batch.
                        fail::fail_point!("raw_batch_get_between_keys");
                    }
                    Ok(pairs)
                })
                .await?;
            self.note_read(grant.region.id, pairs.iter().map(|p| (&p.key[..], &p.value[..])));
            Ok(kvrpcpb::RawBatchGetResponse { region_error: None, pairs })
        }
        .instrument(call.span.clone())
        .await;
        respond(&self.metrics, call, r)
    }

    async fn raw_put(&self, req: Request<kvrpcpb::RawPutRequest>) -> RpcResult<kvrpcpb::RawPutResponse> {
        let (req, call) = self.begin(req, "raw_put");
        let r = async {
            Self::check_cf(&req.cf)?;
            self.check_key(&req.key)?;
            self.check_value(&req.value)?;
            let cmd = RaftCommand {
                mutations: vec![Self::put_mutation(req.key, req.value, req.ttl)],
                ..Default::default()
            };
            self.write(req.context.as_ref(), cmd).await?;
            Ok(kvrpcpb::RawPutResponse::default())
        }
        .instrument(call.span.clone())
        .await;
        respond(&self.metrics, call, r)
    }

    async fn raw_batch_put(
        &self,
        req: Request<kvrpcpb::RawBatchPutRequest>,
    ) -> RpcResult<kvrpcpb::RawBatchPutResponse> {
        let (req, call) = self.begin(req, "raw_batch_put");
        let r = async {
            Self::check_cf(&req.cf)?;
            self.check_batch(req.pairs.len())?;
            if !req.ttls.is_empty() && req.ttls.len() != req.pairs.len() {
                return Err(invalid(format!("{} ttls for {} pairs", req.ttls.len(), req.pairs.len())));
            }
            let mut mutations = Vec::with_capacity(req.pairs.len());
            for (i, p) in req.pairs.into_iter().enumerate() {
                self.check_key(&p.key)?;
                self.check_value(&p.value)?;
                let ttl = req.ttls.get(i).copied().unwrap_or(req.ttl);
                mutations.push(Self::put_mutation(p.key, p.value, ttl));
            }
            if mutations.is_empty() {
                return Ok(kvrpcpb::RawBatchPutResponse::default());
            }
            self.write(req.context.as_ref(), RaftCommand { mutations, ..Default::default() }).await?;
            Ok(kvrpcpb::RawBatchPutResponse::default())
        }
        .instrument(call.span.clone())
        .await;
        respond(&self.metrics, call, r)
    }

    async fn raw_delete(
        &self,
        req: Request<kvrpcpb::RawDeleteRequest>,
    ) -> RpcResult<kvrpcpb::RawDeleteResponse> {
        let (req, call) = self.begin(req, "raw_delete");
        let r = async {
            Self::check_cf(&req.cf)?;
            self.check_key(&req.key)?;
            let cmd = RaftCommand { mutations: vec![Self::delete_mutation(req.key)], ..Default::default() };
            self.write(req.context.as_ref(), cmd).await?;
            Ok(kvrpcpb::RawDeleteResponse::default())
        }
        .instrument(call.span.clone())
        .await;
        respond(&self.metrics, call, r)
    }

    async fn raw_batch_delete(
        &self,
        req: Request<kvrpcpb::RawBatchDeleteRequest>,
    ) -> RpcResult<kvrpcpb::RawBatchDeleteResponse> {
        let (req, call) = self.begin(req, "raw_batch_delete");
        let r = async {
            Self::check_cf(&req.cf)?;
            self.check_batch(req.keys.len())?;
            for k in &req.keys {
                self.check_key(k)?;
            }
            if req.keys.is_empty() {
                return Ok(kvrpcpb::RawBatchDeleteResponse::default());
            }
            let mutations = req.keys.into_iter().map(Self::delete_mutation).collect();
            self.write(req.context.as_ref(), RaftCommand { mutations, ..Default::default() }).await?;
            Ok(kvrpcpb::RawBatchDeleteResponse::default())
        }
        .instrument(call.span.clone())
        .await;
        respond(&self.metrics, call, r)
    }

    async fn raw_scan(&self, req: Request<kvrpcpb::RawScanRequest>) -> RpcResult<kvrpcpb::RawScanResponse> {
        let (req, call) = self.begin(req, "raw_scan");
        let r = async {
            Self::check_cf(&req.cf)?;
            self.check_scan_limit(req.limit)?;
            let grant = self.read_permit(req.context.as_ref(), ReadPolicy::Linearizable).await?;
            let (lower, upper) = Self::scan_bounds(&grant.region, &req.start_key, &req.end_key, req.reverse)?;
            let (reverse, limit, key_only) = (req.reverse, req.limit, req.key_only);
            let region = grant.region.id;
            let kvs = self
                .read_snapshot(&grant.clone(), move |snap| {
                    scan_region(snap, &grant, (&lower, &upper), reverse, limit, key_only)
                })
                .await?;
            self.note_read(region, kvs.iter().map(|p| (&p.key[..], &p.value[..])));
            Ok(kvrpcpb::RawScanResponse { region_error: None, kvs })
        }
        .instrument(call.span.clone())
        .await;
        respond(&self.metrics, call, r)
    }

    async fn raw_delete_range(
        &self,
        req: Request<kvrpcpb::RawDeleteRangeRequest>,
    ) -> RpcResult<kvrpcpb::RawDeleteRangeResponse> {
        let (req, call) = self.begin(req, "raw_delete_range");
        let r = async {
            Self::check_cf(&req.cf)?;
            if !req.end_key.is_empty() && req.start_key >= req.end_key {
                return Err(invalid("delete range start key must be below its end key"));
            }
            let cmd = RaftCommand {
                delete_range: Some(DeleteRange { start_key: req.start_key, end_key: req.end_key }),
                ..Default::default()
            };
            self.write(req.context.as_ref(), cmd).await?;
            Ok(kvrpcpb::RawDeleteRangeResponse::default())
        }
        .instrument(call.span.clone())
        .await;
        respond(&self.metrics, call, r)
    }

    async fn raw_batch_scan(
        &self,
        req: Request<kvrpcpb::RawBatchScanRequest>,
    ) -> RpcResult<kvrpcpb::RawBatchScanResponse> {
        let (req, call) = self.begin(req, "raw_batch_scan");
        let r = async {
            Self::check_cf(&req.cf)?;
            self.check_batch(req.ranges.len())?;
            self.check_scan_limit(req.each_limit)?;
            let grant = self.read_permit(req.context.as_ref(), ReadPolicy::Linearizable).await?;
            let mut bounds = Vec::with_capacity(req.ranges.len());
            for range in &req.ranges {
                bounds.push(Self::scan_bounds(&grant.region, &range.start_key, &range.end_key, req.reverse)?);
            }
            let (reverse, limit, key_only) = (req.reverse, req.each_limit, req.key_only);
            let region = grant.region.id;
            let kvs = self
                .read_snapshot(&grant.clone(), move |snap| {
                    let mut kvs = Vec::new();
                    for (lower, upper) in &bounds {
                        kvs.extend(scan_region(snap, &grant, (lower, upper), reverse, limit, key_only)?);
                    }
                    Ok(kvs)
                })
                .await?;
            self.note_read(region, kvs.iter().map(|p| (&p.key[..], &p.value[..])));
            Ok(kvrpcpb::RawBatchScanResponse { region_error: None, kvs })
        }
        .instrument(call.span.clone())
        .await;
        respond(&self.metrics, call, r)
    }

    async fn raw_get_key_ttl(
        &self,
        req: Request<kvrpcpb::RawGetKeyTtlRequest>,
    ) -> RpcResult<kvrpcpb::RawGetKeyTtlResponse> {
        let (req, call) = self.begin(req, "raw_get_key_ttl");
        let r = async {
            Self::check_cf(&req.cf)?;
            self.check_key(&req.key)?;
            let grant = self.read_permit(req.context.as_ref(), ReadPolicy::Linearizable).await?;
            Self::check_in_region(&grant.region, &req.key)?;
            let mut resp = kvrpcpb::RawGetKeyTtlResponse::default();
            let now = grant.now_ms;
            let key = keys::data_key(&req.key);
            match self.read_snapshot(&grant, move |snap| Ok(snap.get(Cf::Default, &key)?)).await? {
                Some(raw) if !keys::decode_value(&raw).is_expired(now) => {
                    let exp = keys::decode_value(&raw).expire_at_ms;
                    resp.ttl = if exp == 0 { 0 } else { (exp - now).div_ceil(1000) };
                }
                _ => resp.not_found = true,
            }
            self.flow.record_read(grant.region.id, 1, req.key.len() as u64);
            Ok(resp)
        }
        .instrument(call.span.clone())
        .await;
        respond(&self.metrics, call, r)
    }

    async fn raw_compare_and_swap(
        &self,
        req: Request<kvrpcpb::RawCasRequest>,
    ) -> RpcResult<kvrpcpb::RawCasResponse> {
        let (req, call) = self.begin(req, "raw_compare_and_swap");
        let r = async {
            Self::check_cf(&req.cf)?;
            self.check_key(&req.key)?;
            self.check_value(&req.value)?;
            self.check_value(&req.previous_value)?;
            let cmd = RaftCommand {
                cas: Some(CompareAndSwap {
                    key: req.key,
                    previous_not_exist: req.previous_not_exist,
                    previous_value: req.previous_value,
                    value: req.value,
                    expire_at_ms: expire_at(req.ttl),
                }),
                ..Default::default()
            };
            match self.write(req.context.as_ref(), cmd).await? {
                WriteOutcome::Cas { succeed, previous } => Ok(kvrpcpb::RawCasResponse {
                    succeed,
                    previous_not_exist: previous.is_none(),
                    previous_value: previous.unwrap_or_default(),
                    ..Default::default()
                }),
                WriteOutcome::Done => Err(Error::Other("CAS applied without an outcome".into())),
            }
        }
        .instrument(call.span.clone())
        .await;
        respond(&self.metrics, call, r)
    }

    type BatchCommandsStream = crate::batch_commands::AnswerStream;

    async fn batch_commands(
        &self,
        req: Request<tonic::Streaming<mnemo_proto::tikvpb::BatchCommandsRequest>>,
    ) -> RpcResult<Self::BatchCommandsStream> {
        Ok(Response::new(crate::batch_commands::serve(Arc::new(self.clone()), req.into_inner())))
    }
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use std::sync::atomic::AtomicBool;

    use mnemo_proto::types::RegionEpoch;

    use super::*;
    use crate::engine::{MemEngine, WriteBatch};
    use crate::raftstore::local_reader::ReadDelegate;
    use crate::raftstore::LeaseClock;

    fn write_pair(kv: &EngineRef, value: &[u8]) {
        let mut wb = WriteBatch::new();
        for k in [b"a", b"b"] {
            wb.put(Cf::Default, keys::data_key(k), keys::encode_value(value, 0));
        }
        kv.write(&wb, false).unwrap();
    }

    #[tokio::test]
    async fn a_batch_get_never_sees_half_of_a_concurrent_batch_write() {
        let kv: EngineRef = Arc::new(MemEngine::new());
        write_pair(&kv, b"1");
        // A stand-in for the store loop that grants every read (the whole key space).
        let (router, inbox) = crate::raftstore::router::channel(16);
        std::thread::spawn(move || {
            for msg in inbox.requests.iter() {
                if let StoreMsg::Read { cb, .. } = msg {
                    let region =
                        Region { epoch: RegionEpoch { conf_ver: 1, version: 1 }, ..Default::default() };
                    let _ = cb.send(Ok(ReadGrant { region, now_ms: keys::now_unix_ms(), holder: None }));
                }
            }
        });
        let service = KvService::new(StoreId(1), router, kv.clone(), ServerConfig::default(), Arc::default());
        // A batch put of both keys lands between the reads of the two keys.
        let once = AtomicBool::new(false);
        let writer = kv.clone();
        fail::cfg_callback("raw_batch_get_between_keys", move || {
            if !once.swap(true, Ordering::SeqCst) {
                write_pair(&writer, b"2");
            }
        })
        .unwrap();
        let req = kvrpcpb::RawBatchGetRequest {
            context: Some(Context { region_id: 1, ..Default::default() }),
            keys: vec![b"a".to_vec(), b"b".to_vec()],
            ..Default::default()
        };
        let resp = service.raw_batch_get(Request::new(req)).await.unwrap().into_inner();
        fail::remove("raw_batch_get_between_keys");
        let values: Vec<&[u8]> = resp.pairs.iter().map(|p| p.value.as_slice()).collect();
        assert_eq!(values, vec![&b"1"[..], b"1"], "one consistent view: both before the write");
        // The write did happen.
        assert_eq!(crate::raftstore::apply::read_live(kv.as_ref(), b"b", 0).unwrap(), Some(b"2".to_vec()));
    }

    #[tokio::test]
    async fn a_read_granted_by_a_peer_destroyed_before_its_snapshot_is_refused() {
        let kv: EngineRef = Arc::new(MemEngine::new());
        write_pair(&kv, b"1");
        let region =
            Region { id: RegionId(1), epoch: RegionEpoch { conf_ver: 1, version: 1 }, ..Default::default() };
        // Region 1's peer here now has another delegate than the one that
        // granted the read: the granting peer was destroyed (its data may be
        // gone) before the read took its snapshot.
        let reader = LocalReader::new(LeaseClock::real());
        reader.register(RegionId(1), ReadDelegate::new(region.clone()));
        let destroyed = ReadDelegate::new(region.clone());
        let (router, inbox) = crate::raftstore::router::channel(16);
        std::thread::spawn(move || {
            for msg in inbox.requests.iter() {
                if let StoreMsg::Read { cb, .. } = msg {
                    let holder = Some(destroyed.clone());
                    let _ = cb.send(Ok(ReadGrant {
                        region: region.clone(),
                        now_ms: keys::now_unix_ms(),
                        holder,
                    }));
                }
            }
        });
        let service = KvService::new(StoreId(1), router, kv, ServerConfig::default(), Arc::default())
            .with_local_reader(reader);
        let req = kvrpcpb::RawGetRequest {
            context: Some(Context { region_id: 1, ..Default::default() }),
            key: b"a".to_vec(),
            ..Default::default()
        };
        let resp = service.raw_get(Request::new(req)).await.unwrap().into_inner();
        // Refused, and the client told to look the region up again; not
        // answered (here the data is still there, but nothing says so).
        assert!(resp.region_error.as_ref().is_some_and(|e| e.region_not_found.is_some()), "{resp:?}");
        assert!(resp.value.is_empty() && !resp.not_found);
    }
}

#[cfg(test)]
mod slow_log_tests {
    use super::*;

    #[test]
    fn slow_request_lines_are_capped_per_second() {
        let limit = SlowLogLimit { second: AtomicU64::new(0), count: AtomicU64::new(0) };
        let admitted = (0..SLOW_LOG_PER_SEC + 50).filter(|_| limit.admit_at(7)).count() as u64;
        assert_eq!(admitted, SLOW_LOG_PER_SEC);
        assert!(limit.admit_at(8), "a new second admits again");
        assert!(
            !(0..SLOW_LOG_PER_SEC * 2).all(|_| limit.admit_at(7)),
            "an older reading starts nothing afresh"
        );
    }
}
