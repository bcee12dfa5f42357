//! The HTTP status server: `/metrics` (Prometheus text), `/status`, `/config`.
//!
//! With the test-only flag `--enable-test-controls` (and only then) it also
//! serves the chaos harness's lease-clock control; without the flag those
//! paths do not exist (404):
//!
//! - `GET /debug/lease-clock`: `{"rate": 1.0, "offset_ms": 0, "jumped_ms": 0}`;
//! - `POST /debug/lease-clock` with `{"rate": f64, "jump_ms": u64}` (both
//!   optional): runs the lease clock at `rate` × real time from now on
//!   (`0 < rate <= 10`, else 400) and/or jumps it `jump_ms` forward; answers
//!   with the new state. `{"rate": 1.0}` restores normal speed. What this
//!   does to leases: [`crate::raftstore::lease_clock`];
//! - `GET /debug/fail`: `{"armed": {"NAME": "ACTIONS", ...}, "known": [...]}`,
//!   the armed crash points and every crash point of the node;
//! - `PUT /debug/fail/NAME` with the actions as body (e.g. `panic`,
//!   `1*off->panic`, `sleep(200)`): arms it (400 if the actions do not parse
//!   or the build has no failpoints); `DELETE /debug/fail/NAME` disarms it.
//!   See [`crate::failpoints`];
//! - `GET /debug/transport-delay`, `POST /debug/transport-delay` with
//!   `{"ms": u64, "to_stores": [id, ...]}` (`to_stores` omitted: every
//!   store; `ms` 0 clears, at most 10,000): raft messages to those stores
//!   leave that much later (see [`crate::transport::TransportDelays`]);
//!   with `"drop": true` (and `to_stores`) they are dropped instead, a
//!   one-way partition (`"drop": false` or `{"ms": 0}` ends it);
//! - `GET /debug/region-hashes`: `[{"region_id", "applied_index", "version",
//!   "conf_ver", "hash", "keys"}]`, a digest of every initialized replica's
//!   data computed inside the store loop (replicas of a region at the same
//!   applied index must agree; the chaos harness compares them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use mnemo_proto::types::StoreId;
use serde::Deserialize;

use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::raftstore::{LeaseClock, StoreMsg, StoreRouter};
use crate::transport::TransportDelays;

/// What the status pages show.
pub struct StatusState {
    pub store_id: StoreId,
    pub config: NodeConfig,
    pub metrics: Arc<Metrics>,
    pub started: std::time::Instant,
    /// The store's lease clock (adjustable only with `--enable-test-controls`).
    pub lease_clock: LeaseClock,
    /// Delays on outgoing raft messages (set only with `--enable-test-controls`).
    pub transport_delays: Arc<TransportDelays>,
    /// The store loop, asked for region hashes (test controls).
    pub router: StoreRouter,
}

/// The router of the status server.
pub fn router(state: Arc<StatusState>) -> Router {
    let mut router = Router::new()
        .route("/metrics", get(|State(s): State<Arc<StatusState>>| async move { s.metrics.render() }))
        .route(
            "/status",
            get(|State(s): State<Arc<StatusState>>| async move {
                let t = &s.config.test_controls;
                Json(serde_json::json!({
                    "store_id": s.store_id.0,
                    "address": s.config.advertised(),
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_seconds": s.started.elapsed().as_secs(),
                    "region_count": s.metrics.region_count.get(),
                    "leader_count": s.metrics.leader_count.get(),
                    "test_controls": {
                        "enable_test_controls": t.enable_test_controls,
                        "unsafe_stale_reads": t.unsafe_stale_reads,
                        "planted_bugs": t.plant,
                        "lease_clock": s.lease_clock.is_adjustable().then(|| s.lease_clock.state()),
                    },
                }))
            }),
        )
        .route("/config", get(|State(s): State<Arc<StatusState>>| async move { Json(s.config.clone()) }));
    if state.config.test_controls.enable_test_controls {
        router = router.route(
            "/debug/lease-clock",
            get(|State(s): State<Arc<StatusState>>| async move { Json(s.lease_clock.state()) }).post(
                |State(s): State<Arc<StatusState>>, body: Bytes| async move {
                    let (code, answer) = adjust_lease_clock(&s.lease_clock, &body);
                    (code, Json(answer))
                },
            ),
        );
        router = router
            .route(
                "/debug/transport-delay",
                get(|State(s): State<Arc<StatusState>>| async move { Json(s.transport_delays.state()) })
                    .post(|State(s): State<Arc<StatusState>>, body: Bytes| async move {
                        set_transport_delay(&s.transport_delays, &body)
                    }),
            )
            .route(
                "/debug/region-hashes",
                get(|State(s): State<Arc<StatusState>>| async move {
                    let (cb, rx) = tokio::sync::oneshot::channel();
                    if s.router.send(StoreMsg::RegionHashes { cb }).is_err() {
                        return (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Json(serde_json::json!({"error": "store stopped"})),
                        );
                    }
                    match rx.await {
                        Ok(hashes) => (StatusCode::OK, Json(serde_json::json!(hashes))),
                        Err(_) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Json(serde_json::json!({"error": "store stopped"})),
                        ),
                    }
                }),
            )
            .route(
                "/debug/fail",
                get(|| async {
                    let armed: serde_json::Map<String, serde_json::Value> =
                        crate::failpoints::list().into_iter().map(|(n, a)| (n, a.into())).collect();
                    let known: Vec<&str> = crate::failpoints::CRASH_POINTS.iter().map(|(n, _)| *n).collect();
                    Json(serde_json::json!({ "armed": armed, "known": known }))
                }),
            )
            .route(
                "/debug/fail/:name",
                put(|Path(name): Path<String>, body: Bytes| async move { arm_crash_point(&name, &body) })
                    .delete(|Path(name): Path<String>| async move {
                        crate::failpoints::remove(&name);
                        tracing::warn!(%name, "TEST CONTROL: crash point disarmed");
                        StatusCode::OK
                    }),
            );
    }
    router.with_state(state)
}

/// Body of `POST /debug/transport-delay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransportDelayRequest {
    ms: u64,
    to_stores: Option<Vec<u64>>,
    /// With `to_stores`: drop those messages instead (true) or stop
    /// dropping them (false).
    drop: Option<bool>,
}

/// `POST /debug/transport-delay`: 200 with the new state, or 400.
fn set_transport_delay(delays: &TransportDelays, body: &[u8]) -> (StatusCode, Json<serde_json::Value>) {
    let req = match serde_json::from_slice::<TransportDelayRequest>(body) {
        Ok(r) if r.ms <= 10_000 => r,
        Ok(_) => {
            return (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": "ms must be at most 10000"})))
        }
        Err(e) => {
            let msg = format!("expected {{\"ms\": u64, \"to_stores\": [u64]}}: {e}");
            return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": msg })));
        }
    };
    let stores: Option<Vec<StoreId>> = req.to_stores.map(|v| v.into_iter().map(StoreId).collect());
    match (req.drop, stores.as_deref()) {
        (Some(drop), Some(ids)) => delays.set_dropped(ids, drop),
        (Some(_), None) => {
            let msg = "drop needs to_stores";
            return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": msg })));
        }
        (None, ids) => delays.set(Duration::from_millis(req.ms), ids),
    }
    if req.ms == 0 && stores.is_none() {
        // A full clear also stops dropping.
        let all: Vec<StoreId> = delays.state()["dropped"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_u64().map(StoreId))
            .collect();
        delays.set_dropped(&all, false);
    }
    tracing::warn!(ms = req.ms, stores = ?stores, "TEST CONTROL: raft transport delay set");
    (StatusCode::OK, Json(delays.state()))
}

/// `PUT /debug/fail/NAME`: arms a crash point (200), or 400 with the reason.
fn arm_crash_point(name: &str, body: &[u8]) -> (StatusCode, String) {
    let actions = String::from_utf8_lossy(body).trim().to_string();
    match crate::failpoints::configure(name, &actions) {
        Ok(()) => {
            tracing::warn!(%name, %actions, "TEST CONTROL: crash point armed");
            (StatusCode::OK, format!("{name}={actions}\n"))
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// Body of `POST /debug/lease-clock`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseClockRequest {
    /// Lease seconds per real second from now on.
    rate: Option<f64>,
    /// Jump forward by this many milliseconds.
    jump_ms: Option<u64>,
}

/// Applies a `POST /debug/lease-clock` body: 200 with the new state, or 400
/// with `{"error": ...}` and nothing changed.
fn adjust_lease_clock(clock: &LeaseClock, body: &[u8]) -> (StatusCode, serde_json::Value) {
    let bad = |msg: String| (StatusCode::BAD_REQUEST, serde_json::json!({ "error": msg }));
    let req: LeaseClockRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad(format!("expected {{\"rate\": f64, \"jump_ms\": u64}} (both optional): {e}")),
    };
    match clock.adjust_at(Instant::now(), req.rate, req.jump_ms.map(Duration::from_millis)) {
        Ok(state) => {
            tracing::warn!(
                rate = state.rate,
                offset_ms = state.offset_ms,
                "TEST CONTROL: lease clock adjusted"
            );
            (StatusCode::OK, serde_json::json!(state))
        }
        Err(e) => bad(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn lease_clock_requests_are_checked() {
        let clock = LeaseClock::adjustable();
        let (code, body) = adjust_lease_clock(&clock, br#"{"rate": 0.5, "jump_ms": 200}"#);
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["rate"], 0.5);
        assert_eq!(body["jumped_ms"], 200);
        for bad in [
            &br#"{"rate": 0}"#[..],
            br#"{"rate": -2.0}"#,
            br#"{"rate": 11}"#,
            br#"{"jump_ms": -5}"#,
            br#"{"rate": 1.0, "skew": 3}"#,
            b"not json",
        ] {
            let (code, body) = adjust_lease_clock(&clock, bad);
            assert_eq!(code, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(bad));
            assert!(body["error"].is_string());
        }
        // The rejected requests changed nothing.
        assert_eq!((clock.state().rate, clock.state().jumped_ms), (0.5, 200));
        let (code, body) = adjust_lease_clock(&clock, br#"{"rate": 1.0}"#);
        assert_eq!((code, body["rate"].as_f64()), (StatusCode::OK, Some(1.0)));
    }

    /// Serves the router on a loopback port and returns the status code of one request.
    async fn status_of(router: Router, method: &str, path: &str, body: &str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        server.abort();
        answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status line")
    }

    fn state(enable: bool) -> Arc<StatusState> {
        let mut config = NodeConfig::default();
        config.test_controls.enable_test_controls = enable;
        let lease_clock = if enable { LeaseClock::adjustable() } else { LeaseClock::real() };
        Arc::new(StatusState {
            store_id: StoreId(1),
            config,
            metrics: Arc::default(),
            started: Instant::now(),
            lease_clock,
            transport_delays: Arc::default(),
            router: crate::raftstore::router::channel(1).0,
        })
    }

    #[tokio::test]
    async fn the_lease_clock_endpoint_exists_only_with_the_flag() {
        let off = state(false);
        assert_eq!(status_of(router(off.clone()), "GET", "/debug/lease-clock", "").await, 404);
        assert_eq!(status_of(router(off), "POST", "/debug/lease-clock", r#"{"rate":0.5}"#).await, 404);

        let on = state(true);
        assert_eq!(status_of(router(on.clone()), "GET", "/debug/lease-clock", "").await, 200);
        assert_eq!(status_of(router(on.clone()), "POST", "/debug/lease-clock", r#"{"rate":0}"#).await, 400);
        assert_eq!(status_of(router(on.clone()), "POST", "/debug/lease-clock", r#"{"rate":0.5}"#).await, 200);
        assert_eq!(on.lease_clock.state().rate, 0.5);
        assert_eq!(status_of(router(on), "GET", "/status", "").await, 200);
    }
}
