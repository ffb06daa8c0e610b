//! `/v1/experiments`: define, ramp, stop, judge and delete A/B experiments.
//!
//! | route | role |
//! | --- | --- |
//! | `GET /v1/experiments`, `GET /v1/experiments/{name}` | read |
//! | `POST /v1/experiments`, `POST /v1/experiments/{name}/ramp`, `POST /v1/experiments/{name}/stop`, `DELETE /v1/experiments/{name}` (stopped ones) | admin |

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use fifty_shared::ids::Role;

use super::{authorize, json_body, ApiError, Shared};
use crate::experiments::view::{CreateExperiment, RampExperiment, StopExperiment};

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// The experiment routes, merged into the API's router.
pub fn routes() -> Router<std::sync::Arc<crate::coordinator::Coordinator>> {
    Router::new()
        .route("/v1/experiments", get(list).post(create))
        .route("/v1/experiments/{name}", get(show).delete(delete))
        .route("/v1/experiments/{name}/ramp", post(ramp))
        .route("/v1/experiments/{name}/stop", post(stop))
}

async fn list(State(c): Shared, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.experiments()?))
}

async fn create(
    State(c): Shared,
    headers: HeaderMap,
    body: Body<CreateExperiment>,
) -> Result<impl IntoResponse, ApiError> {
    let by = authorize(&c, &headers, Role::Admin)?;
    let req = json_body(body)?;
    Ok((StatusCode::CREATED, Json(c.create_experiment(req, &by).await?)))
}

async fn show(State(c): Shared, headers: HeaderMap, Path(name): Path<String>) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Read)?;
    Ok(Json(c.experiment(&name)?))
}

async fn delete(State(c): Shared, headers: HeaderMap, Path(name): Path<String>) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
    c.delete_experiment(&name).await?;
    Ok(Json(serde_json::json!({ "deleted": name })))
}

async fn ramp(
    State(c): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body<RampExperiment>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
    let req = json_body(body)?;
    Ok(Json(c.ramp_experiment(&name, &req.variants).await?))
}

async fn stop(
    State(c): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Option<Json<StopExperiment>>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&c, &headers, Role::Admin)?;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    Ok(Json(c.stop_experiment(&name, req.winner.as_deref()).await?))
}
