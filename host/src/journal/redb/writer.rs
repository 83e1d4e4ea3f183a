//! The writer: group commit of queued requests, one commit at a time.
//!
//! The writer thread blocks on its queue while idle (after a batch of several requests it first
//! spins briefly, see [`next_request`]), then drains whatever has queued up (at
//! most `max_batch_appends` requests) into one write transaction, commits it durably,
//! publishes the new head and answers every request, those of async tasks from their own
//! runtime (see [`Answers::send_from_runtimes`]). Under load one commit (one fsync) thus
//! serves many requests. A lone appender may commit its request on its own thread instead, in
//! the same way, when the writer is idle (nothing queued, no commit running): waking the
//! writer thread and then being woken by it costs two thread wake-ups, more than the commit
//! itself when fsync is fast. Either way, commits are made one at a time (see [`Claim`]).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::Durability;
use tokio::sync::watch;
use tokio::task;

use super::batch::{Appended, Batch};
use super::request::{Answers, Request};
use super::store;
use super::{JournalError, JournalStats, SharedDb};

/// State the writer publishes to readers of the journal.
pub(super) struct Shared {
    /// The last committed global position.
    pub(super) head: watch::Sender<u64>,
    /// The storage fault that stopped the writer, once one happened (see `commit`).
    pub(super) fault: watch::Sender<Option<Arc<str>>>,
    commits: AtomicU64,
    appends: AtomicU64,
    events: AtomicU64,
}

impl Shared {
    pub(super) fn new(head: u64) -> Self {
        Self {
            head: watch::Sender::new(head),
            fault: watch::Sender::new(None),
            commits: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            events: AtomicU64::new(0),
        }
    }

    pub(super) fn stats(&self) -> JournalStats {
        JournalStats {
            commits: self.commits.load(Ordering::Relaxed),
            appends: self.appends.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
        }
    }
}

/// The writer's side of the journal.
pub(super) struct Writer {
    pub(super) db: SharedDb,
    pub(super) shared: Arc<Shared>,
    pub(super) max_batch: usize,
    pub(super) keep_snapshots: usize,
    /// Events the memtable holds before a commit moves it into the tables (see `memtable`).
    pub(super) flush_events: usize,
    /// Ids a commit moves of a merge of the id index's runs (see `id_runs`).
    pub(super) merge_step: usize,
    /// Held by whoever is committing: the writer thread or a caller (see [`Claim`]). It holds
    /// the async task whose request alone made the last commit, if one did.
    pub(super) committing: Mutex<Option<task::Id>>,
    /// Requests sent to the writer thread that it has not taken off its queue yet.
    pub(super) queued: AtomicUsize,
}

/// The right to commit: only its holder changes the tables, the memtable and the head, so
/// commits are made one at a time and each sees the one before it.
pub(super) struct Claim<'w> {
    writer: &'w Writer,
    last_alone: MutexGuard<'w, Option<task::Id>>,
}

impl Claim<'_> {
    /// Applies `batch` in order in one transaction and commits it (see
    /// [`Writer::commit_claimed`]); the answers are for the caller to send, after the claim
    /// is let go.
    ///
    /// A commit that panics is a fault: whether it reached the file, the memtable and the
    /// head is unknown, so its requests are answered so and writes stop, as after a storage
    /// error, rather than leaving the writer thread dead and every later append `Closed`.
    #[must_use = "dropped answers are sent on this thread"]
    pub(super) fn commit(mut self, batch: Vec<Request>) -> Answers {
        *self.last_alone = match batch.as_slice() {
            [alone] => alone.task,
            _ => None,
        };
        let writer = self.writer;
        match std::panic::catch_unwind(AssertUnwindSafe(|| writer.commit_claimed(&batch))) {
            Ok(outcomes) => Answers::new(batch, outcomes),
            Err(_) => {
                let fault = writer.fault_on_panic();
                Answers::new(batch, std::iter::repeat_with(|| Err(fault.clone())))
            }
        }
    }
}

impl Writer {
    /// Starts the writer thread with a queue of `capacity` requests; it stops once every
    /// sender is dropped and the queue is drained.
    pub(super) fn spawn(
        self: &Arc<Self>,
        capacity: usize,
    ) -> std::io::Result<(SyncSender<Request>, JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let writer = self.clone();
        let thread = std::thread::Builder::new()
            .name("journal-writer".to_owned())
            .spawn(move || writer.run(rx))?;
        Ok((tx, thread))
    }

    fn run(&self, requests: Receiver<Request>) {
        // Spinning is of use only while the appenders run on another core.
        let may_spin = std::thread::available_parallelism().is_ok_and(|cores| cores.get() > 1);
        let mut several = false;
        while let Some(first) = next_request(&requests, several && may_spin) {
            // Room for every request queued by now, so the batch is not moved as it grows.
            let queued = self.queued.load(Ordering::Acquire);
            let mut batch = Vec::with_capacity(queued.min(self.max_batch).max(1));
            batch.push(first);
            while batch.len() < self.max_batch {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            several = batch.len() > 1;
            self.commit_taken(batch);
        }
    }

    /// Commits a batch taken off the queue. It leaves the count of queued requests only once
    /// claimed, so no caller commits in place while it waits for the commit running (if any):
    /// that would overtake it.
    fn commit_taken(&self, batch: Vec<Request>) {
        let claim = self.claim();
        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        claim.commit(batch).send_from_runtimes();
    }

    /// The right to commit, once the commit running (if any) is done.
    fn claim(&self) -> Claim<'_> {
        let last_alone = self
            .committing
            .lock()
            .unwrap_or_else(|poisoned| self.fault_after_panic(poisoned));
        Claim {
            writer: self,
            last_alone,
        }
    }

    /// A holder of the claim panicked half way: whether its changes reached the file, the
    /// memtable and the head is unknown, so writes stop as after a storage error (see
    /// [`commit_claimed`](Self::commit_claimed)).
    fn fault_after_panic<'w>(
        &self,
        poisoned: PoisonError<MutexGuard<'w, Option<task::Id>>>,
    ) -> MutexGuard<'w, Option<task::Id>> {
        self.fault_on_panic();
        poisoned.into_inner()
    }

    /// Publishes the fault of a commit that panicked (unless one was published already) and
    /// returns the error for its requests.
    fn fault_on_panic(&self) -> JournalError {
        self.shared.fault.send_if_modified(|fault| {
            let first = fault.is_none();
            if first {
                tracing::error!("a journal commit panicked: stopping writes");
                *fault = Some("a journal commit panicked; its outcome is unknown".into());
            }
            first
        });
        let fault = self.shared.fault.borrow().clone();
        JournalError::Faulted(fault.expect("published above"))
    }

    /// The right to commit if the writer is idle: no request waits in its queue and no commit
    /// is running, so a request committed with it overtakes none already queued.
    /// With `after`, only if that task's request alone made the last commit: a task appending
    /// back to back while no other does, which gathers no batch.
    pub(super) fn claim_if_idle(&self, after: Option<task::Id>) -> Option<Claim<'_>> {
        if self.queued.load(Ordering::Acquire) != 0 {
            return None;
        }
        let last_alone = match self.committing.try_lock() {
            Ok(held) => held,
            Err(TryLockError::Poisoned(poisoned)) => self.fault_after_panic(poisoned),
            Err(TryLockError::WouldBlock) => return None,
        };
        // Again under the claim: a batch the writer thread took meanwhile counts until claimed.
        if self.queued.load(Ordering::Acquire) != 0
            || after.is_some_and(|task| *last_alone != Some(task))
        {
            return None;
        }
        Some(Claim {
            writer: self,
            last_alone,
        })
    }

    /// Applies `batch` in order in one transaction, commits it, publishes the new head and
    /// returns every request's outcome (so none is sent before the commit and the head); for
    /// the holder of the [`Claim`].
    ///
    /// A storage error is a fault: redb refuses every later write until the file is reopened,
    /// and whether the failed commit reached the disk is unknown. The writer then stops
    /// writing (fail-stop): this batch gets the error, every later request
    /// [`JournalError::Faulted`], and the fault is published for the host to report and exit
    /// on, so a restart reopens (and if need be repairs) the file.
    fn commit_claimed(&self, batch: &[Request]) -> Vec<RequestResult> {
        let all = |outcome: Result<_, JournalError>| vec![outcome; batch.len()];
        if let Some(fault) = self.shared.fault.borrow().clone() {
            return all(Err(JournalError::Faulted(fault)));
        }
        let started = Instant::now();
        let outcomes = match self.apply(batch) {
            Ok(outcomes) => outcomes,
            Err(error) => {
                tracing::error!(%error, requests = batch.len(), "journal commit failed: stopping writes");
                self.shared
                    .fault
                    .send_replace(Some(error.to_string().into()));
                return all(Err(error));
            }
        };
        let (mut appends, mut events) = (0, 0);
        for (request, outcome) in batch.iter().zip(&outcomes.results) {
            if let Ok(Some(Appended::Written(_))) = outcome {
                appends += 1;
                events += request.event_count();
            }
        }
        if let Some(head) = outcomes.committed_head {
            self.shared.commits.fetch_add(1, Ordering::Relaxed);
            self.shared.appends.fetch_add(appends, Ordering::Relaxed);
            self.shared.events.fetch_add(events, Ordering::Relaxed);
            metrics::counter!("foldhost_appends_total").increment(appends);
            metrics::counter!("foldhost_events_appended_total").increment(events);
            metrics::histogram!("foldhost_commit_batch_size").record(batch.len() as f64);
            metrics::histogram!("foldhost_commit_seconds").record(started.elapsed().as_secs_f64());
            // Before answering, so an acknowledged append is never ahead of the published head.
            self.shared.head.send_if_modified(|current| {
                let moved = *current != head;
                *current = head;
                moved
            });
        }
        outcomes.results
    }

    /// Runs `batch` against one write transaction; commits it if anything was written.
    fn apply(&self, batch: &[Request]) -> Result<Applied, JournalError> {
        let db = self.db.get();
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut results = Vec::with_capacity(batch.len());
        let finished = {
            // Only the holder of the claim (or a scavenge, which holds the write transaction
            // meanwhile) changes the memtable, so it stays as read here until the commit below.
            let memtable = self.db.memtable();
            // After the published head: the last position used, counting any a scavenge
            // removed from the log's end (as `reader::head_position` reads it on open). Only a
            // commit that succeeded moves it; after a failed one nothing is written until the
            // file is reopened.
            let next_position = *self.shared.head.borrow() + 1;
            let mut tables = Batch::open(
                &txn,
                &memtable,
                next_position,
                now_millis(),
                self.keep_snapshots,
                (
                    batch.len(),
                    batch
                        .iter()
                        .map(|request| request.event_count() as usize)
                        .sum(),
                ),
            )?;
            for request in batch {
                match request.apply(&mut tables) {
                    // Possibly half-applied: drop the whole transaction.
                    Err(error @ JournalError::Storage(_)) => return Err(error),
                    outcome => results.push(outcome),
                }
            }
            tables.finish(self.flush_events, self.merge_step)?
        };
        let head = finished.head;
        if !finished.wrote {
            txn.abort()?;
        } else if finished.flushed {
            // Held across the commit: no reader pairs the memtable with a transaction
            // from the other side of the flush (see `SharedDb::begin_read`).
            let mut memtable = self.db.memtable_mut();
            store::commit(&db, txn)?;
            // Absorbed first, so that clearing raises the bound of the ids in the table over
            // this batch's too.
            memtable.absorb(finished.appended, head);
            memtable.clear(head);
        } else {
            // A step of the id filter's scan, read from the table before this commit, is held
            // across it too: a scavenge moving the memtable into the table in between would
            // put ids there that neither that step nor the filter holds. So is a change of a
            // stream's lifecycle record: readers take those from their transaction, and the
            // new record with the old memtable's head is a stream that never was.
            let scanned = finished.appended.scanned.is_some();
            let held = (scanned || finished.lifecycles_changed).then(|| self.db.memtable_mut());
            store::commit(&db, txn)?;
            #[cfg(test)]
            tests::after_commit(&self.db);
            let mut memtable = held.unwrap_or_else(|| self.db.memtable_mut());
            memtable.absorb(finished.appended, head);
        }
        Ok(Applied {
            results,
            committed_head: finished.wrote.then_some(head),
        })
    }
}

/// The outcome of one request of a batch.
type RequestResult = Result<Option<Appended>, JournalError>;

/// The outcome of each request of a batch.
struct Applied {
    results: Vec<RequestResult>,
    /// The head after the commit, if one was needed.
    committed_head: Option<u64>,
}

/// How long the writer thread looks for the next request before it sleeps on its queue, after
/// a batch of several requests (see [`next_request`]).
const SPIN: Duration = Duration::from_micros(40);

/// The next request off the queue, `None` once every sender is gone. With `spin`, it first
/// looks for one for up to [`SPIN`]: after a batch of several requests their appenders are
/// about to send their next ones, and a sleeping thread takes longer to wake than that (a
/// futex wake-up of an idle core, tens of µs on these VMs). Caught awake, the next batch
/// starts as soon as a request arrives, while the rest of the appenders are still being
/// answered; they form the batch after, overlapping its commit.
fn next_request(requests: &Receiver<Request>, spin: bool) -> Option<Request> {
    if spin {
        let started = Instant::now();
        while started.elapsed() < SPIN {
            match requests.try_recv() {
                Ok(request) => return Some(request),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
    }
    requests.recv().ok()
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::journal::redb::request::Outcome;
    use crate::journal::{AppendResult, ExpectedVersion, NewEvent, ReadLimit};

    /// What a test puts between a commit and the writer taking it in.
    type Hook = Box<dyn FnOnce(&SharedDb)>;

    thread_local! {
        /// Run once on the committing thread between a commit that moved nothing into the
        /// tables and the writer taking it in: where a test puts what may come in between.
        static AFTER_COMMIT: std::cell::RefCell<Option<Hook>> = const { std::cell::RefCell::new(None) };
    }

    pub(super) fn after_commit(db: &SharedDb) {
        if let Some(hook) = AFTER_COMMIT.with_borrow_mut(Option::take) {
            hook(db);
        }
    }

    impl Writer {
        /// Commits `batch` once the commit running (if any) is done, and answers it here.
        fn commit(&self, batch: Vec<Request>) {
            self.claim().commit(batch).send();
        }
    }

    fn writer(dir: &tempfile::TempDir) -> Writer {
        writer_at(&dir.path().join("journal.redb"), 100)
    }

    /// A writer of the file at `path` that flushes every 64 events and moves `merge_step`
    /// ids a commit of a merge of the id index's runs.
    pub(in crate::journal::redb) fn writer_at(path: &std::path::Path, merge_step: usize) -> Writer {
        let db = store::open(path, crate::journal::DEFAULT_CACHE_BYTES).unwrap();
        let db = SharedDb::new(db).unwrap();
        let head = crate::journal::redb::reader::head_position(&db).unwrap();
        Writer {
            db,
            shared: Arc::new(Shared::new(head)),
            max_batch: 16,
            keep_snapshots: 4,
            flush_events: 64,
            merge_step,
            committing: Mutex::new(None),
            queued: AtomicUsize::new(0),
        }
    }

    fn event() -> NewEvent {
        NewEvent::json("Happened", &serde_json::json!({}))
    }

    fn append(
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> (Request, Outcome<AppendResult>) {
        Request::append("s".to_owned(), expected, events)
    }

    fn result(version: u64, position: u64) -> AppendResult {
        AppendResult {
            first_version: version,
            last_version: version,
            first_position: position,
            last_position: position,
        }
    }

    #[test]
    fn appends_in_one_batch_are_checked_in_order_against_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        let refused = event();
        let (first, mut first_outcome) = append(ExpectedVersion::NoStream, vec![event()]);
        let (second, mut second_outcome) = append(ExpectedVersion::NoStream, vec![refused.clone()]);
        let (third, mut third_outcome) = append(ExpectedVersion::Exact(1), vec![event()]);
        writer.commit(vec![first, second, third]);

        assert_eq!(first_outcome.try_recv().unwrap().unwrap(), result(1, 1));
        match second_outcome.try_recv().unwrap() {
            Err(JournalError::Conflict { current, .. }) => assert_eq!(current, Some(1)),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(third_outcome.try_recv().unwrap().unwrap(), result(2, 2));
        let stats = writer.shared.stats();
        assert_eq!((stats.commits, stats.appends, stats.events), (1, 2, 2));
        assert_eq!(*writer.shared.head.borrow(), 2);

        // The refused append left no trace: its event id is still free.
        let (again, mut again_outcome) = append(ExpectedVersion::Exact(2), vec![refused]);
        writer.commit(vec![again]);
        assert_eq!(again_outcome.try_recv().unwrap().unwrap(), result(3, 3));
    }

    /// A batch reads the lifecycle records once it needs them and skips the search while
    /// there are none: a deletion earlier in the same batch still counts for the appends after
    /// it, and a soft deletion restarts the stream's expected version.
    #[test]
    fn a_deletion_counts_for_the_appends_after_it_in_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        let delete = |stream: &str, hard| {
            Request::done(crate::journal::Op::DeleteStream {
                stream: stream.to_owned(),
                expected: ExpectedVersion::Any,
                hard,
            })
        };
        let into =
            |stream: &str| Request::append(stream.to_owned(), ExpectedVersion::Any, vec![event()]);
        let (opened, mut opened_outcome) = append(ExpectedVersion::NoStream, vec![event()]);
        let (doomed, _) = into("gone");
        let (gone, mut gone_outcome) = delete("gone", true);
        let (into_gone, mut into_gone_outcome) = into("gone");
        let (soft, mut soft_outcome) = delete("s", false);
        let (reopened, mut reopened_outcome) = append(ExpectedVersion::NoStream, vec![event()]);
        writer.commit(vec![opened, doomed, gone, into_gone, soft, reopened]);

        assert_eq!(opened_outcome.try_recv().unwrap().unwrap(), result(1, 1));
        gone_outcome.try_recv().unwrap().unwrap();
        match into_gone_outcome.try_recv().unwrap() {
            Err(JournalError::StreamDeleted(stream)) => assert_eq!(stream, "gone"),
            other => panic!("expected the stream deleted, got {other:?}"),
        }
        soft_outcome.try_recv().unwrap().unwrap();
        // Versions continue after a soft delete.
        assert_eq!(reopened_outcome.try_recv().unwrap().unwrap(), result(2, 3));
    }

    /// A commit that panics (here after its transaction committed, so its event is stored)
    /// stops writes as a storage fault does: its appender learns the outcome is unknown, the
    /// fault is published for the host to exit on, and later appends are refused as faulted
    /// rather than finding the writer gone.
    #[test]
    fn a_commit_that_panics_is_a_fault_not_a_dead_writer() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        AFTER_COMMIT.with_borrow_mut(|hook| {
            *hook = Some(Box::new(|_: &SharedDb| panic!("injected into a commit")));
        });
        let (panicked, mut panicked_outcome) = append(ExpectedVersion::NoStream, vec![event()]);
        writer.commit(vec![panicked]);
        match panicked_outcome.try_recv().unwrap() {
            Err(JournalError::Faulted(fault)) => assert!(fault.contains("unknown"), "{fault}"),
            other => panic!("expected a fault, got {other:?}"),
        }
        assert!(writer.shared.fault.borrow().is_some());
        let (later, mut later_outcome) = append(ExpectedVersion::Any, vec![event()]);
        writer.commit(vec![later]);
        assert!(matches!(
            later_outcome.try_recv().unwrap(),
            Err(JournalError::Faulted(_))
        ));
    }

    #[test]
    fn a_retry_in_the_same_batch_gets_the_same_result() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        let events = vec![event(), event()];
        let (original, mut original_outcome) = append(ExpectedVersion::NoStream, events.clone());
        let (retry, mut retry_outcome) = append(ExpectedVersion::NoStream, events);
        writer.commit(vec![original, retry]);
        let original = original_outcome.try_recv().unwrap().unwrap();
        assert_eq!(retry_outcome.try_recv().unwrap().unwrap(), original);
        assert_eq!(writer.shared.stats().events, 2);
    }

    #[test]
    fn the_memtable_moves_into_the_tables_when_full() {
        use redb::{ReadableDatabase, ReadableTable};

        use crate::journal::redb::memtable::INDEXED_THROUGH_KEY;
        use crate::journal::redb::store::{META, STREAM_RUN_BLOCKS};
        use crate::journal::redb::{reader, runs};

        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        let db = writer.db.clone();
        // (runs in the table's blocks, the position they index through, events in the memtable)
        let sizes = || {
            let txn = db.get().begin_read().unwrap();
            let blocks = txn.open_table(STREAM_RUN_BLOCKS).unwrap();
            let runs: u64 = (blocks.iter().unwrap())
                .map(|entry| {
                    let (key, block) = entry.unwrap();
                    let (stream, version) = key.value();
                    runs::decode(stream, version, block.value()).unwrap().len() as u64
                })
                .sum();
            let meta = txn.open_table(META).unwrap();
            let through = meta.get(INDEXED_THROUGH_KEY).unwrap().map(|v| v.value());
            (runs, through, db.memtable().len())
        };
        let events = |count| (0..count).map(|_| event()).collect();
        let full = writer.flush_events as u64;

        // Consecutive appends of one stream are one run.
        let singles = (1..full).map(|_| append(ExpectedVersion::Any, events(1)).0);
        writer.commit(singles.collect());
        assert_eq!(sizes(), (0, None, writer.flush_events - 1));
        let (other, _) = Request::append("t".to_owned(), ExpectedVersion::Any, events(1));
        writer.commit(vec![append(ExpectedVersion::Any, events(3)).0, other]);
        assert_eq!(sizes(), (3, Some(full + 3), 0));
        writer.commit(vec![append(ExpectedVersion::Any, events(2)).0]);
        assert_eq!(sizes(), (3, Some(full + 3), 2));

        // A stream reads the same across the table and the memtable, page by page, from
        // inside a run.
        let versions = |from, limit| -> Vec<u64> {
            let limit = ReadLimit::events(limit);
            let events = reader::read_stream(&writer.db, "s", from, limit).unwrap();
            events.iter().map(|event| event.version).collect()
        };
        assert_eq!(versions(1, usize::MAX), (1..=full + 4).collect::<Vec<_>>());
        assert_eq!(versions(full - 1, 3), [full - 1, full, full + 1]);
        assert_eq!(versions(full + 1, 3), [full + 1, full + 2, full + 3]);
        assert_eq!(versions(full + 4, 3), [full + 4]);
        assert_eq!(versions(full + 5, 3), Vec::<u64>::new());
        let all = ReadLimit::events(9);
        assert_eq!(
            reader::read_stream(&writer.db, "t", 1, all).unwrap().len(),
            1
        );
        assert_eq!(
            reader::stream_version(&writer.db, "s").unwrap(),
            Some(full + 4)
        );

        // The next flush adds interleaved runs of "s" and "t", each to its stream's last block.
        let pairs = (full - 2) / 2;
        let interleaved = (0..pairs).flat_map(|_| {
            let (other, _) = Request::append("t".to_owned(), ExpectedVersion::Any, events(1));
            [append(ExpectedVersion::Any, events(1)).0, other]
        });
        writer.commit(interleaved.collect());
        assert_eq!(sizes(), (3 + 1 + 2 * pairs, Some(2 * full + 3), 0));
        assert_eq!(
            versions(1, usize::MAX),
            (1..=full + 4 + pairs).collect::<Vec<_>>()
        );
        assert_eq!(versions(full + 3, 3), [full + 3, full + 4, full + 5]);
        let all = ReadLimit::events(usize::MAX);
        let t = reader::read_stream(&writer.db, "t", 1, all).unwrap();
        assert_eq!(t.len() as u64, 1 + pairs);
    }

    /// A new id above every id in the event-id table is taken as new without searching the
    /// table, so a retry must still be recognised wherever its id is: the table's largest id
    /// (the bound), an id below it, after the flush that moved them there and after a reopen.
    #[test]
    fn a_retry_of_events_already_in_the_tables_is_recognised() {
        use crate::journal::redb::reader;

        let dir = tempfile::tempdir().unwrap();
        let with_id = |id: u128| NewEvent {
            id: uuid::Uuid::from_u128(id),
            ..event()
        };
        // Out of time order, as random ids are: the largest first. Time-ordered ids
        // (`event()`) stay below it: their top bits are the time in ms.
        let (largest, older) = (with_id(u128::MAX / 2), with_id(7));
        let retry = |writer: &Writer, event: &NewEvent| {
            let (request, mut outcome) = append(ExpectedVersion::Any, vec![event.clone()]);
            writer.commit(vec![request]);
            outcome.try_recv().unwrap().unwrap()
        };
        let writer = writer(&dir);
        let first = retry(&writer, &largest);
        let second = retry(&writer, &older);
        let fill = (0..writer.flush_events).map(|_| append(ExpectedVersion::Any, vec![event()]));
        writer.commit(fill.map(|(request, _)| request).collect());
        assert_eq!(writer.db.memtable().len(), 0, "moved into the tables");
        let head = reader::head_position(&writer.db).unwrap();
        let recognised = |writer: &Writer| {
            assert_eq!(retry(writer, &largest), first);
            assert_eq!(retry(writer, &older), second);
            let after = reader::head_position(&writer.db).unwrap();
            assert_eq!(after, head, "the retries wrote nothing");
        };
        recognised(&writer);
        drop(writer);
        let writer = self::writer(&dir);
        recognised(&writer);
        let above = retry(&writer, &with_id(u128::MAX / 2 + 1));
        assert_eq!(
            above.first_position,
            head + 1,
            "a new id above the bound is written"
        );

        // Ids below the bound when flushed (this one, and the time-ordered ones) go into the
        // table one by one, not at its end.
        let below = with_id(8);
        let third = retry(&writer, &below);
        let fill = (0..writer.flush_events).map(|_| append(ExpectedVersion::Any, vec![event()]));
        writer.commit(fill.map(|(request, _)| request).collect());
        assert_eq!(writer.db.memtable().len(), 0, "moved into the tables");
        drop(writer);
        let writer = self::writer(&dir);
        let head = reader::head_position(&writer.db).unwrap();
        assert_eq!(retry(&writer, &below), third);
        assert_eq!(retry(&writer, &with_id(u128::MAX / 2 + 1)), above);
        assert_eq!(reader::head_position(&writer.db).unwrap(), head);
    }

    /// The filter of the event-id table's ids is made by a scan in steps, one per commit that
    /// needs it, while flushes go on moving ids into the table: those flushed by the commit
    /// of the first step, below where the scan has come and beyond it must all be in the
    /// filter once it is made, or a retry of theirs would be written again.
    #[test]
    fn ids_flushed_while_the_filter_is_made_are_recognised() {
        use crate::journal::redb::id_filter::SCAN_STEP;
        use crate::journal::redb::reader;

        let dir = tempfile::tempdir().unwrap();
        let random = || -> Vec<NewEvent> {
            let event = || NewEvent {
                id: uuid::Uuid::new_v4(),
                ..event()
            };
            (0..64).map(|_| event()).collect()
        };
        let append = |writer: &Writer, events: &[NewEvent]| {
            let (request, mut outcome) = append(ExpectedVersion::Any, events.to_vec());
            writer.commit(vec![request]);
            outcome.try_recv().unwrap().unwrap()
        };
        let mut appended = Vec::new();
        // A table of more than two steps of the scan; each commit flushes (64 events).
        let writer = writer(&dir);
        for _ in 0..2 * SCAN_STEP / 64 + 1 {
            let events = random();
            appended.push((append(&writer, &events), events));
        }
        drop(writer);
        // Reopened, the filter is not made: each commit takes a step and flushes.
        let writer = self::writer(&dir);
        let mut steps = 0;
        while writer.db.memtable().table_ids().scanning() {
            let events = random();
            appended.push((append(&writer, &events), events));
            assert_eq!(writer.db.memtable().len(), 0, "flushed");
            steps += 1;
        }
        assert_eq!(steps, 3, "steps of the scan");
        let head = reader::head_position(&writer.db).unwrap();
        for (result, events) in &appended {
            assert_eq!(
                append(&writer, events),
                *result,
                "a retry answers where they are"
            );
        }
        assert_eq!(
            reader::head_position(&writer.db).unwrap(),
            head,
            "the retries wrote nothing"
        );
    }

    /// A scavenge moves the memtable into the tables in a transaction of its own, which it
    /// begins as soon as the writer's commit ends. Should it come between a commit that took
    /// the first step of the id filter's scan and the writer taking that step in, the ids it
    /// moved would be in the table yet not in the filter (which took no ids before the scan
    /// started, and whose scan read the table before they came): a retry of theirs would be
    /// written again. The writer holds the memtable across such a commit, so it cannot.
    #[test]
    fn a_scavenge_cannot_flush_between_a_scan_step_and_its_taking_in() {
        use crate::journal::redb::memtable::Appends;
        use crate::journal::redb::reader;

        let dir = tempfile::tempdir().unwrap();
        let with_id = |id: u128| NewEvent {
            id: uuid::Uuid::from_u128(id),
            ..event()
        };
        let append = |writer: &Writer, events: Vec<NewEvent>| {
            let (request, mut outcome) = append(ExpectedVersion::Any, events);
            writer.commit(vec![request]);
            outcome.try_recv().unwrap().unwrap()
        };
        // Small ids in the table, then reopened: the filter's scan has not started.
        let writer = writer(&dir);
        let small = (1..=writer.flush_events as u128)
            .map(|n| with_id(2 * n))
            .collect();
        append(&writer, small);
        drop(writer);
        let writer = self::writer(&dir);
        // Time-ordered ids above the table's largest: new without a search, held in the
        // memtable.
        let held: Vec<NewEvent> = (0..8).map(|_| event()).collect();
        let result = append(&writer, held.clone());
        assert!(writer.db.memtable().table_ids().scanning());
        // A small id not in the table needs a search: its commit takes the scan's first
        // step. Right after it, a scavenge tries to move the memtable into the tables.
        AFTER_COMMIT.with_borrow_mut(|hook| {
            *hook = Some(Box::new(|db: &SharedDb| {
                let Ok(mut memtable) = db.memtable.try_write() else {
                    return; // Held by the writer: the scavenge waits for it.
                };
                let database = db.get();
                let txn = database.begin_write().unwrap();
                let through = memtable.through();
                memtable.write(&Appends::default(), &txn, through).unwrap();
                store::commit(&database, txn).unwrap();
                memtable.clear(through);
            }))
        });
        append(&writer, vec![with_id(3)]);
        assert!(!writer.db.memtable().table_ids().scanning(), "made");
        let head = reader::head_position(&writer.db).unwrap();
        assert_eq!(
            append(&writer, held),
            result,
            "a retry answers where they are"
        );
        assert_eq!(reader::head_position(&writer.db).unwrap(), head);
    }

    /// A commit that changes a stream's lifecycle record (here: recreating a soft-deleted
    /// stream) is taken in before any reader pairs that record with the memtable from before
    /// it: readers see the stream deleted, or recreated with its new event, never between.
    #[test]
    fn readers_never_pair_a_new_lifecycle_with_the_old_memtable() {
        use crate::journal::redb::reader;

        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        writer.commit(vec![append(ExpectedVersion::NoStream, vec![event(); 3]).0]);
        let (delete, mut deleted) = Request::done(crate::journal::Op::DeleteStream {
            stream: "s".to_owned(),
            expected: ExpectedVersion::Any,
            hard: false,
        });
        writer.commit(vec![delete]);
        deleted.try_recv().unwrap().unwrap();
        let seen = Arc::new(Mutex::new(None));
        let saw = seen.clone();
        AFTER_COMMIT.with_borrow_mut(|hook| {
            *hook = Some(Box::new(move |db: &SharedDb| {
                let Ok(memtable) = db.memtable.try_read() else {
                    return; // Held by the writer: readers wait for the new memtable.
                };
                drop(memtable);
                let window = reader::stream_window(db, "s").unwrap();
                let events = reader::read_stream(db, "s", 1, ReadLimit::events(10)).unwrap();
                let versions: Vec<u64> = events.iter().map(|event| event.version).collect();
                *saw.lock().unwrap() = Some((window.current, versions));
            }))
        });
        let (recreate, mut recreated) = append(ExpectedVersion::NoStream, vec![event()]);
        writer.commit(vec![recreate]);
        assert_eq!(recreated.try_recv().unwrap().unwrap(), result(4, 4));
        if let Some(seen) = seen.lock().unwrap().take() {
            assert!(
                [(None, vec![]), (Some(4), vec![4])].contains(&seen),
                "a reader saw {seen:?}"
            );
        }
        let window = reader::stream_window(&writer.db, "s").unwrap();
        assert_eq!(window.current, Some(4));
    }

    /// A batch whose records outgrow what it holds back writes them into the log part way,
    /// and every record reaches it, in order, with the rest.
    #[test]
    fn a_batch_larger_than_its_held_records_reaches_the_log_whole() {
        use crate::journal::redb::reader;

        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        let large = |n: u8| NewEvent {
            data: vec![n; 100 << 10],
            ..event()
        };
        let on = |stream: &str, events: Vec<NewEvent>| {
            Request::append(stream.to_owned(), ExpectedVersion::Any, events).0
        };
        let first: Vec<NewEvent> = (0..6).map(large).collect();
        let second: Vec<NewEvent> = (6..12).map(large).collect();
        let last = vec![event(), event()];
        let (retried, mut retried_outcome) =
            Request::append("s".to_owned(), ExpectedVersion::Any, first.clone());
        writer.commit(vec![
            on("s", first.clone()),
            on("t", second.clone()),
            on("s", last.clone()),
            retried,
        ]);
        assert_eq!(
            retried_outcome.try_recv().unwrap().unwrap().first_position,
            1
        );
        let log = reader::read_all(&writer.db, 1, ReadLimit::events(usize::MAX)).unwrap();
        let ids: Vec<_> = log.iter().map(|event| event.id).collect();
        let sent: Vec<_> = (first.iter().chain(&second).chain(&last))
            .map(|event| event.id)
            .collect();
        assert_eq!(ids, sent);
        assert_eq!(log[11].data.len(), 100 << 10);
        assert_eq!(writer.shared.stats().events, 14);
    }

    /// Readers running while the writer commits, and moves the memtable into the tables every
    /// few commits, see every event committed before they began, once.
    #[test]
    fn reads_during_flushes_miss_nothing_committed_before_them() {
        use std::sync::atomic::AtomicBool;

        use crate::journal::redb::reader;

        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        let (db, shared) = (writer.db.clone(), writer.shared.clone());
        let done = AtomicBool::new(false);
        let read = || {
            let mut reads = 0;
            while !done.load(Ordering::Acquire) {
                // One stream: its versions are the positions.
                let before = *shared.head.borrow();
                let all = ReadLimit::events(usize::MAX);
                let stream = reader::read_stream(&db, "s", 1, all).unwrap();
                let versions: Vec<u64> = stream.iter().map(|event| event.version).collect();
                assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
                assert!(
                    versions.len() as u64 >= before,
                    "{versions:?} before {before}"
                );
                let log = reader::read_all(&db, 1, all).unwrap();
                let positions: Vec<u64> = log.iter().map(|event| event.position).collect();
                assert_eq!(positions, (1..=positions.len() as u64).collect::<Vec<_>>());
                assert!(positions.len() as u64 >= before);
                let version = reader::stream_version(&db, "s").unwrap();
                assert!(version.unwrap_or(0) >= before);
                reads += 1;
            }
            reads
        };
        std::thread::scope(|scope| {
            let readers = [scope.spawn(read), scope.spawn(read)];
            for _ in 0..300 {
                let (request, _) = append(ExpectedVersion::Any, vec![event(), event()]);
                writer.commit(vec![request]);
            }
            done.store(true, Ordering::Release);
            for reader in readers {
                assert!(reader.join().unwrap() > 0);
            }
        });
        assert_eq!(writer.shared.stats().events, 600);
    }

    /// A caller may commit in place only while the writer is idle: no request waits for the
    /// writer thread (it would be overtaken) and no commit is running; an async task only
    /// right after its own request alone made the last commit.
    #[test]
    fn only_an_idle_writer_lets_a_caller_commit_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        let claim = writer.claim_if_idle(None).expect("idle");
        assert!(writer.claim_if_idle(None).is_none(), "a commit is running");
        drop(claim);
        writer.queued.fetch_add(1, Ordering::AcqRel);
        assert!(writer.claim_if_idle(None).is_none(), "a request is queued");
        writer.queued.fetch_sub(1, Ordering::AcqRel);

        // Requests made by two tasks, a and b.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let from_task = || {
            runtime
                .block_on(runtime.spawn(async {
                    let request = || append(ExpectedVersion::Any, vec![event()]).0;
                    (tokio::task::id(), [request(), request(), request()])
                }))
                .unwrap()
        };
        let ((a, [a1, a2, a3]), (b, [b1, ..])) = (from_task(), from_task());
        assert!(
            writer.claim_if_idle(Some(a)).is_none(),
            "no commit of a's yet"
        );
        writer.commit(vec![a1]);
        assert!(
            writer.claim_if_idle(Some(b)).is_none(),
            "the last commit was a's"
        );
        writer
            .claim_if_idle(Some(a))
            .expect("a appends back to back")
            .commit(vec![a2])
            .send();
        writer.commit(vec![b1, a3]);
        assert!(
            writer.claim_if_idle(Some(a)).is_none(),
            "a's last request was batched"
        );
        assert!(writer.claim_if_idle(None).is_some(), "a thread may");
        assert_eq!(*writer.shared.head.borrow(), 4);
    }

    /// A batch the writer thread took off its queue counts as queued until it is claimed, so
    /// a caller finding the writer idle cannot commit ahead of it.
    #[test]
    fn a_taken_batch_counts_as_queued_until_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        let running = writer.claim_if_idle(None).expect("idle");
        let (request, mut outcome) = append(ExpectedVersion::Any, vec![event()]);
        writer.queued.fetch_add(1, Ordering::AcqRel);
        std::thread::scope(|scope| {
            let taken = scope.spawn(|| writer.commit_taken(vec![request]));
            // Room for the writer thread to reach the claim; the count must hold meanwhile.
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(writer.queued.load(Ordering::Acquire), 1);
            drop(running);
            taken.join().unwrap();
        });
        assert_eq!(outcome.try_recv().unwrap().unwrap(), result(1, 1));
        assert_eq!(writer.queued.load(Ordering::Acquire), 0);
    }

    /// A panic while holding the claim leaves it unknown what reached the file, the memtable
    /// and the head: every later write is refused as after a storage error, in place or not.
    #[test]
    fn a_commit_that_panicked_stops_writes() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        std::thread::scope(|scope| {
            let panicked = scope.spawn(|| {
                let _claim = writer.claim_if_idle(None).expect("idle");
                panic!("a bug half way through a commit");
            });
            assert!(panicked.join().is_err());
        });

        let (request, mut outcome) = append(ExpectedVersion::Any, vec![event()]);
        writer
            .claim_if_idle(None)
            .expect("idle")
            .commit(vec![request])
            .send();
        assert!(matches!(
            outcome.try_recv().unwrap(),
            Err(JournalError::Faulted(_))
        ));
        let (request, mut outcome) = append(ExpectedVersion::Any, vec![event()]);
        writer.commit(vec![request]);
        assert!(matches!(
            outcome.try_recv().unwrap(),
            Err(JournalError::Faulted(_))
        ));
        assert!(writer.shared.fault.borrow().is_some());
        assert_eq!(*writer.shared.head.borrow(), 0);
    }

    /// A multi-threaded runtime with one worker thread.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap()
    }

    /// An append awaited by a task on `runtime`.
    fn append_on(runtime: &tokio::runtime::Runtime) -> (Request, Outcome<AppendResult>) {
        let made = runtime.spawn(async {
            let (request, outcome) = append(ExpectedVersion::Any, vec![event()]);
            (request.awaited(), outcome)
        });
        runtime.block_on(made).unwrap()
    }

    /// Answers go out from a task spawned on their runtime; one that shut down meanwhile
    /// drops that task, and the answers are sent all the same.
    #[test]
    fn answers_are_sent_even_when_their_runtime_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        let gone = runtime();
        let (request, mut outcome) = append_on(&gone);
        drop(gone);
        writer.claim().commit(vec![request]).send_from_runtimes();
        assert_eq!(outcome.try_recv().unwrap().unwrap(), result(1, 1));
    }

    /// Each runtime's answers are sent by a task of its own, so none waits for the workers
    /// of another runtime in the same batch.
    #[test]
    fn answers_wait_for_no_other_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        let (busy, free) = (runtime(), runtime());
        let (a, a_outcome) = append_on(&busy);
        let (b, b_outcome) = append_on(&free);
        // Blocks the busy runtime's only worker until released.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (blocked, is_blocked) = std::sync::mpsc::channel();
        busy.spawn(async move {
            blocked.send(()).unwrap();
            released.recv().unwrap();
        });
        is_blocked.recv().unwrap();

        writer.claim().commit(vec![a, b]).send_from_runtimes();
        // A bound only so that a broken rule fails instead of hanging.
        let bound = std::time::Duration::from_secs(30);
        let b_answer = free.block_on(async { tokio::time::timeout(bound, b_outcome).await });
        let b_answer = b_answer.expect("b was answered while a's runtime was blocked");
        assert_eq!(b_answer.unwrap().unwrap(), result(2, 2));
        release.send(()).unwrap();
        assert_eq!(busy.block_on(a_outcome).unwrap().unwrap(), result(1, 1));
    }

    /// CPU time this thread has used.
    fn thread_cpu_time() -> std::time::Duration {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec for the call to write.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) },
            0
        );
        std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
    }

    #[test]
    fn a_spinning_writer_still_sleeps_until_a_late_request() {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let (request, _outcome) = append(ExpectedVersion::Any, vec![event()]);
        let late = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(500));
            tx.send(request).unwrap();
        });
        let before = thread_cpu_time();
        let taken = next_request(&rx, true).expect("the late request arrives");
        // Spinning all along would have used most of the half second (a busy core's share).
        let used = thread_cpu_time() - before;
        assert!(used < std::time::Duration::from_millis(50), "{used:?}");
        assert_eq!(taken.event_count(), 1);
        late.join().unwrap();
        assert!(next_request(&rx, true).is_none(), "every sender is gone");
    }

    #[test]
    fn a_batch_that_writes_nothing_is_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir);
        let mut head = writer.shared.head.subscribe();
        let (refused, mut outcome) = append(ExpectedVersion::Exact(5), vec![event()]);
        writer.commit(vec![refused]);
        assert!(matches!(
            outcome.try_recv().unwrap(),
            Err(JournalError::Conflict { current: None, .. })
        ));
        assert_eq!(writer.shared.stats(), JournalStats::default());
        assert!(!head.has_changed().unwrap());
        assert_eq!(*head.borrow_and_update(), 0);
    }
}
