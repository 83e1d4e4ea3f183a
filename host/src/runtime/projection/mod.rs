//! Projections: a plugin folding the global log in the background, from its
//! checkpoint to the head, then live as the journal's writer signals commits.
//!
//! The fold never dies for good: a failure that may pass is retried with backoff, and an
//! event the plugin cannot fold is narrowed down, retried a few times, then parked (or, by
//! policy, stops the projection for an operator); see `failure`. Readers never touch the
//! fold's store: states and queries run on a copy (see `runner`).

mod failure;
mod runner;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::aggregate::REPLAY_LIMIT;
use super::bindings::ProjectionExports;
use super::error::RuntimeError;
use super::plugin::Plugin;
use super::sandbox::{PluginStore, guarded};
use super::upcast::UpcasterChain;
use crate::journal::{Journal, Pages, RecordedEvent};

pub use failure::{FailurePolicy, ParkReport};
pub use runner::{ProjectionRunner, RunnerOptions};

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
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum ProjectionStatus {
    /// Starting: restoring its checkpoint.
    Starting,
    /// Replaying history towards the head.
    CatchingUp {
        /// The last position folded.
        position: u64,
        /// The head it is catching up to.
        head: u64,
        /// Recent replay rate.
        events_per_sec: f64,
    },
    /// At the head, following new appends.
    Live {
        /// The last position folded.
        position: u64,
    },
    /// An aggregate plugin: nothing to catch up, ready for commands.
    #[serde(rename = "live")]
    Serving,
    /// Waiting to try again after a failure that may pass (the journal unreachable, a call
    /// that ran out of time, an event being retried before it is parked); goes on by itself.
    Retrying {
        /// The position it is stuck at.
        position: u64,
        /// Why.
        reason: String,
        /// Tries so far.
        attempt: u32,
    },
    /// Stopped at an event it cannot fold (policy `stop`), like KurrentDB's faulted
    /// projection: its state stays readable as of `position - 1`, and it waits for an
    /// operator to restart, reset or replace it.
    Faulted {
        /// The position of the event it cannot fold.
        position: u64,
        /// Why it cannot.
        reason: String,
    },
}

/// One projection instance: the state folded up to `position`.
pub struct ProjectionInstance {
    plugin: Arc<Plugin>,
    /// The upcasters its events pass through.
    upcasters: Arc<UpcasterChain>,
    store: PluginStore,
    bindings: ProjectionExports,
    /// The last global position read (whether or not the plugin wanted it).
    pub position: u64,
}

impl ProjectionInstance {
    /// Starts empty, or from a checkpoint `(position, snapshot)`, fed the events as stored.
    pub fn new(
        plugin: Arc<Plugin>,
        checkpoint: Option<(u64, Vec<u8>)>,
    ) -> Result<Self, RuntimeError> {
        Self::through(plugin, UpcasterChain::none(), checkpoint)
    }

    /// [`new`](Self::new), fed every event through `upcasters` (the chain relevant to the
    /// plugin, see [`UpcasterChain::for_plugin`]).
    pub fn through(
        plugin: Arc<Plugin>,
        upcasters: Arc<UpcasterChain>,
        checkpoint: Option<(u64, Vec<u8>)>,
    ) -> Result<Self, RuntimeError> {
        let (mut store, bindings) = plugin.instantiate_projection()?;
        let (position, bytes) = checkpoint.map_or((0, None), |(p, b)| (p, Some(b)));
        let guest = bindings.world.foldhost_plugin_projection();
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
            upcasters,
            store,
            bindings,
            position,
        })
    }

    /// Whether the plugin may fold stored `event`: it is in its subscription, or (when
    /// upcasters feed it, which may change event types) in one of its categories.
    pub fn wants(&self, event: &RecordedEvent) -> bool {
        let subscription = &self.plugin.subscription;
        match self.upcasters.is_empty() {
            true => subscription.wants(&event.stream, &event.event_type),
            false => subscription.wants_stream(&event.stream),
        }
    }

    /// Folds a page of the global log (ascending, after `position`) through the upcasters;
    /// events outside the plugin's subscription (as upcast) are skipped without a call.
    pub fn apply(&mut self, events: &[RecordedEvent]) -> Result<(), RuntimeError> {
        let Some(last) = events.last().map(|event| event.position) else {
            return Ok(());
        };
        let upcast;
        let events = if self.upcasters.is_empty() {
            events
        } else {
            upcast = self.upcasters.upcast(events.to_vec())?;
            &upcast[..]
        };
        let subscription = &self.plugin.subscription;
        // The wanted events go straight into the batch; where they start and end is looked
        // up only for a message.
        let mut wants = subscription.wants_each();
        if let Some(first) = events.iter().position(|event| wants(&event)) {
            let events = &events[first..];
            let context = || {
                let to = events.iter().rev().find(subscription.wants_each());
                let to = to.map_or(events[0].position, |event| event.position);
                format!("applying events at positions {}..={to}", events[0].position)
            };
            let bindings = &self.bindings;
            let applied = guarded(&mut self.store, self.plugin.engine(), context, |s| {
                bindings.call_apply(s, events.iter().filter(subscription.wants_each()))
            })?;
            applied.map_err(|message| RuntimeError::PluginFailed {
                plugin: self.plugin.name().to_owned(),
                context: context(),
                message,
            })?;
        }
        self.position = last;
        Ok(())
    }

    /// Reads and folds the global log up to the current head (for offline replay), reading
    /// each page while the one before it folds ([`Pages::fold_ahead`]); returns how many
    /// events it read.
    pub fn catch_up(&mut self, journal: &Journal) -> Result<u64, RuntimeError> {
        let mut replayed = 0;
        let pages = Pages::All {
            from: self.position + 1,
        };
        pages.fold_ahead(journal, REPLAY_LIMIT, |page| {
            replayed += page.len() as u64;
            self.apply(page)
        })?;
        Ok(replayed)
    }

    /// The plugin it runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Its state as a checkpoint (the plugin's `snapshot`).
    pub fn snapshot(&mut self) -> Result<Vec<u8>, RuntimeError> {
        let guest = self.bindings.world.foldhost_plugin_projection();
        guarded(
            &mut self.store,
            self.plugin.engine(),
            || "taking a checkpoint".into(),
            |s| guest.call_snapshot(s),
        )
    }

    /// Its state as JSON (the plugin's `state`).
    pub fn state(&mut self) -> Result<serde_json::Value, RuntimeError> {
        let guest = self.bindings.world.foldhost_plugin_projection();
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
        let guest = self.bindings.world.foldhost_plugin_projection();
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
