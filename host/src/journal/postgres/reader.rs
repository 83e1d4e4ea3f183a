//! The reads: each runs on the backend's runtime, retried on transient failures.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::journal::{
    ContentType, JournalError, ParkedEvent, ReadLimit, RecordedEvent, StreamMetadata, StreamWindow,
};

use super::{PgJournal, cached, lifecycle, no_answer, pool_error, to_i64, transient};

const READ_ATTEMPTS: usize = 3;

pub(super) const EVENT_COLUMNS: &str =
    "position, stream, version, id, event_type, content_type, data, metadata, recorded_at";

impl PgJournal {
    /// Runs the read `query` on the backend's runtime and waits for it, retrying transient
    /// failures, for at most the deadline; callable from any thread.
    fn read<T, F, Fut>(&self, query: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: Fn(deadpool_postgres::Object) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, JournalError>> + Send,
    {
        let (pool, deadline) = (self.pool.clone(), self.deadline);
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime().spawn(async move {
            let mut attempt = 0;
            let tries = async {
                loop {
                    attempt += 1;
                    let outcome = match pool.get().await {
                        Ok(client) => query(client).await,
                        Err(error) => Err(pool_error(error)),
                    };
                    match outcome {
                        Err(error) if attempt < READ_ATTEMPTS && transient(&error) => {
                            tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
                        }
                        // Still out of reach: the caller may try again later (503).
                        Err(error @ JournalError::Postgres(_)) if transient(&error) => {
                            break Err(JournalError::Unavailable(error.to_string()));
                        }
                        outcome => break outcome,
                    }
                }
            };
            let outcome = tokio::time::timeout(deadline, tries)
                .await
                .unwrap_or_else(|_| Err(no_answer(deadline)));
            let _ = tx.send(outcome);
        });
        match rx.recv_timeout(deadline + Duration::from_secs(1)) {
            Ok(outcome) => outcome,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(no_answer(deadline)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(JournalError::Closed),
        }
    }

    pub(in crate::journal) fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: ReadLimit,
    ) -> Result<Vec<RecordedEvent>, JournalError> {
        let stream = stream.to_owned();
        self.read(move |client| {
            let stream = stream.clone();
            async move { lifecycle::read_stream(&client, &stream, from_version, limit).await }
        })
    }

    pub(in crate::journal) fn read_all(
        &self,
        from_position: u64,
        limit: ReadLimit,
    ) -> Result<Vec<RecordedEvent>, JournalError> {
        self.read(
            move |client| async move { lifecycle::read_all(&client, from_position, limit).await },
        )
    }

    pub(in crate::journal) fn event_by_id(
        &self,
        id: Uuid,
    ) -> Result<Option<RecordedEvent>, JournalError> {
        self.read(move |client| async move { lifecycle::event_by_id(&client, id).await })
    }

    pub(in crate::journal) fn parked(
        &self,
        plugin: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, JournalError> {
        let plugin = plugin.to_owned();
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |client| {
            let plugin = plugin.clone();
            async move {
                let rows = cached::query(
                    &client,
                    "SELECT position, stream, event_type, reason, attempts, parked_at \
                     FROM parked WHERE plugin = $1 AND position > $2 ORDER BY position LIMIT $3",
                    &[&plugin, &after, &limit],
                )
                .await?;
                Ok(rows
                    .iter()
                    .map(|row| ParkedEvent {
                        position: row.get::<_, i64>(0) as u64,
                        stream: row.get(1),
                        event_type: row.get(2),
                        reason: row.get(3),
                        attempts: u32::try_from(row.get::<_, i64>(4)).unwrap_or(u32::MAX),
                        parked_at: row.get::<_, i64>(5) as u64,
                    })
                    .collect())
            }
        })
    }

    pub(in crate::journal) fn stream_version(
        &self,
        stream: &str,
    ) -> Result<Option<u64>, JournalError> {
        Ok(self.stream_window(stream)?.current)
    }

    pub(in crate::journal) fn stream_window(
        &self,
        stream: &str,
    ) -> Result<StreamWindow, JournalError> {
        let stream = stream.to_owned();
        self.read(move |client| {
            let stream = stream.clone();
            async move { lifecycle::stream_window(&client, &stream).await }
        })
    }

    pub(in crate::journal) fn stream_window_and_page(
        &self,
        stream: &str,
        from_version: u64,
        limit: ReadLimit,
    ) -> Result<(StreamWindow, Vec<RecordedEvent>), JournalError> {
        let stream = stream.to_owned();
        self.read(move |client| {
            let stream = stream.clone();
            async move {
                lifecycle::stream_window_and_page(&client, &stream, from_version, limit).await
            }
        })
    }

    pub(in crate::journal) fn stream_metadata(
        &self,
        stream: &str,
    ) -> Result<StreamMetadata, JournalError> {
        let stream = stream.to_owned();
        self.read(move |client| {
            let stream = stream.clone();
            async move { lifecycle::stream_metadata(&client, &stream).await }
        })
    }

    pub(in crate::journal) fn streams_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<String>, JournalError> {
        let prefix = prefix.to_owned();
        self.read(move |client| {
            let prefix = prefix.clone();
            async move { lifecycle::streams_with_prefix(&client, &prefix).await }
        })
    }

    pub(in crate::journal) fn latest_snapshot(
        &self,
        plugin: &str,
        stream: &str,
        at_most_version: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
        let (plugin, stream) = (plugin.to_owned(), stream.to_owned());
        let at_most = to_i64(at_most_version);
        self.read(move |client| {
            let (plugin, stream) = (plugin.clone(), stream.clone());
            async move {
                let row = cached::query_opt(
                    &client,
                    "SELECT version, state FROM snapshots \
                     WHERE plugin = $1 AND stream = $2 AND version <= $3 \
                     ORDER BY version DESC LIMIT 1",
                    &[&plugin, &stream, &at_most],
                )
                .await?;
                Ok(row.map(|row| (row.get::<_, i64>(0) as u64, row.get(1))))
            }
        })
    }

    pub(in crate::journal) fn checkpoint(
        &self,
        plugin: &str,
    ) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
        let plugin = plugin.to_owned();
        self.read(move |client| {
            let plugin = plugin.clone();
            async move {
                let row = cached::query_opt(
                    &client,
                    "SELECT position, state FROM checkpoints WHERE plugin = $1",
                    &[&plugin],
                )
                .await?;
                Ok(row.map(|row| (row.get::<_, i64>(0) as u64, row.get(1))))
            }
        })
    }
}

pub(super) fn decode(row: &tokio_postgres::Row) -> Result<RecordedEvent, JournalError> {
    let position = row.get::<_, i64>(0) as u64;
    let content_type = match row.get::<_, i16>(5) {
        0 => ContentType::Json,
        1 => ContentType::Binary,
        other => {
            return Err(JournalError::Corrupt {
                position,
                reason: format!("unknown content type {other}"),
            });
        }
    };
    Ok(RecordedEvent {
        position,
        stream: row.get::<_, String>(1).into(),
        version: row.get::<_, i64>(2) as u64,
        id: row.get(3),
        event_type: row.get::<_, String>(4).into(),
        content_type,
        data: row.get::<_, Vec<u8>>(6).into(),
        metadata: row.get::<_, Option<String>>(7).map(Into::into),
        recorded_at: row.get::<_, i64>(8) as u64,
    })
}

pub(super) async fn read_head(client: &impl GenericClient) -> Result<u64, JournalError> {
    let row = cached::query_one(client, "SELECT position FROM log_head", &[]).await?;
    Ok(row.get::<_, i64>(0) as u64)
}
