//! What can go wrong when loading or running a plugin.

use super::host_fault::HostFault;
use crate::journal::{JournalError, RecordedEvent};

/// Errors from the plugin runtime. Each names the plugin involved. Cloneable so one failed
/// round of commands can be reported to each of them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// No loaded plugin has this name.
    #[error("no plugin named {0:?} is loaded")]
    UnknownPlugin(String),
    /// The plugin is loaded but of another kind than the call needs.
    #[error(
        "plugin {plugin:?} is not {} {expected}",
        if expected.starts_with('a') { "an" } else { "a" }
    )]
    WrongKind {
        /// The plugin named.
        plugin: String,
        /// The kind the call needs ("aggregate", "projection").
        expected: &'static str,
    },
    /// A component that is not a valid plugin.
    #[error("invalid plugin {origin}: {message}")]
    InvalidPlugin {
        /// The file or upload.
        origin: String,
        /// Why it is invalid.
        message: String,
    },
    /// The host failed loading a plugin for a reason of its own (the compiler could not start
    /// or died, memory ran out): not the plugin's fault. Nothing loaded was disturbed.
    #[error("the host failed loading plugin {origin} (not a fault of the plugin): {fault}")]
    HostFault {
        /// The file or upload.
        origin: String,
        /// What failed, and whether it may pass by itself.
        fault: HostFault,
    },
    /// The aggregate refused the command; nothing was stored.
    #[error("{plugin} rejected the command: {reason}")]
    Rejected {
        /// The aggregate.
        plugin: String,
        /// Its reason.
        reason: String,
    },
    /// The aggregate could not decode the command.
    #[error("{plugin} could not decode the command: {reason}")]
    InvalidCommand {
        /// The aggregate.
        plugin: String,
        /// Why the command could not be decoded.
        reason: String,
    },
    /// The plugin trapped (panic, timeout, memory or stack exhaustion); its
    /// instance was discarded and will be rebuilt on next use.
    #[error("plugin {plugin} trapped {context}: {message}")]
    Trap {
        /// The plugin.
        plugin: String,
        /// The call that trapped.
        context: String,
        /// The trap, in one line.
        message: String,
    },
    /// A plugin instance could not grow (or be created) within its own memory limit because
    /// the host's plugin memory budget is held by other instances: the call failed, its
    /// instance was discarded, and it may pass on a retry. Not a fault of the plugin.
    #[error("plugin {plugin} could not get memory {context}: {message}")]
    MemoryBudget {
        /// The plugin.
        plugin: String,
        /// The call that wanted the memory.
        context: String,
        /// The budget and what was asked, in one line.
        message: String,
    },
    /// The plugin returned an error (e.g. an event it cannot decode).
    #[error("plugin {plugin} failed {context}: {message}")]
    PluginFailed {
        /// The plugin.
        plugin: String,
        /// The call that failed.
        context: String,
        /// What the plugin said.
        message: String,
    },
    /// A stored event the plugin cannot fold (it returns an error or traps on it, even alone):
    /// its stream cannot be served by this build.
    #[error(
        "{plugin} cannot fold the event at position {position} ({event_type}, version {version} \
         of {stream}): {reason}"
    )]
    Unfoldable {
        /// The plugin.
        plugin: String,
        /// The event's stream.
        stream: String,
        /// The event's global position.
        position: u64,
        /// The event's stream version.
        version: u64,
        /// The event's type.
        event_type: String,
        /// What the plugin said.
        reason: String,
    },
    /// Events offered for appending that the stream's aggregate cannot fold; nothing was stored.
    #[error(
        "{plugin} cannot fold the event at index {index} of the append ({event_type}) to \
         {stream}: {reason}"
    )]
    Refused {
        /// The aggregate.
        plugin: String,
        /// The stream appended to.
        stream: String,
        /// The event's index in the append (0: its first event).
        index: usize,
        /// The event's type.
        event_type: String,
        /// What the plugin said.
        reason: String,
    },
    /// Another loaded aggregate's name is this one's followed by `-…`, or the other way round:
    /// the streams of one would belong to both.
    #[error(
        "plugin {plugin:?} clashes with the loaded plugin {other:?}: stream names \
         {example:?} would belong to both; no aggregate's name may be another's followed by '-'"
    )]
    NameClash {
        /// The plugin loading.
        plugin: String,
        /// The loaded plugin it clashes with.
        other: String,
        /// A stream name both would own.
        example: String,
    },
    /// Too many queries, or rebuilds of past aggregate states, are waiting already; try
    /// again later.
    #[error("too many queries or rebuilds of past states are running; try again later")]
    Busy,
    /// The stream was truncated or deleted again each time its state was rebuilt, so no
    /// rebuild read one view of it; try again.
    #[error("stream {stream} was truncated or deleted while its state was rebuilt; try again")]
    WindowMoved {
        /// The stream.
        stream: String,
    },
    /// The operation needs the projection in another state (e.g. replaying parked events of a
    /// projection that has not started).
    #[error("projection {plugin} cannot {action} now: {reason}")]
    NotNow {
        /// The projection.
        plugin: String,
        /// What was asked ("replay parked events", ...).
        action: &'static str,
        /// Why not now.
        reason: String,
    },
    /// The stream kept changing under the command; it gave up after retries.
    #[error("stream {0:?} kept changing under the command; gave up after retries")]
    TooManyConflicts(String),
    /// A command's idempotency key was used by a command stored earlier whose events are no
    /// longer visible (the stream was deleted, or they fell outside its retention rules): its
    /// outcome is gone, and it is not run again under the same key.
    #[error(
        "a command with this idempotency key was stored on stream {stream:?}, and its events are \
         no longer visible (deleted or outside the stream's retention rules); use a new key to \
         run it again"
    )]
    KeyOutcomeGone {
        /// The stream.
        stream: String,
    },
    /// A command's idempotency key was used on the stream by another command (another type,
    /// or other data bytes): its outcome is not this command's.
    #[error(
        "idempotency key {key:?} was used on stream {stream:?} by another command; a retry must \
         send the same type and the same data, byte for byte, or use a new key"
    )]
    KeyReused {
        /// The stream.
        stream: String,
        /// The key.
        key: String,
    },
    /// The stream has no events.
    #[error("stream {0:?} has no events")]
    NoSuchStream(String),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl RuntimeError {
    /// What a plugin said (or how it trapped) when a call failed; other errors in full.
    pub fn plugin_reason(&self) -> String {
        match self {
            Self::Trap { message, .. } | Self::PluginFailed { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// Whether a plugin call failed by the plugin's own doing: it returned an error or trapped,
    /// other than by running out of time.
    pub fn is_plugin_fault(&self) -> bool {
        matches!(self, Self::Trap { .. } | Self::PluginFailed { .. }) && !self.is_timeout()
    }

    /// Whether a plugin call ran out of time: unlike other traps, that may pass on a retry
    /// (a busy machine). Matches the wording of `sandbox::describe_trap`.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Trap { message, .. } if message.starts_with("exceeded its time limit"))
    }

    /// `error` of `plugin` folding the stored `event`, as [`RuntimeError::Unfoldable`]; the
    /// reason names the upcaster when one of the plugin's upcasters failed.
    pub(super) fn unfoldable(plugin: &str, event: &RecordedEvent, error: RuntimeError) -> Self {
        match &error {
            Self::Trap {
                plugin: culprit, ..
            }
            | Self::PluginFailed {
                plugin: culprit, ..
            } => Self::Unfoldable {
                plugin: plugin.to_owned(),
                stream: event.stream.to_string(),
                position: event.position,
                version: event.version,
                event_type: event.event_type.to_string(),
                reason: match culprit == plugin {
                    true => error.plugin_reason(),
                    false => error.to_string(),
                },
            },
            _ => error,
        }
    }
}
