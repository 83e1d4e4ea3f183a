//! Reads, each in its own read transaction: they never wait for the writer (redb MVCC) and a
//! long scan paged by its caller lets redb reclaim pages between pages.
//!
//! Every read applies the streams' lifecycles: events of deleted streams and events outside
//! their retention window are skipped (see `lifecycle`).

use std::collections::HashMap;

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableError,
};
use uuid::Uuid;

use super::page::Page;
use super::store::{
    CHECKPOINTS, EVENT_IDS, EVENTS, LAST_POSITION_KEY, META, PARKED, RECENT_RUNS, SNAPSHOTS,
    STREAM_HEADS, STREAM_LIFECYCLE, STREAM_RUNS,
};
use super::{
    JournalError, Lifecycle, ParkedEvent, ReadLimit, RecordedEvent, Visibility, record, runs,
};
use crate::journal::lifecycle::now_millis;
use crate::journal::{StreamMetadata, StreamWindow};

/// The lifecycle records of one read transaction.
struct Lifecycles {
    table: ReadOnlyTable<&'static str, &'static [u8]>,
    heads: ReadOnlyTable<&'static str, u64>,
    now: u64,
}

impl Lifecycles {
    fn open(txn: &ReadTransaction) -> Result<Self, JournalError> {
        Ok(Self {
            table: txn.open_table(STREAM_LIFECYCLE)?,
            heads: txn.open_table(STREAM_HEADS)?,
            now: now_millis(),
        })
    }

    /// The last stored version of `stream`, deleted or not.
    fn stored(&self, stream: &str) -> Result<Option<u64>, JournalError> {
        Ok(self.heads.get(stream)?.map(|version| version.value()))
    }

    fn get(&self, stream: &str) -> Result<Option<Lifecycle>, JournalError> {
        self.table
            .get(stream)?
            .map(|bytes| Lifecycle::decode(stream, bytes.value()))
            .transpose()
    }

    /// What readers see of `stream`; fails for a hard-deleted one.
    fn visibility(&self, stream: &str) -> Result<Visibility, JournalError> {
        match self.get(stream)? {
            None => Ok(Visibility::ALL),
            Some(lifecycle) => {
                lifecycle.check_exists(stream)?;
                let last = self.stored(stream)?.unwrap_or(0);
                Ok(lifecycle.visibility(last, self.now))
            }
        }
    }
}

/// Filters a scan of the global log, looking each stream's lifecycle up once.
struct LogFilter {
    lifecycles: Option<Lifecycles>,
    seen: HashMap<String, Visibility>,
}

impl LogFilter {
    /// A filter that admits everything when no stream has a lifecycle record.
    fn open(txn: &ReadTransaction) -> Result<Self, JournalError> {
        let lifecycles = Lifecycles::open(txn)?;
        let any = !lifecycles.table.is_empty()?;
        Ok(Self {
            lifecycles: any.then_some(lifecycles),
            seen: HashMap::new(),
        })
    }

    fn admits(&mut self, event: &record::Envelope<'_>) -> Result<bool, JournalError> {
        let Some(lifecycles) = &self.lifecycles else {
            return Ok(true);
        };
        let visibility = match self.seen.get(event.stream) {
            Some(visibility) => *visibility,
            None => {
                let visibility = match lifecycles.visibility(event.stream) {
                    Err(JournalError::StreamDeleted(_)) => Visibility::NONE,
                    other => other?,
                };
                self.seen.insert(event.stream.to_owned(), visibility);
                visibility
            }
        };
        Ok(visibility.admits(event.version, event.recorded_at))
    }
}

/// Events reserved for up front by a read of many (growing a page's vector was a tenth of a
/// scan).
const RESERVE: usize = 1024;

/// An empty vector for up to `limit` events.
fn reserved(limit: ReadLimit) -> Vec<RecordedEvent> {
    Vec::with_capacity(limit.events.min(RESERVE))
}

/// Up to `limit` events of `stream` with version ≥ `from_version`, ascending.
pub(in crate::journal) fn read_stream(
    db: &Database,
    stream: &str,
    from_version: u64,
    limit: ReadLimit,
) -> Result<Vec<RecordedEvent>, JournalError> {
    let txn = db.begin_read()?;
    let visibility = Lifecycles::open(&txn)?.visibility(stream)?;
    let (main, recent) = (txn.open_table(STREAM_RUNS)?, txn.open_table(RECENT_RUNS)?);
    let log = txn.open_table(EVENTS)?;
    let from = from_version.max(visibility.first());
    // A stream's recent runs all follow its runs in the main table.
    let runs = runs::holding(&main, stream, from)?.chain(runs::holding(&recent, stream, from)?);
    let (mut events, mut used, mut page) = (reserved(limit), 0, Page::default());
    'runs: for run in runs {
        let run = run?;
        let first = run.first_version.max(from);
        let mut records = log.range(run.position(first)..run.first_position + run.count)?;
        for version in first..run.end_version() {
            if events.len() >= limit.events {
                break 'runs;
            }
            let position = run.position(version);
            let bytes = match records.next().transpose()? {
                Some((stored, bytes)) if stored.value() == position => bytes,
                _ => {
                    return Err(JournalError::Corrupt {
                        position,
                        reason: format!(
                            "version {version} of stream {stream:?} points at a missing record"
                        ),
                    });
                }
            };
            let event = record::decode(position, bytes.value())?;
            if event.stream != stream || event.version != version {
                return Err(JournalError::Corrupt {
                    position,
                    reason: format!(
                        "indexed as version {version} of {stream:?} but holds version {} of {:?}",
                        event.version, event.stream
                    ),
                });
            }
            if !visibility.admits(event.version, event.recorded_at) {
                continue;
            }
            if !limit.admits(&mut used, event.size(), events.is_empty()) {
                break 'runs;
            }
            events.push(page.own(position, &event));
        }
    }
    Ok(events)
}

/// Up to `limit` events of the global log with position ≥ `from_position`, ascending.
pub(in crate::journal) fn read_all(
    db: &Database,
    from_position: u64,
    limit: ReadLimit,
) -> Result<Vec<RecordedEvent>, JournalError> {
    let txn = db.begin_read()?;
    let log = txn.open_table(EVENTS)?;
    let mut filter = LogFilter::open(&txn)?;
    let (mut events, mut used, mut page) = (reserved(limit), 0, Page::default());
    for entry in log.range(from_position..)? {
        if events.len() >= limit.events {
            break;
        }
        let (position, bytes) = entry?;
        let position = position.value();
        let event = record::decode(position, bytes.value())?;
        if !filter.admits(&event)? {
            continue;
        }
        if !limit.admits(&mut used, event.size(), events.is_empty()) {
            break;
        }
        events.push(page.own(position, &event));
    }
    Ok(events)
}

/// The event with id `id`, if the journal has it and readers may see it.
pub(in crate::journal) fn event_by_id(
    db: &Database,
    id: Uuid,
) -> Result<Option<RecordedEvent>, JournalError> {
    let txn = db.begin_read()?;
    let Some(position) = txn.open_table(EVENT_IDS)?.get(id.as_u128())? else {
        return Ok(None);
    };
    let position = position.value();
    let log = txn.open_table(EVENTS)?;
    let Some(bytes) = log.get(position)? else {
        // Scavenged: its id is kept so that a retry is still recognised.
        return Ok(None);
    };
    let event = record::decode(position, bytes.value())?;
    let visible = LogFilter::open(&txn)?.admits(&event)?;
    Ok(visible.then(|| Page::default().own(position, &event)))
}

/// The events `plugin` parked, by position.
pub(in crate::journal) fn parked(
    db: &Database,
    plugin: &str,
) -> Result<Vec<ParkedEvent>, JournalError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(PARKED) {
        Ok(table) => table,
        // A file from before parking existed: nothing parked yet.
        Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(error) => return Err(error.into()),
    };
    let mut parked = Vec::new();
    for entry in table.range((plugin, 0)..=(plugin, u64::MAX))? {
        let (key, value) = entry?;
        let event =
            serde_json::from_slice(value.value()).map_err(|error| JournalError::Corrupt {
                position: key.value().1,
                reason: format!("undecodable parked record: {error}"),
            })?;
        parked.push(event);
    }
    Ok(parked)
}

/// The last global position (0 when the log is empty).
pub(super) fn head_position(db: &Database) -> Result<u64, JournalError> {
    let txn = db.begin_read()?;
    let log = txn.open_table(EVENTS)?;
    let last = log.last()?.map_or(0, |(position, _)| position.value());
    let scavenged = txn
        .open_table(META)?
        .get(LAST_POSITION_KEY)?
        .map_or(0, |last| last.value());
    Ok(last.max(scavenged))
}

/// The last version of `stream`, if it exists (a soft-deleted stream does not).
pub(in crate::journal) fn stream_version(
    db: &Database,
    stream: &str,
) -> Result<Option<u64>, JournalError> {
    Ok(stream_window(db, stream)?.current)
}

/// What readers see of `stream`; fails for a hard-deleted one.
pub(in crate::journal) fn stream_window(
    db: &Database,
    stream: &str,
) -> Result<StreamWindow, JournalError> {
    let txn = db.begin_read()?;
    let lifecycles = Lifecycles::open(&txn)?;
    let lifecycle = lifecycles.get(stream)?.unwrap_or_default();
    lifecycle.window(stream, lifecycles.stored(stream)?, lifecycles.now)
}

/// The retention metadata of `stream`; fails for a hard-deleted one.
pub(in crate::journal) fn stream_metadata(
    db: &Database,
    stream: &str,
) -> Result<StreamMetadata, JournalError> {
    let txn = db.begin_read()?;
    let lifecycle = Lifecycles::open(&txn)?.get(stream)?.unwrap_or_default();
    lifecycle.check_exists(stream)?;
    Ok(lifecycle.metadata)
}

/// Every stream whose name starts with `prefix`, in name order.
pub(in crate::journal) fn streams_with_prefix(
    db: &Database,
    prefix: &str,
) -> Result<Vec<String>, JournalError> {
    let txn = db.begin_read()?;
    let lifecycles = Lifecycles::open(&txn)?;
    let mut streams = Vec::new();
    for entry in lifecycles.heads.range(prefix..)? {
        let (stream, _) = entry?;
        let stream = stream.value();
        if !stream.starts_with(prefix) {
            break;
        }
        if lifecycles
            .get(stream)?
            .is_none_or(|lifecycle| lifecycle.is_listed())
        {
            streams.push(stream.to_owned());
        }
    }
    Ok(streams)
}

/// The newest snapshot of (plugin, stream) with version ≤ `at_most_version`.
pub(in crate::journal) fn latest_snapshot(
    db: &Database,
    plugin: &str,
    stream: &str,
    at_most_version: u64,
) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
    let txn = db.begin_read()?;
    let snapshots = txn.open_table(SNAPSHOTS)?;
    let newest = snapshots
        .range((plugin, stream, 0)..=(plugin, stream, at_most_version))?
        .next_back()
        .transpose()?;
    Ok(newest.map(|(key, state)| (key.value().2, state.value().to_vec())))
}

/// The checkpoint of `plugin`: position and state.
pub(in crate::journal) fn checkpoint(
    db: &Database,
    plugin: &str,
) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
    let txn = db.begin_read()?;
    let checkpoints = txn.open_table(CHECKPOINTS)?;
    Ok(checkpoints.get(plugin)?.map(|entry| {
        let (position, state) = entry.value();
        (position, state.to_vec())
    }))
}

#[cfg(test)]
mod tests {
    use redb::Database;

    use super::*;
    use crate::journal::NewEvent;
    use crate::journal::redb::store::{self, STREAM_HEADS};

    fn journal_with(
        records: &[(u64, Vec<u8>)],
        runs: &[(&str, u64, u64, u64)],
    ) -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(
            &dir.path().join("journal.redb"),
            crate::journal::DEFAULT_CACHE_BYTES,
        )
        .unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(EVENTS).unwrap();
            for (position, bytes) in records {
                log.insert(position, bytes.as_slice()).unwrap();
            }
            let mut stream_runs = txn.open_table(STREAM_RUNS).unwrap();
            let mut heads = txn.open_table(STREAM_HEADS).unwrap();
            for &(stream, version, position, count) in runs {
                stream_runs
                    .insert((stream, version), (position, count))
                    .unwrap();
                heads.insert(stream, version + count - 1).unwrap();
            }
        }
        txn.commit().unwrap();
        (dir, db)
    }

    fn encoded(stream: &str, version: u64) -> Vec<u8> {
        let event = NewEvent::json("Happened", &serde_json::json!({}));
        record::encode(stream, version, &event, 0)
    }

    fn corrupt_position<T: std::fmt::Debug>(result: Result<T, JournalError>) -> u64 {
        match result {
            Err(JournalError::Corrupt { position, .. }) => position,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn an_undecodable_record_is_reported_with_its_position() {
        let records = [
            (1, encoded("s", 1)),
            (2, vec![1, 0xff]),
            (3, encoded("s", 2)),
        ];
        let (_dir, db) = journal_with(&records, &[("s", 1, 1, 2)]);
        let n = ReadLimit::events;
        assert_eq!(read_all(&db, 1, n(1)).unwrap().len(), 1);
        assert_eq!(corrupt_position(read_all(&db, 1, n(10))), 2);
        assert_eq!(read_all(&db, 3, n(10)).unwrap()[0].position, 3);
        assert_eq!(corrupt_position(read_stream(&db, "s", 1, n(10))), 2);
    }

    #[test]
    fn an_index_that_disagrees_with_the_record_is_corrupt() {
        let records = [(1, encoded("s", 1)), (2, encoded("t", 1))];
        let (_dir, db) = journal_with(&records, &[("s", 1, 1, 2), ("u", 1, 9, 1)]);
        let n = ReadLimit::events;
        assert_eq!(read_stream(&db, "s", 1, n(1)).unwrap().len(), 1);
        assert_eq!(corrupt_position(read_stream(&db, "s", 1, n(10))), 2);
        assert_eq!(corrupt_position(read_stream(&db, "u", 1, n(10))), 9);
    }
}
