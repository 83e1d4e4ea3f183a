//! The indexes of the log's tail, held in memory (EventStoreDB's memtable). An append writes
//! only its records to the log; the memtable keeps their ids, stream runs and stream heads. Once
//! it holds [`FLUSH_EVENTS`] events the writer moves it into the index tables inside the write
//! transaction of that commit's own events, and records in `META` ([`INDEXED_THROUGH_KEY`])
//! the position the tables index through. Every committed file state is thus self-consistent:
//! the tables index the log up to that position, and opening the file rebuilds the memtable
//! from the log records after it (each record holds its stream, version and id).
//!
//! Readers pair a read transaction with the memtable's state (see
//! [`SharedDb::begin_read`](super::SharedDb::begin_read)).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use foldhash::HashMap;
use redb::{ReadTransaction, WriteTransaction};
use uuid::Uuid;

use super::id_filter::{IdFilter, Scanned};
use super::runs::{self, Run};
use super::store::{EVENTS, ID_RUN_CATALOG, META, STREAM_HEADS, STREAM_RUN_BLOCKS};
use super::{JournalError, id_runs, record};

/// Events the memtable holds before the writer moves it into the tables.
pub(super) const FLUSH_EVENTS: usize = 8192;
/// The `META` key of the last position the index tables cover; the memtable covers the rest.
pub(super) const INDEXED_THROUGH_KEY: &str = "indexed_through";

/// The ids, runs and heads of events the index tables do not hold yet.
#[derive(Debug, Default)]
pub(super) struct Memtable {
    /// Hashed with foldhash: ids are random or time-ordered, never chosen to collide
    /// (SipHash's protection cost an eighth of the writer).
    ids: HashMap<u128, u64>,
    /// Each stream's runs, ascending; all above its runs in the tables. Its last run ends at
    /// the stream's head.
    runs: HashMap<String, Vec<Run>>,
    /// The same streams in name order, for readers (their heads are in `runs`: keeping them
    /// here too cost a search by name per append).
    names: BTreeSet<String>,
    events: usize,
    /// The last position readers may see: every event up to it is indexed here or in the
    /// tables.
    through: u64,
    /// No id in the event-id table is above it (its largest when last flushed or opened), so
    /// a newer id, as time-ordered ids almost always are, is new without a search.
    table_ids_bound: u128,
    /// Admits every id in the event-id table and few others, so a new random id is new
    /// without a search too. Kept across flushes, which add to it.
    table_ids: IdFilter,
    /// Whether a merge of the id index's runs may be under way or due (see `id_runs`): the
    /// commits that write then take a step of it.
    merging: bool,
}

impl Memtable {
    /// An empty memtable over tables that index through `through`, hold no id above
    /// `table_ids_bound` and none that `table_ids` does not admit.
    fn new(through: u64, table_ids_bound: u128, table_ids: IdFilter) -> Self {
        Self {
            through,
            table_ids_bound,
            table_ids,
            merging: true,
            ..Self::default()
        }
    }

    /// Rebuilds the memtable of a file from its log records after `indexed_through`.
    pub(super) fn load(txn: &ReadTransaction) -> Result<Self, JournalError> {
        let indexed_through = txn
            .open_table(META)?
            .get(INDEXED_THROUGH_KEY)?
            .map_or(0, |through| through.value());
        let bound = id_runs::Catalog::read(&txn.open_table(ID_RUN_CATALOG)?)?.bound();
        let log = txn.open_table(EVENTS)?;
        let mut memtable = Self::new(indexed_through, bound, IdFilter::default());
        for entry in log.range(indexed_through + 1..)? {
            let (position, bytes) = entry?;
            let position = position.value();
            let event = record::decode(position, bytes.value())?;
            let run = Run::new(event.version, (position, 1));
            memtable.add(event.stream, run, [Uuid::from_bytes(event.id).as_u128()]);
            memtable.through = position;
        }
        Ok(memtable)
    }

    /// Records an append: `run` of `stream`, whose events have `ids` in order.
    pub(super) fn add(&mut self, stream: &str, run: Run, ids: impl IntoIterator<Item = u128>) {
        self.ids.extend(ids.into_iter().zip(run.first_position..));
        let runs = match self.runs.get_mut(stream) {
            Some(runs) => runs,
            None => {
                self.names.insert(stream.to_owned());
                self.runs.entry(stream.to_owned()).or_default()
            }
        };
        match runs.last_mut() {
            // Consecutive versions at consecutive positions read as one run.
            Some(last)
                if last.end_version() == run.first_version
                    && last.first_position + last.count == run.first_position =>
            {
                last.count += run.count
            }
            _ => runs.push(run),
        }
        self.events += run.count as usize;
    }

    /// Takes in `later`, the appends of the commit that followed, which made every position up
    /// to `through` readable.
    pub(super) fn absorb(&mut self, later: Appends<'_>, through: u64) {
        for (stream, run) in later.runs {
            self.add(stream, run, []);
        }
        self.ids.extend(later.ids);
        if let Some(scanned) = later.scanned {
            self.table_ids.take(scanned);
        }
        if let Some(merging) = later.merging {
            self.merging = merging;
        }
        self.through = through;
    }

    /// Forgets everything once it is in the tables, which now index through `through`. The
    /// new run of ids may make a merge due.
    pub(super) fn clear(&mut self, through: u64) {
        let mut filter = std::mem::take(&mut self.table_ids);
        let mut bound = self.table_ids_bound;
        let mut ids = std::mem::take(&mut self.ids);
        for &id in ids.keys() {
            filter.insert(id);
            bound = bound.max(id);
        }
        // Kept with its room for a flush's ids, so the next ones go in without rehashing.
        ids.clear();
        *self = Self {
            ids,
            ..Self::new(through, bound, filter)
        };
    }

    /// How many events it holds.
    pub(super) fn len(&self) -> usize {
        self.events
    }

    /// The last position readers may see.
    pub(super) fn through(&self) -> u64 {
        self.through
    }

    /// The position of the event with `id`, if held here.
    pub(super) fn position(&self, id: u128) -> Option<u64> {
        self.ids.get(&id).copied()
    }

    /// The least run of the id index that may hold `id`, or `None` if the index does not:
    /// then only the memtable may.
    pub(super) fn table_runs_for(&self, id: u128) -> Option<u64> {
        if id > self.table_ids_bound {
            return None;
        }
        self.table_ids.first_run_for(id)
    }

    /// The filter of the event-id table's ids.
    pub(super) fn table_ids(&self) -> &IdFilter {
        &self.table_ids
    }

    /// Whether a merge of the id index's runs may be under way or due.
    pub(super) fn merging(&self) -> bool {
        self.merging
    }

    /// The last version of `stream`, if it has events here.
    pub(super) fn head(&self, stream: &str) -> Option<u64> {
        let last = self.runs.get(stream)?.last()?;
        Some(last.end_version() - 1)
    }

    /// Each stream held here with its last version, in name order.
    pub(super) fn heads(&self) -> impl Iterator<Item = (&str, u64)> {
        self.names.iter().map(|stream| {
            let head = self.head(stream).expect("a stream held here has runs here");
            (stream.as_str(), head)
        })
    }

    /// How many streams have events here.
    pub(super) fn streams(&self) -> usize {
        self.names.len()
    }

    /// The runs of `stream` held here, ascending.
    pub(super) fn runs(&self, stream: &str) -> &[Run] {
        self.runs.get(stream).map_or(&[], Vec::as_slice)
    }

    /// The streams held here whose names start with `prefix`, in name order.
    pub(super) fn streams_with_prefix<'m>(
        &'m self,
        prefix: &'m str,
    ) -> impl Iterator<Item = &'m str> + 'm {
        self.names
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .map(String::as_str)
            .take_while(move |stream| stream.starts_with(prefix))
    }

    /// Writes everything held here and `later` (the appends of the commit being made) into the
    /// index tables of `txn` and records that they index through `through`; the caller clears
    /// the memtable once `txn` committed.
    pub(super) fn write(
        &self,
        later: &Appends<'_>,
        txn: &WriteTransaction,
        through: u64,
    ) -> Result<(), JournalError> {
        let mut sorted: Vec<(u128, u64)> = (self.ids.iter().chain(&later.ids))
            .map(|(&id, &at)| (id, at))
            .collect();
        // By id alone (ids are unique here): comparing the pairs costs a quarter more.
        sorted.sort_unstable_by_key(|&(id, _)| id);
        id_runs::flush(txn, &sorted)?;
        // Each stream's runs: those held here, then the later ones, all above its runs in the
        // table: they go in as blocks at its end.
        let mut streams: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
        for (stream, held) in &self.runs {
            streams.insert(stream.as_str(), held.clone());
        }
        for &(stream, run) in &later.runs {
            streams.entry(stream).or_default().push(run);
        }
        let mut blocks = txn.open_table(STREAM_RUN_BLOCKS)?;
        for (stream, held) in streams {
            runs::append(&mut blocks, stream, &held)?;
        }
        // A stream's head in `later` is above its head here.
        let mut heads = txn.open_table(STREAM_HEADS)?;
        for (stream, head) in self.heads() {
            heads.insert(stream, head)?;
        }
        for (&stream, &last) in &later.last_runs {
            heads.insert(stream, later.runs[last].1.end_version() - 1)?;
        }
        txn.open_table(META)?.insert(INDEXED_THROUGH_KEY, through)?;
        Ok(())
    }
}

/// The indexes of the appends of one commit, made while it is being made: the memtable takes
/// them in once it succeeded. The streams' names are borrowed from the requests.
#[derive(Debug, Default)]
pub(super) struct Appends<'r> {
    ids: HashMap<u128, u64>,
    /// In the order they were made, consecutive ones of a stream as one.
    runs: Vec<(&'r str, Run)>,
    /// Where each stream's last run is in `runs`.
    last_runs: HashMap<&'r str, usize>,
    /// A step of the scan that makes the filter of the event-id table's ids, if the commit
    /// took one.
    pub(super) scanned: Option<Scanned>,
    /// Whether merge work of the id index is left, if the commit took a step of it.
    pub(super) merging: Option<bool>,
}

impl<'r> Appends<'r> {
    /// Room for the indexes of `appends` appends of `events` events in all.
    pub(super) fn with_capacity(appends: usize, events: usize) -> Self {
        Self {
            ids: HashMap::with_capacity_and_hasher(events, Default::default()),
            runs: Vec::with_capacity(appends),
            last_runs: HashMap::with_capacity_and_hasher(appends, Default::default()),
            ..Self::default()
        }
    }

    /// Records an append: `run` of `stream`, whose events have `ids` in order.
    pub(super) fn add(&mut self, stream: &'r str, run: Run, ids: impl IntoIterator<Item = u128>) {
        self.ids.extend(ids.into_iter().zip(run.first_position..));
        if let Some(&last) = self.last_runs.get(stream) {
            let (_, last) = &mut self.runs[last];
            if last.end_version() == run.first_version
                && last.first_position + last.count == run.first_position
            {
                last.count += run.count;
                return;
            }
        }
        self.last_runs.insert(stream, self.runs.len());
        self.runs.push((stream, run));
    }

    /// How many events they hold.
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// The position of the event with `id`, if appended here.
    pub(super) fn position(&self, id: u128) -> Option<u64> {
        self.ids.get(&id).copied()
    }

    /// The last version of `stream`, if appended to here.
    pub(super) fn head(&self, stream: &str) -> Option<u64> {
        let &last = self.last_runs.get(stream)?;
        Some(self.runs[last].1.end_version() - 1)
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;

    use super::*;
    use crate::journal::redb::id_filter::SCAN_STEP;
    use crate::journal::redb::{RedbJournal, reader};
    use crate::journal::{ExpectedVersion, JournalConfig, JournalError, NewEvent, ReadLimit};

    /// The journal keeps nothing of the memtable when it closes, as if killed after its last
    /// commit: reopening rebuilds it from the log, and every read, version check and retry of
    /// the unindexed tail answers as before.
    #[test]
    fn a_reopened_journal_rebuilds_the_indexes_of_its_tail_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let config = JournalConfig::default();
        let journal = RedbJournal::open(&path, &config).unwrap();
        let mut appended = Vec::new();
        // Past one flush: the file holds both indexed and unindexed events.
        for n in 0..FLUSH_EVENTS / 50 + 4 {
            let stream = format!("s{}", n % 8);
            let events: Vec<NewEvent> = (0..50)
                .map(|_| NewEvent::json("Happened", &serde_json::json!({ "n": n })))
                .collect();
            let result = journal
                .append_blocking(&stream, ExpectedVersion::Any, events.clone())
                .unwrap();
            appended.push((stream, events, result));
        }
        let head = journal.head_position();
        drop(journal);

        let journal = RedbJournal::open(&path, &config).unwrap();
        let indexed_through = {
            let txn = journal.db.get().begin_read().unwrap();
            let meta = txn.open_table(META).unwrap();
            meta.get(INDEXED_THROUGH_KEY).unwrap().unwrap().value()
        };
        assert!(0 < indexed_through && indexed_through < head);
        let held = journal.db.memtable().len() as u64;
        assert_eq!(held, head - indexed_through);
        assert_eq!(journal.head_position(), head);

        let db = &journal.db;
        let all = ReadLimit::events(usize::MAX);
        assert_eq!(reader::read_all(db, 1, all).unwrap().len() as u64, head);
        for n in 0..8 {
            let stream = format!("s{n}");
            let expected: Vec<_> = appended
                .iter()
                .filter(|(name, ..)| *name == stream)
                .flat_map(|(_, events, _)| events.iter().map(|event| event.id))
                .collect();
            let read = reader::read_stream(db, &stream, 1, all).unwrap();
            let ids: Vec<_> = read.iter().map(|event| event.id).collect();
            assert_eq!(ids, expected, "{stream}");
            let version = reader::stream_version(db, &stream).unwrap();
            assert_eq!(version, Some(expected.len() as u64));
            let refused = journal.append_blocking(
                &stream,
                ExpectedVersion::Exact(expected.len() as u64 - 1),
                vec![NewEvent::json("Late", &serde_json::json!({}))],
            );
            match refused {
                Err(JournalError::Conflict { current, .. }) => {
                    assert_eq!(current, version, "{stream}")
                }
                other => panic!("expected a conflict, got {other:?}"),
            }
        }
        assert_eq!(reader::streams_with_prefix(db, "s").unwrap().len(), 8);
        for (stream, events, result) in &appended {
            for (event, position) in events.iter().zip(result.first_position..) {
                let found = reader::event_by_id(db, event.id).unwrap().unwrap();
                assert_eq!(found.position, position);
            }
            let retried = journal.append_blocking(stream, ExpectedVersion::Any, events.clone());
            assert_eq!(retried.unwrap(), *result, "a retry answers where they are");
        }
        assert_eq!(journal.head_position(), head, "the retries wrote nothing");
    }

    /// Random (v4) ids land anywhere in the event-id table, where only the in-memory filter of
    /// its ids (see `id_filter`) spares a search: a retry of any of them is still recognised,
    /// and read by id, after the flushes that moved them there and after a reopen, once the
    /// filter is made.
    #[test]
    fn retries_of_random_ids_are_recognised_after_flushes_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let config = JournalConfig::default();
        let journal = RedbJournal::open(&path, &config).unwrap();
        let random = || -> Vec<NewEvent> {
            let event = || NewEvent {
                id: Uuid::new_v4(),
                ..NewEvent::json("Happened", &serde_json::json!({}))
            };
            (0..100).map(|_| event()).collect()
        };
        // Two flushes: the commits after the first make the filter from the table (a step
        // each), the second flush adds to it.
        let mut appended = Vec::new();
        for n in 0..2 * FLUSH_EVENTS / 100 + 2 {
            let stream = format!("s{}", n % 4);
            let events = random();
            let result = journal
                .append_blocking(&stream, ExpectedVersion::Any, events.clone())
                .unwrap();
            appended.push((stream, events, result));
        }
        let recognised = |journal: &RedbJournal| {
            assert!(journal.db.memtable().len() < FLUSH_EVENTS, "flushed");
            // A few commits, each taking a step of a new filter's scan, until it is made.
            for _ in 0..appended.len() * 100 / SCAN_STEP + 2 {
                let events = random();
                journal
                    .append_blocking("t", ExpectedVersion::Any, events)
                    .unwrap();
            }
            assert!(!journal.db.memtable().table_ids().scanning(), "made");
            let head = journal.head_position();
            for (stream, events, result) in &appended {
                let retried = journal.append_blocking(stream, ExpectedVersion::Any, events.clone());
                assert_eq!(retried.unwrap(), *result, "a retry answers where they are");
                for (event, position) in events.iter().zip(result.first_position..) {
                    let found = reader::event_by_id(&journal.db, event.id).unwrap();
                    assert_eq!(found.map(|found| found.position), Some(position));
                }
            }
            assert_eq!(journal.head_position(), head, "the retries wrote nothing");
        };
        recognised(&journal);
        drop(journal);
        recognised(&RedbJournal::open(&path, &config).unwrap());
    }
}
