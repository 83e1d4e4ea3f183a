//! The events a projection's run skips because it could not fold them.
//!
//! A client can make a projection park any number of events, so memory holds every parked
//! position (what a fold skips, and the count) but a full record (stream, type, reason) only
//! until the journal holds it: records are written with the checkpoint that passes them, and
//! listings read the journal's a page at a time. A run that does not write to the journal (a
//! reset still catching up) keeps all of its records.

use std::collections::{BTreeMap, BTreeSet};

use crate::journal::ParkedEvent;

/// The parked events of one run.
#[derive(Default)]
pub(super) struct Parked {
    positions: BTreeSet<u64>,
    /// Records the journal does not hold (yet), by position.
    unrecorded: BTreeMap<u64, ParkedEvent>,
    /// Positions forgotten since the last checkpoint: the journal may still hold their records,
    /// which the next checkpoint removes, with the state that no longer skips them.
    unparked: BTreeSet<u64>,
}

/// What a checkpoint writes besides the state (see [`Parked::pending`]).
#[derive(Clone)]
pub(super) struct Pending {
    /// Records of parked events the journal does not hold yet.
    pub park: Vec<ParkedEvent>,
    /// Positions whose records the journal should no longer hold.
    pub unpark: Vec<u64>,
}

impl Parked {
    /// The positions the journal records as parked, for a run that resumes its build's.
    pub fn restored(positions: impl IntoIterator<Item = u64>) -> Self {
        Self {
            positions: positions.into_iter().collect(),
            ..Self::default()
        }
    }

    pub fn contains(&self, position: u64) -> bool {
        self.positions.contains(&position)
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Every parked position, in order.
    pub fn positions(&self) -> Vec<u64> {
        self.positions.iter().copied().collect()
    }

    /// Parks an event, or parks it again with a new record.
    pub fn park(&mut self, record: ParkedEvent) {
        self.positions.insert(record.position);
        self.unparked.remove(&record.position);
        self.unrecorded.insert(record.position, record);
    }

    /// Forgets a parked event (folded after all, or gone from the log); the next checkpoint
    /// removes its record from the journal.
    pub fn forget(&mut self, position: u64) {
        self.positions.remove(&position);
        self.unrecorded.remove(&position);
        self.unparked.insert(position);
    }

    /// What the next checkpoint writes with its state: the records the journal does not hold
    /// yet, and the positions forgotten since the last one.
    pub fn pending(&self) -> Pending {
        Pending {
            park: self.unrecorded(),
            unpark: self.unparked.iter().copied().collect(),
        }
    }

    /// Drops what the journal holds after `written` (unless parked again since).
    pub fn written(&mut self, written: &Pending) {
        self.recorded(&written.park);
        for position in &written.unpark {
            if !self.positions.contains(position) {
                self.unparked.remove(position);
            }
        }
    }

    /// The record of a parked event the journal does not hold yet.
    pub fn unrecorded_at(&self, position: u64) -> Option<&ParkedEvent> {
        self.unrecorded.get(&position)
    }

    /// The records the journal does not hold yet, by position.
    pub fn unrecorded(&self) -> Vec<ParkedEvent> {
        self.unrecorded.values().cloned().collect()
    }

    /// How many records the journal does not hold yet.
    pub fn unrecorded_len(&self) -> usize {
        self.unrecorded.len()
    }

    /// The first `limit` records the journal does not hold yet after position `after`.
    pub fn unrecorded_after(&self, after: u64, limit: usize) -> Vec<ParkedEvent> {
        let from = after.saturating_add(1);
        let records = self.unrecorded.range(from..).take(limit);
        records.map(|(_, record)| record.clone()).collect()
    }

    /// Drops the records of `written` the journal now holds (unless parked again since).
    pub fn recorded(&mut self, written: &[ParkedEvent]) {
        for record in written {
            if self.unrecorded.get(&record.position) == Some(record) {
                self.unrecorded.remove(&record.position);
            }
        }
    }

    /// Up to `limit` parked events after position `after`, from `recorded` (the journal's first
    /// `limit` records after `after`) and `ours` (the unrecorded records after `after`, taken
    /// before `recorded` was read: a record written meanwhile is in `recorded`), which replace
    /// the journal's at the same position; only those still parked. A full `recorded` says
    /// nothing past its last position, so the page stops there: it may come back shorter than
    /// `limit`, or empty while more follow (see [`Page::next`]).
    pub fn page(
        &self,
        recorded: Vec<ParkedEvent>,
        ours: &[ParkedEvent],
        after: u64,
        limit: usize,
    ) -> Page {
        let full = recorded.len() >= limit;
        let bound = match full {
            true => recorded.last().map_or(u64::MAX, |record| record.position),
            false => u64::MAX,
        };
        let mut page: BTreeMap<u64, ParkedEvent> = recorded
            .into_iter()
            .map(|record| (record.position, record))
            .collect();
        let ours = ours
            .iter()
            .filter(|r| r.position > after && r.position <= bound);
        page.extend(ours.map(|record| (record.position, record.clone())));
        page.retain(|position, _| self.contains(*position));
        Page {
            events: page.into_values().take(limit).collect(),
            next: full.then_some(bound),
        }
    }
}

/// A page of parked events (see [`Parked::page`]).
pub(super) struct Page {
    pub events: Vec<ParkedEvent>,
    /// Where the journal's records go on, when its page was full: an empty page is read again
    /// from there.
    pub next: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(position: u64, reason: &str) -> ParkedEvent {
        ParkedEvent {
            position,
            stream: "s".to_owned(),
            event_type: "T".to_owned(),
            reason: reason.to_owned(),
            attempts: 1,
            parked_at: 0,
        }
    }

    #[test]
    fn a_page_merges_the_journals_records_with_the_unrecorded_ones() {
        let mut parked = Parked::restored([2, 4, 6]);
        parked.park(record(3, "new"));
        parked.park(record(4, "again"));
        parked.forget(6);
        let journal = vec![record(2, "old"), record(4, "old"), record(6, "old")];
        let ours = parked.unrecorded_after(0, 10);
        let page = parked.page(journal.clone(), &ours, 0, 10).events;
        let reasons: Vec<(u64, &str)> = page.iter().map(|r| (r.position, &*r.reason)).collect();
        assert_eq!(reasons, [(2, "old"), (3, "new"), (4, "again")]);
        assert_eq!(parked.page(journal, &ours, 0, 2).events.len(), 2);
        let ours = parked.unrecorded_after(3, 10);
        let page = parked.page(vec![], &ours, 3, 10);
        assert_eq!(page.events, [record(4, "again")]);
        assert_eq!(parked.len(), 3);
    }

    #[test]
    fn a_full_journal_page_bounds_what_a_page_says() {
        // The journal still lists 1 and 2, no longer parked; 3 is only in memory.
        let mut parked = Parked::restored([7]);
        parked.park(record(3, "ours"));
        let ours = parked.unrecorded_after(0, 2);
        let page = parked.page(vec![record(1, "x"), record(2, "x")], &ours, 0, 2);
        assert!(page.events.is_empty());
        assert_eq!(page.next, Some(2));
        let page = parked.page(vec![record(7, "x")], &ours, 2, 2);
        assert_eq!(page.events, [record(3, "ours"), record(7, "x")]);
        assert_eq!(page.next, None);
    }

    #[test]
    fn only_what_was_written_leaves_the_unrecorded_records() {
        let mut parked = Parked::default();
        parked.park(record(1, "a"));
        parked.park(record(2, "b"));
        let written = parked.unrecorded();
        parked.park(record(2, "b again"));
        parked.recorded(&written);
        assert_eq!(parked.unrecorded(), [record(2, "b again")]);
        assert!(parked.contains(1) && parked.unrecorded_at(1).is_none());
    }

    #[test]
    fn a_forgotten_event_is_unparked_by_the_next_checkpoint_and_only_then_let_go() {
        let mut parked = Parked::restored([1, 2, 3]);
        parked.forget(1);
        parked.forget(2);
        let first = parked.pending();
        assert_eq!(first.unpark, [1, 2]);
        // Parked again before the write ended: its new record goes with the next checkpoint,
        // never an unpark of it.
        parked.park(record(2, "again"));
        // A write that never ended (a stopped run) lets nothing go: the checkpoint the runner
        // stores on stop still removes 1.
        let next = parked.pending();
        assert_eq!(next.unpark, [1]);
        assert_eq!(next.park, [record(2, "again")]);
        parked.written(&first);
        let after = parked.pending();
        assert!(after.unpark.is_empty());
        assert_eq!(after.park, [record(2, "again")]);
        assert_eq!(parked.positions(), [2, 3]);
    }
}
