//! A follower's HTTP API forwards to the leader, as PD's members do.
//!
//! Every `/pd/api/v1` request reaching a member that does not serve is sent
//! on to the leader's client URL with header `PD-Redirector: <own name>`, and
//! the leader's answer (status, content type, body) is returned as is.
//! Answered by every member itself: `GET` of `health`, `ping`, `members`,
//! `leader`, `raft` and `config` (PD's list), the root `/metrics`, and
//! anything carrying `PD-Allow-Follower-Handle`.
//! A request that was already redirected once and still reached a non-leader
//! gets 500 (never a second hop); with no leader known the member waits up to
//! 3 s for one, then answers 503.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::cluster::Cluster;

/// Header naming the member that forwarded a request.
pub(super) const REDIRECTOR: &str = "PD-Redirector";
const ALLOW_FOLLOWER: &str = "PD-Allow-Follower-Handle";
/// Largest body forwarded.
const MAX_BODY: usize = 16 << 20;
/// How long a follower waits for a leader to appear.
const WAIT_FOR_LEADER: Duration = Duration::from_secs(3);

fn answered_locally(method: &Method, path: &str) -> bool {
    // `/metrics` sits at the root: each member's own gauges (its role above
    // all) must come from that member, or every member would claim to lead.
    if path == "/metrics" {
        return method == Method::GET;
    }
    let tail = path.strip_prefix("/pd/api/v1/").unwrap_or(path);
    method == Method::GET
        && matches!(tail, "health" | "ping" | "members" | "leader" | "version" | "status" | "raft" | "config")
}

/// The axum middleware.
pub(super) async fn to_leader(State(cluster): State<Arc<Cluster>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if cluster.check_serving().is_ok()
        || answered_locally(req.method(), &path)
        || req.headers().contains_key(ALLOW_FOLLOWER)
    {
        return next.run(req).await;
    }
    if req.headers().contains_key(REDIRECTOR) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "not leader: request was redirected already".to_string())
            .into_response();
    }
    let deadline = Instant::now() + WAIT_FOR_LEADER;
    let leader = loop {
        let (_, leader) = cluster.member_list();
        match leader {
            Some(l) if l.member_id != cluster.member().member_id => break l,
            _ if Instant::now() >= deadline => {
                return (StatusCode::SERVICE_UNAVAILABLE, "no PD leader".to_string()).into_response()
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let method = req.method().clone();
    let target =
        format!("{}{}", leader.client_url, req.uri().path_and_query().map_or(path.as_str(), |p| p.as_str()));
    let content_type = req.headers().get(axum::http::header::CONTENT_TYPE).cloned();
    let body = match to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("cannot read body: {e}")).into_response(),
    };
    let me = cluster.member().name.clone();
    let forwarded = tokio::task::spawn_blocking(move || {
        let mut r =
            ureq::request(method.as_str(), &target).timeout(Duration::from_secs(30)).set(REDIRECTOR, &me);
        if let Some(ct) = content_type.as_ref().and_then(|c| c.to_str().ok()) {
            r = r.set("Content-Type", ct);
        }
        let result = if body.is_empty() { r.call() } else { r.send_bytes(&body) };
        match result {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => {
                let status = resp.status();
                let ct = resp.header("Content-Type").map(str::to_owned);
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes)
                    .map(|_| (status, ct, bytes))
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    match forwarded {
        Ok(Ok((status, ct, bytes))) => {
            let mut resp = Response::new(Body::from(bytes));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(ct) = ct.and_then(|c| HeaderValue::from_str(&c).ok()) {
                resp.headers_mut().insert(axum::http::header::CONTENT_TYPE, ct);
            }
            resp
        }
        Ok(Err(e)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("PD leader unreachable: {e}")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("forwarding failed: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_member_answers_its_own_metrics_and_status_reads() {
        assert!(answered_locally(&Method::GET, "/metrics"));
        assert!(answered_locally(&Method::GET, "/pd/api/v1/health"));
        assert!(!answered_locally(&Method::POST, "/metrics"));
        assert!(!answered_locally(&Method::GET, "/pd/api/v1/stores"));
        assert!(!answered_locally(&Method::GET, "/pd/api/v1/metrics"));
    }
}
