//! Prometheus metrics: the recorder (installed by the binary only), `GET /metrics`, and a
//! count and latency for every HTTP request.
//!
//! Most metrics are emitted where the work happens (the journal's writer, the runtime); this
//! module gives them help text and histogram buckets, and registers every series at zero as
//! soon as it can exist, so dashboards and `rate()` see it before its first event.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::errors::ApiError;
use crate::runtime::{PluginInfo, PluginKind};

/// Latency buckets, in seconds: 50 µs to 10 s.
const SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];
/// Requests per commit.
const BATCH: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// How often histograms are folded and idle series pruned.
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the process-wide Prometheus recorder and describes foldhost's metrics.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("foldhost_commit_batch_size".into()), BATCH)?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// Runs the recorder's upkeep until `stop` is cancelled.
pub(super) async fn upkeep(handle: PrometheusHandle, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(UPKEEP);
    while stop.run_until_cancelled(ticks.tick()).await.is_some() {
        handle.run_upkeep();
    }
}

fn describe() {
    let counters = [
        ("foldhost_appends_total", "Appends that wrote events"),
        (
            "foldhost_events_appended_total",
            "Events written to the journal",
        ),
        (
            "foldhost_aggregate_cache_hits_total",
            "Commands and reads that found their aggregate state cached",
        ),
        (
            "foldhost_aggregate_cache_misses_total",
            "Commands and reads that had to rebuild their aggregate state",
        ),
    ];
    for (name, help) in counters {
        describe_counter!(name, help);
        counter!(name).increment(0);
    }
    describe_counter!(
        "foldhost_command_rejections_total",
        "Commands a plugin refused, by plugin"
    );
    describe_counter!(
        "foldhost_plugin_traps_total",
        "Plugin calls that trapped (panic, timeout, memory), by plugin"
    );
    describe_counter!(
        "foldhost_projection_events_total",
        "Events a projection read from the journal, by plugin (the replay rate)"
    );
    describe_gauge!(
        "foldhost_projection_parked",
        "Events a projection skipped because it could not fold them, by plugin"
    );
    describe_counter!(
        "foldhost_projection_parked_total",
        "Events projections parked, by plugin"
    );
    describe_counter!(
        "foldhost_projection_retries_total",
        "Times a projection paused to retry a failed step, by plugin"
    );
    describe_counter!(
        "foldhost_http_requests_total",
        "HTTP requests, by method, route and status"
    );
    describe_histogram!(
        "foldhost_commit_batch_size",
        "Requests per durable journal commit"
    );
    describe_histogram!(
        "foldhost_commit_seconds",
        Unit::Seconds,
        "Time of one durable journal commit"
    );
    describe_histogram!(
        "foldhost_command_seconds",
        Unit::Seconds,
        "Time to decide, append and apply one command, by plugin"
    );
    describe_histogram!(
        "foldhost_http_request_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by route"
    );
    describe_gauge!(
        "foldhost_live_feeds",
        "Open GET /events/live feeds (see --max-live-feeds)"
    );
    gauge!("foldhost_live_feeds").set(0.0);
    describe_gauge!(
        "foldhost_live_feeds_held_by_one_client_max",
        "The most live feeds one client holds open (its share reached: 429)"
    );
    describe_gauge!(
        "foldhost_live_feeds_per_client",
        "The live feeds one client may hold open (--live-feeds-per-client; 0: off)"
    );
    describe_gauge!(
        "foldhost_plugin_memory_bytes",
        Unit::Bytes,
        "Memory every plugin instance's memories and tables hold together"
    );
    describe_gauge!(
        "foldhost_plugin_memory_budget_bytes",
        Unit::Bytes,
        "The host-wide budget of plugin memory (--plugins-memory-budget)"
    );
    describe_gauge!(
        "foldhost_body_bytes_held",
        Unit::Bytes,
        "Bytes of request bodies the server holds while reading them"
    );
    describe_gauge!(
        "foldhost_body_budget_bytes",
        Unit::Bytes,
        "The bytes all request bodies may hold together (--body-budget)"
    );
    describe_gauge!(
        "foldhost_body_bytes_held_by_one_client_max",
        Unit::Bytes,
        "The most bytes of request bodies one client holds (its share reached: 429)"
    );
    describe_gauge!(
        "foldhost_body_budget_per_client_bytes",
        Unit::Bytes,
        "The bytes one client's request bodies may hold together (--body-budget-per-client; 0: off)"
    );
    describe_counter!(
        "foldhost_plugin_memory_refusals_total",
        "Plugin calls that failed because the host-wide plugin memory budget was held"
    );
    counter!("foldhost_plugin_memory_refusals_total").increment(0);
    let _ = histogram!("foldhost_commit_batch_size");
    let _ = histogram!("foldhost_commit_seconds");
}

/// Registers the per-plugin series of a loaded plugin at zero (if not there yet).
fn register_plugin(info: &PluginInfo) {
    let plugin = info.name.clone();
    counter!("foldhost_plugin_traps_total", "plugin" => plugin.clone()).increment(0);
    match info.kind {
        PluginKind::Aggregate => {
            counter!("foldhost_command_rejections_total", "plugin" => plugin.clone()).increment(0);
            let _ = histogram!("foldhost_command_seconds", "plugin" => plugin);
        }
        PluginKind::Projection => {
            counter!("foldhost_projection_events_total", "plugin" => plugin.clone()).increment(0);
            counter!("foldhost_projection_parked_total", "plugin" => plugin.clone()).increment(0);
            counter!("foldhost_projection_retries_total", "plugin" => plugin.clone()).increment(0);
            gauge!("foldhost_projection_parked", "plugin" => plugin)
                .set(info.parked.unwrap_or(0) as f64);
        }
        PluginKind::Upcaster => {}
    }
}

/// `GET /metrics`: the Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 404, description = "Not recorded by this server", body = ApiError),
    ))]
pub(super) async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let handle = state.metrics.ok_or_else(|| {
        ApiError::not_found(
            "metrics are not recorded by this server (it was embedded without them)",
        )
    })?;
    state.runtime.list().iter().for_each(register_plugin);
    let budget = state.runtime.engine().memory_budget();
    gauge!("foldhost_plugin_memory_bytes").set(budget.used() as f64);
    gauge!("foldhost_plugin_memory_budget_bytes").set(budget.limit() as f64);
    let bodies = state.bodies.budget();
    gauge!("foldhost_body_bytes_held").set(bodies.held_bytes() as f64);
    gauge!("foldhost_body_budget_bytes").set(bodies.budget_bytes() as f64);
    gauge!("foldhost_body_bytes_held_by_one_client_max").set(bodies.largest_share_held() as f64);
    gauge!("foldhost_body_budget_per_client_bytes").set(bodies.share_bytes() as f64);
    let feeds = &state.live_feeds;
    gauge!("foldhost_live_feeds_held_by_one_client_max").set(feeds.largest_share_held() as f64);
    gauge!("foldhost_live_feeds_per_client").set(feeds.share() as f64);
    let text = tokio::task::spawn_blocking(move || handle.render())
        .await
        .map_err(|error| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, error))?;
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// Middleware counting and timing each request by its route pattern (not its raw path, which
/// would make a series per stream).
pub(super) async fn track(route: MatchedPath, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let route = route.as_str().to_owned();
    let status = response.status().as_u16().to_string();
    histogram!("foldhost_http_request_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    counter!("foldhost_http_requests_total", "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}
