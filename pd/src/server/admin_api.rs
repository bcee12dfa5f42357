//! The HTTP API that steers scheduling, under `/pd/api/v1`.
//!
//! | method, path                   | body / answer                                       |
//! |--------------------------------|-----------------------------------------------------|
//! | GET `/config`                  | the effective configuration                         |
//! | POST `/config`                 | `{"schedule.max-store-down-time":"5s"}` or `{"schedule":{...}}`; answers the new config |
//! | GET `/config/schedule`         | the `[schedule]` section                            |
//! | GET `/config/replicate`        | the `[replication]` section                         |
//! | GET `/operators[?kind=K]`      | operators in flight (of kind `leader`: any moving leadership, `region`: any moving replicas, `replica`, `split`, `admin`: the limit they count against) |
//! | POST `/operators`              | `{"name":"transfer-leader","region_id":N,"to_store_id":S}`, `add-peer` / `remove-peer` with `"store_id"`, `transfer-peer` with `"from_store_id"` and `"to_store_id"`, `transfer-region` with `"to_store_ids":[...]`, `scatter-region`, `split-region` with optional `"policy":"approximate"\|"usekey"` and `"keys":[hex]`; answers the operator |
//! | GET / DELETE `/operators/{region_id}` | one operator / cancel it                     |
//! | POST `/regions/split`          | `{"split_keys":[hex...]}` (optionally `"region_id"`): one split operator per region containing a key; answers `{"split_regions":[ids]}` at once, the splits follow |
//! | POST `/regions/scatter`        | `{"start_key":hex,"end_key":hex}` (empty end: to the end) or `{"regions_id":[ids]}`: one scatter-region operator per region, stores chosen so the regions spread evenly; answers `{"finished_percentage","regions_id":[scattered],"failed_regions":{id: why}}` at once, the moves follow |
//! | GET `/schedulers`              | names of the schedulers that run, e.g. `["balance-leader-scheduler","balance-region-scheduler"]` |
//! | POST `/schedulers`             | `{"name":"shuffle-leader-scheduler"}`: start it; 400 for an unknown name, 409 if it already runs |
//! | GET `/schedulers?status=paused` | `[{"name","resume_at"}]` of the schedulers paused now |
//! | POST `/schedulers`             | `{"name":"evict-leader-scheduler","store_id":4}`: drain the store's leaders (runs as `evict-leader-scheduler-4`) |
//! | DELETE `/schedulers/{name}`    | stop it; 404 if it does not run                     |
//! | POST `/schedulers/{name}`      | `{"delay": seconds}`: pause it that long; 0 resumes it |
//!
//! Operators created here are pushed to the region's leader at once.
//! Scheduler changes are persisted and take effect on the next patrol tick;
//! answers are PD's sentences (`"The scheduler is created."`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use mnemo_proto::types::{RegionId, StoreId};
use serde::Deserialize;
use serde_json::Value;

use super::http::{ApiError, ApiResult};
use super::json;
use super::streams::HeartbeatStreams;
use crate::cluster::{Cluster, ScheduleOrder};
use crate::error::Error;
use crate::schedule::{AdminRequest, LimitType, Scheduler, SplitPolicy};
use crate::time::format_rfc3339_ms;

struct Api {
    cluster: Arc<Cluster>,
    streams: Arc<HeartbeatStreams>,
}

impl Api {
    fn push(&self, orders: &[ScheduleOrder]) {
        self.streams.push(self.cluster.cluster_id(), orders);
    }

    /// The operator of `region` as JSON, if any.
    fn operator_json(&self, region: RegionId) -> Option<json::OperatorJson> {
        self.cluster.read(|view| view.operators.get(region).map(|op| json::operator(op, view.now)))
    }
}

type Shared = State<Arc<Api>>;

pub(super) fn routes(cluster: Arc<Cluster>, streams: Arc<HeartbeatStreams>) -> Router {
    Router::new()
        .route("/pd/api/v1/config", get(config).post(set_config))
        .route("/pd/api/v1/config/schedule", get(schedule_config))
        .route("/pd/api/v1/config/replicate", get(replication_config))
        .route("/pd/api/v1/operators", get(operators).post(add_operator))
        .route("/pd/api/v1/operators/:region_id", get(operator).delete(remove_operator))
        .route("/pd/api/v1/regions/split", post(split_regions))
        .route("/pd/api/v1/regions/scatter", post(scatter_regions))
        .route("/pd/api/v1/stores/limit", get(store_limits).post(set_all_store_limits))
        .route("/pd/api/v1/store/:id/limit", post(set_store_limit))
        .route("/pd/api/v1/schedulers", get(schedulers).post(add_scheduler))
        .route("/pd/api/v1/schedulers/:name", delete(remove_scheduler).post(pause_scheduler))
        .with_state(Arc::new(Api { cluster, streams }))
}

async fn config(State(api): Shared) -> Json<Value> {
    Json(serde_json::to_value(api.cluster.config()).expect("config always serializes"))
}

async fn schedule_config(State(api): Shared) -> Json<Value> {
    Json(serde_json::to_value(api.cluster.config().schedule).expect("config always serializes"))
}

async fn replication_config(State(api): Shared) -> Json<Value> {
    Json(serde_json::to_value(api.cluster.config().replication).expect("config always serializes"))
}

async fn set_config(State(api): Shared, Json(body): Json<Value>) -> ApiResult<Value> {
    let config = api.cluster.update_config(&body)?;
    Ok(Json(serde_json::to_value(config).expect("config always serializes")))
}

/// `GET /stores/limit`: store id → `{"add-peer": N, "remove-peer": N}`
/// (per minute).
async fn store_limits(State(api): Shared) -> Json<Value> {
    let limits = api.cluster.store_limits();
    Json(Value::Object(
        limits
            .into_iter()
            .map(|(id, l)| {
                (id.to_string(), serde_json::json!({ "add-peer": l.add_peer, "remove-peer": l.remove_peer }))
            })
            .collect(),
    ))
}

/// A store-limit change: `{"rate": N}`, optionally `"type": "add-peer"` or
/// `"remove-peer"` (both when absent), as pd-ctl sends it.
#[derive(Deserialize)]
struct LimitBody {
    rate: f64,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

fn limit_type(kind: Option<&str>) -> crate::error::Result<Option<LimitType>> {
    match kind {
        None | Some("") | Some("all") => Ok(None),
        Some("add-peer") => Ok(Some(LimitType::AddPeer)),
        Some("remove-peer") => Ok(Some(LimitType::RemovePeer)),
        Some(other) => {
            Err(Error::InvalidArgument(format!("store limit type {other:?}: use add-peer or remove-peer")))
        }
    }
}

async fn set_all_store_limits(State(api): Shared, Json(body): Json<LimitBody>) -> ApiResult<&'static str> {
    let ty = limit_type(body.kind.as_deref())?;
    let c = api.cluster.clone();
    blocking(move || c.set_store_limit(None, body.rate, ty)).await?;
    Ok(Json("Set store limit success."))
}

async fn set_store_limit(
    State(api): Shared,
    Path(id): Path<u64>,
    Json(body): Json<LimitBody>,
) -> ApiResult<&'static str> {
    let ty = limit_type(body.kind.as_deref())?;
    let c = api.cluster.clone();
    blocking(move || c.set_store_limit(Some(id), body.rate, ty)).await?;
    Ok(Json("Set store limit success."))
}

/// Runs a call that replicates (and so waits) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> crate::error::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::NotLeader(e.to_string()))?
}

#[derive(Deserialize)]
struct OperatorsQuery {
    /// Only operators of this kind: `leader`, `region`, `replica`,
    /// `split` or `admin`.
    kind: Option<String>,
}

async fn operators(
    State(api): Shared,
    Query(q): Query<OperatorsQuery>,
) -> ApiResult<Vec<json::OperatorJson>> {
    const KINDS: [&str; 5] = ["leader", "region", "replica", "split", "admin"];
    if let Some(k) = q.kind.as_deref().filter(|k| !KINDS.contains(k)) {
        return Err(
            Error::InvalidArgument(format!("unknown operator kind {k:?} ({})", KINDS.join(", "))).into()
        );
    }
    Ok(Json(api.cluster.read(|view| {
        view.operators
            .iter()
            .filter(|op| q.kind.as_deref().is_none_or(|k| is_of_kind(op, k)))
            .map(|op| json::operator(op, view.now))
            .collect()
    })))
}

/// True if `op` is of `kind` as PD's `operator show` means it: `leader`
/// also lists any operator that moves leadership and `region` any that
/// moves replicas (a manual transfer-leader is both `admin` and `leader`);
/// other kinds are the limit it counts against.
fn is_of_kind(op: &crate::schedule::Operator, kind: &str) -> bool {
    use crate::schedule::Step;
    op.kind.name() == kind
        || match kind {
            "leader" => op.steps.iter().any(|s| matches!(s, Step::TransferLeader { .. })),
            "region" => op.steps.iter().any(|s| !s.changes().is_empty()),
            _ => false,
        }
}

async fn operator(State(api): Shared, Path(region): Path<u64>) -> ApiResult<json::OperatorJson> {
    api.operator_json(RegionId(region))
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("region {region} has no operator")))
}

async fn remove_operator(State(api): Shared, Path(region): Path<u64>) -> ApiResult<String> {
    if api.cluster.remove_operator(RegionId(region)) {
        Ok(Json(format!("the operator of region {region} is cancelled")))
    } else {
        Err(ApiError(StatusCode::NOT_FOUND, format!("region {region} has no operator")))
    }
}

/// `POST /operators`, PD's field names.
#[derive(Deserialize)]
struct OperatorBody {
    name: String,
    region_id: u64,
    store_id: Option<u64>,
    from_store_id: Option<u64>,
    to_store_id: Option<u64>,
    #[serde(default)]
    to_store_ids: Vec<u64>,
    policy: Option<String>,
    #[serde(default)]
    keys: Vec<String>,
}

impl OperatorBody {
    fn request(&self) -> Result<AdminRequest, Error> {
        let need = |v: Option<u64>, field: &str| {
            v.map(StoreId).ok_or_else(|| Error::InvalidArgument(format!("{} needs \"{field}\"", self.name)))
        };
        Ok(match self.name.as_str() {
            "transfer-leader" => AdminRequest::TransferLeader { to_store: need(self.to_store_id, "to_store_id")? },
            "add-peer" => AdminRequest::AddPeer { store: need(self.store_id, "store_id")? },
            "remove-peer" => AdminRequest::RemovePeer { store: need(self.store_id, "store_id")? },
            "transfer-peer" => AdminRequest::TransferPeer {
                from_store: need(self.from_store_id, "from_store_id")?,
                to_store: need(self.to_store_id, "to_store_id")?,
            },
            "transfer-region" => {
                if self.to_store_ids.is_empty() {
                    return Err(Error::InvalidArgument("transfer-region needs \"to_store_ids\"".into()));
                }
                AdminRequest::TransferRegion { to_stores: self.to_store_ids.iter().copied().map(StoreId).collect() }
            }
            "split-region" => {
                let keys = hex_keys(&self.keys)?;
                let default = if keys.is_empty() { "approximate" } else { "usekey" };
                let policy = self.policy.as_deref().unwrap_or(default).to_ascii_lowercase();
                match (policy.as_str(), keys.is_empty()) {
                    ("approximate", true) => AdminRequest::Split(SplitPolicy::Approximate),
                    ("usekey", false) => AdminRequest::Split(SplitPolicy::UseKeys(keys)),
                    (p, _) => {
                        return Err(Error::InvalidArgument(format!(
                            "split-region policy {p:?} with {} keys: use \"approximate\" without keys \
                             or \"usekey\" with keys",
                            keys.len()
                        )))
                    }
                }
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown operator {other:?} (transfer-leader, add-peer, remove-peer, transfer-peer, transfer-region, \
                     scatter-region, split-region)"
                )))
            }
        })
    }
}

async fn add_operator(State(api): Shared, Json(body): Json<OperatorBody>) -> ApiResult<json::OperatorJson> {
    let region = RegionId(body.region_id);
    let order = if body.name == "scatter-region" {
        let c = api.cluster.clone();
        let (orders, _, failed) = blocking(move || c.scatter_regions(&[region])).await?;
        if let Some((_, why)) = failed.into_iter().next() {
            return Err(Error::InvalidArgument(why).into());
        }
        let desc = api.cluster.read(|view| view.operators.get(region).map(|op| op.desc));
        if desc != Some("scatter-region") {
            let why = format!("region {region} is where the scatter would put it already");
            return Err(Error::InvalidArgument(why).into());
        }
        orders.into_iter().next()
    } else {
        api.cluster.add_operator(region, &body.request()?)?
    };
    api.push(order.as_slice());
    // The operator may already be gone if its first step needed nothing.
    api.operator_json(region).map(Json).ok_or_else(|| {
        ApiError(StatusCode::CONFLICT, format!("the operator of region {region} ended at once"))
    })
}

#[derive(Deserialize)]
struct SplitBody {
    split_keys: Vec<String>,
    region_id: Option<u64>,
}

#[derive(serde::Serialize)]
struct SplitAnswer {
    split_regions: Vec<u64>,
}

async fn split_regions(State(api): Shared, Json(body): Json<SplitBody>) -> ApiResult<SplitAnswer> {
    let keys = hex_keys(&body.split_keys)?;
    if keys.is_empty() {
        return Err(Error::InvalidArgument("split_keys is empty".into()).into());
    }
    let (orders, regions) = match body.region_id {
        Some(id) => {
            let order =
                api.cluster.add_operator(RegionId(id), &AdminRequest::Split(SplitPolicy::UseKeys(keys)))?;
            (order.into_iter().collect(), vec![RegionId(id)])
        }
        None => api.cluster.split_at_keys(&keys)?,
    };
    api.push(&orders);
    Ok(Json(SplitAnswer { split_regions: regions.iter().map(|r| r.0).collect() }))
}

/// `POST /regions/scatter`.
#[derive(Deserialize)]
struct ScatterBody {
    #[serde(default)]
    start_key: String,
    #[serde(default)]
    end_key: String,
    #[serde(default)]
    regions_id: Vec<u64>,
}

/// Most regions one scatter call takes.
const MAX_SCATTER_REGIONS: usize = 10_000;

async fn scatter_regions(State(api): Shared, Json(body): Json<ScatterBody>) -> ApiResult<Value> {
    let by_keys = !(body.start_key.is_empty() && body.end_key.is_empty());
    let ids: Vec<RegionId> = match (body.regions_id.is_empty(), by_keys) {
        (false, true) => {
            return Err(Error::InvalidArgument("give regions_id or a key range, not both".into()).into())
        }
        (false, false) => {
            let mut ids = body.regions_id.clone();
            ids.sort_unstable();
            ids.dedup();
            ids.into_iter().map(RegionId).collect()
        }
        (true, _) => {
            let keys = hex_keys(&[body.start_key, body.end_key])?;
            let regions = api.cluster.scan_regions(&keys[0], &keys[1], MAX_SCATTER_REGIONS + 1)?;
            regions.iter().map(|r| r.region.id).collect()
        }
    };
    if ids.is_empty() {
        return Err(Error::InvalidArgument("no region to scatter".into()).into());
    }
    if ids.len() > MAX_SCATTER_REGIONS {
        return Err(Error::InvalidArgument(format!(
            "more than {MAX_SCATTER_REGIONS} regions: scatter a smaller range"
        ))
        .into());
    }
    let (c, regions) = (api.cluster.clone(), ids.clone());
    let (orders, scattered, failed) = blocking(move || c.scatter_regions(&regions)).await?;
    api.push(&orders);
    let failed: serde_json::Map<String, Value> =
        failed.into_iter().map(|(id, why)| (id.0.to_string(), Value::String(why))).collect();
    Ok(Json(serde_json::json!({
        "finished_percentage": scattered.len() * 100 / ids.len(),
        "regions_id": scattered.iter().map(|r| r.0).collect::<Vec<_>>(),
        "failed_regions": failed,
    })))
}

#[derive(Deserialize)]
struct SchedulersQuery {
    /// `paused`: only the schedulers paused now.
    status: Option<String>,
}

/// `GET /schedulers`: names of the active schedulers; with
/// `?status=paused`, `[{"name","resume_at"}]` of those paused now.
async fn schedulers(State(api): Shared, Query(q): Query<SchedulersQuery>) -> ApiResult<Value> {
    match q.status.as_deref() {
        None | Some("") => {
            let names: Vec<String> = api.cluster.schedulers().into_iter().map(Scheduler::name).collect();
            Ok(Json(serde_json::json!(names)))
        }
        Some("paused") => {
            let paused: Vec<Value> = api
                .cluster
                .paused_schedulers()
                .into_iter()
                .map(
                    |(s, until)| serde_json::json!({"name": s.name(), "resume_at": format_rfc3339_ms(until)}),
                )
                .collect();
            Ok(Json(Value::Array(paused)))
        }
        Some(other) => {
            Err(Error::InvalidArgument(format!("unknown scheduler status {other:?} (paused)")).into())
        }
    }
}

/// `POST /schedulers`: `{"name": ...}`, plus `"store_id"` for
/// evict-leader-scheduler. Takes any JSON object, so that a missing name is
/// answered as PD does (400 "missing scheduler name").
async fn add_scheduler(State(api): Shared, Json(body): Json<Value>) -> ApiResult<&'static str> {
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "missing scheduler name".into()))?;
    let store =
        match body.get("store_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                ApiError(StatusCode::BAD_REQUEST, format!("store_id {v} is not a store id"))
            })?),
        };
    let (c, name) = (api.cluster.clone(), name.to_owned());
    blocking(move || c.add_scheduler(&name, store)).await?;
    Ok(Json("The scheduler is created."))
}

async fn remove_scheduler(State(api): Shared, Path(name): Path<String>) -> ApiResult<&'static str> {
    let c = api.cluster.clone();
    blocking(move || c.remove_scheduler(&name)).await?;
    Ok(Json("The scheduler is removed."))
}

/// `POST /schedulers/{name}` with `{"delay": seconds}`: pauses it that
/// long; 0 resumes it (pd-ctl `scheduler pause|resume`).
#[derive(Deserialize)]
struct PauseBody {
    delay: u64,
}

async fn pause_scheduler(
    State(api): Shared,
    Path(name): Path<String>,
    Json(body): Json<PauseBody>,
) -> ApiResult<&'static str> {
    let c = api.cluster.clone();
    blocking(move || c.pause_scheduler(&name, std::time::Duration::from_secs(body.delay))).await?;
    Ok(Json(if body.delay == 0 { "The scheduler is resumed." } else { "The scheduler is paused." }))
}

fn hex_keys(keys: &[String]) -> Result<Vec<Vec<u8>>, Error> {
    keys.iter()
        .map(|k| hex::decode(k).map_err(|e| Error::InvalidArgument(format!("key {k:?} is not hex: {e}"))))
        .collect()
}
