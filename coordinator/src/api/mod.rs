//! The HTTPS API: `/v1/...` JSON and `/metrics`, behind bearer tokens with roles.
//!
//! Every route is one row of [`routes`]: method, path, who may call it ([`Access`]) and handler.
//! The router is built from that table and nothing else, and each row's access is checked by a
//! guard in front of its handler, so a route cannot exist without a declared role, and the tests
//! walk the same table to try every route with every kind of credential. README's "HTTPS API"
//! section lists the routes for users.
//!
//! No token or an invalid one (unknown, revoked, expired, a join token) gets 401; a valid token
//! whose role may not do the thing gets 403. The token is checked before the request's body or
//! parameters are looked at. Any coordinator may be asked: see `forward` for how followers hand
//! requests to the leader, and `https` for the bounds every client is held to.

mod experiments;
pub(crate) mod forward;
mod https;
mod webhook;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use axum::{Json, Router};
use fifty_shared::ids::{HostName, Role};

pub use https::{serve, MAX_BODY};

use crate::config::ApiConfig;
use crate::coordinator::{Coordinator, OpError};
use crate::state::Rejection;
use crate::store::StoreError;
use crate::views::{AddRepo, CreateToken, ErrorBody, GateChange, GateView, NotifyCommits, Quarantine};

/// An API failure, rendered as `{"error": "..."}` with its status.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failure while serving the API");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("coordinator storage failure: {e}"))
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::BadRequest(m) => ApiError(StatusCode::BAD_REQUEST, m),
            OpError::NotFound(m) => ApiError(StatusCode::NOT_FOUND, m),
            OpError::Rejected(
                r @ (Rejection::UnknownHost(_)
                | Rejection::UnknownAccessor(_)
                | Rejection::UnknownRepo(_)
                | Rejection::UnknownIncident(_)
                | Rejection::UnknownWebhook(_)
                | Rejection::UnknownExperiment(_)
                | Rejection::UnknownAlert(_)),
            ) => ApiError(StatusCode::NOT_FOUND, r.to_string()),
            OpError::Rejected(r @ Rejection::TooLarge(_)) => ApiError(StatusCode::PAYLOAD_TOO_LARGE, r.to_string()),
            OpError::Rejected(r) => ApiError(StatusCode::CONFLICT, r.to_string()),
            OpError::Store(e) => e.into(),
            OpError::Consensus(e @ crate::consensus::ConsensusError::TooLarge { .. }) => {
                ApiError(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            OpError::Consensus(e) => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

type Shared = State<Arc<Coordinator>>;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with no token: `/v1/health`, and the GitHub webhook, which instead carries an
    /// HMAC signature made with the repository's secret (checked by its handler).
    Public,
    /// A bearer token whose role allows this one ([`Role::allows`]).
    Token(Role),
}

const READ: Access = Access::Token(Role::Read);
const CI: Access = Access::Token(Role::Ci);
const ADMIN: Access = Access::Token(Role::Admin);

/// One route of the API: method, path (axum syntax, `{name}` for a parameter), who may call it,
/// and its handler.
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    handler: MethodRouter<Arc<Coordinator>>,
}

fn route<H, T>(method: Method, path: &'static str, access: Access, handler: H) -> Route
where
    H: Handler<T, Arc<Coordinator>>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("the table uses standard methods");
    Route { method, path, access, handler: axum::routing::on(filter, handler) }
}

/// Every route of the API, with the role it needs. The router is built from this table alone.
pub fn routes() -> Vec<Route> {
    use Access::Public;
    use Method as M;
    let mut table = vec![
        route(M::GET, "/v1/health", Public, health),
        route(M::GET, "/v1/status", READ, status),
        route(M::GET, "/v1/hosts", READ, hosts),
        route(M::DELETE, "/v1/hosts/{name}", ADMIN, remove_host),
        route(M::GET, "/v1/tokens", ADMIN, list_tokens),
        route(M::POST, "/v1/tokens", ADMIN, create_token),
        route(M::DELETE, "/v1/tokens/{accessor}", ADMIN, revoke_token),
        route(M::GET, "/v1/repos", READ, list_repos),
        route(M::POST, "/v1/repos", ADMIN, add_repo),
        route(M::GET, "/v1/repos/{repo}/gate", READ, gate),
        route(M::POST, "/v1/repos/{repo}/gate/close", ADMIN, close_gate),
        route(M::POST, "/v1/repos/{repo}/gate/open", ADMIN, open_gate),
        route(M::POST, "/v1/repos/{repo}/commits", CI, notify_commits),
        route(M::GET, "/v1/repos/{repo}/tests", READ, tests),
        route(M::POST, "/v1/repos/{repo}/quarantine", ADMIN, quarantine),
        route(M::GET, "/v1/commits", READ, commits),
        route(M::GET, "/v1/commits/{sha}", READ, commit),
        route(M::GET, "/v1/commits/{sha}/log", READ, commit_log),
        route(M::POST, "/v1/webhooks/github", Public, webhook::github),
        route(M::GET, "/v1/releases", READ, releases),
        route(M::GET, "/v1/rollouts/current", READ, rollout),
        route(M::POST, "/v1/rollouts/current/{action}", ADMIN, steer_rollout),
        route(M::POST, "/v1/rollback", ADMIN, rollback),
        route(M::GET, "/v1/incidents", READ, incidents),
        route(M::GET, "/v1/incidents/{id}", READ, incident),
        route(M::POST, "/v1/incidents/{id}", ADMIN, change_incident),
        route(M::GET, "/v1/notify/webhooks", READ, webhooks),
        route(M::POST, "/v1/notify/webhooks", ADMIN, add_webhook),
        route(M::DELETE, "/v1/notify/webhooks/{id}", ADMIN, remove_webhook),
        route(M::GET, "/v1/cluster/members", READ, members),
        route(M::DELETE, "/v1/cluster/members/{id}", ADMIN, remove_member),
        route(M::POST, "/v1/cluster/check", ADMIN, cluster_check),
        route(M::GET, "/v1/snapshot", ADMIN, snapshot),
        route(M::POST, "/v1/debug/isolate", ADMIN, isolate),
        route(M::POST, "/v1/debug/deploy", ADMIN, debug_deploy),
        route(M::POST, "/v1/debug/raft", ADMIN, debug_raft),
        route(M::GET, "/metrics", READ, metrics),
        route(M::GET, "/v1/alerts", READ, alerts),
        route(M::POST, "/v1/alerts/{id}/ack", ADMIN, ack_alert),
        route(M::GET, "/v1/alerts/rules", READ, alert_rules),
        route(M::POST, "/v1/alerts/rules", ADMIN, add_alert_rule),
        route(M::DELETE, "/v1/alerts/rules/{rule}", ADMIN, remove_alert_rule),
        route(M::POST, "/v1/alerts/rules/{rule}/silence", ADMIN, silence_alert_rule),
        route(M::GET, "/v1/fleet/top", READ, fleet_top),
        route(M::GET, "/v1/fleet/series", READ, fleet_series),
        route(M::GET, "/v1/immune/size", READ, immune_size),
    ];
    table.extend(experiments::routes());
    table
}

/// The API's router: [`routes`], each behind the guard of its access; requests bounded
/// (`https::bounded_body`) and, on a follower, handed to the leader (`forward`).
pub fn router(coordinator: Arc<Coordinator>) -> Router {
    let limits: ApiConfig = coordinator.config.api.clone();
    let mut router = Router::new();
    for r in routes() {
        let guard = Guard { coordinator: coordinator.clone(), access: r.access };
        router = router.route(r.path, r.handler.route_layer(axum::middleware::from_fn_with_state(guard, guard_route)));
    }
    let forwarder = Arc::new(forward::Forwarder::new(coordinator.clone(), limits.forward_timeout));
    // The dashboard (`/ui/...`) shares the port and TLS but has its own guard (sessions, CSRF),
    // its own leader forwarding and HTML errors, so it is merged after the API's layers.
    let ui = crate::ui::router(coordinator.clone())
        .layer(axum::middleware::from_fn_with_state(limits.body_read_timeout, https::bounded_body));
    router
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such API path".into()) })
        .layer(axum::middleware::from_fn_with_state(forwarder, forward::to_leader))
        .layer(axum::middleware::from_fn_with_state(limits.body_read_timeout, https::bounded_body))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(coordinator)
        .merge(ui)
}

/// Makes every error answer JSON. The API's own errors are ([`ApiError`]); axum's rejections (a
/// query, path or body that does not parse, a method the path does not take) are plain text, and
/// become `{"error": "..."}` here.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json || !(resp.status().is_client_error() || resp.status().is_server_error()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.map(|b| String::from_utf8_lossy(&b).trim().to_string());
    let message = match text {
        Ok(t) if !t.is_empty() => t,
        _ => parts.status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let mut out = ApiError(parts.status, message).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// The state of one route's guard: what the route needs.
#[derive(Clone)]
struct Guard {
    coordinator: Arc<Coordinator>,
    access: Access,
}

/// Checks the caller against the route's access before the handler (or anything that reads the
/// body) runs, and leaves who called in the request as a [`Caller`].
async fn guard_route(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    if let Access::Token(needed) = g.access {
        match authorize(&g.coordinator, req.headers(), needed) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
            }
            Err(e) => return e.into_response(),
        }
    }
    next.run(req).await
}

/// Who is calling: the token's accessor and description, for records such as who closed a gate.
/// Only routes that need a token have one.
#[derive(Clone, Debug)]
pub struct Caller(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, "this route takes no token, so it cannot say who calls".into())
        })
    }
}

/// The token of an `Authorization` header value: the scheme `Bearer` in any case (RFC 9110
/// makes auth schemes case-insensitive), then the token.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Checks the bearer token in `headers` against the role `needed`; returns who is calling.
fn authorize(coordinator: &Coordinator, headers: &HeaderMap, needed: Role) -> Result<Caller, ApiError> {
    let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, m.to_string());
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing token: send `Authorization: Bearer <token>` (FIFTY_TOKEN for the CLI)"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(bearer)
        .ok_or_else(|| unauthorized("malformed Authorization header: expected `Bearer <token>`"))?;
    match coordinator.authenticate(token)? {
        None => Err(unauthorized("invalid, expired or revoked token")),
        Some(t) if t.role.allows(needed) => Ok(Caller(match t.description.as_str() {
            "" => format!("token {}", t.accessor),
            d => format!("token {} ({d})", t.accessor),
        })),
        Some(t) => {
            Err(ApiError(StatusCode::FORBIDDEN, format!("a {} token may not do this; it needs {needed}", t.role)))
        }
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn status(State(c): Shared) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.status()?))
}

async fn hosts(State(c): Shared) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.hosts()?))
}

async fn remove_host(State(c): Shared, Path(name): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let name = HostName::new(&name).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let serial = c.remove_host(&name).await?;
    Ok(Json(serde_json::json!({ "removed": name.as_str(), "revoked_serial": serial })))
}

async fn list_tokens(State(c): Shared) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.tokens()?))
}

async fn create_token(
    State(c): Shared,
    body: Result<Json<CreateToken>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req = json_body(body)?;
    Ok((StatusCode::CREATED, Json(c.create_token(req).await?)))
}

async fn revoke_token(State(c): Shared, Path(accessor): Path<String>) -> Result<impl IntoResponse, ApiError> {
    c.revoke_token(&accessor).await?;
    Ok(Json(serde_json::json!({ "revoked": accessor })))
}

async fn list_repos(State(c): Shared) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.repos()?))
}

async fn add_repo(
    State(c): Shared,
    body: Result<Json<AddRepo>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req = json_body(body)?;
    Ok((StatusCode::CREATED, Json(c.add_repo(req).await?)))
}

#[derive(serde::Deserialize)]
struct GateQuery {
    branch: Option<String>,
    message: Option<String>,
    reverts: Option<String>,
}

async fn gate(
    State(c): Shared,
    Path(repo): Path<String>,
    Query(q): Query<GateQuery>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.gate(&repo, q.branch.as_deref(), q.message.as_deref(), q.reverts.as_deref())?))
}

async fn change_gate(
    c: Arc<Coordinator>,
    by: String,
    repo: String,
    body: Option<GateChange>,
    close: bool,
) -> Result<Json<GateView>, ApiError> {
    Ok(Json(c.set_gate(&repo, body.unwrap_or_default(), close, &by).await?))
}

async fn close_gate(
    State(c): Shared,
    Caller(by): Caller,
    Path(repo): Path<String>,
    body: Option<Json<GateChange>>,
) -> Result<impl IntoResponse, ApiError> {
    change_gate(c, by, repo, body.map(|Json(b)| b), true).await
}

async fn open_gate(
    State(c): Shared,
    Caller(by): Caller,
    Path(repo): Path<String>,
    body: Option<Json<GateChange>>,
) -> Result<impl IntoResponse, ApiError> {
    change_gate(c, by, repo, body.map(|Json(b)| b), false).await
}

/// A JSON body, or a JSON error naming what was wrong with it (413 if it was too large).
fn json_body<T>(body: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| {
        let status = match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, format!("request body: {}", e.body_text()))
    })
}

async fn notify_commits(
    State(c): Shared,
    Path(repo): Path<String>,
    body: Result<Json<NotifyCommits>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req = json_body(body)?;
    Ok(Json(c.notify_commits(&repo, req.branch, req.commits, None).await?))
}

async fn tests(State(c): Shared, Path(repo): Path<String>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.tests_view(&repo)?))
}

async fn quarantine(
    State(c): Shared,
    Caller(by): Caller,
    Path(repo): Path<String>,
    body: Result<Json<Quarantine>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req = json_body(body)?;
    c.quarantine(&repo, &req.test, req.on, &by).await?;
    Ok(Json(c.tests_view(&repo)?))
}

#[derive(serde::Deserialize)]
struct CommitsQuery {
    repo: Option<String>,
    limit: Option<usize>,
    shard: Option<u32>,
    package: Option<bool>,
    attempt: Option<u32>,
}

async fn commits(State(c): Shared, Query(q): Query<CommitsQuery>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.commits(q.repo.as_deref(), q.limit.unwrap_or(20).clamp(1, 1000))?))
}

async fn commit(
    State(c): Shared,
    Path(sha): Path<String>,
    Query(q): Query<CommitsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.commit_view(&sha, q.repo.as_deref())?))
}

async fn commit_log(
    State(c): Shared,
    Path(sha): Path<String>,
    Query(q): Query<CommitsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let bytes = c.commit_log(&sha, q.repo.as_deref(), q.shard, q.package.unwrap_or(false), q.attempt)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes))
}

#[derive(serde::Deserialize)]
struct RepoQuery {
    repo: Option<String>,
}

async fn releases(State(c): Shared, Query(q): Query<RepoQuery>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.releases(q.repo.as_deref())?))
}

async fn rollout(State(c): Shared, Query(q): Query<RepoQuery>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.rollout_view(q.repo.as_deref())?))
}

async fn steer_rollout(
    State(c): Shared,
    Caller(by): Caller,
    Path(action): Path<String>,
    Query(q): Query<RepoQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let rollout = c.steer_rollout(q.repo.as_deref(), &action, &by).await?;
    Ok(Json(c.view_of(&rollout)?))
}

async fn rollback(
    State(c): Shared,
    Caller(by): Caller,
    body: Option<Json<crate::views::RollbackRequest>>,
) -> Result<impl IntoResponse, ApiError> {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let rollout = c.rollback(req.repo.as_deref(), req.to, &by).await?;
    Ok(Json(c.view_of(&rollout)?))
}

fn number(text: &str, what: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("{text:?} is not {what} number")))
}

async fn incidents(State(c): Shared) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.incidents()?))
}

async fn incident(State(c): Shared, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.incident(number(&id, "an incident")?)?))
}

async fn change_incident(
    State(c): Shared,
    Caller(by): Caller,
    Path(id): Path<String>,
    body: Result<Json<crate::incidents::Change>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let change = json_body(body)?;
    Ok(Json(c.change_incident(number(&id, "an incident")?, change, &by).await?))
}

async fn webhooks(State(c): Shared) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.webhooks()?))
}

async fn add_webhook(
    State(c): Shared,
    Caller(by): Caller,
    body: Result<Json<crate::views::AddWebhook>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.add_webhook(json_body(body)?, &by).await?))
}

async fn remove_webhook(State(c): Shared, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.remove_webhook(number(&id, "a webhook")?).await?))
}

/// A backup of the whole cluster (`fifty snapshot save`), streamed: see `backup`. Served by the
/// coordinator asked, not forwarded (a backup can be far larger than a forwarded answer may be);
/// on the leader it holds every write acknowledged before the request.
async fn snapshot(State(c): Shared) -> Result<Response, ApiError> {
    let (header, body) = crate::backup::stream(&c.consensus)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("backup not taken: {e:#}")))?;
    let name = format!("attachment; filename=\"fifty-{:016x}-{}.backup\"", header.taken_by, header.index);
    let mut resp = Response::new(body);
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = header::HeaderValue::from_str(&name) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

async fn cluster_check(State(c): Shared) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.cluster_check().await?))
}

async fn members(State(c): Shared) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.cluster()?))
}

async fn remove_member(State(c): Shared, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let node = u64::from_str_radix(id.trim_start_matches("0x"), 16).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a node id (16 hex digits, see `fifty cluster members`)"),
        )
    })?;
    c.consensus.remove_member(node).await.map_err(OpError::from)?.map_err(OpError::from)?;
    Ok(Json(serde_json::json!({ "removed": format!("{node:016x}") })))
}

/// The `/v1/debug/...` routes answer only where the config says `fault_injection = true`.
fn fault_injection_on(c: &Coordinator) -> Result<(), ApiError> {
    if c.config.fault_injection {
        return Ok(());
    }
    Err(ApiError(
        StatusCode::FORBIDDEN,
        "fault injection is off on this coordinator (config key fault_injection)".into(),
    ))
}

#[derive(serde::Deserialize)]
struct Isolate {
    isolated: bool,
}

async fn isolate(
    State(c): Shared,
    body: Result<Json<Isolate>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    fault_injection_on(&c)?;
    let req = json_body(body)?;
    c.consensus.transport().set_isolated(req.isolated);
    Ok(Json(serde_json::json!({ "isolated": req.isolated })))
}

#[derive(serde::Deserialize)]
struct DebugRaft {
    fault: crate::consensus::Fault,
}

/// Fault injection: the Raft loop panics, or the leader proposes an entry nobody can decode.
async fn debug_raft(
    State(c): Shared,
    body: Result<Json<DebugRaft>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    fault_injection_on(&c)?;
    let req = json_body(body)?;
    c.consensus.inject_fault(req.fault).map_err(OpError::from)?;
    Ok(Json(serde_json::json!({ "injected": true })))
}

#[derive(serde::Deserialize)]
struct DebugDeploy {
    host: String,
    release: u64,
    tamper: String,
}

async fn debug_deploy(
    State(c): Shared,
    body: Result<Json<DebugDeploy>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    fault_injection_on(&c)?;
    let req = json_body(body)?;
    let host = HostName::new(&req.host).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    c.debug_deploy(&host, req.release, &req.tamper).await?;
    Ok(Json(serde_json::json!({ "sent": true })))
}

/// `/metrics` in the format the scraper asks for: Prometheus text 0.0.4 unless its `Accept`
/// prefers OpenMetrics.
async fn metrics(State(c): Shared, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    let format = crate::metrics::Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let status = c.status()?;
    let raft = c.consensus.status();
    c.metrics.set_raft(raft.term, raft.commit, raft.applied, raft.is_leader());
    let pending = c.consensus.store().notifications()?.iter().filter(|n| n.to.iter().any(|(_, done)| !done)).count();
    c.metrics.set_alerts_firing(c.consensus.store().firing_alerts()?.len());
    c.metrics.set_queues(pending, c.immune.lock().expect("immune lock").series.len());
    let body = c.metrics.render(status.hosts.ready, status.hosts.down, status.agent_links, status.uptime_secs);
    Ok(([(header::CONTENT_TYPE, format.content_type())], format.encode(body)))
}

// ---- monitoring and alerting ---------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct AlertsQuery {
    limit: Option<usize>,
}

async fn alerts(State(c): Shared, Query(q): Query<AlertsQuery>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.alerts(q.limit.unwrap_or(20))?))
}

async fn ack_alert(
    State(c): Shared,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.ack_alert(number(&id, "an alert")?, &by).await?))
}

async fn alert_rules(State(c): Shared) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.alert_rules()?))
}

async fn add_alert_rule(
    State(c): Shared,
    Caller(by): Caller,
    body: Result<Json<crate::alerts::RuleSpec>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.add_alert_rule(json_body(body)?, &by).await?))
}

async fn remove_alert_rule(State(c): Shared, Path(rule): Path<String>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.remove_alert_rule(&rule).await?))
}

async fn silence_alert_rule(
    State(c): Shared,
    Path(rule): Path<String>,
    body: Result<Json<crate::alerts::ops::Silence>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.silence_alert_rule(&rule, json_body(body)?).await?))
}

async fn fleet_top(State(c): Shared) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.fleet_top()?))
}

async fn fleet_series(
    State(c): Shared,
    Query(q): Query<crate::alerts::live::SeriesQuery>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.fleet_series(&q)?))
}

/// Runs a bounded, seeded simulation (a second or so): off the async threads.
/// Sizings running at once: each simulates a hundred waves on a blocking thread, so a read
/// token asking over and over must not take every core of a coordinator.
static SIZINGS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// A permit to run one sizing, or 429 while another one runs.
fn sizing_permit() -> Result<tokio::sync::SemaphorePermit<'static>, ApiError> {
    SIZINGS.try_acquire().map_err(|_| {
        ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            "another sizing is running on this coordinator; retry in a few seconds".into(),
        )
    })
}

async fn immune_size(
    State(c): Shared,
    Query(q): Query<crate::views::SizeQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let permit = sizing_permit()?;
    let sized = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        c.immune_size(&q)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the sizing stopped: {e}")))??;
    Ok(Json(sized))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One sizing at a time: while one holds its permit another is refused with 429 (as JSON,
    /// like every error); once it ends the next one runs.
    #[test]
    fn one_sizing_runs_at_a_time() {
        let Ok(first) = sizing_permit() else { panic!("the first sizing runs") };
        let refused = sizing_permit().err().expect("a second one at the same time is refused");
        assert_eq!(refused.0, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.1.contains("another sizing is running"), "{}", refused.1);
        drop(first);
        assert!(sizing_permit().is_ok(), "the next sizing runs once the first ended");
    }
}
