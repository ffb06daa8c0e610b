//! `/v1/experiments`: define, ramp, stop, judge and delete A/B experiments. Their rows of the
//! API's route table (reading needs `read`; everything else `admin`; only stopped experiments
//! can be deleted).

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::{json_body, route, ApiError, Caller, Route, Shared, ADMIN, READ};
use crate::experiments::view::{CreateExperiment, RampExperiment, StopExperiment};

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// The experiment routes, part of [`super::routes`].
pub(super) fn routes() -> Vec<Route> {
    vec![
        route(Method::GET, "/v1/experiments", READ, list),
        route(Method::POST, "/v1/experiments", ADMIN, create),
        route(Method::GET, "/v1/experiments/{name}", READ, show),
        route(Method::DELETE, "/v1/experiments/{name}", ADMIN, delete),
        route(Method::POST, "/v1/experiments/{name}/ramp", ADMIN, ramp),
        route(Method::POST, "/v1/experiments/{name}/stop", ADMIN, stop),
    ]
}

async fn list(State(c): Shared) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.experiments()?))
}

async fn create(
    State(c): Shared,
    Caller(by): Caller,
    body: Body<CreateExperiment>,
) -> Result<impl IntoResponse, ApiError> {
    let req = json_body(body)?;
    Ok((StatusCode::CREATED, Json(c.create_experiment(req, &by).await?)))
}

async fn show(State(c): Shared, Path(name): Path<String>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(c.experiment(&name)?))
}

async fn delete(State(c): Shared, Path(name): Path<String>) -> Result<impl IntoResponse, ApiError> {
    c.delete_experiment(&name).await?;
    Ok(Json(serde_json::json!({ "deleted": name })))
}

async fn ramp(
    State(c): Shared,
    Path(name): Path<String>,
    body: Body<RampExperiment>,
) -> Result<impl IntoResponse, ApiError> {
    let req = json_body(body)?;
    Ok(Json(c.ramp_experiment(&name, &req.variants).await?))
}

async fn stop(
    State(c): Shared,
    Path(name): Path<String>,
    body: Option<Json<StopExperiment>>,
) -> Result<impl IntoResponse, ApiError> {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    Ok(Json(c.stop_experiment(&name, req.winner.as_deref()).await?))
}
