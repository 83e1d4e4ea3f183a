//! Lingering close: a connection closed with request bytes still unread (a body refused with
//! 413 or 503 before it was read) is not dropped at once, which would make the kernel answer
//! the client's next bytes with a reset that can destroy the response before the client reads
//! it. Instead, as web servers do, the write side is shut (the response stays deliverable) and
//! whatever the client still sends is read and thrown away until it closes its side or
//! `LINGER` has passed.
//!
//! hyper shuts every connection it ends in order through here, not only those with bytes unread
//! (which this wrapper cannot tell apart), so each may linger for up to `LINGER`; one whose client
//! closes too ends as soon as that close arrives. A connection that fails (a header read
//! timeout, a reset) is dropped without lingering.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How long a closing connection keeps draining what its client still sends.
const LINGER: Duration = Duration::from_secs(2);

/// A connection whose shutdown lingers (see the module docs).
pub struct Lingering<S> {
    inner: S,
    /// Set once the write side is shut: draining ends when it fires.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> Lingering<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            deadline: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lingering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let deadline = match &mut this.deadline {
            Some(deadline) => deadline,
            None => {
                ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                this.deadline.insert(Box::pin(tokio::time::sleep(LINGER)))
            }
        };
        let mut scratch = [0; 8192];
        loop {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut discarded = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut discarded)) {
                Ok(()) if discarded.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => {}
                // The client is gone: there is nothing left to protect.
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}
