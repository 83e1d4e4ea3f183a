//! Deleting streams and their retention metadata.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::errors::ApiError;
use super::extract::{JsonBody, Path, Query};
use super::plugins::Admin;
use super::streams::Expected;
use super::{AppState, blocking};
use crate::journal::StreamMetadata;

/// `?hard=&expected_version=` of a delete.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    hard: bool,
    #[serde(default)]
    expected_version: Expected,
}

/// What a delete did.
#[derive(Serialize)]
pub struct Deleted {
    stream: String,
    hard: bool,
}

/// `DELETE /streams/{stream}[?hard=true][&expected_version=]`: a soft delete hides the stream
/// (reads answer 404) until an append recreates it; a hard delete (admin) is final (410 Gone
/// ever after). Events are removed at the next scavenge.
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
pub async fn metadata(
    State(state): State<AppState>,
    Path(stream): Path<String>,
) -> Result<Json<StreamMetadata>, ApiError> {
    let journal = state.runtime.journal().clone();
    let metadata = blocking(move || Ok(journal.stream_metadata(&stream)?)).await?;
    Ok(Json(metadata))
}

/// `PUT /streams/{stream}/metadata`: replaces its retention rules (`max_age` in seconds,
/// `max_count`, `truncate_before`); readers stop seeing what they exclude at once.
pub async fn put_metadata(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    JsonBody(metadata): JsonBody<StreamMetadata>,
) -> Result<Json<StreamMetadata>, ApiError> {
    tracing::Span::current().record("stream", stream.as_str());
    state
        .runtime
        .journal()
        .set_stream_metadata(&stream, metadata)
        .await?;
    Ok(Json(metadata))
}
