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
    prepare(&db, Migrate::Yes)?;
    crate::durable::sync_parent(path)
        .map_err(|error| JournalError::Storage(Arc::new(redb::StorageError::Io(error).into())))?;
    Ok(db)
}

/// Opens the existing journal file at `path` as [`open`] does, but refuses one of an older
/// storage format instead of migrating it, leaving it byte for byte as it was: for commands
/// that only read, which must not keep an older build from opening the file again.
///
/// The format is read first through a read-only open, since opening a redb file for writing
/// rewrites its header even when nothing is committed. A file that a crash left needs a repair
/// that only a writing open makes: its format is then checked in the opening transaction.
pub(super) fn open_without_migrating(
    path: &Path,
    cache_bytes: usize,
) -> Result<Database, JournalError> {
    match format_read_only(path) {
        Ok(found) => check_readable(found)?,
        Err(JournalError::Storage(error)) if matches!(*error, redb::Error::RepairAborted) => {}
        Err(error) => return Err(error),
    }
    let db = Database::builder().set_cache_size(cache_bytes).open(path)?;
    prepare(&db, Migrate::No)?;
    Ok(db)
}

/// The storage format of the file at `path`, read without writing to it (`None`: no format
/// recorded, a file without tables).
fn format_read_only(path: &Path) -> Result<Option<u64>, JournalError> {
    let db = Database::builder().open_read_only(path)?;
    let txn = db.begin_read()?;
    match txn.open_table(META) {
        Ok(meta) => Ok(meta.get(FORMAT_KEY)?.map(|format| format.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Refuses a file this build does not read as it is: one of another storage format, or one
/// that records none (a journal would first have to be created in it).
fn check_readable(found: Option<u64>) -> Result<(), JournalError> {
    match found {
        Some(FORMAT_VERSION) => Ok(()),
        None => Err(JournalError::Unsupported(
            "the file holds no journal (it records no storage format)".to_owned(),
        )),
        Some(found) if found < FORMAT_VERSION => Err(JournalError::Unsupported(format!(
            "the journal file is in storage format {found}, older than this build's \
             {FORMAT_VERSION}, and a command that only reads leaves it as it is rather than \
             migrate it (a migrated file is refused by older builds); `foldhost serve` migrates \
             it (back it up first, with the older build, if you may roll back)"
        ))),
        Some(found) => Err(JournalError::UnsupportedFormat {
            found,
            supported: FORMAT_VERSION,
        }),
    }
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
    prepare(&db, Migrate::Yes)?;
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

/// Whether opening a file of an older storage format migrates it or refuses it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Migrate {
    Yes,
    No,
}

/// Creates the tables of a new database, or checks the format of an existing one and migrates it
/// from an older format (or refuses it, with `Migrate::No`), in one transaction: a crash half way
/// leaves the old format intact.
fn prepare(db: &Database, migrate: Migrate) -> Result<(), JournalError> {
    let txn = db.begin_write()?;
    if migrate == Migrate::No {
        let found = txn.open_table(META)?.get(FORMAT_KEY)?.map(|v| v.value());
        // Dropped unused, the transaction commits nothing.
        check_readable(found)?;
    }
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

    /// Copies the fixture `name` (in `tests/fixtures`) to `path`.
    fn fixture(name: &str, path: &Path) {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        std::fs::copy(fixture.join(name), path).unwrap();
    }

    /// The storage format recorded in the file at `path`, read without writing to it.
    fn format(path: &Path) -> u64 {
        format_read_only(path).unwrap().unwrap()
    }

    fn refused_as_older(opened: Result<Database, JournalError>) -> String {
        match opened {
            Err(JournalError::Unsupported(reason)) => reason,
            Err(other) => panic!("expected the older format refused, got {other:?}"),
            Ok(_) => panic!("expected the older format refused, it opened"),
        }
    }

    /// Opened for a command that only reads, a file of an older format is refused and left
    /// byte for byte as it was (a rollback to the older build still opens it); opened to
    /// write, it is migrated.
    #[test]
    fn an_older_format_is_refused_unchanged_without_migrating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        fixture("journal-format-6.redb", &path);
        let before = std::fs::read(&path).unwrap();
        let reason = refused_as_older(open_without_migrating(&path, DEFAULT_CACHE_BYTES));
        assert!(
            reason.contains("storage format 6, older than this build's 7")
                && reason.contains("`foldhost serve` migrates it"),
            "{reason}"
        );
        assert!(std::fs::read(&path).unwrap() == before, "the file changed");
        drop(open(&path, DEFAULT_CACHE_BYTES).unwrap());
        assert_eq!(format(&path), FORMAT_VERSION);
        drop(open_without_migrating(&path, DEFAULT_CACHE_BYTES).unwrap());
    }

    /// A file of an older format that a crash left (which only an open for writing repairs) is
    /// refused in its opening transaction: it stays in its format.
    #[test]
    fn an_older_format_left_by_a_crash_is_refused_without_migrating() {
        let dir = tempfile::tempdir().unwrap();
        let (path, crashed) = (dir.path().join("old.redb"), dir.path().join("crashed.redb"));
        fixture("journal-format-6.redb", &path);
        let open_elsewhere = Database::open(&path).unwrap();
        let txn = open_elsewhere.begin_write().unwrap();
        txn.open_table(PARKED)
            .unwrap()
            .insert(("p", 1), &[][..])
            .unwrap();
        txn.commit().unwrap();
        // A copy of the file as it is on disk while open: as a crash leaves it.
        std::fs::copy(&path, &crashed).unwrap();
        drop(open_elsewhere);
        assert!(
            Database::builder().open_read_only(&crashed).is_err(),
            "the copy needs a repair"
        );
        let reason = refused_as_older(open_without_migrating(&crashed, DEFAULT_CACHE_BYTES));
        assert!(reason.contains("storage format 6"), "{reason}");
        assert_eq!(format(&crashed), 6);
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
