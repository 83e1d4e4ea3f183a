//! The write side: one state per stream, deciding commands into events.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state;

/// A command refused by business rules (`command-error::rejected`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection(String);

impl Rejection {
    /// A rejection with a human-readable reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }

    /// Why the command was refused.
    pub fn reason(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Rejection {}

impl From<String> for Rejection {
    fn from(reason: String) -> Self {
        Self(reason)
    }
}

impl From<&str> for Rejection {
    fn from(reason: &str) -> Self {
        Self(reason.to_owned())
    }
}

/// An aggregate: the state of one stream, folded from its events.
///
/// `Event` and `Command` are enums mapped to `(type, data)` as described in
/// [`codec`](crate::codec). The state itself is snapshotted with postcard and
/// shown as JSON; override [`state_json`](Self::state_json),
/// [`snapshot`](Self::snapshot) and [`restore`](Self::restore) together with
/// [`STATE_SCHEMA`](Self::STATE_SCHEMA) to change that.
pub trait Aggregate: Default + Serialize + DeserializeOwned + 'static {
    /// Plugin name, also the stream category: streams are named `{NAME}-{id}`.
    const NAME: &'static str;
    /// The plugin's own release, e.g. `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;
    /// Bump whenever the snapshot encoding changes.
    const STATE_SCHEMA: u32 = 1;

    /// The events this aggregate emits and folds.
    type Event: Serialize + DeserializeOwned;
    /// The commands it decides.
    type Command: DeserializeOwned;

    /// Folds one stored event into the state. Must not fail: the event is a fact.
    fn apply(&mut self, event: Self::Event);

    /// Decides a command against the current state, without changing it.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Rejection>;

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

/// Exports an [`Aggregate`] as the component's `foldhost:plugin/aggregate`
/// interface. Use it once per plugin crate; it expands to nothing unless the
/// target is `wasm32`, so the crate still builds natively.
#[macro_export]
macro_rules! export_aggregate {
    ($ty:ty) => {
        $crate::__export_stateful!($ty, AggregateSlot, Aggregate, aggregate);
    };
}
