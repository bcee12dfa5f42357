//! Raft messages between PD members: `pd_raftpb.PdRaft/Raft` streams on
//! the members' peer URLs.
//!
//! Sending: one task per peer keeps one client stream open, reconnecting
//! with a backoff when it breaks; the raft thread hands it messages without
//! blocking, and drops them when the peer is away (raft sends again). Every
//! batch names the sender (id, name, URLs), which is how members learn each
//! other's client URLs. Receiving: each batch is decoded and queued to the
//! raft thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use mnemo_proto::pd_raftpb::pd_raft_client::PdRaftClient;
use mnemo_proto::pd_raftpb::pd_raft_server::{PdRaft, PdRaftServer};
use mnemo_proto::pd_raftpb::{Done, MemberInfo, RaftBatch};
use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use raft::SnapshotStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::Input;
use crate::member::Member;

/// Messages queued per peer before newer ones are dropped.
const QUEUE: usize = 4096;
/// Largest message either way (a snapshot carries all the metadata).
const MAX_MESSAGE: usize = 1 << 30;

/// One queued message: its bytes, and whether it is a snapshot (whose loss
/// the raft thread must hear of, or the follower waits for it for ever).
type Queued = (Vec<u8>, bool);

fn info_of(m: &Member) -> MemberInfo {
    MemberInfo {
        member_id: m.member_id,
        name: m.name.clone(),
        peer_url: m.peer_url.clone(),
        client_url: m.client_url.clone(),
    }
}

fn member_of(i: &MemberInfo) -> Member {
    Member {
        name: i.name.clone(),
        member_id: i.member_id,
        client_url: i.client_url.clone(),
        peer_url: i.peer_url.clone(),
    }
}

/// Sends raft messages to the other members.
#[derive(Clone)]
pub struct PeerTransport {
    me: Member,
    runtime: tokio::runtime::Handle,
    peers: Arc<Mutex<HashMap<u64, mpsc::Sender<Queued>>>>,
    /// Our cluster id, stamped on every batch (0 until one is applied).
    cluster_id: Arc<AtomicU64>,
    /// Where delivery failures are reported (set once the raft thread runs).
    raft: Arc<Mutex<Option<std_mpsc::Sender<Input>>>>,
}

/// Tells the raft thread that a snapshot to `to` was lost or handed over.
fn report(raft: &Mutex<Option<std_mpsc::Sender<Input>>>, input: Input) {
    if let Some(tx) = raft.lock().as_ref() {
        let _ = tx.send(input);
    }
}

impl PeerTransport {
    /// A transport for member `me`, spawning its sender tasks on `runtime`.
    pub fn new(me: Member, runtime: tokio::runtime::Handle) -> PeerTransport {
        PeerTransport {
            me,
            runtime,
            peers: Arc::new(Mutex::new(HashMap::new())),
            cluster_id: Arc::default(),
            raft: Arc::default(),
        }
    }

    /// Stamps `id` (this member's applied cluster id) on what it sends.
    pub(crate) fn set_cluster_id(&self, id: u64) {
        self.cluster_id.store(id, Ordering::Relaxed);
    }

    /// Reports delivery failures to the raft thread behind `raft`.
    pub(crate) fn set_raft(&self, raft: std_mpsc::Sender<Input>) {
        *self.raft.lock() = Some(raft);
    }

    /// Starts sending to member `id` at `peer_url` (no-op if known or self).
    pub fn add_peer(&self, id: u64, peer_url: &str) {
        if id == self.me.member_id {
            return;
        }
        let mut peers = self.peers.lock();
        if peers.contains_key(&id) {
            return;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        peers.insert(id, tx);
        let sender = Sender {
            to: id,
            url: peer_url.to_owned(),
            me: info_of(&self.me),
            cluster_id: self.cluster_id.clone(),
        };
        self.runtime.spawn(send_loop(sender, rx, self.raft.clone()));
    }

    /// Queues `msgs` to their targets without blocking.
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let peers = self.peers.lock();
        for m in msgs {
            let Some(tx) = peers.get(&m.to) else {
                debug!(to = m.to, "PD raft message to an unknown member dropped");
                continue;
            };
            let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let bytes = m.write_to_bytes().expect("a raft message encodes");
            if tx.try_send((bytes, snapshot)).is_err() {
                debug!(to = m.to, "PD peer queue full or closed: message dropped");
                if snapshot {
                    report(&self.raft, Input::SnapshotStatus(m.to, SnapshotStatus::Failure));
                }
            }
        }
    }
}

/// How long a connection to a peer may take, and how often an open one is
/// pinged: a peer cut off by a network that drops packets (no reset) is
/// given up on within [`KEEPALIVE_INTERVAL`] + [`KEEPALIVE_TIMEOUT`] instead
/// of when TCP's retransmissions give up, and the next dial after a heal
/// succeeds at once instead of waiting out SYN retries.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens a channel to a peer URL with a connect timeout and keep-alive pings.
async fn dial(url: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
}

/// Who a send loop sends to, and as whom.
struct Sender {
    to: u64,
    url: String,
    me: MemberInfo,
    cluster_id: Arc<AtomicU64>,
}

async fn send_loop(
    sender: Sender,
    mut rx: mpsc::Receiver<Queued>,
    raft: Arc<Mutex<Option<std_mpsc::Sender<Input>>>>,
) {
    let Sender { to, url, me, cluster_id } = sender;
    let mut backoff = Duration::from_millis(50);
    // Drops what queued up while the peer was away (raft sends current state
    // again), reporting lost snapshots.
    let drain = |rx: &mut mpsc::Receiver<Queued>| {
        while let Ok((_, snapshot)) = rx.try_recv() {
            if snapshot {
                report(&raft, Input::SnapshotStatus(to, SnapshotStatus::Failure));
            }
        }
    };
    loop {
        let client = match dial(&url).await {
            Ok(c) => PdRaftClient::new(c)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            Err(e) => {
                debug!(to, %url, error = %e, "PD peer unreachable");
                report(&raft, Input::Unreachable(to));
                drain(&mut rx);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                if rx.is_closed() {
                    return;
                }
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let (batch_tx, batch_rx) = mpsc::channel::<RaftBatch>(64);
        let mut client = client;
        let call = tokio::spawn(async move { client.raft(ReceiverStream::new(batch_rx)).await });
        loop {
            let Some(first) = rx.recv().await else {
                call.abort();
                return;
            };
            let mut messages = vec![first];
            while let Ok(m) = rx.try_recv() {
                messages.push(m);
                if messages.len() >= 256 {
                    break;
                }
            }
            let snapshots = messages.iter().filter(|(_, s)| *s).count();
            let batch = RaftBatch {
                from: Some(me.clone()),
                messages: messages.into_iter().map(|(b, _)| b).collect(),
                cluster_id: cluster_id.load(Ordering::Relaxed),
            };
            let sent = batch_tx.send(batch).await.is_ok();
            // Handed to the stream: raft probes the follower again and
            // sends another snapshot if this one never arrives.
            let status = if sent { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
            for _ in 0..snapshots {
                report(&raft, Input::SnapshotStatus(to, status));
            }
            if !sent {
                break;
            }
        }
        match call.await {
            Ok(Err(e)) => debug!(to, error = %e, "PD peer stream ended"),
            Err(e) => debug!(to, error = %e, "PD peer stream task failed"),
            Ok(Ok(_)) => {}
        }
        report(&raft, Input::Unreachable(to));
    }
}

/// The receiving side, served on the peer URL.
struct PeerService {
    raft: std_mpsc::Sender<Input>,
}

#[tonic::async_trait]
impl PdRaft for PeerService {
    async fn raft(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<Done>, Status> {
        let mut stream = req.into_inner();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let from = batch.from.as_ref().map(member_of).unwrap_or_default();
            let mut msgs = Vec::with_capacity(batch.messages.len());
            for b in &batch.messages {
                match Message::parse_from_bytes(b) {
                    Ok(m) => msgs.push(m),
                    Err(e) => {
                        warn!(from = %from.name, error = %e, "undecodable PD raft message");
                        return Err(Status::invalid_argument(format!("bad raft message: {e}")));
                    }
                }
            }
            if self.raft.send(Input::Raft(msgs, from, batch.cluster_id)).is_err() {
                return Err(Status::unavailable("PD raft stopped"));
            }
        }
        Ok(Response::new(Done {}))
    }
}

/// Serves the peer protocol on `listener` until `stop` resolves.
pub(crate) async fn serve_peers(
    listener: tokio::net::TcpListener,
    raft: std_mpsc::Sender<Input>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(
            PdRaftServer::new(PeerService { raft })
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, stop)
        .await
}
