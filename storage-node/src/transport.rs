//! Node-to-node raft transport over gRPC.
//!
//! Sending: one task per target store owns one `BatchRaft` client stream;
//! the store loop hands it one `Vec<RaftMessage>` per round, which becomes one
//! `BatchRaftMessage` on the wire. Snapshots leave the batch and go through a
//! `Snapshot` stream of 1 MiB chunks, at most `MAX_CONCURRENT_SNAPSHOTS` at a
//! time; their outcome is reported to the store loop so raft can retry.
//! Addresses come from PD (`GetStore`) and are cached until a connection fails.
//!
//! Losing messages is fine (raft retransmits); the transport never blocks the
//! store loop: it drops messages for a store it cannot reach and reports the
//! regions unreachable.
//!
//! Receiving: the `RaftTransport` service forwards every message to the store
//! loop; a snapshot's chunks are joined back into one raft message first.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
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
use crate::raftstore::{StoreMsg, Transport};

/// Size of one snapshot data chunk on the wire.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Snapshots this node sends at the same time.
const MAX_CONCURRENT_SNAPSHOTS: usize = 4;
/// Largest gRPC message accepted between nodes (a raft batch can hold 8 MiB entries).
pub const MAX_GRPC_MESSAGE: usize = 64 << 20;

struct Shared {
    pd: Arc<PdClient>,
    store_tx: Sender<StoreMsg>,
    snapshots: Semaphore,
    metrics: Arc<Metrics>,
}

/// The sending side: implements [`Transport`] for the store loop.
pub struct GrpcTransport {
    shared: Arc<Shared>,
    senders: Mutex<HashMap<StoreId, mpsc::UnboundedSender<Vec<RaftMessage>>>>,
    runtime: tokio::runtime::Handle,
}

impl GrpcTransport {
    /// A transport resolving stores through `pd` and reporting failures to `store_tx`.
    pub fn new(
        pd: Arc<PdClient>,
        store_tx: Sender<StoreMsg>,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let shared =
            Arc::new(Shared { pd, store_tx, snapshots: Semaphore::new(MAX_CONCURRENT_SNAPSHOTS), metrics });
        GrpcTransport { shared, senders: Mutex::new(HashMap::new()), runtime }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, store: StoreId, msgs: Vec<RaftMessage>) {
        let mut senders = self.senders.lock();
        let tx = senders.entry(store).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            self.runtime.spawn(store_sender(store, rx, self.shared.clone()));
            tx
        });
        let _ = tx.send(msgs);
    }
}

fn is_snapshot(m: &RaftMessage) -> Option<RaftMsg> {
    // Cheap check first: only decode messages big enough to carry a snapshot.
    let msg = RaftMsg::parse_from_bytes(&m.message).ok()?;
    (msg.get_msg_type() == MessageType::MsgSnapshot).then_some(msg)
}

fn report_unreachable(shared: &Shared, msgs: &[RaftMessage]) {
    for m in msgs {
        if let Some(to) = &m.to_peer {
            let _ = shared
                .store_tx
                .send(StoreMsg::Unreachable { region_id: RegionId(m.region_id), to: PeerId(to.id) });
        }
    }
}

async fn connect(shared: &Shared, store: StoreId) -> Result<Channel, String> {
    let addr = shared.pd.get_store(store).await.map_err(|e| e.to_string())?;
    let url = if addr.starts_with("http") { addr } else { format!("http://{addr}") };
    Endpoint::from_shared(url)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| e.to_string())
}

/// Owns the connection to one store for the node's lifetime.
async fn store_sender(
    store: StoreId,
    mut rx: mpsc::UnboundedReceiver<Vec<RaftMessage>>,
    shared: Arc<Shared>,
) {
    loop {
        let channel = match connect(&shared, store).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%store, "cannot reach store: {e}");
                // Drop what queued up meanwhile; raft will resend.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while let Ok(msgs) = rx.try_recv() {
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
                    let Some(msgs) = msgs else { return };
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
                    tracing::debug!(%store, "raft stream ended: {res:?}");
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
    let Ok(_permit) = shared.snapshots.acquire().await else { return };
    let data = std::mem::take(&mut msg.mut_snapshot().data);
    wire.message = msg.write_to_bytes().expect("encode");
    let mut chunks = vec![SnapshotChunk { message: Some(wire), data: Vec::new() }];
    chunks.extend(data.chunks(SNAPSHOT_CHUNK).map(|c| SnapshotChunk { message: None, data: c.to_vec() }));
    let size = data.len();
    let ok = client.snapshot(futures::stream::iter(chunks)).await.is_ok();
    tracing::info!(region = %region_id, %to, size, ok, "snapshot sent");
    shared.metrics.snapshots_sent.inc();
    let _ = shared.store_tx.send(StoreMsg::SnapshotStatus { region_id, to, ok });
}

/// The receiving side: the `RaftTransport` gRPC service.
pub struct RaftService {
    store_tx: Sender<StoreMsg>,
    metrics: Arc<Metrics>,
}

impl RaftService {
    /// Forwards everything received to the store loop behind `store_tx`.
    pub fn new(store_tx: Sender<StoreMsg>, metrics: Arc<Metrics>) -> Self {
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
                self.store_tx.send(StoreMsg::Raft(m)).map_err(|_| Status::unavailable("store stopped"))?;
            }
        }
        Ok(Response::new(Done {}))
    }

    async fn snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<Done>, Status> {
        let mut stream: Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>> =
            Box::pin(req.into_inner());
        let first =
            stream.next().await.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let mut wire =
            first.message.ok_or_else(|| Status::invalid_argument("first chunk carries no message"))?;
        let mut data = first.data;
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk?.data);
        }
        let mut msg =
            RaftMsg::parse_from_bytes(&wire.message).map_err(|e| Status::invalid_argument(e.to_string()))?;
        msg.mut_snapshot().data = data.into();
        wire.message = msg.write_to_bytes().map_err(|e| Status::internal(e.to_string()))?;
        self.metrics.snapshots_received.inc();
        self.store_tx.send(StoreMsg::Raft(wire)).map_err(|_| Status::unavailable("store stopped"))?;
        Ok(Response::new(Done {}))
    }
}
