//! The write side: commands against aggregates, with a bounded cache of live
//! states, optimistic appends and periodic snapshots.
//!
//! Commands to one stream queue on that stream's slot in arrival order and are run in rounds by
//! one driver task per busy stream: each round takes every command queued so far and runs them
//! as one pipeline (see `pipeline`), so a hot stream pays one commit per round, not per command.
//! Different streams proceed in parallel.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, oneshot};
use tracing::Instrument;

use super::aggregate::AggregateInstance;
use super::blocking;
use super::cache::{AggregateCache, LiveGuard, Slot};
use super::dehydrated::{Dehydrated, DehydratedStates, Dehydrator};
use super::error::RuntimeError;
use super::pipeline;
use super::plugin::{Plugin, PluginKind};
use super::projection::QUERY_WAIT;
use super::upcast::UpcasterChain;
use crate::journal::{AppendResult, ByteString, Journal, JournalError, NewEvent, RecordedEvent};

/// Tuning of the write side.
#[derive(Debug, Clone)]
pub struct AggregateConfig {
    /// Store a snapshot after this many events since the last one.
    pub snapshot_every: u64,
    /// Most live aggregate states kept in memory.
    pub cache_capacity: usize,
    /// Most bytes the live aggregate states may hold together, each counted by its footprint
    /// (linear memories, tables and store), and the snapshots of dropped states kept in memory
    /// (dehydrated): a sixteenth of it is theirs. Idle live states are dropped past the rest.
    pub cache_bytes: usize,
    /// Times a command is re-decided after a concurrent append to its stream.
    pub max_conflict_retries: u32,
    /// Most commands of one stream decided and appended together in one round.
    pub max_pipeline: usize,
    /// Live states unused for this long are dropped (passivated), freeing their store; the
    /// next command rehydrates them from their snapshot. None: kept until evicted.
    pub passivate_after: Option<Duration>,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self {
            snapshot_every: 500,
            cache_capacity: 10_000,
            cache_bytes: DEFAULT_CACHE_BYTES,
            max_conflict_retries: 8,
            max_pipeline: 256,
            passivate_after: Some(DEFAULT_PASSIVATE_AFTER),
        }
    }
}

/// The default of [`AggregateConfig::passivate_after`]: Akka Cluster Sharding's.
pub const DEFAULT_PASSIVATE_AFTER: Duration = Duration::from_secs(120);

/// The default of [`AggregateConfig::cache_bytes`].
pub const DEFAULT_CACHE_BYTES: usize = 512 << 20;

/// Past states (`at_version`) rebuilt at once in the whole host. Each is folded in a fresh
/// store that draws on the plugins' shared memory budget, so the rest wait for a turn (as
/// long as a projection query does, then are refused as busy) instead of taking that budget
/// from the commands and projections of every other plugin.
pub const HISTORY_SLOTS: usize = 4;

/// A command to an aggregate.
#[derive(Debug, Clone)]
pub struct Command {
    /// The command's type name.
    pub command_type: String,
    /// The command's JSON.
    pub data: Vec<u8>,
    /// Makes retries safe: a command with the key of one whose events were stored returns
    /// that command's outcome and appends nothing (another command with it is refused).
    pub idempotency_key: Option<String>,
}

impl Command {
    /// A command without an idempotency key.
    pub fn new(command_type: impl Into<String>, data: Vec<u8>) -> Self {
        Self {
            command_type: command_type.into(),
            data,
            idempotency_key: None,
        }
    }
}

/// What a successful command produced.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    /// The stream version after the command.
    pub version: u64,
    /// The events the command appended (none if it decided nothing).
    pub events: Vec<RecordedEvent>,
    /// The state after the command, or why it could not be computed; either way the events
    /// are stored.
    pub state: Result<serde_json::Value, String>,
}

/// The stream an aggregate instance `id` of `plugin` lives in.
pub fn stream_name(plugin: &str, id: &str) -> String {
    format!("{plugin}-{id}")
}

/// One stream's place in the cache: its live state and its queue of commands.
pub(super) struct StreamSlot {
    /// The stream's state; held by one round of commands, one read or one validated append at
    /// a time.
    live: tokio::sync::Mutex<Option<AggregateInstance>>,
    queue: Mutex<Queue>,
    /// The footprint of `live` when it was last unlocked, counted in `counted`.
    pub(super) footprint: AtomicUsize,
    /// The cache's count of bytes held by its slots.
    pub(super) counted: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Pending>,
    /// Whether a driver task is running this stream's rounds.
    driving: bool,
}

/// A command waiting for its round.
struct Pending {
    plugin: Arc<Plugin>,
    upcasters: Arc<UpcasterChain>,
    command: Command,
    reply: oneshot::Sender<Result<CommandOutcome, RuntimeError>>,
    queued: Instant,
}

impl Pending {
    /// The key of the state its command must be decided on.
    fn state_key(&self) -> String {
        self.upcasters.state_key(&self.plugin.hash)
    }
}

impl StreamSlot {
    /// An empty slot whose state's bytes are counted in `counted`.
    pub(super) fn new(counted: Arc<AtomicUsize>) -> Self {
        Self {
            live: tokio::sync::Mutex::default(),
            queue: Mutex::default(),
            footprint: AtomicUsize::new(0),
            counted,
        }
    }

    /// The stream's state, once no one else holds it.
    pub(super) async fn lock(&self) -> LiveGuard<'_> {
        LiveGuard::new(self, self.live.lock().await)
    }

    /// The stream's state, unless someone holds it.
    fn try_lock(&self) -> Option<LiveGuard<'_>> {
        self.live
            .try_lock()
            .ok()
            .map(|live| LiveGuard::new(self, live))
    }

    /// Queues `pending`; true if the caller is to start a driver.
    fn enqueue(&self, pending: Pending) -> bool {
        let mut queue = self.queue.lock().expect("queue lock");
        queue.pending.push_back(pending);
        !std::mem::replace(&mut queue.driving, true)
    }

    /// The next round: the queued commands for the plugin build and upcaster chain of the
    /// first one, at most
    /// `max`. None (and the driver stops) when nothing is queued.
    fn next_round(&self, max: usize) -> Option<Vec<Pending>> {
        let mut queue = self.queue.lock().expect("queue lock");
        let Some(first) = queue.pending.front() else {
            queue.driving = false;
            return None;
        };
        let key = first.state_key();
        let same = queue
            .pending
            .iter()
            .take(max.max(1))
            .take_while(|pending| pending.state_key() == key)
            .count();
        Some(queue.pending.drain(..same).collect())
    }

    /// Puts commands a round did not decide back at the head of the queue, in order.
    fn requeue(&self, deferred: Vec<Pending>) {
        let mut queue = self.queue.lock().expect("queue lock");
        for pending in deferred.into_iter().rev() {
            queue.pending.push_front(pending);
        }
    }

    /// The stream's state, once the slot is no one else's.
    pub(super) fn into_state(self) -> Option<AggregateInstance> {
        self.live.into_inner()
    }

    /// Stops driving after a panic, failing what is queued (their callers see the panic).
    fn abandon(&self) -> u64 {
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dropped = queue.pending.len() as u64;
        queue.pending.clear();
        queue.driving = false;
        dropped
    }
}

/// Counters of the command pipeline since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandStats {
    /// Rounds run: each decided its commands together and appended their events at once.
    pub rounds: u64,
    /// Commands decided (every command once, however often its round was decided again).
    pub commands: u64,
    /// Times a round was decided again because another writer changed its stream first.
    pub redecided: u64,
    /// Commands waiting for a round right now.
    pub queued: u64,
    /// Streams whose slot is in the aggregate cache.
    pub cached_streams: u64,
    /// Bytes the cached states hold, as last counted (see [`AggregateConfig::cache_bytes`]).
    pub cached_bytes: u64,
    /// Streams whose state is kept dehydrated (as a snapshot in memory).
    pub dehydrated_streams: u64,
    /// States restored from their dehydrated snapshot.
    pub rehydrated: u64,
}

#[derive(Default)]
struct Stats {
    rounds: AtomicU64,
    commands: AtomicU64,
    redecided: AtomicU64,
    queued: AtomicU64,
}

/// Runs commands. Commands to one stream queue on that stream's slot in
/// arrival order and run in rounds; different streams proceed in parallel.
pub struct Aggregates {
    pub(super) journal: Journal,
    pub(super) config: AggregateConfig,
    stats: Arc<Stats>,
    /// Keyed by stream alone, so that commands to a stream keep queueing in
    /// arrival order while a new plugin version takes over; a state folded by
    /// another version is dropped, never reused (see `take_state`).
    cache: Arc<AggregateCache>,
    /// The snapshots of the states the cache dropped.
    pub(super) dehydrated: Arc<DehydratedStates>,
    /// Turns to rebuild a past state (see [`HISTORY_SLOTS`]).
    history: Arc<Semaphore>,
    /// Every load of an aggregate build still alive: a reload of the same build is another
    /// [`Plugin`], and a command still running may hold (and cache) the load before.
    loads: Mutex<Vec<Weak<Plugin>>>,
}

impl Aggregates {
    /// Passivates idle states in the background, if configured and inside a tokio runtime.
    pub fn new(journal: Journal, config: AggregateConfig) -> Self {
        let dehydrated_bytes = config.cache_bytes / 16;
        let dehydrated = Arc::new(DehydratedStates::new(dehydrated_bytes));
        let cache = Arc::new(AggregateCache::new(
            config.cache_capacity,
            config.cache_bytes - dehydrated_bytes,
            Dehydrator::start(dehydrated.clone()),
        ));
        if let (Some(timeout), Ok(runtime)) = (
            config.passivate_after,
            tokio::runtime::Handle::try_current(),
        ) {
            runtime.spawn(passivate_idle(Arc::downgrade(&cache), timeout));
        }
        Self {
            journal,
            config,
            stats: Arc::default(),
            cache,
            dehydrated,
            history: Arc::new(Semaphore::new(HISTORY_SLOTS)),
            loads: Mutex::default(),
        }
    }

    /// Handles `command` on aggregate `id`: decide it on the stream's state, append its events
    /// with the expected version, apply them. The command runs in a round with the commands
    /// queued on the stream with it (see `pipeline`); on a conflicting concurrent append the
    /// round catches up and is decided again. Once its events are stored the command succeeds,
    /// even if computing the new state fails ([`CommandOutcome::state`]).
    pub async fn execute(
        &self,
        plugin: &Arc<Plugin>,
        upcasters: &Arc<UpcasterChain>,
        id: &str,
        command: Command,
    ) -> Result<CommandOutcome, RuntimeError> {
        expect_aggregate(plugin)?;
        let stream = stream_name(plugin.name(), id);
        let slot = self.slot(&stream);
        let (reply, outcome) = oneshot::channel();
        let pending = Pending {
            plugin: plugin.clone(),
            upcasters: upcasters.clone(),
            command,
            reply,
            queued: Instant::now(),
        };
        // Bounded like the journal's write queue: past it a command is refused, never queued.
        let limit = self.journal.config().max_queued_writes.max(1) as u64;
        if self.stats.queued.fetch_add(1, Ordering::Relaxed) >= limit {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(JournalError::Overloaded.into());
        }
        if slot.enqueue(pending) {
            let driver = Driver {
                journal: self.journal.clone(),
                config: self.config.clone(),
                stats: self.stats.clone(),
                dehydrated: self.dehydrated.clone(),
            };
            let span = tracing::info_span!("commands", %stream);
            tokio::spawn(driver.drive(slot, stream).instrument(span));
        }
        outcome
            .await
            .unwrap_or_else(|_| panic!("the round running this command panicked"))
    }

    /// Counters of the command pipeline.
    pub fn stats(&self) -> CommandStats {
        CommandStats {
            rounds: self.stats.rounds.load(Ordering::Relaxed),
            commands: self.stats.commands.load(Ordering::Relaxed),
            redecided: self.stats.redecided.load(Ordering::Relaxed),
            queued: self.stats.queued.load(Ordering::Relaxed),
            cached_streams: self.cache.len() as u64,
            cached_bytes: self.cache.bytes() as u64,
            dehydrated_streams: self.dehydrated.len() as u64,
            rehydrated: self.dehydrated.taken(),
        }
    }

    /// The current state of aggregate `id`, or its state at `at_version`
    /// (rebuilt from the nearest snapshot at or below it, at most [`HISTORY_SLOTS`] at once
    /// in the host: one that waits longer than a projection query for its turn is refused
    /// with [`RuntimeError::Busy`]).
    pub async fn state(
        &self,
        plugin: &Arc<Plugin>,
        upcasters: &Arc<UpcasterChain>,
        id: &str,
        at_version: Option<u64>,
    ) -> Result<(u64, serde_json::Value), RuntimeError> {
        expect_aggregate(plugin)?;
        let stream = stream_name(plugin.name(), id);
        let journal = self.journal.clone();
        if let Some(at) = at_version {
            let (plugin, upcasters) = (plugin.clone(), upcasters.clone());
            let turn = self.history.clone().acquire_owned();
            let permit = tokio::time::timeout(QUERY_WAIT, turn)
                .await
                .map_err(|_| RuntimeError::Busy)?
                .expect("the semaphore is never closed");
            return blocking(move || {
                // Held until the store below is dropped.
                let _permit = permit;
                let head = journal.stream_version(&stream)?.unwrap_or(0);
                if head == 0 {
                    return Err(RuntimeError::NoSuchStream(stream));
                }
                let mut instance =
                    AggregateInstance::rehydrate_through(plugin, upcasters, &journal, &stream, at)?;
                Ok((instance.version, instance.state()?))
            })
            .await;
        }
        let slot = self.slot(&stream);
        let mut live = slot.lock().await;
        let instance = take_state(&mut live, plugin, upcasters);
        let dehydrated = take_dehydrated(
            &self.dehydrated,
            instance.as_ref(),
            &stream,
            plugin,
            upcasters,
        );
        let (plugin, upcasters) = (plugin.clone(), upcasters.clone());
        let (instance, version, state) = blocking(move || {
            let mut instance = match instance {
                Some(mut instance) => {
                    // Pick up events appended directly to the stream, and deletions.
                    instance.refresh(&journal)?;
                    if instance.version == 0 {
                        // Soft-deleted since: the state goes with it.
                        return Err(RuntimeError::NoSuchStream(stream));
                    }
                    instance
                }
                // A stream that does not exist gets no store (made-up ids cost nothing).
                None if journal.stream_version(&stream)?.is_none() => {
                    return Err(RuntimeError::NoSuchStream(stream));
                }
                None => AggregateInstance::rehydrate_from(
                    plugin,
                    upcasters,
                    &journal,
                    &stream,
                    u64::MAX,
                    dehydrated,
                )?,
            };
            let state = instance.state()?;
            let version = instance.version;
            Ok((instance, version, state))
        })
        .await?;
        *live = Some(instance);
        Ok((version, state))
    }

    /// Records `plugin`, an aggregate build installed, for [`close_data`](Self::close_data).
    pub fn track(&self, plugin: &Arc<Plugin>) {
        let mut loads = self.loads.lock().expect("loads lock");
        loads.retain(|load| load.strong_count() > 0);
        loads.push(Arc::downgrade(plugin));
    }

    /// Closes the data gate of every load of build `plugin_hash` still alive, once the
    /// snapshot writes in flight have ended: none of them stores another.
    pub async fn close_data(&self, plugin_hash: &str) {
        let loads: Vec<Arc<Plugin>> = (self.loads.lock().expect("loads lock").iter())
            .filter_map(Weak::upgrade)
            .filter(|load| load.hash == plugin_hash)
            .collect();
        for load in loads {
            load.data.close().await;
        }
    }

    /// Drops every cached state of `plugin_hash` (after an unload or a swap).
    /// A state in use right now is dropped by its next user instead (see `take_state`).
    pub fn evict_plugin(&self, plugin_hash: &str) {
        self.dehydrated.forget_plugin(plugin_hash);
        self.cache.for_each(|slot| {
            if let Some(mut live) = slot.try_lock()
                && live
                    .as_ref()
                    .is_some_and(|i| i.plugin().hash == plugin_hash)
            {
                *live = None;
            }
        });
    }

    pub(super) fn slot(&self, stream: &str) -> Slot {
        self.cache.slot(stream)
    }
}

/// The dehydrated state of `stream` by `plugin` through `upcasters` out of `states`, when no
/// live one is `cached`.
pub(super) fn take_dehydrated(
    states: &DehydratedStates,
    cached: Option<&AggregateInstance>,
    stream: &str,
    plugin: &Plugin,
    upcasters: &UpcasterChain,
) -> Option<Dehydrated> {
    match cached {
        Some(_) => None,
        None => states.take(stream, &upcasters.state_key(&plugin.hash)),
    }
}

/// Passivates the states idle for `timeout`, checking a few times per timeout, for as long
/// as the cache lives.
async fn passivate_idle(cache: std::sync::Weak<AggregateCache>, timeout: Duration) {
    let mut ticks = tokio::time::interval((timeout / 4).max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(cache) = cache.upgrade() else {
            return;
        };
        // Dropping stores unmaps their memories: off the async workers.
        let _ = tokio::task::spawn_blocking(move || {
            if cache.passivate(timeout) > 0 {
                crate::allocator::release_free_memory();
            }
        })
        .await;
    }
}

/// Runs the rounds of one stream while commands are queued on it.
struct Driver {
    journal: Journal,
    config: AggregateConfig,
    stats: Arc<Stats>,
    dehydrated: Arc<DehydratedStates>,
}

impl Driver {
    async fn drive(self, slot: Slot, stream: String) {
        let mut abandon = Abandon {
            slot: &slot,
            stats: &self.stats,
            in_round: 0,
            armed: true,
        };
        loop {
            let mut live = slot.lock().await;
            let Some(round) = slot.next_round(self.config.max_pipeline) else {
                break;
            };
            abandon.in_round = round.len() as u64;
            let (plugin, upcasters) = (round[0].plugin.clone(), round[0].upcasters.clone());
            let cached = take_state(&mut live, &plugin, &upcasters);
            let dehydrated = take_dehydrated(
                &self.dehydrated,
                cached.as_ref(),
                &stream,
                &plugin,
                &upcasters,
            );
            let (commands, mut waiting): (Vec<Command>, Vec<_>) = round
                .into_iter()
                .map(|p| (p.command, (p.plugin, p.upcasters, p.reply, p.queued)))
                .unzip();
            let (journal, config, stream_) =
                (self.journal.clone(), self.config.clone(), stream.clone());
            let (ran, commands) = blocking(move || {
                let state = pipeline::State {
                    cached,
                    dehydrated,
                    plugin,
                    upcasters,
                };
                let ran = pipeline::run(state, &journal, &stream_, &commands, &config);
                Ok((ran, commands))
            })
            .await
            .expect("a round reports failures in its outcomes");
            let decided = ran.outcomes.len();
            self.stats.rounds.fetch_add(1, Ordering::Relaxed);
            self.stats
                .commands
                .fetch_add(decided as u64, Ordering::Relaxed);
            self.stats
                .queued
                .fetch_sub(decided as u64, Ordering::Relaxed);
            // The rest are queued again below.
            abandon.in_round = 0;
            self.stats
                .redecided
                .fetch_add(u64::from(ran.redecided), Ordering::Relaxed);
            metrics::histogram!("foldhost_command_round_size").record(decided as f64);
            let deferred: Vec<Pending> = commands
                .into_iter()
                .skip(decided)
                .zip(waiting.drain(decided..))
                .map(|(command, (plugin, upcasters, reply, queued))| Pending {
                    plugin,
                    upcasters,
                    command,
                    reply,
                    queued,
                })
                .collect();
            slot.requeue(deferred);
            for ((plugin, _, reply, queued), outcome) in waiting.into_iter().zip(ran.outcomes) {
                if outcome.is_ok() {
                    metrics::histogram!("foldhost_command_seconds", "plugin" => plugin.name().to_owned())
                        .record(queued.elapsed().as_secs_f64());
                }
                let _ = reply.send(outcome);
            }
            *live = ran.instance.filter(AggregateInstance::is_usable);
            self.maybe_snapshot(&mut live).await;
        }
        abandon.armed = false;
    }

    /// Stores a snapshot when enough events were folded since the last one.
    /// The write rides along with the next group commit.
    async fn maybe_snapshot(&self, live: &mut Option<AggregateInstance>) {
        let Some(instance) = live.take() else {
            return;
        };
        if !instance.may_snapshot()
            || instance.version < instance.snapshot_version + self.config.snapshot_every
        {
            *live = Some(instance);
            return;
        }
        let snapshotted = blocking(move || {
            let mut instance = instance;
            let bytes = instance.snapshot();
            Ok((instance, bytes))
        })
        .await;
        let Ok((mut instance, bytes)) = snapshotted else {
            return;
        };
        match bytes {
            Ok(bytes) => {
                let (journal, key, version) =
                    (self.journal.clone(), instance.state_key(), instance.version);
                let (plugin, stream) = (instance.plugin().clone(), instance.stream().to_owned());
                instance.snapshot_version = version;
                tokio::spawn(async move {
                    let put = journal.put_snapshot(&key, &stream, version, bytes);
                    // None once an unload dropped the build's data: the snapshot goes with it.
                    if let Some(Err(error)) = plugin.data.write(put).await {
                        tracing::warn!(%error, %stream, version, "could not store snapshot");
                    }
                });
                *live = Some(instance);
            }
            Err(error) => tracing::warn!(%error, "snapshot failed; state dropped"),
        }
    }
}

/// Fails the queued commands of a stream whose driver panicked, so that the next command
/// starts a new driver instead of waiting for a dead one; they and the round that was running
/// stop counting against the queue's bound.
struct Abandon<'a> {
    slot: &'a StreamSlot,
    stats: &'a Stats,
    /// Commands taken off the queue for the round running.
    in_round: u64,
    armed: bool,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if self.armed {
            let dropped = self.slot.abandon() + self.in_round;
            self.stats.queued.fetch_sub(dropped, Ordering::Relaxed);
        }
    }
}

/// Takes the cached state out of a slot if `plugin` folded it through `upcasters`; a state of
/// another version (the one before a swap, or after a rollback) or folded through another
/// chain is dropped: the stream rehydrates on its next command.
pub(super) fn take_state(
    live: &mut Option<AggregateInstance>,
    plugin: &Plugin,
    upcasters: &UpcasterChain,
) -> Option<AggregateInstance> {
    let key = upcasters.state_key(&plugin.hash);
    // Of this very load: one of an earlier load of the build (an unload and reload while a
    // command ran) writes its snapshots through that load's data gate.
    live.take()
        .filter(|i| std::ptr::eq(i.plugin().as_ref(), plugin) && i.state_key() == key)
}

/// The cached state brought up to what readers see of the stream now, or the stream rebuilt
/// through `upcasters` (from its `dehydrated` state, if any).
pub(super) fn latest(
    cached: Option<AggregateInstance>,
    dehydrated: Option<Dehydrated>,
    plugin: Arc<Plugin>,
    upcasters: Arc<UpcasterChain>,
    journal: &Journal,
    stream: &str,
) -> Result<AggregateInstance, RuntimeError> {
    match cached {
        Some(mut instance) => {
            instance.refresh(journal)?;
            Ok(instance)
        }
        None => AggregateInstance::rehydrate_from(
            plugin,
            upcasters,
            journal,
            stream,
            u64::MAX,
            dehydrated,
        ),
    }
}

/// The outcome of a command whose events are stored but could not be read back (`why`): the
/// events as they were sent, `recorded_at` from this host's clock.
pub(super) fn unread_outcome(
    stream: &str,
    appended: AppendResult,
    sent: Vec<NewEvent>,
    why: &str,
) -> CommandOutcome {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    let stream = ByteString::from(stream);
    let events = sent
        .into_iter()
        .zip(appended.first_version..)
        .zip(appended.first_position..)
        .map(|((event, version), position)| RecordedEvent {
            position,
            stream: stream.clone(),
            version,
            id: event.id,
            event_type: event.event_type.into(),
            content_type: event.content_type,
            data: event.data.into(),
            metadata: event.metadata.map(Into::into),
            recorded_at: now,
        })
        .collect();
    CommandOutcome {
        version: appended.last_version,
        events,
        state: Err(format!(
            "the events are stored, but {why}; recorded_at is this host's clock"
        )),
    }
}

fn expect_aggregate(plugin: &Plugin) -> Result<(), RuntimeError> {
    if plugin.kind() == PluginKind::Aggregate {
        Ok(())
    } else {
        Err(RuntimeError::WrongKind {
            plugin: plugin.name().to_owned(),
            expected: "aggregate",
        })
    }
}
