//! The schema: its tables, and their creation or check when a host starts.

use deadpool_postgres::{GenericClient, Pool};

use crate::journal::JournalError;

use super::{cached, lifecycle, pg, pool_error};

/// The schema this build creates and reads.
const SCHEMA_VERSION: u64 = 1;

/// Serialises schema creation between hosts starting together.
const MIGRATION_LOCK: i64 = 0x666f_6c64_686f_7374;

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

/// Creates the schema, or checks that the existing one is the one this build reads.
pub(super) async fn migrate(pool: &Pool) -> Result<(), JournalError> {
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
