//! Node-to-node raft transport over gRPC.
//!
//! Sending: one task per target store owns one `BatchRaft` client stream;
//! the store loop hands it one `Vec<RaftMessage>` per round, which becomes one
//! `BatchRaftMessage` on the wire. Snapshots leave the batch and go through a
//! `Snapshot` stream of 1 MiB chunks, at most `MAX_CONCURRENT_SNAPSHOTS` at a
//! time, each under a deadline scaled by its size (a hung receiver cannot
//! hold a permit for ever); their outcome is reported to the store loop so
//! raft can retry.
//!
//! Connections: HTTP/2 keep-alive pings (`server.grpc-keepalive-time`, dead
//! after `server.grpc-keepalive-timeout` without an answer) find a peer that
//! stopped answering even when nothing is sent, so the stream is re-opened
//! rather than silently buffering into a dead socket. Addresses come from
//! PD (`GetStore`) and are cached: a node reconnects to a store it knows
//! even while PD is down, and asks PD again only if the cached address
//! does not answer (the store may have moved).
//!
//! Losing messages is fine (raft retransmits); the transport never blocks the
//! store loop: each store's send queue is bounded
//! (`server.raft-client-queue-size` batches), and messages for a store it
//! cannot reach, or whose queue is full, are dropped and their regions
//! reported unreachable.
//!
//! Receiving: the `RaftTransport` service forwards every message to the store
//! loop; a snapshot's chunks are joined back into one raft message first.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use mnemo_client::pd::PdClient;
use mnemo_proto::raft_serverpb::raft_transport_client::RaftTransportClient;
use mnemo_proto::raft_serverpb::raft_transport_server::RaftTransport;
use mnemo_proto::raft_serverpb::{BatchRaftMessage, Done, RaftMessage, SnapshotChunk};
use mnemo_proto::types::{PeerId, RegionId, StoreId};
use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{Message as RaftMsg, MessageType};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Metrics;
use crate::raftstore::{SendError, StoreMsg, StoreRouter, Transport};

/// Size of one snapshot data chunk on the wire.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Snapshots this node sends at the same time.
const MAX_CONCURRENT_SNAPSHOTS: usize = 4;
/// Largest gRPC message accepted between nodes (a raft batch can hold 8 MiB entries).
pub const MAX_GRPC_MESSAGE: usize = 64 << 20;

/// Connection settings of the transport (from `[server]`).
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// HTTP/2 keep-alive ping interval.
    pub keepalive_time: Duration,
    /// A connection whose ping is not answered within this is closed.
    pub keepalive_timeout: Duration,
    /// Batches queued per target store before new ones are dropped.
    pub queue_size: usize,
    /// Test-only delay injection (`--enable-test-controls`).
    pub delays: Arc<TransportDelays>,
}

/// Test-only: extra latency on outgoing raft messages, per target store (or
/// to every store), set through the status server's
/// `/debug/transport-delay`. Each batch leaves that long after the store
/// loop handed it over (order kept); this kernel has no netem, so links are
/// slowed inside the process. Zero (the default) adds nothing.
#[derive(Debug, Default)]
pub struct TransportDelays {
    inner: Mutex<(Duration, HashMap<StoreId, Duration>)>,
    /// Stores whose messages are dropped instead (a one-way partition at
    /// the raft level: this node hears them, they do not hear it).
    dropped: Mutex<std::collections::HashSet<StoreId>>,
}

impl TransportDelays {
    /// Delays messages to `stores` (every store if `None`) by `delay`
    /// (zero clears). A per-store delay overrides the all-stores one.
    pub fn set(&self, delay: Duration, stores: Option<&[StoreId]>) {
        let mut inner = self.inner.lock();
        match stores {
            None => {
                inner.0 = delay;
                inner.1.clear();
            }
            Some(ids) => {
                for id in ids {
                    inner.1.insert(*id, delay);
                }
            }
        }
    }

    /// Drops every message to `stores` from now on (`false` stops that).
    pub fn set_dropped(&self, stores: &[StoreId], drop: bool) {
        let mut dropped = self.dropped.lock();
        for s in stores {
            if drop {
                dropped.insert(*s);
            } else {
                dropped.remove(s);
            }
        }
    }

    /// True if messages to `store` are dropped.
    pub fn drops(&self, store: StoreId) -> bool {
        self.dropped.lock().contains(&store)
    }

    /// The delay of messages to `store`.
    pub fn delay_to(&self, store: StoreId) -> Duration {
        let inner = self.inner.lock();
        inner.1.get(&store).copied().unwrap_or(inner.0)
    }

    /// `{"all_ms": n, "stores": {"id": ms}}`.
    pub fn state(&self) -> serde_json::Value {
        let inner = self.inner.lock();
        let stores: serde_json::Map<String, serde_json::Value> =
            inner.1.iter().map(|(s, d)| (s.0.to_string(), (d.as_millis() as u64).into())).collect();
        let dropped: Vec<u64> = self.dropped.lock().iter().map(|s| s.0).collect();
        serde_json::json!({ "all_ms": inner.0.as_millis() as u64, "stores": stores, "dropped": dropped })
    }
}

/// One round's messages for one store, with when they were handed over.
type Queued = (Instant, Vec<RaftMessage>);

struct Shared {
    pd: Arc<PdClient>,
    store_tx: StoreRouter,
    snapshots: Semaphore,
    metrics: Arc<Metrics>,
    cfg: TransportConfig,
    /// Store addresses learned from PD, used first (and while PD is down).
    addrs: Mutex<HashMap<StoreId, String>>,
}

/// The sending side: implements [`Transport`] for the store loop.
pub struct GrpcTransport {
    shared: Arc<Shared>,
    senders: Mutex<HashMap<StoreId, mpsc::Sender<Queued>>>,
    runtime: tokio::runtime::Handle,
}

impl GrpcTransport {
    /// A transport resolving stores through `pd` and reporting failures to `store_tx`.
    pub fn new(
        pd: Arc<PdClient>,
        store_tx: StoreRouter,
        metrics: Arc<Metrics>,
        cfg: TransportConfig,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let shared = Arc::new(Shared {
            pd,
            store_tx,
            snapshots: Semaphore::new(MAX_CONCURRENT_SNAPSHOTS),
            metrics,
            cfg,
            addrs: Mutex::new(HashMap::new()),
        });
        GrpcTransport { shared, senders: Mutex::new(HashMap::new()), runtime }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, store: StoreId, msgs: Vec<RaftMessage>) {
        let mut senders = self.senders.lock();
        let tx = senders.entry(store).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.shared.cfg.queue_size.max(1));
            self.runtime.spawn(store_sender(store, rx, self.shared.clone()));
            tx
        });
        if let Err(mpsc::error::TrySendError::Full((_, msgs))) = tx.try_send((Instant::now(), msgs)) {
            // The link is slower than the store loop: shed load, raft resends.
            self.shared.metrics.raft_messages_dropped.add(msgs.len() as u64);
            report_unreachable(&self.shared, &msgs);
        }
    }
}

/// The raft message in `m`, decoded, if it carries a snapshot. Only its
/// type is read first (every append passes through here: decoding it whole,
/// entries and all, just to learn its type cost more than sending it).
fn is_snapshot(m: &RaftMessage) -> Option<RaftMsg> {
    /// `eraftpb.Message` with only its type: prost skips every other field.
    #[derive(Clone, PartialEq, prost::Message)]
    struct TypeOnly {
        #[prost(int32, tag = "1")]
        msg_type: i32,
    }
    let ty = <TypeOnly as prost::Message>::decode(m.message.as_slice()).ok()?.msg_type;
    if ty != MessageType::MsgSnapshot as i32 {
        return None;
    }
    RaftMsg::parse_from_bytes(&m.message).ok()
}

/// Tells the store loop that `msgs` were not delivered. A dropped snapshot
/// is reported as a failed snapshot too: raft-rs keeps a follower waiting
/// for a snapshot's outcome until told, and would otherwise never retry.
fn report_unreachable(shared: &Shared, msgs: &[RaftMessage]) {
    for m in msgs {
        if let Some(to) = &m.to_peer {
            let (region_id, to) = (RegionId(m.region_id), PeerId(to.id));
            if is_snapshot(m).is_some() {
                let _ = shared.store_tx.send(StoreMsg::SnapshotStatus { region_id, to, ok: false });
            }
            let _ = shared.store_tx.send(StoreMsg::Unreachable { region_id, to });
        }
    }
}

/// Opens a connection to `addr` with keep-alive pings.
async fn dial(shared: &Shared, addr: &str) -> Result<Channel, String> {
    let url = if addr.starts_with("http") { addr.to_string() } else { format!("http://{addr}") };
    Endpoint::from_shared(url)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(shared.cfg.keepalive_time)
        .keep_alive_timeout(shared.cfg.keepalive_timeout)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| e.to_string())
}

/// Connects to `store`: at its cached address first; then at the address
/// PD gives now (remembered for next time).
async fn connect(shared: &Shared, store: StoreId) -> Result<Channel, String> {
    let cached = shared.addrs.lock().get(&store).cloned();
    let mut failure = String::new();
    if let Some(addr) = &cached {
        match dial(shared, addr).await {
            Ok(c) => return Ok(c),
            Err(e) => failure = format!("{addr}: {e}; "),
        }
    }
    let addr = match shared.pd.get_store(store).await {
        Ok(a) => a,
        Err(e) => return Err(format!("{failure}PD cannot tell the address: {e}")),
    };
    shared.addrs.lock().insert(store, addr.clone());
    if cached.as_ref() == Some(&addr) {
        return Err(format!("{failure}PD knows no other address"));
    }
    dial(shared, &addr).await.map_err(|e| format!("{failure}{addr}: {e}"))
}

/// Owns the connection to one store for the node's lifetime.
async fn store_sender(store: StoreId, mut rx: mpsc::Receiver<Queued>, shared: Arc<Shared>) {
    loop {
        let channel = match connect(&shared, store).await {
            Ok(c) => c,
            Err(e) => {
                shared.metrics.raft_connection_failures.inc();
                tracing::debug!(%store, "cannot reach store: {e}");
                // Drop what queued up meanwhile; raft will resend.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while let Ok((_, msgs)) = rx.try_recv() {
                    report_unreachable(&shared, &msgs);
                }
                continue;
            }
        };
        let client = RaftTransportClient::new(channel)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE);
        let (tx, stream_rx) = mpsc::channel::<BatchRaftMessage>(64);
        let mut call_client = client.clone();
        let mut call =
            tokio::spawn(async move { call_client.batch_raft(ReceiverStream::new(stream_rx)).await });
        loop {
            tokio::select! {
                msgs = rx.recv() => {
                    let Some((queued_at, msgs)) = msgs else { return };
                    if shared.cfg.delays.drops(store) {
                        report_unreachable(&shared, &msgs);
                        continue;
                    }
                    let delay = shared.cfg.delays.delay_to(store);
                    if !delay.is_zero() {
                        tokio::time::sleep_until((queued_at + delay).into()).await;
                    }
                    let mut batch = Vec::with_capacity(msgs.len());
                    for m in msgs {
                        match is_snapshot(&m) {
                            Some(raft_msg) => {
                                tokio::spawn(send_snapshot(client.clone(), m, raft_msg, shared.clone()));
                            }
                            None => batch.push(m),
                        }
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    if let Err(e) = tx.send(BatchRaftMessage { msgs: batch }).await {
                        report_unreachable(&shared, &e.0.msgs);
                        break;
                    }
                }
                res = &mut call => {
                    shared.metrics.raft_connection_failures.inc();
                    tracing::info!(%store, "raft stream to store ended, reconnecting: {res:?}");
                    break;
                }
            }
        }
        call.abort();
    }
}

async fn send_snapshot(
    mut client: RaftTransportClient<Channel>,
    mut wire: RaftMessage,
    mut msg: RaftMsg,
    shared: Arc<Shared>,
) {
    let region_id = RegionId(wire.region_id);
    let to = PeerId(wire.to_peer.as_ref().map(|p| p.id).unwrap_or_default());
    let _sending = shared.metrics.snapshots_sending.track();
    let Ok(_permit) = shared.snapshots.acquire().await else { return };
    fail::fail_point!("snapshot_send");
    let data = std::mem::take(&mut msg.mut_snapshot().data);
    wire.message = msg.write_to_bytes().expect("encode");
    let mut chunks = vec![SnapshotChunk { message: Some(wire), data: Vec::new() }];
    chunks.extend(data.chunks(SNAPSHOT_CHUNK).map(|c| SnapshotChunk { message: None, data: c.to_vec() }));
    let size = data.len();
    // A receiver that stops reading must not hold the permit for ever.
    let deadline = Duration::from_secs(10) + Duration::from_secs((size >> 20) as u64);
    let ok = matches!(
        tokio::time::timeout(deadline, client.snapshot(futures::stream::iter(chunks))).await,
        Ok(Ok(_))
    );
    tracing::info!(region = %region_id, %to, size, ok, "snapshot sent");
    shared.metrics.snapshots_sent.inc();
    crate::metrics::RAFTSTORE.snapshot_done("send", ok);
    let _ = shared.store_tx.send(StoreMsg::SnapshotStatus { region_id, to, ok });
}

/// Longest wait for the next chunk of a snapshot being received.
const SNAPSHOT_CHUNK_IDLE: Duration = Duration::from_secs(30);

/// The receiving side: the `RaftTransport` gRPC service.
pub struct RaftService {
    store_tx: StoreRouter,
    metrics: Arc<Metrics>,
}

impl RaftService {
    /// Forwards everything received to the store loop behind `store_tx`.
    pub fn new(store_tx: StoreRouter, metrics: Arc<Metrics>) -> Self {
        RaftService { store_tx, metrics }
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn batch_raft(&self, req: Request<Streaming<BatchRaftMessage>>) -> Result<Response<Done>, Status> {
        let mut stream = req.into_inner();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            self.metrics.raft_messages_received.add(batch.msgs.len() as u64);
            for m in batch.msgs {
                match self.store_tx.send(StoreMsg::Raft(m)) {
                    Ok(()) => {}
                    // Overloaded: drop it, raft resends.
                    Err(SendError::Full) => self.metrics.raft_messages_dropped.inc(),
                    Err(SendError::Stopped) => return Err(Status::unavailable("store stopped")),
                }
            }
        }
        Ok(Response::new(Done {}))
    }

    async fn snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<Done>, Status> {
        let _receiving = self.metrics.snapshots_receiving.track();
        let mut stream: Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>> =
            Box::pin(req.into_inner());
        // A sender that goes silent (partitioned mid-snapshot) must not
        // hold this stream, and the receiving count PD sees, for ever.
        let mut next = async || {
            tokio::time::timeout(SNAPSHOT_CHUNK_IDLE, stream.next())
                .await
                .map_err(|_| Status::deadline_exceeded("snapshot sender went silent"))
        };
        let received = async {
            let first = next().await?.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
            let wire =
                first.message.ok_or_else(|| Status::invalid_argument("first chunk carries no message"))?;
            let mut data = first.data;
            while let Some(chunk) = next().await? {
                data.extend_from_slice(&chunk?.data);
            }
            Ok::<_, Status>((wire, data))
        }
        .await;
        crate::metrics::RAFTSTORE.snapshot_done("receive", received.is_ok());
        let (mut wire, data) = received?;
        let mut msg =
            RaftMsg::parse_from_bytes(&wire.message).map_err(|e| Status::invalid_argument(e.to_string()))?;
        msg.mut_snapshot().data = data.into();
        wire.message = msg.write_to_bytes().map_err(|e| Status::internal(e.to_string()))?;
        self.metrics.snapshots_received.inc();
        match self.store_tx.send(StoreMsg::Raft(wire)) {
            Ok(()) => {}
            Err(SendError::Full) => {
                self.metrics.raft_messages_dropped.inc();
                return Err(Status::resource_exhausted("store loop busy; snapshot dropped"));
            }
            Err(SendError::Stopped) => return Err(Status::unavailable("store stopped")),
        }
        Ok(Response::new(Done {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, Snapshot};

    fn wire(msg: &RaftMsg) -> RaftMessage {
        RaftMessage { region_id: 1, message: msg.write_to_bytes().unwrap(), ..Default::default() }
    }

    #[test]
    fn only_snapshots_leave_the_batch() {
        let mut snap = RaftMsg::default();
        snap.set_msg_type(MessageType::MsgSnapshot);
        let mut s = Snapshot::default();
        s.set_data(vec![7; 1000].into());
        s.mut_metadata().index = 42;
        snap.set_snapshot(s);
        let found = is_snapshot(&wire(&snap)).expect("a snapshot is recognised");
        assert_eq!(found.get_snapshot().get_metadata().index, 42);

        let mut append = RaftMsg::default();
        append.set_msg_type(MessageType::MsgAppend);
        let mut entry = Entry::default();
        entry.set_data(vec![1; 300].into());
        append.set_entries(vec![entry].into());
        assert!(is_snapshot(&wire(&append)).is_none());
        // MsgHup is type 0: its type field is not on the wire at all.
        assert!(is_snapshot(&wire(&RaftMsg::default())).is_none());
        assert!(is_snapshot(&RaftMessage { message: vec![0xff, 0xff], ..Default::default() }).is_none());
    }
}
