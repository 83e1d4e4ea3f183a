//! Stream runs: an append's events have consecutive versions at consecutive global positions,
//! so (first version, first position, count) locates all of them. The stream index stores a
//! stream's runs in blocks (storage format 7): a value of up to [`BLOCK_RUNS`] runs whose
//! versions continue (each run's first version is the end of the one before), keyed (stream,
//! first version of the block), so each run is only (first position, count). A flush of
//! one-event appends over many streams then writes an entry per stream, not one per append
//! (format 6: ~1.5k instructions per run).
//!
//! A stream's blocks never overlap and ascend by key. A new block starts where the block
//! before is full or where versions do not continue.

use redb::{ReadableTable, Table};

use super::JournalError;

/// Most runs a block holds (2 KB).
pub(super) const BLOCK_RUNS: usize = 128;
/// A run in a block: its first position, then its count, little-endian.
const RUN_BYTES: usize = 16;

/// A key of the stream index: (stream, first version of the block).
pub(super) type BlockKey = (&'static str, u64);

/// `count` events of one stream, versions from `first_version` at positions from
/// `first_position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub(super) first_version: u64,
    pub(super) first_position: u64,
    pub(super) count: u64,
}

impl Run {
    /// The run of versions from `first_version`, held (first position, count).
    pub(super) fn new(first_version: u64, (first_position, count): (u64, u64)) -> Self {
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

    /// Its (first position, count).
    pub(super) fn value(&self) -> (u64, u64) {
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

/// The runs of the block of `stream` keyed `first_version`, ascending; `Corrupt` unless its
/// bytes are whole runs, one to [`BLOCK_RUNS`], none empty, none past the last version or
/// position.
pub(super) fn decode(
    stream: &str,
    first_version: u64,
    block: &[u8],
) -> Result<Vec<Run>, JournalError> {
    let (pairs, rest) = block.as_chunks::<RUN_BYTES>();
    let malformed = if !rest.is_empty() {
        format!("{} bytes, not whole runs of {RUN_BYTES}", block.len())
    } else if pairs.is_empty() {
        "no runs".to_owned()
    } else if pairs.len() > BLOCK_RUNS {
        format!("{} runs, more than {BLOCK_RUNS}", pairs.len())
    } else {
        match runs(first_version, pairs) {
            Ok(runs) => return Ok(runs),
            Err(malformed) => malformed,
        }
    };
    Err(JournalError::Corrupt {
        position: 0,
        reason: format!(
            "the run block of {stream:?} keyed version {first_version} is malformed: {malformed}"
        ),
    })
}

/// The runs of a block's `pairs`, versions from `version`, or why they cannot be.
fn runs(mut version: u64, pairs: &[[u8; RUN_BYTES]]) -> Result<Vec<Run>, String> {
    let mut runs = Vec::with_capacity(pairs.len());
    for (n, pair) in pairs.iter().enumerate() {
        let (position, count) = pair.split_at(8);
        let position = u64::from_le_bytes(position.try_into().expect("8 bytes"));
        let count = u64::from_le_bytes(count.try_into().expect("8 bytes"));
        if count == 0 {
            return Err(format!("its run {n} holds no events"));
        }
        let run = Run::new(version, (position, count));
        version = match (version.checked_add(count), position.checked_add(count)) {
            (Some(end), Some(_)) => end,
            _ => return Err(format!("its run {n} overflows the versions or positions")),
        };
        runs.push(run);
    }
    Ok(runs)
}

/// The bytes of a block of `runs` (versions continuing, at most [`BLOCK_RUNS`]).
pub(super) fn encode(runs: &[Run]) -> Vec<u8> {
    let mut block = Vec::with_capacity(runs.len() * RUN_BYTES);
    for run in runs {
        block.extend_from_slice(&run.first_position.to_le_bytes());
        block.extend_from_slice(&run.count.to_le_bytes());
    }
    block
}

/// `runs` (ascending) as blocks: split where versions do not continue and every
/// [`BLOCK_RUNS`].
pub(super) fn blocks(runs: &[Run]) -> impl Iterator<Item = &[Run]> {
    runs.chunk_by(|run, next| run.end_version() == next.first_version)
        .flat_map(|continuing| continuing.chunks(BLOCK_RUNS))
}

/// The runs of `stream` in `table` holding versions ≥ `from`, ascending; the first may start
/// below `from`.
pub(super) fn holding<'t, T: ReadableTable<BlockKey, &'static [u8]>>(
    table: &'t T,
    stream: &str,
    from: u64,
) -> Result<impl Iterator<Item = Result<Run, JournalError>> + use<'t, T>, JournalError> {
    let below = table.range((stream, 0)..=(stream, from))?.next_back();
    let start = below.transpose()?.map_or(from, |(key, _)| key.value().1);
    let blocks = table.range((stream, start)..=(stream, u64::MAX))?;
    let runs = blocks.flat_map(|entry| {
        let runs = entry.map_err(JournalError::from).and_then(|(key, block)| {
            let (stream, first_version) = key.value();
            decode(stream, first_version, block.value())
        });
        let (runs, error) = match runs {
            Ok(runs) => (runs, None),
            Err(error) => (Vec::new(), Some(error)),
        };
        runs.into_iter().map(Ok).chain(error.map(Err))
    });
    Ok(runs.filter(move |run| run.as_ref().map_or(true, |run| run.end_version() > from)))
}

/// Writes `runs` (ascending, all above the runs of `stream` in `table`) as blocks at the end of
/// `stream`: its last block, if not full and its versions continue into them, takes in what
/// it has room for (written again).
pub(super) fn append(
    table: &mut Table<'_, BlockKey, &'static [u8]>,
    stream: &str,
    runs: &[Run],
) -> Result<(), JournalError> {
    let Some(first) = runs.first() else {
        return Ok(());
    };
    let last = table.range((stream, 0)..=(stream, u64::MAX))?.next_back();
    let last = match last.transpose()? {
        Some((key, block)) => decode(stream, key.value().1, block.value())?,
        None => Vec::new(),
    };
    let joined;
    let runs = match last.last() {
        Some(run) if last.len() < BLOCK_RUNS && run.end_version() == first.first_version => {
            joined = [last.as_slice(), runs].concat();
            joined.as_slice()
        }
        _ => runs,
    };
    for block in blocks(runs) {
        table.insert((stream, block[0].first_version), encode(block).as_slice())?;
    }
    Ok(())
}

/// Removes the versions of `stream` below `version` from its blocks in `table`: blocks below
/// it go, the block holding it is written again from it.
pub(super) fn remove_below(
    table: &mut Table<'_, BlockKey, &'static [u8]>,
    stream: &str,
    version: u64,
) -> Result<(), JournalError> {
    loop {
        let first = table.range((stream, 0)..(stream, version))?.next();
        let Some((key, runs)) = first
            .transpose()?
            .map(|(key, block)| (key.value().1, decode(stream, key.value().1, block.value())))
        else {
            return Ok(());
        };
        table.remove((stream, key))?;
        let kept: Vec<Run> = runs?
            .into_iter()
            .filter(|run| run.end_version() > version)
            .map(|run| match version.checked_sub(run.first_version) {
                Some(n) if n > 0 => run.without_first(n),
                _ => run,
            })
            .collect();
        if let Some(first) = kept.first() {
            table.insert((stream, first.first_version), encode(&kept).as_slice())?;
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableDatabase};

    use super::*;
    use crate::journal::redb::store::STREAM_RUN_BLOCKS;

    /// Runs of `counts` events from version `first`, each at a position 10 apart.
    fn runs(first: u64, counts: impl IntoIterator<Item = u64>) -> Vec<Run> {
        let mut version = first;
        let runs = counts.into_iter().map(|count| {
            let run = Run::new(version, (version * 10, count));
            version += count;
            run
        });
        runs.collect()
    }

    /// A database whose stream index holds `appends` (stream, runs), each written as a flush
    /// writes it.
    fn index(appends: &[(&str, Vec<Run>)]) -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("runs.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(STREAM_RUN_BLOCKS).unwrap();
            for (stream, runs) in appends {
                append(&mut table, stream, runs).unwrap();
            }
        }
        txn.commit().unwrap();
        (dir, db)
    }

    /// The blocks of `stream` in `db`: (key's version, its runs).
    fn stored(db: &Database, stream: &str) -> Vec<(u64, Vec<Run>)> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(STREAM_RUN_BLOCKS).unwrap();
        let blocks = table.range((stream, 0)..=(stream, u64::MAX)).unwrap();
        let blocks = blocks.map(|entry| {
            let (key, block) = entry.unwrap();
            let version = key.value().1;
            (version, decode(stream, version, block.value()).unwrap())
        });
        blocks.collect()
    }

    /// The runs `holding` finds for `stream` in `db` from `from`.
    fn held(db: &Database, stream: &str, from: u64) -> Vec<Run> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(STREAM_RUN_BLOCKS).unwrap();
        let runs = holding(&table, stream, from).unwrap();
        runs.map(Result::unwrap).collect()
    }

    /// A flush of more runs than a block holds writes full blocks, then the rest; a later
    /// flush whose versions continue fills the last block first, one that does not (a
    /// gap) starts a new block, as does a full block.
    #[test]
    fn a_flush_fills_blocks_of_continuing_versions() {
        let first = runs(1, (0..300).map(|n| n % 3 + 1));
        let end = first[299].end_version();
        let second = runs(end, [2; 100]);
        let gap = runs(second[99].end_version() + 5, [1; 3]);
        let appends = [
            ("a", runs(1, [1; 5])),
            ("b", first.clone()),
            ("b", second.clone()),
            ("b", gap.clone()),
            ("c", runs(1, [1; 5])),
        ];
        let (_dir, db) = index(&appends);
        let all: Vec<Run> = [first, second, gap.clone()].concat();
        let expected = [
            (1, all[..128].to_vec()),
            (all[128].first_version, all[128..256].to_vec()),
            (all[256].first_version, all[256..384].to_vec()),
            (all[384].first_version, all[384..400].to_vec()),
            (gap[0].first_version, gap),
        ];
        assert_eq!(stored(&db, "b"), expected);
        assert_eq!(stored(&db, "a"), [(1, runs(1, [1; 5]))]);
        assert_eq!(stored(&db, "c"), [(1, runs(1, [1; 5]))]);
    }

    /// From any version, from below the first to past the last, in the middle of a run, at
    /// its start or end, at a block's first or last run, or in a gap between blocks, the runs
    /// holding versions from it are found, the first of them with it.
    #[test]
    fn runs_are_found_from_any_version_across_blocks() {
        let counts = runs(1, (0..200).map(|n| n % 4 + 1));
        let gap = runs(counts[199].end_version() + 3, [2; 10]);
        let all = [counts.clone(), gap].concat();
        let (_dir, db) = index(&[
            ("a", runs(1, [7])),
            ("b", counts),
            ("b", all[200..].to_vec()),
        ]);
        assert_eq!(stored(&db, "b").len(), 3);
        let last = all[all.len() - 1].end_version();
        for from in 0..=last + 1 {
            let expected: Vec<Run> = (all.iter())
                .filter(|run| run.end_version() > from)
                .copied()
                .collect();
            assert_eq!(held(&db, "b", from), expected, "from {from}");
        }
        assert_eq!(held(&db, "a", 0), runs(1, [7]));
        for (stream, from) in [("a", 8), ("", 0), ("c", 3)] {
            assert_eq!(
                held(&db, stream, from),
                Vec::new(),
                "{stream:?} from {from}"
            );
        }
    }

    /// Removing the versions below one in the middle of a run, at a run's or a block's start,
    /// leaves exactly the runs above it (the one it cuts without its first events), under a
    /// key of the version it keeps first; below the first version nothing changes, past the
    /// last everything goes.
    #[test]
    fn removing_versions_below_one_trims_and_drops_blocks() {
        let all = runs(1, (0..300).map(|n| n % 3 + 1));
        let end = all[299].end_version();
        for below in [
            0,
            1,
            2,
            3,
            4,
            200,
            all[128].first_version,
            all[128].end_version() - 1,
            555,
            end - 1,
            end,
            end + 1,
        ] {
            let (_dir, db) = index(&[("a", runs(1, [3])), ("b", all.clone()), ("c", runs(1, [3]))]);
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(STREAM_RUN_BLOCKS).unwrap();
                remove_below(&mut table, "b", below).unwrap();
            }
            txn.commit().unwrap();
            let expected: Vec<Run> = (all.iter())
                .filter(|run| run.end_version() > below)
                .map(|run| match below.checked_sub(run.first_version) {
                    Some(n) if n > 0 => run.without_first(n),
                    _ => *run,
                })
                .collect();
            assert_eq!(held(&db, "b", 0), expected, "below {below}");
            let blocks = stored(&db, "b");
            if let Some((key, runs)) = blocks.first() {
                assert_eq!(*key, runs[0].first_version, "below {below}");
                assert_eq!(*key, below.max(1), "below {below}");
            }
            assert_eq!(held(&db, "a", 0), runs(1, [3]));
            assert_eq!(held(&db, "c", 0), runs(1, [3]));
        }
    }

    /// A block that is not whole runs, holds none or more than a block may, holds a run of no
    /// events, or whose versions or positions overflow is reported `Corrupt` by a read
    /// reaching it, naming its stream and key.
    #[test]
    fn a_malformed_block_is_corrupt() {
        let run = |position: u64, count: u64| encode(&[Run::new(0, (position, count))]);
        let full = encode(&runs(5, [1; BLOCK_RUNS + 1]));
        let malformed: [(Vec<u8>, &str); 7] = [
            (run(1, 1)[..15].to_vec(), "15 bytes, not whole runs of 16"),
            (
                [run(1, 1), vec![0]].concat(),
                "17 bytes, not whole runs of 16",
            ),
            (Vec::new(), "no runs"),
            (full, "129 runs, more than 128"),
            ([run(1, 1), run(2, 0)].concat(), "its run 1 holds no events"),
            (
                [run(1, 1), run(2, u64::MAX - 5)].concat(),
                "its run 1 overflows the versions or positions",
            ),
            (
                run(u64::MAX - 1, 2),
                "its run 0 overflows the versions or positions",
            ),
        ];
        let (_dir, db) = index(&[("a", runs(1, [3]))]);
        for (bytes, why) in &malformed {
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(STREAM_RUN_BLOCKS).unwrap();
                table.insert(("b", 5), bytes.as_slice()).unwrap();
            }
            txn.commit().unwrap();
            let txn = db.begin_read().unwrap();
            let table = txn.open_table(STREAM_RUN_BLOCKS).unwrap();
            for from in [0, 5, 6, u64::MAX] {
                let found: Result<Vec<Run>, _> = holding(&table, "b", from).unwrap().collect();
                let Err(JournalError::Corrupt { reason, .. }) = found else {
                    panic!("{why}, from {from}: not Corrupt");
                };
                let key = "the run block of \"b\" keyed version 5 is malformed: ";
                assert_eq!(reason, format!("{key}{why}"));
            }
            assert!(decode("b", 5, bytes).is_err());
            assert_eq!(held(&db, "a", 0), runs(1, [3]));
        }
    }
}
