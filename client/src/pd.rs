//! The placement driver client: finds the PD leader and asks it where
//! regions and stores are.
//!
//! On connect it calls `GetMembers` on each configured endpoint until one
//! answers, which yields the cluster id and the leader's client URLs; it then
//! talks to the leader only. When a call fails (transport error, or a header
//! error such as a follower refusing to serve) it rediscovers the leader by
//! calling `GetMembers` on every known endpoint, and tries the call once
//! more. It never loops beyond that: the caller (the raw client) owns the
//! retry budget and backs off between attempts.
//!
//! Every request carries `header.cluster_id`; a member reporting a different
//! cluster id is ignored, so a client cannot drift into another cluster.

use std::future::Future;
use std::time::Duration;

use mnemo_proto::pdpb::{self, pd_client::PdClient as PdGrpc};
use mnemo_proto::types::{Peer, Region, RegionId, StoreId};
use mnemo_proto::{metapb, pdpb::RequestHeader};
use mnemo_telemetry::PropagateTrace;
use parking_lot::RwLock;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::transport::{lazy_channel, normalize_url};

mod store_api;

/// The gRPC client of a PD member: each call carries the trace context of
/// the caller's span (see `mnemo_telemetry`).
type Grpc = PdGrpc<InterceptedService<Channel, PropagateTrace>>;

/// Default per-RPC timeout of PD calls: 2 s.
pub const DEFAULT_PD_RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// A region as PD reports it, with its leader if PD knows one.
pub type RegionWithLeader = (Region, Option<Peer>);

/// Client of the PD cluster. Cheap to share behind an `Arc`; all methods take
/// `&self`.
pub struct PdClient {
    cluster_id: u64,
    rpc_timeout: Duration,
    /// Initial endpoints plus every member's client URLs seen since.
    endpoints: RwLock<Vec<String>>,
    leader: RwLock<Leader>,
    /// Serialises rediscovery so a burst of failures causes one round of
    /// `GetMembers`, not one per failed call.
    rediscovery: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct Leader {
    url: String,
    client: Grpc,
    /// Bumped on every rediscovery; lets a caller see that someone else has
    /// already replaced the leader it failed on.
    generation: u64,
}

/// Responses whose header may carry an error.
trait PdResponse {
    fn header(&self) -> Option<&pdpb::ResponseHeader>;
}

macro_rules! pd_response {
    ($($t:ty),*) => {$(
        impl PdResponse for $t {
            fn header(&self) -> Option<&pdpb::ResponseHeader> {
                self.header.as_ref()
            }
        }
    )*};
}
pd_response!(
    pdpb::GetMembersResponse,
    pdpb::GetRegionResponse,
    pdpb::GetStoreResponse,
    pdpb::ScanRegionsResponse,
    pdpb::AllocIdResponse,
    pdpb::IsBootstrappedResponse,
    pdpb::BootstrapResponse,
    pdpb::PutStoreResponse,
    pdpb::StoreHeartbeatResponse,
    pdpb::AskBatchSplitResponse,
    pdpb::ReportBatchSplitResponse
);

/// A failed attempt: `rediscover` says whether a new leader might help.
struct Attempt {
    message: String,
    rediscover: bool,
}

/// Turns a header error into an attempt failure. Only `UNKNOWN` errors
/// (what a follower answers with) are worth a rediscovery; the others
/// (`REGION_NOT_FOUND`, ...) are answers, and the leader would repeat them.
fn header_error(header: Option<&pdpb::ResponseHeader>) -> Option<Attempt> {
    let err = header?.error.as_ref()?;
    let kind = pdpb::ErrorType::try_from(err.r#type).unwrap_or(pdpb::ErrorType::Unknown);
    if kind == pdpb::ErrorType::Ok {
        return None;
    }
    Some(Attempt {
        message: format!("{}: {}", kind.as_str_name(), err.message),
        rediscover: kind == pdpb::ErrorType::Unknown,
    })
}

/// A wire leader peer with id 0 means "no leader known".
fn leader_of(p: Option<&metapb::Peer>) -> Option<Peer> {
    p.filter(|p| p.id != 0).map(Peer::from)
}

impl PdClient {
    /// Connects to the PD cluster through `endpoints` (`host:port` or a URL
    /// such as `http://127.0.0.1:2379`) with the default per-RPC timeout.
    pub async fn connect(endpoints: Vec<String>) -> Result<Self> {
        Self::connect_with_timeout(endpoints, DEFAULT_PD_RPC_TIMEOUT).await
    }

    /// Like [`PdClient::connect`], with `rpc_timeout` for every PD call
    /// (also the connect timeout).
    pub async fn connect_with_timeout(endpoints: Vec<String>, rpc_timeout: Duration) -> Result<Self> {
        let endpoints: Vec<String> = endpoints.iter().map(|e| normalize_url(e)).collect();
        if endpoints.is_empty() {
            return Err(Error::Pd("no PD endpoints given".into()));
        }
        let (cluster_id, url, client, members) = discover(&endpoints, None, rpc_timeout).await?;
        let client = PdClient {
            cluster_id,
            rpc_timeout,
            endpoints: RwLock::new(endpoints),
            leader: RwLock::new(Leader { url, client, generation: 0 }),
            rediscovery: tokio::sync::Mutex::new(()),
        };
        client.learn_endpoints(members);
        Ok(client)
    }

    /// The cluster id every member reported.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The URL of the PD member currently used as leader.
    pub fn leader_url(&self) -> String {
        self.leader.read().url.clone()
    }

    /// `count` timestamps from PD's TSO (1..=262,144); returns the last of
    /// them, `physical_ms << 18 | logical` (the caller may use the `count`
    /// values ending there). One `Tso` stream per call; a member that does
    /// not lead sends the client looking for the leader once.
    pub async fn get_ts(&self, count: u32) -> Result<u64> {
        let mut last = String::new();
        for _ in 0..2 {
            let leader = self.leader.read().clone();
            let req = pdpb::TsoRequest {
                header: Some(RequestHeader { cluster_id: self.cluster_id, sender_id: 0 }),
                count,
                dc_location: String::new(),
            };
            let mut client = leader.client.clone();
            let call = async move {
                let mut answers = client.tso(futures::stream::iter([req])).await?.into_inner();
                answers.message().await
            };
            let failure = match tokio::time::timeout(self.rpc_timeout, call).await {
                Err(_) => format!("timeout after {:?}", self.rpc_timeout),
                Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
                Ok(Ok(None)) => "TSO stream closed".to_string(),
                Ok(Ok(Some(resp))) => match header_error(resp.header.as_ref()) {
                    Some(a) => a.message,
                    None => {
                        let ts = resp.timestamp.unwrap_or_default();
                        return Ok(((ts.physical as u64) << 18) | ts.logical as u64);
                    }
                },
            };
            last = format!("pd {}: {failure}", leader.url);
            self.rediscover(leader.generation).await?;
        }
        Err(Error::Pd(last))
    }

    /// Looks for the PD leader again (a stream to the one in use failed):
    /// `GetMembers` on every known endpoint. Concurrent callers share one
    /// lookup.
    pub async fn refresh_leader(&self) -> Result<()> {
        let generation = self.leader.read().generation;
        self.rediscover(generation).await
    }

    /// The region containing `key`, and its leader if PD knows one.
    pub async fn get_region(&self, key: &[u8]) -> Result<RegionWithLeader> {
        let req = pdpb::GetRegionRequest { region_key: key.to_vec(), ..Default::default() };
        let resp = self
            .call(move |mut c, h| {
                let mut r = req.clone();
                r.header = Some(h);
                async move { c.get_region(r).await }
            })
            .await?;
        region_of(resp, || format!("no region contains key {:?}", String::from_utf8_lossy(key)))
    }

    /// The region just before the one containing `key` (whose end key is that
    /// region's start key), and its leader. Fails if `key` is in the first region.
    pub async fn get_prev_region(&self, key: &[u8]) -> Result<RegionWithLeader> {
        let req = pdpb::GetRegionRequest { region_key: key.to_vec(), ..Default::default() };
        let resp = self
            .call(move |mut c, h| {
                let mut r = req.clone();
                r.header = Some(h);
                async move { c.get_prev_region(r).await }
            })
            .await?;
        region_of(resp, || format!("no region before key {:?}", String::from_utf8_lossy(key)))
    }

    /// The region with id `id`, and its leader.
    pub async fn get_region_by_id(&self, id: RegionId) -> Result<RegionWithLeader> {
        let req = pdpb::GetRegionByIdRequest { region_id: id.0, ..Default::default() };
        let resp = self
            .call(move |mut c, h| {
                let mut r = req;
                r.header = Some(h);
                async move { c.get_region_by_id(r).await }
            })
            .await?;
        region_of(resp, || format!("region {id} not found"))
    }

    /// The gRPC address (`host:port`) of store `id`. Fails for a tombstone store.
    pub async fn get_store(&self, id: StoreId) -> Result<String> {
        let req = pdpb::GetStoreRequest { store_id: id.0, ..Default::default() };
        let resp = self
            .call(move |mut c, h| {
                let mut r = req;
                r.header = Some(h);
                async move { c.get_store(r).await }
            })
            .await?;
        let store = resp.store.ok_or_else(|| Error::Pd(format!("store {id} not found")))?;
        if store.state == metapb::StoreState::Tombstone as i32 {
            return Err(Error::Pd(format!("store {id} is a tombstone")));
        }
        if store.address.is_empty() {
            return Err(Error::Pd(format!("store {id} has no address")));
        }
        Ok(store.address)
    }

    /// Up to `limit` regions (0: PD's default) overlapping `[start, end)`
    /// (empty `end`: +infinity), in key order, with their leaders.
    pub async fn scan_regions(&self, start: &[u8], end: &[u8], limit: i32) -> Result<Vec<RegionWithLeader>> {
        let req = pdpb::ScanRegionsRequest {
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            limit,
            ..Default::default()
        };
        let resp = self
            .call(move |mut c, h| {
                let mut r = req.clone();
                r.header = Some(h);
                async move { c.scan_regions(r).await }
            })
            .await?;
        // Newer PDs fill `regions`; older ones the parallel `region_metas`/`leaders`.
        if !resp.regions.is_empty() {
            return Ok(resp
                .regions
                .iter()
                .filter_map(|r| Some((Region::from(r.region.as_ref()?), leader_of(r.leader.as_ref()))))
                .collect());
        }
        Ok(resp
            .region_metas
            .iter()
            .enumerate()
            .map(|(i, r)| (Region::from(r), leader_of(resp.leaders.get(i))))
            .collect())
    }

    /// Runs `f` against the leader; on failure rediscovers the leader and
    /// runs it once more.
    async fn call<R, F, Fut>(&self, f: F) -> Result<R>
    where
        R: PdResponse,
        F: Fn(Grpc, RequestHeader) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<R>, tonic::Status>>,
    {
        self.call_inner(f, false).await
    }

    /// Like [`PdClient::call`], but a header error that is PD's answer (not a
    /// reason to look for another leader) comes back inside the response.
    async fn call_raw<R, F, Fut>(&self, f: F) -> Result<R>
    where
        R: PdResponse,
        F: Fn(Grpc, RequestHeader) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<R>, tonic::Status>>,
    {
        self.call_inner(f, true).await
    }

    /// The gRPC client of the current leader.
    fn leader_client(&self) -> Grpc {
        self.leader.read().client.clone()
    }

    async fn call_inner<R, F, Fut>(&self, f: F, keep_answers: bool) -> Result<R>
    where
        R: PdResponse,
        F: Fn(Grpc, RequestHeader) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<R>, tonic::Status>>,
    {
        let mut last = String::new();
        for round in 0..2 {
            let leader = self.leader.read().clone();
            let header = RequestHeader { cluster_id: self.cluster_id, sender_id: 0 };
            let failure = match tokio::time::timeout(self.rpc_timeout, f(leader.client, header)).await {
                Err(_) => {
                    Attempt { message: format!("timeout after {:?}", self.rpc_timeout), rediscover: true }
                }
                Ok(Err(status)) => Attempt {
                    message: format!("{:?}: {}", status.code(), status.message()),
                    rediscover: true,
                },
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    match header_error(resp.header()) {
                        None => return Ok(resp),
                        Some(a) if keep_answers && !a.rediscover => return Ok(resp),
                        Some(a) => a,
                    }
                }
            };
            last = format!("pd {}: {}", leader.url, failure.message);
            if !failure.rediscover {
                break;
            }
            if round == 0 {
                if let Err(e) = self.rediscover(leader.generation).await {
                    last = format!("{last}; rediscovery failed: {e}");
                    break;
                }
            }
        }
        Err(Error::Pd(last))
    }

    /// Finds the leader again unless someone already did since `seen_generation`.
    async fn rediscover(&self, seen_generation: u64) -> Result<()> {
        let _guard = self.rediscovery.lock().await;
        if self.leader.read().generation != seen_generation {
            return Ok(());
        }
        let endpoints = self.endpoints.read().clone();
        let (_, url, client, members) = discover(&endpoints, Some(self.cluster_id), self.rpc_timeout).await?;
        tracing::info!(leader = %url, "PD leader rediscovered");
        {
            let mut leader = self.leader.write();
            *leader = Leader { url, client, generation: seen_generation + 1 };
        }
        self.learn_endpoints(members);
        Ok(())
    }

    fn learn_endpoints(&self, urls: Vec<String>) {
        let mut endpoints = self.endpoints.write();
        for url in urls {
            let url = normalize_url(&url);
            if !endpoints.contains(&url) {
                endpoints.push(url);
            }
        }
    }
}

/// Reads a `GetRegionResponse`; a missing region is an error.
fn region_of(resp: pdpb::GetRegionResponse, missing: impl FnOnce() -> String) -> Result<RegionWithLeader> {
    let region = resp.region.as_ref().filter(|r| r.id != 0).ok_or_else(|| Error::Pd(missing()))?;
    Ok((Region::from(region), leader_of(resp.leader.as_ref())))
}

/// Asks each endpoint for the members until one names a reachable leader.
/// Returns the cluster id, the leader's URL and client, and every member's
/// client URLs.
async fn discover(
    endpoints: &[String],
    want_cluster: Option<u64>,
    rpc_timeout: Duration,
) -> Result<(u64, String, Grpc, Vec<String>)> {
    let mut errors = Vec::new();
    for ep in endpoints {
        let members = match get_members(ep, want_cluster, rpc_timeout).await {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("{ep}: {e}"));
                continue;
            }
        };
        let cluster_id = members.header.as_ref().map(|h| h.cluster_id).unwrap_or(0);
        let member_urls: Vec<String> = members.members.iter().flat_map(|m| m.client_urls.clone()).collect();
        let Some(leader) = members.leader.filter(|l| !l.client_urls.is_empty()) else {
            errors.push(format!("{ep}: no leader"));
            continue;
        };
        // Confirm the leader answers at one of its URLs before switching to it.
        for url in &leader.client_urls {
            let url = normalize_url(url);
            match get_members(&url, Some(cluster_id), rpc_timeout).await {
                Ok(_) => {
                    let channel = lazy_channel(&url, rpc_timeout).map_err(Error::Pd)?;
                    let client = PdGrpc::with_interceptor(channel, PropagateTrace);
                    return Ok((cluster_id, url, client, member_urls));
                }
                Err(e) => errors.push(format!("leader {url}: {e}")),
            }
        }
    }
    Err(Error::Pd(format!("no PD leader reachable ({})", errors.join("; "))))
}

/// One `GetMembers` call to `url`, checking the header and the cluster id.
async fn get_members(
    url: &str,
    want_cluster: Option<u64>,
    rpc_timeout: Duration,
) -> std::result::Result<pdpb::GetMembersResponse, String> {
    let mut client = PdGrpc::new(lazy_channel(url, rpc_timeout)?);
    let req = pdpb::GetMembersRequest {
        header: Some(RequestHeader { cluster_id: want_cluster.unwrap_or(0), sender_id: 0 }),
    };
    let resp = match tokio::time::timeout(rpc_timeout, client.get_members(req)).await {
        Err(_) => return Err(format!("timeout after {rpc_timeout:?}")),
        Ok(Err(status)) => return Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(Ok(resp)) => resp.into_inner(),
    };
    if let Some(a) = header_error(resp.header()) {
        return Err(a.message);
    }
    let got = resp.header.as_ref().map(|h| h.cluster_id).unwrap_or(0);
    match want_cluster {
        Some(want) if want != got => Err(format!("member of cluster {got}, want {want}")),
        _ => Ok(resp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: pdpb::ErrorType) -> pdpb::ResponseHeader {
        pdpb::ResponseHeader {
            cluster_id: 1,
            error: Some(pdpb::Error { r#type: kind as i32, message: "m".into() }),
        }
    }

    #[test]
    fn header_errors_are_classified() {
        assert!(header_error(None).is_none());
        assert!(header_error(Some(&pdpb::ResponseHeader { cluster_id: 1, error: None })).is_none());
        assert!(header_error(Some(&header(pdpb::ErrorType::Ok))).is_none());
        let follower = header_error(Some(&header(pdpb::ErrorType::Unknown))).unwrap();
        assert!(follower.rediscover);
        let missing = header_error(Some(&header(pdpb::ErrorType::RegionNotFound))).unwrap();
        assert!(!missing.rediscover);
        assert!(missing.message.contains("REGION_NOT_FOUND"));
    }

    #[test]
    fn missing_region_is_an_error() {
        let resp = pdpb::GetRegionResponse::default();
        assert!(matches!(region_of(resp, || "none".into()), Err(Error::Pd(_))));
        let resp = pdpb::GetRegionResponse {
            region: Some(metapb::Region { id: 3, ..Default::default() }),
            leader: Some(metapb::Peer::default()),
            ..Default::default()
        };
        let (region, leader) = region_of(resp, || "none".into()).unwrap();
        assert_eq!(region.id, RegionId(3));
        assert_eq!(leader, None);
    }
}
