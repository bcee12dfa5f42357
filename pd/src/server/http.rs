//! The HTTP JSON API under `/pd/api/v1` (shapes in `json.rs`).
//!
//! | method, path                          | answer                                   |
//! |---------------------------------------|------------------------------------------|
//! | GET `/stores`                         | `{"count","stores":[{"store","status"}]}`, tombstones omitted |
//! | GET `/store/{id}`                     | one `{"store","status"}`                 |
//! | DELETE `/store/{id}`                  | set the store Offline (drain it)         |
//! | POST `/store/{id}/state?state=Up`     | set Up / Offline / Tombstone             |
//! | GET `/regions`                        | `{"count","regions":[...]}` by key       |
//! | GET `/region/id/{id}`                 | one region                               |
//! | GET `/region/key/{key}[?format=hex]`  | the region containing the key            |
//! | GET `/health`                         | `[{"name","member_id","client_urls","health"}]`, each member pinged |
//! | GET `/members`                        | `{"header","members","leader","etcd_leader"}` |
//! | GET `/cluster`                        | `{"id","max_peer_count"}`                |
//! | GET `/metrics` (no prefix)            | Prometheus text (`crate::metrics`)       |
//!
//! Config, operators, splits and schedulers are in `admin_api.rs`.
//!
//! Errors are a JSON string with a 4xx/5xx status, as PD answers. Before
//! bootstrap, lists are empty.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use mnemo_proto::types::{RegionId, StoreId};
use serde::Deserialize;

use super::json;
use crate::cluster::Cluster;
use crate::error::Error;
use crate::store::StoreState;

type Shared = State<Arc<Cluster>>;
pub(super) type ApiResult<T> = Result<Json<T>, ApiError>;

/// An error answer: status plus a JSON string.
pub(super) struct ApiError(pub(super) StatusCode, pub(super) String);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match e {
            Error::StoreNotFound(_)
            | Error::RegionNotFound(_)
            | Error::SchedulerNotFound(_)
            | Error::MemberNotFound(_) => StatusCode::NOT_FOUND,
            Error::SchedulerExists(_) => StatusCode::CONFLICT,
            Error::InvalidArgument(_) | Error::StoreTombstone(_) | Error::Config(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::NotBootstrapped => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

pub(super) fn routes(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route("/pd/api/v1/stores", get(stores))
        .route("/pd/api/v1/store/:id", get(store).delete(delete_store))
        .route("/pd/api/v1/store/:id/state", post(set_store_state))
        .route("/pd/api/v1/regions", get(regions))
        .route("/pd/api/v1/region/id/:id", get(region_by_id))
        .route("/pd/api/v1/region/key/:key", get(region_by_key))
        .route("/pd/api/v1/health", get(health))
        .route("/pd/api/v1/members", get(members).post(add_member))
        .route("/pd/api/v1/members/name/:name", delete(remove_member))
        .route("/pd/api/v1/leader", get(leader))
        .route("/pd/api/v1/leader/resign", post(resign_leader))
        .route("/pd/api/v1/leader/transfer/:name", post(transfer_leader))
        .route("/pd/api/v1/ping", get(ping))
        .route("/metrics", get(metrics))
        .route("/pd/api/v1/raft", get(raft_status))
        .route("/pd/api/v1/cluster", get(cluster_info))
        .with_state(cluster)
}

/// Unknown paths: gRPC `UNIMPLEMENTED` for gRPC requests, 404 otherwise.
pub(super) async fn fallback(req: Request) -> Response {
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if is_grpc {
        let mut resp = StatusCode::OK.into_response();
        let headers = resp.headers_mut();
        headers.insert("grpc-status", HeaderValue::from_static("12"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        resp
    } else {
        ApiError(StatusCode::NOT_FOUND, format!("no such endpoint: {}", req.uri().path())).into_response()
    }
}

async fn stores(State(c): Shared) -> Json<json::Stores> {
    Json(c.read(|view| {
        let stores: Vec<_> = view
            .state
            .stores()
            .values()
            .filter(|s| s.meta.state != StoreState::Tombstone)
            .map(|s| json::store(s, &view))
            .collect();
        json::Stores { count: stores.len(), stores }
    }))
}

async fn store(State(c): Shared, Path(id): Path<u64>) -> ApiResult<json::Store> {
    c.read(|view| match view.state.store(StoreId(id)) {
        Some(s) => Ok(Json(json::store(s, &view))),
        None => Err(Error::StoreNotFound(StoreId(id)).into()),
    })
}

async fn delete_store(State(c): Shared, Path(id): Path<u64>) -> ApiResult<String> {
    c.set_store_state(StoreId(id), StoreState::Offline)?;
    Ok(Json(format!("store {id} is now Offline; its regions will move away")))
}

#[derive(Deserialize)]
struct StateQuery {
    state: String,
}

async fn set_store_state(
    State(c): Shared,
    Path(id): Path<u64>,
    Query(q): Query<StateQuery>,
) -> ApiResult<String> {
    let state = StoreState::parse(&q.state).ok_or_else(|| {
        Error::InvalidArgument(format!("unknown state {:?} (Up, Offline, Tombstone)", q.state))
    })?;
    c.set_store_state(StoreId(id), state)?;
    Ok(Json(format!("store {id} is now {}", state.name())))
}

/// Every region in key order, a page at a time.
async fn regions(State(c): Shared) -> ApiResult<json::Regions> {
    let regions = super::inspect_api::regions_where(c, |_| true, json::region).await?;
    Ok(Json(json::Regions { count: regions.len(), regions }))
}

async fn region_by_id(State(c): Shared, Path(id): Path<u64>) -> ApiResult<json::Region> {
    c.read(|view| match view.state.regions().get(RegionId(id)) {
        Some(r) => Ok(Json(json::region(r))),
        None => Err(Error::RegionNotFound(RegionId(id)).into()),
    })
}

#[derive(Deserialize)]
struct KeyQuery {
    /// `raw` (default): the path segment is the key; `hex`: it is hex.
    format: Option<String>,
}

async fn region_by_key(
    State(c): Shared,
    Path(key): Path<String>,
    Query(q): Query<KeyQuery>,
) -> ApiResult<json::Region> {
    let key = match q.format.as_deref() {
        None | Some("raw") => key.into_bytes(),
        Some("hex") => {
            hex::decode(&key).map_err(|e| Error::InvalidArgument(format!("key is not hex: {e}")))?
        }
        Some(other) => {
            return Err(Error::InvalidArgument(format!("unknown key format {other:?} (raw, hex)")).into())
        }
    };
    c.read(|view| match view.state.regions().get_by_key(&key) {
        Some(r) => Ok(Json(json::region(r))),
        None => {
            Err(ApiError(StatusCode::NOT_FOUND, format!("no region contains key {}", json::hex_key(&key))))
        }
    })
}

/// How long a member has to answer `/ping` to count as healthy (PD's 3 s).
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Every member, healthy if it answered `GET /pd/api/v1/ping` within
/// [`PING_TIMEOUT`] (this member: by answering this call). The pings go out
/// at once, so the answer takes at most one timeout.
async fn health(State(c): Shared) -> ApiResult<Vec<json::Health>> {
    let members = c.member_list().0;
    let me = c.member().member_id;
    let checked = tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new().timeout(PING_TIMEOUT).build();
        std::thread::scope(|scope| {
            let pings: Vec<_> = members
                .iter()
                .map(|m| {
                    let agent = agent.clone();
                    scope.spawn(move || {
                        m.member_id == me
                            || (!m.client_url.is_empty()
                                && agent.get(&format!("{}/pd/api/v1/ping", m.client_url)).call().is_ok())
                    })
                })
                .collect();
            members
                .iter()
                .zip(pings)
                .map(|(m, ping)| json::Health {
                    name: m.name.clone(),
                    member_id: m.member_id,
                    client_urls: [m.client_url.clone()].into_iter().filter(|u| !u.is_empty()).collect(),
                    health: ping.join().unwrap_or(false),
                })
                .collect()
        })
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(checked))
}

async fn members(State(c): Shared) -> Json<json::Members> {
    let (members, leader) = c.member_list();
    let leader = leader.as_ref().map(json::member);
    Json(json::Members {
        header: json::Header { cluster_id: c.cluster_id() },
        members: members.iter().map(json::member).collect(),
        leader: leader.clone(),
        etcd_leader: leader,
    })
}

/// Body of `POST /pd/api/v1/members` (etcd's member add, by name).
#[derive(Deserialize)]
struct AddMember {
    name: String,
    peer_urls: Vec<String>,
}

/// Adds a member; answers with every member afterwards (with member ids).
async fn add_member(State(c): Shared, Json(req): Json<AddMember>) -> ApiResult<json::Members> {
    let [url] = req.peer_urls.as_slice() else {
        return Err(Error::InvalidArgument("give exactly one peer URL".into()).into());
    };
    let (name, url) = (req.name.clone(), url.clone());
    let c2 = c.clone();
    let members = tokio::task::spawn_blocking(move || c2.add_member(&name, &url))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(json::Members {
        header: json::Header { cluster_id: c.cluster_id() },
        members: members.iter().map(json::member).collect(),
        leader: None,
        etcd_leader: None,
    }))
}

async fn remove_member(State(c): Shared, Path(name): Path<String>) -> ApiResult<String> {
    let n = name.clone();
    tokio::task::spawn_blocking(move || c.remove_member(&n))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(format!("removed, pd: {name}")))
}

/// The leader `Member`, or `null` when none is known.
async fn leader(State(c): Shared) -> Json<Option<json::MemberJson>> {
    Json(c.member_list().1.as_ref().map(json::member))
}

async fn resign_leader(State(c): Shared) -> ApiResult<&'static str> {
    c.resign_leader()?;
    Ok(Json("The resign command is submitted."))
}

async fn transfer_leader(State(c): Shared, Path(name): Path<String>) -> ApiResult<&'static str> {
    c.transfer_leader_to(&name)?;
    Ok(Json("The transfer command is submitted."))
}

/// This member's view of the PD raft group (answered by every member).
async fn raft_status(State(c): Shared) -> Json<serde_json::Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let s = c.leadership().status();
    Json(serde_json::json!({
        "name": c.member().name,
        "member_id": c.member().member_id,
        "serving": c.check_serving().is_ok(),
        "term": s.term,
        "leader_id": s.leader_id,
        "is_leader": s.is_leader,
        "voters": s.voters,
        "applied_index": s.applied_index,
        "first_index": s.first_index,
        "foreign_dropped": s.foreign_dropped,
        "region_heartbeats": c.counters().region_heartbeats.load(Relaxed),
        "region_changes": c.counters().region_changes.load(Relaxed),
    }))
}

async fn ping() -> StatusCode {
    StatusCode::OK
}

/// Prometheus text: PD's metrics (`crate::metrics`), computed off the async
/// workers (the region health gauges walk the region map).
async fn metrics(State(c): Shared) -> Result<Response, ApiError> {
    let text = tokio::task::spawn_blocking(move || crate::metrics::render(&c))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

async fn cluster_info(State(c): Shared) -> Json<json::ClusterJson> {
    Json(json::ClusterJson { id: c.cluster_id(), max_peer_count: c.config().replication.max_replicas })
}
