//! Projections: a plugin folding the global log in the background, from its
//! checkpoint to the head, then live as the journal's writer signals commits.
//!
//! The fold never dies for good: a failure that may pass is retried with backoff, and an
//! event the plugin cannot fold is narrowed down, retried a few times, then parked (or, by
//! policy, stops the projection for an operator); see `failure`. Readers never touch the
//! fold's store: states and queries run on a copy (see `runner`).

mod failure;
mod parked;
mod runner;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::aggregate::REPLAY_LIMIT;
use super::bindings::{PackedBuilder, ProjectionExports, types::PackedBatch};
use super::error::RuntimeError;
use super::plugin::{Plugin, Subscription};
use super::sandbox::{PluginStore, guarded, guarded_answer};
use super::upcast::UpcasterChain;
use crate::journal::{Journal, JournalError, Pages, ReadLimit, RecordedEvent, read_ahead};

pub use failure::{FailurePolicy, ParkReport};
pub(super) use runner::QUERY_WAIT;
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
    /// operator to restart, reset or replace it. Also where a run stops, whatever the
    /// policy, whose plugin cannot make its state at all (its blank state, or a rebuild
    /// from the log, traps or is refused): then it may have no state to read.
    Faulted {
        /// The position of the event it cannot fold, or where its state was to be made
        /// again (0 at start).
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
        guarded_answer(
            &mut store,
            plugin.engine(),
            || format!("restoring its checkpoint at position {position}"),
            |s| guest.call_init(s, bytes.as_deref()),
        )?;
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
        let events = &*self.upcasters.upcast_slice(events)?;
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
            guarded_answer(&mut self.store, self.plugin.engine(), context, |s| {
                bindings.call_apply(s, events.iter().filter(subscription.wants_each()))
            })?;
        }
        self.position = last;
        Ok(())
    }

    /// Reads and folds the global log up to the current head (for offline replay), reading
    /// each page while the one before it folds ([`Pages::fold_ahead`]); returns how many
    /// events it read.
    ///
    /// A packed fold of the events as stored (no upcasters) gets each page packed into its
    /// batch straight from the journal's pages ([`Journal::scan_all`]): no [`RecordedEvent`] is
    /// made.
    pub fn catch_up(&mut self, journal: &Journal) -> Result<u64, RuntimeError> {
        self.catch_up_reporting(journal, |_| {})
    }

    /// [`catch_up`](Self::catch_up), calling `progress` with the position reached after each
    /// page.
    pub fn catch_up_reporting(
        &mut self,
        journal: &Journal,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, RuntimeError> {
        if self.upcasters.is_empty() && self.bindings.packed.is_some() {
            return self.catch_up_packed(journal, progress);
        }
        let mut replayed = 0;
        let pages = Pages::All {
            from: self.position + 1,
        };
        pages.fold_ahead(journal, REPLAY_LIMIT, |page| {
            replayed += page.len() as u64;
            self.apply(page)?;
            progress(self.position);
            Ok::<_, RuntimeError>(())
        })?;
        Ok(replayed)
    }

    /// [`catch_up_reporting`](Self::catch_up_reporting) for a packed fold of the events as
    /// stored: the reading thread packs each page ([`PackedPage::read`]).
    fn catch_up_packed(
        &mut self,
        journal: &Journal,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, RuntimeError> {
        let plugin = self.plugin.clone();
        let mut from = self.position + 1;
        let mut read = move || {
            let page = PackedPage::read(journal, &plugin.subscription, from, REPLAY_LIMIT)?;
            if let Some(page) = &page {
                from = page.last + 1;
            }
            Ok(page)
        };
        let mut replayed = 0;
        let mut fold = |page: PackedPage| {
            replayed += page.read as u64;
            self.apply_packed(page)?;
            progress(self.position);
            Ok::<_, RuntimeError>(())
        };
        let Some(first) = read()? else {
            return Ok(0);
        };
        if first.read >= REPLAY_LIMIT.events {
            read_ahead(read, first, fold)?;
        } else {
            // A first page short of the limit's events (the log's end, or events large enough
            // to fill its bytes first) reads the rest on this thread, as `Pages::fold_ahead` does.
            fold(first)?;
            while let Some(page) = read()? {
                fold(page)?;
            }
        }
        Ok(replayed)
    }

    /// Folds a page packed by [`PackedPage::read`] and moves past it.
    fn apply_packed(&mut self, page: PackedPage) -> Result<(), RuntimeError> {
        if let (Some((first, to)), Some(packed)) = (page.wanted, &self.bindings.packed) {
            let context = || format!("applying events at positions {first}..={to}");
            guarded_answer(&mut self.store, self.plugin.engine(), context, |s| {
                packed.call_apply(s, &page.batch)
            })?;
        }
        self.position = page.last;
        Ok(())
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

/// A page of the global log packed for a projection's fold as the journal reads it.
struct PackedPage {
    /// The events the plugin wants.
    batch: PackedBatch,
    /// The positions of the first and last event in `batch`, if it has any.
    wanted: Option<(u64, u64)>,
    /// The last position read.
    last: u64,
    /// Events read (wanted or not).
    read: usize,
}

impl PackedPage {
    /// The page of the global log from position `from` within `limit`, read with
    /// [`Journal::scan_all`] and packed as [`ProjectionInstance::apply`] packs the events of
    /// `subscription`; `None` at the end of the log.
    fn read(
        journal: &Journal,
        subscription: &Subscription,
        from: u64,
        limit: ReadLimit,
    ) -> Result<Option<Self>, JournalError> {
        let mut batch = PackedBuilder::with_capacity(limit.events.min(1024));
        let (mut wanted, mut read) = (None, 0);
        let mut wants = subscription.wants_each_ref();
        let last = journal.scan_all(from, limit, |event| {
            read += 1;
            if wants(&event) {
                batch.push(&event);
                let first = wanted.map_or(event.position, |(first, _)| first);
                wanted = Some((first, event.position));
            }
            Ok::<_, JournalError>(())
        })?;
        Ok(last.map(|last| PackedPage {
            batch: batch.finish(),
            wanted,
            last,
            read,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{ContentType, ExpectedVersion, JournalConfig, NewEvent};
    use crate::runtime::bindings::encode_packed_batch;

    fn event(n: usize) -> NewEvent {
        NewEvent {
            id: uuid::Uuid::new_v4(),
            event_type: ["Opened", "Deposited", "Closed"][n % 3].to_owned(),
            content_type: [ContentType::Json, ContentType::Binary][n % 2],
            data: format!("{{\"n\":{n}}}").into_bytes(),
            metadata: [None, Some(String::new()), Some(format!("{{\"by\":{n}}}"))][n % 3].clone(),
        }
    }

    /// A page packed from the journal's pages is the batch `apply` packs from `read_all`'s
    /// events: every field of every wanted event, the names of a run stored once.
    #[test]
    fn a_page_packed_from_the_scan_is_what_apply_packs_from_read_all() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path().join("j.redb"), JournalConfig::default()).unwrap();
        let streams = [
            "account-1",
            "account-2",
            "accounts-3",
            "other-1",
            "account-10",
        ];
        for round in 0..4 {
            for (s, stream) in streams.iter().enumerate() {
                let events = (0..=s + round).map(|n| event(n + s)).collect();
                journal
                    .append_blocking(stream, ExpectedVersion::Any, events)
                    .unwrap();
            }
        }
        let head = journal.head_position();
        let subscriptions = [
            Subscription::default(),
            Subscription {
                event_types: vec![],
                categories: vec!["account".to_owned()],
            },
            Subscription {
                event_types: vec!["Deposited".to_owned(), "Closed".to_owned()],
                categories: vec!["account".to_owned(), "other".to_owned()],
            },
        ];
        for subscription in &subscriptions {
            for from in [1, 2, 7, head] {
                for events in [1, 5, 1000] {
                    let limit = ReadLimit::events(events);
                    let page = PackedPage::read(&journal, subscription, from, limit)
                        .unwrap()
                        .unwrap();
                    let read = journal.read_all_within(from, limit).unwrap();
                    let wanted: Vec<_> = read.iter().filter(subscription.wants_each()).collect();
                    let expected = encode_packed_batch(wanted.iter().copied());
                    let at = format!("{subscription:?} from {from}, {events} events");
                    assert_eq!(page.batch.headers, expected.headers, "{at}");
                    assert_eq!(page.batch.buffer, expected.buffer, "{at}");
                    let ends = wanted.first().zip(wanted.last());
                    let ends = ends.map(|(first, last)| (first.position, last.position));
                    assert_eq!(page.wanted, ends, "{at}");
                    assert_eq!(
                        (page.last, page.read),
                        (read.last().unwrap().position, read.len())
                    );
                }
            }
            assert!(
                PackedPage::read(&journal, subscription, head + 1, REPLAY_LIMIT)
                    .unwrap()
                    .is_none()
            );
        }
    }
}
