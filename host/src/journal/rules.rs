//! The journal's append rules, shared by every backend so they cannot drift:
//! the expected-version check, where an append lands, and when a re-sent
//! append is an idempotent retry.

use uuid::Uuid;

use super::{AppendResult, ExpectedVersion, JournalError, NewEvent};

impl ExpectedVersion {
    /// Checks the condition against `current` (None: no stream); a mismatch
    /// is a conflict carrying the current version.
    pub fn check(self, stream: &str, current: Option<u64>) -> Result<(), JournalError> {
        let holds = match self {
            Self::Any => true,
            Self::NoStream => current.is_none(),
            Self::Exact(version) => current.unwrap_or(0) == version,
        };
        if holds {
            Ok(())
        } else {
            Err(JournalError::Conflict {
                stream: stream.to_owned(),
                expected: self,
                current,
            })
        }
    }
}

impl AppendResult {
    /// Where `count` (≥ 1) events land after stream version `current` and
    /// before global position `next_position`.
    pub(super) fn placing(current: Option<u64>, count: u64, next_position: u64) -> Self {
        let base = current.unwrap_or(0);
        Self {
            first_version: base + 1,
            last_version: base + count,
            first_position: next_position,
            last_position: next_position + count - 1,
        }
    }
}

/// An event id of an append that is already in the journal, and where.
pub(super) struct Written<'a> {
    pub id: Uuid,
    pub stream: &'a str,
    pub position: u64,
    pub version: u64,
}

/// Judges an append some of whose ids are already `written` (in the append's
/// order): an exact re-send — every id, same stream, consecutive versions in
/// the same order at consecutive positions, as one append writes them — returns
/// the original result; anything else is an error.
pub(super) fn retried(
    stream: &str,
    events: &[NewEvent],
    written: &[Written<'_>],
) -> Result<AppendResult, JournalError> {
    if let Some(other) = written.iter().find(|w| w.stream != stream) {
        return Err(JournalError::DuplicateEventId {
            id: other.id,
            stream: other.stream.to_owned(),
            position: Some(other.position),
        });
    }
    let mismatch = |reason: String| JournalError::IdempotencyMismatch {
        stream: stream.to_owned(),
        reason,
    };
    if written.len() != events.len() {
        return Err(mismatch(format!(
            "{} of its {} event ids are already written, the others are new",
            written.len(),
            events.len()
        )));
    }
    let (first, last) = (&written[0], &written[written.len() - 1]);
    let in_order = written
        .iter()
        .zip(events)
        .zip(first.version..)
        .all(|((w, event), version)| w.id == event.id && w.version == version);
    if !in_order {
        return Err(mismatch(
            "its events were not written as consecutive events in this order".to_owned(),
        ));
    }
    // One append's events sit at consecutive positions; events of several appends may have
    // other streams' events between them, and the answer's positions would span those.
    let contiguous = written
        .iter()
        .zip(first.position..)
        .all(|(w, position)| w.position == position);
    if !contiguous {
        return Err(mismatch(
            "its events were not written at consecutive positions (by more than one append)"
                .to_owned(),
        ));
    }
    Ok(AppendResult {
        first_version: first.version,
        last_version: last.version,
        first_position: first.position,
        last_position: last.position,
    })
}
