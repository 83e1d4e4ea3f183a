//! The operations of one group commit, applied in order to a single write transaction.
//!
//! Each operation checks everything it needs before its first write, so a refused operation
//! leaves the transaction untouched. Only storage errors can strike half way; the writer then
//! drops the whole transaction.

use std::ops::Bound;

use redb::{
    Key, ReadableTable, ReadableTableMetadata, Table, TableDefinition, Value, WriteTransaction,
};

use super::id_blocks::{IdBlock, IdKey};
use super::id_runs::{self, Catalog};
use super::memtable::{Appends, Memtable};
use super::page::Page;
use super::rules::{self, Written};
use super::runs::Run;
use super::store::{
    CHECKPOINTS, EVENT_ID_BLOCKS, EVENTS, ID_RUN_CATALOG, PARKED, SNAPSHOTS, STREAM_HEADS,
    STREAM_LIFECYCLE,
};
use super::{
    AppendResult, ExpectedVersion, JournalError, Lifecycle, NewEvent, ParkedEvent, record,
};
use crate::journal::StreamMetadata;

/// Bytes of records a batch holds back before it writes them into the log (see
/// [`Batch::write_records`]); most batches hold far less until they finish.
const HELD_RECORD_BYTES: usize = 1 << 20;
/// Fewest new entries of one gap of a table written through a cursor: redb then rebuilds the
/// leaf at the gap once, which costs more than a few inserts (callgrind: a commit of one record
/// ~36k instructions more, of 44 records ~100k fewer).
const CURSOR_RUN: usize = 16;

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Appended {
    /// The events were written.
    Written(AppendResult),
    /// A retry of events already written: nothing was written, this is where they are.
    AlreadyWritten(AppendResult),
}

impl Appended {
    /// Where the events are.
    pub(super) fn result(self) -> AppendResult {
        match self {
            Appended::Written(result) | Appended::AlreadyWritten(result) => result,
        }
    }
}

/// What a batch did, once finished.
pub(super) struct Finished<'r> {
    /// Whether anything was written (otherwise the transaction need not be committed).
    pub(super) wrote: bool,
    /// The last global position, counting this batch's appends.
    pub(super) head: u64,
    /// The indexes of the batch's appends: the writer adds them to the memtable once the batch
    /// committed.
    pub(super) appended: Appends<'r>,
    /// Whether the batch also wrote the memtable and its own appends into the index tables:
    /// the writer then clears the memtable once the batch committed.
    pub(super) flushed: bool,
    /// Whether the batch changed a stream's lifecycle record (a delete, new metadata, an
    /// append recreating a soft-deleted stream).
    pub(super) lifecycles_changed: bool,
}

/// The journal's tables inside one write transaction. Appends write only the log; their
/// indexes go to the memtable (see `memtable`). Every table but the log is opened by the first
/// operation that needs it: most commits touch few of them, and opening one costs a search of
/// the transaction's table of tables. The requests it applies outlive it (`'r`).
pub(super) struct Batch<'txn, 'r> {
    events: Table<'txn, u64, &'static [u8]>,
    stream_heads: Lazy<'txn, &'static str, u64>,
    event_ids: Lazy<'txn, IdKey, IdBlock>,
    /// The runs of `event_ids`, read by the first search of it.
    id_runs: Option<Catalog>,
    snapshots: Lazy<'txn, (&'static str, &'static str, u64), &'static [u8]>,
    checkpoints: Lazy<'txn, &'static str, (u64, &'static [u8])>,
    lifecycles: Lazy<'txn, &'static str, &'static [u8]>,
    /// Whether `lifecycles` holds no record, once read: most journals delete no stream and set
    /// no metadata, and then no append searches it.
    no_lifecycles: Option<bool>,
    /// Whether this batch wrote a lifecycle record.
    lifecycles_changed: bool,
    /// Created, on a file from before it existed, by the first write that needs it.
    parked: Lazy<'txn, (&'static str, u64), &'static [u8]>,
    txn: &'txn WriteTransaction,
    /// The indexes of the events before this batch that the tables do not hold.
    memtable: &'txn Memtable,
    /// The indexes of this batch's appends.
    appended: Appends<'r>,
    /// Records of this batch's appends not yet in the log, ascending by position (see
    /// [`write_records`](Self::write_records)): each one's position and where its bytes end
    /// in `record_bytes`, which holds them one after another.
    records: Vec<(u64, usize)>,
    record_bytes: Vec<u8>,
    /// The next global position.
    next_position: u64,
    recorded_at: u64,
    keep_snapshots: usize,
    wrote: bool,
    /// Whether the batch searched the event-id table for an id the filter of its ids (still
    /// being made) would have answered.
    scan_ids: bool,
}

/// A table of a batch's transaction, opened by its first use.
struct Lazy<'txn, K: Key + 'static, V: Value + 'static> {
    definition: TableDefinition<'static, K, V>,
    table: Option<Table<'txn, K, V>>,
}

impl<'txn, K: Key + 'static, V: Value + 'static> Lazy<'txn, K, V> {
    fn new(definition: TableDefinition<'static, K, V>) -> Self {
        Self {
            definition,
            table: None,
        }
    }

    /// The table, opened (and created if missing) in `txn` the first time.
    fn open(
        &mut self,
        txn: &'txn WriteTransaction,
    ) -> Result<&mut Table<'txn, K, V>, JournalError> {
        if self.table.is_none() {
            self.table = Some(txn.open_table(self.definition)?);
        }
        Ok(self.table.as_mut().expect("opened above"))
    }
}

impl<'txn, 'r> Batch<'txn, 'r> {
    /// Opens the log in `txn`, indexed beyond its tables by `memtable`; the batch's appends
    /// begin at `next_position` and get `recorded_at` (ms since the epoch). Its indexes have
    /// room for what its requests make at most: `appends` appends of `events` events in all.
    pub(super) fn open(
        txn: &'txn WriteTransaction,
        memtable: &'txn Memtable,
        next_position: u64,
        recorded_at: u64,
        keep_snapshots: usize,
        (appends, events): (usize, usize),
    ) -> Result<Self, JournalError> {
        Ok(Self {
            events: txn.open_table(EVENTS)?,
            stream_heads: Lazy::new(STREAM_HEADS),
            event_ids: Lazy::new(EVENT_ID_BLOCKS),
            id_runs: None,
            snapshots: Lazy::new(SNAPSHOTS),
            checkpoints: Lazy::new(CHECKPOINTS),
            lifecycles: Lazy::new(STREAM_LIFECYCLE),
            no_lifecycles: None,
            lifecycles_changed: false,
            parked: Lazy::new(PARKED),
            txn,
            memtable,
            appended: Appends::with_capacity(appends, events),
            records: Vec::with_capacity(events),
            record_bytes: Vec::new(),
            next_position,
            recorded_at,
            keep_snapshots: keep_snapshots.max(1),
            wrote: false,
            scan_ids: false,
        })
    }

    /// The position of the event with `id`, if it was appended.
    fn position_of(&mut self, id: u128) -> Result<Option<u64>, JournalError> {
        let held = self.appended.position(id);
        if let Some(position) = held.or_else(|| self.memtable.position(id)) {
            return Ok(Some(position));
        }
        let Some(first_run) = self.memtable.table_runs_for(id) else {
            return Ok(None);
        };
        // Until the filter of the table's ids is made, this commit takes a step of it.
        self.scan_ids |= self.memtable.table_ids().scanning();
        if self.id_runs.is_none() {
            let catalog = Catalog::read(&self.txn.open_table(ID_RUN_CATALOG)?)?;
            self.id_runs = Some(catalog);
        }
        let ids = self.event_ids.open(self.txn)?;
        let runs = self.id_runs.as_ref().expect("read above");
        runs.position(ids, id, first_run)
    }

    /// The last stored version of `stream`, deleted or not.
    fn stored_head(&mut self, stream: &str) -> Result<Option<u64>, JournalError> {
        let held = self.appended.head(stream);
        match held.or_else(|| self.memtable.head(stream)) {
            Some(head) => Ok(Some(head)),
            None => {
                let heads = self.stream_heads.open(self.txn)?;
                Ok(heads.get(stream)?.map(|head| head.value()))
            }
        }
    }

    /// Appends `events` to `stream` if `expected` holds, or recognises a retry of earlier events.
    /// They get the batch's time unless `recorded_at` (an import's) is given.
    pub(super) fn append(
        &mut self,
        stream: &'r str,
        expected: ExpectedVersion,
        events: &[NewEvent],
        recorded_at: Option<u64>,
    ) -> Result<Appended, JournalError> {
        let lifecycle = self.lifecycle(stream)?;
        if let Some(lifecycle) = &lifecycle {
            lifecycle.check_exists(stream)?;
        }
        let mut known = Vec::new();
        for event in events {
            if let Some(position) = self.position_of(event.id.as_u128())? {
                known.push(position);
            }
        }
        if !known.is_empty() {
            return self
                .retry(stream, events, &known)
                .map(Appended::AlreadyWritten);
        }

        let stored = self.stored_head(stream)?;
        let current = lifecycle.map_or(stored, |lifecycle| lifecycle.current(stored));
        expected.check(stream, current)?;

        let count = events.len() as u64;
        // Versions continue after a soft delete.
        let result = AppendResult::placing(stored, count, self.next_position);
        self.wrote = true;
        if let Some(mut lifecycle) = lifecycle {
            lifecycle.appended();
            self.put_lifecycle(stream, &lifecycle)?;
        }
        let recorded_at = recorded_at.unwrap_or(self.recorded_at);
        for ((event, version), position) in events
            .iter()
            .zip(result.first_version..)
            .zip(result.first_position..)
        {
            record::encode_into(&mut self.record_bytes, stream, version, event, recorded_at);
            self.records.push((position, self.record_bytes.len()));
        }
        let run = Run::new(result.first_version, (result.first_position, count));
        let ids = events.iter().map(|event| event.id.as_u128());
        self.appended.add(stream, run, ids);
        self.next_position = result.last_position + 1;
        if self.record_bytes.len() >= HELD_RECORD_BYTES {
            self.write_records()?;
        }
        Ok(Appended::Written(result))
    }

    /// Writes the records held back at the log's end, through one cursor when there are
    /// enough (see [`CURSOR_RUN`]): redb gathers a run of ascending inserts and splices it into
    /// the last leaf at once, where each insert of its own searches the tree from the root.
    fn write_records(&mut self) -> Result<(), JournalError> {
        if self.records.is_empty() {
            return Ok(());
        }
        let few = self.records.len() < CURSOR_RUN;
        let bytes = &self.record_bytes;
        let mut start = 0;
        let records = self.records.drain(..).map(|(position, end)| {
            let record = &bytes[start..end];
            start = end;
            (position, record)
        });
        if few {
            for (position, record) in records {
                self.events.insert(position, record)?;
            }
        } else {
            // Positions are never handed out twice (the head counts those a scavenge removed):
            // each is above the log's last key, or the cursor refuses it, a storage error that
            // drops the whole batch.
            let mut end = self.events.upper_bound_mut(Bound::<u64>::Unbounded)?;
            for (position, record) in records {
                end.insert_before(position, record)?;
            }
            end.close()?;
        }
        self.record_bytes.clear();
        Ok(())
    }

    /// Checks that `events`, some of whose ids are stored at `known` positions, are a retry of
    /// consecutive events of `stream` in the same order, and returns where they are.
    fn retry(
        &mut self,
        stream: &str,
        events: &[NewEvent],
        known: &[u64],
    ) -> Result<AppendResult, JournalError> {
        // A retry of an append made earlier in this batch reads its records from the log.
        self.write_records()?;
        let (mut stored, mut page) = (Vec::with_capacity(known.len()), Page::default());
        for &position in known {
            let bytes = self
                .events
                .get(position)?
                .ok_or_else(|| JournalError::Corrupt {
                    position,
                    reason: "an event id points at a missing record".to_owned(),
                })?;
            let record = record::decode_raw(position, bytes.value())?;
            stored.push(page.hold(position, &record)?.own());
        }
        let written: Vec<Written> = stored
            .iter()
            .map(|event| Written {
                id: event.id,
                stream: &event.stream,
                position: event.position,
                version: event.version,
            })
            .collect();
        rules::retried(stream, events, &written)
    }

    /// Completes the batch before its commit: once the memtable and this batch's appends hold
    /// `flush_events` events, writes both into the index tables; if it wrote, it moves up to
    /// `merge_step` ids of a merge of the id index's runs (see `id_runs`).
    pub(super) fn finish(
        mut self,
        flush_events: usize,
        merge_step: usize,
    ) -> Result<Finished<'r>, JournalError> {
        self.write_records()?;
        if self.scan_ids {
            let held = self.id_runs.as_ref().map_or(0, Catalog::ids);
            let ids = self.event_ids.open(self.txn)?;
            self.appended.scanned = self.memtable.table_ids().scan(ids, held)?;
        }
        let head = self.next_position - 1;
        let flushed = self.memtable.len() + self.appended.len() >= flush_events;
        // The index tables are opened again to write them.
        drop((self.stream_heads, self.event_ids));
        if flushed {
            self.memtable.write(&self.appended, self.txn, head)?;
        }
        if self.wrote && self.memtable.merging() {
            self.appended.merging = Some(id_runs::merge_step(self.txn, merge_step)?);
        }
        Ok(Finished {
            wrote: self.wrote,
            head,
            appended: self.appended,
            flushed,
            lifecycles_changed: self.lifecycles_changed,
        })
    }

    /// The lifecycle record of `stream`, if it has one.
    fn lifecycle(&mut self, stream: &str) -> Result<Option<Lifecycle>, JournalError> {
        let lifecycles = self.lifecycles.open(self.txn)?;
        let none = match self.no_lifecycles {
            Some(none) => none,
            None => *self.no_lifecycles.insert(lifecycles.is_empty()?),
        };
        if none {
            return Ok(None);
        }
        lifecycles
            .get(stream)?
            .map(|bytes| Lifecycle::decode(stream, bytes.value()))
            .transpose()
    }

    fn put_lifecycle(&mut self, stream: &str, lifecycle: &Lifecycle) -> Result<(), JournalError> {
        self.no_lifecycles = Some(false);
        self.lifecycles_changed = true;
        self.lifecycles
            .open(self.txn)?
            .insert(stream, lifecycle.encode().as_slice())?;
        Ok(())
    }

    /// Soft- or hard-deletes `stream` once `expected` holds.
    pub(super) fn delete_stream(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        hard: bool,
    ) -> Result<(), JournalError> {
        let mut lifecycle = self.lifecycle(stream)?.unwrap_or_default();
        let stored = self.stored_head(stream)?;
        lifecycle.delete(stream, stored, expected, hard)?;
        self.wrote = true;
        self.put_lifecycle(stream, &lifecycle)
    }

    /// Replaces the retention metadata of `stream` (which need not exist yet).
    pub(super) fn set_stream_metadata(
        &mut self,
        stream: &str,
        metadata: &StreamMetadata,
    ) -> Result<(), JournalError> {
        let mut lifecycle = self.lifecycle(stream)?.unwrap_or_default();
        lifecycle.set_metadata(stream, *metadata)?;
        self.wrote = true;
        self.put_lifecycle(stream, &lifecycle)
    }

    /// Stores a snapshot and prunes all but the newest `keep_snapshots` of (plugin, stream).
    pub(super) fn put_snapshot(
        &mut self,
        plugin: &str,
        stream: &str,
        version: u64,
        state: &[u8],
    ) -> Result<(), JournalError> {
        self.wrote = true;
        let snapshots = self.snapshots.open(self.txn)?;
        snapshots.insert((plugin, stream, version), state)?;
        let mut versions = Vec::new();
        for entry in snapshots.range((plugin, stream, 0)..=(plugin, stream, u64::MAX))? {
            versions.push(entry?.0.value().2);
        }
        let surplus = versions.len().saturating_sub(self.keep_snapshots);
        for version in &versions[..surplus] {
            snapshots.remove((plugin, stream, *version))?;
        }
        Ok(())
    }

    /// Stores a projection's position and state, replacing the previous checkpoint.
    pub(super) fn put_checkpoint(
        &mut self,
        plugin: &str,
        position: u64,
        state: &[u8],
    ) -> Result<(), JournalError> {
        self.wrote = true;
        self.checkpoints
            .open(self.txn)?
            .insert(plugin, (position, state))?;
        Ok(())
    }

    /// Removes every snapshot, checkpoint and parked event of `plugin`, through any upcaster
    /// chain.
    pub(super) fn delete_plugin_data(&mut self, plugin: &str) -> Result<(), JournalError> {
        self.wrote = true;
        // The plugin's own key, and its keys through upcaster chains (`{plugin}+{chain}`).
        let owned = |key: &str| {
            key == plugin
                || key
                    .strip_prefix(plugin)
                    .is_some_and(|rest| rest.starts_with('+'))
        };
        self.checkpoints
            .open(self.txn)?
            .retain_in(plugin.., |key, _| !owned(key))?;
        self.parked
            .open(self.txn)?
            .retain_in((plugin, 0).., |(key, _), _| !owned(key))?;
        let mut keys = Vec::new();
        let snapshots = self.snapshots.open(self.txn)?;
        for entry in snapshots.range((plugin, "", 0)..)? {
            let (key, _) = entry?;
            let (owner, stream, version) = key.value();
            if !owner.starts_with(plugin) {
                break;
            }
            if owned(owner) {
                keys.push((owner.to_owned(), stream.to_owned(), version));
            }
        }
        for (owner, stream, version) in &keys {
            snapshots.remove((owner.as_str(), stream.as_str(), *version))?;
        }
        Ok(())
    }

    /// Records `events` as parked by `plugin`, replacing earlier records of the same positions.
    pub(super) fn park(
        &mut self,
        plugin: &str,
        events: &[ParkedEvent],
    ) -> Result<(), JournalError> {
        if events.is_empty() {
            return Ok(());
        }
        self.wrote = true;
        let parked = self.parked.open(self.txn)?;
        for event in events {
            let bytes = serde_json::to_vec(event).expect("a parked event serialises");
            parked.insert((plugin, event.position), bytes.as_slice())?;
        }
        Ok(())
    }

    /// Forgets the parked events of `plugin` at `positions`.
    pub(super) fn unpark(&mut self, plugin: &str, positions: &[u64]) -> Result<(), JournalError> {
        if positions.is_empty() {
            return Ok(());
        }
        self.wrote = true;
        let parked = self.parked.open(self.txn)?;
        for &position in positions {
            parked.remove((plugin, position))?;
        }
        Ok(())
    }
}
