//! A projection kept up to date by a background task, and its readers.
//!
//! Readers never touch the fold's store: states and queries run on a separate instance, a
//! copy of the fold restored from its snapshot whenever the fold has moved on. A query that
//! traps, runs out of time or memory, or answers too much costs that copy only (the next
//! query makes a new one); the fold goes on. Queries of one projection take turns on its
//! copy, and only so many run at once in the whole host ([`RunnerOptions::queries`]):
//! waiting for a turn takes no thread, and a query that waits too long is refused (503).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::failure::{FailurePolicy, ParkReport, backoff};
use super::worker::{Control, Shared, Worker, rebuilt};
use super::{CheckpointPolicy, ProjectionInstance, ProjectionStatus};
use crate::journal::{Journal, JournalError, ParkedEvent};
use crate::runtime::blocking;
use crate::runtime::error::RuntimeError;
use crate::runtime::plugin::Plugin;
use crate::runtime::upcast::UpcasterChain;

/// Writes of the checkpoint a stopped run stores, at most (see `save_checkpoint`).
const SAVE_TRIES: u32 = 5;
/// The first pause between two of them; it doubles after each.
const SAVE_PAUSE: Duration = Duration::from_millis(100);

/// How long a query waits for its turn before it is refused.
pub(in crate::runtime) const QUERY_WAIT: Duration = Duration::from_secs(10);

/// How a runner runs.
#[derive(Clone)]
pub struct RunnerOptions {
    /// When it saves checkpoints.
    pub checkpoints: CheckpointPolicy,
    /// What to do with an event the plugin cannot fold; shared by every run of the plugin,
    /// so a change applies at once.
    pub policy: Arc<watch::Sender<FailurePolicy>>,
    /// Start from position 1, ignoring the checkpoint and parked events in the journal, and
    /// write neither until [`adopt`](ProjectionRunner::adopt)ed (a reset).
    pub fresh: bool,
    /// Query calls running at once, host-wide.
    pub queries: Arc<Semaphore>,
    /// The upcasters its events pass through (see [`UpcasterChain::for_plugin`]).
    pub upcasters: Arc<UpcasterChain>,
}

/// A projection kept up to date by a background task.
pub struct ProjectionRunner {
    shared: Arc<Shared>,
    journal: Journal,
    status: watch::Receiver<ProjectionStatus>,
    control: mpsc::UnboundedSender<Control>,
    /// The readers' copy of the fold, and its turn-taking.
    reader: Arc<tokio::sync::Mutex<Option<ReaderCopy>>>,
    queries: Arc<Semaphore>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ProjectionRunner {
    /// Starts following the journal from the checkpoint the plugin folded through the same
    /// upcasters (or from position 1).
    pub fn start(plugin: Arc<Plugin>, journal: Journal, options: RunnerOptions) -> Self {
        let (status_tx, status) = watch::channel(ProjectionStatus::Starting);
        let (control, requests) = mpsc::unbounded_channel();
        let key = options.upcasters.state_key(&plugin.hash);
        let shared = Arc::new(Shared {
            plugin,
            upcasters: options.upcasters,
            key,
            fold: Mutex::new(None),
            parked: Mutex::new(Default::default()),
            replayed: AtomicU64::new(0),
            status: status_tx,
            durable: AtomicBool::new(!options.fresh),
            parked_folded: AtomicU64::new(0),
            discarded: Default::default(),
            restore_timeouts: Default::default(),
        });
        let worker = Worker::new(
            shared.clone(),
            journal.clone(),
            options.checkpoints,
            options.policy,
            options.fresh,
            requests,
        );
        Self {
            shared,
            journal,
            status,
            control,
            reader: Arc::new(tokio::sync::Mutex::new(None)),
            queries: options.queries,
            task: Mutex::new(Some(tokio::spawn(worker.run()))),
        }
    }

    /// The plugin it runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.shared.plugin
    }

    /// The key of its checkpoint and parked events (see [`UpcasterChain::state_key`]).
    pub fn state_key(&self) -> &str {
        &self.shared.key
    }

    /// Where it stands now.
    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<ProjectionStatus> {
        self.status.clone()
    }

    /// Events this runner has read from the journal since it started.
    pub fn replayed(&self) -> u64 {
        self.shared.replayed.load(Ordering::Relaxed)
    }

    /// Up to `limit` of the events this run skips because it could not fold them, by
    /// position, from the first after position `after`: the journal's records, and this run's
    /// the journal does not hold yet.
    pub async fn parked(
        &self,
        journal: &Journal,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, RuntimeError> {
        let mut after = after;
        loop {
            // This run's records first: one the journal gets meanwhile is in the page read next.
            let (durable, ours) = {
                let parked = self.shared.parked.lock().expect("parked lock");
                let durable = self.shared.durable.load(Ordering::Relaxed);
                (durable, parked.unrecorded_after(after, limit))
            };
            // A run that does not write holds every record it parked; the journal's are
            // another run's.
            if !durable {
                return Ok(ours);
            }
            let (journal, key) = (journal.clone(), self.shared.key.clone());
            let recorded = blocking(move || Ok(journal.parked(&key, after, limit)?)).await?;
            let parked = self.shared.parked.lock().expect("parked lock");
            let page = parked.page(recorded, &ours, after, limit);
            match page.next {
                Some(next) if page.events.is_empty() => after = next,
                _ => return Ok(page.events),
            }
        }
    }

    /// How many events this run skips.
    pub fn parked_count(&self) -> usize {
        self.shared.parked.lock().expect("parked lock").len()
    }

    /// The folded position and state, or `None` before the fold has started.
    pub async fn state(&self) -> Result<Option<(u64, serde_json::Value)>, RuntimeError> {
        self.read(|reader| Ok((reader.position, reader.state()?)))
            .await
    }

    /// Runs a named query against the current state: `Ok(Some(Err(..)))` is the plugin's
    /// own refusal, `Ok(None)` a fold that has not started.
    pub async fn query(
        &self,
        name: &str,
        args: &serde_json::Value,
    ) -> Result<Option<Result<serde_json::Value, String>>, RuntimeError> {
        let (name, args) = (name.to_owned(), args.clone());
        self.read(move |reader| reader.query(&name, &args)).await
    }

    /// Runs `call` on the readers' copy of the fold, brought up to date first. A failed call
    /// discards the copy, never the fold.
    ///
    /// It waits for this projection's turn before taking a host-wide slot: a query waiting
    /// behind others of a busy projection holds no slot, so queries of other projections
    /// never queue behind it. (Nothing takes the two the other way round.)
    async fn read<T: Send + 'static>(
        &self,
        call: impl FnOnce(&mut ProjectionInstance) -> Result<T, RuntimeError> + Send + 'static,
    ) -> Result<Option<T>, RuntimeError> {
        let (permit, mut reader) = tokio::time::timeout(QUERY_WAIT, async {
            let reader = self.reader.clone().lock_owned().await;
            (self.queries.clone().acquire_owned().await, reader)
        })
        .await
        .map_err(|_| RuntimeError::Busy)?;
        let (shared, journal) = (self.shared.clone(), self.journal.clone());
        blocking(move || {
            let _permit = permit;
            if !refresh(&shared, &journal, &mut reader)? {
                return Ok(None);
            }
            let copy = &mut reader.as_mut().expect("refreshed").instance;
            let outcome = call(copy);
            if outcome.is_err() {
                *reader = None;
            }
            outcome.map(Some)
        })
        .await
    }

    /// Folds the parked events again, at the head (see [`ParkReport`]).
    pub async fn replay_parked(&self) -> Result<ParkReport, RuntimeError> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::ReplayParked(reply))
            .map_err(|_| self.stopped("replay parked events"))?;
        answer
            .await
            .map_err(|_| self.stopped("replay parked events"))?
    }

    /// Makes a fresh run (a reset) the one the journal records: its checkpoint and parked
    /// events replace the journal's for this build.
    pub async fn adopt(&self) {
        let (reply, answer) = oneshot::channel();
        if self.control.send(Control::Adopt(reply)).is_ok() {
            let _ = answer.await;
        }
    }

    fn stopped(&self, action: &'static str) -> RuntimeError {
        RuntimeError::NotNow {
            plugin: self.shared.plugin.name().to_owned(),
            action,
            reason: "it has stopped".to_owned(),
        }
    }

    /// Stores a checkpoint of the current state, with the parked events the journal does not
    /// record yet (after [`stop`](Self::stop)); a run that does not write to the journal (a
    /// reset still catching up) stores nothing.
    pub async fn save_checkpoint(&self, journal: &Journal) -> Result<(), RuntimeError> {
        if !self.shared.durable.load(Ordering::Relaxed) {
            return Ok(());
        }
        let shared = self.shared.clone();
        let saved = blocking(move || match shared.checkpointable() {
            Ok(saved) => Ok(Some(saved)),
            // No state to save: never folded, or discarded by a failed call.
            Err(RuntimeError::NotNow { .. }) => Ok(None),
            Err(error) => Err(error),
        })
        .await?;
        // Tried a few times: besides the state, it is the write a run started after this must
        // follow (it lands behind any the stopped task left queued).
        let mut attempt = 0;
        loop {
            let written = match &saved {
                Some((saved, pending)) => {
                    let (saved, pending) = (saved.clone(), pending.clone());
                    self.shared.checkpoint(journal, saved, pending).await
                }
                // Nothing to save, but still a write for the next run's reads to follow.
                None => journal.unpark(&self.shared.key, Vec::new()).await,
            };
            attempt += 1;
            match written {
                Ok(()) => return Ok(()),
                // A journal that stopped (shut, or failed for good) takes no retry.
                Err(error @ (JournalError::Closed | JournalError::Faulted(_))) => {
                    return Err(error.into());
                }
                Err(error) if attempt == SAVE_TRIES => return Err(error.into()),
                Err(_) => tokio::time::sleep(backoff(attempt, SAVE_PAUSE)).await,
            }
        }
    }

    /// Stops the background task and waits until it has let go of the journal.
    pub async fn stop(&self) {
        let task = self.task.lock().expect("projection lock").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for ProjectionRunner {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().expect("projection lock").take() {
            task.abort();
        }
    }
}

/// The readers' copy of the fold, made from its snapshot.
struct ReaderCopy {
    instance: ProjectionInstance,
    /// The fold's position and count of parked events folded when copied.
    stamp: (u64, u64),
}

/// Brings the readers' copy up to the fold's position and parked events folded (a new
/// instance restored from the fold's snapshot, or folded from position 1 when the plugin
/// cannot restore that). `false` if there is no state to read yet.
fn refresh(
    shared: &Shared,
    journal: &Journal,
    reader: &mut Option<ReaderCopy>,
) -> Result<bool, RuntimeError> {
    let snapshot = {
        let mut fold = shared.fold.lock().expect("projection lock");
        // Being rebuilt: the copy, if any, is the latest state there is.
        let Some(instance) = fold.as_mut() else {
            return Ok(reader.is_some());
        };
        let stamp = (
            instance.position,
            shared.parked_folded.load(Ordering::Relaxed),
        );
        if reader.as_ref().is_some_and(|copy| copy.stamp == stamp) {
            return Ok(true);
        }
        match instance.snapshot() {
            Ok(bytes) => (stamp, bytes),
            Err(error) => {
                // A trapped store is never reused: the worker rebuilds the fold.
                *fold = None;
                shared.discarded.notify_one();
                return Err(error);
            }
        }
    };
    let (stamp, bytes) = snapshot;
    let instance = rebuilt(shared, journal, Some((stamp.0, bytes)), stamp.0)?;
    *reader = Some(ReaderCopy { instance, stamp });
    Ok(true)
}
