//! `GET /events/live`: the global log as Server-Sent Events, caught up from a position and
//! then followed as commits land.
//!
//! The follower remembers only the next position to send and always reads from there, so the
//! switch from catching up to following can neither skip nor repeat an event: a commit that
//! lands while a page is being read is simply part of a later page.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::watch;
use utoipa::IntoParams;

use super::AppState;
use super::clients;
use super::errors::ApiError;
use super::extract::Query;
use super::json::EventJson;
use super::live_feeds::{FeedSlot, TooManyFeeds};
use super::streams::read_page;
use crate::journal::{Journal, RecordedEvent};
use crate::runtime::UpcasterChain;

/// Most events read from the journal per page (fewer when they are large).
const PAGE: usize = 1_000;

/// `?from_position=`: the first position to send (default 1, the start of the log);
/// `?upcast=true`: pass the events through the loaded upcasters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    from_position: Option<u64>,
    #[serde(default)]
    upcast: bool,
}

/// Each SSE event carries one event's JSON as `data` and its position as `id`; a client that
/// reconnects with `Last-Event-ID` resumes right after it. (An upcaster may turn one stored
/// event into several: only the last of them carries the `id`.) A journal failure ends the
/// feed with an event of type `error`. A feed past `--max-live-feeds` is refused with 503, one
/// past its client's `--live-feeds-per-client` with 429 (both with `Retry-After`).
#[utoipa::path(get, path = "/events/live", tag = "streams",
    params(LiveQuery, ("last-event-id" = Option<u64>, Header, description = "Resume after this position")),
    responses(
        (status = 200, description = "Server-Sent Events, one per event (`id` = position, `data` = the event's JSON)",
            body = EventJson, content_type = "text/event-stream"),
        (status = 400, body = ApiError),
        (status = 429, description = "This client has its `--live-feeds-per-client` open", body = ApiError),
        (status = 503, description = "Too many live feeds (`--max-live-feeds`)", body = ApiError),
    ))]
pub async fn live(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: Extensions,
    Query(query): Query<LiveQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let resume = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|id| id.trim().parse::<u64>().ok())
                .and_then(|id| id.checked_add(1))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "Last-Event-ID must be an event position (below 18446744073709551615)",
                    )
                })?,
        ),
        None => None,
    };
    let client = clients::of_request(&extensions);
    let slot = state
        .live_feeds
        .open(client)
        .map_err(|refused| match refused {
            TooManyFeeds::Host { .. } => ApiError::busy(&refused, 5),
            TooManyFeeds::Client { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, &refused).retry_after(5)
            }
        })?;
    let journal = state.runtime.journal().clone();
    let follower = Follower {
        _slot: slot,
        buffer_bytes: state.limits.live_buffer_bytes,
        commits: journal.subscribe(),
        journal,
        next: resume.or(query.from_position).unwrap_or(1).max(1),
        upcasters: query.upcast.then(|| state.runtime.upcasters()),
        pending: VecDeque::new(),
        failed: false,
    };
    let events = futures_util::stream::unfold(follower, |mut follower| async move {
        let event = follower.next_event().await?;
        Some((Ok(event), follower))
    })
    .take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

struct Follower {
    _slot: FeedSlot,
    /// Most bytes of events read ahead of the client (at least one event).
    buffer_bytes: usize,
    journal: Journal,
    commits: watch::Receiver<u64>,
    /// The position of the next event to send.
    next: u64,
    /// Set when the client asked for upcast events.
    upcasters: Option<Arc<UpcasterChain>>,
    pending: VecDeque<RecordedEvent>,
    failed: bool,
}

impl Follower {
    /// The next SSE event; `None` ends the feed (the journal closed, or after an error event).
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                let position = event.position;
                let json =
                    serde_json::to_string(&EventJson::from(event)).expect("an event serialises");
                let sse = Event::default().data(json);
                let more_of_it = self.pending.front().is_some_and(|e| e.position == position);
                return Some(match more_of_it {
                    true => sse,
                    false => sse.id(position.to_string()),
                });
            }
            if self.failed {
                return None;
            }
            // Marks the head seen before reading: a commit after this wakes `changed`.
            let head = *self.commits.borrow_and_update();
            if head < self.next {
                self.commits.changed().await.ok()?;
                continue;
            }
            let (journal, from, bytes) = (self.journal.clone(), self.next, self.buffer_bytes);
            let upcasters = self.upcasters.clone();
            let page = tokio::task::spawn_blocking(move || {
                let events = read_page(
                    from,
                    PAGE,
                    bytes,
                    |e| e.position,
                    |from, limit| journal.read_all_within(from, limit),
                )
                .map_err(|error| error.to_string())?;
                let next = events.last().map(|last| last.position + 1);
                let events = match upcasters {
                    Some(upcasters) => upcasters.upcast(events).map_err(|e| e.to_string())?,
                    None => events,
                };
                Ok::<_, String>((next, events))
            })
            .await;
            match page {
                Ok(Ok((Some(next), events))) => {
                    self.next = next;
                    self.pending.extend(events);
                }
                Ok(Ok((None, _))) => self.commits.changed().await.ok()?,
                Ok(Err(error)) => return Some(self.fail(error)),
                Err(error) => return Some(self.fail(error)),
            }
        }
    }

    fn fail(&mut self, error: impl std::fmt::Display) -> Event {
        tracing::error!(%error, position = self.next, "live feed stopped");
        self.failed = true;
        Event::default().event("error").data(format!(
            "reading the journal at position {} failed: {error}",
            self.next
        ))
    }
}
