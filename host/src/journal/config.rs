//! Limits of the journal and the checks that enforce them before a request is queued.

use std::collections::HashSet;

use super::{JournalError, NewEvent};

/// The longest stream name, in bytes.
pub const MAX_STREAM_NAME: usize = 256;

/// Limits and tuning of a [`Journal`](super::Journal).
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Largest event, counting `data`, `metadata` and `event_type` bytes.
    pub max_event_size: usize,
    /// Most events in one append.
    pub max_append_events: usize,
    /// Most requests (appends, snapshot and checkpoint writes) the writer puts into one commit.
    pub max_batch_appends: usize,
    /// Most writes waiting for the writer; past it a write is refused at once with
    /// [`JournalError::Overloaded`](super::JournalError::Overloaded) instead of queueing.
    pub max_queued_writes: usize,
    /// Snapshots kept per (plugin, stream); older ones are pruned. At least one is always kept.
    pub keep_snapshots: usize,
    /// PostgreSQL only: start, with a warning, on a server that may lose acknowledged commits
    /// in a power cut (`fsync`, `synchronous_commit` or `full_page_writes` off) instead of
    /// refusing it. For throwaway test clusters.
    pub accept_non_durable_postgres: bool,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            max_event_size: 1024 * 1024,
            max_append_events: 10_000,
            max_batch_appends: 1024,
            max_queued_writes: 4096,
            keep_snapshots: 4,
            accept_non_durable_postgres: false,
        }
    }
}

impl JournalConfig {
    /// Refuses an append that no journal state could make valid.
    pub(super) fn check_append(
        &self,
        stream: &str,
        events: &[NewEvent],
    ) -> Result<(), JournalError> {
        check_stream_name(stream)?;
        if events.is_empty() {
            return Err(JournalError::NoEvents);
        }
        if events.len() > self.max_append_events {
            return Err(JournalError::TooManyEvents {
                count: events.len(),
                max: self.max_append_events,
            });
        }
        for event in events {
            let size = event.data.len()
                + event.event_type.len()
                + event.metadata.as_ref().map_or(0, String::len);
            if size > self.max_event_size {
                return Err(JournalError::EventTooLarge {
                    size,
                    max: self.max_event_size,
                });
            }
        }
        let mut ids = HashSet::with_capacity(events.len());
        match events.iter().find(|event| !ids.insert(event.id)) {
            Some(event) => Err(JournalError::DuplicateEventId {
                id: event.id,
                stream: stream.to_owned(),
                position: None,
            }),
            None => Ok(()),
        }
    }
}

/// Refuses an empty or over-long stream name.
pub(super) fn check_stream_name(stream: &str) -> Result<(), JournalError> {
    if stream.is_empty() || stream.len() > MAX_STREAM_NAME {
        return Err(JournalError::InvalidStreamName(stream.to_owned()));
    }
    Ok(())
}
