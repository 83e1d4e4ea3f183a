//! Reading projection plugins: their folded state and their own named queries.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::AppState;
use super::errors::ApiError;
use super::extract::{Path, Query};
use crate::runtime::ProjectionStatus;

/// A projection's state, the global position it has folded up to, and where it stands.
#[derive(Serialize, ToSchema)]
pub struct ProjectionResponse {
    position: u64,
    status: ProjectionStatus,
    /// Null until the projection has restored its checkpoint.
    state: Value,
}

/// `GET /projections/{plugin}`.
#[utoipa::path(get, path = "/projections/{plugin}", tag = "projections",
    params(("plugin" = String, Path)),
    responses((status = 200, body = ProjectionResponse), (status = 404, body = ApiError)))]
pub async fn state(
    State(state): State<AppState>,
    Path(plugin): Path<String>,
) -> Result<Json<ProjectionResponse>, ApiError> {
    tracing::Span::current().record("plugin", plugin.as_str());
    let runner = state.runtime.projection(&plugin)?;
    let status = runner.status();
    let folded = runner.state().await?;
    let (position, state) = folded.unwrap_or((0, Value::Null));
    Ok(Json(ProjectionResponse {
        position,
        status,
        state,
    }))
}

/// `GET /projections/{plugin}/query/{name}?k=v...`: runs the plugin's query `name` with the
/// query parameters as its JSON object of arguments. Each value is taken as JSON when it
/// parses as JSON (`n=3` → `3`, `open=true` → `true`) and as a string otherwise
/// (`owner=alice` → `"alice"`; quote it to force a string: `id="42"`).
#[utoipa::path(get, path = "/projections/{plugin}/query/{name}", tag = "projections",
    params(("plugin" = String, Path), ("name" = String, Path, description = "The query's name; its arguments are the query string")),
    responses(
        (status = 200, description = "The query's JSON answer", body = Value),
        (status = 400, description = "The plugin refused the query: `reason` says why", body = ApiError),
        (status = 404, body = ApiError), (status = 503, description = "No state yet", body = ApiError),
    ))]
pub async fn query(
    State(state): State<AppState>,
    Path((plugin, name)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    tracing::Span::current().record("plugin", plugin.as_str());
    let runner = state.runtime.projection(&plugin)?;
    let args: Map<String, Value> = params
        .into_iter()
        .map(|(key, value)| {
            let value = serde_json::from_str(&value).unwrap_or(Value::String(value));
            (key, value)
        })
        .collect();
    let args = Value::Object(args);
    let answer = runner.query(&name, &args).await?;
    match answer {
        Some(Ok(answer)) => Ok(Json(answer)),
        Some(Err(refusal)) => Err(ApiError::bad_request(format!(
            "{plugin} refused the query: {refusal}"
        ))
        .with("reason", refusal)),
        None => Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("projection {plugin} has no state to query yet"),
        )),
    }
}
