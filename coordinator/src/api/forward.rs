//! Any coordinator answers the API as the leader would. Requests that need the leader — every
//! write, and every read unless `?stale=true` — are forwarded to it by a follower, and the
//! leader confirms it still leads (Raft ReadIndex) before serving a read; a write is ordered by
//! its own commit. `/v1/health`, `/metrics` and `/v1/debug/...` are always answered by the node
//! asked, and so is `/v1/snapshot` (a backup streams; see `backup`).
//!
//! A forwarded request is bounded: connecting to the leader (TCP, TLS, HTTP) gets
//! [`CONNECT_TIMEOUT`], the whole exchange `api.forward_timeout`, and it is given up as soon as
//! this node sees another leader (or none) than the one it forwarded to. Each case answers 503
//! with "retry": a paused or partitioned leader costs a client seconds, not minutes. A request
//! arriving while no leader is known (an election, a coordinator just started) waits up to
//! [`LEADER_WAIT`] for one before it is answered so. The follower keeps a few connections to the
//! leader open between requests.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::client::Client;
use crate::consensus::ConsensusError;
use crate::coordinator::Coordinator;
use crate::state::MemberRecord;

/// Marks a forwarded request, so it is never forwarded twice.
const FORWARDED: &str = "x-fifty-forwarded-by";
/// How long connecting to the leader may take: a paused leader's kernel still accepts TCP
/// connections, so it is the TLS handshake that never finishes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A kept connection idle longer than this is not reused (the leader closes idle connections
/// after its `api.idle_timeout`, 60 s by default).
const POOL_IDLE: Duration = Duration::from_secs(20);
/// How long a request waits for a leader to be known before it is answered 503 "retry": a
/// few election timeouts.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// At most this many idle connections are kept.
const POOL_SIZE: usize = 8;

/// The forwarding middleware's state: the coordinator, the time bound, and idle connections to
/// the leader (each `Client` holds one connection and serves one request at a time).
pub struct Forwarder {
    coordinator: Arc<Coordinator>,
    timeout: Duration,
    idle: Mutex<Vec<(String, Client, Instant)>>,
}

impl Forwarder {
    /// A forwarder that gives the leader `timeout` to answer.
    pub fn new(coordinator: Arc<Coordinator>, timeout: Duration) -> Self {
        Self { coordinator, timeout, idle: Mutex::default() }
    }

    /// An idle connection to `addr`, or a new client that will connect.
    fn checkout(&self, addr: &str) -> Result<Client, ApiError> {
        let mut idle = self.idle.lock().expect("pool lock");
        idle.retain(|(_, _, since)| since.elapsed() < POOL_IDLE);
        if let Some(i) = idle.iter().position(|(a, _, _)| a == addr) {
            return Ok(idle.swap_remove(i).1);
        }
        drop(idle);
        Client::to_coordinator(addr, self.coordinator.ca_pem())
            .map(|c| c.with_connect_timeout(CONNECT_TIMEOUT))
            .map_err(|e| unavailable(format!("{e:#}")))
    }

    /// Keeps a client whose request went through, for the next one.
    fn checkin(&self, addr: &str, client: Client) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < POOL_SIZE {
            idle.push((addr.to_string(), client, Instant::now()));
        }
    }
}

fn answered_locally(req: &Request) -> bool {
    let path = req.uri().path();
    let stale = req.method() == Method::GET
        && req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "stale=true" || kv == "stale"));
    // A backup streams from the coordinator asked (`backup::stream`), which takes its own barrier.
    stale || path == "/v1/health" || path == "/metrics" || path == "/v1/snapshot" || path.starts_with("/v1/debug/")
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// The middleware: serve here, barrier-then-serve, or forward.
pub async fn to_leader(State(f): State<Arc<Forwarder>>, req: Request, next: Next) -> Response {
    if answered_locally(&req) {
        return next.run(req).await;
    }
    let here = leader_here(&f.coordinator, req.method() == Method::GET).await;
    match here {
        Ok(()) => next.run(req).await,
        Err(ConsensusError::NotLeader { leader: Some(leader) }) if !req.headers().contains_key(FORWARDED) => {
            match forward(&f, &leader, req).await {
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

/// Whether this coordinator may serve a request now: `Ok` when it leads (a read confirms it
/// first with ReadIndex; a write needs only to reach the leader, since committing it through
/// Raft already orders it), else the consensus error naming the leader if one is known. With no
/// leader known (an election under way, or this coordinator just started), it waits up to
/// [`LEADER_WAIT`] for one and asks again: nothing was proposed, so that is safe, and it spares
/// every client a retry loop for the usual second or two. The API and the dashboard both use it.
pub(crate) async fn leader_here(c: &Coordinator, read: bool) -> Result<(), ConsensusError> {
    let check = || async move {
        if read {
            c.consensus.read_barrier().await
        } else {
            c.consensus.ensure_leader()
        }
    };
    let here = check().await;
    if !matches!(here, Err(ConsensusError::NoLeader)) {
        return here;
    }
    let mut status = c.consensus.watch();
    let known = status.wait_for(|s| s.leader_id != 0);
    if tokio::time::timeout(LEADER_WAIT, known).await.is_ok_and(|r| r.is_ok()) {
        return check().await;
    }
    here
}

async fn forward(f: &Forwarder, leader: &MemberRecord, req: Request) -> Result<Response, ApiError> {
    let c = &f.coordinator;
    let addr = leader.http_addr.as_str();
    let (parts, body) = req.into_parts();
    // `https::bounded_body` has already read the body, within its limits.
    let body = axum::body::to_bytes(body, super::MAX_BODY)
        .await
        .map_err(|e| ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")))?;
    let mut headers = vec![(
        header::HeaderName::from_static(FORWARDED),
        HeaderValue::from_str(&format!("{:016x}", c.consensus.id())).expect("hex is a valid header value"),
    )];
    let webhook = super::webhook::HEADERS.iter().map(|h| header::HeaderName::from_static(h));
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT].into_iter().chain(webhook) {
        if let Some(v) = parts.headers.get(&name) {
            headers.push((name, v.clone()));
        }
    }
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let what = format!("{} {}", parts.method, parts.uri.path());
    let client = f.checkout(addr)?;
    let mut status = c.consensus.watch();
    let leader_id = leader.id;
    let leader_moved = async move {
        if status.wait_for(|s| s.leader_id != leader_id).await.is_err() {
            // The Raft loop is gone: only the time bound can end the wait.
            std::future::pending::<()>().await;
        }
    };
    let retry = if parts.method == Method::GET { "retry" } else { "retry (it may or may not have been applied)" };
    let answer = tokio::select! {
        answer = tokio::time::timeout(f.timeout, client.forward(parts.method, path, &headers, body)) => answer,
        _ = leader_moved => {
            return Err(unavailable(format!(
                "the leader at {addr} lost its leadership while answering {what}, forwarded by this coordinator; {retry}"
            )));
        }
    };
    let (status, content_type, bytes) = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            return Err(unavailable(format!("forwarding {what} to the leader at {addr} failed: {e:#}; {retry}")));
        }
        Err(_) => {
            return Err(unavailable(format!(
                "the leader at {addr} did not answer {what} within {:?} (config key api.forward_timeout); {retry}",
                f.timeout
            )));
        }
    };
    f.checkin(addr, client);
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    if let Some(ct) = content_type {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(resp)
}
