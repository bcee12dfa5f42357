//! `pdpb.PD` over gRPC: header checks, wire conversion, and the two streams.
//!
//! Every RPC but `GetMembers` first checks `header.cluster_id` (mismatch →
//! gRPC `FailedPrecondition`, PD's message). Other failures are answered
//! with an OK status and `header.error`, as PD does; every response carries
//! `header.cluster_id`.

// The helpers return `tonic::Status` because the generated trait does; boxing
// it here would only be undone at every call site.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use mnemo_proto::pdpb::{self, pd_server::Pd};
use mnemo_proto::types::{Region, RegionId, StoreId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::convert::{heartbeat_from_wire, region_parts};
use super::streams::{HeartbeatStreams, Registration, Reply, STREAM_BUFFER};
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::metrics::PD;
use crate::store::{StoreMeta, StoreStats};

/// The gRPC face of a [`Cluster`].
pub(super) struct PdService {
    cluster: Arc<Cluster>,
    streams: Arc<HeartbeatStreams>,
}

impl PdService {
    pub(super) fn new(cluster: Arc<Cluster>, streams: Arc<HeartbeatStreams>) -> Self {
        PdService { cluster, streams }
    }
}

/// Responses that carry a `header`.
trait WithHeader: Default {
    fn set_header(&mut self, h: pdpb::ResponseHeader);
}

macro_rules! with_header {
    ($($t:ty),* $(,)?) => {$(
        impl WithHeader for $t {
            fn set_header(&mut self, h: pdpb::ResponseHeader) {
                self.header = Some(h);
            }
        }
    )*};
}

with_header!(
    pdpb::BootstrapResponse,
    pdpb::IsBootstrappedResponse,
    pdpb::AllocIdResponse,
    pdpb::GetStoreResponse,
    pdpb::PutStoreResponse,
    pdpb::GetAllStoresResponse,
    pdpb::StoreHeartbeatResponse,
    pdpb::GetRegionResponse,
    pdpb::ScanRegionsResponse,
    pdpb::AskBatchSplitResponse,
    pdpb::ReportBatchSplitResponse,
);

fn header(cluster_id: u64, err: Option<&Error>) -> pdpb::ResponseHeader {
    pdpb::ResponseHeader { cluster_id, error: err.map(Error::to_header_error) }
}

/// Every RPC but `GetMembers`: only the serving leader answers (a follower
/// says UNAVAILABLE "not leader", as PD's do), and only for its cluster.
fn check_header(cluster: &Cluster, h: Option<&pdpb::RequestHeader>) -> std::result::Result<(), Status> {
    cluster.check_serving().map_err(|e| Status::unavailable(e.to_string()))?;
    cluster
        .check_cluster_id(h.map_or(0, |h| h.cluster_id))
        .map_err(|e| Status::failed_precondition(e.to_string()))
}

fn wire_member(m: &crate::member::Member) -> pdpb::Member {
    pdpb::Member {
        name: m.name.clone(),
        member_id: m.member_id,
        peer_urls: vec![m.peer_url.clone()],
        client_urls: [m.client_url.clone()].into_iter().filter(|u| !u.is_empty()).collect(),
        ..Default::default()
    }
}

fn required<T>(field: Option<T>, name: &str) -> Result<T> {
    field.ok_or_else(|| Error::InvalidArgument(format!("missing {name}")))
}

impl PdService {
    /// Wraps a result as a response: OK header, or the error in the header.
    fn reply<T: WithHeader>(&self, method: &str, r: Result<T>) -> std::result::Result<Response<T>, Status> {
        let id = self.cluster.cluster_id();
        let resp = match r {
            Ok(mut resp) => {
                resp.set_header(header(id, None));
                resp
            }
            Err(e) => {
                if e.is_deterministic() {
                    debug!(method, error = %e, "request refused");
                } else {
                    warn!(method, error = %e, "request failed");
                }
                let mut resp = T::default();
                resp.set_header(header(id, Some(&e)));
                resp
            }
        };
        Ok(Response::new(resp))
    }

    fn region_response(
        &self,
        r: Result<Option<crate::region_map::RegionInfo>>,
    ) -> Result<pdpb::GetRegionResponse> {
        // Not found is an OK header with no region, as PD answers: clients
        // treat it as "no region (yet)" rather than as a PD failure.
        Ok(match r? {
            None => pdpb::GetRegionResponse::default(),
            Some(info) => {
                let parts = region_parts(&info);
                pdpb::GetRegionResponse {
                    header: None,
                    region: Some(parts.region),
                    leader: parts.leader,
                    down_peers: parts.down_peers,
                    pending_peers: parts.pending_peers,
                }
            }
        })
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Pd for PdService {
    async fn get_members(
        &self,
        _req: Request<pdpb::GetMembersRequest>,
    ) -> std::result::Result<Response<pdpb::GetMembersResponse>, Status> {
        // Every member answers, leader or not: this is how clients find
        // the leader and learn the cluster id.
        let (members, leader) = self.cluster.member_list();
        let leader = leader.as_ref().map(wire_member);
        Ok(Response::new(pdpb::GetMembersResponse {
            header: Some(header(self.cluster.cluster_id(), None)),
            members: members.iter().map(wire_member).collect(),
            leader: leader.clone(),
            etcd_leader: leader,
        }))
    }

    type TsoStream = BoxStream<pdpb::TsoResponse>;

    async fn tso(
        &self,
        req: Request<Streaming<pdpb::TsoRequest>>,
    ) -> std::result::Result<Response<Self::TsoStream>, Status> {
        let cluster = self.cluster.clone();
        let out = futures::stream::unfold(
            (req.into_inner(), cluster, false),
            |(mut inbound, cluster, failed)| async move {
                if failed {
                    return None;
                }
                let req = match inbound.next().await {
                    Some(Ok(req)) => req,
                    None | Some(Err(_)) => return None,
                };
                let reply = tso_reply(&cluster, &req);
                let failed = reply.is_err();
                Some((reply, (inbound, cluster, failed)))
            },
        );
        Ok(Response::new(Box::pin(out)))
    }

    async fn bootstrap(
        &self,
        req: Request<pdpb::BootstrapRequest>,
    ) -> std::result::Result<Response<pdpb::BootstrapResponse>, Status> {
        let req = req.into_inner();
        check_header(&self.cluster, req.header.as_ref())?;
        let r = (|| {
            let store = StoreMeta::from(&required(req.store, "store")?);
            let region = Region::from(&required(req.region, "region")?);
            self.cluster.bootstrap(store, region)
        })();
        self.reply("Bootstrap", r.map(|()| pdpb::BootstrapResponse::default()))
    }

    async fn is_bootstrapped(
        &self,
        req: Request<pdpb::IsBootstrappedRequest>,
    ) -> std::result::Result<Response<pdpb::IsBootstrappedResponse>, Status> {
        check_header(&self.cluster, req.get_ref().header.as_ref())?;
        let bootstrapped = self.cluster.is_bootstrapped();
        self.reply("IsBootstrapped", Ok(pdpb::IsBootstrappedResponse { header: None, bootstrapped }))
    }

    async fn alloc_id(
        &self,
        req: Request<pdpb::AllocIdRequest>,
    ) -> std::result::Result<Response<pdpb::AllocIdResponse>, Status> {
        check_header(&self.cluster, req.get_ref().header.as_ref())?;
        let r = self.cluster.alloc_id().map(|id| pdpb::AllocIdResponse { header: None, id });
        self.reply("AllocID", r)
    }

    async fn get_store(
        &self,
        req: Request<pdpb::GetStoreRequest>,
    ) -> std::result::Result<Response<pdpb::GetStoreResponse>, Status> {
        // Synchronous from here on: the span is entered for the whole call.
        let span = mnemo_telemetry::server_span("GetStore", req.metadata());
        let _in_span = span.enter();
        let req = req.into_inner();
        check_header(&self.cluster, req.header.as_ref())?;
        let id = StoreId(req.store_id);
        let r = self.cluster.get_store(id).map(|info| pdpb::GetStoreResponse {
            header: None,
            store: Some(info.to_wire()),
            stats: info.stats.as_ref().map(|s| s.to_wire(id)),
        });
        self.reply("GetStore", r)
    }

    async fn put_store(
        &self,
        req: Request<pdpb::PutStoreRequest>,
    ) -> std::result::Result<Response<pdpb::PutStoreResponse>, Status> {
        let req = req.into_inner();
        check_header(&self.cluster, req.header.as_ref())?;
        let r = required(req.store, "store").and_then(|s| self.cluster.put_store(StoreMeta::from(&s)));
        self.reply("PutStore", r.map(|()| pdpb::PutStoreResponse::default()))
    }

    async fn get_all_stores(
        &self,
        req: Request<pdpb::GetAllStoresRequest>,
    ) -> std::result::Result<Response<pdpb::GetAllStoresResponse>, Status> {
        let req = req.into_inner();
        check_header(&self.cluster, req.header.as_ref())?;
        let r = self.cluster.all_stores(req.exclude_tombstone_stores).map(|stores| {
            pdpb::GetAllStoresResponse { header: None, stores: stores.iter().map(|s| s.to_wire()).collect() }
        });
        self.reply("GetAllStores", r)
    }

    async fn store_heartbeat(
        &self,
        req: Request<pdpb::StoreHeartbeatRequest>,
    ) -> std::result::Result<Response<pdpb::StoreHeartbeatResponse>, Status> {
        let req = req.into_inner();
        check_header(&self.cluster, req.header.as_ref())?;
        let timer = PD.handle_store_heartbeat.start_timer();
        let r = required(req.stats, "stats")
            .and_then(|s| self.cluster.store_heartbeat(StoreId(s.store_id), StoreStats::from(&s)));
        timer.observe_duration();
        self.reply("StoreHeartbeat", r.map(|()| pdpb::StoreHeartbeatResponse::default()))
    }

    type RegionHeartbeatStream = BoxStream<pdpb::RegionHeartbeatResponse>;

    async fn region_heartbeat(
        &self,
        req: Request<Streaming<pdpb::RegionHeartbeatRequest>>,
    ) -> std::result::Result<Response<Self::RegionHeartbeatStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let registration =
            Registration { streams: self.streams.clone(), id: self.streams.new_stream_id(), store: None };
        let state =
            HeartbeatLoop { inbound: req.into_inner(), cluster: self.cluster.clone(), tx, registration };
        // Requests are processed while the response stream is polled: no task
        // is spawned, and dropping the connection drops everything. Steps are
        // routed through the registry (usually back to this same stream).
        let processing = futures::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            let failure = state.run().await?;
            Some((Err(failure), None))
        });
        Ok(Response::new(Box::pin(futures::stream::select(processing, ReceiverStream::new(rx)))))
    }

    async fn get_region(
        &self,
        req: Request<pdpb::GetRegionRequest>,
    ) -> std::result::Result<Response<pdpb::GetRegionResponse>, Status> {
        // Synchronous from here on: the span is entered for the whole call.
        let span = mnemo_telemetry::server_span("GetRegion", req.metadata());
        let _in_span = span.enter();
        let req = req.into_inner();
        check_header(&self.cluster, req.header.as_ref())?;
        self.reply("GetRegion", self.region_response(self.cluster.get_region(&req.region_key)))
    }

    async fn get_prev_region(
        &self,
        req: Request<pdpb::GetRegionRequest>,
    ) -> std::result::Result<Response<pdpb::GetRegionResponse>, Status> {
        // Synchronous from here on: the span is entered for the whole call.
        let span = mnemo_telemetry::server_span("GetPrevRegion", req.metadata());
        let _in_span = span.enter();
        let req = req.into_inner();
        check_header(&self.cluster, req.header.as_ref())?;
        self.reply("GetPrevRegion", self.region_response(self.cluster.get_prev_region(&req.region_key)))
    }

    async fn get_region_by_id(
        &self,
        req: Request<pdpb::GetRegionByIdRequest>,
    ) -> std::result::Result<Response<pdpb::GetRegionResponse>, Status> {
        // Synchronous from here on: the span is entered for the whole call.
        let span = mnemo_telemetry::server_span("GetRegionByID", req.metadata());
        let _in_span = span.enter();
        let req = req.into_inner();
        check_header(&self.cluster, req.header.as_ref())?;
        let r = self.cluster.get_region_by_id(RegionId(req.region_id));
        self.reply("GetRegionByID", self.region_response(r))
    }

    async fn scan_regions(
        &self,
        req: Request<pdpb::ScanRegionsRequest>,
    ) -> std::result::Result<Response<pdpb::ScanRegionsResponse>, Status> {
        // Synchronous from here on: the span is entered for the whole call.
        let span = mnemo_telemetry::server_span("ScanRegions", req.metadata());
        let _in_span = span.enter();
        let req = req.into_inner();
        check_header(&self.cluster, req.header.as_ref())?;
        let limit = usize::try_from(req.limit).unwrap_or(0);
        let r = self.cluster.scan_regions(&req.start_key, &req.end_key, limit).map(|infos| {
            let mut resp = pdpb::ScanRegionsResponse::default();
            for info in &infos {
                let parts = region_parts(info);
                resp.region_metas.push(parts.region.clone());
                // Kept aligned with region_metas: an empty peer means "no leader known".
                resp.leaders.push(parts.leader.unwrap_or_default());
                resp.regions.push(pdpb::Region {
                    region: Some(parts.region),
                    leader: parts.leader,
                    down_peers: parts.down_peers,
                    pending_peers: parts.pending_peers,
                });
            }
            resp
        });
        self.reply("ScanRegions", r)
    }

    async fn ask_batch_split(
        &self,
        req: Request<pdpb::AskBatchSplitRequest>,
    ) -> std::result::Result<Response<pdpb::AskBatchSplitResponse>, Status> {
        let req = req.into_inner();
        check_header(&self.cluster, req.header.as_ref())?;
        let r = required(req.region, "region").and_then(|r| {
            let ids = self.cluster.ask_batch_split(&Region::from(&r), req.split_count)?;
            Ok(pdpb::AskBatchSplitResponse {
                header: None,
                ids: ids
                    .into_iter()
                    .map(|s| pdpb::SplitId {
                        new_region_id: s.region_id.0,
                        new_peer_ids: s.peer_ids.iter().map(|p| p.0).collect(),
                    })
                    .collect(),
            })
        });
        self.reply("AskBatchSplit", r)
    }

    async fn report_batch_split(
        &self,
        req: Request<pdpb::ReportBatchSplitRequest>,
    ) -> std::result::Result<Response<pdpb::ReportBatchSplitResponse>, Status> {
        let req = req.into_inner();
        check_header(&self.cluster, req.header.as_ref())?;
        let regions: Vec<Region> = req.regions.iter().map(Region::from).collect();
        let r = self.cluster.report_batch_split(&regions);
        self.reply("ReportBatchSplit", r.map(|()| pdpb::ReportBatchSplitResponse::default()))
    }
}

fn tso_reply(cluster: &Cluster, req: &pdpb::TsoRequest) -> std::result::Result<pdpb::TsoResponse, Status> {
    check_header(cluster, req.header.as_ref())?;
    let _timer = PD.tso_duration.start_timer();
    match cluster.tso(req.count) {
        Ok(ts) => Ok(pdpb::TsoResponse {
            header: Some(header(cluster.cluster_id(), None)),
            count: req.count,
            timestamp: Some(pdpb::Timestamp {
                physical: ts.physical_ms as i64,
                logical: ts.logical as i64,
                suffix_bits: 0,
            }),
        }),
        Err(e @ Error::InvalidArgument(_)) => Err(Status::invalid_argument(e.to_string())),
        Err(e) => {
            warn!(error = %e, "tso failed");
            Err(Status::unavailable(e.to_string()))
        }
    }
}

/// One region heartbeat stream's request side.
struct HeartbeatLoop {
    inbound: Streaming<pdpb::RegionHeartbeatRequest>,
    cluster: Arc<Cluster>,
    tx: mpsc::Sender<Reply>,
    registration: Registration,
}

impl HeartbeatLoop {
    /// Handles requests until the stream ends (`None`) or a request is
    /// refused for a wrong cluster id (`Some(status)`, which ends the stream).
    async fn run(&mut self) -> Option<Status> {
        while let Some(Ok(req)) = self.inbound.next().await {
            if let Err(status) = check_header(&self.cluster, req.header.as_ref()) {
                return Some(status);
            }
            let hb = heartbeat_from_wire(&req);
            if let Some(leader) = hb.runtime.leader {
                if self.registration.store != Some(leader.store_id) {
                    let reg = &mut self.registration;
                    if let Some(old) = reg.store.replace(leader.store_id) {
                        reg.streams.unregister(old, reg.id);
                    }
                    reg.streams.register(leader.store_id, reg.id, self.tx.clone());
                }
            }
            let id = self.cluster.cluster_id();
            let store = hb.runtime.leader.map_or(0, |l| l.store_id.0).to_string();
            let timer = PD.handle_region_heartbeat.start_timer();
            let handled = self.cluster.region_heartbeat(hb);
            timer.observe_duration();
            let status = if handled.is_ok() { "ok" } else { "err" };
            PD.region_heartbeat.with_label_values(&[store.as_str(), "report", status]).inc();
            match handled {
                Ok(None) => {}
                Ok(Some(order)) => self.registration.streams.push(id, &[order]),
                Err(e) => {
                    debug!(error = %e, "region heartbeat refused");
                    let resp = pdpb::RegionHeartbeatResponse {
                        header: Some(header(id, Some(&e))),
                        ..Default::default()
                    };
                    let _ = self.tx.try_send(Ok(resp));
                }
            }
        }
        None
    }
}
