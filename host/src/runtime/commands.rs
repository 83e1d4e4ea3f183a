//! The write side: commands against aggregates, with a bounded cache of live
//! states, optimistic appends and periodic snapshots.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use lru::LruCache;
use uuid::Uuid;

use super::aggregate::AggregateInstance;
use super::blocking;
use super::error::RuntimeError;
use super::plugin::{Plugin, PluginKind};
use super::upcast::UpcasterChain;
use crate::journal::{
    AppendResult, ExpectedVersion, Journal, JournalError, NewEvent, ReadLimit, RecordedEvent,
};

/// Tuning of the write side.
#[derive(Debug, Clone)]
pub struct AggregateConfig {
    /// Store a snapshot after this many events since the last one.
    pub snapshot_every: u64,
    /// Live aggregate states kept in memory.
    pub cache_capacity: usize,
    /// Times a command is re-decided after a concurrent append to its stream.
    pub max_conflict_retries: u32,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self {
            snapshot_every: 500,
            cache_capacity: 10_000,
            max_conflict_retries: 8,
        }
    }
}

/// A command to an aggregate.
#[derive(Debug, Clone)]
pub struct Command {
    pub command_type: String,
    /// The command's JSON.
    pub data: Vec<u8>,
    /// Makes retries safe: a command with the key of one whose events were stored returns
    /// that command's outcome and appends nothing.
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

/// The namespace of event ids derived from idempotency keys.
const IDEMPOTENCY_IDS: Uuid = Uuid::from_u128(0x6f6c_6468_6f73_7449_6465_6d70_6f74_656e);

/// The id of event `index` of the command with idempotency `key` on `stream`: the same on
/// every retry and every host, so the journal's idempotent append recognises a retry.
fn derived_id(stream: &str, key: &str, index: usize) -> Uuid {
    let name = format!("{}:{stream}{}:{key}{index}", stream.len(), key.len());
    Uuid::new_v5(&IDEMPOTENCY_IDS, name.as_bytes())
}

pub(super) type Slot = Arc<tokio::sync::Mutex<Option<AggregateInstance>>>;

/// Runs commands. Commands to one stream queue on that stream's slot in
/// arrival order; different streams proceed in parallel.
pub struct Aggregates {
    pub(super) journal: Journal,
    pub(super) config: AggregateConfig,
    /// Keyed by stream alone, so that commands to a stream keep queueing in
    /// arrival order while a new plugin version takes over; a state folded by
    /// another version is dropped, never reused (see `take_state`).
    cache: Mutex<LruCache<String, Slot>>,
}

impl Aggregates {
    pub fn new(journal: Journal, config: AggregateConfig) -> Self {
        let capacity = NonZeroUsize::new(config.cache_capacity.max(1)).expect("non-zero");
        Self {
            journal,
            config,
            cache: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// Handles `command` on aggregate `id`: load, decide, append with the expected version,
    /// apply. On a conflicting concurrent append the state catches up and the command is
    /// decided again. Once its events are stored the command succeeds, even if computing the
    /// new state fails ([`CommandOutcome::state`]).
    ///
    /// The whole cycle runs in one hop to the blocking pool: its thread waits
    /// for the group commit, so concurrent commands still share an fsync.
    pub async fn execute(
        &self,
        plugin: &Arc<Plugin>,
        upcasters: &Arc<UpcasterChain>,
        id: &str,
        command: Command,
    ) -> Result<CommandOutcome, RuntimeError> {
        expect_aggregate(plugin)?;
        let started = Instant::now();
        let stream = stream_name(plugin.name(), id);
        let slot = self.slot(&stream);
        let mut live = slot.lock().await;
        let cached = take_state(&mut live, plugin, upcasters);
        let (journal, plugin_, upcasters, retries) = (
            self.journal.clone(),
            plugin.clone(),
            upcasters.clone(),
            self.config.max_conflict_retries,
        );
        let (instance, outcome) = blocking(move || {
            // Another writer (a direct append, another host) may have moved the stream on,
            // or a delete or retention rule hidden some of it: decide against what readers
            // see now.
            let mut instance = match latest(cached, plugin_, upcasters, &journal, &stream) {
                Ok(instance) => instance,
                Err(error) => return Ok((None, Err(error))),
            };
            let outcome = decide_and_append(&mut instance, &journal, &command, retries);
            // A broken store is never reused; nor is one of a stream that still does not
            // exist, so commands to made-up ids leave nothing behind.
            let keep = intact(&outcome) && instance.version > 0;
            Ok((keep.then_some(instance), outcome))
        })
        .await?;
        if let Some(instance) = instance {
            *live = Some(instance);
            self.maybe_snapshot(&mut live).await;
        }
        if outcome.is_ok() {
            metrics::histogram!("foldhost_command_seconds", "plugin" => plugin.name().to_owned())
                .record(started.elapsed().as_secs_f64());
        }
        outcome
    }

    /// The current state of aggregate `id`, or its state at `at_version`
    /// (rebuilt from the nearest snapshot at or below it).
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
            return blocking(move || {
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
                None => AggregateInstance::rehydrate_through(
                    plugin,
                    upcasters,
                    &journal,
                    &stream,
                    u64::MAX,
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

    /// Drops every cached state of `plugin_hash` (after an unload or a swap).
    /// A state in use right now is dropped by its next user instead (see `take_state`).
    pub fn evict_plugin(&self, plugin_hash: &str) {
        let cache = self.cache.lock().expect("cache lock");
        for (_, slot) in cache.iter() {
            if let Ok(mut live) = slot.try_lock()
                && live
                    .as_ref()
                    .is_some_and(|i| i.plugin().hash == plugin_hash)
            {
                *live = None;
            }
        }
    }

    pub(super) fn slot(&self, stream: &str) -> Slot {
        let mut cache = self.cache.lock().expect("cache lock");
        if let Some(slot) = cache.get(stream) {
            metrics::counter!("foldhost_aggregate_cache_hits_total").increment(1);
            return slot.clone();
        }
        metrics::counter!("foldhost_aggregate_cache_misses_total").increment(1);
        let slot = Slot::default();
        cache.put(stream.to_owned(), slot.clone());
        slot
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
                let stream = instance.stream().to_owned();
                instance.snapshot_version = version;
                tokio::spawn(async move {
                    if let Err(error) = journal.put_snapshot(&key, &stream, version, bytes).await {
                        tracing::warn!(%error, %stream, version, "could not store snapshot");
                    }
                });
                *live = Some(instance);
            }
            Err(error) => tracing::warn!(%error, "snapshot failed; state dropped"),
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
    live.take().filter(|i| i.state_key() == key)
}

/// The cached state brought up to what readers see of the stream now, or the stream rebuilt
/// through `upcasters`.
pub(super) fn latest(
    cached: Option<AggregateInstance>,
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
        None => AggregateInstance::rehydrate_through(plugin, upcasters, journal, stream, u64::MAX),
    }
}

/// Whether the instance still holds the stream's state after `outcome`: a refusal leaves it
/// as it was; a plugin failure may have broken it (a trapped store is never reused).
fn intact(outcome: &Result<CommandOutcome, RuntimeError>) -> bool {
    match outcome {
        Ok(outcome) => outcome.state.is_ok(),
        Err(error) => matches!(
            error,
            RuntimeError::Rejected { .. }
                | RuntimeError::InvalidCommand { .. }
                | RuntimeError::TooManyConflicts(_)
                | RuntimeError::Journal(_)
        ),
    }
}

/// Decides the command and appends its events, re-deciding after conflicts. A command with
/// an idempotency key whose events are already stored returns them instead.
fn decide_and_append(
    instance: &mut AggregateInstance,
    journal: &Journal,
    command: &Command,
    retries: u32,
) -> Result<CommandOutcome, RuntimeError> {
    let stream = instance.stream().to_owned();
    let key = command.idempotency_key.as_deref();
    for _ in 0..=retries {
        if let Some(key) = key
            && let Some(stored) = committed(journal, &stream, key)?
        {
            return Ok(outcome_of(instance, journal, stored));
        }
        let mut events = instance.handle(&command.command_type, &command.data)?;
        if events.is_empty() {
            return Ok(CommandOutcome {
                version: instance.version,
                events: Vec::new(),
                state: Ok(instance.state()?),
            });
        }
        if let Some(key) = key {
            for (index, event) in events.iter_mut().enumerate() {
                event.id = derived_id(&stream, key, index);
            }
        }
        let expected = match instance.version {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        };
        match journal.append_blocking(&stream, expected, events.clone()) {
            // From here on the events are stored: the command succeeds whatever follows.
            Ok(appended) => {
                let stored = match key {
                    Some(key) => committed(journal, &stream, key).and_then(|found| {
                        found.ok_or_else(|| JournalError::Corrupt {
                            position: appended.first_position,
                            reason: "an appended event is not found by its id".to_owned(),
                        })
                    }),
                    None => journal.read_stream(&stream, appended.first_version, events.len()),
                };
                return Ok(match stored {
                    Ok(stored) => outcome_of(instance, journal, stored),
                    Err(error) => unread_outcome(&stream, appended, events, error),
                });
            }
            // Someone else appended (or deleted the stream): catch up, decide again.
            Err(JournalError::Conflict { .. }) => instance.refresh(journal)?,
            // Another host stored this key's command first, deciding other events: its
            // outcome is found on the next round.
            Err(JournalError::IdempotencyMismatch { .. }) if key.is_some() => {}
            Err(error) => return Err(error.into()),
        }
    }
    Err(RuntimeError::TooManyConflicts(stream))
}

/// The stored events of the command with idempotency `key` on `stream`, if it was stored:
/// consecutive events whose ids derive from the key.
fn committed(
    journal: &Journal,
    stream: &str,
    key: &str,
) -> Result<Option<Vec<RecordedEvent>>, JournalError> {
    let Some(first) = journal.event_by_id(derived_id(stream, key, 0))? else {
        return Ok(None);
    };
    let mut events = vec![first];
    loop {
        let next = events.last().expect("not empty").version + 1;
        let page = journal.read_stream_within(stream, next, ReadLimit::events(64))?;
        let before = events.len();
        for event in page {
            if event.id != derived_id(stream, key, events.len()) {
                break;
            }
            events.push(event);
        }
        if events.len() - before < 64 {
            return Ok(Some(events));
        }
    }
}

/// The outcome of a command whose events are `stored`: the state right after them, or why
/// it could not be computed.
fn outcome_of(
    instance: &mut AggregateInstance,
    journal: &Journal,
    stored: Vec<RecordedEvent>,
) -> CommandOutcome {
    let version = stored.last().expect("a stored command has events").version;
    let state = (|| {
        if instance.version + 1 == stored[0].version {
            instance.apply(&stored)?;
        } else if instance.version < version {
            instance.catch_up(journal, version)?;
        }
        if instance.version == version {
            return instance.state();
        }
        // A retry after the stream moved on: the state as this command left it.
        let (plugin, upcasters) = (instance.plugin().clone(), instance.upcasters().clone());
        AggregateInstance::rehydrate_through(
            plugin,
            upcasters,
            journal,
            instance.stream(),
            version,
        )?
        .state()
    })();
    CommandOutcome {
        version,
        events: stored,
        state: state.map_err(|error| {
            tracing::error!(%error, "the events are stored, but the new state is unknown");
            format!("the events are stored, but the new state could not be computed: {error}")
        }),
    }
}

/// The outcome of a command whose events are stored but could not be read back: the events
/// as they were sent, `recorded_at` from this host's clock.
fn unread_outcome(
    stream: &str,
    appended: AppendResult,
    sent: Vec<NewEvent>,
    error: JournalError,
) -> CommandOutcome {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    let events = sent
        .into_iter()
        .zip(appended.first_version..)
        .zip(appended.first_position..)
        .map(|((event, version), position)| RecordedEvent {
            position,
            stream: stream.to_owned(),
            version,
            id: event.id,
            event_type: event.event_type,
            content_type: event.content_type,
            data: event.data,
            metadata: event.metadata,
            recorded_at: now,
        })
        .collect();
    CommandOutcome {
        version: appended.last_version,
        events,
        state: Err(format!(
            "the events are stored, but reading them back failed ({error}); recorded_at is \
             this host's clock"
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
