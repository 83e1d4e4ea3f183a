//! The writes every backend's writer performs.

use super::{ExpectedVersion, NewEvent};

/// One write, as every backend's writer receives it.
pub(super) enum Op {
    Append {
        stream: String,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    },
    PutSnapshot {
        plugin: String,
        stream: String,
        version: u64,
        state: Vec<u8>,
    },
    PutCheckpoint {
        plugin: String,
        position: u64,
        state: Vec<u8>,
    },
    DeletePluginData {
        plugin: String,
    },
}
