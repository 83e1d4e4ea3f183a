//! Accepts connections and serves HTTP/1.1 on them, bounding how long a client may hold a
//! connection without making progress:
//!
//! - a client that stops reading (a live feed it no longer drains, a page it never fetches) is
//!   cut off once nothing could be written to it for the write-stall timeout, which frees its
//!   buffers and its live-feed slot;
//! - a request's headers must arrive within the read timeout of the connection opening or of
//!   its previous response: a client that connects and sends nothing, types its headers a byte
//!   at a time, or leaves a kept-alive connection idle is closed after it (axum's own `serve`
//!   sets no such timeout, so each of them held a task and a file descriptor for ever, and
//!   enough of them left the server unable to accept anyone);
//! - a connection closed with a request body unread drains it for a moment first (see
//!   [`linger`](super::linger)), so that its client reads the refusal rather than a reset.
//!
//! Each request carries its connection's peer address as [`ConnectInfo`] (the body budget
//! and the live feeds give each address a share of them, see [`clients`](super::clients)).

use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::linger::Lingering;

/// Serves `app` on `listener` until `shutdown` is cancelled; then stops accepting, lets each
/// connection finish its request in flight and returns once all are closed. A failed accept
/// (out of file descriptors, say) is retried after a pause, as axum's `serve` does.
pub async fn serve(
    mut listener: TcpListener,
    app: Router,
    write_timeout: Duration,
    read_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = shutdown.cancelled() => break,
        };
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(write_timeout));
        let app = app.clone();
        let service = service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().call(request)
        });
        let stream = Lingering::new(Box::pin(stream));
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut connection = pin!(connection);
            tokio::select! {
                served = connection.as_mut() => return log_end(served),
                () = shutdown.cancelled() => {}
            }
            connection.as_mut().graceful_shutdown();
            log_end(connection.await);
        });
    }
    // Refuse new clients at once rather than leave them waiting while the others finish.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

fn log_end(served: hyper::Result<()>) {
    if let Err(error) = served {
        tracing::debug!(%error, "connection ended");
    }
}
