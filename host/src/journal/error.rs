//! Everything the journal can refuse or fail with.

use std::sync::Arc;

use uuid::Uuid;

use super::ExpectedVersion;

/// Why an append, read or write of the journal did not happen.
///
/// Cloneable so one failed commit can be reported to every request batched into it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// The stream's version did not match the append's [`ExpectedVersion`]; nothing was written.
    #[error(
        "wrong expected version for stream {stream:?}: expected {expected}, current {}",
        describe_version(*.current)
    )]
    Conflict {
        /// The stream appended to.
        stream: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was checked (`None`: no such stream).
        current: Option<u64>,
    },
    /// Some of the append's event ids were already written to this stream, but the append is not
    /// an exact retry of them (new ids mixed in, or another order); nothing was written.
    #[error(
        "append to {stream:?} reuses event ids of earlier events but is not a retry of them: {reason}"
    )]
    IdempotencyMismatch {
        /// The stream appended to.
        stream: String,
        /// How the append differs from the earlier one.
        reason: String,
    },
    /// An event id is already used in another stream, or occurs twice in one append
    /// (`position` is then `None` and `stream` is the append's stream); nothing was written.
    #[error("event id {id} {}", describe_duplicate(.stream, *.position))]
    DuplicateEventId {
        /// The id used twice.
        id: Uuid,
        /// The stream holding it.
        stream: String,
        /// Its position (`None`: twice within this append).
        position: Option<u64>,
    },
    /// The stream was hard-deleted: it can never be read or written again.
    #[error("stream {0:?} was deleted for good (hard delete)")]
    StreamDeleted(String),
    /// Deleting a stream that does not exist (or is already soft-deleted).
    #[error("stream {0:?} does not exist")]
    StreamNotFound(String),
    /// An event's `data`, `metadata` and `event_type` together exceed the configured maximum.
    #[error("event of {size} bytes exceeds the limit of {max} bytes")]
    EventTooLarge {
        /// The event's size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An append's events together exceed the configured maximum of bytes.
    #[error("append of {size} bytes exceeds the limit of {max} bytes")]
    AppendTooLarge {
        /// The append's size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An event type or metadata holds a NUL character (`\u0000`), which the journal does not
    /// store (PostgreSQL cannot).
    #[error("the {0} contains a NUL character (\\u0000), which the journal cannot store")]
    NulCharacter(&'static str),
    /// An append carries more events than the configured maximum.
    #[error("append of {count} events exceeds the limit of {max} events")]
    TooManyEvents {
        /// The append's events.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An append without events.
    #[error("append without events")]
    NoEvents,
    /// Retention rules that make no sense (`max_count` or `max_age` of zero); nothing changed.
    #[error("invalid stream metadata: {0}")]
    InvalidMetadata(&'static str),
    /// A stream name that is empty, longer than 256 bytes or holds a NUL character.
    #[error("invalid stream name {0:?}: a stream name has 1 to 256 bytes and no NUL character")]
    InvalidStreamName(String),
    /// redb failed. After a failed commit redb refuses further writes until the journal is
    /// reopened; such a commit's appends may or may not be durable (retry them: appends are
    /// idempotent by event id).
    #[error("storage error: {0}")]
    Storage(#[source] Arc<redb::Error>),
    /// PostgreSQL failed or refused a statement. For an append this includes a commit whose
    /// outcome is unknown (the connection broke during it): its events may or may not be
    /// durable; retry with the same event ids, which is idempotent.
    #[error("postgres error: {}", with_causes(.0))]
    Postgres(#[source] Arc<tokio_postgres::Error>),
    /// The database refused what a write carried (a PostgreSQL data exception, such as a
    /// character its encoding cannot hold); nothing was written. The other writes committed
    /// with it were not affected.
    #[error("the database refused this write: {0}")]
    Rejected(String),
    /// The commit was sent but its answer never came (the connection broke, or the database
    /// did not answer in time): the write may or may not be durable. Retry an append with the
    /// same event ids: if it landed, the retry returns where, and writes nothing.
    #[error(
        "the outcome of this write is unknown ({0}): it may or may not be stored; retry with \
         the same event ids"
    )]
    OutcomeUnknown(String),
    /// The PostgreSQL journal could not be reached (bad URL, no connection from the pool),
    /// or gave up waiting for it (a lock or statement timeout): nothing was written.
    #[error("the journal database is unavailable: {0}")]
    Unavailable(String),
    /// The PostgreSQL server runs with settings that let a power cut lose acknowledged commits
    /// (listed); see [`JournalConfig::accept_non_durable_postgres`](super::JournalConfig).
    #[error(
        "the PostgreSQL server is not durable: {0}; turn these settings on, or accept the risk \
         explicitly (serve --unsafe-accept-non-durable-postgres)"
    )]
    NotDurable(String),
    /// A stored record that cannot be decoded, or that disagrees with the indexes.
    #[error("corrupt record at position {position}: {reason}")]
    Corrupt {
        /// Where.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// The file was written by a build with another storage format.
    #[error(
        "journal storage format {found} is not supported (this build reads format {supported})"
    )]
    UnsupportedFormat {
        /// The format found.
        found: u64,
        /// The format this build reads.
        supported: u64,
    },
    /// The operation is not available on this journal (e.g. a file backup of PostgreSQL).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// An append of an [`ImportSequence`](super::ImportSequence) queued after one of it that
    /// failed: it was not applied.
    #[error("not applied: an append queued before it in its import failed")]
    SequenceStopped,
    /// The journal stopped writing after a storage fault (an I/O error such as a full disk):
    /// nothing was written. The host must be restarted once the fault is fixed.
    #[error("the journal stopped writing after a storage fault ({0}): restart the host")]
    Faulted(Arc<str>),
    /// The write queue is full (see
    /// [`max_queued_writes`](super::JournalConfig::max_queued_writes)); nothing was queued.
    /// Retry shortly.
    #[error("the journal's write queue is full: retry shortly")]
    Overloaded,
    /// The journal's writer thread is gone.
    #[error("the journal is closed")]
    Closed,
}

fn describe_version(version: Option<u64>) -> String {
    version.map_or_else(|| "no stream".to_owned(), |v| v.to_string())
}

fn describe_duplicate(stream: &str, position: Option<u64>) -> String {
    match position {
        Some(position) => {
            format!("is already used by the event at position {position} in stream {stream:?}")
        }
        None => format!("occurs more than once in one append to stream {stream:?}"),
    }
}

macro_rules! storage_errors {
    ($($error:ty),+) => {$(
        impl From<$error> for JournalError {
            fn from(error: $error) -> Self {
                JournalError::Storage(Arc::new(error.into()))
            }
        }
    )+};
}

storage_errors!(
    std::io::Error,
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CursorError,
    redb::SetDurabilityError
);

/// `error` and its causes, `: `-separated ("error performing TLS handshake: invalid peer
/// certificate: UnknownIssuer"), so the reason reaches the operator.
fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        text = format!("{text}: {error}");
        cause = error.source();
    }
    text
}
