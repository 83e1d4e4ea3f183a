//! Commands to aggregate plugins and reading their states.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use super::errors::ApiError;
use super::extract::{JsonBody, Path, Query};
use super::json::EventJson;

/// `POST /aggregates/{plugin}/{id}/commands`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    #[serde(rename = "type")]
    command_type: String,
    /// The command's JSON; null when absent.
    #[serde(default)]
    data: Value,
}

/// What a command did: the stream version after it, the events it appended, the new state.
#[derive(Serialize)]
pub struct CommandResponse {
    version: u64,
    events: Vec<EventJson>,
    state: Value,
}

pub async fn command(
    State(state): State<AppState>,
    Path((plugin, id)): Path<(String, String)>,
    JsonBody(command): JsonBody<CommandRequest>,
) -> Result<Json<CommandResponse>, ApiError> {
    let span = tracing::Span::current();
    span.record("plugin", plugin.as_str());
    span.record("id", id.as_str());
    let data = serde_json::to_vec(&command.data).expect("a JSON value serialises");
    let outcome = state
        .runtime
        .execute(&plugin, &id, &command.command_type, data)
        .await?;
    Ok(Json(CommandResponse {
        version: outcome.version,
        events: outcome.events.into_iter().map(EventJson::from).collect(),
        state: outcome.state,
    }))
}

/// `?at_version=V`: the state as it was after version V.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AtVersion {
    at_version: Option<u64>,
}

/// An aggregate's state and the stream version it reflects.
#[derive(Serialize)]
pub struct StateResponse {
    version: u64,
    state: Value,
}

pub async fn state(
    State(state): State<AppState>,
    Path((plugin, id)): Path<(String, String)>,
    Query(query): Query<AtVersion>,
) -> Result<Json<StateResponse>, ApiError> {
    let span = tracing::Span::current();
    span.record("plugin", plugin.as_str());
    span.record("id", id.as_str());
    let (version, state) = state
        .runtime
        .aggregate_state(&plugin, &id, query.at_version)
        .await?;
    Ok(Json(StateResponse { version, state }))
}
