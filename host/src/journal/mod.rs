//! The durable, append-only event journal.
//!
//! Two backends sit behind the same [`Journal`] API: a local redb file (the default, see
//! `redb`) and a PostgreSQL database shared by several hosts (see `postgres`). What they share
//! lives here: the data model (`types`), limits checked before a write is queued (`config`),
//! the write operations (`op`), the rules an append must satisfy (`rules`), a stream's
//! lifecycle: deletion, retention and what a scavenge removes (`lifecycle`), and catching up
//! page by page with the next page read ahead (`pages`).

mod config;
mod error;
mod lifecycle;
mod op;
mod pages;
mod postgres;
mod redb;
mod rules;
mod sequence;
mod types;

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

/// Storage a redb journal can live on besides a file (see [`Journal::open_on`]).
pub use ::redb::StorageBackend;
pub use config::{DEFAULT_CACHE_BYTES, JournalConfig, MAX_STREAM_NAME};
pub use error::JournalError;
pub use lifecycle::{ScavengeReport, StreamMetadata, StreamWindow};
use op::Op;
pub use pages::Pages;
pub(crate) use pages::read_ahead;
pub use sequence::ImportSequence;
pub use types::*;

/// Counters since the journal was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Durable commits (one fsync each).
    pub commits: u64,
    /// Appends that wrote events (idempotent retries and refused appends not counted).
    pub appends: u64,
    /// Events written.
    pub events: u64,
}

/// A handle to an open journal; clones share it.
///
/// Dropping the last clone closes the journal: the writer thread finishes every request already
/// queued, then stops, and the file is released; the drop blocks until then. Appends are
/// acknowledged only once durable, so closing never loses an acknowledged append.
#[derive(Clone)]
pub struct Journal {
    backend: Arc<Backend>,
    config: Arc<JournalConfig>,
}

/// Where the events live; every method of [`Journal`] dispatches on it.
enum Backend {
    Redb(redb::RedbJournal),
    Postgres(postgres::PgJournal),
}

/// Calls the read `$method` of the redb reader (with the shared database first) or of the PostgreSQL
/// backend.
macro_rules! dispatch {
    ($journal:expr, $method:ident($($arg:expr),*)) => {
        match &*$journal.backend {
            Backend::Redb(inner) => redb::reader::$method(&inner.db, $($arg),*),
            Backend::Postgres(pg) => pg.$method($($arg),*),
        }
    };
}

impl Journal {
    /// Opens the journal file at `path`, creating it and its tables if needed, and starts the
    /// writer thread. Fails with [`JournalError::UnsupportedFormat`] for a file of another
    /// storage format, and with a storage error if another process has the file open.
    pub fn open(path: impl AsRef<Path>, config: JournalConfig) -> Result<Journal, JournalError> {
        let backend = redb::RedbJournal::open(path.as_ref(), &config)?;
        Ok(Journal {
            config: Arc::new(config),
            backend: Arc::new(Backend::Redb(backend)),
        })
    }

    /// Opens the existing journal file at `path` for a command that only reads it, as
    /// [`open`](Self::open) does, except that a file of an older storage format is refused
    /// ([`JournalError::Unsupported`], naming its format) and left byte for byte as it was
    /// instead of migrated, which older builds could not undo; a missing file is an error.
    pub fn open_without_migrating(
        path: impl AsRef<Path>,
        config: JournalConfig,
    ) -> Result<Journal, JournalError> {
        let backend = redb::RedbJournal::open_without_migrating(path.as_ref(), &config)?;
        Ok(Journal {
            config: Arc::new(config),
            backend: Arc::new(Backend::Redb(backend)),
        })
    }

    /// Opens (or creates) a journal on `backend` instead of a file: storage that is not a local
    /// file, or a simulated disk for tests that cut its power. A database left by a crash is
    /// repaired first, as [`open`](Self::open) does.
    pub fn open_on(
        backend: impl StorageBackend,
        config: JournalConfig,
    ) -> Result<Journal, JournalError> {
        let backend = redb::RedbJournal::open_on(backend, &config)?;
        Ok(Journal {
            config: Arc::new(config),
            backend: Arc::new(Backend::Redb(backend)),
        })
    }

    /// Connects to the PostgreSQL database at `url` (e.g. `postgres://user@host/db`), creating
    /// or checking its schema, and starts the writer and the commit listener. Several hosts may
    /// connect to one database: they share one global log. Fails with
    /// [`JournalError::UnsupportedFormat`] for a schema of another version.
    pub async fn open_postgres(url: &str, config: JournalConfig) -> Result<Journal, JournalError> {
        let backend = postgres::PgJournal::connect(url, &config).await?;
        Ok(Journal {
            backend: Arc::new(Backend::Postgres(backend)),
            config: Arc::new(config),
        })
    }

    /// Appends `events` to `stream`, all or none, once `expected` holds; resolves when durable.
    ///
    /// Re-sending events whose ids are already in `stream`, in the same order, writes nothing
    /// and returns where they are (whatever `expected` says). Dropping the future does not
    /// withdraw an append that was already queued.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, JournalError> {
        self.config.check_append(stream, &events)?;
        match &*self.backend {
            Backend::Redb(redb) => redb.append(stream, expected, events).await,
            Backend::Postgres(pg) => pg.append(stream, expected, events).await,
        }
    }

    /// The limits this journal was opened with.
    pub fn config(&self) -> &JournalConfig {
        &self.config
    }

    /// Checks `events` against the limits every append to `stream` must meet (sizes, counts,
    /// distinct ids), as [`append`](Self::append) does before queueing them.
    pub fn check_append(&self, stream: &str, events: &[NewEvent]) -> Result<(), JournalError> {
        self.config.check_append(stream, events)
    }

    /// [`append`](Self::append) for threads outside an async runtime.
    ///
    /// # Panics
    /// When called on a thread that runs a tokio runtime (it would block that runtime).
    pub fn append_blocking(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, JournalError> {
        self.config.check_append(stream, &events)?;
        match &*self.backend {
            Backend::Redb(redb) => redb.append_blocking(stream, expected, events),
            Backend::Postgres(pg) => pg.append_blocking(stream, expected, events),
        }
    }

    /// Up to `limit` events of `stream` with version ≥ `from_version`, ascending.
    pub fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, JournalError> {
        self.read_stream_within(stream, from_version, ReadLimit::events(limit))
    }

    /// Events of `stream` with version ≥ `from_version`, ascending, as many as `limit` allows.
    pub fn read_stream_within(
        &self,
        stream: &str,
        from_version: u64,
        limit: ReadLimit,
    ) -> Result<Vec<RecordedEvent>, JournalError> {
        config::check_stream_name(stream)?;
        dispatch!(self, read_stream(stream, from_version, limit))
    }

    /// Up to `limit` events of the global log with position ≥ `from_position`, ascending.
    pub fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, JournalError> {
        self.read_all_within(from_position, ReadLimit::events(limit))
    }

    /// Events of the global log with position ≥ `from_position`, ascending, as many as `limit`
    /// allows.
    pub fn read_all_within(
        &self,
        from_position: u64,
        limit: ReadLimit,
    ) -> Result<Vec<RecordedEvent>, JournalError> {
        dispatch!(self, read_all(from_position, limit))
    }

    /// Visits the events [`read_all_within`](Self::read_all_within) would return, in order, as
    /// [`EventRef`]s borrowing the page the journal read: a scan of the global log that copies
    /// nothing per event. Returns the position of the last event visited (`None` if none was).
    ///
    /// On redb the visitor runs inside the read (one read transaction; keep it to the work of
    /// one page). A record that does not decode stops the scan with
    /// [`JournalError::Corrupt`] at its position, after the events before it were visited; an
    /// error of `visit` stops it and is returned. PostgreSQL reads the page as
    /// `read_all_within` does, then visits its events.
    pub fn scan_all<E: From<JournalError>>(
        &self,
        from_position: u64,
        limit: ReadLimit,
        mut visit: impl FnMut(EventRef<'_>) -> Result<(), E>,
    ) -> Result<Option<u64>, E> {
        match &*self.backend {
            Backend::Redb(inner) => redb::reader::scan_all(&inner.db, from_position, limit, visit),
            Backend::Postgres(pg) => {
                let page = pg.read_all(from_position, limit)?;
                for event in &page {
                    visit(event.into())?;
                }
                Ok(page.last().map(|event| event.position))
            }
        }
    }

    /// The event with id `id`, if readers may see it (its stream not deleted, it not expired).
    pub fn event_by_id(&self, id: uuid::Uuid) -> Result<Option<RecordedEvent>, JournalError> {
        dispatch!(self, event_by_id(id))
    }

    /// The current version of `stream`; `None` if it has no events or was soft-deleted.
    /// Fails with [`JournalError::StreamDeleted`] for a hard-deleted stream, as every read of it
    /// does.
    pub fn stream_version(&self, stream: &str) -> Result<Option<u64>, JournalError> {
        config::check_stream_name(stream)?;
        dispatch!(self, stream_version(stream))
    }

    /// What readers see of `stream` now: its current version and the first visible one.
    pub fn stream_window(&self, stream: &str) -> Result<StreamWindow, JournalError> {
        config::check_stream_name(stream)?;
        dispatch!(self, stream_window(stream))
    }

    /// [`stream_window`](Self::stream_window) and the page
    /// [`read_stream_within`](Self::read_stream_within) returns, read together (one read
    /// transaction, one query on PostgreSQL): what an aggregate catching up needs first, the
    /// page being the one the window describes.
    pub fn stream_window_and_page(
        &self,
        stream: &str,
        from_version: u64,
        limit: ReadLimit,
    ) -> Result<(StreamWindow, Vec<RecordedEvent>), JournalError> {
        config::check_stream_name(stream)?;
        dispatch!(self, stream_window_and_page(stream, from_version, limit))
    }

    /// The retention metadata of `stream` (empty if none was set).
    pub fn stream_metadata(&self, stream: &str) -> Result<StreamMetadata, JournalError> {
        config::check_stream_name(stream)?;
        dispatch!(self, stream_metadata(stream))
    }

    /// Replaces the retention metadata of `stream` (which need not exist yet); readers stop
    /// seeing the events it excludes at once. Events a soft delete hid stay hidden: the
    /// stored `truncate_before` stays past them.
    pub async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: StreamMetadata,
    ) -> Result<(), JournalError> {
        config::check_stream_name(stream)?;
        metadata.check()?;
        self.write(Op::SetStreamMetadata {
            stream: stream.to_owned(),
            metadata,
        })
        .await
    }

    /// Deletes `stream` once `expected` holds. A soft delete hides its events; an append with
    /// `no_stream` or `any` then recreates it, continuing its version numbers. A hard delete is
    /// final: every later read or write fails with [`JournalError::StreamDeleted`]. Either way
    /// the events stay stored until the next [`scavenge`](Self::scavenge).
    pub async fn delete_stream(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        hard: bool,
    ) -> Result<(), JournalError> {
        config::check_stream_name(stream)?;
        self.write(Op::DeleteStream {
            stream: stream.to_owned(),
            expected,
            hard,
        })
        .await
    }

    /// Physically removes what no reader sees any more: the events of deleted streams and
    /// those outside retention windows, and the snapshots folded from them; then compacts the
    /// storage so their bytes are gone from it. Global positions are never reused.
    pub async fn scavenge(&self) -> Result<ScavengeReport, JournalError> {
        match &*self.backend {
            Backend::Redb(redb) => {
                let db = redb.db.clone();
                tokio::task::spawn_blocking(move || redb::scavenge(&db))
                    .await
                    .map_err(|_| JournalError::Closed)?
            }
            Backend::Postgres(pg) => pg.scavenge().await,
        }
    }

    /// Writes a consistent backup of the journal to the new file `path` while it keeps
    /// serving: every event up to the returned position and none after, with the snapshots,
    /// checkpoints and stream lifecycles of that moment. The file appears complete or not at
    /// all, durably. redb only: back PostgreSQL up with its own tools.
    pub async fn backup(&self, path: &Path) -> Result<BackupReport, JournalError> {
        match &*self.backend {
            Backend::Redb(redb) => {
                let (db, path) = (redb.db.clone(), path.to_owned());
                tokio::task::spawn_blocking(move || redb::backup(&db, &path))
                    .await
                    .map_err(|_| JournalError::Closed)?
            }
            Backend::Postgres(_) => Err(postgres_backup()),
        }
    }

    /// [`backup`](Self::backup) into `file`, an empty file such as an unnamed temporary one,
    /// which is handed back with the report for reading the backup from its start.
    pub async fn backup_into(
        &self,
        file: std::fs::File,
    ) -> Result<(std::fs::File, BackupReport), JournalError> {
        match &*self.backend {
            Backend::Redb(redb) => {
                let db = redb.db.clone();
                tokio::task::spawn_blocking(move || {
                    redb::backup_into(&db, &file).map(|report| (file, report))
                })
                .await
                .map_err(|_| JournalError::Closed)?
            }
            Backend::Postgres(_) => Err(postgres_backup()),
        }
    }

    /// Checks that `path` is a journal file (e.g. a backup) this build reads, without changing
    /// it, and says what it holds.
    pub fn inspect(path: &Path) -> Result<BackupReport, JournalError> {
        redb::inspect_backup(path)
    }

    /// Appends `events` as they were recorded elsewhere: they keep `recorded_at` (ms since
    /// the epoch) instead of taking the commit's time. For `import`, which restores an
    /// export; the HTTP API offers no way to set an event's time.
    pub async fn import(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        recorded_at: u64,
    ) -> Result<(), JournalError> {
        self.config.check_append(stream, &events)?;
        self.write(Op::Append {
            stream: stream.to_owned(),
            expected,
            events,
            recorded_at: Some(recorded_at),
        })
        .await
    }

    /// [`import`](Self::import) as the next append of `sequence`: applied only if no append
    /// queued into `sequence` before it failed, so an import may keep many appends queued and
    /// still stop exactly at its first failure (see [`ImportSequence`]). redb only.
    pub async fn import_in(
        &self,
        sequence: &ImportSequence,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        recorded_at: u64,
    ) -> Result<(), JournalError> {
        let place = sequence.take_place();
        let written = match (&*self.backend, self.config.check_append(stream, &events)) {
            (_, Err(refused)) => Err(refused),
            (Backend::Redb(redb), Ok(())) => {
                let op = Op::Append {
                    stream: stream.to_owned(),
                    expected,
                    events,
                    recorded_at: Some(recorded_at),
                };
                redb.write_in(op, (sequence.clone(), place)).await
            }
            (Backend::Postgres(_), Ok(())) => Err(JournalError::Unsupported(
                "an import sequence needs the redb journal".to_owned(),
            )),
        };
        if written.is_err() {
            sequence.fail(place);
        }
        written
    }

    /// Queues a write that answers only success or failure.
    async fn write(&self, op: Op) -> Result<(), JournalError> {
        match &*self.backend {
            Backend::Redb(redb) => redb.write(op).await,
            Backend::Postgres(pg) => pg.write_op(op).await,
        }
    }

    /// Which backend stores the events: `redb` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match &*self.backend {
            Backend::Redb(_) => "redb",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The last committed global position, 0 when the journal is empty.
    pub fn head_position(&self) -> u64 {
        match &*self.backend {
            Backend::Redb(redb) => redb.head_position(),
            Backend::Postgres(pg) => pg.head_position(),
        }
    }

    /// Follows the head position: it changes after each commit that appended events, before
    /// those appends are acknowledged.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        match &*self.backend {
            Backend::Redb(redb) => redb.subscribe(),
            Backend::Postgres(pg) => pg.subscribe(),
        }
    }

    /// Every stream whose name starts with `prefix`, in name order.
    pub fn streams_with_prefix(&self, prefix: &str) -> Result<Vec<String>, JournalError> {
        dispatch!(self, streams_with_prefix(prefix))
    }

    /// The storage fault that stopped the journal writing, if one did (see
    /// [`JournalError::Faulted`]). PostgreSQL failures are per request and never stop it.
    pub fn fault(&self) -> Option<Arc<str>> {
        match &*self.backend {
            Backend::Redb(redb) => redb.faults().borrow().clone(),
            Backend::Postgres(_) => None,
        }
    }

    /// Resolves with the fault once a storage fault stops the journal writing.
    pub async fn faulted(&self) -> Arc<str> {
        let mut faults = match &*self.backend {
            Backend::Redb(redb) => redb.faults(),
            Backend::Postgres(_) => return std::future::pending().await,
        };
        loop {
            if let Some(fault) = faults.borrow_and_update().clone() {
                return fault;
            }
            if faults.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Counters of commits, appends and events since opening.
    pub fn stats(&self) -> JournalStats {
        match &*self.backend {
            Backend::Redb(redb) => redb.stats(),
            Backend::Postgres(pg) => pg.stats(),
        }
    }

    /// About how many writes wait for the writer, not yet in a commit (redb counts a batch the
    /// writer took until its commit starts; PostgreSQL what is still in the channel).
    pub fn queued_writes(&self) -> usize {
        match &*self.backend {
            Backend::Redb(redb) => redb.queued_writes(),
            Backend::Postgres(pg) => pg.queued_writes(),
        }
    }

    /// Stores the state of `stream` at `version` as folded by `plugin` (its content hash),
    /// keeping only the newest [`keep_snapshots`](JournalConfig::keep_snapshots) per stream.
    pub async fn put_snapshot(
        &self,
        plugin: &str,
        stream: &str,
        version: u64,
        state: Vec<u8>,
    ) -> Result<(), JournalError> {
        config::check_stream_name(stream)?;
        self.write(Op::PutSnapshot {
            plugin: plugin.to_owned(),
            stream: stream.to_owned(),
            version,
            state,
        })
        .await
    }

    /// The newest snapshot of `stream` by `plugin` with version ≤ `at_most_version`.
    pub fn latest_snapshot(
        &self,
        plugin: &str,
        stream: &str,
        at_most_version: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
        config::check_stream_name(stream)?;
        dispatch!(self, latest_snapshot(plugin, stream, at_most_version))
    }

    /// Stores the global position a projection of `plugin` has folded up to, and its state.
    pub async fn put_checkpoint(
        &self,
        plugin: &str,
        position: u64,
        state: Vec<u8>,
    ) -> Result<(), JournalError> {
        self.put_checkpoint_reparked(plugin, position, state, Vec::new(), Vec::new())
            .await
    }

    /// Stores a checkpoint of `plugin` and, in the same transaction, records the events it
    /// parked (`park`) and forgets those it folded after all (`unpark`): a state and the list
    /// of what it skipped never disagree.
    pub async fn put_checkpoint_reparked(
        &self,
        plugin: &str,
        position: u64,
        state: Vec<u8>,
        park: Vec<ParkedEvent>,
        unpark: Vec<u64>,
    ) -> Result<(), JournalError> {
        self.write(Op::PutCheckpoint {
            plugin: plugin.to_owned(),
            position,
            state,
            park,
            unpark,
        })
        .await
    }

    /// The checkpoint of `plugin`: position and state.
    pub fn checkpoint(&self, plugin: &str) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
        dispatch!(self, checkpoint(plugin))
    }

    /// Drops every snapshot, the checkpoint and the parked events of `plugin` (a content hash),
    /// also those keyed `{plugin}+{upcaster chain}`; events stay.
    pub async fn delete_plugin_data(&self, plugin: &str) -> Result<(), JournalError> {
        self.write(Op::DeletePluginData {
            plugin: plugin.to_owned(),
        })
        .await
    }

    /// Records `events` as parked by projection `plugin` (a content hash): events it skipped
    /// because it could not fold them. A record of the same position is replaced.
    pub async fn park(&self, plugin: &str, events: Vec<ParkedEvent>) -> Result<(), JournalError> {
        self.write(Op::Park {
            plugin: plugin.to_owned(),
            events,
        })
        .await
    }

    /// Forgets the parked events of `plugin` at `positions` (folded after all).
    pub async fn unpark(&self, plugin: &str, positions: Vec<u64>) -> Result<(), JournalError> {
        self.write(Op::Unpark {
            plugin: plugin.to_owned(),
            positions,
        })
        .await
    }

    /// Up to `limit` of the events `plugin` parked, by position, from the first after
    /// position `after`.
    pub fn parked(
        &self,
        plugin: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, JournalError> {
        dispatch!(self, parked(plugin, after, limit))
    }
}

/// The refusal of a backup of a PostgreSQL journal.
fn postgres_backup() -> JournalError {
    JournalError::Unsupported(
        "a PostgreSQL journal is backed up with PostgreSQL's own tools (pg_basebackup, pg_dump)"
            .to_owned(),
    )
}
