//! Deleting streams and their retention metadata.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::append_body::Expected;
use super::errors::ApiError;
use super::extract::{JsonBody, Path, Query};
use super::plugins::Admin;
use super::{AppState, blocking};
use crate::journal::StreamMetadata;

/// `?hard=&expected_version=` of a delete.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    hard: bool,
    #[serde(default)]
    #[param(value_type = Option<String>)]
    expected_version: Expected,
}

/// What a delete did.
#[derive(Serialize, ToSchema)]
pub struct Deleted {
    stream: String,
    hard: bool,
}

/// `DELETE /streams/{stream}[?hard=true][&expected_version=]`: a soft delete hides the stream
/// (reads answer 404) until an append recreates it; a hard delete (admin) is final (410 Gone
/// ever after). Events are removed at the next scavenge.
#[utoipa::path(delete, path = "/streams/{stream}", tag = "streams",
    params(("stream" = String, Path), DeleteQuery),
    responses(
        (status = 200, body = Deleted), (status = 401, description = "A hard delete needs the admin token", body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 410, body = ApiError),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(query): Query<DeleteQuery>,
    admin: Result<Admin, ApiError>,
) -> Result<Json<Deleted>, ApiError> {
    tracing::Span::current().record("stream", stream.as_str());
    if query.hard {
        admin?;
    }
    state
        .runtime
        .journal()
        .delete_stream(&stream, query.expected_version.0, query.hard)
        .await?;
    tracing::info!(%stream, hard = query.hard, "stream deleted");
    Ok(Json(Deleted {
        stream,
        hard: query.hard,
    }))
}

/// `GET /streams/{stream}/metadata`: its retention rules (`{}` when none).
#[utoipa::path(get, path = "/streams/{stream}/metadata", tag = "streams",
    params(("stream" = String, Path)),
    responses((status = 200, body = StreamMetadata), (status = 410, body = ApiError)))]
pub async fn metadata(
    State(state): State<AppState>,
    Path(stream): Path<String>,
) -> Result<Json<StreamMetadata>, ApiError> {
    let journal = state.runtime.journal().clone();
    let metadata = blocking(move || Ok(journal.stream_metadata(&stream)?)).await?;
    Ok(Json(metadata))
}

/// `PUT /streams/{stream}/metadata`: replaces its retention rules (`max_age` in seconds,
/// `max_count`, `truncate_before`); readers stop seeing what they exclude at once. Answers the
/// rules now stored: after a soft delete, `truncate_before` stays past the events it hid.
#[utoipa::path(put, path = "/streams/{stream}/metadata", tag = "streams",
    params(("stream" = String, Path)), request_body = StreamMetadata,
    responses((status = 200, body = StreamMetadata), (status = 400, body = ApiError), (status = 410, body = ApiError)))]
pub async fn put_metadata(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    JsonBody(metadata): JsonBody<StreamMetadata>,
) -> Result<Json<StreamMetadata>, ApiError> {
    tracing::Span::current().record("stream", stream.as_str());
    let journal = state.runtime.journal().clone();
    journal.set_stream_metadata(&stream, metadata).await?;
    let stored = blocking(move || Ok(journal.stream_metadata(&stream)?)).await?;
    Ok(Json(stored))
}
