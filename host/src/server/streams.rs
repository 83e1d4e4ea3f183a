//! Appending to streams and reading streams and the global log directly.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::append_body::AppendRequest;
use super::errors::ApiError;
use super::extract::{BodyBytes, Path, Query};
use super::json::{EventJson, metadata_text};
use super::plugins::Admin;
use super::{AppState, blocking};
use crate::journal::{AppendResult, ContentType, JournalError, NewEvent, ReadLimit, RecordedEvent};
use crate::runtime::UpcasterChain;

/// Most events one read returns.
const MAX_READ: usize = 10_000;
/// Events one read returns unless `limit` says otherwise.
const DEFAULT_READ: usize = 1_000;
/// A page stops early before its events would take more than this many bytes (it always holds
/// at least one event), so a page of large events cannot exhaust memory; clients page on from
/// the last.
const PAGE_BYTES: usize = 16 << 20;
/// What an event costs a page beyond its variable fields: position, version, id, content type,
/// time and the JSON around them.
const EVENT_OVERHEAD: usize = 160;
/// Most events per journal read while filling a page, which the bytes the page has left bound
/// as well (PostgreSQL still scans, without their bodies, the rows a read asks for).
const CHUNK: usize = 128;

/// `?validate=false` (admin token only) stores events to an aggregate's stream unchecked.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AppendOptions {
    #[serde(default = "yes")]
    validate: bool,
}

fn yes() -> bool {
    true
}

/// `POST /streams/{stream}/events`. Events for a stream of a loaded aggregate are folded by
/// that aggregate first and refused (422, nothing stored) if it cannot fold them.
#[utoipa::path(post, path = "/streams/{stream}/events", tag = "streams",
    params(("stream" = String, Path), AppendOptions),
    request_body = AppendRequest,
    responses(
        (status = 200, description = "Appended (or an idempotent retry)", body = AppendResult),
        (status = 400, body = ApiError), (status = 409, description = "Version conflict", body = ApiError),
        (status = 410, description = "Hard-deleted", body = ApiError),
        (status = 413, description = "Too many events, or too many bytes", body = ApiError),
        (status = 422, description = "The stream's aggregate cannot fold these events", body = ApiError),
        (status = 503, description = "Too many writes queued", body = ApiError),
    ))]
pub async fn append(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(options): Query<AppendOptions>,
    admin: Result<Admin, ApiError>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<AppendResult>, ApiError> {
    tracing::Span::current().record("stream", stream.as_str());
    if !options.validate {
        admin?;
    }
    let max_events = state.runtime.journal().config().max_append_events;
    let request = AppendRequest::parse(&body, max_events)?;
    drop(body);
    let events = request
        .events
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            let metadata = metadata_text(event.metadata.as_deref())
                .map_err(|error| ApiError::bad_request(format!("event {i}: {error}")))?;
            Ok(NewEvent {
                id: event.id.unwrap_or_else(Uuid::now_v7),
                event_type: event.event_type,
                content_type: ContentType::Json,
                data: event.data.get().as_bytes().to_vec(),
                metadata,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let appended = state
        .runtime
        .append(
            &stream,
            request.expected_version.0,
            events,
            options.validate,
        )
        .await?;
    Ok(Json(appended))
}

/// `?from_version=&limit=` of a stream read.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamRange {
    #[serde(default = "first")]
    from_version: u64,
    limit: Option<usize>,
    /// Pass the events through the loaded upcasters (stored bytes never change).
    #[serde(default)]
    upcast: bool,
}

/// `?from_position=&limit=` of a global-log read.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogRange {
    #[serde(default = "first")]
    from_position: u64,
    limit: Option<usize>,
    /// Pass the events through the loaded upcasters (stored bytes never change).
    #[serde(default)]
    upcast: bool,
}

fn first() -> u64 {
    1
}

fn limit(limit: Option<usize>) -> usize {
    limit.unwrap_or(DEFAULT_READ).min(MAX_READ)
}

/// `GET /streams/{stream}/events`: a page of one stream, ascending; 404 if it has no events.
#[utoipa::path(get, path = "/streams/{stream}/events", tag = "streams",
    params(("stream" = String, Path), StreamRange),
    responses(
        (status = 200, body = Vec<EventJson>),
        (status = 404, body = ApiError), (status = 410, description = "Hard-deleted", body = ApiError),
    ))]
pub async fn read_stream(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(range): Query<StreamRange>,
) -> Result<Json<Vec<EventJson>>, ApiError> {
    tracing::Span::current().record("stream", stream.as_str());
    let journal = state.runtime.journal().clone();
    let upcasters = range.upcast.then(|| state.runtime.upcasters());
    let events = blocking(move || {
        if journal.stream_version(&stream)?.is_none() {
            return Err(ApiError::not_found(format!(
                "stream {stream:?} has no events"
            )));
        }
        let read = |from, n| journal.read_stream_within(&stream, from, n);
        let page = read_page(
            range.from_version,
            limit(range.limit),
            PAGE_BYTES,
            |e| e.version,
            read,
        )?;
        upcast(upcasters, page)
    })
    .await?;
    Ok(Json(events.into_iter().map(EventJson::from).collect()))
}

/// `GET /events`: a page of the global log, ascending by position.
#[utoipa::path(get, path = "/events", tag = "streams", params(LogRange),
    responses((status = 200, body = Vec<EventJson>), (status = 400, body = ApiError)))]
pub async fn read_all(
    State(state): State<AppState>,
    Query(range): Query<LogRange>,
) -> Result<Json<Vec<EventJson>>, ApiError> {
    let journal = state.runtime.journal().clone();
    let upcasters = range.upcast.then(|| state.runtime.upcasters());
    let events = blocking(move || {
        let read = |from, n| journal.read_all_within(from, n);
        let page = read_page(
            range.from_position,
            limit(range.limit),
            PAGE_BYTES,
            |e| e.position,
            read,
        )?;
        upcast(upcasters, page)
    })
    .await?;
    Ok(Json(events.into_iter().map(EventJson::from).collect()))
}

/// `events` as the `upcasters` make them (as stored without).
pub(super) fn upcast(
    upcasters: Option<Arc<UpcasterChain>>,
    events: Vec<RecordedEvent>,
) -> Result<Vec<RecordedEvent>, ApiError> {
    match upcasters {
        Some(upcasters) => Ok(upcasters.upcast(events)?),
        None => Ok(events),
    }
}

/// Up to `limit` events from `from` on, ascending, that together weigh at most `max_bytes` (see
/// [`event_bytes`]), read by `read(from, limit)`; `key` is what `from` counts (version or
/// position). A page always holds its first event, however large.
///
/// Every read passes the journal the bytes the page has left, so no read returns more than
/// that (as the journal counts them: type, data and metadata) plus the one event a read always
/// returns. What the journal returned past the page's own count is dropped, to be read again
/// by the next page.
pub(super) fn read_page(
    from: u64,
    limit: usize,
    max_bytes: usize,
    key: impl Fn(&RecordedEvent) -> u64,
    read: impl Fn(u64, ReadLimit) -> Result<Vec<RecordedEvent>, JournalError>,
) -> Result<Vec<RecordedEvent>, JournalError> {
    let (mut events, mut bytes, mut next) = (Vec::new(), 0, from);
    while events.len() < limit && (events.is_empty() || bytes < max_bytes) {
        let want = (limit - events.len()).min(CHUNK);
        let chunk = read(
            next,
            ReadLimit {
                events: want,
                bytes: max_bytes - bytes,
            },
        )?;
        let ended = chunk.len() < want;
        for event in chunk {
            let weight = event_bytes(&event);
            if !events.is_empty() && bytes + weight > max_bytes {
                return Ok(events);
            }
            bytes += weight;
            next = key(&event) + 1;
            events.push(event);
        }
        if ended {
            break;
        }
    }
    Ok(events)
}

/// What an event weighs in a page: every field a client receives.
fn event_bytes(event: &RecordedEvent) -> usize {
    EVENT_OVERHEAD
        + event.stream.len()
        + event.event_type.len()
        + event.data.len()
        + event.metadata.as_deref().map_or(0, str::len)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use serde_json::json;

    use super::*;
    use crate::journal::{ExpectedVersion, Journal, JournalConfig};

    /// A tiny event and then large ones: each journal read takes at most what the page has left
    /// plus one event, pages keep within their budget (a lone event excepted), and paging on
    /// from the last event reads every event once, in order; a budget of 0 still moves on.
    #[test]
    fn every_read_of_a_page_stays_within_what_the_page_has_left() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path().join("j.redb"), JournalConfig::default()).unwrap();
        let tiny = NewEvent::json("Tiny", &json!({}));
        journal
            .append_blocking("s", ExpectedVersion::Any, vec![tiny])
            .unwrap();
        let large = (0..40)
            .map(|i| NewEvent::json("Large", &json!({"i": i, "pad": "x".repeat(100_000)})))
            .collect();
        journal
            .append_blocking("s", ExpectedVersion::Any, large)
            .unwrap();
        let heaviest = journal
            .read_all(1, 100)
            .unwrap()
            .iter()
            .map(event_bytes)
            .max()
            .unwrap();
        for budget in [0, 1 << 20] {
            for log in [false, true] {
                let most_read = Cell::new(0);
                let read = |from, limit: ReadLimit| {
                    let chunk = match log {
                        true => journal.read_all_within(from, limit)?,
                        false => journal.read_stream_within("s", from, limit)?,
                    };
                    let weight: usize = chunk.iter().map(event_bytes).sum();
                    most_read.set(most_read.get().max(weight));
                    Ok(chunk)
                };
                let key = |e: &RecordedEvent| if log { e.position } else { e.version };
                let (mut seen, mut from) = (Vec::new(), 1);
                loop {
                    let page = read_page(from, 1000, budget, key, read).unwrap();
                    let Some(last) = page.last() else { break };
                    let weight: usize = page.iter().map(event_bytes).sum();
                    assert!(page.len() == 1 || weight <= budget, "{weight} > {budget}");
                    from = key(last) + 1;
                    seen.extend(page.iter().map(key));
                }
                assert_eq!(seen, (1..=41).collect::<Vec<_>>(), "log: {log}");
                assert!(
                    most_read.get() <= budget + heaviest,
                    "read {}",
                    most_read.get()
                );
            }
        }
    }
}
