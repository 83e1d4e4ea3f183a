//! Scavenging: physically removing what no reader sees any more (events of deleted streams and
//! outside retention windows, snapshots folded from them), then compacting the file.
//!
//! Removal runs in write transactions of at most [`CHUNK`] events, interleaved with the writer's
//! commits, so appends go on meanwhile. redb is copy-on-write: a removed record's bytes stay in the
//! freed pages until they are reused, so a scavenge ends with [`Database::compact`], which moves
//! the live pages to the front of the file and cuts off the rest. Compaction needs the database
//! alone: reads and appends wait while it runs.

use std::collections::BTreeSet;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};
use uuid::Uuid;

use super::memtable::Appends;
use super::runs;
use super::store::{
    self, EVENTS, LAST_POSITION_KEY, META, SNAPSHOTS, STREAM_HEADS, STREAM_LIFECYCLE,
    STREAM_RUN_BLOCKS,
};
use super::{JournalError, Lifecycle, ScavengeReport, SharedDb, id_runs, record};
use crate::journal::lifecycle::now_millis;

/// Most events one scavenge transaction removes.
const CHUNK: usize = 10_000;

/// Removes every hidden event and unusable snapshot, then compacts the file.
pub(super) fn run(db: &SharedDb) -> Result<ScavengeReport, JournalError> {
    let mut report = ScavengeReport {
        bytes_before: allocated_bytes(&db.get())?,
        ..ScavengeReport::default()
    };
    let streams = streams_with_lifecycles(&db.get())?;
    let mut unusable_snapshots = BTreeSet::new();
    for stream in &streams {
        report.streams += 1;
        loop {
            let database = db.get();
            let mut txn = database.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            // Removal rewrites the indexes: the memtable moves into them first, in the same
            // transaction, and is held across the commit as the writer holds it for a flush.
            let mut memtable = db.memtable_mut();
            let through = memtable.through();
            memtable.write(&Appends::default(), &txn, through)?;
            let (removed, whole) = remove_hidden(&txn, stream)?;
            store::commit(&database, txn)?;
            memtable.clear(through);
            drop(memtable);
            report.events += removed as u64;
            if !whole {
                unusable_snapshots.insert(stream.clone());
            }
            if removed < CHUNK {
                break;
            }
        }
    }
    if !unusable_snapshots.is_empty() {
        let database = db.get();
        let mut txn = database.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        report.snapshots = remove_snapshots(&txn, &unusable_snapshots)?;
        store::commit(&database, txn)?;
    }
    let _no_backups = db.no_backups();
    let mut database = db.exclusive();
    database
        .compact()
        .map_err(|error| JournalError::Storage(std::sync::Arc::new(redb::Error::from(error))))?;
    report.bytes_after = allocated_bytes(&database)?;
    tracing::info!(?report, "scavenged the journal");
    Ok(report)
}

/// The bytes the database occupies (its allocated pages).
fn allocated_bytes(db: &Database) -> Result<u64, JournalError> {
    let txn = db.begin_write()?;
    let stats = txn.stats()?;
    txn.abort()?;
    Ok(stats.allocated_pages() * stats.page_size() as u64)
}

fn streams_with_lifecycles(db: &Database) -> Result<Vec<String>, JournalError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(STREAM_LIFECYCLE)?;
    let mut streams = Vec::new();
    for entry in table.iter()? {
        streams.push(entry?.0.value().to_owned());
    }
    Ok(streams)
}

/// Removes up to [`CHUNK`] of the oldest events of `stream` that no reader sees, stopping at the
/// first visible one. Returns how many it removed and whether the stream's window is whole
/// (its snapshots still usable).
fn remove_hidden(txn: &WriteTransaction, stream: &str) -> Result<(usize, bool), JournalError> {
    let lifecycle = match txn.open_table(STREAM_LIFECYCLE)?.get(stream)? {
        Some(bytes) => Lifecycle::decode(stream, bytes.value())?,
        None => return Ok((0, true)),
    };
    let stored = txn
        .open_table(STREAM_HEADS)?
        .get(stream)?
        .map(|v| v.value());
    let now = now_millis();
    let visibility = lifecycle.visibility(stored.unwrap_or(0), now);
    let whole = lifecycle
        .window(stream, stored, now)
        .is_ok_and(|window| window.is_whole());

    let mut events = txn.open_table(EVENTS)?;
    let mut blocks = txn.open_table(STREAM_RUN_BLOCKS)?;
    // (position, id) of each hidden event, and the version after the last of them.
    let (mut hidden, mut kept_from) = (Vec::new(), 0);
    'runs: for run in runs::holding(&blocks, stream, 0)? {
        let run = run?;
        for version in run.first_version..run.end_version() {
            let position = run.position(version);
            let Some(bytes) = events.get(position)? else {
                return Err(JournalError::Corrupt {
                    position,
                    reason: format!("version {version} of {stream:?} points at a missing record"),
                });
            };
            let event = record::decode(position, bytes.value())?;
            if visibility.admits(event.version, event.recorded_at) || hidden.len() == CHUNK {
                break 'runs;
            }
            hidden.push((position, Uuid::from_bytes(event.id).as_u128()));
            kept_from = version + 1;
        }
    }
    if hidden.is_empty() {
        return Ok((0, whole));
    }
    // Positions are never handed out twice, even when the newest events go.
    let last = events.last()?.map_or(0, |(position, _)| position.value());
    let mut meta = txn.open_table(META)?;
    let kept = meta.get(LAST_POSITION_KEY)?.map_or(0, |v| v.value());
    meta.insert(LAST_POSITION_KEY, last.max(kept))?;
    for &(position, _) in &hidden {
        events.remove(position)?;
    }
    let ids: Vec<u128> = hidden.iter().map(|&(_, id)| id).collect();
    id_runs::remove(txn, &ids)?;
    runs::remove_below(&mut blocks, stream, kept_from)?;
    Ok((hidden.len(), whole))
}

/// Removes every snapshot (of any plugin) of `streams`; returns how many.
fn remove_snapshots(
    txn: &WriteTransaction,
    streams: &BTreeSet<String>,
) -> Result<u64, JournalError> {
    let mut snapshots = txn.open_table(SNAPSHOTS)?;
    let mut doomed = Vec::new();
    for entry in snapshots.iter()? {
        let (key, _) = entry?;
        let (plugin, stream, version) = key.value();
        if streams.contains(stream) {
            doomed.push((plugin.to_owned(), stream.to_owned(), version));
        }
    }
    for (plugin, stream, version) in &doomed {
        snapshots.remove((plugin.as_str(), stream.as_str(), *version))?;
    }
    Ok(doomed.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::redb::request::Request;
    use crate::journal::redb::writer::Writer;
    use crate::journal::redb::writer::tests::writer_at;
    use crate::journal::redb::{reader, runs::Run};
    use crate::journal::{ExpectedVersion, NewEvent, Op, ReadLimit, StreamMetadata};

    /// Commits `op` alone.
    fn commit(writer: &Writer, op: Op) {
        let (request, mut outcome) = Request::done(op);
        writer
            .claim_if_idle(None)
            .expect("idle")
            .commit(vec![request])
            .send();
        outcome.try_recv().unwrap().unwrap();
    }

    /// Appends `count` events to `stream` in a commit of its own.
    fn append(writer: &Writer, stream: &str, count: usize) {
        let events = (0..count)
            .map(|_| NewEvent::json("Happened", &serde_json::json!({})))
            .collect();
        let (request, mut outcome) =
            Request::append(stream.to_owned(), ExpectedVersion::Any, events);
        writer
            .claim_if_idle(None)
            .expect("idle")
            .commit(vec![request])
            .send();
        outcome.try_recv().unwrap().unwrap();
    }

    /// A scavenge that truncates a stream of two blocks of runs in the middle of a run of its
    /// second block drops the first block and keeps the rest of the second under the first
    /// version kept; the stream reads from there, and the other stream as before.
    #[test]
    fn a_scavenge_cuts_a_stream_in_the_middle_of_a_block() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer_at(&dir.path().join("journal.redb"), 50);
        for _ in 0..200 {
            append(&writer, "cut", 2);
            append(&writer, "kept", 1);
        }
        let metadata = StreamMetadata {
            truncate_before: Some(300),
            ..StreamMetadata::default()
        };
        let stream = "cut".to_owned();
        commit(&writer, Op::SetStreamMetadata { stream, metadata });
        assert_eq!(run(&writer.db).unwrap().events, 299);

        let txn = writer.db.get().begin_read().unwrap();
        let blocks = txn.open_table(STREAM_RUN_BLOCKS).unwrap();
        let runs: Vec<Run> = runs::holding(&blocks, "cut", 0)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(runs[0].first_version, 300);
        assert_eq!(runs[0].count, 1, "the run of 299 and 300 without 299");
        assert_eq!(runs.len(), 51);
        let keys: Vec<u64> = (blocks.range(("cut", 0)..=("cut", u64::MAX)).unwrap())
            .map(|entry| entry.unwrap().0.value().1)
            .collect();
        assert_eq!(keys, [300]);
        drop((blocks, txn));
        let read = |stream, from| -> Vec<u64> {
            let events = reader::read_stream(&writer.db, stream, from, ReadLimit::events(500));
            events.unwrap().iter().map(|event| event.version).collect()
        };
        assert_eq!(read("cut", 1), (300..=400).collect::<Vec<_>>());
        assert_eq!(read("cut", 350), (350..=400).collect::<Vec<_>>());
        assert_eq!(read("kept", 1), (1..=200).collect::<Vec<_>>());
    }
}
