//! Following other hosts' commits: a connection that listens for their notifications and
//! moves this host's head.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::journal::JournalError;

use super::reader::read_head;
use super::{Shared, pg, pool_error, settings};

/// The channel commits are announced on.
pub(super) const CHANNEL: &str = "foldhost_log";

/// A connection that has run `LISTEN foldhost_log`, as a stream of notified positions.
pub(super) type Listener = futures_util::stream::BoxStream<'static, Result<u64, JournalError>>;

pub(super) async fn listen(settings: &settings::Settings) -> Result<Listener, JournalError> {
    let (client, mut connection) = settings
        .config
        .connect(settings.tls.clone())
        .await
        .map_err(pg)?;
    let messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The connection only makes progress while polled: drive it while LISTEN is sent.
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = Box::pin(messages);
        while let Some(message) = messages.next().await {
            let item = match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    match notification.payload().parse::<u64>() {
                        Ok(position) => Ok(position),
                        Err(_) => continue,
                    }
                }
                Ok(_) => continue,
                Err(error) => Err(pg(error)),
            };
            let failed = item.is_err();
            if tx.send(item).is_err() || failed {
                break;
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(pg)?;
    // Keep the client alive as long as the stream: dropping it would close the connection.
    let stream = futures_util::stream::unfold((rx, client), |(mut rx, client)| async move {
        rx.recv().await.map(|item| (item, (rx, client)))
    });
    Ok(stream.boxed())
}

/// Moves the head on every notification; reconnects (and re-reads the head) if the listening
/// connection fails. Stops when the journal is gone.
pub(super) async fn follow(
    settings: Arc<settings::Settings>,
    pool: Pool,
    mut listener: Listener,
    shared: std::sync::Weak<Shared>,
) {
    loop {
        while let Some(item) = listener.next().await {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            match item {
                Ok(position) => shared.advance(position),
                Err(error) => {
                    tracing::warn!(%error, "journal notifications interrupted");
                    break;
                }
            }
        }
        loop {
            if shared.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let reconnected = async {
                let listener = listen(&settings).await?;
                let head = read_head(&pool.get().await.map_err(pool_error)?).await?;
                Ok::<_, JournalError>((listener, head))
            }
            .await;
            match reconnected {
                Ok((again, head)) => {
                    if let Some(shared) = shared.upgrade() {
                        shared.advance(head);
                    }
                    listener = again;
                    break;
                }
                Err(error) => tracing::warn!(%error, "reconnecting the journal listener"),
            }
        }
    }
}
