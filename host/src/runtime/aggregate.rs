//! One aggregate instance: a single stream's state living in its own store.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use super::bindings::{AggregateExports, types};
use super::dehydrated::Dehydrated;
use super::error::RuntimeError;
use super::plugin::Plugin;
use super::sandbox::{PluginStore, guarded, guarded_answer};
use super::upcast::UpcasterChain;
use crate::journal::{
    ByteString, Journal, NewEvent, Pages, ReadLimit, RecordedEvent, StreamWindow,
};

/// Events moved into a plugin per `apply` call during replay: at most 1024, and at most 4 MiB
/// of event data (a single larger event goes alone), so a batch fits well within the plugin's
/// memory cap whatever the events' sizes.
pub const REPLAY_LIMIT: ReadLimit = ReadLimit {
    events: 1024,
    bytes: 4 << 20,
};

/// Rebuilds of one state tried before giving up on a stream whose visible window moves under
/// each of them (see `AggregateInstance::rehydrate_in`); the last one's error is returned.
const WINDOW_TRIES: usize = 8;

/// Splits `events` into consecutive batches within `limit` (a batch has at least one event).
pub fn batches(
    events: &[RecordedEvent],
    limit: ReadLimit,
) -> impl Iterator<Item = &[RecordedEvent]> {
    let mut rest = events;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0usize;
        let mut len = 0;
        for event in rest.iter().take(limit.events) {
            bytes = bytes.saturating_add(event.size());
            if len > 0 && bytes > limit.bytes {
                break;
            }
            len += 1;
        }
        let (batch, tail) = rest.split_at(len.max(1));
        rest = tail;
        Some(batch)
    })
}

/// A live aggregate: one stream's state folded up to `version`.
pub struct AggregateInstance {
    plugin: Arc<Plugin>,
    /// The upcasters its events pass through.
    upcasters: Arc<UpcasterChain>,
    stream: String,
    store: PluginStore,
    bindings: AggregateExports,
    /// The stream version folded into the state (0 = empty).
    pub version: u64,
    /// The version of the newest stored snapshot of this state.
    pub snapshot_version: u64,
    /// The first visible version of the stream when this state was folded (see
    /// [`fits`](Self::fits)).
    base: u64,
    /// Whether the state was folded from version 1, so snapshots of it stand for the stream.
    whole: bool,
    /// Whether rendering the state failed inside the plugin: a trapped component instance
    /// cannot be entered again, so the store must not be reused (see [`is_usable`](Self::is_usable)).
    trapped: bool,
}

impl AggregateInstance {
    /// A fresh instance of `plugin` for `stream`, starting empty or from `snapshot`, fed the
    /// events as stored.
    pub fn new(
        plugin: Arc<Plugin>,
        stream: &str,
        snapshot: Option<(u64, Vec<u8>)>,
    ) -> Result<Self, RuntimeError> {
        Self::through(plugin, UpcasterChain::none(), stream, snapshot)
    }

    /// [`new`](Self::new), fed every event through `upcasters` (the chain relevant to the
    /// plugin, see [`UpcasterChain::for_plugin`]).
    pub fn through(
        plugin: Arc<Plugin>,
        upcasters: Arc<UpcasterChain>,
        stream: &str,
        snapshot: Option<(u64, Vec<u8>)>,
    ) -> Result<Self, RuntimeError> {
        let (store, bindings) = plugin.instantiate_aggregate()?;
        let (version, bytes) = snapshot.map_or((0, None), |(v, b)| (v, Some(b)));
        let mut instance = Self {
            plugin,
            upcasters,
            stream: stream.to_owned(),
            store,
            bindings,
            version,
            snapshot_version: version,
            base: 1,
            whole: true,
            trapped: false,
        };
        instance.init(version, bytes.as_deref())?;
        Ok(instance)
    }

    /// [`through`](Self::through) from `snapshot`, or from nothing if the plugin refuses or
    /// traps restoring it (an encoding that does not round-trip, such as a field the snapshot
    /// skips): the caller then folds the stream's events from the first, which stand for the
    /// same state. A timeout or the host's memory budget is not the snapshot's fault and fails.
    fn from_snapshot_or_blank(
        plugin: Arc<Plugin>,
        upcasters: Arc<UpcasterChain>,
        stream: &str,
        snapshot: Option<(u64, Vec<u8>)>,
    ) -> Result<Self, RuntimeError> {
        let version = snapshot.as_ref().map(|(version, _)| *version);
        match Self::through(plugin.clone(), upcasters.clone(), stream, snapshot) {
            Err(error) if version.is_some() && error.is_plugin_fault() => {
                warn_unrestored(&plugin, stream, &error);
                Self::through(plugin, upcasters, stream, None)
            }
            built => built,
        }
    }

    /// Puts back the state `snapshot` holds, a snapshot of this stream at `version` taken from
    /// this instance (to undo folds of events that were never stored).
    pub fn restore(&mut self, version: u64, snapshot: &[u8]) -> Result<(), RuntimeError> {
        self.init(version, Some(snapshot))?;
        self.version = version;
        Ok(())
    }

    /// Starts the plugin's state empty or from `snapshot`, the state at `version`.
    fn init(&mut self, version: u64, snapshot: Option<&[u8]>) -> Result<(), RuntimeError> {
        let guest = self.bindings.world.foldhost_plugin_aggregate();
        let stream = &self.stream;
        guarded_answer(
            &mut self.store,
            self.plugin.engine(),
            || format!("restoring {stream} from the snapshot at version {version}"),
            |s| guest.call_init(s, snapshot),
        )
    }

    /// `events` as they would be stored right now as this stream's next events after the
    /// log's `head`: provisional positions and time, to fold before they are stored.
    pub fn provisional(&self, head: u64, events: &[NewEvent]) -> Vec<RecordedEvent> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let stream = ByteString::from(self.stream.as_str());
        events
            .iter()
            .zip(1..)
            .map(|(event, n)| RecordedEvent {
                position: head + n,
                stream: stream.clone(),
                version: self.version + n,
                id: event.id,
                event_type: event.event_type.as_str().into(),
                content_type: event.content_type,
                data: event.data.clone().into(),
                metadata: event.metadata.as_deref().map(Into::into),
                recorded_at: now,
            })
            .collect()
    }

    /// Rebuilds `stream` from its newest snapshot at or below `at_most` plus the
    /// events after it, up to version `at_most`.
    pub fn rehydrate(
        plugin: Arc<Plugin>,
        journal: &Journal,
        stream: &str,
        at_most: u64,
    ) -> Result<Self, RuntimeError> {
        Self::rehydrate_through(plugin, UpcasterChain::none(), journal, stream, at_most)
    }

    /// [`rehydrate`](Self::rehydrate) through `upcasters`, from a snapshot folded through the
    /// same chain.
    pub fn rehydrate_through(
        plugin: Arc<Plugin>,
        upcasters: Arc<UpcasterChain>,
        journal: &Journal,
        stream: &str,
        at_most: u64,
    ) -> Result<Self, RuntimeError> {
        Self::rehydrate_from(plugin, upcasters, journal, stream, at_most, None)
    }

    /// [`rehydrate_through`](Self::rehydrate_through) starting from `dehydrated`, a state of
    /// this stream folded through the same chain, instead of a journal snapshot.
    pub(super) fn rehydrate_from(
        plugin: Arc<Plugin>,
        upcasters: Arc<UpcasterChain>,
        journal: &Journal,
        stream: &str,
        at_most: u64,
        dehydrated: Option<Dehydrated>,
    ) -> Result<Self, RuntimeError> {
        let window = journal.stream_window(stream)?;
        Self::rehydrate_in(
            plugin, upcasters, journal, stream, at_most, &window, dehydrated,
        )
    }

    /// [`rehydrate`](Self::rehydrate) within the stream's visible `window`: the state folds only
    /// the events readers see, so snapshots (journal or dehydrated) are used only when the
    /// window is the whole stream.
    ///
    /// `window` (which chose the snapshot) is read apart from the pages folded: if a
    /// truncation or deletion moved it before the first page (read with its own window) or
    /// between pages, the state is folded again in the window as it is then.
    fn rehydrate_in(
        plugin: Arc<Plugin>,
        upcasters: Arc<UpcasterChain>,
        journal: &Journal,
        stream: &str,
        at_most: u64,
        window: &StreamWindow,
        mut dehydrated: Option<Dehydrated>,
    ) -> Result<Self, RuntimeError> {
        let (mut window, mut tries) = (*window, 1);
        loop {
            let (plugin, upcasters) = (plugin.clone(), upcasters.clone());
            let dehydrated = dehydrated.take();
            match Self::fold_in(
                plugin, upcasters, journal, stream, at_most, &window, dehydrated,
            ) {
                Err(RuntimeError::WindowMoved { .. }) if tries < WINDOW_TRIES => {
                    tries += 1;
                    window = journal.stream_window(stream)?;
                }
                folded => return folded,
            }
        }
    }

    /// The state of `stream` folded within `window` (see [`rehydrate_in`](Self::rehydrate_in)).
    fn fold_in(
        plugin: Arc<Plugin>,
        upcasters: Arc<UpcasterChain>,
        journal: &Journal,
        stream: &str,
        at_most: u64,
        window: &StreamWindow,
        dehydrated: Option<Dehydrated>,
    ) -> Result<Self, RuntimeError> {
        let key = upcasters.state_key(&plugin.hash);
        let head = window.current.unwrap_or(0).min(at_most);
        let start = match (window.is_whole(), dehydrated) {
            (false, _) => None,
            (true, Some(state)) if state.key == key && state.version <= head => {
                Some((state.version, state.snapshot_version, state.bytes))
            }
            (true, _) => journal
                .latest_snapshot(&key, stream, at_most)?
                .map(|(version, bytes)| (version, version, bytes)),
        };
        let snapshot_version = start.as_ref().map_or(0, |(_, stored, _)| *stored);
        let snapshot = start.map(|(version, _, bytes)| (version, bytes));
        let mut instance = Self::from_snapshot_or_blank(plugin, upcasters, stream, snapshot)?;
        instance.snapshot_version = snapshot_version;
        instance.base = window.first;
        instance.whole = window.is_whole();
        // The first page comes with the window it is read in, so it starts where that window
        // says (past events a scavenge removed, too); `window` chose the snapshot, so if it
        // moved since, the state is folded again.
        let from = instance.version + 1;
        let (now, mut first) = journal.stream_window_and_page(stream, from, REPLAY_LIMIT)?;
        if now.first != window.first || now.is_whole() != window.is_whole() {
            return Err(RuntimeError::WindowMoved {
                stream: stream.to_owned(),
            });
        }
        first.truncate(first.partition_point(|event| event.version <= at_most));
        // Past the events an age limit hides, visible versions follow one another.
        instance.catch_up_from(journal, at_most, Some(first), !window.expires)?;
        instance.settle(window, at_most);
        Ok(instance)
    }

    /// Whether this state still stands for what readers see of the stream: no delete,
    /// truncation or retention rule has hidden events it folded since.
    pub fn fits(&self, window: &StreamWindow) -> bool {
        self.base == window.first && !window.expires
    }

    /// Whether snapshots of this state may be stored (it was folded from version 1).
    pub fn may_snapshot(&self) -> bool {
        self.whole
    }

    /// Brings the state to the stream's head, refolding it from scratch when the visible
    /// window moved under it.
    pub fn refresh(&mut self, journal: &Journal) -> Result<(), RuntimeError> {
        // The window comes with the first page of events since this state: one read.
        let (window, first) =
            journal.stream_window_and_page(&self.stream, self.version + 1, REPLAY_LIMIT)?;
        if !self.fits(&window) {
            let (plugin, upcasters) = (self.plugin.clone(), self.upcasters.clone());
            let stream = self.stream.clone();
            *self =
                Self::rehydrate_in(plugin, upcasters, journal, &stream, u64::MAX, &window, None)?;
            return Ok(());
        }
        // A page after the first is read on its own, and may start past the window if a
        // truncation or deletion moved it meanwhile: then the state is rebuilt.
        match self.catch_up_from(journal, u64::MAX, Some(first), true) {
            Err(RuntimeError::WindowMoved { .. }) => {
                let (plugin, upcasters) = (self.plugin.clone(), self.upcasters.clone());
                let (stream, now) = (self.stream.clone(), journal.stream_window(&self.stream)?);
                *self =
                    Self::rehydrate_in(plugin, upcasters, journal, &stream, u64::MAX, &now, None)?;
                return Ok(());
            }
            caught_up => caught_up?,
        }
        self.settle(&window, u64::MAX);
        Ok(())
    }

    /// Counts hidden events at the head (expired by age) as folded: appends are checked
    /// against the stream's version, not against what was visible.
    fn settle(&mut self, window: &StreamWindow, at_most: u64) {
        let current = window.current.unwrap_or(0).min(at_most);
        self.version = self.version.max(current);
    }

    /// Applies the stream's events after `self.version`, up to version `at_most`.
    ///
    /// When a batch fails, its events are folded one at a time on a rebuilt instance: that
    /// gets past a batch that failed only as a whole (it ran out of time or memory), and
    /// otherwise names the one event this build cannot fold ([`RuntimeError::Unfoldable`]).
    ///
    /// A stream longer than a page is read one page ahead of the fold
    /// ([`Pages::fold_ahead`]).
    pub fn catch_up(&mut self, journal: &Journal, at_most: u64) -> Result<(), RuntimeError> {
        self.catch_up_from(journal, at_most, None, false)
    }

    /// [`catch_up`](Self::catch_up), starting with `first` if the page after `self.version`
    /// was read already (with the window, so it starts where the window says). With
    /// `gapless`, each page read after it must start at the version after the state's, else
    /// [`RuntimeError::WindowMoved`]: a truncation or deletion moved the window meanwhile.
    fn catch_up_from(
        &mut self,
        journal: &Journal,
        at_most: u64,
        first: Option<Vec<RecordedEvent>>,
        gapless: bool,
    ) -> Result<(), RuntimeError> {
        let pages = Pages::Stream {
            stream: self.stream.clone(),
            from: self.version + 1,
            to: at_most,
        };
        let mut pre_read = first.is_some();
        let fold = |events: &[RecordedEvent]| {
            let next = self.version + 1;
            let follows = std::mem::take(&mut pre_read)
                || !gapless
                || events.first().is_none_or(|event| event.version == next);
            if !follows {
                let stream = self.stream.clone();
                return Err(RuntimeError::WindowMoved { stream });
            }
            if let Err(error) = self.apply(events) {
                if let [event] = events {
                    return Err(RuntimeError::unfoldable(self.plugin.name(), event, error));
                }
                *self = self.fold_singly(journal, events)?;
            }
            Ok(())
        };
        match first {
            Some(first) => pages.fold_ahead_from(first, journal, REPLAY_LIMIT, fold),
            None => pages.fold_ahead(journal, REPLAY_LIMIT, fold),
        }
    }

    /// Rebuilds the state before `events` (a batch that failed) and folds them one at a time.
    fn fold_singly(
        &self,
        journal: &Journal,
        events: &[RecordedEvent],
    ) -> Result<Self, RuntimeError> {
        let before = events[0].version - 1;
        let (plugin, upcasters) = (self.plugin.clone(), self.upcasters.clone());
        let mut rebuilt =
            Self::rehydrate_through(plugin, upcasters, journal, &self.stream, before)?;
        // Rebuilt in another window than this state's: the batch may be hidden now.
        if rebuilt.base != self.base || rebuilt.whole != self.whole {
            let stream = self.stream.clone();
            return Err(RuntimeError::WindowMoved { stream });
        }
        for event in events {
            rebuilt
                .apply(std::slice::from_ref(event))
                .map_err(|error| RuntimeError::unfoldable(self.plugin.name(), event, error))?;
        }
        Ok(rebuilt)
    }

    /// Folds stored events (consecutive, starting at `version + 1`) into the state, through
    /// its upcasters.
    pub fn apply(&mut self, events: &[RecordedEvent]) -> Result<(), RuntimeError> {
        let Some(last_version) = events.last().map(|event| event.version) else {
            return Ok(());
        };
        let events = &*self.upcasters.upcast_slice(events)?;
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            // Upcast into nothing: the versions were still folded.
            self.version = last_version;
            return Ok(());
        };
        let context = || {
            format!(
                "applying {} events at positions {}..={}",
                self.stream, first.position, last.position
            )
        };
        let bindings = &self.bindings;
        guarded_answer(&mut self.store, self.plugin.engine(), context, |s| {
            bindings.call_apply(s, events)
        })?;
        self.version = last_version;
        Ok(())
    }

    /// A separate instance holding a copy of this state (through its snapshot), to try
    /// folding events on without touching this one: fed through the same upcasters, so it
    /// folds them as this one would.
    ///
    /// If the plugin cannot restore its own snapshot, the copy is folded from `journal` up to
    /// this state's version instead.
    pub fn scratch(&mut self, journal: &Journal) -> Result<Self, RuntimeError> {
        let snapshot = match self.version {
            0 => None,
            version => Some((version, self.snapshot()?)),
        };
        let (plugin, upcasters) = (self.plugin.clone(), self.upcasters.clone());
        match Self::through(plugin.clone(), upcasters.clone(), &self.stream, snapshot) {
            Err(error) if self.version > 0 && error.is_plugin_fault() => {
                warn_unrestored(&plugin, &self.stream, &error);
                Self::rehydrate_through(plugin, upcasters, journal, &self.stream, self.version)
            }
            copied => copied,
        }
    }

    /// Decides a command against the current state, without changing it.
    pub fn handle(
        &mut self,
        command_type: &str,
        data: &[u8],
    ) -> Result<Vec<NewEvent>, RuntimeError> {
        let guest = self.bindings.world.foldhost_plugin_aggregate();
        let context = || format!("handling command {command_type} on {}", self.stream);
        let decided = guarded(&mut self.store, self.plugin.engine(), context, |s| {
            guest.call_handle(s, command_type, data)
        })?;
        let plugin = self.plugin.name().to_owned();
        let most = self.plugin.limits().events_per_command;
        match decided {
            Ok(events) if events.len() > most => Err(RuntimeError::PluginFailed {
                plugin,
                context: context(),
                message: format!(
                    "emitted {} events; its limit is {most} per command",
                    events.len()
                ),
            }),
            Ok(events) => Ok(events
                .into_iter()
                .map(|e| NewEvent {
                    // Time-ordered ids keep the journal's id index appends local.
                    id: Uuid::now_v7(),
                    event_type: e.event_type,
                    content_type: e.content_type.into(),
                    data: e.data,
                    metadata: None,
                })
                .collect()),
            Err(types::CommandError::Rejected(reason)) => {
                metrics::counter!("foldhost_command_rejections_total", "plugin" => plugin.clone())
                    .increment(1);
                Err(RuntimeError::Rejected { plugin, reason })
            }
            Err(types::CommandError::Invalid(reason)) => {
                Err(RuntimeError::InvalidCommand { plugin, reason })
            }
        }
    }

    /// The state in the plugin's own encoding.
    pub fn snapshot(&mut self) -> Result<Vec<u8>, RuntimeError> {
        let guest = self.bindings.world.foldhost_plugin_aggregate();
        let stream = &self.stream;
        guarded(
            &mut self.store,
            self.plugin.engine(),
            || format!("snapshotting {stream}"),
            |s| guest.call_snapshot(s),
        )
    }

    /// The state as JSON.
    pub fn state(&mut self) -> Result<serde_json::Value, RuntimeError> {
        let guest = self.bindings.world.foldhost_plugin_aggregate();
        let stream = &self.stream;
        let rendered = guarded(
            &mut self.store,
            self.plugin.engine(),
            || format!("rendering the state of {stream}"),
            |s| guest.call_state(s),
        );
        let text = rendered.inspect_err(|_| self.trapped = true)?;
        serde_json::from_str(&text).map_err(|e| RuntimeError::PluginFailed {
            plugin: self.plugin.name().to_owned(),
            context: format!("rendering the state of {}", self.stream),
            message: format!("state is not valid JSON: {e}"),
        })
    }

    /// False once a call failed inside the plugin in a way its callers do not see as a lost
    /// store (rendering the state): such an instance is dropped, never kept for the next call.
    pub fn is_usable(&self) -> bool {
        !self.trapped
    }

    /// Bytes this instance may hold: its linear memories and tables as granted by its memory
    /// budget. An upper bound of what it keeps resident: wasmtime maps pages lazily, so a guest
    /// touches only part of its memory, and the rest of its store is small beside it.
    pub fn footprint(&self) -> usize {
        self.store.data().budget.used()
    }

    /// The stream this instance folds.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The plugin it runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// The upcasters its events pass through.
    pub fn upcasters(&self) -> &Arc<UpcasterChain> {
        &self.upcasters
    }

    /// The key of this state's snapshots: the plugin's hash and its upcaster chain's.
    pub fn state_key(&self) -> String {
        self.upcasters.state_key(&self.plugin.hash)
    }
}

/// Logs that `plugin` could not restore a snapshot of `stream` (`error`), whose events are
/// folded instead: every rehydration from such a snapshot costs a fold of the whole stream.
fn warn_unrestored(plugin: &Plugin, stream: &str, error: &RuntimeError) {
    tracing::warn!(
        plugin = %plugin.name(),
        %stream,
        %error,
        "a snapshot does not restore: folding the stream's events instead"
    );
}
