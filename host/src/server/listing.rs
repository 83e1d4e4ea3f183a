//! `GET /streams`: the streams most recently written first, like KurrentDB's stream browser,
//! found by reading the global log backwards.
//!
//! A stream is listed at its newest event, the one whose version is the stream's current
//! version, so it appears once however many events it has; deleted streams are left out. A
//! page ends after `limit` streams or after [`SCAN_BUDGET`] events were read, and says where
//! the next one starts (`next_after`), so no request reads an unbounded share of the log.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::errors::ApiError;
use super::extract::Query;
use super::{AppState, blocking};
use crate::journal::{Journal, JournalError, ReadLimit, RecordedEvent};

/// Most streams one page lists.
const MAX_LIMIT: usize = 1_000;
/// Streams one page lists unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// Most events one page reads looking for streams.
const SCAN_BUDGET: u64 = 100_000;
/// Positions read per step backwards.
const STEP: u64 = 256;
/// Most bytes of events one step holds in memory.
const STEP_BYTES: usize = 8 << 20;

/// `?prefix=&limit=&after=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only streams whose name starts with this (a category is `{category}-`).
    #[serde(default)]
    prefix: String,
    /// Most streams to list (default 100, at most 1000).
    limit: Option<usize>,
    /// Only streams last written before this global position: the `next_after` of the
    /// previous page.
    after: Option<u64>,
}

/// One stream as the listing shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamSummary {
    stream: String,
    /// Its current version (its newest event's).
    version: u64,
    /// The global position of its newest event.
    last_position: u64,
    /// When its newest event was recorded, in milliseconds since the Unix epoch.
    last_written_at: u64,
}

/// A page of streams, most recently written first.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamPage {
    streams: Vec<StreamSummary>,
    /// Pass as `after` for the next page; null once the start of the log was reached.
    next_after: Option<u64>,
}

/// `GET /streams?prefix=&limit=&after=`.
#[utoipa::path(get, path = "/streams", tag = "streams", params(ListQuery),
    responses((status = 200, body = StreamPage), (status = 400, body = ApiError)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<StreamPage>, ApiError> {
    let journal = state.runtime.journal().clone();
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let before = query.after.unwrap_or(u64::MAX);
    let page = blocking(move || Ok(list_streams(&journal, &query.prefix, limit, before)?)).await?;
    Ok(Json(page))
}

/// Up to `limit` streams named `prefix…` whose newest event lies before position `before`,
/// newest first.
fn list_streams(
    journal: &Journal,
    prefix: &str,
    limit: usize,
    before: u64,
) -> Result<StreamPage, JournalError> {
    let mut streams = Vec::new();
    let mut versions: HashMap<String, Option<u64>> = HashMap::new();
    // Positions are read downwards from `end`; everything above it has been looked at.
    let mut end = before.saturating_sub(1).min(journal.head_position());
    let mut budget = SCAN_BUDGET;
    while end >= 1 && budget > 0 {
        let start = end.saturating_sub(STEP - 1).max(1);
        let events = events_between(journal, start, end)?;
        budget = budget.saturating_sub(end - start + 1);
        for event in events.iter().rev() {
            if !event.stream.starts_with(prefix) {
                continue;
            }
            let current = match versions.get(&*event.stream) {
                Some(version) => *version,
                None => {
                    let version = match journal.stream_version(&event.stream) {
                        Err(JournalError::StreamDeleted(_)) => None,
                        found => found?,
                    };
                    versions.insert(event.stream.to_string(), version);
                    version
                }
            };
            if current == Some(event.version) {
                streams.push(StreamSummary {
                    stream: event.stream.to_string(),
                    version: event.version,
                    last_position: event.position,
                    last_written_at: event.recorded_at,
                });
                if streams.len() == limit {
                    return Ok(StreamPage {
                        streams,
                        next_after: Some(event.position),
                    });
                }
            }
        }
        end = start - 1;
    }
    let next_after = (end >= 1).then_some(end + 1);
    Ok(StreamPage {
        streams,
        next_after,
    })
}

/// The events at positions `start..=end`, ascending, read in pages of bounded size.
fn events_between(
    journal: &Journal,
    start: u64,
    end: u64,
) -> Result<Vec<RecordedEvent>, JournalError> {
    let mut events: Vec<RecordedEvent> = Vec::new();
    let mut next = start;
    while next <= end {
        let limit = ReadLimit {
            events: (end - next + 1) as usize,
            bytes: STEP_BYTES,
        };
        let page = journal.read_all_within(next, limit)?;
        let Some(last) = page.last() else { break };
        next = last.position + 1;
        events.extend(page.into_iter().filter(|e| e.position <= end));
    }
    Ok(events)
}
