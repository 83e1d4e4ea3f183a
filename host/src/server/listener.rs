//! Accepts connections whose writes may not stall for ever: a client that stops reading (a
//! live feed it no longer drains, a page it never fetches) is cut off once nothing could be
//! written to it for the configured time, which frees its buffers and its live-feed slot.

use std::pin::Pin;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_io_timeout::TimeoutStream;

/// A TCP listener whose connections time out writes that make no progress.
pub struct StallGuarded {
    listener: TcpListener,
    write_timeout: Duration,
}

impl StallGuarded {
    pub fn new(listener: TcpListener, write_timeout: Duration) -> Self {
        Self {
            listener,
            write_timeout,
        }
    }
}

impl axum::serve::Listener for StallGuarded {
    type Io = Pin<Box<TimeoutStream<TcpStream>>>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(self.write_timeout));
        (Box::pin(stream), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}
