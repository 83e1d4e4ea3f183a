//! Stream lifecycles on PostgreSQL: the `stream_lifecycle` table, reads that skip what it hides,
//! and the scavenge. The rules themselves are the shared ones of `journal::lifecycle`.
//!
//! Deletes and metadata changes go through the writer, under the log lock, with the appends of
//! their batch (see `BatchState`), so an append never races a delete of its stream on any host.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::reader::{EVENT_COLUMNS, decode};
use super::{Pool, cached, pg, pool_error, to_i64};
use crate::journal::lifecycle::{Lifecycle, Visibility, now_millis};
use crate::journal::{
    JournalError, ReadLimit, RecordedEvent, ScavengeReport, StreamMetadata, StreamWindow,
};

/// Created at start when missing (added after schema 1, which it does not change).
pub(super) const TABLE: &str = r#"
CREATE TABLE IF NOT EXISTS stream_lifecycle (
    stream TEXT COLLATE "C" PRIMARY KEY,
    lifecycle BYTEA NOT NULL
);
"#;

/// Most events one scavenge transaction removes.
const CHUNK: i64 = 10_000;

/// Events matching `filter`, in `order`, at most `$2` of them, with the columns of
/// `EVENT_COLUMNS` (for `decode`) and then `within`: whether the running total of
/// [`RecordedEvent::size`] up to the row stays within `$3` bytes, or it is the first row and
/// `$4` says the read has no event yet.
///
/// The byte limit is applied here, so a read of large events fetches no more than the limit
/// of them: rows past it come without data and metadata, only for their visibility to be
/// judged. The total counts hidden rows too, so a visible row past it may yet fit the limit;
/// the reader reads on from that row (see `read_all`).
fn bounded(filter: &str, order: &str) -> String {
    format!(
        "SELECT position, stream, version, id, event_type, content_type, \
             CASE WHEN within THEN data ELSE '' END AS data, \
             CASE WHEN within THEN metadata END AS metadata, recorded_at, within \
         FROM (SELECT *, (count(*) OVER w = 1 AND $4) OR sum(octet_length(data) \
                 + octet_length(event_type) + coalesce(octet_length(metadata), 0)) OVER w <= $3 \
                 AS within \
             FROM events WHERE {filter} \
             WINDOW w AS (ORDER BY {order} ROWS UNBOUNDED PRECEDING) \
             ORDER BY {order} LIMIT $2) bounded"
    )
}

/// The lifecycle record in column `index` of `row` (NULL: none).
fn lifecycle_at(row: &Row, index: usize, stream: &str) -> Result<Option<Lifecycle>, JournalError> {
    row.get::<_, Option<Vec<u8>>>(index)
        .map(|bytes| Lifecycle::decode(stream, &bytes))
        .transpose()
}

fn version_at(row: &Row, index: usize) -> Option<u64> {
    row.get::<_, Option<i64>>(index)
        .map(|version| version as u64)
}

/// The lifecycle records of `streams`, with their stored versions.
pub(super) async fn load(
    client: &impl GenericClient,
    streams: &[&str],
) -> Result<HashMap<String, Lifecycle>, JournalError> {
    let rows = cached::query(
        client,
        "SELECT stream, lifecycle FROM stream_lifecycle WHERE stream = ANY($1)",
        &[&streams],
    )
    .await?;
    rows.iter()
        .map(|row| {
            let stream: String = row.get(0);
            let lifecycle = Lifecycle::decode(&stream, row.get(1))?;
            Ok((stream, lifecycle))
        })
        .collect()
}

/// Writes changed lifecycle records.
pub(super) async fn store(
    client: &impl GenericClient,
    changed: &HashMap<String, Lifecycle>,
) -> Result<(), JournalError> {
    if changed.is_empty() {
        return Ok(());
    }
    let (streams, records): (Vec<&str>, Vec<Vec<u8>>) = changed
        .iter()
        .map(|(stream, lifecycle)| (stream.as_str(), lifecycle.encode()))
        .unzip();
    cached::execute(
        client,
        "INSERT INTO stream_lifecycle (stream, lifecycle) \
         SELECT s, l FROM unnest($1::TEXT[], $2::BYTEA[]) AS r(s, l) \
         ON CONFLICT (stream) DO UPDATE SET lifecycle = excluded.lifecycle",
        &[&streams, &records],
    )
    .await?;
    Ok(())
}

/// The stored version and lifecycle record of `stream`.
async fn stream_record(
    client: &impl GenericClient,
    stream: &str,
) -> Result<(Option<u64>, Lifecycle), JournalError> {
    let row = cached::query_one(
        client,
        "SELECT s.version, l.lifecycle FROM (SELECT $1::TEXT AS stream) q \
         LEFT JOIN streams s ON s.stream = q.stream \
         LEFT JOIN stream_lifecycle l ON l.stream = q.stream",
        &[&stream],
    )
    .await?;
    Ok((
        version_at(&row, 0),
        lifecycle_at(&row, 1, stream)?.unwrap_or_default(),
    ))
}

pub(super) async fn stream_window(
    client: &impl GenericClient,
    stream: &str,
) -> Result<StreamWindow, JournalError> {
    let (stored, lifecycle) = stream_record(client, stream).await?;
    lifecycle.window(stream, stored, now_millis())
}

pub(super) async fn stream_metadata(
    client: &impl GenericClient,
    stream: &str,
) -> Result<StreamMetadata, JournalError> {
    let (_, lifecycle) = stream_record(client, stream).await?;
    lifecycle.check_exists(stream)?;
    Ok(lifecycle.metadata)
}

/// Visible events of `stream` from `from_version` on, within `limit`.
pub(super) async fn read_stream(
    client: &impl GenericClient,
    stream: &str,
    from_version: u64,
    limit: ReadLimit,
) -> Result<Vec<RecordedEvent>, JournalError> {
    Ok(page(client, stream, from_version, limit).await?.1)
}

/// The window of `stream` and its visible events from `from_version` on, within `limit`: the
/// window comes with the page's first query (a second query only for a stream without events,
/// whose lifecycle record may exist all the same).
pub(super) async fn stream_window_and_page(
    client: &impl GenericClient,
    stream: &str,
    from_version: u64,
    limit: ReadLimit,
) -> Result<(StreamWindow, Vec<RecordedEvent>), JournalError> {
    let (found, events) = page(client, stream, from_version, limit).await?;
    let window = match found {
        Some((stored, lifecycle, now)) => lifecycle.window(stream, stored, now)?,
        None => stream_window(client, stream).await?,
    };
    Ok((window, events))
}

/// What the first query of a page found of its stream: the stored version, the lifecycle record
/// and the time its visibility was judged at.
type Found = (Option<u64>, Lifecycle, u64);

/// Visible events of `stream` from `from_version` on, within `limit`, and what the first query
/// found of the stream (None: no such stream).
///
/// One query in the common case: it returns the stream's version and lifecycle with the page
/// (a row without an event when the page is empty), so a hard-deleted stream is refused even
/// after its events were scavenged. The byte limit cuts the page in the query (see `bounded`).
async fn page(
    client: &impl GenericClient,
    stream: &str,
    from_version: u64,
    limit: ReadLimit,
) -> Result<(Option<Found>, Vec<RecordedEvent>), JournalError> {
    let sql = format!(
        "SELECT e.*, s.version, l.lifecycle FROM streams s \
         LEFT JOIN stream_lifecycle l ON l.stream = s.stream \
         LEFT JOIN LATERAL ({}) e ON TRUE \
         WHERE s.stream = $5",
        bounded("stream = s.stream AND version >= $1", "version")
    );
    let now = now_millis();
    let (mut from, mut events, mut used) = (from_version, Vec::new(), 0);
    let mut found = None;
    'query: while events.len() < limit.events {
        let want = limit.events - events.len();
        let rows = cached::query(
            client,
            &sql,
            &[
                &to_i64(from),
                &to_i64(want as u64),
                &to_i64(limit.bytes.saturating_sub(used) as u64),
                &events.is_empty(),
                &stream,
            ],
        )
        .await?;
        let Some(first) = rows.first() else {
            break; // no such stream
        };
        let stored = version_at(first, 10);
        let visibility = match lifecycle_at(first, 11, stream)? {
            None => {
                found.get_or_insert((stored, Lifecycle::default(), now));
                Visibility::ALL
            }
            Some(lifecycle) => {
                lifecycle.check_exists(stream)?;
                found.get_or_insert((stored, lifecycle, now));
                lifecycle.visibility(stored.unwrap_or(0), now)
            }
        };
        if from < visibility.first() {
            from = visibility.first();
            continue;
        }
        let mut read = 0;
        for row in rows.iter().filter(|row| version_at(row, 0).is_some()) {
            let event = decode(row)?;
            read += 1;
            from = event.version + 1;
            if !visibility.admits(event.version, event.recorded_at) {
                continue;
            }
            if !row.get::<_, bool>(9) {
                if read == 1 {
                    return Ok((found, events)); // past what is left of the limit
                }
                from = event.version; // past the limit only with hidden rows before it
                continue 'query;
            }
            used += event.size();
            events.push(event);
        }
        if read < want {
            break;
        }
    }
    Ok((found, events))
}

/// Visible events of the global log from `from_position` on, within `limit`.
pub(super) async fn read_all(
    client: &impl GenericClient,
    from_position: u64,
    limit: ReadLimit,
) -> Result<Vec<RecordedEvent>, JournalError> {
    // The outer LIMIT changes no result: it has the planner join row by row by index, not
    // hash the whole lifecycle table.
    let sql = format!(
        "SELECT e.*, s.version, l.lifecycle FROM ({}) e \
         LEFT JOIN stream_lifecycle l ON l.stream = e.stream \
         LEFT JOIN streams s ON s.stream = l.stream \
         ORDER BY e.position LIMIT $2",
        bounded("position >= $1", "position")
    );
    let now = now_millis();
    let mut seen: HashMap<String, Visibility> = HashMap::new();
    let (mut from, mut events, mut used) = (from_position, Vec::new(), 0);
    'query: while events.len() < limit.events {
        let want = limit.events - events.len();
        let rows = cached::query(
            client,
            &sql,
            &[
                &to_i64(from),
                &to_i64(want as u64),
                &to_i64(limit.bytes.saturating_sub(used) as u64),
                &events.is_empty(),
            ],
        )
        .await?;
        for (index, row) in rows.iter().enumerate() {
            let event = decode(row)?;
            from = event.position + 1;
            let visibility = match seen.get(&*event.stream) {
                Some(visibility) => *visibility,
                None => {
                    let visibility = match lifecycle_at(row, 11, &event.stream)? {
                        None => Visibility::ALL,
                        Some(lifecycle) => {
                            lifecycle.visibility(version_at(row, 10).unwrap_or(0), now)
                        }
                    };
                    seen.insert(event.stream.to_string(), visibility);
                    visibility
                }
            };
            if !visibility.admits(event.version, event.recorded_at) {
                continue;
            }
            if !row.get::<_, bool>(9) {
                if index == 0 {
                    return Ok(events); // past what is left of the limit
                }
                from = event.position; // past the limit only with hidden rows before it
                continue 'query;
            }
            used += event.size();
            events.push(event);
        }
        if rows.len() < want {
            break;
        }
    }
    Ok(events)
}

/// The event with id `id`, if readers may see it (its stream not deleted, it not expired).
pub(super) async fn event_by_id(
    client: &impl GenericClient,
    id: uuid::Uuid,
) -> Result<Option<RecordedEvent>, JournalError> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1");
    let Some(row) = cached::query_opt(client, &sql, &[&id]).await? else {
        return Ok(None);
    };
    let event = decode(&row)?;
    let (stored, lifecycle) = stream_record(client, &event.stream).await?;
    let visible = lifecycle.check_exists(&event.stream).is_ok()
        && lifecycle
            .visibility(stored.unwrap_or(0), now_millis())
            .admits(event.version, event.recorded_at);
    Ok(visible.then_some(event))
}

/// Every listed (not deleted) stream whose name starts with `prefix`, in name order.
pub(super) async fn streams_with_prefix(
    client: &impl GenericClient,
    prefix: &str,
) -> Result<Vec<String>, JournalError> {
    let rows = cached::query(
        client,
        "SELECT s.stream, l.lifecycle FROM streams s \
         LEFT JOIN stream_lifecycle l ON l.stream = s.stream \
         WHERE starts_with(s.stream, $1) ORDER BY s.stream",
        &[&prefix],
    )
    .await?;
    let mut streams = Vec::new();
    for row in &rows {
        let stream: String = row.get(0);
        if lifecycle_at(row, 1, &stream)?.is_none_or(|lifecycle| lifecycle.is_listed()) {
            streams.push(stream);
        }
    }
    Ok(streams)
}

/// Removes every hidden event and the snapshots no reader can use, then rewrites the tables
/// (`VACUUM FULL`) so the removed rows' bytes are gone from their files.
pub(super) async fn scavenge(pool: &Pool) -> Result<ScavengeReport, JournalError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let mut report = ScavengeReport {
        bytes_before: table_bytes(&client).await?,
        ..ScavengeReport::default()
    };
    let streams: Vec<String> = cached::query(
        &client,
        "SELECT stream FROM stream_lifecycle ORDER BY stream",
        &[],
    )
    .await?
    .iter()
    .map(|row| row.get(0))
    .collect();
    let mut unusable = Vec::new();
    for stream in &streams {
        report.streams += 1;
        loop {
            let txn = client.transaction().await.map_err(pg)?;
            let (removed, whole) = remove_hidden(&txn, stream).await?;
            txn.commit().await.map_err(pg)?;
            report.events += removed;
            if !whole {
                unusable.push(stream.as_str());
            }
            if removed < CHUNK as u64 {
                break;
            }
        }
    }
    unusable.dedup();
    report.snapshots = cached::execute(
        &client,
        "DELETE FROM snapshots WHERE stream = ANY($1)",
        &[&unusable],
    )
    .await?;
    // Plain VACUUM only marks dead rows' space free; their bytes stay in the pages until
    // reused. VACUUM FULL writes new files without them (and locks the tables meanwhile).
    // It takes as long as the tables are big: exempt from the statement timeout.
    // (one statement per call: VACUUM refuses to run in a multi-statement string)
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .map_err(pg)?;
    let vacuumed = client
        .batch_execute("VACUUM FULL events, snapshots")
        .await
        .map_err(pg);
    // Whatever the VACUUM did (a full disk, a lock timeout): the connection goes back to the
    // pool, and the writer's transactions on it must not run without a statement timeout. One
    // that cannot be restored is closed instead of pooled.
    if let Err(error) = client.batch_execute("RESET statement_timeout").await {
        tracing::warn!(%error, "closing a connection whose statement timeout could not be restored");
        drop(deadpool_postgres::Object::take(client));
        return Err(vacuumed.err().unwrap_or_else(|| pg(error)));
    }
    vacuumed?;
    report.bytes_after = table_bytes(&client).await?;
    tracing::info!(?report, "scavenged the journal");
    Ok(report)
}

/// The bytes of the tables a scavenge shrinks, with their indexes and TOAST.
async fn table_bytes(client: &impl GenericClient) -> Result<u64, JournalError> {
    let row = cached::query_one(
        client,
        "SELECT pg_total_relation_size('events') + pg_total_relation_size('snapshots')",
        &[],
    )
    .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Removes up to [`CHUNK`] of the oldest hidden events of `stream`, stopping at the first
/// visible one; returns how many, and whether the stream's window is whole.
async fn remove_hidden(
    txn: &deadpool_postgres::Transaction<'_>,
    stream: &str,
) -> Result<(u64, bool), JournalError> {
    // Locks the record: a delete or metadata change of this stream waits for this transaction.
    let row = cached::query_opt(
        txn,
        "SELECT l.lifecycle, s.version FROM stream_lifecycle l \
         LEFT JOIN streams s ON s.stream = l.stream WHERE l.stream = $1 FOR UPDATE OF l",
        &[&stream],
    )
    .await?;
    let Some(row) = row else {
        return Ok((0, true));
    };
    let lifecycle = lifecycle_at(&row, 0, stream)?.unwrap_or_default();
    let stored = version_at(&row, 1);
    let now = now_millis();
    let visibility = lifecycle.visibility(stored.unwrap_or(0), now);
    let whole = lifecycle
        .window(stream, stored, now)
        .is_ok_and(|window| window.is_whole());
    let rows = cached::query(
        txn,
        "SELECT version, recorded_at FROM events WHERE stream = $1 ORDER BY version LIMIT $2",
        &[&stream, &CHUNK],
    )
    .await?;
    let hidden: Vec<u64> = rows
        .iter()
        .map(|row| (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
        .take_while(|&(version, recorded_at)| !visibility.admits(version, recorded_at))
        .map(|(version, _)| version)
        .collect();
    let Some(&last) = hidden.last() else {
        return Ok((0, whole));
    };
    let removed = cached::execute(
        txn,
        "DELETE FROM events WHERE stream = $1 AND version <= $2",
        &[&stream, &to_i64(last)],
    )
    .await?;
    Ok((removed, whole))
}

#[cfg(test)]
mod tests {
    use deadpool_postgres::Manager;
    use tokio_postgres::{Client, NoTls};

    use super::*;
    use crate::journal::postgres::{schema, settings::Settings};

    /// A connection to `url` of the test cluster (`FOLDHOST_TEST_POSTGRES`, see scripts/postgres).
    async fn connect(url: &str) -> Client {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    /// A failed `VACUUM FULL` (here: a lock timeout, as a full disk would fail it) still gives
    /// its connection back to the pool with the statement timeout it had.
    #[tokio::test]
    async fn postgres_a_failed_vacuum_leaves_the_statement_timeout_in_force() {
        let admin = std::env::var("FOLDHOST_TEST_POSTGRES").unwrap_or_else(|_| {
            panic!(
                "FOLDHOST_TEST_POSTGRES is not set: this test needs a throwaway PostgreSQL \
                 cluster; run scripts/test (or `. scripts/postgres` first)"
            )
        });
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        (connect(&admin).await)
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = admin.split('?').next().unwrap();
        let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
        let settings =
            Settings::parse(&format!("{url}?statement_timeout=7s&lock_timeout=100ms")).unwrap();
        // One connection: the scavenge's is the one handed out next.
        let pool = Pool::builder(Manager::new(settings.config.clone(), settings.tls.clone()))
            .max_size(1)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .unwrap();
        schema::migrate(&pool).await.unwrap();

        let peer = connect(&url).await;
        peer.batch_execute("BEGIN; LOCK TABLE snapshots IN ACCESS SHARE MODE")
            .await
            .unwrap();
        let failed = scavenge(&pool).await.unwrap_err();
        assert!(failed.to_string().contains("lock timeout"), "{failed}");
        peer.batch_execute("ROLLBACK").await.unwrap();

        let client = pool.get().await.unwrap();
        let row = client
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "7s");
        drop(client);
        assert!(scavenge(&pool).await.is_ok());
    }
}
