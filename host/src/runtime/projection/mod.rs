//! Projections: a plugin folding the global log in the background, from its
//! checkpoint to the head, then live as the journal's writer signals commits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use wasmtime::Store;

use super::aggregate::REPLAY_BATCH;
use super::bindings::projection::ProjectionPlugin;
use super::bindings::{PluginData, encode_batch};
use super::blocking;
use super::error::RuntimeError;
use super::plugin::Plugin;
use super::sandbox::guarded;
use crate::journal::{Journal, RecordedEvent};

/// When a running projection stores a checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointPolicy {
    /// After this many events read since the last checkpoint...
    pub every_events: u64,
    /// ...or this much time with progress since the last one.
    pub every: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every_events: 4000,
            every: Duration::from_secs(5),
        }
    }
}

/// Where a plugin stands: a projection's progress, or an aggregate that is serving.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum ProjectionStatus {
    /// Starting: restoring its checkpoint.
    Starting,
    /// Replaying history towards the head.
    CatchingUp {
        position: u64,
        head: u64,
        events_per_sec: f64,
    },
    /// At the head, following new appends.
    Live { position: u64 },
    /// An aggregate plugin: nothing to catch up, ready for commands.
    #[serde(rename = "live")]
    Serving,
    /// Stopped by an error; the reason says which plugin call failed and where.
    Failed { position: u64, reason: String },
}

/// One projection instance: the state folded up to `position`.
pub struct ProjectionInstance {
    plugin: Arc<Plugin>,
    store: Store<PluginData>,
    bindings: ProjectionPlugin,
    /// The last global position read (whether or not the plugin wanted it).
    pub position: u64,
}

impl ProjectionInstance {
    /// Starts empty, or from a checkpoint `(position, snapshot)`.
    pub fn new(
        plugin: Arc<Plugin>,
        checkpoint: Option<(u64, Vec<u8>)>,
    ) -> Result<Self, RuntimeError> {
        let (mut store, bindings) = plugin.instantiate_projection()?;
        let (position, bytes) = checkpoint.map_or((0, None), |(p, b)| (p, Some(b)));
        let guest = bindings.foldhost_plugin_projection();
        let restored = guarded(
            &mut store,
            plugin.engine(),
            || format!("restoring its checkpoint at position {position}"),
            |s| guest.call_init(s, bytes.as_deref()),
        )?;
        restored.map_err(|message| RuntimeError::PluginFailed {
            plugin: plugin.name().to_owned(),
            context: format!("restoring its checkpoint at position {position}"),
            message,
        })?;
        Ok(Self {
            plugin,
            store,
            bindings,
            position,
        })
    }

    /// Folds a page of the global log (ascending, after `position`); events
    /// outside the plugin's subscription are skipped without a call.
    pub fn apply(&mut self, events: &[RecordedEvent]) -> Result<(), RuntimeError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let subscription = &self.plugin.subscription;
        let wanted: Vec<&RecordedEvent> = events
            .iter()
            .filter(|e| subscription.wants(&e.stream, &e.event_type))
            .collect();
        if let (Some(first), Some(end)) = (wanted.first(), wanted.last()) {
            let (from, to) = (first.position, end.position);
            let batch = encode_batch(wanted);
            let guest = self.bindings.foldhost_plugin_projection();
            let context = || format!("applying events at positions {from}..={to}");
            let applied = guarded(&mut self.store, self.plugin.engine(), context, |s| {
                guest.call_apply(s, &batch)
            })?;
            applied.map_err(|message| RuntimeError::PluginFailed {
                plugin: self.plugin.name().to_owned(),
                context: context(),
                message,
            })?;
        }
        self.position = last.position;
        Ok(())
    }

    /// Reads and folds the global log up to the current head (for offline replay).
    pub fn catch_up(&mut self, journal: &Journal) -> Result<u64, RuntimeError> {
        let mut replayed = 0;
        loop {
            let events = journal.read_all(self.position + 1, REPLAY_BATCH)?;
            if events.is_empty() {
                return Ok(replayed);
            }
            replayed += events.len() as u64;
            self.apply(&events)?;
        }
    }

    pub fn snapshot(&mut self) -> Result<Vec<u8>, RuntimeError> {
        let guest = self.bindings.foldhost_plugin_projection();
        guarded(
            &mut self.store,
            self.plugin.engine(),
            || "taking a checkpoint".into(),
            |s| guest.call_snapshot(s),
        )
    }

    pub fn state(&mut self) -> Result<serde_json::Value, RuntimeError> {
        let guest = self.bindings.foldhost_plugin_projection();
        let text = guarded(
            &mut self.store,
            self.plugin.engine(),
            || "rendering its state".into(),
            |s| guest.call_state(s),
        )?;
        self.parse_json(&text, "rendering its state")
    }

    /// Runs the plugin's named query; `Ok(Err(..))` is the plugin's own refusal.
    pub fn query(
        &mut self,
        name: &str,
        args: &serde_json::Value,
    ) -> Result<Result<serde_json::Value, String>, RuntimeError> {
        let guest = self.bindings.foldhost_plugin_projection();
        let args = args.to_string();
        let answer = guarded(
            &mut self.store,
            self.plugin.engine(),
            || format!("answering query {name}"),
            |s| guest.call_query(s, name, &args),
        )?;
        match answer {
            Ok(text) => Ok(Ok(self.parse_json(&text, "answering a query")?)),
            Err(refusal) => Ok(Err(refusal)),
        }
    }

    fn parse_json(&self, text: &str, context: &str) -> Result<serde_json::Value, RuntimeError> {
        serde_json::from_str(text).map_err(|e| RuntimeError::PluginFailed {
            plugin: self.plugin.name().to_owned(),
            context: context.to_owned(),
            message: format!("returned invalid JSON: {e}"),
        })
    }
}

/// A projection kept up to date by a background task.
pub struct ProjectionRunner {
    plugin: Arc<Plugin>,
    instance: Arc<Mutex<Option<ProjectionInstance>>>,
    status: watch::Receiver<ProjectionStatus>,
    /// Events read from the journal since this runner started.
    replayed: Arc<std::sync::atomic::AtomicU64>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ProjectionRunner {
    /// Starts following the journal from the plugin's checkpoint (or position 1).
    pub fn start(plugin: Arc<Plugin>, journal: Journal, policy: CheckpointPolicy) -> Self {
        let (status_tx, status) = watch::channel(ProjectionStatus::Starting);
        let instance = Arc::new(Mutex::new(None));
        let replayed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let worker = Worker {
            plugin: plugin.clone(),
            journal,
            policy,
            instance: instance.clone(),
            status: status_tx,
            replayed: replayed.clone(),
        };
        let task = tokio::spawn(worker.run());
        Self {
            plugin,
            instance,
            status,
            replayed,
            task: Mutex::new(Some(task)),
        }
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<ProjectionStatus> {
        self.status.clone()
    }

    /// Events this runner has read from the journal since it started.
    pub fn replayed(&self) -> u64 {
        self.replayed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The folded position and state, or `None` before the instance exists.
    pub fn state(&self) -> Result<Option<(u64, serde_json::Value)>, RuntimeError> {
        let mut guard = self.instance.lock().expect("projection lock");
        match guard.as_mut() {
            Some(instance) => Ok(Some((instance.position, instance.state()?))),
            None => Ok(None),
        }
    }

    /// Runs a named query against the current state.
    pub fn query(
        &self,
        name: &str,
        args: &serde_json::Value,
    ) -> Result<Option<Result<serde_json::Value, String>>, RuntimeError> {
        let mut guard = self.instance.lock().expect("projection lock");
        guard.as_mut().map(|i| i.query(name, args)).transpose()
    }

    /// Stores a checkpoint of the current state (after [`stop`](Self::stop)).
    pub async fn save_checkpoint(&self, journal: &Journal) -> Result<(), RuntimeError> {
        let slot = self.instance.clone();
        let saved = blocking(move || {
            let mut guard = slot.lock().expect("projection lock");
            guard
                .as_mut()
                .map(|instance| Ok((instance.position, instance.snapshot()?)))
                .transpose()
        })
        .await?;
        if let Some((position, snapshot)) = saved {
            journal
                .put_checkpoint(&self.plugin.hash, position, snapshot)
                .await?;
        }
        Ok(())
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

struct Worker {
    plugin: Arc<Plugin>,
    journal: Journal,
    policy: CheckpointPolicy,
    instance: Arc<Mutex<Option<ProjectionInstance>>>,
    status: watch::Sender<ProjectionStatus>,
    replayed: Arc<std::sync::atomic::AtomicU64>,
}

impl Worker {
    async fn run(self) {
        let name = self.plugin.name().to_owned();
        if let Err(error) = self.follow().await {
            let position = self
                .instance
                .lock()
                .expect("projection lock")
                .as_ref()
                .map_or(0, |i| i.position);
            tracing::error!(plugin = %name, %error, position, "projection stopped");
            self.status.send_replace(ProjectionStatus::Failed {
                position,
                reason: error.to_string(),
            });
        }
    }

    async fn follow(&self) -> Result<(), RuntimeError> {
        let mut commits = self.journal.subscribe();
        let (plugin, journal, slot) = (
            self.plugin.clone(),
            self.journal.clone(),
            self.instance.clone(),
        );
        let mut position = blocking(move || {
            let checkpoint = journal.checkpoint(&plugin.hash)?;
            let instance = ProjectionInstance::new(plugin, checkpoint)?;
            let position = instance.position;
            *slot.lock().expect("projection lock") = Some(instance);
            Ok(position)
        })
        .await?;
        let mut checkpointed = (position, Instant::now());
        let mut rate = (position, Instant::now());
        loop {
            let head = *commits.borrow_and_update();
            if position >= head {
                self.checkpoint_if_due(position, &mut checkpointed, false)
                    .await?;
                self.status
                    .send_replace(ProjectionStatus::Live { position });
                match tokio::time::timeout(self.policy.every, commits.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Ok(()), // the journal closed
                    // Quiet for a while: save what the last burst folded.
                    Err(_) => {
                        self.checkpoint_if_due(position, &mut checkpointed, true)
                            .await?
                    }
                }
                continue;
            }
            let (journal, slot) = (self.journal.clone(), self.instance.clone());
            let read = blocking(move || {
                let events = journal.read_all(position + 1, REPLAY_BATCH)?;
                let mut guard = slot.lock().expect("projection lock");
                let instance = guard.as_mut().expect("instance is set before following");
                if events.is_empty() {
                    // Nothing up to the head is visible any more (deleted, expired or
                    // scavenged): the log skips those positions.
                    instance.position = instance.position.max(head);
                }
                let outcome = instance.apply(&events);
                if outcome.is_err() {
                    // A trapped store is never reused.
                    *guard = None;
                }
                outcome.map(|()| (events.len() as u64, instance_position(&guard)))
            })
            .await?;
            let (count, new_position) = read;
            self.replayed
                .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("foldhost_projection_events_total", "plugin" => self.plugin.name().to_owned())
                .increment(count);
            position = new_position;
            if head.saturating_sub(position) > REPLAY_BATCH as u64 {
                let elapsed = rate.1.elapsed().as_secs_f64();
                if elapsed >= 0.5 {
                    let events_per_sec = (position - rate.0) as f64 / elapsed;
                    rate = (position, Instant::now());
                    self.status.send_replace(ProjectionStatus::CatchingUp {
                        position,
                        head,
                        events_per_sec,
                    });
                } else if matches!(*self.status.borrow(), ProjectionStatus::Starting) {
                    self.status.send_replace(ProjectionStatus::CatchingUp {
                        position,
                        head,
                        events_per_sec: 0.0,
                    });
                }
            }
            self.checkpoint_if_due(position, &mut checkpointed, false)
                .await?;
        }
    }

    /// Stores (position, snapshot) when the policy says so, or on any unsaved
    /// progress when `force` is set.
    async fn checkpoint_if_due(
        &self,
        position: u64,
        last: &mut (u64, Instant),
        force: bool,
    ) -> Result<(), RuntimeError> {
        let progressed = position - last.0;
        let due = progressed >= self.policy.every_events
            || (progressed > 0 && (force || last.1.elapsed() >= self.policy.every));
        if !due {
            return Ok(());
        }
        let slot = self.instance.clone();
        let snapshot = blocking(move || {
            let mut guard = slot.lock().expect("projection lock");
            let instance = guard.as_mut().expect("instance is set before following");
            Ok((instance.position, instance.snapshot()?))
        })
        .await?;
        self.journal
            .put_checkpoint(&self.plugin.hash, snapshot.0, snapshot.1)
            .await?;
        *last = (position, Instant::now());
        Ok(())
    }
}

fn instance_position(guard: &Option<ProjectionInstance>) -> u64 {
    guard.as_ref().map_or(0, |i| i.position)
}
