//! Bounds on request bodies while they arrive: each must arrive within the read timeout of its
//! headers, and all bodies being received or handled share one byte budget.
//!
//! Bodies are read whole before a handler runs (up to 8 MiB of JSON, 64 MiB for an upload).
//! Without these bounds a client that sent all but the last bytes of a large body and then
//! waited held that memory for as long as it kept the connection: a hundred such clients took
//! the server from 99 MB to 922 MB. Now a body that stalls is refused with 408 once the read
//! timeout has passed, and a body that would take the bytes held past the budget is refused at
//! once with 503 and `Retry-After`. A body's bytes count until its response is made.

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
use tokio::time::Sleep;

use super::errors::ApiError;

/// What bounds request bodies: how long one may take after its headers, and the bytes all
/// of them may hold together.
#[derive(Clone)]
pub struct BodyBounds {
    deadline: Duration,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

impl BodyBounds {
    /// Bodies that take at most `deadline` each and hold at most `budget_bytes` together.
    pub fn new(deadline: Duration, budget_bytes: usize) -> Self {
        let budget_bytes = budget_bytes.min(Semaphore::MAX_PERMITS);
        Self {
            deadline,
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
        }
    }
}

/// Why a body was cut off.
#[derive(Debug)]
enum Refused {
    Late(Duration),
    OverBudget(usize),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Late(deadline) => write!(
                f,
                "the request body did not arrive within {} s of its headers",
                deadline.as_secs()
            ),
            Refused::OverBudget(budget) => write!(
                f,
                "the server is holding its budget of {budget} bytes of request bodies; retry"
            ),
        }
    }
}

impl Error for Refused {}

/// Middleware: reads the request body under [`BodyBounds`] and keeps its bytes counted until
/// the response is made.
pub async fn bound(State(bounds): State<BodyBounds>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if http_body::Body::is_end_stream(&body) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let held = Arc::new(Mutex::new(None));
    let body = Body::new(Bounded {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(bounds.deadline)),
        bounds,
        held: held.clone(),
    });
    let response = next.run(Request::from_parts(parts, body)).await;
    drop(held);
    response
}

/// The error answer for a body that could not be read: 408 or 503 if [`bound`] cut it off,
/// otherwise axum's own status and text (413 over the size limit, 400 for a broken body).
pub fn refused(rejection: BytesRejection) -> ApiError {
    let mut source: Option<&(dyn Error + 'static)> = Some(&rejection);
    while let Some(error) = source {
        match error.downcast_ref::<Refused>() {
            Some(late @ Refused::Late(_)) => {
                return ApiError::new(StatusCode::REQUEST_TIMEOUT, late);
            }
            Some(over @ Refused::OverBudget(_)) => return ApiError::busy(over, 1),
            None => source = error.source(),
        }
    }
    ApiError::new(rejection.status(), rejection.body_text())
}

/// A body that fails once its deadline passes or its bytes would go over the budget; the
/// bytes it took from the budget go back once every holder of `held` is dropped.
struct Bounded {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    bounds: BodyBounds,
    held: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

impl Bounded {
    fn take(&self, bytes: usize) -> Result<(), Refused> {
        let over = || Refused::OverBudget(self.bounds.budget_bytes);
        let bytes = u32::try_from(bytes).map_err(|_| over())?;
        let permit = self
            .bounds
            .budget
            .clone()
            .try_acquire_many_owned(bytes)
            .map_err(|_| over())?;
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match held.as_mut() {
            Some(all) => all.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    }
}

impl http_body::Body for Bounded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            let late = Refused::Late(self.bounds.deadline);
            return Poll::Ready(Some(Err(axum::Error::new(late))));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && let Err(refused) = self.take(data.len())
        {
            return Poll::Ready(Some(Err(axum::Error::new(refused))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
