//! The HTTPS API: `/v1/...` JSON and `/metrics`, behind bearer tokens with roles.
//!
//! | route | role |
//! | --- | --- |
//! | `GET /v1/health` | none |
//! | `GET /v1/status`, `GET /v1/hosts`, `GET /metrics` | read |
//! | `GET /v1/tokens`, `POST /v1/tokens`, `DELETE /v1/tokens/{accessor}`, `DELETE /v1/hosts/{name}` | admin |
//! | `GET /v1/repos`, `GET /v1/repos/{repo}/gate?branch=&message=&reverts=` | read |
//! | `POST /v1/repos`, `POST /v1/repos/{repo}/gate/close`, `POST /v1/repos/{repo}/gate/open` | admin |
//! | `GET /v1/commits?repo=&limit=`, `GET /v1/commits/{sha}?repo=`, `GET /v1/commits/{sha}/log?shard=&attempt=` | read |
//! | `GET /v1/repos/{repo}/tests` | read |
//! | `POST /v1/repos/{repo}/commits` | ci |
//! | `POST /v1/repos/{repo}/quarantine` | admin |
//! | `POST /v1/webhooks/github` | none: an HMAC-SHA256 signature with the repository's secret (`webhook`) |
//! | `GET /v1/releases?repo=`, `GET /v1/rollouts/current?repo=` | read |
//! | `POST /v1/rollouts/current/{promote,pause,resume,abort}?repo=`, `POST /v1/rollback` | admin |
//! | `GET /v1/incidents`, `GET /v1/incidents/{id}`, `GET /v1/notify/webhooks` | read |
//! | `POST /v1/incidents/{id}` (a why, an action, close), `POST /v1/notify/webhooks`, `DELETE /v1/notify/webhooks/{id}` | admin |
//! | `GET /v1/alerts?limit=`, `GET /v1/alerts/rules`, `GET /v1/fleet/top`, `GET /v1/fleet/series?host=&since=` | read |
//! | `POST /v1/alerts/{id}/ack`, `POST /v1/alerts/rules`, `DELETE /v1/alerts/rules/{rule}`, `POST /v1/alerts/rules/{rule}/silence` | admin |
//! | `GET /v1/cluster/members` | read |
//! | `DELETE /v1/cluster/members/{id}` | admin |
//! | `POST /v1/cluster/check` | admin |
//! | `GET /v1/experiments`, `GET /v1/experiments/{name}` (see `experiments`) | read |
//! | `POST /v1/experiments`, `POST /v1/experiments/{name}/{ramp,stop}` | admin |
//! | `POST /v1/debug/isolate`, `POST /v1/debug/deploy`, `POST /v1/debug/raft` | admin, and only with `fault_injection = true` |
//!
//! No token or an invalid one gets 401; a valid token whose role may not do the thing gets 403.
//! Any coordinator may be asked: see `forward` for how followers hand requests to the leader.

mod experiments;
mod forward;
mod https;
mod webhook;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use fifty_shared::ids::{HostName, Role};

pub use https::serve;

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

/// Checks the bearer token in `headers` against the role `needed`; returns who is calling
/// (the token's accessor and description), for records such as who closed a gate.
fn authorize(coordinator: &Coordinator, headers: &HeaderMap, needed: Role) -> Result<String, ApiError> {
    let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, m.to_string());
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing token: send `Authorization: Bearer <token>` (FIFTY_TOKEN for the CLI)"))?;
    let bearer = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("malformed Authorization header: expected `Bearer <token>`"))?;
    match coordinator.authenticate(bearer)? {
        None => Err(unauthorized("invalid, expired or revoked token")),
        Some(t) if t.role.allows(needed) => Ok(match t.description.as_str() {
            "" => format!("token {}", t.accessor),
            d => format!("token {} ({d})", t.accessor),
        }),
        Some(t) => {
            Err(ApiError(StatusCode::FORBIDDEN, format!("a {} token may not do this; it needs {needed}", t.role)))
        }
    }
}

/// The API's routes.
pub fn router(coordinator: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/status", get(status))
        .route("/v1/hosts", get(hosts))
        .route("/v1/hosts/{name}", delete(remove_host))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{accessor}", delete(revoke_token))
        .route("/v1/repos", get(list_repos).post(add_repo))
        .route("/v1/repos/{repo}/gate", get(gate))
        .route("/v1/repos/{repo}/gate/close", post(close_gate))
        .route("/v1/repos/{repo}/gate/open", post(open_gate))
        .route("/v1/repos/{repo}/commits", post(notify_commits))
        .route("/v1/repos/{repo}/tests", get(tests))
        .route("/v1/repos/{repo}/quarantine", post(quarantine))
        .route("/v1/commits", get(commits))
        .route("/v1/commits/{sha}", get(commit))
        .route("/v1/commits/{sha}/log", get(commit_log))
        .route("/v1/webhooks/github", post(webhook::github))
        .route("/v1/releases", get(releases))
        .route("/v1/rollouts/current", get(rollout))
        .route("/v1/rollouts/current/{action}", post(steer_rollout))
        .route("/v1/rollback", post(rollback))
        .route("/v1/incidents", get(incidents))
        .route("/v1/incidents/{id}", get(incident).post(change_incident))
        .route("/v1/notify/webhooks", get(webhooks).post(add_webhook))
        .route("/v1/notify/webhooks/{id}", delete(remove_webhook))
        .route("/v1/cluster/members", get(members))
        .route("/v1/cluster/check", post(cluster_check))
        .route("/v1/cluster/members/{id}", delete(remove_member))
        .route("/v1/debug/isolate", post(isolate))
        .route("/v1/debug/deploy", post(debug_deploy))
        .route("/v1/debug/raft", post(debug_raft))
        .route("/metrics", get(metrics))
        .merge(experiments::routes())
        .route("/v1/alerts", get(alerts))
        .route("/v1/alerts/{id}/ack", post(ack_alert))
        .route("/v1/alerts/rules", get(alert_rules).post(add_alert_rule))
        .route("/v1/alerts/rules/{rule}", delete(remove_alert_rule))
        .route("/v1/alerts/rules/{rule}/silence", post(silence_alert_rule))
        .route("/v1/fleet/top", get(fleet_top))
        .route("/v1/fleet/series", get(fleet_series))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such API path".into()) })
        .layer(axum::middleware::from_fn_with_state(coordinator.clone(), forward::to_leader))
        .with_state(coordinator)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn status(State(c): Shared, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.status()?))
}

async fn hosts(State(c): Shared, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.hosts()?))
}

async fn remove_host(
    State(c): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
    let name = HostName::new(&name).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let serial = c.remove_host(&name).await?;
    Ok(Json(serde_json::json!({ "removed": name.as_str(), "revoked_serial": serial })))
}

async fn list_tokens(State(c): Shared, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
    Ok(Json(c.tokens()?))
}

async fn create_token(
    State(c): Shared,
    headers: HeaderMap,
    body: Result<Json<CreateToken>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
    let req = json_body(body)?;
    Ok((StatusCode::CREATED, Json(c.create_token(req).await?)))
}

async fn revoke_token(
    State(c): Shared,
    headers: HeaderMap,
    Path(accessor): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
    c.revoke_token(&accessor).await?;
    Ok(Json(serde_json::json!({ "revoked": accessor })))
}

async fn list_repos(State(c): Shared, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.repos()?))
}

async fn add_repo(
    State(c): Shared,
    headers: HeaderMap,
    body: Result<Json<AddRepo>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
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
    headers: HeaderMap,
    Path(repo): Path<String>,
    Query(q): Query<GateQuery>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.gate(&repo, q.branch.as_deref(), q.message.as_deref(), q.reverts.as_deref())?))
}

async fn change_gate(
    c: Arc<Coordinator>,
    headers: HeaderMap,
    repo: String,
    body: Option<GateChange>,
    close: bool,
) -> Result<Json<GateView>, ApiError> {
    let by = authorize(&c, &headers, Role::Admin)?;
    Ok(Json(c.set_gate(&repo, body.unwrap_or_default(), close, &by).await?))
}

async fn close_gate(
    State(c): Shared,
    headers: HeaderMap,
    Path(repo): Path<String>,
    body: Option<Json<GateChange>>,
) -> Result<impl IntoResponse, ApiError> {
    change_gate(c, headers, repo, body.map(|Json(b)| b), true).await
}

async fn open_gate(
    State(c): Shared,
    headers: HeaderMap,
    Path(repo): Path<String>,
    body: Option<Json<GateChange>>,
) -> Result<impl IntoResponse, ApiError> {
    change_gate(c, headers, repo, body.map(|Json(b)| b), false).await
}

fn json_body<T>(body: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("request body: {}", e.body_text())))
}

async fn notify_commits(
    State(c): Shared,
    headers: HeaderMap,
    Path(repo): Path<String>,
    body: Result<Json<NotifyCommits>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Ci)?;
    let req = json_body(body)?;
    Ok(Json(c.notify_commits(&repo, req.branch, req.commits, None).await?))
}

async fn tests(State(c): Shared, headers: HeaderMap, Path(repo): Path<String>) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.tests_view(&repo)?))
}

async fn quarantine(
    State(c): Shared,
    headers: HeaderMap,
    Path(repo): Path<String>,
    body: Result<Json<Quarantine>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let by = authorize(&c, &headers, Role::Admin)?;
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

async fn commits(
    State(c): Shared,
    headers: HeaderMap,
    Query(q): Query<CommitsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.commits(q.repo.as_deref(), q.limit.unwrap_or(20).clamp(1, 1000))?))
}

async fn commit(
    State(c): Shared,
    headers: HeaderMap,
    Path(sha): Path<String>,
    Query(q): Query<CommitsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.commit_view(&sha, q.repo.as_deref())?))
}

async fn commit_log(
    State(c): Shared,
    headers: HeaderMap,
    Path(sha): Path<String>,
    Query(q): Query<CommitsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    let bytes = c.commit_log(&sha, q.repo.as_deref(), q.shard, q.package.unwrap_or(false), q.attempt)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes))
}

#[derive(serde::Deserialize)]
struct RepoQuery {
    repo: Option<String>,
}

async fn releases(
    State(c): Shared,
    headers: HeaderMap,
    Query(q): Query<RepoQuery>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.releases(q.repo.as_deref())?))
}

async fn rollout(
    State(c): Shared,
    headers: HeaderMap,
    Query(q): Query<RepoQuery>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.rollout_view(q.repo.as_deref())?))
}

async fn steer_rollout(
    State(c): Shared,
    headers: HeaderMap,
    Path(action): Path<String>,
    Query(q): Query<RepoQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let by = authorize(&c, &headers, Role::Admin)?;
    let rollout = c.steer_rollout(q.repo.as_deref(), &action, &by).await?;
    Ok(Json(c.view_of(&rollout)?))
}

async fn rollback(
    State(c): Shared,
    headers: HeaderMap,
    body: Option<Json<crate::views::RollbackRequest>>,
) -> Result<impl IntoResponse, ApiError> {
    let by = authorize(&c, &headers, Role::Admin)?;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let rollout = c.rollback(req.repo.as_deref(), req.to, &by).await?;
    Ok(Json(c.view_of(&rollout)?))
}

fn number(text: &str, what: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("{text:?} is not {what} number")))
}

async fn incidents(State(c): Shared, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.incidents()?))
}

async fn incident(State(c): Shared, headers: HeaderMap, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.incident(number(&id, "an incident")?)?))
}

async fn change_incident(
    State(c): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<crate::incidents::Change>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let by = authorize(&c, &headers, Role::Admin)?;
    let change = json_body(body)?;
    Ok(Json(c.change_incident(number(&id, "an incident")?, change, &by).await?))
}

async fn webhooks(State(c): Shared, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.webhooks()?))
}

async fn add_webhook(
    State(c): Shared,
    headers: HeaderMap,
    body: Result<Json<crate::views::AddWebhook>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let by = authorize(&c, &headers, Role::Admin)?;
    Ok(Json(c.add_webhook(json_body(body)?, &by).await?))
}

async fn remove_webhook(
    State(c): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
    Ok(Json(c.remove_webhook(number(&id, "a webhook")?).await?))
}

async fn cluster_check(State(c): Shared, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
    Ok(Json(c.cluster_check().await?))
}

async fn members(State(c): Shared, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.cluster()?))
}

async fn remove_member(
    State(c): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
    let node = u64::from_str_radix(id.trim_start_matches("0x"), 16).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a node id (16 hex digits, see `fifty cluster members`)"),
        )
    })?;
    c.consensus.remove_member(node).await.map_err(OpError::from)?.map_err(OpError::from)?;
    Ok(Json(serde_json::json!({ "removed": format!("{node:016x}") })))
}

#[derive(serde::Deserialize)]
struct Isolate {
    isolated: bool,
}

async fn isolate(
    State(c): Shared,
    headers: HeaderMap,
    Json(req): Json<Isolate>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
    if !c.config.fault_injection {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "fault injection is off on this coordinator (config key fault_injection)".into(),
        ));
    }
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
    headers: HeaderMap,
    Json(req): Json<DebugRaft>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
    if !c.config.fault_injection {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "fault injection is off on this coordinator (config key fault_injection)".into(),
        ));
    }
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
    headers: HeaderMap,
    Json(req): Json<DebugDeploy>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
    if !c.config.fault_injection {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "fault injection is off on this coordinator (config key fault_injection)".into(),
        ));
    }
    let host = HostName::new(&req.host).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    c.debug_deploy(&host, req.release, &req.tamper).await?;
    Ok(Json(serde_json::json!({ "sent": true })))
}

async fn metrics(State(c): Shared, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    let status = c.status()?;
    let raft = c.consensus.status();
    c.metrics.set_raft(raft.term, raft.commit, raft.applied, raft.is_leader());
    let pending = c.consensus.store().notifications()?.iter().filter(|n| n.to.iter().any(|(_, done)| !done)).count();
    c.metrics.set_alerts_firing(c.consensus.store().firing_alerts()?.len());
    c.metrics.set_queues(pending, c.immune.lock().expect("immune lock").series.len());
    let body = c.metrics.render(status.hosts.ready, status.hosts.down, status.agent_links, status.uptime_secs);
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body))
}

// ---- monitoring and alerting ---------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct AlertsQuery {
    limit: Option<usize>,
}

async fn alerts(
    State(c): Shared,
    headers: HeaderMap,
    Query(q): Query<AlertsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.alerts(q.limit.unwrap_or(20))?))
}

async fn ack_alert(
    State(c): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let by = authorize(&c, &headers, Role::Admin)?;
    Ok(Json(c.ack_alert(number(&id, "an alert")?, &by).await?))
}

async fn alert_rules(State(c): Shared, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.alert_rules()?))
}

async fn add_alert_rule(
    State(c): Shared,
    headers: HeaderMap,
    body: Result<Json<crate::alerts::RuleSpec>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let by = authorize(&c, &headers, Role::Admin)?;
    Ok(Json(c.add_alert_rule(json_body(body)?, &by).await?))
}

async fn remove_alert_rule(
    State(c): Shared,
    headers: HeaderMap,
    Path(rule): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
    Ok(Json(c.remove_alert_rule(&rule).await?))
}

async fn silence_alert_rule(
    State(c): Shared,
    headers: HeaderMap,
    Path(rule): Path<String>,
    body: Result<Json<crate::alerts::ops::Silence>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
    Ok(Json(c.silence_alert_rule(&rule, json_body(body)?).await?))
}

async fn fleet_top(State(c): Shared, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.fleet_top()?))
}

async fn fleet_series(
    State(c): Shared,
    headers: HeaderMap,
    Query(q): Query<crate::alerts::live::SeriesQuery>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.fleet_series(&q)?))
}
