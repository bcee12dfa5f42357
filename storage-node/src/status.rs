//! The HTTP status server: `/metrics` (Prometheus text), `/status`, `/config`.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use mnemo_proto::types::StoreId;

use crate::config::NodeConfig;
use crate::metrics::Metrics;

/// What the status pages show.
pub struct StatusState {
    pub store_id: StoreId,
    pub config: NodeConfig,
    pub metrics: Arc<Metrics>,
    pub started: std::time::Instant,
}

/// The router of the status server.
pub fn router(state: Arc<StatusState>) -> Router {
    Router::new()
        .route("/metrics", get(|State(s): State<Arc<StatusState>>| async move { s.metrics.render() }))
        .route(
            "/status",
            get(|State(s): State<Arc<StatusState>>| async move {
                Json(serde_json::json!({
                    "store_id": s.store_id.0,
                    "address": s.config.advertised(),
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_seconds": s.started.elapsed().as_secs(),
                    "region_count": s.metrics.region_count.get(),
                    "leader_count": s.metrics.leader_count.get(),
                }))
            }),
        )
        .route("/config", get(|State(s): State<Arc<StatusState>>| async move { Json(s.config.clone()) }))
        .with_state(state)
}
