//! Reads, each in its own read transaction: they never wait for the writer (redb MVCC) and a
//! long scan paged by its caller lets redb reclaim pages between pages.
//!
//! Every read applies the streams' lifecycles: events of deleted streams and events outside
//! their retention window are skipped (see `lifecycle`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata,
};
use uuid::Uuid;

use super::memtable::Memtable;
use super::page::Page;
use super::record::RawEnvelope;
use super::runs::Run;
use super::store::{
    CHECKPOINTS, EVENT_ID_BLOCKS, EVENTS, ID_RUN_CATALOG, LAST_POSITION_KEY, META, PARKED,
    SNAPSHOTS, STREAM_HEADS, STREAM_LIFECYCLE, STREAM_RUN_BLOCKS,
};
use super::{
    JournalError, Lifecycle, ParkedEvent, ReadLimit, RecordedEvent, SharedDb, Visibility, id_runs,
    record, runs,
};
use crate::journal::lifecycle::now_millis;
use crate::journal::{EventRef, StreamMetadata, StreamWindow};

/// Stream heads the memtable holds (those a read needs), paired with its read transaction.
type Held = BTreeMap<String, u64>;

/// The lifecycle records of one read transaction.
struct Lifecycles {
    table: ReadOnlyTable<&'static str, &'static [u8]>,
    heads: ReadOnlyTable<&'static str, u64>,
    held: Held,
    now: u64,
}

impl Lifecycles {
    fn open(txn: &ReadTransaction, held: Held) -> Result<Self, JournalError> {
        Ok(Self {
            table: txn.open_table(STREAM_LIFECYCLE)?,
            heads: txn.open_table(STREAM_HEADS)?,
            held,
            now: now_millis(),
        })
    }

    /// The last stored version of `stream`, deleted or not.
    fn stored(&self, stream: &str) -> Result<Option<u64>, JournalError> {
        if let Some(&head) = self.held.get(stream) {
            return Ok(Some(head));
        }
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
    /// A filter that admits everything when `held` is `None`: no stream has a lifecycle record
    /// (see [`lifecycle_heads`]).
    fn open(txn: &ReadTransaction, held: Option<Held>) -> Result<Self, JournalError> {
        let lifecycles = match held {
            Some(held) => Some(Lifecycles::open(txn, held)?),
            None => None,
        };
        Ok(Self {
            lifecycles,
            seen: HashMap::new(),
        })
    }

    /// Whether readers see the event `record` of `stream`. Inlined: without lifecycle records
    /// (the usual log) it is one test per event rather than a call.
    #[inline(always)]
    fn admits(&mut self, stream: &str, record: &RawEnvelope<'_>) -> Result<bool, JournalError> {
        match &self.lifecycles {
            None => Ok(true),
            Some(lifecycles) => Ok(Self::visibility(&mut self.seen, lifecycles, stream)?
                .admits(record.version, record.recorded_at)),
        }
    }

    /// What readers see of `stream`, looked up in `lifecycles` on its first event only.
    fn visibility(
        seen: &mut HashMap<String, Visibility>,
        lifecycles: &Lifecycles,
        stream: &str,
    ) -> Result<Visibility, JournalError> {
        if let Some(visibility) = seen.get(stream) {
            return Ok(*visibility);
        }
        let visibility = match lifecycles.visibility(stream) {
            Err(JournalError::StreamDeleted(_)) => Visibility::NONE,
            other => other?,
        };
        seen.insert(stream.to_owned(), visibility);
        Ok(visibility)
    }
}

/// The memtable's head of `stream` alone, if it holds one: all a read of one stream asks for.
fn held_head(memtable: &Memtable, stream: &str) -> Held {
    (memtable.head(stream))
        .map(|head| (stream.to_owned(), head))
        .into_iter()
        .collect()
}

/// The memtable's heads of the streams with a lifecycle record, the only heads a filter of the
/// log asks for, or `None` when no stream has one. Walks the smaller of the two, so a read
/// copies no more heads than there are lifecycle records.
fn lifecycle_heads(
    txn: &ReadTransaction,
    memtable: &Memtable,
) -> Result<Option<Held>, JournalError> {
    let records = txn.open_table(STREAM_LIFECYCLE)?;
    match records.len()? {
        0 => Ok(None),
        count if count >= memtable.streams() as u64 => Ok(Some(
            (memtable.heads())
                .map(|(stream, head)| (stream.to_owned(), head))
                .collect(),
        )),
        _ => {
            let mut held = BTreeMap::new();
            for entry in records.iter()? {
                let (stream, _) = entry?;
                let stream = stream.value();
                if let Some(head) = memtable.head(stream) {
                    held.insert(stream.to_owned(), head);
                }
            }
            Ok(Some(held))
        }
    }
}

/// Whether any stream has a lifecycle record (then reads of the log filter it).
fn any_lifecycle(txn: &ReadTransaction) -> Result<bool, JournalError> {
    Ok(!txn.open_table(STREAM_LIFECYCLE)?.is_empty()?)
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
    db: &SharedDb,
    stream: &str,
    from_version: u64,
    limit: ReadLimit,
) -> Result<Vec<RecordedEvent>, JournalError> {
    let database = db.get();
    let (txn, (held_runs, held)) = db.begin_read(&database, |_, memtable| {
        Ok((memtable.runs(stream).to_vec(), held_head(memtable, stream)))
    })?;
    let visibility = Lifecycles::open(&txn, held)?.visibility(stream)?;
    stream_page(&txn, held_runs, visibility, stream, from_version, limit)
}

/// [`stream_window`] and [`read_stream`]'s page from one read transaction, so the page is the
/// one the window describes: a truncation or deletion committed in between cannot start the
/// page past the window's first version.
pub(in crate::journal) fn stream_window_and_page(
    db: &SharedDb,
    stream: &str,
    from_version: u64,
    limit: ReadLimit,
) -> Result<(StreamWindow, Vec<RecordedEvent>), JournalError> {
    let database = db.get();
    let (txn, (held_runs, held)) = db.begin_read(&database, |_, memtable| {
        Ok((memtable.runs(stream).to_vec(), held_head(memtable, stream)))
    })?;
    let lifecycles = Lifecycles::open(&txn, held)?;
    let lifecycle = lifecycles.get(stream)?.unwrap_or_default();
    let window = lifecycle.window(stream, lifecycles.stored(stream)?, lifecycles.now)?;
    let visibility = lifecycles.visibility(stream)?;
    let page = stream_page(&txn, held_runs, visibility, stream, from_version, limit)?;
    Ok((window, page))
}

/// The page of [`read_stream`] in `txn`, whose memtable held `held_runs` of `stream`.
fn stream_page(
    txn: &ReadTransaction,
    held_runs: Vec<Run>,
    visibility: Visibility,
    stream: &str,
    from_version: u64,
    limit: ReadLimit,
) -> Result<Vec<RecordedEvent>, JournalError> {
    let main = txn.open_table(STREAM_RUN_BLOCKS)?;
    let log = txn.open_table(EVENTS)?;
    let from = from_version.max(visibility.first());
    // A stream's runs in the memtable all follow its runs in the table.
    let held_runs = held_runs.into_iter().filter(|run| run.end_version() > from);
    let runs = runs::holding(&main, stream, from)?.chain(held_runs.map(Ok));
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
            let record = record::decode_raw(position, bytes.value())?;
            if record.stream != stream.as_bytes() || record.version != version {
                return Err(JournalError::Corrupt {
                    position,
                    reason: format!(
                        "indexed as version {version} of {stream:?} but holds version {} of {:?}",
                        record.version,
                        String::from_utf8_lossy(record.stream)
                    ),
                });
            }
            if !visibility.admits(record.version, record.recorded_at) {
                continue;
            }
            if !limit.admits(&mut used, record.size(), events.is_empty()) {
                break 'runs;
            }
            events.push(page.hold(position, &record)?.own());
        }
    }
    Ok(events)
}

/// A read of the global log: its transaction, the last position it may read (the memtable's
/// `through`: later records may still be committing) and the filter of what readers see.
fn log_read(
    db: &SharedDb,
    database: &Database,
) -> Result<(ReadTransaction, u64, LogFilter), JournalError> {
    let (txn, (through, held)) = db.begin_read(database, |txn, memtable| {
        let held = lifecycle_heads(txn, memtable)?;
        Ok((memtable.through(), held))
    })?;
    let filter = LogFilter::open(&txn, held)?;
    Ok((txn, through, filter))
}

/// Up to `limit` events of the global log with position ≥ `from_position`, ascending.
pub(in crate::journal) fn read_all(
    db: &SharedDb,
    from_position: u64,
    limit: ReadLimit,
) -> Result<Vec<RecordedEvent>, JournalError> {
    let database = db.get();
    let (txn, through, mut filter) = log_read(db, &database)?;
    let log = txn.open_table(EVENTS)?;
    let (mut events, mut used, mut page) = (reserved(limit), 0, Page::default());
    if from_position > through {
        return Ok(events);
    }
    for entry in log.range(from_position..=through)? {
        if events.len() >= limit.events {
            break;
        }
        let (position, bytes) = entry?;
        let position = position.value();
        let record = record::decode_raw(position, bytes.value())?;
        let held = page.hold(position, &record)?;
        if !filter.admits(held.stream(), &record)? {
            continue;
        }
        if !limit.admits(&mut used, record.size(), events.is_empty()) {
            break;
        }
        events.push(held.own());
    }
    Ok(events)
}

/// Visits the events [`read_all`] returns, in order, each borrowing its text and data from the
/// page redb read, inside one read transaction; returns the last position visited. A record
/// that does not decode stops the scan with `Corrupt` after the events before it.
pub(in crate::journal) fn scan_all<E: From<JournalError>>(
    db: &SharedDb,
    from_position: u64,
    limit: ReadLimit,
    mut visit: impl FnMut(EventRef<'_>) -> Result<(), E>,
) -> Result<Option<u64>, E> {
    let database = db.get();
    let (txn, through, mut filter) = log_read(db, &database)?;
    if from_position > through {
        return Ok(None);
    }
    let log = txn.open_table(EVENTS).map_err(JournalError::from)?;
    let range = log
        .range(from_position..=through)
        .map_err(JournalError::from)?;
    let (mut visited, mut used, mut last) = (0, 0, None);
    let mut names = CheckedNames::default();
    for entry in range {
        if visited >= limit.events {
            break;
        }
        let (position, bytes) = entry.map_err(JournalError::from)?;
        let position = position.value();
        let record = record::decode_raw_inline(position, bytes.value())?;
        let event = names.event(position, &record)?;
        if !filter.admits(event.stream, &record)? {
            continue;
        }
        if !limit.admits(&mut used, record.size(), visited == 0) {
            break;
        }
        visit(event)?;
        (visited, last) = (visited + 1, Some(position));
    }
    Ok(last)
}

/// The last stream and type names a scan checked to be UTF-8, as text: a record naming the same
/// bytes is handed these, so a run of one stream or type checks its name once (std's check of
/// two short names was a sixth of a scan).
#[derive(Default)]
struct CheckedNames {
    stream: String,
    event_type: String,
}

impl CheckedNames {
    /// The record stored at `position` as an event, its names checked (or known) to be UTF-8.
    #[inline]
    fn event<'a>(
        &'a mut self,
        position: u64,
        record: &RawEnvelope<'a>,
    ) -> Result<EventRef<'a>, JournalError> {
        Self::check(&mut self.stream, position, "stream name", record.stream)?;
        Self::check(
            &mut self.event_type,
            position,
            "event type",
            record.event_type,
        )?;
        Ok(EventRef {
            position,
            stream: &self.stream,
            version: record.version,
            id: Uuid::from_bytes(record.id),
            event_type: &self.event_type,
            content_type: record.content_type,
            data: record.data,
            metadata: record.metadata,
            recorded_at: record.recorded_at,
        })
    }

    /// Makes `held` the text of `name` unless it already is.
    #[inline]
    fn check(
        held: &mut String,
        position: u64,
        what: &str,
        name: &[u8],
    ) -> Result<(), JournalError> {
        if held.as_bytes() != name {
            held.clear();
            held.push_str(record::utf8(position, what, name)?);
        }
        Ok(())
    }
}

/// The event with id `id`, if the journal has it and readers may see it.
pub(in crate::journal) fn event_by_id(
    db: &SharedDb,
    id: Uuid,
) -> Result<Option<RecordedEvent>, JournalError> {
    let database = db.get();
    // A point read: it reads the event while holding the memtable (its stream's head).
    let (_, event) = db.begin_read(&database, |txn, memtable| {
        let id = id.as_u128();
        let position = match memtable.position(id) {
            Some(position) => position,
            None => {
                let Some(first_run) = memtable.table_runs_for(id) else {
                    return Ok(None);
                };
                let runs = id_runs::Catalog::read(&txn.open_table(ID_RUN_CATALOG)?)?;
                match runs.position(&txn.open_table(EVENT_ID_BLOCKS)?, id, first_run)? {
                    Some(position) => position,
                    None => return Ok(None),
                }
            }
        };
        let log = txn.open_table(EVENTS)?;
        let Some(bytes) = log.get(position)? else {
            // Not expected (a scavenge removes an event's id with it): answered as unknown.
            return Ok(None);
        };
        let record = record::decode_raw(position, bytes.value())?;
        let mut page = Page::default();
        let event = page.hold(position, &record)?;
        let held = any_lifecycle(txn)?.then(|| held_head(memtable, event.stream()));
        let visible = LogFilter::open(txn, held)?.admits(event.stream(), &record)?;
        Ok(visible.then(|| event.own()))
    })?;
    Ok(event)
}

/// Up to `limit` of the events `plugin` parked, by position, from the first after `after`.
pub(in crate::journal) fn parked(
    db: &SharedDb,
    plugin: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<ParkedEvent>, JournalError> {
    let database = db.get();
    let txn = database.begin_read()?;
    let table = txn.open_table(PARKED)?;
    let mut parked = Vec::new();
    let Some(from) = after.checked_add(1) else {
        return Ok(parked);
    };
    for entry in table
        .range((plugin, from)..=(plugin, u64::MAX))?
        .take(limit)
    {
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
pub(super) fn head_position(db: &SharedDb) -> Result<u64, JournalError> {
    let database = db.get();
    let txn = database.begin_read()?;
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
    db: &SharedDb,
    stream: &str,
) -> Result<Option<u64>, JournalError> {
    Ok(stream_window(db, stream)?.current)
}

/// What readers see of `stream`; fails for a hard-deleted one.
pub(in crate::journal) fn stream_window(
    db: &SharedDb,
    stream: &str,
) -> Result<StreamWindow, JournalError> {
    let database = db.get();
    let (txn, held) = db.begin_read(&database, |_, memtable| Ok(held_head(memtable, stream)))?;
    let lifecycles = Lifecycles::open(&txn, held)?;
    let lifecycle = lifecycles.get(stream)?.unwrap_or_default();
    lifecycle.window(stream, lifecycles.stored(stream)?, lifecycles.now)
}

/// The retention metadata of `stream`; fails for a hard-deleted one.
pub(in crate::journal) fn stream_metadata(
    db: &SharedDb,
    stream: &str,
) -> Result<StreamMetadata, JournalError> {
    let database = db.get();
    let txn = database.begin_read()?;
    let lifecycle = Lifecycles::open(&txn, BTreeMap::new())?
        .get(stream)?
        .unwrap_or_default();
    lifecycle.check_exists(stream)?;
    Ok(lifecycle.metadata)
}

/// Every stream whose name starts with `prefix`, in name order.
pub(in crate::journal) fn streams_with_prefix(
    db: &SharedDb,
    prefix: &str,
) -> Result<Vec<String>, JournalError> {
    let database = db.get();
    let (txn, held) = db.begin_read(&database, |_, memtable| {
        let held = memtable.streams_with_prefix(prefix).map(str::to_owned);
        Ok(held.collect::<BTreeSet<String>>())
    })?;
    let lifecycles = Lifecycles::open(&txn, BTreeMap::new())?;
    let mut named = held;
    for entry in lifecycles.heads.range(prefix..)? {
        let (stream, _) = entry?;
        let stream = stream.value();
        if !stream.starts_with(prefix) {
            break;
        }
        named.insert(stream.to_owned());
    }
    let mut streams = Vec::new();
    for stream in named {
        if lifecycles
            .get(&stream)?
            .is_none_or(|lifecycle| lifecycle.is_listed())
        {
            streams.push(stream);
        }
    }
    Ok(streams)
}

/// The newest snapshot of (plugin, stream) with version ≤ `at_most_version`.
pub(in crate::journal) fn latest_snapshot(
    db: &SharedDb,
    plugin: &str,
    stream: &str,
    at_most_version: u64,
) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
    let database = db.get();
    let txn = database.begin_read()?;
    let snapshots = txn.open_table(SNAPSHOTS)?;
    let newest = snapshots
        .range((plugin, stream, 0)..=(plugin, stream, at_most_version))?
        .next_back()
        .transpose()?;
    Ok(newest.map(|(key, state)| (key.value().2, state.value().to_vec())))
}

/// The checkpoint of `plugin`: position and state.
pub(in crate::journal) fn checkpoint(
    db: &SharedDb,
    plugin: &str,
) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
    let database = db.get();
    let txn = database.begin_read()?;
    let checkpoints = txn.open_table(CHECKPOINTS)?;
    Ok(checkpoints.get(plugin)?.map(|entry| {
        let (position, state) = entry.value();
        (position, state.to_vec())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::NewEvent;
    use crate::journal::redb::memtable::INDEXED_THROUGH_KEY;
    use crate::journal::redb::store::{self, STREAM_HEADS};

    fn journal_with(
        records: &[(u64, Vec<u8>)],
        runs: &[(&str, u64, u64, u64)],
    ) -> (tempfile::TempDir, SharedDb) {
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
            let mut blocks = txn.open_table(STREAM_RUN_BLOCKS).unwrap();
            let mut heads = txn.open_table(STREAM_HEADS).unwrap();
            for &(stream, version, position, count) in runs {
                let run = runs::Run::new(version, (position, count));
                runs::append(&mut blocks, stream, &[run]).unwrap();
                heads.insert(stream, version + count - 1).unwrap();
            }
            // The tables index the whole log: nothing of it is left to the memtable.
            let last = records.iter().map(|(position, _)| *position).max();
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(INDEXED_THROUGH_KEY, last.unwrap_or(0)).unwrap();
        }
        txn.commit().unwrap();
        (dir, SharedDb::new(db).unwrap())
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

    /// What `scan_all` visits from `from` within `limit`, made owned, with the position it
    /// returned; the events visited before an error, and the error.
    fn scanned(
        db: &SharedDb,
        from: u64,
        limit: ReadLimit,
    ) -> (Vec<RecordedEvent>, Result<Option<u64>, JournalError>) {
        let mut events = Vec::new();
        let outcome = scan_all(db, from, limit, |event: EventRef<'_>| {
            events.push(event.to_recorded());
            Ok::<_, JournalError>(())
        });
        (events, outcome)
    }

    /// The heads of streams whose events are still in the memtable decide what their
    /// lifecycle hides, in every read that filters by it: a stream keeping its newest two
    /// events shows only those, whether the other streams held number fewer or more than the
    /// streams with lifecycle records.
    #[test]
    fn lifecycles_count_the_heads_the_memtable_holds() {
        use crate::journal::{ExpectedVersion, Journal, JournalConfig, StreamMetadata};
        let dir = tempfile::tempdir().unwrap();
        let journal =
            Journal::open(dir.path().join("journal.redb"), JournalConfig::default()).unwrap();
        let append = |stream: &str| {
            let event = NewEvent::json("Happened", &serde_json::json!({}));
            let id = event.id;
            journal
                .append_blocking(stream, ExpectedVersion::Any, vec![event])
                .unwrap();
            id
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let kept = StreamMetadata {
            max_count: Some(2),
            ..StreamMetadata::default()
        };
        runtime
            .block_on(journal.set_stream_metadata("kept", kept))
            .unwrap();
        let ids: Vec<Uuid> = (0..5).map(|_| append("kept")).collect();
        let visible = |journal: &Journal| {
            let all = journal.read_all(1, 100).unwrap();
            all.iter()
                .filter(|event| event.stream == "kept")
                .map(|event| event.id)
                .collect::<Vec<_>>()
        };
        // One stream held, one lifecycle record; then more streams held than records.
        for other in [None, Some("other")] {
            if let Some(other) = other {
                append(other);
            }
            assert_eq!(visible(&journal), ids[3..], "with {other:?}");
            assert_eq!(journal.event_by_id(ids[0]).unwrap(), None);
            assert_eq!(journal.event_by_id(ids[4]).unwrap().unwrap().id, ids[4]);
            assert_eq!(journal.read_stream("kept", 1, 10).unwrap().len(), 2);
        }
    }

    #[test]
    fn a_scan_visits_what_read_all_returns_in_both_layouts() {
        use record::tests::{layout_1_binary, layout_1_events, layout_1_json};
        let third = NewEvent {
            id: Uuid::from_bytes([3; 16]),
            event_type: "Tagged".to_owned(),
            content_type: crate::journal::ContentType::Binary,
            data: vec![0, 159, 146, 150],
            metadata: Some(String::new()),
        };
        let records = [
            (1, layout_1_binary()),
            (2, layout_1_json()),
            (3, record::encode("account-1", 3, &third, 77)),
            (4, encoded("other-1", 1)),
        ];
        let (_dir, db) = journal_with(&records, &[("account-1", 1, 1, 3), ("other-1", 1, 4, 1)]);
        let all = read_all(&db, 1, ReadLimit::events(10)).unwrap();
        assert_eq!(all[..2], layout_1_events());
        assert_eq!(all[2].metadata.as_deref(), Some(""));
        for from in 0..=5 {
            for events in 0..=5 {
                for bytes in [0, 20, usize::MAX] {
                    let limit = ReadLimit { events, bytes };
                    let read = read_all(&db, from, limit).unwrap();
                    let (visited, last) = scanned(&db, from, limit);
                    assert_eq!(visited, read, "from {from}, {limit:?}");
                    assert_eq!(last.unwrap(), read.last().map(|event| event.position));
                }
            }
        }
    }

    #[test]
    fn a_scan_stops_at_a_damaged_record_after_the_events_before_it() {
        let mut bad_name = encoded("s", 3);
        let at = bad_name.iter().rposition(|&byte| byte == b's').unwrap();
        bad_name[at] = 0xff;
        let records = [
            (1, encoded("s", 1)),
            (2, encoded("s", 2)),
            (3, bad_name),
            (4, vec![1, 0xff]),
            (5, encoded("s", 4)),
        ];
        let (_dir, db) = journal_with(&records, &[("s", 1, 1, 2)]);
        let n = ReadLimit::events;
        let (visited, outcome) = scanned(&db, 1, n(10));
        assert_eq!(visited, read_all(&db, 1, n(2)).unwrap());
        assert_eq!(corrupt_position(outcome), 3);
        let (visited, outcome) = scanned(&db, 4, n(10));
        assert_eq!((visited, corrupt_position(outcome)), (vec![], 4));
        assert_eq!(scanned(&db, 5, n(10)).0, read_all(&db, 5, n(10)).unwrap());
    }

    #[test]
    fn a_failing_visitor_stops_the_scan_with_its_error() {
        let records: Vec<_> = (1..=5).map(|n| (n, encoded("s", n))).collect();
        let (_dir, db) = journal_with(&records, &[("s", 1, 1, 5)]);
        let mut visited = Vec::new();
        let outcome = scan_all(&db, 1, ReadLimit::events(10), |event| {
            visited.push(event.position);
            match event.position {
                3 => Err(JournalError::Unavailable("the visitor failed".into())),
                _ => Ok(()),
            }
        });
        assert!(
            matches!(outcome, Err(JournalError::Unavailable(_))),
            "{outcome:?}"
        );
        assert_eq!(visited, [1, 2, 3]);
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

    #[test]
    fn a_record_whose_stream_name_is_not_utf8_is_corrupt() {
        // A valid record of stream "sx", then one whose name is "s" and a byte that is not UTF-8.
        let mut bad = encoded("sx", 2);
        let at = bad.windows(2).position(|name| name == b"sx").unwrap();
        bad[at + 1] = 0xff;
        let records = [(1, encoded("sx", 1)), (2, bad)];
        let (_dir, db) = journal_with(&records, &[("sx", 1, 1, 1)]);
        let n = ReadLimit::events;
        assert_eq!(read_all(&db, 1, n(1)).unwrap()[0].stream, "sx");
        assert_eq!(corrupt_position(read_all(&db, 1, n(10))), 2);
        assert_eq!(corrupt_position(read_all(&db, 2, n(10))), 2);
    }
}
