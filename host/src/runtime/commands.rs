//! The write side: commands against aggregates, with a bounded cache of live
//! states, optimistic appends and periodic snapshots.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lru::LruCache;

use super::aggregate::AggregateInstance;
use super::blocking;
use super::error::RuntimeError;
use super::plugin::{Plugin, PluginKind};
use crate::journal::{ExpectedVersion, Journal, JournalError, RecordedEvent};

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

/// What a successful command produced.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    /// The stream version after the command.
    pub version: u64,
    /// The events the command appended (none if it decided nothing).
    pub events: Vec<RecordedEvent>,
    pub state: serde_json::Value,
}

/// The stream an aggregate instance `id` of `plugin` lives in.
pub fn stream_name(plugin: &str, id: &str) -> String {
    format!("{plugin}-{id}")
}

type Slot = Arc<tokio::sync::Mutex<Option<AggregateInstance>>>;

/// Runs commands. Commands to one stream queue on that stream's slot in
/// arrival order; different streams proceed in parallel.
pub struct Aggregates {
    journal: Journal,
    config: AggregateConfig,
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

    /// Handles `command_type` with JSON `data` on aggregate `id`: load, decide,
    /// append with the expected version, apply. On a conflicting concurrent
    /// append the state catches up and the command is decided again.
    ///
    /// The whole cycle runs in one hop to the blocking pool: its thread waits
    /// for the group commit, so concurrent commands still share an fsync.
    pub async fn execute(
        &self,
        plugin: &Arc<Plugin>,
        id: &str,
        command_type: &str,
        data: Vec<u8>,
    ) -> Result<CommandOutcome, RuntimeError> {
        expect_aggregate(plugin)?;
        let started = Instant::now();
        let stream = stream_name(plugin.name(), id);
        let slot = self.slot(&stream);
        let mut live = slot.lock().await;
        let cached = take_state(&mut live, plugin);
        let (journal, plugin_, retries) = (
            self.journal.clone(),
            plugin.clone(),
            self.config.max_conflict_retries,
        );
        let command_type = command_type.to_owned();
        let (instance, outcome) = blocking(move || {
            let mut instance = match cached {
                // Another writer (a direct append, another host) may have moved the stream
                // on, or a delete or retention rule hidden some of it: decide against what
                // readers see now.
                Some(mut instance) => match instance.refresh(&journal) {
                    Ok(()) => instance,
                    Err(error) => return Ok((None, Err(error))),
                },
                None => AggregateInstance::rehydrate(plugin_, &journal, &stream, u64::MAX)?,
            };
            let outcome = decide_and_append(&mut instance, &journal, &command_type, &data, retries);
            // A trapped store is never reused; nor is one of a stream that still does not
            // exist, so commands to made-up ids leave nothing behind.
            let keep = !matches!(outcome, Err(RuntimeError::Trap { .. })) && instance.version > 0;
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
        id: &str,
        at_version: Option<u64>,
    ) -> Result<(u64, serde_json::Value), RuntimeError> {
        expect_aggregate(plugin)?;
        let stream = stream_name(plugin.name(), id);
        let journal = self.journal.clone();
        if let Some(at) = at_version {
            let plugin = plugin.clone();
            return blocking(move || {
                let head = journal.stream_version(&stream)?.unwrap_or(0);
                if head == 0 {
                    return Err(RuntimeError::NoSuchStream(stream));
                }
                let mut instance = AggregateInstance::rehydrate(plugin, &journal, &stream, at)?;
                Ok((instance.version, instance.state()?))
            })
            .await;
        }
        let slot = self.slot(&stream);
        let mut live = slot.lock().await;
        let instance = take_state(&mut live, plugin);
        let plugin = plugin.clone();
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
                None => AggregateInstance::rehydrate(plugin, &journal, &stream, u64::MAX)?,
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

    fn slot(&self, stream: &str) -> Slot {
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
                let (journal, hash, version) = (
                    self.journal.clone(),
                    instance.plugin().hash.clone(),
                    instance.version,
                );
                let stream = instance.stream().to_owned();
                instance.snapshot_version = version;
                tokio::spawn(async move {
                    if let Err(error) = journal.put_snapshot(&hash, &stream, version, bytes).await {
                        tracing::warn!(%error, %stream, version, "could not store snapshot");
                    }
                });
                *live = Some(instance);
            }
            Err(error) => tracing::warn!(%error, "snapshot failed; state dropped"),
        }
    }
}

/// Takes the cached state out of a slot if `plugin` folded it; a state of
/// another version (the one before a swap, or after a rollback) is dropped.
fn take_state(live: &mut Option<AggregateInstance>, plugin: &Plugin) -> Option<AggregateInstance> {
    live.take().filter(|i| i.plugin().hash == plugin.hash)
}

/// Decides the command and appends its events, re-deciding after conflicts.
fn decide_and_append(
    instance: &mut AggregateInstance,
    journal: &Journal,
    command_type: &str,
    data: &[u8],
    retries: u32,
) -> Result<CommandOutcome, RuntimeError> {
    for _ in 0..=retries {
        let events = instance.handle(command_type, data)?;
        if events.is_empty() {
            return Ok(CommandOutcome {
                version: instance.version,
                events: Vec::new(),
                state: instance.state()?,
            });
        }
        let expected = match instance.version {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        };
        let count = events.len();
        match journal.append_blocking(instance.stream(), expected, events) {
            Ok(appended) => {
                let stored =
                    journal.read_stream(instance.stream(), appended.first_version, count)?;
                instance.apply(&stored)?;
                return Ok(CommandOutcome {
                    version: appended.last_version,
                    events: stored,
                    state: instance.state()?,
                });
            }
            // Someone else appended (or deleted the stream): catch up, decide again.
            Err(JournalError::Conflict { .. }) => instance.refresh(journal)?,
            Err(error) => return Err(error.into()),
        }
    }
    Err(RuntimeError::TooManyConflicts(instance.stream().to_owned()))
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
