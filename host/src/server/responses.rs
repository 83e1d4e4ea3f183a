//! Response bodies waiting to be written hold their bytes of the body budget.
//!
//! A page of large events, a projection's state or a kept upload is made whole before it is
//! sent, and a client that asks for it on many connections and reads nothing would otherwise
//! hold all of them in memory for as long as each connection lives (the write-stall timeout
//! restarts with every byte written). So a response of [`HELD_FROM`] bytes or more takes its
//! size from the budget request bodies share, and from its client's share of it, before it is
//! sent, and gives it back once the connection has taken its last chunk: past the budget it
//! is refused with 503 (429 past the client's share), as a body would be; one larger than the
//! whole budget or a client's share (a kept upload of the largest size) goes out unheld, as
//! refusing it would refuse it always. It is handed on in copied chunks, so once it is given
//! back the connection holds no more of it than its own write buffer (hyper's ~400 KiB).

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Buf;
use http_body::{Frame, SizeHint};

use super::bodies::BodyBounds;
use super::body_budget::{Holding, OverBudget};
use super::clients;
use super::errors::ApiError;

/// Responses smaller than this are sent as they are: they hold little each.
const HELD_FROM: u64 = 64 << 10;
/// The most bytes handed to the connection at once.
const CHUNK: usize = 64 << 10;

/// Middleware: a response of a known size of [`HELD_FROM`] bytes or more holds its bytes of
/// the body budget until it is written out, or is refused if they are not there.
pub async fn hold(State(bounds): State<BodyBounds>, request: Request, next: Next) -> Response {
    let client = clients::of_request(request.extensions());
    // Its body is dropped after the layers: nothing of it is sent.
    let head = request.method() == Method::HEAD;
    let response = next.run(request).await;
    if head {
        return response;
    }
    let size = http_body::Body::size_hint(response.body()).exact();
    let Some(size) = size.filter(|&size| size >= HELD_FROM) else {
        return response;
    };
    let mut held = bounds.budget().holding(client);
    match held.take(usize::try_from(size).unwrap_or(usize::MAX)) {
        Ok(()) => {}
        // Refusing it would refuse it always: it goes out as before, unheld.
        Err(OverBudget::LargerThanBudget { .. } | OverBudget::LargerThanShare { .. }) => {
            return response;
        }
        Err(over) => return refusal(over, size),
    }
    response.map(|inner| {
        Body::new(Held {
            inner,
            rest: Bytes::new(),
            _held: held,
        })
    })
}

/// The answer instead of a response the budget cannot hold now: 429 past the client's
/// share, 503 past the budget.
fn refusal(over: OverBudget, size: u64) -> Response {
    let why = format!("the response of {size} bytes cannot be held: {over}");
    match over {
        OverBudget::Client { .. } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, why)
            .retry_after(1)
            .into_response(),
        _ => ApiError::busy(why, 1).into_response(),
    }
}

/// A response body handed on in chunks of at most [`CHUNK`] bytes, holding its bytes of the
/// budget until it is dropped (written out, or its connection gone).
struct Held {
    inner: Body,
    /// What is left of the frame being handed on.
    rest: Bytes,
    _held: Holding,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return other,
            }
        }
        // A copy: a slice would keep the whole response in memory as long as the connection
        // holds it, after this body (and its hold) is gone.
        let chunk = Bytes::copy_from_slice(&this.rest[..CHUNK.min(this.rest.len())]);
        this.rest.advance(chunk.len());
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let (inner, rest) = (self.inner.size_hint(), self.rest.len() as u64);
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint.set_lower(inner.lower() + rest);
        hint
    }
}
