//! The event-id index as sorted runs (storage format 5), an LSM tree of one level per size.
//!
//! A random (v4) id belongs anywhere in a B-tree of all ids, so moving 8,192 of them into one
//! (a flush, see `memtable`) rewrote nearly every leaf of it, more per id the larger it grew.
//! Here each flush writes its ids as a new sorted run instead, keyed (run, id): ascending keys
//! at the table's end, which redb's cursor splices into the last leaves at once. Time-ordered
//! (v7) ids above every id in the index extend the newest run rather than start one, so a
//! journal of them keeps a single run, as its one table was before.
//!
//! An id is in exactly one run: lookups try the runs newest first, skipping those whose id
//! range leaves it out (the memtable's filter spares them for most new ids). Runs are merged
//! so that there stay few: once [`FANOUT`] runs are of one size class (a level: below
//! `FANOUT` times a flush, then each `FANOUT` times larger), they are merged into one run of
//! the next. A merge is made in steps of at most a commit's merge budget of ids (see
//! [`merge_step`]), which moves the smallest ids left in its inputs to the end of its output
//! within the commit's transaction; so every committed state holds each id once, and no
//! commit pays for a whole merge. Which runs a merge reads and writes is recorded in the
//! catalog of runs, which lookups read in their own transaction too.

use std::ops::Bound;

use redb::{AccessGuard, ReadableTable, StorageError, WriteTransaction};

use super::JournalError;
use super::memtable::{CURSOR_RUN, FLUSH_EVENTS};
use super::store::{EVENT_ID_RUNS, ID_RUN_CATALOG};

/// Runs of one level merged into one of the next.
const FANOUT: u64 = 4;
/// Ids a commit moves of a merge under way (~1k instructions each).
pub(super) const MERGE_STEP: usize = 4096;

/// A key of the id index: (run, id).
pub(super) type IdKey = (u64, u128);
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

    /// Its size class: 0 below `FANOUT` flushes of ids, then one more per `FANOUT` times as many.
    fn level(&self) -> u32 {
        let flushes = self.count / FLUSH_EVENTS as u64;
        if flushes < FANOUT {
            0
        } else {
            flushes.ilog(FANOUT)
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

    /// The run holding `id` in `ids` (the id index of the same transaction), and its position.
    fn find(
        &self,
        ids: &impl ReadableTable<IdKey, u64>,
        id: u128,
    ) -> Result<Option<(u64, u64)>, JournalError> {
        for run in self.runs.iter().rev().filter(|run| run.may_hold(id)) {
            if let Some(position) = ids.get((run.number, id))? {
                return Ok(Some((run.number, position.value())));
            }
        }
        Ok(None)
    }

    /// The position of the event with `id` in `ids` (the id index of the same transaction).
    pub(super) fn position(
        &self,
        ids: &impl ReadableTable<IdKey, u64>,
        id: u128,
    ) -> Result<Option<u64>, JournalError> {
        Ok(self.find(ids, id)?.map(|(_, position)| position))
    }

    /// The level of the merge to start: the lowest with [`FANOUT`] runs.
    fn due(&self) -> Option<u32> {
        let mut levels: Vec<u32> = self.runs.iter().map(Run::level).collect();
        levels.sort_unstable();
        let full = levels
            .windows(FANOUT as usize)
            .find(|w| w[0] == w[w.len() - 1]);
        full.map(|w| w[0])
    }
}

/// Writes `sorted` (ids and their positions, ascending, none in the index yet) into the index
/// of `txn`: as a new run, or at the end of the newest if all are above every id in it.
pub(super) fn flush(txn: &WriteTransaction, sorted: &[(u128, u64)]) -> Result<(), JournalError> {
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
    let mut ids = txn.open_table(EVENT_ID_RUNS)?;
    if sorted.len() < CURSOR_RUN {
        for &(id, position) in sorted {
            ids.insert((run.number, id), position)?;
        }
        return Ok(());
    }
    // The newest run's keys are the table's last.
    let mut end = ids.upper_bound_mut(Bound::<IdKey>::Unbounded)?;
    for &(id, position) in sorted {
        end.insert_before((run.number, id), position)?;
    }
    end.close()?;
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
    let mut ids = txn.open_table(EVENT_ID_RUNS)?;
    // The smallest ids left in the inputs, and how many each gave.
    let (mut taken, mut given) = (Vec::with_capacity(budget), vec![0u64; inputs.len()]);
    {
        let mut ranges = Vec::with_capacity(inputs.len());
        let mut heads = Vec::with_capacity(inputs.len());
        for &n in &inputs {
            let number = runs[n].number;
            let mut range = ids.range((number, 0)..=(number, u128::MAX))?;
            heads.push(next_id(&mut range)?);
            ranges.push(range);
        }
        while taken.len() < budget {
            let least = (0..heads.len())
                .filter_map(|n| heads[n].map(|(id, _)| (id, n)))
                .min();
            let Some((_, n)) = least else { break };
            taken.push(heads[n].expect("the least"));
            given[n] += 1;
            heads[n] = next_id(&mut ranges[n])?;
        }
    }
    let through = taken.last().map(|&(id, _)| id);
    for (&n, &given) in inputs.iter().zip(&given) {
        let input = &mut runs[n];
        if let (Some(through), 1..) = (through, given) {
            ids.retain_in((input.number, 0)..=(input.number, through), |_, _| false)?;
        }
        input.count -= given;
    }
    let output = &mut runs[output];
    if let (Some(&(first, _)), Some(through)) = (taken.first(), through) {
        let number = output.number;
        let mut gap = ids.upper_bound_mut(Bound::Included((number, u128::MAX)))?;
        for &(id, position) in &taken {
            gap.insert_before((number, id), position)?;
        }
        gap.close()?;
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

/// The next (id, position) of a range of one run.
fn next_id<'a>(
    range: &mut impl Iterator<
        Item = Result<(AccessGuard<'a, IdKey>, AccessGuard<'a, u64>), StorageError>,
    >,
) -> Result<Option<(u128, u64)>, JournalError> {
    match range.next() {
        Some(entry) => {
            let (key, position) = entry?;
            Ok(Some((key.value().1, position.value())))
        }
        None => Ok(None),
    }
}

/// Removes `ids` (each in the index) from the index of `txn`.
pub(super) fn remove(txn: &WriteTransaction, ids: &[u128]) -> Result<(), JournalError> {
    let mut catalog = txn.open_table(ID_RUN_CATALOG)?;
    let mut runs = Catalog::read(&catalog)?;
    let mut table = txn.open_table(EVENT_ID_RUNS)?;
    for &id in ids {
        let Some((number, _)) = runs.find(&table, id)? else {
            continue;
        };
        table.remove((number, id))?;
        let run = runs.runs.iter_mut().find(|run| run.number == number);
        let run = run.expect("found in it");
        run.count -= 1;
        catalog.insert(number, run.value())?;
    }
    Ok(())
}

/// Writes the ids of `old` (format 4's id table: id → position) as one run of `txn`'s index.
pub(super) fn from_table(
    txn: &WriteTransaction,
    old: &impl ReadableTable<u128, u64>,
) -> Result<u64, JournalError> {
    let mut ids = txn.open_table(EVENT_ID_RUNS)?;
    let mut end = ids.upper_bound_mut(Bound::<IdKey>::Unbounded)?;
    let mut run = Run::new(1, (0, u128::MAX, 0, Part::None as u8));
    for entry in old.iter()? {
        let (id, position) = entry?;
        let id = id.value();
        end.insert_before((run.number, id), position.value())?;
        run.count += 1;
        run.min = run.min.min(id);
        run.max = id;
    }
    end.close()?;
    if run.count > 0 {
        txn.open_table(ID_RUN_CATALOG)?
            .insert(run.number, run.value())?;
    }
    Ok(run.count)
}
