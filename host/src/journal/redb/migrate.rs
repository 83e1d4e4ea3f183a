//! Migrating a file of an older storage format, inside the transaction that opens it (see
//! `store::prepare`).

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use super::id_blocks::IdKey;
use super::memtable::INDEXED_THROUGH_KEY;
use super::runs::{self, Run};
use super::store::{EVENTS, FORMAT_KEY, FORMAT_VERSION, STREAM_RUN_BLOCKS};
use super::{JournalError, id_runs};

/// The format that indexed streams per event, in the two tables below.
pub(super) const FORMAT_1: u64 = 1;
/// The format that indexed every event in the commit that appended it, its most recent runs in
/// `RECENT_RUNS`.
pub(super) const FORMAT_2: u64 = 2;
/// The format whose records are all of layout 1: it reads as it is, only its number changes
/// (see `store::FORMAT_VERSION`).
pub(super) const FORMAT_3: u64 = 3;
/// The format with one table of event ids, [`EVENT_IDS`] (see `store::FORMAT_VERSION`).
pub(super) const FORMAT_4: u64 = 4;
/// The format whose id index held an entry per id, in [`EVENT_ID_RUNS`].
pub(super) const FORMAT_5: u64 = 5;
/// The format whose stream index held an entry per run, in [`STREAM_RUNS`].
pub(super) const FORMAT_6: u64 = 6;
/// Formats 1 to 6: (stream, first version) → (first position, count), a run each.
pub(super) const STREAM_RUNS: TableDefinition<(&str, u64), (u64, u64)> =
    TableDefinition::new("stream_runs");
/// Formats 1 to 4: event id → position.
pub(super) const EVENT_IDS: TableDefinition<u128, u64> = TableDefinition::new("event_ids");
/// Format 5: (run, event id) → position, the runs listed in the catalog as today.
const EVENT_ID_RUNS: TableDefinition<IdKey, u64> = TableDefinition::new("event_id_runs");
/// Format 2: the most recent runs, above every run of their stream in `STREAM_RUNS`.
const RECENT_RUNS: TableDefinition<(&str, u64), (u64, u64)> =
    TableDefinition::new("stream_runs_recent");
/// Format 1: (stream, version) → position, for all but the most recent events.
const STREAM_INDEX: TableDefinition<(&str, u64), u64> = TableDefinition::new("stream_index");
/// Format 1: (stream, version) → position of the most recent events.
const RECENT_INDEX: TableDefinition<(&str, u64), u64> = TableDefinition::new("stream_index_recent");

/// Rebuilds format 1's per-event stream index as runs of consecutive versions at consecutive
/// positions, and drops it.
pub(super) fn from_format_1(txn: &WriteTransaction) -> Result<(), JournalError> {
    let mut runs = txn.open_table(STREAM_RUNS)?;
    let (mut events, mut count) = (0, 0);
    for old in [STREAM_INDEX, RECENT_INDEX] {
        let index = txn.open_table(old)?;
        let mut current: Option<(String, Run)> = None;
        for entry in index.iter()? {
            let (key, position) = entry?;
            let ((stream, version), position) = (key.value(), position.value());
            events += 1;
            match &mut current {
                Some((name, run))
                    if name == stream
                        && run.end_version() == version
                        && run.first_position + run.count == position =>
                {
                    run.count += 1;
                    continue;
                }
                _ => {}
            }
            let next = Run::new(version, (position, 1));
            if let Some((name, run)) = current.replace((stream.to_owned(), next)) {
                runs.insert((name.as_str(), run.first_version), run.value())?;
                count += 1;
            }
        }
        if let Some((name, run)) = current {
            runs.insert((name.as_str(), run.first_version), run.value())?;
            count += 1;
        }
        drop(index);
        txn.delete_table(old)?;
    }
    tracing::info!(
        events,
        runs = count,
        "migrated the journal from format 1: its stream index now holds runs"
    );
    Ok(())
}

/// Moves format 2's recent runs into the main table and records that the tables index the
/// whole log (format 2 indexed every event as it was appended).
pub(super) fn from_format_2(
    txn: &WriteTransaction,
    meta: &mut Table<'_, &'static str, u64>,
) -> Result<(), JournalError> {
    let mut runs = txn.open_table(STREAM_RUNS)?;
    for entry in txn.open_table(RECENT_RUNS)?.iter()? {
        let (key, run) = entry?;
        runs.insert(key.value(), run.value())?;
    }
    txn.delete_table(RECENT_RUNS)?;
    let last = txn
        .open_table(EVENTS)?
        .last()?
        .map_or(0, |(position, _)| position.value());
    meta.insert(INDEXED_THROUGH_KEY, last)?;
    Ok(())
}

/// Moves the table of event ids of formats 1 to 4 into the index of sorted runs, as its one
/// run of blocks. One copy of every id, in id order through one cursor.
pub(super) fn from_format_4(txn: &WriteTransaction) -> Result<(), JournalError> {
    let ids = id_runs::from_table(txn, &txn.open_table(EVENT_IDS)?)?;
    txn.delete_table(EVENT_IDS)?;
    tracing::info!(
        ids,
        "migrated the journal's event ids (format 4): they are one sorted run of blocks"
    );
    Ok(())
}

/// Rewrites format 5's id index (an entry per id) as blocks of ids, run by run under the same
/// catalog (a merge under way goes on where it was).
pub(super) fn from_format_5(txn: &WriteTransaction) -> Result<(), JournalError> {
    let ids = id_runs::from_entries(txn, &txn.open_table(EVENT_ID_RUNS)?)?;
    txn.delete_table(EVENT_ID_RUNS)?;
    tracing::info!(
        ids,
        "migrated the journal's event ids (format 5): its runs of ids are stored as blocks"
    );
    Ok(())
}

/// Rewrites the stream index of formats 1 to 6 (an entry per run) as blocks of runs, stream
/// by stream, and records the current format.
pub(super) fn from_format_6(
    txn: &WriteTransaction,
    meta: &mut Table<'_, &'static str, u64>,
) -> Result<(), JournalError> {
    let mut blocks = txn.open_table(STREAM_RUN_BLOCKS)?;
    let (mut count, mut stream, mut held) = (0, String::new(), Vec::new());
    let old = txn.open_table(STREAM_RUNS)?;
    for entry in old.iter()? {
        let (key, value) = entry?;
        let (name, first_version) = key.value();
        if name != stream {
            runs::append(&mut blocks, &stream, &held)?;
            stream = name.to_owned();
            held.clear();
        }
        held.push(Run::new(first_version, value.value()));
        count += 1;
    }
    runs::append(&mut blocks, &stream, &held)?;
    drop(old);
    txn.delete_table(STREAM_RUNS)?;
    meta.insert(FORMAT_KEY, FORMAT_VERSION)?;
    tracing::info!(
        runs = count,
        "migrated the journal to format 7: its stream runs are stored as blocks"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableDatabase, TableHandle};

    use super::*;
    use crate::journal::redb::id_blocks;
    use crate::journal::redb::id_runs::{Catalog, CatalogValue};
    use crate::journal::redb::memtable::INDEXED_THROUGH_KEY;
    use crate::journal::redb::store::{
        self, CHECKPOINTS, EVENTS, FORMAT_KEY, FORMAT_VERSION, META, SNAPSHOTS, STREAM_HEADS,
        STREAM_LIFECYCLE,
    };
    use crate::journal::redb::store::{EVENT_ID_BLOCKS, ID_RUN_CATALOG};
    use crate::journal::redb::{Lifecycle, RedbJournal, SharedDb, backup, reader, record, runs};
    use crate::journal::{ExpectedVersion, JournalConfig, NewEvent, ReadLimit};

    /// An event as stored: stream, version, position, and the event appended.
    type Stored = (&'static str, u64, u64, NewEvent);

    /// Writes a format 1 file the way format 1 laid it out, with a per-event stream index: the
    /// events of `appends` (stream, event count) in order, indexed in the old main table up to
    /// position `moved` and in the old recent table after it, and `deleted` soft-deleted.
    fn format_1_file(
        path: &std::path::Path,
        appends: &[(&'static str, u64)],
        moved: u64,
        deleted: &str,
    ) -> Vec<Stored> {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        let mut stored = Vec::new();
        {
            txn.open_table(META).unwrap().insert(FORMAT_KEY, 1).unwrap();
            txn.open_table(SNAPSHOTS).unwrap();
            txn.open_table(CHECKPOINTS).unwrap();
            let mut log = txn.open_table(EVENTS).unwrap();
            let mut indexes = [
                txn.open_table(STREAM_INDEX).unwrap(),
                txn.open_table(RECENT_INDEX).unwrap(),
            ];
            let mut heads = txn.open_table(STREAM_HEADS).unwrap();
            let mut ids = txn.open_table(EVENT_IDS).unwrap();
            let mut position = 0;
            for &(stream, count) in appends {
                for _ in 0..count {
                    position += 1;
                    let version = heads.get(stream).unwrap().map_or(0, |v| v.value()) + 1;
                    let event = NewEvent::json("Happened", &serde_json::json!({ "at": position }));
                    let bytes = record::encode(stream, version, &event, 1_000);
                    log.insert(position, bytes.as_slice()).unwrap();
                    indexes[usize::from(position > moved)]
                        .insert((stream, version), position)
                        .unwrap();
                    heads.insert(stream, version).unwrap();
                    ids.insert(event.id.as_u128(), position).unwrap();
                    stored.push((stream, version, position, event));
                }
            }
            let mut lifecycle = Lifecycle::default();
            let last = heads.get(deleted).unwrap().map(|v| v.value());
            lifecycle
                .delete(deleted, last, ExpectedVersion::Any, false)
                .unwrap();
            txn.open_table(STREAM_LIFECYCLE)
                .unwrap()
                .insert(deleted, lifecycle.encode().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
        stored
    }

    fn seen(events: &[crate::journal::RecordedEvent]) -> Vec<(String, u64, u64, uuid::Uuid)> {
        let seen = events.iter().map(|event| {
            let stream = event.stream.to_string();
            (stream, event.version, event.position, event.id)
        });
        seen.collect()
    }

    fn expected<'a>(
        stored: impl Iterator<Item = &'a Stored>,
    ) -> Vec<(String, u64, u64, uuid::Uuid)> {
        let expected = stored.map(|(stream, version, position, event)| {
            (stream.to_string(), *version, *position, event.id)
        });
        expected.collect()
    }

    #[test]
    fn a_format_1_file_reads_the_same_after_its_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        // Interleaved streams; c's second append straddles the two old tables.
        let appends = [
            ("a", 2),
            ("b", 1),
            ("a", 1),
            ("c", 3),
            ("gone", 2),
            ("b", 2),
            ("a", 3),
        ];
        let stored = format_1_file(&path, &appends, 6, "gone");
        // A format 1 backup is restorable: it is migrated once opened.
        assert_eq!(backup::inspect(&path).unwrap().events, 14);

        let db = store::open(&path, crate::journal::DEFAULT_CACHE_BYTES).unwrap();
        let db = SharedDb::new(db).unwrap();
        let txn = db.get().begin_read().unwrap();
        let format = txn.open_table(META).unwrap().get(FORMAT_KEY).unwrap();
        assert_eq!(format.unwrap().value(), FORMAT_VERSION);
        let tables: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|table| table.name().to_owned())
            .collect();
        assert!(
            !tables.contains(&STREAM_INDEX.name().to_owned()),
            "{tables:?}"
        );
        assert!(
            !tables.contains(&RECENT_INDEX.name().to_owned()),
            "{tables:?}"
        );
        drop(txn);

        let visible = || stored.iter().filter(|(stream, ..)| *stream != "gone");
        let all = reader::read_all(&db, 1, ReadLimit::events(100)).unwrap();
        assert_eq!(seen(&all), expected(visible()));
        for (stream, last) in [("a", 6), ("b", 3), ("c", 3)] {
            for from in 1..=last + 1 {
                let events = reader::read_stream(&db, stream, from, ReadLimit::events(100));
                let of_stream =
                    visible().filter(|(s, version, ..)| *s == stream && *version >= from);
                assert_eq!(
                    seen(&events.unwrap()),
                    expected(of_stream),
                    "{stream} from {from}"
                );
            }
            assert_eq!(reader::stream_version(&db, stream).unwrap(), Some(last));
        }
        let gone = reader::read_stream(&db, "gone", 1, ReadLimit::events(100)).unwrap();
        assert!(gone.is_empty());
        assert_eq!(reader::stream_version(&db, "gone").unwrap(), None);
        for (stream, _, position, event) in &stored {
            let found = reader::event_by_id(&db, event.id).unwrap();
            let found = found.map(|event| event.position);
            assert_eq!(found, (*stream != "gone").then_some(*position));
        }
        assert_eq!(reader::head_position(&db).unwrap(), 14);
        drop(db);

        // Appends go on after the migrated history, and a retry of a migrated append is known.
        let journal = RedbJournal::open(&path, &JournalConfig::default()).unwrap();
        let first_two: Vec<NewEvent> = stored[..2].iter().map(|s| s.3.clone()).collect();
        let retried = journal.append_blocking("a", ExpectedVersion::NoStream, first_two);
        assert_eq!(
            (retried.unwrap().first_position, stored[1].2),
            (1, 2),
            "a retry answers where the events are"
        );
        let more = vec![NewEvent::json("Happened", &serde_json::json!({}))];
        let appended = journal
            .append_blocking("a", ExpectedVersion::Exact(6), more)
            .unwrap();
        assert_eq!((appended.first_version, appended.first_position), (7, 15));
        let a = reader::read_stream(&journal.db, "a", 5, ReadLimit::events(9)).unwrap();
        let versions: Vec<u64> = a.iter().map(|event| event.version).collect();
        assert_eq!(versions, [5, 6, 7]);
    }

    /// A format 2 file indexed every event as it was appended, its newest runs in a table of
    /// their own: it opens in the current format with nothing left to the memtable.
    #[test]
    fn a_format_2_file_opens_with_every_event_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let mut stored = Vec::new();
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                txn.open_table(META).unwrap().insert(FORMAT_KEY, 2).unwrap();
                txn.open_table(SNAPSHOTS).unwrap();
                txn.open_table(CHECKPOINTS).unwrap();
                let mut log = txn.open_table(EVENTS).unwrap();
                let mut runs = [
                    txn.open_table(STREAM_RUNS).unwrap(),
                    txn.open_table(RECENT_RUNS).unwrap(),
                ];
                let mut heads = txn.open_table(STREAM_HEADS).unwrap();
                let mut ids = txn.open_table(EVENT_IDS).unwrap();
                // (stream, events): the last two appends' runs are in the recent table.
                let appends = [("a", 2), ("b", 1), ("a", 3), ("b", 2)];
                let mut position = 0;
                for (n, &(stream, count)) in appends.iter().enumerate() {
                    let first = heads.get(stream).unwrap().map_or(0, |v| v.value()) + 1;
                    runs[usize::from(n >= 2)]
                        .insert((stream, first), (position + 1, count))
                        .unwrap();
                    for version in first..first + count {
                        position += 1;
                        let event = NewEvent::json("Happened", &serde_json::json!({}));
                        let bytes = record::encode(stream, version, &event, 1_000);
                        log.insert(position, bytes.as_slice()).unwrap();
                        ids.insert(event.id.as_u128(), position).unwrap();
                        stored.push((stream, version, position, event));
                    }
                    heads.insert(stream, first + count - 1).unwrap();
                }
            }
            txn.commit().unwrap();
        }

        let db = store::open(&path, crate::journal::DEFAULT_CACHE_BYTES).unwrap();
        let db = SharedDb::new(db).unwrap();
        {
            let txn = db.get().begin_read().unwrap();
            let meta = txn.open_table(META).unwrap();
            assert_eq!(
                meta.get(FORMAT_KEY).unwrap().unwrap().value(),
                FORMAT_VERSION
            );
            let through = meta.get(INDEXED_THROUGH_KEY).unwrap().unwrap().value();
            assert_eq!(through, 8);
            let tables: Vec<String> = txn
                .list_tables()
                .unwrap()
                .map(|table| table.name().to_owned())
                .collect();
            assert!(
                !tables.contains(&RECENT_RUNS.name().to_owned()),
                "{tables:?}"
            );
        }
        assert_eq!(db.memtable().len(), 0);
        for (stream, last) in [("a", 5), ("b", 3)] {
            let events = reader::read_stream(&db, stream, 1, ReadLimit::events(100)).unwrap();
            let of_stream = stored.iter().filter(|(s, ..)| *s == stream);
            assert_eq!(seen(&events), expected(of_stream));
            assert_eq!(reader::stream_version(&db, stream).unwrap(), Some(last));
        }
        for (_, _, position, event) in &stored {
            let found = reader::event_by_id(&db, event.id).unwrap().unwrap();
            assert_eq!(found.position, *position);
        }
    }

    /// Copies the fixture `name` (in `tests/fixtures`) to `path`.
    fn fixture(name: &str, path: &std::path::Path) {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        std::fs::copy(fixture.join(name), path).unwrap();
    }

    /// The format of the file at `path`, and the position its index tables cover.
    fn format_and_indexed(path: &std::path::Path) -> (u64, u64) {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        let format = meta.get(FORMAT_KEY).unwrap().unwrap().value();
        (
            format,
            meta.get(INDEXED_THROUGH_KEY).unwrap().unwrap().value(),
        )
    }

    /// The journal at `path` is in the current format, without the id table `old`; its index
    /// holds `indexed` ids in sound blocks; returns its catalog.
    fn migrated(path: &std::path::Path, old: &str, indexed: u64) -> Vec<(u64, CatalogValue)> {
        let journal = RedbJournal::open(path, &JournalConfig::default()).unwrap();
        let txn = journal.db.get().begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        let format = meta.get(FORMAT_KEY).unwrap().unwrap().value();
        assert_eq!(format, FORMAT_VERSION);
        let tables: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|table| table.name().to_owned())
            .collect();
        assert!(!tables.iter().any(|table| table == old), "{tables:?}");
        let blocks = txn.open_table(EVENT_ID_BLOCKS).unwrap();
        let mut held = 0;
        for entry in blocks.iter().unwrap() {
            let (key, block) = entry.unwrap();
            let pairs = id_blocks::pairs(key.value(), block.value()).unwrap();
            let pairs: Vec<(u128, u64)> = pairs.collect();
            assert_eq!(key.value().1, pairs[0].0, "keyed by its least id");
            assert!(pairs.is_sorted() && pairs.len() <= id_blocks::BLOCK_IDS);
            held += pairs.len() as u64;
        }
        assert_eq!(held, indexed);
        let catalog = txn.open_table(ID_RUN_CATALOG).unwrap();
        let catalog = catalog.iter().unwrap().map(|entry| {
            let (run, value) = entry.unwrap();
            (run.value(), value.value())
        });
        catalog.collect()
    }

    /// Every one of the `count` events of the journal at `path` is read by id and recognised
    /// in a retry, and appends go on, before and after a reopen.
    fn found_and_recognised(path: &std::path::Path, count: usize) {
        let journal = RedbJournal::open(path, &JournalConfig::default()).unwrap();
        let all = ReadLimit::events(usize::MAX);
        let events = reader::read_all(&journal.db, 1, all).unwrap();
        assert_eq!(events.len(), count);
        let recognised = |journal: &RedbJournal| {
            let head = journal.head_position();
            for event in &events {
                let found = reader::event_by_id(&journal.db, event.id).unwrap();
                assert_eq!(found.map(|found| found.position), Some(event.position));
                let retry = NewEvent {
                    id: event.id,
                    ..NewEvent::json("Happened", &serde_json::json!({}))
                };
                let stream = event.stream.to_string();
                let retried = journal.append_blocking(&stream, ExpectedVersion::Any, vec![retry]);
                let retried = retried.unwrap();
                assert_eq!(
                    (retried.first_position, retried.first_version),
                    (event.position, event.version),
                    "a retry answers where it is"
                );
            }
            assert_eq!(journal.head_position(), head, "the retries wrote nothing");
            let more = vec![NewEvent::json("Happened", &serde_json::json!({}))];
            let appended = journal.append_blocking("s0", ExpectedVersion::Any, more);
            assert_eq!(appended.unwrap().first_position, head + 1);
        };
        recognised(&journal);
        drop(journal);
        recognised(&RedbJournal::open(path, &JournalConfig::default()).unwrap());
    }

    /// A file that a format 4 build wrote (`tests/fixtures/journal-format-4.redb`: 340 events
    /// of four streams in appends of ten, random and time-ordered ids, flushed every 64 events
    /// so that 280 ids are in its id table) opens with that table as one run of blocks of the
    /// id index: every event is read by id and recognised in a retry, and appends go on,
    /// before and after a reopen.
    #[test]
    fn a_format_4_file_opens_with_its_id_table_as_one_run() {
        use redb::ReadableTableMetadata;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        fixture("journal-format-4.redb", &path);
        assert_eq!(format_and_indexed(&path), (FORMAT_4, 280));
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_read().unwrap();
            assert_eq!(txn.open_table(EVENT_IDS).unwrap().len().unwrap(), 280);
        }
        let catalog = migrated(&path, EVENT_IDS.name(), 280);
        assert_eq!(catalog.len(), 1);
        assert_eq!(catalog[0].1.0, 280);
        found_and_recognised(&path, 340);
    }

    /// A file that a format 5 build wrote half way through a merge
    /// (`tests/fixtures/journal-format-5.redb`: 560 ids in its id runs, a merge's output run already
    /// holding some) opens with each of its runs as blocks
    /// under the same catalog, so the merge goes on where it was: every event is read by id
    /// and recognised in a retry, and appends go on, before and after a reopen.
    #[test]
    fn a_format_5_file_opens_with_its_runs_as_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        fixture("journal-format-5.redb", &path);
        let (format, indexed) = format_and_indexed(&path);
        assert_eq!((format, indexed), (FORMAT_5, 560));
        let (entries, before) = {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_read().unwrap();
            let entries = txn.open_table(EVENT_ID_RUNS).unwrap();
            let entries: Vec<(u64, u128, u64)> = (entries.iter().unwrap())
                .map(|entry| {
                    let (key, position) = entry.unwrap();
                    let (run, id) = key.value();
                    (run, id, position.value())
                })
                .collect();
            let catalog = txn.open_table(ID_RUN_CATALOG).unwrap();
            let catalog: Vec<(u64, CatalogValue)> = (catalog.iter().unwrap())
                .map(|entry| {
                    let (run, value) = entry.unwrap();
                    (run.value(), value.value())
                })
                .collect();
            (entries, catalog)
        };
        assert_eq!(entries.len() as u64, indexed);
        assert!(
            before
                .iter()
                .any(|(_, (held, .., part))| *part == 2 && *held > 0)
        );
        assert_eq!(migrated(&path, EVENT_ID_RUNS.name(), indexed), before);
        {
            let journal = RedbJournal::open(&path, &JournalConfig::default()).unwrap();
            let txn = journal.db.get().begin_read().unwrap();
            let blocks = txn.open_table(EVENT_ID_BLOCKS).unwrap();
            let catalog = Catalog::read(&txn.open_table(ID_RUN_CATALOG).unwrap()).unwrap();
            for &(run, id, position) in &entries {
                let found = id_blocks::holding(&blocks, run, id).unwrap();
                assert_eq!(
                    found.map(|(_, at)| at),
                    Some(position),
                    "{id:x} in run {run}"
                );
                assert_eq!(catalog.position(&blocks, id, 0).unwrap(), Some(position));
            }
        }
        found_and_recognised(&path, 600);
    }

    /// A format 5 file whose id index disagrees with its catalog (an id lost from a run, or
    /// one of a run the catalog does not list) is refused as `Corrupt`, naming both counts,
    /// and left in format 5 as it was.
    #[test]
    fn a_format_5_file_whose_ids_disagree_with_its_catalog_is_refused() {
        type Tamper = fn(&mut Table<'_, IdKey, u64>, &[(u64, CatalogValue)]) -> String;
        let lost: Tamper = |entries, catalog| {
            let &(run, (count, ..)) = catalog.iter().find(|(_, (count, ..))| *count > 0).unwrap();
            let mut ids = entries.range((run, 0)..=(run, u128::MAX)).unwrap();
            let id = ids.next().unwrap().unwrap().0.value().1;
            drop(ids);
            entries.remove((run, id)).unwrap().unwrap();
            format!(
                "run {run} holds {} ids but the catalog counts {count}",
                count - 1
            )
        };
        let unlisted: Tamper = |entries, catalog| {
            let run = catalog[catalog.len() - 1].0 + 1;
            entries.insert((run, 7), 1).unwrap();
            let held: u64 = catalog.iter().map(|(_, (count, ..))| count).sum();
            format!(
                "it holds {} ids, of which its catalog's runs hold {held}",
                held + 1
            )
        };
        for tamper in [lost, unlisted] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("journal.redb");
            fixture("journal-format-5.redb", &path);
            let tampered = {
                let db = Database::open(&path).unwrap();
                let txn = db.begin_write().unwrap();
                let catalog: Vec<(u64, CatalogValue)> = (txn.open_table(ID_RUN_CATALOG).unwrap())
                    .iter()
                    .unwrap()
                    .map(|entry| {
                        let (run, value) = entry.unwrap();
                        (run.value(), value.value())
                    })
                    .collect();
                let tampered = tamper(&mut txn.open_table(EVENT_ID_RUNS).unwrap(), &catalog);
                txn.commit().unwrap();
                tampered
            };
            let Err(JournalError::Corrupt { reason, .. }) =
                RedbJournal::open(&path, &JournalConfig::default())
            else {
                panic!("opened, expected Corrupt ({tampered})");
            };
            assert_eq!(
                reason,
                format!("format 5's event-id index does not match its catalog: {tampered}")
            );
            assert_eq!(format_and_indexed(&path).0, FORMAT_5);
            let db = Database::open(&path).unwrap();
            let txn = db.begin_read().unwrap();
            assert!(txn.open_table(EVENT_ID_RUNS).is_ok());
            assert!(txn.open_table(EVENT_ID_BLOCKS).is_err(), "nothing written");
        }
    }

    /// (stream, version, position) of each event of `runs`.
    fn expanded(runs: impl IntoIterator<Item = (String, Run)>) -> Vec<(String, u64, u64)> {
        let expanded = runs.into_iter().flat_map(|(stream, run)| {
            (run.first_version..run.end_version())
                .map(move |version| (stream.clone(), version, run.position(version)))
        });
        expanded.collect()
    }

    /// A file that a format 6 build wrote (`tests/fixtures/journal-format-6.redb`, by the
    /// ignored test `writes_the_format_6_fixture` of commit a25d7c4, flushing every 64
    /// events: "long" in 205 one-event runs, "multi" in 105 runs of 3 or 2, "trunc" in 100
    /// runs of 2 whose versions below 52 a scavenge removed (a run cut in its middle), "gone"
    /// deleted and scavenged, the last 15 events in no table) opens with its runs as blocks:
    /// `stream_runs` is gone, the format is 7, the blocks hold exactly the runs the old table
    /// held, and every stream reads back as the log holds it, from any version.
    #[test]
    fn a_format_6_file_opens_with_its_runs_as_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        fixture("journal-format-6.redb", &path);
        let (format, indexed) = format_and_indexed(&path);
        assert_eq!(format, FORMAT_6);
        let before = {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_read().unwrap();
            let old = txn.open_table(STREAM_RUNS).unwrap();
            let runs: Vec<(String, Run)> = (old.iter().unwrap())
                .map(|entry| {
                    let (key, value) = entry.unwrap();
                    let (stream, version) = key.value();
                    (stream.to_owned(), Run::new(version, value.value()))
                })
                .collect();
            let long = runs.iter().filter(|(stream, _)| stream == "long").count();
            assert!(long > runs::BLOCK_RUNS, "{long} runs of \"long\"");
            assert!(
                runs.iter()
                    .any(|(stream, run)| stream == "trunc" && run.first_version == 52)
            );
            expanded(runs)
        };
        assert!(before.iter().all(|(_, _, position)| *position <= indexed));

        let journal = RedbJournal::open(&path, &JournalConfig::default()).unwrap();
        {
            let txn = journal.db.get().begin_read().unwrap();
            let meta = txn.open_table(META).unwrap();
            assert_eq!(meta.get(FORMAT_KEY).unwrap().unwrap().value(), 7);
            assert!(txn.open_table(STREAM_RUNS).is_err(), "stream_runs is gone");
            let blocks = txn.open_table(STREAM_RUN_BLOCKS).unwrap();
            let runs = (blocks.iter().unwrap()).flat_map(|entry| {
                let (key, block) = entry.unwrap();
                let (stream, version) = key.value();
                let runs = runs::decode(stream, version, block.value()).unwrap();
                assert!(runs.len() <= runs::BLOCK_RUNS);
                let stream = stream.to_owned();
                runs.into_iter().map(move |run| (stream.clone(), run))
            });
            assert_eq!(expanded(runs), before);
        }
        let all = reader::read_all(&journal.db, 1, ReadLimit::events(usize::MAX)).unwrap();
        let logged: Vec<_> = (all.iter())
            .map(|event| (event.stream.to_string(), event.version, event.position))
            .collect();
        assert!(before.iter().all(|event| logged.contains(event)));
        for stream in ["long", "multi", "trunc", "gone"] {
            let of_stream: Vec<_> = all.iter().filter(|event| event.stream == stream).collect();
            let last = of_stream.last().map_or(0, |event| event.version);
            for from in 1..=last + 1 {
                let read = reader::read_stream(&journal.db, stream, from, ReadLimit::events(500));
                let expected = of_stream.iter().filter(|event| event.version >= from);
                let expected: Vec<_> = expected.map(|event| (*event).clone()).collect();
                assert_eq!(read.unwrap(), expected, "{stream} from {from}");
            }
        }
        let trunc = all.iter().filter(|event| event.stream == "trunc");
        assert_eq!(trunc.map(|event| event.version).min(), Some(52));
        assert!(!all.iter().any(|event| event.stream == "gone"));
        // Versions continue in every stream: its appends go on.
        let versions = |stream: &str| all.iter().filter(|event| event.stream == stream).count();
        assert_eq!((versions("long"), versions("multi")), (205, 310));
        let more = vec![NewEvent::json("Happened", &serde_json::json!({}))];
        let appended = journal.append_blocking("long", ExpectedVersion::Exact(205), more);
        assert_eq!(appended.unwrap().first_version, 206);
    }
}
