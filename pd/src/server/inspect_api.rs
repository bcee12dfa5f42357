//! The HTTP API an operator inspects the cluster with, under `/pd/api/v1`
//! (what `pd-ctl region ...` and `pd-ctl store check|label|remove-tombstone`
//! call). Every list answer is `{"count","regions":[...]}` or
//! `{"count","stores":[...]}` in the shapes of `json.rs`.
//!
//! | method, path                                | answer                                             |
//! |---------------------------------------------|----------------------------------------------------|
//! | GET `/regions/key?key=K&end_key=E&limit=N[&format=hex]` | regions meeting `[K, E)` in key order (`E` empty: to the end; `limit` 0: all) |
//! | GET `/regions/store/{id}`                   | regions with a peer on the store                   |
//! | GET `/regions/sibling/{id}`                 | the regions just before and after it (0 to 2)      |
//! | GET `/regions/readflow?limit=N`             | the N regions reading the most bytes per second    |
//! | GET `/regions/writeflow?limit=N`            | the N regions writing the most bytes per second    |
//! | GET `/regions/readquery?limit=N`, `/regions/writequery?limit=N` | the same by keys per second    |
//! | GET `/regions/size?limit=N`                 | the N largest regions (approximate size)           |
//! | GET `/regions/check/{state}`                | regions in that state: `miss-peer`, `extra-peer`, `down-peer`, `pending-peer`, `learner-peer`, `offline-peer`, `empty-region` |
//! | GET `/stores/check?state=S`                 | stores whose state name is S (`Up`, `Disconnected`, `Down`, `Offline`, `Tombstone`; any case) |
//! | DELETE `/stores/remove-tombstone`           | forgets every Tombstone store; `{"removed":[ids]}` |
//! | POST `/store/{id}/label`                    | `{"zone":"z1",...}`: sets those labels (a value `""` removes the key) |
//! | POST `/store/{id}/weight`                   | `{"leader":2,"region":1}`: the store's weights (`schedule.store-weight`) |
//!
//! Rates come from the leaders' heartbeats: the bytes and keys read and
//! written over the interval each heartbeat covers, divided by its length.
//! `limit` defaults to 16 for the top lists, as pd-ctl's `topread` does.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use mnemo_proto::types::{RegionId, StoreId};
use serde::{Deserialize, Serialize};

use super::http::{ApiError, ApiResult};
use super::json;
use crate::cluster::Cluster;
use crate::error::Error;
use crate::region_map::RegionInfo;
use crate::store::StoreState;

type Shared = State<Arc<Cluster>>;

/// Regions rendered per hold of the metadata lock when listing the whole
/// map: heartbeats and the raft thread's apply take that lock too.
const PAGE: usize = 1024;

/// `limit` of the top lists when none is given.
pub const DEFAULT_TOP: usize = 16;

pub(super) fn routes(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route("/pd/api/v1/regions/key", get(scan_regions))
        .route("/pd/api/v1/regions/store/:id", get(store_regions))
        .route("/pd/api/v1/regions/sibling/:id", get(sibling_regions))
        .route(
            "/pd/api/v1/regions/readflow",
            get(|s: Shared, q: Query<LimitQuery>| top(s, q, Top::ReadBytes)),
        )
        .route(
            "/pd/api/v1/regions/writeflow",
            get(|s: Shared, q: Query<LimitQuery>| top(s, q, Top::WriteBytes)),
        )
        .route(
            "/pd/api/v1/regions/readquery",
            get(|s: Shared, q: Query<LimitQuery>| top(s, q, Top::ReadKeys)),
        )
        .route(
            "/pd/api/v1/regions/writequery",
            get(|s: Shared, q: Query<LimitQuery>| top(s, q, Top::WriteKeys)),
        )
        .route("/pd/api/v1/regions/size", get(|s: Shared, q: Query<LimitQuery>| top(s, q, Top::Size)))
        .route("/pd/api/v1/regions/check/:state", get(check_regions))
        .route("/pd/api/v1/stores/check", get(check_stores))
        .route("/pd/api/v1/stores/remove-tombstone", delete(remove_tombstones))
        .route("/pd/api/v1/store/:id/label", post(set_labels))
        .route("/pd/api/v1/store/:id/weight", post(set_weight))
        .with_state(cluster)
}

/// `render` of every region `keep` accepts, in key order, a page at a time
/// ([`Cluster::for_each_region_page`]: the metadata lock is held for one
/// page at a time, never for a whole large map), off the async workers.
pub(super) async fn regions_where<T: Send + 'static>(
    c: Arc<Cluster>,
    keep: impl Fn(&RegionInfo) -> bool + Send + 'static,
    render: impl Fn(&RegionInfo) -> T + Send + 'static,
) -> Result<Vec<T>, ApiError> {
    tokio::task::spawn_blocking(move || {
        let mut out: Vec<T> = Vec::new();
        let mut at = std::collections::HashMap::new();
        c.for_each_region_page(PAGE, |page| {
            for r in page.iter().filter(|r| keep(r)) {
                // A page's last region can come again at the head of the
                // next (it grew meanwhile): the later sight wins.
                match at.get(&r.region.id) {
                    Some(&i) => out[i] = render(r),
                    None => {
                        at.insert(r.region.id, out.len());
                        out.push(render(r));
                    }
                }
            }
        });
        out
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The JSON of every region `keep` accepts, in key order.
async fn filtered(
    c: Arc<Cluster>,
    keep: impl Fn(&RegionInfo) -> bool + Send + 'static,
) -> Result<Vec<json::Region>, ApiError> {
    regions_where(c, keep, json::region).await
}

fn regions_answer(regions: Vec<json::Region>) -> Json<json::Regions> {
    Json(json::Regions { count: regions.len(), regions })
}

#[derive(Deserialize)]
struct ScanQuery {
    #[serde(default)]
    key: String,
    #[serde(default)]
    end_key: String,
    #[serde(default)]
    limit: usize,
    /// `raw` (default) or `hex`: how `key` and `end_key` are written.
    format: Option<String>,
}

/// Decodes a key given in an HTTP query or path as `format` says.
pub(super) fn decode_key(key: &str, format: Option<&str>) -> Result<Vec<u8>, Error> {
    match format {
        None | Some("raw") => Ok(key.as_bytes().to_vec()),
        Some("hex") => {
            hex::decode(key).map_err(|e| Error::InvalidArgument(format!("key {key:?} is not hex: {e}")))
        }
        Some(other) => Err(Error::InvalidArgument(format!("unknown key format {other:?} (raw, hex)"))),
    }
}

async fn scan_regions(State(c): Shared, Query(q): Query<ScanQuery>) -> ApiResult<json::Regions> {
    let start = decode_key(&q.key, q.format.as_deref())?;
    let end = decode_key(&q.end_key, q.format.as_deref())?;
    if !end.is_empty() && end <= start {
        return Err(Error::InvalidArgument("end_key must be empty or after key".into()).into());
    }
    if q.limit == 0 {
        // Possibly the whole map: a page at a time.
        let meets = move |r: &RegionInfo| {
            (r.region.end_key.is_empty() || r.region.end_key.as_slice() > start.as_slice())
                && (end.is_empty() || r.region.start_key < end)
        };
        return Ok(regions_answer(filtered(c, meets).await?));
    }
    let regions = c.read(|view| {
        view.state.regions().scan(&start, &end, q.limit).into_iter().map(json::region).collect()
    });
    Ok(regions_answer(regions))
}

async fn store_regions(State(c): Shared, Path(id): Path<u64>) -> ApiResult<json::Regions> {
    let store = StoreId(id);
    if c.read(|view| view.state.store(store).is_none()) {
        return Err(Error::StoreNotFound(store).into());
    }
    Ok(regions_answer(filtered(c, move |r| r.region.peer_on_store(store).is_some()).await?))
}

async fn sibling_regions(State(c): Shared, Path(id): Path<u64>) -> ApiResult<json::Regions> {
    c.read(|view| {
        let regions = view.state.regions();
        let info = regions.get(RegionId(id)).ok_or(Error::RegionNotFound(RegionId(id)))?;
        let r = &info.region;
        let prev = regions.prev_of_key(&r.start_key).filter(|p| p.region.end_key == r.start_key);
        let next = (!r.end_key.is_empty()).then(|| regions.get_by_key(&r.end_key)).flatten();
        Ok(regions_answer(prev.into_iter().chain(next).map(json::region).collect()))
    })
}

/// What a top list ranks by.
#[derive(Clone, Copy)]
enum Top {
    ReadBytes,
    WriteBytes,
    ReadKeys,
    WriteKeys,
    Size,
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn top(State(c): Shared, Query(q): Query<LimitQuery>, by: Top) -> ApiResult<json::Regions> {
    let limit = q.limit.unwrap_or(DEFAULT_TOP);
    let score = move |r: &RegionInfo| {
        let f = r.flow_rates();
        match by {
            Top::ReadBytes => f.read_bytes_per_sec,
            Top::WriteBytes => f.written_bytes_per_sec,
            Top::ReadKeys => f.read_keys_per_sec,
            Top::WriteKeys => f.written_keys_per_sec,
            Top::Size => r.runtime.approximate_size as f64,
        }
    };
    let mut all = regions_where(c, |_| true, move |r| (score(r), r.region.id, json::region(r))).await?;
    // Highest first; ties by region id, so the answer is stable.
    all.sort_by(|(a, a_id, _), (b, b_id, _)| b.total_cmp(a).then(a_id.cmp(b_id)));
    Ok(regions_answer(all.into_iter().take(limit).map(|(_, _, j)| j).collect()))
}

/// The states `region check` asks about, in the order of
/// [`crate::metrics::REGION_STATES`] (the `pd_regions_status` gauges count
/// the same regions).
const REGION_CHECKS: [&str; 7] =
    ["miss-peer", "extra-peer", "down-peer", "pending-peer", "learner-peer", "offline-peer", "empty-region"];

async fn check_regions(State(c): Shared, Path(state): Path<String>) -> ApiResult<json::Regions> {
    let Some(check) = REGION_CHECKS.iter().position(|s| *s == state) else {
        return Err(Error::InvalidArgument(format!(
            "unknown region state {state:?} ({})",
            REGION_CHECKS.join(", ")
        ))
        .into());
    };
    let max_replicas = usize::try_from(c.config().replication.max_replicas).unwrap_or(usize::MAX);
    let offline: Vec<StoreId> = c.read(|view| {
        view.state
            .stores()
            .values()
            .filter(|s| s.meta.state == StoreState::Offline)
            .map(|s| s.meta.id)
            .collect()
    });
    let keep = move |r: &RegionInfo| crate::metrics::region_health(r, max_replicas, &offline)[check];
    Ok(regions_answer(filtered(c, keep).await?))
}

#[derive(Deserialize)]
struct StateQuery {
    state: String,
}

async fn check_stores(State(c): Shared, Query(q): Query<StateQuery>) -> ApiResult<json::Stores> {
    const NAMES: [&str; 5] = ["Up", "Disconnected", "Down", "Offline", "Tombstone"];
    let Some(want) = NAMES.iter().find(|n| n.eq_ignore_ascii_case(&q.state)) else {
        return Err(Error::InvalidArgument(format!(
            "unknown store state {:?} (up, disconnected, down, offline, tombstone)",
            q.state
        ))
        .into());
    };
    Ok(Json(c.read(|view| {
        let max_down = view.config.schedule.max_store_down_time.0;
        let stores: Vec<_> = view
            .state
            .stores()
            .values()
            .filter(|s| s.status(view.now, view.alive_since, max_down).name() == *want)
            .map(|s| json::store(s, &view))
            .collect();
        json::Stores { count: stores.len(), stores }
    })))
}

#[derive(Serialize)]
struct Removed {
    removed: Vec<u64>,
}

async fn remove_tombstones(State(c): Shared) -> ApiResult<Removed> {
    let removed = tokio::task::spawn_blocking(move || c.remove_tombstones())
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(Removed { removed: removed.iter().map(|s| s.0).collect() }))
}

async fn set_labels(
    State(c): Shared,
    Path(id): Path<u64>,
    Json(labels): Json<BTreeMap<String, String>>,
) -> ApiResult<&'static str> {
    tokio::task::spawn_blocking(move || c.set_store_labels(StoreId(id), labels))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json("The store's label is updated."))
}

#[derive(Deserialize)]
struct WeightBody {
    leader: f64,
    region: f64,
}

async fn set_weight(
    State(c): Shared,
    Path(id): Path<u64>,
    Json(w): Json<WeightBody>,
) -> ApiResult<&'static str> {
    tokio::task::spawn_blocking(move || c.set_store_weight(StoreId(id), w.leader, w.region))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json("The store's weight is updated."))
}
