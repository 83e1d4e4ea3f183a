//! Bounds on request bodies while they arrive: a body that stalls or trickles is refused, and
//! all bodies being received or handled share one byte budget.
//!
//! Bodies are read whole before a handler runs (up to 8 MiB of JSON, 64 MiB for an upload).
//! Without these bounds a client that sent all but the last bytes of a large body and then
//! waited held that memory for as long as it kept the connection: a hundred such clients took
//! the server from 99 MB to 922 MB. Now a body of which nothing arrives for the read timeout
//! (counted from when the handler starts reading it, then from each chunk) is refused with 408;
//! so is one that, once the read timeout has passed since that first read, has sent fewer bytes
//! than the minimum rate times the time since (a client that sends a byte just before each
//! stall would otherwise hold its bytes for ever); a body that would take the bytes held past
//! the budget is refused at once with 503 and `Retry-After`, or with 413 if it is larger than
//! the whole budget; one that would take its client past its share of the budget (see
//! [`body_budget`](super::body_budget)) is refused with 429 and `Retry-After`. A body's bytes
//! count until its response is made, or, for a plugin upload, until its compile ends (which a
//! client that leaves does not stop).

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
use tokio::time::{Instant, Sleep};

use super::body_budget::{BodyBudget, Holding, OverBudget};
use super::clients;
use super::errors::ApiError;

/// What bounds request bodies: how long one may go without a byte arriving, how slowly it
/// may arrive, and the bytes all of them, and one client's, may hold together.
#[derive(Clone)]
pub struct BodyBounds {
    stall: Duration,
    min_rate: usize,
    budget: Arc<BodyBudget>,
}

impl BodyBounds {
    /// Bodies that never stall for `stall`, arrive at `min_rate` bytes per second or faster on
    /// average once `stall` has passed since their first read (0: at any rate), and hold at
    /// most `budget` bytes together.
    pub fn new(stall: Duration, min_rate: usize, budget: BodyBudget) -> Self {
        Self {
            stall,
            min_rate,
            budget: Arc::new(budget),
        }
    }

    /// The budget the bodies hold, and the share of it each client holds.
    pub fn budget(&self) -> &Arc<BodyBudget> {
        &self.budget
    }
}

/// Why a body was cut off.
#[derive(Debug)]
enum Refused {
    Stalled(Duration),
    TooSlow { rate: u64, min_rate: usize },
    OverBudget(OverBudget),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Stalled(stall) => write!(
                f,
                "the request body stalled: nothing of it arrived for {} s",
                stall.as_secs()
            ),
            Refused::TooSlow { rate, min_rate } => write!(
                f,
                "the request body arrived at {rate} bytes/s, slower than the server's minimum \
                 of {min_rate} bytes/s"
            ),
            Refused::OverBudget(over) => write!(f, "{over}"),
        }
    }
}

impl Error for Refused {}

/// The share of the body budget a request's body holds, in the request's extensions: work
/// that outlives the request (a plugin upload's compile) keeps it, so a client that leaves
/// does not free bytes the server still holds.
#[derive(Clone)]
pub struct BodyHold {
    _held: Arc<Mutex<Holding>>,
}

/// Middleware: reads the request body under [`BodyBounds`] and keeps its bytes counted until
/// the response is made, or for as long as a [`BodyHold`] is kept.
pub async fn bound(State(bounds): State<BodyBounds>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let client = clients::of_request(&parts.extensions);
    let held = Arc::new(Mutex::new(bounds.budget.holding(client)));
    parts.extensions.insert(BodyHold {
        _held: held.clone(),
    });
    if http_body::Body::is_end_stream(&body) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let body = Body::new(Bounded {
        inner: body,
        clock: None,
        bounds,
        taken: 0,
        held: held.clone(),
    });
    let response = next.run(Request::from_parts(parts, body)).await;
    drop(held);
    response
}

/// The error answer for a body that could not be read: 408, 429, 503 or 413 if [`bound`] cut it
/// off, otherwise axum's own status and text (413 over the size limit, 400 for a broken body).
pub fn refused(rejection: BytesRejection) -> ApiError {
    let mut source: Option<&(dyn Error + 'static)> = Some(&rejection);
    while let Some(error) = source {
        match error.downcast_ref::<Refused>() {
            Some(late @ (Refused::Stalled(_) | Refused::TooSlow { .. })) => {
                return ApiError::new(StatusCode::REQUEST_TIMEOUT, late);
            }
            Some(Refused::OverBudget(over @ OverBudget::Host { .. })) => {
                return ApiError::busy(over, 1);
            }
            Some(Refused::OverBudget(over @ OverBudget::Client { .. })) => {
                return ApiError::new(StatusCode::TOO_MANY_REQUESTS, over).retry_after(1);
            }
            Some(Refused::OverBudget(
                larger @ (OverBudget::LargerThanBudget { .. } | OverBudget::LargerThanShare { .. }),
            )) => {
                return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, larger);
            }
            None => source = error.source(),
        }
    }
    ApiError::new(rejection.status(), rejection.body_text())
}

/// A body that fails once nothing of it arrives for the stall timeout, it falls below the
/// minimum rate, or its bytes would go over the budget or its client's share; the bytes it
/// took go back once every holder of `held` is dropped.
struct Bounded {
    inner: Body,
    /// Set on the first read: a handler may start reading late, after waiting for plugins to
    /// load.
    clock: Option<Clock>,
    bounds: BodyBounds,
    /// Bytes of this body that arrived.
    taken: usize,
    held: Arc<Mutex<Holding>>,
}

/// When a body was first read and last grew, and when it is refused unless more arrives.
struct Clock {
    started: Instant,
    /// When the last chunk arrived (the first read, before any did).
    last: Instant,
    deadline: Pin<Box<Sleep>>,
}

impl Bounded {
    fn take(&mut self, bytes: usize) -> Result<(), Refused> {
        self.taken = self.taken.saturating_add(bytes);
        self.held
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take(bytes)
            .map_err(Refused::OverBudget)
    }

    /// The body's clock, started on the first call.
    fn clock(&mut self) -> &mut Clock {
        let stall = self.bounds.stall;
        self.clock.get_or_insert_with(|| {
            let now = Instant::now();
            Clock {
                started: now,
                last: now,
                deadline: Box::pin(tokio::time::sleep_until(now + stall)),
            }
        })
    }

    /// Moves the deadline after a chunk: to the stall timeout from now, or sooner to when the
    /// bytes so far fall below the minimum rate times the time since the first read (never
    /// before the stall timeout has passed since it: a grace period for slow starts).
    fn arrived(&mut self) {
        let BodyBounds {
            stall, min_rate, ..
        } = self.bounds;
        let taken = self.taken;
        let clock = self.clock();
        clock.last = Instant::now();
        let mut deadline = clock.last + stall;
        if min_rate > 0 {
            let earned = Duration::from_secs_f64(taken as f64 / min_rate as f64);
            deadline = deadline.min(clock.started + earned.max(stall));
        }
        clock.deadline.as_mut().reset(deadline);
    }

    /// Why the body is refused once its deadline has passed.
    fn refusal(&mut self) -> Refused {
        let BodyBounds {
            stall, min_rate, ..
        } = self.bounds;
        let taken = self.taken as f64;
        let clock = self.clock();
        let now = Instant::now();
        if now >= clock.last + stall {
            return Refused::Stalled(stall);
        }
        let rate = taken / (now - clock.started).as_secs_f64();
        Refused::TooSlow {
            rate: rate as u64,
            min_rate,
        }
    }
}

impl http_body::Body for Bounded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        // Starts the clock on the first read, whether or not a chunk is already there.
        this.clock();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Pending if this.clock().deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Some(Err(axum::Error::new(this.refusal()))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let bytes = frame.data_ref().map_or(0, Bytes::len);
                if let Err(refused) = this.take(bytes) {
                    return Poll::Ready(Some(Err(axum::Error::new(refused))));
                }
                this.arrived();
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
