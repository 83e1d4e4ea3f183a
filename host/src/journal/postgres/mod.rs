//! The PostgreSQL backend: one journal shared by several foldhost processes.
//!
//! # Global order
//!
//! Positions must be gapless and must become visible in order: a reader that has seen position
//! `p` must never later find a new event below `p`, or catch-up subscriptions skip events. A
//! sequence does not give that (values are taken at insert time but become visible at commit
//! time, in any order). So every write transaction first locks the single row of `log_head`
//! (`SELECT ... FOR UPDATE`), takes its positions from it, inserts, moves it and commits. The
//! next writer waits on that row lock until the commit, so positions are allocated and become
//! visible strictly in commit order.
//!
//! The cost: appends are serialised across the whole cluster (every host), one transaction at a
//! time, each holding the lock for four round trips: the lock itself, its reads, its writes
//! (each group sent together) and its commit. To amortise that, each host runs one writer task that drains
//! whatever appends are queued into a single transaction (group commit, as the redb backend
//! does): under load one lock and one commit serve many appends.
//!
//! Within a batch each request is validated (idempotency, expected version) before it writes
//! anything, and the lock guarantees that nobody else writes meanwhile, so a refused append
//! leaves the transaction untouched and the others of the batch still commit.
//!
//! # Waking other hosts
//!
//! After a commit that appended events the transaction sends `NOTIFY foldhost_log, '<last
//! position>'` (delivered on commit, in commit order). Every host keeps one listening connection
//! that moves its head (an atomic watch value) to the notified position, so projections and
//! live feeds on every host wake up.
//!
//! # Threads
//!
//! All database I/O runs on a small runtime owned by the backend. The journal's synchronous
//! reads hand their query to that runtime and wait for the answer, so they work from any thread
//! (blocking-pool threads, plain threads, even an async test body) without nesting runtimes.
//!
//! # Errors
//!
//! Reads are retried a few times on connection errors (they are safe to repeat). Appends are
//! never retried: if a commit's outcome is unknown the error is reported, and the client may
//! retry with the same event ids, which is idempotent.

mod cached;
mod durability;
mod failure;
mod settings;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{GenericClient, Manager, Pool, Transaction};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::AsyncMessage;
use uuid::Uuid;

mod lifecycle;

use super::Op;
use super::lifecycle::Lifecycle;
use super::rules::{self, Written};
use super::{
    AppendResult, ContentType, ExpectedVersion, JournalConfig, JournalError, JournalStats,
    NewEvent, ParkedEvent, ReadLimit, RecordedEvent, ScavengeReport, StreamMetadata, StreamWindow,
};

/// The schema this build creates and reads.
pub(super) const SCHEMA_VERSION: u64 = 1;
/// The channel commits are announced on.
const CHANNEL: &str = "foldhost_log";
/// Serialises schema creation between hosts starting together.
const MIGRATION_LOCK: i64 = 0x666f_6c64_686f_7374;
const READ_ATTEMPTS: usize = 3;
/// Tries of a write transaction whose connection broke before it committed.
const WRITE_ATTEMPTS: usize = 3;

const SCHEMA_V1: &str = r#"
CREATE TABLE log_head (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    position BIGINT NOT NULL
);
INSERT INTO log_head (only_row, position) VALUES (TRUE, 0);
CREATE TABLE events (
    position BIGINT PRIMARY KEY,
    stream TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    id UUID NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    content_type SMALLINT NOT NULL,
    data BYTEA NOT NULL,
    metadata TEXT,
    recorded_at BIGINT NOT NULL,
    UNIQUE (stream, version)
);
CREATE TABLE streams (
    stream TEXT COLLATE "C" PRIMARY KEY,
    version BIGINT NOT NULL
);
CREATE TABLE snapshots (
    plugin TEXT COLLATE "C" NOT NULL,
    stream TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    state BYTEA NOT NULL,
    PRIMARY KEY (plugin, stream, version)
);
CREATE TABLE checkpoints (
    plugin TEXT COLLATE "C" PRIMARY KEY,
    position BIGINT NOT NULL,
    state BYTEA NOT NULL
);
"#;

/// Tables added after schema 1 without a version bump: created at start when missing.
const ADDED_TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS parked (
    plugin TEXT COLLATE "C" NOT NULL,
    position BIGINT NOT NULL,
    stream TEXT NOT NULL,
    event_type TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    parked_at BIGINT NOT NULL,
    PRIMARY KEY (plugin, position)
);
"#;

const EVENT_COLUMNS: &str =
    "position, stream, version, id, event_type, content_type, data, metadata, recorded_at";

/// The PostgreSQL side of a [`Journal`](super::Journal).
pub(super) struct PgJournal {
    pool: Pool,
    /// How long a read waits for the database before it gives up.
    deadline: Duration,
    runtime: Option<tokio::runtime::Runtime>,
    requests: Option<mpsc::Sender<Request>>,
    /// Signalled when the writer has drained its queue and stopped (a Mutex only to be Sync).
    writer_done: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    shared: Arc<Shared>,
}

struct Shared {
    head: watch::Sender<u64>,
    commits: AtomicU64,
    appends: AtomicU64,
    events: AtomicU64,
}

impl Shared {
    /// Moves the head forward (never back: notifications and local commits race).
    fn advance(&self, position: u64) {
        self.head.send_if_modified(|head| {
            if position > *head {
                *head = position;
                true
            } else {
                false
            }
        });
    }
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Option<AppendResult>, JournalError>>,
}

/// What one request did inside a batch.
struct Applied {
    result: Option<AppendResult>,
    written_events: u64,
}

impl Drop for PgJournal {
    fn drop(&mut self) {
        // Let the writer finish what is queued, then stop the runtime.
        drop(self.requests.take());
        let done = self.writer_done.get_mut().ok().and_then(Option::take);
        if let Some(done) = done {
            let _ = done.recv_timeout(Duration::from_secs(30));
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn no_answer(deadline: Duration) -> JournalError {
    JournalError::Unavailable(format!(
        "no answer from the journal database within {deadline:?}"
    ))
}

fn pg(error: tokio_postgres::Error) -> JournalError {
    JournalError::Postgres(Arc::new(error))
}

fn pool_error(error: deadpool_postgres::PoolError) -> JournalError {
    match error {
        deadpool_postgres::PoolError::Backend(error) => pg(error),
        other => JournalError::Unavailable(other.to_string()),
    }
}

/// Whether repeating a read after `error` may help: the database was out of reach, going
/// away (a restart) or timed out, rather than refusing the query.
fn transient(error: &JournalError) -> bool {
    match error {
        JournalError::Unavailable(_) => true,
        JournalError::Postgres(error) => failure::out_of_reach(error),
        _ => false,
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl PgJournal {
    /// Connects to `url`, creates or checks the schema, and starts the writer and listener.
    pub(super) async fn connect(url: &str, config: &JournalConfig) -> Result<Self, JournalError> {
        let settings = Arc::new(settings::Settings::parse(url)?);
        let timeouts = settings.timeouts;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("journal-postgres")
            .enable_all()
            .build()
            .map_err(|error| JournalError::Unavailable(error.to_string()))?;
        let pool = Pool::builder(Manager::new(settings.config.clone(), settings.tls.clone()))
            .max_size(16)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            // Waiting for a free connection counts against the same deadline as the query.
            .wait_timeout(Some(timeouts.deadline()))
            .create_timeout(Some(timeouts.connect))
            .recycle_timeout(Some(timeouts.connect))
            .build()
            .map_err(|error| JournalError::Unavailable(error.to_string()))?;

        let setup = {
            let accept_risk = config.accept_non_durable_postgres;
            let pool = pool.clone();
            let settings = settings.clone();
            runtime
                .spawn(async move {
                    let client = pool.get().await.map_err(pool_error)?;
                    durability::check(&client, accept_risk).await?;
                    drop(client);
                    migrate(&pool).await?;
                    // Listen before reading the head, so no commit falls between the two.
                    let listener = listen(&settings).await?;
                    let head = read_head(&pool.get().await.map_err(pool_error)?).await?;
                    Ok::<_, JournalError>((head, listener))
                })
                .await
        };
        let (head, listener) = match setup {
            Ok(Ok(started)) => started,
            failed => {
                // Dropping a runtime may block, which an async caller must not.
                runtime.shutdown_background();
                return Err(match failed {
                    Ok(Err(error)) => error,
                    Err(panicked) => JournalError::Unavailable(panicked.to_string()),
                    Ok(Ok(_)) => unreachable!(),
                });
            }
        };
        let shared = Arc::new(Shared {
            head: watch::Sender::new(head),
            commits: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            events: AtomicU64::new(0),
        });
        runtime.spawn(follow(
            settings,
            pool.clone(),
            listener,
            Arc::downgrade(&shared),
        ));

        let (requests, queue) = mpsc::channel(config.max_queued_writes.max(1));
        let (done_tx, writer_done) = std::sync::mpsc::channel();
        let limits = BatchLimits {
            requests: config.max_batch_appends.max(1),
            bytes: config.max_append_bytes.max(1),
            keep_snapshots: config.keep_snapshots.max(1),
            deadline: timeouts.deadline(),
        };
        runtime.spawn(write(pool.clone(), queue, shared.clone(), limits, done_tx));
        Ok(Self {
            pool,
            deadline: timeouts.deadline(),
            runtime: Some(runtime),
            requests: Some(requests),
            writer_done: std::sync::Mutex::new(Some(writer_done)),
            shared,
        })
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the journal")
    }

    fn queue(
        &self,
        op: Op,
    ) -> Result<oneshot::Receiver<Result<Option<AppendResult>, JournalError>>, JournalError> {
        let (reply, outcome) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or(JournalError::Closed)?;
        match requests.try_send(Request { op, reply }) {
            Ok(()) => Ok(outcome),
            Err(mpsc::error::TrySendError::Full(_)) => Err(JournalError::Overloaded),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(JournalError::Closed),
        }
    }

    pub(super) async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, JournalError> {
        let outcome = self.queue(Op::Append {
            stream: stream.to_owned(),
            expected,
            events,
            recorded_at: None,
        })?;
        let result = outcome.await.map_err(|_| JournalError::Closed)??;
        Ok(result.expect("an append reports where its events are"))
    }

    pub(super) fn append_blocking(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, JournalError> {
        let outcome = self.queue(Op::Append {
            stream: stream.to_owned(),
            expected,
            events,
            recorded_at: None,
        })?;
        let result = outcome
            .blocking_recv()
            .map_err(|_| JournalError::Closed)??;
        Ok(result.expect("an append reports where its events are"))
    }

    pub(super) async fn write_op(&self, op: Op) -> Result<(), JournalError> {
        self.queue(op)?
            .await
            .map_err(|_| JournalError::Closed)?
            .map(|_| ())
    }

    pub(super) async fn put_snapshot(
        &self,
        plugin: &str,
        stream: &str,
        version: u64,
        state: Vec<u8>,
    ) -> Result<(), JournalError> {
        self.write_op(Op::PutSnapshot {
            plugin: plugin.to_owned(),
            stream: stream.to_owned(),
            version,
            state,
        })
        .await
    }

    pub(super) fn head_position(&self) -> u64 {
        *self.shared.head.borrow()
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    pub(super) fn stats(&self) -> JournalStats {
        JournalStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            appends: self.shared.appends.load(Ordering::Relaxed),
            events: self.shared.events.load(Ordering::Relaxed),
        }
    }

    /// Runs the read `query` on the backend's runtime and waits for it, retrying transient
    /// failures, for at most the deadline; callable from any thread.
    fn read<T, F, Fut>(&self, query: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: Fn(deadpool_postgres::Object) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, JournalError>> + Send,
    {
        let (pool, deadline) = (self.pool.clone(), self.deadline);
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime().spawn(async move {
            let mut attempt = 0;
            let tries = async {
                loop {
                    attempt += 1;
                    let outcome = match pool.get().await {
                        Ok(client) => query(client).await,
                        Err(error) => Err(pool_error(error)),
                    };
                    match outcome {
                        Err(error) if attempt < READ_ATTEMPTS && transient(&error) => {
                            tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
                        }
                        // Still out of reach: the caller may try again later (503).
                        Err(error @ JournalError::Postgres(_)) if transient(&error) => {
                            break Err(JournalError::Unavailable(error.to_string()));
                        }
                        outcome => break outcome,
                    }
                }
            };
            let outcome = tokio::time::timeout(deadline, tries)
                .await
                .unwrap_or_else(|_| Err(no_answer(deadline)));
            let _ = tx.send(outcome);
        });
        match rx.recv_timeout(deadline + Duration::from_secs(1)) {
            Ok(outcome) => outcome,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(no_answer(deadline)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(JournalError::Closed),
        }
    }

    pub(super) fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: ReadLimit,
    ) -> Result<Vec<RecordedEvent>, JournalError> {
        let stream = stream.to_owned();
        self.read(move |client| {
            let stream = stream.clone();
            async move { lifecycle::read_stream(&client, &stream, from_version, limit).await }
        })
    }

    pub(super) fn read_all(
        &self,
        from_position: u64,
        limit: ReadLimit,
    ) -> Result<Vec<RecordedEvent>, JournalError> {
        self.read(
            move |client| async move { lifecycle::read_all(&client, from_position, limit).await },
        )
    }

    pub(super) fn event_by_id(&self, id: Uuid) -> Result<Option<RecordedEvent>, JournalError> {
        self.read(move |client| async move { lifecycle::event_by_id(&client, id).await })
    }

    pub(super) fn parked(&self, plugin: &str) -> Result<Vec<ParkedEvent>, JournalError> {
        let plugin = plugin.to_owned();
        self.read(move |client| {
            let plugin = plugin.clone();
            async move {
                let rows = cached::query(
                    &client,
                    "SELECT position, stream, event_type, reason, attempts, parked_at \
                     FROM parked WHERE plugin = $1 ORDER BY position",
                    &[&plugin],
                )
                .await?;
                Ok(rows
                    .iter()
                    .map(|row| ParkedEvent {
                        position: row.get::<_, i64>(0) as u64,
                        stream: row.get(1),
                        event_type: row.get(2),
                        reason: row.get(3),
                        attempts: u32::try_from(row.get::<_, i64>(4)).unwrap_or(u32::MAX),
                        parked_at: row.get::<_, i64>(5) as u64,
                    })
                    .collect())
            }
        })
    }

    pub(super) fn stream_version(&self, stream: &str) -> Result<Option<u64>, JournalError> {
        Ok(self.stream_window(stream)?.current)
    }

    pub(super) fn stream_window(&self, stream: &str) -> Result<StreamWindow, JournalError> {
        let stream = stream.to_owned();
        self.read(move |client| {
            let stream = stream.clone();
            async move { lifecycle::stream_window(&client, &stream).await }
        })
    }

    pub(super) fn stream_window_and_page(
        &self,
        stream: &str,
        from_version: u64,
        limit: ReadLimit,
    ) -> Result<(StreamWindow, Vec<RecordedEvent>), JournalError> {
        let stream = stream.to_owned();
        self.read(move |client| {
            let stream = stream.clone();
            async move {
                lifecycle::stream_window_and_page(&client, &stream, from_version, limit).await
            }
        })
    }

    pub(super) fn stream_metadata(&self, stream: &str) -> Result<StreamMetadata, JournalError> {
        let stream = stream.to_owned();
        self.read(move |client| {
            let stream = stream.clone();
            async move { lifecycle::stream_metadata(&client, &stream).await }
        })
    }

    pub(super) fn streams_with_prefix(&self, prefix: &str) -> Result<Vec<String>, JournalError> {
        let prefix = prefix.to_owned();
        self.read(move |client| {
            let prefix = prefix.clone();
            async move { lifecycle::streams_with_prefix(&client, &prefix).await }
        })
    }

    /// Removes what no reader sees any more (see `lifecycle::scavenge`).
    pub(super) async fn scavenge(&self) -> Result<ScavengeReport, JournalError> {
        let pool = self.pool.clone();
        self.runtime()
            .spawn(async move { lifecycle::scavenge(&pool).await })
            .await
            .map_err(|_| JournalError::Closed)?
    }

    pub(super) fn latest_snapshot(
        &self,
        plugin: &str,
        stream: &str,
        at_most_version: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
        let (plugin, stream) = (plugin.to_owned(), stream.to_owned());
        let at_most = to_i64(at_most_version);
        self.read(move |client| {
            let (plugin, stream) = (plugin.clone(), stream.clone());
            async move {
                let row = cached::query_opt(
                    &client,
                    "SELECT version, state FROM snapshots \
                     WHERE plugin = $1 AND stream = $2 AND version <= $3 \
                     ORDER BY version DESC LIMIT 1",
                    &[&plugin, &stream, &at_most],
                )
                .await?;
                Ok(row.map(|row| (row.get::<_, i64>(0) as u64, row.get(1))))
            }
        })
    }

    pub(super) fn checkpoint(&self, plugin: &str) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
        let plugin = plugin.to_owned();
        self.read(move |client| {
            let plugin = plugin.clone();
            async move {
                let row = cached::query_opt(
                    &client,
                    "SELECT position, state FROM checkpoints WHERE plugin = $1",
                    &[&plugin],
                )
                .await?;
                Ok(row.map(|row| (row.get::<_, i64>(0) as u64, row.get(1))))
            }
        })
    }
}

/// Positions, versions and limits are u64 in the API and BIGINT in the database.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn decode(row: &tokio_postgres::Row) -> Result<RecordedEvent, JournalError> {
    let position = row.get::<_, i64>(0) as u64;
    let content_type = match row.get::<_, i16>(5) {
        0 => ContentType::Json,
        1 => ContentType::Binary,
        other => {
            return Err(JournalError::Corrupt {
                position,
                reason: format!("unknown content type {other}"),
            });
        }
    };
    Ok(RecordedEvent {
        position,
        stream: row.get::<_, String>(1).into(),
        version: row.get::<_, i64>(2) as u64,
        id: row.get(3),
        event_type: row.get::<_, String>(4).into(),
        content_type,
        data: row.get::<_, Vec<u8>>(6).into(),
        metadata: row.get::<_, Option<String>>(7).map(Into::into),
        recorded_at: row.get::<_, i64>(8) as u64,
    })
}

fn content_type_code(content_type: ContentType) -> i16 {
    match content_type {
        ContentType::Json => 0,
        ContentType::Binary => 1,
    }
}

async fn read_head(client: &impl GenericClient) -> Result<u64, JournalError> {
    let row = cached::query_one(client, "SELECT position FROM log_head", &[]).await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Creates the schema, or checks that the existing one is the one this build reads.
async fn migrate(pool: &Pool) -> Result<(), JournalError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let txn = client.transaction().await.map_err(pg)?;
    cached::execute(&txn, "SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    txn.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .await
        .map_err(pg)?;
    let found = cached::query_opt(&txn, "SELECT max(version) FROM schema_version", &[])
        .await?
        .and_then(|row| row.get::<_, Option<i64>>(0));
    match found {
        None => {
            txn.batch_execute(SCHEMA_V1).await.map_err(pg)?;
            cached::execute(
                &txn,
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&(SCHEMA_VERSION as i64)],
            )
            .await?;
        }
        Some(found) if found as u64 == SCHEMA_VERSION => {}
        Some(found) => {
            return Err(JournalError::UnsupportedFormat {
                found: found as u64,
                supported: SCHEMA_VERSION,
            });
        }
    }
    txn.batch_execute(lifecycle::TABLE).await.map_err(pg)?;
    txn.batch_execute(ADDED_TABLES).await.map_err(pg)?;
    txn.commit().await.map_err(pg)
}

/// A connection that has run `LISTEN foldhost_log`, as a stream of notified positions.
type Listener = futures_util::stream::BoxStream<'static, Result<u64, JournalError>>;

async fn listen(settings: &settings::Settings) -> Result<Listener, JournalError> {
    let (client, mut connection) = settings
        .config
        .connect(settings.tls.clone())
        .await
        .map_err(pg)?;
    let messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The connection only makes progress while polled: drive it while LISTEN is sent.
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = Box::pin(messages);
        while let Some(message) = messages.next().await {
            let item = match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    match notification.payload().parse::<u64>() {
                        Ok(position) => Ok(position),
                        Err(_) => continue,
                    }
                }
                Ok(_) => continue,
                Err(error) => Err(pg(error)),
            };
            let failed = item.is_err();
            if tx.send(item).is_err() || failed {
                break;
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(pg)?;
    // Keep the client alive as long as the stream: dropping it would close the connection.
    let stream = futures_util::stream::unfold((rx, client), |(mut rx, client)| async move {
        rx.recv().await.map(|item| (item, (rx, client)))
    });
    Ok(stream.boxed())
}

/// Moves the head on every notification; reconnects (and re-reads the head) if the listening
/// connection fails. Stops when the journal is gone.
async fn follow(
    settings: Arc<settings::Settings>,
    pool: Pool,
    mut listener: Listener,
    shared: std::sync::Weak<Shared>,
) {
    loop {
        while let Some(item) = listener.next().await {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            match item {
                Ok(position) => shared.advance(position),
                Err(error) => {
                    tracing::warn!(%error, "journal notifications interrupted");
                    break;
                }
            }
        }
        loop {
            if shared.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let reconnected = async {
                let listener = listen(&settings).await?;
                let head = read_head(&pool.get().await.map_err(pool_error)?).await?;
                Ok::<_, JournalError>((listener, head))
            }
            .await;
            match reconnected {
                Ok((again, head)) => {
                    if let Some(shared) = shared.upgrade() {
                        shared.advance(head);
                    }
                    listener = again;
                    break;
                }
                Err(error) => tracing::warn!(%error, "reconnecting the journal listener"),
            }
        }
    }
}

/// The writer task: drains queued requests into one transaction each round (group commit),
/// at most `max_batch` requests and `max_bytes` of them (a single larger request goes alone).
async fn write(
    pool: Pool,
    mut queue: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
    limits: BatchLimits,
    done: std::sync::mpsc::Sender<()>,
) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, limits.requests).await > 0 {
        let mut requests = std::mem::take(&mut batch).into_iter().peekable();
        while requests.peek().is_some() {
            let mut bytes = 0;
            let chunk: Vec<Request> = std::iter::from_fn(|| {
                let weight = requests.peek()?.op.weight();
                if bytes > 0 && bytes + weight > limits.bytes {
                    return None;
                }
                bytes += weight;
                requests.next()
            })
            .collect();
            commit(&pool, chunk, &shared, &limits).await;
        }
    }
    let _ = done.send(());
}

/// What the writer puts into one transaction, and how long it may take.
struct BatchLimits {
    requests: usize,
    bytes: usize,
    keep_snapshots: usize,
    deadline: Duration,
}

/// Commits `requests` together. If the server refuses one of them (a row it cannot store),
/// the others must not fail with it: the batch is then run again one request at a time.
async fn commit(pool: &Pool, requests: Vec<Request>, shared: &Shared, limits: &BatchLimits) {
    let outcomes = match attempt(pool, &requests, shared, limits).await {
        Err(failure::Batch::Refused(error)) if requests.len() > 1 => {
            tracing::warn!(%error, requests = requests.len(), "a batch was refused: committing its requests one by one");
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in &requests {
                let alone = attempt(pool, std::slice::from_ref(request), shared, limits).await;
                outcomes.push(
                    alone.map_or_else(|failure| Err(failure.into()), |mut one| one.remove(0)),
                );
            }
            outcomes
        }
        Ok(outcomes) => outcomes,
        Err(failure) => {
            let error = JournalError::from(failure);
            requests.iter().map(|_| Err(error.clone())).collect()
        }
    };
    for (request, outcome) in requests.into_iter().zip(outcomes) {
        let _ = request.reply.send(outcome);
    }
}

/// Runs `requests` as one transaction, again after a connection failure that left nothing
/// written (a connection of the pool broken by a server restart, say), and counts what it
/// wrote.
async fn attempt(
    pool: &Pool,
    requests: &[Request],
    shared: &Shared,
    limits: &BatchLimits,
) -> Result<Vec<Result<Option<AppendResult>, JournalError>>, failure::Batch> {
    let mut tries = 0;
    let (outcomes, head, committed) = loop {
        tries += 1;
        let committing = AtomicBool::new(false);
        let run = run_batch(pool, requests, limits.keep_snapshots, &committing);
        let failure = match tokio::time::timeout(limits.deadline, run).await {
            Ok(Ok(done)) => break done,
            Ok(Err(error)) => failure::Batch::classify(error),
            Err(_) if committing.load(Ordering::Relaxed) => failure::Batch::Unknown(format!(
                "no answer to the commit within {:?}",
                limits.deadline
            )),
            Err(_) => failure::Batch::Unavailable(format!(
                "no answer from the database within {:?}; nothing was written",
                limits.deadline
            )),
        };
        if tries >= WRITE_ATTEMPTS || !failure.is_disconnection() {
            return Err(failure);
        }
        tokio::time::sleep(Duration::from_millis(100 * tries as u64)).await;
    };
    if committed {
        shared.commits.fetch_add(1, Ordering::Relaxed);
    }
    for applied in outcomes.iter().flatten() {
        if applied.written_events > 0 {
            shared.appends.fetch_add(1, Ordering::Relaxed);
            shared
                .events
                .fetch_add(applied.written_events, Ordering::Relaxed);
        }
    }
    if let Some(head) = head {
        shared.advance(head);
    }
    Ok(outcomes
        .into_iter()
        .map(|outcome| outcome.map(|applied| applied.result))
        .collect())
}

/// Each request's outcome, the new head if events were appended, whether a commit happened.
type BatchOutcome = (Vec<Result<Applied, JournalError>>, Option<u64>, bool);

/// Applies `requests` in order in one transaction and commits it. The head returned is the new
/// last position if events were appended.
///
/// Appends are validated in memory against the stored versions and event ids of everything
/// the batch touches (read under the log lock, so nobody changes them meanwhile) and written
/// with one insert: a batch of appends costs five round trips (begin, lock, reads, writes,
/// commit) however many it holds.
///
/// `committing` is set once the commit is sent: a failure after that leaves the outcome
/// unknown.
async fn run_batch(
    pool: &Pool,
    requests: &[Request],
    keep_snapshots: usize,
    committing: &AtomicBool,
) -> Result<BatchOutcome, JournalError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let txn = client.transaction().await.map_err(pg)?;
    let appends: Vec<(&str, &[NewEvent])> = requests
        .iter()
        .filter_map(|request| match &request.op {
            Op::Append { stream, events, .. } => Some((stream.as_str(), events.as_slice())),
            _ => None,
        })
        .collect();
    let mut streams: Vec<&str> = requests
        .iter()
        .filter_map(|request| match &request.op {
            Op::Append { stream, .. }
            | Op::DeleteStream { stream, .. }
            | Op::SetStreamMetadata { stream, .. } => Some(stream.as_str()),
            _ => None,
        })
        .collect();
    streams.sort_unstable();
    streams.dedup();
    // Only writes of streams need the log lock; snapshot and checkpoint writes do not.
    let mut state = if streams.is_empty() {
        None
    } else {
        Some(BatchState::load(&txn, &appends, &streams).await?)
    };
    let recorded_at = now_millis();
    let mut outcomes = Vec::with_capacity(requests.len());
    let mut wrote = false;
    for request in requests {
        let outcome = match &request.op {
            Op::Append {
                stream,
                expected,
                events,
                recorded_at,
            } => Ok(state
                .as_mut()
                .expect("loaded for a batch with appends")
                .append(stream, *expected, events, *recorded_at)),
            Op::PutSnapshot {
                plugin,
                stream,
                version,
                state,
            } => put_snapshot(&txn, plugin, stream, *version, state, keep_snapshots)
                .await
                .map(|()| Ok(done())),
            Op::PutCheckpoint {
                plugin,
                position,
                state,
                park: parked,
                unpark: unparked,
            } => async {
                cached::execute(
                    &txn,
                    "INSERT INTO checkpoints (plugin, position, state) VALUES ($1, $2, $3) \
                     ON CONFLICT (plugin) DO UPDATE SET position = $2, state = $3",
                    &[plugin, &to_i64(*position), state],
                )
                .await?;
                park(&txn, plugin, parked).await?;
                unpark(&txn, plugin, unparked).await
            }
            .await
            .map(|()| Ok(done())),
            Op::DeletePluginData { plugin } => {
                delete_plugin_data(&txn, plugin).await.map(|()| Ok(done()))
            }
            Op::DeleteStream {
                stream,
                expected,
                hard,
            } => Ok(state
                .as_mut()
                .expect("loaded for a batch writing streams")
                .delete(stream, *expected, *hard)
                .map(|()| done())),
            Op::SetStreamMetadata { stream, metadata } => Ok(state
                .as_mut()
                .expect("loaded for a batch writing streams")
                .set_metadata(stream, *metadata)
                .map(|()| done())),
            Op::Park { plugin, events } => park(&txn, plugin, events).await.map(|()| Ok(done())),
            Op::Unpark { plugin, positions } => {
                unpark(&txn, plugin, positions).await.map(|()| Ok(done()))
            }
        };
        // A database error may have struck half way: drop the whole transaction.
        let outcome = outcome?;
        if let Ok(applied) = &outcome {
            // Snapshot and checkpoint writes always write; appends only when not retries.
            wrote |= applied.result.is_none() || applied.written_events > 0;
        }
        outcomes.push(outcome);
    }
    let changed = state
        .as_mut()
        .map(|state| std::mem::take(&mut state.changed))
        .unwrap_or_default();
    let store = lifecycle::store(&txn, &changed);
    let mut head = None;
    match state.filter(|state| state.next > state.start + 1) {
        Some(state) => {
            let last = state.next - 1;
            let (position, notice) = (last as i64, last.to_string());
            // These writes do not depend on each other: sent together (pipelined), they cost
            // one round trip (see `BatchState::load` on their order).
            tokio::try_join!(
                biased;
                store,
                state.write(&txn, recorded_at),
                async {
                    cached::execute(&txn, "UPDATE log_head SET position = $1", &[&position]).await
                },
                async {
                    cached::execute(&txn, "SELECT pg_notify($1, $2)", &[&CHANNEL, &notice]).await
                },
            )?;
            head = Some(last);
        }
        None => store.await?,
    }
    if !wrote {
        // Only retries and refusals: nothing to commit (and no commit to count).
        txn.rollback().await.map_err(pg)?;
        return Ok((outcomes, None, false));
    }
    // Whether a failed commit took effect is unknown: it is reported so, never guessed.
    committing.store(true, Ordering::Relaxed);
    txn.commit()
        .await
        .map_err(|error| JournalError::OutcomeUnknown(error.to_string()))?;
    Ok((outcomes, head, true))
}

fn done() -> Applied {
    Applied {
        result: None,
        written_events: 0,
    }
}

/// Where a stored event is: position, stream, version.
type Stored = (u64, String, u64);

/// The appends of one batch, validated in memory and written together.
struct BatchState<'a> {
    /// The log head when the batch took the lock.
    start: u64,
    /// The next free position.
    next: u64,
    /// Event ids of the batch already stored, and those this batch adds.
    known: HashMap<Uuid, Stored>,
    /// Stored versions of the streams the batch writes (None: no such stream).
    versions: HashMap<String, Option<u64>>,
    /// Lifecycle records of the streams the batch writes (absent: none).
    lifecycles: HashMap<String, Lifecycle>,
    /// Lifecycle records the batch changed, to store.
    changed: HashMap<String, Lifecycle>,
    /// Position, stream, version, event, and the time an import keeps.
    rows: Vec<(u64, &'a str, u64, &'a NewEvent, Option<u64>)>,
}

impl<'a> BatchState<'a> {
    /// Locks the log head and reads the stored ids `appends` involve, and the versions and
    /// lifecycles of `streams`.
    async fn load(
        txn: &Transaction<'_>,
        appends: &[(&'a str, &'a [NewEvent])],
        streams: &[&str],
    ) -> Result<Self, JournalError> {
        let row = cached::query_one(txn, "SELECT position FROM log_head FOR UPDATE", &[]).await?;
        let start = row.get::<_, i64>(0) as u64;
        let ids: Vec<Uuid> = appends
            .iter()
            .flat_map(|(_, events)| events.iter().map(|event| event.id))
            .collect();
        // Under the lock, so they see every commit before it; independent of each other, they
        // are sent together (pipelined) and cost one round trip. Polled in order (`biased`),
        // they are sent in this order once their statements are prepared (on a connection's
        // first batch a statement still being prepared goes after the others), so the first
        // error is the first failed statement's, not a later one's "transaction is aborted".
        let (known, heads, lifecycles) = tokio::try_join!(
            biased;
            async {
                let sql = "SELECT position, stream, version, id FROM events WHERE id = ANY($1)";
                cached::query(txn, sql, &[&ids]).await
            },
            async {
                let sql = "SELECT stream, version FROM streams WHERE stream = ANY($1)";
                cached::query(txn, sql, &[&streams]).await
            },
            lifecycle::load(txn, streams),
        )?;
        let known = known
            .iter()
            .map(|row| {
                let stored = (
                    row.get::<_, i64>(0) as u64,
                    row.get::<_, String>(1),
                    row.get::<_, i64>(2) as u64,
                );
                (row.get::<_, Uuid>(3), stored)
            })
            .collect();
        let mut versions: HashMap<String, Option<u64>> = streams
            .iter()
            .map(|stream| ((*stream).to_owned(), None))
            .collect();
        for row in heads {
            versions.insert(row.get(0), Some(row.get::<_, i64>(1) as u64));
        }
        Ok(Self {
            start,
            next: start + 1,
            known,
            versions,
            lifecycles,
            changed: HashMap::new(),
            rows: Vec::new(),
        })
    }

    /// The lifecycle of `stream` as this batch left it.
    fn lifecycle(&self, stream: &str) -> Lifecycle {
        self.changed
            .get(stream)
            .or_else(|| self.lifecycles.get(stream))
            .copied()
            .unwrap_or_default()
    }

    /// Soft- or hard-deletes `stream` once `expected` holds; a refusal changes nothing.
    fn delete(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        hard: bool,
    ) -> Result<(), JournalError> {
        let mut lifecycle = self.lifecycle(stream);
        let stored = self.versions.get(stream).copied().flatten();
        lifecycle.delete(stream, stored, expected, hard)?;
        self.changed.insert(stream.to_owned(), lifecycle);
        Ok(())
    }

    /// Replaces the retention metadata of `stream`.
    fn set_metadata(&mut self, stream: &str, metadata: StreamMetadata) -> Result<(), JournalError> {
        let mut lifecycle = self.lifecycle(stream);
        lifecycle.check_exists(stream)?;
        lifecycle.metadata = metadata;
        self.changed.insert(stream.to_owned(), lifecycle);
        Ok(())
    }

    /// Appends `events` to `stream` if `expected` holds, or recognises a retry; a refusal
    /// changes nothing. They get the commit's time unless `recorded_at` (an import's) is given.
    fn append(
        &mut self,
        stream: &'a str,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
        recorded_at: Option<u64>,
    ) -> Result<Applied, JournalError> {
        let mut lifecycle = self.lifecycle(stream);
        lifecycle.check_exists(stream)?;
        let stored: Vec<(Uuid, &Stored)> = events
            .iter()
            .filter_map(|event| self.known.get(&event.id).map(|at| (event.id, at)))
            .collect();
        if !stored.is_empty() {
            let written: Vec<Written> = stored
                .iter()
                .map(|(id, (position, other, version))| Written {
                    id: *id,
                    stream: other,
                    position: *position,
                    version: *version,
                })
                .collect();
            return rules::retried(stream, events, &written).map(|result| Applied {
                result: Some(result),
                written_events: 0,
            });
        }
        let stored = self.versions.get(stream).copied().flatten();
        expected.check(stream, lifecycle.current(stored))?;
        let count = events.len() as u64;
        // Versions continue after a soft delete.
        let result = AppendResult::placing(stored, count, self.next);
        if !lifecycle.is_listed() {
            lifecycle.appended();
            self.changed.insert(stream.to_owned(), lifecycle);
        }
        for ((event, version), position) in events
            .iter()
            .zip(result.first_version..)
            .zip(result.first_position..)
        {
            self.known
                .insert(event.id, (position, stream.to_owned(), version));
            self.rows
                .push((position, stream, version, event, recorded_at));
        }
        self.versions
            .insert(stream.to_owned(), Some(result.last_version));
        self.next = result.last_position + 1;
        Ok(Applied {
            result: Some(result),
            written_events: count,
        })
    }

    /// Inserts the accepted events and moves their streams' versions.
    async fn write(self, txn: &Transaction<'_>, recorded_at: u64) -> Result<(), JournalError> {
        let positions: Vec<i64> = self.rows.iter().map(|row| row.0 as i64).collect();
        let streams: Vec<&str> = self.rows.iter().map(|row| row.1).collect();
        let versions: Vec<i64> = self.rows.iter().map(|row| row.2 as i64).collect();
        let ids: Vec<Uuid> = self.rows.iter().map(|row| row.3.id).collect();
        let types: Vec<&str> = self
            .rows
            .iter()
            .map(|row| row.3.event_type.as_str())
            .collect();
        let content_types: Vec<i16> = self
            .rows
            .iter()
            .map(|row| content_type_code(row.3.content_type))
            .collect();
        let data: Vec<&[u8]> = self.rows.iter().map(|row| row.3.data.as_slice()).collect();
        let metadata: Vec<Option<&str>> = self
            .rows
            .iter()
            .map(|row| row.3.metadata.as_deref())
            .collect();
        let times: Vec<i64> = self
            .rows
            .iter()
            .map(|row| row.4.unwrap_or(recorded_at) as i64)
            .collect();
        let (heads, head_versions): (Vec<&str>, Vec<i64>) = self
            .versions
            .iter()
            .filter_map(|(stream, version)| Some((stream.as_str(), (*version)? as i64)))
            .unzip();
        // Pipelined, as the other writes of the batch.
        let insert = async {
            cached::execute(
                txn,
                "INSERT INTO events (position, stream, version, id, event_type, content_type, \
                 data, metadata, recorded_at) \
                 SELECT p, s, v, i, t, c, d, m, r \
                 FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::UUID[], $5::TEXT[], \
                             $6::SMALLINT[], $7::BYTEA[], $8::TEXT[], $9::BIGINT[]) \
                      AS e(p, s, v, i, t, c, d, m, r)",
                &[
                    &positions,
                    &streams,
                    &versions,
                    &ids,
                    &types,
                    &content_types,
                    &data,
                    &metadata,
                    &times,
                ],
            )
            .await
        };
        let move_heads = async {
            cached::execute(
                txn,
                "INSERT INTO streams (stream, version) \
                 SELECT s, v FROM unnest($1::TEXT[], $2::BIGINT[]) AS h(s, v) \
                 ON CONFLICT (stream) DO UPDATE SET version = excluded.version",
                &[&heads, &head_versions],
            )
            .await
        };
        tokio::try_join!(biased; insert, move_heads)?;
        Ok(())
    }
}

async fn put_snapshot(
    txn: &Transaction<'_>,
    plugin: &str,
    stream: &str,
    version: u64,
    state: &[u8],
    keep: usize,
) -> Result<(), JournalError> {
    cached::execute(
        txn,
        "INSERT INTO snapshots (plugin, stream, version, state) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (plugin, stream, version) DO UPDATE SET state = $4",
        &[&plugin, &stream, &to_i64(version), &state],
    )
    .await?;
    cached::execute(
        txn,
        "DELETE FROM snapshots WHERE plugin = $1 AND stream = $2 AND version NOT IN \
         (SELECT version FROM snapshots WHERE plugin = $1 AND stream = $2 \
          ORDER BY version DESC LIMIT $3)",
        &[&plugin, &stream, &(keep as i64)],
    )
    .await?;
    Ok(())
}

async fn park(
    txn: &Transaction<'_>,
    plugin: &str,
    events: &[ParkedEvent],
) -> Result<(), JournalError> {
    for event in events {
        cached::execute(
            txn,
            "INSERT INTO parked (plugin, position, stream, event_type, reason, attempts, parked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (plugin, position) DO UPDATE SET \
             reason = $5, attempts = $6, parked_at = $7",
            &[
                &plugin,
                &to_i64(event.position),
                &event.stream,
                &event.event_type,
                &event.reason,
                &i64::from(event.attempts),
                &to_i64(event.parked_at),
            ],
        )
        .await?;
    }
    Ok(())
}

async fn unpark(
    txn: &Transaction<'_>,
    plugin: &str,
    positions: &[u64],
) -> Result<(), JournalError> {
    if positions.is_empty() {
        return Ok(());
    }
    let positions: Vec<i64> = positions.iter().map(|&p| to_i64(p)).collect();
    cached::execute(
        txn,
        "DELETE FROM parked WHERE plugin = $1 AND position = ANY($2)",
        &[&plugin, &positions],
    )
    .await?;
    Ok(())
}

async fn delete_plugin_data(txn: &Transaction<'_>, plugin: &str) -> Result<(), JournalError> {
    // The plugin's own key, and its keys through upcaster chains (`{plugin}+{chain}`).
    let owned = "plugin = $1 OR starts_with(plugin, $1 || '+')";
    for table in ["checkpoints", "parked", "snapshots"] {
        cached::execute(
            txn,
            &format!("DELETE FROM {table} WHERE {owned}"),
            &[&plugin],
        )
        .await?;
    }
    Ok(())
}
