//! The background task behind a [`ProjectionRunner`](super::ProjectionRunner): folds the log
//! from the checkpoint to the head (reading each page while the one before it folds), then
//! follows it; retries what may pass, narrows a failed batch down to the event, and parks (or
//! stops at) an event that keeps failing.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::failure::{FailurePolicy, ParkReport, TIMEOUT_TRIES, backoff, tries_after};
use super::parked::{Parked, Pending};
use super::{CheckpointPolicy, ProjectionInstance, ProjectionStatus, REPLAY_LIMIT};
use crate::journal::{Journal, JournalError, ParkedEvent, ReadLimit, RecordedEvent};
use crate::runtime::blocking;
use crate::runtime::error::RuntimeError;
use crate::runtime::plugin::Plugin;
use crate::runtime::upcast::UpcasterChain;

/// The first pause after a failed journal read or write.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// Parked events a replay of parked events records in one write.
const RECORD_BATCH: usize = 1000;
/// Positions past the last snapshot a rebuild may have to fold again, after a parked event,
/// before the state is snapshotted in memory (see `Worker::save_if_far`).
const REBUILD_SPAN: u64 = 64;

/// A read of one page on the blocking pool.
type PageRead = JoinHandle<Result<Vec<RecordedEvent>, RuntimeError>>;

/// What the worker and the runner's readers share.
pub(super) struct Shared {
    pub plugin: Arc<Plugin>,
    /// The upcasters its events pass through.
    pub upcasters: Arc<UpcasterChain>,
    /// The key of its checkpoint and parked events: the plugin's hash and its upcaster chain's.
    pub key: String,
    /// The fold's instance: `None` before it starts, and after a failed call discarded it
    /// (the worker then rebuilds it).
    pub fold: Mutex<Option<ProjectionInstance>>,
    /// The events this run skips. The records the journal does not hold yet are written with
    /// the next checkpoint, the write that passes them (see [`Shared::checkpoint`]), or by a
    /// replay of parked events.
    pub parked: Mutex<Parked>,
    /// Events read from the journal since the run started.
    pub replayed: AtomicU64,
    pub status: watch::Sender<ProjectionStatus>,
    /// Whether checkpoints and parked events are written to the journal: a reset run writes
    /// them only once it took over.
    pub durable: AtomicBool,
    /// Parked events folded again at the head since the run started, which moves no position
    /// (changed under the fold's lock; a rebuilt fold keeps what they did): with the fold's
    /// position, what tells the readers' copy it is stale.
    pub parked_folded: AtomicU64,
    /// Told when a reader discarded the fold (its snapshot trapped): the worker makes it
    /// again at once, not at the next commit.
    pub discarded: Notify,
    /// Restores of a snapshot that ran out of time since one last ended otherwise.
    pub restore_timeouts: AtomicU32,
}

impl Shared {
    /// Runs `call` on the fold's instance; a failed call discards the instance (a trapped
    /// store is never reused, and a failed fold may have left the state half-changed).
    pub fn with_fold<T>(
        &self,
        call: impl FnOnce(&mut ProjectionInstance) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        let mut fold = self.fold.lock().expect("projection lock");
        let instance = fold.as_mut().ok_or_else(|| RuntimeError::NotNow {
            plugin: self.plugin.name().to_owned(),
            action: "fold",
            reason: "its state is being rebuilt".to_owned(),
        })?;
        let outcome = call(instance);
        if outcome.is_err() {
            *fold = None;
        }
        outcome
    }

    /// The events of `page` the plugin folds: subscribed to (by category only when upcasters
    /// may change their types), and not parked.
    fn foldable(&self, page: &[RecordedEvent]) -> Vec<RecordedEvent> {
        let parked = self.parked.lock().expect("parked lock");
        let subscription = &self.plugin.subscription;
        let upcast = !self.upcasters.is_empty();
        let mut wants = subscription.wants_each();
        page.iter()
            .filter(|e| match upcast {
                true => subscription.wants_stream(&e.stream),
                false => wants(e),
            })
            .filter(|e| !parked.contains(e.position))
            .cloned()
            .collect()
    }

    /// Stores `(position, state)` as the checkpoint together with the parked events not
    /// recorded yet, and removes the records of those forgotten since, in one write. A
    /// checkpoint never passes a parked event the journal does not record (after a restart it
    /// would be neither folded nor listed), nor stores a state that folded an event the
    /// journal still lists (a replay of parked events would fold it twice).
    ///
    /// `pending` is what goes with the state ([`Parked::pending`]), taken with it under the
    /// fold's lock: a replay of a parked event folds and forgets it under that lock too, even
    /// when its run was stopped meanwhile, so the state and the unparks agree.
    pub async fn checkpoint(
        &self,
        journal: &Journal,
        (position, state): (u64, Vec<u8>),
        pending: Pending,
    ) -> Result<(), JournalError> {
        let Pending { park, unpark } = pending.clone();
        journal
            .put_checkpoint_reparked(&self.key, position, state, park, unpark)
            .await?;
        // Only a write that succeeded drops them, so a run stopped while writing (a task
        // aborted at any await) leaves them for the checkpoint its runner stores.
        self.parked.lock().expect("parked lock").written(&pending);
        Ok(())
    }

    /// The fold's position, its state, and what a checkpoint of it writes besides (see
    /// [`checkpoint`](Self::checkpoint)), taken together; a failed snapshot discards the
    /// instance (see [`with_fold`](Self::with_fold)).
    pub fn checkpointable(&self) -> Result<((u64, Vec<u8>), Pending), RuntimeError> {
        self.with_fold(|instance| {
            let saved = (instance.position, instance.snapshot()?);
            Ok((saved, self.parked.lock().expect("parked lock").pending()))
        })
    }

    /// A new instance of the plugin fed through its upcasters.
    pub fn instance(
        &self,
        checkpoint: Option<(u64, Vec<u8>)>,
    ) -> Result<ProjectionInstance, RuntimeError> {
        ProjectionInstance::through(self.plugin.clone(), self.upcasters.clone(), checkpoint)
    }

    /// A new instance restored from `saved`, or a blank one (and `saved` forgotten) when the
    /// plugin refuses or traps restoring it, or runs out of time as often as an event may
    /// before it is given up on (a busy machine passes; bytes it spins on do not): a snapshot
    /// it cannot read is no reason to stop folding, only to fold from position 1.
    fn restored(
        &self,
        saved: &mut Option<(u64, Vec<u8>)>,
    ) -> Result<ProjectionInstance, RuntimeError> {
        let restored = self.instance(saved.clone());
        let give_up = match &restored {
            Err(error) if error.is_timeout() => {
                let timeouts = self.restore_timeouts.fetch_add(1, Ordering::Relaxed) + 1;
                if timeouts < TIMEOUT_TRIES {
                    return restored;
                }
                true
            }
            Err(error) => error.is_plugin_fault(),
            Ok(_) => false,
        };
        self.restore_timeouts.store(0, Ordering::Relaxed);
        match restored {
            Err(error) if give_up && saved.is_some() => {
                tracing::warn!(plugin = %self.plugin.name(), %error, "snapshot not restored; folding from position 1");
                *saved = None;
                self.instance(None)
            }
            restored => restored,
        }
    }
}

/// Requests to the worker, handled between two batches.
pub(super) enum Control {
    /// Fold the parked events again, at the head.
    ReplayParked(oneshot::Sender<Result<ParkReport, RuntimeError>>),
    /// Take over the journal's records of this build: write this run's checkpoint and parked
    /// events over them (a reset run that replaced the active one).
    Adopt(oneshot::Sender<()>),
}

/// Why the worker stopped following.
enum Halt {
    /// The journal closed (shutdown).
    Closed,
    /// Policy `stop`: at an event it cannot fold.
    Faulted { position: u64, reason: String },
}

pub(super) struct Worker {
    shared: Arc<Shared>,
    journal: Journal,
    checkpoints: CheckpointPolicy,
    policy: Arc<watch::Sender<FailurePolicy>>,
    /// Ignore the checkpoint and parked events in the journal: start from position 1.
    fresh: bool,
    control: mpsc::UnboundedReceiver<Control>,
    /// The last position folded (or skipped).
    position: u64,
    /// The last snapshot taken, kept in memory: states are rebuilt from it. Checkpoints are
    /// such snapshots, and so are the ones taken after a parked event (see `save_if_far`),
    /// which are not stored.
    saved: Option<(u64, Vec<u8>)>,
    /// Position and time of the last checkpoint.
    checkpointed: (u64, Instant),
    /// Position and time of the last catch-up rate measurement.
    rate: (u64, Instant),
    /// The plugin's snapshot failed once: no more checkpoints in this run.
    checkpoints_broken: bool,
    /// The next page, read while the current one folds: where it starts, and the read.
    ahead: Option<(u64, PageRead)>,
}

impl Worker {
    pub(super) fn new(
        shared: Arc<Shared>,
        journal: Journal,
        checkpoints: CheckpointPolicy,
        policy: Arc<watch::Sender<FailurePolicy>>,
        fresh: bool,
        control: mpsc::UnboundedReceiver<Control>,
    ) -> Self {
        Self {
            shared,
            journal,
            checkpoints,
            policy,
            fresh,
            control,
            position: 0,
            saved: None,
            checkpointed: (0, Instant::now()),
            rate: (0, Instant::now()),
            checkpoints_broken: false,
            ahead: None,
        }
    }

    fn name(&self) -> &str {
        self.shared.plugin.name()
    }

    fn durable(&self) -> bool {
        self.shared.durable.load(Ordering::Relaxed)
    }

    pub(super) async fn run(mut self) {
        let Halt::Faulted { position, reason } = self.follow().await else {
            return;
        };
        tracing::error!(plugin = %self.name(), position, %reason, "projection faulted: waiting for an operator");
        self.shared
            .status
            .send_replace(ProjectionStatus::Faulted { position, reason });
        while let Some(control) = self.control.recv().await {
            match control {
                Control::ReplayParked(reply) => {
                    let _ = reply.send(Err(RuntimeError::NotNow {
                        plugin: self.name().to_owned(),
                        action: "replay parked events",
                        reason: "it is faulted: restart or reset it first".to_owned(),
                    }));
                }
                Control::Adopt(reply) => drop(reply),
            }
        }
    }

    async fn follow(&mut self) -> Halt {
        if let Err(halt) = self.start().await {
            return halt;
        }
        let mut commits = self.journal.subscribe();
        loop {
            if let Err(halt) = self.step(&mut commits).await {
                return halt;
            }
        }
    }

    /// Restores the checkpoint and the list of parked events.
    async fn start(&mut self) -> Result<(), Halt> {
        if !self.fresh {
            let (journal, hash) = (self.journal.clone(), self.shared.key.clone());
            let (checkpoint, parked) = self
                .retrying("reading the checkpoint", move || {
                    Ok((
                        journal.checkpoint(&hash)?,
                        parked_positions(&journal, &hash)?,
                    ))
                })
                .await?;
            *self.shared.parked.lock().expect("parked lock") = Parked::restored(parked);
            self.saved = checkpoint;
        }
        let (shared, saved) = (self.shared.clone(), self.saved.clone());
        let (instance, saved) = self
            .retrying_unless_faulted(0, "making its state", move || {
                let mut saved = saved.clone();
                Ok((shared.restored(&mut saved)?, saved))
            })
            .await?;
        self.saved = saved;
        self.position = instance.position;
        self.checkpointed = (self.position, Instant::now());
        self.rate = (self.position, Instant::now());
        *self.shared.fold.lock().expect("projection lock") = Some(instance);
        Ok(())
    }

    /// Folds one page of the log, or waits for commits at the head.
    async fn step(&mut self, commits: &mut watch::Receiver<u64>) -> Result<(), Halt> {
        while let Ok(control) = self.control.try_recv() {
            self.handle(control).await?;
        }
        let head = *commits.borrow_and_update();
        if self.position >= head {
            self.checkpoint_if_due(false).await?;
            self.shared.status.send_replace(ProjectionStatus::Live {
                position: self.position,
            });
            tokio::select! {
                changed = commits.changed() => changed.map_err(|_| Halt::Closed)?,
                // Quiet for a while: save what the last burst folded.
                () = tokio::time::sleep(self.checkpoints.every) => self.checkpoint_if_due(true).await?,
                Some(control) = self.control.recv() => self.handle(control).await?,
                () = self.shared.discarded.notified() => self.rebuild_if_discarded().await?,
            }
            return Ok(());
        }
        let from = self.position + 1;
        let page = match self.read_ahead(from).await {
            Some(page) => page,
            None => {
                let journal = self.journal.clone();
                self.retrying("reading the journal", move || {
                    Ok(journal.read_all_within(from, REPLAY_LIMIT)?)
                })
                .await?
            }
        };
        if page.is_empty() {
            // Nothing up to the head is visible any more (deleted, expired or scavenged):
            // the log skips those positions.
            self.skip_to(head).await?;
            return Ok(());
        }
        let last = page.last().expect("a page has events").position;
        if last < head {
            // Catching up: read the next page while this one folds.
            let journal = self.journal.clone();
            let read = blocking(move || Ok(journal.read_all_within(last + 1, REPLAY_LIMIT)?));
            self.ahead = Some((last + 1, tokio::spawn(read)));
        }
        let count = page.len() as u64;
        self.shared.replayed.fetch_add(count, Ordering::Relaxed);
        metrics::counter!("foldhost_projection_events_total", "plugin" => self.name().to_owned())
            .increment(count);
        self.fold(page).await?;
        self.report_progress(head);
        self.checkpoint_if_due(false).await
    }

    /// The page read ahead from `from`, if there is one with events. Otherwise (none was read,
    /// the fold moved elsewhere, the read failed or found nothing) the caller reads the page
    /// itself, so a failure is retried and an empty page judged against a fresh head as ever.
    async fn read_ahead(&mut self, from: u64) -> Option<Vec<RecordedEvent>> {
        let (start, read) = self.ahead.take()?;
        if start != from {
            return None;
        }
        let page = read.await.ok()?.ok()?;
        (!page.is_empty()).then_some(page)
    }

    /// Folds a page in one call; if that fails, event by event from the state before it.
    async fn fold(&mut self, page: Vec<RecordedEvent>) -> Result<(), Halt> {
        let last = page.last().expect("a page has events").position;
        let batch = Arc::new(self.shared.foldable(&page));
        let (shared, events) = (self.shared.clone(), batch.clone());
        let folded = blocking(move || {
            shared.with_fold(|instance| {
                instance.apply(&events)?;
                instance.position = last;
                Ok(())
            })
        })
        .await;
        if folded.is_err() {
            self.rebuild().await?;
            let mut next = 0;
            while next < batch.len() {
                let (folded, failed) = self.fold_singly(batch.clone(), next).await;
                next += folded;
                if folded > 0 {
                    self.position = batch[next - 1].position;
                }
                match failed {
                    // A reader discarded the state between two events: not the event's doing.
                    Some(RuntimeError::NotNow { .. }) => self.rebuild().await?,
                    Some(error) => {
                        self.after_failure(&batch[next], error).await?;
                        next += 1;
                    }
                    None => {}
                }
            }
            self.skip_to(last).await?;
        }
        self.position = last;
        Ok(())
    }

    /// Folds `events[from..]` one call each, in one trip to the blocking pool (a trip costs
    /// more than a call), up to the first that fails alone: how many folded, and its failure.
    async fn fold_singly(
        &self,
        events: Arc<Vec<RecordedEvent>>,
        from: usize,
    ) -> (usize, Option<RuntimeError>) {
        let shared = self.shared.clone();
        let folded = blocking(move || {
            let mut folded = 0;
            for event in &events[from..] {
                let single = std::slice::from_ref(event);
                if let Err(error) = shared.with_fold(|instance| instance.apply(single)) {
                    return Ok((folded, Some(error)));
                }
                folded += 1;
            }
            Ok((folded, None))
        })
        .await;
        folded.unwrap_or_else(|error| (0, Some(error)))
    }

    /// Moves the fold past positions with nothing to fold.
    async fn skip_to(&mut self, position: u64) -> Result<(), Halt> {
        while !self.move_fold_to(position).await? {
            self.rebuild().await?;
        }
        self.position = self.position.max(position);
        Ok(())
    }

    /// Moves the fold's position to at least `position`; false if there is no fold (it is to
    /// be rebuilt). On the blocking pool: a reader may hold the fold for a whole plugin call.
    async fn move_fold_to(&self, position: u64) -> Result<bool, Halt> {
        let shared = self.shared.clone();
        self.retrying("moving past hidden events", move || {
            let mut fold = shared.fold.lock().expect("projection lock");
            let moved = fold.as_mut().map(|instance| {
                instance.position = instance.position.max(position);
            });
            Ok(moved.is_some())
        })
        .await
    }

    /// After `event` failed alone with `error`: tries it again as that failure deserves (see
    /// [`tries_after`]); then parks it or halts.
    async fn after_failure(
        &mut self,
        event: &RecordedEvent,
        mut error: RuntimeError,
    ) -> Result<(), Halt> {
        let mut attempt = 1;
        loop {
            // Its instance was discarded: back to the state before the event.
            self.rebuild().await?;
            let (tries, first_pause) = tries_after(&error);
            if attempt >= tries {
                self.give_up(event, error, attempt).await?;
                return self.save_if_far().await;
            }
            self.retry_status(
                format!("folding the event at position {}: {error}", event.position),
                attempt,
            );
            tokio::time::sleep(backoff(attempt, first_pause)).await;
            attempt += 1;
            loop {
                let (shared, single) = (self.shared.clone(), event.clone());
                let folded = blocking(move || {
                    shared.with_fold(|instance| instance.apply(std::slice::from_ref(&single)))
                })
                .await;
                match folded {
                    Ok(()) => {
                        self.position = event.position;
                        return Ok(());
                    }
                    // A reader discarded the state: not a try.
                    Err(RuntimeError::NotNow { .. }) => self.rebuild().await?,
                    Err(again) => {
                        error = again;
                        break;
                    }
                }
            }
        }
    }

    /// Snapshots the state in memory if it is more than [`REBUILD_SPAN`] positions past the
    /// last snapshot: the next failure (a client may append any number) rebuilds from here.
    async fn save_if_far(&mut self) -> Result<(), Halt> {
        let saved_at = self.saved.as_ref().map_or(0, |(position, _)| *position);
        if self.position.saturating_sub(saved_at) > REBUILD_SPAN && !self.checkpoints_broken {
            self.snapshot().await?;
        }
        Ok(())
    }

    /// Applies the failure policy to an event that failed `attempts` times.
    async fn give_up(
        &mut self,
        event: &RecordedEvent,
        error: RuntimeError,
        attempts: u32,
    ) -> Result<(), Halt> {
        let reason = error.to_string();
        if *self.policy.borrow() == FailurePolicy::Stop {
            return Err(Halt::Faulted {
                position: event.position,
                reason,
            });
        }
        tracing::warn!(plugin = %self.name(), position = event.position, stream = %event.stream, %reason, "parking an event the projection cannot fold");
        let record = ParkedEvent {
            position: event.position,
            stream: event.stream.to_string(),
            event_type: event.event_type.to_string(),
            reason,
            attempts,
            parked_at: now_millis(),
        };
        self.park(record);
        metrics::counter!("foldhost_projection_parked_total", "plugin" => self.name().to_owned())
            .increment(1);
        Ok(())
    }

    /// Parks an event (or parks it again with a new reason) for this run at once; the
    /// journal records it with the next checkpoint (see [`Shared::checkpoint`]), so a flood
    /// of poison events costs no write each.
    fn park(&self, record: ParkedEvent) {
        self.shared.parked.lock().expect("parked lock").park(record);
    }

    /// Records in the journal, in one write, the events parked (again) and not recorded yet.
    async fn record_parked(&self) -> Result<(), Halt> {
        let records = self.shared.parked.lock().expect("parked lock").unrecorded();
        if records.is_empty() || !self.durable() {
            return Ok(());
        }
        let (journal, hash) = (&self.journal, &self.shared.key);
        self.retrying_write("recording parked events", || {
            journal.park(hash, records.clone())
        })
        .await?;
        let mut parked = self.shared.parked.lock().expect("parked lock");
        parked.recorded(&records);
        Ok(())
    }

    /// Rebuilds the fold's state at `self.position` from the last checkpoint.
    async fn rebuild(&mut self) -> Result<(), Halt> {
        let (shared, journal) = (self.shared.clone(), self.journal.clone());
        let (saved, target) = (self.saved.clone(), self.position);
        let what = format!("rebuilding its state at position {target}");
        self.retrying_unless_faulted(target, &what, move || {
            let instance = rebuilt(&shared, &journal, saved.clone(), target)?;
            *shared.fold.lock().expect("projection lock") = Some(instance);
            Ok(())
        })
        .await
    }

    /// Rebuilds the fold if there is none (a reader discarded it since).
    async fn rebuild_if_discarded(&mut self) -> Result<(), Halt> {
        let shared = self.shared.clone();
        let discarded =
            blocking(move || Ok(shared.fold.lock().expect("projection lock").is_none()))
                .await
                .unwrap_or(false);
        if discarded {
            self.rebuild().await?;
        }
        Ok(())
    }

    /// Stores `(position, snapshot)` when the policy says so, or on any unsaved progress
    /// when `force` is set.
    async fn checkpoint_if_due(&mut self, force: bool) -> Result<(), Halt> {
        let progressed = self.position - self.checkpointed.0;
        let due = progressed >= self.checkpoints.every_events
            || (progressed > 0
                && (force || self.checkpointed.1.elapsed() >= self.checkpoints.every));
        if !due || self.checkpoints_broken {
            return Ok(());
        }
        let Some(((position, state), pending)) = self.snapshot().await? else {
            return Ok(());
        };
        if self.durable()
            && let Err(error) = self
                .shared
                .checkpoint(&self.journal, (position, state), pending)
                .await
        {
            if let JournalError::Closed = error {
                return Err(Halt::Closed);
            }
            // Not fatal: the next checkpoint tries again.
            tracing::warn!(plugin = %self.name(), %error, "checkpoint not stored");
            return Ok(());
        }
        self.checkpointed = (position, Instant::now());
        Ok(())
    }

    /// Snapshots the fold's state as the in-memory checkpoint. A plugin whose snapshot fails
    /// takes no more checkpoints in this run (its state is rebuilt and it goes on).
    async fn snapshot(&mut self) -> Result<Option<((u64, Vec<u8>), Pending)>, Halt> {
        loop {
            let shared = self.shared.clone();
            let taken = blocking(move || shared.checkpointable()).await;
            match taken {
                Ok((saved, pending)) => {
                    self.saved = Some(saved.clone());
                    return Ok(Some((saved, pending)));
                }
                // Discarded by a reader's failed snapshot: rebuild, then take it.
                Err(RuntimeError::NotNow { .. }) => self.rebuild().await?,
                Err(error) => {
                    tracing::error!(plugin = %self.name(), %error, "snapshot failed: no more checkpoints until a restart");
                    self.checkpoints_broken = true;
                    self.rebuild().await?;
                    return Ok(None);
                }
            }
        }
    }

    async fn handle(&mut self, control: Control) -> Result<(), Halt> {
        match control {
            Control::ReplayParked(reply) => {
                let report = self.replay_parked().await?;
                let _ = reply.send(Ok(report));
            }
            Control::Adopt(reply) => {
                self.adopt().await?;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    /// Folds each parked event again onto the current state (out of order, at the head). One
    /// that folds is checkpointed and unparked in one journal write, so a restart neither
    /// loses nor repeats it; one that fails stays parked with the new reason.
    async fn replay_parked(&mut self) -> Result<ParkReport, Halt> {
        let positions = self.shared.parked.lock().expect("parked lock").positions();
        let mut replayed = 0;
        for position in positions {
            let journal = self.journal.clone();
            let page = self
                .retrying("reading a parked event", move || {
                    Ok(journal.read_all_within(position, ReadLimit::events(1))?)
                })
                .await?;
            let Some(event) = page.into_iter().find(|e| e.position == position) else {
                // Deleted since (and hidden, or scavenged): nothing left to fold.
                self.forget_parked(position).await?;
                continue;
            };
            let folded = loop {
                let (shared, single) = (self.shared.clone(), event.clone());
                let folded = blocking(move || {
                    shared.with_fold(|instance| {
                        let at = instance.position;
                        instance.apply(std::slice::from_ref(&single))?;
                        instance.position = at;
                        shared.parked_folded.fetch_add(1, Ordering::Relaxed);
                        let state = instance.snapshot()?;
                        // Forgotten under the fold's lock, with the fold: every checkpoint from
                        // here on (this one, or the one the runner stores if the run is stopped
                        // before it) has a state that folded it, and so removes its record.
                        let mut parked = shared.parked.lock().expect("parked lock");
                        parked.forget(position);
                        Ok(((at, state), parked.pending()))
                    })
                })
                .await;
                match folded {
                    // Discarded by a reader's failed snapshot, not by this event: rebuild,
                    // then fold it again, with no try counted.
                    Err(RuntimeError::NotNow { .. }) => self.rebuild().await?,
                    folded => break folded,
                }
            };
            match folded {
                Ok(((at, state), pending)) => {
                    if self.durable() {
                        let (journal, shared) = (&self.journal, &self.shared);
                        self.retrying_write("checkpointing a replayed event", || {
                            shared.checkpoint(journal, (at, state.clone()), pending.clone())
                        })
                        .await?;
                    }
                    self.saved = Some((at, state));
                    self.checkpointed = (at, Instant::now());
                    replayed += 1;
                }
                Err(error) => {
                    self.rebuild().await?;
                    let before = self.parked_record(position).await?;
                    let (attempts, parked_at) = before.map_or((0, now_millis()), |record| {
                        (record.attempts, record.parked_at)
                    });
                    self.park(ParkedEvent {
                        position,
                        stream: event.stream.to_string(),
                        event_type: event.event_type.to_string(),
                        reason: error.to_string(),
                        attempts: attempts + 1,
                        parked_at,
                    });
                    // Written as they come, a thousand at a time, not all held to the end.
                    let held = {
                        let parked = self.shared.parked.lock().expect("parked lock");
                        parked.unrecorded_len()
                    };
                    if held >= RECORD_BATCH {
                        self.record_parked().await?;
                    }
                }
            }
        }
        self.record_parked().await?;
        let still_parked = self.shared.parked.lock().expect("parked lock").len();
        tracing::info!(plugin = %self.name(), replayed, still_parked, "replayed parked events");
        Ok(ParkReport {
            replayed,
            still_parked,
        })
    }

    /// Drops a parked event that is no longer in the log.
    async fn forget_parked(&mut self, position: u64) -> Result<(), Halt> {
        self.shared
            .parked
            .lock()
            .expect("parked lock")
            .forget(position);
        if self.durable() {
            let (journal, hash) = (&self.journal, &self.shared.key);
            self.retrying_write("forgetting a parked event", || {
                journal.unpark(hash, vec![position])
            })
            .await?;
            let written = Pending {
                park: Vec::new(),
                unpark: vec![position],
            };
            self.shared
                .parked
                .lock()
                .expect("parked lock")
                .written(&written);
        }
        Ok(())
    }

    /// The record of the event parked at `position`: this run's, or the journal's.
    async fn parked_record(&self, position: u64) -> Result<Option<ParkedEvent>, Halt> {
        let ours = {
            let parked = self.shared.parked.lock().expect("parked lock");
            parked.unrecorded_at(position).cloned()
        };
        if ours.is_some() {
            return Ok(ours);
        }
        let (journal, hash) = (self.journal.clone(), self.shared.key.clone());
        let listed = self
            .retrying("reading a parked event", move || {
                Ok(journal.parked(&hash, position.saturating_sub(1), 1)?)
            })
            .await?;
        Ok(listed
            .into_iter()
            .find(|record| record.position == position))
    }

    /// Makes this run the one the journal records: its checkpoint and its parked events
    /// replace the journal's, in one write.
    /// The run writes to the journal only from then on: stopped half way, it stores nothing.
    async fn adopt(&mut self) -> Result<(), Halt> {
        // The old run's last write may still be queued (its task was aborted, not its write):
        // an empty write behind it in the journal's queue lands after it, so the list read
        // next holds what that write parked.
        let (journal, hash) = (&self.journal, &self.shared.key);
        self.retrying_write("waiting for the old run's writes", || {
            journal.unpark(hash, Vec::new())
        })
        .await?;
        let (journal, hash) = (self.journal.clone(), self.shared.key.clone());
        let listed = self
            .retrying("reading the parked events", move || {
                Ok(parked_positions(&journal, &hash)?)
            })
            .await?;
        {
            // A run that does not write holds every record it parked. What the journal lists
            // and this run does not skip is forgotten, so that every checkpoint from now on
            // removes its record.
            let mut parked = self.shared.parked.lock().expect("parked lock");
            let stale: Vec<u64> = listed
                .into_iter()
                .filter(|position| !parked.contains(*position))
                .collect();
            for position in stale {
                parked.forget(position);
            }
        }
        let Some((saved, pending)) = self.snapshot().await? else {
            // Its snapshot fails, so this run stores no checkpoint (nor the parked events that
            // go with one): a restart folds from the journal's checkpoint and parks them again.
            self.shared.durable.store(true, Ordering::Relaxed);
            return Ok(());
        };
        let (journal, shared) = (&self.journal, &self.shared);
        self.retrying_write("adopting the reset", || {
            shared.checkpoint(journal, saved.clone(), pending.clone())
        })
        .await?;
        self.shared.durable.store(true, Ordering::Relaxed);
        self.checkpointed = (saved.0, Instant::now());
        Ok(())
    }

    /// Publishes catch-up progress while far from the head.
    fn report_progress(&mut self, head: u64) {
        if head.saturating_sub(self.position) <= REPLAY_LIMIT.events as u64 {
            return;
        }
        let elapsed = self.rate.1.elapsed().as_secs_f64();
        let catching_up = matches!(
            *self.shared.status.borrow(),
            ProjectionStatus::CatchingUp { .. }
        );
        if elapsed >= 0.5 || !catching_up {
            let events_per_sec = if elapsed >= 0.5 {
                (self.position - self.rate.0) as f64 / elapsed
            } else {
                0.0
            };
            self.rate = (self.position, Instant::now());
            self.shared
                .status
                .send_replace(ProjectionStatus::CatchingUp {
                    position: self.position,
                    head,
                    events_per_sec,
                });
        }
    }

    fn retry_status(&self, reason: String, attempt: u32) {
        tracing::warn!(plugin = %self.name(), attempt, %reason, "projection retrying");
        metrics::counter!("foldhost_projection_retries_total", "plugin" => self.name().to_owned())
            .increment(1);
        self.shared.status.send_replace(ProjectionStatus::Retrying {
            position: self.position,
            reason,
            attempt,
        });
    }

    /// Runs `step` on the blocking pool until it succeeds, pausing with backoff (status
    /// `retrying`) after each failure; only a closed journal ends it.
    async fn retrying<T: Send + 'static>(
        &self,
        what: &str,
        step: impl Fn() -> Result<T, RuntimeError> + Send + Sync + 'static,
    ) -> Result<T, Halt> {
        let step = Arc::new(step);
        let mut attempt = 0;
        loop {
            let once = step.clone();
            match blocking(move || once()).await {
                Ok(value) => return Ok(value),
                Err(RuntimeError::Journal(JournalError::Closed)) => return Err(Halt::Closed),
                Err(error) => {
                    attempt += 1;
                    self.retry_status(format!("{what}: {error}"), attempt);
                    tokio::time::sleep(backoff(attempt, FIRST_PAUSE)).await;
                }
            }
        }
    }
}

impl Worker {
    /// As [`retrying`](Self::retrying), but a failure of the plugin's own doing (it refused or
    /// trapped: the same call would do it again) halts the run as faulted at `position`
    /// instead of being retried for ever.
    async fn retrying_unless_faulted<T: Send + 'static>(
        &self,
        position: u64,
        what: &str,
        step: impl Fn() -> Result<T, RuntimeError> + Send + Sync + 'static,
    ) -> Result<T, Halt> {
        let outcome = self
            .retrying(what, move || match step() {
                Err(error) if error.is_plugin_fault() => Ok(Err(error)),
                done => done.map(Ok),
            })
            .await?;
        outcome.map_err(|error| Halt::Faulted {
            position,
            reason: format!("{what}: {error}"),
        })
    }

    /// Retries a journal write with backoff (status `retrying`) until it succeeds; only a
    /// closed journal ends it.
    async fn retrying_write<Fut>(&self, what: &str, write: impl Fn() -> Fut) -> Result<(), Halt>
    where
        Fut: Future<Output = Result<(), JournalError>>,
    {
        let mut attempt = 0;
        loop {
            match write().await {
                Ok(()) => return Ok(()),
                Err(JournalError::Closed) => return Err(Halt::Closed),
                Err(error) => {
                    attempt += 1;
                    self.retry_status(format!("{what}: {error}"), attempt);
                    tokio::time::sleep(backoff(attempt, FIRST_PAUSE)).await;
                }
            }
        }
    }
}

/// Every position the journal records as parked for `key`, read a page at a time.
pub(super) fn parked_positions(journal: &Journal, key: &str) -> Result<Vec<u64>, JournalError> {
    const PAGE: usize = 10_000;
    let mut positions = Vec::new();
    loop {
        let after = positions.last().copied().unwrap_or(0);
        let page = journal.parked(key, after, PAGE)?;
        let full = page.len() == PAGE;
        positions.extend(page.into_iter().map(|record| record.position));
        if !full {
            return Ok(positions);
        }
    }
}

/// The fold's state at `target`: `saved` (at or before it; from position 1 if the plugin
/// cannot restore it) plus the events after it that the plugin folds, skipping parked ones.
/// Events are folded in pages as usual, or one at a time if a page fails (they were folded
/// singly before, too).
pub(super) fn rebuilt(
    shared: &Shared,
    journal: &Journal,
    mut saved: Option<(u64, Vec<u8>)>,
    target: u64,
) -> Result<ProjectionInstance, RuntimeError> {
    let mut instance = shared.restored(&mut saved)?;
    let mut singly = false;
    while instance.position < target {
        let mut page = journal.read_all_within(instance.position + 1, REPLAY_LIMIT)?;
        page.retain(|event| event.position <= target);
        let Some(last) = page.last().map(|event| event.position) else {
            break;
        };
        let events = shared.foldable(&page);
        if singly {
            for event in &events {
                instance.apply(std::slice::from_ref(event))?;
            }
        } else if let Err(error) = instance.apply(&events) {
            if events.len() <= 1 {
                return Err(error);
            }
            instance = shared.instance(saved.clone())?;
            singly = true;
            continue;
        }
        instance.position = last;
    }
    Ok(instance)
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
