//! Online backups: every table copied from one read transaction into a new redb file while the
//! writer keeps committing. redb's read transactions see one committed state, so the copy holds
//! every event up to some position and none after, with the snapshots, checkpoints and stream
//! lifecycles of that same moment. It copies `META` too, so the position its index tables cover
//! is copied with them: opening the backup rebuilds the indexes of the rest from its log (see
//! `memtable`).

use std::fs::File;
use std::path::Path;

use redb::backends::FileBackend;
use redb::{
    Database, Durability, Key, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableHandle, Value,
};

use super::migrate::FORMAT_1;
use super::store::{
    CHECKPOINTS, EVENT_ID_BLOCKS, EVENTS, FORMAT_KEY, FORMAT_VERSION, ID_RUN_CATALOG,
    LAST_POSITION_KEY, META, PARKED, SNAPSHOTS, STREAM_HEADS, STREAM_LIFECYCLE, STREAM_RUN_BLOCKS,
};
use super::{JournalError, SharedDb};
use crate::journal::BackupReport;

/// Bytes of keys and values copied per (non-durable) transaction of the copy, at least one
/// entry; the last commit is durable. Bytes, not entries: an id block holds ~3 KB, a run
/// block up to 2 KB and an event up to its size limit, so a count of entries would not bound
/// what a transaction holds.
const CHUNK_BYTES: usize = 16 << 20;

/// Writes a backup of the journal to `path`, atomically and durably: it appears complete or
/// not at all.
pub(super) fn write(db: &SharedDb, path: &Path) -> Result<BackupReport, JournalError> {
    let _backing_up = db.backing_up();
    let txn = db.get().begin_read()?;
    crate::durable::replace_with(path, |file| copy_into(&txn, file))?;
    let report = describe(&txn, std::fs::metadata(path)?.len())?;
    tracing::info!(path = %path.display(), ?report, "journal backed up");
    Ok(report)
}

/// Writes a backup of the journal into `file`, an empty file such as an unnamed temporary one
/// (which leaves nothing behind when the process stops before it is read).
pub(super) fn write_into(db: &SharedDb, file: &File) -> Result<BackupReport, JournalError> {
    let _backing_up = db.backing_up();
    let txn = db.get().begin_read()?;
    copy_into(&txn, file)?;
    describe(&txn, file.metadata()?.len())
}

/// Copies every table `txn` sees into a new redb database in the empty `file`.
fn copy_into(txn: &ReadTransaction, file: &File) -> Result<(), JournalError> {
    let target = Database::builder().create_with_backend(FileBackend::new(file.try_clone()?)?)?;
    let copied = [
        copy(txn, &target, META)?,
        copy(txn, &target, EVENTS)?,
        copy(txn, &target, STREAM_RUN_BLOCKS)?,
        copy(txn, &target, STREAM_HEADS)?,
        copy(txn, &target, EVENT_ID_BLOCKS)?,
        copy(txn, &target, ID_RUN_CATALOG)?,
        copy(txn, &target, SNAPSHOTS)?,
        copy(txn, &target, CHECKPOINTS)?,
        copy(txn, &target, STREAM_LIFECYCLE)?,
        copy(txn, &target, PARKED)?,
    ];
    // A table this list does not know would be lost without a word.
    if let Some(unknown) = txn
        .list_tables()?
        .find(|table| !copied.iter().any(|name| name == table.name()))
    {
        return Err(JournalError::Unsupported(format!(
            "the backup does not know the journal table {:?}",
            unknown.name()
        )));
    }
    let mut done = target.begin_write()?;
    done.set_durability(Durability::Immediate)?;
    done.commit()?;
    Ok(())
}

/// Checks that `path` is a journal this build reads (an older format is migrated when opened)
/// and says what it holds, without changing it.
pub(super) fn inspect(path: &Path) -> Result<BackupReport, JournalError> {
    let db: ReadOnlyDatabase = Database::builder().open_read_only(path)?;
    let txn = db.begin_read()?;
    let format = txn
        .open_table(META)?
        .get(FORMAT_KEY)?
        .map_or(0, |format| format.value());
    if !(FORMAT_1..=FORMAT_VERSION).contains(&format) {
        return Err(JournalError::UnsupportedFormat {
            found: format,
            supported: FORMAT_VERSION,
        });
    }
    describe(&txn, std::fs::metadata(path)?.len())
}

/// The last position and event count of the state `txn` sees.
fn describe(txn: &ReadTransaction, bytes: u64) -> Result<BackupReport, JournalError> {
    let events = txn.open_table(EVENTS)?;
    let last = events.last()?.map_or(0, |(position, _)| position.value());
    let scavenged = txn
        .open_table(META)?
        .get(LAST_POSITION_KEY)?
        .map_or(0, |last| last.value());
    Ok(BackupReport {
        position: last.max(scavenged),
        events: events.len()?,
        bytes,
    })
}

/// Copies `table` from `source` into `target`; returns its name.
fn copy<K: Key + 'static, V: Value + 'static>(
    source: &ReadTransaction,
    target: &Database,
    table: TableDefinition<K, V>,
) -> Result<String, JournalError> {
    let from = source.open_table(table)?;
    let mut entries = from.iter()?;
    loop {
        let mut txn = target.begin_write()?;
        txn.set_durability(Durability::None)?;
        let mut copied = 0;
        let mut more = false;
        {
            let mut to = txn.open_table(table)?;
            for entry in entries.by_ref() {
                let (key_guard, value_guard) = entry?;
                let (key, value) = (key_guard.value(), value_guard.value());
                copied += K::as_bytes(&key).as_ref().len() + V::as_bytes(&value).as_ref().len();
                to.insert(key, value)?;
                if copied >= CHUNK_BYTES {
                    more = true;
                    break;
                }
            }
        }
        txn.commit()?;
        if !more {
            return Ok(table.name().to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::redb::store;
    use crate::journal::{ExpectedVersion, Journal, JournalConfig, NewEvent, ParkedEvent};

    fn journal_at(path: &Path) -> Journal {
        Journal::open(path, JournalConfig::default()).unwrap()
    }

    /// Appends `count` one-event appends of ~1 KB to `stream`.
    async fn fill(journal: &Journal, stream: &str, count: usize) {
        let data = serde_json::json!({"pad": "x".repeat(1000)});
        for _ in 0..count {
            let events = vec![NewEvent::json("Filled", &data)];
            journal
                .append(stream, ExpectedVersion::Any, events)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_backup_keeps_the_parked_events() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal_at(&dir.path().join("journal.redb"));
        fill(&journal, "s", 1).await;
        let parked = ParkedEvent {
            position: 1,
            stream: "s".to_owned(),
            event_type: "Filled".to_owned(),
            reason: "trapped".to_owned(),
            attempts: 3,
            parked_at: 1,
        };
        journal.park("p", vec![parked.clone()]).await.unwrap();
        let backup = dir.path().join("backup.redb");
        assert_eq!(journal.backup(&backup).await.unwrap().position, 1);
        drop(journal);
        assert_eq!(journal_at(&backup).parked("p", 0, 100).unwrap(), [parked]);
    }

    /// A scavenge's compaction, which fails while a read transaction is open, waits for the
    /// backups running, and neither fails the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backups_and_scavenges_at_once_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal_at(&dir.path().join("journal.redb"));
        fill(&journal, "kept", 3000).await;
        let backing_up = {
            let (journal, dir) = (journal.clone(), dir.path().to_owned());
            tokio::spawn(async move {
                for n in 0..20 {
                    journal
                        .backup(&dir.join(format!("backup-{n}.redb")))
                        .await
                        .unwrap();
                }
            })
        };
        for n in 0..20 {
            let stream = format!("doomed-{n}");
            fill(&journal, &stream, 10).await;
            journal
                .delete_stream(&stream, ExpectedVersion::Any, false)
                .await
                .unwrap();
            assert_eq!(journal.scavenge().await.unwrap().events, 10);
        }
        backing_up.await.unwrap();
    }

    #[test]
    fn a_table_the_backup_does_not_know_fails_it_instead_of_going_missing() {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(
            &dir.path().join("journal.redb"),
            crate::journal::DEFAULT_CACHE_BYTES,
        )
        .unwrap();
        let backup = dir.path().join("backup.redb");
        let db = SharedDb::new(db).unwrap();
        assert_eq!(write(&db, &backup).unwrap().position, 0);
        assert_eq!(inspect(&backup).unwrap().events, 0);
        std::fs::remove_file(&backup).unwrap();

        let extra: TableDefinition<u64, u64> = TableDefinition::new("added_later");
        let txn = db.get().begin_write().unwrap();
        txn.open_table(extra).unwrap().insert(1, 2).unwrap();
        txn.commit().unwrap();
        match write(&db, &backup) {
            Err(JournalError::Unsupported(reason)) => assert!(reason.contains("added_later")),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(!backup.exists(), "a failed backup leaves no file");
    }
}
