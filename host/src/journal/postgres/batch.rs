//! The appends of one batch, validated in memory under the log lock and written together.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use uuid::Uuid;

use crate::journal::lifecycle::Lifecycle;
use crate::journal::rules::{self, Written};
use crate::journal::{
    AppendResult, ContentType, ExpectedVersion, JournalError, NewEvent, StreamMetadata,
};

use super::{cached, lifecycle};

/// What one request did inside a batch.
pub(super) struct Applied {
    pub(super) result: Option<AppendResult>,
    pub(super) written_events: u64,
}

fn content_type_code(content_type: ContentType) -> i16 {
    match content_type {
        ContentType::Json => 0,
        ContentType::Binary => 1,
    }
}

/// Where a stored event is: position, stream, version.
type Stored = (u64, String, u64);

/// The appends of one batch, validated in memory and written together.
pub(super) struct BatchState<'a> {
    /// The log head when the batch took the lock.
    pub(super) start: u64,
    /// The next free position.
    pub(super) next: u64,
    /// Event ids of the batch already stored, and those this batch adds.
    known: HashMap<Uuid, Stored>,
    /// Stored versions of the streams the batch writes (None: no such stream).
    versions: HashMap<String, Option<u64>>,
    /// Lifecycle records of the streams the batch writes (absent: none).
    lifecycles: HashMap<String, Lifecycle>,
    /// Lifecycle records the batch changed, to store.
    pub(super) changed: HashMap<String, Lifecycle>,
    /// Position, stream, version, event, and the time an import keeps.
    rows: Vec<(u64, &'a str, u64, &'a NewEvent, Option<u64>)>,
}

impl<'a> BatchState<'a> {
    /// Locks the log head and reads the stored ids `appends` involve, and the versions and
    /// lifecycles of `streams`.
    pub(super) async fn load(
        txn: &Transaction<'_>,
        appends: &[(&'a str, &'a [NewEvent])],
        streams: &[&str],
    ) -> Result<Self, JournalError> {
        let row = cached::query_one(txn, "SELECT position FROM log_head FOR UPDATE", &[]).await?;
        let start = row.get::<_, i64>(0) as u64;
        let ids: Vec<Uuid> = appends
            .iter()
            .flat_map(|(_, events)| events.iter().map(|event| event.id))
            .collect();
        // Under the lock, so they see every commit before it; independent of each other, they
        // are sent together (pipelined) and cost one round trip. Polled in order (`biased`),
        // they are sent in this order once their statements are prepared (on a connection's
        // first batch a statement still being prepared goes after the others), so the first
        // error is the first failed statement's, not a later one's "transaction is aborted".
        let (known, heads, lifecycles) = tokio::try_join!(
            biased;
            async {
                let sql = "SELECT position, stream, version, id FROM events WHERE id = ANY($1)";
                cached::query(txn, sql, &[&ids]).await
            },
            async {
                let sql = "SELECT stream, version FROM streams WHERE stream = ANY($1)";
                cached::query(txn, sql, &[&streams]).await
            },
            lifecycle::load(txn, streams),
        )?;
        let known = known
            .iter()
            .map(|row| {
                let stored = (
                    row.get::<_, i64>(0) as u64,
                    row.get::<_, String>(1),
                    row.get::<_, i64>(2) as u64,
                );
                (row.get::<_, Uuid>(3), stored)
            })
            .collect();
        let mut versions: HashMap<String, Option<u64>> = streams
            .iter()
            .map(|stream| ((*stream).to_owned(), None))
            .collect();
        for row in heads {
            versions.insert(row.get(0), Some(row.get::<_, i64>(1) as u64));
        }
        Ok(Self {
            start,
            next: start + 1,
            known,
            versions,
            lifecycles,
            changed: HashMap::new(),
            rows: Vec::new(),
        })
    }

    /// The lifecycle of `stream` as this batch left it.
    fn lifecycle(&self, stream: &str) -> Lifecycle {
        self.changed
            .get(stream)
            .or_else(|| self.lifecycles.get(stream))
            .copied()
            .unwrap_or_default()
    }

    /// Soft- or hard-deletes `stream` once `expected` holds; a refusal changes nothing.
    pub(super) fn delete(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        hard: bool,
    ) -> Result<(), JournalError> {
        let mut lifecycle = self.lifecycle(stream);
        let stored = self.versions.get(stream).copied().flatten();
        lifecycle.delete(stream, stored, expected, hard)?;
        self.changed.insert(stream.to_owned(), lifecycle);
        Ok(())
    }

    /// Replaces the retention metadata of `stream`.
    pub(super) fn set_metadata(
        &mut self,
        stream: &str,
        metadata: StreamMetadata,
    ) -> Result<(), JournalError> {
        let mut lifecycle = self.lifecycle(stream);
        lifecycle.set_metadata(stream, metadata)?;
        self.changed.insert(stream.to_owned(), lifecycle);
        Ok(())
    }

    /// Appends `events` to `stream` if `expected` holds, or recognises a retry; a refusal
    /// changes nothing. They get the commit's time unless `recorded_at` (an import's) is given.
    pub(super) fn append(
        &mut self,
        stream: &'a str,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
        recorded_at: Option<u64>,
    ) -> Result<Applied, JournalError> {
        let mut lifecycle = self.lifecycle(stream);
        lifecycle.check_exists(stream)?;
        let stored: Vec<(Uuid, &Stored)> = events
            .iter()
            .filter_map(|event| self.known.get(&event.id).map(|at| (event.id, at)))
            .collect();
        if !stored.is_empty() {
            let written: Vec<Written> = stored
                .iter()
                .map(|(id, (position, other, version))| Written {
                    id: *id,
                    stream: other,
                    position: *position,
                    version: *version,
                })
                .collect();
            return rules::retried(stream, events, &written).map(|result| Applied {
                result: Some(result),
                written_events: 0,
            });
        }
        let stored = self.versions.get(stream).copied().flatten();
        expected.check(stream, lifecycle.current(stored))?;
        let count = events.len() as u64;
        // Versions continue after a soft delete.
        let result = AppendResult::placing(stored, count, self.next);
        if !lifecycle.is_listed() {
            lifecycle.appended();
            self.changed.insert(stream.to_owned(), lifecycle);
        }
        for ((event, version), position) in events
            .iter()
            .zip(result.first_version..)
            .zip(result.first_position..)
        {
            self.known
                .insert(event.id, (position, stream.to_owned(), version));
            self.rows
                .push((position, stream, version, event, recorded_at));
        }
        self.versions
            .insert(stream.to_owned(), Some(result.last_version));
        self.next = result.last_position + 1;
        Ok(Applied {
            result: Some(result),
            written_events: count,
        })
    }

    /// Inserts the accepted events and moves their streams' versions.
    pub(super) async fn write(
        self,
        txn: &Transaction<'_>,
        recorded_at: u64,
    ) -> Result<(), JournalError> {
        let positions: Vec<i64> = self.rows.iter().map(|row| row.0 as i64).collect();
        let streams: Vec<&str> = self.rows.iter().map(|row| row.1).collect();
        let versions: Vec<i64> = self.rows.iter().map(|row| row.2 as i64).collect();
        let ids: Vec<Uuid> = self.rows.iter().map(|row| row.3.id).collect();
        let types: Vec<&str> = self
            .rows
            .iter()
            .map(|row| row.3.event_type.as_str())
            .collect();
        let content_types: Vec<i16> = self
            .rows
            .iter()
            .map(|row| content_type_code(row.3.content_type))
            .collect();
        let data: Vec<&[u8]> = self.rows.iter().map(|row| row.3.data.as_slice()).collect();
        let metadata: Vec<Option<&str>> = self
            .rows
            .iter()
            .map(|row| row.3.metadata.as_deref())
            .collect();
        let times: Vec<i64> = self
            .rows
            .iter()
            .map(|row| row.4.unwrap_or(recorded_at) as i64)
            .collect();
        let (heads, head_versions): (Vec<&str>, Vec<i64>) = self
            .versions
            .iter()
            .filter_map(|(stream, version)| Some((stream.as_str(), (*version)? as i64)))
            .unzip();
        // Pipelined, as the other writes of the batch.
        let insert = async {
            cached::execute(
                txn,
                "INSERT INTO events (position, stream, version, id, event_type, content_type, \
                 data, metadata, recorded_at) \
                 SELECT p, s, v, i, t, c, d, m, r \
                 FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::UUID[], $5::TEXT[], \
                             $6::SMALLINT[], $7::BYTEA[], $8::TEXT[], $9::BIGINT[]) \
                      AS e(p, s, v, i, t, c, d, m, r)",
                &[
                    &positions,
                    &streams,
                    &versions,
                    &ids,
                    &types,
                    &content_types,
                    &data,
                    &metadata,
                    &times,
                ],
            )
            .await
        };
        let move_heads = async {
            cached::execute(
                txn,
                "INSERT INTO streams (stream, version) \
                 SELECT s, v FROM unnest($1::TEXT[], $2::BIGINT[]) AS h(s, v) \
                 ON CONFLICT (stream) DO UPDATE SET version = excluded.version",
                &[&heads, &head_versions],
            )
            .await
        };
        tokio::try_join!(biased; insert, move_heads)?;
        Ok(())
    }
}
