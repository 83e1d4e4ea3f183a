//! What a failed write transaction means for the requests in it: refused by the server
//! (nothing written; another request of the batch may be the culprit), the database out of
//! reach (nothing written; retry later), or the commit's answer lost (outcome unknown).

use tokio_postgres::error::SqlState;

use super::JournalError;

/// Why a batch did not commit.
pub(super) enum Batch {
    /// The server refused a statement because of what it was given: nothing was written.
    Refused(tokio_postgres::Error),
    /// The database could not be reached, or gave up waiting (a lock or statement timeout):
    /// nothing was written.
    Unavailable(String),
    /// The connection broke before the transaction committed: nothing was written, and a
    /// fresh connection may well succeed.
    Disconnected(String),
    /// The commit was sent but its answer never came: it may or may not be durable.
    Unknown(String),
    /// Anything else (a bug, a corrupt row): nothing was written.
    Other(JournalError),
}

impl Batch {
    /// Sorts an error of a batch that did not reach its commit, or whose commit failed.
    pub fn classify(error: JournalError) -> Batch {
        match error {
            JournalError::OutcomeUnknown(reason) => Batch::Unknown(reason),
            JournalError::Unavailable(reason) => Batch::Disconnected(reason),
            JournalError::Postgres(error) => {
                let Some(db) = error.as_db_error() else {
                    return Batch::Disconnected(error.to_string());
                };
                if waited_or_went_away(db.code()) {
                    Batch::Unavailable(format!("{}; nothing was written", db.message()))
                } else {
                    match std::sync::Arc::try_unwrap(error) {
                        Ok(error) => Batch::Refused(error),
                        Err(shared) => Batch::Other(JournalError::Postgres(shared)),
                    }
                }
            }
            other => Batch::Other(other),
        }
    }

    /// Whether trying again at once, on another connection, may succeed.
    pub fn is_disconnection(&self) -> bool {
        matches!(self, Batch::Disconnected(_))
    }
}

impl From<Batch> for JournalError {
    fn from(failure: Batch) -> Self {
        match failure {
            Batch::Refused(error) => match error.code().map(|code| &code.code()[..2]) {
                // data exceptions and program limits: what the request carried
                Some("22" | "54") => JournalError::Rejected(
                    error
                        .as_db_error()
                        .map_or_else(|| error.to_string(), |db| db.message().to_owned()),
                ),
                _ => JournalError::Postgres(std::sync::Arc::new(error)),
            },
            Batch::Unavailable(reason) => JournalError::Unavailable(reason),
            Batch::Disconnected(reason) => JournalError::Unavailable(format!(
                "lost the connection to the database ({reason}); nothing was written"
            )),
            Batch::Unknown(reason) => JournalError::OutcomeUnknown(reason),
            Batch::Other(error) => error,
        }
    }
}

/// Whether `error` says the database is out of reach (no connection, a broken one, a server
/// going away or timing out) rather than that it refused what it was sent.
pub(super) fn out_of_reach(error: &tokio_postgres::Error) -> bool {
    error.is_closed()
        || error
            .as_db_error()
            .is_none_or(|db| waited_or_went_away(db.code()))
}

/// Errors that say the server waited too long or is going away, not that it refused the data.
fn waited_or_went_away(code: &SqlState) -> bool {
    let code = code.code();
    code == SqlState::LOCK_NOT_AVAILABLE.code()
        || code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT.code()
        || ["08", "40", "53", "57", "58"].contains(&&code[..2])
}
