//! Bounds on request bodies while they arrive: a body that stalls is refused, and all bodies
//! being received or handled share one byte budget.
//!
//! Bodies are read whole before a handler runs (up to 8 MiB of JSON, 64 MiB for an upload).
//! Without these bounds a client that sent all but the last bytes of a large body and then
//! waited held that memory for as long as it kept the connection: a hundred such clients took
//! the server from 99 MB to 922 MB. Now a body of which nothing arrives for the read timeout
//! (counted from when the handler starts reading it, then from each chunk) is refused with 408;
//! a body that would take the bytes held past the budget is refused at once with 503 and
//! `Retry-After`, or with 413 if it is larger than the whole budget. A body's bytes count until
//! its response is made, or, for a plugin upload, until its compile ends (which a client that
//! leaves does not stop).

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::errors::ApiError;

/// What bounds request bodies: how long one may go without a byte arriving, and the bytes
/// all of them may hold together.
#[derive(Clone)]
pub struct BodyBounds {
    stall: Duration,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

impl BodyBounds {
    /// Bodies that never stall for `stall` and hold at most `budget_bytes` together.
    pub fn new(stall: Duration, budget_bytes: usize) -> Self {
        let budget_bytes = budget_bytes.min(Semaphore::MAX_PERMITS);
        Self {
            stall,
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
        }
    }
}

/// Why a body was cut off.
#[derive(Debug)]
enum Refused {
    Stalled(Duration),
    OverBudget(usize),
    LargerThanBudget(usize),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Stalled(stall) => write!(
                f,
                "the request body stalled: nothing of it arrived for {} s",
                stall.as_secs()
            ),
            Refused::OverBudget(budget) => write!(
                f,
                "the server is holding its budget of {budget} bytes of request bodies; retry"
            ),
            Refused::LargerThanBudget(budget) => write!(
                f,
                "the request body is larger than the server's budget of {budget} bytes for all bodies"
            ),
        }
    }
}

impl Error for Refused {}

/// The share of the body budget a request's body holds, in the request's extensions: work
/// that outlives the request (a plugin upload's compile) keeps it, so a client that leaves
/// does not free bytes the server still holds.
#[derive(Clone)]
pub struct BodyHold {
    _held: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

/// Middleware: reads the request body under [`BodyBounds`] and keeps its bytes counted until
/// the response is made, or for as long as a [`BodyHold`] is kept.
pub async fn bound(State(bounds): State<BodyBounds>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let held = Arc::new(Mutex::new(None));
    parts.extensions.insert(BodyHold {
        _held: held.clone(),
    });
    if http_body::Body::is_end_stream(&body) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let body = Body::new(Bounded {
        inner: body,
        stalled_at: None,
        bounds,
        taken: 0,
        held: held.clone(),
    });
    let response = next.run(Request::from_parts(parts, body)).await;
    drop(held);
    response
}

/// The error answer for a body that could not be read: 408, 503 or 413 if [`bound`] cut it
/// off, otherwise axum's own status and text (413 over the size limit, 400 for a broken body).
pub fn refused(rejection: BytesRejection) -> ApiError {
    let mut source: Option<&(dyn Error + 'static)> = Some(&rejection);
    while let Some(error) = source {
        match error.downcast_ref::<Refused>() {
            Some(stalled @ Refused::Stalled(_)) => {
                return ApiError::new(StatusCode::REQUEST_TIMEOUT, stalled);
            }
            Some(over @ Refused::OverBudget(_)) => return ApiError::busy(over, 1),
            Some(larger @ Refused::LargerThanBudget(_)) => {
                return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, larger);
            }
            None => source = error.source(),
        }
    }
    ApiError::new(rejection.status(), rejection.body_text())
}

/// A body that fails once nothing of it arrives for the stall timeout or its bytes would go
/// over the budget; the bytes it took from the budget go back once every holder of `held` is
/// dropped.
struct Bounded {
    inner: Body,
    /// When waiting for the next chunk turns into a stall; set on the first read (a handler
    /// may start reading late, after waiting for plugins to load) and after each chunk.
    stalled_at: Option<Pin<Box<Sleep>>>,
    bounds: BodyBounds,
    /// Bytes of this body taken from the budget.
    taken: usize,
    held: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

impl Bounded {
    fn take(&mut self, bytes: usize) -> Result<(), Refused> {
        let budget = self.bounds.budget_bytes;
        self.taken = self.taken.saturating_add(bytes);
        if self.taken > budget {
            return Err(Refused::LargerThanBudget(budget));
        }
        let bytes = u32::try_from(bytes).map_err(|_| Refused::LargerThanBudget(budget))?;
        let permit = self
            .bounds
            .budget
            .clone()
            .try_acquire_many_owned(bytes)
            .map_err(|_| Refused::OverBudget(budget))?;
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match held.as_mut() {
            Some(all) => OwnedSemaphorePermit::merge(all, permit),
            None => *held = Some(permit),
        }
        Ok(())
    }

    /// Whether the body has stalled, arming the timer (and its wake-up) if it is not armed.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let stall = self.bounds.stall;
        self.stalled_at
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)))
            .as_mut()
            .poll(cx)
            .is_ready()
    }
}

impl http_body::Body for Bounded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Pending if self.stalled(cx) => {
                let stalled = Refused::Stalled(self.bounds.stall);
                Poll::Ready(Some(Err(axum::Error::new(stalled))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let bytes = frame.data_ref().map_or(0, Bytes::len);
                if let Err(refused) = self.take(bytes) {
                    return Poll::Ready(Some(Err(axum::Error::new(refused))));
                }
                let stall = self.bounds.stall;
                if let Some(stalled_at) = self.stalled_at.as_mut() {
                    stalled_at.as_mut().reset(Instant::now() + stall);
                }
                polled
            }
            _ => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
