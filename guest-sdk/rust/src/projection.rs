//! The read side: a fold over the global log.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state;

/// Which events a projection wants.
///
/// An event is delivered when its type is listed (or `event_types` is empty)
/// **and** its stream is in a listed category (or `categories` is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Event types, e.g. `"Deposited"`.
    pub event_types: Vec<String>,
    /// Stream categories: a stream `{category}-{id}` belongs to `category`.
    pub categories: Vec<String>,
}

impl Subscription {
    /// Every event in the log.
    pub fn all() -> Self {
        Self::default()
    }

    /// Every event of streams in these categories (usually aggregate names).
    pub fn categories<S: Into<String>>(categories: impl IntoIterator<Item = S>) -> Self {
        Self {
            categories: categories.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Restricts the subscription to these event types.
    pub fn with_event_types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.event_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Whether an event of `event_type` in `stream` is wanted.
    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        self.matches_type(event_type) && self.matches_category(stream)
    }

    /// Whether events of `event_type` are wanted, whatever their stream.
    pub(crate) fn matches_type(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type)
    }

    /// Whether `stream` is in a wanted category.
    pub(crate) fn matches_category(&self, stream: &str) -> bool {
        self.categories.is_empty()
            || self.categories.iter().any(|c| {
                stream
                    .strip_prefix(c.as_str())
                    .is_some_and(|rest| rest.starts_with('-'))
            })
    }
}

/// Where an event sits in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMeta<'a> {
    /// The stream the event belongs to, e.g. `bank-account-42`.
    pub stream: &'a str,
    /// 1-based version within its stream.
    pub version: u64,
    /// 1-based position in the global log.
    pub position: u64,
    /// Milliseconds since the Unix epoch, as recorded by the journal.
    pub recorded_at: u64,
}

/// A projection: state folded from the events of many streams, with queries.
///
/// `Event` is an enum mapped from `(type, data)` as described in
/// [`codec`](crate::codec); it only needs the variants the projection cares
/// about (add a `#[serde(other)]` unit variant to skip the rest). Events
/// outside [`subscription`](Self::subscription) are skipped even if the host
/// delivers them.
pub trait Projection: Default + Serialize + DeserializeOwned + 'static {
    /// Plugin name.
    const NAME: &'static str;
    /// The plugin's own release, e.g. `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;
    /// Bump whenever the snapshot encoding changes.
    const STATE_SCHEMA: u32 = 1;

    /// The events this projection folds.
    type Event: DeserializeOwned;

    /// Which events to deliver.
    fn subscription() -> Subscription;

    /// Folds one event into the state.
    fn apply(&mut self, event: Self::Event, meta: &EventMeta<'_>);

    /// Answers the query `name`; `args` is JSON (`null` when none were given).
    fn query(&self, name: &str, args: serde_json::Value) -> Result<serde_json::Value, String> {
        let _ = args;
        Err(format!("unknown query `{name}`"))
    }

    /// The state as JSON for readers; defaults to its serde form.
    fn state_json(&self) -> String {
        state::to_json(self)
    }

    /// The state as a snapshot; defaults to postcard, which reads fields by
    /// position: override this and [`restore`](Self::restore) for a state with
    /// `skip_serializing_if` (whose snapshot may restore as another state),
    /// internally, adjacently or un-tagged enums or `serde_json::Value` (which
    /// do not restore), or `flatten` (which postcard cannot write).
    fn snapshot(&self) -> Vec<u8> {
        state::to_snapshot(self)
    }

    /// Rebuilds the state from [`snapshot`](Self::snapshot)'s output.
    fn restore(snapshot: &[u8]) -> Result<Self, String> {
        state::from_snapshot(snapshot)
    }
}

/// Exports a [`Projection`] as the component's `foldhost:plugin/projection`
/// interface. Use it once per plugin crate; it expands to nothing unless the
/// target is `wasm32`, so the crate still builds natively.
#[macro_export]
macro_rules! export_projection {
    ($ty:ty) => {
        $crate::__export_stateful!($ty, ProjectionSlot, Projection, projection);
    };
}
