//! Stream runs: the stream index holds one entry per append rather than one per event. An
//! append's events have consecutive versions at consecutive global positions, so the entry
//! (stream, first version) → (first position, count) locates all of them.

use redb::ReadableTable;

use super::JournalError;

/// A key of a runs table: (stream, first version).
pub(super) type RunKey = (&'static str, u64);
/// A value of a runs table: (first position, count).
pub(super) type RunValue = (u64, u64);

/// `count` events of one stream, versions from `first_version` at positions from
/// `first_position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub(super) first_version: u64,
    pub(super) first_position: u64,
    pub(super) count: u64,
}

impl Run {
    /// The run stored under `first_version` with `value`.
    pub(super) fn new(first_version: u64, (first_position, count): RunValue) -> Self {
        Self {
            first_version,
            first_position,
            count,
        }
    }

    /// The version after its last.
    pub(super) fn end_version(&self) -> u64 {
        self.first_version + self.count
    }

    /// The position of `version`, one of its versions.
    pub(super) fn position(&self, version: u64) -> u64 {
        self.first_position + (version - self.first_version)
    }

    /// Its value in a runs table.
    pub(super) fn value(&self) -> RunValue {
        (self.first_position, self.count)
    }

    /// The run without its first `n` events (fewer than `count`).
    pub(super) fn without_first(&self, n: u64) -> Self {
        Self {
            first_version: self.first_version + n,
            first_position: self.first_position + n,
            count: self.count - n,
        }
    }
}

/// The runs of `stream` in `table` holding versions ≥ `from`, ascending; the first may start
/// below `from`.
pub(super) fn holding<'t, T: ReadableTable<RunKey, RunValue>>(
    table: &'t T,
    stream: &str,
    from: u64,
) -> Result<impl Iterator<Item = Result<Run, JournalError>> + use<'t, T>, JournalError> {
    let below = table.range((stream, 0)..=(stream, from))?.next_back();
    let start = match below.transpose()? {
        Some((key, value)) if Run::new(key.value().1, value.value()).end_version() > from => {
            key.value().1
        }
        _ => from,
    };
    let runs = table.range((stream, start)..=(stream, u64::MAX))?;
    Ok(runs.map(|entry| {
        let (key, value) = entry?;
        Ok(Run::new(key.value().1, value.value()))
    }))
}
