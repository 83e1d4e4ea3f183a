//! The writes every backend's writer performs.

use super::{ExpectedVersion, NewEvent, ParkedEvent, StreamMetadata};

/// One write, as every backend's writer receives it.
pub(super) enum Op {
    Append {
        stream: String,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        /// The events' time (ms since the epoch) when an import keeps the original one;
        /// `None`: the commit's time.
        recorded_at: Option<u64>,
    },
    PutSnapshot {
        plugin: String,
        stream: String,
        version: u64,
        state: Vec<u8>,
    },
    /// A projection's checkpoint, with changes to its parked events.
    PutCheckpoint {
        plugin: String,
        position: u64,
        state: Vec<u8>,
        park: Vec<ParkedEvent>,
        unpark: Vec<u64>,
    },
    /// Drops the snapshots, checkpoint and parked events of `plugin`.
    DeletePluginData { plugin: String },
    /// Records (or re-records) events `plugin` skipped.
    Park {
        plugin: String,
        events: Vec<ParkedEvent>,
    },
    /// Soft- or hard-deletes a stream (see `lifecycle`).
    DeleteStream {
        stream: String,
        expected: ExpectedVersion,
        hard: bool,
    },
    /// Replaces a stream's retention metadata.
    SetStreamMetadata {
        stream: String,
        metadata: StreamMetadata,
    },
    /// Forgets parked events of `plugin`, by position.
    Unpark { plugin: String, positions: Vec<u64> },
}

impl Op {
    /// The bytes the op carries, which bound how many ops one commit takes.
    pub(super) fn weight(&self) -> usize {
        match self {
            Op::Append { events, .. } => events.iter().map(NewEvent::size).sum(),
            Op::PutSnapshot { state, .. } | Op::PutCheckpoint { state, .. } => state.len(),
            _ => 0,
        }
    }
}
