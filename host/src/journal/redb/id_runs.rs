//! The event-id index as sorted runs, an LSM tree of one level per size, each run stored as
//! blocks of ids (storage format 6, see `id_blocks`).
//!
//! A random (v4) id belongs anywhere in a B-tree of all ids, so moving 8,192 of them into one
//! (a flush, see `memtable`) rewrote nearly every leaf of it, more per id the larger it grew.
//! Here each flush writes its ids as a new sorted run instead, its blocks keyed (run, least
//! id): ascending keys at the table's end, which redb's cursor splices into the last leaves at
//! once. Time-ordered (v7) ids above every id in the index extend the newest run (blocks after
//! its last) rather than start one, so a journal of them keeps a single run.
//!
//! An id is in exactly one run: lookups try the runs newest first, skipping those whose id
//! range leaves it out (the memtable's filter spares them for most new ids). Runs are merged
//! so that there stay few: once [`fanout`] runs are of one size class (a level: below
//! [`FIRST_FANOUT`] times a flush, then each [`FANOUT`] times larger), they are merged into one
//! run of the next. A merge is made in steps of at most a commit's merge budget of ids (see
//! [`merge_step`]), which moves the smallest ids left in its inputs to the end of its output
//! within the commit's transaction; so every committed state holds each id once, and no
//! commit pays for a whole merge. Which runs a merge reads and writes is recorded in the
//! catalog of runs, which lookups read in their own transaction too.

use std::collections::BTreeMap;

use redb::{Range, ReadableTable, Table, WriteTransaction};

use super::JournalError;
use super::id_blocks::{self, IdBlock, IdKey, Pair};
use super::memtable::FLUSH_EVENTS;
use super::store::{EVENT_ID_BLOCKS, ID_RUN_CATALOG};

/// Runs of the first level (single flushes) merged into one of the next. Every id of a
/// journal past a few flushes moves once into the second level, whatever this is; 8 keeps a
/// merge step's 2,048 ids to few inputs (at 16, their seeks and partial-leaf removals cost
/// ~4 % more per event).
const FIRST_FANOUT: u64 = 8;
/// Runs of each higher level merged into one of the next. Each merge moves an id again
/// (~2.8k instructions), so a wider one moves each id fewer times (at 1M ids, once rather than
/// 1.5 times); a lookup the filter admits tries up to `FANOUT - 1` runs of each such level.
const FANOUT: u64 = 16;
/// Ids a commit moves of a merge under way (~5M instructions, ~1.5 ms): enough to keep up
/// with 8,192 ids a flush at a few hundred events a commit.
pub(super) const MERGE_STEP: usize = 2048;

/// A value of the catalog: (ids held, least id, greatest id, its part in a merge).
pub(super) type CatalogValue = (u64, u128, u128, u8);

/// A run's part in the merge under way, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    None = 0,
    /// Its ids are being moved out.
    Input = 1,
    /// The ids moved out of the inputs are appended to it.
    Output = 2,
}

/// One run of the id index, as its catalog entry describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    number: u64,
    count: u64,
    /// No id of the run is outside `min..=max` (while it is empty, `min > max`).
    min: u128,
    max: u128,
    part: Part,
}

impl Run {
    fn new(number: u64, (count, min, max, part): CatalogValue) -> Self {
        let part = match part {
            1 => Part::Input,
            2 => Part::Output,
            _ => Part::None,
        };
        Self {
            number,
            count,
            min,
            max,
            part,
        }
    }

    fn value(&self) -> CatalogValue {
        (self.count, self.min, self.max, self.part as u8)
    }

    /// Its size class: 0 below [`FIRST_FANOUT`] flushes of ids, then one more per [`FANOUT`]
    /// times as many.
    fn level(&self) -> u32 {
        let flushes = self.count / FLUSH_EVENTS as u64;
        if flushes < FIRST_FANOUT {
            0
        } else {
            1 + (flushes / FIRST_FANOUT).ilog(FANOUT)
        }
    }

    fn may_hold(&self, id: u128) -> bool {
        self.count > 0 && self.min <= id && id <= self.max
    }
}

/// The runs of the id index, oldest first, as one transaction sees them.
#[derive(Debug, Default)]
pub(super) struct Catalog {
    runs: Vec<Run>,
}

impl Catalog {
    /// Reads the catalog `table`.
    pub(super) fn read(
        table: &impl ReadableTable<u64, CatalogValue>,
    ) -> Result<Self, JournalError> {
        let mut runs = Vec::new();
        for entry in table.iter()? {
            let (number, value) = entry?;
            runs.push(Run::new(number.value(), value.value()));
        }
        Ok(Self { runs })
    }

    /// The greatest id in the index (0 if none).
    pub(super) fn bound(&self) -> u128 {
        let held = self.runs.iter().filter(|run| run.count > 0);
        held.map(|run| run.max).max().unwrap_or(0)
    }

    /// How many ids the index holds.
    pub(super) fn ids(&self) -> u64 {
        self.runs.iter().map(|run| run.count).sum()
    }

    /// The run holding `id` in `ids` (the id index of the same transaction), its block's key
    /// and its position, trying the runs from `first_run` on, newest first.
    fn find(
        &self,
        ids: &impl ReadableTable<IdKey, IdBlock>,
        id: u128,
        first_run: u64,
    ) -> Result<Option<(u64, u128, u64)>, JournalError> {
        let runs = self
            .runs
            .iter()
            .rev()
            .take_while(|run| run.number >= first_run);
        for run in runs.filter(|run| run.may_hold(id)) {
            if let Some((block, position)) = id_blocks::holding(ids, run.number, id)? {
                return Ok(Some((run.number, block, position)));
            }
        }
        Ok(None)
    }

    /// The position of the event with `id` in `ids` (the id index of the same transaction),
    /// if held by a run from `first_run` on.
    pub(super) fn position(
        &self,
        ids: &impl ReadableTable<IdKey, IdBlock>,
        id: u128,
        first_run: u64,
    ) -> Result<Option<u64>, JournalError> {
        Ok(self
            .find(ids, id, first_run)?
            .map(|(.., position)| position))
    }

    /// The level of the merge to start: the lowest with [`fanout`] runs.
    fn due(&self) -> Option<u32> {
        let mut levels: Vec<u32> = self.runs.iter().map(Run::level).collect();
        levels.sort_unstable();
        let full = levels
            .chunk_by(|a, b| a == b)
            .find(|same| same.len() >= fanout(same[0]));
        full.map(|same| same[0])
    }
}

/// How many runs of `level` are merged into one of the next.
fn fanout(level: u32) -> usize {
    let fanout = if level == 0 { FIRST_FANOUT } else { FANOUT };
    fanout as usize
}

/// Writes `sorted` (ids and their positions, ascending, none in the index yet) into the index
/// of `txn`: as a new run, or after the last block of the newest if all are above every id in
/// it.
pub(super) fn flush(txn: &WriteTransaction, sorted: &[Pair]) -> Result<(), JournalError> {
    let (Some(&(first, _)), Some(&(last, _))) = (sorted.first(), sorted.last()) else {
        return Ok(());
    };
    let mut catalog = txn.open_table(ID_RUN_CATALOG)?;
    let runs = Catalog::read(&catalog)?;
    let run = match runs.runs.last() {
        Some(&newest) if first > runs.bound() && newest.part == Part::None => Run {
            count: newest.count + sorted.len() as u64,
            min: newest.min.min(first),
            max: last,
            ..newest
        },
        newest => Run {
            number: newest.map_or(1, |run| run.number + 1),
            count: sorted.len() as u64,
            min: first,
            max: last,
            part: Part::None,
        },
    };
    catalog.insert(run.number, run.value())?;
    let mut ids = txn.open_table(EVENT_ID_BLOCKS)?;
    id_blocks::append(&mut ids, run.number, sorted.iter().copied().map(Ok))?;
    Ok(())
}

/// Moves up to `budget` ids of the merge under way in `txn`, first starting one if one is due;
/// returns whether merge work may be left for later commits.
pub(super) fn merge_step(txn: &WriteTransaction, budget: usize) -> Result<bool, JournalError> {
    let mut catalog = txn.open_table(ID_RUN_CATALOG)?;
    let mut runs = Catalog::read(&catalog)?.runs;
    let output = match runs.iter().position(|run| run.part == Part::Output) {
        Some(output) => output,
        None => {
            let Some(level) = (Catalog { runs: runs.clone() }).due() else {
                return Ok(false);
            };
            for run in runs.iter_mut().filter(|run| run.level() == level) {
                run.part = Part::Input;
                catalog.insert(run.number, run.value())?;
            }
            let number = runs.last().map_or(1, |run| run.number + 1);
            let output = Run::new(number, (0, u128::MAX, 0, Part::Output as u8));
            catalog.insert(number, output.value())?;
            runs.push(output);
            runs.len() - 1
        }
    };
    let inputs: Vec<usize> = (0..runs.len())
        .filter(|&n| runs[n].part == Part::Input)
        .collect();
    let mut ids = txn.open_table(EVENT_ID_BLOCKS)?;
    // The smallest ids left in the inputs, and where each input's blocks were left.
    let mut taken = Vec::with_capacity(budget);
    let mut heads: Vec<Head> = Vec::with_capacity(inputs.len());
    {
        let mut ranges = Vec::with_capacity(inputs.len());
        for &n in &inputs {
            let number = runs[n].number;
            let mut range = ids.range((number, 0)..=(number, u128::MAX))?;
            let mut head = Head::default();
            head.read_next(&mut range)?;
            heads.push(head);
            ranges.push(range);
        }
        while taken.len() < budget {
            let least = (0..heads.len())
                .filter_map(|n| heads[n].peek().map(|id| (id, n)))
                .min();
            let Some((_, n)) = least else { break };
            taken.push(heads[n].take(&mut ranges[n])?);
        }
    }
    for (head, &n) in heads.iter().zip(&inputs) {
        let input = &mut runs[n];
        head.cut(&mut ids, input.number)?;
        input.count -= head.given;
    }
    let output = &mut runs[output];
    if let (Some(&(first, _)), Some(&(through, _))) = (taken.first(), taken.last()) {
        id_blocks::append(&mut ids, output.number, taken.iter().copied().map(Ok))?;
        output.count += taken.len() as u64;
        output.min = output.min.min(first);
        output.max = through;
    }
    let done = taken.len() < budget;
    if done {
        output.part = Part::None;
    }
    let output = *output;
    catalog.insert(output.number, output.value())?;
    for &n in &inputs {
        if done {
            catalog.remove(runs[n].number)?;
        } else {
            catalog.insert(runs[n].number, runs[n].value())?;
        }
    }
    if !done {
        return Ok(true);
    }
    runs.retain(|run| run.part != Part::Input);
    Ok((Catalog { runs }).due().is_some())
}

/// Where a merge step is in one input run: the block it takes ids from.
#[derive(Debug, Default)]
struct Head {
    /// The block's key (its least id) and pairs; empty once the run is through.
    key: u128,
    block: Vec<Pair>,
    /// How many of the block's pairs were taken.
    at: usize,
    /// The key of the last block whose pairs were all taken, if any.
    emptied: Option<u128>,
    /// How many ids the step took from the run.
    given: u64,
}

impl Head {
    /// The least id not taken yet, if any.
    fn peek(&self) -> Option<u128> {
        self.block.get(self.at).map(|&(id, _)| id)
    }

    /// Takes the least pair, reading the run's next block from `range` once the block is
    /// through.
    fn take(&mut self, range: &mut Range<'_, IdKey, IdBlock>) -> Result<Pair, JournalError> {
        let pair = self.block[self.at];
        self.at += 1;
        self.given += 1;
        if self.at == self.block.len() {
            self.emptied = Some(self.key);
            self.read_next(range)?;
        }
        Ok(pair)
    }

    /// Reads the run's next block from `range`.
    fn read_next(&mut self, range: &mut Range<'_, IdKey, IdBlock>) -> Result<(), JournalError> {
        self.block.clear();
        self.at = 0;
        if let Some(entry) = range.next() {
            let (key, block) = entry?;
            self.key = key.value().1;
            self.block
                .extend(id_blocks::pairs(key.value(), block.value())?);
        }
        Ok(())
    }

    /// Removes what was taken from run `number` in `ids`: the blocks taken whole, and the least
    /// ids of a block taken in part, whose rest is written again under its least id (a greater
    /// key).
    fn cut(&self, ids: &mut Table<'_, IdKey, IdBlock>, number: u64) -> Result<(), JournalError> {
        if let Some(through) = self.emptied {
            ids.retain_in((number, 0)..=(number, through), |_, _| false)?;
        }
        if let Some(&(least, _)) = self.block.get(self.at)
            && self.at > 0
        {
            ids.remove((number, self.key))?;
            let rest = id_blocks::encode(&self.block[self.at..]);
            ids.insert((number, least), rest.as_slice())?;
        }
        Ok(())
    }
}

/// Removes `ids` (each in the index) from the index of `txn`: each block holding some is
/// written again without them, under its least id left, or removed once empty.
pub(super) fn remove(txn: &WriteTransaction, ids: &[u128]) -> Result<(), JournalError> {
    let mut catalog = txn.open_table(ID_RUN_CATALOG)?;
    let mut runs = Catalog::read(&catalog)?;
    let mut table = txn.open_table(EVENT_ID_BLOCKS)?;
    // Each block holding some of them, and which.
    let mut blocks: BTreeMap<(u64, u128), Vec<u128>> = BTreeMap::new();
    for &id in ids {
        let Some((number, block, _)) = runs.find(&table, id, 0)? else {
            continue;
        };
        blocks.entry((number, block)).or_default().push(id);
        let run = runs.runs.iter_mut().find(|run| run.number == number);
        let run = run.expect("found in it");
        run.count -= 1;
        catalog.insert(number, run.value())?;
    }
    for ((number, key), gone) in blocks {
        let block = table.remove((number, key))?.expect("found above");
        let kept: Vec<Pair> = id_blocks::pairs((number, key), block.value())?
            .filter(|(id, _)| !gone.contains(id))
            .collect();
        drop(block);
        if let Some(&(least, _)) = kept.first() {
            table.insert((number, least), id_blocks::encode(&kept).as_slice())?;
        }
    }
    Ok(())
}

/// Writes the ids of `old` (format 4's id table: id → position) as one run of `txn`'s index.
pub(super) fn from_table(
    txn: &WriteTransaction,
    old: &impl ReadableTable<u128, u64>,
) -> Result<u64, JournalError> {
    // Created even when it stays empty: readers open it.
    let mut catalog = txn.open_table(ID_RUN_CATALOG)?;
    let mut ids = txn.open_table(EVENT_ID_BLOCKS)?;
    let mut run = Run::new(1, (0, u128::MAX, 0, Part::None as u8));
    let pairs = old.iter()?.map(|entry| {
        let (id, position) = entry?;
        Ok((id.value(), position.value()))
    });
    run.count = id_blocks::append(&mut ids, run.number, pairs)?;
    if run.count > 0 {
        run.min = old.first()?.expect("counted").0.value();
        run.max = old.last()?.expect("counted").0.value();
        catalog.insert(run.number, run.value())?;
    }
    Ok(run.count)
}

/// Writes the runs of `old` (format 5's id index: an entry (run, id) → position per id) as
/// blocks of `txn`'s index, under the same catalog; returns how many ids it moved. `Corrupt`
/// unless each run holds as many ids as the catalog counts, and `old` none of another run.
pub(super) fn from_entries(
    txn: &WriteTransaction,
    old: &impl ReadableTable<IdKey, u64>,
) -> Result<u64, JournalError> {
    let catalog = Catalog::read(&txn.open_table(ID_RUN_CATALOG)?)?;
    let mut ids = txn.open_table(EVENT_ID_BLOCKS)?;
    let mut moved = 0;
    for run in &catalog.runs {
        let pairs = old.range((run.number, 0)..=(run.number, u128::MAX))?;
        let pairs = pairs.map(|entry| {
            let (key, position) = entry?;
            Ok((key.value().1, position.value()))
        });
        let held = id_blocks::append(&mut ids, run.number, pairs)?;
        if held != run.count {
            return Err(unmigrated(format!(
                "run {} holds {held} ids but the catalog counts {}",
                run.number, run.count
            )));
        }
        moved += held;
    }
    let entries = old.len()?;
    if entries != moved {
        return Err(unmigrated(format!(
            "it holds {entries} ids, of which its catalog's runs hold {moved}"
        )));
    }
    Ok(moved)
}

/// Why format 5's id index cannot be migrated.
fn unmigrated(reason: String) -> JournalError {
    JournalError::Corrupt {
        position: 0,
        reason: format!("format 5's event-id index does not match its catalog: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;
    use uuid::Uuid;

    use super::*;
    use crate::journal::redb::id_blocks::BLOCK_IDS;
    use crate::journal::redb::memtable::INDEXED_THROUGH_KEY;
    use crate::journal::redb::request::Request;
    use crate::journal::redb::store::META;
    use crate::journal::redb::writer::Writer;
    use crate::journal::redb::{RedbJournal, SharedDb, reader};
    use crate::journal::{AppendResult, ExpectedVersion, JournalConfig, NewEvent, Op};

    /// Appends of random ids: (stream, events, where they went).
    type Appended = Vec<(String, Vec<NewEvent>, AppendResult)>;

    /// A writer that flushes every 64 events and moves 50 ids a commit of a merge.
    fn writer(path: &std::path::Path) -> Writer {
        crate::journal::redb::writer::tests::writer_at(path, 50)
    }

    fn random(count: usize) -> Vec<NewEvent> {
        let event = || NewEvent {
            id: Uuid::new_v4(),
            ..NewEvent::json("Happened", &serde_json::json!({}))
        };
        (0..count).map(|_| event()).collect()
    }

    /// Commits an append of `events` to `stream` alone; returns its outcome.
    fn commit(writer: &Writer, stream: &str, events: Vec<NewEvent>) -> AppendResult {
        let (request, mut outcome) =
            Request::append(stream.to_owned(), ExpectedVersion::Any, events);
        let claim = writer.claim_if_idle(None).expect("idle");
        claim.commit(vec![request]).send();
        outcome.try_recv().unwrap().unwrap()
    }

    /// Deletes `stream` for good in one commit of its own (a scavenge then removes its ids).
    fn hard_delete(writer: &Writer, stream: &str) {
        let delete = Op::DeleteStream {
            stream: stream.to_owned(),
            expected: ExpectedVersion::Any,
            hard: true,
        };
        let (request, mut outcome) = Request::done(delete);
        let claim = writer.claim_if_idle(None).expect("idle");
        claim.commit(vec![request]).send();
        outcome.try_recv().unwrap().unwrap();
    }

    /// The catalog as the last commit left it.
    fn catalog(db: &SharedDb) -> Vec<Run> {
        let txn = db.get().begin_read().unwrap();
        Catalog::read(&txn.open_table(ID_RUN_CATALOG).unwrap())
            .unwrap()
            .runs
    }

    /// The blocks of the index `ids`, in key order: (run, key, pairs).
    fn blocks(ids: &impl ReadableTable<IdKey, IdBlock>) -> Vec<(u64, u128, Vec<Pair>)> {
        let blocks = ids.iter().unwrap().map(|entry| {
            let (key, block) = entry.unwrap();
            let (run, least) = key.value();
            let pairs = id_blocks::pairs(key.value(), block.value()).unwrap();
            (run, least, pairs.collect())
        });
        blocks.collect()
    }

    /// The index of `txn` holds each id once, in blocks of at most `BLOCK_IDS` ascending ids
    /// keyed by their least (so a run's blocks do not overlap), as many in each run as the
    /// catalog counts, none outside its run's range; returns how many.
    fn blocks_sound(txn: &redb::ReadTransaction) -> u64 {
        let catalog = txn.open_table(ID_RUN_CATALOG).unwrap();
        let runs = Catalog::read(&catalog).unwrap().runs;
        let blocks = blocks(&txn.open_table(EVENT_ID_BLOCKS).unwrap());
        let mut seen = std::collections::HashSet::new();
        let mut counted = std::collections::HashMap::new();
        for (number, least, pairs) in &blocks {
            assert!(
                !pairs.is_empty() && pairs.len() <= BLOCK_IDS,
                "{number}/{least:x}"
            );
            assert_eq!(pairs[0].0, *least, "a block keyed by its least id");
            assert!(pairs.is_sorted(), "{number}/{least:x} ascending");
            let run = runs.iter().find(|run| run.number == *number);
            for &(id, _) in pairs {
                assert!(seen.insert(id), "{id:x} twice");
                assert!(run.is_some_and(|run| run.may_hold(id)), "run {number}");
            }
            *counted.entry(*number).or_insert(0) += pairs.len() as u64;
        }
        for run in &runs {
            assert_eq!(counted.get(&run.number).copied().unwrap_or(0), run.count);
        }
        seen.len() as u64
    }

    /// Every id flushed is in the index once (see [`blocks_sound`]): as many as the flushes
    /// moved there.
    fn each_once(db: &SharedDb) {
        let txn = db.get().begin_read().unwrap();
        let through = txn
            .open_table(META)
            .unwrap()
            .get(INDEXED_THROUGH_KEY)
            .unwrap();
        let through = through.map_or(0, |through| through.value());
        assert_eq!(blocks_sound(&txn), through, "ids");
    }

    /// Appends 8 random ids to one of three streams, alone in a commit.
    fn append(writer: &Writer, appended: &mut Appended, n: usize) {
        let (stream, events) = (format!("s{}", n % 3), random(8));
        let result = commit(writer, &stream, events.clone());
        appended.push((stream, events, result));
    }

    /// Every append is read by id and answered as a retry, writing nothing.
    fn recognised(
        appended: &Appended,
        db: &SharedDb,
        retry: impl Fn(&str, Vec<NewEvent>) -> AppendResult,
    ) {
        for (stream, events, result) in appended {
            for (event, position) in events.iter().zip(result.first_position..) {
                let found = reader::event_by_id(db, event.id).unwrap();
                assert_eq!(found.map(|found| found.position), Some(position));
            }
            assert_eq!(
                retry(stream, events.clone()),
                *result,
                "a retry answers where they are"
            );
        }
    }

    /// Appends `events` to `stream` through the journal, as a client's retry does.
    fn append_again(journal: &RedbJournal, stream: &str, events: Vec<NewEvent>) -> AppendResult {
        journal
            .append_blocking(stream, ExpectedVersion::Any, events)
            .unwrap()
    }

    /// [`recognised`] through the journal's own appends, which must write nothing.
    fn retries_write_nothing(journal: &RedbJournal, appended: &Appended) {
        let head = journal.head_position();
        recognised(appended, &journal.db, |stream, events| {
            append_again(journal, stream, events)
        });
        assert_eq!(journal.head_position(), head, "the retries wrote nothing");
    }

    /// Runs of single flushes merge 8 at a time, larger runs 16 at a time (a size class each
    /// 16 times larger than the last), the lowest level that holds as many first.
    #[test]
    fn merges_are_due_at_8_runs_of_single_flushes_and_16_of_larger_ones() {
        let catalog = |flushes: &[u64]| Catalog {
            runs: (1..)
                .zip(flushes)
                .map(|(number, &flushes)| {
                    let count = flushes * FLUSH_EVENTS as u64;
                    Run::new(number, (count, 0, u128::MAX, Part::None as u8))
                })
                .collect(),
        };
        assert_eq!(catalog(&[1; 7]).due(), None);
        assert_eq!(catalog(&[1; 8]).due(), Some(0));
        // 15 runs of 8 to 127 flushes (the second level) and 7 single flushes.
        let mut flushes = [[8; 8], [127; 8]].concat();
        flushes.pop();
        flushes.extend([1; 7]);
        assert_eq!(catalog(&flushes).due(), None);
        flushes.push(1);
        assert_eq!(catalog(&flushes).due(), Some(0));
        flushes.push(64);
        assert_eq!(catalog(&flushes).due(), Some(0), "the lowest first");
        flushes.retain(|&flushes| flushes >= 8);
        assert_eq!(catalog(&flushes).due(), Some(1));
        assert_eq!(catalog(&[128]).runs[0].level(), 2);
    }

    /// A plain database holding the id index, with `runs` runs of `ids` random ids each,
    /// flushed one a commit.
    fn index_of(runs: usize, ids: usize) -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("ids.redb")).unwrap();
        for _ in 0..runs {
            let mut sorted: Vec<Pair> = (0..ids as u64)
                .map(|position| (Uuid::new_v4().as_u128(), position))
                .collect();
            sorted.sort_unstable();
            let txn = db.begin_write().unwrap();
            flush(&txn, &sorted).unwrap();
            txn.commit().unwrap();
        }
        (dir, db)
    }

    /// The blocks of the index of `db`'s last commit.
    fn blocks_of(db: &redb::Database) -> Vec<(u64, u128, Vec<Pair>)> {
        blocks(
            &db.begin_read()
                .unwrap()
                .open_table(EVENT_ID_BLOCKS)
                .unwrap(),
        )
    }

    /// Time-ordered ids above every id of the index extend its newest run, in blocks after its
    /// last: a journal of them keeps one run.
    #[test]
    fn time_ordered_ids_extend_the_newest_run_in_blocks_after_its_last() {
        let (_dir, db) = index_of(0, 0);
        for flush_number in 0..3u128 {
            let sorted: Vec<Pair> = (0..200u64)
                .map(|n| ((flush_number << 64) + u128::from(n) + 1, n))
                .collect();
            let txn = db.begin_write().unwrap();
            flush(&txn, &sorted).unwrap();
            txn.commit().unwrap();
        }
        assert_eq!(blocks_sound(&db.begin_read().unwrap()), 600);
        let sizes: Vec<(u64, usize)> = blocks_of(&db)
            .iter()
            .map(|(run, _, pairs)| (*run, pairs.len()))
            .collect();
        assert_eq!(sizes, [(1, 128), (1, 72)].repeat(3));
    }

    /// A merge step that takes the least ids of an input's block but not all of them writes
    /// the rest again under its least id left: every committed state holds each id once in
    /// sound blocks, no id's block key ever decreases (the filter's scan relies on it), and
    /// the merge ends with one run of every id.
    #[test]
    fn a_block_split_by_a_merge_step_keeps_its_rest_under_a_greater_key() {
        let (_dir, db) = index_of(8, 200);
        let originals: std::collections::HashSet<u128> =
            blocks_of(&db).iter().map(|&(_, least, _)| least).collect();
        let mut keys = std::collections::HashMap::new();
        let mut split = 0;
        loop {
            let txn = db.begin_write().unwrap();
            let more = merge_step(&txn, 300).unwrap();
            txn.commit().unwrap();
            assert_eq!(blocks_sound(&db.begin_read().unwrap()), 1600);
            for (run, least, pairs) in blocks_of(&db) {
                if run <= 8 && !originals.contains(&least) {
                    split += 1;
                }
                for (id, _) in pairs {
                    let before = keys.insert(id, (run, least));
                    assert!(before.is_none_or(|before| before <= (run, least)), "{id:x}");
                }
            }
            if !more {
                break;
            }
        }
        assert!(split > 0, "no block was split");
        let txn = db.begin_read().unwrap();
        let runs = Catalog::read(&txn.open_table(ID_RUN_CATALOG).unwrap()).unwrap();
        assert_eq!(runs.runs.len(), 1);
        assert_eq!((runs.runs[0].count, runs.runs[0].part), (1600, Part::None));
    }

    /// Removing ids (as a scavenge does) writes their blocks again without them: a block
    /// losing ids in its middle keeps its key, one losing its least id goes under its least
    /// left, one losing all goes; the removed ids are not found, all others are.
    #[test]
    fn removing_ids_rewrites_or_removes_their_blocks() {
        let (_dir, db) = index_of(1, 300);
        let before = blocks_of(&db);
        let sizes: Vec<usize> = before.iter().map(|(.., pairs)| pairs.len()).collect();
        assert_eq!(sizes, [128, 128, 44]);
        let ids = |pairs: &[Pair]| pairs.iter().map(|&(id, _)| id).collect::<Vec<_>>();
        let mut gone = ids(&before[0].2[10..20]);
        gone.push(before[1].2[0].0);
        gone.extend(ids(&before[2].2));
        let txn = db.begin_write().unwrap();
        remove(&txn, &gone).unwrap();
        txn.commit().unwrap();

        assert_eq!(blocks_sound(&db.begin_read().unwrap()), 300 - 10 - 1 - 44);
        let after = blocks_of(&db);
        let keys: Vec<(u128, usize)> = after.iter().map(|(_, key, p)| (*key, p.len())).collect();
        assert_eq!(keys, [(before[0].1, 118), (before[1].2[1].0, 127)]);
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(EVENT_ID_BLOCKS).unwrap();
        let runs = Catalog::read(&txn.open_table(ID_RUN_CATALOG).unwrap()).unwrap();
        for (.., pairs) in &before {
            for &(id, position) in pairs {
                let expected = (!gone.contains(&id)).then_some(position);
                assert_eq!(runs.position(&table, id, 0).unwrap(), expected);
            }
        }
    }

    /// A database whose id index holds 8 runs of 256 ids (2 blocks each), run `k + 1` the ids
    /// `8 i + k`, each at position id + 1: a merge takes as many of each in turn.
    fn interleaved() -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("ids.redb")).unwrap();
        for k in 0..8 {
            let sorted: Vec<Pair> = (0..256)
                .map(|i| (8 * i + k, (8 * i + k) as u64 + 1))
                .collect();
            let txn = db.begin_write().unwrap();
            flush(&txn, &sorted).unwrap();
            txn.commit().unwrap();
        }
        (dir, db)
    }

    /// Takes a merge step of `budget` ids in `db`; returns whether merge work may be left, once
    /// the index holds `held` ids in sound blocks.
    fn step(db: &redb::Database, budget: usize, held: u64) -> bool {
        let txn = db.begin_write().unwrap();
        let more = merge_step(&txn, budget).unwrap();
        txn.commit().unwrap();
        assert_eq!(blocks_sound(&db.begin_read().unwrap()), held);
        more
    }

    /// The catalog of `db`'s last commit: (run, ids, part) of each run.
    fn runs_of(db: &redb::Database) -> Vec<(u64, u64, Part)> {
        let txn = db.begin_read().unwrap();
        let runs = Catalog::read(&txn.open_table(ID_RUN_CATALOG).unwrap()).unwrap();
        let runs = runs
            .runs
            .iter()
            .map(|run| (run.number, run.count, run.part));
        runs.collect()
    }

    /// Every id below 2,048 but `gone` is found at its position (id + 1), and none of `gone`.
    fn found_but(db: &redb::Database, gone: &[u128]) {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(EVENT_ID_BLOCKS).unwrap();
        let runs = Catalog::read(&txn.open_table(ID_RUN_CATALOG).unwrap()).unwrap();
        for id in 0..2048 {
            let expected = (!gone.contains(&id)).then_some(id as u64 + 1);
            assert_eq!(runs.position(&table, id, 0).unwrap(), expected, "{id}");
        }
    }

    /// Merge steps whose budget ends exactly at the end of a block of every input, then at the
    /// end of every input: the blocks taken go, the next ones stay whole under their keys, and
    /// a step finding the inputs through ends the merge with one run of every id.
    #[test]
    fn a_merge_step_ending_at_a_block_boundary_leaves_the_next_block_whole() {
        let (_dir, db) = interleaved();
        for _ in 0..4 {
            assert!(step(&db, 256, 2048));
        }
        // Each input's second block, and the output's first 8.
        let mut expected: Vec<(u64, u128, usize)> =
            (0..8).map(|k| (k as u64 + 1, 1024 + k, 128)).collect();
        expected.extend((0..8).map(|n| (9, n * 128, 128)));
        let blocks = blocks_of(&db).into_iter();
        let blocks = blocks.map(|(run, key, pairs)| (run, key, pairs.len()));
        assert_eq!(blocks.collect::<Vec<_>>(), expected);
        for _ in 0..4 {
            assert!(step(&db, 256, 2048));
        }
        let mut expected: Vec<(u64, u64, Part)> = (1..=8).map(|n| (n, 0, Part::Input)).collect();
        expected.push((9, 2048, Part::Output));
        assert_eq!(runs_of(&db), expected, "a step of a full budget goes on");
        assert!(!step(&db, 256, 2048), "none due once merged");
        assert_eq!(runs_of(&db), [(9, 2048, Part::None)]);
        found_but(&db, &[]);
    }

    /// Removing ids (as a scavenge does) between merge steps from input blocks a step took in
    /// part (the least id left of one, an id in the middle of another, all left of a third),
    /// and one the step moved: the merge goes on from there, each committed state sound, and
    /// ends with one run of every id but those.
    #[test]
    fn ids_removed_from_a_block_a_merge_step_took_in_part_stay_removed() {
        let (_dir, db) = interleaved();
        assert!(step(&db, 100, 2048));
        // Ids 0 to 99 moved: 13 of runs 1 to 4, 12 of runs 5 to 8.
        let split = |db: &redb::Database| {
            let blocks = blocks_of(db).into_iter();
            let split = blocks.filter(|(run, _, pairs)| *run <= 8 && pairs.len() < 128);
            split.map(|(run, key, pairs)| (run, key, pairs.len()))
        };
        let taken = |k: u128| if k < 4 { 13 } else { 12 };
        let expected = (0..8).map(|k| (k as u64 + 1, 8 * taken(k) + k, 128 - taken(k) as usize));
        assert!(split(&db).eq(expected));

        let mut gone = vec![104, 8 * 50 + 2, 5];
        gone.extend((13..128).map(|i| 8 * i + 3));
        let txn = db.begin_write().unwrap();
        remove(&txn, &gone).unwrap();
        txn.commit().unwrap();
        let held = 2048 - gone.len() as u64;
        assert_eq!(blocks_sound(&db.begin_read().unwrap()), held);
        let first: Vec<(u64, u128, usize)> = split(&db).take(3).collect();
        assert_eq!(first, [(1, 112, 114), (2, 105, 115), (3, 106, 114)]);
        assert!(
            !blocks_of(&db)
                .iter()
                .any(|&(run, key, _)| (run, key) == (4, 107))
        );

        let mut steps = 0;
        while step(&db, 100, held) {
            steps += 1;
            assert!(steps < 30, "the merge never ends");
        }
        assert_eq!(runs_of(&db), [(9, held, Part::None)]);
        found_but(&db, &gone);
    }

    /// A malformed block (here one holding no ids, which a merge step would otherwise take for
    /// the end of its run) stops a merge step, a removal, a lookup and the filter's scan
    /// reaching it with `Corrupt`.
    #[test]
    fn a_malformed_block_stops_merges_removals_lookups_and_scans() {
        use crate::journal::redb::id_filter::IdFilter;

        let (_dir, db) = interleaved();
        let txn = db.begin_write().unwrap();
        let mut table = txn.open_table(EVENT_ID_BLOCKS).unwrap();
        table.insert((3, 2), [0u8; 0].as_slice()).unwrap();
        drop(table);
        txn.commit().unwrap();
        fn corrupt<T>(result: Result<T, JournalError>) -> bool {
            matches!(result, Err(JournalError::Corrupt { .. }))
        }

        assert!(corrupt(merge_step(&db.begin_write().unwrap(), 100)));
        assert!(corrupt(remove(&db.begin_write().unwrap(), &[10])));
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(EVENT_ID_BLOCKS).unwrap();
        let runs = Catalog::read(&txn.open_table(ID_RUN_CATALOG).unwrap()).unwrap();
        assert!(corrupt(runs.position(&table, 10, 0)));
        assert_eq!(runs.position(&table, 1, 0).unwrap(), Some(2), "another run");
        assert!(corrupt(IdFilter::default().scan(&table, 2048)));
    }

    /// Random ids go into runs, whose merges take several commits; between any two, and
    /// after a reopen half way, each id is in the index once, read by id and recognised in a
    /// retry.
    #[test]
    fn ids_are_found_once_in_their_runs_before_during_and_after_merges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let writer = writer(&path);
        let db = writer.db.clone();
        let mut appended = Appended::new();
        let under_way = |db: &SharedDb| catalog(db).iter().any(|run| run.part == Part::Output);
        let retry = |stream: &str, events| commit(&writer, stream, events);
        // Until a merge is half way: 4 runs of 64 ids, 50 moved a commit.
        let mut n = 0;
        while !(under_way(&db)
            && catalog(&db)
                .iter()
                .any(|run| run.part == Part::Output && run.count > 0))
        {
            append(&writer, &mut appended, n);
            each_once(&db);
            n += 1;
        }
        let head = *writer.shared.head.borrow();
        recognised(&appended, &db, retry);
        assert_eq!(
            *writer.shared.head.borrow(),
            head,
            "the retries wrote nothing"
        );
        // Until it is done, each commit moving at most 50 ids.
        let mut last = catalog(&db);
        while under_way(&db) {
            append(&writer, &mut appended, n);
            each_once(&db);
            let now = catalog(&db);
            let output = |runs: &[Run]| {
                runs.iter()
                    .find(|run| run.part == Part::Output)
                    .map_or(0, |run| run.count)
            };
            assert!(output(&now) <= output(&last) + 50, "{last:?} → {now:?}");
            last = now;
            n += 1;
        }
        assert!(catalog(&db).len() < 4, "merged: {:?}", catalog(&db));
        recognised(&appended, &db, retry);
        // Half way through the next merge, then reopened.
        while !under_way(&db)
            || !catalog(&db)
                .iter()
                .any(|run| run.part == Part::Output && run.count > 0)
        {
            append(&writer, &mut appended, n);
            n += 1;
        }
        drop((writer, db));
        let journal = RedbJournal::open(&path, &JournalConfig::default()).unwrap();
        retries_write_nothing(&journal, &appended);
        // A commit that writes finishes the merge (the journal moves up to `MERGE_STEP`).
        append_again(&journal, "t", random(1));
        assert!(!under_way(&journal.db));
        each_once(&journal.db);
        retries_write_nothing(&journal, &appended);
    }

    /// A scavenge removes the ids of the events it removes from whichever runs hold them
    /// (here, runs being merged too), and every other id stays where it was: a removed
    /// event's id reads as absent, the others are found and recognised.
    #[test]
    fn a_scavenge_removes_the_ids_of_removed_events_from_their_runs() {
        use crate::journal::redb::scavenge;

        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir.path().join("journal.redb"));
        let db = writer.db.clone();
        let (mut gone, mut kept) = (Appended::new(), Appended::new());
        for n in 0..40 {
            let appended = if n % 2 == 0 { &mut gone } else { &mut kept };
            let (stream, events) = (["gone", "kept"][n % 2].to_owned(), random(8));
            let result = commit(&writer, &stream, events.clone());
            appended.push((stream, events, result));
        }
        assert!(catalog(&db).len() > 1, "{:?}", catalog(&db));
        hard_delete(&writer, "gone");
        let removed = scavenge(&db).unwrap().events;
        assert_eq!(removed, 160);

        let txn = db.get().begin_read().unwrap();
        assert_eq!(blocks_sound(&txn), 160, "the kept ids");
        let ids = txn.open_table(EVENT_ID_BLOCKS).unwrap();
        let runs = Catalog::read(&txn.open_table(ID_RUN_CATALOG).unwrap()).unwrap();
        for (_, events, _) in &gone {
            for event in events {
                let found = runs.position(&ids, event.id.as_u128(), 0).unwrap();
                assert_eq!(found, None, "a removed event's id");
            }
        }
        drop((ids, txn));
        recognised(&kept, &db, |stream, events| commit(&writer, stream, events));
    }

    /// While the filter of the index is being made after a reopen, a lookup of an id it does
    /// not admit tries only the runs its scan has not passed: every id is still read by id and
    /// recognised in a retry, in runs before, at and after the scan's place.
    #[test]
    fn ids_are_found_while_the_filter_is_half_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let config = JournalConfig::default();
        let journal = RedbJournal::open(&path, &config).unwrap();
        let mut appended = Appended::new();
        // Three flushes: three runs of random ids.
        for n in 0..3 * FLUSH_EVENTS / 100 + 3 {
            let (stream, events) = (format!("s{}", n % 3), random(100));
            let result = journal.append_blocking(&stream, ExpectedVersion::Any, events.clone());
            appended.push((stream, events, result.unwrap()));
        }
        drop(journal);
        let journal = RedbJournal::open(&path, &config).unwrap();
        assert_eq!(catalog(&journal.db).len(), 3);
        // Two commits that search the index take two steps of the scan: into the second run.
        for _ in 0..2 {
            let events = random(1);
            journal
                .append_blocking("t", ExpectedVersion::Any, events)
                .unwrap();
        }
        let half_way = || {
            let memtable = journal.db.memtable();
            let filter = memtable.table_ids();
            let absent = || filter.first_run_for(Uuid::new_v4().as_u128());
            filter.scanning() && (0..10).any(|_| absent() == Some(2))
        };
        assert!(half_way());
        // Retries write nothing, so they take no step.
        retries_write_nothing(&journal, &appended);
        assert!(half_way());
    }

    /// Every committed state of the index: sound blocks (see [`blocks_sound`]), at most one
    /// merge under way.
    fn consistent(db: &SharedDb) {
        let txn = db.get().begin_read().unwrap();
        blocks_sound(&txn);
        let runs = catalog(db);
        let outputs = runs.iter().filter(|run| run.part == Part::Output).count();
        let inputs = runs.iter().filter(|run| run.part == Part::Input).count();
        assert!(outputs <= 1 && (outputs == 1) == (inputs > 0), "{runs:?}");
    }

    /// Random and time-ordered ids, flushes, merges in steps, scavenges emptying runs and
    /// reopens (the filter's scan starting over, taking steps in commits that flush and merge),
    /// mixed: the index stays consistent after each commit, and every event kept is read by id
    /// and recognised in a retry.
    #[test]
    fn ids_stay_found_through_flushes_merges_scavenges_and_reopens() {
        use crate::journal::redb::scavenge;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let mut writer = writer(&path);
        let mut kept = Appended::new();
        let mixed = |n: usize| -> Vec<NewEvent> {
            let mut events = random(48);
            let ordered = (0..16).map(|_| NewEvent::json("Happened", &serde_json::json!({})));
            events.extend(ordered);
            events.rotate_left(n % 64);
            events
        };
        for round in 0..6 {
            for n in 0..40 {
                let doomed = n % 4 == 0;
                let stream = if doomed {
                    format!("gone{round}")
                } else {
                    format!("s{}", n % 3)
                };
                let events = mixed(n);
                let result = commit(&writer, &stream, events.clone());
                if !doomed {
                    kept.push((stream, events, result));
                }
                consistent(&writer.db);
            }
            hard_delete(&writer, &format!("gone{round}"));
            scavenge(&writer.db).unwrap();
            consistent(&writer.db);
            if round % 2 == 1 {
                drop(writer);
                writer = self::writer(&path);
            }
        }
        let head = *writer.shared.head.borrow();
        recognised(&kept, &writer.db, |stream, events| {
            commit(&writer, stream, events)
        });
        assert_eq!(
            *writer.shared.head.borrow(),
            head,
            "the retries wrote nothing"
        );
    }

    /// A backup taken half way through a merge holds the catalog with the runs: opened, every
    /// id in it is read by id and recognised in a retry, and its own commits finish the merge.
    #[test]
    fn a_backup_half_way_through_a_merge_finds_every_id() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir.path().join("journal.redb"));
        let db = writer.db.clone();
        let mut appended = Appended::new();
        let mut n = 0;
        while !catalog(&db)
            .iter()
            .any(|run| run.part == Part::Output && run.count > 0)
        {
            append(&writer, &mut appended, n);
            n += 1;
        }
        let path = dir.path().join("backup.redb");
        crate::journal::redb::backup(&db, &path).unwrap();
        drop((writer, db));

        let journal = RedbJournal::open(&path, &JournalConfig::default()).unwrap();
        assert!(
            catalog(&journal.db)
                .iter()
                .any(|run| run.part == Part::Output)
        );
        retries_write_nothing(&journal, &appended);
        append_again(&journal, "t", random(1));
        assert!(
            catalog(&journal.db)
                .iter()
                .all(|run| run.part == Part::None)
        );
        each_once(&journal.db);
        retries_write_nothing(&journal, &appended);
    }
}
