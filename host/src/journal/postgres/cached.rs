//! Every statement of the backend goes through deadpool's per-connection statement cache: it is
//! prepared the first time a pooled connection runs it and reused after that, so it costs one
//! round trip (bind and execute) instead of two (tokio-postgres prepares a `&str` anew before
//! each execution).
//!
//! `client` is a pooled connection or a transaction on one (deadpool's `GenericClient`).

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::pg;
use crate::journal::JournalError;

/// A statement's parameters, `$1` first.
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// The rows `sql` returns.
pub(super) async fn query(
    client: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, JournalError> {
    let statement = client.prepare_cached(sql).await.map_err(pg)?;
    client.query(&statement, params).await.map_err(pg)
}

/// The one row `sql` returns (an error if it returns none or several).
pub(super) async fn query_one(
    client: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Row, JournalError> {
    let statement = client.prepare_cached(sql).await.map_err(pg)?;
    client.query_one(&statement, params).await.map_err(pg)
}

/// The row `sql` returns, if any (an error if it returns several).
pub(super) async fn query_opt(
    client: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, JournalError> {
    let statement = client.prepare_cached(sql).await.map_err(pg)?;
    client.query_opt(&statement, params).await.map_err(pg)
}

/// Runs `sql`; how many rows it changed.
pub(super) async fn execute(
    client: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<u64, JournalError> {
    let statement = client.prepare_cached(sql).await.map_err(pg)?;
    client.execute(&statement, params).await.map_err(pg)
}
