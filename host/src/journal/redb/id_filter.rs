//! A filter of the ids in the event-id table, held in memory. A random (v4) id may belong
//! anywhere in the table, so the table cannot say it is new without a search of its B-tree
//! (time-ordered ids above the table's largest skip it, see
//! [`Memtable::table_may_hold`](super::memtable::Memtable::table_may_hold)); the filter says
//! so for all but about one in a hundred new ids.
//!
//! Bloom filters ([fastbloom]) never miss an id put in them; an id they wrongly admit costs the
//! search they would have spared. The filter holds every id in the table: it is built from the
//! table by the first append that needs it, and each flush adds the ids it moved into the
//! table. Ids a scavenge removes stay in it, which only admits them wrongly. It costs ~1.2
//! bytes per id it is made for: ~2.4 MB per million events once built (made for twice the
//! table), at most twice that just before the table doubles again.

use std::hash::BuildHasher;
use std::sync::OnceLock;

use fastbloom::BloomFilter;
use foldhash::fast::FixedState;
use redb::ReadableTable;

use super::JournalError;
use super::memtable::FLUSH_EVENTS;

/// The false positives each Bloom filter is sized for (~1.2 bytes per id).
const FALSE_POSITIVES: f64 = 0.01;
/// Ids the first filter of a new or small journal is made for.
const FIRST_IDS: usize = 8 * FLUSH_EVENTS;

/// May the event-id table hold an id? See the module's doc. Built by the first append that
/// needs it ([`build`](Self::build)): opening a file reads none of its ids (~580 instructions
/// each to build from), and a journal of time-ordered ids may never need it.
#[derive(Debug, Default)]
pub(super) struct IdFilter {
    built: OnceLock<Filters>,
}

impl IdFilter {
    /// Builds the filter from `table` (the event-id table, as the writer's transaction sees it)
    /// unless built.
    pub(super) fn build(&self, table: &impl ReadableTable<u128, u64>) -> Result<(), JournalError> {
        if self.built.get().is_some() {
            return Ok(());
        }
        let mut filters = Filters::default();
        filters.add_filter(2 * table.len()? as usize);
        for entry in table.iter()? {
            filters.insert(entry?.0.value());
        }
        // Only the writer builds, holding the write transaction: no other build can be first.
        let _ = self.built.set(filters);
        Ok(())
    }

    /// Records that the table holds `id` (unless not built: the build will find it there).
    pub(super) fn insert(&mut self, id: u128) {
        if let Some(filters) = self.built.get_mut() {
            filters.insert(id);
        }
    }

    /// Whether the table may hold `id`: if not, it does not. Until built, it may hold any.
    pub(super) fn may_hold(&self, id: u128) -> bool {
        self.built.get().is_none_or(|filters| filters.may_hold(id))
    }
}

/// Bloom filters of every id in the table.
#[derive(Debug, Default)]
struct Filters {
    /// Oldest first. A filter is added once the ones before it hold as many ids as they were
    /// made for, sized for as many again: lookups check a few of them, one per doubling of the
    /// table since the first was built.
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
    FixedState::with_seed(0x5eed_1d5).hash_one(id)
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
        // Each filter admits ~1 % wrongly.
        let bound = count as usize * filter.filters.len() * 2 / 100;
        assert!(
            admitted < bound,
            "{admitted} of {count} absent ids admitted"
        );
    }
}
