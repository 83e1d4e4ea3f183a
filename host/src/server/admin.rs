//! Maintenance of the journal: scavenging (admin only).

use axum::Json;
use axum::extract::State;

use super::AppState;
use super::errors::ApiError;
use super::plugins::Admin;
use crate::journal::ScavengeReport;

/// `POST /admin/scavenge`: removes the events no reader sees any more and compacts the storage
/// (reads and appends pause while redb compacts; PostgreSQL locks the tables it rewrites).
pub async fn scavenge(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<ScavengeReport>, ApiError> {
    let report = state.runtime.journal().scavenge().await?;
    Ok(Json(report))
}
