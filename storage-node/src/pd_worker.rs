//! The node's conversation with PD: region heartbeats up, operators down,
//! store heartbeats on a timer.
//!
//! One long-lived `RegionHeartbeat` stream carries every leader's report; PD
//! answers on the same stream with at most one operator step per region,
//! which goes to the store loop as a `StoreMsg::Operator`. When the stream
//! breaks (PD restart, or the PD leader moved: then the worker looks for
//! the new leader), the worker reconnects with a backoff and asks every
//! leader to report at once (a fresh stream forgets nothing PD needs:
//! heartbeats carry full region state).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mnemo_client::pd::PdClient;
use mnemo_proto::pdpb::{self, RegionHeartbeatRequest, RegionHeartbeatResponse};
use mnemo_proto::raft_serverpb::{BatchSplit, SplitRequest};
use mnemo_proto::types::{epoch_of, Peer as PeerMeta, Region, RegionId, StoreId};
use tokio::sync::mpsc;

use crate::engine::EngineRef;
use crate::flow::{Flow, FlowStats};
use crate::metrics::Metrics;
use crate::raftstore::store::conf_change_kind;
use crate::raftstore::{Operator, PdTask, RegionReport, StoreMsg, StoreRouter};

/// Everything the worker needs.
pub struct PdWorker {
    pub pd: Arc<PdClient>,
    pub store_id: StoreId,
    pub store_tx: StoreRouter,
    pub kv: EngineRef,
    pub raft: EngineRef,
    pub data_dir: std::path::PathBuf,
    /// `raftstore.capacity` (0: the file system's size).
    pub capacity: u64,
    pub metrics: Arc<Metrics>,
    /// Read and write flow served, reported with each heartbeat.
    pub flow: Arc<FlowStats>,
    pub store_heartbeat_interval: Duration,
    pub start_time: u32,
}

impl PdWorker {
    /// Runs until `tasks` closes.
    pub async fn run(self, mut tasks: mpsc::UnboundedReceiver<PdTask>) {
        let mut store_tick = tokio::time::interval(self.store_heartbeat_interval);
        let mut reconnect_tick = tokio::time::interval(RECONNECT_INTERVAL);
        reconnect_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stream: Option<HeartbeatStream> = None;
        let mut refused = self.metrics.store_loop_full.get();
        loop {
            tokio::select! {
                task = tasks.recv() => {
                    let report = match task {
                        None => return,
                        Some(PdTask::RegionHeartbeat(report)) => report,
                        Some(PdTask::AskSplit { region, split_keys }) => {
                            self.ask_split(region, split_keys).await;
                            continue;
                        }
                        Some(PdTask::ReportSplit { regions }) => {
                            let regions = regions.iter().map(Into::into).collect();
                            if let Err(e) = self.pd.report_batch_split(regions).await {
                                tracing::warn!("ReportBatchSplit failed: {e}");
                            }
                            continue;
                        }
                    };
                    // A report without a working stream is dropped: the
                    // stream is (re)opened on the store tick only, at most
                    // once per tick however many regions report, and every
                    // leader reports again once it is open.
                    let Some(s) = stream.as_ref().filter(|s| !s.is_broken()) else { continue };
                    if let Err(mpsc::error::TrySendError::Closed(_)) = s.requests.try_send(self.heartbeat_request(report)) {
                        stream = None;
                    }
                }
                _ = store_tick.tick() => self.store_heartbeat(&mut refused).await,
                // The region heartbeat stream is opened here, and again when
                // lost (PD down, or its leader moved), at most once per
                // interval: opening it has every leader report at once.
                _ = reconnect_tick.tick() => {
                    if stream.as_ref().is_none_or(HeartbeatStream::is_broken) {
                        stream = self.open_stream().await;
                    }
                }
            }
        }
    }

    fn heartbeat_request(&self, r: RegionReport) -> RegionHeartbeatRequest {
        let flow = self.flow.take_region(r.region.id);
        RegionHeartbeatRequest {
            header: Some(pdpb::RequestHeader {
                cluster_id: self.pd.cluster_id(),
                sender_id: self.store_id.0,
            }),
            region: Some((&r.region).into()),
            leader: Some(r.leader.into()),
            pending_peers: r.pending_peers.into_iter().map(Into::into).collect(),
            down_peers: r
                .down_peers
                .into_iter()
                .map(|(peer, down_seconds)| pdpb::PeerStats { peer: Some(peer.into()), down_seconds })
                .collect(),
            term: r.term,
            approximate_size: r.approximate_size,
            approximate_keys: r.approximate_keys,
            bytes_written: flow.written_bytes,
            keys_written: flow.written_keys,
            bytes_read: flow.read_bytes,
            keys_read: flow.read_keys,
            interval: Some(interval(&flow)),
        }
    }

    /// Asks PD for ids and hands the split to the store loop to propose.
    async fn ask_split(&self, region: Region, split_keys: Vec<Vec<u8>>) {
        let ids = match self.pd.ask_batch_split((&region).into(), split_keys.len() as u32).await {
            Ok(ids) if ids.len() == split_keys.len() => ids,
            Ok(ids) => {
                tracing::warn!(region = %region.id, "PD gave {} split ids for {} keys", ids.len(), split_keys.len());
                return;
            }
            Err(e) => {
                tracing::warn!(region = %region.id, "AskBatchSplit failed: {e}");
                return;
            }
        };
        let requests = split_keys
            .into_iter()
            .zip(ids)
            .map(|(split_key, id)| SplitRequest {
                split_key,
                new_region_id: id.new_region_id,
                new_peer_ids: id.new_peer_ids,
            })
            .collect();
        let split = BatchSplit { requests };
        let _ =
            self.store_tx.send(StoreMsg::ProposeSplit { region_id: region.id, epoch: region.epoch, split });
    }

    async fn open_stream(&self) -> Option<HeartbeatStream> {
        let (tx, rx) = mpsc::channel(1024);
        let opened = tokio::time::timeout(OPEN_TIMEOUT, self.pd.region_heartbeat(rx)).await;
        let opened = opened.unwrap_or_else(|_| Err(mnemo_client::Error::Pd("opening timed out".into())));
        match opened {
            Ok(mut responses) => {
                let ended = Arc::new(AtomicBool::new(false));
                let ended_by_task = ended.clone();
                // A fresh stream may lead to a new PD leader: report every
                // region now rather than at the next heartbeat tick.
                tracing::info!(pd = %self.pd.leader_url(), "region heartbeat stream opened");
                let _ = self.store_tx.send(StoreMsg::HeartbeatPd);
                let store_tx = self.store_tx.clone();
                let pd = self.pd.clone();
                tokio::spawn(async move {
                    while let Some(resp) = responses.next().await {
                        match resp {
                            Ok(resp) => forward_operator(&store_tx, resp),
                            Err(status) => {
                                // A PD member that stopped leading ends the
                                // stream ("not leader"): find the new leader,
                                // which the next stream goes to.
                                tracing::warn!("region heartbeat stream failed: {status}");
                                ended_by_task.store(true, Ordering::Relaxed);
                                if let Err(e) = pd.refresh_leader().await {
                                    tracing::warn!("PD leader lookup failed: {e}");
                                }
                                break;
                            }
                        }
                    }
                    ended_by_task.store(true, Ordering::Relaxed);
                });
                Some(HeartbeatStream { requests: tx, ended })
            }
            Err(e) => {
                // Tried again at the next store tick.
                tracing::warn!("cannot open region heartbeat stream: {e}");
                if let Err(e) = self.pd.refresh_leader().await {
                    tracing::warn!("PD leader lookup failed: {e}");
                }
                None
            }
        }
    }

    /// Sends the store heartbeat; `refused_before` is the busy count the
    /// last one saw.
    async fn store_heartbeat(&self, refused_before: &mut u64) {
        // What this store holds on disk: data and raft logs alike.
        let used_size = self.kv.used_bytes() + self.raft.used_bytes();
        let (capacity, available) = store_space(disk_space(&self.data_dir), used_size, self.capacity);
        for (ty, v) in [("capacity", capacity), ("available", available), ("used", used_size)] {
            let v = i64::try_from(v).unwrap_or(i64::MAX);
            crate::metrics::RAFTSTORE.store_size.with_label_values(&[ty]).set(v);
        }
        // Busy: requests were refused for a full store loop since the last
        // heartbeat (PD then balances no new replicas here; repairs still
        // come). Write flow control is not the store being overloaded.
        let refused = self.metrics.store_loop_full.get();
        let flow = self.flow.take_store();
        let is_busy = refused > std::mem::replace(refused_before, refused);
        let stats = pdpb::StoreStats {
            store_id: self.store_id.0,
            capacity,
            available,
            region_count: self.metrics.region_count.get() as u32,
            used_size,
            start_time: self.start_time,
            sending_snap_count: self.metrics.snapshots_sending.get() as u32,
            receiving_snap_count: self.metrics.snapshots_receiving.get() as u32,
            is_busy,
            bytes_written: flow.written_bytes,
            keys_written: flow.written_keys,
            bytes_read: flow.read_bytes,
            keys_read: flow.read_keys,
            interval: Some(interval(&flow)),
            ..Default::default()
        };
        if let Err(e) = self.pd.store_heartbeat(stats).await {
            tracing::warn!("store heartbeat failed: {e}");
        }
    }
}

fn interval(flow: &Flow) -> pdpb::TimeInterval {
    pdpb::TimeInterval { start_timestamp: flow.start, end_timestamp: flow.end }
}

/// How often a lost region heartbeat stream is opened again (TiKV waits
/// about a second between PD reconnects).
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// How long opening the region heartbeat stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);

/// The region heartbeat stream the worker writes to.
struct HeartbeatStream {
    requests: mpsc::Sender<RegionHeartbeatRequest>,
    /// Set when PD's side of the stream ended (PD gone, or not the leader):
    /// the request side may look open for a while after.
    ended: Arc<AtomicBool>,
}

impl HeartbeatStream {
    fn is_broken(&self) -> bool {
        self.ended.load(Ordering::Relaxed) || self.requests.is_closed()
    }
}

fn forward_operator(store_tx: &StoreRouter, resp: RegionHeartbeatResponse) {
    let region_id = RegionId(resp.region_id);
    let epoch = epoch_of(resp.region_epoch.as_ref());
    let change =
        |cp: &pdpb::ChangePeer| Some((conf_change_kind(cp.change_type)?, PeerMeta::from(cp.peer.as_ref()?)));
    let op = if let Some(v2) = resp.change_peer_v2.as_ref().filter(|v| !v.changes.is_empty()) {
        let Some(changes) = v2.changes.iter().map(change).collect::<Option<Vec<_>>>() else { return };
        Operator::ChangePeers { changes }
    } else if let Some(cp) = resp.change_peer.as_ref() {
        let Some(c) = change(cp) else { return };
        Operator::ChangePeers { changes: vec![c] }
    } else if let Some(sr) = resp.split_region.as_ref() {
        Operator::Split { keys: sr.keys.clone() }
    } else if let Some(tl) = resp.transfer_leader.as_ref() {
        let Some(peer) = tl.peer.as_ref() else { return };
        Operator::TransferLeader { peer: PeerMeta::from(peer) }
    } else {
        return;
    };
    let _ = store_tx.send(StoreMsg::Operator { region_id, epoch, op });
}

/// The (capacity, available) bytes reported to PD: the file system's, or
/// with a configured `limit`, at most the limit and at most `limit − used`
/// available (TiKV's rule).
fn store_space((disk_capacity, disk_available): (u64, u64), used: u64, limit: u64) -> (u64, u64) {
    if limit == 0 || (disk_capacity > 0 && disk_capacity < limit) {
        return (disk_capacity, disk_available);
    }
    (limit, disk_available.min(limit.saturating_sub(used)))
}

/// (capacity, available) bytes of the file system holding `dir`.
fn disk_space(dir: &std::path::Path) -> (u64, u64) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else { return (0, 0) };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return (0, 0);
    }
    let frsize = st.f_frsize as u64;
    (st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize)
}

#[cfg(test)]
mod tests {
    use super::store_space;

    #[test]
    fn a_capacity_limit_caps_what_pd_is_told() {
        const G: u64 = 1 << 30;
        // No limit: the file system as it is (80% of a shared disk used by others).
        assert_eq!(store_space((250 * G, 50 * G), G, 0), (250 * G, 50 * G));
        // A 10 GiB store holding 1 GiB: 9 GiB available, whatever the disk says.
        assert_eq!(store_space((250 * G, 50 * G), G, 10 * G), (10 * G, 9 * G));
        // ... but never more than the disk really has free.
        assert_eq!(store_space((250 * G, 4 * G), G, 10 * G), (10 * G, 4 * G));
        // A limit above the disk's size changes nothing.
        assert_eq!(store_space((8 * G, 2 * G), G, 10 * G), (8 * G, 2 * G));
    }
}
