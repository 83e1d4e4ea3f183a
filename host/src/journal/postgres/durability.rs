//! The PostgreSQL journal is as durable as the server under it: an acknowledged commit survives
//! a power cut only if the server flushes its write-ahead log before answering and can repair a
//! page torn mid-write. At connect the journal reads the settings that decide this and refuses a
//! server that has any of them off, unless told to accept the risk.

use deadpool_postgres::GenericClient;

use super::{JournalError, cached};

/// The settings that must be on, and what is lost without each.
const REQUIRED: [(&str, &str); 3] = [
    ("fsync", "the server never flushes its log to disk"),
    (
        "synchronous_commit",
        "a commit is acknowledged before its log record is flushed",
    ),
    (
        "full_page_writes",
        "a page torn by a power cut cannot be repaired",
    ),
];

/// Checks the durability settings as this session sees them (`synchronous_commit` may be set
/// per database or role). With `accept_risk` a non-durable server is only warned about.
pub(super) async fn check(
    client: &impl GenericClient,
    accept_risk: bool,
) -> Result<(), JournalError> {
    let names: Vec<&str> = REQUIRED.iter().map(|(name, _)| *name).collect();
    let rows = cached::query(
        client,
        "SELECT name, setting FROM pg_settings WHERE name = ANY($1)",
        &[&names],
    )
    .await?;
    let off: Vec<String> = REQUIRED
        .iter()
        .filter(|(name, _)| {
            rows.iter()
                .any(|row| row.get::<_, &str>(0) == *name && row.get::<_, &str>(1) == "off")
        })
        .map(|(name, risk)| format!("{name}=off ({risk})"))
        .collect();
    if off.is_empty() {
        return Ok(());
    }
    let settings = off.join(", ");
    if accept_risk {
        tracing::warn!(
            %settings,
            "the PostgreSQL server is not durable: a power cut may lose acknowledged appends"
        );
        return Ok(());
    }
    Err(JournalError::NotDurable(settings))
}
