//! The redb tables and opening a journal file.

use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition, TableHandle,
    WriteTransaction,
};

use super::id_blocks::{IdBlock, IdKey};
use super::id_runs::CatalogValue;
use super::{JournalError, migrate};

/// The storage format this build reads and writes (the tables below and their key layouts).
/// Format 1 indexed streams per event, format 2 indexed every event in its own commit; opening
/// such a file migrates it (see `migrate`). In format 3 the index tables cover the log up to
/// `META`'s `indexed_through` only (see `memtable`), which a format 2 build would misread.
/// Format 4 may hold records of layout 2 (see `record`), which a format 3 build would report
/// as corrupt: it refuses the file instead. Format 5 indexes event ids as sorted runs (see
/// `id_runs`), which a format 4 build would not find; opening a format 4 file moves its id
/// table into one run (a format 4 build then refuses the file). Format 6 stores each run as
/// blocks of ids (see `id_blocks`), which a format 5 build would not read; opening a format 4 or
/// 5 file rewrites its id index as blocks (a format 5 build then refuses the file). Format 7
/// stores each stream's runs as blocks of runs (see `runs`) where format 6 stored one entry
/// per run, which a format 6 build would not find; opening a format 6 or older file rewrites
/// its runs as blocks (a format 6 build then refuses the file).
pub(super) const FORMAT_VERSION: u64 = 7;
pub(super) const FORMAT_KEY: &str = "format_version";

/// Settings of the file, e.g. its storage format.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The global log: position → encoded record (see `record`).
pub(super) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// (stream, first version of the block) → a block of (first position, count) pairs: the
/// [runs](super::runs) of each stream.
pub(super) const STREAM_RUN_BLOCKS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("stream_run_blocks");
/// stream → its last version.
pub(super) const STREAM_HEADS: TableDefinition<&str, u64> = TableDefinition::new("stream_heads");
/// (run, least id of the block) → a block of (event id, position) pairs: the event-id index as
/// sorted runs (see `id_runs`) of blocks of ids (see `id_blocks`).
pub(super) const EVENT_ID_BLOCKS: TableDefinition<IdKey, IdBlock> =
    TableDefinition::new("event_id_blocks");
/// run → (ids, least id, greatest id, part in a merge): the runs of `EVENT_ID_BLOCKS`.
pub(super) const ID_RUN_CATALOG: TableDefinition<u64, CatalogValue> =
    TableDefinition::new("event_id_run_catalog");
/// (plugin, stream, version) → aggregate state.
pub(super) const SNAPSHOTS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("snapshots");
/// plugin → (position, projection state).
pub(super) const CHECKPOINTS: TableDefinition<&str, (u64, &[u8])> =
    TableDefinition::new("checkpoints");
/// (plugin, position) → a parked event as JSON. Added after format 1 without a format bump:
/// created at open if missing.
pub(super) const PARKED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("parked");

/// stream → its [`Lifecycle`](super::Lifecycle) (deletion and retention metadata), for the
/// streams that have one. Added after format 1 without a format bump: created at open if
/// missing.
pub(super) const STREAM_LIFECYCLE: TableDefinition<&str, &[u8]> =
    TableDefinition::new("stream_lifecycle");
/// The `META` key of the highest position ever written, kept by scavenges so that removing the
/// newest events never lets their positions be handed out again.
pub(super) const LAST_POSITION_KEY: &str = "last_position";

/// Opens (or creates) the journal file at `path`, holding at most `cache_bytes` of its pages in
/// memory, creating its tables and checking its format.
///
/// A new file is only durable once its name is: the directory holding it is synced too.
pub(super) fn open(path: &Path, cache_bytes: usize) -> Result<Database, JournalError> {
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)?;
    prepare(&db)?;
    crate::durable::sync_parent(path)
        .map_err(|error| JournalError::Storage(Arc::new(redb::StorageError::Io(error).into())))?;
    Ok(db)
}

/// Opens (or creates) a journal on `backend`, e.g. a simulated disk, holding at most
/// `cache_bytes` of its pages in memory.
pub(super) fn open_on(
    backend: impl StorageBackend,
    cache_bytes: usize,
) -> Result<Database, JournalError> {
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create_with_backend(backend)?;
    prepare(&db)?;
    Ok(db)
}

/// Commits `txn` (durable, as it was begun) while holding a read of the state before it.
///
/// After a commit that replaced pages, redb 4.6 frees them in a second, non-durable commit of its
/// own unless a reader may still see them. That commit leaves its pages in redb's write buffer,
/// and until the next commit every read that misses the cache sweeps all of the buffer's stripes
/// for them: ~420 instructions per event of a scan larger than the cache, a fifth of it. Held
/// across the commit, the read keeps those pages for one more commit, which frees them durably
/// in its own transaction instead. Nothing is less durable; it also spares every commit that
/// second one's work (~70k instructions). The cost is space: freed pages are reused one commit
/// later (an append-only file ~8 % larger, docs/performance.md).
pub(super) fn commit(db: &Database, txn: WriteTransaction) -> Result<(), JournalError> {
    let before = db.begin_read()?;
    txn.commit()?;
    drop(before);
    Ok(())
}

/// Creates the tables of a new database, or checks the format of an existing one and migrates it
/// from an older format, in one transaction: a crash half way leaves the old format intact.
fn prepare(db: &Database) -> Result<(), JournalError> {
    let txn = db.begin_write()?;
    let missing = |name: &str| -> Result<bool, JournalError> {
        Ok(!txn.list_tables()?.any(|table| table.name() == name))
    };
    // Tables added after format 1 without a format bump.
    let added = missing(STREAM_LIFECYCLE.name())? | missing(PARKED.name())?;
    txn.open_table(STREAM_LIFECYCLE)?;
    txn.open_table(PARKED)?;
    let created = {
        let mut meta = txn.open_table(META)?;
        let found = meta.get(FORMAT_KEY)?.map(|v| v.value());
        match found {
            Some(FORMAT_VERSION) => false,
            Some(migrate::FORMAT_1) => {
                migrate::from_format_1(&txn)?;
                migrate::from_format_2(&txn, &mut meta)?;
                migrate::from_format_4(&txn)?;
                migrate::from_format_6(&txn, &mut meta)?;
                true
            }
            Some(migrate::FORMAT_2) => {
                migrate::from_format_2(&txn, &mut meta)?;
                migrate::from_format_4(&txn)?;
                migrate::from_format_6(&txn, &mut meta)?;
                true
            }
            Some(migrate::FORMAT_3 | migrate::FORMAT_4) => {
                migrate::from_format_4(&txn)?;
                migrate::from_format_6(&txn, &mut meta)?;
                true
            }
            Some(migrate::FORMAT_5) => {
                migrate::from_format_5(&txn)?;
                migrate::from_format_6(&txn, &mut meta)?;
                true
            }
            Some(migrate::FORMAT_6) => {
                migrate::from_format_6(&txn, &mut meta)?;
                true
            }
            Some(found) => {
                return Err(JournalError::UnsupportedFormat {
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            None => {
                meta.insert(FORMAT_KEY, FORMAT_VERSION)?;
                txn.open_table(EVENTS)?;
                txn.open_table(STREAM_RUN_BLOCKS)?;
                txn.open_table(STREAM_HEADS)?;
                txn.open_table(EVENT_ID_BLOCKS)?;
                txn.open_table(ID_RUN_CATALOG)?;
                txn.open_table(SNAPSHOTS)?;
                txn.open_table(CHECKPOINTS)?;
                true
            }
        }
    };
    if created || added {
        txn.commit()?;
    } else {
        txn.abort()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::DEFAULT_CACHE_BYTES;

    #[test]
    fn refuses_another_storage_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        drop(open(&path, DEFAULT_CACHE_BYTES).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(FORMAT_KEY, FORMAT_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        match open(&path, DEFAULT_CACHE_BYTES) {
            Err(JournalError::UnsupportedFormat { found, supported }) => {
                assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION))
            }
            other => panic!("expected UnsupportedFormat, got {other:?}"),
        }
    }

    #[test]
    fn reopening_keeps_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        drop(open(&path, DEFAULT_CACHE_BYTES).unwrap());
        let db = open(&path, DEFAULT_CACHE_BYTES).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let format = txn
            .open_table(META)
            .unwrap()
            .get(FORMAT_KEY)
            .unwrap()
            .unwrap()
            .value();
        assert_eq!(format, FORMAT_VERSION);
    }
}
