//! A stream's lifecycle, shared by every backend so they cannot drift: soft and hard deletion,
//! retention metadata, which events readers still see, and what a scavenge may remove.
//!
//! Nothing here rewrites stored events. Deleting a stream or changing its metadata only changes
//! its [`Lifecycle`] record; readers (and so plugins) stop seeing the events it hides at once, and
//! a scavenge removes them later. Global positions are never reused: the log just skips them.

use serde::{Deserialize, Serialize};

use super::{ExpectedVersion, JournalError};

/// A stream's retention rules, as KurrentDB's `$maxAge`, `$maxCount` and `$tb`. Events outside
/// them are hidden from every reader at once and removed by the next scavenge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamMetadata {
    /// Hide events recorded more than this many seconds ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
    /// Keep only the newest this many events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
    /// Hide the events below this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_before: Option<u64>,
}

impl StreamMetadata {
    /// Refuses rules that would hide every event, new ones included (as KurrentDB refuses a
    /// `$maxCount` or `$maxAge` below 1); `truncate_before` may lie past the stream's head.
    pub fn check(&self) -> Result<(), JournalError> {
        if self.max_count == Some(0) {
            return Err(JournalError::InvalidMetadata(
                "max_count must be at least 1",
            ));
        }
        if self.max_age == Some(0) {
            return Err(JournalError::InvalidMetadata(
                "max_age must be at least 1 second",
            ));
        }
        Ok(())
    }
}

/// Whether a stream was deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Deletion {
    /// Not deleted.
    #[default]
    None,
    /// Soft-deleted: reads find no stream; the next append recreates it and continues its
    /// version numbers (its old events stay hidden).
    Soft,
    /// Hard-deleted (a tombstone): never readable or writable again.
    Hard,
}

/// What the journal keeps about a stream besides its events; a stream without one has no rules
/// and was never deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Lifecycle {
    pub metadata: StreamMetadata,
    pub deletion: Deletion,
    /// The first version the last soft delete left visible. New metadata never shows the
    /// events a delete hid (a scavenge may have removed them already): its `truncate_before`
    /// stays at least this. Absent from records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_before: Option<u64>,
}

/// What readers see of a stream right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamWindow {
    /// The version appends are checked against: `None` for no stream or a soft-deleted one.
    pub current: Option<u64>,
    /// The first version readers may see (1 unless truncation, `max_count` or a soft delete hides
    /// older ones).
    pub first: u64,
    /// Whether events also expire with age, so the window moves without any write.
    pub expires: bool,
}

impl StreamWindow {
    /// Whether readers see the stream's whole history, so a state folded from version 1 (a
    /// snapshot) still stands for what they see.
    pub fn is_whole(&self) -> bool {
        self.first <= 1 && !self.expires
    }
}

/// Which events of one stream a reader sees, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Visibility {
    /// No version below this one.
    first: u64,
    /// Nothing recorded before this (ms since the epoch).
    recorded_since: u64,
}

impl Visibility {
    /// Everything visible (a stream without rules).
    pub const ALL: Visibility = Visibility {
        first: 0,
        recorded_since: 0,
    };

    /// Nothing visible (a hard-deleted stream).
    pub const NONE: Visibility = Visibility {
        first: u64::MAX,
        recorded_since: u64::MAX,
    };

    /// Whether the event at `version`, recorded at `recorded_at`, is visible.
    pub fn admits(&self, version: u64, recorded_at: u64) -> bool {
        version >= self.first && recorded_at >= self.recorded_since
    }

    /// The first version that may be visible.
    pub fn first(&self) -> u64 {
        self.first.max(1)
    }
}

impl Lifecycle {
    /// Refuses any read or write of a hard-deleted stream.
    pub fn check_exists(&self, stream: &str) -> Result<(), JournalError> {
        match self.deletion {
            Deletion::Hard => Err(JournalError::StreamDeleted(stream.to_owned())),
            _ => Ok(()),
        }
    }

    /// The version an append is checked against, for a stream whose last stored version is
    /// `stored`: a soft-deleted stream counts as no stream, so `no_stream` recreates it.
    pub fn current(&self, stored: Option<u64>) -> Option<u64> {
        match self.deletion {
            Deletion::None => stored,
            Deletion::Soft | Deletion::Hard => None,
        }
    }

    /// The visible part of a stream whose last stored version is `last`, at `now` (ms).
    pub fn visibility(&self, last: u64, now: u64) -> Visibility {
        if self.deletion == Deletion::Hard {
            return Visibility::NONE;
        }
        let by_count = self
            .metadata
            .max_count
            .map_or(0, |count| (last + 1).saturating_sub(count));
        let recorded_since = self
            .metadata
            .max_age
            .map_or(0, |age| now.saturating_sub(age.saturating_mul(1000)));
        Visibility {
            first: by_count.max(self.metadata.truncate_before.unwrap_or(0)),
            recorded_since,
        }
    }

    /// The window of a stream whose last stored version is `stored`, at `now` (ms).
    pub fn window(
        &self,
        stream: &str,
        stored: Option<u64>,
        now: u64,
    ) -> Result<StreamWindow, JournalError> {
        self.check_exists(stream)?;
        Ok(StreamWindow {
            current: self.current(stored),
            first: self.visibility(stored.unwrap_or(0), now).first(),
            expires: self.metadata.max_age.is_some(),
        })
    }

    /// Soft- or hard-deletes a stream whose last stored version is `stored`, once `expected`
    /// holds. A soft delete hides the events so far (`truncate_before` moves past them).
    pub fn delete(
        &mut self,
        stream: &str,
        stored: Option<u64>,
        expected: ExpectedVersion,
        hard: bool,
    ) -> Result<(), JournalError> {
        self.check_exists(stream)?;
        let current = self.current(stored);
        expected.check(stream, current)?;
        match (stored, current) {
            // A soft-deleted stream may still be hard-deleted, but not deleted again.
            (Some(_), _) if hard => self.deletion = Deletion::Hard,
            (Some(_), Some(last)) => {
                self.deletion = Deletion::Soft;
                self.deleted_before = Some(last + 1);
                self.keep_deleted_hidden();
            }
            _ => return Err(JournalError::StreamNotFound(stream.to_owned())),
        }
        Ok(())
    }

    /// Replaces the retention rules of a stream that is not hard-deleted; `truncate_before`
    /// stays past what a soft delete hid.
    pub fn set_metadata(
        &mut self,
        stream: &str,
        metadata: StreamMetadata,
    ) -> Result<(), JournalError> {
        self.check_exists(stream)?;
        self.metadata = metadata;
        self.keep_deleted_hidden();
        Ok(())
    }

    /// Raises `truncate_before` past what the last soft delete hid, never lowering it: rules
    /// that hide more keep doing so.
    fn keep_deleted_hidden(&mut self) {
        self.metadata.truncate_before = self.metadata.truncate_before.max(self.deleted_before);
    }

    /// What an append changes: a soft-deleted stream exists again.
    pub fn appended(&mut self) {
        if self.deletion == Deletion::Soft {
            self.deletion = Deletion::None;
        }
    }

    /// Whether a stream with this record is listed and readable (not deleted).
    pub fn is_listed(&self) -> bool {
        self.deletion == Deletion::None
    }

    /// The record as stored: JSON, so fields can be added later.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a lifecycle serialises")
    }

    /// Decodes a stored record of `stream`.
    pub fn decode(stream: &str, bytes: &[u8]) -> Result<Lifecycle, JournalError> {
        serde_json::from_slice(bytes).map_err(|error| JournalError::Corrupt {
            position: 0,
            reason: format!("undecodable lifecycle record of stream {stream:?}: {error}"),
        })
    }
}

/// Milliseconds since the Unix epoch: the clock retention by age is measured with.
pub(super) fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// What a scavenge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScavengeReport {
    /// Streams whose hidden events were looked at: those ever deleted or given retention rules
    /// (with a lifecycle record).
    pub streams: u64,
    /// Events removed.
    pub events: u64,
    /// Aggregate snapshots removed (of hard-deleted streams, and of streams that lost events:
    /// such a snapshot folded events no reader sees any more).
    pub snapshots: u64,
    /// The database's size in bytes before (redb: its allocated pages, not the file's size;
    /// PostgreSQL: the `events` and `snapshots` tables with their indexes and TOAST).
    pub bytes_before: u64,
    /// The database's size in bytes after, counted as `bytes_before`.
    pub bytes_after: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(metadata: StreamMetadata) -> Lifecycle {
        Lifecycle {
            metadata,
            ..Default::default()
        }
    }

    #[test]
    fn each_rule_hides_its_part_of_the_stream() {
        let now = 1_000_000;
        let all = with(StreamMetadata::default()).visibility(10, now);
        assert!((1..=10).all(|v| all.admits(v, 0)));

        let count = with(StreamMetadata {
            max_count: Some(3),
            ..Default::default()
        })
        .visibility(10, now);
        assert_eq!(count.first(), 8);
        assert!(!count.admits(7, now) && count.admits(8, now));

        let truncated = with(StreamMetadata {
            truncate_before: Some(5),
            max_count: Some(100),
            ..Default::default()
        })
        .visibility(10, now);
        assert_eq!(truncated.first(), 5);

        let aged = with(StreamMetadata {
            max_age: Some(60),
            ..Default::default()
        })
        .visibility(10, now);
        assert!(!aged.admits(10, now - 60_001) && aged.admits(1, now - 60_000));
    }

    #[test]
    fn a_soft_delete_hides_the_past_and_an_append_revives_the_stream() {
        let mut lifecycle = Lifecycle::default();
        lifecycle
            .delete("s", Some(4), ExpectedVersion::Exact(4), false)
            .unwrap();
        assert_eq!(lifecycle.current(Some(4)), None);
        assert!(!lifecycle.is_listed());
        assert_eq!(lifecycle.visibility(4, 0).first(), 5);
        assert!(matches!(
            lifecycle.delete("s", Some(4), ExpectedVersion::Any, false),
            Err(JournalError::StreamNotFound(_))
        ));
        lifecycle.appended();
        assert_eq!(lifecycle.current(Some(5)), Some(5));
        assert!(lifecycle.is_listed());
        assert!(lifecycle.visibility(5, 0).admits(5, 0));
        assert!(!lifecycle.visibility(5, 0).admits(4, 0));
    }

    #[test]
    fn new_rules_never_show_what_a_soft_delete_hid() {
        let mut lifecycle = with(StreamMetadata {
            truncate_before: Some(9),
            ..Default::default()
        });
        lifecycle
            .delete("s", Some(4), ExpectedVersion::Any, false)
            .unwrap();
        assert_eq!(
            lifecycle.visibility(4, 0).first(),
            9,
            "a delete never lowers it"
        );
        lifecycle.appended();
        for (rules, first) in [
            (StreamMetadata::default(), 5),
            (
                StreamMetadata {
                    truncate_before: Some(2),
                    max_count: Some(100),
                    ..Default::default()
                },
                5,
            ),
            (
                StreamMetadata {
                    truncate_before: Some(7),
                    ..Default::default()
                },
                7,
            ),
        ] {
            lifecycle.set_metadata("s", rules).unwrap();
            assert_eq!(lifecycle.visibility(8, 0).first(), first, "{rules:?}");
            assert_eq!(lifecycle.metadata.max_count, rules.max_count);
        }
    }

    #[test]
    fn a_hard_delete_is_final_even_after_a_soft_one() {
        let mut lifecycle = Lifecycle::default();
        assert!(matches!(
            lifecycle.delete("s", None, ExpectedVersion::Any, true),
            Err(JournalError::StreamNotFound(_))
        ));
        lifecycle
            .delete("s", Some(2), ExpectedVersion::Any, false)
            .unwrap();
        assert!(matches!(
            lifecycle.delete("s", Some(2), ExpectedVersion::Exact(2), true),
            Err(JournalError::Conflict { current: None, .. })
        ));
        lifecycle
            .delete("s", Some(2), ExpectedVersion::Any, true)
            .unwrap();
        assert!(!lifecycle.visibility(2, 0).admits(1, u64::MAX - 1));
        for refused in [
            lifecycle.check_exists("s"),
            lifecycle.window("s", Some(2), 0).map(|_| ()),
            lifecycle.delete("s", Some(2), ExpectedVersion::Any, false),
        ] {
            assert!(matches!(refused, Err(JournalError::StreamDeleted(_))));
        }
    }

    #[test]
    fn records_round_trip() {
        let lifecycle = Lifecycle {
            metadata: StreamMetadata {
                max_age: Some(1),
                max_count: None,
                truncate_before: Some(3),
            },
            deletion: Deletion::Soft,
            deleted_before: Some(3),
        };
        assert_eq!(
            Lifecycle::decode("s", &lifecycle.encode()).unwrap(),
            lifecycle
        );
        // Records written before `deleted_before` was kept still decode.
        let older = br#"{"metadata":{"truncate_before":3},"deletion":"soft"}"#;
        let decoded = Lifecycle::decode("s", older).unwrap();
        assert_eq!(
            (decoded.deletion, decoded.deleted_before),
            (Deletion::Soft, None)
        );
    }
}
