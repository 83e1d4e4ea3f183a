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

mod batch;
mod cached;
mod durability;
mod failure;
mod lifecycle;
mod listen;
mod reader;
mod schema;
mod settings;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, Pool};
use tokio::sync::{mpsc, watch};

use super::{JournalConfig, JournalError, JournalStats, ScavengeReport};

/// The PostgreSQL side of a [`Journal`](super::Journal).
pub(super) struct PgJournal {
    pool: Pool,
    /// How long a read waits for the database before it gives up.
    deadline: Duration,
    runtime: Option<tokio::runtime::Runtime>,
    requests: Option<mpsc::Sender<writer::Request>>,
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
                    schema::migrate(&pool).await?;
                    // Listen before reading the head, so no commit falls between the two.
                    let listener = listen::listen(&settings).await?;
                    let head = reader::read_head(&pool.get().await.map_err(pool_error)?).await?;
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
        runtime.spawn(listen::follow(
            settings,
            pool.clone(),
            listener,
            Arc::downgrade(&shared),
        ));

        let (requests, queue) = mpsc::channel(config.max_queued_writes.max(1));
        let (done_tx, writer_done) = std::sync::mpsc::channel();
        let limits = writer::BatchLimits {
            requests: config.max_batch_appends.max(1),
            bytes: config.max_append_bytes.max(1),
            keep_snapshots: config.keep_snapshots.max(1),
            deadline: timeouts.deadline(),
        };
        runtime.spawn(writer::write(
            pool.clone(),
            queue,
            shared.clone(),
            limits,
            done_tx,
        ));
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

    /// Removes what no reader sees any more (see `lifecycle::scavenge`).
    pub(super) async fn scavenge(&self) -> Result<ScavengeReport, JournalError> {
        let pool = self.pool.clone();
        self.runtime()
            .spawn(async move { lifecycle::scavenge(&pool).await })
            .await
            .map_err(|_| JournalError::Closed)?
    }
}

/// Positions, versions and limits are u64 in the API and BIGINT in the database.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
