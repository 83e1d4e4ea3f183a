//! Commands to aggregate plugins and reading their states.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::errors::ApiError;
use super::extract::{JsonBody, Path, Query};
use super::json::EventJson;
use crate::runtime::Command;

/// The header that makes a command safe to retry.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The longest idempotency key accepted, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 256;

/// `POST /aggregates/{plugin}/{id}/commands`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    #[serde(rename = "type")]
    command_type: String,
    /// The command's JSON, passed to the plugin as sent; null when absent.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    data: Option<Box<RawValue>>,
}

/// What a command did: the stream version after it, the events it appended, the new state.
#[derive(Serialize, ToSchema)]
pub struct CommandResponse {
    version: u64,
    events: Vec<EventJson>,
    /// Null when it could not be computed (the events are stored all the same).
    state: Value,
    /// Why the state could not be computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    state_error: Option<String>,
}

/// `POST /aggregates/{plugin}/{id}/commands`, with an optional `Idempotency-Key` header: a
/// retry with the key of a command whose events were stored answers that command's outcome
/// and appends nothing; the key with another command is refused (422).
#[utoipa::path(post, path = "/aggregates/{plugin}/{id}/commands", tag = "aggregates",
    params(
        ("plugin" = String, Path), ("id" = String, Path, description = "The stream is `{plugin}-{id}`"),
        ("idempotency-key" = Option<String>, Header, description = "Makes a retry answer the first outcome"),
    ),
    request_body = CommandRequest,
    responses(
        (status = 200, body = CommandResponse),
        (status = 400, body = ApiError), (status = 404, description = "No such aggregate plugin", body = ApiError),
        (status = 409, body = ApiError),
        (status = 422, description = "The plugin refused the command (`reason` says why), or its idempotency key was used by another command", body = ApiError),
        (status = 503, body = ApiError),
    ))]
pub async fn command(
    State(state): State<AppState>,
    Path((plugin, id)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(command): JsonBody<CommandRequest>,
) -> Result<Json<CommandResponse>, ApiError> {
    let span = tracing::Span::current();
    span.record("plugin", plugin.as_str());
    span.record("id", id.as_str());
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|key| !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII \
                         characters"
                    ))
                })?
                .to_owned(),
        ),
    };
    let command = Command {
        command_type: command.command_type,
        data: command
            .data
            .map_or_else(|| b"null".to_vec(), |data| data.get().as_bytes().to_vec()),
        idempotency_key,
    };
    let outcome = state.runtime.execute_command(&plugin, &id, command).await?;
    let (state, state_error) = match outcome.state {
        Ok(state) => (state, None),
        Err(error) => (Value::Null, Some(error)),
    };
    Ok(Json(CommandResponse {
        version: outcome.version,
        events: outcome.events.into_iter().map(EventJson::from).collect(),
        state,
        state_error,
    }))
}

/// `?at_version=V`: the state as it was after version V.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AtVersion {
    at_version: Option<u64>,
}

/// An aggregate's state and the stream version it reflects.
#[derive(Serialize, ToSchema)]
pub struct StateResponse {
    version: u64,
    state: Value,
}

/// `GET /aggregates/{plugin}/{id}?at_version=`: the state now, or as it was after a version.
#[utoipa::path(get, path = "/aggregates/{plugin}/{id}", tag = "aggregates",
    params(("plugin" = String, Path), ("id" = String, Path), AtVersion),
    responses(
        (status = 200, body = StateResponse),
        (status = 404, description = "No such plugin or stream", body = ApiError),
        (status = 503, description = "Too many past states being rebuilt (`at_version`), or \
            no plugin memory left; retry after `Retry-After`", body = ApiError),
    ))]
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
