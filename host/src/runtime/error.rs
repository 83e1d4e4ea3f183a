//! What can go wrong when loading or running a plugin.

use crate::journal::JournalError;

/// Errors from the plugin runtime. Each names the plugin involved.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no plugin named {0:?} is loaded")]
    UnknownPlugin(String),
    #[error("plugin {plugin:?} is not an {expected}")]
    WrongKind {
        plugin: String,
        expected: &'static str,
    },
    #[error("invalid plugin {origin}: {message}")]
    InvalidPlugin { origin: String, message: String },
    #[error("{plugin} rejected the command: {reason}")]
    Rejected { plugin: String, reason: String },
    #[error("{plugin} could not decode the command: {reason}")]
    InvalidCommand { plugin: String, reason: String },
    /// The plugin trapped (panic, timeout, memory or stack exhaustion); its
    /// instance was discarded and will be rebuilt on next use.
    #[error("plugin {plugin} trapped {context}: {message}")]
    Trap {
        plugin: String,
        context: String,
        message: String,
    },
    /// The plugin returned an error (e.g. an event it cannot decode).
    #[error("plugin {plugin} failed {context}: {message}")]
    PluginFailed {
        plugin: String,
        context: String,
        message: String,
    },
    #[error("stream {0:?} kept changing under the command; gave up after retries")]
    TooManyConflicts(String),
    #[error("stream {0:?} has no events")]
    NoSuchStream(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
}
