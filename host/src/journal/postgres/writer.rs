//! The writer task: queued writes drained into one transaction each round (group commit).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{GenericClient, Pool, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::journal::{AppendResult, ExpectedVersion, JournalError, NewEvent, Op, ParkedEvent};

use super::batch::{Applied, BatchState};
use super::listen::CHANNEL;
use super::{PgJournal, Shared, cached, failure, lifecycle, pg, pool_error, to_i64};

/// Tries of a write transaction whose connection broke before it committed.
const WRITE_ATTEMPTS: usize = 3;

/// What the writer answers a request: where an append's events are, `None` for other writes.
type Reply = Result<Option<AppendResult>, JournalError>;

pub(super) struct Request {
    op: Op,
    reply: oneshot::Sender<Reply>,
}

impl PgJournal {
    fn queue(&self, op: Op) -> Result<oneshot::Receiver<Reply>, JournalError> {
        let (reply, outcome) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or(JournalError::Closed)?;
        match requests.try_send(Request { op, reply }) {
            Ok(()) => Ok(outcome),
            Err(mpsc::error::TrySendError::Full(_)) => Err(JournalError::Overloaded),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(JournalError::Closed),
        }
    }

    pub(in crate::journal) fn queued_writes(&self) -> usize {
        self.requests
            .as_ref()
            .map_or(0, |requests| requests.max_capacity() - requests.capacity())
    }

    pub(in crate::journal) async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, JournalError> {
        appended(self.queue_append(stream, expected, events)?.await)
    }

    pub(in crate::journal) fn append_blocking(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, JournalError> {
        appended(self.queue_append(stream, expected, events)?.blocking_recv())
    }

    /// Queues an append of `events` to `stream`, stamped with its commit's time.
    fn queue_append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<oneshot::Receiver<Reply>, JournalError> {
        self.queue(Op::Append {
            stream: stream.to_owned(),
            expected,
            events,
            recorded_at: None,
        })
    }

    pub(in crate::journal) async fn write_op(&self, op: Op) -> Result<(), JournalError> {
        self.queue(op)?
            .await
            .map_err(|_| JournalError::Closed)?
            .map(|_| ())
    }
}

/// Where an append's events are, from its reply (or `Closed` if the writer dropped it).
fn appended(reply: Result<Reply, oneshot::error::RecvError>) -> Result<AppendResult, JournalError> {
    let result = reply.map_err(|_| JournalError::Closed)??;
    Ok(result.expect("an append reports where its events are"))
}

/// The writer task: drains queued requests into one transaction each round (group commit),
/// at most `max_batch` requests and `max_bytes` of them (a single larger request goes alone).
pub(super) async fn write(
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
pub(super) struct BatchLimits {
    pub(super) requests: usize,
    pub(super) bytes: usize,
    pub(super) keep_snapshots: usize,
    pub(super) deadline: Duration,
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
) -> Result<Vec<Reply>, failure::Batch> {
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

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
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
