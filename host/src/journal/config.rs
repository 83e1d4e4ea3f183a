//! Limits of the journal and the checks that enforce them before a request is queued.

use foldhash::HashSet;

use super::{JournalError, NewEvent};

/// The longest stream name, in bytes.
pub const MAX_STREAM_NAME: usize = 256;

/// The default [`JournalConfig::cache_bytes`]: the pages appends and recent reads touch,
/// not the whole file (redb's own default is 1 GiB, which a long-running host fills).
pub const DEFAULT_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Limits and tuning of a [`Journal`](super::Journal).
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Largest event, counting `data`, `metadata` and `event_type` bytes.
    pub max_event_size: usize,
    /// Most events in one append.
    pub max_append_events: usize,
    /// Largest append, counting every event's bytes as [`max_event_size`](Self::max_event_size)
    /// does. It also bounds what one commit carries: a batch never grows past it with a second
    /// append (PostgreSQL refuses a statement over 1 GiB).
    pub max_append_bytes: usize,
    /// Most requests (appends, snapshot and checkpoint writes) the writer puts into one commit.
    pub max_batch_appends: usize,
    /// Most writes waiting for the writer; past it a write is refused at once with
    /// [`JournalError::Overloaded`](super::JournalError::Overloaded) instead of queueing.
    pub max_queued_writes: usize,
    /// Snapshots kept per (plugin, stream); older ones are pruned. At least one is always kept.
    pub keep_snapshots: usize,
    /// redb only: most bytes of the journal file's pages held in memory, read cache and the
    /// pages of the commit being written together. Pages past it are read from the file (the
    /// OS page cache) again; a commit larger than half of it writes its pages out early.
    pub cache_bytes: usize,
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
            max_append_bytes: 64 * 1024 * 1024,
            max_batch_appends: 1024,
            max_queued_writes: 4096,
            keep_snapshots: 4,
            cache_bytes: DEFAULT_CACHE_BYTES,
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
        let mut total = 0usize;
        for event in events {
            let size = event.size();
            if size > self.max_event_size {
                return Err(JournalError::EventTooLarge {
                    size,
                    max: self.max_event_size,
                });
            }
            check_text("event type", &event.event_type)?;
            if let Some(metadata) = &event.metadata {
                check_text("metadata", metadata)?;
            }
            total += size;
        }
        if total > self.max_append_bytes {
            return Err(JournalError::AppendTooLarge {
                size: total,
                max: self.max_append_bytes,
            });
        }
        match repeated_id(events) {
            Some(event) => Err(JournalError::DuplicateEventId {
                id: event.id,
                stream: stream.to_owned(),
                position: None,
            }),
            None => Ok(()),
        }
    }
}

/// The first of `events` whose id an earlier one has. A lone event (most appends) needs no
/// set; the set hashes with foldhash, as the memtable does (ids are checked on every append).
fn repeated_id(events: &[NewEvent]) -> Option<&NewEvent> {
    if events.len() < 2 {
        return None;
    }
    let mut ids = HashSet::with_capacity_and_hasher(events.len(), Default::default());
    events.iter().find(|event| !ids.insert(event.id))
}

/// Refuses an empty or over-long stream name, or one with a NUL character.
pub(super) fn check_stream_name(stream: &str) -> Result<(), JournalError> {
    if stream.is_empty() || stream.len() > MAX_STREAM_NAME || stream.contains('\0') {
        return Err(JournalError::InvalidStreamName(stream.to_owned()));
    }
    Ok(())
}

/// Refuses text with a NUL character, which PostgreSQL cannot store in a `TEXT` column: both
/// backends refuse it alike, before it is queued.
fn check_text(field: &'static str, text: &str) -> Result<(), JournalError> {
    if text.contains('\0') {
        return Err(JournalError::NulCharacter(field));
    }
    Ok(())
}
