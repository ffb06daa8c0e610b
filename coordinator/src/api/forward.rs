//! Any coordinator answers the API as the leader would. Requests that need the leader — every
//! write, and every read unless `?stale=true` — are forwarded to it by a follower, and the
//! leader confirms it still leads (Raft ReadIndex) before serving a read; a write is ordered by
//! its own commit. `/v1/health`,
//! `/metrics` and `/v1/debug/...` are always answered by the node asked.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::cli::Client;
use crate::consensus::ConsensusError;
use crate::coordinator::Coordinator;

/// Marks a forwarded request, so it is never forwarded twice.
const FORWARDED: &str = "x-fifty-forwarded-by";
/// Largest request body a follower forwards.
const MAX_BODY: usize = 1 << 20;

fn answered_locally(req: &Request) -> bool {
    let path = req.uri().path();
    let stale = req.method() == Method::GET
        && req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "stale=true" || kv == "stale"));
    stale || path == "/v1/health" || path == "/metrics" || path.starts_with("/v1/debug/")
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// The middleware: serve here, barrier-then-serve, or forward.
pub async fn to_leader(State(c): State<Arc<Coordinator>>, req: Request, next: Next) -> Response {
    if answered_locally(&req) {
        return next.run(req).await;
    }
    // A read confirms leadership first (ReadIndex); a write needs only to reach the leader, since
    // committing it through Raft already orders it.
    let here = if req.method() == Method::GET { c.consensus.read_barrier().await } else { c.consensus.ensure_leader() };
    match here {
        Ok(()) => next.run(req).await,
        Err(ConsensusError::NotLeader { leader: Some(leader) }) if !req.headers().contains_key(FORWARDED) => {
            match forward(&c, &leader.http_addr, req).await {
                Ok(resp) => resp,
                Err(e) => e.into_response(),
            }
        }
        Err(ConsensusError::NotLeader { .. }) => {
            unavailable("leadership changed while the request was forwarded; retry").into_response()
        }
        Err(e) => unavailable(e).into_response(),
    }
}

async fn forward(c: &Coordinator, leader_http: &str, req: Request) -> Result<Response, ApiError> {
    let client = Client::to_coordinator(leader_http, c.ca_pem()).map_err(|e| unavailable(format!("{e:#}")))?;
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")))?;
    let mut headers = vec![(
        header::HeaderName::from_static(FORWARDED),
        HeaderValue::from_str(&format!("{:016x}", c.consensus.id())).expect("hex is a valid header value"),
    )];
    let webhook = super::webhook::HEADERS.iter().map(|h| header::HeaderName::from_static(h));
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE].into_iter().chain(webhook) {
        if let Some(v) = parts.headers.get(&name) {
            headers.push((name, v.clone()));
        }
    }
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let (status, content_type, bytes) = client
        .forward(parts.method, path, &headers, body)
        .await
        .map_err(|e| unavailable(format!("forwarding to the leader at {leader_http} failed: {e:#}")))?;
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    if let Some(ct) = content_type {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(resp)
}
