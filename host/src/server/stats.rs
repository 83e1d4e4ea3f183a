//! `GET /stats`: what the console's overview shows at a glance, as JSON.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

/// The host and its journal now; counters are since the server started.
#[derive(Serialize, ToSchema)]
pub struct Stats {
    /// foldhost's version.
    version: &'static str,
    /// `redb` or `postgres`.
    backend: &'static str,
    uptime_seconds: u64,
    /// The last committed global position.
    head_position: u64,
    /// Durable commits (one fsync each).
    commits: u64,
    /// Appends that wrote events.
    appends: u64,
    /// Events written.
    events: u64,
    /// The storage fault that stopped the journal writing, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    fault: Option<String>,
}

/// `GET /stats`.
#[utoipa::path(get, path = "/stats", tag = "operations", responses((status = 200, body = Stats)))]
pub async fn stats(State(state): State<AppState>) -> Json<Stats> {
    let journal = state.runtime.journal();
    let counters = journal.stats();
    Json(Stats {
        version: env!("CARGO_PKG_VERSION"),
        backend: journal.backend_name(),
        uptime_seconds: state.started.elapsed().as_secs(),
        head_position: journal.head_position(),
        commits: counters.commits,
        appends: counters.appends,
        events: counters.events,
        fault: journal.fault().map(|fault| fault.to_string()),
    })
}
