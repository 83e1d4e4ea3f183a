//! The embedded backend: one redb file holds the global log, the stream and event-id indexes,
//! aggregate snapshots and projection checkpoints. Every write goes through one writer thread
//! that batches whatever is queued into a single durable commit (group commit); reads run
//! concurrently on their own read transactions. A lone appender that finds the writer idle
//! commits on its own thread instead, sparing two thread wake-ups (see `writer`). The
//! indexes of the log's newest events are held in memory and written to their tables in bulk
//! (see `memtable`).

mod backup;
mod batch;
mod id_blocks;
mod id_filter;
mod id_runs;
mod memtable;
mod migrate;
mod page;
pub(super) mod reader;
mod record;
mod request;
mod runs;
mod scavenge;
mod store;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use memtable::Memtable;
use redb::{Database, ReadTransaction, StorageBackend};
use tokio::sync::watch;

use super::lifecycle::{Lifecycle, Visibility};
use super::{
    AppendResult, BackupReport, ContentType, ExpectedVersion, ImportSequence, JournalConfig,
    JournalError, JournalStats, NewEvent, Op, ParkedEvent, ReadLimit, RecordedEvent,
    ScavengeReport, rules,
};
use request::{Outcome, Request};
use writer::{Shared, Writer};

/// The database and the memtable of its log's tail (see `memtable`), shared by the readers and
/// the writer; a compaction takes the database exclusively (see `scavenge`), so readers and
/// writers wait while it runs.
#[derive(Clone)]
pub(super) struct SharedDb {
    db: Arc<RwLock<Database>>,
    memtable: Arc<RwLock<Memtable>>,
    /// Read by each backup for as long as its read transaction lives (see
    /// [`backing_up`](Self::backing_up)).
    backups: Arc<RwLock<()>>,
}

impl SharedDb {
    /// Shares `db`, rebuilding the memtable from its log.
    fn new(db: Database) -> Result<Self, JournalError> {
        let memtable = Memtable::load(&redb::ReadableDatabase::begin_read(&db)?)?;
        Ok(Self {
            db: Arc::new(RwLock::new(db)),
            memtable: Arc::new(RwLock::new(memtable)),
            backups: Arc::default(),
        })
    }

    /// Held by a backup while its read transaction lives, which may be long: the backup lets
    /// go of [`get`](Self::get) meanwhile, so that reads and appends never wait for it.
    pub(super) fn backing_up(&self) -> RwLockReadGuard<'_, ()> {
        self.backups
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until no backup runs and keeps new ones from starting: redb's compaction fails
    /// while any read transaction is open.
    fn no_backups(&self) -> RwLockWriteGuard<'_, ()> {
        self.backups
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The database, for transactions.
    pub(super) fn get(&self) -> RwLockReadGuard<'_, Database> {
        // A panic elsewhere never leaves the database itself half-changed.
        self.db
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The database alone, once every reader and writer has let go of it.
    fn exclusive(&self) -> RwLockWriteGuard<'_, Database> {
        self.db
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The memtable, for reading.
    fn memtable(&self) -> RwLockReadGuard<'_, Memtable> {
        // Changed only by the writer (or a scavenge) after the commit it mirrors succeeded.
        self.memtable
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The memtable, for the writer (or a scavenge) holding the write transaction.
    fn memtable_mut(&self) -> RwLockWriteGuard<'_, Memtable> {
        self.memtable
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Begins a read transaction on `db` (a guard of [`get`](Self::get), held for the read)
    /// and takes what the read needs of the memtable with `copy`, as one consistent pair.
    ///
    /// Why the pair is consistent: the writer changes the memtable only after the commit it
    /// mirrors, under the write lock, and a commit that moves the memtable into the tables
    /// (a flush) holds the write lock from before that commit until the memtable is cleared.
    /// Here the read lock is held across beginning the transaction, so a reader never pairs a
    /// transaction from before a flush with the memtable from after it (which would miss the
    /// flushed events), nor the reverse (the memtable is cleared before any later transaction
    /// can be paired with it). The one mismatch left is an older memtable with a transaction
    /// that already holds the next commit's records: the reader sees no index of them and
    /// the log is read only up to [`Memtable::through`], so it reads as if it had begun before
    /// that commit. Readers copy what they need and let go, so the writer waits for no read.
    fn begin_read<T>(
        &self,
        db: &Database,
        copy: impl FnOnce(&ReadTransaction, &Memtable) -> Result<T, JournalError>,
    ) -> Result<(ReadTransaction, T), JournalError> {
        let memtable = self.memtable();
        let txn = redb::ReadableDatabase::begin_read(db)?;
        let copied = copy(&txn, &memtable)?;
        Ok((txn, copied))
    }
}

/// The redb side of a [`Journal`](super::Journal).
pub(super) struct RedbJournal {
    pub(super) db: SharedDb,
    shared: Arc<Shared>,
    writer: Arc<Writer>,
    requests: SyncSender<Request>,
    thread: Option<JoinHandle<()>>,
}

/// Where a caller waits for its write.
#[derive(Clone, Copy)]
enum Caller {
    /// In an async task. It may commit in place only on a multi-threaded tokio runtime, which
    /// hands the thread's other tasks to another thread meanwhile, and only after its own
    /// last request was committed alone: other tasks on its thread cannot queue requests to
    /// batch with its own until it lets them run, so it would commit alone again and again.
    /// On such a runtime its answer comes from a worker of its own (see `request::Answers`).
    Task,
    /// On a thread it may block: appenders on other threads queue beside its commit.
    Thread,
}

impl RedbJournal {
    /// Opens (or creates) the file at `path` and starts the writer thread.
    pub(super) fn open(path: &Path, config: &JournalConfig) -> Result<Self, JournalError> {
        Self::start(store::open(path, config.cache_bytes)?, config)
    }

    /// Opens the existing file at `path` without migrating an older storage format (see
    /// `store::open_without_migrating`) and starts the writer thread.
    pub(super) fn open_without_migrating(
        path: &Path,
        config: &JournalConfig,
    ) -> Result<Self, JournalError> {
        Self::start(
            store::open_without_migrating(path, config.cache_bytes)?,
            config,
        )
    }

    /// Opens (or creates) a journal on `backend` and starts the writer thread.
    pub(super) fn open_on(
        backend: impl StorageBackend,
        config: &JournalConfig,
    ) -> Result<Self, JournalError> {
        Self::start(store::open_on(backend, config.cache_bytes)?, config)
    }

    fn start(db: Database, config: &JournalConfig) -> Result<Self, JournalError> {
        let db = SharedDb::new(db)?;
        let shared = Arc::new(Shared::new(reader::head_position(&db)?));
        let writer = Arc::new(Writer {
            db: db.clone(),
            shared: shared.clone(),
            max_batch: config.max_batch_appends.max(1),
            keep_snapshots: config.keep_snapshots,
            flush_events: memtable::FLUSH_EVENTS,
            merge_step: id_runs::MERGE_STEP,
            committing: Mutex::new(None),
            queued: AtomicUsize::new(0),
        });
        let (requests, thread) = writer
            .spawn(config.max_queued_writes.max(1))
            .map_err(|error| JournalError::Storage(Arc::new(error.into())))?;
        Ok(Self {
            db,
            shared,
            writer,
            requests,
            thread: Some(thread),
        })
    }

    /// Commits the request on the caller's thread if the writer is idle and the caller may
    /// block (see [`Caller`]), else queues it for the writer thread; either way its outcome
    /// comes on `outcome`.
    fn queue<T>(
        &self,
        (request, outcome): (Request, Outcome<T>),
        caller: Caller,
    ) -> Result<Outcome<T>, JournalError> {
        if let Some(fault) = self.shared.fault.borrow().clone() {
            return Err(JournalError::Faulted(fault));
        }
        let request = match caller {
            Caller::Task => request.awaited(),
            Caller::Thread => request,
        };
        let claim = match caller {
            Caller::Thread => self.writer.claim_if_idle(None),
            Caller::Task => (request.task)
                .filter(|_| request.runtime.is_some())
                .and_then(|task| self.writer.claim_if_idle(Some(task))),
        };
        if let Some(claim) = claim {
            let answers = match caller {
                Caller::Thread => claim.commit(vec![request]),
                Caller::Task => tokio::task::block_in_place(|| claim.commit(vec![request])),
            };
            // To this caller, who is not waiting yet: nobody is woken.
            answers.send();
            return Ok(outcome);
        }
        self.writer.queued.fetch_add(1, Ordering::AcqRel);
        let refused = match self.requests.try_send(request) {
            Ok(()) => return Ok(outcome),
            Err(TrySendError::Full(_)) => JournalError::Overloaded,
            Err(TrySendError::Disconnected(_)) => JournalError::Closed,
        };
        self.writer.queued.fetch_sub(1, Ordering::AcqRel);
        Err(refused)
    }

    pub(super) async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, JournalError> {
        let request = Request::append(stream.to_owned(), expected, events);
        let outcome = self.queue(request, Caller::Task)?;
        outcome.await.map_err(|_| JournalError::Closed)?
    }

    pub(super) fn append_blocking(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, JournalError> {
        let request = Request::append(stream.to_owned(), expected, events);
        let outcome = self.queue(request, Caller::Thread)?;
        outcome.blocking_recv().map_err(|_| JournalError::Closed)?
    }

    /// Queues a write that answers nothing but success or failure, and waits for it.
    pub(super) async fn write(&self, op: Op) -> Result<(), JournalError> {
        let outcome = self.queue(Request::done(op), Caller::Task)?;
        outcome.await.map_err(|_| JournalError::Closed)?
    }

    /// [`write`](Self::write) as the write at `place` of an import sequence (see
    /// `Request::apply`).
    pub(super) async fn write_in(
        &self,
        op: Op,
        place: (ImportSequence, u64),
    ) -> Result<(), JournalError> {
        let (request, outcome) = Request::done(op);
        let outcome = self.queue((request.in_sequence(place), outcome), Caller::Task)?;
        outcome.await.map_err(|_| JournalError::Closed)?
    }

    pub(super) fn head_position(&self) -> u64 {
        *self.shared.head.borrow()
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    pub(super) fn stats(&self) -> JournalStats {
        self.shared.stats()
    }

    pub(super) fn queued_writes(&self) -> usize {
        self.writer.queued.load(Ordering::Acquire)
    }

    pub(super) fn faults(&self) -> watch::Receiver<Option<Arc<str>>> {
        self.shared.fault.subscribe()
    }
}

/// Writes a consistent backup of the journal to `path` while it keeps serving (see `backup`).
pub(super) fn backup(db: &SharedDb, path: &Path) -> Result<BackupReport, JournalError> {
    backup::write(db, path)
}

/// Writes a consistent backup of the journal into the empty `file` (see `backup`).
pub(super) fn backup_into(
    db: &SharedDb,
    file: &std::fs::File,
) -> Result<BackupReport, JournalError> {
    backup::write_into(db, file)
}

/// Checks a backup file and says what it holds.
pub(super) fn inspect_backup(path: &Path) -> Result<BackupReport, JournalError> {
    backup::inspect(path)
}

/// Removes what no reader sees any more, then compacts the file (see `scavenge`).
pub(super) fn scavenge(db: &SharedDb) -> Result<ScavengeReport, JournalError> {
    scavenge::run(db)
}

impl Drop for RedbJournal {
    fn drop(&mut self) {
        // Disconnect the queue (swap in a sender of a dead channel) so the writer drains and exits.
        drop(std::mem::replace(
            &mut self.requests,
            std::sync::mpsc::sync_channel(0).0,
        ));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use redb::ReadableDatabase;
    use redb::backends::InMemoryBackend;

    use super::*;

    /// Memory that counts the writes made to it.
    #[derive(Debug, Default)]
    struct CountingWrites {
        memory: InMemoryBackend,
        writes: Arc<AtomicU64>,
    }

    impl StorageBackend for CountingWrites {
        fn len(&self) -> std::io::Result<u64> {
            self.memory.len()
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.memory.read(offset, out)
        }

        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.memory.set_len(len)
        }

        fn sync_data(&self) -> std::io::Result<()> {
            self.memory.sync_data()
        }

        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.memory.write(offset, data)
        }
    }

    /// A commit leaves none of its pages in redb's write buffer (see `store::commit`): a scan
    /// of a log larger than the cache, right after appends, writes nothing to the file, where
    /// each of its cache misses would otherwise sweep the buffer and write out what it holds.
    #[test]
    fn a_scan_after_appends_writes_nothing() {
        let backend = CountingWrites::default();
        let writes = backend.writes.clone();
        let config = JournalConfig {
            cache_bytes: 256 << 10,
            ..JournalConfig::default()
        };
        let journal = RedbJournal::open_on(backend, &config).unwrap();
        for round in 0..40 {
            for stream in 0..4 {
                let events = (0..25)
                    .map(|n| NewEvent::json("Deposited", &serde_json::json!({ "n": n })))
                    .collect();
                let stream = format!("account-{stream}-{}", round % 2);
                journal
                    .append_blocking(&stream, ExpectedVersion::Any, events)
                    .unwrap();
            }
        }
        let before = writes.load(Ordering::Relaxed);
        let mut read = 0;
        for _ in 0..2 {
            let mut from = 1;
            loop {
                let page = reader::read_all(&journal.db, from, ReadLimit::events(100)).unwrap();
                let Some(last) = page.last() else { break };
                from = last.position + 1;
                read += page.len();
            }
        }
        assert_eq!(read, 2 * 4000, "every event read back, twice");
        let misses = journal.db.get().cache_stats().read_misses();
        assert!(misses > 0, "the scan missed the cache");
        assert_eq!(
            writes.load(Ordering::Relaxed),
            before,
            "the scan wrote to the file"
        );
    }

    /// However much is written and read, the journal holds no more of its file in memory
    /// than its configured cache (redb's own default would keep up to 1 GiB of it).
    #[test]
    fn holds_at_most_its_cache_of_pages() {
        let dir = tempfile::tempdir().unwrap();
        let cache_bytes = 1 << 20;
        let config = JournalConfig {
            cache_bytes,
            ..JournalConfig::default()
        };
        let journal = RedbJournal::open(&dir.path().join("journal.redb"), &config).unwrap();
        let padded = serde_json::json!({ "padding": "x".repeat(1000) });
        for stream in 0..64 {
            let events = (0..100)
                .map(|_| NewEvent::json("Padded", &padded))
                .collect();
            let stream = format!("s{stream}");
            journal
                .append_blocking(&stream, ExpectedVersion::Any, events)
                .unwrap();
        }
        let mut from = 1;
        let mut read = 0;
        loop {
            let page = reader::read_all(&journal.db, from, ReadLimit::events(1000)).unwrap();
            let Some(last) = page.last() else { break };
            from = last.position + 1;
            read += page.len();
        }
        assert_eq!(read, 6400, "every event read back");
        let used = journal.db.get().cache_stats().used_bytes();
        assert!(
            used > 0 && used <= cache_bytes,
            "{used} bytes cached, configured {cache_bytes}"
        );
    }
}
