//! A filter of the ids in the event-id table, held in memory. A random (v4) id may belong
//! anywhere in the table, so the table cannot say it is new without a search of its B-tree
//! (time-ordered ids above the table's largest skip it, see
//! [`Memtable::table_runs_for`](super::memtable::Memtable::table_runs_for)); the filter says
//! so for all but about one in a thousand new ids per filter (it holds a few).
//!
//! Bloom filters ([fastbloom]) never miss an id put in them; an id they wrongly admit costs the
//! search they would have spared. The filter is made by a scan of the table, in steps of
//! [`SCAN_STEP`] ids that commits needing it take along (opening a file reads none of its ids,
//! and a journal of time-ordered ids never needs it); from the scan's start each flush adds the
//! ids it moved into the table, so once the scan is through, the filter holds every id in the
//! table. Until then it admits any id of the runs it has not passed (see `id_runs`). Ids a scavenge removes stay in it, which only admits
//! them wrongly. It costs ~1.8 bytes per id it is made for: ~3.6 MB per million events when
//! made (for twice the table), at most twice that before the table doubles again.

use std::hash::BuildHasher;
use std::ops::Bound;

use fastbloom::BloomFilter;
use foldhash::fast::FixedState;
use redb::ReadableTable;

use super::JournalError;
use super::id_blocks::{self, IdBlock, IdKey};
use super::memtable::FLUSH_EVENTS;

/// The false positives each Bloom filter is sized for (~1.8 bytes per id). An id wrongly
/// admitted is looked for in each run of the id index whose range holds it (up to ~22 by a
/// million ids): at 1 % with the filters of a million ids that was ~2k instructions per event.
const FALSE_POSITIVES: f64 = 0.001;
/// Ids the first filter of a new or small journal is made for.
const FIRST_IDS: usize = 8 * FLUSH_EVENTS;
/// Ids of the table one commit scans into the filter (~5M instructions).
pub(super) const SCAN_STEP: usize = FLUSH_EVENTS;

/// May the event-id table hold an id? See the module's doc.
#[derive(Debug, Default)]
pub(super) struct IdFilter {
    filters: Filters,
    scan: Scan,
}

/// How far the scan of the table has come.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Nothing needed the filter yet.
    #[default]
    NotStarted,
    /// Every id of the table's blocks below this key is in the filter. Ids only ever move to
    /// blocks of greater keys (into a newer run, or a block written again under its least id
    /// left, see `id_blocks`), so none moves from above it to below.
    Below((u64, u128)),
    /// Every id of the table is in the filter.
    Done,
}

/// A step of the scan, made in a commit's transaction and taken in once it committed.
#[derive(Debug)]
pub(super) struct Scanned {
    /// The ids scanned, ascending in each run.
    ids: Vec<u128>,
    /// The ids the table held when the scan started: the filter is made for twice as many.
    table_len: usize,
    /// The block where the scan goes on, or `None` at the table's end.
    next: Option<(u64, u128)>,
}

impl IdFilter {
    /// The least run of the id index that may hold `id`, or `None` if none does. Until the
    /// scan is through, the runs it has not passed may hold any id; those before it hold
    /// only ids the filter admits.
    pub(super) fn first_run_for(&self, id: u128) -> Option<u64> {
        match self.scan {
            Scan::NotStarted => Some(0),
            _ if self.filters.may_hold(id) => Some(0),
            Scan::Below((run, _)) => Some(run),
            Scan::Done => None,
        }
    }

    /// Whether the filter is not made yet: a commit that needs it takes a [`scan`](Self::scan)
    /// step.
    pub(super) fn scanning(&self) -> bool {
        self.scan != Scan::Done
    }

    /// The next step of the scan, read from `table` (the event-id table, in a write
    /// transaction, holding `held` ids); `None` once through.
    pub(super) fn scan(
        &self,
        table: &impl ReadableTable<IdKey, IdBlock>,
        held: u64,
    ) -> Result<Option<Scanned>, JournalError> {
        let from = match self.scan {
            Scan::NotStarted => Bound::Unbounded,
            Scan::Below(next) => Bound::Included(next),
            Scan::Done => return Ok(None),
        };
        let mut ids = Vec::with_capacity(SCAN_STEP);
        let mut next = None;
        for entry in table.range::<(u64, u128)>((from, Bound::Unbounded))? {
            let (key, block) = entry?;
            if ids.len() >= SCAN_STEP {
                next = Some(key.value());
                break;
            }
            ids.extend(id_blocks::pairs(key.value(), block.value())?.map(|(id, _)| id));
        }
        let table_len = match self.scan {
            Scan::NotStarted => held as usize,
            _ => 0,
        };
        Ok(Some(Scanned {
            ids,
            table_len,
            next,
        }))
    }

    /// Takes in a step of the scan, whose commit succeeded.
    pub(super) fn take(&mut self, scanned: Scanned) {
        if self.scan == Scan::NotStarted {
            self.filters.add_filter(2 * scanned.table_len);
        }
        for &id in &scanned.ids {
            self.filters.insert(id);
        }
        self.scan = scanned.next.map_or(Scan::Done, Scan::Below);
    }

    /// Records that the table now holds `id`. Before the scan starts there is nothing to add
    /// to: the scan will find it.
    pub(super) fn insert(&mut self, id: u128) {
        if self.scan != Scan::NotStarted {
            self.filters.insert(id);
        }
    }
}

/// Bloom filters of ids.
#[derive(Debug, Default)]
struct Filters {
    /// Oldest first. A filter is added once the ones before it hold as many ids as they were
    /// made for, sized for as many again: lookups check a few of them, one per doubling of the
    /// table since the first was made.
    filters: Vec<BloomFilter>,
    /// Ids put in the filters, and how many they were made for.
    held: usize,
    made_for: usize,
}

impl Filters {
    fn insert(&mut self, id: u128) {
        if self.held == self.made_for {
            self.add_filter(self.made_for);
        }
        let newest = self.filters.last_mut().expect("added above");
        newest.insert_hash(hash(id));
        self.held += 1;
    }

    fn may_hold(&self, id: u128) -> bool {
        let hash = hash(id);
        self.filters.iter().any(|filter| filter.contains_hash(hash))
    }

    /// Adds a filter made for `ids` ids (at least [`FIRST_IDS`]).
    fn add_filter(&mut self, ids: usize) {
        let ids = ids.max(FIRST_IDS);
        let filter = BloomFilter::with_false_pos(FALSE_POSITIVES).expected_items(ids);
        self.filters.push(filter);
        self.made_for += ids;
    }
}

/// One hash of `id` for every filter (each derives its bits from it).
fn hash(id: u128) -> u64 {
    // Fixed: ids chosen to collide only cost the searches they would have spared.
    FixedState::with_seed(0x05ee_d1d5).hash_one(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids spread like random ones (multiplied by an odd constant), without a generator.
    fn id(n: u128) -> u128 {
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    }

    /// Growing past several filters, it still admits every id put in, and few others.
    #[test]
    fn it_admits_every_id_put_in_and_few_others() {
        let mut filter = Filters::default();
        let count = 5 * FIRST_IDS as u128;
        for n in 0..count {
            filter.insert(id(n));
        }
        assert!(
            filter.filters.len() >= 3,
            "{} filters",
            filter.filters.len()
        );
        assert!((0..count).all(|n| filter.may_hold(id(n))), "an id missed");
        let admitted = (count..2 * count)
            .filter(|&n| filter.may_hold(id(n)))
            .count();
        // Each filter admits ~0.1 % wrongly.
        let bound = count as usize * filter.filters.len() * 2 / 1000;
        assert!(
            admitted < bound,
            "{admitted} of {count} absent ids admitted"
        );
    }
}
